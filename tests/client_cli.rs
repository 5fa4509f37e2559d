//! `oncekv client` through the real binary against a 3-node TCP cluster: peers
//! from `ONCEKV_PEERS`, options after the subcommand, `status`/`members`/`health`
//! as tables and as one JSON document, one-shot mutations that close the session
//! they opened, `--client-id`/`--seq` sessions left open and `close-session`, the
//! note on a reused seq, and `shell` fed from a pipe (its `retry` answered from
//! the session cache, the counter moved once).

mod support_tcp;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support_tcp::TestCluster;

/// Runs `oncekv client ARGS` with `ONCEKV_PEERS` set to `peers` and no --peers.
fn client(peers: &str, args: &[&str]) -> Output {
    client_with_stdin(peers, args, b"")
}

/// [`client`] with `stdin` piped in.
fn client_with_stdin(peers: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_oncekv"))
        .arg("client")
        .args(args)
        .env("ONCEKV_PEERS", peers)
        .env_remove(oncekv::tcp::CLUSTER_KEY_VAR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run oncekv client");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    eprintln!(
        "oncekv client {args:?}: {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `status -o json`: one JSON document, an array with one object per peer.
fn status_json(peers: &str) -> Vec<Value> {
    let out = client(peers, &["status", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = stdout(&out);
    assert_eq!(text.trim_end().lines().count(), 1, "one document: {text}");
    match serde_json::from_str::<Value>(&text).expect("status -o json is JSON") {
        Value::Array(nodes) => nodes,
        other => panic!("not an array: {other}"),
    }
}

/// The open sessions the leader's applied state holds, once a leader answers.
fn leader_sessions(peers: &str) -> u64 {
    let nodes = status_json(peers);
    let leader = nodes
        .iter()
        .find(|n| n["role"] == "Leader")
        .expect("a leader answers");
    leader["sessions"].as_u64().expect("sessions")
}

/// Waits until every node has applied what the leader has, so counts agree.
fn wait_applied(peers: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let nodes = status_json(peers);
        let applied: Vec<&Value> = nodes.iter().map(|n| &n["applied_index"]).collect();
        if applied.iter().all(|a| *a == applied[0] && !a.is_null()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nodes never caught up: {nodes:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_cli_against_a_cluster() {
    let cluster = TestCluster::start("client-cli", 3, &[]);
    cluster.wait_leader(Duration::from_secs(20)).await;
    let peers = cluster.addrs().join(",");
    let peers = peers.as_str();

    // Options after the subcommand; peers from ONCEKV_PEERS.
    let out = client(peers, &["write", "x", "1", "--deadline", "5"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(stdout(&out).trim(), r#"{"type":"write_ok"}"#);

    // status: a table with the leader by name, the same in every row.
    wait_applied(peers);
    let out = client(peers, &["status"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = stdout(&out);
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .expect("header")
        .split("  ")
        .filter(|c| !c.is_empty())
        .map(str::trim)
        .collect();
    assert_eq!(
        header,
        [
            "NODE", "ADDRESS", "ROLE", "TERM", "LEADER", "LAST LOG", "APPLIED", "SESSIONS"
        ],
        "{text}"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 3, "{text}");
    let leader = rows
        .iter()
        .find(|r| r[2] == "Leader")
        .expect("a leader row")[0];
    assert!(leader.starts_with('n'), "{text}");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[0], format!("n{}", i + 1), "{text}");
        assert_eq!(row[1], cluster.addrs()[i], "{text}");
        assert_eq!(row[4], leader, "the leader by name: {text}");
    }
    // status -o json: one document; the leader's name next to its id.
    let nodes = status_json(peers);
    assert_eq!(nodes.len(), 3);
    for n in &nodes {
        assert_eq!(n["leader_name"], leader, "{n}");
        assert_eq!(n["members"].as_object().map(|m| m.len()), Some(3), "{n}");
    }

    // members: three voters, one marked as leader.
    let out = client(peers, &["members"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = stdout(&out);
    assert!(text.starts_with("NAME"), "{text}");
    let marked: Vec<&str> = text.lines().skip(1).filter(|l| l.ends_with('*')).collect();
    assert_eq!(marked.len(), 1, "{text}");
    assert!(marked[0].starts_with(leader), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.contains("voter")).count(),
        3,
        "{text}"
    );
    let out = client(peers, &["-o", "json", "members"]);
    let doc: Value = serde_json::from_str(&stdout(&out)).expect("members -o json");
    assert_eq!(doc["leader"], leader);
    assert_eq!(doc["members"].as_array().map(Vec::len), Some(3), "{doc}");

    // health: every endpoint healthy.
    let out = client(peers, &["health"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(stdout(&out).matches("is healthy").count(), 3);
    let out = client(peers, &["health", "-o", "json"]);
    let doc: Value = serde_json::from_str(&stdout(&out)).expect("health -o json");
    let all = doc.as_array().expect("array");
    assert!(
        all.iter()
            .all(|e| e["healthy"] == true && e["took_ms"].is_number()),
        "{doc}"
    );

    // One-shot mutations close the session they open.
    let before = leader_sessions(peers);
    for _ in 0..5 {
        let out = client(peers, &["add", "hits", "1"]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
    }
    assert_eq!(
        leader_sessions(peers),
        before,
        "one-shot adds left sessions open"
    );
    let out = client(peers, &["read", "hits"]);
    assert_eq!(stdout(&out).trim(), r#"{"type":"read_ok","value":5}"#);

    // Your own session: left open; a reused seq returns the old reply (said on
    // stderr when its type shows it); close-session closes it; after that its
    // requests get 1000.
    let own = ["--client-id", "mine", "--seq", "1"];
    let out = client(peers, &[&["add", "c", "2"][..], &own].concat());
    assert_eq!(stdout(&out).trim(), r#"{"type":"add_ok","value":2}"#);
    assert_eq!(leader_sessions(peers), before + 1);
    let out = client(peers, &[&["add", "c", "2"][..], &own].concat());
    assert_eq!(
        stdout(&out).trim(),
        r#"{"type":"add_ok","value":2}"#,
        "a retry"
    );
    let out = client(peers, &[&["write", "c", "9"][..], &own].concat());
    assert_eq!(stdout(&out).trim(), r#"{"type":"add_ok","value":2}"#);
    assert!(stderr(&out).contains("is a cached one"), "{out:?}");
    let out = client(peers, &["read", "c"]);
    assert_eq!(
        stdout(&out).trim(),
        r#"{"type":"read_ok","value":2}"#,
        "ran once"
    );
    let out = client(peers, &["close-session", "--client-id", "mine"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(leader_sessions(peers), before);
    let out = client(
        peers,
        &["add", "c", "1", "--client-id", "mine", "--seq", "2"],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stdout(&out).contains("\"code\":1000"), "{out:?}");

    // The shell, fed from a pipe: numbered requests, a retry from the cache,
    // the counter moved once, the session closed at the end.
    // A line that is not UTF-8 is reported and skipped, not the end.
    let script = b"add s 5\nadd s 1\nretry\n\xff\nread s\nbogus\nhelp\nquit\nadd s 100\n";
    let out = client_with_stdin(peers, &["shell"], script);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains(r#"[seq 1] {"type":"add_ok","value":5}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"[seq 2] {"type":"add_ok","value":6}"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"[seq 2, retried: add s 1] {"type":"add_ok","value":6}  (from the session cache"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"[read] {"type":"read_ok","value":6}"#),
        "{text}"
    );
    assert!(text.contains("retry "), "help was printed: {text}");
    assert!(
        stderr(&out).contains("unknown command \"bogus\""),
        "{out:?}"
    );
    assert!(stderr(&out).contains("not UTF-8"), "{out:?}");
    let opened = text.split_whitespace().nth(1).expect("session id");
    assert!(text.contains(&format!("session {opened} closed")), "{text}");
    let out = client(peers, &["read", "s"]);
    assert_eq!(
        stdout(&out).trim(),
        r#"{"type":"read_ok","value":6}"#,
        "quit stopped it"
    );
    assert_eq!(
        leader_sessions(peers),
        before,
        "the shell closed its session"
    );

    // A one-shot write refused before sending (over the request limit) closes
    // the session it opened: bad usage leaves nothing behind.
    let out = Command::new(env!("CARGO_BIN_EXE_oncekv"))
        .args(["client", "write", "big", &"a".repeat(3000)])
        .env("ONCEKV_PEERS", peers)
        .env("ONCEKV_REQUEST_BYTES_MAX", "1024")
        .env_remove(oncekv::tcp::CLUSTER_KEY_VAR)
        .output()
        .expect("run oncekv client");
    assert_eq!(out.status.code(), Some(254), "{out:?}");
    assert_eq!(
        leader_sessions(peers),
        before,
        "a refused one-shot write left its session open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_names_the_node_that_is_down() {
    let mut cluster = TestCluster::start("client-health", 3, &[]);
    cluster.wait_leader(Duration::from_secs(20)).await;
    cluster.kill(2);
    cluster.wait_leader(Duration::from_secs(20)).await;
    let peers = cluster.addrs().join(",");
    let out = client(&peers, &["health", "--deadline", "5"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = stdout(&out);
    let down = &cluster.addrs()[2];
    assert!(text.contains(&format!("{down} is unhealthy")), "{text}");
    assert_eq!(text.matches("is healthy").count(), 2, "{text}");
    // status shows it as unreachable, with the reason.
    let out = client(&peers, &["status", "--deadline", "5"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = stdout(&out);
    assert!(text.lines().next().unwrap().ends_with("ERROR"), "{text}");
    let row = text
        .lines()
        .find(|l| l.contains(down.as_str()))
        .expect("its row");
    assert!(row.contains("unreachable"), "{text}");
}
