//! Failover with real processes: SIGKILL the leader while several retrying
//! clients add to counters. Every counter must end at the number of acknowledged
//! adds (no duplicate, no loss), the history must be linearizable, and a new leader
//! must serve writes within a bound derived from the election timeout.

mod support_tcp;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use oncekv::protocol::Reply;
use oncekv::tools::check::{CheckOptions, Validity, check_counters, check_linearizable};
use oncekv::tools::history::OpType;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use support_tcp::{Recorder, TestCluster, seed};

/// Workers adding concurrently.
const WORKERS: u64 = 4;
/// Counter keys they share.
const KEYS: u64 = 3;
/// The nodes' default election timeout upper bound (config.rs).
fn election_timeout_max() -> Duration {
    Duration::from_millis(oncekv::config::Config::default().election_timeout_max_ms)
}

async fn worker(
    w: u64,
    seed: u64,
    cluster_opts: oncekv::tcp::ClientOptions,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ w);
    let mut opts = cluster_opts;
    opts.deadline = Duration::from_secs(20);
    let mut client = oncekv::tcp::Client::new(opts);
    client.open_session().await.expect("open_session");
    let mut process = w;
    while !stop.load(Ordering::Relaxed) {
        let key = rng.gen_range(0..KEYS);
        rec.push_error(process, OpType::Invoke, "add", &json!(key), json!(1), None);
        match client.add(json!(key), 1).await {
            Ok(Reply::AddOk { value }) => {
                rec.push_error(process, OpType::Ok, "add", &json!(key), json!(value), None)
            }
            Ok(Reply::Error { code, text }) if code.is_definite() => {
                rec.push_error(
                    process,
                    OpType::Fail,
                    "add",
                    &json!(key),
                    json!(1),
                    Some((code.code().into(), text)),
                );
            }
            other => {
                eprintln!("worker {w}: indefinite outcome {other:?}");
                rec.push_error(
                    process,
                    OpType::Info,
                    "add",
                    &json!(key),
                    json!(1),
                    Some((0, format!("{other:?}"))),
                );
                process += WORKERS; // Jepsen's rule: a fresh process after info
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_load_loses_and_duplicates_nothing() {
    let seed = seed();
    let mut cluster = TestCluster::start("failover", 3, &[]);
    let old = cluster.wait_leader(Duration::from_secs(10)).await;
    let rec = Arc::new(Recorder::new());
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            tokio::spawn(worker(
                w,
                seed,
                cluster.client_options(),
                rec.clone(),
                stop.clone(),
            ))
        })
        .collect();

    // Kill the leader once some adds were acknowledged.
    let acked = || {
        rec.ops
            .lock()
            .unwrap()
            .iter()
            .filter(|o| o.kind == OpType::Ok)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while acked() < 20 {
        assert!(
            Instant::now() < deadline,
            "no acknowledged adds before the kill"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed_at = rec.start.elapsed().as_nanos() as u64;
    cluster.kill(old);
    eprintln!(
        "killed leader {} at {} ms",
        cluster.nodes[old].name,
        killed_at / 1_000_000
    );

    // Keep the load on until writes flow again and a bit longer.
    let new = cluster.wait_leader(Duration::from_secs(10)).await;
    assert_ne!(new, old);
    // The first acknowledgement of an op sent after the kill: replies to ops in
    // flight at the kill may have been on their way already.
    let first_write_after_kill = || rec.first_ack_invoked_after(killed_at);
    let deadline = Instant::now() + Duration::from_secs(20);
    let served = loop {
        if let Some(t) = first_write_after_kill() {
            break t;
        }
        assert!(Instant::now() < deadline, "no write served after the kill");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    tokio::time::sleep(Duration::from_millis(1_000)).await; // more load on the new leader
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }

    let failover = Duration::from_nanos(served - killed_at);
    eprintln!(
        "failover: first write acknowledged {} ms after the kill (new leader {})",
        failover.as_millis(),
        cluster.nodes[new].name
    );
    // Detection (an election timeout) + election + a client retry round; generous
    // for a shared 2-core machine.
    let bound = election_timeout_max() * 10;
    assert!(
        failover < bound,
        "failover took {failover:?}, bound {bound:?}"
    );

    // Final reads, then the checks.
    let mut reader = cluster.client();
    let mut final_reads = BTreeMap::new();
    for key in 0..KEYS {
        match reader.read(json!(key)).await {
            Ok(Reply::ReadOk { value }) => {
                final_reads.insert(key.to_string(), Value::clone(&value))
            }
            Ok(Reply::Error { code, .. }) if code.code() == 20 => None,
            other => panic!("final read of {key}: {other:?}"),
        };
    }
    let ops = rec.ops.lock().unwrap().clone();
    let path = cluster.dir.join("history.jsonl");
    let text: String = ops
        .iter()
        .map(|o| serde_json::to_string(o).unwrap() + "\n")
        .collect();
    std::fs::write(&path, text).expect("write history");
    eprintln!("history: {} ops in {}", ops.len(), path.display());

    let infos = ops.iter().filter(|o| o.kind == OpType::Info).count();
    for key in 0..KEYS {
        let acked = ops
            .iter()
            .filter(|o| o.kind == OpType::Ok && o.key == Some(json!(key)))
            .count() as i64;
        let value = final_reads
            .get(&key.to_string())
            .and_then(Value::as_i64)
            .unwrap_or(0);
        eprintln!("counter {key}: {value}, acknowledged adds {acked}");
        if infos == 0 {
            assert_eq!(value, acked, "counter {key}: duplicate or lost add");
        }
    }
    let counters = check_counters(&ops, &final_reads);
    assert_eq!(counters.valid, Validity::Valid, "{}", counters.render());
    let lin = check_linearizable(&ops, &CheckOptions::default());
    assert_eq!(lin.valid, Validity::Valid, "{}", lin.render());
}
