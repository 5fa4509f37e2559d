//! Request limits in Maelstrom mode (stdin/stdout), on real processes: a client
//! line over `request_bytes_max` is refused with error 12 without being held in
//! memory, requests serde_json cannot take whole get error 12 with their
//! msg_id, a message for another node is refused, and the cluster keeps
//! committing; a request just under the limit is written and read back; a
//! batch of proposals is never larger than the in-flight bound.

mod support;

use std::io::{BufRead, Write};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use support::Cluster;

const MIB: usize = 1 << 20;

/// Election and RPC timing for a cluster replicating 1 MiB entries in a debug
/// build on a loaded machine.
const SLOW: &[(&str, &str)] = &[
    ("ONCEKV_HEARTBEAT_INTERVAL_MS", "200"),
    ("ONCEKV_ELECTION_TIMEOUT_MIN_MS", "2000"),
    ("ONCEKV_ELECTION_TIMEOUT_MAX_MS", "4000"),
    ("ONCEKV_REQUEST_TIMEOUT_MS", "5000"),
];

#[test]
fn oversized_and_unparseable_requests_get_error_12_and_the_cluster_keeps_committing() {
    let cluster = Cluster::start_with_env(3, SLOW);
    let leader = cluster.leader(None);
    let follower = (leader + 1) % 3;
    let names = ["n0", "n1", "n2"];
    let big = |n: usize| "x".repeat(n);
    let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    let refused_for_size = [
        format!(
            r#""type":"write","key":"w","value":"{}""#,
            big(4 * MIB + 1024)
        ),
        format!(
            r#""type":"cas","key":"w","from":"{}","to":"{}""#,
            big(2 * MIB),
            big(2 * MIB)
        ),
        format!(r#""type":"write","key":"{}","value":1"#, big(4 * MIB)),
    ];
    let unparseable = [
        "1e400".to_string(),
        "-1e400".to_string(),
        "9".repeat(5000),
        deep(100),
        deep(125),
        deep(127),
        deep(128),
        deep(100_000),
    ]
    .map(|v| format!(r#""type":"write","key":"d","value":{v}"#));
    let mut msg_id = 1000;
    let within = Duration::from_secs(20);
    for node in [leader, follower] {
        let mut call = |body: &str, dest: &str| {
            msg_id += 1;
            let line =
                format!(r#"{{"src":"c9","dest":"{dest}","body":{{{body},"msg_id":{msg_id}}}}}"#);
            cluster.send_line(node, &line);
            cluster.wait_reply(&("c9".to_string(), msg_id), within)
        };
        for body in &refused_for_size {
            for attempt in 0..2 {
                let b = call(body, names[node]);
                assert_eq!(b["code"], 12, "node {node} attempt {attempt}: {b}");
                let text = b["text"].as_str().unwrap_or("");
                assert!(text.contains("ONCEKV_REQUEST_BYTES_MAX"), "{b}");
            }
        }
        for body in &unparseable {
            let b = call(body, names[node]);
            assert_eq!(b["code"], 12, "node {node}: {}: {b}", &body[..40]);
        }
        // A message for another node is not served.
        let other = names[(node + 2) % 3];
        let b = call(r#""type":"write","key":"m","value":1"#, other);
        assert_eq!(b["code"], 12, "{b}");
        assert!(
            b["text"].as_str().unwrap_or("").contains("delivered to"),
            "{b}"
        );
        let b = call(r#""type":"write","key":"w","value":1"#, names[node]);
        assert_eq!(b["type"], "write_ok", "node {node}: {b}");
    }
    let r = cluster.request_as("c1", follower, json!({"type":"read","key":"m"}), within);
    assert_eq!(r["code"], 20, "the misaddressed write did not happen: {r}");
    // Just under the limit: written through a follower (forwarded to the
    // leader), read back on another node.
    let value = "v".repeat(MIB - 1024);
    let r = cluster.request_as(
        "c1",
        follower,
        json!({"type":"write","key":"big","value":value}),
        within,
    );
    assert_eq!(r["type"], "write_ok", "{r}");
    let r = cluster.request_as("c1", leader, json!({"type":"read","key":"big"}), within);
    assert_eq!(r["value"], json!(value));
    for i in 0..3 {
        let r = cluster.request_as("c1", i, json!({"type":"write","key":"w","value":i}), within);
        assert_eq!(r["type"], "write_ok", "node {i}: {r}");
    }
    assert!(
        cluster.violations().is_empty(),
        "{:?}",
        cluster.violations()
    );
}

/// A 64 MiB client line is refused without being held in memory: the node's
/// peak resident size stays far below the line's size.
#[cfg(target_os = "linux")]
#[test]
fn a_huge_client_line_is_not_held_in_memory() {
    let (mut child, mut stdin, mut stdout) = support::spawn_node(&[], Stdio::null());
    let mut recv = || {
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read");
        serde_json::from_str::<Value>(&line).expect("json")["body"].clone()
    };
    let init = r#"{"src":"c0","dest":"n1","body":{"type":"init","msg_id":1,"node_id":"n1","node_ids":["n1"]}}"#;
    writeln!(stdin, "{init}").expect("write");
    assert_eq!(recv()["type"], "init_ok");
    let pid = child.id();
    let peak_kib = move || -> usize {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    };
    let before = peak_kib();
    let huge = 64 * MIB;
    write!(
        stdin,
        r#"{{"src":"c1","dest":"n1","body":{{"type":"write","key":"k","value":""#
    )
    .expect("write");
    let chunk = vec![b'x'; MIB];
    for _ in 0..huge / MIB {
        stdin.write_all(&chunk).expect("write");
    }
    writeln!(stdin, r#"","msg_id":2}}}}"#).expect("write");
    writeln!(
        stdin,
        r#"{{"src":"c1","dest":"n1","body":{{"type":"write","key":"k","value":1,"msg_id":3}}}}"#
    )
    .expect("write");
    stdin.flush().expect("flush");
    let b = recv();
    assert_eq!(
        (b["in_reply_to"].clone(), b["code"].clone()),
        (json!(2), json!(12)),
        "{b}"
    );
    assert_eq!(recv()["type"], "write_ok");
    let after = peak_kib();
    eprintln!(
        "peak resident size {before} KiB before, {after} KiB after a {} MiB line",
        huge / MIB
    );
    assert!(
        (after - before) * 1024 < huge / 4,
        "{before} -> {after} KiB"
    );
    drop(stdin);
    let _ = child.wait();
}

/// Proposals that arrive back to back go to Raft as one batch, which holds one
/// in-flight place per proposal: with fewer places than a batch's length
/// (`ONCEKV_REQUESTS_IN_FLIGHT_MAX=2`) the batch is cut to fit, and every write
/// is answered (a batch asking for more places than exist waited for ever).
#[test]
fn a_batch_never_asks_for_more_places_than_exist() {
    let writes = 40;
    let mut input = String::from(
        r#"{"src":"c0","dest":"n1","body":{"type":"init","msg_id":1,"node_id":"n1","node_ids":["n1"]}}"#,
    );
    input.push('\n');
    for i in 0..writes {
        let body = json!({"type":"write","key":i % 3,"value":i,"msg_id":i + 2});
        input.push_str(&json!({"src":"c1","dest":"n1","body":body}).to_string());
        input.push('\n');
    }
    let (mut child, mut stdin, stdout) =
        support::spawn_node(&[("ONCEKV_REQUESTS_IN_FLIGHT_MAX", "2")], Stdio::null());
    stdin.write_all(input.as_bytes()).expect("write");
    drop(stdin);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines() {
            let Ok(line) = line else { return };
            let _ = tx.send(serde_json::from_str::<Value>(&line).expect("json")["body"].clone());
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut answered = Vec::new();
    while answered.len() < writes + 1 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(body) => answered.push(body),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "{} of {} answered: {answered:?}",
                    answered.len(),
                    writes + 1
                );
            }
        }
    }
    for (i, body) in answered.iter().enumerate().skip(1) {
        assert_eq!(body["type"], "write_ok", "{body}");
        assert_eq!(body["in_reply_to"], json!(i + 1), "in order: {body}");
    }
    let _ = child.wait();
}
