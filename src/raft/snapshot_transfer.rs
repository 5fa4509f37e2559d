//! [`SnapshotReceiver`]: a follower's side of a chunked snapshot transfer
//! (`raft_snapshot`, see [`super::network::SnapshotChunk`]).
//!
//! Chunks are appended to a partial file in the data dir
//! (`snapshots/incoming-<n>.part`; in memory when there is no data dir), never
//! held in memory across RPCs. A transfer is identified by the leader's vote, the
//! snapshot's last log id and its size. Each chunk is answered with the offset the
//! follower wants next, so:
//!
//! - a repeated chunk (a retry whose first copy arrived) is acknowledged and not
//!   written again;
//! - a chunk after a lost one is not written; the answer names the gap's start;
//! - a transfer the leader restarts from offset 0 resumes where the partial file
//!   ends.
//!
//! At most `Config::snapshot_transfers_max` partial transfers are kept (a new one
//! replaces the least recently active); one idle for
//! `Config::snapshot_transfer_idle_ms` is deleted; partial files left by a crash
//! are deleted at start (`storage::snapshots::SnapshotDir::open`).

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::AsyncWriteExt;

use super::network::SnapshotChunk;

/// Prefix of a partial snapshot file's name.
pub const PART_PREFIX: &str = "incoming-";
/// Suffix of a partial snapshot file's name.
pub const PART_SUFFIX: &str = ".part";

/// What a chunk led to.
#[derive(Debug, PartialEq)]
pub enum Accepted {
    /// Send the piece starting at this offset next.
    Next(u64),
    /// Every byte arrived: the whole snapshot, to install (then report it with
    /// [`SnapshotReceiver::installed`]).
    Complete(Vec<u8>),
    /// This snapshot was installed already (the leader missed the answer and
    /// sends it again): answer that it is done.
    Installed,
}

/// Where one transfer's bytes go.
enum Sink {
    File {
        path: PathBuf,
        file: tokio::fs::File,
    },
    Memory(Vec<u8>),
}

/// One partial transfer.
struct Transfer {
    key: String,
    total: u64,
    received: u64,
    last: Instant,
    sink: Sink,
}

impl Transfer {
    async fn discard(self) {
        if let Sink::File { path, file } = self.sink {
            drop(file);
            if let Err(e) = tokio::fs::remove_file(&path).await {
                tracing::warn!("cannot remove {}: {e}", path.display());
            }
        }
    }
}

/// The partial incoming snapshots of one node.
pub struct SnapshotReceiver {
    /// Where partial files go; `None` keeps them in memory (Maelstrom mode).
    dir: Option<PathBuf>,
    /// Most partial transfers kept at once.
    max: usize,
    /// A partial transfer idle this long is dropped.
    idle: Duration,
    /// Names partial files uniquely within this process.
    next_file: AtomicU64,
    /// The partial transfers, one chunk handled at a time.
    transfers: tokio::sync::Mutex<Vec<Transfer>>,
    /// The transfer installed last.
    installed: std::sync::Mutex<Option<String>>,
}

/// What identifies a transfer: the leader's vote, the snapshot's last log id
/// and its size.
fn key_of(chunk: &SnapshotChunk) -> String {
    format!(
        "{}|{}|{}",
        serde_json::to_string(&chunk.vote).unwrap_or_default(),
        serde_json::to_string(&chunk.meta.last_log_id).unwrap_or_default(),
        chunk.total
    )
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, why)
}

impl SnapshotReceiver {
    /// A receiver writing partial files into `dir` (memory if `None`).
    pub fn new(dir: Option<PathBuf>, max: usize, idle: Duration) -> SnapshotReceiver {
        SnapshotReceiver {
            dir,
            max: max.max(1),
            idle,
            next_file: AtomicU64::new(0),
            transfers: tokio::sync::Mutex::new(Vec::new()),
            installed: std::sync::Mutex::new(None),
        }
    }

    /// Records that the snapshot `chunk` completed was installed.
    pub fn installed(&self, chunk: &SnapshotChunk) {
        *self.installed.lock().unwrap_or_else(|p| p.into_inner()) = Some(key_of(chunk));
    }

    /// Deletes partial transfers idle past the limit (a leader that died or
    /// moved on mid-transfer sends no further chunk that would).
    pub async fn sweep(&self) {
        let mut transfers = self.transfers.lock().await;
        let now = Instant::now();
        let mut i = 0;
        while i < transfers.len() {
            if now.duration_since(transfers[i].last) >= self.idle {
                let t = transfers.swap_remove(i);
                tracing::info!("dropping a partial snapshot idle for {:?}", self.idle);
                t.discard().await;
            } else {
                i += 1;
            }
        }
    }

    /// How many partial transfers are kept now.
    pub async fn partial_count(&self) -> usize {
        self.transfers.lock().await.len()
    }

    /// Takes one chunk.
    pub async fn accept(&self, chunk: &SnapshotChunk) -> io::Result<Accepted> {
        let len = chunk.data.len() as u64;
        if chunk
            .offset
            .checked_add(len)
            .is_none_or(|end| end > chunk.total)
        {
            return Err(invalid(format!(
                "a snapshot chunk of {len} bytes at offset {} passes the snapshot's {} bytes",
                chunk.offset, chunk.total
            )));
        }
        let key = key_of(chunk);
        let mut transfers = self.transfers.lock().await;
        if self
            .installed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            == Some(&key)
        {
            if let Some(at) = transfers.iter().position(|t| t.key == key) {
                transfers.swap_remove(at).discard().await;
            }
            return Ok(Accepted::Installed);
        }
        // Stale partial transfers go first (a leader that died mid-transfer).
        let now = Instant::now();
        let mut i = 0;
        while i < transfers.len() {
            if now.duration_since(transfers[i].last) >= self.idle && transfers[i].key != key {
                let t = transfers.swap_remove(i);
                tracing::info!("dropping a partial snapshot idle for {:?}", self.idle);
                t.discard().await;
            } else {
                i += 1;
            }
        }
        let at = match transfers.iter().position(|t| t.key == key) {
            Some(at) => at,
            None => {
                if transfers.len() >= self.max {
                    let oldest = (0..transfers.len())
                        .min_by_key(|&i| transfers[i].last)
                        .expect("not empty");
                    let t = transfers.swap_remove(oldest);
                    tracing::info!("dropping a partial snapshot for a newer transfer");
                    t.discard().await;
                }
                let sink = match &self.dir {
                    Some(dir) => {
                        let n = self.next_file.fetch_add(1, Ordering::Relaxed);
                        let path = dir.join(format!("{PART_PREFIX}{n}{PART_SUFFIX}"));
                        let file = tokio::fs::OpenOptions::new()
                            .write(true)
                            .create(true)
                            .truncate(true)
                            .open(&path)
                            .await?;
                        Sink::File { path, file }
                    }
                    None => Sink::Memory(Vec::new()),
                };
                transfers.push(Transfer {
                    key,
                    total: chunk.total,
                    received: 0,
                    last: now,
                    sink,
                });
                transfers.len() - 1
            }
        };
        let t = &mut transfers[at];
        t.last = now;
        let end = chunk.offset + len;
        if chunk.offset <= t.received && end > t.received {
            // The new part of this chunk (all of it, unless it repeats some).
            let new = &chunk.data.as_bytes()[(t.received - chunk.offset) as usize..];
            let written = match &mut t.sink {
                Sink::File { file, .. } => file.write_all(new).await,
                Sink::Memory(buf) => {
                    buf.extend_from_slice(new);
                    Ok(())
                }
            };
            if let Err(e) = written {
                let t = transfers.swap_remove(at);
                t.discard().await;
                return Err(e);
            }
            t.received = end;
        }
        // Otherwise a repeat (end <= received) or a gap (offset > received):
        // the answer says where to go on.
        if t.received < t.total {
            return Ok(Accepted::Next(t.received));
        }
        let t = transfers.swap_remove(at);
        drop(transfers);
        let data = match t.sink {
            Sink::Memory(buf) => buf,
            Sink::File { path, mut file } => {
                file.flush().await?;
                drop(file);
                let data = tokio::fs::read(&path).await;
                if let Err(e) = tokio::fs::remove_file(&path).await {
                    tracing::warn!("cannot remove {}: {e}", path.display());
                }
                data?
            }
        };
        if data.len() as u64 != t.total {
            return Err(invalid(format!(
                "the partial snapshot holds {} bytes, expected {}",
                data.len(),
                t.total
            )));
        }
        Ok(Accepted::Complete(data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{SnapshotMeta, Vote};

    fn chunk(term: u64, data: &str, offset: u64, total: u64) -> SnapshotChunk {
        SnapshotChunk {
            vote: Vote::new_committed(term, 1),
            meta: SnapshotMeta {
                last_log_id: Some(openraft::testing::log_id::<crate::raft::TypeConfig>(
                    term, 1, 10,
                )),
                last_membership: Default::default(),
            },
            total,
            offset,
            data: data.into(),
        }
    }

    async fn a_transfer_survives_loss_and_repeats(dir: Option<PathBuf>) {
        let rx = SnapshotReceiver::new(dir.clone(), 2, Duration::from_secs(60));
        let whole = "abcdefghij";
        assert_eq!(
            rx.accept(&chunk(1, "abc", 0, 10)).await.unwrap(),
            Accepted::Next(3)
        );
        // Repeated: acknowledged, not written twice.
        assert_eq!(
            rx.accept(&chunk(1, "abc", 0, 10)).await.unwrap(),
            Accepted::Next(3)
        );
        // "def" lost: "ghi" is not written, the answer names the gap.
        assert_eq!(
            rx.accept(&chunk(1, "ghi", 6, 10)).await.unwrap(),
            Accepted::Next(3)
        );
        // An overlapping piece writes only its new part.
        assert_eq!(
            rx.accept(&chunk(1, "cdefgh", 2, 10)).await.unwrap(),
            Accepted::Next(8)
        );
        if let Some(d) = &dir {
            assert_eq!(std::fs::read_dir(d).unwrap().count(), 1, "one partial file");
        }
        assert_eq!(
            rx.accept(&chunk(1, "ij", 8, 10)).await.unwrap(),
            Accepted::Complete(whole.as_bytes().to_vec())
        );
        assert_eq!(rx.partial_count().await, 0);
        if let Some(d) = &dir {
            assert_eq!(std::fs::read_dir(d).unwrap().count(), 0, "file removed");
        }
        // Sent again after it was installed (the answer was lost): done.
        rx.installed(&chunk(1, "ij", 8, 10));
        assert_eq!(
            rx.accept(&chunk(1, "abc", 0, 10)).await.unwrap(),
            Accepted::Installed
        );
        // Bad input is refused, never written.
        assert!(rx.accept(&chunk(1, "abc", 9, 10)).await.is_err());
    }

    #[tokio::test]
    async fn chunks_lost_repeated_or_overlapping_assemble_the_snapshot() {
        a_transfer_survives_loss_and_repeats(None).await;
        let dir = std::env::temp_dir().join(format!("oncekv-snaprx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        a_transfer_survives_loss_and_repeats(Some(dir.clone())).await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn partial_transfers_are_bounded_and_stale_ones_dropped() {
        let dir = std::env::temp_dir().join(format!("oncekv-snaprx2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rx = SnapshotReceiver::new(Some(dir.clone()), 2, Duration::from_millis(200));
        for term in 1..=3 {
            rx.accept(&chunk(term, "ab", 0, 10)).await.unwrap();
        }
        assert_eq!(rx.partial_count().await, 2, "the oldest was replaced");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
        tokio::time::sleep(Duration::from_millis(250)).await;
        rx.accept(&chunk(4, "ab", 0, 10)).await.unwrap();
        assert_eq!(rx.partial_count().await, 1, "idle ones were dropped");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        rx.sweep().await;
        assert_eq!(rx.partial_count().await, 0, "and the last one by a sweep");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
