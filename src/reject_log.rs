//! Logging of input the node rejects (bad lines, wrong keys, unexpected replies):
//! every such message goes through [`reject!`](crate::reject), never straight to
//! `tracing::warn!`, because the input comes from outside and the log lands on
//! the data disk. Two bounds keep a hostile or broken sender from turning its
//! bytes into log bytes:
//!
//! - **truncated**: a message is cut to [`Config::rejected_log_excerpt_bytes`]
//!   (with its full length said), and control characters are escaped, so one
//!   100 MB line logs a few hundred bytes and cannot forge log lines;
//! - **rate-limited**: one token bucket per process
//!   ([`Config::rejected_log_per_s`], burst [`Config::rejected_log_burst`]);
//!   past it messages are counted, not formatted, and the next one logged is
//!   preceded by one line saying how many were suppressed.
//!
//! So a flood of garbage costs at most `per_s * (excerpt + ~100)` log bytes a
//! second; the node log's size cap (`TcpConfig::node_log_bytes_max`) bounds the
//! total.
//!
//! [`Config::rejected_log_excerpt_bytes`]: crate::config::Config::rejected_log_excerpt_bytes
//! [`Config::rejected_log_per_s`]: crate::config::Config::rejected_log_per_s
//! [`Config::rejected_log_burst`]: crate::config::Config::rejected_log_burst

use std::fmt::{self, Write as _};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Logs a rejected input at WARN, truncated and rate-limited; the arguments are
/// those of `format!` and are formatted only when the message is logged.
#[macro_export]
macro_rules! reject {
    ($($arg:tt)*) => {
        $crate::reject_log::rejected(::std::module_path!(), ::std::format_args!($($arg)*))
    };
}

/// The process's bucket.
static BUCKET: Mutex<Option<Bucket>> = Mutex::new(None);
/// Settings from [`configure`] (defaults until it is called).
static PER_S: AtomicU64 = AtomicU64::new(DEFAULT_PER_S);
static BURST: AtomicU64 = AtomicU64::new(DEFAULT_BURST);
static EXCERPT_BYTES: AtomicU64 = AtomicU64::new(DEFAULT_EXCERPT_BYTES as u64);

/// Defaults, mirrored by [`crate::config::Config::default`].
pub const DEFAULT_PER_S: u64 = 10;
/// See [`DEFAULT_PER_S`].
pub const DEFAULT_BURST: u64 = 50;
/// See [`DEFAULT_PER_S`].
pub const DEFAULT_EXCERPT_BYTES: usize = 200;

/// Sets the rate, burst and excerpt length (from [`crate::config::Config`]).
pub fn configure(per_s: u64, burst: u64, excerpt_bytes: usize) {
    PER_S.store(per_s, Ordering::Relaxed);
    BURST.store(burst, Ordering::Relaxed);
    EXCERPT_BYTES.store(excerpt_bytes as u64, Ordering::Relaxed);
    *BUCKET.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

/// What [`Bucket::take`] decided.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Log the message, after a line for this many suppressed ones (if any).
    Log { suppressed: u64 },
    /// Count it, do not log it.
    Suppress,
}

/// A token bucket that counts what it refuses.
#[derive(Debug)]
pub struct Bucket {
    /// Tokens per second.
    per_s: f64,
    /// Most tokens held.
    burst: f64,
    /// Tokens now.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    last: Instant,
    /// Messages refused since the last one logged.
    suppressed: u64,
}

impl Bucket {
    /// A full bucket.
    pub fn new(per_s: u64, burst: u64, now: Instant) -> Bucket {
        Bucket {
            per_s: per_s as f64,
            burst: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            last: now,
            suppressed: 0,
        }
    }

    /// Takes a token at `now` if there is one.
    pub fn take(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_s).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Verdict::Log {
                suppressed: std::mem::take(&mut self.suppressed),
            }
        } else {
            self.suppressed += 1;
            Verdict::Suppress
        }
    }
}

/// The body of [`reject!`]: `from` is the module that rejected the input.
pub fn rejected(from: &str, args: fmt::Arguments<'_>) {
    let verdict = {
        let mut bucket = BUCKET.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        bucket
            .get_or_insert_with(|| {
                Bucket::new(
                    PER_S.load(Ordering::Relaxed),
                    BURST.load(Ordering::Relaxed),
                    now,
                )
            })
            .take(now)
    };
    let Verdict::Log { suppressed } = verdict else {
        return;
    };
    if suppressed > 0 {
        tracing::warn!("{suppressed} more rejected-input messages were suppressed (rate limit)");
    }
    let cap = usize::try_from(EXCERPT_BYTES.load(Ordering::Relaxed)).unwrap_or(usize::MAX);
    tracing::warn!(from, "{}", excerpt(args, cap));
}

/// `text` from outside (a peer's error text, say) as it may be shown or logged:
/// cut to the configured excerpt length, control characters escaped.
pub fn cut(text: &str) -> String {
    let cap = usize::try_from(EXCERPT_BYTES.load(Ordering::Relaxed)).unwrap_or(usize::MAX);
    excerpt(format_args!("{text}"), cap)
}

/// `args` formatted, cut to `cap` bytes (at a character boundary) with the full
/// length appended when cut, control characters escaped.
pub fn excerpt(args: fmt::Arguments<'_>, cap: usize) -> String {
    let mut e = Excerpt {
        text: String::new(),
        total: 0,
        cap,
        cut: false,
    };
    let _ = e.write_fmt(args);
    if e.cut {
        let _ = write!(e.text, "... ({} bytes in all)", e.total);
    }
    e.text
}

/// A `fmt::Write` that keeps the first `cap` bytes and counts all of them.
struct Excerpt {
    /// What is kept (control characters escaped).
    text: String,
    /// Bytes written in all.
    total: usize,
    /// Most bytes kept.
    cap: usize,
    /// Whether something was left out.
    cut: bool,
}

impl fmt::Write for Excerpt {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.total += s.len();
        if self.cut {
            return Ok(());
        }
        for c in s.chars() {
            let fits = if c.is_control() {
                let escaped = c.escape_default().to_string();
                let fits = self.text.len() + escaped.len() <= self.cap;
                if fits {
                    self.text.push_str(&escaped);
                }
                fits
            } else {
                let fits = self.text.len() + c.len_utf8() <= self.cap;
                if fits {
                    self.text.push(c);
                }
                fits
            };
            if !fits {
                self.cut = true;
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_long_message_is_cut_and_says_its_length() {
        let line = "x".repeat(10_000_000);
        let e = excerpt(format_args!("bad line: {line}"), 200);
        assert!(e.len() < 250, "{} bytes", e.len());
        assert!(e.starts_with("bad line: xxx"), "{e}");
        assert!(e.ends_with("(10000010 bytes in all)"), "{e}");
        let short = excerpt(format_args!("bad line: {}", "ab"), 200);
        assert_eq!(short, "bad line: ab");
    }

    #[test]
    fn control_characters_are_escaped_so_no_log_line_is_forged() {
        let e = excerpt(format_args!("bad: {}", "a\r\nWARN fake\u{1b}[31m"), 200);
        assert!(!e.contains('\n') && !e.contains('\r') && !e.contains('\u{1b}'));
        assert!(e.contains("\\r\\nWARN fake\\u{1b}[31m"), "{e}");
        // Multi-byte characters are never split.
        let e = excerpt(format_args!("{}", "é".repeat(300)), 201);
        assert!(e.starts_with(&"é".repeat(100)) && !e.starts_with(&"é".repeat(101)));
    }

    #[test]
    fn the_bucket_allows_a_burst_then_its_rate_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, 5, t0);
        for _ in 0..5 {
            assert_eq!(b.take(t0), Verdict::Log { suppressed: 0 });
        }
        for _ in 0..1_000 {
            assert_eq!(b.take(t0), Verdict::Suppress);
        }
        // 0.1 s later one token is back; the message logged reports the count.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(b.take(t1), Verdict::Log { suppressed: 1_000 });
        assert_eq!(b.take(t1), Verdict::Suppress);
        // A long pause refills to the burst only.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..5 {
            assert!(matches!(b.take(t2), Verdict::Log { .. }));
        }
        assert_eq!(b.take(t2), Verdict::Suppress);
    }
}
