//! The versions of the state machine's durable encodings, and the snapshot's.
//!
//! Two encodings outlive a process: a log entry's [`super::Command`] (in the
//! log files and in appends between replicas) and the snapshot of the whole
//! [`super::State`] (in snapshot files and in snapshot transfers). Each carries a
//! format version; a reader refuses a version it does not know with an error that
//! names it, rather than guessing. Data written before versions existed has the
//! encoding of version 1 and is read as such.
//!
//! A snapshot is `{"format":1,"state":{...}}`. The golden files in
//! `tests/fixtures/` pin both encodings byte for byte: a rename of any stored
//! type fails a test, and a deliberate change must bump the version here.
//!
//! Owns the version numbers, the snapshot's envelope and the refusal of unknown
//! versions ([`VersionError`]). Like the rest of `state`, it may not import any
//! other module of the crate.

use serde::{Deserialize, Serialize};

use super::State;

/// The version of [`super::Command`]'s encoding this build writes. Version 2
/// added `max` to the GC entry; a build that reads only version 1 would ignore
/// it and expire more sessions than its peers, so it must refuse such entries.
pub const ENTRY_FORMAT: u32 = 2;
/// The oldest version of [`super::Command`]'s encoding this build still reads
/// (every version from it to [`ENTRY_FORMAT`]): logs written before stay readable.
pub const ENTRY_FORMAT_OLDEST: u32 = 1;
/// The version of the snapshot encoding this build writes and reads.
pub const SNAPSHOT_FORMAT: u32 = 1;
/// What data without a version is read as: the encoding before versions existed.
pub const UNVERSIONED_AS: u32 = 1;

/// A format version this build does not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} format version {found} is not supported: this build of oncekv reads {} \
     (was the data written by a different version of oncekv?)",
    versions(*oldest, *known)
)]
pub struct VersionError {
    /// What was being read: `snapshot` or `log entry`.
    pub what: &'static str,
    /// The version found.
    pub found: u32,
    /// The oldest version this build reads.
    pub oldest: u32,
    /// The newest version this build reads (the one it writes).
    pub known: u32,
}

fn versions(oldest: u32, known: u32) -> String {
    if oldest == known {
        format!("version {known}")
    } else {
        format!("versions {oldest} to {known}")
    }
}

/// Refuses a `found` version other than `known`, naming both.
pub fn check(what: &'static str, found: u32, known: u32) -> Result<(), VersionError> {
    check_range(what, found, known, known)
}

/// Refuses a `found` version outside `oldest..=known`, naming them.
pub fn check_range(
    what: &'static str,
    found: u32,
    oldest: u32,
    known: u32,
) -> Result<(), VersionError> {
    if (oldest..=known).contains(&found) {
        Ok(())
    } else {
        Err(VersionError {
            what,
            found,
            oldest,
            known,
        })
    }
}

/// The snapshot bytes of `state`. Deterministic (ordered maps only).
pub fn encode_snapshot(state: &State) -> Vec<u8> {
    encode_snapshot_sized(state, 0)
}

/// [`encode_snapshot`] into a buffer of `expected` bytes to start with (the
/// last snapshot's size): growing one by doubling copies and faults in about
/// three times the snapshot's size in memory.
pub fn encode_snapshot_sized(state: &State, expected: usize) -> Vec<u8> {
    #[derive(Serialize)]
    struct Versioned<'a> {
        format: u32,
        state: &'a State,
    }
    let mut out = Vec::with_capacity(expected.saturating_add(expected / 16));
    serde_json::to_writer(
        &mut out,
        &Versioned {
            format: SNAPSHOT_FORMAT,
            state,
        },
    )
    .expect("state serializes");
    out
}

/// Why snapshot bytes were refused.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Written in a format version this build does not read.
    #[error(transparent)]
    Version(#[from] VersionError),
    /// Not a snapshot of any version.
    #[error("snapshot does not decode: {0}")]
    Decode(#[from] serde_json::Error),
}

/// The state in snapshot bytes (see [`encode_snapshot`]); snapshots written
/// before versions existed hold the bare state, in the encoding of version 1.
/// The version is read from the fixed prefix this module writes, so an unknown
/// one is refused before the state (which may be large) is parsed.
pub fn decode_snapshot(bytes: &[u8]) -> Result<State, SnapshotError> {
    let Some(rest) = bytes.strip_prefix(SNAPSHOT_PREFIX) else {
        return Ok(serde_json::from_slice(bytes)?);
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let found = std::str::from_utf8(&rest[..digits])
        .ok()
        .and_then(|d| d.parse::<u32>().ok())
        .ok_or_else(|| serde::de::Error::custom("the snapshot's format version is not a number"))
        .map_err(SnapshotError::Decode)?;
    check("snapshot", found, SNAPSHOT_FORMAT)?;
    #[derive(Deserialize)]
    struct Versioned {
        #[allow(dead_code)] // checked above, from the prefix
        format: u32,
        state: State,
    }
    let v: Versioned = serde_json::from_slice(bytes)?;
    Ok(v.state)
}

/// How every versioned snapshot starts ([`encode_snapshot`] writes it so).
const SNAPSHOT_PREFIX: &[u8] = br#"{"format":"#;
