//! Group commit, measured: appends issued back to back (as openraft does: `append`
//! returns before the entries are durable) share commits; the figures are printed
//! (`cargo test --test storage_group_commit -- --nocapture`).

mod storage_common;

use std::time::Instant;

use oncekv::raft::TypeConfig;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use storage_common::{TempDir, append_durable, entry};

/// Appends issued without waiting for durability.
const PIPELINED_APPENDS: u64 = 2_000;
/// Appends each awaited before the next (one commit each: the baseline).
const SEQUENTIAL_APPENDS: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_appends_share_commits() {
    let dir = TempDir::new("group-commit");
    let mut s = storage_common::open(dir.path()).expect("open");

    let before = s.log.stats();
    let start = Instant::now();
    for i in 1..=SEQUENTIAL_APPENDS {
        append_durable(&mut s.log, vec![entry(1, i)])
            .await
            .expect("append");
    }
    let seq_elapsed = start.elapsed();
    let seq = s.log.stats();
    let seq_commits = seq.commits - before.commits;

    let start = Instant::now();
    let mut pending = Vec::with_capacity(PIPELINED_APPENDS as usize);
    for i in SEQUENTIAL_APPENDS + 1..=SEQUENTIAL_APPENDS + PIPELINED_APPENDS {
        let (tx, rx) = TypeConfig::oneshot();
        s.log
            .append(vec![entry(1, i)], IOFlushed::signal(tx))
            .await
            .expect("append");
        pending.push(rx);
    }
    for rx in pending {
        rx.await.expect("callback").expect("durable");
    }
    let pipe_elapsed = start.elapsed();
    let pipe_commits = s.log.stats().commits - seq.commits;

    eprintln!(
        "group commit: sequential {SEQUENTIAL_APPENDS} appends -> {seq_commits} commits, \
         {:.0} appends/s; pipelined {PIPELINED_APPENDS} appends -> {pipe_commits} commits \
         ({:.1} appends/commit), {:.0} appends/s",
        SEQUENTIAL_APPENDS as f64 / seq_elapsed.as_secs_f64(),
        PIPELINED_APPENDS as f64 / pipe_commits as f64,
        PIPELINED_APPENDS as f64 / pipe_elapsed.as_secs_f64(),
    );
    assert_eq!(
        seq_commits, SEQUENTIAL_APPENDS,
        "awaited appends commit alone"
    );
    assert!(
        pipe_commits * 2 <= PIPELINED_APPENDS,
        "back-to-back appends should share commits: {pipe_commits} commits for {PIPELINED_APPENDS}"
    );
}

/// A follower's append (entries another node proposed) with nothing queued is
/// written and synced by the caller: durable when `append` returns, one commit each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followers_appends_are_synced_inline() {
    let dir = TempDir::new("inline");
    let mut s = storage_common::open(dir.path()).expect("open");
    s.log.set_node_id(Some(1)); // the entries' proposer is node 0
    let before = s.log.stats();
    for i in 1..=20 {
        let (tx, mut rx) = TypeConfig::oneshot();
        s.log
            .append(vec![entry(1, i)], IOFlushed::signal(tx))
            .await
            .expect("append");
        let done = rx.try_recv().expect("completed before append returned");
        done.expect("durable");
    }
    assert_eq!(s.log.stats().commits - before.commits, 20);
    drop(s);
    let mut s = storage_common::open(dir.path()).expect("reopen");
    let state = s.log.get_log_state().await.expect("state");
    assert_eq!(state.last_log_id.map(|l| l.index), Some(20));

    // The leader's own entries still go through the writer thread.
    s.log.set_node_id(Some(0));
    let (tx, rx) = TypeConfig::oneshot();
    s.log
        .append(vec![entry(1, 21)], IOFlushed::signal(tx))
        .await
        .expect("append");
    rx.await.expect("callback").expect("durable");
}

/// The log writer thread of this process, found by its name (`/proc` shows the
/// first 15 bytes of `oncekv-log-writer`).
#[cfg(target_os = "linux")]
fn writer_threads() -> Vec<String> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let task = task.expect("task").path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim() == "oncekv-log-writ" {
            found.push(std::fs::read_to_string(task.join("stat")).expect("stat"));
        }
    }
    found
}

/// The writer thread runs `SCHED_BATCH` (policy 3 in `/proc/.../stat`, field 41):
/// waking it never preempts the task that queued the append (docs/storage.md).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_thread_does_not_preempt_who_wakes_it() {
    let dir = TempDir::new("writer-policy");
    let s = storage_common::open(dir.path()).expect("open");
    // Other tests in this binary may be starting writers of their own meanwhile
    // (named before their policy is set): wait until every one is set up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let stats = writer_threads();
        assert!(!stats.is_empty(), "a writer thread is running");
        let policies: Vec<i32> = stats
            .iter()
            .map(|stat| {
                // Fields after the parenthesised command name; policy is field 41.
                let after = stat.rsplit_once(')').expect("comm in parens").1;
                let fields: Vec<&str> = after.split_whitespace().collect();
                fields[41 - 3].parse().expect("policy")
            })
            .collect();
        if policies.iter().all(|&p| p == libc::SCHED_BATCH) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "writer threads' policies: {policies:?} (SCHED_BATCH is {})",
            libc::SCHED_BATCH
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    drop(s);
}
