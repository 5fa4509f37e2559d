//! `oncekv cluster`: N `oncekv serve` processes on loopback, from this binary, under
//! supervision. Node `nI` listens on `base_port + I - 1`, keeps its files in
//! `DATA_DIR/nI/` (its log in `node.log`, anything else it writes to stderr
//! appended to `stderr.log`, after a line naming the start time). Before starting
//! anything it refuses a data dir in use (a node's log lock held), ports in use, and
//! a data dir that is, or is inside, a node's data dir. The banner is printed once
//! every node answers `status` from its own process; a node that exits or does not
//! serve during start-up fails the command (the others are stopped). Afterwards a
//! node's exit is printed at once with its status and its logs' last lines, and
//! leader changes as they happen (`status` polled). Ctrl-C (or SIGTERM) stops them
//! all: each gets SIGINT's graceful stop via the terminal's process group, or
//! SIGTERM, and whatever is left after a grace period is killed. The nodes share
//! a cluster key (`docs/cluster.md`), kept in `DATA_DIR/cluster.key` and passed
//! as `--cluster-key-file`; the banner (and a node's exit report) prints the
//! command that restarts a node by hand as it was started.
//!
//! Owns the child processes' supervision and what is printed about them. May not
//! touch: serving (the children are separate `oncekv serve` processes, reached only
//! by signals, their files and `status` over TCP), nor stdout other than the output
//! handed in.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::{mpsc, oneshot};

use crate::tcp::{self, Client, ClientOptions, TcpError, serve};

/// Arguments of `oncekv cluster`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Number of nodes (n1..nN).
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// Directory holding one subdirectory per node.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Port of n1; nI listens on base_port + I - 1.
    #[arg(long, default_value_t = 7001)]
    pub base_port: u16,
    /// Host to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Seconds each node may take to start serving (answer `status`) before the
    /// cluster gives up and stops them all (opening a large data dir takes a while).
    #[arg(long, default_value_t = 60)]
    pub start_timeout_s: u64,
}

/// The cluster's key file, `DATA_DIR/cluster.key`, which every node is started
/// with (`--cluster-key-file`): the one kept there (checked as `serve` checks
/// it), else a new one holding [`tcp::CLUSTER_KEY_VAR`] if set, else a random
/// 128-bit key (written readable by the owner only). A key in the variable
/// that differs from the file's is refused: the nodes would not get it.
fn cluster_key_file(data_dir: &Path) -> Result<PathBuf, TcpError> {
    let file = data_dir.join(serve::CLUSTER_KEY_FILE);
    let from_env = tcp::cluster_key_from_env();
    // Checked before anything is written: a bad key is refused, not kept.
    if let Some(key) = &from_env
        && let Err(why) = tcp::check_cluster_key(key)
    {
        return Err(TcpError::Args(format!("{} {why}", tcp::CLUSTER_KEY_VAR)));
    }
    if file.exists() {
        let kept = tcp::read_cluster_key_file(&file)?;
        if from_env.as_ref().is_some_and(|k| *k != kept) {
            return Err(TcpError::Args(format!(
                "{} differs from the key in {}, which this cluster's nodes use: unset it, \
                 or remove the file to start the cluster with a new key",
                tcp::CLUSTER_KEY_VAR,
                file.display()
            )));
        }
        return Ok(file);
    }
    let key: String = match from_env {
        Some(k) => k.to_string(),
        None => (0..16)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect(),
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let written = opts
        .open(&file)
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{key}\n").as_bytes()));
    written.map_err(|source| TcpError::File {
        what: "cluster key file",
        path: file.clone(),
        source,
    })?;
    // What the nodes will read: the same checks, now rather than at each start.
    tcp::read_cluster_key_file(&file)?;
    Ok(file)
}

/// `word` as one shell word: as is if it holds only characters no shell treats
/// specially, else in single quotes.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./:=,@%+-".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// How to name this binary in a command to copy: `oncekv` if it was run by
/// that name from `PATH`, else its absolute path.
fn exe_for_commands() -> std::io::Result<String> {
    let argv0 = std::env::args().next().unwrap_or_default();
    if !argv0.is_empty() && !argv0.contains('/') {
        return Ok(argv0);
    }
    Ok(std::env::current_exe()?.display().to_string())
}

/// How long nodes get to stop on their own before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often the supervisor asks the nodes for their status (leader changes).
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Lines of a node's logs shown when it exits.
const TAIL_LINES: usize = 12;
/// Bytes read from the end of a log for its tail (bounds the work on a big log).
const TAIL_BYTES: u64 = 16 << 10;
/// Characters shown of each tail line (a long line is cut, not wrapped).
const TAIL_LINE_CHARS: usize = 300;
/// How often start-up checks whether every node serves yet.
const SERVING_POLL: Duration = Duration::from_millis(50);
/// Connect timeout of the supervisor's `status` client: a dead node costs little.
const STATUS_CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
/// Per-attempt timeout of the supervisor's `status` client.
const STATUS_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);

/// A node process under supervision.
struct Running {
    name: String,
    addr: String,
    dir: PathBuf,
    pid: u32,
    /// The command that starts this node again, by hand, as it was started
    /// (its data dir, peers and key file).
    restart: String,
    /// Asks the waiting task to kill the process.
    kill: Option<oneshot::Sender<()>>,
}

/// Starts the nodes, waits until each serves, writes the banner to `out`; then
/// reports each node's exit at once (status and the end of its logs) and each
/// leader change, until Ctrl-C/SIGTERM stops them. Fails (after stopping the
/// others) if a node dies or does not serve during start-up, or every node has
/// exited. Output that cannot be written (the reader went away) stops the nodes
/// too, and the write's error is returned.
pub async fn run(args: &ClusterArgs, out: &mut dyn Write) -> Result<(), TcpError> {
    let nodes = plan(args)?;
    let exe = std::env::current_exe()?;
    let peers = nodes
        .iter()
        .map(|n| format!("{}={}", n.name, n.addr))
        .collect::<Vec<_>>()
        .join(",");
    check_free(args, &nodes)?;
    // Listening from before the first spawn (its first poll installs the
    // handlers), so a signal during start-up stops the nodes too.
    let stop_signal = serve::stop_signal();
    tokio::pin!(stop_signal);
    let _ = futures::poll!(stop_signal.as_mut());
    std::fs::create_dir_all(&args.data_dir).map_err(|source| TcpError::File {
        what: "data dir",
        path: args.data_dir.clone(),
        source,
    })?;
    // Absolute, so the restart commands printed work from any directory.
    let data_dir = std::path::absolute(&args.data_dir)?;
    let key_file = cluster_key_file(&data_dir)?;
    let (exits_tx, mut exits) = mpsc::unbounded_channel();
    let launch = Launch {
        exe,
        shown_exe: exe_for_commands()?,
        peers: peers.clone(),
        key_file: key_file.clone(),
        // The nodes share this machine's cores.
        workers: serve::workers_per_node(nodes.len()).to_string(),
        started: utc_now(),
        exits: exits_tx,
    };
    let mut running: Vec<Running> = Vec::new();
    for node in &nodes {
        match launch.spawn(&data_dir, node) {
            Ok(r) => running.push(r),
            Err(e) => {
                stop(&mut running, &mut exits, out).await;
                return Err(e);
            }
        }
    }
    drop(launch);
    let start_timeout = Duration::from_secs(args.start_timeout_s);
    let started = tokio::select! {
        r = wait_serving(&mut running, &mut exits, start_timeout) => r,
        _ = &mut stop_signal => Err("stopped by a signal during start-up".to_string()),
    };
    let result = match started {
        Err(e) => {
            // Best effort: an unwritable reason is still summed up by the error.
            let _ = writeln!(out, "{}", e.trim_end());
            Err(TcpError::Args(
                "the cluster did not start (the reason is above); its other nodes were stopped"
                    .into(),
            ))
        }
        Ok(()) => match banner(out, &running, &peers, &key_file) {
            Ok(()) => supervise(&mut running, &mut exits, stop_signal, out).await,
            Err(e) => Err(e.into()),
        },
    };
    stop(&mut running, &mut exits, out).await;
    result
}

/// A node to start: `nI`, the address it listens on, the address peers use.
struct Planned {
    name: String,
    listen: String,
    addr: String,
}

/// Refuses flags that plan no cluster (`--nodes 0`, ports past 65535) before
/// anything runs: bad usage ([`super::exit::CLUSTER`]).
pub fn check_args(args: &ClusterArgs) -> Result<(), TcpError> {
    plan(args).map(drop)
}

/// The nodes `--nodes`, `--base-port` and `--host` ask for; refuses a count of 0
/// and ports past 65535.
fn plan(args: &ClusterArgs) -> Result<Vec<Planned>, TcpError> {
    if args.nodes == 0 {
        return Err(TcpError::Args("--nodes must be at least 1".into()));
    }
    if args.base_port == 0 {
        return Err(TcpError::Args(
            "--base-port must be a port from 1 (n1 listens on it, n2 on the next, ...)".into(),
        ));
    }
    if u32::from(args.base_port) + args.nodes - 1 > u32::from(u16::MAX) {
        return Err(TcpError::Args(format!(
            "--base-port {} leaves no port for n{}",
            args.base_port, args.nodes
        )));
    }
    // Peers reach a node listening on a wildcard at loopback.
    let listen_host = args.host.as_str();
    let peer_host = match listen_host.trim_start_matches('[').trim_end_matches(']') {
        "0.0.0.0" => "127.0.0.1",
        "::" => "[::1]",
        _ => listen_host,
    };
    Ok((1..=args.nodes)
        .map(|i| {
            let port = u32::from(args.base_port) + i - 1;
            Planned {
                name: format!("n{i}"),
                listen: format!("{listen_host}:{port}"),
                addr: format!("{peer_host}:{port}"),
            }
        })
        .collect())
}

/// What every node's `serve` process is started with.
struct Launch {
    exe: PathBuf,
    /// The binary as the restart commands name it.
    shown_exe: String,
    /// The `--peers` value.
    peers: String,
    /// The cluster key file, passed as `--cluster-key-file`.
    key_file: PathBuf,
    /// The `--workers` value.
    workers: String,
    /// When this cluster started, for the line opening each `stderr.log`.
    started: String,
    /// Where each node's waiting task reports its exit.
    exits: mpsc::UnboundedSender<(String, std::io::Result<ExitStatus>)>,
}

impl Launch {
    /// Starts `node` in `data_dir/nI` (its stderr appended to `stderr.log` after
    /// a line naming the start), with a task that reports its exit and kills it
    /// on request.
    fn spawn(&self, data_dir: &Path, node: &Planned) -> Result<Running, TcpError> {
        let name = &node.name;
        let dir = data_dir.join(name);
        std::fs::create_dir_all(&dir)?;
        // Appended: the previous run's reasons stay readable.
        let mut stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("stderr.log"))?;
        std::io::Write::write_all(
            &mut stderr,
            format!(
                "==== oncekv cluster starting {name} at {} ====\n",
                self.started
            )
            .as_bytes(),
        )?;
        let mut child = Command::new(&self.exe)
            .args(["serve", "--id", name, "--listen", &node.listen])
            .args(["--peers", &self.peers, "--workers", &self.workers])
            .arg("--data-dir")
            .arg(&dir)
            .arg("--cluster-key-file")
            .arg(&self.key_file)
            // The key is in the file: `serve` refuses the variable besides it.
            .env_remove(tcp::CLUSTER_KEY_VAR)
            // A start-up error's message, not its backtrace, is what the last
            // lines of stderr.log should show (panics keep RUST_BACKTRACE's).
            .env("RUST_LIB_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().unwrap_or(0);
        let (kill, killed) = oneshot::channel::<()>();
        let tx = self.exits.clone();
        let task_name = name.clone();
        tokio::spawn(async move {
            let status = tokio::select! {
                s = child.wait() => s,
                _ = killed => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            let _ = tx.send((task_name, status));
        });
        let restart = [
            self.shown_exe.as_str(),
            "serve",
            "--id",
            name,
            "--listen",
            &node.listen,
            "--peers",
            &self.peers,
            "--workers",
            &self.workers,
            "--data-dir",
            &dir.display().to_string(),
            "--cluster-key-file",
            &self.key_file.display().to_string(),
        ]
        .iter()
        .map(|w| shell_word(w))
        .collect::<Vec<_>>()
        .join(" ");
        Ok(Running {
            name: name.clone(),
            addr: node.addr.clone(),
            dir,
            pid,
            restart,
            kill: Some(kill),
        })
    }
}

/// Once every node serves: one line per node, the peer list, where the key is,
/// and the command that restarts each node by hand.
fn banner(
    out: &mut dyn Write,
    running: &[Running],
    peers: &str,
    key_file: &Path,
) -> std::io::Result<()> {
    for node in running {
        writeln!(
            out,
            "{} {} pid {} log {}",
            node.name,
            node.addr,
            node.pid,
            node.dir.join("node.log").display()
        )?;
    }
    let key_file = shell_word(&key_file.display().to_string());
    writeln!(
        out,
        "peers: {peers}\ncluster key: in {key_file} (membership changes need it: \
         {}=$(cat {key_file}) oncekv client ... add-node ...)\n\
         to restart a node that stopped (its data dir, peers and key):",
        tcp::CLUSTER_KEY_VAR,
    )?;
    for node in running {
        writeln!(out, "  {}: {}", node.name, node.restart)?;
    }
    writeln!(out, "Ctrl-C stops the cluster.")?;
    out.flush()
}

/// Refuses before starting anything: a data dir inside a node's data dir, a
/// node's dir in use by another process (its log lock is held), a port in use.
fn check_free(args: &ClusterArgs, nodes: &[Planned]) -> Result<(), TcpError> {
    let marker = crate::storage::marker::MARKER_FILE;
    if args.data_dir.join(marker).exists() {
        return Err(TcpError::Args(format!(
            "--data-dir {} is a node's data dir (it holds {marker}); give the directory \
             that holds n1, n2, ...",
            args.data_dir.display()
        )));
    }
    if let Some(owner) = serve::enclosing_node_dir(&args.data_dir) {
        return Err(TcpError::Args(format!(
            "--data-dir {} is inside the data dir of a node ({})",
            args.data_dir.display(),
            owner.display()
        )));
    }
    for Planned { name, listen, .. } in nodes {
        let lock = args
            .data_dir
            .join(name)
            .join(crate::storage::LOG_DIR)
            .join(crate::storage::wal::LOCK_FILE);
        if let Ok(file) = std::fs::OpenOptions::new().write(true).open(&lock)
            && let Err(std::fs::TryLockError::WouldBlock) = file.try_lock()
        {
            return Err(TcpError::Args(format!(
                "{} is in use by another process ({} is locked): is a cluster already \
                 running on {}?",
                args.data_dir.join(name).display(),
                lock.display(),
                args.data_dir.display()
            )));
        }
        if let Err(e) = std::net::TcpListener::bind(listen) {
            return Err(TcpError::Args(format!(
                "{name}'s address {listen} is not free ({e}): another cluster or program \
                 listens there; choose another --base-port"
            )));
        }
    }
    Ok(())
}

type Exits = mpsc::UnboundedReceiver<(String, std::io::Result<ExitStatus>)>;

/// Waits until every node answers `status` from its own process, or fails
/// naming the node that exited (with its logs' last lines) or did not serve.
async fn wait_serving(
    running: &mut [Running],
    exits: &mut Exits,
    within: Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut client = status_client(running);
    let mut serving = vec![false; running.len()];
    loop {
        for (i, node) in running.iter().enumerate() {
            if !serving[i] {
                serving[i] = client
                    .status_of(i)
                    .await
                    .is_ok_and(|s| s.pid == Some(node.pid));
            }
        }
        if serving.iter().all(|s| *s) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let waiting: Vec<&str> = running
                .iter()
                .zip(&serving)
                .filter(|(_, s)| !**s)
                .map(|(n, _)| n.name.as_str())
                .collect();
            return Err(format!(
                "{} did not start serving within {within:?} (see stderr.log and node.log \
                 in their data dirs; --start-timeout-s sets the limit)",
                waiting.join(", ")
            ));
        }
        tokio::select! {
            exit = exits.recv() => {
                let Some((name, status)) = exit else {
                    return Err("every node exited during start-up".into());
                };
                let node = running.iter_mut().find(|n| n.name == name);
                let report = exit_report(&name, node.as_deref(), "during start-up", &status);
                if let Some(node) = node {
                    node.kill = None;
                }
                return Err(report);
            }
            _ = tokio::time::sleep(SERVING_POLL) => {}
        }
    }
}

/// A client for `status` polls: short timeouts, so a dead node costs little.
fn status_client(running: &[Running]) -> Client {
    let mut opts = ClientOptions::new(running.iter().map(|n| n.addr.clone()).collect());
    opts.connect_timeout = STATUS_CONNECT_TIMEOUT;
    opts.attempt_timeout = STATUS_ATTEMPT_TIMEOUT;
    Client::new(opts)
}

/// Until Ctrl-C/SIGTERM: reports node exits and leader changes to `out` as they
/// happen. An error once every node has exited, or when `out` cannot be written.
async fn supervise(
    running: &mut [Running],
    exits: &mut Exits,
    mut stop_signal: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    out: &mut dyn Write,
) -> Result<(), TcpError> {
    let mut client = status_client(running);
    let mut alive = vec![true; running.len()];
    let mut leader: Option<(u64, u64)> = None;
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    loop {
        tokio::select! {
            biased;
            _ = &mut stop_signal => return Ok(()),
            exit = exits.recv() => {
                let Some((name, status)) = exit else {
                    return Err(TcpError::Args("every node has exited".into()));
                };
                let i = running.iter().position(|n| n.name == name);
                write!(out, "{}", exit_report(&name, i.map(|i| &running[i]), "", &status))?;
                if let Some(i) = i {
                    writeln!(out, "  restart {name}: {}", running[i].restart)?;
                }
                out.flush()?;
                if let Some(i) = i {
                    alive[i] = false;
                    running[i].kill = None;
                }
                if !alive.iter().any(|a| *a) {
                    return Err(TcpError::Args("every node has exited".into()));
                }
            }
            _ = poll.tick() => {
                let mut now: Option<(u64, u64)> = None;
                for i in (0..running.len()).filter(|i| alive[*i]) {
                    if let Ok(s) = client.status_of(i).await
                        && s.role == crate::node::Role::Leader
                        && now.is_none_or(|(_, term)| s.term > term)
                    {
                        now = Some((s.id, s.term));
                    }
                }
                if let Some((id, term)) = now
                    && leader != now
                {
                    writeln!(out, "leader is now n{id} (term {term})")?;
                    out.flush()?;
                    leader = now;
                }
            }
        }
    }
}

/// Stops the nodes still running: SIGTERM (a graceful stop), then a kill for
/// whatever has not exited within [`STOP_GRACE`]; writes each exit to `out`.
/// Output is best effort here: the nodes are stopped whether or not it can be
/// written (it cannot once the reader has gone away).
async fn stop(running: &mut [Running], exits: &mut Exits, out: &mut dyn Write) {
    let live: Vec<usize> = (0..running.len())
        .filter(|i| running[*i].kill.is_some())
        .collect();
    if live.is_empty() {
        return;
    }
    let _ = writeln!(out, "stopping {} nodes", live.len());
    for &i in &live {
        // Ctrl-C reached them already through the process group; SIGTERM did not.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &running[i].pid.to_string()])
            .status();
    }
    let mut left = live.len();
    let grace = tokio::time::sleep(STOP_GRACE);
    tokio::pin!(grace);
    while left > 0 {
        tokio::select! {
            exit = exits.recv() => {
                let Some((name, status)) = exit else { return };
                if let Some(n) = running.iter_mut().find(|n| n.name == name && n.kill.is_some()) {
                    n.kill = None;
                    left -= 1;
                    let _ = match status {
                        Ok(s) => writeln!(out, "{name} exited: {s}"),
                        Err(e) => writeln!(out, "{name}: {e}"),
                    };
                }
            }
            _ = &mut grace => break,
        }
    }
    for n in running.iter_mut() {
        if let Some(kill) = n.kill.take() {
            let _ = kill.send(());
            let _ = writeln!(out, "{} killed", n.name);
        }
    }
}

/// `n2 (pid 4221) exited: exit status: 1` and the last lines of its logs.
fn exit_report(
    name: &str,
    node: Option<&Running>,
    when: &str,
    status: &std::io::Result<ExitStatus>,
) -> String {
    let status = match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("unknown status ({e})"),
    };
    let when = if when.is_empty() {
        String::new()
    } else {
        format!(" {when}")
    };
    let Some(node) = node else {
        return format!("{name} exited{when}: {status}\n");
    };
    let mut text = format!("{name} (pid {}) exited{when}: {status}\n", node.pid);
    for file in ["stderr.log", "node.log"] {
        let path = node.dir.join(file);
        let tail = log_tail(&path, TAIL_LINES);
        if !tail.is_empty() {
            text += &format!("  last lines of {}:\n", path.display());
            for line in tail {
                text += &format!("    {line}\n");
            }
        }
    }
    text
}

/// The last `lines` lines of the file (from at most its last [`TAIL_BYTES`]),
/// each cut to [`TAIL_LINE_CHARS`] characters.
fn log_tail(path: &Path, lines: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)));
    let mut bytes = Vec::new();
    let _ = file.take(TAIL_BYTES).read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| l.chars().take(TAIL_LINE_CHARS).collect())
        .collect()
}

/// The current UTC time as `2026-12-02T07:15:44Z`.
fn utc_now() -> String {
    crate::utc::Utc::now().iso()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        let s = utc_now();
        assert_eq!(s.len(), 20, "{s}");
        assert!(s.starts_with("20") && s.ends_with('Z'), "{s}");
    }

    #[test]
    fn a_log_tail_is_its_last_lines() {
        let dir = std::env::temp_dir().join(format!("oncekv-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.log");
        let text: String = (0..5_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        assert_eq!(log_tail(&path, 2), vec!["line 4998", "line 4999"]);
        assert!(log_tail(&dir.join("missing"), 2).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
