//! [`Marker`]: `DATA_DIR/oncekv.meta`, which says "this is an oncekv data dir, in
//! this format, for this node", so a dir from an incompatible version or another
//! node is refused instead of misread.
//!
//! It may not touch the log or the snapshots.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::StorageError;
use super::file::write_atomic;

/// The marker's file name.
pub const MARKER_FILE: &str = "oncekv.meta";
/// What [`Marker::format`] must say.
pub const FORMAT_NAME: &str = "oncekv-data";
/// The layout version this build reads and writes. Bump on any incompatible change
/// to the log records, the entry encoding or the snapshot file format.
pub const FORMAT_VERSION: u32 = 2;

/// The marker's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// The layout version that wrote the dir.
    pub version: u32,
    /// The Raft id of the node that owns the dir, once known.
    #[serde(default)]
    pub node_id: Option<u64>,
    /// The owning node's name (`n3`), once known: the id alone would let the dir
    /// start under another name with the same number (`x3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}

impl Marker {
    /// A marker for this build's format.
    pub fn new(node_id: Option<u64>) -> Marker {
        Marker {
            format: FORMAT_NAME.to_string(),
            version: FORMAT_VERSION,
            node_id,
            node_name: None,
        }
    }

    /// Reads the marker in `dir`: `None` if there is none, an error if it is not
    /// ours or not this version.
    pub fn read(dir: &Path) -> Result<Option<Marker>, StorageError> {
        let path = dir.join(MARKER_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StorageError::Io { path, source }),
        };
        let marker: Marker = serde_json::from_slice(&bytes).map_err(|e| StorageError::Corrupt {
            path: path.clone(),
            reason: format!("not a valid marker: {e}"),
        })?;
        if marker.format != FORMAT_NAME || marker.version != FORMAT_VERSION {
            return Err(StorageError::Incompatible {
                path,
                found: format!("{} v{}", marker.format, marker.version),
                expected: format!("{FORMAT_NAME} v{FORMAT_VERSION}"),
            });
        }
        Ok(Some(marker))
    }

    /// Writes the marker into `dir`, atomically and durably.
    pub fn write(&self, dir: &Path) -> Result<(), StorageError> {
        let path: PathBuf = dir.join(MARKER_FILE);
        let mut bytes = serde_json::to_vec_pretty(self).expect("marker serializes");
        bytes.push(b'\n');
        write_atomic(&path, &bytes).map_err(|source| StorageError::Io { path, source })
    }
}
