//! Retries that join their request's entry instead of entering the log again.
//!
//! A client that gets no reply in time retries with the same (`client_id`, `seq`).
//! The session table makes the retry safe, but each retry proposed is one more
//! entry: the whole request written, replicated and synced again, only for the
//! apply to answer it from the cache. Under overload that is what keeps a
//! cluster overloaded: requests time out because the log is busy, their retries
//! make it busier, and with large values no request finishes in time again.
//!
//! So a leader remembers, per client, the latest session request it has proposed
//! and not yet seen applied. A retry of exactly that request (same client, same
//! seq) arriving at the leader waits for that entry's outcome rather than
//! proposing its own: one entry per request, however often it is retried.
//!
//! ```text
//!  leader: propose (c, 5) ──claim──▶ latest[c] = 5
//!  retry  (c, 5)          ──claim──▶ joins latest[c]          (no new entry)
//!  apply  (c, 5) ─────────applied──▶ latest[c] removed, joiners get its outcome
//!  propose (c, 6) or close c ──────▶ latest[c] = 6: joiners of 5 are let go
//!  a new term ─────────────────────▶ all let go
//! ```
//!
//! A joiner that is let go (its entry was superseded, withdrawn or may have
//! been truncated) proposes its request after all, so it is answered as a
//! retry arriving after everything before it. Joining only the client's latest
//! proposal keeps that answer: nothing naming the client was proposed between
//! the entry and the retry, and the outcome of applying a session request is
//! also what the session table answers a retry of it right after.
//!
//! Owned by the state machine store (the apply loop reports each session
//! entry applied); the node claims and withdraws. Nothing here is replicated
//! state: a follower's registry stays empty, and losing it loses only the
//! saving.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::oneshot;

use crate::state::{ClientId, Outcome};

/// What a leader should do with a session request it is about to propose.
#[derive(Debug)]
pub enum Claim {
    /// Propose it: it is now the client's latest request in flight.
    Propose,
    /// Do not propose: the same request is in the log; its outcome arrives here,
    /// or the sender is dropped if the wait was let go (then propose after all).
    Join(oneshot::Receiver<Outcome>),
}

/// Which of a client's requests is in flight: a seq, or a close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// A key-value request with this seq.
    Seq(u64),
    /// `close_session` (never joined; it only supersedes).
    Close,
}

#[derive(Debug)]
struct Latest {
    naming: Naming,
    joiners: Vec<oneshot::Sender<Outcome>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The term the entries were claimed in; a claim in another term starts over.
    term: u64,
    /// Per client, its latest request proposed here and not yet applied.
    latest: HashMap<ClientId, Latest>,
}

impl Inner {
    /// Removes `client`'s entry if `naming` is its latest request.
    fn take_latest(&mut self, client: &str, naming: Naming) -> Option<Latest> {
        if self.latest.get(client)?.naming != naming {
            return None;
        }
        self.latest.remove(client)
    }
}

/// The registry (see the module doc).
#[derive(Debug, Default)]
pub struct Inflight {
    inner: Mutex<Inner>,
    /// Clients in `latest`, read without the lock by the apply loop.
    len: AtomicUsize,
}

impl Inflight {
    /// Called by a leader in `term` before proposing a request naming `client`.
    /// A retry of the client's latest request in flight joins it; anything else
    /// becomes the latest (letting go of joiners of an older one). At most
    /// `max` clients are remembered: past that, requests of new clients are
    /// proposed without being remembered.
    pub fn claim(&self, term: u64, client: &str, naming: Naming, max: usize) -> Claim {
        let mut inner = self.lock();
        if inner.term != term {
            inner.latest.clear();
            inner.term = term;
        }
        let fresh = Latest {
            naming,
            joiners: Vec::new(),
        };
        let claim = match inner.latest.get_mut(client) {
            Some(latest) if latest.naming == naming && naming != Naming::Close => {
                let (tx, rx) = oneshot::channel();
                latest.joiners.push(tx);
                Claim::Join(rx)
            }
            // Replacing it drops (lets go) the older request's joiners.
            Some(latest) => {
                *latest = fresh;
                Claim::Propose
            }
            None => {
                if inner.latest.len() < max {
                    inner.latest.insert(ClientId::from(client), fresh);
                }
                Claim::Propose
            }
        };
        self.len.store(inner.latest.len(), Ordering::Release);
        claim
    }

    /// The proposal of `naming` for `client` ended without its outcome (refused
    /// before the log, or discarded): forget it, letting its joiners go.
    pub fn withdraw(&self, client: &str, naming: Naming) {
        let mut inner = self.lock();
        inner.take_latest(client, naming);
        self.len.store(inner.latest.len(), Ordering::Release);
    }

    /// An entry naming `client` was applied with `outcome`: if it is the
    /// client's latest request here, its joiners get the outcome.
    pub fn applied(&self, client: &str, naming: Naming, outcome: &Outcome) {
        if self.len.load(Ordering::Acquire) == 0 {
            return;
        }
        let joiners = {
            let mut inner = self.lock();
            let Some(latest) = inner.take_latest(client, naming) else {
                return;
            };
            self.len.store(inner.latest.len(), Ordering::Release);
            latest.joiners
        };
        for joiner in joiners {
            // A joiner that stopped waiting (its deadline passed) is gone: fine.
            let _ = joiner.send(outcome.clone());
        }
    }

    /// Clients remembered now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Whether no client is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a joiner was let go (its sender dropped).
    fn let_go(rx: &mut oneshot::Receiver<Outcome>) -> bool {
        matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Closed))
    }

    /// Whether a joiner is still waiting.
    fn waiting(rx: &mut oneshot::Receiver<Outcome>) -> bool {
        matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty))
    }

    fn joined(c: Claim) -> oneshot::Receiver<Outcome> {
        match c {
            Claim::Join(rx) => rx,
            Claim::Propose => panic!("expected a join"),
        }
    }

    #[test]
    fn a_retry_joins_the_latest_request_and_gets_its_outcome() {
        let r = Inflight::default();
        assert!(matches!(
            r.claim(1, "c", Naming::Seq(5), 10),
            Claim::Propose
        ));
        let mut a = joined(r.claim(1, "c", Naming::Seq(5), 10));
        let mut b = joined(r.claim(1, "c", Naming::Seq(5), 10));
        assert_eq!(r.len(), 1);
        // Another client's entry, or another seq, wakes nobody.
        r.applied("d", Naming::Seq(5), &Outcome::Written);
        r.applied("c", Naming::Seq(4), &Outcome::Written);
        assert!(a.try_recv().is_err() && b.try_recv().is_err());
        r.applied("c", Naming::Seq(5), &Outcome::Swapped);
        assert_eq!(a.try_recv().unwrap(), Outcome::Swapped);
        assert_eq!(b.try_recv().unwrap(), Outcome::Swapped);
        assert!(r.is_empty());
        // Applied and forgotten: the next retry proposes (and is answered from the cache).
        assert!(matches!(
            r.claim(1, "c", Naming::Seq(5), 10),
            Claim::Propose
        ));
    }

    #[test]
    fn joiners_are_let_go_by_a_newer_request_a_close_a_withdrawal_or_a_new_term() {
        let r = Inflight::default();
        let _ = r.claim(1, "c", Naming::Seq(5), 10);
        let mut a = joined(r.claim(1, "c", Naming::Seq(5), 10));
        assert!(matches!(
            r.claim(1, "c", Naming::Seq(6), 10),
            Claim::Propose
        ));
        assert!(let_go(&mut a));
        // The older entry applying now wakes nobody: seq 6 is the latest.
        let mut b = joined(r.claim(1, "c", Naming::Seq(6), 10));
        r.applied("c", Naming::Seq(5), &Outcome::Written);
        assert!(waiting(&mut b));
        // A close supersedes, and is never joined.
        assert!(matches!(r.claim(1, "c", Naming::Close, 10), Claim::Propose));
        assert!(let_go(&mut b));
        assert!(matches!(r.claim(1, "c", Naming::Close, 10), Claim::Propose));
        // Withdrawn: let go.
        let _ = r.claim(1, "d", Naming::Seq(1), 10);
        let mut d = joined(r.claim(1, "d", Naming::Seq(1), 10));
        r.withdraw("d", Naming::Seq(2)); // not its latest: nothing
        assert!(waiting(&mut d));
        r.withdraw("d", Naming::Seq(1));
        assert!(let_go(&mut d));
        // A new term forgets everything.
        let _ = r.claim(1, "e", Naming::Seq(1), 10);
        let mut e = joined(r.claim(1, "e", Naming::Seq(1), 10));
        assert!(matches!(
            r.claim(2, "e", Naming::Seq(1), 10),
            Claim::Propose
        ));
        assert!(let_go(&mut e));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn at_most_max_clients_are_remembered() {
        let r = Inflight::default();
        for i in 0..5 {
            let _ = r.claim(1, &format!("c{i}"), Naming::Seq(1), 3);
        }
        assert_eq!(r.len(), 3);
        // Unremembered clients propose every time.
        assert!(matches!(
            r.claim(1, "c4", Naming::Seq(1), 3),
            Claim::Propose
        ));
        assert!(matches!(
            r.claim(1, "c0", Naming::Seq(1), 3),
            Claim::Join(_)
        ));
    }
}
