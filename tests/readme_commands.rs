//! The README's commands, as written: every line of every ```` ```sh ```` block of
//! `README.md` is read from the file (never copied here, so the test follows the
//! README as it changes), then
//!
//! - `every_readme_command_is_accepted`: each `oncekv` command line is run with
//!   `--help` added, which clap answers only after every flag and value before it
//!   parsed: a flag the README names that the binary does not take fails here.
//!   The `maelstrom test` line is checked the same way against `oncekv test`,
//!   which the README says takes the same flags.
//! - `readme_commands_run_as_written`: the lines are run in order, through `sh`,
//!   in a fresh directory, as a new user would after `cargo build --release`. The
//!   only changes, each so that the test is quick and touches nothing outside its
//!   own directory: `target/release/oncekv` and `cargo run --release --` become
//!   the binary under test; `/tmp/oncekv` becomes a directory of the test; the
//!   ports 7001-7009 become free ports (`--base-port` added to `oncekv cluster`);
//!   `demo` and `test` run 2 s per workload (`--time-limit 2`; `test` at the
//!   demo's `--rate 50` unless the line sets a rate), `sim --seeds N` runs 2
//!   seeds. `cargo build` and `cargo test` are not run (the binary is
//!   built, and this test is part of `cargo test`); `maelstrom` needs a JVM and is
//!   only checked as above. `oncekv cluster` and `oncekv serve` serve until
//!   stopped: they run in the background, the next line waits until their ports
//!   accept, and the test ends them at the end (`cluster` with SIGINT, as Ctrl-C).
//!   Every other line must exit 0, except that a shortened `demo` or `test` may
//!   exit 1 when its safety checks are all VALID and only Jepsen's stats rule
//!   (an ok op of every kind) failed, as 2 s under partitions allows.
//!
//! A line this test does not know how to run fails it, naming the line: a new
//! kind of command in the README must be taught here, not skipped silently.

mod support;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::bin;

/// How long one foreground README line may take (a 2 s harness run takes ~10 s
/// on a busy 2-core machine, a debug build included).
const LINE_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a server started by a README line may take to accept connections.
const SERVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Seconds per workload for `demo` and `test` here.
const SHORT_TIME_LIMIT: &str = "2";
/// Requests per second of `test` here when the line gives none (the demo's).
const SHORT_RATE: &str = "50";
/// Seeds for `sim --seeds N` here.
const SHORT_SEEDS: &str = "2";
/// The ports the README names, 7001 up to this.
const README_PORT_LAST: u16 = 7009;

/// One line of a `sh` block.
#[derive(Debug, Clone)]
struct Line {
    /// The README's section heading above the block.
    section: String,
    /// The command, continuations joined, comment dropped.
    text: String,
}

/// Every command line of every ```` ```sh ```` block of README.md, in order.
fn readme_lines() -> Vec<Line> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&path).expect("README.md");
    let mut lines = Vec::new();
    let (mut section, mut in_sh, mut pending) = (String::new(), false, String::new());
    for raw in readme.lines() {
        if !in_sh {
            if let Some(h) = raw.strip_prefix('#') {
                section = h.trim_start_matches('#').trim().to_string();
            } else if raw.trim() == "```sh" {
                in_sh = true;
            }
            continue;
        }
        if raw.trim() == "```" {
            in_sh = false;
            assert!(pending.is_empty(), "a `\\` continues past the block end");
            continue;
        }
        let code = strip_comment(raw);
        if let Some(head) = code.trim_end().strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(code);
        let text = std::mem::take(&mut pending);
        for part in text.split("&&") {
            let part = part.split_whitespace().collect::<Vec<_>>().join(" ");
            if !part.is_empty() {
                lines.push(Line {
                    section: section.clone(),
                    text: part,
                });
            }
        }
    }
    assert!(!in_sh, "README.md ends inside a sh block");
    lines
}

/// The line without its `#` comment (a `#` at the start or after a blank).
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}

/// What a README line is, for this test.
#[derive(Debug, PartialEq)]
enum Kind {
    /// `oncekv` with these arguments (from `target/release/oncekv ...` or
    /// `cargo run --release -- ...`); `background` if it ends with `&`.
    Oncekv { args: Vec<String>, background: bool },
    /// `maelstrom test ...`: checked against `oncekv test`, not run.
    Maelstrom { args: Vec<String> },
    /// `export NAME=VALUE` (VALUE as the shell reads it).
    Export { name: String, value: String },
    /// `cargo build` / `cargo test`: not run here (see the module doc).
    Cargo,
}

fn classify(line: &Line) -> Kind {
    let mut words: Vec<String> = line.text.split(' ').map(str::to_string).collect();
    let background = words.last().is_some_and(|w| w == "&");
    if background {
        words.pop();
    }
    let first: Vec<&str> = words.iter().take(3).map(String::as_str).collect();
    match first.as_slice() {
        ["target/release/oncekv", ..] => Kind::Oncekv {
            args: words[1..].to_vec(),
            background,
        },
        ["cargo", "run", "--release"] if words.get(3).is_some_and(|w| w == "--") => Kind::Oncekv {
            args: words[4..].to_vec(),
            background,
        },
        ["cargo", "build" | "test", ..] => Kind::Cargo,
        ["maelstrom", "test", ..] => Kind::Maelstrom {
            args: words[1..].to_vec(),
        },
        ["export", ..] => {
            let assignment = words[1..].join(" ");
            let (name, value) = assignment.split_once('=').unwrap_or_else(|| {
                panic!(
                    "README section {:?}: {:?}: export without =",
                    line.section, line.text
                )
            });
            Kind::Export {
                name: name.to_string(),
                value: value.to_string(),
            }
        }
        _ => panic!(
            "README section {:?}: this test does not know how to run {:?}; teach \
             tests/readme_commands.rs (classify) what it is",
            line.section, line.text
        ),
    }
}

/// `args` with `--help` before any `--` (after it, words go to the node), the
/// shell's redirections and pipes (which are not arguments) left out.
fn with_help(args: &[String]) -> Vec<String> {
    let shell = |a: &String| a.starts_with(['>', '<', '|']) || a.starts_with("2>");
    let args = &args[..args.iter().position(shell).unwrap_or(args.len())];
    let at = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let mut out = args[..at].to_vec();
    out.push("--help".into());
    out.extend_from_slice(&args[at..]);
    out
}

/// Runs `oncekv ARGS --help`; panics with the output unless it exits 0 and
/// prints a usage line.
fn check_accepted(line: &Line, args: &[String]) {
    let out = Command::new(bin())
        .args(with_help(args))
        .stdin(Stdio::null())
        .output()
        .expect("run oncekv");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("Usage:"),
        "README section {:?}: {:?} is not accepted by the binary ({:?}):\n{}{}",
        line.section,
        line.text,
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_readme_command_is_accepted() {
    let lines = readme_lines();
    let mut checked = 0;
    for line in &lines {
        match classify(line) {
            Kind::Oncekv { args, .. } => check_accepted(line, &args),
            Kind::Maelstrom { args } => check_accepted(line, &args),
            Kind::Export { .. } | Kind::Cargo => continue,
        }
        checked += 1;
    }
    // The first section's demo is there, so the blocks were found and read.
    let first = lines
        .iter()
        .find(|l| matches!(classify(l), Kind::Oncekv { .. }))
        .expect("an oncekv command in README.md");
    assert_eq!(first.section, "First commands", "{first:?}");
    println!("{checked} README command lines accepted by the binary");
}

/// `count` consecutive free loopback ports, the first returned.
fn free_ports(count: u16) -> u16 {
    support::wait_for("free ports", Duration::from_secs(10), || {
        let first = TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let held: Option<Vec<TcpListener>> = (0..count)
            .map(|i| TcpListener::bind(("127.0.0.1", first.checked_add(i)?)).ok())
            .collect();
        held.map(|_| first)
    })
}

/// The changes the module doc lists, made to an `oncekv` command's words.
struct Rewrite {
    dir: PathBuf,
    base_port: u16,
}

impl Rewrite {
    /// A word of the README with the test's paths and ports.
    fn word(&self, w: &str) -> String {
        let mut w = w
            .replace("target/release/oncekv", bin())
            .replace("/tmp/oncekv", &self.dir.join("oncekv").to_string_lossy());
        for port in (7001..=README_PORT_LAST).rev() {
            let mine = self.base_port + (port - 7001);
            w = w.replace(&format!(":{port}"), &format!(":{mine}"));
        }
        w
    }

    /// The arguments as this test runs them.
    fn args(&self, args: &[String]) -> Vec<String> {
        let mut args: Vec<String> = args.iter().map(|a| self.word(a)).collect();
        match args.first().map(String::as_str) {
            Some("demo") => set_flag(&mut args, "--time-limit", SHORT_TIME_LIMIT),
            Some("test") => {
                set_flag(&mut args, "--time-limit", SHORT_TIME_LIMIT);
                // Jepsen's stats checker wants an ok op of every kind: at the
                // default 5/s, 2 s may hold no successful cas.
                if flag(&args, "--rate").is_none() {
                    set_flag(&mut args, "--rate", SHORT_RATE);
                }
            }
            Some("sim") if args.iter().any(|a| a == "--seeds") => {
                set_flag(&mut args, "--seeds", SHORT_SEEDS)
            }
            Some("cluster") if !args.iter().any(|a| a == "--base-port") => {
                set_flag(&mut args, "--base-port", &self.base_port.to_string())
            }
            _ => {}
        }
        args
    }
}

/// Sets `flag` to `value`, replacing the value the line gives (before any `--`).
fn set_flag(args: &mut Vec<String>, flag: &str, value: &str) {
    let end = args.iter().position(|a| a == "--").unwrap_or(args.len());
    if let Some(i) = args[..end].iter().position(|a| a == flag) {
        args[i + 1] = value.to_string();
    } else {
        args.insert(end, value.to_string());
        args.insert(end, flag.to_string());
    }
}

/// The value of `flag` in `args`, if given.
fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1).map(String::as_str)
}

/// The ports a server line listens on once it serves.
fn listen_ports(args: &[String]) -> Vec<u16> {
    match args.first().map(String::as_str) {
        Some("cluster") => {
            let nodes: u16 = flag(args, "--nodes").map_or(3, |n| n.parse().expect("--nodes"));
            let base: u16 = flag(args, "--base-port")
                .expect("--base-port set by the rewrite")
                .parse()
                .expect("--base-port");
            (0..nodes).map(|i| base + i).collect()
        }
        Some("serve") => {
            let listen = flag(args, "--listen").expect("serve --listen");
            let port = listen.rsplit(':').next().expect("host:port");
            vec![port.parse().expect("port")]
        }
        _ => Vec::new(),
    }
}

/// A process started by a README line that serves until stopped.
struct Server {
    line: Line,
    child: Child,
    log: PathBuf,
    /// `oncekv cluster` stops its nodes on SIGINT (Ctrl-C).
    interrupt: bool,
}

impl Server {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Ends the servers: SIGINT first where the README says Ctrl-C, then SIGKILL
/// for anything still running after a deadline.
fn stop(servers: &mut Vec<Server>) {
    for s in servers.iter_mut() {
        if s.interrupt {
            let _ = Command::new("kill")
                .args(["-INT", &s.child.id().to_string()])
                .status();
        } else {
            let _ = s.child.kill();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for s in servers.iter_mut() {
        while s.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = s.child.kill();
        let _ = s.child.wait();
    }
    servers.clear();
}

/// Runs one foreground line to its end (within [`LINE_TIMEOUT`]); panics with
/// its output unless it exits 0.
/// Whether a shortened `demo` or `test` run that exited 1 was judged invalid on
/// availability alone: Jepsen's stats rule wants an ok op of every kind, and 2 s
/// under partitions (the first one at once, possibly a ring that leaves no
/// majority) may hold none. Every safety check it printed must be VALID, and
/// the stats line must be what failed; full-length runs are judged whole in
/// `tests/harness_oncekv.rs`.
fn short_run_judged_on_availability_only(shell: &str, output: &str) -> bool {
    let harness = shell.contains(" demo") || shell.contains(" test ");
    let safety: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("linearizable:") || l.starts_with("exactly-once counters"))
        .collect();
    harness
        && !safety.is_empty()
        && safety.iter().all(|l| l.contains(": VALID"))
        && output.lines().any(|l| l.starts_with("stats: INVALID"))
}

/// Starts `cmd` in `dir` with `env`, no stdin, and its stdout and stderr both
/// written to the file `out_path`.
fn spawn_into(
    cmd: &mut Command,
    dir: &Path,
    env: &BTreeMap<String, String>,
    out_path: &Path,
) -> Child {
    let out = File::create(out_path).expect("output file");
    cmd.current_dir(dir)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
}

fn run_foreground(line: &Line, shell: &str, dir: &Path, env: &BTreeMap<String, String>, n: usize) {
    let out_path = dir.join(format!("line-{n}.out"));
    let mut sh = Command::new("sh");
    sh.args(["-c", shell]);
    let mut child = spawn_into(&mut sh, dir, env, &out_path);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > LINE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let tail: String = {
        let lines: Vec<&str> = output.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    match status {
        Some(s) if s.code() == Some(1) && short_run_judged_on_availability_only(shell, &output) => {
            println!(
                "ran to a verdict in {:.1} s, safe, judged on availability (a 2 s run): {}",
                started.elapsed().as_secs_f64(),
                line.text
            )
        }
        Some(s) if s.success() => println!(
            "ok in {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            line.text
        ),
        Some(s) => panic!(
            "README section {:?}: {:?} (run as {shell:?}) exited {s}:\n{tail}",
            line.section, line.text
        ),
        None => panic!(
            "README section {:?}: {:?} (run as {shell:?}) did not end within {LINE_TIMEOUT:?}:\n{tail}",
            line.section, line.text
        ),
    }
}

/// Starts a server line and waits until every port it serves accepts.
fn start_server(
    line: &Line,
    args: &[String],
    dir: &Path,
    env: &BTreeMap<String, String>,
    n: usize,
) -> Server {
    let log = dir.join(format!("line-{n}.out"));
    let mut oncekv = Command::new(bin());
    oncekv.args(args);
    let child = spawn_into(&mut oncekv, dir, env, &log);
    let mut server = Server {
        line: line.clone(),
        child,
        log,
        interrupt: args.first().is_some_and(|a| a == "cluster"),
    };
    let ports = listen_ports(args);
    let deadline = Instant::now() + SERVE_TIMEOUT;
    for port in ports {
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "README section {:?}: {:?} exited {status} before serving:\n{}",
                    line.section,
                    line.text,
                    server.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "README section {:?}: {:?} did not accept on port {port} within {SERVE_TIMEOUT:?}:\n{}",
                line.section,
                line.text,
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    println!("serving: {}", server.line.text);
    server
}

#[test]
fn readme_commands_run_as_written() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("readme-commands-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let ports = README_PORT_LAST - 7001 + 1;
    let rewrite = Rewrite {
        base_port: free_ports(ports),
        dir: dir.clone(),
    };
    println!("in {} (ports from {})", dir.display(), rewrite.base_port);
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut servers: Vec<Server> = Vec::new();
    let lines = readme_lines();
    // Whatever fails, the servers are stopped before the panic goes on.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for (n, line) in lines.iter().enumerate() {
            match classify(line) {
                Kind::Cargo | Kind::Maelstrom { .. } => println!("not run here: {}", line.text),
                Kind::Export { name, value } => {
                    let value = rewrite.word(&value);
                    let out = Command::new("sh")
                        .args(["-c", &format!("printf %s {value}")])
                        .current_dir(&dir)
                        .envs(&env)
                        .output()
                        .expect("sh");
                    assert!(
                        out.status.success() && !out.stdout.is_empty(),
                        "README section {:?}: {:?} gave nothing: {}",
                        line.section,
                        line.text,
                        String::from_utf8_lossy(&out.stderr)
                    );
                    env.insert(name, String::from_utf8_lossy(&out.stdout).into_owned());
                    println!("set: {}", line.text);
                }
                Kind::Oncekv { args, background } => {
                    let args = rewrite.args(&args);
                    let serves =
                        matches!(args.first().map(String::as_str), Some("cluster" | "serve"));
                    if serves || background {
                        servers.push(start_server(line, &args, &dir, &env, n));
                    } else {
                        let mut shell = String::from(bin());
                        for a in &args {
                            shell.push(' ');
                            shell.push_str(a);
                        }
                        run_foreground(line, &shell, &dir, &env, n);
                    }
                }
            }
        }
    }));
    stop(&mut servers);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

mod parsing {
    use super::*;

    fn line(text: &str) -> Line {
        Line {
            section: "s".into(),
            text: text.into(),
        }
    }

    #[test]
    fn comments_go_and_hashes_inside_words_stay() {
        assert_eq!(strip_comment("a b   # c # d"), "a b   ");
        assert_eq!(strip_comment("# all"), "");
        assert_eq!(strip_comment("x a#b"), "x a#b");
    }

    #[test]
    fn lines_are_classified_and_rewritten() {
        assert_eq!(
            classify(&line("cargo run --release -- sim --seeds 1000")),
            Kind::Oncekv {
                args: vec!["sim".into(), "--seeds".into(), "1000".into()],
                background: false
            }
        );
        assert_eq!(classify(&line("cargo test")), Kind::Cargo);
        assert_eq!(
            classify(&line("export K=$(cat /tmp/oncekv/cluster.key)")),
            Kind::Export {
                name: "K".into(),
                value: "$(cat /tmp/oncekv/cluster.key)".into()
            }
        );
        let Kind::Oncekv { args, background } = classify(&line(
            "target/release/oncekv serve --listen 127.0.0.1:7004 &",
        )) else {
            panic!("not oncekv")
        };
        assert!(background);
        let r = Rewrite {
            dir: PathBuf::from("/x"),
            base_port: 20000,
        };
        assert_eq!(r.args(&args), ["serve", "--listen", "127.0.0.1:20003"]);
        assert_eq!(r.word("/tmp/oncekv/n4"), "/x/oncekv/n4");
        let demo = r.args(&["demo".into()]);
        assert_eq!(demo, ["demo", "--time-limit", SHORT_TIME_LIMIT]);
        let test = r.args(&[
            "test".into(),
            "--time-limit".into(),
            "30".into(),
            "--".into(),
            "x".into(),
        ]);
        assert_eq!(
            test,
            [
                "test",
                "--time-limit",
                SHORT_TIME_LIMIT,
                "--rate",
                SHORT_RATE,
                "--",
                "x"
            ]
        );
        assert_eq!(
            with_help(&["test".into(), "--".into(), "x".into()]),
            ["test", "--help", "--", "x"]
        );
        let piped: Vec<String> = "check h | head -1".split(' ').map(String::from).collect();
        assert_eq!(with_help(&piped), ["check", "h", "--help"]);
    }
}
