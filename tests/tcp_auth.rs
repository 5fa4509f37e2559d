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
    exchange_as(conn, ("intruder", ""), body, msg_id).await
}

/// [`exchange`] with this envelope `src` and `dest`.
async fn exchange_as(
    conn: &mut BufReader<TcpStream>,
    (src, dest): (&str, &str),
    body: Value,
    msg_id: u64,
) -> serde_json::Map<String, Value> {
    let mut body = body;
    body["msg_id"] = json!(msg_id);
    let line = json!({"src": src, "dest": dest, "body": body}).to_string() + "\n";
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
    let me = cluster.nodes[leader].name.clone();
    let other = cluster.nodes[(leader + 1) % 3].name.clone();
    let hello = json!({"type": "peer_hello", "key": key});
    let b = exchange_as(&mut conn, (&other, &me), hello.clone(), 6).await;
    assert_eq!(b.get("type"), Some(&json!("error")), "{b:?}");
    let b = exchange(&mut conn, vote.clone(), 8).await;
    assert!(refused(&b), "still refused: {b:?}");
    // With the key, a new connection gets past the gate (and the malformed
    // append is then judged on its content, not refused for the key). The
    // hello must name a member as sender and this node as receiver.
    let stream = TcpStream::connect(&cluster.nodes[leader].addr)
        .await
        .expect("connect");
    let mut conn = BufReader::new(stream);
    let b = exchange(&mut conn, hello.clone(), 6).await;
    assert_eq!(b.get("code"), Some(&json!(12)), "no receiver named: {b:?}");
    let b = exchange_as(&mut conn, ("c5", &me), hello.clone(), 6).await;
    assert!(
        b.get("text")
            .and_then(Value::as_str)
            .unwrap_or("")
            .contains("not a node"),
        "a client's name: {b:?}"
    );
    let alias = format!("x{}", &other[1..]);
    let b = exchange_as(&mut conn, (&alias, &me), hello.clone(), 6).await;
    assert!(
        b.get("text")
            .and_then(Value::as_str)
            .unwrap_or("")
            .contains(&format!("is {other}, not")),
        "another name for a member's id: {b:?}"
    );
    let b = exchange_as(&mut conn, (&me, &other), hello.clone(), 6).await;
    assert!(
        b.get("text")
            .and_then(Value::as_str)
            .unwrap_or("")
            .contains(&format!("this is node {me}")),
        "the wrong receiver: {b:?}"
    );
    let b = exchange(&mut conn, json!({"type": "raft_append", "rpc": {}}), 7).await;
    assert!(refused(&b), "no hello was accepted yet: {b:?}");
    let b = exchange_as(&mut conn, (&other, &me), hello, 6).await;
    assert_eq!(b.get("type"), Some(&json!("peer_hello_ok")), "{b:?}");
    let b = exchange_as(
        &mut conn,
        (&other, &me),
        json!({"type": "raft_append", "rpc": {}}),
        7,
    )
    .await;
    assert!(!refused(&b), "the key was presented: {b:?}");
    // A peer message addressed to another node is not served.
    let b = exchange_as(&mut conn, (&other, "n7"), vote.clone(), 8).await;
    assert_eq!(b.get("code"), Some(&json!(12)), "{b:?}");
    assert!(
        b.get("text")
            .and_then(Value::as_str)
            .unwrap_or("")
            .contains("addressed to"),
        "{b:?}"
    );
    let s = cluster.status(leader).await.expect("status");
    assert_eq!(s.term, term, "the misaddressed vote moved the term: {s:?}");
    // Restarting a node keeps working: it presents the key again.
    cluster.kill(leader);
    cluster.restart(leader);
    let r = client
        .write(json!("k"), json!(2))
        .await
        .expect("write after restart");
    assert_eq!(r, Reply::WriteOk);
}

/// A follower started without the cluster key forwards a write; the leader refuses
/// the forward (error 10, the connection gave no key) before anything reaches its
/// log, and the client is told so definitely, not "it may still take effect".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definite_refusal_of_a_forward_stays_definite() {
    let key = "auth-test-key-forward";
    let mut cluster = TestCluster::start("auth-forward", 3, &[(oncekv::tcp::CLUSTER_KEY_VAR, key)]);
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    cluster.kill(follower);
    cluster.restart_with(follower, &[(oncekv::tcp::CLUSTER_KEY_VAR, "")]);
    // The keyless follower still accepts the leader's appends (it checks no key),
    // so it learns who leads; wait until it does.
    let c = &cluster;
    c.wait_for(
        "the keyless follower knows the leader",
        Duration::from_secs(10),
        || async move { c.status(follower).await.and_then(|s| s.leader).is_some() },
    )
    .await;
    let stream = TcpStream::connect(&cluster.nodes[follower].addr)
        .await
        .expect("connect");
    let mut conn = BufReader::new(stream);
    let write = json!({"type": "write", "key": "fw", "value": 1, "client_id": "cf", "seq": 1});
    let b = exchange(&mut conn, write, 1).await;
    let code = b.get("code").and_then(Value::as_u64).map(|c| c as u32);
    let definite = code
        .and_then(|c| oncekv::protocol::ErrorCode::try_from(c).ok())
        .is_some_and(|c| c.is_definite());
    assert!(definite, "a definite refusal: {b:?}");
    let text = b.get("text").and_then(Value::as_str).unwrap_or("");
    assert!(text.contains("key"), "the answer says why: {b:?}");
    // Definite means it did not happen: the key is still missing at the leader.
    let mut conn = BufReader::new(
        TcpStream::connect(&cluster.nodes[leader].addr)
            .await
            .expect("connect"),
    );
    let b = exchange(&mut conn, json!({"type": "read", "key": "fw"}), 2).await;
    assert_eq!(b.get("code"), Some(&json!(20)), "{b:?}");
}

/// A node whose `--peers` sends it to the wrong member (n2's and n3's addresses
/// swapped in n1's list only) is told so by the node it reaches, which refuses
/// the hello naming another receiver: n1 never takes one node for another (a
/// vote request meant for n2 is not answered by n3). Without a cluster key:
/// peers say hello anyway.
///
/// n2 and n3 start with `--join` (they never form a cluster themselves, and do
/// not reach n1 first); n1 starts on a fresh dir, forms the cluster from its
/// wrong list in its turn and campaigns over it. Then n2 and n3 start again,
/// forming from the right list: n3 forms the cluster at once, reaches n1 at its
/// right address and wins its vote (n1's first entry is older than n3's), n1
/// takes n3's log and membership in place of its own uncommitted ones, dials
/// the right addresses, and its status stops naming the refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_to_the_wrong_member_is_refused() {
    let mut cluster = TestCluster::unstarted("hello-swap", 3, &[]);
    let (n1, n2, n3) = (
        cluster.nodes[0].addr.clone(),
        cluster.nodes[1].addr.clone(),
        cluster.nodes[2].addr.clone(),
    );
    let peers = cluster.peers.clone();
    cluster.spawn(1, &peers, true);
    cluster.spawn(2, &peers, true);
    cluster.spawn(0, &format!("n1={n1},n2={n3},n3={n2}"), false);
    let log = |i: usize| {
        std::fs::read_to_string(cluster.nodes[i].dir.join("node.log")).unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut in_status = false;
    loop {
        let told = log(0).contains("refused our hello: this is node n");
        let refused = (log(1) + &log(2)).contains(": check --peers on n1");
        // n1's status names the refusal too (for a few seconds after the last).
        in_status = in_status
            || cluster.status(0).await.is_some_and(|s| {
                s.hello_refused
                    .iter()
                    .any(|r| r.contains("refused our hello: this is node n"))
            });
        if told && refused && in_status {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "n1 was not told it reached the wrong node (logs in {})",
            cluster.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Neither took n1's requests for its own: no vote, no term.
    for i in [1, 2] {
        let s = cluster.status(i).await.expect("status");
        assert_eq!((s.term, s.leader), (0, None), "n{}: {s:?}", i + 1);
    }
    // n2 and n3 again, forming from the right list; n1 runs on.
    cluster.kill(1);
    cluster.kill(2);
    cluster.restart(1);
    cluster.restart(2);
    let leader = cluster.wait_leader(Duration::from_secs(30)).await;
    assert_eq!(leader, 2, "n3 forms the cluster and n1 follows it");
    let mut client = oncekv::tcp::Client::new(oncekv::tcp::ClientOptions::new(vec![n1, n2, n3]));
    client.open_session().await.expect("session");
    let r = client.write(json!("k"), json!(1)).await.expect("write");
    assert_eq!(r, Reply::WriteOk);
    let c = &cluster;
    c.wait_for(
        "n1's status shows no refusal",
        Duration::from_secs(30),
        || async move {
            c.status(0)
                .await
                .is_some_and(|s| s.hello_refused.is_empty())
        },
    )
    .await;
}

/// A new node whose `--peers` is wrong (n2's and n3's addresses swapped) but
/// whose cluster already runs never uses its list: it waits its turn to form
/// one (long here: a 3 s election timeout maximum, two turns), and before it
/// comes the leader, which has its address right, reaches it; it follows, with
/// the log's membership, and stands for no election.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_with_a_wrong_list_follows_the_cluster_it_finds() {
    let mut cluster = TestCluster::unstarted("wrong-list-follows", 3, &[]);
    let (n1, n2, n3) = (
        cluster.nodes[0].addr.clone(),
        cluster.nodes[1].addr.clone(),
        cluster.nodes[2].addr.clone(),
    );
    cluster.restart(1);
    cluster.restart(2);
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let slow_turn = [
        ("ONCEKV_ELECTION_TIMEOUT_MIN_MS", "1500"),
        ("ONCEKV_ELECTION_TIMEOUT_MAX_MS", "3000"),
    ];
    cluster.spawn_with(0, &format!("n1={n1},n2={n3},n3={n2}"), false, &slow_turn);
    let c = &cluster;
    let leader_id = leader as u64 + 1;
    c.wait_for(
        "n1 to follow the running cluster",
        Duration::from_secs(30),
        || async move {
            c.status(0)
                .await
                .is_some_and(|s| s.leader == Some(leader_id) && s.applied_index.is_some())
        },
    )
    .await;
    let log = std::fs::read_to_string(cluster.nodes[0].dir.join("node.log")).unwrap_or_default();
    assert!(
        !log.contains("election started"),
        "n1 stood for election over its wrong list:\n{log}"
    );
    let s = cluster.status(0).await.expect("status");
    assert_eq!(s.members[&2].addr, n2, "the log's membership: {s:?}");
    assert_eq!(s.members[&3].addr, n3, "the log's membership: {s:?}");
}

/// Whatever listens at a member's address writes the text of a hello refusal:
/// a huge one with control characters (a terminal escape, a newline that would
/// forge a line) is cut and escaped before it reaches `node.log` and `status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_refusal_text_is_cut_and_escaped() {
    let mut cluster = TestCluster::unstarted("hello-junk", 2, &[]);
    let fake = tokio::net::TcpListener::bind(&cluster.nodes[1].addr)
        .await
        .expect("bind n2's address");
    let junk = format!("\u{1b}[31m{}\nFORGED LINE", "x".repeat(100_000));
    let text = junk.clone();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = fake.accept().await else {
                return;
            };
            let text = text.clone();
            tokio::spawn(async move {
                let (r, mut w) = conn.into_split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let Ok(hello) = serde_json::from_str::<Value>(&line) else {
                        return;
                    };
                    let reply = json!({"src": "n2", "dest": "n1", "body": {
                        "type": "error", "code": 12, "text": text,
                        "in_reply_to": hello["body"]["msg_id"],
                    }});
                    let _ = w.write_all(format!("{reply}\n").as_bytes()).await;
                }
            });
        }
    });
    let peers = cluster.peers.clone();
    cluster.spawn(0, &peers, false);
    let c = &cluster;
    c.wait_for(
        "n1's status names the refusal",
        Duration::from_secs(20),
        || async move {
            c.status(0)
                .await
                .is_some_and(|s| !s.hello_refused.is_empty())
        },
    )
    .await;
    let shown = cluster.status(0).await.expect("status").hello_refused;
    eprintln!("{shown:?}");
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert!(shown[0].len() < 1_000, "{} bytes shown", shown[0].len());
    assert!(!shown[0].chars().any(char::is_control), "{shown:?}");
    assert!(
        shown[0].contains("bytes in all"),
        "the cut is said: {shown:?}"
    );
    let log = std::fs::read_to_string(cluster.nodes[0].dir.join("node.log")).expect("log");
    assert!(!log.contains('\u{1b}'), "a raw escape in node.log");
    assert!(
        !log.lines().any(|l| l.starts_with("FORGED")),
        "a forged line in node.log"
    );
    assert!(log.len() < 100_000, "node.log holds the whole text");
}
