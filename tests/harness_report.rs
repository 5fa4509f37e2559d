//! What `oncekv test` leaves behind, driven through the real binary: the run
//! folder `store/<test-name>/<timestamp>/` with its files, the `latest` links,
//! the store's list of runs, `results.json`'s `test` object with every
//! parameter, and the recorded command, which runs the same test again. oncekv
//! itself is the node under test (3 nodes, a couple of seconds per run).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_oncekv");

fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("oncekv-report-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Runs `oncekv test ARGS` in `cwd`; returns its stdout (the summary). Any
/// verdict will do (exit 0, 1 or 2: a run this short may have no ok cas, which
/// Jepsen's stats rule calls invalid); what is tested is what it leaves behind.
fn oncekv_test(cwd: &Path, args: &[String]) -> String {
    let out = Command::new(BIN)
        .arg("test")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        matches!(out.status.code(), Some(0..=2)),
        "no verdict: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("JSON")
}

/// The run folder the summary's last line names.
fn output_dir(cwd: &Path, summary: &str) -> PathBuf {
    let line = summary
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("output: "))
        .unwrap_or_else(|| panic!("no output line: {summary}"));
    cwd.join(line)
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn a_run_lands_in_the_store_and_its_recorded_command_runs_it_again() {
    let seed = oncekv::tools::harness::seed::test_seed();
    let cwd = fresh_dir("store");
    let args: Vec<String> = [
        "-w",
        "lin-kv",
        "--bin",
        BIN,
        "--node-count",
        "3",
        "--concurrency",
        "2n",
        "--rate",
        "40",
        "--time-limit",
        "2",
        "--latency",
        "1",
        "--latency-dist",
        "uniform",
        "--nemesis",
        "partition",
        "--nemesis-interval",
        "0.5",
        "--p-dup",
        "0.01",
        "--seed",
        &seed.to_string(),
    ]
    .map(String::from)
    .to_vec();
    let summary = oncekv_test(&cwd, &args);
    let run = output_dir(&cwd, &summary);

    // store/lin-kv/<timestamp>Z, like Maelstrom's store/lin-kv/<timestamp>.
    let rel = run.strip_prefix(&cwd).expect("under the cwd");
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    assert_eq!(parts.len(), 3, "{rel:?}");
    assert_eq!((parts[0].as_str(), parts[1].as_str()), ("store", "lin-kv"));
    assert!(parts[2].ends_with('Z') && parts[2].contains('T'), "{rel:?}");
    for file in [
        "history.jsonl",
        "results.json",
        "summary.txt",
        "latency.svg",
        "throughput.svg",
        "timeline.html",
        "index.html",
        "node-logs",
    ] {
        assert!(run.join(file).exists(), "no {file} in {}", run.display());
    }
    let store = cwd.join("store");
    assert_eq!(canonical(&store.join("latest")), canonical(&run));
    assert_eq!(canonical(&store.join("lin-kv/latest")), canonical(&run));

    // The summary printed is the one saved, with its re-run line.
    let saved = std::fs::read_to_string(run.join("summary.txt")).expect("summary.txt");
    assert!(summary.starts_with(&saved), "{summary}\n---\n{saved}");
    let results = read_json(&run.join("results.json"));
    let test = &results["test"];
    let command_line = test["command_line"].as_str().expect("command_line");
    assert!(
        saved.contains(&format!("re-run: {command_line}")),
        "{saved}"
    );

    // Every parameter of the run.
    assert_eq!(test["workload"], "lin-kv");
    assert_eq!(test["bin"], BIN);
    assert_eq!(test["nodes"], serde_json::json!(["n0", "n1", "n2"]));
    assert_eq!(test["concurrency"], 6);
    assert_eq!(test["rate"], 40.0);
    assert_eq!(test["time_limit_s"], 2.0);
    assert_eq!(test["latency_ms"], 1);
    assert_eq!(test["latency_dist"], "uniform");
    assert_eq!(test["nemesis"], serde_json::json!(["partition"]));
    assert_eq!(test["nemesis_interval_s"], 0.5);
    assert_eq!(test["p_loss"], 0.0);
    assert_eq!(test["p_dup"], 0.01);
    assert_eq!(test["seed"], seed);
    assert_eq!(test["args"], serde_json::json!([]));
    assert!(test["started"].as_str().is_some_and(|s| s.ends_with('Z')));

    // The run's page has the plots, the table and the timeline; the store's
    // page lists the run.
    let page = std::fs::read_to_string(run.join("index.html")).expect("index.html");
    for part in [
        "<svg",
        "class=\"dots\"",
        "class=\"series\"",
        "<div class=\"timeline\"",
        "<tr><th>f</th>",
    ] {
        assert!(page.contains(part), "no {part} in index.html");
    }
    let list = std::fs::read_to_string(store.join("index.html")).expect("store index");
    assert!(
        list.contains(&format!("lin-kv/{}/index.html", parts[2])),
        "{list}"
    );

    // The recorded command, run again, records the same parameters, and the
    // links move to the new run.
    let command: Vec<String> = serde_json::from_value(test["command"].clone()).expect("words");
    assert_eq!(&command[..2], ["oncekv", "test"]);
    let again = oncekv_test(&cwd, &command[2..]);
    let run2 = output_dir(&cwd, &again);
    assert_ne!(canonical(&run2), canonical(&run));
    let test2 = read_json(&run2.join("results.json"))["test"].clone();
    let without_start = |t: &Value| {
        let mut t = t.clone();
        t.as_object_mut().expect("object").remove("started");
        t
    };
    assert_eq!(without_start(&test2), without_start(test));
    assert_eq!(canonical(&store.join("latest")), canonical(&run2));
    let list = std::fs::read_to_string(store.join("index.html")).expect("store index");
    assert_eq!(list.matches("/index.html\">lin-kv/").count(), 2, "{list}");
    let _ = std::fs::remove_dir_all(&cwd);
}

#[test]
fn an_explicit_out_folder_is_used_as_is_and_the_store_is_left_alone() {
    let seed = oncekv::tools::harness::seed::test_seed();
    let cwd = fresh_dir("out");
    let args: Vec<String> = [
        "--bin",
        BIN,
        "--node-count",
        "1",
        "--concurrency",
        "2n",
        "--rate",
        "20",
        "--time-limit",
        "1",
        "--out",
        "mine",
        "--seed",
        &seed.to_string(),
    ]
    .map(String::from)
    .to_vec();
    let summary = oncekv_test(&cwd, &args);
    assert_eq!(output_dir(&cwd, &summary), cwd.join("mine"));
    assert!(cwd.join("mine/index.html").exists());
    assert!(cwd.join("mine/results.json").exists());
    assert!(
        !cwd.join("store").exists(),
        "no store made for an --out run"
    );
    let page = std::fs::read_to_string(cwd.join("mine/index.html")).expect("page");
    assert!(
        !page.contains("../../index.html"),
        "no link to a store list"
    );
    let _ = std::fs::remove_dir_all(&cwd);
}
