//! A client's mailbox, as Maelstrom's client (`client.clj` `recv!`) has one: the
//! messages the network delivers to the client wait in a queue, and a call
//! takes from it, in order, the first reply to its own `msg_id`, discarding
//! what comes before. So a reply that arrives before its request was sent (a
//! node answering a `msg_id` it guessed) answers that request when it comes,
//! and a late reply to a call that gave up is discarded by the next call.
//! The network ([`super::net`]) delivers into it; the client
//! ([`super::client`]) registers and awaits.
//!
//! It may not send: delivery is the network's, sending the client's.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde_json::Value;
use tokio::sync::oneshot;

/// Most messages kept for a client that is not waiting (beyond Maelstrom,
/// whose queue is unbounded): a node flooding an idle client cannot grow the
/// harness without bound. Past it the oldest is dropped.
pub const QUEUED_MAX: usize = 4096;

/// Messages delivered to one client and its one call in progress (Jepsen's
/// rule: one outstanding operation per client).
#[derive(Default)]
pub struct Mailbox {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Delivered while no call waited, oldest first.
    queue: VecDeque<Value>,
    /// The call waiting: its `msg_id` and where its reply goes.
    waiting: Option<(u64, oneshot::Sender<Value>)>,
    /// The last `msg_id` a call waited for: a message answering it or an
    /// earlier one can never be taken, so it is not kept.
    last: u64,
}

fn in_reply_to(body: &Value) -> Option<u64> {
    body.get("in_reply_to").and_then(Value::as_u64)
}

impl Mailbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Delivers a message: to the waiting call if it answers it; discarded if a
    /// call waits for another (Maelstrom's `recv!` skips it); else queued for
    /// the calls to come, unless no later call can take it.
    pub fn deliver(&self, body: &Value) {
        let mut g = self.lock();
        let to = in_reply_to(body);
        if let Some((id, _)) = &g.waiting {
            if to == Some(*id)
                && let Some((_, tx)) = g.waiting.take()
            {
                let _ = tx.send(body.clone());
            }
            return;
        }
        if to.is_some_and(|to| to > g.last) {
            if g.queue.len() >= QUEUED_MAX {
                g.queue.pop_front();
            }
            g.queue.push_back(body.clone());
        }
    }

    /// A receiver for the reply to `msg_id`, to be awaited by the caller: the
    /// first queued message answering it if there is one (those before it are
    /// discarded), else the next one delivered.
    pub(super) fn expect(&self, msg_id: u64) -> oneshot::Receiver<Value> {
        let (tx, rx) = oneshot::channel();
        let mut g = self.lock();
        g.last = g.last.max(msg_id);
        while let Some(m) = g.queue.pop_front() {
            if in_reply_to(&m) == Some(msg_id) {
                let _ = tx.send(m);
                return rx;
            }
        }
        g.waiting = Some((msg_id, tx));
        rx
    }

    /// Stops waiting for the reply to `msg_id` (the call gave up).
    pub(super) fn forget(&self, msg_id: u64) {
        let mut g = self.lock();
        if g.waiting.as_ref().is_some_and(|(id, _)| *id == msg_id) {
            g.waiting = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn reply(to: u64, v: u64) -> Value {
        json!({"type": "read_ok", "value": v, "in_reply_to": to})
    }

    fn ready(rx: &mut oneshot::Receiver<Value>) -> Option<Value> {
        rx.try_recv().ok()
    }

    #[test]
    fn a_reply_delivered_before_its_request_answers_it() {
        let mb = Mailbox::default();
        let mut rx = mb.expect(1);
        mb.deliver(&reply(1, 10));
        // An early reply to msg_id 2, while nobody waits: kept.
        mb.deliver(&reply(2, 999));
        assert_eq!(ready(&mut rx), Some(reply(1, 10)));
        let mut rx = mb.expect(2);
        assert_eq!(
            ready(&mut rx),
            Some(reply(2, 999)),
            "Maelstrom's recv! takes it"
        );
    }

    #[test]
    fn while_a_call_waits_other_messages_are_discarded() {
        let mb = Mailbox::default();
        let mut rx = mb.expect(1);
        // Early for 2 but arriving while 1 waits: recv! skips it.
        mb.deliver(&reply(2, 999));
        mb.deliver(&reply(1, 10));
        assert_eq!(ready(&mut rx), Some(reply(1, 10)));
        let mut rx = mb.expect(2);
        assert_eq!(ready(&mut rx), None);
        mb.deliver(&reply(2, 20));
        assert_eq!(ready(&mut rx), Some(reply(2, 20)));
    }

    #[test]
    fn late_replies_are_discarded_and_queued_ones_before_a_match_too() {
        let mb = Mailbox::default();
        let _rx = mb.expect(1);
        mb.forget(1);
        // The late reply to 1 can never be taken; 3's is kept, then skipped by
        // the call for 2, as recv! would (it comes before 2's reply).
        mb.deliver(&reply(1, 10));
        mb.deliver(&reply(3, 30));
        mb.deliver(&reply(2, 20));
        let mut rx = mb.expect(2);
        assert_eq!(ready(&mut rx), Some(reply(2, 20)));
        let mut rx = mb.expect(3);
        assert_eq!(
            ready(&mut rx),
            None,
            "3's reply was discarded on the way to 2's"
        );
    }

    #[test]
    fn the_queue_is_bounded() {
        let mb = Mailbox::default();
        for i in 0..(QUEUED_MAX as u64 + 10) {
            mb.deliver(&reply(2 + i, i));
        }
        assert_eq!(mb.lock().queue.len(), QUEUED_MAX);
        // The oldest were dropped: 2's reply is gone, the last one is there.
        let mut rx = mb.expect(2);
        assert_eq!(ready(&mut rx), None);
    }
}
