//! The session table: which (client, seq) pairs have executed and what they answered.
//!
//! Everything here is replicated state: ordered collections only, no clock (time is
//! the entry timestamp the caller passes in), so two replicas fed the same entries
//! hold byte-identical tables.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::protocol::Reply;

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
pub struct Session {
    /// Cluster time (ms) of the last entry that touched the session; the LRU and
    /// expiry key.
    pub last_seen_ms: u64,
    /// Highest seq executed so far (0 before any).
    pub latest_seq: u64,
    /// Highest `first_outstanding` the client has sent; `None` for a simple client.
    /// Replies below it are gone, and seqs below it never execute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_outstanding: Option<u64>,
    /// Cached replies by seq, at most `replies_per_session_max`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub replies: BTreeMap<u64, Reply>,
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
    Answer(Reply),
}

/// The replicated session table with its indexes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionTable {
    /// Live sessions by id.
    sessions: BTreeMap<ClientId, Session>,
    /// Removed sessions, so a late retry is refused instead of run again.
    tombstones: BTreeMap<ClientId, Removal>,
    /// Tombstones in insertion order, for trimming the oldest. Derivable only from
    /// history, so it is serialized (as is everything that affects future applies).
    tombstone_order: VecDeque<ClientId>,
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

    /// Rebuilds the derived index after deserializing.
    pub fn rebuild_index(&mut self) {
        self.by_last_seen = self
            .sessions
            .iter()
            .map(|(id, s)| (s.last_seen_ms, id.clone()))
            .collect();
    }

    /// Decides what to do with request `seq` of `id` at cluster time `now_ms`, opening
    /// the session if it is new (protocol.md section 4, rules 1-5). Touches the session.
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
    pub fn record(&mut self, id: &str, seq: u64, reply: Reply, limits: &SessionLimits) {
        let Some(session) = self.sessions.get_mut(id) else {
            debug_assert!(false, "record without a live session");
            return;
        };
        session.latest_seq = session.latest_seq.max(seq);
        session.replies.insert(seq, reply);
        while session.replies.len() as u64 > limits.replies_per_session_max.max(1) {
            let (oldest, _) = session.replies.pop_first().expect("non-empty");
            // A pipelining client must never see a dropped seq executed again: move
            // its window past the dropped reply, so a retry gets 1001 instead.
            if session.first_outstanding.is_some() {
                session.raise_first_outstanding(oldest + 1);
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
            latest_seq: 0,
            first_outstanding: None,
            replies: BTreeMap::new(),
        };
        self.by_last_seen.insert((now_ms, id.clone()));
        self.sessions.insert(id, session);
    }

    /// Removes a session and leaves a tombstone; false if it was not live.
    pub fn remove(&mut self, id: &str, why: Removal, limits: &SessionLimits) -> bool {
        let Some((id, session)) = self.sessions.remove_entry(id) else {
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

    /// Removes every session last seen before `cutoff_ms`; returns how many.
    pub fn expire_before(&mut self, cutoff_ms: u64, limits: &SessionLimits) -> usize {
        let mut removed = 0;
        while let Some((seen, id)) = self.by_last_seen.first().cloned() {
            if seen >= cutoff_ms {
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
        let fo = self.first_outstanding.map_or(fo, |cur| cur.max(fo));
        self.first_outstanding = Some(fo);
        self.replies = self.replies.split_off(&fo);
    }

    /// Rules 3-5 of protocol.md section 4 for a live session.
    fn admit(&self, seq: u64) -> Admission {
        if let Some(cached) = self.replies.get(&seq) {
            return Admission::Answer(cached.clone());
        }
        match self.first_outstanding {
            // Pipelining: anything at or above the window that has not run, runs.
            Some(fo) if seq >= fo => Admission::Execute,
            Some(_) => Admission::Answer(Reply::error(
                crate::protocol::ErrorCode::StaleRequest,
                format!("reply to seq {seq} was discarded (below first_outstanding)"),
            )),
            // Simple client: only a newer seq runs; an old one gets the latest reply.
            None if seq > self.latest_seq => Admission::Execute,
            None => Admission::Answer(match self.replies.last_key_value() {
                Some((_, latest)) => latest.clone(),
                None => Reply::error(
                    crate::protocol::ErrorCode::StaleRequest,
                    format!("seq {seq} already executed and no reply is held"),
                ),
            }),
        }
    }
}

fn session_expired(why: Removal) -> Reply {
    let how = match why {
        Removal::Expired => "expired",
        Removal::Evicted => "was evicted",
        Removal::Closed => "was closed",
    };
    Reply::error(
        crate::protocol::ErrorCode::SessionExpired,
        format!("session {how}; the request may have run: open a new session"),
    )
}
