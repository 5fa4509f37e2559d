//! The cluster key: a connection that has not presented it (`peer_hello`) gets
//! its Raft RPCs refused, so a stray or hostile process cannot move a node's term
//! or log; client requests need no key; a node's own peers present it.

mod support_tcp;

use std::time::Duration;

use oncekv::protocol::Reply;
use serde_json::{Value, json};
use support_tcp::TestCluster;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Sends one line on `conn` and returns the body of the reply to `msg_id`.
async fn exchange(
    conn: &mut BufReader<TcpStream>,
    body: Value,
    msg_id: u64,
) -> serde_json::Map<String, Value> {
    let mut body = body;
    body["msg_id"] = json!(msg_id);
    let line = json!({"src": "intruder", "dest": "", "body": body}).to_string() + "\n";
    conn.get_mut()
        .write_all(line.as_bytes())
        .await
        .expect("write");
    loop {
        let mut reply = String::new();
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read_line(&mut reply))
            .await
            .expect("a reply in time")
            .expect("read");
        assert!(n > 0, "connection closed");
        let v: Value = serde_json::from_str(&reply).expect("json");
        if v["body"]["in_reply_to"] == json!(msg_id) {
            return v["body"].as_object().expect("body").clone();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_rpcs_without_the_cluster_key_are_refused() {
    let key = "auth-test-key-0123";
    let mut cluster = TestCluster::start("auth", 3, &[(oncekv::tcp::CLUSTER_KEY_VAR, key)]);
    // The peers presented the key to each other: a leader, and writes commit.
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let mut client = cluster.client();
    client
        .open_session()
        .await
        .expect("session (no key needed)");
    let r = client.write(json!("k"), json!(1)).await.expect("write");
    assert_eq!(r, Reply::WriteOk);
    let term = cluster.status(leader).await.expect("status").term;

    let stream = TcpStream::connect(&cluster.nodes[leader].addr)
        .await
        .expect("connect");
    let mut conn = BufReader::new(stream);
    // A vote request for a far higher term, as a forged candidate would send.
    let vote = json!({"type": "raft_vote", "rpc": {"vote": {"leader_id": {"term": term + 100, "node_id": 9}, "committed": false}, "last_log_id": null}});
    let refused = |b: &serde_json::Map<String, Value>| {
        b.get("code") == Some(&json!(10))
            && b.get("text")
                .and_then(Value::as_str)
                .is_some_and(|t| t.contains("cluster key"))
    };
    let b = exchange(&mut conn, vote.clone(), 1).await;
    assert!(refused(&b), "a raft_vote without the key: {b:?}");
    let b = exchange(&mut conn, json!({"type": "raft_append", "rpc": {}}), 2).await;
    assert!(refused(&b), "a raft_append without the key: {b:?}");
    let b = exchange(&mut conn, json!({"type": "peer_hello", "key": "guess"}), 3).await;
    assert_eq!(b.get("type"), Some(&json!("error")), "a wrong key: {b:?}");
    let b = exchange(&mut conn, vote.clone(), 4).await;
    assert!(refused(&b), "still refused after a wrong key: {b:?}");
    // Client requests on the same connection are served without a key.
    let b = exchange(&mut conn, json!({"type": "read", "key": "k"}), 5).await;
    assert_eq!(b.get("value"), Some(&json!(1)), "{b:?}");

    let s = cluster.status(leader).await.expect("status");
    assert_eq!(s.term, term, "the refused vote moved the term: {s:?}");
    assert_eq!(cluster.wait_leader(Duration::from_secs(5)).await, leader);

    // After a wrong key, not even the right one is checked on this connection:
    // each guess costs a new connection.
    let b = exchange(&mut conn, json!({"type": "peer_hello", "key": key}), 6).await;
    assert_eq!(b.get("type"), Some(&json!("error")), "{b:?}");
    let b = exchange(&mut conn, vote.clone(), 8).await;
    assert!(refused(&b), "still refused: {b:?}");
    // With the key, a new connection gets past the gate (and the malformed
    // append is then judged on its content, not refused for the key).
    let stream = TcpStream::connect(&cluster.nodes[leader].addr)
        .await
        .expect("connect");
    let mut conn = BufReader::new(stream);
    let b = exchange(&mut conn, json!({"type": "peer_hello", "key": key}), 6).await;
    assert_eq!(b.get("type"), Some(&json!("peer_hello_ok")), "{b:?}");
    let b = exchange(&mut conn, json!({"type": "raft_append", "rpc": {}}), 7).await;
    assert!(!refused(&b), "the key was presented: {b:?}");
    // Restarting a node keeps working: it presents the key again.
    cluster.kill(leader);
    cluster.restart(leader);
    let r = client
        .write(json!("k"), json!(2))
        .await
        .expect("write after restart");
    assert_eq!(r, Reply::WriteOk);
}
