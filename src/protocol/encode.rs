//! Lines out: envelopes and reply bodies serialized in the protocol's key order.
//!
//! Owns [`encode`], [`Envelope`], [`ReplyBody`] and the text form of a
//! [`Reply`]. It may not parse, and may not change a reply's contents: only how
//! it is written.

use serde::Serialize;

use super::Reply;

/// An outgoing message, serialized with `src`, `dest`, `body` in that order.
#[derive(Debug, Serialize)]
pub struct Envelope<'a, B: Serialize> {
    /// Sender.
    pub src: &'a str,
    /// Receiver.
    pub dest: &'a str,
    /// Body, already holding `in_reply_to`/`msg_id`.
    pub body: B,
}

/// A reply body with its addressing, keys in protocol order.
#[derive(Debug, Serialize)]
pub struct ReplyBody<'a> {
    /// The reply payload, `type` first.
    #[serde(flatten)]
    pub reply: &'a Reply,
    /// The request's `msg_id`.
    pub in_reply_to: u64,
    /// This node's next message id.
    pub msg_id: u64,
}

/// Serializes one outgoing line (without the trailing newline).
pub fn encode<B: Serialize>(src: &str, dest: &str, body: B) -> String {
    serde_json::to_string(&Envelope { src, dest, body }).unwrap_or_else(|e| {
        // Serializing our own types cannot fail; keep the process alive if it ever does.
        tracing::error!("cannot encode a message to {dest}: {e}");
        String::new()
    })
}

/// About how many bytes `reply` takes in a line (its body without the
/// addressing), without writing it: a walk of its value, for the count of
/// replies not yet written. Exact but for numbers (counted at most 24 bytes,
/// the longest a finite double or a 64-bit integer is written in).
pub fn body_bytes(reply: &Reply) -> usize {
    /// `{"type":"read_ok","value":}` and the like.
    const FRAME: usize = 64;
    match reply {
        Reply::ReadOk { value } => FRAME + value_bytes(value),
        Reply::Error { text, .. } => FRAME + string_bytes(text),
        Reply::OpenSessionOk { client_id } => FRAME + string_bytes(client_id),
        Reply::InitOk
        | Reply::WriteOk
        | Reply::CasOk
        | Reply::AddOk { .. }
        | Reply::CloseSessionOk => FRAME,
    }
}

fn value_bytes(v: &serde_json::Value) -> usize {
    use serde_json::Value;
    match v {
        Value::Null => 4,
        Value::Bool(_) => 5,
        Value::Number(_) => 24,
        Value::String(s) => string_bytes(s),
        // Brackets, and a comma between items.
        Value::Array(items) => 2 + items.len() + items.iter().map(value_bytes).sum::<usize>(),
        // Braces, and per member a comma and a colon.
        Value::Object(members) => {
            2 + 2 * members.len()
                + members
                    .iter()
                    .map(|(k, v)| string_bytes(k) + value_bytes(v))
                    .sum::<usize>()
        }
    }
}

/// A string in quotes: a byte that must be escaped takes up to six.
fn string_bytes(s: &str) -> usize {
    let escaped = s
        .bytes()
        .filter(|&b| b < 0x20 || b == b'"' || b == b'\\')
        .count();
    2 + s.len() + 5 * escaped
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match serde_json::to_string(self) {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "{self:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ErrorCode, Reply};
    use serde_json::Value;

    /// The estimate of a reply's size is never below what is written, and
    /// close to it but for numbers.
    #[test]
    fn body_bytes_bounds_the_written_body() {
        let replies = [
            Reply::ReadOk {
                value: serde_json::json!({"a": [1, -0.5, null, true, "x\"\\\u{1}y"], "": {}})
                    .into(),
            },
            Reply::ReadOk {
                value: Value::from("é".repeat(10_000)).into(),
            },
            Reply::ReadOk {
                value: Value::from("\u{0}".repeat(10_000)).into(),
            },
            Reply::error(ErrorCode::KeyDoesNotExist, "key does not exist"),
            Reply::WriteOk,
            Reply::AddOk { value: i64::MIN },
        ];
        for r in replies {
            let written = serde_json::to_string(&r).unwrap().len();
            let estimate = body_bytes(&r);
            assert!(estimate >= written, "{estimate} < {written} for {r}");
            assert!(estimate <= written + 200, "{estimate} far above {written}");
        }
    }

    #[test]
    fn reply_keys_come_in_protocol_order() {
        let r = Reply::ReadOk {
            value: Value::from(3).into(),
        };
        let line = encode(
            "n1",
            "c1",
            ReplyBody {
                reply: &r,
                in_reply_to: 7,
                msg_id: 4,
            },
        );
        assert_eq!(
            line,
            r#"{"src":"n1","dest":"c1","body":{"type":"read_ok","value":3,"in_reply_to":7,"msg_id":4}}"#
        );
        let e = Reply::error(ErrorCode::KeyDoesNotExist, "no key");
        let line = encode(
            "n1",
            "c1",
            ReplyBody {
                reply: &e,
                in_reply_to: 1,
                msg_id: 0,
            },
        );
        assert_eq!(
            line,
            r#"{"src":"n1","dest":"c1","body":{"type":"error","code":20,"text":"no key","in_reply_to":1,"msg_id":0}}"#
        );
    }
}
