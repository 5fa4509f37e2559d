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
    assert_eq!(read, Reply::ReadOk { value: json!(12) }, "the add ran once");
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
    assert_eq!(read, Reply::ReadOk { value: json!(1) }, "executed once");
}
