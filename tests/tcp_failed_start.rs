//! A failed start says what and where, and touches nothing it does not own:
//! "Address already in use" names the address and leaves no data dir behind (an
//! empty dir made beforehand is left fresh, holding only `node.log`);
//! `serve` on another node's data dir is refused before it writes a byte there
//! (its `node.log` stays as it was); `cluster` on a node's data dir is refused.
//! Each case runs the real binary.

mod support_tcp;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support_tcp::{free_port, test_dir};

/// Runs `cmd` to its exit (killing it past `within`, which fails the test).
fn run_to_exit(cmd: &mut Command, within: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn oncekv");
    let deadline = Instant::now() + within;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "still running after {within:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn oncekv() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oncekv"));
    cmd.env_remove(oncekv::tcp::CLUSTER_KEY_VAR);
    cmd
}

fn serve(name: &str, addr: &str, peers: &str, dir: &Path) -> Command {
    let mut cmd = oncekv();
    cmd.args(["serve", "--id", name, "--listen", addr, "--peers", peers])
        .arg("--data-dir")
        .arg(dir);
    cmd
}

/// Every file under `dir` with its bytes.
fn snapshot_of(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                todo.push(p.clone());
                out.push((p, Vec::new()));
            } else {
                let bytes = std::fs::read(&p).expect("read");
                out.push((p, bytes));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn an_address_in_use_is_named_and_no_data_dir_is_left_behind() {
    let root = test_dir("start-port-in-use");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    // Two levels that do not exist yet: neither may remain.
    let dir = root.join("fresh").join("n1");
    let out = run_to_exit(
        &mut serve("n1", &addr, &format!("n1={addr}"), &dir),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("exit {}; stderr: {stderr}", out.status);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")) && stderr.contains("in use"),
        "the address and the cause are not named: {stderr}"
    );
    assert!(
        !root.join("fresh").exists(),
        "a failed start left {} behind",
        root.join("fresh").display()
    );
}

/// An empty dir the operator made is left fresh by a start that cannot bind: no
/// marker (the next start is checked as a first start, `--join` or not), no
/// log, only `node.log` saying why, at any depth.
#[test]
fn an_address_in_use_leaves_an_empty_dir_fresh() {
    let root = test_dir("start-port-in-use-empty-dir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = root.join("n1");
    // An empty log directory made beforehand too: what the start puts in it
    // goes, the directory stays.
    std::fs::create_dir_all(dir.join("wal")).expect("mkdir");
    let out = run_to_exit(
        &mut serve("n1", &addr, &format!("n1={addr}"), &dir),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("exit {}; stderr: {stderr}", out.status);
    assert!(!out.status.success());
    assert!(stderr.contains("in use"), "{stderr}");
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .expect("the dir itself stays")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["node.log", "wal"], "a failed start left more behind");
    let in_wal = std::fs::read_dir(dir.join("wal")).expect("wal").count();
    assert_eq!(in_wal, 0, "a failed start left files in wal/");
    let log = std::fs::read_to_string(dir.join("node.log")).expect("node.log");
    assert!(log.contains("in use"), "node.log does not say why: {log}");
    // Fresh again: a start with a free address forms a one-node cluster there.
    drop(taken);
    let addr = format!("127.0.0.1:{}", free_port());
    let mut node = serve("n1", &addr, &format!("n1={addr}"), &dir)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.join(oncekv::storage::marker::MARKER_FILE).exists() {
        assert!(Instant::now() < deadline, "the second start set nothing up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = node.kill();
    let _ = node.wait();
}

#[test]
fn a_bad_setting_fails_the_start_before_any_data_dir_exists() {
    let root = test_dir("start-bad-setting");
    let addr = format!("127.0.0.1:{}", free_port());
    let dir = root.join("n1");
    let mut cmd = serve("n1", &addr, &format!("n1={addr}"), &dir);
    cmd.env(oncekv::tcp::NODE_LOG_BYTES_MAX_VAR, "10");
    // A misspelled setting is named (it would otherwise be ignored in silence).
    cmd.env("ONCEKV_SESSION_TIMEOUTMS", "5");
    let out = run_to_exit(&mut cmd, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("exit {}; stderr: {stderr}", out.status);
    assert!(!out.status.success());
    assert!(stderr.contains("node_log_bytes_max"), "{stderr}");
    assert!(
        stderr.contains("warning: ONCEKV_SESSION_TIMEOUTMS is set, but oncekv has no such setting"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("NODE_LOG_BYTES_MAX is set"),
        "a setting read is known: {stderr}"
    );
    assert!(!dir.exists(), "a failed start left {}", dir.display());
}

/// Starts n2 alone (a one-node cluster) on `dir` until it serves, then stops it.
fn make_node_dir(dir: &Path) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = serve("n2", &addr, &format!("n2={addr}"), dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    let log = dir.join("node.log");
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("serving on") {
            break;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "n2 exited: {text}"
        );
        assert!(Instant::now() < deadline, "n2 did not serve: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("wait");
    eprintln!("n2 stopped: {status}");
}

#[test]
fn another_nodes_data_dir_is_refused_and_left_byte_for_byte() {
    let root = test_dir("start-wrong-dir");
    let n2_dir = root.join("n2");
    make_node_dir(&n2_dir);
    let before = snapshot_of(&n2_dir);
    assert!(before.iter().any(|(p, _)| p.ends_with("node.log")));
    let a1 = format!("127.0.0.1:{}", free_port());
    let a2 = format!("127.0.0.1:{}", free_port());
    let peers = format!("n1={a1},n2={a2}");
    let out = run_to_exit(
        &mut serve("n1", &a1, &peers, &n2_dir),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("exit {}; stderr: {stderr}", out.status);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a foreign dir is a failed start"
    );
    assert!(
        stderr.contains("data dir of node 2, not of node 1")
            && stderr.contains(&n2_dir.display().to_string()),
        "the dir and its owner are not named: {stderr}"
    );
    assert_eq!(
        snapshot_of(&n2_dir),
        before,
        "the refused start changed n2's data dir"
    );
    // The same id under another name (`x2` for `n2`) is refused the same way.
    let x2_peers = format!("n1={a1},x2={a2}");
    let out = run_to_exit(
        &mut serve("x2", &a2, &x2_peers, &n2_dir),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("data dir of node n2, not of x2"),
        "{stderr}"
    );
    assert_eq!(snapshot_of(&n2_dir), before);

    // A damaged marker: a failed start too (1), as a deleted one is, not bad usage.
    let marker = n2_dir.join("oncekv.meta");
    let text = std::fs::read_to_string(&marker).expect("marker");
    std::fs::write(&marker, &text[..text.len() / 2]).expect("truncate the marker");
    let out = run_to_exit(
        &mut serve("n2", &a2, &peers, &n2_dir),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("oncekv.meta is corrupt"), "{stderr}");
}

/// A second `serve` on the dir of a node that is running is refused, naming the
/// dir, without writing a line into the running node's `node.log`.
#[test]
fn a_second_start_on_a_running_nodes_dir_is_refused_without_touching_its_log() {
    let root = test_dir("start-running-dir");
    let dir = root.join("n1");
    let addr = format!("127.0.0.1:{}", free_port());
    let peers = format!("n1={addr}");
    let mut running = serve("n1", &addr, &peers, &dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let log = dir.join("node.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("serving on")
    {
        assert!(running.try_wait().expect("wait").is_none(), "n1 exited");
        assert!(Instant::now() < deadline, "n1 did not serve");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = run_to_exit(
        &mut serve("n1", &addr, &peers, &dir),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = running.kill();
    let _ = running.wait();
    assert_eq!(out.status.code(), Some(254), "{stderr}");
    assert!(
        stderr.contains("already running") && stderr.contains(&dir.display().to_string()),
        "{stderr}"
    );
    assert!(
        !text.contains("already running") && !text.contains("locked by another process"),
        "the refused start wrote into the running node's log: {text}"
    );
}

/// A dir holding files that are not a node's is refused with its name, and not
/// a byte is written in it (no node.log).
#[test]
fn a_foreign_dir_is_refused_and_left_as_it_was() {
    let root = test_dir("start-foreign-dir");
    let dir = root.join("junk");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("a.txt"), b"hi\n").expect("write");
    let before = snapshot_of(&dir);
    let a1 = format!("127.0.0.1:{}", free_port());
    let out = run_to_exit(
        &mut serve("n1", &a1, &format!("n1={a1}"), &dir),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("not an oncekv data dir") && stderr.contains("a.txt"),
        "{stderr}"
    );
    assert_eq!(
        snapshot_of(&dir),
        before,
        "the refused start wrote in the dir"
    );
}

#[test]
fn cluster_on_a_nodes_data_dir_is_refused() {
    let root = test_dir("start-cluster-in-node-dir");
    let n2_dir = root.join("n2");
    make_node_dir(&n2_dir);
    let before = snapshot_of(&n2_dir);
    let port = free_port();
    let mut cmd = oncekv();
    cmd.args(["cluster", "--nodes", "3", "--base-port", &port.to_string()])
        .arg("--data-dir")
        .arg(&n2_dir);
    let out = run_to_exit(&mut cmd, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("exit {}; stderr: {stderr}", out.status);
    assert!(!out.status.success());
    assert!(
        stderr.contains("is a node's data dir"),
        "not refused as a node's dir: {stderr}"
    );
    assert_eq!(snapshot_of(&n2_dir), before, "cluster changed n2's dir");
    // Inside a node's dir too.
    let mut cmd = oncekv();
    cmd.args(["cluster", "--nodes", "3", "--base-port", &port.to_string()])
        .arg("--data-dir")
        .arg(n2_dir.join("inner"));
    let out = run_to_exit(&mut cmd, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("inside the data dir of a node"), "{stderr}");
    assert!(!n2_dir.join("inner").exists());
}

/// The node's own dir, its address taken (another process holds it): the start
/// fails naming the address, and opening the log on the way changed nothing in
/// it, byte for byte (its checkpoint already said what the open found). Only
/// `node.log` gains the lines that say why.
#[test]
fn an_address_in_use_on_a_nodes_own_dir_leaves_its_log_byte_for_byte() {
    let root = test_dir("start-busy-own-dir");
    let dir = root.join("n2");
    make_node_dir(&dir);
    let without_log = |dir: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        snapshot_of(dir)
            .into_iter()
            .filter(|(p, _)| !p.ends_with("node.log"))
            .collect()
    };
    let before = without_log(&dir);
    assert!(
        before.iter().any(|(p, _)| p.ends_with("CHECKPOINT")),
        "{before:?}"
    );
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    let out = run_to_exit(
        &mut serve("n2", &addr, &format!("n2={addr}"), &dir),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&addr), "the address is not named: {stderr}");
    assert_eq!(
        without_log(&dir),
        before,
        "the failed start changed the log"
    );
}
