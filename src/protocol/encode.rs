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

    #[test]
    fn reply_keys_come_in_protocol_order() {
        let r = Reply::ReadOk {
            value: Value::from(3),
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
