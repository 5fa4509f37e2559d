//! Kill safety at the process level: a child process appends (pipelined), saves
//! votes, builds snapshots and purges in a loop, printing what was acknowledged;
//! the parent SIGKILLs it at a random instant, reopens the dir and checks that
//! every acknowledged append and vote is there. Five kill/restart rounds on one
//! dir. Re-run a failure with `ONCEKV_KILL_SEED=<seed>`.

mod storage_common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oncekv::raft::TypeConfig;
use oncekv::raft::sm_store::StateMachineStore;
use openraft::storage::{IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::type_config::TypeConfigExt;
use openraft::{RaftLogReader, RaftSnapshotBuilder};
use rand::{Rng, SeedableRng};
use storage_common::{TempDir, entry, vote};

/// The child's dir comes through this variable; without it the child test is a no-op.
const DIR_VAR: &str = "ONCEKV_KILL_DIR";
/// The child's term (one per round, so each round's entries and vote are newer).
const TERM_VAR: &str = "ONCEKV_KILL_TERM";
/// Appends in flight at once in the child.
const PIPELINE: u64 = 16;
/// The child builds a snapshot and purges behind it every this many entries.
const SNAPSHOT_EVERY: u64 = 500;
/// Small log segments, so kills land while segments roll and are deleted.
const SEGMENT_BYTES: u64 = 16 << 10;
/// Kill/restart rounds.
const ROUNDS: u64 = 5;

#[test]
fn acknowledged_writes_survive_sigkill() {
    let seed: u64 = std::env::var("ONCEKV_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("kill test seed {seed} (ONCEKV_KILL_SEED={seed} to re-run)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = TempDir::new("kill");
    let mut acked_total = 0;
    for term in 1..=ROUNDS {
        let kill_after = Duration::from_millis(rng.gen_range(20..400));
        let (acked, voted) = run_child_and_kill(dir.path(), term, kill_after);
        eprintln!(
            "round {term}: killed after {kill_after:?}, acked up to {acked:?}, vote {voted:?}"
        );
        acked_total = acked.unwrap_or(acked_total).max(acked_total);
        check(dir.path(), acked_total, voted);
    }
    assert!(acked_total > 0, "the child acknowledged nothing");
}

/// Runs the child until `kill_after` past its first ack, then SIGKILLs it.
/// Returns the highest acked index and the last durable vote's term.
fn run_child_and_kill(dir: &Path, term: u64, kill_after: Duration) -> (Option<u64>, Option<u64>) {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child_writer", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(DIR_VAR, dir)
        .env(TERM_VAR, term.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut acked, mut voted) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut kill_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        assert!(now < deadline, "child made no progress");
        if kill_at.is_some_and(|k| now >= k) {
            break;
        }
        match rx.recv_timeout(Duration::from_millis(5)) {
            Ok(line) => {
                if let Some(n) = field(&line, "acked") {
                    acked = Some(n);
                    kill_at.get_or_insert(now + kill_after);
                }
                voted = field(&line, "voted").or(voted);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => panic!("child exited early: {:?}", child.wait()),
        }
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    // Lines already written before the kill were acknowledged too.
    reader.join().expect("reader");
    while let Ok(line) = rx.try_recv() {
        acked = field(&line, "acked").or(acked);
        voted = field(&line, "voted").or(voted);
    }
    (acked, voted)
}

/// The number after `word` in a line of the child's output (libtest may print its
/// own text before ours on the same line).
fn field(line: &str, word: &str) -> Option<u64> {
    let rest = &line[line.find(&format!("{word} "))? + word.len() + 1..];
    rest.split_whitespace().next()?.parse().ok()
}

/// Reopens and checks: every index up to `acked` is in the log or in the snapshot's
/// state, the vote is at least the last acknowledged one, and the committed
/// pointer is not ahead of the log.
fn check(dir: &Path, acked: u64, voted: Option<u64>) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut s = storage_common::open_with_segment_bytes(dir, SEGMENT_BYTES)
            .expect("reopen after SIGKILL");
        let state = s.log.get_log_state().await.expect("log state");
        let purged = state.last_purged_log_id.map_or(0, |p| p.index);
        let entries = s.log.try_get_log_entries(..).await.expect("read");
        let found = s.log.read_vote().await.expect("vote");
        let committed = s.log.read_committed().await.expect("committed");
        assert!(
            committed <= state.last_log_id,
            "committed {committed:?} is ahead of the durable log {:?}",
            state.last_log_id
        );
        let sm = s.sm.read();
        for i in 1..=acked {
            if i <= purged {
                assert!(
                    sm.state.kv.contains_key(&format!("\"k{i}\"")),
                    "acked entry {i} (purged) missing from the snapshot state"
                );
            } else {
                let e = entries.iter().find(|e| e.log_id.index == i);
                assert!(e.is_some(), "acked entry {i} missing from the log");
            }
        }
        if let Some(t) = voted {
            let want = vote(t, 0);
            assert!(
                found.is_some_and(|v| v >= want),
                "vote {found:?} older than acknowledged {want:?}"
            );
        }
    });
}

/// The child: appends forever in its term, printing `acked <index>` once an
/// append's callback reports it durable and `voted <term>` once `save_vote` returns.
#[test]
#[ignore = "run by acknowledged_writes_survive_sigkill as a child process"]
fn child_writer() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let term: u64 = std::env::var(TERM_VAR)
        .expect("term")
        .parse()
        .expect("term number");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(child_loop(Path::new(&dir), term));
}

async fn child_loop(dir: &Path, term: u64) {
    let mut s = storage_common::open_with_segment_bytes(dir, SEGMENT_BYTES).expect("child open");
    if term % 2 == 1 {
        // As a follower (the entries' proposer, node 0, is someone else): appends
        // are synced inline when nothing is queued, and queued otherwise.
        s.log.set_node_id(Some(1));
    }
    s.log.save_vote(&vote(term, 0)).await.expect("vote");
    println!("voted {term}");
    let state = s.log.get_log_state().await.expect("state");
    let mut next = state.last_log_id.map_or(1, |l| l.index + 1);
    // Re-apply what the snapshot does not cover, as openraft would on start.
    let (applied, _) = s.sm.applied_state().await.expect("applied");
    let from = applied.map_or(1, |a| a.index + 1);
    let tail = s.log.try_get_log_entries(from..next).await.expect("tail");
    apply(&mut s.sm, tail).await;
    loop {
        let mut pending = Vec::new();
        let mut batch = Vec::new();
        for _ in 0..PIPELINE {
            let e = entry(term, next);
            let (tx, rx) = TypeConfig::oneshot();
            s.log
                .append(vec![e.clone()], IOFlushed::signal(tx))
                .await
                .expect("append");
            pending.push((next, rx));
            batch.push(e);
            next += 1;
        }
        // As a follower may: the committed pointer covers entries that are
        // queued but not yet durable. It must never be durable before them.
        let last = batch.last().map(|e| e.log_id);
        s.log.save_committed(last).await.expect("committed");
        for (index, rx) in pending {
            rx.await.expect("callback").expect("durable");
            println!("acked {index}");
        }
        apply(&mut s.sm, batch).await;
        let last = next - 1;
        if last % SNAPSHOT_EVERY < PIPELINE {
            let snap = s.sm.build_snapshot().await.expect("snapshot");
            let upto = snap.meta.last_log_id.expect("non-empty").index - 100;
            let at = s.log.try_get_log_entries(upto..=upto).await.expect("read");
            let id = at.first().map(|e| e.log_id).expect("entry to purge up to");
            s.log.purge(id).await.expect("purge");
        }
    }
}

async fn apply(sm: &mut StateMachineStore, entries: Vec<oncekv::raft::Entry>) {
    let items = entries.into_iter().map(|e| Ok((e, None)));
    sm.apply(futures::stream::iter(items)).await.expect("apply");
}
