//! The WAL at the file level: what is pushed and committed comes back in order
//! after a reopen, segments roll and are deleted behind the purge point, a torn
//! last write is dropped, and any other damage is refused naming the file.
#![allow(clippy::print_stderr)] // seeds and progress, for a rerun

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

/// A fresh directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("oncekv-wal-{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A record as owned data, for comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owned {
    Entry(u64, Vec<u8>),
    Truncate(u64),
    Purge(u64, Vec<u8>),
    Vote(Vec<u8>),
    Committed(Vec<u8>),
    Start(u64),
}

impl Owned {
    fn from(r: Record<'_>) -> Owned {
        match r {
            Record::Entry(i, b) => Owned::Entry(i, b.to_vec()),
            Record::TruncateFrom(i) => Owned::Truncate(i),
            Record::Purge(i, b) => Owned::Purge(i, b.to_vec()),
            Record::Vote(b) => Owned::Vote(b.to_vec()),
            Record::Committed(b) => Owned::Committed(b.to_vec()),
            Record::Start(e) => Owned::Start(e),
        }
    }

    fn as_record(&self) -> Record<'_> {
        match self {
            Owned::Entry(i, b) => Record::Entry(*i, b),
            Owned::Truncate(i) => Record::TruncateFrom(*i),
            Owned::Purge(i, b) => Record::Purge(*i, b),
            Owned::Vote(b) => Record::Vote(b),
            Owned::Committed(b) => Record::Committed(b),
            Owned::Start(e) => Record::Start(*e),
        }
    }
}

fn entry(i: u64) -> Owned {
    Owned::Entry(
        i,
        format!("{{\"entry\":{i},\"pad\":\"{}\"}}", "x".repeat(100)).into_bytes(),
    )
}

/// Opens with the default (direct) writes.
fn open(dir: &Path, segment_bytes: u64) -> Result<(Wal, Vec<Owned>), StorageError> {
    open_io(dir, segment_bytes, WalIo::Direct)
}

fn open_io(dir: &Path, segment_bytes: u64, io: WalIo) -> Result<(Wal, Vec<Owned>), StorageError> {
    let mut seen = Vec::new();
    let options = WalOptions { segment_bytes, io };
    let wal = Wal::open(dir, options, |r| {
        seen.push(Owned::from(r));
        Ok(())
    })?;
    Ok((wal, seen))
}

fn write(wal: &mut Wal, records: &[Owned]) {
    for r in records {
        wal.push(r.as_record()).expect("push");
    }
    wal.commit().expect("commit");
}

const SMALL: u64 = 4096;

#[test]
fn committed_records_come_back_in_order() {
    let dir = Dir::new("roundtrip");
    let records = vec![
        Owned::Vote(b"{\"term\":1}".to_vec()),
        entry(1),
        entry(2),
        entry(3),
        Owned::Truncate(3),
        entry(3),
        Owned::Committed(b"2".to_vec()),
        Owned::Purge(1, b"\"id-1\"".to_vec()),
    ];
    {
        let (mut wal, seen) = open(&dir.0, SEGMENT_BYTES_DEFAULT).expect("create");
        assert!(seen.is_empty());
        write(&mut wal, &records[..4]);
        write(&mut wal, &records[4..]);
    }
    let (mut wal, seen) = open(&dir.0, SEGMENT_BYTES_DEFAULT).expect("reopen");
    assert_eq!(seen, records);
    // Writing resumes after the last record.
    write(&mut wal, &[entry(4)]);
    drop(wal);
    let (_, seen) = open(&dir.0, SEGMENT_BYTES_DEFAULT).expect("reopen");
    assert_eq!(seen.last(), Some(&entry(4)));
    assert_eq!(seen.len(), records.len() + 1);
}

#[test]
fn segments_roll_carry_the_meta_and_are_deleted_behind_the_purge_point() {
    let dir = Dir::new("roll");
    let (mut wal, _) = open(&dir.0, SMALL).expect("create");
    write(
        &mut wal,
        &[
            Owned::Vote(b"\"v1\"".to_vec()),
            Owned::Committed(b"\"c\"".to_vec()),
        ],
    );
    let entries: Vec<Owned> = (1..=200).map(entry).collect();
    for chunk in entries.chunks(7) {
        write(&mut wal, chunk);
    }
    let segments = wal.segment_paths();
    assert!(
        segments.len() > 5,
        "200 entries of ~130 B roll 4 KiB segments: {segments:?}"
    );
    // Purge behind entry 150: the segments holding only entries <= 150 go.
    write(&mut wal, &[Owned::Purge(150, b"\"p150\"".to_vec())]);
    let left = wal.segment_paths();
    assert!(left.len() < segments.len(), "nothing deleted");
    assert_eq!(left.last(), segments.last());
    for gone in &segments[..segments.len() - left.len()] {
        assert!(!gone.exists(), "{} should be deleted", gone.display());
    }
    drop(wal);
    let (_, seen) = open(&dir.0, SMALL).expect("reopen");
    // The vote and committed pointer were in the first segment, now deleted: the
    // copies at the start of later segments carry them.
    assert!(seen.contains(&Owned::Vote(b"\"v1\"".to_vec())));
    assert!(seen.contains(&Owned::Committed(b"\"c\"".to_vec())));
    assert_eq!(seen.last(), Some(&Owned::Purge(150, b"\"p150\"".to_vec())));
    // Every entry after the purge point is still there.
    for i in 151..=200 {
        assert!(seen.contains(&entry(i)), "entry {i} lost");
    }
}

/// Offset where the next record would go in the newest segment, and its path.
fn tail_of(dir: &Path) -> (PathBuf, u64) {
    let (wal, _) = open(dir, SEGMENT_BYTES_DEFAULT).expect("open");
    (wal.segment_paths().pop().expect("a segment"), wal.offset)
}

fn encoded(records: &[Owned]) -> Vec<u8> {
    let mut buf = Vec::new();
    for r in records {
        r.as_record().encode_into(&mut buf);
    }
    buf
}

fn write_at(path: &Path, at: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).expect("open");
    f.write_all_at(bytes, at).expect("write");
}

#[test]
fn a_torn_last_write_is_dropped_and_overwritten() {
    let dir = Dir::new("torn");
    {
        let (mut wal, _) = open(&dir.0, SEGMENT_BYTES_DEFAULT).expect("create");
        write(&mut wal, &[entry(1), entry(2)]);
    }
    let (path, end) = tail_of(&dir.0);
    // A write of 20 entries of which the first sectors reached the disk and the
    // rest did not: the record crossing the first missing sector is invalid.
    let batch = encoded(&(3..=22).map(entry).collect::<Vec<_>>());
    let missing = (end as usize / SECTOR + 2) * SECTOR - end as usize;
    let mut torn = batch.clone();
    torn[missing..missing + SECTOR].fill(0);
    write_at(&path, end, &torn);
    let (mut wal, seen) = open(&dir.0, SEGMENT_BYTES_DEFAULT).expect("torn tail accepted");
    // A prefix of the torn write may survive (whole records before the hole);
    // nothing after the hole does.
    assert_eq!(seen[..2], [entry(1), entry(2)]);
    let kept = seen.len() - 2;
    assert!(kept < 20, "records after the missing sector survived");
    assert_eq!(
        seen[2..],
        (3..3 + kept as u64).map(entry).collect::<Vec<_>>()[..]
    );
    // Writing resumes at the end of the valid records, and the stale later
    // sectors never resurface.
    let next = 3 + kept as u64;
    write(&mut wal, &[Owned::Truncate(next), entry(next)]);
    drop(wal);
    let (_, again) = open(&dir.0, SEGMENT_BYTES_DEFAULT).expect("reopen");
    assert_eq!(again.len(), seen.len() + 2);
    assert_eq!(again.last(), Some(&entry(next)));
}

#[test]
fn a_write_whose_first_sector_was_lost_is_dropped() {
    let dir = Dir::new("torn-first");
    {
        let (mut wal, _) = open(&dir.0, SEGMENT_BYTES_DEFAULT).expect("create");
        write(&mut wal, &[entry(1)]);
    }
    let (path, end) = tail_of(&dir.0);
    // Only the sectors after the first one of the write persisted.
    let batch = encoded(&(2..=30).map(entry).collect::<Vec<_>>());
    let skip = (end as usize / SECTOR + 1) * SECTOR - end as usize;
    write_at(&path, end + skip as u64, &batch[skip..]);
    let (_, seen) = open(&dir.0, SEGMENT_BYTES_DEFAULT).expect("torn tail accepted");
    assert_eq!(seen, vec![entry(1)]);
}

fn assert_corrupt(dir: &Path, file: &Path) {
    match open(dir, SEGMENT_BYTES_DEFAULT) {
        Ok((_, seen)) => panic!(
            "damage to {} accepted; read {} records",
            file.display(),
            seen.len()
        ),
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains(&file.display().to_string()), "{text}");
            eprintln!("{text}");
        }
    }
}

/// A dir with 50 committed entries in one segment; returns that segment.
fn populated(dir: &Path) -> PathBuf {
    let (mut wal, _) = open(dir, SEGMENT_BYTES_DEFAULT).expect("create");
    for i in 1..=50 {
        write(&mut wal, &[entry(i)]);
    }
    wal.segment_paths().pop().expect("a segment")
}

#[test]
fn a_garbled_record_is_refused_wherever_it_is() {
    for at in [HEADER_BYTES as u64 + 3, 2000, 4000] {
        let dir = Dir::new("garbled");
        let seg = populated(&dir.0);
        let (_, end) = tail_of(&dir.0);
        assert!(at < end);
        write_at(&seg, at, &[0xA5; 16]);
        assert_corrupt(&dir.0, &seg);
    }
    // The very last record too: garbage, not zeros, is not a torn write.
    let dir = Dir::new("garbled-last");
    let seg = populated(&dir.0);
    let (_, end) = tail_of(&dir.0);
    write_at(&seg, end - 20, &[0xA5; 8]);
    assert_corrupt(&dir.0, &seg);
}

#[test]
fn zeros_in_the_middle_of_the_log_are_refused() {
    let dir = Dir::new("zeroed");
    let (mut wal, _) = open(&dir.0, SEGMENT_BYTES_DEFAULT).expect("create");
    // More than a torn write's reach of records after the damage.
    let big = Owned::Entry(0, vec![b'x'; RECORD_BYTES_MAX - 64]);
    write(&mut wal, &[entry(1)]);
    write(&mut wal, std::slice::from_ref(&big));
    write(&mut wal, std::slice::from_ref(&big));
    let seg = wal.segment_paths().pop().expect("segment");
    drop(wal);
    write_at(&seg, HEADER_BYTES as u64, &[0; SECTOR]);
    assert_corrupt(&dir.0, &seg);
}

#[test]
fn damage_to_an_older_segment_is_refused_even_at_its_end() {
    let dir = Dir::new("older");
    let (mut wal, _) = open(&dir.0, SMALL).expect("create");
    for i in 1..=100 {
        write(&mut wal, &[entry(i)]);
    }
    let first = wal.segment_paths()[0].clone();
    drop(wal);
    // Zero a sector holding the first segment's last records: in the newest
    // segment that could be a torn write; here the segment was complete.
    write_at(&first, SMALL - 2 * SECTOR as u64, &[0; SECTOR]);
    assert_corrupt(&dir.0, &first);
}

#[test]
fn truncated_missing_and_foreign_files_are_refused() {
    let dir = Dir::new("trunc");
    let seg = populated(&dir.0);
    let f = OpenOptions::new().write(true).open(&seg).expect("open");
    f.set_len(3000).expect("truncate");
    assert_corrupt(&dir.0, &seg);

    let dir = Dir::new("missing");
    let (mut wal, _) = open(&dir.0, SMALL).expect("create");
    for i in 1..=100 {
        write(&mut wal, &[entry(i)]);
    }
    let segments = wal.segment_paths();
    drop(wal);
    fs::remove_file(&segments[1]).expect("remove");
    assert_corrupt(&dir.0, &segments[1]);

    let dir = Dir::new("foreign");
    populated(&dir.0);
    let stray = dir.0.join("notes.txt");
    fs::write(&stray, "hello").expect("write");
    assert_corrupt(&dir.0, &stray);

    let dir = Dir::new("header");
    let seg = populated(&dir.0);
    write_at(&seg, 0, b"NOTAWAL!");
    assert_corrupt(&dir.0, &seg);
}

#[test]
fn a_second_open_is_refused_while_the_first_holds_the_lock() {
    let dir = Dir::new("lock");
    let (wal, _) = open(&dir.0, SEGMENT_BYTES_DEFAULT).expect("create");
    let err = open(&dir.0, SEGMENT_BYTES_DEFAULT).expect_err("second open");
    assert!(err.to_string().contains("locked"), "{err}");
    drop(wal);
    open(&dir.0, SEGMENT_BYTES_DEFAULT).expect("open after the first closed");
}

#[test]
fn an_oversized_record_is_an_error_not_a_damaged_file() {
    let dir = Dir::new("oversized");
    let (mut wal, _) = open(&dir.0, SMALL).expect("create");
    let err = wal
        .push(Record::Entry(1, &vec![b'x'; 2 * SMALL as usize]))
        .expect_err("too big for a segment");
    assert!(err.to_string().contains("does not fit"), "{err}");
    let err = wal
        .push(Record::Entry(1, &vec![b'x'; RECORD_BYTES_MAX]))
        .expect_err("too big");
    assert!(err.to_string().contains("exceeds"), "{err}");
    write(&mut wal, &[entry(1)]);
    drop(wal);
    let (_, seen) = open(&dir.0, SMALL).expect("reopen");
    assert_eq!(seen, vec![entry(1)]);
}

#[test]
fn records_written_without_a_sync_are_read_back_and_synced_by_the_next_commit() {
    // Buffered writes only: a direct write is durable when it returns.
    let dir = Dir::new("unsynced");
    let (mut wal, _) = open_io(&dir.0, SEGMENT_BYTES_DEFAULT, WalIo::Buffered).expect("create");
    write(&mut wal, &[entry(1)]);
    wal.push(Owned::Committed(b"1".to_vec()).as_record())
        .expect("push");
    wal.write_unsynced().expect("write");
    assert!(wal.unsynced > 0, "nothing left unsynced");
    // On disk (in the page cache) already: a reopen, as after kill -9, sees it.
    let path = wal.segment_paths().pop().expect("segment");
    let bytes = fs::read(&path).expect("read");
    let committed = encoded(&[Owned::Committed(b"1".to_vec())]);
    assert!(
        bytes.windows(committed.len()).any(|w| w == committed),
        "the unsynced record is not in the file"
    );
    write(&mut wal, &[entry(2)]);
    assert_eq!(
        wal.unsynced, 0,
        "the commit synced what was written before it"
    );
    // Too much unsynced data is synced anyway, bounding a torn write.
    for i in 3..=20_000 {
        wal.push(entry(i).as_record()).expect("push");
        wal.write_unsynced().expect("write");
        assert!(wal.unsynced <= WRITE_BYTES_MAX, "{} unsynced", wal.unsynced);
    }
    drop(wal);
    let (_, seen) = open(&dir.0, SEGMENT_BYTES_DEFAULT).expect("reopen");
    assert_eq!(
        seen[..3],
        [entry(1), Owned::Committed(b"1".to_vec()), entry(2)]
    );
    assert_eq!(seen.len(), 20_001);
}

/// Whether the filesystem under `dir` accepts `O_DIRECT`.
fn fs_does_direct(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    fs::create_dir_all(dir).expect("mkdir");
    let probe = dir.join("probe");
    let ok = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_ok();
    let _ = fs::remove_file(&probe);
    ok
}

#[test]
fn direct_writes_rewrite_the_tail_block_and_keep_what_it_held() {
    let dir = Dir::new("direct");
    let direct = fs_does_direct(&dir.0);
    let (mut wal, _) = open(&dir.0, SEGMENT_BYTES_DEFAULT).expect("create");
    assert_eq!(
        wal.direct.is_some(),
        direct,
        "direct writes where the filesystem allows them"
    );
    // Many small commits: most start and end inside a block, so each rewrites the
    // block holding the previous ones; some cross a block boundary.
    let mut expected = Vec::new();
    for i in 1..=200 {
        let r = entry(i);
        write(&mut wal, std::slice::from_ref(&r));
        expected.push(r);
        if direct {
            let d = wal.direct.as_ref().expect("direct");
            assert_eq!(d.tail.len() as u64, wal.offset % DIRECT_ALIGN as u64);
        }
        if i % 50 == 0 {
            // What the file holds now (a reader after kill -9 sees the same).
            drop(wal);
            let (w, seen) = open(&dir.0, SEGMENT_BYTES_DEFAULT).expect("reopen");
            assert_eq!(seen, expected, "after {i} commits");
            wal = w;
        }
    }
    // Beyond the last record the segment holds zeros only (the padding).
    let path = wal.segment_paths().pop().expect("segment");
    let bytes = fs::read(&path).expect("read");
    assert!(bytes[wal.offset as usize..].iter().all(|&b| b == 0));
}

#[test]
fn direct_and_buffered_writes_read_back_alike_and_can_take_turns() {
    // Entries in order, and the newest committed pointer (a roll repeats it at
    // the start of the new segment).
    fn summary(records: &[Owned]) -> (Vec<Owned>, Option<Owned>) {
        let entries = records
            .iter()
            .filter(|r| matches!(r, Owned::Entry(..)))
            .cloned()
            .collect();
        let committed = records
            .iter()
            .rev()
            .find(|r| matches!(r, Owned::Committed(_)))
            .cloned();
        (entries, committed)
    }
    let dir = Dir::new("turns");
    let mut expected = Vec::new();
    let mut next = 1;
    // Small segments, so rolls happen in both modes too.
    for io in [
        WalIo::Direct,
        WalIo::Buffered,
        WalIo::Direct,
        WalIo::Buffered,
    ] {
        let (mut wal, seen) = open_io(&dir.0, SMALL, io).expect("open");
        assert!(
            summary(&seen) == summary(&expected),
            "{io:?} reads what came before"
        );
        let segments = wal.segments.len();
        for _ in 0..40 {
            let batch = [entry(next), Owned::Committed(next.to_string().into_bytes())];
            write(&mut wal, &batch);
            expected.extend(batch);
            next += 1;
        }
        assert!(wal.segments.len() > segments, "segments rolled");
    }
    let (_, seen) = open(&dir.0, SMALL).expect("reopen");
    assert_eq!(summary(&seen).0.len(), 160);
    assert!(summary(&seen) == summary(&expected));
}

#[test]
fn direct_writes_never_grow_a_segment_whose_size_is_not_whole_blocks() {
    let dir = Dir::new("odd-size");
    // 10,000 bytes: the last block of every segment is partial.
    const ODD: u64 = 10_000;
    let (mut wal, _) = open(&dir.0, ODD).expect("create");
    let mut expected = Vec::new();
    for i in 1..=300 {
        let r = entry(i);
        write(&mut wal, std::slice::from_ref(&r));
        expected.push(r);
    }
    assert!(wal.segments.len() > 3, "segments rolled");
    for path in wal.segment_paths() {
        let len = fs::metadata(&path).expect("stat").len();
        assert_eq!(len, ODD, "{} keeps its size", path.display());
    }
    drop(wal);
    let (_, seen) = open(&dir.0, ODD).expect("reopen");
    let entries: Vec<Owned> = seen
        .into_iter()
        .filter(|r| matches!(r, Owned::Entry(..)))
        .collect();
    assert_eq!(entries, expected);
}

/// Where each record of `seg` starts, and where the last one ends.
fn record_starts(seg: &Path) -> (Vec<u64>, u64) {
    let bytes = fs::read(seg).expect("read");
    let mut pos = HEADER_BYTES;
    let mut starts = Vec::new();
    loop {
        let len = bytes
            .get(pos..pos + 4)
            .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()) as usize);
        if len == 0 {
            return (starts, pos as u64);
        }
        starts.push(pos as u64);
        pos += FRAME_BYTES + len;
    }
}

/// Where the valid records of `seg` end (the first all-zero frame).
fn records_end(seg: &Path) -> u64 {
    record_starts(seg).1
}

#[test]
fn zeroing_every_record_of_the_only_segment_is_refused() {
    let dir = Dir::new("zero-all");
    let (mut wal, _) = open(&dir.0, SEGMENT_BYTES_DEFAULT).expect("create");
    write(&mut wal, &[Owned::Vote(b"{\"term\":7}".to_vec())]);
    for i in 1..=50 {
        write(&mut wal, &[entry(i)]);
    }
    let seg = wal.segment_paths().pop().expect("a segment");
    drop(wal);
    let end = records_end(&seg);
    // Every record, vote included: what is left looks like a log never written.
    write_at(
        &seg,
        HEADER_BYTES as u64,
        &vec![0; end as usize - HEADER_BYTES],
    );
    assert_corrupt(&dir.0, &seg);
}

#[test]
fn zeroed_records_followed_by_valid_ones_near_the_end_are_refused() {
    let dir = Dir::new("zero-mid");
    let seg = populated(&dir.0);
    let end = records_end(&seg);
    // Two sectors inside the log, the rest intact: within a torn write's reach
    // of the end, so before the checkpoint this was dropped as a torn tail.
    let at = (end / 2) / SECTOR as u64 * SECTOR as u64;
    write_at(&seg, at, &[0; 2 * SECTOR]);
    assert_corrupt(&dir.0, &seg);
}

#[test]
fn zeroing_the_last_records_of_an_older_segment_is_refused() {
    let dir = Dir::new("zero-older-end");
    let (mut wal, _) = open(&dir.0, SMALL).expect("create");
    for i in 1..=100 {
        write(&mut wal, &[entry(i)]);
    }
    let first = wal.segment_paths()[0].clone();
    drop(wal);
    // Its last two records, whole: the rest of the segment reads as a clean
    // end, but the next segment says where its records ended.
    let (starts, end) = record_starts(&first);
    let from = starts[starts.len() - 2];
    write_at(&first, from, &vec![0; (end - from) as usize]);
    assert_corrupt(&dir.0, &first);
}

#[test]
fn the_vote_is_checkpointed_before_its_commit_returns_and_a_lost_one_is_refused() {
    let dir = Dir::new("vote");
    let (mut wal, _) = open(&dir.0, SEGMENT_BYTES_DEFAULT).expect("create");
    let vote = b"{\"term\":9,\"node\":2}".to_vec();
    write(&mut wal, &[Owned::Vote(vote.clone())]);
    // Durable in the checkpoint as soon as the commit returned (no close yet).
    let cp = checkpoint::Checkpoint::read(&dir.0)
        .expect("read")
        .expect("a checkpoint");
    assert_eq!(cp.point.vote.as_deref(), Some(&vote[..]));
    let seg = wal.segment_paths().pop().expect("a segment");
    drop(cp);
    drop(wal);
    let (wal, seen) = open(&dir.0, SEGMENT_BYTES_DEFAULT).expect("reopen");
    assert!(seen.contains(&Owned::Vote(vote)), "the vote survives");
    drop(wal);
    // The vote record zeroed: the log would read as never voted.
    let end = records_end(&seg);
    write_at(
        &seg,
        HEADER_BYTES as u64,
        &vec![0; end as usize - HEADER_BYTES],
    );
    assert_corrupt(&dir.0, &seg);
}

#[test]
fn a_missing_or_garbled_checkpoint_is_refused_and_a_torn_slot_is_not() {
    let dir = Dir::new("cp");
    populated(&dir.0);
    let cp = dir.0.join(checkpoint::CHECKPOINT_FILE);
    // One slot torn: the other one holds.
    write_at(&cp, 100, &[0xA5; 64]);
    write_at(&cp, 512 + 100, &[0xA5; 64]);
    assert_corrupt(&dir.0, &cp);
    let dir = Dir::new("cp-torn");
    populated(&dir.0);
    let cp = dir.0.join(checkpoint::CHECKPOINT_FILE);
    write_at(&cp, 100, &[0xA5; 64]);
    let (wal, seen) = open(&dir.0, SEGMENT_BYTES_DEFAULT).expect("one slot suffices");
    assert_eq!(seen.len(), 50);
    drop(wal);
    fs::remove_file(&cp).expect("remove");
    assert_corrupt(&dir.0, &cp);
}

#[test]
fn a_first_open_cut_short_before_the_checkpoint_opens_again() {
    let dir = Dir::new("cp-first");
    drop(open(&dir.0, SEGMENT_BYTES_DEFAULT).expect("create"));
    // A crash between creating the first segment and the checkpoint.
    fs::remove_file(dir.0.join(checkpoint::CHECKPOINT_FILE)).expect("remove");
    let (mut wal, seen) = open(&dir.0, SEGMENT_BYTES_DEFAULT).expect("an empty log opens");
    assert!(seen.is_empty());
    write(&mut wal, &[entry(1)]);
    drop(wal);
    let (_, seen) = open(&dir.0, SEGMENT_BYTES_DEFAULT).expect("reopen");
    assert_eq!(seen, vec![entry(1)]);
}

/// A kill right after a roll created the next segment (before its first
/// records were written) leaves an empty newest segment. The reopened log
/// writes into it: it must begin it as the roll would have (start record, then
/// the vote again), or the next open finds records that do not follow the
/// previous segment, and deleting the older segments loses the vote.
#[test]
fn a_segment_a_kill_left_empty_after_a_roll_is_begun_on_reopen() {
    let dir = Dir::new("unbegun");
    let vote = Owned::Vote(b"\"v1\"".to_vec());
    let next_seq = {
        let (mut wal, _) = open(&dir.0, SMALL).expect("create");
        write(&mut wal, std::slice::from_ref(&vote));
        for chunk in (1..=40).map(entry).collect::<Vec<_>>().chunks(7) {
            write(&mut wal, chunk);
        }
        wal.segments.back().expect("never empty").seq + 1
    };
    // What the roll did before the kill: the next segment, header only.
    create_segment(&dir.0, next_seq, SMALL).expect("empty next segment");
    {
        let (mut wal, seen) = open(&dir.0, SMALL).expect("reopen with an empty newest segment");
        assert_eq!(seen.last(), Some(&entry(40)));
        for chunk in (41..=120).map(entry).collect::<Vec<_>>().chunks(7) {
            write(&mut wal, chunk);
        }
    }
    {
        let (mut wal, seen) = open(&dir.0, SMALL).expect("reopen after writing into it");
        assert_eq!(seen.last(), Some(&entry(120)));
        // Purge far enough that the segment holding the original vote goes.
        write(&mut wal, &[Owned::Purge(100, b"\"p100\"".to_vec())]);
    }
    let (_, seen) = open(&dir.0, SMALL).expect("reopen after the purge");
    assert!(
        seen.contains(&vote),
        "the vote was lost with the older segments"
    );
    for i in 101..=120 {
        assert!(seen.contains(&entry(i)), "entry {i} lost");
    }
}

/// Reopening a log that was closed cleanly writes nothing: the checkpoint
/// already says what the open finds. (A start that fails after the open, on
/// its address say, then leaves the data dir as it was.)
#[test]
fn reopening_a_cleanly_closed_log_rewrites_no_checkpoint() {
    let dir = Dir::new("quiet-open");
    {
        let (mut wal, _) = open(&dir.0, SMALL).expect("create");
        write(
            &mut wal,
            &[Owned::Vote(b"\"v1\"".to_vec()), entry(1), entry(2)],
        );
    }
    let cp = dir.0.join(checkpoint::CHECKPOINT_FILE);
    let before = fs::read(&cp).expect("checkpoint");
    for _ in 0..2 {
        let (_, seen) = open(&dir.0, SMALL).expect("reopen");
        assert_eq!(seen.last(), Some(&entry(2)));
    }
    assert_eq!(fs::read(&cp).expect("checkpoint"), before, "rewritten");
    // Written to again, the next close records the new point.
    {
        let (mut wal, _) = open(&dir.0, SMALL).expect("reopen");
        write(&mut wal, &[entry(3)]);
    }
    assert_ne!(fs::read(&cp).expect("checkpoint"), before);
    let (_, seen) = open(&dir.0, SMALL).expect("reopen");
    assert_eq!(seen.last(), Some(&entry(3)));
}
