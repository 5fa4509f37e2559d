//! oncekv itself under the harness, as users run it under Maelstrom: 3 and 5 nodes
//! with partitions (lin-kv), the exactly-once workload with partitions, and (beyond
//! Maelstrom) both kinds of partitions, one-way ones included. Each
//! case prints its seed; `oncekv test ... --seed N` reproduces its schedule.

use std::path::PathBuf;

use oncekv::tools::check::Validity;
use oncekv::tools::harness::cli::RunFlags;
use oncekv::tools::harness::net::LatencyDist;
use oncekv::tools::harness::{RunOutcome, run};
use oncekv::tools::harness::{TestArgs, Workload};

fn seed() -> u64 {
    oncekv::tools::harness::seed::test_seed()
}

async fn run_oncekv(
    name: &str,
    workload: Workload,
    nodes: usize,
    secs: f64,
) -> anyhow::Result<RunOutcome> {
    run_oncekv_under(name, workload, nodes, secs, "partition").await
}

async fn run_oncekv_under(
    name: &str,
    workload: Workload,
    nodes: usize,
    secs: f64,
    nemesis: &str,
) -> anyhow::Result<RunOutcome> {
    let seed = seed();
    let out = std::env::temp_dir().join(format!("oncekv-self-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let args = TestArgs {
        workload,
        bin: PathBuf::from(env!("CARGO_BIN_EXE_oncekv")),
        node_count: Some(nodes),
        concurrency: "4n".into(),
        rate: 50.0,
        time_limit: secs,
        latency: 0,
        latency_dist: LatencyDist::Constant,
        nemesis: nemesis.into(),
        nemesis_interval: 3.0,
        p_loss: 0.0,
        p_dup: 0.0,
        out: Some(out.clone()),
        seed: Some(seed),
        strict_null_reads: false,
        args: Vec::new(),
        run_flags: RunFlags::default(),
    };
    let outcome = run(args.into_config(seed, out)?).await?;
    eprintln!("{}", outcome.summary);
    Ok(outcome)
}

/// Valid, and not vacuously so: enough acknowledged operations, reads and writes
/// both, for the linearizability verdict to mean something. The floor is low on
/// purpose: how many operations succeed depends on the nemesis schedule the seed
/// draws, and some shapes allow no progress at all while they last (a 3-node
/// majorities-ring is one-way: no two nodes hear each other, so nothing commits).
/// A seed that drew rings for most of the run succeeded 74 times in 20 s.
fn assert_valid_and_busy(o: &RunOutcome) {
    assert_eq!(o.valid, Validity::Valid, "{}", o.summary);
    let stats = &o.results["stats"];
    let ok = |f: &str| stats["by_f"][f]["ok"].as_u64().unwrap_or(0);
    let total = stats["ok"].as_u64().unwrap_or(0);
    assert!(
        total >= 30,
        "too few ok ops to mean anything: {}",
        o.summary
    );
    assert!(ok("read") > 0, "no read succeeded: {}", o.summary);
    assert!(
        ok("write") + ok("cas") + ok("add") > 0,
        "no write, cas or add succeeded: {}",
        o.summary
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_lin_kv_with_partitions_is_valid() -> anyhow::Result<()> {
    let o = run_oncekv("lin3", Workload::LinKv, 3, 20.0).await?;
    assert_valid_and_busy(&o);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_lin_kv_with_partitions_is_valid() -> anyhow::Result<()> {
    let o = run_oncekv("lin5", Workload::LinKv, 5, 20.0).await?;
    assert_valid_and_busy(&o);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_with_partitions_is_valid() -> anyhow::Result<()> {
    let o = run_oncekv("eo3", Workload::ExactlyOnce, 3, 20.0).await?;
    assert_valid_and_busy(&o);
    assert!(o.summary.contains("exactly-once"), "{}", o.summary);
    Ok(())
}

/// Beyond Maelstrom: one-way partitions (a node that hears nobody, one nobody
/// hears, a minority deaf to the majority) mixed with Maelstrom's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_with_one_way_and_two_way_partitions_is_valid() -> anyhow::Result<()> {
    let nemesis = "partition,partition-one-way";
    let o = run_oncekv_under("eo3-oneway", Workload::ExactlyOnce, 3, 20.0, nemesis).await?;
    assert_valid_and_busy(&o);
    let partitions = o.results["nemesis"]["partitions"].as_u64().unwrap_or(0);
    assert!(partitions > 0, "no partition in 20 s: {}", o.summary);
    Ok(())
}
