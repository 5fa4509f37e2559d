//! `oncekv demo`: `oncekv test` on oncekv itself, with a preset that shows the point of
//! the project: 3 nodes, 12 workers, partitions every few seconds; first the
//! exactly-once workload (beyond Maelstrom), then Maelstrom's lin-kv.
//!
//! It may not change how a run works: only the preset is here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::cli::{RunFlags, TestArgs};
use super::config::Workload;
use super::net::LatencyDist;
use super::runner::{HarnessError, RunOutcome, run};
use super::seed::fresh_seed;

/// The demo's preset.
#[derive(Debug, Clone)]
pub struct DemoPreset {
    /// The node binary (normally this executable).
    pub bin: PathBuf,
    /// Seconds per workload.
    pub time_limit_s: f64,
    /// Ops per second.
    pub rate: f64,
    /// Mean seconds between partition changes: short, so a short run sees several.
    pub nemesis_interval_s: f64,
    /// Seed (random if absent).
    pub seed: Option<u64>,
    /// The store the runs go in (`store/<workload>/<time>/` each).
    pub out: PathBuf,
}

impl DemoPreset {
    fn args(&self, workload: Workload, seed: u64, out: &Path) -> TestArgs {
        TestArgs {
            workload,
            bin: self.bin.clone(),
            node_count: Some(3),
            concurrency: "4n".into(),
            rate: self.rate,
            time_limit: self.time_limit_s,
            latency: 0,
            latency_dist: LatencyDist::Constant,
            nemesis: "partition".into(),
            nemesis_interval: self.nemesis_interval_s,
            p_loss: 0.0,
            p_dup: 0.0,
            out: Some(out.to_path_buf()),
            seed: Some(seed),
            strict_null_reads: false,
            args: Vec::new(),
            run_flags: RunFlags::default(),
        }
    }
}

/// Runs both workloads; returns their outcomes in order (exactly-once, lin-kv).
pub async fn run_demo(preset: &DemoPreset) -> anyhow::Result<Vec<(Workload, RunOutcome)>> {
    let seed = preset.seed.unwrap_or_else(fresh_seed);
    let mut out = Vec::new();
    for workload in [Workload::ExactlyOnce, Workload::LinKv] {
        let dir = super::store::run_dir(&preset.out, &super::store::test_name(workload));
        let cfg = preset.args(workload, seed, &dir).into_config(seed, dir)?;
        let outcome = run(cfg)
            .await
            .map_err(|e: HarnessError| anyhow::anyhow!(e))?;
        out.push((workload, outcome));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(out)
}
