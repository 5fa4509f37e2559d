//! Every kind of malformed and hostile request, on both transports (a node on
//! stdin/stdout, and a 3-node TCP cluster at its leader and a follower), then the
//! check that the node or cluster still accepts writes and that no acknowledged
//! write was lost. Each case says what the sender must get back: a definite error
//! code when the line's `msg_id` can be read, nothing (logged and dropped) when it
//! cannot.

mod support;
mod support_tcp;

use std::time::Duration;

use oncekv::protocol::Reply;
use serde_json::{Value, json};
use support_tcp::TestCluster;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// What a case must get back.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// An error reply with this code to the case's `msg_id`.
    Code(u64),
    /// An `*_ok` reply of this type to the case's `msg_id`.
    Ok(&'static str),
    /// No reply (the line carries no readable `msg_id`): logged and dropped.
    Dropped,
}

/// One hostile line: `{ID}` in it is replaced by the case's `msg_id`, `{SRC}` and
/// `{DEST}` by the sender's and the node's names.
struct Case {
    what: &'static str,
    line: String,
    expect: Expect,
}

/// The request limit the nodes run with (the default).
const REQUEST_BYTES_MAX: usize = 1 << 20;

fn req(body: &str) -> String {
    format!(r#"{{"src":"{{SRC}}","dest":"{{DEST}}","body":{body}}}"#)
}

fn cases() -> Vec<Case> {
    let c = |what, line: String, expect| Case { what, line, expect };
    let big = "x".repeat(REQUEST_BYTES_MAX + 1024);
    let half = "y".repeat(REQUEST_BYTES_MAX / 2 + 512);
    let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    let digits = "7".repeat(5_000);
    vec![
        c("not JSON", "not json at all".into(), Expect::Dropped),
        c("JSON but not an object", "[1,2,3]".into(), Expect::Dropped),
        c("null", "null".into(), Expect::Dropped),
        c(
            "no body",
            r#"{"src":"{SRC}","dest":"{DEST}"}"#.into(),
            Expect::Dropped,
        ),
        // A line that is not JSON or lacks its envelope is dropped even when its
        // sender and msg_id could be read from it.
        c(
            "no dest",
            r#"{"src":"{SRC}","body":{"type":"read","msg_id":{ID},"key":1}}"#.into(),
            Expect::Dropped,
        ),
        c(
            "dest not a string",
            r#"{"src":"{SRC}","dest":7,"body":{"type":"read","msg_id":{ID},"key":1}}"#.into(),
            Expect::Dropped,
        ),
        c(
            "cut short",
            r#"{"src":"{SRC}","dest":"{DEST}","body":{"type":"write","msg_id":{ID},"key":1,"value":"#
                .into(),
            Expect::Dropped,
        ),
        c(
            "a syntax error after the msg_id",
            req(r#"{"type":"read","msg_id":{ID},"key":1,,}"#),
            Expect::Dropped,
        ),
        c(
            "control bytes",
            "\u{0}\u{1}garbage\u{7f}".into(),
            Expect::Dropped,
        ),
        c(
            "a replacement character",
            "{\"src\":\u{fffd}}".into(),
            Expect::Dropped,
        ),
        c(
            "msg_id not an integer",
            req(r#"{"type":"read","msg_id":"x","key":1}"#),
            Expect::Dropped,
        ),
        c(
            "no type",
            req(r#"{"msg_id":{ID},"key":1}"#),
            Expect::Code(12),
        ),
        c(
            "unknown type",
            req(r#"{"type":"teleport","msg_id":{ID}}"#),
            Expect::Code(10),
        ),
        c(
            "write without value",
            req(r#"{"type":"write","msg_id":{ID},"key":1}"#),
            Expect::Code(12),
        ),
        c(
            "negative seq",
            req(r#"{"type":"add","msg_id":{ID},"key":"h","delta":1,"client_id":"h1","seq":-3}"#),
            Expect::Code(12),
        ),
        c(
            "fractional seq",
            req(r#"{"type":"add","msg_id":{ID},"key":"h","delta":1,"client_id":"h1","seq":1.5}"#),
            Expect::Code(12),
        ),
        c(
            "seq without client_id",
            req(r#"{"type":"add","msg_id":{ID},"key":"h","delta":1,"seq":4}"#),
            Expect::Code(12),
        ),
        c(
            "delta not a number",
            req(r#"{"type":"add","msg_id":{ID},"key":"h","delta":"x"}"#),
            Expect::Code(12),
        ),
        c(
            "integer beyond 64 bits",
            req(
                r#"{"type":"write","msg_id":{ID},"key":"h","value":[1,123456789012345678901234567890]}"#,
            ),
            Expect::Code(12),
        ),
        c(
            "1e400",
            req(r#"{"type":"write","msg_id":{ID},"key":"h","value":1e400}"#),
            Expect::Code(12),
        ),
        c(
            "-1e400",
            req(r#"{"type":"write","msg_id":{ID},"key":"h","value":-1e400}"#),
            Expect::Code(12),
        ),
        c(
            "a 5,000-digit integer",
            req(&format!(
                r#"{{"type":"write","msg_id":{{ID}},"key":"h","value":{digits}}}"#
            )),
            Expect::Code(12),
        ),
        c(
            "nested 127 deep",
            req(&format!(
                r#"{{"type":"write","msg_id":{{ID}},"key":"h","value":{}}}"#,
                nested(127)
            )),
            Expect::Code(12),
        ),
        c(
            "nested 10,000 deep",
            req(&format!(
                r#"{{"type":"write","msg_id":{{ID}},"key":"h","value":{}}}"#,
                nested(10_000)
            )),
            Expect::Code(12),
        ),
        c(
            "a value past the request limit",
            req(&format!(
                r#"{{"type":"write","msg_id":{{ID}},"key":"h","value":"{big}"}}"#
            )),
            Expect::Code(12),
        ),
        c(
            "a key past the request limit",
            req(&format!(
                r#"{{"type":"write","msg_id":{{ID}},"key":"{big}","value":1}}"#
            )),
            Expect::Code(12),
        ),
        c(
            "a cas whose two values pass the limit together",
            req(&format!(
                r#"{{"type":"cas","msg_id":{{ID}},"key":"h","from":"{half}","to":"{half}","client_id":"h2","seq":1}}"#
            )),
            Expect::Code(12),
        ),
        c(
            "whitespace past the request limit",
            " ".repeat(REQUEST_BYTES_MAX + 10),
            Expect::Dropped,
        ),
        c(
            "seq u64::MAX",
            req(
                r#"{"type":"add","msg_id":{ID},"key":"hm","delta":1,"client_id":"h3","seq":18446744073709551615}"#,
            ),
            Expect::Ok("add_ok"),
        ),
        c(
            "first_outstanding u64::MAX",
            req(
                r#"{"type":"add","msg_id":{ID},"key":"hm","delta":1,"client_id":"h4","seq":18446744073709551615,"first_outstanding":18446744073709551615}"#,
            ),
            Expect::Ok("add_ok"),
        ),
        c(
            "an empty client_id",
            req(r#"{"type":"add","msg_id":{ID},"key":"hm","delta":1,"client_id":"","seq":1}"#),
            Expect::Ok("add_ok"),
        ),
        c(
            "add overflowing i64",
            req(r#"{"type":"add","msg_id":{ID},"key":"hmax-{DEST}","delta":9223372036854775807}"#),
            Expect::Ok("add_ok"),
        ),
        c(
            "add overflowing i64, again",
            req(r#"{"type":"add","msg_id":{ID},"key":"hmax-{DEST}","delta":9223372036854775807}"#),
            Expect::Code(22),
        ),
    ]
}

/// Cases for a TCP node of a cluster with a key, sent on a connection that has
/// presented none: peer-only requests are refused definitely, a wrong key is
/// refused and poisons the connection (no later hello on it is even checked),
/// and client requests are still served on it.
fn peer_cases() -> Vec<Case> {
    let c = |what, line: String, expect| Case { what, line, expect };
    let vote = r#"{"type":"raft_vote","msg_id":{ID},"rpc":{"vote":{"leader_id":{"term":999,"node_id":2},"committed":false},"last_log_id":null}}"#;
    vec![
        c("raft_vote without the key", req(vote), Expect::Code(10)),
        c(
            "raft_append without the key",
            req(r#"{"type":"raft_append","msg_id":{ID},"rpc":{}}"#),
            Expect::Code(10),
        ),
        c(
            "raft_snapshot without the key",
            req(r#"{"type":"raft_snapshot","msg_id":{ID},"rpc":{}}"#),
            Expect::Code(10),
        ),
        c(
            "forward without the key",
            req(r#"{"type":"forward","msg_id":{ID},"rpc":{}}"#),
            Expect::Code(10),
        ),
        c(
            "add_node without the key",
            req(r#"{"type":"add_node","msg_id":{ID},"name":"n9","addr":"127.0.0.1:1"}"#),
            Expect::Code(10),
        ),
        c(
            "remove_node without the key",
            req(r#"{"type":"remove_node","msg_id":{ID},"name":"n1"}"#),
            Expect::Code(10),
        ),
        c(
            "a hello with a wrong key",
            req(r#"{"type":"peer_hello","msg_id":{ID},"key":"guess"}"#),
            Expect::Code(12),
        ),
        c(
            "the right key after a wrong one, on the same connection",
            req(r#"{"type":"peer_hello","msg_id":{ID},"key":"hostile-key"}"#),
            Expect::Code(12),
        ),
        c("raft_vote after that", req(vote), Expect::Code(10)),
        c(
            "a client request on the same connection",
            req(r#"{"type":"write","msg_id":{ID},"key":"after-hellos","value":1}"#),
            Expect::Ok("write_ok"),
        ),
    ]
}

/// The line of `case` with its placeholders filled.
fn fill(case: &Case, id: u64, src: &str, dest: &str) -> String {
    case.line
        .replace("{ID}", &id.to_string())
        .replace("{SRC}", src)
        .replace("{DEST}", dest)
}

/// Checks the replies (bodies by `in_reply_to`) against the cases sent with
/// msg_ids `first_id..`.
fn check(cases: &[Case], first_id: u64, replies: &[Value], transport: &str) {
    for (i, case) in cases.iter().enumerate() {
        let id = first_id + i as u64;
        let got = replies.iter().find(|b| b["in_reply_to"] == id);
        match (case.expect, got) {
            (Expect::Dropped, None) => {}
            (Expect::Code(code), Some(b)) if b["type"] == "error" && b["code"] == code => {
                if case.what.contains("limit") && code == 12 {
                    let text = b["text"].as_str().unwrap_or("");
                    assert!(
                        text.contains(&REQUEST_BYTES_MAX.to_string()),
                        "{transport}: {}: the error names the limit: {text}",
                        case.what
                    );
                }
            }
            (Expect::Ok(kind), Some(b)) if b["type"] == kind => {}
            (want, got) => panic!(
                "{transport}: {} (msg_id {id}): wanted {want:?}, got {got:?}",
                case.what
            ),
        }
    }
}

/// The stdin transport: one node, the hostile lines interleaved with adds that must
/// all be acknowledged, and a final read of their counter.
#[test]
fn hostile_lines_on_stdin_get_their_answers_and_lose_nothing() {
    let cases = cases();
    let init = r#"{"src":"c0","dest":"n1","body":{"type":"init","msg_id":1,"node_id":"n1","node_ids":["n1"]}}"#;
    let mut input = format!("{init}\n");
    let first_id = 100;
    for (i, case) in cases.iter().enumerate() {
        input.push_str(&fill(case, first_id + i as u64, "c1", "n1"));
        input.push('\n');
        let probe = json!({"src":"c2","dest":"n1","body":{"type":"add","msg_id":10_000 + i,"key":"alive","delta":1,"client_id":"c2","seq":i + 1}});
        input.push_str(&probe.to_string());
        input.push('\n');
    }
    input.push_str(
        r#"{"src":"c2","dest":"n1","body":{"type":"read","msg_id":99999,"key":"alive"}}"#,
    );
    input.push('\n');
    let out = support::run_script(&input);
    let replies: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json")["body"].clone())
        .collect();
    check(&cases, first_id, &replies, "stdin");
    for i in 0..cases.len() as u64 {
        let probe = replies.iter().find(|b| b["in_reply_to"] == 10_000 + i);
        assert_eq!(
            probe.map(|b| b["value"].clone()),
            Some(json!(i + 1)),
            "the add after case {:?}",
            cases[i as usize].what
        );
    }
    let read = replies.iter().find(|b| b["in_reply_to"] == 99999);
    assert_eq!(read.map(|b| b["value"].clone()), Some(json!(cases.len())));
}

/// Sends the cases one by one on one connection, waiting for each reply a case
/// must get before the next (requests in flight together are concurrent, and two
/// concurrent adds may commit in either order), and returns the replies.
async fn send_cases(addr: &str, cases: &[Case], first_id: u64, dest: &str) -> Vec<Value> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let mut replies = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let line = fill(case, first_id + i as u64, "c-hostile", dest) + "\n";
        w.write_all(line.as_bytes()).await.expect("write");
        if case.expect == Expect::Dropped {
            continue;
        }
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("a reply to {:?} in time", case.what))
            .expect("read")
            .expect("the connection stays open after bad lines");
        replies.push(serde_json::from_str::<Value>(&line).expect("json")["body"].clone());
    }
    replies
}

/// The TCP transport, on a cluster with a key: every case at the leader and at a
/// follower, and the peer-only requests of a connection without the key, while a
/// client adds to a counter; then the cluster still commits, and the counter holds
/// every acknowledged add (and at most the adds whose outcome is unknown besides).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_lines_over_tcp_get_their_answers_and_lose_nothing() {
    let key = "hostile-key";
    let cluster = TestCluster::start("hostile", 3, &[(oncekv::tcp::CLUSTER_KEY_VAR, key)]);
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    let mut adder = cluster.client();
    adder.open_session().await.expect("session");
    let adds = tokio::spawn(async move {
        let (mut acked, mut unknown) = (0u64, 0u64);
        for _ in 0..200 {
            match adder.add(json!("counter"), 1).await {
                Ok(Reply::AddOk { .. }) => acked += 1,
                Ok(other) => panic!("a definite failure of an add: {other:?}"),
                Err(_) => unknown += 1,
            }
        }
        (acked, unknown, adder)
    });
    let cases = cases();
    for (node, first_id) in [(leader, 100), (follower, 1_000)] {
        let n = &cluster.nodes[node];
        let replies = send_cases(&n.addr, &cases, first_id, &n.name).await;
        check(&cases, first_id, &replies, &format!("tcp {}", n.name));
    }
    let peer_cases = peer_cases();
    for (node, first_id) in [(leader, 2_000), (follower, 3_000)] {
        let n = &cluster.nodes[node];
        let replies = send_cases(&n.addr, &peer_cases, first_id, &n.name).await;
        check(
            &peer_cases,
            first_id,
            &replies,
            &format!("tcp {} (peer-only)", n.name),
        );
    }
    let (acked, unknown, mut client) = adds.await.expect("adder");
    assert_eq!(
        client.write(json!("after"), json!(1)).await.expect("write"),
        Reply::WriteOk
    );
    let Reply::ReadOk { value } = client.read(json!("counter")).await.expect("read") else {
        panic!("the counter is readable");
    };
    let total = value.as_u64().expect("integer");
    assert!(
        acked <= total && total <= acked + unknown,
        "counter {total}: {acked} acknowledged, {unknown} unknown"
    );
}

/// A forged Raft message for term `u64::MAX` (Maelstrom mode has no key: any line
/// may claim to come from a member) is refused. openraft adds 1 to a term when
/// it stands for election, so a node that took that vote panicked at its next
/// election timeout, and on every restart after.
#[test]
fn a_raft_term_at_the_edge_of_its_type_is_refused_and_nothing_panics() {
    let init = r#"{"src":"c0","dest":"n1","body":{"type":"init","msg_id":1,"node_id":"n1","node_ids":["n1","n2","n3"]}}"#;
    let vote = |term: u64| {
        format!(
            r#"{{"src":"n2","dest":"n1","body":{{"type":"raft_vote","msg_id":{term},"rpc":{{"vote":{{"leader_id":{{"term":{term},"node_id":1}},"committed":false}},"last_log_id":null}}}}}}"#
        )
    };
    let append = r#"{"src":"n2","dest":"n1","body":{"type":"raft_append","msg_id":2,"rpc":{"vote":{"leader_id":{"term":18446744073709551615,"node_id":1},"committed":true},"prev_log_id":null,"entries":[],"leader_commit":null}}}"#;
    // The read waits for a leader (none: the peers do not exist) for about a
    // second, so election timeouts fire while the node still runs.
    let read = r#"{"src":"c1","dest":"n1","body":{"type":"read","msg_id":3,"key":"k"}}"#;
    let input = format!(
        "{init}\n{append}\n{}\n{}\n{read}\n",
        vote(u64::MAX),
        vote((1 << 62) + 1)
    );
    // `run_script` asserts that the node exits 0 once stdin closes.
    let out = support::run_script(&input);
    let replies: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json")["body"].clone())
        .collect();
    for id in [2, u64::MAX, (1 << 62) + 1] {
        let r = replies
            .iter()
            .find(|b| b["in_reply_to"] == id)
            .unwrap_or_else(|| panic!("no reply to {id}: {out}"));
        assert_eq!(r["type"], "error", "{r}");
        assert!(r["text"].as_str().unwrap_or("").contains("term"), "{r}");
    }
    let read = replies.iter().find(|b| b["in_reply_to"] == 3);
    assert_eq!(read.map(|b| b["code"].clone()), Some(json!(11)), "{out}");
}
