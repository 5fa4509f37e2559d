//! Request limits over TCP, on a real 3-node cluster: a request line over
//! `request_bytes_max` (1 MiB by default) is refused with error 12 before
//! anything is proposed, whatever it holds (a 4 MiB value, two 2 MiB cas values,
//! a 4 MiB key), as are requests serde_json cannot take whole (numbers out of
//! range, deep nesting) and requests that would grow past the entry bound in
//! the log; the connection stays open and the cluster keeps committing. A
//! request just under the limit is written and read back, through a follower too.

mod support_tcp;

use std::time::Duration;

use oncekv::protocol::Reply;
use serde_json::{Map, Value, json};
use support_tcp::TestCluster;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const MIB: usize = 1 << 20;

/// Election and RPC timing for tests that replicate 1 MiB entries.
const SLOW: &[(&str, &str)] = &[
    ("ONCEKV_HEARTBEAT_INTERVAL_MS", "200"),
    ("ONCEKV_ELECTION_TIMEOUT_MIN_MS", "2000"),
    ("ONCEKV_ELECTION_TIMEOUT_MAX_MS", "4000"),
    ("ONCEKV_REQUEST_TIMEOUT_MS", "5000"),
];

/// A raw connection that sends whole lines and reads replies by `in_reply_to`.
struct Raw {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
}

impl Raw {
    async fn connect(addr: &str) -> Raw {
        let (r, w) = TcpStream::connect(addr)
            .await
            .expect("connect")
            .into_split();
        Raw {
            r: BufReader::new(r),
            w,
        }
    }

    async fn send(&mut self, line: &str) {
        self.w.write_all(line.as_bytes()).await.expect("write");
        self.w.write_all(b"\n").await.expect("write");
    }

    async fn reply(&mut self, msg_id: u64) -> Map<String, Value> {
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(20), self.r.read_line(&mut line))
                .await
                .unwrap_or_else(|_| panic!("no reply to {msg_id} in time"))
                .expect("read");
            assert!(n > 0, "connection closed while waiting for {msg_id}");
            let v: Value = serde_json::from_str(&line).expect("json reply");
            if v["body"]["in_reply_to"] == json!(msg_id) {
                return v["body"].as_object().expect("body").clone();
            }
        }
    }

    /// Sends `body_text` (a JSON object's members, without braces, msg_id added)
    /// and returns the reply.
    async fn call(&mut self, msg_id: u64, body_text: &str) -> Map<String, Value> {
        let line = format!(r#"{{"src":"c9","dest":"","body":{{{body_text},"msg_id":{msg_id}}}}}"#);
        self.send(&line).await;
        self.reply(msg_id).await
    }
}

fn code(b: &Map<String, Value>) -> Option<u64> {
    b.get("code").and_then(Value::as_u64)
}

fn text(b: &Map<String, Value>) -> &str {
    b.get("text").and_then(Value::as_str).unwrap_or("")
}

/// The oversized requests of the defect report: each is error 12 naming the
/// limit, twice (a retry changes nothing), and the same connection then writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused_and_the_cluster_keeps_committing() {
    let cluster = TestCluster::start("limits", 3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    let big = |n: usize| "x".repeat(n);
    let oversized = [
        format!(
            r#""type":"write","key":"w","value":"{}""#,
            big(4 * MIB + 1024)
        ),
        format!(
            r#""type":"cas","key":"w","from":"{}","to":"{}","create_if_not_exists":true"#,
            big(2 * MIB),
            big(2 * MIB)
        ),
        format!(r#""type":"write","key":"{}","value":1"#, big(4 * MIB)),
    ];
    let mut msg_id = 0;
    for node in [leader, follower] {
        let mut conn = Raw::connect(&cluster.nodes[node].addr).await;
        for body in &oversized {
            for attempt in 0..2 {
                msg_id += 1;
                let b = conn.call(msg_id, body).await;
                assert_eq!(code(&b), Some(12), "node {node} attempt {attempt}: {b:?}");
                assert!(
                    text(&b).contains("ONCEKV_REQUEST_BYTES_MAX") && text(&b).contains("1048576"),
                    "{b:?}"
                );
            }
        }
        // msg_id last, after the oversized value: still read and answered.
        msg_id += 1;
        let line = format!(
            r#"{{"src":"c9","dest":"","body":{{"type":"write","key":"w","value":"{}","msg_id":{msg_id}}}}}"#,
            big(2 * MIB)
        );
        conn.send(&line).await;
        assert_eq!(code(&conn.reply(msg_id).await), Some(12));
        // The connection is still open and in step.
        msg_id += 1;
        let b = conn
            .call(msg_id, r#""type":"write","key":"w","value":1"#)
            .await;
        assert_eq!(b.get("type"), Some(&json!("write_ok")), "{b:?}");
    }
    // Nothing oversized reached any log: every node applies the same index and
    // the cluster keeps committing.
    let mut client = cluster.client();
    client.open_session().await.expect("session");
    for i in 0..3 {
        let r = client.write(json!("after"), json!(i)).await.expect("write");
        assert_eq!(r, Reply::WriteOk);
    }
    let last = cluster.status(leader).await.expect("status").applied_index;
    cluster
        .wait_for(
            "every node to apply the same entries",
            Duration::from_secs(10),
            || async {
                let mut same = true;
                for i in 0..3 {
                    same &= cluster.status(i).await.and_then(|s| s.applied_index) >= last;
                }
                same
            },
        )
        .await;
}

/// A request just under the limit is written and read back, directly and
/// through a follower (its forward and its read reply cross a peer connection);
/// a request that would grow past the entry bound when re-encoded is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_just_under_the_limit_is_written_and_read_back() {
    // Slow timing: replicating a 1 MiB entry in a debug build on a loaded
    // machine takes longer than the default election timeout's RPC deadlines.
    let cluster = TestCluster::start("limits-max", 3, SLOW);
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    let value = "v".repeat(MIB - 1024);
    let mut opts = cluster.client_options();
    opts.peers = vec![cluster.nodes[follower].addr.clone()];
    opts.deadline = Duration::from_secs(20);
    opts.attempt_timeout = Duration::from_secs(10);
    let mut via_follower = oncekv::tcp::Client::new(opts.clone());
    via_follower.open_session().await.expect("session");
    let r = via_follower
        .write(json!("big"), json!(value))
        .await
        .expect("write through a follower");
    assert_eq!(r, Reply::WriteOk);
    let r = via_follower.read(json!("big")).await.expect("read");
    assert_eq!(
        r,
        Reply::ReadOk {
            value: json!(value).into()
        }
    );
    opts.peers = vec![cluster.nodes[leader].addr.clone()];
    let mut direct = oncekv::tcp::Client::new(opts);
    let r = direct.read(json!("big")).await.expect("read at the leader");
    assert_eq!(
        r,
        Reply::ReadOk {
            value: json!(value).into()
        }
    );

    // The client library refuses a longer one before sending.
    let e = direct
        .read(json!("k".repeat(MIB + 1)))
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("above the limit"), "{e}");

    // Under the line limit, but its log entry would be 3.8 times as large.
    let mut conn = Raw::connect(&cluster.nodes[follower].addr).await;
    let spelled_out = format!("[{}1]", "1e15,".repeat((MIB - 200) / 5));
    let body = format!(r#""type":"write","key":"n","value":{spelled_out}"#);
    let b = conn.call(1, &body).await;
    assert_eq!(code(&b), Some(12), "{b:?}");
    assert!(text(&b).contains("as a log entry"), "{b:?}");
    let b = conn.call(2, r#""type":"read","key":"n""#).await;
    assert_eq!(code(&b), Some(20), "nothing was written: {b:?}");
}

/// Requests serde_json cannot take whole, or that nest deeper than a log entry
/// may carry, get error 12 with their msg_id (on the leader and a follower),
/// and the cluster keeps committing (a value nested 125 levels used to parse,
/// be proposed, and stop replication: followers could not parse the append,
/// which nests deeper than serde_json's limit of 128).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparseable_and_too_deep_requests_get_error_12() {
    let cluster = TestCluster::start("limits-parse", 3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    let values = [
        "1e400".to_string(),
        "-1e400".to_string(),
        "9".repeat(5000),
        deep(65),
        deep(100),
        deep(125),
        deep(126),
        deep(127),
        deep(128),
        deep(200_000),
    ];
    let mut msg_id = 0;
    for node in [leader, follower] {
        let mut conn = Raw::connect(&cluster.nodes[node].addr).await;
        for v in &values {
            msg_id += 1;
            let b = conn
                .call(msg_id, &format!(r#""type":"write","key":"d","value":{v}"#))
                .await;
            assert_eq!(code(&b), Some(12), "{}: {b:?}", &v[..v.len().min(20)]);
            msg_id += 1;
            let b = conn
                .call(
                    msg_id,
                    &format!(r#""type":"cas","key":"d","from":1,"to":{v}"#),
                )
                .await;
            assert_eq!(code(&b), Some(12), "{}: {b:?}", &v[..v.len().min(20)]);
        }
        msg_id += 1;
        let b = conn
            .call(
                msg_id,
                &format!(r#""type":"write","key":"d","value":{}"#, deep(64)),
            )
            .await;
        assert_eq!(b.get("type"), Some(&json!("write_ok")), "{b:?}");
    }
    let mut client = cluster.client();
    client.open_session().await.expect("session");
    let r = client.write(json!("after"), json!(1)).await.expect("write");
    assert_eq!(r, Reply::WriteOk);
    let mut opts = cluster.client_options();
    opts.peers = vec![cluster.nodes[follower].addr.clone()];
    let r = oncekv::tcp::Client::new(opts)
        .read(json!("d"))
        .await
        .expect("read through a follower");
    let Reply::ReadOk { value } = r else {
        panic!("{r:?}")
    };
    assert_eq!(*value, serde_json::from_str::<Value>(&deep(64)).unwrap());
}

/// `oncekv client` refuses a request over the limit before sending it: exit
/// status 254 (bad usage) and a message naming the limit, with no node running
/// (had it sent the request, it would have retried until its deadline: 2).
#[test]
fn the_cli_refuses_a_request_over_the_limit_before_sending() {
    let dead = format!("127.0.0.1:{}", support_tcp::free_port());
    let value = "v".repeat(2000);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oncekv"))
        .env("ONCEKV_REQUEST_BYTES_MAX", "1024")
        .args(["client", "--peers", &dead, "--deadline", "2"])
        .args(["--client-id", "s1", "--seq", "1", "write", "k", &value])
        .output()
        .expect("run the client");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(254), "{stderr}");
    assert!(
        stderr.contains("above the limit of 1024") && stderr.contains("not sent"),
        "{stderr}"
    );
}

/// A deadline that is not a finite number of seconds above 0 and at most a day
/// (it used to panic on `inf` or `1e300`, and `nan` became 0) and a peer list that
/// is empty or not HOST:PORT (it used to be retried until the deadline) are bad
/// usage: exit status 254 with a message naming the flag, at once.
#[test]
fn the_cli_refuses_a_bad_deadline_or_peer_list_up_front() {
    let dead = format!("127.0.0.1:{}", support_tcp::free_port());
    let run = |peers: &str, deadline: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_oncekv"))
            .args([
                "client",
                "--peers",
                peers,
                "--deadline",
                deadline,
                "read",
                "k",
            ])
            .output()
            .expect("run the client");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for deadline in ["inf", "1e300", "nan", "-1", "0", "1e-12", "86401"] {
        let (code, stderr) = run(&dead, deadline);
        assert_eq!(code, Some(254), "--deadline {deadline}: {stderr}");
        assert!(
            stderr.contains("--deadline"),
            "--deadline {deadline}: {stderr}"
        );
        assert!(
            !stderr.contains("panicked"),
            "--deadline {deadline}: {stderr}"
        );
    }
    for peers in ["", ",", "localhost", "127.0.0.1:0", &format!("{dead},")] {
        let (code, stderr) = run(peers, "5");
        assert_eq!(code, Some(254), "--peers {peers:?}: {stderr}");
        assert!(stderr.contains("--peers"), "--peers {peers:?}: {stderr}");
    }
    // A valid deadline still runs: no node answers, so no definite answer (2).
    let (code, stderr) = run(&dead, "0.5");
    assert_eq!(code, Some(2), "{stderr}");
}

/// Lines being received count against `line_buffers_bytes_max` across a node's
/// client connections: while one connection holds most of a 700 KiB line it
/// has not finished, another's 500 KiB line finds no room and gets error 11
/// (dropped unread, nothing proposed), small requests are served all along,
/// and once the first line ends the second goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_lines_are_bounded_in_bytes_across_connections() {
    let cluster = TestCluster::start(
        "limits-lines",
        1,
        &[("ONCEKV_LINE_BUFFERS_BYTES_MAX", &MIB.to_string())],
    );
    cluster.wait_leader(Duration::from_secs(10)).await;
    let addr = &cluster.nodes[0].addr;
    let second = format!(
        r#""type":"write","key":"b","value":"{}""#,
        "w".repeat(500 << 10)
    );
    // Both lines grow at once, so now and then the first is the one crowded
    // out (its reply is then 11): the scenario is set up again, a few times.
    let mut tries = 0;
    let (mut b, mut id) = loop {
        tries += 1;
        assert!(
            tries <= 5,
            "no try saw the first line held and the second refused"
        );
        let mut a = Raw::connect(addr).await;
        let head = r#"{"src":"c1","dest":"","body":{"type":"write","key":"a","msg_id":1,"value":""#;
        a.w.write_all(head.as_bytes()).await.expect("write");
        a.w.write_all("v".repeat(700 << 10).as_bytes())
            .await
            .expect("write");
        let mut b = Raw::connect(addr).await;
        // (Within the node's 5 s for a first line, which a's is.)
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        let mut id = 0;
        let refused = loop {
            id += 1;
            let r = b.call(id, &second).await;
            if code(&r) == Some(11) || tokio::time::Instant::now() >= deadline {
                break (code(&r) == Some(11)).then_some(r);
            }
            // Not yet: the node had not read all of a's bytes.
            assert_eq!(r.get("type"), Some(&json!("write_ok")), "{r:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let Some(refused) = refused else {
            continue; // a was crowded out early: it holds nothing
        };
        assert!(
            text(&refused).contains("line_buffers_bytes_max"),
            "{refused:?}"
        );
        id += 1;
        let r = b.call(id, r#""type":"read","key":"a""#).await;
        assert_eq!(code(&r), Some(20), "small requests are served: {r:?}");
        a.w.write_all(b"\"}}\n").await.expect("write");
        let r = a.reply(1).await;
        if r.get("type") == Some(&json!("write_ok")) {
            break (b, id);
        }
        // Both were crowded out at once: a definite 11, nothing ran.
        assert_eq!(code(&r), Some(11), "{r:?}");
    };
    id += 1;
    let r = b.call(id, &second).await;
    assert_eq!(r.get("type"), Some(&json!("write_ok")), "{r:?}");
}

/// An error found while parsing (an unknown type) is answered in order behind
/// an earlier write on the same connection, as a read is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_type_is_answered_in_order_behind_an_earlier_write() {
    let cluster = TestCluster::start("limits-order", 1, &[]);
    cluster.wait_leader(Duration::from_secs(10)).await;
    let mut c = Raw::connect(&cluster.nodes[0].addr).await;
    let line = |body: &str, id: u64| {
        format!(r#"{{"src":"c9","dest":"","body":{{{body},"msg_id":{id}}}}}"#)
    };
    let mut all = String::new();
    for (id, body) in [
        (1, r#""type":"write","key":"k","value":1"#),
        (2, r#""type":"foo""#),
        (3, r#""type":"read","key":"k""#),
    ] {
        all.push_str(&line(body, id));
        all.push('\n');
    }
    // One write: the three arrive back to back.
    c.w.write_all(all.as_bytes()).await.expect("write");
    let mut order = Vec::new();
    while order.len() < 3 {
        let mut l = String::new();
        tokio::time::timeout(Duration::from_secs(20), c.r.read_line(&mut l))
            .await
            .expect("replies in time")
            .expect("read");
        let v: Value = serde_json::from_str(&l).expect("json");
        order.push((v["body"]["in_reply_to"].as_u64(), v["body"]["type"].clone()));
    }
    assert_eq!(
        order,
        vec![
            (Some(1), json!("write_ok")),
            (Some(2), json!("error")),
            (Some(3), json!("read_ok")),
        ]
    );
}

/// Replies built and not yet written count against `reply_buffers_bytes_max`
/// across a node's connections: while one client with a small receive window
/// has pipelined reads of a 600 KiB value and reads none of the replies,
/// another's read of that value finds no room and gets error 11 (a read changes
/// nothing: definite), small replies are served all along, and once the first
/// client reads its replies (each the value or that same 11) the value reads
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_replies_are_bounded_in_bytes_across_connections() {
    const READS: u64 = 40;
    let cluster = TestCluster::start(
        "limits-replies",
        1,
        &[("ONCEKV_REPLY_BUFFERS_BYTES_MAX", &(2 * MIB).to_string())],
    );
    cluster.wait_leader(Duration::from_secs(10)).await;
    let addr = &cluster.nodes[0].addr;
    let value = "v".repeat(600 << 10);
    let mut b = Raw::connect(addr).await;
    let r = b
        .call(
            1,
            &format!(r#""type":"write","key":"big","value":"{value}""#),
        )
        .await;
    assert_eq!(r.get("type"), Some(&json!("write_ok")), "{r:?}");
    let mut id = 1;
    let mut tries = 0;
    let (hog_r, _hog_w) = loop {
        tries += 1;
        assert!(tries <= 5, "no try saw the unread replies crowd out a read");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let stream = socket
            .connect(addr.parse().expect("addr"))
            .await
            .expect("connect");
        let (hog_r, mut hog_w) = stream.into_split();
        let reads: String = (1..=READS)
            .map(|i| {
                format!(
                    "{{\"src\":\"c8\",\"dest\":\"\",\"body\":{{\"type\":\"read\",\"key\":\"big\",\"msg_id\":{i}}}}}\n"
                )
            })
            .collect();
        hog_w.write_all(reads.as_bytes()).await.expect("write");
        // (Within the 5 s after which the node closes a connection that reads
        // no reply, which frees what it held.)
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        let refused = loop {
            id += 1;
            let r = b.call(id, r#""type":"read","key":"big""#).await;
            if code(&r) == Some(11) {
                break Some(r);
            }
            assert_eq!(r.get("value"), Some(&json!(value)), "{:?}", r.get("type"));
            if tokio::time::Instant::now() >= deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let Some(refused) = refused else {
            continue; // the hog's replies all fitted, or it was closed already
        };
        assert!(
            text(&refused).contains("reply_buffers_bytes_max")
                && text(&refused).contains("changed nothing"),
            "{refused:?}"
        );
        id += 1;
        let r = b.call(id, r#""type":"read","key":"nothing""#).await;
        assert_eq!(code(&r), Some(20), "small replies are served: {r:?}");
        break (hog_r, hog_w);
    };
    // The hog reads now: in order, each reply is the value or a definite 11.
    let mut hog = BufReader::new(hog_r);
    let (mut values, mut refusals) = (0, 0);
    for i in 1..=READS {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(20), hog.read_line(&mut line))
            .await
            .expect("a reply or the end in time")
            .expect("read");
        if n == 0 {
            break; // closed for reading too slowly: what it held is freed
        }
        let v: Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["body"]["in_reply_to"], json!(i), "in order");
        if v["body"]["code"] == json!(11) {
            refusals += 1;
        } else {
            assert_eq!(v["body"]["value"], json!(value), "{}", v["body"]["type"]);
            values += 1;
        }
    }
    if values + refusals == READS {
        assert!(refusals > 0, "all {READS} unread replies were held at once");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        id += 1;
        let r = b.call(id, r#""type":"read","key":"big""#).await;
        if r.get("value") == Some(&json!(value)) {
            break;
        }
        assert_eq!(code(&r), Some(11), "{:?}", r.get("text"));
        assert!(
            tokio::time::Instant::now() < deadline,
            "the room never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
