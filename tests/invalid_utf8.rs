//! A line that is not valid UTF-8 is refused whole (error 12 when its `src` and
//! `msg_id` can be read, else logged and dropped), never converted lossily: two
//! different byte strings must not become the same key or the same client_id
//! (which would serve one key's value for another, or one session's cached reply
//! to another session's request). On both transports, with a valid line after
//! the bad ones on the same stream served as usual.

mod support;
mod support_tcp;

use std::time::Duration;

use serde_json::{Value, json};
use support_tcp::TestCluster;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A request line from `src` to `dest` whose body is `body`, `{BAD}` in it
/// replaced by the raw bytes `bad`.
fn line(src: &str, dest: &str, body: &str, bad: &[u8]) -> Vec<u8> {
    let text = format!(r#"{{"src":"{src}","dest":"{dest}","body":{body}}}"#);
    let (head, tail) = text.split_once("{BAD}").unwrap_or((&text, ""));
    let mut out = head.as_bytes().to_vec();
    if text.contains("{BAD}") {
        out.extend_from_slice(bad);
    }
    out.extend_from_slice(tail.as_bytes());
    out.push(b'\n');
    out
}

/// What is sent after init, and what each msg_id must get: the bad lines (two keys
/// and two client_ids that differ only in bytes that are not UTF-8) each get error
/// 12, a bad line without a readable msg_id gets nothing, and the valid requests
/// after them show nothing was executed: the key that a lossy conversion would
/// have written is missing, and the session a lossy conversion would have used
/// executes its seq 1 now.
fn script(src: &str, dest: &str) -> (Vec<u8>, Vec<(u64, Value)>) {
    let bad12 = json!({"type": "error", "code": 12});
    let mut input = Vec::new();
    let mut push = |body: &str, bad: &[u8]| input.extend(line(src, dest, body, bad));
    push(
        r#"{"type":"write","key":"{BAD}","value":1,"msg_id":10}"#,
        b"\xfe\xff",
    );
    push(r#"{"type":"read","key":"{BAD}","msg_id":11}"#, b"\xff\xfe");
    // What a lossy conversion made of both keys.
    push(r#"{"type":"read","key":"\ufffd\ufffd","msg_id":12}"#, b"");
    push(
        r#"{"type":"add","key":"k","delta":1,"client_id":"A{BAD}","seq":1,"msg_id":13}"#,
        b"\xff",
    );
    push(
        r#"{"type":"add","key":"k","delta":1,"client_id":"A{BAD}","seq":1,"msg_id":14}"#,
        b"\xfe",
    );
    // No msg_id: dropped.
    push(r#"{"type":"read","key":"{BAD}"}"#, b"\xff\xfe");
    // What a lossy conversion made of both client_ids.
    push(
        r#"{"type":"add","key":"k","delta":5,"client_id":"A\ufffd","seq":1,"msg_id":15}"#,
        b"",
    );
    push(r#"{"type":"read","key":"k","msg_id":16}"#, b"");
    let expect = vec![
        (10, bad12.clone()),
        (11, bad12.clone()),
        (12, json!({"type": "error", "code": 20})),
        (13, bad12.clone()),
        (14, bad12),
        (15, json!({"type": "add_ok", "value": 5})),
        (16, json!({"type": "read_ok", "value": 5})),
    ];
    (input, expect)
}

/// Checks each reply body against what its msg_id must get (the fields given);
/// an error 12 must say why.
fn check(replies: &[Value], expect: &[(u64, Value)], transport: &str) {
    assert_eq!(
        replies.len(),
        expect.len(),
        "{transport}: one reply per readable msg_id, none for the rest: {replies:?}"
    );
    for (id, want) in expect {
        let got = replies
            .iter()
            .find(|b| b["in_reply_to"] == *id)
            .unwrap_or_else(|| panic!("{transport}: no reply to msg_id {id}: {replies:?}"));
        for (field, value) in want.as_object().expect("object") {
            assert_eq!(&got[field], value, "{transport}: msg_id {id}: {got}");
        }
        if want["code"] == 12 {
            let text = got["text"].as_str().unwrap_or("");
            assert!(
                text.contains("not valid UTF-8 (byte offset"),
                "{transport}: msg_id {id}: {text}"
            );
        }
    }
}

#[test]
fn lines_that_are_not_utf8_are_refused_on_stdin_and_do_not_collide() {
    let init = r#"{"src":"c0","dest":"n1","body":{"type":"init","msg_id":1,"node_id":"n1","node_ids":["n1"]}}"#;
    let mut input = format!("{init}\n").into_bytes();
    let (lines, expect) = script("c1", "n1");
    input.extend(lines);
    let out = support::run_script_bytes(&input);
    let replies: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json")["body"].clone())
        .filter(|b| b["in_reply_to"] != 1)
        .collect();
    check(&replies, &expect, "stdin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_that_are_not_utf8_are_refused_over_tcp_and_do_not_collide() {
    let cluster = TestCluster::start("invalid-utf8", 1, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let node = &cluster.nodes[leader];
    let (input, expect) = script("c-utf8", &node.name);
    let stream = TcpStream::connect(&node.addr).await.expect("connect");
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    // One line at a time, each answered (if it can be) before the next: the two
    // adds must not be in flight together.
    let mut replies = Vec::new();
    for l in input.split_inclusive(|b| *b == b'\n') {
        w.write_all(l).await.expect("write");
        if !l.windows(6).any(|w| w == b"msg_id") {
            continue;
        }
        let reply = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("a reply in time")
            .expect("read")
            .expect("the connection stays open after a line that is not UTF-8");
        replies.push(serde_json::from_str::<Value>(&reply).expect("json")["body"].clone());
    }
    // Nothing more came (the dropped line got no reply): a last request's answer
    // is the next line.
    w.write_all(&line(
        "c-utf8",
        &node.name,
        r#"{"type":"read","key":"k","msg_id":99}"#,
        b"",
    ))
    .await
    .expect("write");
    let last = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("a reply in time")
        .expect("read")
        .expect("open");
    let last: Value = serde_json::from_str(&last).expect("json");
    assert_eq!(last["body"]["in_reply_to"], 99, "{last}");
    check(&replies, &expect, "tcp");
}
