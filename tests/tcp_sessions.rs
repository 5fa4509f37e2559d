//! Sessions across a leader change, with real processes: a retry straddling a
//! failover gets the cached reply, and an expired session gets error 1000 rather
//! than a second execution.

mod support_tcp;

use std::time::Duration;

use oncekv::protocol::{ErrorCode, Reply};
use serde_json::json;
use support_tcp::TestCluster;
use tokio::io::AsyncWriteExt;

/// The leader index and the two others.
async fn roles(cluster: &TestCluster) -> (usize, Vec<usize>) {
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let others = (0..cluster.nodes.len()).filter(|i| *i != leader).collect();
    (leader, others)
}

/// An `add` commits, the leader dies before the client reads the reply; the client
/// retries the same seq elsewhere and gets the cached reply; the counter moved once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_straddling_a_failover_gets_the_cached_reply() {
    let mut cluster = TestCluster::start("straddle", 3, &[]);
    let (leader, followers) = roles(&cluster).await;
    let mut client = cluster.client();
    let client_id = client.open_session().await.expect("session");
    let first = client.add(json!("k"), 5).await.expect("add");
    assert_eq!(first, Reply::AddOk { value: 5 });

    // seq 2, sent straight to the leader on a raw socket whose reply is never read.
    let before = cluster.status(leader).await.expect("status").last_log_index;
    let mut raw = tokio::net::TcpStream::connect(&cluster.nodes[leader].addr)
        .await
        .expect("connect");
    let line = json!({"src": "c-raw", "dest": cluster.nodes[leader].name, "body":
        {"type": "add", "msg_id": 1, "key": "k", "delta": 7, "client_id": client_id, "seq": 2}});
    raw.write_all(format!("{line}\n").as_bytes())
        .await
        .expect("send");
    // Committed = applied by both followers up to the leader's new last index.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let target = loop {
        let s = cluster.status(leader).await;
        if let Some(i) = s
            .and_then(|s| s.last_log_index)
            .filter(|i| Some(*i) > before)
        {
            break Some(i);
        }
        assert!(std::time::Instant::now() < deadline, "seq 2 never appended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    for &f in &followers {
        cluster
            .wait_for("a follower to apply seq 2", Duration::from_secs(5), || {
                let c = &cluster;
                async move {
                    let s = c.status(f).await;
                    s.and_then(|s| s.applied_index) >= target
                }
            })
            .await;
    }
    cluster.kill(leader);
    drop(raw);

    // The retry, with the same client_id and seq, lands on another node.
    client.set_session(client_id, 2);
    let retried = client.add(json!("k"), 7).await.expect("retry");
    assert_eq!(
        retried,
        Reply::AddOk { value: 12 },
        "the cached reply of seq 2"
    );
    let read = client.read(json!("k")).await.expect("read");
    assert_eq!(
        read,
        Reply::ReadOk {
            value: json!(12).into()
        },
        "the add ran once"
    );
}

/// A session idle past the timeout is expired by the *new* leader's GC entry; a
/// retry then gets error 1000, and the counter does not move again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_gets_1000_after_a_leader_change() {
    let env = [
        ("ONCEKV_SESSION_TIMEOUT_MS", "1500"),
        ("ONCEKV_GC_INTERVAL_MS", "100"),
    ];
    let mut cluster = TestCluster::start("expiry", 3, &env);
    let (leader, others) = roles(&cluster).await;
    let mut client = cluster.client();
    let client_id = client.open_session().await.expect("session");
    assert_eq!(
        client.add(json!("k"), 1).await.expect("add"),
        Reply::AddOk { value: 1 }
    );
    cluster.kill(leader);
    let new = cluster.wait_leader(Duration::from_secs(10)).await;
    assert!(others.contains(&new));
    cluster
        .wait_for(
            "the new leader to expire the session",
            Duration::from_secs(10),
            || {
                let c = &cluster;
                async move { c.status(new).await.is_some_and(|s| s.sessions == 0) }
            },
        )
        .await;

    for seq in [1, 2] {
        client.set_session(client_id.clone(), seq);
        let reply = client.add(json!("k"), 1).await.expect("definite answer");
        assert_eq!(
            reply.error_code(),
            Some(ErrorCode::SessionExpired),
            "seq {seq}: {reply:?}"
        );
    }
    let read = client.read(json!("k")).await.expect("read");
    assert_eq!(
        read,
        Reply::ReadOk {
            value: json!(1).into()
        },
        "executed once"
    );
}

/// A client that sends its request again and again while the first copy is in
/// the log (here 50 copies back to back on one connection, and 50 more on a
/// second connection through a follower) gets the one outcome for each copy,
/// and the log gains one entry for the request, not one per copy: each retry
/// joins the entry in flight or is answered from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_of_a_request_in_flight_add_no_entries() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let cluster = TestCluster::start("joins", 3, &[]);
    let (leader, followers) = roles(&cluster).await;
    // Let the leader's start-up entries (limits) settle.
    let mut client = cluster.client();
    client.open_session().await.expect("session");
    client.write(json!("warm"), json!(0)).await.expect("write");
    let before = cluster.status(leader).await.expect("status").last_log_index;

    const COPIES: u64 = 50;
    let line = |dest: &str, msg_id: u64| {
        json!({"src": "c-joins", "dest": dest, "body": {"type": "add", "msg_id": msg_id,
            "key": "joined", "delta": 3, "client_id": "joiner", "seq": 1}})
        .to_string()
    };
    let mut replies = Vec::new();
    for (node, base) in [(leader, 0), (followers[0], 1000)] {
        let stream = tokio::net::TcpStream::connect(&cluster.nodes[node].addr)
            .await
            .expect("connect");
        let (read, mut write) = stream.into_split();
        let mut burst = String::new();
        for i in 1..=COPIES {
            burst.push_str(&line(&cluster.nodes[node].name, base + i));
            burst.push('\n');
        }
        write.write_all(burst.as_bytes()).await.expect("send");
        let mut lines = BufReader::new(read).lines();
        for _ in 0..COPIES {
            let got = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
                .await
                .expect("a reply in time")
                .expect("read")
                .expect("a line");
            let v: serde_json::Value = serde_json::from_str(&got).expect("json");
            replies.push(v["body"].clone());
        }
    }
    for body in &replies {
        assert_eq!(body["type"], "add_ok", "{body}");
        assert_eq!(body["value"], 3, "every copy gets the one outcome: {body}");
    }
    let read = client.read(json!("joined")).await.expect("read");
    assert_eq!(
        read,
        Reply::ReadOk {
            value: json!(3).into()
        },
        "the add ran once"
    );
    let after = cluster.status(leader).await.expect("status").last_log_index;
    let grew = after.unwrap_or(0) - before.unwrap_or(0);
    // One entry for the add; a GC tick or two may land meanwhile.
    assert!(
        grew <= 3,
        "{} copies of one request made {grew} entries",
        2 * COPIES
    );
}
