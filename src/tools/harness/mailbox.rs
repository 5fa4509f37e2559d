//! A client's mailbox: the calls awaiting replies, keyed by `msg_id`. The network
//! ([`super::net`]) delivers replies into it; the client ([`super::client`])
//! registers and awaits them.
//!
//! It may not send: delivery is the network's, sending the client's.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::Value;
use tokio::sync::oneshot;

/// Replies awaited by one client, keyed by the request's `msg_id`. Bounded by the
/// client's outstanding calls (one per worker, Jepsen's rule).
#[derive(Default)]
pub struct Mailbox {
    waiting: Mutex<HashMap<u64, oneshot::Sender<Value>>>,
}

impl Mailbox {
    /// Hands a reply body to the call awaiting its `in_reply_to`; a late or unsolicited
    /// reply (the call timed out) is dropped, as Maelstrom's client does.
    pub fn deliver(&self, body: &Value) {
        let Some(to) = body.get("in_reply_to").and_then(Value::as_u64) else {
            return;
        };
        let tx = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&to);
        if let Some(tx) = tx {
            let _ = tx.send(body.clone());
        }
    }

    /// A receiver for the reply to `msg_id`, to be awaited by the caller.
    pub(super) fn expect(&self, msg_id: u64) -> oneshot::Receiver<Value> {
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(msg_id, tx);
        rx
    }

    /// Stops waiting for the reply to `msg_id` (the call gave up).
    pub(super) fn forget(&self, msg_id: u64) {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&msg_id);
    }
}
