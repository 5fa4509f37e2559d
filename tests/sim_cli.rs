//! `oncekv sim` as a user runs it: the real binary, one seed and a range, the
//! same seed in two processes giving the same trace hash, and bad arguments.

use std::process::Command;

fn sim(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_oncekv"))
        .arg("sim")
        .args(args)
        .output()
        .expect("run oncekv sim");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn trace_hash(stdout: &str) -> String {
    let at = stdout.find("trace hash ").expect("a trace hash") + "trace hash ".len();
    stdout[at..at + 16].to_string()
}

#[test]
fn one_seed_replays_exactly_in_another_process() {
    let (code, a, err) = sim(&["--seed", "3", "--duration-ms", "4000"]);
    assert_eq!(code, 0, "{a}{err}");
    assert!(a.starts_with("seed 3: PASS"), "{a}");
    let (_, b, _) = sim(&["--seed", "3", "--duration-ms", "4000"]);
    assert_eq!(trace_hash(&a), trace_hash(&b), "{a}\n{b}");
    let (_, c, _) = sim(&["--seed", "4", "--duration-ms", "4000"]);
    assert_ne!(trace_hash(&a), trace_hash(&c));
}

#[test]
fn the_trace_shows_every_event_in_time_order() {
    let (code, out, err) = sim(&["--seed", "3", "--duration-ms", "3000", "--trace"]);
    assert_eq!(code, 0, "{err}");
    let times: Vec<u64> = out
        .lines()
        .take_while(|l| !l.starts_with("seed "))
        .map(|l| l.trim_start().split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(times.len() > 100, "{out}");
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
    assert!(out.contains("start n0") && out.contains("recv "), "{out}");
}

#[test]
fn a_range_of_seeds_is_summarised() {
    let (code, out, err) = sim(&[
        "--seeds",
        "2",
        "--from",
        "40",
        "--duration-ms",
        "3000",
        "--jobs",
        "1",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("0 of 2 seeds failed (40..42, 3 nodes)"),
        "{out}"
    );
}

/// Bad usage: exit 254, as for every subcommand (README, "Exit status").
#[test]
fn bad_arguments_are_refused_before_anything_runs() {
    for args in [
        &["--nodes", "4"][..],
        &["--duration-ms", "10"],
        &["--seed", "1", "--seeds", "3"],
        &["--trace"],
        &["--clients", "0"],
    ] {
        let (code, _, err) = sim(args);
        assert_eq!(code, 254, "{args:?}: {err}");
        assert!(err.contains("error"), "{args:?}: {err}");
    }
}
