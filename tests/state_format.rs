//! The state machine's durable encodings, pinned byte for byte.
//!
//! A log entry's command and a snapshot outlive the process that wrote them, so
//! renaming a stored type (here or in the wire format) must not silently change
//! them. These tests compare both encodings with golden files in
//! `tests/fixtures/`; a deliberate change bumps the format version in
//! `src/state/format.rs` and rewrites the files with `ONCEKV_BLESS=1 cargo test
//! --test state_format`. Data written before versions existed (no `v`, no
//! `format`) is read as version 1; an unknown version is refused, named.

use std::path::PathBuf;

use oncekv::raft::{Entry, Peer, TypeConfig};
use oncekv::state::format::{ENTRY_FORMAT, SNAPSHOT_FORMAT};
use oncekv::state::{Command, KvOp, Op, SessionLimits, SessionRef, State};
use openraft::{EntryPayload, Membership};
use serde_json::json;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Compares `actual` with the golden file, or rewrites it under `ONCEKV_BLESS=1`.
fn golden(name: &str, actual: &str) {
    let path = fixture(name);
    if std::env::var_os("ONCEKV_BLESS").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (create it with ONCEKV_BLESS=1)", path.display()));
    assert!(
        expected == actual,
        "{name} changed: a stored encoding differs from the golden file.\n\
         If the change is deliberate, bump the format version in src/state/format.rs, keep \
         reading the old one, and rewrite the file with ONCEKV_BLESS=1.\n\
         expected:\n{expected}\nactual:\n{actual}"
    );
}

fn key(k: &str) -> String {
    json!(k).to_string()
}

fn session(client: &str, seq: u64, first_outstanding: Option<u64>) -> Option<SessionRef> {
    Some(SessionRef {
        client_id: client.into(),
        seq,
        first_outstanding,
    })
}

/// One command of every kind the log carries, each field used at least once,
/// making every kind of outcome and every kind of removal (eviction of alice,
/// close of s9, expiry of s8) so the snapshot holds each.
fn every_command() -> Vec<Command> {
    let ops = vec![
        Op::SetLimits(SessionLimits {
            sessions_max: 4,
            replies_per_session_max: 2,
            tombstones_max: 3,
        }),
        Op::Kv {
            kv: KvOp::Write {
                key: key("w"),
                value: json!({"nested": [1, "two", null, 3.5, true]}),
            },
            session: None,
        },
        Op::Kv {
            kv: KvOp::Add {
                key: key("counter"),
                delta: -7,
            },
            session: session("alice", 1, None),
        },
        Op::Kv {
            kv: KvOp::Cas {
                key: key("w"),
                from: json!(1),
                to: json!(2),
                create: false,
            },
            session: session("alice", 2, None),
        },
        Op::Kv {
            kv: KvOp::Cas {
                key: key("fresh"),
                from: json!(0),
                to: json!("made"),
                create: true,
            },
            session: session("bob", 5, Some(5)),
        },
        Op::Kv {
            kv: KvOp::Add {
                key: key("counter"),
                delta: 10,
            },
            session: session("bob", 6, Some(5)),
        },
        Op::Kv {
            kv: KvOp::Cas {
                key: key("missing"),
                from: json!(1),
                to: json!(2),
                create: false,
            },
            session: session("bob", 7, Some(5)),
        },
        Op::OpenSession,
        Op::OpenSession,
        Op::Kv {
            kv: KvOp::Write {
                key: key("w"),
                value: json!(1),
            },
            session: session("carol", 1, None),
        },
        Op::CloseSession {
            client_id: "s9".into(),
        },
        Op::Kv {
            kv: KvOp::Add {
                key: key("counter"),
                delta: 1,
            },
            session: session("bob", 4, Some(5)),
        },
        Op::Gc {
            cutoff_ms: 9_500,
            max: None,
        },
        Op::Kv {
            kv: KvOp::Add {
                key: key("counter"),
                delta: 1,
            },
            session: session("alice", 3, None),
        },
    ];
    ops.into_iter()
        .enumerate()
        .map(|(i, op)| Command::new(1_000 * (i as u64 + 1), op))
        .collect()
}

/// [`every_command`] and what format version 2 added: a GC entry with a bound.
fn every_command_v2() -> Vec<Command> {
    let mut all = every_command();
    let ts = 1_000 * (all.len() as u64 + 1);
    all.push(Command::new(
        ts,
        Op::Gc {
            cutoff_ms: 12_000,
            max: Some(2),
        },
    ));
    all
}

/// The state after applying [`every_command`], and each command's outcome.
fn applied() -> (State, Vec<String>) {
    let mut state = State::new(SessionLimits::default());
    let outcomes = every_command()
        .iter()
        .enumerate()
        .map(|(i, cmd)| {
            let outcome = state.apply(i as u64 + 1, cmd);
            serde_json::to_string(&outcome).expect("outcome serializes")
        })
        .collect();
    (state, outcomes)
}

#[test]
fn log_entry_encoding_is_pinned() {
    let lines: Vec<String> = every_command_v2()
        .iter()
        .map(|c| serde_json::to_string(c).expect("command serializes"))
        .collect();
    golden("entry.v2.jsonl", &(lines.join("\n") + "\n"));
    for line in &lines {
        let back: Command = serde_json::from_str(line).expect("decodes");
        assert_eq!(serde_json::to_string(&back).unwrap(), *line);
        assert_eq!(back.format, ENTRY_FORMAT);
    }
}

#[test]
fn snapshot_encoding_and_cached_outcomes_are_pinned() {
    let (state, outcomes) = applied();
    golden("outcomes.v1.jsonl", &(outcomes.join("\n") + "\n"));
    let bytes = state.to_snapshot();
    let text = String::from_utf8(bytes.clone()).expect("snapshot is UTF-8");
    golden("snapshot.v1.json", &(text + "\n"));
    let restored = State::from_snapshot(&bytes).expect("restores");
    assert_eq!(restored, state);
    assert_eq!(restored.to_snapshot(), bytes);
    let head = format!("{{\"format\":{SNAPSHOT_FORMAT},\"state\":");
    assert!(bytes.starts_with(head.as_bytes()));
}

/// What builds writing format version 1 wrote is read still: every command
/// the same (a GC entry without a bound expires every idle session).
#[test]
fn log_entries_of_version_1_are_read() {
    let v1 = std::fs::read_to_string(fixture("entry.v1.jsonl")).expect("version 1 entries");
    let commands: Vec<Command> = v1
        .lines()
        .map(|l| serde_json::from_str(l).expect("a version 1 entry decodes"))
        .collect();
    assert_eq!(commands, every_command());
    let records = std::fs::read_to_string(fixture("log-record.v1.jsonl")).expect("records");
    for line in records.lines() {
        let _: Entry = serde_json::from_str(line).expect("a version 1 log record decodes");
    }
}

/// What the build before format versions wrote: the bare state, and commands
/// without `v`. Both are read, as version 1.
#[test]
fn data_written_before_format_versions_is_read_as_version_1() {
    let legacy_snapshot =
        std::fs::read(fixture("snapshot.unversioned.json")).expect("legacy snapshot fixture");
    let restored = State::from_snapshot(&legacy_snapshot).expect("legacy snapshot restores");
    let (state, _) = applied();
    assert_eq!(restored, state);

    let legacy_entries =
        std::fs::read_to_string(fixture("entry.unversioned.jsonl")).expect("legacy entries");
    let commands: Vec<Command> = legacy_entries
        .lines()
        .map(|l| serde_json::from_str(l).expect("legacy entry decodes"))
        .collect();
    assert_eq!(commands, every_command());
}

#[test]
fn an_unknown_format_version_is_refused_by_name() {
    let (state, _) = applied();
    let bytes = state.to_snapshot();
    let head = format!("{{\"format\":{SNAPSHOT_FORMAT},");
    let future = [b"{\"format\":2,".as_slice(), &bytes[head.len()..]].concat();
    let err = State::from_snapshot(&future).expect_err("version 2 is refused");
    let text = err.to_string();
    assert!(
        text.contains("snapshot format version 2 is not supported")
            && text.contains("reads version 1"),
        "{text}"
    );
    let garbled = b"{\"format\":x,\"state\":{}}";
    assert!(State::from_snapshot(garbled).is_err());

    let entry = r#"{"v":7,"ts_ms":1,"op":{"op":"open_session"}}"#;
    let err = serde_json::from_str::<Command>(entry).expect_err("version 7 is refused");
    assert!(
        err.to_string()
            .contains("log entry format version 7 is not supported")
            && err.to_string().contains("reads versions 1 to 2"),
        "{err}"
    );
    let entry = r#"{"v":0,"ts_ms":1,"op":{"op":"open_session"}}"#;
    assert!(serde_json::from_str::<Command>(entry).is_err(), "version 0");
}

/// What the log files hold per entry is openraft's `Entry` around the command:
/// its log id and payload kind are part of the format too (openraft is pinned to
/// one exact version; an upgrade that changes them fails here first).
#[test]
fn log_record_wrapping_is_pinned() {
    let log_id = |index| openraft::testing::log_id::<TypeConfig>(3, 1, index);
    let members = std::collections::BTreeMap::from([
        (
            1u64,
            Peer {
                name: "n1".into(),
                addr: "10.0.0.1:7001".into(),
            },
        ),
        (
            2u64,
            Peer {
                name: "n2".into(),
                addr: String::new(),
            },
        ),
    ]);
    let membership =
        Membership::new(vec![[1u64].into_iter().collect()], members).expect("a valid membership");
    let entries = [
        Entry {
            log_id: log_id(7),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: log_id(8),
            payload: EntryPayload::Normal(every_command().remove(2)),
        },
        Entry {
            log_id: log_id(9),
            payload: EntryPayload::Membership(membership),
        },
    ];
    let lines: Vec<String> = entries
        .iter()
        .map(|e| serde_json::to_string(e).expect("entry serializes"))
        .collect();
    golden("log-record.v2.jsonl", &(lines.join("\n") + "\n"));
    for line in &lines {
        let back: Entry = serde_json::from_str(line).expect("decodes");
        assert_eq!(serde_json::to_string(&back).unwrap(), *line);
    }
}
