//! Forming a new cluster in turn (docs/cluster.md, "Forming the cluster"): the
//! member with the highest id forms it at once and is elected in term 1 by
//! members that have not formed it themselves; a lower member forms it only
//! after its turn (its rank × `election_timeout_max_ms`) when no leader's
//! entries reached it, so a cluster whose highest member never starts still
//! forms.
//!
//! The election timeouts are long here (1.5-3 s, so a turn is 3 s) so that
//! the order of the starts, not the machine's speed, decides.

mod support_tcp;

use std::time::{Duration, Instant};

use oncekv::protocol::Reply;
use serde_json::json;
use support_tcp::TestCluster;

const WAIT: Duration = Duration::from_secs(30);

const SLOW_TURNS: [(&str, &str); 2] = [
    ("ONCEKV_ELECTION_TIMEOUT_MIN_MS", "1500"),
    ("ONCEKV_ELECTION_TIMEOUT_MAX_MS", "3000"),
];

fn log_of(cluster: &TestCluster, i: usize) -> String {
    std::fs::read_to_string(cluster.nodes[i].dir.join("node.log")).unwrap_or_default()
}

/// Waits until node `i` answers `status`.
async fn wait_serving(cluster: &TestCluster, i: usize) {
    let deadline = Instant::now() + WAIT;
    while cluster.status(i).await.is_none() {
        assert!(Instant::now() < deadline, "n{} never served", i + 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// n1 and n2 serve and wait their turns; n3 starts, forms the cluster and
/// wins term 1 at once with their votes. One election, no second term: every
/// member says term 1, and no log shows a term 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_highest_member_forms_the_cluster_in_one_election() {
    let mut cluster = TestCluster::unstarted("formation-turns", 3, &SLOW_TURNS);
    let started = Instant::now();
    cluster.restart(0);
    cluster.restart(1);
    wait_serving(&cluster, 0).await;
    wait_serving(&cluster, 1).await;
    cluster.restart(2);
    let leader = cluster.wait_leader(WAIT).await;
    eprintln!("leader n{} after {:?}", leader + 1, started.elapsed());
    assert_eq!(leader, 2, "n3, the highest id, leads");
    for i in 0..3 {
        let s = cluster.status(i).await.expect("status");
        assert_eq!(s.term, 1, "n{}: {s:?}", i + 1);
        assert!(
            !log_of(&cluster, i).contains("term 2 began"),
            "n{} saw a second election:\n{}",
            i + 1,
            log_of(&cluster, i)
        );
    }
    let mut client = cluster.client();
    client.open_session().await.expect("open_session");
    let r = client.write(json!("k"), json!(1)).await.expect("write");
    assert_eq!(r, Reply::WriteOk);
}

/// n3 never starts: n2 forms the cluster after its turn (one election timeout
/// maximum), n1 follows it without forming one of its own, and writes work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_highest_member_the_next_forms_the_cluster_after_its_turn() {
    let mut cluster = TestCluster::unstarted("formation-fallback", 3, &SLOW_TURNS);
    let started = Instant::now();
    cluster.restart(0);
    cluster.restart(1);
    let leader = cluster.wait_leader(WAIT).await;
    let took = started.elapsed();
    eprintln!("leader n{} after {took:?}", leader + 1);
    assert_eq!(leader, 1, "n2 forms the cluster before n1's turn comes");
    // Not before its turn (one election_timeout_max_ms, 3 s).
    assert!(took >= Duration::from_millis(3000), "{took:?}");
    let mut client = cluster.client();
    client.open_session().await.expect("open_session");
    let r = client.write(json!("k"), json!(1)).await.expect("write");
    assert_eq!(r, Reply::WriteOk);
    // n1's log holds n2's first entry, so its own turn passed without forming.
    let deadline = Instant::now() + WAIT;
    loop {
        let s = cluster.status(0).await.expect("n1 status");
        if s.leader == Some(2) && s.applied_index.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "n1 never followed n2: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
