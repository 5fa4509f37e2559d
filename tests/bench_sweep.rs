//! `oncekv bench-cluster --sweep` end to end with real `oncekv serve` processes
//! (oncekv only: etcd is not installed for the tests), on small points: the fill,
//! the measurement, the follower's catch-up, the GC stall, and the files written.
//! No figure is asserted beyond its being present: timings are not tested.

mod support_tcp;

use std::path::Path;
use std::process::Command;

use support_tcp::test_dir;

/// Runs a small oncekv-only sweep of `dim` at `points` with its plots in `dir`;
/// returns its stdout.
fn sweep(dir: &Path, dim: &str, points: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_oncekv"))
        .args(["bench-cluster", "--oncekv-only", "--sweep", dim])
        .args(["--points", points, "--sweep-clients", "4"])
        .args(["--duration-s", "0.5", "--warmup-s", "0.1"])
        .arg("--plot-dir")
        .arg(dir.join("plots"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .output()
        .expect("run oncekv bench-cluster");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{out:?}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The table rows (`| 300 | oncekv | ...`) of a sweep's markdown file.
fn rows(dir: &Path, dim: &str) -> Vec<Vec<String>> {
    let md = std::fs::read_to_string(dir.join(format!("plots/sweep-{dim}.md"))).expect("md");
    md.lines()
        .filter(|l| l.starts_with("| ") && l.contains("oncekv"))
        .map(|l| l.split('|').map(|c| c.trim().to_string()).collect())
        .collect()
}

#[test]
fn a_sessions_sweep_fills_measures_and_times_the_gc_stall() {
    let dir = test_dir("sweep-sessions");
    let out = sweep(&dir, "sessions", "100,300");
    let rows = rows(&dir, "sessions");
    assert_eq!(rows.len(), 2, "{out}");
    for (row, x) in rows.iter().zip(["100", "300"]) {
        assert_eq!(row[1], x);
        let writes: f64 = row[3].parse().expect("writes/s");
        assert!(writes > 0.0, "no write measured: {row:?}");
        assert_eq!(row[7], "0", "errors: {row:?}");
    }
    // The stall: the 300 filled sessions were removed while the writer wrote on.
    assert!(
        out.contains("GC stall, 300 sessions expired at once"),
        "{out}"
    );
    assert!(out.contains("resident memory per added session"), "{out}");
    let svg = std::fs::read_to_string(dir.join("plots/sweep-sessions.svg")).expect("svg");
    assert!(svg.starts_with("<svg") && svg.contains("live sessions"));
    assert_eq!(
        svg.matches("<circle").count(),
        2 * 3,
        "2 points in 3 panels"
    );
}

#[test]
fn a_keys_sweep_times_a_lagging_followers_catch_up() {
    let dir = test_dir("sweep-keys");
    let out = sweep(&dir, "keys", "200");
    let rows = rows(&dir, "keys");
    assert_eq!(rows.len(), 1, "{out}");
    let catch_up: f64 = rows[0][11].parse().expect("catch-up seconds");
    assert!(catch_up > 0.0, "{out}");
    let svg = std::fs::read_to_string(dir.join("plots/sweep-keys.svg")).expect("svg");
    assert!(svg.contains("follower catch-up s"));
}

#[test]
fn points_for_several_dimensions_or_out_of_range_are_refused() {
    let dir = test_dir("sweep-usage");
    for args in [
        &["--sweep", "keys,nodes", "--points", "3"][..],
        &["--sweep", "nodes", "--points", "4"][..],
        &["--sweep", "value-bytes", "--points", "2000000"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_oncekv"))
            .args(["bench-cluster", "--oncekv-only"])
            .args(args)
            .arg("--plot-dir")
            .arg(dir.join("plots"))
            .output()
            .expect("run");
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--points"), "{args:?}: {err}");
    }
}
