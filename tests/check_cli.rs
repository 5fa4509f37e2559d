//! The checker through the real binary: `oncekv check` refuses a malformed
//! history with exit 3 (the bad-input status of `oncekv check --help`) naming
//! the line, and both `oncekv check` and `oncekv test` judge ok reads of null as
//! Knossos does unless `--strict-null-reads` is given, recording the mode.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

const EXIT_BAD_INPUT: i32 = 3;

fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("oncekv-check-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("test dir");
    dir
}

/// One history line.
fn line(process: u64, kind: &str, f: &str, key: Value, value: Value, time: u64) -> String {
    let op =
        json!({"process": process, "type": kind, "f": f, "key": key, "value": value, "time": time});
    format!("{op}\n")
}

/// Runs `oncekv check <extra> <file>` on `history`.
fn check(dir: &Path, name: &str, history: &str, extra: &[&str]) -> Output {
    let path = dir.join(name);
    std::fs::write(&path, history).expect("write history");
    let out = Command::new(env!("CARGO_BIN_EXE_oncekv"))
        .arg("check")
        .args(extra)
        .arg(&path)
        .output()
        .expect("run oncekv check");
    eprintln!(
        "{name} {extra:?}: {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn assert_refused(out: &Output, naming: &str) {
    assert_eq!(out.status.code(), Some(EXIT_BAD_INPUT), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(naming), "{naming:?} not in {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn malformed_histories_are_refused_naming_the_line() {
    let dir = test_dir("malformed");
    let write = |t: u64| {
        line(1, "invoke", "write", json!(0), json!(1), t)
            + &line(1, "ok", "write", json!(0), json!(1), t + 1)
    };
    // A completion for another key than its invoke's.
    let key = write(10)
        + &line(2, "invoke", "read", json!(0), Value::Null, 20)
        + &line(2, "ok", "read", json!("zero"), json!(1), 21);
    let out = check(&dir, "key.jsonl", &key, &[]);
    assert_refused(&out, r#"line 4: completion key "zero" does not match 0"#);
    // A completion with another f.
    let f = write(10)
        + &line(2, "invoke", "read", json!(0), Value::Null, 20)
        + &line(2, "ok", "cas", json!(0), json!(1), 21);
    assert_refused(
        &check(&dir, "f.jsonl", &f, &[]),
        "line 4: completion f \"cas\"",
    );
    // A time that goes backwards; the blank line is counted, as an editor counts it.
    let back = write(10)
        + "\n"
        + &line(2, "invoke", "read", json!(0), Value::Null, 5)
        + &line(2, "ok", "read", json!(0), json!(1), 21);
    let out = check(&dir, "time.jsonl", &back, &["--json"]);
    assert_refused(&out, "line 4: time 5 is before time 11 of line 2");
    assert!(out.stdout.is_empty(), "no verdict printed");
    // The same history in order is judged.
    let fine = write(10)
        + "\n"
        + &line(2, "invoke", "read", json!(0), Value::Null, 20)
        + &line(2, "ok", "read", json!(0), json!(1), 21);
    assert_eq!(check(&dir, "fine.jsonl", &fine, &[]).status.code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_judges_null_reads_as_knossos_unless_strict() {
    let dir = test_dir("null-reads");
    let history = line(1, "invoke", "write", json!(0), json!(1), 10)
        + &line(1, "ok", "write", json!(0), json!(1), 11)
        + &line(2, "invoke", "read", json!(0), Value::Null, 20)
        + &line(2, "ok", "read", json!(0), Value::Null, 21);
    let lenient = check(&dir, "h.jsonl", &history, &["--json"]);
    assert_eq!(lenient.status.code(), Some(0), "{lenient:?}");
    let report: Value = serde_json::from_slice(&lenient.stdout).expect("json");
    assert_eq!(report["linearizable"]["null_reads"], json!("any-state"));
    let strict = check(
        &dir,
        "h.jsonl",
        &history,
        &["--json", "--strict-null-reads"],
    );
    assert_eq!(strict.status.code(), Some(1), "{strict:?}");
    let report: Value = serde_json::from_slice(&strict.stdout).expect("json");
    assert_eq!(report["linearizable"]["null_reads"], json!("strict"));
    let text = check(&dir, "h.jsonl", &history, &["--strict-null-reads"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("null reads strict"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The reported case: an add of 0 on a missing key, concurrent with a read of
/// null, was called INVALID even with strict null reads.
#[test]
fn an_add_of_zero_concurrent_with_a_null_read_is_valid() {
    let dir = test_dir("add-zero");
    let history = line(1, "invoke", "add", json!(0), json!(0), 10)
        + &line(2, "invoke", "read", json!(0), Value::Null, 11)
        + &line(2, "ok", "read", json!(0), Value::Null, 12)
        + &line(1, "ok", "add", json!(0), json!(0), 13);
    let out = check(&dir, "h.jsonl", &history, &["--strict-null-reads"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A one-node store that is right except that every other read of a key that
/// exists answers null: valid as Knossos judges it, invalid when strict.
const NULL_READS_NODE: &str = r#"
import json, sys
kv, reads, node = {}, 0, None
def reply(msg, body):
    body["in_reply_to"] = msg["body"]["msg_id"]
    out = {"src": node, "dest": msg["src"], "body": body}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
for raw in sys.stdin:
    msg = json.loads(raw)
    b = msg["body"]
    t = b["type"]
    if t == "init":
        node = b["node_id"]
        reply(msg, {"type": "init_ok"})
    elif t == "write":
        kv[b["key"]] = b["value"]
        reply(msg, {"type": "write_ok"})
    elif t == "read":
        if b["key"] not in kv:
            reply(msg, {"type": "error", "code": 20, "text": "not found"})
            continue
        reads += 1
        value = None if reads % 2 == 0 else kv[b["key"]]
        reply(msg, {"type": "read_ok", "value": value})
    elif t == "cas":
        if b["key"] not in kv:
            reply(msg, {"type": "error", "code": 20, "text": "not found"})
        elif kv[b["key"]] != b["from"]:
            reply(msg, {"type": "error", "code": 22, "text": "mismatch"})
        else:
            kv[b["key"]] = b["to"]
            reply(msg, {"type": "cas_ok"})
"#;

/// Runs `oncekv test` on the node above; the exit status and results.json.
fn run_test(dir: &Path, name: &str, extra: &[&str]) -> (Option<i32>, Value) {
    let node = dir.join("node.py");
    std::fs::write(&node, NULL_READS_NODE).expect("write node");
    let out_dir = dir.join(name);
    let out = Command::new(env!("CARGO_BIN_EXE_oncekv"))
        .args(["test", "--bin", "python3"])
        .arg(&node)
        .args(["--node-count", "1", "--concurrency", "2n", "--rate", "100"])
        .args(["--time-limit", "2", "--seed", "7", "--out"])
        .arg(&out_dir)
        .args(extra)
        .output()
        .expect("run oncekv test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{name}: {:?}\n{stdout}", out.status.code());
    // The summary names the run's folder: results.json is there.
    let folder = stdout
        .lines()
        .find_map(|l| l.strip_prefix("output: "))
        .map_or(out_dir.clone(), PathBuf::from);
    let results = std::fs::read_to_string(folder.join("results.json")).expect("results.json");
    (
        out.status.code(),
        serde_json::from_str(&results).expect("json"),
    )
}

#[test]
fn test_judges_null_reads_as_knossos_unless_strict() {
    let dir = test_dir("test-null-reads");
    let (code, results) = run_test(&dir, "lenient", &[]);
    let lin = &results["linearizable"];
    assert_eq!(lin["null_reads"], json!("any-state"), "{lin}");
    assert_eq!(lin["valid"], json!(true), "{lin}");
    assert_eq!(code, Some(0), "{results}");
    let (code, results) = run_test(&dir, "strict", &["--strict-null-reads"]);
    let lin = &results["linearizable"];
    assert_eq!(lin["null_reads"], json!("strict"), "{lin}");
    assert_eq!(lin["valid"], json!(false), "{lin}");
    assert_eq!(code, Some(1), "{results}");
    let _ = std::fs::remove_dir_all(&dir);
}
