//! `oncekv test` and `oncekv demo`: the test harness's front ends. `test` turns its
//! flags into a run ([`TestArgs::into_config`]), runs it with
//! [`crate::tools::harness::run`] and writes the summary and output folder to the
//! output handed in; `demo` does the same for the demo's preset (oncekv itself, 3
//! nodes under partitions, exactly-once then lin-kv). The exit status is the
//! verdict's (0 valid, 1 invalid, 2 unknown), or [`EXIT_TEST_ARGS`] /
//! [`EXIT_TEST_CRASHED`] when there is none. Running, nemeses and checking are the
//! harness's; this file only parses arguments and prints.

use std::io::{self, Write};

use super::unread_is_fine;
use crate::tools::harness::demo::{DemoPreset, run_demo};
use crate::tools::harness::{TestArgs, default_out_dir, seed::fresh_seed, store};

/// `oncekv test` exit status for flags it refuses (Jepsen's CLI uses 254), so it is
/// not read as a verdict (0 valid, 1 invalid, 2 unknown); the same for every
/// subcommand ([`super::exit`]).
pub const EXIT_TEST_ARGS: i32 = super::exit::USAGE;
/// `oncekv test` exit status when the run ends without a verdict (Jepsen: 255).
pub const EXIT_TEST_CRASHED: i32 = super::exit::NO_VERDICT;

/// The demo's request rate: approximate requests per second across all clients
/// (`oncekv test --rate`; its default is 5).
const DEMO_RATE: f64 = 50.0;
/// The demo's mean seconds between partition changes (`oncekv test
/// --nemesis-interval`; its default is 10): short, so a short run sees several.
const DEMO_NEMESIS_INTERVAL_S: f64 = 4.0;

/// Arguments of `oncekv demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Seconds per workload.
    #[arg(long, default_value_t = 25.0)]
    pub time_limit: f64,
    /// Seed (random if absent; printed).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// Runs `oncekv test` `--test-count` times (as Jepsen's `test` command does) and
/// writes each summary to `out`; stops at the first run that is not valid. The exit
/// status is that run's verdict's (0 if all were valid).
pub fn run(args: TestArgs, out: &mut dyn Write) -> io::Result<i32> {
    let count = args.run_flags.test_count;
    for i in 0..count.max(1) {
        // Run i of several: the next seed (each printed), its own output folder.
        let seed = args.seed.map_or_else(fresh_seed, |s| s.wrapping_add(i));
        let out_dir = match &args.out {
            Some(d) if count > 1 => d.join((i + 1).to_string()),
            Some(d) => d.clone(),
            None => default_out_dir(&store::test_name(args.workload)),
        };
        if count > 1 {
            crate::stderr_line!("oncekv test: run {} of {count}", i + 1);
        }
        let code = run_once(args.clone(), seed, out_dir, out)?;
        if code != 0 {
            return Ok(code);
        }
    }
    Ok(0)
}

/// One run: its summary to `out`; the exit status is the verdict's.
fn run_once(
    args: TestArgs,
    seed: u64,
    out_dir: std::path::PathBuf,
    out: &mut dyn Write,
) -> io::Result<i32> {
    let cfg = match args.into_config(seed, out_dir) {
        Ok(cfg) => cfg,
        Err(e) => {
            crate::stderr_line!("{e}");
            return Ok(EXIT_TEST_ARGS);
        }
    };
    let rt = tokio::runtime::Runtime::new()?;
    let outcome = match rt.block_on(crate::tools::harness::run(cfg)) {
        Ok(o) => o,
        Err(e) => {
            // No verdict (a node crashed, or never answered init): not 1 (invalid) or 2.
            crate::stderr_line!("error: the test did not run to a verdict: {e:#}");
            return Ok(EXIT_TEST_CRASHED);
        }
    };
    let written = writeln!(
        out,
        "{}\noutput: {}",
        outcome.summary,
        outcome.out_dir.display()
    );
    unread_is_fine(written.and_then(|()| out.flush()))?;
    Ok(outcome.valid.exit_code())
}

/// Runs the demo and writes both summaries to `out`; the exit status is the worse
/// verdict's.
pub fn demo(args: &DemoArgs, out: &mut dyn Write) -> anyhow::Result<i32> {
    let preset = DemoPreset {
        bin: std::env::current_exe()?,
        time_limit_s: args.time_limit,
        rate: DEMO_RATE,
        nemesis_interval_s: DEMO_NEMESIS_INTERVAL_S,
        seed: args.seed,
        out: std::path::PathBuf::from(store::STORE_DIR),
    };
    writeln!(
        out,
        "oncekv demo: 3 oncekv nodes, 12 clients, random network partitions every ~{} s.\n\
         1) exactly-once (beyond Maelstrom): clients retry timed-out requests with the same\n   \
         client_id/seq on another node; every counter must equal the sum of its adds.\n\
         2) lin-kv: Maelstrom's linearizable key-value workload, checked by this harness.\n",
        preset.nemesis_interval_s
    )?;
    out.flush()?;
    let rt = tokio::runtime::Runtime::new()?;
    let outcomes = rt.block_on(run_demo(&preset))?;
    let mut worst = 0;
    let mut written = Ok(());
    for (workload, o) in &outcomes {
        written = written.and_then(|()| {
            writeln!(
                out,
                "\n--- {} ---\n{}\noutput: {}",
                workload.name(),
                o.summary,
                o.out_dir.display()
            )
        });
        worst = worst.max(o.valid.exit_code());
    }
    unread_is_fine(written.and_then(|()| out.flush()))?;
    Ok(worst)
}
