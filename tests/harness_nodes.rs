//! The harness against test nodes (tests/nodes/*.rs, built as examples): a correct node
//! must pass, broken ones must fail. Each case prints its seed; re-run one with
//! `oncekv test ... --seed N` to reproduce it.

use std::path::PathBuf;
use std::time::Duration;

use oncekv::tools::check::Validity;
use oncekv::tools::harness::cli::RunFlags;
use oncekv::tools::harness::nemesis::{Action, NemesisConfig, schedule};
use oncekv::tools::harness::net::LatencyDist;
use oncekv::tools::harness::{RunOutcome, run};
use oncekv::tools::harness::{TestArgs, Workload};
use serde_json::Value;

/// A test node built by cargo as an example, next to this test's binary.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    dir.join("examples").join(name)
}

struct Case {
    name: &'static str,
    node: &'static str,
    node_args: Vec<&'static str>,
    workload: Workload,
    nemesis: &'static str,
    secs: f64,
    seed: u64,
    p_loss: f64,
    flags: RunFlags,
}

impl Case {
    fn new(name: &'static str, node: &'static str, seed: u64) -> Case {
        Case {
            name,
            node,
            node_args: Vec::new(),
            workload: Workload::LinKv,
            nemesis: "partition",
            secs: 12.0,
            seed,
            p_loss: 0.0,
            flags: RunFlags::default(),
        }
    }

    async fn run(self) -> anyhow::Result<RunOutcome> {
        let out = std::env::temp_dir().join(format!(
            "oncekv-harness-{}-{}",
            self.name,
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&out);
        eprintln!(
            "case {}: node {} seed {} out {}",
            self.name,
            self.node,
            self.seed,
            out.display()
        );
        let args = TestArgs {
            workload: self.workload,
            bin: example(self.node),
            node_count: Some(3),
            concurrency: "4n".into(),
            rate: 50.0,
            time_limit: self.secs,
            latency: 0,
            latency_dist: LatencyDist::Constant,
            nemesis: self.nemesis.into(),
            nemesis_interval: 2.0,
            p_loss: self.p_loss,
            p_dup: 0.0,
            out: Some(out.clone()),
            seed: Some(self.seed),
            strict_null_reads: false,
            args: self.node_args.iter().map(|s| s.to_string()).collect(),
            run_flags: self.flags,
        };
        let outcome = run(args.into_config(self.seed, out)?).await?;
        eprintln!("{}", outcome.summary);
        Ok(outcome)
    }
}

fn nemesis_events(o: &RunOutcome) -> Vec<(String, Value)> {
    let text = std::fs::read_to_string(o.out_dir.join("history.jsonl")).expect("history");
    oncekv::tools::history::read_jsonl(&text)
        .expect("history parses")
        .into_iter()
        .filter(|op| op.process == oncekv::tools::history::Process::Nemesis)
        .map(|op| (op.f, op.value))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correct_node_is_valid_under_partitions() -> anyhow::Result<()> {
    let o = Case::new("correct", "node_forward_to_n0", 11).run().await?;
    assert_eq!(o.valid, Validity::Valid, "{}", o.summary);
    // The run did what it claims: ops, partitions, failures they caused, all files.
    assert!(o.results["stats"]["count"].as_u64().unwrap() > 300);
    assert!(o.results["nemesis"]["partitions"].as_u64().unwrap() >= 1);
    for f in [
        "history.jsonl",
        "results.json",
        "latency.svg",
        "node-logs/n0.log",
        "node-logs/n2.log",
    ] {
        assert!(o.out_dir.join(f).exists(), "{f}");
    }
    let r: Value = serde_json::from_str(&std::fs::read_to_string(o.out_dir.join("results.json"))?)?;
    assert_eq!(r["valid"], Value::Bool(true));
    assert!(
        r["net"]["servers"]["msg_count"].as_u64().unwrap() > 0,
        "forwarding uses node messages"
    );
    assert_documented_shape(&r);
    Ok(())
}

/// The keys of `docs/history.md`'s results.json, with the harness's own facts
/// apart under `harness`.
fn assert_documented_shape(r: &Value) {
    assert!(r["valid"].is_boolean() || r["valid"] == "unknown", "{r}");
    assert_eq!(r["workload"], "lin-kv");
    let lin = &r["linearizable"];
    assert!(
        lin["valid"].is_boolean() && lin["keys_checked"].is_u64() && lin["failures"].is_array()
    );
    let st = &r["stats"];
    let (count, ok, fail, info) = (
        st["count"].as_u64().unwrap(),
        st["ok"].as_u64().unwrap(),
        st["fail"].as_u64().unwrap(),
        st["info"].as_u64().unwrap(),
    );
    assert_eq!(count, ok + fail + info);
    for f in ["read", "write", "cas"] {
        assert!(st["by_f"][f]["count"].is_u64(), "{f}");
        for q in ["p50", "p95", "p99", "max"] {
            assert!(r["latency_ms"][f][q].is_number(), "{f} {q}");
        }
    }
    let ok_fraction = r["availability"]["ok_fraction"].as_f64().unwrap();
    assert!((ok_fraction - ok as f64 / count as f64).abs() < 1e-9);
    for class in ["all", "clients", "servers"] {
        for k in ["send", "recv", "msgs_per_op"] {
            assert!(r["net"][class][k].is_number(), "net {class} {k}");
        }
    }
    assert!(r["nemesis"]["partitions"].is_u64());
    assert!(r["harness"]["cpu_share"].is_number());
    assert_eq!(r["harness"]["kills"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_local_reads_are_invalid() -> anyhow::Result<()> {
    assert_found_invalid("stale", "node_stale_reads", &[12, 22, 32]).await
}

/// Runs a broken node under partitions with each seed until the harness reports it
/// invalid (a schedule may, by chance, contain no harmful partition: the violation
/// needs one). Every seed tried is printed; finding it valid under all is a failure.
async fn assert_found_invalid(
    name: &'static str,
    node: &'static str,
    seeds: &[u64],
) -> anyhow::Result<()> {
    let mut summaries = Vec::new();
    for &seed in seeds {
        let o = Case::new(name, node, seed).run().await?;
        if o.valid == Validity::Invalid {
            assert!(
                !o.results["linearizable"]["failures"]
                    .as_array()
                    .unwrap()
                    .is_empty(),
                "{}",
                o.summary
            );
            return Ok(());
        }
        summaries.push(o.summary);
    }
    panic!(
        "{node} passed under every seed {seeds:?}:\n{}",
        summaries.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledging_before_replicating_is_invalid() -> anyhow::Result<()> {
    assert_found_invalid("ack-early", "node_ack_before_replicate", &[13, 23, 33]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_passes_with_sessions_and_fails_without() -> anyhow::Result<()> {
    let mut with = Case::new("eo-sessions", "node_forward_to_n0", 14);
    with.workload = Workload::ExactlyOnce;
    with.p_loss = 0.05;
    let o = with.run().await?;
    assert_eq!(o.valid, Validity::Valid, "{}", o.summary);
    assert_eq!(o.results["exactly_once"]["keys_checked"], 3);

    let mut without = Case::new("eo-nosessions", "node_forward_to_n0", 14);
    without.workload = Workload::ExactlyOnce;
    without.p_loss = 0.05;
    without.node_args = vec!["nosessions"];
    let o = without.run().await?;
    assert_eq!(o.valid, Validity::Invalid, "{}", o.summary);
    let verdicts: Vec<&str> = o.results["exactly_once"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["verdict"].as_str())
        .collect();
    assert!(
        verdicts.contains(&"duplicate"),
        "retries must have run twice: {verdicts:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_only_copy_loses_counts_and_restart_reinits() -> anyhow::Result<()> {
    // Pick the first seed whose first kill of n0 (the node that holds the data) comes
    // late enough (3-7 s) that acknowledged adds exist to be lost, even on a loaded
    // machine, with time left to see the loss.
    let cfg = NemesisConfig {
        faults: [oncekv::tools::harness::nemesis::Fault::Kill].into(),
        interval: Duration::from_secs(2),
    };
    let nodes: Vec<String> = (0..3).map(|i| format!("n{i}")).collect();
    let seed = (100..)
        .take(10_000)
        .find(|s| {
            let plan = schedule(&cfg, &nodes, Duration::from_secs(10), *s);
            let first_n0 = plan
                .iter()
                .find(|e| matches!(&e.action, Action::Kill(n) if n == "n0"));
            first_n0
                .is_some_and(|e| e.at >= Duration::from_secs(3) && e.at <= Duration::from_secs(7))
        })
        .unwrap();
    let mut case = Case::new("kill", "node_forward_to_n0", seed);
    case.workload = Workload::ExactlyOnce;
    case.nemesis = "kill";
    case.secs = 10.0;
    let o = case.run().await?;
    let events = nemesis_events(&o);
    assert!(
        events.contains(&("kill".to_string(), Value::from("n0"))),
        "{events:?}"
    );
    assert!(
        events.iter().any(|(f, v)| f == "start" && v == "n0"),
        "{events:?}"
    );
    let log = std::fs::read_to_string(o.out_dir.join("node-logs/n0.log"))?;
    assert!(
        log.matches("initialised").count() >= 2,
        "restart sends a fresh init:\n{log}"
    );
    assert_eq!(o.valid, Validity::Invalid, "{}", o.summary);
    assert_eq!(o.results["exactly_once"]["valid"], Value::Bool(false));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_and_malformed_replies_are_reported() -> anyhow::Result<()> {
    let mut case = Case::new("noisy", "node_forward_to_n0", 15);
    case.node_args = vec!["noisy"];
    case.nemesis = "";
    case.secs = 4.0;
    case.flags.strict_protocol = true;
    // Each node's first line is not JSON: read on, so that the malformed
    // replies after it are seen too.
    case.flags.read_on_bad_lines = true;
    let o = case.run().await?;
    let h = &o.results["harness"];
    assert!(h["protocol_violations"]["count"].as_u64().unwrap() >= 1);
    assert_eq!(h["protocol_violations"]["strict"], true);
    assert!(
        h["protocol_violations"]["first"][0]["line"]
            .as_str()
            .unwrap()
            .starts_with("hello from")
    );
    assert!(h["malformed_replies"][0].as_u64().unwrap() >= 1);
    assert!(o.summary.contains("PROTOCOL VIOLATIONS"));
    // n0's own write_ok replies carry an extra key: those ops crash, recorded as info
    // (as under Maelstrom); writes relayed by n1 and n2 are clean.
    assert!(
        o.results["stats"]["by_f"]["write"]["info"]
            .as_u64()
            .unwrap()
            >= 1
    );
    // Under --strict-protocol (today's rule before Maelstrom's became the default).
    assert_eq!(o.valid, Validity::Invalid);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_same_partitions() -> anyhow::Result<()> {
    let mut a = Case::new("seed-a", "node_forward_to_n0", 16);
    a.secs = 5.0;
    let mut b = Case::new("seed-b", "node_forward_to_n0", 16);
    b.secs = 5.0;
    let (a, b) = (a.run().await?, b.run().await?);
    let (ea, eb) = (nemesis_events(&a), nemesis_events(&b));
    assert!(!ea.is_empty());
    assert_eq!(ea, eb);
    Ok(())
}

#[test]
fn cli_rejects_the_default_concurrency_like_maelstrom() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oncekv"))
        .args([
            "test",
            "-w",
            "lin-kv",
            "--bin",
            "/bin/true",
            "--node-count",
            "3",
        ])
        .output()
        .expect("runs");
    // Not 1 (invalid) or 2 (unknown): a refused flag is no verdict (Jepsen: 254).
    assert_eq!(out.status.code(), Some(254));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("With 3 worker threads") && err.contains("at least 6"),
        "{err}"
    );
    // A node that never answers init: no verdict either (255).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oncekv"))
        .args(["test", "--bin", "/bin/cat", "--node-count", "1"])
        .args(["--concurrency", "2n", "--time-limit", "1"])
        .arg("--out")
        .arg(std::env::temp_dir().join(format!("oncekv-noinit-{}", std::process::id())))
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(255));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did not answer init"), "{err}");
}

/// Runs `oncekv test` (the real binary) on the misbehaving test node with `node_args`
/// and `flags`; returns its exit status and stderr. `out` is its output folder.
fn oncekv_test(node_args: &[&str], flags: &[&str], out: &std::path::Path) -> (Option<i32>, String) {
    let _ = std::fs::remove_dir_all(out);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_oncekv"));
    cmd.arg("test")
        .arg("--bin")
        .arg(example("node_misbehave"))
        .args(["--node-count", "3", "--concurrency", "2n"])
        .args(["--seed", "21"])
        .arg("--out")
        .arg(out)
        .args(flags)
        .arg("--")
        .args(node_args);
    eprintln!("running {cmd:?}");
    let o = cmd.output().expect("runs");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    eprintln!("exit {:?}\n{err}", o.status.code());
    (o.status.code(), err)
}

fn temp_out(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("oncekv-proc-{name}-{}", std::process::id()))
}

#[test]
fn a_node_that_crashes_mid_run_ends_the_test_with_255() {
    // n0 exits with status 3 one second into a 30 s run: no verdict (Maelstrom's
    // :node-crashed), reported with its last stderr lines, long before the time limit.
    let out = temp_out("crash");
    let (code, err) = oncekv_test(&["crash-after-ms", "1000"], &["--time-limit", "30"], &out);
    assert_eq!(code, Some(255), "{err}");
    assert!(err.contains("node n0 crashed with exit status 3"), "{err}");
    assert!(err.contains("n0: crashing on purpose"), "its stderr: {err}");
    assert!(err.contains("n0.log"), "where its full log is: {err}");
    assert!(!out.join("results.json").exists(), "no verdict");
    // The operations up to the crash are kept.
    let history = std::fs::read_to_string(out.join("history.jsonl")).expect("history.jsonl");
    assert!(
        history.lines().any(|l| l.contains(r#""type":"ok""#)),
        "ops completed before the crash: {history}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_line_before_init_is_reported_and_the_checker_decides() -> anyhow::Result<()> {
    // Each node writes {"src": null, ...} before its init (Maelstrom's raft.rb does
    // when a vote request beats its init), and answers init_ok with an extra key,
    // which Maelstrom's init check (the type only) accepts.
    let mut case = Case::new("stray", "node_misbehave", 17);
    case.node_args = vec!["stray-line", "init-ok-extra"];
    case.nemesis = "";
    case.secs = 3.0;
    // Under Maelstrom's rule the nodes would not be heard from again, and init
    // would fail: read on, so the checker judges the algorithm.
    case.flags.read_on_bad_lines = true;
    let o = case.run().await?;
    let pv = &o.results["harness"]["protocol_violations"];
    assert_eq!(pv["count"], 3, "{pv}");
    assert!(
        pv["first"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("must be strings")
    );
    assert!(
        o.summary.contains("PROTOCOL VIOLATIONS: 3"),
        "{}",
        o.summary
    );
    assert_eq!(
        o.valid,
        Validity::Valid,
        "the checker's verdict: {}",
        o.summary
    );

    let mut strict = Case::new("stray-strict", "node_misbehave", 17);
    strict.node_args = vec!["stray-line"];
    strict.flags.read_on_bad_lines = true;
    strict.nemesis = "";
    strict.secs = 2.0;
    strict.flags.strict_protocol = true;
    let o = strict.run().await?;
    assert_eq!(o.results["linearizable"]["valid"], true);
    assert_eq!(o.valid, Validity::Invalid, "{}", o.summary);
    assert!(
        o.summary.contains("INVALID (--strict-protocol)"),
        "{}",
        o.summary
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_bad_line_a_node_is_not_heard_from_again_as_under_maelstrom() -> anyhow::Result<()>
{
    // n0 holds the only copy and prints one line that is not JSON as the first
    // request reaches it: from then on its replies are not read, no op
    // completes ok, and the run is invalid (Jepsen: every f needs an ok).
    let mut case = Case::new("garbage", "node_misbehave", 19);
    case.node_args = vec!["garbage-after-init"];
    case.nemesis = "";
    case.secs = 3.0;
    let o = case.run().await?;
    let pv = &o.results["harness"]["protocol_violations"];
    assert_eq!(pv["count"], 1, "{pv}");
    let reason = pv["first"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("not read any further"), "{reason}");
    assert_eq!(o.results["stats"]["by_f"]["read"]["ok"], 0, "{}", o.summary);
    assert_eq!(o.valid, Validity::Invalid, "{}", o.summary);

    // Reading on (beyond Maelstrom), the same node is valid.
    let mut on = Case::new("garbage-read-on", "node_misbehave", 19);
    on.node_args = vec!["garbage-after-init"];
    on.nemesis = "";
    on.secs = 3.0;
    on.flags.read_on_bad_lines = true;
    let o = on.run().await?;
    assert_eq!(o.results["harness"]["protocol_violations"]["count"], 1);
    assert_eq!(o.valid, Validity::Valid, "{}", o.summary);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_sent_before_its_request_answers_it_as_under_maelstrom() -> anyhow::Result<()> {
    // Maelstrom's client keeps what arrives between its calls and takes the
    // first message answering the next msg_id: the 999 n0 sends ahead is read.
    let mut case = Case::new("early-reply", "node_misbehave", 20);
    case.node_args = vec!["early-reply"];
    case.nemesis = "";
    case.secs = 4.0;
    let o = case.run().await?;
    let history = std::fs::read_to_string(o.out_dir.join("history.jsonl"))?;
    let ghost_reads = history
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|op| op["type"] == "ok" && op["f"] == "read" && op["value"] == 999)
        .count();
    assert!(
        ghost_reads > 0,
        "no read took the early reply: {}",
        o.summary
    );
    assert_eq!(o.valid, Validity::Invalid, "{}", o.summary);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_last_line_at_stop_is_no_violation_nor_a_nonzero_exit_a_crash()
-> anyhow::Result<()> {
    // At the stop each node writes half a line and exits with status 1 once its
    // stdin closes: the harness caused both. Strict, so a violation would show.
    let mut case = Case::new("partial", "node_misbehave", 18);
    case.node_args = vec!["partial-last-line", "exit-on-eof-status", "1"];
    case.nemesis = "";
    case.secs = 2.0;
    case.flags.strict_protocol = true;
    let o = case.run().await?;
    assert_eq!(o.results["harness"]["protocol_violations"]["count"], 0);
    assert_eq!(o.valid, Validity::Valid, "{}", o.summary);
    Ok(())
}

#[test]
fn availability_and_test_count_behave_as_in_maelstrom() {
    // The node fails some ops (reads and cas of missing keys, cas mismatches), so
    // `total` availability is missed: the first run is invalid and, as Jepsen's
    // test command does, no further run starts.
    let out = temp_out("avail-total");
    let (code, err) = oncekv_test(
        &[],
        &[
            "--time-limit",
            "2",
            "--availability",
            "total",
            "--test-count",
            "3",
        ],
        &out,
    );
    assert_eq!(code, Some(1), "{err}");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("1/results.json")).unwrap())
            .unwrap();
    assert_eq!(r["harness"]["availability"]["valid"], false, "{r}");
    assert_eq!(r["linearizable"]["valid"], true, "{r}");
    assert!(!out.join("2").exists(), "stops at the first invalid run");

    // 0 is always met: both runs go, each in its own folder with the next seed;
    // the logging flags copy the nodes' stderr and the network's messages. (Long
    // and fast enough that some cas succeeds: Jepsen's stats checker wants one.)
    let out = temp_out("avail-zero");
    let (code, err) = oncekv_test(
        &[],
        &[
            "--rate",
            "60",
            "--time-limit",
            "3",
            "--availability",
            "0",
            "--test-count",
            "2",
            "--log-stderr",
            "--log-net-send",
            "--log-net-recv",
        ],
        &out,
    );
    assert_eq!(code, Some(0), "{err}");
    for run in ["1", "2"] {
        assert!(out.join(run).join("results.json").exists(), "run {run}");
    }
    assert!(err.contains("seed 21") && err.contains("seed 22"), "{err}");
    assert!(
        err.contains("n0 stderr: n0 initialised"),
        "--log-stderr: {err}"
    );
    assert!(err.contains(":send {\"id\":"), "--log-net-send: {err}");
    assert!(err.contains(":recv {\"id\":"), "--log-net-recv: {err}");
}
