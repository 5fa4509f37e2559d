//! Framing: one JSON envelope `{src, dest, body}` per `\n`-terminated line, exactly
//! as Maelstrom mode reads stdin and writes stdout. A line longer than the limit
//! is not buffered: its first bytes are kept for the log, the rest is read and
//! discarded up to its newline (so the stream stays in step and the connection
//! stays open), and its addressing is read on the way by a [`Skeleton`] so the
//! sender can be answered. A line that is not valid UTF-8 is refused whole, never
//! converted lossily: two different byte strings must not become the same key or
//! client_id. An unterminated line at end of stream is discarded, so a writer
//! that died mid-line never delivers half a message.

use std::io;

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
    /// Its first [`LONG_LINE_PREFIX_BYTES`] bytes (lossy UTF-8), for the log.
    pub prefix: String,
    /// Its addressing, read over the whole line.
    pub skeleton: Skeleton,
}

/// Reads newline-terminated lines of at most `max` bytes each, in memory bounded
/// by `max` (plus the reader's buffer) whatever the peer sends.
pub struct LineReader<R> {
    /// The buffered socket half.
    inner: R,
    /// The line being assembled (reused between lines).
    buf: Vec<u8>,
    /// The longest line accepted, in bytes.
    max: usize,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    /// Wraps a buffered reader.
    pub fn new(inner: R, max: usize) -> Self {
        LineReader {
            inner,
            buf: Vec::with_capacity(1024),
            max,
        }
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
            self.buf.clear();
            let mut limit = self.max;
            let mut asked = false;
            let mut long: Option<LongLine> = None;
            loop {
                let available = self.inner.fill_buf().await?;
                if available.is_empty() {
                    return Ok(None);
                }
                let (take, done) = match available.iter().position(|b| *b == b'\n') {
                    Some(i) => (i, true),
                    None => (available.len(), false),
                };
                let chunk = &available[..take];
                if let Some(l) = long.as_mut() {
                    l.skeleton.feed(chunk);
                } else if self.buf.len() + take > limit {
                    let mut sk = Skeleton::default();
                    sk.feed(&self.buf);
                    sk.feed(chunk);
                    if !asked {
                        asked = true;
                        if let Some(more) = extend(&sk).filter(|m| *m > limit) {
                            limit = more;
                        }
                    }
                    if self.buf.len() + take > limit {
                        let mut prefix = std::mem::take(&mut self.buf);
                        prefix.extend_from_slice(
                            &chunk[..take.min(LONG_LINE_PREFIX_BYTES.saturating_sub(prefix.len()))],
                        );
                        prefix.truncate(LONG_LINE_PREFIX_BYTES);
                        long = Some(LongLine {
                            bytes: 0,
                            limit,
                            prefix: String::from_utf8_lossy(&prefix).into_owned(),
                            skeleton: sk,
                        });
                    } else {
                        self.buf.extend_from_slice(chunk);
                    }
                } else {
                    self.buf.extend_from_slice(chunk);
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
    async fn splits_lines_drops_partial_tail_and_bounds_length() {
        let data: &[u8] = b"{\"a\":1}\n\n{\"b\":2}\npartial";
        let mut r = LineReader::new(tokio::io::BufReader::with_capacity(4, data), 100);
        assert_eq!(full(r.read_line().await).as_deref(), Some("{\"a\":1}"));
        assert_eq!(full(r.read_line().await).as_deref(), Some("{\"b\":2}"));
        assert!(r.read_line().await.unwrap().is_none());
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
        // An unterminated long line at the end is dropped like any partial line.
        let mut r = LineReader::new(tokio::io::BufReader::new(big.as_bytes()), 10);
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
