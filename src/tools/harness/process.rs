//! Node processes: spawn, `init`, stdin delivery, stdout parsing, kill, restart, stop.
//!
//! Each node has a delivery task (network queue -> stdin, one message written and
//! flushed at a time, alive across restarts) and, per incarnation, a stdout task
//! (stdout -> network). Stdout lines are checked against the envelope rules; a
//! violation is printed at once with the offending line and kept for `results.json`.
//! As under Maelstrom (its stdout thread logs such a line and its read loop ends
//! there), the node is not heard from again: its later lines are drained unread;
//! `--read-on-bad-lines` reads on instead. A line over the harness's own bounds is
//! dropped and reading goes on. Whether a violation makes the run invalid is the
//! report's business (`--strict-protocol`). A partial last line of a node the harness
//! is stopping or killing is not a violation.
//!
//! A node that exits while the harness has not stopped or killed it has crashed
//! (Maelstrom's `stop-node!` and `:node-crashed`): a poller looks at every node
//! process during the run ([`Cluster::crashed`]), and [`Cluster::stop`] looks again
//! before it stops them.
//!
//! It may not import the product: a node is any Maelstrom binary, reached only
//! through its stdin, stdout and signals.

use std::collections::VecDeque;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::client::{CallError, Client};
use super::net::{Net, SendError};

/// A failure to bring a node up.
#[derive(Debug, Error)]
pub enum ProcessError {
    /// The binary could not be started.
    #[error("cannot start {bin}: {source}")]
    Spawn {
        /// The binary.
        bin: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The node log file could not be created.
    #[error("cannot create {path}: {source}")]
    Log {
        /// The log path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `init` was not answered with `init_ok` in time.
    #[error("node {node} did not answer init: {why}")]
    Init {
        /// The node.
        node: String,
        /// What came back instead.
        why: String,
    },
    /// The node exited before answering `init`.
    #[error(transparent)]
    Crashed(#[from] NodeCrash),
}

/// A node process that exited while the harness had not stopped or killed it
/// (Maelstrom's `:node-crashed`): the run ends without a verdict.
#[derive(Debug, Clone, Error)]
pub struct NodeCrash {
    /// The node.
    pub node: String,
    /// Its exit status as Maelstrom (the JVM) reports it: the exit code, or 128 +
    /// the signal that ended it.
    pub status: i32,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Its last stdout lines, oldest first.
    pub stdout_tail: Vec<String>,
    /// Its last stderr lines, oldest first (from its log file).
    pub stderr_tail: Vec<String>,
    /// Its full stderr log.
    pub log: PathBuf,
}

impl fmt::Display for NodeCrash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "node {} crashed with exit status {}",
            self.node, self.status
        )?;
        if let Some(sig) = self.signal {
            write!(f, " (signal {sig})")?;
        }
        write!(
            f,
            ". Before crashing, it wrote to STDOUT:\n\n{}\n\nAnd to STDERR:\n\n{}\n\n\
             Full STDERR logs are available in {}",
            self.stdout_tail.join("\n"),
            self.stderr_tail.join("\n"),
            self.log.display()
        )
    }
}

/// The status number Maelstrom prints for `status`: the JVM's `exitValue`, which
/// is 128 + the signal for a process a signal ended.
fn status_number(status: ExitStatus) -> (i32, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => (code, None),
        (None, Some(sig)) => (128 + sig, Some(sig)),
        (None, None) => (-1, None),
    }
}

/// The last `lines` lines of the file at `path`, reading at most `bytes` from its end.
fn tail_lines(path: &Path, lines: usize, bytes: u64) -> Vec<String> {
    let Ok(mut f) = File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(bytes);
    if f.seek(SeekFrom::Start(from)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    if f.take(bytes).read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let mut all: Vec<&str> = text.lines().collect();
    if from > 0 && !all.is_empty() {
        all.remove(0); // cut by the byte bound
    }
    let skip = all.len().saturating_sub(lines);
    all[skip..].iter().map(|l| l.to_string()).collect()
}

pub use crate::tools::report::harness::Violation;

/// Protocol violations seen so far.
#[derive(Default)]
pub struct Violations {
    inner: Mutex<ViolationLog>,
    keep: usize,
}

#[derive(Default)]
struct ViolationLog {
    count: u64,
    kept: Vec<Violation>,
}

impl Violations {
    /// Keeps the first `keep` verbatim, counts all.
    pub fn new(keep: usize) -> Self {
        Violations {
            inner: Mutex::default(),
            keep,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ViolationLog> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn report(&self, node: &str, reason: String, line: &str) {
        let mut g = self.lock();
        g.count += 1;
        // The console gets as many as are kept: a node printing garbage in a
        // loop must not flood it (the count goes on).
        if g.count <= self.keep as u64 {
            crate::stderr_line!("\nPROTOCOL VIOLATION by {node}: {reason}\n    line: {line}");
        } else if g.count == self.keep as u64 + 1 {
            crate::stderr_line!(
                "\nPROTOCOL VIOLATIONS: more than {}; the rest are counted, not printed",
                self.keep
            );
        }
        if g.kept.len() < self.keep {
            g.kept.push(Violation {
                node: node.to_string(),
                reason,
                line: line.to_string(),
            });
        }
    }

    /// (total count, the ones kept).
    pub fn snapshot(&self) -> (u64, Vec<Violation>) {
        let g = self.lock();
        (g.count, g.kept.clone())
    }
}

/// Checks one stdout line against Maelstrom's message schema (`net.clj` `Message`):
/// an object with string `src` and `dest`, any `body`, an optional integer `id` (which
/// the network replaces), nothing else. `src` need not be the writing node: Maelstrom's
/// own demo nodes proxy a client's message unchanged; the caller checks it is known.
pub fn parse_envelope(line: &str) -> Result<(String, String, Value), String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
    let Value::Object(mut m) = v else {
        return Err("not a JSON object".into());
    };
    if let Some(k) = m
        .keys()
        .find(|k| !matches!(k.as_str(), "src" | "dest" | "body" | "id"))
    {
        return Err(format!(
            "extra top-level key {k:?} (only src, dest, body and id are allowed)"
        ));
    }
    if m.get("id").is_some_and(|id| !(id.is_u64() || id.is_i64())) {
        return Err("id must be an integer".into());
    }
    let field =
        |m: &mut Map<String, Value>, k: &str| m.remove(k).ok_or_else(|| format!("missing {k:?}"));
    let src = field(&mut m, "src")?;
    let dest = field(&mut m, "dest")?;
    let body = field(&mut m, "body")?;
    let (Value::String(src), Value::String(dest)) = (src, dest) else {
        return Err("src and dest must be strings".into());
    };
    Ok((src, dest, body))
}

/// Allocates client ids `c0, c1, ...` across the whole run.
#[derive(Default)]
pub struct ClientIds(AtomicU64);

impl ClientIds {
    /// The next client id.
    pub fn next(&self) -> String {
        format!("c{}", self.0.fetch_add(1, Ordering::Relaxed))
    }
}

/// How to run nodes.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// The node binary.
    pub bin: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Where `<id>.log` files go.
    pub log_dir: PathBuf,
    /// `init_ok` deadline.
    pub init_timeout: Duration,
    /// Grace between closing stdin and SIGKILL at the end.
    pub stop_grace: Duration,
    /// How often every node process is looked at for an exit nobody caused.
    pub crash_poll_period: Duration,
    /// Lines of stdout and of stderr a crash report shows.
    pub crash_tail_lines: usize,
    /// Longest line kept for a crash report (longer ones are cut).
    pub crash_tail_line_chars: usize,
    /// Longest stdout line kept, newline included (`Limits::node_line_bytes_max`).
    pub line_bytes_max: usize,
    /// Copy each stderr line of the nodes to the harness's stderr (`--log-stderr`).
    pub log_stderr: bool,
    /// Read on after a bad stdout line (beyond Maelstrom, which stops there).
    pub read_on_bad_lines: bool,
}

/// One node slot: the current incarnation's pipes, and its tasks.
struct Slot {
    id: String,
    /// Running and not being stopped or killed by the harness: an exit now is a crash.
    up: AtomicBool,
    stdin: tokio::sync::Mutex<Option<BufWriter<ChildStdin>>>,
    child: tokio::sync::Mutex<Option<Child>>,
    reader: Mutex<Option<JoinHandle<()>>>,
    /// The current incarnation's last stdout lines, for a crash report.
    stdout_tail: Mutex<VecDeque<String>>,
}

/// What a stdout reader shares with its cluster.
#[derive(Clone)]
struct ReadCtx {
    net: Arc<Net>,
    violations: Arc<Violations>,
    tail_lines: usize,
    tail_line_chars: usize,
    line_bytes_max: usize,
    read_on_bad_lines: bool,
}

/// The running nodes.
pub struct Cluster {
    cfg: ProcessConfig,
    net: Arc<Net>,
    violations: Arc<Violations>,
    client_ids: Arc<ClientIds>,
    slots: Vec<Arc<Slot>>,
    deliverers: Vec<JoinHandle<()>>,
    /// The first crash the poller saw.
    crash: watch::Receiver<Option<NodeCrash>>,
    crash_tx: watch::Sender<Option<NodeCrash>>,
    poller: Mutex<Option<JoinHandle<()>>>,
}

impl Cluster {
    /// Spawns every node of `net`, then sends each its `init` (concurrently) from client
    /// ids c0..c(N-1). Once all are up, a poller watches for crashes.
    pub async fn start(
        cfg: ProcessConfig,
        net: Arc<Net>,
        violations: Arc<Violations>,
        client_ids: Arc<ClientIds>,
    ) -> Result<Arc<Cluster>, ProcessError> {
        let slots: Vec<Arc<Slot>> = net
            .nodes()
            .iter()
            .map(|id| {
                Arc::new(Slot {
                    id: id.clone(),
                    up: AtomicBool::new(false),
                    stdin: tokio::sync::Mutex::new(None),
                    child: tokio::sync::Mutex::new(None),
                    reader: Mutex::new(None),
                    stdout_tail: Mutex::new(VecDeque::new()),
                })
            })
            .collect();
        let deliverers = slots
            .iter()
            .enumerate()
            .map(|(i, s)| tokio::spawn(deliver(net.clone(), i, s.clone())))
            .collect();
        let (crash_tx, crash) = watch::channel(None);
        let cluster = Arc::new(Cluster {
            cfg,
            net,
            violations,
            client_ids,
            slots,
            deliverers,
            crash,
            crash_tx,
            poller: Mutex::new(None),
        });
        let started = cluster.start_all().await;
        if started.is_err() {
            cluster.stop().await;
        }
        started?;
        let poller = tokio::spawn(poll_crashes(cluster.clone()));
        *cluster.poller.lock().unwrap_or_else(|e| e.into_inner()) = Some(poller);
        Ok(cluster)
    }

    async fn start_all(&self) -> Result<(), ProcessError> {
        for i in 0..self.slots.len() {
            self.spawn(i).await?;
        }
        let clients: Vec<String> = (0..self.slots.len())
            .map(|_| self.client_ids.next())
            .collect();
        let inits = clients
            .into_iter()
            .enumerate()
            .map(|(i, c)| self.init(i, c));
        for r in futures::future::join_all(inits).await {
            r?;
        }
        Ok(())
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.cfg.log_dir.join(format!("{}.log", self.slots[i].id))
    }

    fn read_ctx(&self) -> ReadCtx {
        ReadCtx {
            net: self.net.clone(),
            violations: self.violations.clone(),
            tail_lines: self.cfg.crash_tail_lines,
            tail_line_chars: self.cfg.crash_tail_line_chars,
            line_bytes_max: self.cfg.line_bytes_max,
            read_on_bad_lines: self.cfg.read_on_bad_lines,
        }
    }

    async fn spawn(&self, i: usize) -> Result<(), ProcessError> {
        let path = self.log_path(i);
        let log = open_log(&path)?;
        let stderr = if self.cfg.log_stderr {
            Stdio::piped()
        } else {
            Stdio::from(log.try_clone().map_err(|source| ProcessError::Log {
                path: path.clone(),
                source,
            })?)
        };
        let mut child = Command::new(&self.cfg.bin)
            .args(&self.cfg.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ProcessError::Spawn {
                bin: self.cfg.bin.clone(),
                source,
            })?;
        let slot = &self.slots[i];
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
        if let Some(err) = child.stderr.take() {
            tokio::spawn(copy_stderr(err, slot.id.clone(), log));
        }
        slot.stdout_tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        *slot.stdin.lock().await = stdin.map(BufWriter::new);
        *slot.child.lock().await = Some(child);
        if let Some(stdout) = stdout {
            let task = tokio::spawn(read_stdout(stdout, slot.clone(), self.read_ctx()));
            if let Some(old) = slot
                .reader
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .replace(task)
            {
                old.abort();
            }
        }
        slot.up.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Sends `init` and awaits `init_ok`. As Maelstrom (`db.clj`), only the reply's
    /// type is checked: any other key is fine.
    async fn init(&self, i: usize, client_id: String) -> Result<(), ProcessError> {
        let node = self.slots[i].id.clone();
        let mut client = Client::open(self.net.clone(), client_id);
        let mut body = Map::new();
        body.insert("type".into(), "init".into());
        body.insert("node_id".into(), Value::from(node.as_str()));
        body.insert("node_ids".into(), Value::from(self.net.nodes().to_vec()));
        let why = match client.call(&node, body, self.cfg.init_timeout).await {
            Ok(reply) => match reply.get("type").and_then(Value::as_str) {
                Some("init_ok") => return Ok(()),
                Some("error") => format!(
                    "error {}: {}",
                    reply.get("code").unwrap_or(&Value::Null),
                    reply.get("text").and_then(Value::as_str).unwrap_or("")
                ),
                _ => format!("expected an init_ok message, but the node responded with {reply}"),
            },
            Err(CallError::Timeout) => format!("no init_ok within {:?}", self.cfg.init_timeout),
            Err(CallError::Refused(e)) => e.to_string(),
        };
        if let Some(crash) = self.exited(i).await {
            return Err(ProcessError::Crashed(crash));
        }
        Err(ProcessError::Init { node, why })
    }

    /// If node `i` is up as far as the harness knows but its process has exited: the
    /// crash, with its last output.
    async fn exited(&self, i: usize) -> Option<NodeCrash> {
        let slot = &self.slots[i];
        if !slot.up.load(Ordering::SeqCst) {
            return None;
        }
        let status = {
            let mut child = slot.child.lock().await;
            child.as_mut()?.try_wait().ok()??
        };
        // The harness may have begun to stop or kill it meanwhile (closing stdin
        // first): then the exit is the harness's doing.
        if !slot.up.load(Ordering::SeqCst) {
            return None;
        }
        let (status, signal) = status_number(status);
        let stdout_tail = slot
            .stdout_tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        let log = self.log_path(i);
        let bytes = (self.cfg.crash_tail_lines * self.cfg.crash_tail_line_chars) as u64;
        Some(NodeCrash {
            node: slot.id.clone(),
            status,
            signal,
            stdout_tail,
            stderr_tail: tail_lines(&log, self.cfg.crash_tail_lines, bytes),
            log,
        })
    }

    /// Resolves when the poller has seen a node crash (never, if none does).
    pub async fn crashed(&self) -> NodeCrash {
        let mut rx = self.crash.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(c) => c.clone().unwrap_or_else(|| unreachable!("waited for Some")),
            Err(_) => std::future::pending().await,
        }
    }

    /// SIGKILLs node `i` (beyond Maelstrom). Messages due while it is down are lost.
    pub async fn kill(&self, i: usize) {
        let slot = &self.slots[i];
        slot.up.store(false, Ordering::SeqCst);
        *slot.stdin.lock().await = None;
        if let Some(mut child) = slot.child.lock().await.take() {
            let _ = child.kill().await;
        }
    }

    /// Restarts node `i` as a fresh process and sends it `init` from a new client id.
    pub async fn restart(&self, i: usize) -> Result<(), ProcessError> {
        self.kill(i).await;
        self.spawn(i).await?;
        self.init(i, self.client_ids.next()).await
    }

    /// Whether node `i` is running.
    pub fn is_up(&self, i: usize) -> bool {
        self.slots[i].up.load(Ordering::SeqCst)
    }

    /// Ends every node: first looks for one that already exited (a crash, as
    /// Maelstrom's `stop-node!` does), then closes stdin, waits up to the grace
    /// period, then SIGKILLs. Returns the first crash seen during the run or now.
    /// Idempotent.
    pub async fn stop(&self) -> Option<NodeCrash> {
        if let Some(p) = self.poller.lock().unwrap_or_else(|e| e.into_inner()).take() {
            p.abort();
        }
        for d in &self.deliverers {
            d.abort();
        }
        let mut crash = self.crash.borrow().clone();
        for i in 0..self.slots.len() {
            if crash.is_none() {
                crash = self.exited(i).await;
            }
        }
        for slot in &self.slots {
            slot.up.store(false, Ordering::SeqCst);
            *slot.stdin.lock().await = None;
        }
        let deadline = Instant::now() + self.cfg.stop_grace;
        for slot in &self.slots {
            if let Some(mut child) = slot.child.lock().await.take() {
                let left = deadline.saturating_duration_since(Instant::now());
                if tokio::time::timeout(left, child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
            }
            if let Some(r) = slot.reader.lock().unwrap_or_else(|e| e.into_inner()).take() {
                r.abort();
            }
        }
        crash
    }
}

/// Looks at every node process each period; publishes the first crash and ends.
async fn poll_crashes(cluster: Arc<Cluster>) {
    loop {
        tokio::time::sleep(cluster.cfg.crash_poll_period).await;
        for i in 0..cluster.slots.len() {
            if let Some(crash) = cluster.exited(i).await {
                crate::stderr_line!(
                    "\nnode {} exited (status {}): ending the run",
                    crash.node,
                    crash.status
                );
                let _ = cluster.crash_tx.send(Some(crash));
                return;
            }
        }
    }
}

fn open_log(path: &Path) -> Result<File, ProcessError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| ProcessError::Log {
            path: path.to_path_buf(),
            source,
        })
}

/// `--log-stderr`: copies a node's stderr lines to its log file and to the
/// harness's stderr, until the node closes it.
async fn copy_stderr(err: ChildStderr, node: String, mut log: File) {
    let mut lines = BufReader::new(err).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        crate::stderr_line!("{node} stderr: {line}");
        let _ = writeln!(log, "{line}");
    }
}

/// Writes `lines` to `w` one message at a time, each followed by a newline and a
/// flush, as Maelstrom's stdin thread does.
async fn write_messages<W: AsyncWrite + Unpin>(w: &mut W, lines: &[String]) -> std::io::Result<()> {
    for line in lines {
        w.write_all(line.as_bytes()).await?;
        w.write_all(b"\n").await?;
        w.flush().await?;
    }
    Ok(())
}

/// Moves due messages from the network into node `i`'s stdin, for the whole run.
async fn deliver(net: Arc<Net>, i: usize, slot: Arc<Slot>) {
    let notify = net.notifier(i);
    loop {
        let due = net.take_due(i, Instant::now(), slot.up.load(Ordering::SeqCst));
        if !due.lines.is_empty() {
            let mut stdin = slot.stdin.lock().await;
            if let Some(w) = stdin.as_mut()
                && let Err(e) = write_messages(w, &due.lines).await
            {
                // Loud: a node that closed its stdin or exited loses messages; the
                // crash poller reports an exit.
                if slot.up.load(Ordering::SeqCst) {
                    crate::stderr_line!(
                        "\n{}: writing to its stdin failed ({e}); messages to it are lost until it is restarted",
                        slot.id
                    );
                }
                *stdin = None;
            }
        }
        let sleep = due.next.map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = notify.notified() => {}
            _ = async { match sleep { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {}
        }
    }
}

/// Keeps `line` (cut to `chars`) among the last `lines` of `tail`.
fn remember(tail: &Mutex<VecDeque<String>>, line: &str, lines: usize, chars: usize) {
    if lines == 0 {
        return;
    }
    let kept: String = line.chars().take(chars).collect();
    let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
    if t.len() >= lines {
        t.pop_front();
    }
    t.push_back(kept);
}

/// What [`read_line_bounded`] found.
#[derive(Debug, PartialEq)]
enum LineRead {
    /// End of stream, nothing read.
    End,
    /// A line (newline kept, if it had one) is in the buffer.
    Line,
    /// A line of this many bytes (newline included) was longer than the limit: it
    /// was consumed, and none of it kept.
    TooLong(u64),
}

/// Reads one line into `buf`, keeping at most `max` bytes: a longer line is read to
/// its newline (or the end of the stream) and dropped. `read_until` alone would
/// hold a line of any length, so a node writing without newlines could grow the
/// harness without bound; no tokio or std reader caps a line while skipping the rest.
async fn read_line_bounded<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<LineRead> {
    let mut total: u64 = 0;
    loop {
        let avail = reader.fill_buf().await?;
        if avail.is_empty() {
            return Ok(match total {
                0 => LineRead::End,
                t if t > max as u64 => LineRead::TooLong(t),
                _ => LineRead::Line,
            });
        }
        let (n, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (avail.len(), false),
        };
        total += n as u64;
        if total <= max as u64 {
            buf.extend_from_slice(&avail[..n]);
        } else {
            buf.clear();
        }
        reader.consume(n);
        if done {
            return Ok(if total > max as u64 {
                LineRead::TooLong(total)
            } else {
                LineRead::Line
            });
        }
    }
}

/// Reads one incarnation's stdout, line by line, into the network.
async fn read_stdout(stdout: ChildStdout, slot: Arc<Slot>, ctx: ReadCtx) {
    let me = slot.id.as_str();
    let mut reader = BufReader::new(stdout);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match read_line_bounded(&mut reader, &mut buf, ctx.line_bytes_max).await {
            Ok(LineRead::End) | Err(_) => return,
            Ok(LineRead::Line) => {}
            Ok(LineRead::TooLong(len)) => {
                let reason = format!(
                    "a line of {len} bytes, longer than the {} the harness reads \
                     (node_line_bytes_max); dropped unread",
                    ctx.line_bytes_max
                );
                ctx.violations.report(me, reason, "");
                continue;
            }
        }
        let text = String::from_utf8_lossy(&buf);
        let complete = text.ends_with('\n');
        let line = text.trim_end_matches(['\n', '\r']);
        if !complete && !slot.up.load(Ordering::SeqCst) {
            // Cut short by the harness stopping or killing the node.
            return;
        }
        remember(&slot.stdout_tail, line, ctx.tail_lines, ctx.tail_line_chars);
        // (reason, whether Maelstrom's stdout thread stops at it: a line it
        // cannot parse or send, not a bound of the harness's own.)
        let violation = match parse_envelope(line) {
            Ok((src, _, _)) if !ctx.net.knows(&src) => Some((format!("unknown src {src:?}"), true)),
            Ok((src, dest, body)) => match ctx.net.send(Instant::now(), &src, &dest, &body) {
                Ok(()) => None,
                Err(SendError::UnknownDest(d)) => Some((format!("unknown dest {d:?}"), true)),
                Err(SendError::QueueFull(d)) => Some((format!("queue for {d} is full"), false)),
            },
            Err(reason) => Some((reason, true)),
        };
        match violation {
            None => {}
            Some((reason, stops)) if stops && !ctx.read_on_bad_lines => {
                let reason = format!(
                    "{reason}; {me} is not read any further (Maelstrom's stdout thread \
                     stops at such a line; --read-on-bad-lines reads on)"
                );
                ctx.violations.report(me, reason, line);
                drain(&mut reader, &mut buf, ctx.line_bytes_max).await;
                return;
            }
            Some((reason, _)) => ctx.violations.report(me, reason, line),
        }
    }
}

/// Reads a node's stdout to its end, dropping every line: a node no longer
/// heard from, as under Maelstrom, yet never blocked on a full pipe.
async fn drain(reader: &mut BufReader<ChildStdout>, buf: &mut Vec<u8>, line_bytes_max: usize) {
    loop {
        buf.clear();
        match read_line_bounded(reader, buf, line_bytes_max).await {
            Ok(LineRead::End) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_line_longer_than_the_limit_is_skipped_whole_and_reading_goes_on() {
        let long = "x".repeat(100);
        let input = format!("short\n{long}\nnext\ncut");
        // A small inner buffer, so the long line spans several fills.
        let mut r = tokio::io::BufReader::with_capacity(7, input.as_bytes());
        let mut buf = Vec::new();
        let mut seen = Vec::new();
        loop {
            buf.clear();
            match read_line_bounded(&mut r, &mut buf, 10)
                .await
                .expect("reads")
            {
                LineRead::End => break,
                LineRead::Line => seen.push(String::from_utf8_lossy(&buf).into_owned()),
                LineRead::TooLong(n) => {
                    assert!(buf.is_empty(), "nothing of a long line is kept");
                    seen.push(format!("too long: {n}"));
                }
            }
        }
        assert_eq!(seen, ["short\n", "too long: 101", "next\n", "cut"]);
        // A line of exactly the limit, newline included, is kept.
        let mut r = tokio::io::BufReader::with_capacity(3, "123456789\n".as_bytes());
        buf.clear();
        assert_eq!(
            read_line_bounded(&mut r, &mut buf, 10)
                .await
                .expect("reads"),
            LineRead::Line
        );
        assert_eq!(buf, b"123456789\n");
        // A huge line without a newline at the end of the stream is reported, not kept.
        let huge = vec![b'y'; 1 << 16];
        let mut r = tokio::io::BufReader::new(&huge[..]);
        buf.clear();
        assert_eq!(
            read_line_bounded(&mut r, &mut buf, 10)
                .await
                .expect("reads"),
            LineRead::TooLong(1 << 16)
        );
        assert!(buf.is_empty());
    }
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A writer that records what each flush pushed out.
    #[derive(Default)]
    struct Flushes {
        pending: Vec<u8>,
        flushed: Vec<String>,
    }

    impl AsyncWrite for Flushes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.pending.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            let chunk = String::from_utf8(std::mem::take(&mut self.pending)).unwrap();
            self.flushed.push(chunk);
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn due_messages_are_written_and_flushed_one_at_a_time() {
        let mut w = Flushes::default();
        let lines = vec!["{\"id\":1}".to_string(), "{\"id\":2}".to_string()];
        write_messages(&mut w, &lines).await.unwrap();
        assert_eq!(w.flushed, ["{\"id\":1}\n", "{\"id\":2}\n"]);
    }

    #[test]
    fn a_crash_report_reads_like_maelstroms() {
        let dir = std::env::temp_dir().join(format!("oncekv-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("n2.log");
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&log, text).unwrap();
        let tail = tail_lines(&log, 3, 1000);
        assert_eq!(tail, ["line 97", "line 98", "line 99"]);
        // The byte bound cuts the first, partial, line.
        assert_eq!(tail_lines(&log, 100, 10), ["line 99"]);
        let crash = NodeCrash {
            node: "n2".into(),
            status: 137,
            signal: Some(9),
            stdout_tail: vec!["{\"src\":\"n2\"}".into()],
            stderr_tail: tail,
            log: log.clone(),
        };
        let text = crash.to_string();
        assert!(
            text.starts_with("node n2 crashed with exit status 137 (signal 9). Before crashing"),
            "{text}"
        );
        assert!(
            text.contains("line 99") && text.contains("n2.log"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn signals_count_as_128_plus_the_signal_as_on_the_jvm() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status_number(ExitStatus::from_raw(3 << 8)), (3, None));
        assert_eq!(status_number(ExitStatus::from_raw(9)), (137, Some(9)));
    }

    #[test]
    fn envelope_rules_follow_maelstroms_message_schema() {
        let ok = parse_envelope(r#"{"src":"n0","dest":"c1","body":{"type":"x"}}"#).unwrap();
        assert_eq!(ok.1, "c1");
        // Maelstrom's demo raft.py proxies a client's message verbatim, id included.
        let proxied =
            parse_envelope(r#"{"id":876,"src":"c5","dest":"n0","body":{"type":"read"}}"#).unwrap();
        assert_eq!(proxied.0, "c5");
        let bad = [
            ("not json", "not JSON"),
            (r#"[1]"#, "not a JSON object"),
            (
                r#"{"src":"n0","dest":"c1","body":{},"leader":3}"#,
                "extra top-level key \"leader\"",
            ),
            (
                r#"{"src":"n0","dest":"c1","body":{},"id":"x"}"#,
                "id must be an integer",
            ),
            (r#"{"src":"n0","body":{}}"#, "missing \"dest\""),
            (r#"{"src":"n0","dest":7,"body":{}}"#, "must be strings"),
        ];
        for (line, why) in bad {
            let e = parse_envelope(line).unwrap_err();
            assert!(e.contains(why), "{line}: {e}");
        }
    }
}
