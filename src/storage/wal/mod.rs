//! The write-ahead log: the Raft log, vote, committed pointer and purge point as
//! a sequence of checksummed records in preallocated segment files.
//!
//! ```text
//! DATA_DIR/wal/
//!   LOCK                          held (flock) while a process has the log open
//!   00000000000000000007.wal      older segment: entries, then zeros
//!   00000000000000000008.wal      newest segment: the one written
//!
//! segment (fixed size, set at creation; a shorter or longer file is damaged):
//!   header  "oncekvWL" | seq u64 | size u64 | version u32 | crc32 u32   (32 bytes)
//!   record  len u32 | crc32(payload) u32 | payload (len bytes)
//!   record  ...
//!   zeros   to the end (a zero length ends the data)
//!
//! payload:  tag u8 | arg u64 | bytes
//!   1 entry      arg = index            bytes = the entry's JSON
//!   2 truncate   arg = first index removed
//!   3 purge      arg = last index removed  bytes = the purged LogId's JSON
//!   4 vote                               bytes = the Vote's JSON
//!   5 committed                          bytes = the committed Option<LogId>'s JSON
//!   6 start      arg = where the previous segment's records ended (first record
//!                of every segment made by a roll, format 2)
//!
//! CHECKPOINT: how far the newest segment is known synced, and the vote (checkpoint.rs)
//! ```
//!
//! Why a log of records rather than a B-tree: a Raft log is written at its end,
//! cut at its end (truncate) and dropped at its start (purge). A record log does
//! each of these as one sequential write, where redb (which this replaced, see
//! `docs/storage.md`) rewrote B-tree pages and synced twice per commit.
//!
//! **Durability.** [`Wal::commit`] writes the buffered records with one
//! `O_DIRECT | O_DSYNC` `pwrite` of whole blocks ([`WalIo::Direct`], the default),
//! or one `pwrite` and one `fdatasync` ([`WalIo::Buffered`]). Segments are created full size (temp name, fsync, rename,
//! fsync the dir), so the file size never changes while records are written.
//!
//! **Torn writes.** A crash during a write can leave any of its sectors written
//! and the rest zero. A write is never larger than [`WRITE_BYTES_MAX`] or one
//! record, so on open, in the newest segment only, a record that fails its check
//! *and* has an all-zero 512-byte sector inside it (JSON never contains a zero
//! byte, and the binary fields are too short to fill a sector) is a torn write,
//! provided that nothing nonzero lies further than one write beyond it. That tail
//! lies past the last sync point the checkpoint recorded, so it is the write a crash
//! interrupted (never acknowledged) or records synced since that point and then
//! damaged; it is zeroed and writing resumes there. Anything else that fails a
//! check (a garbled record, a record in an older segment, a file of the wrong
//! size, a missing segment, valid records ending before the checkpoint's sync
//! point or before where the next segment says they ended) is reported as
//! corruption, naming the file: the node refuses to start rather than silently
//! forgetting what it acknowledged.
//!
//! **Checkpoint.** Zeroed records look like records never written. So
//! `wal/CHECKPOINT` ([`checkpoint`]) records the newest segment's synced
//! offset and the vote: written at open, before a new vote is acknowledged,
//! every [`CHECKPOINT_INTERVAL`] while the log is written (by the writer's
//! ticker, see `Wal::checkpoint_if_stale`) and at close. And every segment a
//! roll creates starts with a `start` record naming where the previous one's
//! records ended. Records lost before either point are refused at open.
//!
//! **Segments.** When a record does not fit, the current segment is synced and a
//! new one begins with the current vote, committed pointer and purge point, so an
//! older segment holds nothing the newer ones do not supersede except entries.
//! After a purge is durable, the oldest segments whose entries are all purged are
//! deleted, oldest first (so the remaining sequence numbers stay contiguous).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::StorageError;
use super::file::{TMP_SUFFIX, crc32, sync_dir};

pub mod checkpoint;
use checkpoint::{CHECKPOINT_FILE, Checkpoint, Point};

/// The WAL directory's name in the data dir.
pub const WAL_DIR: &str = "wal";
/// The lock file's name in the WAL dir.
pub const LOCK_FILE: &str = "LOCK";
/// Size of a new segment unless the caller chooses (tests use small ones).
pub const SEGMENT_BYTES_DEFAULT: u64 = 16 << 20;
/// A commit's buffered records are written (and synced) in pieces of at most
/// this many bytes, unless one record alone is larger: this bounds a torn write.
pub const WRITE_BYTES_MAX: usize = 1 << 20;
/// The largest record accepted: the configuration's bound, which every log
/// entry a valid `Config` allows fits in (`Config::validate`).
pub const RECORD_BYTES_MAX: usize = crate::config::LOG_RECORD_BYTES_MAX;
/// How far beyond a torn record nonzero bytes may lie (one write).
const TORN_WINDOW: usize = WRITE_BYTES_MAX + RECORD_BYTES_MAX;
/// The segment header's size.
pub const HEADER_BYTES: usize = 32;
/// A record's framing before its payload (length, CRC).
const FRAME_BYTES: usize = 8;
/// A payload's fixed part (tag, arg).
const PAYLOAD_FIXED: usize = 9;
/// The unit a torn write leaves either written or untouched.
const SECTOR: usize = 512;
const MAGIC: &[u8; 8] = b"oncekvWL";
/// The segment format this build writes: 2 adds the `start` record and the
/// checkpoint. Format 1 segments (an older build's) are read, not checked
/// against a `start` record.
const VERSION: u32 = 2;
/// How often, at most, the writer's ticker records the synced position in the
/// checkpoint while records are written: records synced within this interval
/// before a later damage are the only ones a zeroing can remove unnoticed.
pub const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// One durable change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'a> {
    /// The entry at `index` (its JSON).
    Entry(u64, &'a [u8]),
    /// Every entry at this index or later is removed.
    TruncateFrom(u64),
    /// Every entry up to this index (inclusive) is removed; the purged LogId's JSON.
    Purge(u64, &'a [u8]),
    /// The vote (JSON).
    Vote(&'a [u8]),
    /// The committed pointer (JSON).
    Committed(&'a [u8]),
    /// First in a segment a roll created: where the previous segment's records
    /// ended (checked at open; not passed on to the reader of the log).
    Start(u64),
}

impl<'a> Record<'a> {
    fn parts(&self) -> (u8, u64, &'a [u8]) {
        match *self {
            Record::Entry(i, b) => (1, i, b),
            Record::TruncateFrom(i) => (2, i, &[]),
            Record::Purge(i, b) => (3, i, b),
            Record::Vote(b) => (4, 0, b),
            Record::Committed(b) => (5, 0, b),
            Record::Start(end) => (6, end, &[]),
        }
    }

    fn from_payload(p: &'a [u8]) -> Option<Record<'a>> {
        let (&tag, rest) = p.split_first()?;
        let arg = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
        let bytes = &rest[8..];
        Some(match tag {
            1 => Record::Entry(arg, bytes),
            2 if bytes.is_empty() => Record::TruncateFrom(arg),
            3 => Record::Purge(arg, bytes),
            4 => Record::Vote(bytes),
            5 => Record::Committed(bytes),
            6 if bytes.is_empty() => Record::Start(arg),
            _ => return None,
        })
    }

    /// Bytes this record takes in a segment.
    fn framed_len(&self) -> usize {
        FRAME_BYTES + PAYLOAD_FIXED + self.parts().2.len()
    }

    fn encode_into(&self, buf: &mut Vec<u8>) {
        let (tag, arg, bytes) = self.parts();
        let start = buf.len();
        buf.extend_from_slice(&[0; FRAME_BYTES]);
        buf.push(tag);
        buf.extend_from_slice(&arg.to_le_bytes());
        buf.extend_from_slice(bytes);
        let payload = &buf[start + FRAME_BYTES..];
        let len = payload.len() as u32;
        let crc = crc32(payload);
        buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }
}

/// A segment on disk.
#[derive(Debug)]
struct Segment {
    seq: u64,
    path: PathBuf,
    /// The highest entry index written to it, if any.
    max_index: Option<u64>,
}

/// What the scan at open learned about a segment.
#[derive(Debug, Default)]
struct SegmentScan {
    version: u32,
    /// Where its valid records end.
    end: usize,
    /// Whether it holds any record.
    records: bool,
}

/// How a commit reaches the disk (`oncekv serve --wal-io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WalIo {
    /// O_DIRECT | O_DSYNC writes of whole 4 KiB blocks (buffered where the filesystem refuses O_DIRECT)
    ///
    /// One system call per commit, no page cache, and on this project's test VM
    /// ~25% less sync latency when the three nodes of a one-machine cluster sync
    /// at once (`docs/storage.md`).
    Direct,
    /// pwrite into the page cache, then fdatasync
    Buffered,
}

/// How a [`Wal`] creates segments and writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalOptions {
    /// Size of the segments it creates.
    pub segment_bytes: u64,
    /// How commits reach the disk.
    pub io: WalIo,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            io: WalIo::Direct,
        }
    }
}

/// Direct writes are whole blocks of this size at offsets that are multiples
/// of it: the logical block size of every common disk divides it.
pub const DIRECT_ALIGN: usize = 4096;

/// The newest segment opened `O_DIRECT | O_DSYNC`, and the written bytes of the
/// block that holds the write position: each commit rewrites that block from its
/// start (the same bytes again, then the new records, then zeros to the block's
/// end), so every write is whole aligned blocks.
#[derive(Debug)]
struct Direct {
    file: File,
    /// The segment's bytes from the start of the block holding the write
    /// position up to that position (shorter than [`DIRECT_ALIGN`]).
    tail: Vec<u8>,
    /// Staging memory; the [`DIRECT_ALIGN`]-aligned window inside it is written.
    stage: Vec<u8>,
}

impl Direct {
    /// Opens `path` for direct writes; the block holding the write position starts
    /// with `tail`.
    /// `Ok(None)` if the filesystem does not do `O_DIRECT`.
    fn open(path: &Path, tail: &[u8]) -> io::Result<Option<Direct>> {
        use std::os::unix::fs::OpenOptionsExt;
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
            .open(path)
        {
            Ok(file) => Ok(Some(Direct {
                file,
                tail: tail.to_vec(),
                stage: Vec::new(),
            })),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `buf` at `offset` (where `tail` ends) and returns once it is durable.
    fn write(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let start = offset - self.tail.len() as u64;
        debug_assert_eq!(start % DIRECT_ALIGN as u64, 0);
        let total = self.tail.len() + buf.len();
        let padded = total.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
        if self.stage.len() < padded + DIRECT_ALIGN {
            self.stage = vec![0; padded + DIRECT_ALIGN];
        }
        let at = self.stage.as_ptr().align_offset(DIRECT_ALIGN);
        let window = &mut self.stage[at..at + padded];
        window[..self.tail.len()].copy_from_slice(&self.tail);
        window[self.tail.len()..total].copy_from_slice(buf);
        window[total..].fill(0);
        // A short write (a full device writes what fits) is continued, so that
        // the error that stopped it is the one reported (ENOSPC: "No space left
        // on device"), not a bare count.
        let mut done = self.file.write_at(window, start)?;
        while done < padded {
            let short =
                || format!("a short direct write: {done} of {padded} bytes at offset {start}");
            if done % DIRECT_ALIGN != 0 {
                return Err(io::Error::other(short()));
            }
            match self.file.write_at(&window[done..], start + done as u64) {
                Ok(0) => {
                    return Err(io::Error::other(format!(
                        "{} (the device is full?)",
                        short()
                    )));
                }
                Ok(k) => done += k,
                Err(e) => return Err(io::Error::new(e.kind(), format!("{e}, after {}", short()))),
            }
        }
        let block = total / DIRECT_ALIGN * DIRECT_ALIGN;
        self.tail.clear();
        self.tail.extend_from_slice(&window[block..total]);
        Ok(())
    }
}

/// The open log: the newest segment is written, older ones only deleted.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    /// Size of segments this process creates.
    segment_bytes: u64,
    /// Held for the lifetime of the log (an advisory lock on [`LOCK_FILE`]).
    _lock: File,
    /// Oldest first; never empty.
    segments: VecDeque<Segment>,
    /// The newest segment, open for writing.
    file: File,
    /// How records reach the newest segment: through `direct`, or `file` and
    /// `fdatasync` (see [`WalIo`]).
    direct: Option<Direct>,
    /// Whether new segments are written directly: the choice, unless the
    /// filesystem or the device refused it.
    direct_wanted: bool,
    /// Size of the newest segment (as created, possibly by another build).
    file_bytes: u64,
    /// Where the next record goes in it.
    offset: u64,
    /// Records encoded but not yet written.
    buf: Vec<u8>,
    /// Bytes written to the newest segment since its last sync.
    unsynced: usize,
    /// Entries in `buf` raise the newest segment's `max_index` once written.
    buf_max_index: Option<u64>,
    /// The latest vote, committed pointer and purge point written (or buffered),
    /// re-written at the start of every new segment.
    vote: Option<Vec<u8>>,
    committed: Option<Vec<u8>>,
    purged: Option<(u64, Vec<u8>)>,
    /// How far the newest segment is synced (what a checkpoint may claim).
    synced_to: u64,
    /// The checkpoint file.
    checkpoint: Checkpoint,
    /// When the checkpoint was last written.
    checkpoint_at: std::time::Instant,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_owned(),
        source,
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn segment_name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

fn header(seq: u64, size: u64) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..24].copy_from_slice(&size.to_le_bytes());
    h[24..28].copy_from_slice(&VERSION.to_le_bytes());
    let crc = crc32(&h[..28]);
    h[28..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Where a segment's valid records end, and how many bytes of a torn write
/// follow (0: zeros to the end).
struct Scanned {
    end: usize,
    dropped: usize,
}

impl Wal {
    /// Opens the WAL in `dir` (creating it with one empty segment if absent),
    /// feeding every record, oldest first, to `visit`. An error from `visit` is
    /// reported as corruption of the segment holding that record.
    ///
    /// The phases: lock the dir, replay every segment (checking that each
    /// follows the one before), hold the result against the checkpoint, then
    /// reopen the newest segment where its valid records end.
    pub fn open(
        dir: &Path,
        options: WalOptions,
        visit: impl FnMut(Record<'_>) -> Result<(), String>,
    ) -> Result<Wal, StorageError> {
        let WalOptions { segment_bytes, io } = options;
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock = lock_dir(dir)?;
        let mut segments = list_segments(dir)?;
        let replayed = replay(dir, &mut segments, visit)?;
        let checkpoint = Checkpoint::read(dir)?;
        check_against_checkpoint(dir, checkpoint.as_ref(), &segments, &replayed)?;
        if let (Some(resume), Some(last)) = (&replayed.resume, segments.back())
            && resume.scanned.dropped > 0
        {
            warn_torn_tail(last, &resume.scanned, checkpoint.as_ref());
        }
        let unbegun_after = unbegun_segment(&replayed);
        let Replayed {
            vote,
            committed,
            purged,
            resume,
            ..
        } = replayed;
        let newest = reopen_newest(dir, &mut segments, resume, segment_bytes)?;
        let point = Point {
            seq: segments.back().expect("never empty").seq,
            offset: newest.offset,
            vote: vote.clone(),
        };
        let checkpoint = match checkpoint {
            // Unchanged (the last close recorded exactly this): nothing is
            // written, so an open that goes no further (a start that fails
            // later, on its address say) leaves the log as it found it.
            Some(c) if c.point == point => c,
            Some(mut c) => {
                c.write(point).map_err(io_err(c.path()))?;
                c
            }
            None => Checkpoint::create(dir, point)?,
        };
        let newest_path = &segments.back().expect("never empty").path;
        let direct = match io {
            WalIo::Direct => {
                Direct::open(newest_path, &newest.tail).map_err(io_err(newest_path))?
            }
            WalIo::Buffered => None,
        };
        if io == WalIo::Direct && direct.is_none() {
            tracing::info!(
                "{}: the filesystem refuses O_DIRECT; the log uses buffered writes and fdatasync",
                dir.display()
            );
        }
        let mut wal = Wal {
            dir: dir.to_owned(),
            segment_bytes,
            _lock: lock,
            segments,
            file: newest.file,
            direct_wanted: direct.is_some(),
            direct,
            file_bytes: newest.file_bytes,
            offset: newest.offset,
            buf: Vec::new(),
            unsynced: 0,
            buf_max_index: None,
            vote,
            committed,
            purged,
            synced_to: newest.offset,
            checkpoint,
            checkpoint_at: std::time::Instant::now(),
        };
        wal.buf.reserve(64 << 10);
        if let Some(prev_end) = unbegun_after {
            // A roll made this segment and the process died before its first
            // records were written: begin it now, as the roll would have, or a
            // later open finds records that do not follow the previous segment.
            wal.begin_segment(prev_end);
        }
        Ok(wal)
    }

    /// The segment files, oldest first.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments.iter().map(|s| s.path.clone()).collect()
    }

    /// Buffers `rec`; it is durable once [`Wal::commit`] returns. May write and
    /// sync what is buffered already (to start a new segment, or to bound a write).
    pub fn push(&mut self, rec: Record<'_>) -> io::Result<()> {
        let len = rec.framed_len();
        if len > RECORD_BYTES_MAX {
            return Err(io::Error::other(format!(
                "a log record of {len} bytes exceeds the limit of {RECORD_BYTES_MAX}"
            )));
        }
        if !self.buf.is_empty() && self.buf.len() + len > WRITE_BYTES_MAX {
            self.write_buf(true)?;
        }
        if self.offset + (self.buf.len() + len) as u64 > self.file_bytes {
            // The old segment is synced before the new one is written.
            self.write_buf(true)?;
            self.roll()?;
            if self.offset + (self.buf.len() + len) as u64 > self.file_bytes {
                return Err(io::Error::other(format!(
                    "a log record of {len} bytes does not fit in a segment of {} bytes",
                    self.file_bytes
                )));
            }
        }
        match rec {
            Record::Entry(i, _) => self.buf_max_index = self.buf_max_index.max(Some(i)),
            Record::Vote(b) => self.vote = Some(b.to_vec()),
            Record::Committed(b) => self.committed = Some(b.to_vec()),
            Record::Purge(i, b) => self.purged = Some((i, b.to_vec())),
            Record::TruncateFrom(_) | Record::Start(_) => {}
        }
        rec.encode_into(&mut self.buf);
        Ok(())
    }

    /// Writes and syncs everything pushed; then deletes segments left behind by
    /// the purge point.
    pub fn commit(&mut self) -> io::Result<()> {
        self.write_buf(true)?;
        // A vote is acknowledged only once the checkpoint holds it too.
        if self.vote != self.checkpoint.point.vote {
            self.write_checkpoint()?;
        }
        self.delete_purged()
    }

    /// Records the synced position in the checkpoint if it moved and the last
    /// checkpoint is [`CHECKPOINT_INTERVAL`] old (or `now`).
    pub fn checkpoint_if_stale(&mut self, now: bool) -> io::Result<()> {
        let moved = self.point() != self.checkpoint.point;
        if moved && (now || self.checkpoint_at.elapsed() >= CHECKPOINT_INTERVAL) {
            self.write_checkpoint()?;
        }
        Ok(())
    }

    /// What a checkpoint taken now says: only what is synced.
    fn point(&self) -> Point {
        Point {
            seq: self.segments.back().expect("never empty").seq,
            offset: self.synced_to,
            vote: self.synced_vote(),
        }
    }

    /// The latest vote whose record is synced: the buffered one is not, until
    /// the buffer is written and synced.
    fn synced_vote(&self) -> Option<Vec<u8>> {
        if self.buf.is_empty() && self.unsynced == 0 {
            self.vote.clone()
        } else {
            self.checkpoint.point.vote.clone()
        }
    }

    fn write_checkpoint(&mut self) -> io::Result<()> {
        let point = self.point();
        self.checkpoint.write(point)?;
        self.checkpoint_at = std::time::Instant::now();
        Ok(())
    }

    /// Writes everything pushed without waiting for the disk: the records are
    /// durable with the next [`Wal::commit`] (or the kernel's writeback before
    /// that). For records nobody waits on, such as the committed pointer, so
    /// that they do not cost a sync of their own. Unsynced bytes stay within one
    /// torn write's reach: past [`WRITE_BYTES_MAX`] of them this syncs anyway.
    pub fn write_unsynced(&mut self) -> io::Result<()> {
        self.write_buf(false)
    }

    /// Writes the buffer at the write position: a direct write, durable on
    /// return, or a `pwrite` followed by `fdatasync` if asked (or if too much is
    /// unsynced).
    fn write_buf(&mut self, sync: bool) -> io::Result<()> {
        if !self.buf.is_empty() {
            if !self.write_direct()? {
                self.file.write_all_at(&self.buf, self.offset)?;
                self.unsynced += self.buf.len();
            }
            self.offset += self.buf.len() as u64;
            self.buf.clear();
            let newest = self.segments.back_mut().expect("never empty");
            newest.max_index = newest.max_index.max(self.buf_max_index.take());
        }
        if self.unsynced > 0 && (sync || self.unsynced > WRITE_BYTES_MAX) {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        if self.unsynced == 0 {
            self.synced_to = self.offset;
        }
        Ok(())
    }

    /// Writes the buffer directly if the newest segment is written that way;
    /// `false` if it is (from now on) written buffered.
    fn write_direct(&mut self) -> io::Result<bool> {
        // A direct write covers whole blocks; near the end of a segment whose size
        // is not a multiple of them (made with another size), it would grow the
        // file: the rest of that segment is written buffered.
        let block_end = (self.offset + self.buf.len() as u64).div_ceil(DIRECT_ALIGN as u64)
            * DIRECT_ALIGN as u64;
        if block_end > self.file_bytes {
            self.direct = None;
        }
        let Some(direct) = &mut self.direct else {
            return Ok(false);
        };
        match direct.write(&self.buf, self.offset) {
            Ok(()) => Ok(true),
            // The device wants larger blocks than DIRECT_ALIGN: nothing was
            // written; go on buffered.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!("direct log write refused ({e}); using buffered writes");
                self.direct = None;
                self.direct_wanted = false;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Starts the next segment with the current vote, committed pointer and purge
    /// point. The previous segment is already synced.
    fn roll(&mut self) -> io::Result<()> {
        let seq = self.segments.back().expect("never empty").seq + 1;
        let (file, seg) = create_segment(&self.dir, seq, self.segment_bytes)
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.direct = None;
        if self.direct_wanted {
            let tail = header(seq, self.segment_bytes);
            self.direct = Direct::open(&seg.path, &tail)?;
        }
        let prev_end = self.offset;
        self.segments.push_back(seg);
        self.file = file;
        self.file_bytes = self.segment_bytes;
        self.offset = HEADER_BYTES as u64;
        self.synced_to = self.offset;
        self.begin_segment(prev_end);
        Ok(())
    }

    /// Buffers what every segment a roll makes begins with: the start record
    /// naming where the previous segment's records end, then the vote, the
    /// committed pointer and the purge point again, so the older segments can
    /// be deleted without losing them.
    fn begin_segment(&mut self, prev_end: u64) {
        debug_assert!(self.buf.is_empty() && self.offset == HEADER_BYTES as u64);
        Record::Start(prev_end).encode_into(&mut self.buf);
        let (vote, committed, purged) =
            (self.vote.take(), self.committed.take(), self.purged.take());
        if let Some(v) = &vote {
            Record::Vote(v).encode_into(&mut self.buf);
        }
        if let Some(c) = &committed {
            Record::Committed(c).encode_into(&mut self.buf);
        }
        if let Some((i, p)) = &purged {
            Record::Purge(*i, p).encode_into(&mut self.buf);
        }
        (self.vote, self.committed, self.purged) = (vote, committed, purged);
    }

    /// Deletes, oldest first, every segment but the newest whose entries are all
    /// at or behind the durable purge point.
    fn delete_purged(&mut self) -> io::Result<()> {
        let Some(upto) = self.purged.as_ref().map(|(i, _)| *i) else {
            return Ok(());
        };
        let mut deleted = false;
        while self.segments.len() > 1 && self.segments[0].max_index.is_none_or(|m| m <= upto) {
            let seg = self.segments.pop_front().expect("len > 1");
            fs::remove_file(&seg.path)?;
            deleted = true;
        }
        if deleted {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

/// The path of segment `seq` in `dir`.
fn segments_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(segment_name(seq))
}

impl Drop for Wal {
    fn drop(&mut self) {
        // At close the checkpoint says exactly how far the log is synced.
        if let Err(e) = self.checkpoint_if_stale(true) {
            tracing::warn!("{}: checkpoint at close failed: {e}", self.dir.display());
        }
    }
}

/// The segment files in the log directory `dir`, oldest first (for tools and tests;
/// the log itself must not be open for writing meanwhile to get a stable answer).
pub fn segment_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    files.sort();
    Ok(files)
}

/// What replaying every segment found.
struct Replayed {
    vote: Option<Vec<u8>>,
    committed: Option<Vec<u8>>,
    purged: Option<(u64, Vec<u8>)>,
    /// Per segment, oldest first.
    scans: Vec<SegmentScan>,
    /// Where writing resumes in the newest segment, if there is one.
    resume: Option<Resume>,
}

/// The newest segment as scanned: where its records end, its size, and the
/// bytes of its last partial block (what a direct write must rewrite).
struct Resume {
    scanned: Scanned,
    size: u64,
    tail: Vec<u8>,
}

/// The newest segment opened for writing.
struct Newest {
    file: File,
    file_bytes: u64,
    offset: u64,
    tail: Vec<u8>,
}

/// Where the previous segment's records end, if the newest segment follows one
/// but holds no record yet (not even its start record).
fn unbegun_segment(replayed: &Replayed) -> Option<u64> {
    match replayed.scans.as_slice() {
        [.., prev, newest] if newest.version >= 2 && !newest.records => Some(prev.end as u64),
        _ => None,
    }
}

/// Takes the dir's lock file, so two processes never write one log.
fn lock_dir(dir: &Path) -> Result<File, StorageError> {
    let lock_path = dir.join(LOCK_FILE);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    if let Err(e) = lock.try_lock() {
        return Err(StorageError::Io {
            path: lock_path,
            source: io::Error::other(format!(
                "the log is locked by another process (is a node already running on this dir?): {e}"
            )),
        });
    }
    Ok(lock)
}

/// Feeds every record of every segment, oldest first, to `visit`, checking each
/// segment's header and that each segment a roll made starts where the one
/// before it ended.
fn replay(
    dir: &Path,
    segments: &mut VecDeque<Segment>,
    mut visit: impl FnMut(Record<'_>) -> Result<(), String>,
) -> Result<Replayed, StorageError> {
    let mut out = Replayed {
        vote: None,
        committed: None,
        purged: None,
        scans: Vec::with_capacity(segments.len()),
        resume: None,
    };
    let count = segments.len();
    for (i, seg) in segments.iter_mut().enumerate() {
        let newest = i + 1 == count;
        let bytes = fs::read(&seg.path).map_err(io_err(&seg.path))?;
        let version = check_header(&seg.path, &bytes, seg.seq)?;
        let mut max_index = None;
        let (mut records, mut start) = (false, None);
        let scanned = scan(&seg.path, &bytes, newest, |rec| {
            let first = !records;
            records = true;
            match rec {
                Record::Entry(i, _) => max_index = max_index.max(Some(i)),
                Record::Vote(b) => out.vote = Some(b.to_vec()),
                Record::Committed(b) => out.committed = Some(b.to_vec()),
                Record::Purge(i, b) => out.purged = Some((i, b.to_vec())),
                Record::TruncateFrom(_) => {}
                Record::Start(end) if first => {
                    start = Some(end);
                    return Ok(());
                }
                Record::Start(_) => return Err("a segment start record mid-segment".into()),
            }
            visit(rec)
        })?;
        seg.max_index = max_index;
        let this = SegmentScan {
            version,
            end: scanned.end,
            records,
        };
        // A segment a roll made says where the previous one's records ended.
        if let Some(prev) = out.scans.last()
            && version >= 2
            && (records || !newest)
        {
            check_chain(dir, seg, prev, start)?;
        }
        out.scans.push(this);
        if newest {
            let block = scanned.end / DIRECT_ALIGN * DIRECT_ALIGN;
            let tail = bytes[block..scanned.end].to_vec();
            out.resume = Some(Resume {
                scanned,
                size: bytes.len() as u64,
                tail,
            });
        }
    }
    Ok(out)
}

/// `seg` must begin with a start record naming where `prev`'s records end.
fn check_chain(
    dir: &Path,
    seg: &Segment,
    prev: &SegmentScan,
    start: Option<u64>,
) -> Result<(), StorageError> {
    let prev_path = &segments_path(dir, seg.seq - 1);
    match start {
        Some(e) if e == prev.end as u64 => Ok(()),
        Some(e) => Err(corrupt(
            prev_path,
            format!(
                "valid records end at offset {}, but the next segment records \
                 that they reached offset {e}: records at its end are lost \
                 (zeroed or cut)",
                prev.end
            ),
        )),
        None => Err(corrupt(
            &seg.path,
            "does not begin with a segment start record: its first records \
             are lost (zeroed or garbled)",
        )),
    }
}

/// Records lost before the last recorded sync point, or a lost vote, are
/// damage, not records never written.
fn check_against_checkpoint(
    dir: &Path,
    checkpoint: Option<&Checkpoint>,
    segments: &VecDeque<Segment>,
    replayed: &Replayed,
) -> Result<(), StorageError> {
    let scans = &replayed.scans;
    let Some(c) = checkpoint else {
        // Records are written only after an open that created the checkpoint
        // (a first open that a crash cut short leaves an empty segment).
        if scans.iter().any(|s| s.version >= 2 && s.records) {
            return Err(corrupt(
                &dir.join(CHECKPOINT_FILE),
                "missing, though the log holds records of a format that keeps one",
            ));
        }
        return Ok(());
    };
    let p = &c.point;
    if let Some(at) = segments.iter().position(|s| s.seq == p.seq) {
        let end = scans[at].end as u64;
        if end < p.offset {
            return Err(corrupt(
                &segments[at].path,
                format!(
                    "valid records end at offset {end}, but {} records that records \
                     up to offset {} were synced: records written and synced \
                     (possibly acknowledged) are lost (zeroed or cut)",
                    c.path().display(),
                    p.offset
                ),
            ));
        }
    } else if segments.back().is_none_or(|s| s.seq < p.seq) {
        return Err(corrupt(
            &dir.join(segment_name(p.seq)),
            format!("missing: {} records writes to it", c.path().display()),
        ));
    }
    if p.vote.is_some() && replayed.vote.is_none() {
        return Err(corrupt(
            segments.back().map_or(dir, |s| &s.path),
            format!(
                "holds no vote, but {} records that one was saved",
                c.path().display()
            ),
        ));
    }
    Ok(())
}

/// Says what is dropped at the end of the newest segment, and why that is safe.
fn warn_torn_tail(last: &Segment, scanned: &Scanned, checkpoint: Option<&Checkpoint>) {
    let since = match checkpoint {
        Some(c) if c.point.seq == last.seq => format!("offset {}", c.point.offset),
        _ => "its start".to_string(),
    };
    tracing::warn!(
        "{}: dropping {} bytes of invalid records at offset {} that look like a torn \
         write (a sector inside never written). They lie past the last recorded sync \
         point ({since}): either the write a crash interrupted, never acknowledged, or \
         records synced after that point and damaged since",
        last.path.display(),
        scanned.dropped,
        scanned.end
    );
}

/// The newest segment and where writing resumes in it; a new dir gets one.
fn reopen_newest(
    dir: &Path,
    segments: &mut VecDeque<Segment>,
    resume: Option<Resume>,
    segment_bytes: u64,
) -> Result<Newest, StorageError> {
    match (segments.back(), resume) {
        (Some(last), Some(r)) => {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&last.path)
                .map_err(io_err(&last.path))?;
            if r.scanned.dropped > 0 {
                // What a torn write left: never acknowledged, and it must not
                // surface behind the records written next.
                zero_from(&file, r.scanned.end as u64, r.size).map_err(io_err(&last.path))?;
            } else {
                // What was read may be a killed process's unsynced write still
                // in the page cache: synced before a checkpoint claims it.
                file.sync_data().map_err(io_err(&last.path))?;
            }
            Ok(Newest {
                file,
                file_bytes: r.size,
                offset: r.scanned.end as u64,
                tail: r.tail,
            })
        }
        _ => {
            let (file, seg) = create_segment(dir, 1, segment_bytes)?;
            segments.push_back(seg);
            Ok(Newest {
                file,
                file_bytes: segment_bytes,
                offset: HEADER_BYTES as u64,
                tail: header(1, segment_bytes).to_vec(),
            })
        }
    }
}

/// The segments in `dir` by sequence number; leftover temp files are removed.
fn list_segments(dir: &Path) -> Result<VecDeque<Segment>, StorageError> {
    let mut segments = Vec::new();
    for item in fs::read_dir(dir).map_err(io_err(dir))? {
        let item = item.map_err(io_err(dir))?;
        let name = item.file_name();
        let name = name.to_string_lossy();
        let path = item.path();
        if name == LOCK_FILE || name == CHECKPOINT_FILE {
            continue;
        }
        if name.ends_with(TMP_SUFFIX) {
            // A segment whose creation a crash interrupted: never written to.
            fs::remove_file(&path).map_err(io_err(&path))?;
            continue;
        }
        let seq = name
            .strip_suffix(".wal")
            .filter(|s| s.len() == 20)
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| corrupt(&path, "an unexpected file in the log directory"))?;
        segments.push(Segment {
            seq,
            path,
            max_index: None,
        });
    }
    segments.sort_by_key(|s| s.seq);
    for pair in segments.windows(2) {
        if pair[1].seq != pair[0].seq + 1 {
            return Err(corrupt(
                &dir.join(segment_name(pair[0].seq + 1)),
                "missing: the segments before and after it exist",
            ));
        }
    }
    Ok(segments.into())
}

fn check_header(path: &Path, bytes: &[u8], seq: u64) -> Result<u32, StorageError> {
    let Some(h) = bytes.get(..HEADER_BYTES) else {
        return Err(corrupt(path, "shorter than a segment header (truncated)"));
    };
    let crc = u32::from_le_bytes(h[28..32].try_into().expect("4 bytes"));
    if &h[..8] != MAGIC || crc32(&h[..28]) != crc {
        return Err(corrupt(path, "not a log segment (bad header)"));
    }
    let version = u32::from_le_bytes(h[24..28].try_into().expect("4 bytes"));
    if !(1..=VERSION).contains(&version) {
        return Err(corrupt(
            path,
            format!("segment format {version}, this build reads 1 to {VERSION}"),
        ));
    }
    let found_seq = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
    if found_seq != seq {
        return Err(corrupt(
            path,
            format!("its header says segment {found_seq}"),
        ));
    }
    let size = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
    if size != bytes.len() as u64 {
        return Err(corrupt(
            path,
            format!(
                "{} bytes long, created as {size} (truncated or extended)",
                bytes.len()
            ),
        ));
    }
    Ok(version)
}

/// Walks the records of one segment. In the newest segment a torn last write is
/// tolerated (see the module docs); anything else invalid is corruption.
fn scan(
    path: &Path,
    bytes: &[u8],
    newest: bool,
    mut visit: impl FnMut(Record<'_>) -> Result<(), String>,
) -> Result<Scanned, StorageError> {
    let mut pos = HEADER_BYTES;
    loop {
        let Some(frame) = bytes.get(pos..pos + FRAME_BYTES) else {
            // Too little room left for a record: the segment is full.
            return tail(path, bytes, pos, newest, false);
        };
        let len = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(frame[4..].try_into().expect("4 bytes"));
        if len == 0 && crc == 0 {
            return tail(path, bytes, pos, newest, false);
        }
        let end = pos + FRAME_BYTES + len;
        let record = bytes
            .get(pos + FRAME_BYTES..end)
            .filter(|p| len >= PAYLOAD_FIXED && crc32(p) == crc)
            .and_then(Record::from_payload);
        let Some(record) = record else {
            // A length no record has: only the frame itself says anything.
            let plausible = (PAYLOAD_FIXED..=RECORD_BYTES_MAX).contains(&len) && end <= bytes.len();
            let extent_end = if plausible { end } else { pos + FRAME_BYTES };
            let torn_sector = has_zero_sector(bytes, pos, extent_end.min(bytes.len()));
            return tail(path, bytes, pos, newest, torn_sector);
        };
        visit(record).map_err(|reason| corrupt(path, format!("at offset {pos}: {reason}")))?;
        pos = end;
    }
}

/// Decides what the bytes from `pos` (where valid records stop) mean.
fn tail(
    path: &Path,
    bytes: &[u8],
    pos: usize,
    newest: bool,
    torn_record: bool,
) -> Result<Scanned, StorageError> {
    let last_nonzero = bytes[pos..].iter().rposition(|&b| b != 0).map(|i| pos + i);
    let Some(last_nonzero) = last_nonzero else {
        // Zeros to the end: a clean end of data.
        return Ok(Scanned {
            end: pos,
            dropped: 0,
        });
    };
    let at_record = bytes
        .get(pos..pos + FRAME_BYTES)
        .is_some_and(|f| f != [0; FRAME_BYTES]);
    // A torn write: an invalid record with a sector never written, or a zero
    // frame whose write persisted only later sectors; either way the nonzero
    // bytes stay within one write of where the valid records stop.
    let torn = (torn_record || !at_record) && last_nonzero < pos + TORN_WINDOW;
    if newest && torn {
        // Logged once the checkpoint has been checked (Wal::open).
        return Ok(Scanned {
            end: pos,
            dropped: last_nonzero + 1 - pos,
        });
    }
    Err(corrupt(
        path,
        format!("damaged record at offset {pos} (bytes up to offset {last_nonzero} follow it)"),
    ))
}

/// True if an aligned `SECTOR`-byte block overlapping `[from, to)` is all zero
/// (a sector a torn write never reached).
fn has_zero_sector(bytes: &[u8], from: usize, to: usize) -> bool {
    let first = from / SECTOR * SECTOR;
    (first..to.max(from + 1)).step_by(SECTOR).any(|s| {
        bytes
            .get(s..s + SECTOR)
            .is_some_and(|b| b.iter().all(|&x| x == 0))
    })
}

/// Overwrites `[from, to)` of `file` with zeros and syncs it.
fn zero_from(file: &File, from: u64, to: u64) -> io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let n = (to - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync_data()
}

/// Creates segment `seq` of `size` bytes: header, sparse zeros, fsync, then the
/// rename and the directory fsync that make it exist.
fn create_segment(dir: &Path, seq: u64, size: u64) -> Result<(File, Segment), StorageError> {
    let path = dir.join(segment_name(seq));
    let tmp = dir.join(format!("{}{TMP_SUFFIX}", segment_name(seq)));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        f.write_all(&header(seq, size)).map_err(io_err(&tmp))?;
        f.set_len(size).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(dir).map_err(io_err(dir))?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    Ok((
        file,
        Segment {
            seq,
            path,
            max_index: None,
        },
    ))
}

#[cfg(test)]
mod tests;
