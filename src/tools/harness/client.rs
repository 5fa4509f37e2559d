//! A Maelstrom client: an id `cN`, its own `msg_id` counter from 1, and a mailbox that
//! routes each reply to the call waiting on its `in_reply_to`.
//!
//! It may not touch the network's queues: it sends through [`super::net`] and awaits its mailbox.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::mailbox::Mailbox;
use super::net::{Net, SendError};

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
