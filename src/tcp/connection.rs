//! Framing: one JSON envelope `{src, dest, body}` per `\n`-terminated line, exactly
//! as Maelstrom mode reads stdin and writes stdout. A line longer than the limit is
//! an error that closes the connection (there is no cheap way to resynchronise);
//! an unterminated line at end of stream is discarded, so a writer that died
//! mid-line never delivers half a message.

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

/// Why a line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer sent more than the limit without a newline.
    #[error("line longer than {0} bytes")]
    TooLong(usize),
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads newline-terminated lines of at most `max` bytes.
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

    /// The next non-empty line without its newline; `None` at end of stream.
    pub async fn read_line(&mut self) -> Result<Option<String>, FrameError> {
        loop {
            self.buf.clear();
            loop {
                let available = self.inner.fill_buf().await?;
                if available.is_empty() {
                    return Ok(None);
                }
                let (take, done) = match available.iter().position(|b| *b == b'\n') {
                    Some(i) => (i, true),
                    None => (available.len(), false),
                };
                if self.buf.len() + take > self.max {
                    return Err(FrameError::TooLong(self.max));
                }
                self.buf.extend_from_slice(&available[..take]);
                self.inner.consume(take + usize::from(done));
                if done {
                    break;
                }
            }
            let line = String::from_utf8_lossy(&self.buf);
            let line = line.trim();
            if !line.is_empty() {
                return Ok(Some(line.to_string()));
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
        assert_eq!(r.read_line().await.unwrap().as_deref(), Some("{\"a\":1}"));
        assert_eq!(r.read_line().await.unwrap().as_deref(), Some("{\"b\":2}"));
        assert_eq!(r.read_line().await.unwrap(), None);
        let long: &[u8] = b"0123456789\n";
        let mut r = LineReader::new(tokio::io::BufReader::with_capacity(4, long), 5);
        assert!(matches!(r.read_line().await, Err(FrameError::TooLong(5))));
    }
}
