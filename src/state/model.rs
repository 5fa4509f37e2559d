//! Model-based property test of the state machine: a small reference model of the
//! documented session rules (`docs/sessions.md`; `docs/protocol.md`,
//! "Exactly-once sessions"), written with plain vectors and linear scans rather
//! than the table's indexes, is fed the same generated log as [`State::apply`].
//! Every outcome, the KV map, the clock, the limits and each client's session
//! (or tombstone) must agree after every entry.
//!
//! The log mixes retries of earlier (client, seq) pairs (resent whole, or the same
//! seq with another body),
//! new seqs, gaps, seqs and windows over the whole `u64` range, explicit open and
//! close, GC entries with cut-offs and stamps going forwards and backwards, limit
//! changes, sessions enough to hit tiny caps, and snapshot-and-restore through the
//! real encoding at random points (the model is never snapshotted: a restored state
//! must continue exactly like the uninterrupted one). proptest prints the failing
//! log, minimized, with its seed, and keeps the seed in `proptest-regressions/`.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Value, json};

use super::*;

/// Where a model answer came from: the harness checks a cached answer is the exact
/// outcome (texts included) the implementation gave when that seq ran.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Source {
    /// Executed now as (client, seq).
    Ran,
    /// The reply cached for this seq of the same client.
    Cached(u64),
    /// Anything else (session errors, entries without a session).
    Other,
}

/// A live session in the model.
#[derive(Debug, Clone)]
struct MSession {
    last_seen_ms: u64,
    /// Highest seq that ran.
    last_executed: Option<u64>,
    /// The window; `None` while the client is simple.
    window: Option<u64>,
    /// Cached replies, kept sorted by seq.
    replies: Vec<(u64, Outcome)>,
    /// Every seq that ran in this session: the model's own proof of exactly-once.
    ran: BTreeSet<u64>,
}

/// The reference model: a KV map, a clock, limits, sessions and tombstones.
#[derive(Debug, Clone)]
struct Model {
    clock_ms: u64,
    limits: SessionLimits,
    kv: BTreeMap<String, Value>,
    live: Vec<(String, MSession)>,
    /// Tombstones in the order they were left.
    tombstones: Vec<(String, Removal)>,
}

/// An outcome with the human text dropped (the model does not reproduce texts;
/// the harness compares cached texts against the implementation's own first reply).
fn norm(o: &Outcome) -> Outcome {
    match o {
        Outcome::Failed { failure, .. } => Outcome::failed(*failure, ""),
        other => other.clone(),
    }
}

fn fail(f: Failure) -> Outcome {
    Outcome::failed(f, "")
}

impl Model {
    fn new(limits: SessionLimits) -> Model {
        Model {
            clock_ms: 0,
            limits,
            kv: BTreeMap::new(),
            live: Vec::new(),
            tombstones: Vec::new(),
        }
    }

    fn session(&mut self, id: &str) -> Option<&mut MSession> {
        self.live.iter_mut().find(|(i, _)| i == id).map(|(_, s)| s)
    }

    fn tombstone(&self, id: &str) -> Option<Removal> {
        self.tombstones
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, why)| *why)
    }

    fn known(&self, id: &str) -> bool {
        self.live.iter().any(|(i, _)| i == id) || self.tombstone(id).is_some()
    }

    /// Removes a live session, leaving a tombstone; the oldest tombstones past the
    /// cap are forgotten.
    fn remove(&mut self, id: &str, why: Removal) -> bool {
        let Some(pos) = self.live.iter().position(|(i, _)| i == id) else {
            return false;
        };
        self.live.remove(pos);
        self.tombstones.push((id.to_string(), why));
        while self.tombstones.len() as u64 > self.limits.tombstones_max {
            self.tombstones.remove(0);
        }
        true
    }

    /// The least recently used live session: smallest (last_seen_ms, id).
    fn lru(&self) -> Option<String> {
        self.live
            .iter()
            .min_by(|(a, sa), (b, sb)| (sa.last_seen_ms, a).cmp(&(sb.last_seen_ms, b)))
            .map(|(i, _)| i.clone())
    }

    /// Opens a session, first evicting the LRU while the table is full.
    fn open(&mut self, id: &str) {
        while !self.live.is_empty() && self.live.len() as u64 >= self.limits.sessions_max.max(1) {
            let victim = self.lru().expect("non-empty");
            self.remove(&victim, Removal::Evicted);
        }
        self.live.push((
            id.to_string(),
            MSession {
                last_seen_ms: self.clock_ms,
                last_executed: None,
                window: None,
                replies: Vec::new(),
                ran: BTreeSet::new(),
            },
        ));
    }

    fn apply(&mut self, index: u64, cmd: &Command) -> (Outcome, Source) {
        self.clock_ms = self.clock_ms.max(cmd.ts_ms);
        match &cmd.op {
            Op::Kv { kv, session: None } => (self.execute(kv), Source::Other),
            Op::Kv {
                kv,
                session: Some(s),
            } => self.with_session(kv, s),
            Op::OpenSession => {
                let mut id = format!("s{index}");
                let mut n = 1;
                while self.known(&id) {
                    id = format!("s{index}-{n}");
                    n += 1;
                }
                self.open(&id);
                (Outcome::SessionOpened { client_id: id }, Source::Other)
            }
            Op::CloseSession { client_id } => {
                let out = if self.remove(client_id, Removal::Closed)
                    || self.tombstone(client_id).is_some()
                {
                    Outcome::SessionClosed
                } else {
                    fail(Failure::KeyDoesNotExist)
                };
                (out, Source::Other)
            }
            Op::Gc { cutoff_ms, max } => {
                let mut idle: Vec<(u64, String)> = self
                    .live
                    .iter()
                    .filter(|(_, s)| s.last_seen_ms < *cutoff_ms)
                    .map(|(i, s)| (s.last_seen_ms, i.clone()))
                    .collect();
                idle.sort();
                let max = max.map_or(usize::MAX, |m| m as usize);
                for (_, id) in idle.into_iter().take(max) {
                    self.remove(&id, Removal::Expired);
                }
                (Outcome::Applied, Source::Other)
            }
            Op::SetLimits(l) => {
                self.limits = *l;
                (Outcome::Applied, Source::Other)
            }
        }
    }

    /// Rules 1-5.
    fn with_session(&mut self, kv: &KvOp, s: &SessionRef) -> (Outcome, Source) {
        // Rule 2: a tombstone answers 1000 and changes nothing.
        if self.tombstone(&s.client_id).is_some() {
            return (fail(Failure::SessionExpired), Source::Other);
        }
        // Rule 1: unknown id, open a session.
        if self.session(&s.client_id).is_none() {
            self.open(&s.client_id);
        }
        let now = self.clock_ms;
        let sess = self.session(&s.client_id).expect("opened");
        sess.last_seen_ms = now;
        if let Some(fo) = s.first_outstanding {
            let window = match sess.window {
                Some(w) => w.max(fo),
                // Becoming a pipelining client: the window starts no lower than the
                // oldest reply held, or past the last executed seq if none is.
                None => {
                    let floor = match (sess.replies.first(), sess.last_executed) {
                        (Some((first, _)), _) => *first,
                        (None, Some(h)) => h.saturating_add(1),
                        (None, None) => 0,
                    };
                    fo.max(floor)
                }
            };
            sess.window = Some(window);
            sess.replies.retain(|(q, _)| *q >= window);
        }
        // Rule 3: a held reply for this seq.
        if let Some((_, r)) = sess.replies.iter().find(|(q, _)| *q == s.seq) {
            return (r.clone(), Source::Cached(s.seq));
        }
        let runs = match sess.window {
            // Rule 5.
            Some(w) => s.seq >= w,
            // Rule 4.
            None => sess.last_executed.is_none_or(|h| s.seq > h),
        };
        if !runs {
            return match (sess.window, sess.replies.last()) {
                (None, Some((q, r))) => (r.clone(), Source::Cached(*q)),
                _ => (fail(Failure::StaleRequest), Source::Other),
            };
        }
        assert!(
            !sess.ran.contains(&s.seq),
            "model: {} seq {} would run twice",
            s.client_id,
            s.seq
        );
        let reply = self.execute(kv);
        let cap = self.limits.replies_per_session_max.max(1);
        let sess = self.session(&s.client_id).expect("live");
        sess.ran.insert(s.seq);
        sess.last_executed = Some(sess.last_executed.map_or(s.seq, |h| h.max(s.seq)));
        let at = sess.replies.partition_point(|(q, _)| *q < s.seq);
        sess.replies.insert(at, (s.seq, reply.clone()));
        while sess.replies.len() as u64 > cap {
            let (dropped, _) = sess.replies.remove(0);
            // A pipelining client's window moves past a dropped reply.
            if let Some(w) = sess.window.as_mut() {
                *w = (*w).max(dropped.saturating_add(1));
            }
        }
        (reply, Source::Ran)
    }

    fn execute(&mut self, kv: &KvOp) -> Outcome {
        match kv {
            KvOp::Write { key, value } => {
                self.kv.insert(key.clone(), value.clone());
                Outcome::Written
            }
            KvOp::Cas {
                key,
                from,
                to,
                create,
            } => match self.kv.get(key) {
                Some(cur) if cur == from => {
                    self.kv.insert(key.clone(), to.clone());
                    Outcome::Swapped
                }
                Some(_) => fail(Failure::PreconditionFailed),
                None if *create => {
                    self.kv.insert(key.clone(), to.clone());
                    Outcome::Swapped
                }
                None => fail(Failure::KeyDoesNotExist),
            },
            KvOp::Add { key, delta } => {
                let cur = match self.kv.get(key) {
                    None => Some(0),
                    Some(v) => v.as_i64(),
                };
                match cur.and_then(|c| c.checked_add(*delta)) {
                    Some(total) => {
                        self.kv.insert(key.clone(), json!(total));
                        Outcome::Added { value: total }
                    }
                    None => fail(Failure::PreconditionFailed),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The generated log.

/// How a step picks its seq; resolved against the client's history when run.
#[derive(Debug, Clone)]
enum SeqPick {
    /// One above the highest seq this client sent (0 for a first request).
    Next,
    /// A gap above the highest sent.
    Gap(u64),
    /// A seq this client sent before (the n-th, modulo how many).
    Retry(usize),
    /// An edge of the range, or any value.
    Fixed(u64),
}

#[derive(Debug, Clone)]
enum FoPick {
    /// The lowest seq sent and not yet answered, as a careful client would.
    Honest,
    /// Any value (edges included).
    Fixed(u64),
    /// Below or above the highest seq sent.
    Around(i64),
}

#[derive(Debug, Clone)]
enum Step {
    Kv {
        client: Option<usize>,
        seq: SeqPick,
        fo: Option<FoPick>,
        kv: KvOp,
        dt: i64,
    },
    Open {
        dt: i64,
    },
    Close {
        client: usize,
        dt: i64,
    },
    Gc {
        /// Cut-off relative to the stamp.
        back: i64,
        /// The entry's bound (none: a version-1 entry, unbounded).
        max: Option<u64>,
        dt: i64,
    },
    SetLimits(SessionLimits),
    Snapshot,
    /// The n-th session request sent so far again, body and all (a client's retry).
    Resend {
        n: usize,
        dt: i64,
    },
}

/// Names clients use: some collide with the ids `open_session` derives.
const POOL: &[&str] = &["c0", "c1", "c2", "c3", "c4", "s2", "s3", "s5", "s5-1"];

fn edge_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 0u64..4,
        3 => (0u64..4).prop_map(|d| u64::MAX - d),
        1 => (0u64..3).prop_map(|d| (1 << 63) + d - 1),
        1 => any::<u64>(),
        2 => 4u64..40,
    ]
}

fn seq_pick() -> impl Strategy<Value = SeqPick> {
    prop_oneof![
        5 => Just(SeqPick::Next),
        1 => (2u64..5).prop_map(SeqPick::Gap),
        5 => any::<usize>().prop_map(SeqPick::Retry),
        2 => edge_u64().prop_map(SeqPick::Fixed),
    ]
}

fn fo_pick() -> impl Strategy<Value = Option<FoPick>> {
    prop_oneof![
        6 => Just(None),
        2 => Just(Some(FoPick::Honest)),
        1 => edge_u64().prop_map(|v| Some(FoPick::Fixed(v))),
        1 => (-3i64..3).prop_map(|d| Some(FoPick::Around(d))),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => (-2i64..4).prop_map(|n| json!(n)),
        1 => Just(json!(i64::MAX)),
        1 => Just(json!(i64::MIN)),
        1 => Just(json!(1.0)),
        1 => Just(json!("one")),
        1 => Just(json!(u64::MAX)),
    ]
}

fn kv_op() -> impl Strategy<Value = KvOp> {
    let key = prop::sample::select(vec!["a", "b"]).prop_map(|k| json!(k).to_string());
    prop_oneof![
        2 => (key.clone(), value()).prop_map(|(key, value)| KvOp::Write { key, value }),
        2 => (key.clone(), value(), value(), any::<bool>())
            .prop_map(|(key, from, to, create)| KvOp::Cas { key, from, to, create }),
        3 => (
            key,
            prop_oneof![4 => -2i64..4, 1 => Just(i64::MAX), 1 => Just(i64::MIN)],
        )
            .prop_map(|(key, delta)| KvOp::Add { key, delta }),
    ]
}

fn tiny_limits() -> impl Strategy<Value = SessionLimits> {
    (1u64..5, 1u64..4, 1u64..5).prop_map(|(s, r, t)| SessionLimits {
        sessions_max: s,
        replies_per_session_max: r,
        tombstones_max: t,
    })
}

/// Stamp moves: mostly forwards, sometimes backwards (a lagging leader).
fn dt() -> impl Strategy<Value = i64> {
    prop_oneof![4 => 0i64..30, 1 => -60i64..0, 1 => Just(0)]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        20 => (prop::option::weighted(0.9, 0usize..32), seq_pick(), fo_pick(), kv_op(), dt())
            .prop_map(|(client, seq, fo, kv, dt)| Step::Kv { client, seq, fo, kv, dt }),
        2 => dt().prop_map(|dt| Step::Open { dt }),
        2 => (0usize..32, dt()).prop_map(|(client, dt)| Step::Close { client, dt }),
        3 => (-40i64..100, proptest::option::of(0u64..4), dt())
            .prop_map(|(back, max, dt)| Step::Gc { back, max, dt }),
        1 => tiny_limits().prop_map(Step::SetLimits),
        2 => Just(Step::Snapshot),
        3 => (any::<usize>(), dt()).prop_map(|(n, dt)| Step::Resend { n, dt }),
    ]
}

/// The harness: the real state and the model, fed the same entries.
struct Run {
    state: State,
    model: Model,
    index: u64,
    /// Stamp base; steps move it (it may go below the cluster clock).
    ts: u64,
    /// Names `open_session` returned, usable as clients.
    opened: Vec<String>,
    /// Seqs each client sent, in order.
    sent: BTreeMap<String, Vec<u64>>,
    /// The implementation's reply when (client, seq) ran.
    first_reply: BTreeMap<(String, u64), Outcome>,
    /// Every request with a session sent, for exact resends.
    history: Vec<Op>,
}

impl Run {
    fn client(&self, n: usize) -> String {
        let names: Vec<&str> = POOL
            .iter()
            .copied()
            .chain(self.opened.iter().map(String::as_str))
            .collect();
        names[n % names.len()].to_string()
    }

    fn stamp(&mut self, dt: i64) -> u64 {
        self.ts = self.ts.saturating_add_signed(dt);
        self.ts
    }

    fn seq(&self, client: &str, pick: &SeqPick) -> u64 {
        let sent = self.sent.get(client).map(Vec::as_slice).unwrap_or(&[]);
        let top = sent.iter().max().copied();
        match pick {
            SeqPick::Next => top.map_or(0, |t| t.saturating_add(1)),
            SeqPick::Gap(g) => top.map_or(*g, |t| t.saturating_add(*g)),
            SeqPick::Retry(n) if !sent.is_empty() => sent[n % sent.len()],
            SeqPick::Retry(_) => 0,
            SeqPick::Fixed(v) => *v,
        }
    }

    fn fo(&self, client: &str, seq: u64, pick: &FoPick) -> u64 {
        let top = self
            .sent
            .get(client)
            .and_then(|s| s.iter().max().copied())
            .unwrap_or(seq)
            .max(seq);
        match pick {
            FoPick::Honest => {
                // The lowest seq sent that has not yet run in this model session.
                let ran = self
                    .model
                    .live
                    .iter()
                    .find(|(i, _)| i == client)
                    .map(|(_, s)| s.ran.clone())
                    .unwrap_or_default();
                let mut all: Vec<u64> = self.sent.get(client).cloned().unwrap_or_default();
                all.push(seq);
                all.into_iter()
                    .filter(|q| !ran.contains(q))
                    .min()
                    .unwrap_or(seq)
            }
            FoPick::Fixed(v) => *v,
            FoPick::Around(d) => top.saturating_add_signed(*d),
        }
    }

    fn apply(&mut self, cmd: Command) -> Result<(), TestCaseError> {
        self.index += 1;
        let what = format!("entry {} {}", self.index, cmd);
        let real = self.state.apply(self.index, &cmd);
        let (want, source) = self.model.apply(self.index, &cmd);
        prop_assert_eq!(norm(&real), want, "{}", what);
        if let Op::Kv {
            session: Some(s), ..
        } = &cmd.op
        {
            let k = s.client_id.clone();
            match source {
                Source::Ran => {
                    self.first_reply.insert((k, s.seq), real.clone());
                }
                Source::Cached(q) => {
                    let first = self.first_reply.get(&(k, q));
                    prop_assert_eq!(first, Some(&real), "cached reply, {}", what);
                }
                Source::Other => {}
            }
        }
        if let Outcome::SessionOpened { client_id } = &real {
            self.opened.push(client_id.clone());
        }
        self.compare(&what)
    }

    /// Everything observable agrees: clock, limits, KV map, sessions, tombstones.
    fn compare(&self, what: &str) -> Result<(), TestCaseError> {
        let (st, m) = (&self.state, &self.model);
        prop_assert_eq!(st.clock_ms, m.clock_ms, "clock after {}", what);
        prop_assert_eq!(st.limits, m.limits, "limits after {}", what);
        let kv: BTreeMap<String, Value> = (st.kv.iter())
            .map(|(k, v)| (k.clone(), Value::clone(v)))
            .collect();
        prop_assert_eq!(&kv, &m.kv, "kv after {}", what);
        prop_assert_eq!(st.sessions.len(), m.live.len(), "live after {}", what);
        prop_assert_eq!(
            st.sessions.tombstones(),
            m.tombstones.len(),
            "tombstones after {}",
            what
        );
        let oldest = m.live.iter().map(|(_, s)| s.last_seen_ms).min();
        prop_assert_eq!(st.sessions.oldest_last_seen_ms(), oldest, "{}", what);
        for (id, ms) in &m.live {
            let Some(s) = st.sessions.get(id) else {
                return Err(TestCaseError::fail(format!("{id} not live after {what}")));
            };
            prop_assert_eq!(s.last_seen_ms, ms.last_seen_ms, "{} after {}", id, what);
            prop_assert_eq!(s.last_executed, ms.last_executed, "{} after {}", id, what);
            prop_assert_eq!(s.first_outstanding, ms.window, "{} after {}", id, what);
            prop_assert_eq!(s.replies.len(), ms.replies.len(), "{} after {}", id, what);
            for (q, r) in &ms.replies {
                let held = s.replies.get(q).map(norm);
                prop_assert_eq!(held.as_ref(), Some(r), "{} seq {} after {}", id, q, what);
            }
        }
        for (id, why) in &m.tombstones {
            prop_assert_eq!(
                st.sessions.tombstone(id),
                Some(*why),
                "{} after {}",
                id,
                what
            );
        }
        Ok(())
    }

    fn step(&mut self, step: &Step) -> Result<(), TestCaseError> {
        match step {
            Step::Kv {
                client,
                seq,
                fo,
                kv,
                dt,
            } => {
                let ts = self.stamp(*dt);
                let session = client.map(|c| {
                    let id = self.client(c);
                    let seq = self.seq(&id, seq);
                    let first_outstanding = fo.as_ref().map(|f| self.fo(&id, seq, f));
                    SessionRef {
                        client_id: id,
                        seq,
                        first_outstanding,
                    }
                });
                if let Some(s) = &session {
                    self.sent
                        .entry(s.client_id.clone())
                        .or_default()
                        .push(s.seq);
                }
                let op = Op::Kv {
                    kv: kv.clone(),
                    session,
                };
                if matches!(
                    op,
                    Op::Kv {
                        session: Some(_),
                        ..
                    }
                ) {
                    self.history.push(op.clone());
                }
                self.apply(Command::new(ts, op))
            }
            Step::Resend { n, dt } => {
                if self.history.is_empty() {
                    return Ok(());
                }
                let op = self.history[n % self.history.len()].clone();
                let ts = self.stamp(*dt);
                self.apply(Command::new(ts, op))
            }
            Step::Open { dt } => {
                let ts = self.stamp(*dt);
                self.apply(Command::new(ts, Op::OpenSession))
            }
            Step::Close { client, dt } => {
                let ts = self.stamp(*dt);
                let client_id = self.client(*client);
                self.apply(Command::new(ts, Op::CloseSession { client_id }))
            }
            Step::Gc { back, max, dt } => {
                let ts = self.stamp(*dt);
                let cutoff_ms = self.model.clock_ms.saturating_add_signed(-*back);
                let max = *max;
                self.apply(Command::new(ts, Op::Gc { cutoff_ms, max }))
            }
            Step::SetLimits(l) => {
                let ts = self.ts;
                self.apply(Command::new(ts, Op::SetLimits(*l)))
            }
            Step::Snapshot => {
                let bytes = self.state.to_snapshot();
                let restored = State::from_snapshot(&bytes)
                    .map_err(|e| TestCaseError::fail(format!("restore: {e}")))?;
                prop_assert_eq!(&restored, &self.state, "restored state differs");
                self.state = restored;
                Ok(())
            }
        }
    }
}

fn run(limits: SessionLimits, start_ms: u64, steps: &[Step]) -> Result<(), TestCaseError> {
    let mut run = Run {
        state: State::new(limits),
        model: Model::new(limits),
        index: 0,
        ts: start_ms,
        opened: Vec::new(),
        sent: BTreeMap::new(),
        first_reply: BTreeMap::new(),
        history: Vec::new(),
    };
    for s in steps {
        run.step(s)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(Config { cases: 500, ..Config::default() })]

    /// The state machine answers and holds exactly what the reference model does.
    #[test]
    fn state_machine_matches_the_reference_model(
        limits in tiny_limits(),
        start_ms in prop_oneof![3 => 0u64..100, 1 => Just(u64::MAX - 500)],
        steps in prop::collection::vec(step(), 1..80),
    ) {
        run(limits, start_ms, &steps)?;
    }
}
