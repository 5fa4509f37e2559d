//! [`PendingCalls`]: the peer RPCs a [`Transport`](super::network::Transport) has
//! sent and whose reply it awaits, by the `msg_id` they were sent with. Both
//! transports use it: Maelstrom mode for the calls it writes on stdout, TCP mode
//! for each outgoing peer connection.
//!
//! It lives beside [`super::network`] because that module owns the RPC vocabulary
//! (the `Transport` trait, [`CallError`] and its delivery rule, reply bodies): a
//! call's outcome is a `Result<Body, CallError>` in those terms. Owns: the
//! table and its sweep. May not touch: sockets, stdout, the node.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

use super::network::{Body, CallError};

/// The outcome a caller waits for.
pub type ReplyTx = oneshot::Sender<Result<Body, CallError>>;

/// Inserts between two sweeps of calls whose callers gave up. A caller whose
/// deadline passes drops its receiver but its entry stays until a reply comes,
/// and a peer that never answers would leave them all: a sweep every this many
/// calls bounds the table by the calls of one deadline plus this, at a cost of
/// one pass per this many inserts (cheap next to the calls themselves).
pub const SWEEP_EVERY_INSERTS: u32 = 1024;

/// The calls awaiting a reply.
#[derive(Default)]
pub struct PendingCalls {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Callers by the `msg_id` of their request.
    waiting: BTreeMap<u64, ReplyTx>,
    /// Inserts since the last sweep.
    inserts: u32,
}

impl PendingCalls {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers the caller of the request sent (or about to be) as `msg_id`.
    pub fn insert(&self, msg_id: u64, reply: ReplyTx) {
        let mut inner = self.lock();
        inner.waiting.insert(msg_id, reply);
        inner.inserts += 1;
        if inner.inserts >= SWEEP_EVERY_INSERTS {
            inner.waiting.retain(|_, tx| !tx.is_closed());
            inner.inserts = 0;
        }
    }

    /// Takes the caller of `msg_id` out, if it is still registered.
    pub fn take(&self, msg_id: u64) -> Option<ReplyTx> {
        self.lock().waiting.remove(&msg_id)
    }

    /// Hands `outcome` to the caller of `in_reply_to`; false if none waits (a
    /// late or unknown reply).
    pub fn complete(&self, in_reply_to: u64, outcome: Result<Body, CallError>) -> bool {
        match self.take(in_reply_to) {
            Some(tx) => {
                drop(tx.send(outcome));
                true
            }
            None => false,
        }
    }

    /// Tells the caller of `in_reply_to` that `peer`'s reply could not be read:
    /// error 13, at once rather than at its deadline (the peer may have acted on
    /// the request, so the outcome is indefinite).
    pub fn unreadable(&self, in_reply_to: u64, peer: &str, why: &str) {
        self.complete(
            in_reply_to,
            Err(CallError::Remote {
                peer: peer.to_string(),
                code: 13,
                text: format!("its reply could not be read ({why}); it may have been acted on"),
            }),
        );
    }

    /// Forgets every caller: each sees its sender dropped (a lost connection:
    /// maybe delivered).
    pub fn clear(&self) {
        self.lock().waiting.clear();
    }

    /// How many callers are registered.
    pub fn len(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abandoned_calls_are_swept_and_live_ones_kept() {
        let table = PendingCalls::default();
        let (live, mut live_rx) = oneshot::channel();
        table.insert(0, live);
        for id in 1..u64::from(SWEEP_EVERY_INSERTS) {
            let (tx, rx) = oneshot::channel();
            drop(rx); // the caller gave up
            table.insert(id, tx);
        }
        assert_eq!(
            table.len(),
            1,
            "the sweep at the threshold keeps the live call only"
        );
        assert!(table.complete(0, Ok(Body::new())));
        assert!(live_rx.try_recv().is_ok_and(|r| r.is_ok()));
        assert!(
            !table.complete(0, Ok(Body::new())),
            "a reply is delivered once"
        );
        let (tx, mut rx) = oneshot::channel();
        table.insert(7, tx);
        table.unreadable(7, "n2", "not JSON");
        match rx.try_recv() {
            Ok(Err(CallError::Remote { code: 13, peer, .. })) => assert_eq!(peer, "n2"),
            other => panic!("{other:?}"),
        }
        assert!(table.is_empty());
    }
}
