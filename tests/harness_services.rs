//! Maelstrom's services under the real `oncekv test`: Python test nodes (tests/nodes/*.py,
//! standard library only) that talk to `lin-kv`, `seq-kv`, `lww-kv` and `lin-tso`.
//! Each case prints its seed and its command; re-run one by hand with it.
//!
//! These tests need `python3` on PATH and fail, saying so, without it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn python3() -> &'static str {
    let found = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "python3 was not found on PATH: tests/harness_services.rs runs its test nodes \
         (tests/nodes/*.py) with Python 3; install it or put it on PATH"
    );
    "python3"
}

fn node(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/nodes")
        .join(name)
}

/// Runs `oncekv test` on the lin-kv workload with `script` (and its `args`) under
/// python3; returns the output folder and the process's output.
fn run(case: &str, script: &str, args: &[&str], nodes: usize, flags: &[&str]) -> (PathBuf, Output) {
    let out = std::env::temp_dir().join(format!("oncekv-services-{case}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oncekv"));
    cmd.args(["test", "-w", "lin-kv", "--bin", python3()])
        .arg(node(script))
        .args(args)
        .args(["--node-count", &nodes.to_string(), "--out"])
        .arg(&out)
        .args(flags);
    eprintln!("case {case}: {cmd:?}");
    let output = cmd.output().expect("oncekv runs");
    eprintln!("{}", String::from_utf8_lossy(&output.stdout));
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    (out, output)
}

fn results(out: &Path) -> Value {
    let text = std::fs::read_to_string(out.join("results.json")).expect("results.json");
    serde_json::from_str(&text).expect("results.json parses")
}

#[test]
fn lin_kv_proxy_is_valid_under_partitions() {
    // Services are not cut by partitions (Jepsen's grudges name only the test's
    // nodes), so a node that keeps no state and forwards to lin-kv stays linearizable.
    let (out, o) = run(
        "lin-kv-proxy",
        "lin_kv_proxy.py",
        &[],
        3,
        &[
            "--concurrency",
            "2n",
            "--rate",
            "60",
            "--time-limit",
            "6",
            "--latency",
            "5",
            "--nemesis",
            "partition",
            "--nemesis-interval",
            "1",
            "--seed",
            "31",
        ],
    );
    let r = results(&out);
    assert_eq!(o.status.code(), Some(0), "valid, exit 0: {r}");
    assert_eq!(r["valid"], Value::Bool(true));
    assert!(r["nemesis"]["partitions"].as_u64().unwrap() >= 1, "{r}");
    let ok = r["stats"]["ok"].as_u64().unwrap();
    assert!(ok > 100, "the proxy answered through lin-kv: {ok} ok");
    assert!(
        r["net"]["servers"]["msg_count"].as_u64().unwrap() >= 2 * ok,
        "every ok op was a request to lin-kv and its reply: {r}"
    );
}

#[test]
fn seq_kv_proxy_is_not_linearizable() {
    // The same proxy through seq-kv: stale reads that the checker must catch, as
    // Maelstrom's lin_kv_proxy.rb comment promises.
    let (out, o) = run(
        "seq-kv-proxy",
        "lin_kv_proxy.py",
        &["seq-kv"],
        3,
        &[
            "--concurrency",
            "2n",
            "--rate",
            "80",
            "--time-limit",
            "4",
            "--seed",
            "32",
        ],
    );
    let r = results(&out);
    assert_eq!(o.status.code(), Some(1), "invalid, exit 1: {r}");
    assert_eq!(r["valid"], Value::Bool(false));
    // Invalid because of what seq-kv answered, not because the node could not reach it.
    assert_eq!(r["linearizable"]["valid"], Value::Bool(false), "{r}");
    assert!(r["stats"]["ok"].as_u64().unwrap() > 100, "{r}");
}

#[test]
fn a_node_gets_maelstroms_answers_from_every_service() {
    // tests/nodes/service_probe.py: a ts before init, then a fixed script of requests
    // to lin-tso, seq-kv, lww-kv and lin-kv whose answers it checks.
    let (out, o) = run(
        "probe",
        "service_probe.py",
        &[],
        1,
        &[
            "--concurrency",
            "2n",
            "--rate",
            "20",
            "--time-limit",
            "2",
            "--seed",
            "33",
        ],
    );
    let log = std::fs::read_to_string(out.join("node-logs/n0.log")).expect("n0.log");
    assert!(log.contains("PROBE OK"), "n0.log:\n{log}");
    assert_eq!(o.status.code(), Some(0), "{}", results(&out));
}
