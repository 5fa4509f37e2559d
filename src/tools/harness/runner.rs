//! One test run, start to finish:
//! spawn + init -> workers, nemesis, progress line -> time limit -> (exactly-once: heal,
//! drain retries, final counter reads) -> stop nodes -> check -> write outputs.
//! A node that crashes (exits while the harness had not stopped or killed it) ends
//! the run at once without a verdict, as Maelstrom's `:node-crashed` does.
//!
//! The only file that wires the others together. Like the whole harness, it may not
//! import the product: it tests any Maelstrom node binary.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use thiserror::Error;
use tokio::time::Instant;

use super::client::Client;
use super::config::{ConfigError, RunConfig, Workload};
use super::cpu::CpuMeter;
use super::nemesis::{Action, Fault, schedule};
use super::net::Net;
use super::process::{ClientIds, Cluster, NodeCrash, ProcessConfig, ProcessError, Violations};
use super::recorder::Recorder;
use super::scheduler::{self, Pace};
use super::schema::{Reply, classify};
use super::seed::derive_rng;
use super::services::{self, Services};
use super::store;
use super::worker::{MalformedLog, RetryPolicy, Worker};
use super::workload::{ExactlyOnce, Generator, LinKv};
use crate::tools::check::{CheckOptions, Validity, check_counters, check_linearizable};
use crate::tools::history::{HistoryOp, OpType, Process};
use crate::tools::report::harness::{AvailabilityCheck, ProtocolViolations};
use crate::tools::report::{self, HarnessFacts, Results, fault_windows, html, nemesis_count};

/// A run that could not be carried out (as opposed to one whose verdict is invalid).
#[derive(Debug, Error)]
pub enum HarnessError {
    /// The configuration is inconsistent.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Nodes could not be started or initialised.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// A node exited while the harness had not stopped or killed it.
    #[error(transparent)]
    NodeCrashed(#[from] NodeCrash),
    /// Output files could not be written.
    #[error("cannot write {path}: {source}")]
    Output {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What a finished run produced.
#[derive(Debug)]
pub struct RunOutcome {
    /// The verdict.
    pub valid: Validity,
    /// The human summary.
    pub summary: String,
    /// Where the files are.
    pub out_dir: PathBuf,
    /// `results.json`, as written.
    pub results: Value,
    /// The same, typed.
    pub report: Results,
}

fn write_file(path: PathBuf, data: &[u8]) -> Result<(), HarnessError> {
    std::fs::write(&path, data).map_err(|source| HarnessError::Output { path, source })
}

fn beyond_maelstrom(cfg: &RunConfig) -> Vec<String> {
    let mut v = Vec::new();
    if cfg.workload == Workload::ExactlyOnce {
        v.push("exactly-once workload (client_id/seq sessions, retries to other nodes, add, counter check)".into());
    }
    if cfg.nemesis.faults.contains(&Fault::PartitionOneWay) {
        v.push("one-way partitions (deaf-one, mute-one, one-way-majority)".into());
    }
    if cfg.nemesis.faults.contains(&Fault::Kill) {
        v.push("kill nemesis (SIGKILL + restart + fresh init)".into());
    }
    if cfg.net.p_loss > 0.0 {
        v.push(format!("message loss p={}", cfg.net.p_loss));
    }
    if cfg.net.p_dup > 0.0 {
        v.push(format!("message duplication p={}", cfg.net.p_dup));
    }
    v
}

/// Applies one nemesis action and records it.
async fn apply(action: &Action, net: &Net, cluster: &Cluster, recorder: &Recorder) {
    let describe = match action {
        Action::StartPartition(shape, _) => {
            format!("partition {} {}", shape.name(), action.value())
        }
        Action::StopPartition => "none".into(),
        Action::Kill(n) => format!("{n} killed"),
        Action::Start(_) => "none".into(),
    };
    let mut value = action.value();
    match action {
        Action::StartPartition(_, g) => net.partition(g),
        Action::StopPartition => net.heal(),
        Action::Kill(n) => {
            if let Some(i) = net.node_index(n) {
                cluster.kill(i).await;
            }
        }
        Action::Start(n) => {
            if let Some(i) = net.node_index(n)
                && let Err(e) = cluster.restart(i).await
            {
                crate::stderr_line!("\nnemesis: restarting {n} failed: {e}");
                value = Value::from(format!("{n}: restart failed: {e}"));
            }
        }
    }
    recorder.nemesis(action.f(), value, describe);
}

fn progress_line(recorder: &Recorder, elapsed: Duration) -> String {
    let t = recorder.tally();
    let done = t.ok + t.fail + t.info;
    let ok_pct = if done > 0 {
        100.0 * t.ok as f64 / done as f64
    } else {
        0.0
    };
    format!(
        "[{:6.1}s] ops {:>7} ok {:5.1}% fail {:>5} info {:>5} | fault: {}",
        elapsed.as_secs_f64(),
        t.invokes,
        ok_pct,
        t.fail,
        t.info,
        t.fault
    )
}

/// Pause between attempts of a final read (the next attempt goes to the next node).
const FINAL_READ_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Reads each counter key until a node answers (exactly-once final reads), recording the
/// reads in the history. A missing key counts as 0.
async fn final_reads(
    rig: &Rig,
    keys: &[Value],
    process: u64,
    recorder: &Recorder,
    timeout: Duration,
    deadline: Instant,
) -> BTreeMap<String, Value> {
    let mut client = Client::open(rig.net.clone(), rig.client_ids.next());
    let nodes = rig.net.nodes().to_vec();
    let mut out = BTreeMap::new();
    let mut attempt = 0usize;
    for key in keys {
        let mk = |kind, value, error| HistoryOp {
            process: Process::Client(process),
            kind,
            f: "read".into(),
            key: Some(key.clone()),
            value,
            time: 0,
            error,
            client_id: None,
            seq: None,
        };
        recorder.record(mk(OpType::Invoke, Value::Null, None));
        let mut body = Map::new();
        body.insert("type".into(), "read".into());
        body.insert("key".into(), key.clone());
        let result = loop {
            let node = &nodes[attempt % nodes.len()];
            attempt += 1;
            if let Ok(reply) = client.call(node, body.clone(), timeout).await {
                match classify("read", &reply) {
                    Reply::Ok(v) => break Some(mk(OpType::Ok, v.unwrap_or(Value::Null), None)),
                    Reply::Error { code: 20, text, .. } => {
                        break Some(mk(OpType::Fail, Value::Null, Some((20, text))));
                    }
                    _ => {}
                }
            }
            if Instant::now() >= deadline {
                break None;
            }
            tokio::time::sleep(FINAL_READ_RETRY_PAUSE).await;
        };
        match result {
            Some(op) => {
                let v = if op.kind == OpType::Ok {
                    op.value.clone()
                } else {
                    Value::from(0)
                };
                out.insert(key.to_string(), v);
                recorder.record(op);
            }
            None => recorder.record(mk(
                OpType::Fail,
                Value::Null,
                Some((0, "no node answered the final read".into())),
            )),
        }
    }
    out
}

/// Runs one test and writes its outputs.
pub async fn run(cfg: RunConfig) -> Result<RunOutcome, HarnessError> {
    cfg.validate()?;
    let logs = create_log_dir(&cfg)?;
    let started = crate::utc::Utc::now().iso();
    let _ = store::mark_current(&cfg.out_dir);
    announce(&cfg);
    let cpu = CpuMeter::start();
    let rig = start_nodes(&cfg, logs).await?;

    let start = Instant::now();
    let end = start + cfg.time_limit;
    let recorder = Arc::new(Recorder::new(start.into_std()));
    let malformed = Arc::new(MalformedLog::new(cfg.limits.malformed_kept));
    let final_values = drive(&cfg, &rig, &recorder, &malformed, start, end).await;
    let issue_wall = start.elapsed();
    let cpu_share = cpu.share();
    let (net, violations, crash) = stop_nodes(rig).await;
    if let Some(crash) = crash {
        // No verdict, but the operations up to the crash are kept.
        write_history(&cfg.out_dir, &recorder.ops())?;
        return Err(HarnessError::NodeCrashed(crash));
    }

    let ops = recorder.ops();
    let measured = Measured {
        issue_wall,
        cpu_share,
        violations: &violations,
        malformed: &malformed,
        started,
    };
    let results = build_results(&cfg, &ops, &net, &measured, &final_values);
    let summary = report::summary(&results);
    write_outputs(&cfg, &ops, &results, &summary)?;
    Ok(RunOutcome {
        valid: results.valid,
        summary,
        out_dir: cfg.out_dir.clone(),
        results: serde_json::to_value(&results).unwrap_or_default(),
        report: results,
    })
}

/// The run proper: workers issue the workload's ops at the configured rate while
/// the nemesis injects faults, until the time limit; then (exactly-once) the final
/// counter reads, whose values it returns.
async fn drive(
    cfg: &RunConfig,
    rig: &Rig,
    recorder: &Arc<Recorder>,
    malformed: &Arc<MalformedLog>,
    start: Instant,
    end: Instant,
) -> BTreeMap<String, Value> {
    let workers = make_workers(cfg, rig, recorder, malformed, end);
    let mut generator = make_generator(cfg);
    let nemesis = spawn_nemesis(cfg, rig, recorder, start, end);
    let progress = spawn_progress(recorder, cfg.limits.progress_period, start);
    let pace = Pace {
        rate: cfg.rate,
        end,
        rng: derive_rng(cfg.seed, "schedule"),
    };
    let mut nemesis = Some(nemesis);
    // A crash ends the run at once: the caller finds it when it stops the nodes.
    let final_values = tokio::select! {
        v = async {
            scheduler::run(generator.as_mut(), workers, pace).await;
            if let Some(n) = nemesis.take() {
                let _ = n.await;
            }
            if cfg.workload == Workload::ExactlyOnce {
                let keys = ExactlyOnce::counter_keys(cfg.limits.counter_keys);
                let process = generator.spare_process();
                let deadline = end + cfg.limits.final_phase;
                final_reads(rig, &keys, process, recorder, cfg.client_timeout(), deadline).await
            } else {
                BTreeMap::new()
            }
        } => v,
        _ = rig.cluster.crashed() => BTreeMap::new(),
    };
    if let Some(n) = nemesis {
        // No fault may act on the nodes once they are being stopped.
        n.abort();
        let _ = n.await;
    }
    progress.abort();
    crate::stderr_line!("\n{}", progress_line(recorder, start.elapsed()));
    final_values
}

/// Stops the node processes; returns what the report still needs of the rig, and
/// the first node crash seen during the run or at the stop.
async fn stop_nodes(rig: Rig) -> (Arc<Net>, Arc<Violations>, Option<NodeCrash>) {
    let Rig {
        net,
        cluster,
        violations,
        services,
        ..
    } = rig;
    let crash = cluster.stop().await;
    services.stop();
    (net, violations, crash)
}

/// The simulated network, the node processes on it, and what they share.
struct Rig {
    net: Arc<Net>,
    cluster: Arc<Cluster>,
    violations: Arc<Violations>,
    client_ids: Arc<ClientIds>,
    /// Maelstrom's services, up before the nodes and stopped after them (`db.clj`).
    services: Services,
}

/// Creates the output folder and its `node-logs` folder; returns the latter.
fn create_log_dir(cfg: &RunConfig) -> Result<PathBuf, HarnessError> {
    let logs = cfg.out_dir.join("node-logs");
    std::fs::create_dir_all(&logs).map_err(|source| HarnessError::Output {
        path: logs.clone(),
        source,
    })?;
    Ok(logs)
}

/// The run's first line on stderr: what runs, with which seed, where the output goes.
fn announce(cfg: &RunConfig) {
    crate::stderr_line!(
        "oncekv test: workload {} | seed {} | {} nodes, concurrency {}, rate {}/s, {} s | nemesis {:?} every ~{} s | output {}",
        cfg.workload.name(),
        cfg.seed,
        cfg.nodes.len(),
        cfg.concurrency,
        cfg.rate,
        cfg.time_limit.as_secs_f64(),
        cfg.nemesis.faults,
        cfg.nemesis.interval.as_secs_f64(),
        cfg.out_dir.display()
    );
}

/// Starts the network and the node processes (spawned and initialised), their
/// logs in `logs`.
async fn start_nodes(cfg: &RunConfig, logs: PathBuf) -> Result<Rig, HarnessError> {
    let net = Arc::new(Net::with_services(
        &cfg.nodes,
        &services::NAMES,
        cfg.net.clone(),
        derive_rng_seed(cfg.seed, "net"),
    ));
    let services = Services::start(net.clone(), &cfg.limits.services, cfg.seed);
    let violations = Arc::new(Violations::new(cfg.limits.violations_kept));
    let client_ids = Arc::new(ClientIds::default());
    let pcfg = ProcessConfig {
        bin: cfg.bin.clone(),
        args: cfg.args.clone(),
        log_dir: logs,
        init_timeout: cfg.limits.init_timeout,
        stop_grace: cfg.limits.stop_grace,
        crash_poll_period: cfg.limits.crash_poll_period,
        crash_tail_lines: cfg.limits.crash_tail_lines,
        crash_tail_line_chars: cfg.limits.crash_tail_line_chars,
        line_bytes_max: cfg.limits.node_line_bytes_max,
        log_stderr: cfg.log_stderr,
        read_on_bad_lines: cfg.read_on_bad_lines,
    };
    let cluster = Cluster::start(pcfg, net.clone(), violations.clone(), client_ids.clone()).await?;
    Ok(Rig {
        net,
        cluster,
        violations,
        client_ids,
        services,
    })
}

/// One worker per unit of concurrency, worker `w` bound to node `w mod n`
/// (Maelstrom's rule); exactly-once workers retry until the final phase ends.
fn make_workers(
    cfg: &RunConfig,
    rig: &Rig,
    recorder: &Arc<Recorder>,
    malformed: &Arc<MalformedLog>,
    end: Instant,
) -> Vec<Worker> {
    let nodes = Arc::new(cfg.nodes.clone());
    let eo = cfg.workload == Workload::ExactlyOnce;
    (0..cfg.concurrency)
        .map(|w| Worker {
            client: Client::open(rig.net.clone(), rig.client_ids.next()),
            opener: (rig.net.clone(), rig.client_ids.clone()),
            node: w % cfg.nodes.len(),
            nodes: nodes.clone(),
            timeout: cfg.client_timeout(),
            recorder: recorder.clone(),
            malformed: malformed.clone(),
            retry: eo.then(|| RetryPolicy {
                deadline: (end + cfg.limits.final_phase).into_std(),
                backoff: cfg.limits.retry_backoff,
            }),
        })
        .collect()
}

/// The workload's op generator, seeded from the run's "ops" stream.
fn make_generator(cfg: &RunConfig) -> Box<dyn Generator> {
    let ops_rng = derive_rng(cfg.seed, "ops");
    match cfg.workload {
        Workload::LinKv => Box::new(LinKv::new(
            cfg.nodes.len(),
            cfg.concurrency,
            cfg.limits.processes_per_key,
            ops_rng,
        )),
        Workload::ExactlyOnce => Box::new(ExactlyOnce::new(
            cfg.concurrency,
            cfg.limits.register_ops_per_key,
            cfg.limits.counter_keys,
            ops_rng,
        )),
    }
}

/// The nemesis task: applies the fault schedule; under exactly-once it heals
/// every partition and restarts every killed node at `end`.
fn spawn_nemesis(
    cfg: &RunConfig,
    rig: &Rig,
    recorder: &Arc<Recorder>,
    start: Instant,
    end: Instant,
) -> tokio::task::JoinHandle<()> {
    let events = schedule(&cfg.nemesis, &cfg.nodes, cfg.time_limit, cfg.seed);
    let eo = cfg.workload == Workload::ExactlyOnce;
    let (net, cluster, recorder) = (rig.net.clone(), rig.cluster.clone(), recorder.clone());
    tokio::spawn(async move {
        let mut partitioned = false;
        let mut down: Vec<String> = Vec::new();
        for e in events {
            tokio::time::sleep_until(start + e.at).await;
            match &e.action {
                Action::StartPartition(..) => partitioned = true,
                Action::StopPartition => partitioned = false,
                Action::Kill(n) => down.push(n.clone()),
                Action::Start(n) => down.retain(|d| d != n),
            }
            apply(&e.action, &net, &cluster, &recorder).await;
        }
        // Exactly-once heals at the end so retries and final reads can finish;
        // lin-kv, like Maelstrom, does not.
        if eo {
            tokio::time::sleep_until(end).await;
            if partitioned {
                apply(&Action::StopPartition, &net, &cluster, &recorder).await;
            }
            for n in down {
                apply(&Action::Start(n), &net, &cluster, &recorder).await;
            }
        }
    })
}

/// The progress task: a line on stderr every `period` (redrawn in place on a
/// terminal), every fifth one otherwise.
fn spawn_progress(
    recorder: &Arc<Recorder>,
    period: Duration,
    start: Instant,
) -> tokio::task::JoinHandle<()> {
    let recorder = recorder.clone();
    tokio::spawn(async move {
        let tty = std::io::stderr().is_terminal();
        let mut ticks = 0u64;
        loop {
            tokio::time::sleep(period).await;
            ticks += 1;
            let line = progress_line(&recorder, start.elapsed());
            if tty {
                let _ = write!(std::io::stderr(), "\r{line}");
                let _ = std::io::stderr().flush();
            } else if ticks.is_multiple_of(5) {
                crate::stderr_line!("{line}");
            }
        }
    })
}

/// What the run measured of itself, for the `harness` object.
struct Measured<'a> {
    /// From the first op to the end of the final reads.
    issue_wall: Duration,
    /// The harness's own CPU share over that time (`None` where it cannot be read).
    cpu_share: Option<f64>,
    violations: &'a Violations,
    malformed: &'a MalformedLog,
    /// When the run started (ISO UTC).
    started: String,
}

/// The protocol-violations section of the `harness` object.
fn protocol_violations(cfg: &RunConfig, v: &Violations) -> ProtocolViolations {
    let (count, first) = v.snapshot();
    ProtocolViolations {
        count,
        strict: cfg.strict_protocol,
        read_on: cfg.read_on_bad_lines,
        first,
    }
}

/// Checks the history and assembles `results.json`: the verdicts, the network's
/// counts, and the harness's own facts.
fn build_results(
    cfg: &RunConfig,
    ops: &[HistoryOp],
    net: &Net,
    measured: &Measured<'_>,
    final_values: &BTreeMap<String, Value>,
) -> Results {
    let lin = check_linearizable(
        ops,
        &CheckOptions {
            time_limit: cfg.limits.check_time_limit,
            null_reads: cfg.null_reads,
        },
    );
    let completed = ops
        .iter()
        .filter(|o| o.process != Process::Nemesis && o.kind != OpType::Invoke)
        .count();
    let net_stats = net.stats();
    let facts = HarnessFacts {
        seed: cfg.seed,
        node_count: cfg.nodes.len(),
        concurrency: cfg.concurrency,
        time_limit_s: cfg.time_limit.as_secs_f64(),
        cpu_share: measured.cpu_share,
        ops_per_s: completed as f64 / measured.issue_wall.as_secs_f64().max(1e-9),
        protocol_violations: protocol_violations(cfg, measured.violations),
        availability: cfg.availability.map(|a| AvailabilityCheck::of(a, ops)),
        malformed_replies: measured.malformed.snapshot(),
        kills: nemesis_count(ops, "kill"),
        net_faults: net_stats.faults,
        beyond_maelstrom: beyond_maelstrom(cfg),
    };
    let results = report::build_results(
        cfg.workload.name(),
        ops,
        lin,
        net_stats.counts,
        nemesis_count(ops, "start-partition"),
    )
    .with_harness(facts)
    .with_test(store::params(cfg, measured.started.clone()));
    if cfg.workload == Workload::ExactlyOnce {
        results.with_exactly_once(check_counters(ops, final_values))
    } else {
        results
    }
}

/// Writes `history.jsonl` into `out`.
fn write_history(out: &Path, ops: &[HistoryOp]) -> Result<(), HarnessError> {
    let mut history = String::new();
    for op in ops {
        history.push_str(&serde_json::to_string(op).unwrap_or_default());
        history.push('\n');
    }
    write_file(out.join("history.jsonl"), history.as_bytes())
}

/// Writes the run folder: `history.jsonl`, `results.json`, `summary.txt`,
/// `latency.svg`, `throughput.svg`, `timeline.html` and `index.html`; then, for a
/// run in a store, points `latest` at it and rewrites the store's list of runs
/// (a failure there is a warning).
fn write_outputs(
    cfg: &RunConfig,
    ops: &[HistoryOp],
    results: &Results,
    summary: &str,
) -> Result<(), HarnessError> {
    let out = &cfg.out_dir;
    write_history(out, ops)?;
    // Written from the struct, so keys keep docs/history.md's order (`valid` first).
    let pretty = serde_json::to_string_pretty(results).unwrap_or_default();
    write_file(out.join("results.json"), pretty.as_bytes())?;
    write_file(out.join("summary.txt"), summary.as_bytes())?;
    let windows = fault_windows(ops);
    write_file(
        out.join("latency.svg"),
        report::latency_svg(ops, &windows).as_bytes(),
    )?;
    write_file(
        out.join("throughput.svg"),
        report::throughput_svg(ops, &windows).as_bytes(),
    )?;
    let name = store::test_name(cfg.workload);
    write_file(
        out.join("timeline.html"),
        html::timeline_page(&name, ops, &windows).as_bytes(),
    )?;
    let in_store = store::store_of(out).is_some();
    write_file(
        out.join("index.html"),
        html::run_page(results, summary, ops, &windows, in_store).as_bytes(),
    )?;
    // The run's own files are written; a store whose links or list cannot be
    // updated is worth a warning, not the run.
    if let Err(e) = store::mark_latest(out) {
        crate::stderr_line!(
            "warning: cannot update the store's latest links or index.html for {}: {e}",
            out.display()
        );
    }
    Ok(())
}

fn derive_rng_seed(seed: u64, purpose: &str) -> u64 {
    use rand::Rng;
    derive_rng(seed, purpose).r#gen()
}
