//! Restart: what `open` returns after a clean close is everything that was stored:
//! the log, the vote, the committed pointer, the purge point and the newest snapshot.

mod storage_common;

use oncekv::raft::sm_store::StateMachineStore;
use oncekv::storage::{self, LOG_DIR, SNAPSHOT_DIR};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{RaftLogReader, RaftSnapshotBuilder};
use storage_common::{TempDir, append_durable, entry, log_id, membership_entry, vote};

/// Applies entries to the state machine the way openraft does (no responders).
async fn apply(sm: &mut StateMachineStore, entries: Vec<oncekv::raft::Entry>) {
    let items = entries.into_iter().map(|e| Ok((e, None)));
    sm.apply(futures::stream::iter(items)).await.expect("apply");
}

fn snapshot_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join(SNAPSHOT_DIR))
        .expect("snapshot dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn log_vote_and_committed_survive_reopen() {
    let dir = TempDir::new("restart");
    {
        let mut s = storage_common::open(dir.path()).expect("open new");
        let mut batch = vec![membership_entry(1, 0)];
        batch.extend((1..=20).map(|i| entry(1, i)));
        append_durable(&mut s.log, batch).await.expect("append");
        s.log.save_vote(&vote(2, 0)).await.expect("vote");
        // A conflicting tail replaced by a newer term's entries.
        s.log
            .truncate_after(Some(log_id(1, 15)))
            .await
            .expect("truncate");
        append_durable(&mut s.log, (16..=18).map(|i| entry(2, i)).collect())
            .await
            .expect("append after truncate");
        s.log
            .save_committed(Some(log_id(2, 17)))
            .await
            .expect("committed");
        // Queued behind the committed pointer, so it is durable once this is.
        append_durable(&mut s.log, vec![entry(2, 19)])
            .await
            .expect("append");
    }
    let mut s = storage_common::open(dir.path()).expect("reopen");
    assert_eq!(s.log.read_vote().await.expect("vote"), Some(vote(2, 0)));
    assert_eq!(
        s.log.read_committed().await.expect("committed"),
        Some(log_id(2, 17))
    );
    let entries = s.log.try_get_log_entries(0..100).await.expect("read");
    let ids: Vec<_> = entries.iter().map(|e| e.log_id).collect();
    let mut want: Vec<_> = (1..=15).map(|i| log_id(1, i)).collect();
    want.insert(0, log_id(1, 0));
    want.extend((16..=19).map(|i| log_id(2, i)));
    assert_eq!(
        ids, want,
        "the log after reopen is exactly what was appended"
    );
    let state = s.log.get_log_state().await.expect("state");
    assert_eq!(state.last_log_id, Some(log_id(2, 19)));
    assert_eq!(state.last_purged_log_id, None);
}

fn segment_count(dir: &std::path::Path) -> usize {
    storage::wal::segment_files(&dir.join(LOG_DIR))
        .expect("log dir")
        .len()
}

/// With 4 KiB segments the log spans many files: a purge deletes the ones behind
/// it, the vote written in a deleted segment survives (each segment starts with
/// the current vote), and a reopen sees exactly the live log.
#[tokio::test]
async fn a_log_over_many_segments_survives_purge_and_reopen() {
    let dir = TempDir::new("segments");
    {
        let mut s = storage_common::open_with_segment_bytes(dir.path(), 4096).expect("open new");
        s.log.save_vote(&vote(1, 0)).await.expect("vote");
        let mut entries = vec![membership_entry(1, 0)];
        entries.extend((1..=400).map(|i| entry(1, i)));
        for e in &entries {
            append_durable(&mut s.log, vec![e.clone()])
                .await
                .expect("append");
        }
        // The purge below must be covered by a snapshot, as openraft does it.
        apply(&mut s.sm, entries[..=300].to_vec()).await;
        s.sm.build_snapshot().await.expect("snapshot");
        let before = segment_count(dir.path());
        assert!(
            before > 10,
            "400 entries should span many 4 KiB segments: {before}"
        );
        s.log.purge(log_id(1, 300)).await.expect("purge");
        // The purge is durable (and its segments deleted) once a later write is.
        append_durable(&mut s.log, vec![entry(1, 401)])
            .await
            .expect("append");
        let after = segment_count(dir.path());
        assert!(
            after * 2 < before,
            "purging 300 of 400 entries should delete most segments: {before} -> {after}"
        );
        eprintln!("segments: {before} before the purge, {after} after");
    }
    let mut s = storage_common::open_with_segment_bytes(dir.path(), 4096).expect("reopen");
    assert_eq!(s.log.read_vote().await.expect("vote"), Some(vote(1, 0)));
    let state = s.log.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 300)));
    assert_eq!(state.last_log_id, Some(log_id(1, 401)));
    let entries = s.log.try_get_log_entries(0..1000).await.expect("read");
    let ids: Vec<_> = entries.iter().map(|e| e.log_id).collect();
    assert_eq!(ids, (301..=401).map(|i| log_id(1, i)).collect::<Vec<_>>());
}

#[tokio::test]
async fn snapshot_is_durable_and_restores_the_state_machine() {
    let dir = TempDir::new("snapshot");
    let first_meta;
    {
        let mut s = storage_common::open(dir.path()).expect("open new");
        let mut entries = vec![membership_entry(1, 0)];
        entries.extend((1..=10).map(|i| entry(1, i)));
        append_durable(&mut s.log, entries.clone())
            .await
            .expect("append");
        apply(&mut s.sm, entries[..6].to_vec()).await;
        first_meta = s.sm.build_snapshot().await.expect("snapshot").meta;
        assert_eq!(first_meta.last_log_id, Some(log_id(1, 5)));
        assert_eq!(
            snapshot_files(dir.path()),
            vec!["snapshot-00000000000000000005.snap"]
        );
        apply(&mut s.sm, entries[6..].to_vec()).await;
        let built = s.sm.build_snapshot().await.expect("snapshot");
        let meta = built.meta.clone();
        assert_eq!(meta.last_log_id, Some(log_id(1, 10)));
        // The node keeps only the metadata; a follower is served the file's data.
        let served = s.sm.get_current_snapshot().await.expect("current");
        let served = served.expect("a snapshot to serve");
        assert_eq!(served.meta, built.meta);
        assert_eq!(
            served.snapshot, built.snapshot,
            "byte for byte from the file"
        );
        // openraft purges only after the snapshot call returned.
        s.log.purge(log_id(1, 8)).await.expect("purge");
        append_durable(&mut s.log, vec![entry(1, 11)])
            .await
            .expect("append");
        assert_eq!(
            snapshot_files(dir.path()),
            vec!["snapshot-00000000000000000010.snap"],
            "the older snapshot is removed once the newer is durable"
        );
    }
    let mut s = storage_common::open(dir.path()).expect("reopen");
    let (applied, membership) = s.sm.applied_state().await.expect("applied");
    assert_eq!(applied, Some(log_id(1, 10)), "restored from the snapshot");
    assert_eq!(membership.log_id(), &Some(log_id(1, 0)));
    assert_eq!(
        s.sm.read().state.read("\"k10\""),
        oncekv::state::Outcome::Read {
            value: serde_json::json!(10).into()
        }
    );
    let current = s.sm.get_current_snapshot().await.expect("current");
    assert_eq!(
        current.map(|c| c.meta.last_log_id),
        Some(Some(log_id(1, 10))),
        "the restored snapshot is served to lagging followers"
    );
    let state = s.log.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 8)));
    assert_eq!(state.last_log_id, Some(log_id(1, 11)));
    let entries = s.log.try_get_log_entries(0..100).await.expect("read");
    assert_eq!(
        entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
        vec![9, 10, 11]
    );
}

#[tokio::test]
async fn installed_snapshot_is_durable() {
    let (src, dst) = (TempDir::new("install-src"), TempDir::new("install-dst"));
    let snapshot = {
        let mut s = storage_common::open(src.path()).expect("open");
        let mut entries = vec![membership_entry(1, 0)];
        entries.extend((1..=4).map(|i| entry(1, i)));
        apply(&mut s.sm, entries).await;
        s.sm.build_snapshot().await.expect("build")
    };
    {
        let mut s = storage_common::open(dst.path()).expect("open");
        s.sm.install_snapshot(&snapshot.meta, snapshot.snapshot.clone())
            .await
            .expect("install");
    }
    let mut s = storage_common::open(dst.path()).expect("reopen");
    let (applied, _) = s.sm.applied_state().await.expect("applied");
    assert_eq!(applied, Some(log_id(1, 4)));
}

#[test]
fn a_second_open_of_the_same_dir_is_refused() {
    let dir = TempDir::new("lock");
    let _first = storage_common::open(dir.path()).expect("open");
    let Err(err) = storage_common::open(dir.path()) else {
        panic!("the log is locked, a second open must fail");
    };
    assert!(err.to_string().contains(LOG_DIR), "{err}");
    assert!(err.to_string().contains("locked"), "{err}");
}

/// While the log is written and open (no close), the checkpoint follows how far
/// it is synced within a moment, so records zeroed after a `kill -9` are refused.
#[tokio::test]
async fn the_checkpoint_follows_the_synced_log_while_it_is_open() {
    use oncekv::storage::wal::checkpoint::Checkpoint;
    let dir = TempDir::new("checkpoint");
    let mut s = storage_common::open(dir.path()).expect("open");
    let wal = dir.path().join(LOG_DIR);
    let at_open = Checkpoint::read(&wal).expect("read").expect("one").point;
    for i in 1..=20 {
        append_durable(&mut s.log, vec![entry(1, i)])
            .await
            .expect("append");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let p = Checkpoint::read(&wal).expect("read").expect("one").point;
        // 20 entries of well over 20 bytes each.
        if p.offset > at_open.offset + 20 * 20 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the checkpoint stays at {p:?} (at open {at_open:?})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
