//! The commands that print (`check`, `client`, `cluster`) with stdout a pipe whose
//! reader has gone away (`oncekv ... | head -1` once `head` is done): they end
//! quietly, with their usual exit status (README, "Exit status"), instead of
//! panicking on the write. Likewise with stderr gone.

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod support_tcp;
use support_tcp::{free_port, test_dir};

/// The write end of a pipe whose read end is already closed: every write to it
/// fails with `EPIPE` (Rust ignores `SIGPIPE`, so the process sees the error).
fn closed_pipe() -> Stdio {
    let mut fds = [0; 2];
    // SAFETY: `pipe` fills both descriptors on success; each is owned once below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    // SAFETY: the read end is ours and is closed exactly once, here.
    drop(unsafe { OwnedFd::from_raw_fd(fds[0]) });
    // SAFETY: the write end is ours; the `Stdio` now owns it.
    Stdio::from(unsafe { OwnedFd::from_raw_fd(fds[1]) })
}

/// Runs `oncekv ARGS` with stdout a closed pipe, waiting up to `within`.
fn run_unread(args: &[&str], within: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_oncekv"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn oncekv");
    let deadline = Instant::now() + within;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("oncekv {args:?} did not end within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("wait")
}

fn assert_quiet(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
}

/// A history with one write and one read of it: linearizable.
const HISTORY: &str = r#"{"process":0,"type":"invoke","f":"write","key":0,"value":1,"time":1000}
{"process":0,"type":"ok","f":"write","key":0,"value":1,"time":2000}
{"process":1,"type":"invoke","f":"read","key":0,"value":null,"time":3000}
{"process":1,"type":"ok","f":"read","key":0,"value":1,"time":4000}
"#;

#[test]
fn check_keeps_its_verdict_when_nobody_reads_it() {
    let dir = test_dir("cli-output-check");
    let history = dir.join("history.jsonl");
    std::fs::write(&history, HISTORY).unwrap();
    let path = history.to_str().unwrap();
    // Read, the verdict is there; unread, the exit status still gives it.
    let read = Command::new(env!("CARGO_BIN_EXE_oncekv"))
        .args(["check", path])
        .output()
        .unwrap();
    assert_eq!(read.status.code(), Some(0), "{read:?}");
    assert!(String::from_utf8_lossy(&read.stdout).contains("VALID in "));
    for args in [&["check", path][..], &["check", "--json", path]] {
        let out = run_unread(args, Duration::from_secs(30));
        assert_quiet(&out);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
    }
}

#[test]
fn client_keeps_its_exit_status_when_nobody_reads_it() {
    // Nothing listens there: every node's status line says why, exit 2 (no answer).
    let addr = format!("127.0.0.1:{}", free_port());
    let out = run_unread(
        &["client", "--peers", &addr, "--deadline", "1", "status"],
        Duration::from_secs(30),
    );
    assert_quiet(&out);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_status_of_a_live_cluster_nobody_reads_exits_0() {
    let cluster = support_tcp::TestCluster::start("cli-output-status", 1, &[]);
    cluster.wait_leader(Duration::from_secs(20)).await;
    let peers = cluster.addrs().join(",");
    for args in [
        &["client", "--peers", &peers, "status"][..],
        &["client", "--peers", &peers, "status", "-o", "json"],
    ] {
        let out = run_unread(args, Duration::from_secs(30));
        assert_quiet(&out);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
    }
}

#[test]
fn a_cluster_nobody_watches_stops_its_nodes_and_exits() {
    let dir = test_dir("cli-output-cluster");
    let port = free_port();
    let out = run_unread(
        &[
            "cluster",
            "--nodes",
            "1",
            "--base-port",
            &port.to_string(),
            "--data-dir",
            dir.to_str().unwrap(),
        ],
        Duration::from_secs(90),
    );
    assert_quiet(&out);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // Its node was stopped before it exited: the port is free again.
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the node's port is free");
    let log = std::fs::read_to_string(dir.join("n1").join("stderr.log")).unwrap();
    assert!(log.contains("==== oncekv cluster starting n1 at "), "{log}");
}

/// Runs `oncekv ARGS` with stderr a closed pipe (stdout read), waiting up to
/// `within`; `interrupt_after` sends SIGINT once stdout shows that line.
fn run_without_stderr(args: &[&str], interrupt_after: Option<&str>, within: Duration) -> Output {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_oncekv"))
        .args(args)
        .env_remove(oncekv::tcp::CLUSTER_KEY_VAR)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(closed_pipe())
        .spawn()
        .expect("spawn oncekv");
    let stdout = child.stdout.take().expect("stdout");
    let pid = child.id();
    let expected = interrupt_after.map(str::to_string);
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if expected.as_deref().is_some_and(|e| line.contains(e)) {
                // SAFETY: a plain kill(2) of our own child's pid.
                unsafe { libc::kill(pid as i32, libc::SIGINT) };
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        seen
    });
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("oncekv {args:?} did not end within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = reader.join().expect("reader").into_bytes();
    Output {
        status,
        stdout,
        stderr: Vec::new(),
    }
}

/// With stderr gone (a closed pipe: a terminal that went away, `2>&-`-like),
/// what would have gone there is dropped: the commands keep their exit status
/// instead of panicking (101) on the write.
#[test]
fn a_closed_stderr_changes_no_exit_status() {
    // A client whose every node is down says why on stderr: 2, no answer.
    let dead = format!("127.0.0.1:{}", free_port());
    let out = run_without_stderr(
        &["client", "--peers", &dead, "--deadline", "1", "read", "k"],
        None,
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // A cluster logs to stderr as it starts and stops: it serves, and stops on
    // Ctrl-C with 0.
    let dir = test_dir("cli-output-no-stderr");
    let port = free_port();
    let out = run_without_stderr(
        &[
            "cluster",
            "--nodes",
            "1",
            "--base-port",
            &port.to_string(),
            "--data-dir",
            dir.to_str().unwrap(),
        ],
        Some("Ctrl-C stops the cluster."),
        Duration::from_secs(90),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Ctrl-C stops the cluster."), "{stdout}");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the node's port is free");
}
