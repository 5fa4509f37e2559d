//! Membership with real processes and the CLI: a node added to a cluster whose log
//! was purged behind a snapshot catches up by snapshot, with the sessions intact:
//! after the old leader is killed and removed, a retry of an executed seq still
//! gets its cached reply. The cluster has a key: the new node joins with it, and
//! the CLI's membership changes are refused without it.

mod support_tcp;

use std::process::Command;
use std::time::Duration;

use oncekv::protocol::Reply;
use serde_json::json;
use support_tcp::TestCluster;

/// The cluster's key: membership changes must present it.
const KEY: &str = "membership-test-key";

/// Runs `oncekv client` with the cluster key in its environment, or without.
fn cli_keyed(cluster: &TestCluster, key: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oncekv"));
    cmd.env_remove(oncekv::tcp::CLUSTER_KEY_VAR);
    if let Some(k) = key {
        cmd.env(oncekv::tcp::CLUSTER_KEY_VAR, k);
    }
    let out = cmd
        .args([
            "client",
            "--peers",
            &cluster.addrs().join(","),
            "--deadline",
            "30",
        ])
        .args(args)
        .output()
        .expect("run oncekv client");
    eprintln!(
        "oncekv client {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn cli(cluster: &TestCluster, args: &[&str]) -> std::process::Output {
    cli_keyed(cluster, Some(KEY), args)
}

/// Runs `oncekv client --deadline <deadline_s> <args>` with the key; returns the
/// exit code and stdout + stderr.
fn cli_within(cluster: &TestCluster, deadline_s: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_oncekv"))
        .env(oncekv::tcp::CLUSTER_KEY_VAR, KEY)
        .args(["client", "--peers", &cluster.addrs().join(",")])
        .args(["--deadline", deadline_s])
        .args(args)
        .output()
        .expect("run oncekv client");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    eprintln!("oncekv client {args:?}: {:?} {text}", out.status);
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_node_catches_up_by_snapshot_with_sessions_intact() {
    let env = [
        ("ONCEKV_SNAPSHOT_EVERY_ENTRIES", "20"),
        ("ONCEKV_LOG_KEPT_BEHIND_SNAPSHOT", "0"),
        // Every node presents it to its peers, the added one included.
        (oncekv::tcp::CLUSTER_KEY_VAR, KEY),
    ];
    let mut cluster = TestCluster::start("membership", 3, &env);
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let mut client = cluster.client();
    let client_id = client.open_session().await.expect("session");
    for i in 1..=60 {
        let r = client.add(json!("k"), 1).await.expect("add");
        assert_eq!(r, Reply::AddOk { value: i });
    }
    // The node's log budget asks for the snapshot on its next check (every
    // 100 ms), not at the apply that passed the count.
    support_tcp::wait_status(
        &cluster,
        leader,
        "the leader to build a snapshot",
        Duration::from_secs(10),
        |s| s.snapshot_index.is_some(),
    )
    .await;

    let n4 = cluster.add_node_process();
    let spec = format!("{}={}", cluster.nodes[n4].name, cluster.nodes[n4].addr);
    // Without the key, or with a wrong one, the change is refused (definite: 10).
    for key in [None, Some("wrong")] {
        let out = cli_keyed(&cluster, key, &["add-node", &spec]);
        assert!(!out.status.success());
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains("\"code\":10") && text.contains("cluster key"),
            "{text}"
        );
    }
    assert!(cli(&cluster, &["add-node", &spec]).status.success());
    let leader_applied = cluster.status(leader).await.and_then(|s| s.applied_index);
    cluster
        .wait_for("n4 to catch up", Duration::from_secs(10), || {
            let c = &cluster;
            async move {
                c.status(n4)
                    .await
                    .is_some_and(|s| s.applied_index >= leader_applied && s.voters.contains(&4))
            }
        })
        .await;
    let s4 = cluster.status(n4).await.expect("n4 status");
    assert_eq!(s4.sessions, 1, "{s4:?}");
    assert!(
        s4.snapshot_index.is_some(),
        "n4 installed a snapshot: {s4:?}"
    );

    cluster.kill(leader);
    let name = cluster.nodes[leader].name.clone();
    assert!(cli(&cluster, &["remove-node", &name]).status.success());
    let new = cluster.wait_leader(Duration::from_secs(10)).await;
    eprintln!("new leader {}", cluster.nodes[new].name);

    // seq 60 ran before n4 existed; its retry is answered from the snapshot's cache.
    let mut only_n4 = oncekv::tcp::Client::new(oncekv::tcp::ClientOptions::new(vec![
        cluster.nodes[n4].addr.clone(),
    ]));
    only_n4.set_session(client_id, 60);
    let r = only_n4.add(json!("k"), 1).await.expect("retry");
    assert_eq!(r, Reply::AddOk { value: 60 });
    let r = only_n4.add(json!("k"), 1).await.expect("seq 61");
    assert_eq!(r, Reply::AddOk { value: 61 });
}

/// `add-node` for a node that is not running fails definitely (exit 1, error 11)
/// within its deadline and leaves the voters as they were; a node whose id or
/// address is a member's is refused; a node started with `serve --join` is added
/// and becomes a voter. Writes keep being acknowledged throughout, and the
/// counter ends at exactly the number acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_node_promotes_only_a_node_that_caught_up() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let env = [(oncekv::tcp::CLUSTER_KEY_VAR, KEY)];
    let mut cluster = TestCluster::start("add-node-catch-up", 3, &env);
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let voters = |s: Option<oncekv::node::NodeStatus>| {
        s.map(|s| (s.voters, s.learners)).expect("leader status")
    };
    assert_eq!(
        voters(cluster.status(leader).await),
        (vec![1, 2, 3], vec![])
    );

    // A retrying writer, all along.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, acked) = (stop.clone(), acked.clone());
        let mut client = cluster.client();
        tokio::spawn(async move {
            client.open_session().await.expect("session");
            while !stop.load(Ordering::Relaxed) {
                match client.add(json!("w"), 1).await {
                    Ok(Reply::AddOk { .. }) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("a write failed: {other:?}"),
                }
            }
        })
    };
    let progress = |what: &str, since: u64| {
        let acked = acked.clone();
        let what = what.to_string();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while acked.load(Ordering::Relaxed) <= since {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no write acknowledged {what}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    progress("at the start", 0).await;

    // n4 is not running: refused definitely, membership unchanged.
    let n4_addr = format!("127.0.0.1:{}", support_tcp::free_port());
    let spec = format!("n4={n4_addr}");
    let (code, text) = cli_within(&cluster, "3", &["add-node", &spec]);
    assert_eq!(code, 1, "a definite failure: {text}");
    assert!(text.contains("\"code\":11"), "{text}");
    assert!(text.contains("did not catch up"), "{text}");
    assert!(text.contains("membership is unchanged"), "{text}");
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    assert_eq!(
        voters(cluster.status(leader).await),
        (vec![1, 2, 3], vec![])
    );
    progress("after the failed add-node", acked.load(Ordering::Relaxed)).await;

    // An id or an address that is a member's already.
    let n1_addr = cluster.nodes[0].addr.clone();
    for (spec, expected) in [
        (format!("n5={n1_addr}"), "is already n1"),
        (format!("n2={n4_addr}"), "is a voter already"),
    ] {
        let (code, text) = cli_within(&cluster, "10", &["add-node", &spec]);
        assert_eq!(code, 1, "{spec}: {text}");
        assert!(
            text.contains("\"code\":12") && text.contains(expected),
            "{text}"
        );
    }
    // The same voter again: nothing to do, and so a retry of a done add succeeds.
    let n2 = format!("n2={}", cluster.nodes[1].addr);
    let (code, text) = cli_within(&cluster, "10", &["add-node", &n2]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("a voter already"), "{text}");

    // A node that formed a cluster of its own (started without --join) is not
    // merged: its acknowledged writes would be discarded.
    let n5_addr = format!("127.0.0.1:{}", support_tcp::free_port());
    let mut n5 = std::process::Command::new(env!("CARGO_BIN_EXE_oncekv"))
        .args(["serve", "--id", "n5", "--listen", &n5_addr])
        .args(["--peers", &format!("n5={n5_addr}")])
        .arg("--data-dir")
        .arg(cluster.dir.join("n5-alone"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn n5");
    let mut only_n5 =
        oncekv::tcp::Client::new(oncekv::tcp::ClientOptions::new(vec![n5_addr.clone()]));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !only_n5
        .status_of(0)
        .await
        .is_ok_and(|s| s.role == oncekv::node::Role::Leader)
    {
        assert!(std::time::Instant::now() < deadline, "n5 never led alone");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (spec, expected) in [
        (format!("n5={n5_addr}"), "leads a cluster of its own"),
        (format!("n6={n5_addr}"), "is served by n5, not n6"),
    ] {
        let (code, text) = cli_within(&cluster, "10", &["add-node", &spec]);
        assert_eq!(code, 1, "{spec}: {text}");
        assert!(
            text.contains("\"code\":12") && text.contains(expected),
            "{text}"
        );
    }
    n5.kill().expect("kill n5");
    n5.wait().expect("wait n5");

    // Started first with --join, it catches up and becomes a voter.
    let n4 = cluster.add_node_process();
    let spec = format!("{}={}", cluster.nodes[n4].name, cluster.nodes[n4].addr);
    let (code, text) = cli_within(&cluster, "30", &["add-node", &spec]);
    assert_eq!(code, 0, "{text}");
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    assert_eq!(
        voters(cluster.status(leader).await),
        (vec![1, 2, 3, 4], vec![])
    );
    progress("after n4 was added", acked.load(Ordering::Relaxed)).await;

    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    let total = acked.load(Ordering::Relaxed);
    let r = cluster.client().read(json!("w")).await.expect("read");
    assert_eq!(
        r,
        Reply::ReadOk {
            value: json!(total).into()
        }
    );
    eprintln!("{total} writes acknowledged during the membership changes");
}

/// Removing the last voter is refused by openraft before anything is proposed:
/// the answer is definite (12), not "it may still take effect".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_last_voter_is_refused_definitely() {
    let cluster = TestCluster::start("remove-last", 1, &[]);
    cluster.wait_leader(Duration::from_secs(10)).await;
    let mut client = cluster.client();
    let b = client
        .call_node(0, json!({"type": "remove_node", "name": "n1"}))
        .await
        .expect("an answer");
    assert_eq!(b.get("code"), Some(&json!(12)), "{b:?}");
    let s = cluster.status(0).await.expect("status");
    assert_eq!(s.voters, vec![1], "{s:?}");
    let r = client.open_session().await;
    assert!(r.is_ok(), "still serving: {r:?}");
}

/// A membership change given only a follower's address reaches the leader
/// that follower names (from its membership), as with any member's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_sent_through_a_follower_reaches_its_leader() {
    let env = [(oncekv::tcp::CLUSTER_KEY_VAR, KEY)];
    let cluster = TestCluster::start("membership-via-follower", 3, &env);
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let out = Command::new(env!("CARGO_BIN_EXE_oncekv"))
        .env(oncekv::tcp::CLUSTER_KEY_VAR, KEY)
        .args(["client", "--peers", &cluster.nodes[follower].addr])
        .args([
            "--deadline",
            "10",
            "remove-node",
            &cluster.nodes[other].name,
        ])
        .output()
        .expect("run oncekv client");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let s = cluster.status(leader).await.expect("status");
    let removed: u64 = cluster.nodes[other].name[1..].parse().expect("id");
    assert!(!s.voters.contains(&removed), "{s:?}");
}

/// A client with a wrong key is told so: its membership change is refused
/// (10, nothing done) with the node's refusal of its key, not only "needs the
/// cluster key", which reads as if none had been given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_client_key_is_named_as_wrong() {
    let env = [(oncekv::tcp::CLUSTER_KEY_VAR, KEY)];
    let cluster = TestCluster::start("membership-client-key", 1, &env);
    cluster.wait_leader(Duration::from_secs(10)).await;
    let out = Command::new(env!("CARGO_BIN_EXE_oncekv"))
        .env(oncekv::tcp::CLUSTER_KEY_VAR, "not-the-key")
        .args(["client", "--peers", &cluster.addrs().join(",")])
        .args(["--deadline", "5", "remove-node", "n9"])
        .output()
        .expect("run oncekv client");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "a definite refusal: {text}");
    assert!(
        text.contains("the key this client sent was refused") && text.contains("wrong cluster key"),
        "{text}"
    );
}

/// A node started with another cluster key refuses the leader's hello, so it
/// can never catch up: `add-node` fails definitely and says why, naming the
/// refused hello, and the membership is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_node_with_another_key_names_the_refused_hello() {
    let env = [(oncekv::tcp::CLUSTER_KEY_VAR, KEY)];
    let mut cluster = TestCluster::start("membership-wrong-key", 3, &env);
    cluster.wait_leader(Duration::from_secs(10)).await;
    let n4 = cluster.add_node_process();
    cluster.kill(n4);
    let n4_addr = cluster.nodes[n4].addr.clone();
    let peers = format!("{},n4={n4_addr}", cluster.peers);
    let other = [(oncekv::tcp::CLUSTER_KEY_VAR, "another-clusters-key")];
    cluster.spawn_with(n4, &peers, true, &other);
    let (code, text) = cli_within(&cluster, "5", &["add-node", &format!("n4={n4_addr}")]);
    assert_eq!(code, 1, "a definite failure: {text}");
    assert!(text.contains("did not catch up"), "{text}");
    assert!(
        text.contains("refused our hello: wrong cluster key"),
        "the cause is not named: {text}"
    );
    assert!(text.contains("membership is unchanged"), "{text}");
}
