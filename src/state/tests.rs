//! The state machine as a pure function: every session rule of
//! `docs/protocol.md`, "Exactly-once sessions", determinism, snapshots, expiry
//! by log time only, deterministic eviction.
#![allow(clippy::print_stderr)] // seeds and progress, for a rerun

use std::collections::BTreeMap;

use super::*;
use serde_json::json;

fn key(k: &str) -> String {
    json!(k).to_string()
}

fn add(k: &str, delta: i64, client: &str, seq: u64) -> Op {
    Op::Kv {
        kv: KvOp::Add { key: key(k), delta },
        session: Some(SessionRef {
            client_id: client.into(),
            seq,
            first_outstanding: None,
        }),
    }
}

fn add_fo(k: &str, delta: i64, client: &str, seq: u64, fo: u64) -> Op {
    Op::Kv {
        kv: KvOp::Add { key: key(k), delta },
        session: Some(SessionRef {
            client_id: client.into(),
            seq,
            first_outstanding: Some(fo),
        }),
    }
}

/// Applies ops in order with timestamps, as a log would; returns the replies.
struct Log {
    state: State,
    index: u64,
}

impl Log {
    fn new(limits: SessionLimits) -> Log {
        Log {
            state: State::new(limits),
            index: 0,
        }
    }
    fn apply(&mut self, ts_ms: u64, op: Op) -> Outcome {
        self.index += 1;
        self.state.apply(self.index, &Command::new(ts_ms, op))
    }
    fn value(&self, k: &str) -> Option<&serde_json::Value> {
        self.state.kv.get(&key(k)).map(|v| &**v)
    }
}

fn code(r: &Outcome) -> Option<u32> {
    r.failure().map(u32::from)
}

#[test]
fn kv_semantics_match_lin_kv() {
    let mut log = Log::new(SessionLimits::default());
    assert_eq!(code(&log.state.read(&key("x"))), Some(20));
    let cas = |from: serde_json::Value, to: i64, create| Op::Kv {
        kv: KvOp::Cas {
            key: key("x"),
            from,
            to: json!(to),
            create,
        },
        session: None,
    };
    assert_eq!(code(&log.apply(1, cas(json!(1), 2, false))), Some(20));
    assert_eq!(log.apply(2, cas(json!(1), 2, true)), Outcome::Swapped);
    assert_eq!(log.value("x"), Some(&json!(2)));
    assert_eq!(code(&log.apply(3, cas(json!(1), 3, false))), Some(22));
    // 2.0 is not 2: values compare exactly as JSON.
    assert_eq!(code(&log.apply(4, cas(json!(2.0), 3, false))), Some(22));
    assert_eq!(log.apply(5, cas(json!(2), 3, false)), Outcome::Swapped);
    assert_eq!(
        log.state.read(&key("x")),
        Outcome::Read {
            value: json!(3).into()
        }
    );
}

#[test]
fn add_counts_missing_as_zero_and_rejects_non_integers() {
    let mut log = Log::new(SessionLimits::default());
    let plain = |delta| Op::Kv {
        kv: KvOp::Add {
            key: key("k"),
            delta,
        },
        session: None,
    };
    assert_eq!(log.apply(1, plain(5)), Outcome::Added { value: 5 });
    assert_eq!(log.apply(1, plain(-7)), Outcome::Added { value: -2 });
    log.state.kv.insert(key("k"), json!("text").into());
    assert_eq!(code(&log.apply(1, plain(1))), Some(22));
    log.state.kv.insert(key("k"), json!(i64::MAX).into());
    assert_eq!(code(&log.apply(1, plain(1))), Some(22));
    assert_eq!(log.value("k"), Some(&json!(i64::MAX)));
}

/// Rules 1 and 3: a retry of an executed seq gets the cached reply, executes once.
#[test]
fn retry_returns_cached_reply_and_executes_once() {
    let mut log = Log::new(SessionLimits::default());
    assert_eq!(
        log.apply(10, add("k", 5, "c1", 1)),
        Outcome::Added { value: 5 }
    );
    assert_eq!(
        log.apply(11, add("k", 5, "c1", 1)),
        Outcome::Added { value: 5 }
    );
    assert_eq!(
        log.apply(12, add("k", 5, "c1", 1)),
        Outcome::Added { value: 5 }
    );
    assert_eq!(log.value("k"), Some(&json!(5)));
    assert_eq!(
        log.apply(13, add("k", 5, "c1", 2)),
        Outcome::Added { value: 10 }
    );
}

/// A retry is recognised by (client_id, seq) alone: a different body still gets the
/// original's reply (Raft thesis section 6.3).
#[test]
fn retry_body_is_not_compared() {
    let mut log = Log::new(SessionLimits::default());
    log.apply(1, add("k", 1, "c1", 1));
    assert_eq!(
        log.apply(2, add("other", 9, "c1", 1)),
        Outcome::Added { value: 1 }
    );
    assert_eq!(log.value("other"), None);
}

/// Rule 4: a simple client's old seq never executes; it gets its own reply if held,
/// else the latest.
#[test]
fn simple_client_old_seq_never_executes() {
    let limits = SessionLimits {
        replies_per_session_max: 2,
        ..SessionLimits::default()
    };
    let mut log = Log::new(limits);
    for seq in 1..=4 {
        log.apply(seq, add("k", 1, "c1", seq));
    }
    assert_eq!(log.value("k"), Some(&json!(4)));
    // seq 3 is still held; seq 1 is not: the latest reply (seq 4) comes back.
    assert_eq!(
        log.apply(9, add("k", 1, "c1", 3)),
        Outcome::Added { value: 3 }
    );
    assert_eq!(
        log.apply(9, add("k", 1, "c1", 1)),
        Outcome::Added { value: 4 }
    );
    assert_eq!(log.value("k"), Some(&json!(4)));
}

/// Rule 5: a pipelining client's requests may arrive out of order and all run once;
/// below first_outstanding a lost reply gives 1001.
#[test]
fn pipelined_out_of_order_and_window() {
    let mut log = Log::new(SessionLimits::default());
    assert_eq!(
        log.apply(1, add_fo("k", 1, "p", 3, 1)),
        Outcome::Added { value: 1 }
    );
    assert_eq!(
        log.apply(2, add_fo("k", 10, "p", 1, 1)),
        Outcome::Added { value: 11 }
    );
    assert_eq!(
        log.apply(3, add_fo("k", 100, "p", 2, 1)),
        Outcome::Added { value: 111 }
    );
    // Retries of each, still in the window: cached.
    assert_eq!(
        log.apply(4, add_fo("k", 10, "p", 1, 1)),
        Outcome::Added { value: 11 }
    );
    // The client moves its window to 3: replies 1 and 2 are discarded.
    assert_eq!(
        log.apply(5, add_fo("k", 1000, "p", 4, 3)),
        Outcome::Added { value: 1111 }
    );
    assert_eq!(code(&log.apply(6, add_fo("k", 10, "p", 1, 3))), Some(1001));
    assert_eq!(code(&log.apply(6, add_fo("k", 10, "p", 2, 3))), Some(1001));
    assert_eq!(
        log.apply(7, add_fo("k", 1, "p", 3, 3)),
        Outcome::Added { value: 1 }
    );
    assert_eq!(log.value("k"), Some(&json!(1111)));
}

/// A full window never lets a dropped seq run again: the window moves past it.
#[test]
fn full_pipelined_window_refuses_instead_of_re_executing() {
    let limits = SessionLimits {
        replies_per_session_max: 2,
        ..SessionLimits::default()
    };
    let mut log = Log::new(limits);
    for seq in 1..=3 {
        log.apply(seq, add_fo("k", 1, "p", seq, 1));
    }
    assert_eq!(log.value("k"), Some(&json!(3)));
    assert_eq!(code(&log.apply(9, add_fo("k", 1, "p", 1, 1))), Some(1001));
    assert_eq!(log.value("k"), Some(&json!(3)));
}

/// Rule 2 and GC: expiry is decided by the GC entry's cut-off against log time only.
#[test]
fn gc_expires_idle_sessions_and_leaves_tombstones() {
    let mut log = Log::new(SessionLimits::default());
    log.apply(1_000, add("k", 1, "old", 1));
    log.apply(5_000, add("k", 1, "new", 1));
    log.apply(
        6_000,
        Op::Gc {
            cutoff_ms: 2_000,
            max: None,
        },
    );
    assert!(log.state.sessions.get("old").is_none());
    assert!(log.state.sessions.get("new").is_some());
    let r = log.apply(7_000, add("k", 1, "old", 1));
    assert_eq!(r.failure(), Some(Failure::SessionExpired));
    assert_eq!(log.value("k"), Some(&json!(2)));
}

/// A bounded GC entry expires at most its `max` sessions, the longest idle
/// first (ties by id); the next entries take the rest, and a session seen
/// since is kept. Entries of format version 1 (no bound) expire every one.
#[test]
fn a_bounded_gc_entry_expires_the_longest_idle_first() {
    let mut log = Log::new(SessionLimits::default());
    log.apply(1_000, add("k", 1, "c", 1));
    log.apply(1_000, add("k", 1, "b", 1));
    log.apply(2_000, add("k", 1, "a", 1));
    log.apply(3_000, add("k", 1, "d", 1));
    let gc = |max| Op::Gc {
        cutoff_ms: 2_500,
        max: Some(max),
    };
    log.apply(4_000, gc(0));
    assert_eq!(log.state.sessions.len(), 4, "a bound of 0 expires nothing");
    log.apply(4_000, gc(1));
    let live = |log: &Log| -> Vec<String> {
        ["a", "b", "c", "d"]
            .iter()
            .filter(|id| log.state.sessions.get(id).is_some())
            .map(|id| id.to_string())
            .collect()
    };
    assert_eq!(
        live(&log),
        ["a", "c", "d"],
        "b: idle since 1,000, before c by id"
    );
    log.apply(4_000, add("k", 1, "c", 2));
    log.apply(4_000, gc(5));
    assert_eq!(
        live(&log),
        ["c", "d"],
        "c was seen since; d after the cut-off"
    );
    log.apply(
        4_000,
        Op::Gc {
            cutoff_ms: 99_999,
            max: None,
        },
    );
    assert!(live(&log).is_empty());
}

/// Timestamps out of wall-clock order: the cluster clock never goes back, and a
/// session touched by a late entry keeps the clock's time, not the stale stamp.
#[test]
fn expiry_uses_entry_timestamps_not_arrival_order() {
    let mut log = Log::new(SessionLimits::default());
    log.apply(10_000, add("k", 1, "a", 1));
    // A lagging stamp (an old leader's clock): the clock stays at 10_000.
    log.apply(3_000, add("k", 1, "b", 1));
    assert_eq!(log.state.clock_ms, 10_000);
    assert_eq!(log.state.sessions.get("b").unwrap().last_seen_ms, 10_000);
    // A cut-off of 9_999 removes neither: both were seen at cluster time 10_000.
    log.apply(
        2_000,
        Op::Gc {
            cutoff_ms: 9_999,
            max: None,
        },
    );
    assert_eq!(log.state.sessions.len(), 2);
    log.apply(
        2_000,
        Op::Gc {
            cutoff_ms: 10_001,
            max: None,
        },
    );
    assert_eq!(log.state.sessions.len(), 0);
    assert_eq!(log.state.clock_ms, 10_000);
}

/// The cap evicts the least recently used session, ties broken by id: deterministic.
#[test]
fn eviction_is_lru_and_deterministic() {
    let limits = SessionLimits {
        sessions_max: 3,
        ..SessionLimits::default()
    };
    let mut log = Log::new(limits);
    log.apply(1, add("k", 1, "b", 1));
    log.apply(1, add("k", 1, "a", 1));
    log.apply(2, add("k", 1, "c", 1));
    log.apply(3, add("k", 1, "b", 2)); // b is now the most recent
    log.apply(4, add("k", 1, "d", 1)); // evicts a (time 1, before b's new time)
    assert!(log.state.sessions.get("a").is_none());
    log.apply(5, add("k", 1, "e", 1)); // evicts c (time 2)
    assert!(log.state.sessions.get("c").is_none());
    let mut ids: Vec<_> = ["b", "d", "e"]
        .iter()
        .filter(|id| log.state.sessions.get(id).is_some())
        .collect();
    ids.sort();
    assert_eq!(ids.len(), 3);
    assert_eq!(
        log.state.sessions.tombstone("a"),
        Some(Removal::Evicted),
        "an evicted session leaves a tombstone"
    );
    assert_eq!(
        code(&log.apply(6, add("k", 1, "a", 2))),
        Some(1000),
        "a late retry from an evicted session must not run"
    );
}

#[test]
fn tombstones_are_bounded_oldest_first() {
    let limits = SessionLimits {
        tombstones_max: 2,
        ..SessionLimits::default()
    };
    let mut log = Log::new(limits);
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        log.apply(i as u64, add("k", 1, id, 1));
    }
    log.apply(
        10,
        Op::Gc {
            cutoff_ms: 100,
            max: None,
        },
    );
    assert_eq!(log.state.sessions.tombstones(), 2);
    assert_eq!(log.state.sessions.tombstone("a"), None);
    assert_eq!(log.state.sessions.tombstone("c"), Some(Removal::Expired));
}

#[test]
fn open_and_close_session() {
    let mut log = Log::new(SessionLimits::default());
    let Outcome::SessionOpened { client_id } = log.apply(1, Op::OpenSession) else {
        panic!("open failed");
    };
    assert_eq!(client_id, "s1");
    // A client that chose "s2" itself does not collide with the next opened id.
    log.apply(2, add("k", 1, "s3", 1));
    let Outcome::SessionOpened { client_id: second } = log.apply(3, Op::OpenSession) else {
        panic!("open failed");
    };
    assert_eq!(second, "s3-1");
    assert_eq!(
        log.apply(4, add("k", 1, &client_id, 1)),
        Outcome::Added { value: 2 }
    );
    let close = Op::CloseSession {
        client_id: client_id.clone(),
    };
    assert_eq!(log.apply(5, close.clone()), Outcome::SessionClosed);
    assert_eq!(log.apply(6, close), Outcome::SessionClosed);
    assert_eq!(code(&log.apply(7, add("k", 1, &client_id, 1))), Some(1000));
    let missing = Op::CloseSession {
        client_id: "never".into(),
    };
    assert_eq!(code(&log.apply(8, missing)), Some(20));
}

/// A small deterministic generator (splitmix64) so the randomized tests print a seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_log(seed: u64, len: usize) -> Vec<Command> {
    let mut rng = Rng(seed);
    let mut seqs = BTreeMap::new();
    (0..len)
        .map(|i| {
            let ts_ms = i as u64 * 10 + rng.below(50); // stamps jitter out of order
            let client = format!("c{}", rng.below(40));
            let seq = seqs.entry(client.clone()).or_insert(0u64);
            if rng.below(4) > 0 {
                *seq += 1;
            }
            let op = match rng.below(20) {
                0 => Op::Gc {
                    cutoff_ms: ts_ms.saturating_sub(300),
                    max: [None, Some(1), Some(3)][rng.below(3) as usize],
                },
                1 => Op::OpenSession,
                2 => Op::CloseSession {
                    client_id: client.clone(),
                },
                3..=6 => Op::Kv {
                    kv: KvOp::Write {
                        key: key(&rng.below(5).to_string()),
                        value: json!(rng.below(5)),
                    },
                    session: None,
                },
                _ => Op::Kv {
                    kv: KvOp::Add {
                        key: key(&rng.below(5).to_string()),
                        delta: 1,
                    },
                    session: Some(SessionRef {
                        client_id: client,
                        seq: *seq,
                        first_outstanding: None,
                    }),
                },
            };
            Command::new(ts_ms, op)
        })
        .collect()
}

fn small_limits() -> SessionLimits {
    SessionLimits {
        sessions_max: 16,
        replies_per_session_max: 3,
        tombstones_max: 20,
    }
}

/// The seed of a randomized test: `ONCEKV_TEST_SEED` if set (the variable every
/// randomized test of the project reads), else the clock's nanoseconds; printed with
/// the command that repeats the run. Kept here so the product's tests need nothing
/// from the tooling wing.
fn seed() -> u64 {
    let seed = std::env::var("ONCEKV_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
    eprintln!("seed {seed} (rerun with ONCEKV_TEST_SEED={seed})");
    seed
}

/// Two replicas fed the same entries give byte-identical snapshots and replies.
#[test]
fn replicas_fed_the_same_log_are_byte_identical() {
    let log = random_log(seed(), 3_000);
    let mut a = State::new(small_limits());
    let mut b = State::new(small_limits());
    for (i, cmd) in log.iter().enumerate() {
        let ra = a.apply(i as u64 + 1, cmd);
        let rb = b.apply(i as u64 + 1, cmd);
        assert_eq!(ra, rb, "entry {i}");
    }
    assert_eq!(a.to_snapshot(), b.to_snapshot());
    assert!(a.sessions.tombstones() > 0, "the log exercised removals");
}

/// Snapshot, restore, continue gives the same replies and state as never snapshotting.
#[test]
fn snapshot_restore_continue_equals_uninterrupted() {
    let log = random_log(seed(), 3_000);
    let mut straight = State::new(small_limits());
    let mut restored = State::new(small_limits());
    for (i, cmd) in log.iter().enumerate() {
        let index = i as u64 + 1;
        let want = straight.apply(index, cmd);
        if i % 397 == 0 {
            // Encoded from the copy a node takes under its lock, as a node does.
            let copy = restored.snapshot_copy();
            assert_eq!(copy.to_snapshot(), restored.to_snapshot());
            restored = State::from_snapshot(&copy.to_snapshot()).expect("restores");
        }
        assert_eq!(restored.apply(index, cmd), want, "entry {index}");
    }
    assert_eq!(straight, restored);
    assert_eq!(straight.to_snapshot(), restored.to_snapshot());
}

/// The snapshot holds sessions, cached replies, tombstones, limits and the clock.
#[test]
fn snapshot_holds_every_part_of_the_state() {
    let mut log = Log::new(small_limits());
    log.apply(100, add("k", 7, "c1", 1));
    log.apply(200, add("k", 1, "c2", 1));
    log.apply(
        300,
        Op::Gc {
            cutoff_ms: 150,
            max: None,
        },
    );
    let restored = State::from_snapshot(&log.state.to_snapshot()).unwrap();
    assert_eq!(restored.clock_ms, 300);
    assert_eq!(restored.limits, small_limits());
    assert_eq!(restored.sessions.tombstone("c1"), Some(Removal::Expired));
    assert_eq!(
        restored.cached_reply(&SessionRef {
            client_id: "c2".into(),
            seq: 1,
            first_outstanding: None
        }),
        Some(Outcome::Added { value: 8 })
    );
    // The derived index was rebuilt: GC still finds c2.
    let mut restored = restored;
    restored.apply(
        9,
        &Command::new(
            400,
            Op::Gc {
                cutoff_ms: 250,
                max: None,
            },
        ),
    );
    assert!(restored.sessions.is_empty());
}

/// A simple client that starts at seq 0 is served (0 is a valid seq).
#[test]
fn seq_zero_executes_once() {
    let mut log = Log::new(SessionLimits::default());
    assert_eq!(
        log.apply(1, add("k", 1, "z", 0)),
        Outcome::Added { value: 1 }
    );
    assert_eq!(
        log.apply(2, add("k", 1, "z", 0)),
        Outcome::Added { value: 1 }
    );
    assert_eq!(log.value("k"), Some(&json!(1)));
}

/// A simple client that starts pipelining with a low first_outstanding cannot make a
/// seq whose reply was already dropped run again.
#[test]
fn switching_to_pipelining_never_re_executes_dropped_seqs() {
    let limits = SessionLimits {
        replies_per_session_max: 2,
        ..SessionLimits::default()
    };
    let mut log = Log::new(limits);
    for seq in 1..=5 {
        log.apply(seq, add("k", 1, "c", seq));
    }
    // Replies for 4 and 5 are held; 1..3 were dropped.
    assert_eq!(
        log.apply(6, add_fo("k", 1, "c", 6, 1)),
        Outcome::Added { value: 6 }
    );
    assert_eq!(code(&log.apply(7, add_fo("k", 1, "c", 2, 1))), Some(1001));
    assert_eq!(log.value("k"), Some(&json!(6)));
}

/// Rule 4 at the edge of the type: a simple client that ran `u64::MAX` never runs
/// an older seq again (an overflowing "one more than the highest" once made seq 5
/// execute a second time after `u64::MAX`, and panicked in a debug build).
#[test]
fn seq_at_u64_max_executes_once_and_older_seqs_never_again() {
    let mut log = Log::new(SessionLimits::default());
    assert_eq!(
        log.apply(1, add("k", 1, "c", 5)),
        Outcome::Added { value: 1 }
    );
    assert_eq!(
        log.apply(2, add("k", 1, "c", u64::MAX)),
        Outcome::Added { value: 2 }
    );
    // Retries of both, and a fresh-looking lower seq: none executes.
    assert_eq!(
        log.apply(3, add("k", 1, "c", u64::MAX)),
        Outcome::Added { value: 2 }
    );
    assert_eq!(
        log.apply(4, add("k", 1, "c", 5)),
        Outcome::Added { value: 1 }
    );
    assert_eq!(
        log.apply(5, add("k", 1, "c", 6)),
        Outcome::Added { value: 2 }
    );
    assert_eq!(log.value("k"), Some(&json!(2)));
    // The same through a snapshot.
    let restored = State::from_snapshot(&log.state.to_snapshot()).unwrap();
    assert_eq!(restored, log.state);
    // Pipelining at the top of the range: first_outstanding = u64::MAX.
    assert_eq!(
        log.apply(6, add_fo("k", 1, "p", u64::MAX, u64::MAX)),
        Outcome::Added { value: 3 }
    );
    assert_eq!(
        log.apply(7, add_fo("k", 1, "p", u64::MAX, u64::MAX)),
        Outcome::Added { value: 3 }
    );
    assert_eq!(code(&log.apply(8, add_fo("k", 1, "p", 7, 0))), Some(1001));
    assert_eq!(log.value("k"), Some(&json!(3)));
}

/// A snapshot written before `last_executed` (with `executed_through`, one more
/// than the highest executed seq) restores to the same session.
#[test]
fn sessions_from_older_snapshots_keep_their_executed_seq() {
    let old = json!({
        "clock_ms": 10,
        "limits": SessionLimits::default(),
        "kv": {},
        "sessions": {
            "sessions": {
                "a": {"last_seen_ms": 10, "executed_through": 8, "replies": {"7": {"type": "write_ok"}}},
                "b": {"last_seen_ms": 10, "executed_through": 0}
            },
            "tombstones": {},
            "tombstone_order": []
        }
    });
    let state = State::from_snapshot(old.to_string().as_bytes()).unwrap();
    assert_eq!(state.sessions.get("a").unwrap().last_executed, Some(7));
    assert_eq!(state.sessions.get("b").unwrap().last_executed, None);
}

/// Property test over the whole `u64` range of `seq` and `first_outstanding`:
/// whatever a client sends, no (client, seq) executes twice, nothing overflows
/// (debug builds panic on overflow), and a snapshot taken at any point restores to
/// an equal state. Values are drawn with a bias to the edges of the type.
#[test]
fn no_seq_or_first_outstanding_executes_twice_or_overflows() {
    let seed = seed();
    let mut rng = Rng(seed);
    let edge = |rng: &mut Rng| -> u64 {
        match rng.below(8) {
            0 => rng.below(4),
            1 => u64::MAX - rng.below(4),
            2 => (1 << 63) + rng.below(3) - 1,
            3 => rng.next(),
            _ => 100 + rng.below(12),
        }
    };
    for round in 0..40 {
        let mut log = Log::new(small_limits());
        let mut executed: BTreeMap<(String, u64), ()> = BTreeMap::new();
        let mut total = 0i64;
        for i in 0..300u64 {
            let client = format!("c{}", rng.below(3));
            let seq = edge(&mut rng);
            let fo = (rng.below(3) == 0).then(|| edge(&mut rng));
            let op = match fo {
                Some(fo) => add_fo("k", 1, &client, seq, fo),
                None => add("k", 1, &client, seq),
            };
            log.apply(i, op);
            let now = log.value("k").and_then(|v| v.as_i64()).unwrap_or(0);
            if now != total {
                assert_eq!(now, total + 1, "seed {seed} round {round}: one add at most");
                let first = executed.insert((client.clone(), seq), ()).is_none();
                assert!(
                    first,
                    "seed {seed} round {round} step {i}: {client} seq {seq} executed twice"
                );
                total = now;
            }
            if rng.below(50) == 0 {
                let restored = State::from_snapshot(&log.state.to_snapshot()).unwrap();
                assert_eq!(restored, log.state, "seed {seed} round {round}");
            }
        }
    }
}

/// A failed cas quotes the values in its text, cut short: the reply (cached
/// and sent back) does not grow with them.
#[test]
fn error_texts_quote_large_values_cut_short() {
    let mut st = State::default();
    let big = json!("\"".repeat(100_000));
    let write = Op::Kv {
        kv: KvOp::Write {
            key: key("k"),
            value: big.clone(),
        },
        session: None,
    };
    st.apply(1, &Command::new(1, write));
    let cas = Op::Kv {
        kv: KvOp::Cas {
            key: key("k"),
            from: big.clone(),
            to: json!(1),
            create: false,
        },
        session: None,
    };
    st.apply(2, &Command::new(2, cas.clone()));
    let mismatch = Op::Kv {
        kv: KvOp::Cas {
            key: key("k"),
            from: json!(2),
            to: big,
            create: false,
        },
        session: None,
    };
    let reply = st.apply(3, &Command::new(3, mismatch));
    let Outcome::Failed {
        failure: code,
        text,
    } = reply
    else {
        panic!("{reply:?}")
    };
    assert_eq!(code, Failure::PreconditionFailed);
    assert!(text.starts_with("expected 2, had 1"), "{text}");
    let write_big = Op::Kv {
        kv: KvOp::Write {
            key: key("k"),
            value: json!("x".repeat(100_000)),
        },
        session: None,
    };
    st.apply(4, &Command::new(4, write_big));
    let reply = st.apply(5, &Command::new(5, cas));
    let Outcome::Failed { text, .. } = reply else {
        panic!("{reply:?}")
    };
    assert!(text.len() < 600, "{} bytes", text.len());
    assert!(
        text.contains("(200002 bytes)") && text.contains("(100002 bytes)"),
        "{}",
        &text[..100]
    );
}
