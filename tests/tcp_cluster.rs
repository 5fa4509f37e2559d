//! `oncekv cluster` supervises its nodes: it prints its banner only once every
//! node serves, fails (non-zero, saying why) when they cannot start, reports a
//! node's exit at once with the end of its logs, prints leader changes, and
//! appends to the nodes' logs across runs.

mod support_tcp;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use support_tcp::{free_port, test_dir};

/// A base port with `n` free consecutive ports after it.
fn free_ports(n: u16) -> u16 {
    loop {
        let base = free_port();
        if base.checked_add(n).is_some()
            && (0..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok())
        {
            return base;
        }
    }
}

/// A running `oncekv cluster`, its output lines arriving on `lines`.
struct Cluster {
    child: Child,
    lines: Receiver<String>,
    /// Everything read so far.
    seen: Vec<String>,
}

impl Cluster {
    fn start(dir: &Path, base_port: u16) -> Cluster {
        let mut child = Command::new(env!("CARGO_BIN_EXE_oncekv"))
            .args([
                "cluster",
                "--nodes",
                "3",
                "--base-port",
                &base_port.to_string(),
            ])
            .arg("--data-dir")
            .arg(dir)
            .env_remove(oncekv::tcp::CLUSTER_KEY_VAR)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn oncekv cluster");
        let (tx, lines) = channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    eprintln!("cluster| {line}");
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        Cluster {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads output until a line satisfies `f` (returned), or panics after `within`.
    fn wait_line(&mut self, what: &str, within: Duration, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if f(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no {what} within {within:?}; output: {:#?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("output ended before {what}; output: {:#?}", self.seen)
                }
            }
        }
    }

    /// The pid the banner gave node `name`.
    fn pid_of(&self, name: &str) -> u32 {
        let prefix = format!("{name} ");
        let line = self
            .seen
            .iter()
            .find(|l| l.starts_with(&prefix) && l.contains(" pid "))
            .unwrap_or_else(|| panic!("no banner line for {name}: {:#?}", self.seen));
        line.split(" pid ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// SIGTERM, as Ctrl-C would; waits for its exit (with a deadline).
    fn stop(&mut self) -> std::process::ExitStatus {
        signal(self.child.id(), "-TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the cluster did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.stop();
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(ok.success(), "kill {sig} {pid}");
}

/// Runs a second `oncekv cluster` that must be refused: returns its output.
fn refused(dir: &Path, base_port: u16) -> String {
    let mut second = Cluster::start(dir, base_port);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = second.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the second cluster kept running");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "{status}");
    // The reader threads end with the process's output.
    let text: Vec<String> = second.lines.iter().collect();
    let text = text.join("\n");
    assert!(!text.contains("Ctrl-C stops the cluster"), "{text}");
    text
}

/// A second cluster on a data dir or ports in use fails at once, saying why;
/// a node killed with kill -9 is reported at once with its status; leader
/// changes are printed; with every node dead the command fails; the nodes'
/// stderr logs are appended across runs.
#[test]
fn the_cluster_reports_what_happens_to_its_nodes() {
    let dir = test_dir("cluster-supervise");
    let port = free_ports(3);
    let mut cluster = Cluster::start(&dir, port);
    cluster.wait_line("the banner", Duration::from_secs(60), |l| {
        l.contains("Ctrl-C stops the cluster")
    });
    let first = cluster.wait_line("a leader", Duration::from_secs(30), |l| {
        l.starts_with("leader is now n")
    });
    eprintln!("{first}");

    let text = refused(&dir, free_ports(3));
    assert!(text.contains("in use by another process"), "{text}");
    let text = refused(&test_dir("cluster-supervise-other"), port);
    assert!(text.contains("is not free"), "{text}");

    // kill -9 of the leader: reported at once, and the new leader too. The
    // leader is the one the latest line names: an early election may be
    // reported twice in quick succession, so take what came in meanwhile.
    let mut latest = first;
    while let Ok(line) = cluster.lines.recv_timeout(Duration::from_millis(500)) {
        cluster.seen.push(line.clone());
        if line.starts_with("leader is now n") {
            latest = line;
        }
    }
    let leader = latest
        .trim_start_matches("leader is now ")
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    let pid = cluster.pid_of(&leader);
    signal(pid, "-KILL");
    let line = cluster.wait_line("the kill reported", Duration::from_secs(10), |l| {
        l.starts_with(&format!("{leader} (pid {pid}) exited"))
    });
    assert!(line.contains("signal: 9"), "{line}");
    cluster.wait_line("a new leader", Duration::from_secs(30), |l| {
        l.starts_with("leader is now n") && !l.starts_with(&format!("leader is now {leader} "))
    });
    // The others killed too: nothing is left to serve, the command fails.
    for name in ["n1", "n2", "n3"].into_iter().filter(|n| *n != leader) {
        signal(cluster.pid_of(name), "-KILL");
    }
    cluster.wait_line("the end", Duration::from_secs(10), |l| {
        l.contains("every node has exited")
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = cluster.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster kept running with no node"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "{status}");

    // Run again on the same dir: the logs of both runs are there.
    let mut again = Cluster::start(&dir, port);
    again.wait_line("the banner", Duration::from_secs(60), |l| {
        l.contains("Ctrl-C stops the cluster")
    });
    assert!(again.stop().success());
    let log = std::fs::read_to_string(dir.join("n1").join("stderr.log")).unwrap();
    let runs = log
        .lines()
        .filter(|l| l.starts_with("==== oncekv cluster starting n1 at "))
        .count();
    assert_eq!(runs, 2, "{log}");
}

/// A node that dies during start-up fails the command: non-zero, the others
/// stopped, and the output names the node and ends with its logs' reason.
#[test]
fn a_node_dying_at_start_fails_the_cluster() {
    let dir = test_dir("cluster-start-death");
    let n2 = dir.join("n2");
    std::fs::create_dir_all(&n2).unwrap();
    std::fs::write(n2.join("oncekv.meta"), "not a marker").unwrap();
    let text = refused(&dir, free_ports(3));
    assert!(text.contains("exited during start-up"), "{text}");
    assert!(text.contains("n2"), "{text}");
    assert!(text.contains("oncekv.meta"), "{text}");
    assert!(text.contains("stopping"), "{text}");
}
