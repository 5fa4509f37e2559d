//! Closed schemas for replies (Maelstrom's `defrpc` in `client.clj` and the workload
//! files), and Maelstrom's error registry (`resources/errors.edn`).
//!
//! An `*_ok` body may carry exactly its payload keys plus `type`, `in_reply_to`
//! (required integer) and `msg_id` (optional integer). Anything else is malformed: under
//! Maelstrom the client throws, the op crashes and Jepsen records it as `info`.
//!
//! It may not touch a run: it only says whether a reply is well formed.

use serde_json::{Map, Value};

/// How a reply resolves an operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The expected `*_ok`, with its `value` if the schema has one.
    Ok(Option<Value>),
    /// An `error` body.
    Error {
        /// Its code.
        code: i64,
        /// Its text (empty if absent).
        text: String,
        /// Whether the code promises the operation did not happen.
        definite: bool,
    },
    /// Not what the schema allows; the reason names the problem.
    Malformed(String),
}

/// Error codes Maelstrom's registry marks definite (errors.edn). Everything else,
/// including unknown codes and oncekv's 1000/1001, is indefinite.
pub const DEFINITE_CODES: [i64; 9] = [1, 10, 11, 12, 14, 20, 21, 22, 30];

/// Whether an error code promises the operation did not take effect.
pub fn is_definite(code: i64) -> bool {
    DEFINITE_CODES.contains(&code)
}

/// The payload keys of the ok reply to a request type, and whether `value` must be an
/// integer. `None` for a request type the harness never sends.
fn ok_schema(request: &str) -> Option<(&'static str, &'static [&'static str])> {
    Some(match request {
        "init" => ("init_ok", &[]),
        "read" => ("read_ok", &["value"]),
        "write" => ("write_ok", &[]),
        "cas" => ("cas_ok", &[]),
        "add" => ("add_ok", &["value"]),
        _ => return None,
    })
}

fn check_envelope_keys(b: &Map<String, Value>) -> Result<(), String> {
    match b.get("in_reply_to") {
        Some(v) if v.is_i64() || v.is_u64() => {}
        Some(v) => return Err(format!("in_reply_to must be an integer, got {v}")),
        None => return Err("missing in_reply_to".into()),
    }
    if let Some(v) = b.get("msg_id")
        && !(v.is_i64() || v.is_u64())
    {
        return Err(format!("msg_id must be an integer, got {v}"));
    }
    Ok(())
}

/// Validates `reply` as the answer to a request of type `request`.
pub fn classify(request: &str, reply: &Value) -> Reply {
    let Some(b) = reply.as_object() else {
        return Reply::Malformed(format!("body is not an object: {reply}"));
    };
    if let Err(e) = check_envelope_keys(b) {
        return Reply::Malformed(e);
    }
    let Some(ty) = b.get("type").and_then(Value::as_str) else {
        return Reply::Malformed("missing or non-string type".into());
    };
    if ty == "error" {
        let Some(code) = b.get("code").and_then(Value::as_i64) else {
            return Reply::Malformed("error without an integer code".into());
        };
        let text = b
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        return Reply::Error {
            code,
            text,
            definite: is_definite(code),
        };
    }
    let Some((ok_type, payload)) = ok_schema(request) else {
        return Reply::Malformed(format!("no schema for request type {request}"));
    };
    if ty != ok_type {
        return Reply::Malformed(format!("expected type {ok_type} or error, got {ty}"));
    }
    for k in b.keys() {
        let allowed = matches!(k.as_str(), "type" | "in_reply_to" | "msg_id")
            || payload.contains(&k.as_str());
        if !allowed {
            return Reply::Malformed(format!("{ok_type} has disallowed key {k:?}"));
        }
    }
    for k in payload {
        if !b.contains_key(*k) {
            return Reply::Malformed(format!("{ok_type} is missing required key {k:?}"));
        }
    }
    let value = b.get("value").cloned();
    if request == "add" && !value.as_ref().is_some_and(|v| v.is_i64() || v.is_u64()) {
        return Reply::Malformed("add_ok value must be an integer".into());
    }
    Reply::Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ok_replies_with_exactly_their_keys_pass() {
        assert_eq!(
            classify(
                "read",
                &json!({"type": "read_ok", "value": 3, "in_reply_to": 7, "msg_id": 4})
            ),
            Reply::Ok(Some(json!(3)))
        );
        assert_eq!(
            classify("write", &json!({"type": "write_ok", "in_reply_to": 7})),
            Reply::Ok(None)
        );
        assert_eq!(
            classify(
                "cas",
                &json!({"type": "cas_ok", "in_reply_to": 1, "msg_id": 0})
            ),
            Reply::Ok(None)
        );
        assert_eq!(
            classify(
                "add",
                &json!({"type": "add_ok", "value": 12, "in_reply_to": 1})
            ),
            Reply::Ok(Some(json!(12)))
        );
    }

    #[test]
    fn extra_missing_or_mistyped_keys_are_malformed() {
        let cases = [
            (
                "write",
                json!({"type": "write_ok", "in_reply_to": 1, "leader": "n1"}),
            ),
            ("read", json!({"type": "read_ok", "in_reply_to": 1})),
            ("read", json!({"type": "read_ok", "value": 1})),
            (
                "read",
                json!({"type": "read_ok", "value": 1, "in_reply_to": "1"}),
            ),
            ("cas", json!({"type": "write_ok", "in_reply_to": 1})),
            (
                "add",
                json!({"type": "add_ok", "value": "3", "in_reply_to": 1}),
            ),
            (
                "write",
                json!({"type": "error", "in_reply_to": 1, "text": "no code"}),
            ),
            ("write", json!([1, 2])),
        ];
        for (req, body) in cases {
            assert!(
                matches!(classify(req, &body), Reply::Malformed(_)),
                "{req} {body}"
            );
        }
    }

    #[test]
    fn errors_are_definite_only_for_maelstroms_definite_codes() {
        let e = |code: i64| {
            classify(
                "cas",
                &json!({"type": "error", "code": code, "text": "t", "in_reply_to": 1}),
            )
        };
        for code in [1, 10, 11, 12, 14, 20, 21, 22, 30] {
            assert!(
                matches!(e(code), Reply::Error { definite: true, .. }),
                "{code}"
            );
        }
        for code in [0, 13, 1000, 1001, 999] {
            assert!(
                matches!(
                    e(code),
                    Reply::Error {
                        definite: false,
                        ..
                    }
                ),
                "{code}"
            );
        }
    }
}
