//! Large values (100 KB) with real processes: a follower that was down while the
//! leader wrote megabytes catches up, by a snapshot sent in chunks and then by
//! appends bounded in bytes, and the cluster keeps its leader meanwhile.
//!
//! The bounds are set small (`ONCEKV_*` below) so that a few megabytes force what
//! gigabytes force with the defaults: snapshots and purges triggered by bytes, a
//! snapshot of dozens of chunks, appends of a few entries each.

mod support_tcp;

use std::time::{Duration, Instant};

use oncekv::protocol::Reply;
use serde_json::json;
use support_tcp::{TestCluster, wait_caught_up, wait_status};

/// Size of each value written.
const VALUE_BYTES: usize = 100_000;
/// Distinct keys (the state holds at most this many values).
const KEYS: usize = 12;

/// Writes values `from..to`, each 100 KB, to keys in turn.
async fn write_values(cluster: &TestCluster, from: usize, to: usize) {
    let mut client = cluster.client();
    client.open_session().await.expect("session");
    for n in from..to {
        let value = format!("{n:06}{}", "v".repeat(VALUE_BYTES - 6));
        let r = client
            .write(json!(format!("k{}", n % KEYS)), json!(value))
            .await
            .expect("write");
        assert_eq!(r, Reply::WriteOk, "write {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_by_megabytes_of_large_values_catches_up() {
    let cluster_env = [
        // A batch of about ten 100 KB entries (the least allowed: one entry of
        // the largest size).
        ("ONCEKV_APPEND_BATCH_BYTES_MAX", "1114112"),
        // A snapshot every ~2 MB of entries; ~1 MB kept behind it.
        ("ONCEKV_SNAPSHOT_EVERY_BYTES", "2097152"),
        ("ONCEKV_LOG_KEPT_BEHIND_SNAPSHOT_BYTES", "1048576"),
        // The ~1.2 MB state travels in ~20 chunks.
        ("ONCEKV_SNAPSHOT_CHUNK_BYTES", "65536"),
    ];
    let mut cluster = TestCluster::start("large-values", 3, &cluster_env);
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    write_values(&cluster, 0, 20).await;

    let follower = (leader + 1) % 3;
    let last = last_index(&cluster, leader).await;
    let f = wait_status(
        &cluster,
        follower,
        "the follower to apply the first writes",
        Duration::from_secs(10),
        |s| s.applied_index >= last,
    )
    .await;
    cluster.kill(follower);
    let stopped_at = f.last_log_index.expect("some entries");

    // ~6 MB while it is down: several snapshots by bytes, and purges past it.
    write_values(&cluster, 20, 80).await;
    let l = wait_status(
        &cluster,
        leader,
        "the leader to purge (by bytes) past the stopped follower's log",
        Duration::from_secs(10),
        |s| s.purged_index > Some(stopped_at),
    )
    .await;
    // Entries after the newest snapshot, sent as appends after it: up to ~1.2 MB
    // since that snapshot, below the 2 MB that would trigger the next one.
    let since = l.last_log_index.unwrap_or(0) - l.snapshot_index.unwrap_or(0);
    let more = 12usize.saturating_sub(since as usize).max(1);
    write_values(&cluster, 80, 80 + more).await;
    let term = l.term;
    eprintln!("follower stopped at {stopped_at}; leader {l:?}");

    // Restarted with snapshots by count or bytes out of reach: a snapshot it
    // holds afterwards was installed from the leader.
    let restarted = Instant::now();
    cluster.restart_with(
        follower,
        &[
            ("ONCEKV_SNAPSHOT_EVERY_ENTRIES", "1000000"),
            ("ONCEKV_SNAPSHOT_EVERY_BYTES", "1073741824"),
            ("ONCEKV_LOG_BYTES_MAX", "1073741824"),
        ],
    );
    let leader_last = last_index(&cluster, leader).await;
    let f = wait_caught_up(
        &cluster,
        follower,
        leader_last,
        Duration::from_secs(30),
        restarted,
    )
    .await;
    assert!(
        f.snapshot_index > Some(stopped_at),
        "the follower installed a snapshot: {f:?}"
    );
    // (Whether entries after that snapshot already came as appends depends on
    // when the leader took its own last snapshot; the write at the end of this
    // test makes sure some do.)
    let installed = f.snapshot_index;
    let partials: Vec<_> = std::fs::read_dir(cluster.nodes[follower].dir.join("snapshots"))
        .expect("snapshots dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert!(
        partials.is_empty(),
        "no partial snapshot left: {partials:?}"
    );

    // Idle, with megabytes of large entries in the logs: the leader stays. (Over
    // this whole test no election happened: same term as before the restart.)
    let before = Instant::now();
    while before.elapsed() < Duration::from_secs(1) {
        for i in 0..3 {
            let s = cluster.status(i).await.expect("status");
            assert_eq!(s.term, term, "no election while idle: node {i}: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Replication to it goes on, by appends after the snapshot it installed (its
    // own snapshots are out of reach, so its snapshot stays the installed one).
    write_values(&cluster, 100, 101).await;
    let last = last_index(&cluster, leader).await;
    let f = wait_status(
        &cluster,
        follower,
        "the follower to apply a new write",
        Duration::from_secs(10),
        |s| s.applied_index >= last,
    )
    .await;
    assert_eq!(f.snapshot_index, installed, "{f:?}");
    assert!(
        f.applied_index > installed,
        "applied appends after the installed snapshot: {f:?}"
    );
}

/// Node `i`'s last log index.
async fn last_index(cluster: &TestCluster, i: usize) -> Option<u64> {
    let s = cluster.status(i).await.expect("status");
    assert!(s.last_log_index.is_some(), "{s:?}");
    s.last_log_index
}
