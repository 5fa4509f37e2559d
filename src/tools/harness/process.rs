//! Node processes: spawn, `init`, stdin delivery, stdout parsing, kill, restart, stop.
//!
//! Each node has a delivery task (network queue -> stdin, alive across restarts) and,
//! per incarnation, a stdout task (stdout -> network). Stdout lines are checked against
//! the envelope rules; a violation is printed at once with the offending line and kept
//! for `results.json` (Maelstrom would silently stop reading that node).
//!
//! It may not import the product: a node is any Maelstrom binary, reached only
//! through its stdin, stdout and signals.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

use super::client::{CallError, Client};
use super::net::{Net, SendError};
use super::schema::{Reply, classify};

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
}

pub use crate::tools::report::harness::Violation;

/// Protocol violations seen so far.
#[derive(Default)]
pub struct Violations {
    inner: Mutex<(u64, Vec<Violation>)>,
    keep: usize,
}

impl Violations {
    /// Keeps the first `keep` verbatim, counts all.
    pub fn new(keep: usize) -> Self {
        Violations {
            inner: Mutex::default(),
            keep,
        }
    }

    fn report(&self, node: &str, reason: String, line: &str) {
        eprintln!("\nPROTOCOL VIOLATION by {node}: {reason}\n    line: {line}");
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.0 += 1;
        if g.1.len() < self.keep {
            g.1.push(Violation {
                node: node.to_string(),
                reason,
                line: line.to_string(),
            });
        }
    }

    /// (total count, the ones kept).
    pub fn snapshot(&self) -> (u64, Vec<Violation>) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
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
}

/// One node slot: the current incarnation's pipes, and its tasks.
struct Slot {
    id: String,
    up: AtomicBool,
    stdin: tokio::sync::Mutex<Option<BufWriter<ChildStdin>>>,
    child: tokio::sync::Mutex<Option<Child>>,
    reader: Mutex<Option<JoinHandle<()>>>,
}

/// The running nodes.
pub struct Cluster {
    cfg: ProcessConfig,
    net: Arc<Net>,
    violations: Arc<Violations>,
    client_ids: Arc<ClientIds>,
    slots: Vec<Arc<Slot>>,
    deliverers: Vec<JoinHandle<()>>,
}

impl Cluster {
    /// Spawns every node of `net`, then sends each its `init` (concurrently) from client
    /// ids c0..c(N-1).
    pub async fn start(
        cfg: ProcessConfig,
        net: Arc<Net>,
        violations: Arc<Violations>,
        client_ids: Arc<ClientIds>,
    ) -> Result<Cluster, ProcessError> {
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
                })
            })
            .collect();
        let deliverers = slots
            .iter()
            .enumerate()
            .map(|(i, s)| tokio::spawn(deliver(net.clone(), i, s.clone())))
            .collect();
        let cluster = Cluster {
            cfg,
            net,
            violations,
            client_ids,
            slots,
            deliverers,
        };
        for i in 0..cluster.slots.len() {
            cluster.spawn(i).await?;
        }
        let clients: Vec<String> = (0..cluster.slots.len())
            .map(|_| cluster.client_ids.next())
            .collect();
        let inits = clients
            .into_iter()
            .enumerate()
            .map(|(i, c)| cluster.init(i, c));
        for r in futures::future::join_all(inits).await {
            r?;
        }
        Ok(cluster)
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.cfg.log_dir.join(format!("{}.log", self.slots[i].id))
    }

    async fn spawn(&self, i: usize) -> Result<(), ProcessError> {
        let path = self.log_path(i);
        let log = open_log(&path)?;
        let mut child = Command::new(&self.cfg.bin)
            .args(&self.cfg.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ProcessError::Spawn {
                bin: self.cfg.bin.clone(),
                source,
            })?;
        let slot = &self.slots[i];
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
        *slot.stdin.lock().await = stdin.map(BufWriter::new);
        *slot.child.lock().await = Some(child);
        if let Some(stdout) = stdout {
            let task = tokio::spawn(read_stdout(
                stdout,
                slot.id.clone(),
                self.net.clone(),
                self.violations.clone(),
            ));
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

    async fn init(&self, i: usize, client_id: String) -> Result<(), ProcessError> {
        let node = self.slots[i].id.clone();
        let mut client = Client::open(self.net.clone(), client_id);
        let mut body = Map::new();
        body.insert("type".into(), "init".into());
        body.insert("node_id".into(), Value::from(node.as_str()));
        body.insert("node_ids".into(), Value::from(self.net.nodes().to_vec()));
        let why = match client.call(&node, body, self.cfg.init_timeout).await {
            Ok(reply) => match classify("init", &reply) {
                Reply::Ok(_) => return Ok(()),
                Reply::Error { code, text, .. } => format!("error {code}: {text}"),
                Reply::Malformed(why) => format!("malformed reply {reply}: {why}"),
            },
            Err(CallError::Timeout) => format!("no init_ok within {:?}", self.cfg.init_timeout),
            Err(CallError::Refused(e)) => e.to_string(),
        };
        Err(ProcessError::Init { node, why })
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

    /// Ends every node: close stdin, wait up to the grace period, then SIGKILL.
    pub async fn stop(self) {
        for d in &self.deliverers {
            d.abort();
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

/// Moves due messages from the network into node `i`'s stdin, for the whole run.
async fn deliver(net: Arc<Net>, i: usize, slot: Arc<Slot>) {
    let notify = net.notifier(i);
    loop {
        let due = net.take_due(i, Instant::now(), slot.up.load(Ordering::SeqCst));
        if !due.lines.is_empty() {
            let mut stdin = slot.stdin.lock().await;
            if let Some(w) = stdin.as_mut() {
                let mut ok = true;
                for line in &due.lines {
                    ok = ok
                        && w.write_all(line.as_bytes()).await.is_ok()
                        && w.write_all(b"\n").await.is_ok();
                }
                if !(ok && w.flush().await.is_ok()) {
                    // The process is gone; its exit shows in the log and in timeouts.
                    *stdin = None;
                }
            }
        }
        let sleep = due.next.map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = notify.notified() => {}
            _ = async { match sleep { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {}
        }
    }
}

/// Reads one incarnation's stdout, line by line, into the network.
async fn read_stdout(stdout: ChildStdout, me: String, net: Arc<Net>, violations: Arc<Violations>) {
    let mut reader = BufReader::new(stdout);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&buf);
        let line = text.trim_end_matches(['\n', '\r']);
        match parse_envelope(line) {
            Ok((src, _, _)) if !net.knows(&src) => {
                violations.report(&me, format!("unknown src {src:?}"), line)
            }
            Ok((src, dest, body)) => match net.send(Instant::now(), &src, &dest, &body) {
                Ok(()) => {}
                Err(SendError::UnknownDest(d)) => {
                    violations.report(&me, format!("unknown dest {d:?}"), line)
                }
                Err(SendError::QueueFull(d)) => {
                    violations.report(&me, format!("queue for {d} is full"), line)
                }
            },
            Err(reason) => violations.report(&me, reason, line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
