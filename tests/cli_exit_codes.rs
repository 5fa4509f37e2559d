//! The exit-status table (README, "Exit status"; `src/cli/exit.rs`; each
//! subcommand's `--help`) through the real binary: a case for each row of each
//! subcommand, and each subcommand's `--help` ends with its part of the table.
//! The scheme: 0 success, 1 a definite failure, 2 no definite answer, 3 an
//! unreadable history (`check`), 254 bad usage (every subcommand), 255 no verdict.

mod support_tcp;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support_tcp::{TestCluster, free_port, test_dir};

/// Runs `oncekv ARGS` with `ONCEKV_PEERS` and `ONCEKV_CLUSTER_KEY` unset; returns
/// its output (printed, for a failure's diagnosis).
fn oncekv(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_oncekv"))
        .args(args)
        .env_remove("ONCEKV_PEERS")
        .env_remove(oncekv::tcp::CLUSTER_KEY_VAR)
        .stdin(Stdio::null())
        .output()
        .expect("run oncekv");
    eprintln!(
        "oncekv {args:?}: {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Asserts `oncekv ARGS` exits `code` and never panics.
fn expect(code: i32, args: &[&str]) -> Output {
    let out = oncekv(args);
    assert_eq!(out.status.code(), Some(code), "oncekv {args:?}: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "oncekv {args:?}: {stderr}");
    out
}

/// An address nothing listens on.
fn dead() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A write of 1 to key 0, then a read of `read`.
fn history(read: u64) -> String {
    format!(
        "{}\n{}\n{}\n{}\n",
        r#"{"process":0,"type":"invoke","f":"write","key":0,"value":1,"time":1000}"#,
        r#"{"process":0,"type":"ok","f":"write","key":0,"value":1,"time":2000}"#,
        r#"{"process":1,"type":"invoke","f":"read","key":0,"value":null,"time":3000}"#,
        format_args!(
            r#"{{"process":1,"type":"ok","f":"read","key":0,"value":{read},"time":4000}}"#
        ),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write fixture");
    path.to_str().expect("utf-8 path").to_string()
}

#[test]
fn usage_errors_exit_254_in_every_subcommand() {
    let p = dead();
    let usage: &[&[&str]] = &[
        &["no-such-subcommand"],
        &["--no-such-flag"],
        // client: a missing --seq, a missing value, --seq -1, a delta that is
        // no integer, a bad --peers, no peers at all, a bad --deadline.
        &[
            "client",
            "--peers",
            &p,
            "--client-id",
            "s1",
            "add",
            "k",
            "1",
        ],
        &["client", "--peers", &p, "--seq", "1", "add", "k", "1"],
        &["client", "--peers", &p, "write", "k"],
        &["client", "--peers", &p, "--deadline"],
        &[
            "client",
            "--peers",
            &p,
            "--client-id",
            "s1",
            "--seq",
            "-1",
            "add",
            "k",
            "1",
        ],
        &["client", "--peers", &p, "add", "k", "1.5"],
        &["client", "--peers", "nonsense", "read", "k"],
        &["client", "read", "k"],
        &["client", "--peers", &p, "--deadline", "0", "read", "k"],
        &["client", "--peers", &p, "close-session"],
        &["client", "--peers", &p, "no-such-op"],
        &["client", "--peers", &p, "add-node", "n4"],
        // check: no history, a bad --time-limit.
        &["check"],
        &["check", "--time-limit", "-1", "h.jsonl"],
        // test: bad flags.
        &["test", "--no-such-flag"],
        &["test", "-w", "no-such-workload", "--bin", "/bin/true"],
        &["test", "--node-count", "x"],
        &["demo", "--time-limit", "x"],
        &["sim", "--nodes", "4"],
        &["serve", "--id", "n1"],
        &["cluster", "--nodes", "0", "--data-dir", "unused"],
        &["cluster", "--base-port", "0", "--data-dir", "unused"],
        &["bench", "--no-such-flag"],
        &["bench-cluster", "--no-such-flag"],
        &["completions", "no-such-shell"],
        &["node", "--no-such-flag"],
    ];
    for args in usage {
        expect(254, args);
    }
    // ONCEKV_PEERS is checked like --peers.
    let out = Command::new(env!("CARGO_BIN_EXE_oncekv"))
        .args(["client", "read", "k"])
        .env("ONCEKV_PEERS", "nonsense")
        .output()
        .expect("run oncekv");
    assert_eq!(out.status.code(), Some(254), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("ONCEKV_PEERS"));
    // serve: flags refused before anything is created.
    let dir = test_dir("exit-serve-usage");
    let data = dir.join("n1");
    let listen = dead();
    expect(
        254,
        &[
            "serve",
            "--id",
            "n1",
            "--listen",
            &listen,
            "--peers",
            "nonsense",
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    assert!(!data.exists(), "a refused serve created its data dir");
}

#[test]
fn check_exits_with_its_verdict_or_3_for_a_bad_history() {
    let dir = test_dir("exit-check");
    expect(0, &["check", &write(&dir, "valid.jsonl", &history(1))]);
    expect(1, &["check", &write(&dir, "invalid.jsonl", &history(2))]);
    // No time to search: unknown.
    let valid = write(&dir, "valid2.jsonl", &history(1));
    expect(2, &["check", "--time-limit", "0", &valid]);
    expect(3, &["check", &write(&dir, "garbage.jsonl", "garbage\n")]);
    let missing = dir.join("missing.jsonl");
    expect(3, &["check", missing.to_str().unwrap()]);
}

#[test]
fn test_without_a_verdict_exits_255() {
    let dir = test_dir("exit-test");
    // A node that never answers init: no verdict (Maelstrom's 255).
    let out = dir.join("out");
    let out = expect(
        255,
        &[
            "test",
            "--bin",
            "/bin/cat",
            "--node-count",
            "1",
            "--concurrency",
            "2n",
            "--time-limit",
            "1",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("did not answer init"));
}

#[test]
fn sim_exits_0_when_every_seed_passes() {
    expect(0, &["sim", "--seed", "1", "--duration-ms", "2000"]);
}

#[test]
fn serve_and_cluster_exit_1_when_they_cannot_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().unwrap().to_string();
    let dir = test_dir("exit-start");
    let data = dir.join("n1");
    expect(
        1,
        &[
            "serve",
            "--id",
            "n1",
            "--listen",
            &addr,
            "--peers",
            &format!("n1={addr}"),
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    let port = taken.local_addr().unwrap().port().to_string();
    let cluster_dir = dir.join("cluster");
    expect(
        1,
        &[
            "cluster",
            "--nodes",
            "1",
            "--base-port",
            &port,
            "--data-dir",
            cluster_dir.to_str().unwrap(),
        ],
    );
}

#[test]
fn completions_exit_0() {
    for shell in ["bash", "zsh", "fish"] {
        let out = expect(0, &["completions", shell]);
        let script = String::from_utf8_lossy(&out.stdout);
        // Generated from the definition: it knows the client's subcommands and flags.
        assert!(script.contains("close-session"), "{shell}: {script}");
        assert!(script.contains("deadline"), "{shell}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_exits_0_ok_1_definite_error_2_no_answer() {
    let p = dead();
    // No definite answer: an unreachable peer and a short deadline.
    expect(
        2,
        &[
            "client",
            "--peers",
            &p,
            "--deadline",
            "1",
            "write",
            "x",
            "1",
        ],
    );
    expect(
        2,
        &["client", "--peers", &p, "--deadline", "1", "read", "x"],
    );
    expect(2, &["client", "--peers", &p, "--deadline", "1", "status"]);
    expect(2, &["client", "--peers", &p, "--deadline", "1", "members"]);
    // An endpoint that does not answer is unhealthy: a definite finding.
    expect(1, &["client", "--peers", &p, "--deadline", "1", "health"]);

    let mut cluster = TestCluster::start("exit-client", 1, &[]);
    cluster.wait_leader(Duration::from_secs(20)).await;
    let peers = cluster.addrs().join(",");
    let ok: &[&[&str]] = &[
        &["write", "x", "1"],
        &["read", "x"],
        &["cas", "x", "1", "2"],
        &["add", "n", "3"],
        &["status"],
        &["members"],
        &["health"],
        &["open-session"],
    ];
    for args in ok {
        let mut all = vec!["client", "--peers", &peers];
        all.extend_from_slice(args);
        expect(0, &all);
    }
    // Definite error replies: a cas on a missing key (20), a mismatch (22), a
    // close of a session never opened (20).
    let failed: &[&[&str]] = &[
        &["cas", "missing", "1", "2"],
        &["cas", "x", "7", "8"],
        &["close-session", "--client-id", "never-opened"],
    ];
    for args in failed {
        let mut all = vec!["client", "--peers", &peers];
        all.extend_from_slice(args);
        expect(1, &all);
    }
    // A refused request: usage, and nothing sent.
    expect(
        254,
        &[
            "client",
            "--peers",
            &peers,
            "write",
            "k",
            "123456789012345678901234567890",
        ],
    );
    cluster.kill(0);
}

#[test]
fn every_help_ends_with_its_exit_table() {
    let tables = [
        ("client", oncekv::cli::exit::CLIENT),
        ("check", oncekv::cli::exit::CHECK),
        ("test", oncekv::cli::exit::TEST),
        ("demo", oncekv::cli::exit::DEMO),
        ("sim", oncekv::cli::exit::SIM),
        ("serve", oncekv::cli::exit::SERVE),
        ("cluster", oncekv::cli::exit::CLUSTER),
        ("bench", oncekv::cli::exit::BENCH),
        ("bench-cluster", oncekv::cli::exit::BENCH),
        ("completions", oncekv::cli::exit::COMPLETIONS),
        ("node", oncekv::cli::exit::NODE),
    ];
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    for (cmd, table) in tables {
        let out = expect(0, &[cmd, "--help"]);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains(table),
            "oncekv {cmd} --help lacks its table:\n{help}"
        );
        assert!(
            readme.contains(&format!("| `{cmd}` |")),
            "README's exit-status table has no row for {cmd}"
        );
    }
    let out = expect(0, &["--help"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("254 bad usage"));
}
