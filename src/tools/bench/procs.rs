//! [`OncekvCluster`]: `oncekv serve` processes on loopback for `bench-cluster`, each
//! with its own data directory, killable with SIGKILL and restartable on it.
//!
//! May not touch a node's internals: the nodes are separate processes, reached by
//! signals and over TCP ([`crate::tcp::Client`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tcp::{Client, ClientOptions};

/// One node process.
struct Node {
    /// `n1`, `n2`, ...: the Raft id is the number.
    name: String,
    /// `127.0.0.1:PORT`, kept across restarts.
    addr: String,
    /// Its data directory (the write-ahead log), kept across restarts.
    dir: PathBuf,
    /// The process while it runs.
    child: Option<Child>,
}

/// N `oncekv serve` processes sharing one `--peers` list.
pub struct OncekvCluster {
    /// The binary to run (this one).
    exe: PathBuf,
    /// `nodes[i]` is `n{i+1}`.
    nodes: Vec<Node>,
    /// The shared `--peers` value.
    peers: String,
    /// `--workers` of each node.
    workers: usize,
    /// Environment variables set for every (re)start from now on (`ONCEKV_*`
    /// settings), beside the inherited environment.
    env: Vec<(String, String)>,
}

impl OncekvCluster {
    /// The pids of the running nodes.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|n| n.child.as_ref().map(Child::id))
            .collect()
    }

    /// Starts `n` nodes of binary `exe` under `root`, on the given ports.
    pub fn start(exe: &Path, root: &Path, ports: &[u16]) -> std::io::Result<OncekvCluster> {
        let nodes: Vec<Node> = ports
            .iter()
            .enumerate()
            .map(|(i, port)| Node {
                name: format!("n{}", i + 1),
                addr: format!("127.0.0.1:{port}"),
                dir: root.join(format!("n{}", i + 1)),
                child: None,
            })
            .collect();
        let peers = nodes
            .iter()
            .map(|n| format!("{}={}", n.name, n.addr))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = OncekvCluster {
            exe: exe.to_path_buf(),
            workers: crate::tcp::serve::workers_per_node(nodes.len()),
            nodes,
            peers,
            env: Vec::new(),
        };
        for i in 0..cluster.nodes.len() {
            cluster.restart(i)?;
        }
        Ok(cluster)
    }

    /// The nodes' addresses, in order.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// Sets `vars` for every later (re)start, e.g. a setting a restart changes.
    pub fn set_env(&mut self, vars: &[(&str, &str)]) {
        self.env = (vars.iter())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// Node `i`'s data directory.
    pub fn dir(&self, i: usize) -> &Path {
        &self.nodes[i].dir
    }

    /// How many nodes the cluster has.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Starts node `i` (again) on its address and data directory.
    pub fn restart(&mut self, i: usize) -> std::io::Result<()> {
        let node = &mut self.nodes[i];
        std::fs::create_dir_all(&node.dir)?;
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("stderr.log"))?;
        let child = Command::new(&self.exe)
            .args(["serve", "--id", &node.name, "--listen", &node.addr])
            .args(["--peers", &self.peers])
            // Like `oncekv cluster`: the nodes share this machine's cores.
            .args(["--workers", &self.workers.to_string()])
            .arg("--data-dir")
            .arg(&node.dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()?;
        node.child = Some(child);
        Ok(())
    }

    /// SIGKILLs node `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill(); // SIGKILL on Unix
            let _ = child.wait();
        }
    }

    /// Client options reaching every node.
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions::new(self.addrs())
    }

    /// Waits until every node answers `status` with the same leader and term and the
    /// same applied index (nothing in flight), then returns the leader's index.
    pub async fn wait_settled(&self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        let mut probe = Client::new(self.client_options());
        let mut last = String::from("no status yet");
        while Instant::now() < deadline {
            let mut views = Vec::new();
            for i in 0..self.nodes.len() {
                match probe.status_of(i).await {
                    Ok(s) => views.push((i, s)),
                    Err(e) => last = e,
                }
            }
            if views.len() == self.nodes.len() {
                let (_, first) = &views[0];
                let agree = views.iter().all(|(_, s)| {
                    s.leader.is_some()
                        && s.leader == first.leader
                        && s.term == first.term
                        && s.applied_index == first.applied_index
                });
                let leader = views
                    .iter()
                    .find(|(_, s)| s.role == crate::node::Role::Leader);
                if let (true, Some((i, _))) = (agree, leader) {
                    return Ok(*i);
                }
                last = format!(
                    "views differ: {:?}",
                    views
                        .iter()
                        .map(|(_, s)| (s.role, s.term, s.leader, s.applied_index))
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("oncekv cluster did not settle within {timeout:?}: {last}")
    }
}

impl Drop for OncekvCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
