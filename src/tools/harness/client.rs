//! A Maelstrom client: an id `cN`, its own `msg_id` counter from 1, and a mailbox that
//! routes each reply to the call waiting on its `in_reply_to`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::oneshot;

use super::net::{Net, SendError};

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

    fn expect(&self, msg_id: u64) -> oneshot::Receiver<Value> {
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(msg_id, tx);
        rx
    }

    fn forget(&self, msg_id: u64) {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&msg_id);
    }
}

/// Why a call got no reply.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// No reply within the timeout.
    Timeout,
    /// The network refused the request (e.g. a full queue).
    Refused(SendError),
}

/// One client connection.
pub struct Client {
    id: String,
    next_msg_id: u64,
    net: Arc<Net>,
    mailbox: Arc<Mailbox>,
}

impl Client {
    /// Registers client `id` on `net`.
    pub fn open(net: Arc<Net>, id: String) -> Client {
        let mailbox = net.register_client(&id);
        Client {
            id,
            next_msg_id: 0,
            net,
            mailbox,
        }
    }

    /// This client's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Sends `body` (with a fresh `msg_id`) to `node` and waits up to `timeout` for the reply.
    pub async fn call(
        &mut self,
        node: &str,
        mut body: Map<String, Value>,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        self.next_msg_id += 1;
        let msg_id = self.next_msg_id;
        body.insert("msg_id".into(), Value::from(msg_id));
        let rx = self.mailbox.expect(msg_id);
        if let Err(e) = self
            .net
            .send(Instant::now(), &self.id, node, &Value::Object(body))
        {
            self.mailbox.forget(msg_id);
            return Err(CallError::Refused(e));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            _ => {
                self.mailbox.forget(msg_id);
                Err(CallError::Timeout)
            }
        }
    }
}
