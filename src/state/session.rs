//! The session table: which (client, seq) pairs have executed and what they answered.
//!
//! Everything here is replicated state: ordered collections only, no clock (time is
//! the entry timestamp the caller passes in), so two replicas fed the same entries
//! hold byte-identical tables.

use std::collections::{BTreeMap, BTreeSet};

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use super::outcome::{Failure, Outcome};

/// A session name. Inline up to 24 bytes, so a typical id costs no heap allocation.
pub type ClientId = CompactString;

/// Bounds of the session table. Replicated (part of the state and the snapshot),
/// because replicas that evicted at different caps would diverge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionLimits {
    /// Most live sessions; opening one more evicts the least recently used.
    pub sessions_max: u64,
    /// Most cached replies per session; the oldest is dropped past it.
    pub replies_per_session_max: u64,
    /// Most tombstones of expired/evicted sessions kept; the oldest is dropped past it.
    pub tombstones_max: u64,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            sessions_max: 1_000_000,
            replies_per_session_max: 64,
            tombstones_max: 1_000_000,
        }
    }
}

/// One client's session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "SessionRecord")]
pub struct Session {
    /// Cluster time (ms) of the last entry that touched the session; the LRU and
    /// expiry key.
    pub last_seen_ms: u64,
    /// The highest seq executed so far; `None` before any. Kept as the seq itself
    /// (not "one more than it"), so every `u64` seq, `u64::MAX` included, is
    /// representable and nothing here ever adds to a client's number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_executed: Option<u64>,
    /// Highest `first_outstanding` the client has sent; `None` for a simple client.
    /// Replies below it are gone, and seqs below it never execute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_outstanding: Option<u64>,
    /// Cached replies by seq, at most `replies_per_session_max`.
    #[serde(default, skip_serializing_if = "Replies::is_empty")]
    pub replies: Replies,
}

/// A session as stored in snapshots, old and new: snapshots written before
/// `last_executed` held `executed_through` (one more than the highest executed
/// seq, 0 for none), which is read here so existing data dirs keep their sessions.
#[derive(Deserialize)]
struct SessionRecord {
    last_seen_ms: u64,
    #[serde(default)]
    last_executed: Option<u64>,
    #[serde(default)]
    executed_through: Option<u64>,
    #[serde(default)]
    first_outstanding: Option<u64>,
    #[serde(default)]
    replies: Replies,
}

impl From<SessionRecord> for Session {
    fn from(r: SessionRecord) -> Session {
        Session {
            last_seen_ms: r.last_seen_ms,
            last_executed: r
                .last_executed
                .or_else(|| r.executed_through.and_then(|n| n.checked_sub(1))),
            first_outstanding: r.first_outstanding,
            replies: r.replies,
        }
    }
}

/// A session's cached replies by seq, ascending. Absent when empty, so an idle
/// session without replies costs 8 bytes here; otherwise a vector sorted by seq,
/// sized to what it holds. (A `BTreeMap` allocates a whole node, 11 slots of
/// about 50 bytes, for the one reply a simple client holds: that node was half
/// of a filled session's memory, and of the copy a snapshot takes.) At most
/// `replies_per_session_max` (64) entries, so the linear moves are short.
/// Serialized as the map `{seq: reply}`, as before.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(from = "BTreeMap<u64, Outcome>")]
#[allow(clippy::box_collection)] // deliberate: 8 bytes per idle session instead of 24
pub struct Replies(Option<Box<Vec<(u64, Outcome)>>>);

/// Written as the map `{seq: reply}` straight from the vector (ascending, as a
/// `BTreeMap` writes it), without building one per session while encoding.
impl Serialize for Replies {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let held = self.0.as_deref().map_or(&[][..], Vec::as_slice);
        s.collect_map(held.iter().map(|(seq, reply)| (seq, reply)))
    }
}

impl From<BTreeMap<u64, Outcome>> for Replies {
    fn from(map: BTreeMap<u64, Outcome>) -> Self {
        Replies((!map.is_empty()).then(|| Box::new(map.into_iter().collect())))
    }
}

impl Replies {
    /// Whether no reply is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Number of replies held.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |v| v.len())
    }

    /// The reply cached for `seq`.
    pub fn get(&self, seq: &u64) -> Option<&Outcome> {
        let v = self.0.as_ref()?;
        let i = v.binary_search_by_key(seq, |(s, _)| *s).ok()?;
        Some(&v[i].1)
    }

    /// The lowest seq whose reply is held.
    pub fn first_seq(&self) -> Option<u64> {
        self.0.as_ref()?.first().map(|(s, _)| *s)
    }

    /// The reply of the highest seq held.
    pub fn last(&self) -> Option<&Outcome> {
        self.0.as_ref()?.last().map(|(_, r)| r)
    }

    fn insert(&mut self, seq: u64, reply: Outcome) {
        // Exactly one slot for the first reply (a vector's first push takes four).
        let v = self
            .0
            .get_or_insert_with(|| Box::new(Vec::with_capacity(1)));
        match v.binary_search_by_key(&seq, |(s, _)| *s) {
            Ok(i) => v[i].1 = reply,
            Err(i) => v.insert(i, (seq, reply)),
        }
    }

    /// Removes the lowest seq's reply, returning its seq.
    fn pop_first(&mut self) -> Option<u64> {
        let v = self.0.as_mut()?;
        let seq = (!v.is_empty()).then(|| v.remove(0).0);
        self.normalize();
        seq
    }

    /// Drops every reply below `seq`.
    fn drop_below(&mut self, seq: u64) {
        if let Some(v) = self.0.as_mut() {
            let keep_from = v.partition_point(|(s, _)| *s < seq);
            v.drain(..keep_from);
        }
        self.normalize();
    }

    /// Empty vectors are stored as absent, so equal contents compare (and serialize) equal.
    fn normalize(&mut self) {
        if self.0.as_ref().is_some_and(|v| v.is_empty()) {
            self.0 = None;
        }
    }
}

/// Why a session was removed: kept in its tombstone for the error text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Removal {
    /// Idle past the timeout, removed by a GC entry.
    Expired,
    /// Least recently used when the table was full.
    Evicted,
    /// Closed by the client.
    Closed,
}

/// What the table decides for a session-carrying request, before execution.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Execute it, then call [`SessionTable::record`].
    Execute,
    /// Do not execute; answer this (a cached reply or a session error).
    Answer(Outcome),
}

/// The replicated session table with its indexes.
///
/// The serialized parts are persistent collections ([`imbl`]): a copy shares
/// every node with the original and costs a few reference counts, so a snapshot
/// of a million sessions holds up applies for microseconds, not the second a
/// deep copy takes; a later change copies only the path it touches (nodes of
/// 16), at most once per node while the copy lives. They iterate in key order
/// and serialize exactly as `BTreeMap` and `VecDeque` do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionTable {
    /// Live sessions by id.
    sessions: imbl::OrdMap<ClientId, Session>,
    /// Removed sessions, so a late retry is refused instead of run again.
    tombstones: imbl::OrdMap<ClientId, Removal>,
    /// Tombstones in insertion order, for trimming the oldest. Derivable only from
    /// history, so it is serialized (as is everything that affects future applies).
    tombstone_order: imbl::Vector<ClientId>,
    /// (last_seen_ms, id) of every live session: GC and LRU eviction walk it from the
    /// oldest, so both cost O(removed), not O(sessions). Rebuilt on restore.
    #[serde(skip)]
    by_last_seen: BTreeSet<(u64, ClientId)>,
}

impl SessionTable {
    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Number of tombstones held.
    pub fn tombstones(&self) -> usize {
        self.tombstones.len()
    }

    /// Cluster time of the least recently seen live session (what GC would remove first).
    pub fn oldest_last_seen_ms(&self) -> Option<u64> {
        self.by_last_seen.first().map(|(t, _)| *t)
    }

    /// The session, if live.
    pub fn get(&self, id: &str) -> Option<&Session> {
        self.sessions.get(id)
    }

    /// Whether a session of this id was removed (and its tombstone still held).
    pub fn tombstone(&self, id: &str) -> Option<Removal> {
        self.tombstones.get(id).copied()
    }

    /// Whether a name is taken by a live or removed session.
    pub fn is_known(&self, id: &str) -> bool {
        self.sessions.contains_key(id) || self.tombstones.contains_key(id)
    }

    /// A copy without the derived index (for a snapshot, which does not hold
    /// it): [`SessionTable::rebuild_index`] restores it. Shares the rest with
    /// `self`, so it is cheap at any size.
    pub fn without_index(&self) -> SessionTable {
        SessionTable {
            sessions: self.sessions.clone(),
            tombstones: self.tombstones.clone(),
            tombstone_order: self.tombstone_order.clone(),
            by_last_seen: BTreeSet::new(),
        }
    }

    /// Rebuilds the derived index after deserializing.
    pub fn rebuild_index(&mut self) {
        self.by_last_seen = self
            .sessions
            .iter()
            .map(|(id, s)| (s.last_seen_ms, id.clone()))
            .collect();
    }

    /// Decides what to do with request `seq` of `id` at cluster time `now_ms`, opening
    /// the session if it is new (`docs/protocol.md`, "Exactly-once sessions",
    /// rules 1-5). Touches the session.
    pub fn admit(
        &mut self,
        id: &str,
        seq: u64,
        first_outstanding: Option<u64>,
        now_ms: u64,
        limits: &SessionLimits,
    ) -> Admission {
        if let Some(why) = self.tombstones.get(id) {
            return Admission::Answer(session_expired(*why));
        }
        if !self.sessions.contains_key(id) {
            self.open(ClientId::from(id), now_ms, limits);
        }
        self.touch(id, now_ms);
        let session = self.sessions.get_mut(id).expect("opened above");
        if let Some(fo) = first_outstanding {
            session.raise_first_outstanding(fo);
        }
        session.admit(seq)
    }

    /// Caches the reply of an executed request (after `admit` said `Execute`).
    pub fn record(&mut self, id: &str, seq: u64, reply: Outcome, limits: &SessionLimits) {
        let Some(session) = self.sessions.get_mut(id) else {
            debug_assert!(false, "record without a live session");
            return;
        };
        session.last_executed = Some(session.last_executed.map_or(seq, |h| h.max(seq)));
        session.replies.insert(seq, reply);
        while session.replies.len() as u64 > limits.replies_per_session_max.max(1) {
            let oldest = session.replies.pop_first().expect("non-empty");
            // A pipelining client must never see a dropped seq executed again: move
            // its window past the dropped reply, so a retry gets 1001 instead. The
            // loop runs only while two or more replies are held, so a larger seq
            // exists and `oldest < u64::MAX`: the addition cannot saturate.
            debug_assert!(oldest < u64::MAX);
            if session.first_outstanding.is_some() {
                session.raise_first_outstanding(oldest.saturating_add(1));
            }
        }
    }

    /// Opens a session explicitly (`open_session`); the caller picks a fresh id.
    pub fn open(&mut self, id: ClientId, now_ms: u64, limits: &SessionLimits) {
        debug_assert!(!self.is_known(&id));
        while self.sessions.len() as u64 >= limits.sessions_max.max(1) {
            let Some((_, lru)) = self.by_last_seen.first().cloned() else {
                break;
            };
            self.remove(&lru, Removal::Evicted, limits);
        }
        let session = Session {
            last_seen_ms: now_ms,
            last_executed: None,
            first_outstanding: None,
            replies: Replies::default(),
        };
        self.by_last_seen.insert((now_ms, id.clone()));
        self.sessions.insert(id, session);
    }

    /// Removes a session and leaves a tombstone; false if it was not live.
    pub fn remove(&mut self, id: &str, why: Removal, limits: &SessionLimits) -> bool {
        let Some((id, session)) = self.sessions.remove_with_key(id) else {
            return false;
        };
        let indexed = self
            .by_last_seen
            .remove(&(session.last_seen_ms, id.clone()));
        debug_assert!(indexed, "index and table disagree");
        self.tombstones.insert(id.clone(), why);
        self.tombstone_order.push_back(id);
        while self.tombstone_order.len() as u64 > limits.tombstones_max {
            if let Some(old) = self.tombstone_order.pop_front() {
                self.tombstones.remove(&old);
            }
        }
        true
    }

    /// Removes sessions last seen before `cutoff_ms`, the longest idle first
    /// (ties by id), at most `max` of them; returns how many.
    pub fn expire_before(&mut self, cutoff_ms: u64, max: usize, limits: &SessionLimits) -> usize {
        let mut removed = 0;
        while let Some((seen, id)) = self.by_last_seen.first().cloned() {
            if seen >= cutoff_ms || removed >= max {
                break;
            }
            self.remove(&id, Removal::Expired, limits);
            removed += 1;
        }
        removed
    }

    fn touch(&mut self, id: &str, now_ms: u64) {
        let Some((key, session)) = self.sessions.get_key_value(id) else {
            return;
        };
        if session.last_seen_ms == now_ms {
            return;
        }
        let old = (session.last_seen_ms, key.clone());
        self.by_last_seen.remove(&old);
        self.by_last_seen.insert((now_ms, old.1));
        if let Some(s) = self.sessions.get_mut(id) {
            s.last_seen_ms = now_ms;
        }
    }
}

impl Session {
    fn raise_first_outstanding(&mut self, fo: u64) {
        let fo = match self.first_outstanding {
            Some(cur) => cur.max(fo),
            // Switching from simple to pipelined: seqs that ran before the oldest
            // reply still held have lost their replies; they must never run again.
            // A simple client always holds the reply of its highest executed seq
            // (it is the newest, and eviction drops the oldest), so the floor is
            // that oldest reply, or 0 when nothing ran.
            None => {
                debug_assert!(self.last_executed.is_none() || !self.replies.is_empty());
                let floor = match (self.replies.first_seq(), self.last_executed) {
                    (Some(first), _) => first,
                    (None, None) => 0,
                    // Unreachable (see above); never let a run seq run again.
                    (None, Some(h)) => h.saturating_add(1),
                };
                fo.max(floor)
            }
        };
        self.first_outstanding = Some(fo);
        self.replies.drop_below(fo);
    }

    /// Rules 3-5 of `docs/protocol.md`, "Exactly-once sessions", for a live session.
    fn admit(&self, seq: u64) -> Admission {
        #[cfg(test)]
        if crate::planted::active(crate::planted::Bug::SeqWraps)
            && let Some(held) = &self.replies.0
        {
            // The classic: the cache read as the range seq..seq + 1, where the
            // + 1 wraps at u64::MAX (BTreeMap::range then panics: start > end);
            // and a simple client's next seq taken as last + 1, wrapping to 0.
            let map: BTreeMap<u64, &Outcome> = held.iter().map(|(q, r)| (*q, r)).collect();
            if let Some((_, cached)) = map.range(seq..seq.wrapping_add(1)).next() {
                return Admission::Answer((*cached).clone());
            }
            let next = self.last_executed.map_or(0, |h| h.wrapping_add(1));
            if self.first_outstanding.is_none() && seq >= next {
                return Admission::Execute;
            }
        }
        if let Some(cached) = self.replies.get(&seq) {
            return Admission::Answer(cached.clone());
        }
        match self.first_outstanding {
            // Pipelining: anything at or above the window that has not run, runs.
            Some(fo) if seq >= fo => Admission::Execute,
            Some(fo) => Admission::Answer(Outcome::failed(
                Failure::StaleRequest,
                format!(
                    "seq {seq} is below this session's first_outstanding ({fo}): it will \
                     not run, and if it ran before, its reply is no longer held"
                ),
            )),
            // Simple client: only a newer seq runs; an old one gets the latest reply.
            None if self.last_executed.is_none_or(|h| seq > h) => Admission::Execute,
            None => Admission::Answer(match self.replies.last() {
                Some(latest) => latest.clone(),
                None => Outcome::failed(
                    Failure::StaleRequest,
                    format!("seq {seq} already executed and no reply is held"),
                ),
            }),
        }
    }
}

fn session_expired(why: Removal) -> Outcome {
    let how = match why {
        Removal::Expired => "expired",
        Removal::Evicted => "was evicted",
        Removal::Closed => "was closed",
    };
    Outcome::failed(
        Failure::SessionExpired,
        format!("session {how}; the request may have run: open a new session"),
    )
}
