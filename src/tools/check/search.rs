//! The linearizability search for one key: Wing & Gong's depth-first search over
//! the entry list, with Lowe's memoisation of (linearized set, state), as in
//! Porcupine and Knossos. See `docs/checker.md` for a picture.
//!
//! The entry list holds, in time order, a call entry per op and a return entry
//! per op that returned ok; at equal times calls come first, so ops whose times
//! touch are concurrent (Porcupine's rule: A precedes B iff A returned strictly
//! before B was invoked). The ops that may be linearized next (the candidates)
//! are the calls before the first return entry. Ops that may or may not take
//! effect (`ModelOp::ret == None`) have no return entry: nothing ever forces them,
//! so leaving one out means "it never happened". The search succeeds once every
//! op with a return entry is linearized.
//!
//! Two refinements over the textbook version, both sound:
//! - An ok op that never changes the state (a read, a cas from x to x) and can
//!   take effect now is linearized at once (unless the state is still the unknown
//!   `Any` of a window check, which the op would pin), without trying alternatives: moving it to
//!   the front of any linearization changes no other op's result and breaks no
//!   real-time order, since nothing unlinearized had to precede it.
//! - Candidates that must happen are tried before optional ones, and the memo
//!   prunes a configuration when one with the same (linearized ok ops, state) and
//!   a subset of the optional ops applied was already seen: it has every future
//!   the new one has.

use std::collections::HashMap;
use std::time::Instant;

use super::model::{ModelOp, State, step};

/// How a search ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SearchOutcome {
    /// Some order of the ops respects real time and the register's rules.
    Linearizable,
    /// No such order exists. `reach` is the time of the furthest return entry
    /// that ever blocked the search: the ops invoked at or before it already fail
    /// on their own.
    NotLinearizable {
        /// Time of that return entry.
        reach: u64,
    },
    /// The deadline passed first.
    TimedOut,
}

/// How often (in search steps) to look at the clock, starting with the first step:
/// often enough to stop within a millisecond or so, rarely enough not to show in a
/// profile.
const CLOCK_EVERY_STEPS: u64 = 4096;

/// One level of the depth-first search.
struct Frame {
    /// Candidates not tried yet; the next one is at the end.
    untried: Vec<usize>,
    /// The op linearized to reach this level, and the state before it.
    applied: Option<(usize, State)>,
}

/// Decides whether `ops` can be linearized, starting from `init`.
pub(crate) fn search(ops: &[ModelOp], init: State, deadline: Instant) -> SearchOutcome {
    let mut s = Search::new(ops);
    let mut state = init;
    let mut frames = vec![Frame {
        untried: s.candidates(ops, state),
        applied: None,
    }];
    for steps in 1u64.. {
        if steps % CLOCK_EVERY_STEPS == 1 && Instant::now() >= deadline {
            return SearchOutcome::TimedOut;
        }
        if s.must_remaining == 0 {
            return SearchOutcome::Linearizable;
        }
        let Some(top) = frames.last_mut() else { break };
        if let Some(op) = top.untried.pop() {
            if let Some(after) = step(state, &ops[op].kind)
                && s.visit(op, after)
            {
                s.apply(op);
                let untried = s.candidates(ops, after);
                frames.push(Frame {
                    untried,
                    applied: Some((op, state)),
                });
                state = after;
            }
        } else {
            // Every way on from here fails: undo the choice that led here.
            let Some((op, before)) = frames.pop().and_then(|f| f.applied) else {
                break;
            };
            s.undo(op);
            state = before;
        }
    }
    SearchOutcome::NotLinearizable { reach: s.reach }
}

/// Head sentinel of the entry list.
const HEAD: usize = 0;
/// Tail sentinel of the entry list.
const TAIL: usize = 1;

/// The doubly linked entry list, as parallel arrays; entries are removed ("lifted")
/// and put back in LIFO order, so a removed node remembers its neighbours.
struct Entries {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Which op each entry belongs to.
    op: Vec<usize>,
    /// Call entry (true) or return entry (false).
    is_call: Vec<bool>,
    /// Per op, its return entry, if it has one.
    ret_entry: Vec<Option<usize>>,
}

impl Entries {
    fn new(ops: &[ModelOp]) -> Self {
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, o) in ops.iter().enumerate() {
            events.push((o.call, true, i));
            if let Some(r) = o.ret {
                events.push((r, false, i));
            }
        }
        // At equal times calls go first (`!true < !false`): touching ops overlap.
        events.sort_unstable_by_key(|&(time, call, op)| (time, !call, op));
        let n = events.len() + 2;
        let mut list = Entries {
            next: vec![TAIL; n],
            prev: vec![HEAD; n],
            op: vec![usize::MAX; n],
            is_call: vec![false; n],
            ret_entry: vec![None; ops.len()],
        };
        list.link_in_order(&events);
        list
    }

    fn link_in_order(&mut self, events: &[(u64, bool, usize)]) {
        let mut last = HEAD;
        for (node, &(_, call, op)) in (2..).zip(events) {
            self.op[node] = op;
            self.is_call[node] = call;
            if !call {
                self.ret_entry[op] = Some(node);
            }
            self.next[last] = node;
            self.prev[node] = last;
            last = node;
        }
        self.next[last] = TAIL;
        self.prev[TAIL] = last;
    }

    fn first(&self) -> usize {
        self.next[HEAD]
    }

    fn remove(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    fn insert(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = x;
        self.prev[n] = x;
    }

    /// Removes a call entry and its op's return entry.
    fn lift(&mut self, call: usize) {
        self.remove(call);
        if let Some(r) = self.ret_entry[self.op[call]] {
            self.remove(r);
        }
    }

    /// Undoes [`Entries::lift`]; must be called in reverse order of lifts.
    fn unlift(&mut self, call: usize) {
        if let Some(r) = self.ret_entry[self.op[call]] {
            self.insert(r);
        }
        self.insert(call);
    }
}

/// A fixed-size bitset.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize, on: bool) {
        let mask = 1u64 << (i % 64);
        if on {
            self.0[i / 64] |= mask
        } else {
            self.0[i / 64] &= !mask
        }
    }
    fn is_subset_of(&self, other: &Bits) -> bool {
        self.0.iter().zip(&other.0).all(|(a, b)| a & !b == 0)
    }
}

/// Search state besides the stack of frames: the entry list and the memo.
struct Search {
    list: Entries,
    /// Per op: its bit in `done` (ops with a return) or `maybe` (optional ops).
    bit: Vec<usize>,
    optional: Vec<bool>,
    /// Per op: its call entry.
    call_entry: Vec<usize>,
    /// Ops with a return entry not yet linearized.
    must_remaining: usize,
    /// Linearized ops that had to be (they returned ok).
    done: Bits,
    /// Linearized optional ops.
    maybe: Bits,
    /// (done, state) -> the minimal `maybe` sets already explored with them.
    memo: HashMap<(Bits, State), Vec<Bits>>,
    /// The latest time of a return entry that bounded the candidates.
    reach: u64,
}

impl Search {
    fn new(ops: &[ModelOp]) -> Self {
        let optional: Vec<bool> = ops.iter().map(|o| o.ret.is_none()).collect();
        let (mut n_done, mut n_maybe) = (0, 0);
        let bit = optional
            .iter()
            .map(|&opt| {
                let counter = if opt { &mut n_maybe } else { &mut n_done };
                *counter += 1;
                *counter - 1
            })
            .collect();
        let list = Entries::new(ops);
        let mut call_entry = vec![0; ops.len()];
        for e in 2..list.op.len() {
            if list.is_call[e] {
                call_entry[list.op[e]] = e;
            }
        }
        Search {
            list,
            bit,
            optional,
            call_entry,
            must_remaining: n_done,
            done: Bits::new(n_done),
            maybe: Bits::new(n_maybe),
            memo: HashMap::new(),
            reach: 0,
        }
    }

    /// The ops that may be linearized next in `state`, in the order to try them
    /// (last first): must-happen ops in history order, then optional ones; or just
    /// one state-preserving must-happen op, which is always safe to take first.
    fn candidates(&mut self, ops: &[ModelOp], state: State) -> Vec<usize> {
        let (mut must, mut maybe) = (Vec::new(), Vec::new());
        let mut e = self.list.first();
        while e != TAIL && self.list.is_call[e] {
            let op = self.list.op[e];
            if self.optional[op] {
                maybe.push(op);
            } else if state != State::Any
                && ops[op].kind.never_changes_state()
                && step(state, &ops[op].kind).is_some()
            {
                return vec![op];
            } else {
                must.push(op);
            }
            e = self.list.next[e];
        }
        if e != TAIL {
            self.reach = self.reach.max(ops[self.list.op[e]].ret.unwrap_or(0));
        }
        maybe.reverse();
        maybe.extend(must.into_iter().rev());
        maybe
    }

    fn mark(&mut self, op: usize, on: bool) {
        let bits = if self.optional[op] {
            &mut self.maybe
        } else {
            &mut self.done
        };
        bits.set(self.bit[op], on);
    }

    /// Marks `op` linearized, leading to `state`; false (and unmarked) if that
    /// configuration, or one that dominates it, was seen before.
    fn visit(&mut self, op: usize, state: State) -> bool {
        self.mark(op, true);
        let seen = self.memo.entry((self.done.clone(), state)).or_default();
        if seen.iter().any(|old| old.is_subset_of(&self.maybe)) {
            self.mark(op, false);
            return false;
        }
        seen.retain(|old| !self.maybe.is_subset_of(old));
        seen.push(self.maybe.clone());
        true
    }

    /// Takes a visited op out of the list.
    fn apply(&mut self, op: usize) {
        self.list.lift(self.call_entry[op]);
        if !self.optional[op] {
            self.must_remaining -= 1;
        }
    }

    /// Undoes [`Search::visit`] and [`Search::apply`]; in reverse order of applies.
    fn undo(&mut self, op: usize) {
        self.list.unlift(self.call_entry[op]);
        self.mark(op, false);
        if !self.optional[op] {
            self.must_remaining += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::check::model::Kind;
    use std::time::Duration;

    fn op(call: u64, ret: Option<u64>, kind: Kind) -> ModelOp {
        ModelOp {
            call,
            ret,
            kind,
            pair: 0,
        }
    }

    fn run(ops: &[ModelOp]) -> SearchOutcome {
        search(ops, State::Nil, Instant::now() + Duration::from_secs(5))
    }

    #[test]
    fn sequential_write_then_read() {
        let w = op(0, Some(1), Kind::Write(State::Int(1)));
        let r = op(2, Some(3), Kind::Read(State::Int(1)));
        assert_eq!(run(&[w.clone(), r]), SearchOutcome::Linearizable);
        let stale = op(2, Some(3), Kind::Read(State::Nil));
        assert_eq!(
            run(&[w, stale]),
            SearchOutcome::NotLinearizable { reach: 3 }
        );
    }

    #[test]
    fn concurrent_read_may_see_either() {
        let w = op(0, Some(3), Kind::Write(State::Int(1)));
        let old = op(1, Some(2), Kind::Read(State::Nil));
        let new = op(4, Some(5), Kind::Read(State::Int(1)));
        assert_eq!(run(&[w, old, new]), SearchOutcome::Linearizable);
    }

    #[test]
    fn optional_write_may_never_happen() {
        let w = op(0, None, Kind::Write(State::Int(1)));
        let r = op(1, Some(2), Kind::Read(State::Nil));
        assert_eq!(run(&[w.clone(), r]), SearchOutcome::Linearizable);
        let seen = op(3, Some(4), Kind::Read(State::Int(1)));
        let unseen = op(5, Some(6), Kind::Read(State::Nil));
        assert_eq!(
            run(&[w, seen, unseen]),
            SearchOutcome::NotLinearizable { reach: 6 }
        );
    }

    /// An `add` of 0 turns a missing key into 0: it may not be taken first just
    /// because it leaves other states alone. The concurrent read of nil must be
    /// allowed to go before it.
    #[test]
    fn an_add_of_zero_is_not_taken_first_on_a_missing_key() {
        let add0 = Kind::Add {
            delta: 0,
            total: Some(State::Int(0)),
        };
        let ops = [op(0, Some(3), add0), op(1, Some(2), Kind::Read(State::Nil))];
        assert_eq!(run(&ops), SearchOutcome::Linearizable);
    }

    #[test]
    fn ops_whose_times_touch_are_concurrent() {
        // The write returns at 5 and the read is invoked at 5: either order.
        let w = op(0, Some(5), Kind::Write(State::Int(1)));
        let r = op(5, Some(6), Kind::Read(State::Nil));
        assert_eq!(run(&[w.clone(), r]), SearchOutcome::Linearizable);
        // One ns later, the read must see the write.
        let r = op(6, Some(7), Kind::Read(State::Nil));
        assert_eq!(run(&[w, r]), SearchOutcome::NotLinearizable { reach: 7 });
    }
}
