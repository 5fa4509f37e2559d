//! The dead-leader fast path with real processes: a follower takes its leader
//! for gone only when the leader's connection closed and its port no longer
//! accepts (docs/architecture.md, "Failover"). A killed leader is known gone
//! and replaced; a paused leader (alive, its sockets open, as a partitioned
//! one is) never is, and keeps the lease's protection until it runs out.

mod support_tcp;

use std::process::Command;
use std::time::Duration;

use oncekv::protocol::Reply;
use oncekv::tcp::handler::process_gone;
use serde_json::json;
use support_tcp::TestCluster;

const WAIT: Duration = Duration::from_secs(30);
const PROBE: Duration = Duration::from_secs(2);

fn log_of(cluster: &TestCluster, i: usize) -> String {
    std::fs::read_to_string(cluster.nodes[i].dir.join("node.log")).unwrap_or_default()
}

fn signal(cluster: &TestCluster, i: usize, sig: &str) {
    let pid = cluster.nodes[i].child.as_ref().expect("running").id();
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// The probe itself: a running node and a paused one (SIGSTOP: the kernel
/// still accepts for it and nothing closes) are alive; a killed one is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_process_that_is_gone_counts_as_gone() {
    let mut cluster = TestCluster::start("leader_gone_probe", 1, &[]);
    cluster.wait_leader(WAIT).await;
    let addr = cluster.nodes[0].addr.clone();
    let alive = process_gone(&addr, PROBE).await;
    assert!(alive.is_err(), "a running node is not gone: {alive:?}");
    signal(&cluster, 0, "-STOP");
    let paused = process_gone(&addr, PROBE).await;
    signal(&cluster, 0, "-CONT");
    assert!(paused.is_err(), "a paused node is not gone: {paused:?}");
    cluster.kill(0);
    let killed = process_gone(&addr, PROBE).await;
    assert_eq!(killed, Ok(()), "a killed node is gone");
}

/// A killed leader: both followers learn it is gone (their logs say so) and
/// a new leader serves writes; the history of the write is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_known_gone_by_its_followers() {
    // Why a follower did not take the leader for gone is logged at DEBUG.
    let log = "warn,openraft=error,oncekv=info,oncekv::tcp::handler=debug,oncekv::node::leader_gone=debug";
    let mut cluster = TestCluster::start("leader_gone_kill", 3, &[("ONCEKV_LOG", log)]);
    let leader = cluster.wait_leader(WAIT).await;
    let mut client = cluster.client();
    client.open_session().await.expect("open_session");
    let r = client.write(json!("k"), json!(1)).await.expect("write");
    assert_eq!(r, Reply::WriteOk);
    let name = cluster.nodes[leader].name.clone();
    let id = name.trim_start_matches('n').to_string();
    cluster.kill(leader);
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let said = format!("leader {id} (term");
    cluster
        .wait_for("both followers to know the leader gone", WAIT, || {
            let all = followers.iter().all(|&i| {
                log_of(&cluster, i)
                    .lines()
                    .any(|l| l.contains(&said) && l.contains("is gone"))
            });
            async move { all }
        })
        .await;
    let new = cluster.wait_leader(WAIT).await;
    assert_ne!(new, leader);
    let r = client
        .write(json!("k"), json!(2))
        .await
        .expect("write after");
    assert_eq!(r, Reply::WriteOk);
    let r = client.read(json!("k")).await.expect("read");
    assert_eq!(
        r,
        Reply::ReadOk {
            value: json!(2).into()
        }
    );
}

/// A paused leader (SIGSTOP, longer than its lease): its connections stay open
/// and its port accepts, so no follower takes it for gone; they elect a new
/// leader only once its lease has run out, as before. Resumed, it steps down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_not_taken_for_gone() {
    let cluster = TestCluster::start("leader_gone_pause", 3, &[]);
    let leader = cluster.wait_leader(WAIT).await;
    let before = cluster.status(leader).await.expect("status").term;
    signal(&cluster, leader, "-STOP");
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    cluster
        .wait_for("the followers to elect another leader", WAIT, || {
            let (c, f) = (&cluster, followers.clone());
            async move {
                for i in f {
                    match c.status(i).await {
                        Some(s) if s.term > before && s.leader.is_some() => return true,
                        _ => {}
                    }
                }
                false
            }
        })
        .await;
    signal(&cluster, leader, "-CONT");
    for i in followers {
        let log = log_of(&cluster, i);
        assert!(
            !log.contains("is gone"),
            "n{} took a paused leader for gone:\n{log}",
            i + 1
        );
    }
    let now = cluster.wait_leader(WAIT).await;
    assert_ne!(now, leader, "the resumed leader stepped down");
}

/// A leader cut off from both followers cannot confirm it still leads, so it
/// refuses a read with a definite 11 that says so in words (which voters it
/// heard from), not with openraft's dump of its membership.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_a_quorum_refuses_reads_in_plain_words() {
    let mut cluster = TestCluster::start("leader-alone", 3, &[]);
    let leader = cluster.wait_leader(WAIT).await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    cluster.kill_together(&followers);
    let mut client = cluster.client();
    let deadline = std::time::Instant::now() + WAIT;
    let refused = loop {
        let r = client
            .call_node(leader, json!({"type": "read", "key": "k"}))
            .await;
        if let Ok(b) = r
            && b.get("code") == Some(&json!(11))
        {
            break b;
        }
        assert!(std::time::Instant::now() < deadline, "never refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = refused.get("text").and_then(|t| t.as_str()).unwrap_or("");
    let own = cluster.nodes[leader]
        .name
        .trim_start_matches('n')
        .to_string();
    assert!(
        text.contains("could not confirm it still leads")
            && text.contains(&format!("heard from node ids [{own}]")),
        "{text}"
    );
    assert!(!text.contains('{') && !text.contains("Quorum"), "{text}");
}
