//! Framing: one JSON envelope `{src, dest, body}` per `\n`-terminated line, exactly
//! as Maelstrom mode reads stdin and writes stdout. A line longer than the limit
//! is not buffered: its first bytes are kept for the log, the rest is read and
//! discarded up to its newline (so the stream stays in step and the connection
//! stays open), and its addressing is read on the way by a [`Skeleton`] so the
//! sender can be answered. A line that is not valid UTF-8 is refused whole, never
//! converted lossily: two different byte strings must not become the same key or
//! client_id. An unterminated line at end of stream is read as a line: whole, it
//! is a message like any other (`printf` without a final newline); cut short by
//! a writer that died mid-line, it does not parse and is refused as any broken
//! line is, never half-applied.
//!
//! Readers may share a [`LinePool`]: the bytes of the lines they are receiving,
//! past [`LINE_BYTES_UNCHARGED`] each, are taken from it, and a line that would
//! pass its bound is discarded like a too-long one (its sender is told to retry).
//! Without it, 2,048 client connections each holding most of a 1 MiB line they
//! never finish hold 2 GiB that no other bound counts.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::Skeleton;

/// How much of a too-long line is kept, for the log.
pub const LONG_LINE_PREFIX_BYTES: usize = 200;

/// One line from a [`LineReader`].
#[derive(Debug)]
pub enum Line {
    /// A whole line within the limit, trimmed, never empty.
    Full(String),
    /// A line over the limit, discarded but for what [`LongLine`] keeps.
    TooLong(LongLine),
    /// A line within the limit that is not valid UTF-8, refused whole.
    NotUtf8(BadLine),
}

/// What is kept of a line that is not valid UTF-8.
#[derive(Debug)]
pub struct BadLine {
    /// The line's length in bytes (without its newline).
    pub bytes: usize,
    /// The offset in the line of the first byte that is not valid UTF-8.
    pub offset: usize,
    /// Its first [`LONG_LINE_PREFIX_BYTES`] bytes (lossy UTF-8), for the log.
    pub prefix: String,
    /// Its addressing, read from its bytes.
    pub skeleton: Skeleton,
}

impl BadLine {
    /// The error text its sender gets (with error 12).
    pub fn text(&self) -> String {
        format!("the line is not valid UTF-8 (byte offset {})", self.offset)
    }
}

/// What is kept of a line over the limit.
#[derive(Debug)]
pub struct LongLine {
    /// The line's length in bytes (without its newline).
    pub bytes: usize,
    /// The limit it exceeded.
    pub limit: usize,
    /// Not over its own limit: the reader's [`LinePool`] (of this bound, in
    /// bytes) had no room for it.
    pub crowded: Option<usize>,
    /// Its first [`LONG_LINE_PREFIX_BYTES`] bytes (lossy UTF-8), for the log.
    pub prefix: String,
    /// Its addressing, read over the whole line.
    pub skeleton: Skeleton,
}

/// Bytes of a line being received that a [`LinePool`] does not count: what an
/// ordinary request takes, so small requests never wait on the pool.
pub const LINE_BYTES_UNCHARGED: usize = 16 << 10;

/// The least a reader takes from the pool at once (its buffer then doubles).
const LINE_POOL_STEP: usize = 64 << 10;

/// Bytes of lines being received, shared by readers (a node's client
/// connections): each takes what its line holds past [`LINE_BYTES_UNCHARGED`],
/// and keeps it until it reads its next line (so a whole line waiting for its
/// turn in flight still counts).
#[derive(Debug)]
pub struct LinePool {
    used: AtomicUsize,
    max: usize,
}

impl LinePool {
    /// A pool of `max` bytes.
    pub fn new(max: usize) -> Arc<LinePool> {
        Arc::new(LinePool {
            used: AtomicUsize::new(0),
            max,
        })
    }

    /// Bytes taken now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }

    /// Its bound.
    pub fn max(&self) -> usize {
        self.max
    }

    fn try_take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                now.checked_add(bytes).filter(|n| *n <= self.max)
            })
            .is_ok()
    }

    fn give(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::SeqCst);
    }
}

/// Reads newline-terminated lines of at most `max` bytes each, in memory bounded
/// by `max` (plus the reader's buffer) whatever the peer sends, and by its
/// [`LinePool`] across readers if it has one.
pub struct LineReader<R> {
    /// The buffered socket half.
    inner: R,
    /// The line being assembled (reused between lines).
    buf: Vec<u8>,
    /// The longest line accepted, in bytes.
    max: usize,
    /// What it takes from a line pool.
    share: Share,
}

impl<R> Drop for LineReader<R> {
    fn drop(&mut self) {
        self.share.release(&mut self.buf);
    }
}

/// A reader's share of its [`LinePool`].
#[derive(Debug, Default)]
struct Share {
    /// The pool its lines' bytes are taken from, if any.
    pool: Option<Arc<LinePool>>,
    /// Bytes taken from `pool` for the current (or just returned) line.
    held: usize,
}

impl Share {
    /// Gives back what the pool lent, and the buffer that held it. A reader
    /// without a pool (a peer's) keeps its buffer for the next line.
    fn release(&mut self, buf: &mut Vec<u8>) {
        if self.held == 0 {
            return;
        }
        if let Some(pool) = &self.pool {
            pool.give(self.held);
        }
        self.held = 0;
        *buf = Vec::with_capacity(1024);
    }

    /// Room in `buf` for a line of `len` bytes (at most `limit`): the buffer
    /// grows by doubling, up to the limit, and what it holds past the
    /// uncharged bytes is taken from the pool; false if the pool has no room.
    /// (Doubling, not growing by a fixed step: a 1 MB line grown 64 KiB at a
    /// time was copied fifteen times and left the allocator that many blocks.)
    fn make_room(&mut self, buf: &mut Vec<u8>, len: usize, limit: usize) -> bool {
        let Some(pool) = &self.pool else {
            return true;
        };
        if len <= LINE_BYTES_UNCHARGED + self.held {
            return true;
        }
        let cap = len
            .max(buf.capacity().saturating_mul(2))
            .max(LINE_BYTES_UNCHARGED + LINE_POOL_STEP)
            .min(limit.max(len));
        let want = cap - LINE_BYTES_UNCHARGED;
        if !pool.try_take(want - self.held) {
            return false;
        }
        self.held = want;
        if buf.capacity() < cap {
            buf.reserve_exact(cap - buf.len());
        }
        true
    }
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    /// Wraps a buffered reader.
    pub fn new(inner: R, max: usize) -> Self {
        LineReader {
            inner,
            buf: Vec::with_capacity(1024),
            max,
            share: Share::default(),
        }
    }

    /// Takes its lines' bytes from `pool` (or no pool's, `None`: a connection
    /// that became a peer's).
    pub fn set_pool(&mut self, pool: Option<Arc<LinePool>>) {
        self.share.release(&mut self.buf);
        self.share.pool = pool;
    }

    /// Whether it takes its lines' bytes from a pool.
    pub fn has_pool(&self) -> bool {
        self.share.pool.is_some()
    }

    /// Changes the limit for the lines that follow (a connection that became a
    /// peer connection).
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// The limit in force.
    pub fn max(&self) -> usize {
        self.max
    }

    /// The wrapped reader (to look at what it has buffered).
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The next non-empty line; `None` at end of stream.
    pub async fn read_line(&mut self) -> io::Result<Option<Line>> {
        self.read_line_with(|_| None).await
    }

    /// [`LineReader::read_line`], where a line reaching the limit may be allowed a
    /// larger one: `extend` sees the addressing of what has been read so far (its
    /// `src`, usually first) and returns the limit for this line, or `None`.
    pub async fn read_line_with(
        &mut self,
        extend: impl Fn(&Skeleton) -> Option<usize>,
    ) -> io::Result<Option<Line>> {
        loop {
            // The line returned last is in flight or done: its share goes back.
            self.share.release(&mut self.buf);
            self.buf.clear();
            let mut limit = self.max;
            let mut asked = false;
            let mut long: Option<LongLine> = None;
            loop {
                let available = self.inner.fill_buf().await?;
                if available.is_empty() {
                    if self.buf.is_empty() && long.is_none() {
                        return Ok(None);
                    }
                    // The last line, unterminated: read as a line.
                    break;
                }
                let (take, done) = match available.iter().position(|b| *b == b'\n') {
                    Some(i) => (i, true),
                    None => (available.len(), false),
                };
                let chunk = &available[..take];
                if let Some(l) = long.as_mut() {
                    l.skeleton.feed(chunk);
                } else {
                    let len = self.buf.len() + take;
                    if len > limit && !asked {
                        asked = true;
                        let mut sk = Skeleton::default();
                        sk.feed(&self.buf);
                        sk.feed(chunk);
                        if let Some(more) = extend(&sk).filter(|m| *m > limit) {
                            limit = more;
                        }
                    }
                    let crowded = len <= limit && !self.share.make_room(&mut self.buf, len, limit);
                    if len > limit || crowded {
                        let mut sk = Skeleton::default();
                        sk.feed(&self.buf);
                        sk.feed(chunk);
                        let mut prefix = std::mem::take(&mut self.buf);
                        prefix.extend_from_slice(
                            &chunk[..take.min(LONG_LINE_PREFIX_BYTES.saturating_sub(prefix.len()))],
                        );
                        prefix.truncate(LONG_LINE_PREFIX_BYTES);
                        long = Some(LongLine {
                            bytes: 0,
                            limit,
                            crowded: crowded
                                .then(|| self.share.pool.as_ref().map_or(0, |p| p.max())),
                            prefix: String::from_utf8_lossy(&prefix).into_owned(),
                            skeleton: sk,
                        });
                        // Nothing of it is kept: its share goes back now.
                        self.share.release(&mut self.buf);
                    } else {
                        self.buf.extend_from_slice(chunk);
                    }
                }
                self.inner.consume(take + usize::from(done));
                if done {
                    break;
                }
            }
            if let Some(mut l) = long {
                l.skeleton.finish();
                l.bytes = l.skeleton.bytes;
                // The big buffer a too-long line may have grown is not kept.
                self.buf = Vec::with_capacity(1024);
                return Ok(Some(Line::TooLong(l)));
            }
            let line = match std::str::from_utf8(&self.buf) {
                Ok(line) => line.trim(),
                Err(e) => {
                    let mut skeleton = Skeleton::default();
                    skeleton.feed(&self.buf);
                    skeleton.finish();
                    let prefix = &self.buf[..self.buf.len().min(LONG_LINE_PREFIX_BYTES)];
                    return Ok(Some(Line::NotUtf8(BadLine {
                        bytes: self.buf.len(),
                        offset: e.valid_up_to(),
                        prefix: String::from_utf8_lossy(prefix).into_owned(),
                        skeleton,
                    })));
                }
            };
            if !line.is_empty() {
                return Ok(Some(Line::Full(line.to_string())));
            }
        }
    }
}

/// Writes one line (the newline is added) in a single `write_all`.
pub async fn write_line<W: AsyncWrite + Unpin>(w: &mut W, line: &str) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    w.write_all(&bytes).await
}

/// A body that is not a [`crate::protocol::Reply`] (peer RPCs, `status_ok`), serialized
/// in protocol key order: `type`, payload, `in_reply_to`, `msg_id`.
#[derive(Serialize)]
pub struct RawBody<'a> {
    /// The `type` field.
    #[serde(rename = "type")]
    pub kind: Value,
    /// The payload.
    #[serde(flatten)]
    pub rest: &'a Map<String, Value>,
    /// The request answered, for replies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<u64>,
    /// The sender's message id.
    pub msg_id: u64,
}

/// Serializes an envelope around a raw body (its `type` moved first).
pub fn encode_raw(
    src: &str,
    dest: &str,
    mut body: Map<String, Value>,
    in_reply_to: Option<u64>,
    msg_id: u64,
) -> String {
    body.remove("msg_id");
    body.remove("in_reply_to");
    let kind = body.remove("type").unwrap_or(Value::Null);
    crate::protocol::encode(
        src,
        dest,
        RawBody {
            kind,
            rest: &body,
            in_reply_to,
            msg_id,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splits_lines_reads_an_unterminated_tail_and_bounds_length() {
        let data: &[u8] = b"{\"a\":1}\n\n{\"b\":2}\n{\"c\":";
        let mut r = LineReader::new(tokio::io::BufReader::with_capacity(4, data), 100);
        assert_eq!(full(r.read_line().await).as_deref(), Some("{\"a\":1}"));
        assert_eq!(full(r.read_line().await).as_deref(), Some("{\"b\":2}"));
        // Handed over as it is: the parser refuses it, as any broken line.
        assert_eq!(full(r.read_line().await).as_deref(), Some("{\"c\":"));
        assert!(r.read_line().await.unwrap().is_none());
        assert!(r.read_line().await.unwrap().is_none());
    }

    /// Lines past the uncharged bytes take from the pool until the next line is
    /// read; a line the pool has no room for is dropped unread (its sender
    /// readable, marked crowded) and the stream stays in step.
    #[tokio::test]
    async fn a_pool_bounds_the_lines_being_received_across_readers() {
        let pool = LinePool::new(200 << 10);
        let body = |n: usize| {
            format!(
                "{{\"src\":\"c1\",\"dest\":\"n1\",\"body\":{{\"type\":\"write\",\"msg_id\":9,\"value\":\"{}\"}}}}\n",
                "v".repeat(n)
            )
        };
        // A small line takes nothing; a 100 KiB one takes its bytes past the
        // uncharged ones, rounded up to the step, until the next read.
        let small = body(100);
        let big = body(100 << 10);
        let data = format!("{small}{big}{small}");
        let mut a = LineReader::new(
            tokio::io::BufReader::with_capacity(4096, data.as_bytes()),
            1 << 20,
        );
        a.set_pool(Some(pool.clone()));
        assert!(full(a.read_line().await).is_some());
        assert_eq!(pool.used(), 0);
        assert!(full(a.read_line().await).is_some());
        let held = pool.used();
        assert!(held >= big.len() - LINE_BYTES_UNCHARGED, "{held}");
        assert!(
            held < big.len() - LINE_BYTES_UNCHARGED + LINE_POOL_STEP,
            "{held}"
        );
        assert!(
            a.buf.capacity() <= held + LINE_BYTES_UNCHARGED,
            "the buffer is what was taken"
        );

        // While `a` holds its line, `b` finds no room for a second one of that
        // size: it is dropped unread, and b's next line reads normally.
        let data_b = format!("{}{small}", body(150 << 10));
        let mut b = LineReader::new(
            tokio::io::BufReader::with_capacity(4096, data_b.as_bytes()),
            1 << 20,
        );
        b.set_pool(Some(pool.clone()));
        match b.read_line().await.unwrap() {
            Some(Line::TooLong(l)) => {
                assert_eq!(l.crowded, Some(200 << 10));
                assert_eq!(l.skeleton.src.as_deref(), Some("c1"));
                assert_eq!(l.skeleton.msg_id, Some(9));
                assert_eq!(l.bytes, (150 << 10) + small.len() - 100 - 1);
            }
            other => panic!("expected a crowded line, got {other:?}"),
        }
        assert_eq!(
            pool.used(),
            held,
            "b gave back what it took for the dropped line"
        );
        assert!(full(b.read_line().await).is_some());

        // Reading on gives a's share back; so does dropping a reader.
        assert!(full(a.read_line().await).is_some());
        assert_eq!(pool.used(), 0);
        let data_c = body(100 << 10);
        let mut c = LineReader::new(
            tokio::io::BufReader::with_capacity(4096, data_c.as_bytes()),
            1 << 20,
        );
        c.set_pool(Some(pool.clone()));
        assert!(full(c.read_line().await).is_some());
        assert!(pool.used() > 0);
        drop(c);
        assert_eq!(pool.used(), 0);

        // A line over the reader's own limit is too long, not crowded.
        let mut d = LineReader::new(
            tokio::io::BufReader::with_capacity(4096, data_c.as_bytes()),
            1000,
        );
        d.set_pool(Some(pool.clone()));
        match d.read_line().await.unwrap() {
            Some(Line::TooLong(l)) => assert_eq!(l.crowded, None),
            other => panic!("expected a too-long line, got {other:?}"),
        }
        assert_eq!(pool.used(), 0);
    }

    fn full(l: io::Result<Option<Line>>) -> Option<String> {
        match l.expect("no I/O error") {
            Some(Line::Full(s)) => Some(s),
            other => panic!("expected a full line, got {other:?}"),
        }
    }

    /// A line over the limit keeps only a bounded prefix and its addressing, the
    /// rest is skipped to the newline, and the next line reads normally.
    #[tokio::test]
    async fn a_long_line_is_skipped_in_bounded_memory_and_its_sender_is_read() {
        let big = "x".repeat(100_000);
        let data = format!(
            "{{\"src\":\"c7\",\"dest\":\"n1\",\"body\":{{\"type\":\"write\",\"key\":\"{big}\",\"value\":1,\"msg_id\":42}}}}\n{{\"ok\":1}}\n"
        );
        for capacity in [7, 4096, 1 << 20] {
            let reader = tokio::io::BufReader::with_capacity(capacity, data.as_bytes());
            let mut r = LineReader::new(reader, 1000);
            match r.read_line().await.unwrap() {
                Some(Line::TooLong(l)) => {
                    assert_eq!(l.bytes, data.find('\n').unwrap());
                    assert_eq!(l.limit, 1000);
                    assert_eq!(l.prefix.len(), LONG_LINE_PREFIX_BYTES);
                    assert!(l.prefix.starts_with("{\"src\":\"c7\""));
                    assert_eq!(l.skeleton.src.as_deref(), Some("c7"));
                    assert_eq!(l.skeleton.dest.as_deref(), Some("n1"));
                    assert_eq!(l.skeleton.msg_id, Some(42));
                    assert_eq!(l.skeleton.in_reply_to, None);
                }
                other => panic!("capacity {capacity}: {other:?}"),
            }
            assert!(r.buf.capacity() <= 4096, "the long line's buffer was kept");
            assert_eq!(full(r.read_line().await).as_deref(), Some("{\"ok\":1}"));
            assert!(r.read_line().await.unwrap().is_none());
        }
        // An unterminated long line at the end is a long line like any other.
        let mut r = LineReader::new(tokio::io::BufReader::new(big.as_bytes()), 10);
        assert!(matches!(
            r.read_line().await.unwrap(),
            Some(Line::TooLong(_))
        ));
        assert!(r.read_line().await.unwrap().is_none());
    }

    /// A line that is not valid UTF-8 is refused whole with its addressing and
    /// the offset of its first bad byte (two different byte strings never read as
    /// the same text), and the next line reads normally.
    #[tokio::test]
    async fn a_line_that_is_not_utf8_is_refused_not_converted() {
        let mut data = br#"{"src":"c1","dest":"n1","body":{"type":"read","key":""#.to_vec();
        let offset = data.len();
        data.extend_from_slice(b"\xfe\xff\",\"msg_id\":7}}\n{\"ok\":1}\n");
        let mut r = LineReader::new(tokio::io::BufReader::with_capacity(5, &data[..]), 1000);
        match r.read_line().await.unwrap() {
            Some(Line::NotUtf8(b)) => {
                assert_eq!(b.offset, offset);
                assert_eq!(b.bytes, data.iter().position(|&c| c == b'\n').unwrap());
                assert_eq!(b.skeleton.src.as_deref(), Some("c1"));
                assert_eq!(b.skeleton.msg_id, Some(7));
                assert!(b.text().contains(&format!("byte offset {offset}")));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(full(r.read_line().await).as_deref(), Some("{\"ok\":1}"));
        assert!(r.read_line().await.unwrap().is_none());
    }

    /// `extend` may allow one line a larger limit, judging by its sender.
    #[tokio::test]
    async fn a_line_may_be_allowed_more_by_its_sender() {
        let data = format!(
            "{{\"src\":\"n2\",\"body\":\"{}\"}}\n{{\"src\":\"c1\",\"body\":\"{}\"}}\n",
            "a".repeat(5000),
            "b".repeat(5000)
        );
        let mut r = LineReader::new(
            tokio::io::BufReader::with_capacity(64, data.as_bytes()),
            100,
        );
        let peers_may_send_more =
            |sk: &Skeleton| (sk.src.as_deref() == Some("n2")).then_some(1 << 20);
        let first = full(r.read_line_with(peers_may_send_more).await);
        assert_eq!(first.map(|l| l.len()), Some(5000 + 22));
        match r.read_line_with(peers_may_send_more).await.unwrap() {
            Some(Line::TooLong(l)) => assert_eq!(l.skeleton.src.as_deref(), Some("c1")),
            other => panic!("{other:?}"),
        }
    }
}
