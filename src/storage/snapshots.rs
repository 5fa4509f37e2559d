//! [`SnapshotDir`]: durable snapshots in `DATA_DIR/snapshots/`.
//!
//! One file per snapshot, `snapshot-<last index, 20 digits>.snap`, written
//! atomically (see [`super::file::write_atomic_parts`]). The newest is kept; older ones
//! are deleted only after the new one is durable. A file is
//!
//! ```text
//! oncekv-snapshot 1\n
//! {"meta": <openraft SnapshotMeta>, "len": <data bytes>, "crc32": <of data>}\n
//! <data: State::to_snapshot() bytes>
//! ```
//!
//! so a truncated or garbled file is refused at start rather than half-loaded.
//!
//! A snapshot being received from the leader is assembled beside them in
//! `incoming-<n>.part` (`crate::raft::snapshot_transfer`); such files a crash
//! left are deleted at open, like temp files.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::StorageError;
use super::file::{TMP_SUFFIX, crc32, sync_dir, write_atomic_parts};
use crate::raft::SnapshotMeta;
use crate::raft::sm_store::SnapshotSink;

/// First line of every snapshot file.
const MAGIC: &str = "oncekv-snapshot 1";
const PREFIX: &str = "snapshot-";
const SUFFIX: &str = ".snap";

/// The header line after [`MAGIC`].
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    /// openraft's metadata: last log id and membership.
    meta: SnapshotMeta,
    /// Length of the data that follows.
    len: u64,
    /// CRC-32 of the data.
    crc32: u32,
}

/// The snapshot directory; saves are serialized by the lock, which also remembers
/// the newest durable snapshot's index.
#[derive(Debug)]
pub struct SnapshotDir {
    /// `DATA_DIR/snapshots`.
    dir: PathBuf,
    /// Last log index of the newest durable snapshot.
    newest: Mutex<Option<u64>>,
}

/// A snapshot read back from disk.
pub type Loaded = (SnapshotMeta, Vec<u8>);

impl SnapshotDir {
    /// Opens `dir` (creating it), removes temp files a crash left, and loads the
    /// newest snapshot, refusing a damaged one.
    pub fn open(dir: &Path) -> Result<(SnapshotDir, Option<Loaded>), StorageError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| StorageError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        for item in fs::read_dir(dir).map_err(io_err(dir))? {
            let path = item.map_err(io_err(dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let partial = name.starts_with(crate::raft::snapshot_transfer::PART_PREFIX)
                && name.ends_with(crate::raft::snapshot_transfer::PART_SUFFIX);
            if name.ends_with(TMP_SUFFIX) || partial {
                // A temp file, or a snapshot a leader was still sending: neither
                // was ever installed or acknowledged, so both are safe to drop.
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            let Some(index) = parse_name(name) else {
                return Err(StorageError::Corrupt {
                    path,
                    reason: "unexpected file in the snapshot directory".into(),
                });
            };
            found.push((index, path));
        }
        found.sort();
        let newest = found.pop();
        let loaded = match &newest {
            None => None,
            Some((index, path)) => {
                let (meta, data) = read(path)?;
                if meta.last_log_id.map(|l| l.index()) != Some(*index) {
                    return Err(StorageError::Corrupt {
                        path: path.clone(),
                        reason: format!(
                            "name says index {index}, header says {:?}",
                            meta.last_log_id
                        ),
                    });
                }
                Some((meta, data))
            }
        };
        // Older ones a crash left behind (between rename and removal): the newest,
        // verified above, supersedes them.
        for (_, path) in &found {
            fs::remove_file(path).map_err(io_err(path))?;
        }
        let snapshots = SnapshotDir {
            dir: dir.to_owned(),
            newest: Mutex::new(newest.map(|(i, _)| i)),
        };
        Ok((snapshots, loaded))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_for(&self, index: u64) -> PathBuf {
        self.dir.join(format!("{PREFIX}{index:020}{SUFFIX}"))
    }
}

fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.len() != 20 {
        return None;
    }
    digits.parse().ok()
}

/// Reads and verifies one snapshot file.
pub fn read(path: &Path) -> Result<Loaded, StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let mut bytes = fs::read(path).map_err(|source| StorageError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut lines = bytes.splitn(3, |b| *b == b'\n');
    if lines.next() != Some(MAGIC.as_bytes()) {
        return Err(corrupt(format!("does not start with {MAGIC:?}")));
    }
    let header_line = lines.next().unwrap_or_default();
    let header: Header =
        serde_json::from_slice(header_line).map_err(|e| corrupt(format!("bad header: {e}")))?;
    if lines.next().is_none() {
        return Err(corrupt("no data after the header (truncated)".into()));
    }
    // The data in place: drop the two lines before it (no second copy of a
    // snapshot that may be as large as the whole state).
    let start = MAGIC.len() + 1 + header_line.len() + 1;
    bytes.drain(..start);
    let data = bytes;
    if data.len() as u64 != header.len {
        return Err(corrupt(format!(
            "data is {} bytes, header says {} (truncated?)",
            data.len(),
            header.len
        )));
    }
    if crc32(&data) != header.crc32 {
        return Err(corrupt("data checksum mismatch (garbled)".into()));
    }
    Ok((header.meta, data))
}

impl SnapshotSink for SnapshotDir {
    fn incoming_dir(&self) -> Option<PathBuf> {
        Some(self.dir.clone())
    }

    fn can_load(&self) -> bool {
        true
    }

    fn load_newest(&self) -> io::Result<Option<Loaded>> {
        // Under the lock, so a save cannot delete the file while it is read.
        let newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        match *newest {
            None => Ok(None),
            Some(index) => read(&self.path_for(index))
                .map(Some)
                .map_err(|e| io::Error::other(e.to_string())),
        }
    }

    fn save(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        // A snapshot of nothing covers nothing; openraft purges nothing for it.
        let Some(last) = meta.last_log_id else {
            return Ok(());
        };
        let mut newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        if newest.is_some_and(|n| n > last.index) {
            // A newer one is already durable (an install overtook a slow build).
            return Ok(());
        }
        let header = Header {
            meta: meta.clone(),
            len: data.len() as u64,
            crc32: crc32(data),
        };
        let mut head = Vec::with_capacity(256);
        head.extend_from_slice(MAGIC.as_bytes());
        head.push(b'\n');
        serde_json::to_writer(&mut head, &header).map_err(io::Error::other)?;
        head.push(b'\n');
        write_atomic_parts(&self.path_for(last.index), &[&head, data])?;
        let old = newest.replace(last.index);
        // Only now, with the new one durable, drop the older one.
        if let Some(old) = old.filter(|o| *o != last.index) {
            fs::remove_file(self.path_for(old))?;
            sync_dir(&self.dir)?;
        }
        let bytes = head.len() + data.len();
        tracing::info!(index = last.index, bytes, "snapshot saved");
        Ok(())
    }
}
