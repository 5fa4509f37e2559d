//! Drives real `oncekv` processes over their stdin/stdout, with a router that
//! carries node-to-node messages and can cut a node off (a partition).
#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_oncekv")
}

/// Runs the binary on a whole input and returns its stdout (it must exit 0).
pub fn run_script(input: &str) -> String {
    run_script_bytes(input.as_bytes())
}

/// [`run_script`] on input that need not be UTF-8.
pub fn run_script_bytes(input: &[u8]) -> String {
    let mut child = Command::new(bin())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn oncekv");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("writer").expect("write stdin");
    assert!(out.status.success(), "exit status {:?}", out.status);
    String::from_utf8(out.stdout).expect("utf8 stdout")
}

/// One node process (Maelstrom mode) on pipes, with these `ONCEKV_*` settings:
/// the child, its stdin, and its stdout read by lines. `stderr` says where its
/// log goes (`Stdio::piped()` leaves it in `child.stderr` to take).
pub fn spawn_node(
    env: &[(&str, &str)],
    stderr: Stdio,
) -> (Child, ChildStdin, BufReader<ChildStdout>) {
    let mut child = Command::new(bin())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn oncekv");
    let stdin = child.stdin.take().expect("stdin");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    (child, stdin, stdout)
}

/// Polls `f` until it returns Some or the deadline passes.
pub fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

struct Shared {
    stdins: Vec<Mutex<ChildStdin>>,
    names: Vec<String>,
    /// Nodes cut off from every other node (clients still reach them).
    isolated: Mutex<BTreeSet<usize>>,
    /// When each node last sent a raft_append (only leaders do).
    last_append: Mutex<HashMap<usize, Instant>>,
    /// Replies to clients, by (client, in_reply_to).
    replies: Mutex<HashMap<(String, u64), Value>>,
    /// Lines that broke the protocol.
    violations: Mutex<Vec<String>>,
}

/// A cluster of real processes wired by a test router.
pub struct Cluster {
    children: Vec<Child>,
    shared: Arc<Shared>,
    next_msg_id: AtomicU64,
}

impl Cluster {
    /// Starts `n` nodes `n0..` and initializes them.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with_env(n, &[])
    }

    /// [`Cluster::start`] with extra environment variables for the nodes
    /// (`ONCEKV_*` config overrides).
    pub fn start_with_env(n: usize, env: &[(&str, &str)]) -> Cluster {
        let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        let (tx, rx) = channel::<(usize, String)>();
        for i in 0..n {
            let mut child = Command::new(bin())
                .envs(env.iter().copied())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn oncekv");
            stdins.push(Mutex::new(child.stdin.take().expect("stdin")));
            let stdout = child.stdout.take().expect("stdout");
            let tx: Sender<(usize, String)> = tx.clone();
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { return };
                    if tx.send((i, line)).is_err() {
                        return;
                    }
                }
            });
            children.push(child);
        }
        let shared = Arc::new(Shared {
            stdins,
            names: names.clone(),
            isolated: Mutex::default(),
            last_append: Mutex::default(),
            replies: Mutex::default(),
            violations: Mutex::default(),
        });
        let router = shared.clone();
        thread::spawn(move || route(router, rx));
        let cluster = Cluster {
            children,
            shared,
            next_msg_id: AtomicU64::new(1),
        };
        for (i, name) in names.iter().enumerate() {
            let body = json!({"type":"init","node_id":name,"node_ids":names});
            let reply = cluster.request_as(&format!("c-init{i}"), i, body, Duration::from_secs(10));
            assert_eq!(reply["type"], "init_ok", "{reply}");
        }
        cluster
    }

    /// Sends `body` from client `client` to node `node` and waits for the reply.
    pub fn request_as(&self, client: &str, node: usize, body: Value, within: Duration) -> Value {
        let sent = self.send_as(client, node, body);
        self.wait_reply(&sent, within)
    }

    /// Sends `body` from client `client` to node `node` without waiting; returns
    /// what [`Cluster::wait_reply`] needs.
    pub fn send_as(&self, client: &str, node: usize, mut body: Value) -> (String, u64) {
        let msg_id = self.next_msg_id.fetch_add(1, Ordering::SeqCst);
        body["msg_id"] = json!(msg_id);
        let line = json!({"src": client, "dest": self.shared.names[node], "body": body});
        deliver(&self.shared, node, &line.to_string());
        (client.to_string(), msg_id)
    }

    /// Writes `line` as it is to node `node`'s stdin (a newline is added).
    pub fn send_line(&self, node: usize, line: &str) {
        deliver(&self.shared, node, line);
    }

    /// Waits for the reply to a request sent with [`Cluster::send_as`].
    pub fn wait_reply(&self, sent: &(String, u64), within: Duration) -> Value {
        wait_for("a reply", within, || {
            self.shared.replies.lock().unwrap().remove(sent)
        })
    }

    /// [`Cluster::request_as`] from client `c1` with a 5 s deadline.
    pub fn request(&self, node: usize, body: Value) -> Value {
        self.request_as("c1", node, body, Duration::from_secs(5))
    }

    /// The node currently sending heartbeats (appends), other than `not`: once it
    /// is the only one that has in the last 300 ms (right after a leader change the
    /// deposed leader may still be sending; a test that cuts off "the leader" must
    /// not pick it).
    pub fn leader(&self, not: Option<usize>) -> usize {
        wait_for("a leader", Duration::from_secs(10), || {
            let last = self.shared.last_append.lock().unwrap();
            let mut senders = last
                .iter()
                .filter(|(n, at)| Some(**n) != not && at.elapsed() < Duration::from_millis(300))
                .map(|(n, _)| *n);
            match (senders.next(), senders.next()) {
                (Some(n), None) => Some(n),
                _ => None,
            }
        })
    }

    /// Cuts `node` off from every other node, both ways.
    pub fn isolate(&self, node: usize) {
        self.shared.isolated.lock().unwrap().insert(node);
    }

    /// Waits (up to `within`) until `node` sends an append after `since`: it still
    /// acts as a leader. False if it does not.
    pub fn appends_after(&self, node: usize, since: Instant, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let last = self.shared.last_append.lock().unwrap().get(&node).copied();
            if last.is_some_and(|at| at > since) {
                return true;
            }
            thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Reconnects `node` to the others.
    pub fn heal(&self, node: usize) {
        self.shared.isolated.lock().unwrap().remove(&node);
    }

    /// Lines from nodes that broke the protocol.
    pub fn violations(&self) -> Vec<String> {
        self.shared.violations.lock().unwrap().clone()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn deliver(shared: &Shared, node: usize, line: &str) {
    let mut stdin = shared.stdins[node].lock().unwrap();
    let _ = stdin.write_all(line.as_bytes());
    let _ = stdin.write_all(b"\n");
    let _ = stdin.flush();
}

fn route(shared: Arc<Shared>, rx: Receiver<(usize, String)>) {
    for (from, line) in rx {
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            shared.violations.lock().unwrap().push(line);
            continue;
        };
        let keys: BTreeSet<&str> = msg
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        if keys != BTreeSet::from(["src", "dest", "body"]) || msg["src"] != shared.names[from] {
            shared.violations.lock().unwrap().push(line.clone());
        }
        let dest = msg["dest"].as_str().unwrap_or("").to_string();
        if let Some(to) = shared.names.iter().position(|n| *n == dest) {
            if msg["body"]["type"] == "raft_append" {
                shared
                    .last_append
                    .lock()
                    .unwrap()
                    .insert(from, Instant::now());
            }
            let cut = {
                let iso = shared.isolated.lock().unwrap();
                iso.contains(&from) || iso.contains(&to)
            };
            if !cut {
                deliver(&shared, to, &line);
            }
        } else {
            let Some(irt) = msg["body"]["in_reply_to"].as_u64() else {
                shared.violations.lock().unwrap().push(line);
                continue;
            };
            shared
                .replies
                .lock()
                .unwrap()
                .insert((dest, irt), msg["body"].clone());
        }
    }
}
