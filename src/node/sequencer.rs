//! The reply-order rule of `docs/protocol.md`, "Reply order", as a pure structure.
//!
//! Every client request gets a ticket in arrival order. Requests that wait on the
//! log (mutations) are *pending* until answered. A reply is emitted only when no
//! pending request with an earlier ticket remains; otherwise it is held. So a read,
//! a cached retry or a parse error never overtakes an earlier write on the same node,
//! and a single-node cluster fed a script answers exactly like a sequential store.
//!
//! Owns: the order of one output stream's client replies. Touches nothing else:
//! no I/O, no node, no message format (the [`super::driver`]'s writer uses it).

use std::collections::{BTreeMap, BTreeSet};

/// Holds replies back until every earlier log-waiting request is answered.
#[derive(Debug)]
pub struct Sequencer<T> {
    /// Tickets of log-waiting requests not yet answered.
    pending_log: BTreeSet<u64>,
    /// Answered replies waiting for an earlier pending request, by ticket.
    held: BTreeMap<u64, T>,
    /// Requests accepted so far.
    accepted: u64,
    /// Replies released so far.
    released: u64,
}

impl<T> Default for Sequencer<T> {
    fn default() -> Self {
        Sequencer {
            pending_log: BTreeSet::new(),
            held: BTreeMap::new(),
            accepted: 0,
            released: 0,
        }
    }
}

impl<T> Sequencer<T> {
    /// Records a new request; `log_waiting` if it will wait on a log entry.
    pub fn accept(&mut self, ticket: u64, log_waiting: bool) {
        self.accepted += 1;
        if log_waiting {
            self.pending_log.insert(ticket);
        }
    }

    /// Records the reply to `ticket`; returns the replies now free to go, in order.
    pub fn answer(&mut self, ticket: u64, item: T) -> Vec<T> {
        self.pending_log.remove(&ticket);
        self.held.insert(ticket, item);
        let limit = self.pending_log.first().copied().unwrap_or(u64::MAX);
        let still_held = self.held.split_off(&limit);
        let free = std::mem::replace(&mut self.held, still_held);
        self.released += free.len() as u64;
        free.into_values().collect()
    }

    /// Whether every accepted request has been answered and released.
    pub fn idle(&self) -> bool {
        self.accepted == self.released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_waits_for_an_earlier_write_but_not_a_later_one() {
        let mut s = Sequencer::default();
        s.accept(1, true); // write
        s.accept(2, false); // read
        s.accept(3, true); // write
        assert!(s.answer(2, "read").is_empty());
        assert_eq!(s.answer(1, "w1"), vec!["w1", "read"]);
        assert_eq!(s.answer(3, "w3"), vec!["w3"]);
        assert!(s.idle());
    }

    #[test]
    fn writes_completing_out_of_order_are_released_in_order() {
        let mut s = Sequencer::default();
        s.accept(1, true);
        s.accept(2, true);
        assert!(s.answer(2, "w2").is_empty());
        assert!(!s.idle());
        assert_eq!(s.answer(1, "w1"), vec!["w1", "w2"]);
        assert!(s.idle());
    }

    #[test]
    fn non_log_replies_are_not_ordered_among_themselves() {
        let mut s = Sequencer::default();
        s.accept(1, false);
        s.accept(2, false);
        assert_eq!(s.answer(2, "r2"), vec!["r2"]);
        assert_eq!(s.answer(1, "r1"), vec!["r1"]);
    }
}
