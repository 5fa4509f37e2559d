//! `oncekv bench`: throughput of a single-node cluster over stdin against a no-consensus
//! baseline measured in the same run, and memory per idle session.
//!
//! Figures are ratios against the peer run in the same invocation (these machines
//! are noisy); absolute numbers are printed for context only.
//!
//! It drives the real binary over stdin/stdout; the baseline uses the product's
//! [`crate::protocol`] and [`crate::state`] directly. It may not touch the node's
//! internals.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command as Process, Stdio};
use std::time::Instant;

use serde_json::json;

use crate::protocol::{Body, Reply, ReplyBody, Request, encode, parse_line};
use crate::state::{ClientId, Command, Op, SessionLimits, State};

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Requests to pipe through the node.
    #[arg(long, default_value_t = 200_000)]
    pub requests: usize,
    /// Distinct clients (sessions) issuing them.
    #[arg(long, default_value_t = 1_000)]
    pub clients: usize,
    /// Sessions to create for the memory figure.
    #[arg(long, default_value_t = 1_000_000)]
    pub sessions: usize,
}

/// The request lines: session-carrying adds and writes, clients interleaved.
pub fn workload(requests: usize, clients: usize) -> Vec<String> {
    let init = json!({"src":"c0","dest":"n0","body":{"type":"init","msg_id":1,"node_id":"n0","node_ids":["n0"]}});
    let mut lines = vec![init.to_string()];
    for i in 0..requests {
        let client = i % clients;
        let seq = i / clients + 1;
        let key = i % 64;
        let body = if i % 2 == 0 {
            json!({"type":"add","key":key,"delta":1,"client_id":format!("c{}", client + 1),"seq":seq,"msg_id":i + 2})
        } else {
            json!({"type":"write","key":key,"value":i,"client_id":format!("c{}", client + 1),"seq":seq,"msg_id":i + 2})
        };
        lines.push(json!({"src":format!("c{}", client + 1),"dest":"n0","body":body}).to_string());
    }
    lines
}

/// Parses, applies to the pure state machine and serializes every request: the cost
/// of the work without consensus, I/O or concurrency. Returns requests/s.
pub fn baseline(lines: &[String]) -> f64 {
    let start = Instant::now();
    let mut state = State::new(SessionLimits::default());
    let mut sink = Vec::with_capacity(lines.len() * 64);
    for (i, line) in lines.iter().enumerate().skip(1) {
        let Ok(msg) = parse_line(line) else { continue };
        let Body::Request(Request::Mutate { op, session }) = msg.body else {
            continue;
        };
        let cmd = Command::new(i as u64, Op::Kv { kv: op, session });
        let reply = Reply::from(state.apply(i as u64, &cmd));
        let out = encode(
            "n0",
            &msg.src,
            ReplyBody {
                reply: &reply,
                in_reply_to: msg.msg_id.unwrap_or(0),
                msg_id: i as u64,
            },
        );
        sink.extend_from_slice(out.as_bytes());
        sink.push(b'\n');
    }
    std::hint::black_box(&sink);
    (lines.len() - 1) as f64 / start.elapsed().as_secs_f64()
}

/// Pipes every line into a fresh single-node `oncekv` and waits for every reply.
/// Returns requests/s from the first byte written to the last reply read.
pub fn through_node(bin: &std::path::Path, lines: &[String]) -> anyhow::Result<f64> {
    let mut child = Process::new(bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut reader = BufReader::new(stdout);
    // Wait for init_ok first: the cluster's start-up is not request throughput.
    let mut first = String::new();
    stdin.write_all(lines[0].as_bytes())?;
    stdin.write_all(b"\n")?;
    stdin.flush()?;
    reader.read_line(&mut first)?;
    anyhow::ensure!(first.contains("init_ok"), "no init_ok: {first}");
    let payload: String = lines[1..].iter().flat_map(|l| [l.as_str(), "\n"]).collect();
    let start = Instant::now();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        stdin.write_all(payload.as_bytes())?;
        drop(stdin);
        Ok(())
    });
    let mut ok = 0usize;
    let mut line = String::new();
    for _ in 1..lines.len() {
        line.clear();
        anyhow::ensure!(reader.read_line(&mut line)? > 0, "node closed stdout early");
        if line.contains("_ok\"") {
            ok += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "node exited with {status}");
    anyhow::ensure!(
        ok == lines.len() - 1,
        "only {ok} of {} requests succeeded",
        lines.len() - 1
    );
    Ok((lines.len() - 1) as f64 / secs)
}

/// Resident memory of this process in bytes (Linux `/proc/self/statm`).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Bytes of resident memory per idle session (no cached reply), over `n` sessions.
pub fn bytes_per_session(n: usize) -> Option<f64> {
    let limits = SessionLimits {
        sessions_max: n as u64 + 1,
        ..SessionLimits::default()
    };
    let mut state = State::new(limits);
    let before = rss_bytes()?;
    for i in 0..n {
        state
            .sessions
            .open(ClientId::from(format!("client-{i}")), i as u64, &limits);
    }
    let after = rss_bytes()?;
    std::hint::black_box(&state);
    Some((after.saturating_sub(before)) as f64 / n as f64)
}

/// Runs the benchmark and writes the report to `out`.
pub fn run(args: &BenchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    // Memory first, in a fresh heap: freed pages from later runs would hide growth.
    let memory = bytes_per_session(args.sessions);
    let bin = std::env::current_exe()?;
    match memory {
        Some(bytes) => writeln!(
            out,
            "  memory per idle session at {} sessions: {bytes:.0} bytes (RSS delta)",
            args.sessions
        )?,
        None => writeln!(
            out,
            "  memory per idle session: unavailable (no /proc/self/statm)"
        )?,
    }

    let lines = workload(args.requests, args.clients);
    writeln!(
        out,
        "oncekv bench: {} session-carrying requests (add/write) from {} clients",
        args.requests, args.clients
    )?;
    // Interleave runs so drift in machine load hits both sides alike.
    let mut node = Vec::new();
    let mut base = Vec::new();
    for _ in 0..3 {
        base.push(baseline(&lines));
        node.push(through_node(&bin, &lines)?);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (n, b) = (median(&mut node), median(&mut base));
    writeln!(
        out,
        "  single-node cluster over stdin: {n:>10.0} req/s (median of 3)"
    )?;
    writeln!(
        out,
        "  baseline (parse+apply+serialize, no consensus): {b:>10.0} req/s (median of 3)"
    )?;
    writeln!(out, "  ratio node/baseline: {:.3}", n / b)?;
    out.flush()?;
    Ok(())
}
