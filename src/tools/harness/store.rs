//! Where runs are kept, as Jepsen's store does it for Maelstrom:
//! `store/<test-name>/<timestamp>/` per run, `store/latest` and
//! `store/<test-name>/latest` pointing at the last finished run, `store/current`
//! at the one started last, and `store/index.html` listing every run. Also the
//! run's parameters for `results.json` and the command that runs it again.
//!
//! A run folder whose parent's parent is named `store` (the default, or an
//! `--out` of that shape) is a run of that store; any other `--out` folder is left
//! alone, links and list included.

use std::path::{Path, PathBuf};

use super::config::{RunConfig, Workload};
use super::nemesis::Fault;
use crate::tools::check::NullReads;
use crate::tools::report::TestParams;
use crate::tools::report::html::{RunEntry, store_page};
use crate::tools::report::params::shell_line;

/// The store folder, relative to the working directory (Jepsen's).
pub const STORE_DIR: &str = "store";

/// The name of the store's list of runs.
pub const STORE_INDEX: &str = "index.html";

/// The test's name, as Maelstrom names it: the workload's (`lin-kv`).
pub fn test_name(workload: Workload) -> String {
    workload.name().to_string()
}

/// A fresh run folder `<store>/<test-name>/<UTC timestamp>Z` (Jepsen's
/// basic date-time), with `-1`, `-2`, ... appended if that name is taken.
pub fn run_dir(store: &Path, test_name: &str) -> PathBuf {
    let stamp = format!("{}Z", crate::utc::Utc::now().compact());
    let base = store.join(test_name);
    let mut dir = base.join(&stamp);
    let mut n = 1;
    while dir.exists() {
        dir = base.join(format!("{stamp}-{n}"));
        n += 1;
    }
    dir
}

/// The store a run folder belongs to, if it is `<.../store>/<test>/<run>`.
pub fn store_of(out_dir: &Path) -> Option<PathBuf> {
    let store = out_dir.parent()?.parent()?;
    (store.file_name()? == STORE_DIR).then(|| store.to_path_buf())
}

/// Points `link` at `target` (relative), replacing what was there: a new link
/// under a temporary name, renamed over the old one, so a reader never finds
/// none.
#[cfg(unix)]
fn relink(link: &Path, target: &Path) -> std::io::Result<()> {
    let tmp = link.with_file_name(format!(
        ".{}.{}",
        link.file_name().and_then(|n| n.to_str()).unwrap_or("link"),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link)
}

#[cfg(not(unix))]
fn relink(_link: &Path, _target: &Path) -> std::io::Result<()> {
    Ok(())
}

/// `<store>/<test>` and `<run>` of a run folder in a store.
fn parts(out_dir: &Path) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let store = store_of(out_dir)?;
    let test = PathBuf::from(out_dir.parent()?.file_name()?);
    let run = PathBuf::from(out_dir.file_name()?);
    Some((store, test, run))
}

/// At the start of a run in a store: `store/current` points at it.
pub fn mark_current(out_dir: &Path) -> std::io::Result<()> {
    match parts(out_dir) {
        Some((store, test, run)) => relink(&store.join("current"), &test.join(run)),
        None => Ok(()),
    }
}

/// At the end of a run in a store: `store/latest` and `store/<test>/latest`
/// point at it, and `store/index.html` lists every run.
pub fn mark_latest(out_dir: &Path) -> std::io::Result<()> {
    let Some((store, test, run)) = parts(out_dir) else {
        return Ok(());
    };
    relink(&store.join("latest"), &test.join(&run))?;
    relink(&store.join(&test).join("latest"), &run)?;
    write_store_index(&store)
}

/// Rewrites `<store>/index.html` from the run folders' `results.json`.
pub fn write_store_index(store: &Path) -> std::io::Result<()> {
    let runs = scan(store)?;
    let tmp = store.join(format!(".{STORE_INDEX}.{}", std::process::id()));
    std::fs::write(&tmp, store_page(&runs))?;
    std::fs::rename(tmp, store.join(STORE_INDEX))
}

/// Every run folder `<store>/<test>/<run>/` (links skipped), with what its
/// `results.json` says; one without a readable `results.json` (a run that ended
/// without a verdict, or is still going) is listed with none.
fn scan(store: &Path) -> std::io::Result<Vec<RunEntry>> {
    let mut runs = Vec::new();
    for test in real_dirs(store)? {
        for run in real_dirs(&test)? {
            let rel = format!(
                "{}/{}",
                test.file_name().unwrap_or_default().to_string_lossy(),
                run.file_name().unwrap_or_default().to_string_lossy()
            );
            runs.push(entry(rel, &run.join("results.json")));
        }
    }
    Ok(runs)
}

fn real_dirs(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() && !e.file_name().to_string_lossy().starts_with('.') {
            out.push(e.path());
        }
    }
    Ok(out)
}

fn entry(path: String, results: &Path) -> RunEntry {
    let v: serde_json::Value = std::fs::read(results)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    RunEntry {
        path,
        valid: serde_json::from_value(v["valid"].clone()).ok(),
        test: serde_json::from_value(v["test"].clone()).ok(),
        workload: v["workload"].as_str().unwrap_or("").to_string(),
        ops: v["stats"]["count"].as_u64().unwrap_or(0),
        ok_fraction: v["availability"]["ok_fraction"].as_f64().unwrap_or(0.0),
    }
}

fn fault_name(f: Fault) -> &'static str {
    match f {
        Fault::Partition => "partition",
        Fault::Kill => "kill",
        Fault::PartitionOneWay => "partition-one-way",
    }
}

/// True if the nodes are `n0..n(N-1)`, as `--node-count N` makes them (without
/// it they are Jepsen's `n1..n5`).
fn counted_from_zero(nodes: &[String]) -> bool {
    nodes.iter().enumerate().all(|(i, n)| *n == format!("n{i}"))
}

/// The `oncekv test` command line that runs `cfg` again: every parameter
/// spelled out as resolved (`--concurrency 12`, not `4n`), the seed included, the
/// output folder left to default. Node arguments go after `--`.
pub fn rerun_command(cfg: &RunConfig) -> Vec<String> {
    let mut w: Vec<String> = ["oncekv", "test", "-w", cfg.workload.name(), "--bin"]
        .map(String::from)
        .to_vec();
    w.push(cfg.bin.to_string_lossy().into_owned());
    let mut flag = |name: &str, value: String| {
        w.push(format!("--{name}"));
        w.push(value);
    };
    if counted_from_zero(&cfg.nodes) {
        flag("node-count", cfg.nodes.len().to_string());
    }
    flag("concurrency", cfg.concurrency.to_string());
    flag("rate", cfg.rate.to_string());
    flag("time-limit", cfg.time_limit.as_secs_f64().to_string());
    flag("latency", cfg.net.latency_mean_ms.to_string());
    flag("latency-dist", latency_dist_name(cfg));
    if !cfg.nemesis.faults.is_empty() {
        let faults: Vec<&str> = cfg.nemesis.faults.iter().map(|f| fault_name(*f)).collect();
        flag("nemesis", faults.join(","));
    }
    flag(
        "nemesis-interval",
        cfg.nemesis.interval.as_secs_f64().to_string(),
    );
    flag("p-loss", cfg.net.p_loss.to_string());
    flag("p-dup", cfg.net.p_dup.to_string());
    flag("seed", cfg.seed.to_string());
    if let Some(a) = cfg.availability {
        flag("availability", a.to_string());
    }
    if cfg.null_reads == NullReads::Strict {
        w.push("--strict-null-reads".into());
    }
    if cfg.strict_protocol {
        w.push("--strict-protocol".into());
    }
    if cfg.read_on_bad_lines {
        w.push("--read-on-bad-lines".into());
    }
    if !cfg.args.is_empty() {
        w.push("--".into());
        w.extend(cfg.args.iter().cloned());
    }
    w
}

fn latency_dist_name(cfg: &RunConfig) -> String {
    use clap::ValueEnum;
    cfg.net
        .latency_dist
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_string())
}

/// The flags [`rerun_command`] writes, and those it leaves out on purpose
/// (`--out`: a re-run gets a folder of its own; `--test-count`: the command is one
/// run; the logging flags change what is printed, not the run). A unit test holds every flag of
/// `oncekv test` to this list, so a new flag must be added here and to the
/// command.
pub const RECORDED_FLAGS: [&str; 17] = [
    "workload",
    "bin",
    "node-count",
    "concurrency",
    "rate",
    "time-limit",
    "latency",
    "latency-dist",
    "nemesis",
    "nemesis-interval",
    "p-loss",
    "p-dup",
    "seed",
    "availability",
    "strict-null-reads",
    "strict-protocol",
    "read-on-bad-lines",
];
/// Flags of `oncekv test` that a re-run does not repeat.
pub const UNRECORDED_FLAGS: [&str; 5] = [
    "out",
    "test-count",
    "log-stderr",
    "log-net-send",
    "log-net-recv",
];

/// `results.json`'s `test` object for `cfg`, started at `started` (ISO UTC).
pub fn params(cfg: &RunConfig, started: String) -> TestParams {
    let command = rerun_command(cfg);
    TestParams {
        name: test_name(cfg.workload),
        workload: cfg.workload.name().to_string(),
        bin: cfg.bin.to_string_lossy().into_owned(),
        args: cfg.args.clone(),
        nodes: cfg.nodes.clone(),
        concurrency: cfg.concurrency,
        rate: cfg.rate,
        time_limit_s: cfg.time_limit.as_secs_f64(),
        latency_ms: cfg.net.latency_mean_ms,
        latency_dist: latency_dist_name(cfg),
        nemesis: cfg
            .nemesis
            .faults
            .iter()
            .map(|f| fault_name(*f).to_string())
            .collect(),
        nemesis_interval_s: cfg.nemesis.interval.as_secs_f64(),
        p_loss: cfg.net.p_loss,
        p_dup: cfg.net.p_dup,
        seed: cfg.seed,
        availability: cfg.availability,
        strict_null_reads: cfg.null_reads == NullReads::Strict,
        strict_protocol: cfg.strict_protocol,
        read_on_bad_lines: cfg.read_on_bad_lines,
        started,
        cwd: std::env::current_dir()
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default(),
        command_line: shell_line(&command),
        command,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::harness::cli::TestArgs;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: TestArgs,
    }

    fn config(argv: &[&str]) -> RunConfig {
        let w = Wrapper::try_parse_from(argv).expect("parses");
        let seed = w.args.seed.expect("seed given");
        w.args
            .into_config(seed, PathBuf::from("out"))
            .expect("valid")
    }

    /// Everything but the output folder, which a re-run chooses afresh.
    fn comparable(cfg: &RunConfig) -> String {
        let mut c = cfg.clone();
        c.out_dir = PathBuf::new();
        format!("{c:?}")
    }

    #[test]
    fn the_recorded_command_parses_back_to_the_same_run() {
        let cases: [&[&str]; 3] = [
            &[
                "oncekv",
                "-w",
                "exactly-once",
                "--bin",
                "python3",
                "my node.py",
                "--node-count",
                "3",
                "--concurrency",
                "2n",
                "--rate",
                "12.5",
                "--time-limit",
                "7.25",
                "--latency",
                "40",
                "--latency-dist",
                "exponential",
                "--nemesis",
                "kill,partition",
                "--nemesis-interval",
                "2.5",
                "--p-loss",
                "0.05",
                "--p-dup",
                "0.125",
                "--seed",
                "18446744073709551615",
                "--availability",
                "total",
                "--strict-null-reads",
                "--strict-protocol",
                "--out",
                "elsewhere",
                "--",
                "--port",
                "it's",
            ],
            &[
                "oncekv",
                "--bin",
                "./node",
                "--concurrency",
                "10",
                "--seed",
                "0",
            ],
            &[
                "oncekv",
                "--bin",
                "n",
                "--node-count",
                "1",
                "--concurrency",
                "2n",
                "--nemesis",
                "partition-one-way",
                "--seed",
                "5",
            ],
        ];
        for argv in cases {
            let cfg = config(argv);
            let command = rerun_command(&cfg);
            assert_eq!(&command[..2], ["oncekv", "test"]);
            let mut again: Vec<&str> = vec!["oncekv"];
            again.extend(command[2..].iter().map(String::as_str));
            let back = config(&again);
            assert_eq!(comparable(&back), comparable(&cfg), "{command:?}");
        }
    }

    #[test]
    fn every_flag_of_oncekv_test_is_recorded_or_deliberately_not() {
        let cmd = Wrapper::command();
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else {
                continue; // the node arguments, recorded after `--`
            };
            if long == "help" || long == "version" {
                continue;
            }
            assert!(
                RECORDED_FLAGS.contains(&long) || UNRECORDED_FLAGS.contains(&long),
                "--{long} is neither written by rerun_command nor listed as left out"
            );
        }
    }

    #[test]
    fn store_folders_are_recognised_by_their_grandparent() {
        assert_eq!(
            store_of(Path::new("store/lin-kv/20261202T071544.123Z")),
            Some(PathBuf::from("store"))
        );
        assert_eq!(
            store_of(Path::new("/tmp/x/store/lin-kv/r")),
            Some(PathBuf::from("/tmp/x/store"))
        );
        assert_eq!(store_of(Path::new("/tmp/out")), None);
        assert_eq!(store_of(Path::new("elsewhere/lin-kv/r")), None);
        let dir = run_dir(Path::new("store"), "lin-kv");
        assert!(dir.starts_with("store/lin-kv"));
        assert!(dir.to_string_lossy().ends_with('Z'));
    }
}
