//! Damaged or foreign data dirs: `open` fails with an error naming the file at
//! fault, and never starts empty in their place.

mod storage_common;

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use oncekv::raft::sm_store::StateMachineStore;
use oncekv::storage::{self, LOG_DIR, SNAPSHOT_DIR, StorageError};
use openraft::RaftSnapshotBuilder;
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use storage_common::{TempDir, append_durable, entry, log_id, membership_entry, vote};

/// A data dir with 300 entries, a vote and a snapshot at index 100; returns the
/// snapshot file.
async fn populated(dir: &Path) -> PathBuf {
    let mut s = storage_common::open(dir).expect("open new");
    let mut entries = vec![membership_entry(1, 0)];
    entries.extend((1..=300).map(|i| entry(1, i)));
    append_durable(&mut s.log, entries.clone())
        .await
        .expect("append");
    s.log.save_vote(&vote(1, 0)).await.expect("vote");
    apply(&mut s.sm, entries[..=100].to_vec()).await;
    s.sm.build_snapshot().await.expect("snapshot");
    dir.join(SNAPSHOT_DIR)
        .join("snapshot-00000000000000000100.snap")
}

async fn apply(sm: &mut StateMachineStore, entries: Vec<oncekv::raft::Entry>) {
    let items = entries.into_iter().map(|e| Ok((e, None)));
    sm.apply(futures::stream::iter(items)).await.expect("apply");
}

/// `open` must fail, naming `file`.
fn assert_refused(dir: &Path, file: &Path) -> StorageError {
    let Err(err) = storage_common::open(dir) else {
        panic!(
            "open accepted a damaged dir ({} was damaged)",
            file.display()
        );
    };
    let text = err.to_string();
    assert!(
        text.contains(&file.display().to_string()),
        "error should name {}: {text}",
        file.display()
    );
    err
}

fn truncate(file: &Path, keep_fraction: f64) {
    let len = fs::metadata(file).expect("metadata").len();
    let f = OpenOptions::new().write(true).open(file).expect("open");
    f.set_len((len as f64 * keep_fraction) as u64)
        .expect("truncate");
}

/// Overwrites `len` bytes at `at` (a fraction of the file size) with a pattern.
fn garble(file: &Path, at: f64, len: usize) {
    let size = fs::metadata(file).expect("metadata").len();
    garble_at(file, (size as f64 * at) as u64, len);
}

/// Overwrites `len` bytes at offset `at` with a pattern.
fn garble_at(file: &Path, at: u64, len: usize) {
    let mut f = OpenOptions::new().write(true).open(file).expect("open");
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.write_all(&vec![0xA5; len]).expect("write");
}

/// The newest (here: only) log segment of a populated dir.
fn segment(dir: &Path) -> PathBuf {
    let segs = storage::wal::segment_files(&dir.join(LOG_DIR)).expect("log dir");
    segs.last().cloned().expect("a segment")
}

#[tokio::test]
async fn truncated_log_file_is_refused() {
    for keep in [0.5, 0.001] {
        let dir = TempDir::new("trunc-log");
        populated(dir.path()).await;
        let log = segment(dir.path());
        truncate(&log, keep);
        let err = assert_refused(dir.path(), &log);
        eprintln!("truncated log segment to {keep}: {err}");
    }
}

#[tokio::test]
async fn garbled_log_file_is_refused() {
    // The segment header, an early entry, and the last entry written (found by
    // their bytes). (Bytes just after the last record are not data: they are what
    // a torn write leaves, dropped at open, see `wal::tests`.)
    for place in ["header", "\\\"k150\\\"", "\\\"k300\\\""] {
        let dir = TempDir::new("garble-log");
        populated(dir.path()).await;
        let log = segment(dir.path());
        let bytes = fs::read(&log).expect("read");
        let at = match place {
            "header" => 0,
            _ => bytes
                .windows(place.len())
                .position(|w| w == place.as_bytes())
                .unwrap_or_else(|| panic!("{place} not found in {}", log.display())),
        };
        garble_at(&log, at as u64, 16);
        let err = assert_refused(dir.path(), &log);
        eprintln!("garbled log segment at {place}: {err}");
    }
}

#[tokio::test]
async fn truncated_snapshot_is_refused() {
    let dir = TempDir::new("trunc-snap");
    let snap = populated(dir.path()).await;
    truncate(&snap, 0.9);
    let err = assert_refused(dir.path(), &snap);
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
}

#[tokio::test]
async fn garbled_snapshot_is_refused() {
    let dir = TempDir::new("garble-snap");
    let snap = populated(dir.path()).await;
    garble(&snap, 0.6, 8);
    let err = assert_refused(dir.path(), &snap);
    assert!(err.to_string().contains("checksum"), "{err}");
}

#[tokio::test]
async fn missing_snapshot_behind_a_purged_log_is_refused() {
    let dir = TempDir::new("missing-snap");
    let snap = populated(dir.path()).await;
    {
        let mut s = storage_common::open(dir.path()).expect("reopen");
        s.log.purge(log_id(1, 100)).await.expect("purge");
        append_durable(&mut s.log, vec![entry(1, 301)])
            .await
            .expect("append");
    }
    fs::remove_file(&snap).expect("remove snapshot");
    assert_refused(dir.path(), &dir.path().join(SNAPSHOT_DIR));
}

#[tokio::test]
async fn a_deleted_log_file_is_refused() {
    let dir = TempDir::new("no-log");
    populated(dir.path()).await;
    let log = segment(dir.path());
    fs::remove_file(&log).expect("remove log segment");
    assert_refused(dir.path(), &dir.path().join(LOG_DIR));
    // The whole log directory, too.
    fs::remove_dir_all(dir.path().join(LOG_DIR)).expect("remove log dir");
    assert_refused(dir.path(), &dir.path().join(LOG_DIR));
}

#[test]
fn other_format_version_is_refused() {
    let dir = TempDir::new("version");
    drop(storage_common::open(dir.path()).expect("open new"));
    let marker = dir.path().join("oncekv.meta");
    fs::write(
        &marker,
        r#"{"format":"oncekv-data","version":99,"node_id":null}"#,
    )
    .expect("write marker");
    let err = assert_refused(dir.path(), &marker);
    assert!(matches!(err, StorageError::Incompatible { .. }), "{err}");
}

#[test]
fn another_nodes_dir_is_refused() {
    let dir = TempDir::new("node");
    drop(
        storage::open_node(dir.path(), 1, storage::WalOptions::default()).expect("open as node 1"),
    );
    drop(storage::open_node(dir.path(), 1, storage::WalOptions::default()).expect("node 1 again"));
    let Err(err) = storage::open_node(dir.path(), 2, storage::WalOptions::default()) else {
        panic!("node 2 opened node 1's dir");
    };
    assert!(matches!(err, StorageError::WrongNode { .. }), "{err}");
}

#[test]
fn a_foreign_dir_is_refused() {
    let dir = TempDir::new("foreign");
    fs::create_dir_all(dir.path()).expect("mkdir");
    fs::write(dir.path().join("notes.txt"), "not ours").expect("write");
    let Err(err) = storage_common::open(dir.path()) else {
        panic!("opened a dir that is not a data dir");
    };
    assert!(matches!(err, StorageError::NotADataDir { .. }), "{err}");
}

#[tokio::test]
async fn a_dir_that_lost_its_marker_is_refused() {
    let dir = TempDir::new("no-marker");
    populated(dir.path()).await;
    fs::remove_file(dir.path().join("oncekv.meta")).expect("remove marker");
    let Err(err) = storage_common::open(dir.path()) else {
        panic!("a dir with data but no marker must not be taken as new");
    };
    assert!(matches!(err, StorageError::NotADataDir { .. }), "{err}");
}
