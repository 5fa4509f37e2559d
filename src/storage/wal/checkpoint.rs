//! `wal/CHECKPOINT`: how far the log is known to be synced, and the vote, kept
//! apart from the segments so that records lost from a segment (zeroed, cut) are
//! told apart from records never written.
//!
//! ```text
//! CHECKPOINT (1024 bytes): two 512-byte slots, written in turn (pwrite + fdatasync)
//!   slot: "oncekvCP" | generation u64 | segment seq u64 | synced offset u64
//!         | vote length u16 | vote JSON | zeros | crc32 u32 (of bytes 0..508)
//! ```
//!
//! The valid slot with the highest generation is the checkpoint: a torn write
//! of one slot leaves the other. It says "segment `seq` held valid records up to
//! `offset`, synced" and "this vote was synced". It is written when the log
//! opens, before a new vote is acknowledged, periodically while the log is
//! written, and when the log closes; it only ever claims what was synced first.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{SECTOR, corrupt, crc32, io_err};
use crate::storage::StorageError;

/// The checkpoint's file name in the WAL dir.
pub const CHECKPOINT_FILE: &str = "CHECKPOINT";
const MAGIC: &[u8; 8] = b"oncekvCP";
const SLOT: usize = SECTOR;
const FILE_BYTES: usize = 2 * SLOT;
const VOTE_AT: usize = 34;
const CRC_AT: usize = SLOT - 4;
/// The longest vote JSON a slot holds (a vote is two integers and a flag).
pub const VOTE_BYTES_MAX: usize = CRC_AT - VOTE_AT;

/// What a checkpoint records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    /// The segment written last when it was taken.
    pub seq: u64,
    /// Valid records in it reached this offset, synced.
    pub offset: u64,
    /// The vote, synced (its JSON), if one was ever saved.
    pub vote: Option<Vec<u8>>,
}

/// The open checkpoint file.
#[derive(Debug)]
pub struct Checkpoint {
    file: File,
    path: PathBuf,
    generation: u64,
    /// What the file says now.
    pub point: Point,
}

fn encode(generation: u64, p: &Point) -> io::Result<[u8; SLOT]> {
    let vote = p.vote.as_deref().unwrap_or_default();
    if vote.len() > VOTE_BYTES_MAX {
        return Err(io::Error::other(format!(
            "a vote of {} bytes does not fit a checkpoint",
            vote.len()
        )));
    }
    let mut s = [0u8; SLOT];
    s[..8].copy_from_slice(MAGIC);
    s[8..16].copy_from_slice(&generation.to_le_bytes());
    s[16..24].copy_from_slice(&p.seq.to_le_bytes());
    s[24..32].copy_from_slice(&p.offset.to_le_bytes());
    s[32..34].copy_from_slice(&(vote.len() as u16).to_le_bytes());
    s[VOTE_AT..VOTE_AT + vote.len()].copy_from_slice(vote);
    let crc = crc32(&s[..CRC_AT]);
    s[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    Ok(s)
}

fn decode(s: &[u8]) -> Option<(u64, Point)> {
    let u64_at = |at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(s[CRC_AT..].try_into().expect("4 bytes"));
    if &s[..8] != MAGIC || crc32(&s[..CRC_AT]) != crc {
        return None;
    }
    let len = u16::from_le_bytes(s[32..34].try_into().expect("2 bytes")) as usize;
    if len > VOTE_BYTES_MAX {
        return None;
    }
    let vote = (len > 0).then(|| s[VOTE_AT..VOTE_AT + len].to_vec());
    Some((
        u64_at(8),
        Point {
            seq: u64_at(16),
            offset: u64_at(24),
            vote,
        },
    ))
}

impl Checkpoint {
    /// Reads the checkpoint in `dir`: `None` if there is none; an error if the
    /// file is there but neither slot is valid.
    pub fn read(dir: &Path) -> Result<Option<Checkpoint>, StorageError> {
        let path = dir.join(CHECKPOINT_FILE);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let mut bytes = vec![0u8; FILE_BYTES];
        let len = file.metadata().map_err(io_err(&path))?.len();
        if len != FILE_BYTES as u64 {
            return Err(corrupt(
                &path,
                format!("{len} bytes long, a checkpoint is {FILE_BYTES}"),
            ));
        }
        file.read_exact_at(&mut bytes, 0).map_err(io_err(&path))?;
        let best = [decode(&bytes[..SLOT]), decode(&bytes[SLOT..])]
            .into_iter()
            .flatten()
            .max_by_key(|(g, _)| *g);
        let Some((generation, point)) = best else {
            return Err(corrupt(&path, "neither checkpoint slot is valid (garbled)"));
        };
        Ok(Some(Checkpoint {
            file,
            path,
            generation,
            point,
        }))
    }

    /// Creates the checkpoint in `dir` saying `point` (durably: temp file, fsync,
    /// rename, fsync of the dir).
    pub fn create(dir: &Path, point: Point) -> Result<Checkpoint, StorageError> {
        let path = dir.join(CHECKPOINT_FILE);
        let mut bytes = vec![0u8; FILE_BYTES];
        let slot = encode(0, &point).map_err(io_err(&path))?;
        bytes[..SLOT].copy_from_slice(&slot);
        crate::storage::file::write_atomic(&path, &bytes).map_err(io_err(&path))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok(Checkpoint {
            file,
            path,
            generation: 0,
            point,
        })
    }

    /// Records `point` (into the slot not holding the current one) and syncs it.
    pub fn write(&mut self, point: Point) -> io::Result<()> {
        let generation = self.generation + 1;
        let slot = encode(generation, &point)?;
        let at = (generation % 2) * SLOT as u64;
        self.file.write_all_at(&slot, at)?;
        self.file.sync_data()?;
        self.generation = generation;
        self.point = point;
        Ok(())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
