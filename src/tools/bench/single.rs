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
use std::time::{Duration, Instant};

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
    /// Idle sessions that GC expires in the GC-stall figure (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    pub gc_sessions: usize,
    /// Sessions (each with a cached reply) in the snapshot-cost figure (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    pub snapshot_sessions: usize,
}

/// What a snapshot of a large state costs, on the pure state machine: the copy
/// taken while applies wait, then (without the lock) the encoding, and the
/// decoding a follower or a restart does.
#[derive(Debug, Clone)]
pub struct SnapshotCost {
    /// Live sessions in the state, each with one cached reply.
    pub sessions: usize,
    /// Bytes of the snapshot.
    pub bytes: usize,
    /// The copy of the state a snapshot encodes (applies wait for it).
    pub copy: Duration,
    /// The longest apply of 1,000 session writes right after the copy, while
    /// the copy is still held (what a copy shared with the live state costs).
    pub apply_after_copy_max: Duration,
    /// Encoding the copy.
    pub encode: Duration,
    /// Decoding the bytes, indexes rebuilt.
    pub decode: Duration,
}

/// Measures [`SnapshotCost`] over `n` sessions.
pub fn snapshot_cost(n: usize) -> SnapshotCost {
    let mut state = sessions_state(n);
    let t = Instant::now();
    let copy = state.snapshot_copy();
    let copy_time = t.elapsed();
    let mut apply_after_copy_max = Duration::ZERO;
    for i in 0..1_000u64 {
        let index = n as u64 + 1 + i;
        // Spread over the table, as many clients' writes would be.
        let client = format!("idle-{}", (i as usize * 7919) % n.max(1));
        let cmd = Command::new(index, session_write(i, client, 2));
        let t = Instant::now();
        state.apply(index, &cmd);
        apply_after_copy_max = apply_after_copy_max.max(t.elapsed());
    }
    let t = Instant::now();
    let bytes = copy.to_snapshot();
    let encode = t.elapsed();
    drop(copy);
    let t = Instant::now();
    let back = State::from_snapshot(&bytes).expect("a snapshot decodes");
    let decode = t.elapsed();
    assert_eq!(back.sessions.len(), state.sessions.len());
    SnapshotCost {
        sessions: n,
        bytes: bytes.len(),
        copy: copy_time,
        apply_after_copy_max,
        encode,
        decode,
    }
}

/// How long applying GC holds up the entries behind it, on the pure state
/// machine: one unbounded entry against entries bounded as the node bounds
/// them, beside a session write's apply time in the same state.
#[derive(Debug, Clone)]
pub struct GcStall {
    /// Idle sessions expired.
    pub sessions: usize,
    /// The bound per entry (`Config::gc_sessions_per_entry_max`).
    pub max: u64,
    /// Applying one entry without a bound (format version 1) that expires all.
    pub unbounded: Duration,
    /// Bounded entries needed to expire all.
    pub entries: usize,
    /// The median, 99th percentile and longest apply among them.
    pub bounded: [Duration; 3],
    /// The 99th percentile of applying one session write in the same state.
    pub write_p99: Duration,
}

/// Write number `i` (key `w{i % 64}`, value `i`) as request `seq` of `client`.
fn session_write(i: u64, client: String, seq: u64) -> Op {
    Op::Kv {
        kv: crate::state::KvOp::Write {
            key: format!("\"w{}\"", i % 64),
            value: json!(i),
        },
        session: Some(crate::state::SessionRef {
            client_id: client,
            seq,
            first_outstanding: None,
        }),
    }
}

/// A state with `n` sessions, each with one cached reply (an add), all last
/// seen before time `n + 1`.
fn sessions_state(n: usize) -> State {
    let limits = SessionLimits {
        sessions_max: n as u64 + 20_000,
        ..SessionLimits::default()
    };
    let mut state = State::new(limits);
    for i in 0..n {
        let op = Op::Kv {
            kv: crate::state::KvOp::Add {
                key: format!("\"k{}\"", i % 64),
                delta: 1,
            },
            session: Some(crate::state::SessionRef {
                client_id: format!("idle-{i}"),
                seq: 1,
                first_outstanding: None,
            }),
        };
        state.apply(i as u64 + 1, &Command::new(i as u64 + 1, op));
    }
    state
}

/// Measures [`GcStall`] over `n` idle sessions, `max` per bounded entry.
pub fn gc_stall(n: usize, max: u64) -> GcStall {
    let cutoff_ms = n as u64 + 1;
    let mut index = n as u64 + 1;
    let mut state = sessions_state(n);
    // Session writes of live clients, stamped after the cut-off (never expired).
    let mut write_times = Vec::with_capacity(10_000);
    for i in 0..10_000u64 {
        index += 1;
        let op = session_write(i, format!("live-{}", i % 100), i / 100 + 1);
        let cmd = Command::new(cutoff_ms + 1 + i, op);
        let t = Instant::now();
        state.apply(index, &cmd);
        write_times.push(t.elapsed());
    }
    write_times.sort();
    let write_p99 = write_times[write_times.len() * 99 / 100];
    let gc = |max| Command::new(cutoff_ms + 20_000, Op::Gc { cutoff_ms, max });
    let mut unbounded_state = state.clone();
    let t = Instant::now();
    unbounded_state.apply(index + 1, &gc(None));
    let unbounded = t.elapsed();
    drop(unbounded_state);
    let mut times = Vec::new();
    while state
        .sessions
        .oldest_last_seen_ms()
        .is_some_and(|o| o < cutoff_ms)
    {
        index += 1;
        let t = Instant::now();
        state.apply(index, &gc(Some(max)));
        times.push(t.elapsed());
    }
    times.sort();
    let at = |q: usize| times.get((times.len() * q / 100).min(times.len().saturating_sub(1)));
    let bounded = [
        at(50).copied().unwrap_or_default(),
        at(99).copied().unwrap_or_default(),
        times.last().copied().unwrap_or_default(),
    ];
    GcStall {
        sessions: n,
        max,
        unbounded,
        entries: times.len(),
        bounded,
        write_p99,
    }
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
    if args.gc_sessions > 0 {
        let max = crate::config::Config::default().gc_sessions_per_entry_max;
        let g = gc_stall(args.gc_sessions, max);
        writeln!(
            out,
            "GC apply stall, state machine alone, {} idle sessions with a cached reply each:",
            g.sessions
        )?;
        writeln!(
            out,
            "  one unbounded entry (format 1) expiring all: {:.1} ms",
            g.unbounded.as_secs_f64() * 1e3
        )?;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        writeln!(
            out,
            "  bounded to {} per entry: {} entries, apply median {:.3} ms, p99 {:.3} ms, longest {:.3} ms",
            g.max,
            g.entries,
            ms(g.bounded[0]),
            ms(g.bounded[1]),
            ms(g.bounded[2])
        )?;
        writeln!(
            out,
            "  a session write's apply in the same state: p99 {:.1} us",
            g.write_p99.as_secs_f64() * 1e6
        )?;
    }
    if args.snapshot_sessions > 0 {
        let c = snapshot_cost(args.snapshot_sessions);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        writeln!(
            out,
            "snapshot, state machine alone, {} sessions with a cached reply each ({} bytes):",
            c.sessions, c.bytes
        )?;
        writeln!(
            out,
            "  copy while applies wait: {:.1} ms; longest of 1,000 session writes applied after it: {:.3} ms",
            ms(c.copy),
            ms(c.apply_after_copy_max)
        )?;
        writeln!(
            out,
            "  encode (off the lock): {:.0} ms; decode with indexes: {:.0} ms",
            ms(c.encode),
            ms(c.decode)
        )?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The GC-stall figure expires every idle session in ceil(n / max) bounded
    /// entries and none of the live writers (timings are printed, not checked).
    #[test]
    fn gc_stall_expires_the_idle_sessions_in_bounded_entries() {
        let g = gc_stall(2_500, 1_000);
        assert_eq!(g.entries, 3);
        assert_eq!((g.sessions, g.max), (2_500, 1_000));
        let state = sessions_state(10);
        assert_eq!(state.sessions.len(), 10);
        assert_eq!(state.sessions.oldest_last_seen_ms(), Some(1));
    }
}
