//! A cluster of real `oncekv serve` processes on loopback, for `tests/tcp_*.rs`.
//! Nodes can be killed (SIGKILL) and restarted on the same data directory and
//! port, so tests needing durability can reuse it once storage is durable.
#![allow(dead_code)] // each test file uses a different part

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use oncekv::node::NodeStatus;
use oncekv::tcp::{Client, ClientOptions};
use oncekv::tools::history::{HistoryOp, OpType, Process};
use serde_json::Value;

/// One node process.
pub struct TestNode {
    /// `n1`, `n2`, ...
    pub name: String,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Its data directory (kept across restarts).
    pub dir: PathBuf,
    /// The process, while running.
    pub child: Option<Child>,
}

/// N `serve` processes with the same `--peers`.
pub struct TestCluster {
    /// The nodes, `nodes[i]` named `n{i+1}`.
    pub nodes: Vec<TestNode>,
    /// The shared `--peers` value.
    pub peers: String,
    /// Root of the nodes' data directories.
    pub dir: PathBuf,
    /// Environment for every node (`ONCEKV_*` overrides).
    env: Vec<(String, String)>,
}

/// A free loopback port (bound then released: a small race, fine for tests).
pub fn free_port() -> u16 {
    // The kernel may hand the same free port to two binds in a row once the
    // first listener is closed (a cluster once got n1 and n2 on one port):
    // never give out a port twice in one test process.
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        if GIVEN.lock().unwrap_or_else(|p| p.into_inner()).insert(port) {
            return port;
        }
    }
}

/// A fresh directory under the target dir for test `name`.
pub fn test_dir(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

impl TestCluster {
    /// Starts `n` nodes with extra environment `env`.
    pub fn start(name: &str, n: usize, env: &[(&str, &str)]) -> TestCluster {
        let mut c = TestCluster::unstarted(name, n, env);
        for i in 0..n {
            c.restart(i);
        }
        c
    }

    /// `n` nodes' names, addresses and directories, none started yet (start
    /// each with [`TestCluster::restart`] or [`TestCluster::spawn`]).
    pub fn unstarted(name: &str, n: usize, env: &[(&str, &str)]) -> TestCluster {
        let dir = test_dir(name);
        let nodes: Vec<TestNode> = (1..=n)
            .map(|i| TestNode {
                name: format!("n{i}"),
                addr: format!("127.0.0.1:{}", free_port()),
                dir: dir.join(format!("n{i}")),
                child: None,
            })
            .collect();
        let peers = nodes
            .iter()
            .map(|n| format!("{}={}", n.name, n.addr))
            .collect::<Vec<_>>()
            .join(",");
        let c = TestCluster {
            nodes,
            peers,
            dir,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        eprintln!("cluster {name}: {} in {}", c.peers, c.dir.display());
        c
    }

    /// Starts (again) node `i` on its address and data directory.
    pub fn restart(&mut self, i: usize) {
        let peers = self.peers.clone();
        self.spawn(i, &peers, false);
    }

    /// Starts (again) node `i` with `extra` environment on top of the cluster's
    /// (later entries win), e.g. a snapshot policy or election timeout of its own.
    pub fn restart_with(&mut self, i: usize, extra: &[(&str, &str)]) {
        let peers = self.peers.clone();
        self.spawn_with(i, &peers, false, extra);
    }

    /// Starts (again) node `i` with `args` added to its `serve` command line
    /// (e.g. `--wal-io buffered`).
    pub fn restart_with_args(&mut self, i: usize, args: &[&str]) {
        let peers = self.peers.clone();
        self.spawn_full(i, &peers, false, &[], args);
    }

    /// Spawns `serve` for node `i` with `peers`, joining (not initializing) if `join`.
    pub fn spawn(&mut self, i: usize, peers: &str, join: bool) {
        self.spawn_with(i, peers, join, &[]);
    }

    /// [`TestCluster::spawn`] with `extra` environment for this process only.
    pub fn spawn_with(&mut self, i: usize, peers: &str, join: bool, extra: &[(&str, &str)]) {
        self.spawn_full(i, peers, join, extra, &[]);
    }

    /// [`TestCluster::spawn_with`], and `args` added to the command line.
    fn spawn_full(
        &mut self,
        i: usize,
        peers: &str,
        join: bool,
        extra: &[(&str, &str)],
        args: &[&str],
    ) {
        let node = &mut self.nodes[i];
        std::fs::create_dir_all(&node.dir).expect("mkdir");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("stderr.log"))
            .expect("stderr log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_oncekv"));
        cmd.args(["serve", "--id", &node.name, "--listen", &node.addr])
            .args(["--peers", peers])
            .arg("--data-dir")
            .arg(&node.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if join {
            cmd.arg("--join");
        }
        cmd.args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        node.child = Some(cmd.spawn().expect("spawn oncekv serve"));
    }

    /// Adds a node `n{len+1}` (not yet a member: start it with `--join`).
    pub fn add_node_process(&mut self) -> usize {
        let i = self.nodes.len();
        let name = format!("n{}", i + 1);
        self.nodes.push(TestNode {
            addr: format!("127.0.0.1:{}", free_port()),
            dir: self.dir.join(&name),
            name,
            child: None,
        });
        let peers = format!(
            "{},{}={}",
            self.peers, self.nodes[i].name, self.nodes[i].addr
        );
        self.spawn(i, &peers, true);
        i
    }

    /// SIGKILLs node `i` (its data directory stays).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILLs the nodes `which` at once: every signal is sent before any is
    /// waited for, so none of them sees another one die first.
    pub fn kill_together(&mut self, which: &[usize]) {
        let mut children: Vec<Child> = which
            .iter()
            .filter_map(|&i| self.nodes[i].child.take())
            .collect();
        for child in &mut children {
            let _ = child.kill();
        }
        for child in &mut children {
            let _ = child.wait();
        }
    }

    /// Every node's address.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// A client of the whole cluster.
    pub fn client(&self) -> Client {
        Client::new(self.client_options())
    }

    /// Client options for the whole cluster.
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions::new(self.addrs())
    }

    /// Node `i`'s status, if it answers.
    pub async fn status(&self, i: usize) -> Option<NodeStatus> {
        let mut c = Client::new(ClientOptions::new(vec![self.nodes[i].addr.clone()]));
        c.status_of(0).await.ok()
    }

    /// Waits until `check` holds, polling, or panics after `timeout` naming `what`.
    pub async fn wait_for<F, Fut>(&self, what: &str, timeout: Duration, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        while !check().await {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what} (logs in {})",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for a leader that the running nodes agree on; returns its index.
    pub async fn wait_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.agreed_leader().await {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {timeout:?} (logs in {})",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn agreed_leader(&self) -> Option<usize> {
        let mut leader = None;
        for (i, n) in self.nodes.iter().enumerate() {
            if n.child.is_none() {
                continue;
            }
            let s = self.status(i).await?;
            if s.leader.is_none() || (leader.is_some() && leader != s.leader) {
                return None;
            }
            leader = s.leader;
        }
        let id = leader?;
        let i = self.nodes.iter().position(|n| n.name == format!("n{id}"))?;
        self.nodes[i].child.as_ref()?;
        let s = self.status(i).await?;
        (s.role == oncekv::node::Role::Leader).then_some(i)
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// A seed from `ONCEKV_TEST_SEED` or the clock, printed so a run can be repeated.
pub fn seed() -> u64 {
    oncekv::tools::harness::seed::test_seed()
}

/// The history all workers append to.
pub struct Recorder {
    /// Time zero of `HistoryOp::time`.
    pub start: Instant,
    /// Invokes and outcomes, in real-time order.
    pub ops: Mutex<Vec<HistoryOp>>,
}

impl Recorder {
    /// An empty history starting now.
    pub fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }

    /// Nanoseconds since the start.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn push(&self, process: u64, kind: OpType, f: &str, key: &Value, value: Value) {
        self.push_error(process, kind, f, key, value, None);
    }

    pub fn push_error(
        &self,
        process: u64,
        kind: OpType,
        f: &str,
        key: &Value,
        value: Value,
        error: Option<(i64, String)>,
    ) {
        // Stamped under the lock, so times never go backwards (the checker
        // refuses a history whose times do).
        let mut ops = self.ops.lock().unwrap();
        let op = HistoryOp {
            process: Process::Client(process),
            kind,
            f: f.into(),
            key: Some(key.clone()),
            value,
            time: self.now(),
            error,
            client_id: None,
            seq: None,
        };
        ops.push(op);
    }

    /// Ok outcomes recorded after `since` (nanoseconds).
    pub fn acked_since(&self, since: u64) -> usize {
        let ops = self.ops.lock().unwrap();
        ops.iter()
            .filter(|o| o.kind == OpType::Ok && o.time > since)
            .count()
    }

    /// When the first op invoked after `since` was acknowledged (nanoseconds).
    /// Ops in flight at `since` are left out: their replies may have been on the
    /// way already.
    pub fn first_ack_invoked_after(&self, since: u64) -> Option<u64> {
        let ops = self.ops.lock().unwrap();
        let mut invoked = std::collections::BTreeSet::new();
        for o in ops.iter() {
            match o.kind {
                OpType::Invoke if o.time > since => {
                    invoked.insert(o.process);
                }
                OpType::Ok if invoked.contains(&o.process) => return Some(o.time),
                _ => {}
            }
        }
        None
    }
}

/// Waits until node `follower`, restarted at `restarted`, has applied up to
/// `leader_last`, and says how long that took after the restart.
pub async fn wait_caught_up(
    cluster: &TestCluster,
    follower: usize,
    leader_last: Option<u64>,
    timeout: Duration,
    restarted: Instant,
) -> NodeStatus {
    let f = wait_status(
        cluster,
        follower,
        "the restarted follower to catch up",
        timeout,
        |s| s.applied_index >= leader_last,
    )
    .await;
    eprintln!(
        "follower caught up {} ms after its restart: {f:?}",
        restarted.elapsed().as_millis()
    );
    f
}

/// Waits until node `i` answers `status` with `check` true; returns that status.
pub async fn wait_status(
    cluster: &TestCluster,
    i: usize,
    what: &str,
    timeout: Duration,
    check: impl Fn(&NodeStatus) -> bool,
) -> NodeStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = cluster.status(i).await
            && check(&s)
        {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what} (last status {:?}; logs in {})",
            cluster.status(i).await,
            cluster.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
