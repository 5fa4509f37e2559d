//! Process-level tests: the real binary on stdin/stdout, alone and in clusters wired
//! by a test router.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Cluster, run_script};

const INIT: &str = r#"{"src":"c0","dest":"n1","body":{"type":"init","msg_id":1,"node_id":"n1","node_ids":["n1"]}}"#;

fn script(lines: &[Value]) -> String {
    let mut s = format!("{INIT}\n");
    for (i, body) in lines.iter().enumerate() {
        let mut body = body.clone();
        body["msg_id"] = json!(i + 2);
        s.push_str(&json!({"src":"c1","dest":"n1","body":body}).to_string());
        s.push('\n');
    }
    s
}

fn bodies(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json line")["body"].clone())
        .collect()
}

/// The reference exchange of the protocol (`docs/protocol.md`, "init"): a
/// one-node cluster's `init` and a `write`, answered byte for byte. The input
/// and the expected output are fixtures of this repository
/// (`tests/fixtures/reference_exchange.in` and `.out`).
#[test]
fn seed_exchange_is_byte_for_byte() {
    let input = include_str!("fixtures/reference_exchange.in");
    let expected = include_str!("fixtures/reference_exchange.out");
    assert_eq!(
        input.lines().next(),
        Some(INIT),
        "the fixture starts with INIT"
    );
    assert_eq!(run_script(input), expected);
}

/// A single node answers a script exactly like a sequential store, in input order.
#[test]
fn single_node_is_a_sequential_store() {
    let out = run_script(&script(&[
        json!({"type":"read","key":1}),
        json!({"type":"write","key":1,"value":3}),
        json!({"type":"read","key":1}),
        json!({"type":"cas","key":1,"from":4,"to":5}),
        json!({"type":"cas","key":1,"from":3,"to":5}),
        json!({"type":"read","key":1}),
        json!({"type":"cas","key":2,"from":1,"to":2}),
        json!({"type":"cas","key":2,"from":1,"to":2,"create_if_not_exists":true}),
        json!({"type":"write","key":[1,"a"],"value":{"x":1}}),
        json!({"type":"read","key":[1,"a"]}),
        json!({"type":"read","key":2}),
    ]));
    let got: Vec<Value> = bodies(&out);
    let expect = [
        json!({"type":"init_ok","in_reply_to":1,"msg_id":0}),
        json!({"type":"error","code":20,"text":"key does not exist","in_reply_to":2,"msg_id":1}),
        json!({"type":"write_ok","in_reply_to":3,"msg_id":2}),
        json!({"type":"read_ok","value":3,"in_reply_to":4,"msg_id":3}),
        json!({"type":"error","code":22,"text":"expected 4, had 3","in_reply_to":5,"msg_id":4}),
        json!({"type":"cas_ok","in_reply_to":6,"msg_id":5}),
        json!({"type":"read_ok","value":5,"in_reply_to":7,"msg_id":6}),
        json!({"type":"error","code":20,"text":"key does not exist","in_reply_to":8,"msg_id":7}),
        json!({"type":"cas_ok","in_reply_to":9,"msg_id":8}),
        json!({"type":"write_ok","in_reply_to":10,"msg_id":9}),
        json!({"type":"read_ok","value":{"x":1},"in_reply_to":11,"msg_id":10}),
        json!({"type":"read_ok","value":2,"in_reply_to":12,"msg_id":11}),
    ];
    assert_eq!(got, expect, "output:\n{out}");
}

/// A retry arriving right behind an entry that changes its answer (a close, a
/// raised `first_outstanding`) gets the answer a sequential store gives, not the
/// reply cached before that entry applied (`docs/protocol.md`, "Reply order").
/// Staged so the race is certain: the original request has applied (its reply is cached) before the
/// close and the retry arrive together, in one read.
#[test]
fn a_retry_behind_a_close_or_a_window_move_is_answered_in_order() {
    use std::io::{BufRead, Write};
    let (mut child, mut stdin, mut stdout) = support::spawn_node(&[], std::process::Stdio::null());
    let mut msg_id = 0;
    let mut send = move |bodies: &[Value]| {
        let mut chunk = String::new();
        for b in bodies {
            msg_id += 1;
            let mut b = b.clone();
            b["msg_id"] = json!(msg_id);
            chunk += &json!({"src":"c1","dest":"n0","body":b}).to_string();
            chunk.push('\n');
        }
        // One write, so the node reads the lines back to back.
        stdin.write_all(chunk.as_bytes()).expect("write");
        stdin.flush().expect("flush");
    };
    let mut recv = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|_| {
                let mut line = String::new();
                stdout.read_line(&mut line).expect("read");
                serde_json::from_str::<Value>(&line).expect("json")["body"].clone()
            })
            .collect()
    };
    send(&[json!({"type":"init","node_id":"n0","node_ids":["n0"]})]);
    assert_eq!(recv(1)[0]["type"], "init_ok");
    send(&[json!({"type":"write","key":1,"value":1,"client_id":"A","seq":1})]);
    assert_eq!(recv(1)[0]["type"], "write_ok");
    send(&[
        json!({"type":"close_session","client_id":"A"}),
        json!({"type":"write","key":1,"value":1,"client_id":"A","seq":1}),
    ]);
    let r = recv(2);
    assert_eq!(r[0]["type"], "close_session_ok", "{r:?}");
    assert_eq!(r[1]["code"], 1000, "the retry came after the close: {r:?}");

    let add = |seq: u64, fo: u64| json!({"type":"add","key":2,"delta":1,"client_id":"P","seq":seq,"first_outstanding":fo});
    send(&[add(1, 1)]);
    assert_eq!(recv(1)[0]["value"], 1);
    send(&[add(2, 2), add(1, 1)]);
    let r = recv(2);
    assert_eq!(r[0]["value"], 2, "{r:?}");
    assert_eq!(
        r[1]["code"], 1001,
        "seq 1 is below the raised window: {r:?}"
    );
    drop(send); // owns stdin: closing it ends the node
    assert!(child.wait().expect("wait").success());
}

/// Retries of write, cas and add return the cached reply and execute once; `add`
/// makes a second execution visible.
#[test]
fn duplicate_retries_execute_once() {
    let s = |extra: Value| {
        let mut b = extra;
        b["client_id"] = json!("c9");
        b
    };
    let out = run_script(&script(&[
        s(json!({"type":"add","key":"k","delta":5,"seq":1})),
        s(json!({"type":"add","key":"k","delta":5,"seq":1})),
        s(json!({"type":"write","key":"w","value":1,"seq":2})),
        json!({"type":"write","key":"w","value":2}),
        s(json!({"type":"write","key":"w","value":1,"seq":2})),
        s(json!({"type":"cas","key":"k","from":5,"to":100,"seq":3})),
        json!({"type":"write","key":"k","value":5}),
        s(json!({"type":"cas","key":"k","from":5,"to":100,"seq":3})),
        s(json!({"type":"add","key":"k","delta":5,"seq":1})),
        json!({"type":"read","key":"k"}),
        json!({"type":"read","key":"w"}),
    ]));
    let b = bodies(&out);
    assert_eq!(b[1]["value"], 5);
    assert_eq!(
        b[2]["value"], 5,
        "the retried add returned the cached total"
    );
    assert_eq!(
        b[5]["type"], "write_ok",
        "the retried write was answered from the cache"
    );
    assert_eq!(b[6]["type"], "cas_ok");
    assert_eq!(
        b[8]["type"], "cas_ok",
        "cached cas_ok, though from no longer matches"
    );
    assert_eq!(
        b[9]["type"], "add_ok",
        "an old seq gets a cached reply, never runs"
    );
    assert_eq!(b[10]["value"], 5, "neither the cas nor the add ran twice");
    assert_eq!(
        b[11]["value"], 2,
        "the retried write did not overwrite the later write"
    );
}

/// Bad input gets a clear error or a log line, never a crash, and the node keeps
/// answering.
#[test]
fn bad_input_never_kills_the_node() {
    let before_init = r#"{"src":"c1","dest":"n1","body":{"type":"read","msg_id":77,"key":1}}"#;
    let bad = [
        "not json at all",
        r#"{"src":"c1","dest":"n1"}"#,
        r#"{"src":"c1","dest":"n1","body":{"type":"write","msg_id":90,"key":1}}"#,
        r#"{"src":"c1","dest":"n1","body":{"type":"write","msg_id":91,"key":1,"value":1,"client_id":"a","seq":-3}}"#,
        r#"{"src":"c1","dest":"n1","body":{"type":"write","msg_id":92,"key":1,"value":1,"client_id":"a","seq":1.5}}"#,
        r#"{"src":"c1","dest":"n1","body":{"type":"add","msg_id":93,"key":1,"delta":"x"}}"#,
        r#"{"src":"c1","dest":"n1","body":{"type":"teleport","msg_id":94}}"#,
        r#"{"src":"c1","dest":"n1","body":{"msg_id":95}}"#,
        r#"{"src":"n7","dest":"n1","body":{"type":"raft_append","msg_id":96,"rpc":{}}}"#,
        r#"{"src":"c1","dest":"n1","body":{"type":"read","msg_id":"x","key":1}}"#,
        "\u{0}\u{1}garbage\u{7f}",
        r#"{"src":"c1","dest":"n1","body":{"type":"write","msg_id":97,"key":1,"value":[1,123456789012345678901234567890]}}"#,
    ];
    let mut input = format!("{before_init}\n{INIT}\n");
    for (i, line) in bad.iter().enumerate() {
        input.push_str(line);
        input.push('\n');
        // After each bad line, prove the node still serves.
        let probe = json!({"src":"c1","dest":"n1","body":{"type":"add","msg_id":1000 + i,"key":"alive","delta":1}});
        input.push_str(&probe.to_string());
        input.push('\n');
    }
    let out = run_script(&input);
    let b = bodies(&out);
    let by_irt = |id: u64| {
        b.iter()
            .find(|x| x["in_reply_to"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no reply to {id}:\n{out}"))
    };
    assert_eq!(by_irt(77)["code"], 11, "request before init");
    for id in [90, 91, 92, 93, 95, 97] {
        assert_eq!(by_irt(id)["code"], 12, "malformed {id}");
    }
    assert_eq!(by_irt(94)["code"], 10, "unknown type");
    assert_eq!(
        by_irt(96)["code"],
        12,
        "raft message from a node not in the cluster"
    );
    for i in 0..bad.len() as u64 {
        assert_eq!(by_irt(1000 + i)["value"], i + 1, "probe after bad line {i}");
    }
}

/// Exits 0 soon after stdin closes, with every accepted request answered first.
#[test]
fn answers_everything_then_exits_on_eof() {
    let lines: Vec<Value> = (0..500)
        .map(|i| json!({"type":"add","key":i % 7,"delta":1,"client_id":"c1","seq":i + 1}))
        .collect();
    let out = run_script(&script(&lines));
    let b = bodies(&out);
    assert_eq!(b.len(), 501);
    for (i, body) in b.iter().enumerate() {
        assert_eq!(body["msg_id"], i as u64, "msg_ids count from 0 in order");
        assert_eq!(body["in_reply_to"], i as u64 + 1, "replies in input order");
    }
}

/// A last line without its newline is answered like any other; one cut short
/// is not JSON, so it is logged and dropped, and applies nothing. A request
/// carrying `in_reply_to` is refused with 12, not taken for a reply.
#[test]
fn an_unterminated_last_line_is_answered_and_in_reply_to_on_a_request_is_refused() {
    let lines = [
        json!({"type":"write","key":"k","value":1,"in_reply_to":99}),
        json!({"type":"read","key":"k"}),
        json!({"type":"write","key":"k","value":2}),
    ];
    let mut input = script(&lines);
    input.pop(); // the last newline
    let b = bodies(&run_script(&input));
    let by_irt = |id: u64| b.iter().find(|x| x["in_reply_to"] == id).cloned();
    let refused = by_irt(2).expect("the request with in_reply_to is answered");
    assert_eq!(refused["code"], 12, "{refused}");
    assert_eq!(by_irt(3).expect("read")["code"], 20, "nothing was written");
    assert_eq!(
        by_irt(4).expect("the unterminated last line")["type"],
        "write_ok"
    );

    let mut cut = script(&[json!({"type":"write","key":"k","value":1})]);
    cut.truncate(cut.len() - 4); // `"value":1}}` cut after the 1
    let b = bodies(&run_script(&cut));
    assert_eq!(
        b.len(),
        1,
        "init_ok only: a line that is not JSON is logged and dropped: {b:?}"
    );
}

/// A write committed through the leader; the leader is cut off; the same
/// (client_id, seq) retried at the new leader returns the cached reply and the
/// counter does not move. Reference: Raft thesis section 6.3.
fn failover_retry_returns_cached_reply(n: usize) {
    let cluster = Cluster::start(n);
    let leader = cluster.leader(None);
    let add = json!({"type":"add","key":"ctr","delta":1,"client_id":"alice","seq":1});
    let first = cluster.request(leader, add.clone());
    assert_eq!(first["type"], "add_ok", "{first}");
    assert_eq!(first["value"], 1);
    // A follower forwards: it too commits through the leader.
    let follower = (leader + 1) % n;
    let second = cluster.request(
        follower,
        json!({"type":"add","key":"ctr","delta":10,"client_id":"bob","seq":1}),
    );
    assert_eq!(second["value"], 11, "{second}");

    cluster.isolate(leader);
    let new_leader = cluster.leader(Some(leader));
    assert_ne!(new_leader, leader);
    let retry = cluster.request_as("c1", new_leader, add, Duration::from_secs(10));
    assert_eq!(retry["type"], "add_ok", "{retry}");
    assert_eq!(retry["value"], 1, "the retry got the cached reply");
    let read = cluster.request(new_leader, json!({"type":"read","key":"ctr"}));
    assert_eq!(read["value"], 11, "the counter did not move");
    let next = cluster.request(
        new_leader,
        json!({"type":"add","key":"ctr","delta":1,"client_id":"alice","seq":2}),
    );
    assert_eq!(next["value"], 12);
    assert!(
        cluster.violations().is_empty(),
        "{:?}",
        cluster.violations()
    );
}

#[test]
fn three_node_failover_retry_is_answered_from_cache() {
    failover_retry_returns_cached_reply(3);
}

#[test]
fn five_node_failover_retry_is_answered_from_cache() {
    failover_retry_returns_cached_reply(5);
}

/// Error codes that promise the operation did not and will not happen.
fn is_definite_error(reply: &Value) -> bool {
    reply["type"] == "error" && ![0, 13].contains(&reply["code"].as_u64().unwrap_or(0))
}

/// A leader cut off right after appending two writes cannot commit them; a new
/// leader fills those log indexes with its own entries; once healed, the old
/// leader's entries are discarded (openraft's `LogEntryDiscarded`). Neither
/// client may get a definite error: with a session the write is re-proposed (or
/// retried) and runs exactly once; without one the answer is indefinite (13),
/// and here it indeed never ran.
#[test]
fn a_discarded_proposal_never_gets_a_definite_error() {
    // A leader elected moments ago may already be deposed (a second election
    // at start-up is common): the scenario needs `old` to still lead once cut
    // off, so it is set up again on a fresh cluster if `old` stops sending
    // appends.
    let (cluster, old, alice, carol, add) = (1..=5)
        .find_map(|attempt| {
            // Long enough that the outcome is the discard, not the request timeout.
            let cluster = Cluster::start_with_env(3, &[("ONCEKV_REQUEST_TIMEOUT_MS", "20000")]);
            let old = cluster.leader(None);
            let warm = cluster.request(old, json!({"type":"write","key":"k","value":"0"}));
            assert_eq!(warm["type"], "write_ok", "{warm}");

            let cut_at = std::time::Instant::now();
            cluster.isolate(old);
            if !cluster.appends_after(old, cut_at, Duration::from_millis(500)) {
                eprintln!("attempt {attempt}: n{old} no longer leads; again");
                return None;
            }
            let add = json!({"type":"add","key":"ctr","delta":1,"client_id":"alice","seq":1});
            let alice = cluster.send_as("alice", old, add.clone());
            let carol = cluster.send_as(
                "carol",
                old,
                json!({"type":"write","key":"k","value":"carol"}),
            );
            Some((cluster, old, alice, carol, add))
        })
        .expect("a leader that stays leader once cut off, in 5 attempts");
    let new = cluster.leader(Some(old));
    for seq in 1..=3 {
        let w = cluster.request_as(
            "bob",
            new,
            json!({"type":"write","key":"k","value":format!("bob{seq}"),"client_id":"bob","seq":seq}),
            Duration::from_secs(10),
        );
        assert_eq!(w["type"], "write_ok", "{w}");
    }
    cluster.heal(old);

    let a = cluster.wait_reply(&alice, Duration::from_secs(30));
    eprintln!("alice (session) got {a}");
    assert!(
        !is_definite_error(&a),
        "definite error after a proposal: {a}"
    );
    let c = cluster.wait_reply(&carol, Duration::from_secs(30));
    eprintln!("carol (no session) got {c}");
    assert!(
        !is_definite_error(&c),
        "definite error after a proposal: {c}"
    );
    assert_eq!(c["type"], "error", "carol's entry was discarded: {c}");
    assert!(
        c["text"].as_str().unwrap_or("").contains("discarded"),
        "the discard path, not a timeout: {c}"
    );

    // Alice retries the same seq (as a client must after an indefinite error,
    // and harmlessly after an answer): it runs at most once in all.
    let retry = cluster.request_as("alice", new, add, Duration::from_secs(10));
    assert_eq!(retry["type"], "add_ok", "{retry}");
    assert_eq!(retry["value"], 1, "{retry}");
    if a["type"] == "add_ok" {
        assert_eq!(a["value"], 1, "{a}");
    }
    let ctr = cluster.request(new, json!({"type":"read","key":"ctr"}));
    assert_eq!(ctr["value"], 1, "alice's add ran exactly once");
    let k = cluster.request(new, json!({"type":"read","key":"k"}));
    assert_eq!(k["value"], "bob3", "carol's discarded write never ran");
    assert!(
        cluster.violations().is_empty(),
        "{:?}",
        cluster.violations()
    );
}

/// A malformed request before `init` is answered from the name it was sent to
/// (the node does not know its own yet), never from an empty `src`.
#[test]
fn a_malformed_request_before_init_is_answered_from_the_addressed_name() {
    let input = [
        json!({"src":"c1","dest":"n3","body":{"type":"write","msg_id":5}}),
        json!({"src":"c0","dest":"n3","body":{"type":"init","node_id":"n3","node_ids":["n3"],"msg_id":1}}),
    ]
    .iter()
    .map(|l| l.to_string() + "\n")
    .collect::<String>();
    let out = run_script(&input);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0]["src"], "n3", "{out}");
    assert_eq!(lines[0]["body"]["code"], 12, "{out}");
    assert_eq!(lines[1]["body"]["type"], "init_ok", "{out}");
}

/// `seq = u64::MAX` executes once, and no lower seq of that session executes after
/// it (a wrapping "next seq" once let seq 5 run again, and panicked debug builds).
#[test]
fn seq_u64_max_keeps_exactly_once() {
    let s = |seq: u64| json!({"type":"add","key":"k","delta":1,"client_id":"c9","seq":seq});
    let out = run_script(&script(&[
        s(5),
        s(u64::MAX),
        s(5),
        s(6),
        s(u64::MAX),
        json!({"type":"read","key":"k"}),
    ]));
    let got: Vec<Value> = bodies(&out).iter().map(|b| b["value"].clone()).collect();
    assert_eq!(
        got,
        vec![
            Value::Null, // init_ok
            json!(1),
            json!(2),
            json!(1),
            json!(2),
            json!(2),
            json!(2)
        ],
        "{out}"
    );
}

/// A node idle right after a snapshot (nothing applied since it) keeps its log
/// budget: the check that counts the bytes applied since the snapshot once
/// panicked on that empty range, its task died, and the log was never
/// snapshotted or purged by size again. Snapshots every 10 entries make every
/// idle moment such a moment; the node must log no panic and keep answering.
#[test]
fn a_node_idle_right_after_a_snapshot_keeps_its_log_budget() {
    use std::io::{BufRead, Read, Write};
    let (mut child, mut stdin, mut stdout) = support::spawn_node(
        &[("ONCEKV_SNAPSHOT_EVERY_ENTRIES", "10")],
        std::process::Stdio::piped(),
    );
    let mut stderr = child.stderr.take().expect("stderr");
    let stderr_text = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut line = |body: Value| {
        let msg = json!({"src": "c1", "dest": "n1", "body": body});
        writeln!(stdin, "{msg}").expect("write");
    };
    line(json!({"type": "init", "msg_id": 1, "node_id": "n1", "node_ids": ["n1"]}));
    for i in 0..40 {
        line(json!({"type": "write", "msg_id": 2 + i, "key": "k", "value": i}));
    }
    let mut replies = 0;
    let mut buf = String::new();
    while replies < 41 {
        buf.clear();
        assert!(stdout.read_line(&mut buf).expect("read") > 0, "node exited");
        replies += 1;
    }
    // Idle for several budget checks (one every two heartbeats), right after
    // the snapshot at entry 40.
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    line(json!({"type": "read", "msg_id": 100, "key": "k"}));
    buf.clear();
    assert!(stdout.read_line(&mut buf).expect("read") > 0, "node exited");
    let reply: Value = serde_json::from_str(&buf).expect("json");
    assert_eq!(reply["body"]["value"], json!(39), "{reply}");
    drop(stdin);
    let _ = child.wait();
    let log = stderr_text.join().expect("stderr reader");
    assert!(!log.contains("panicked"), "{log}");
}
