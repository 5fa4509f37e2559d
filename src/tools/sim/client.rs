//! The simulated clients: the exactly-once workload. Each client numbers its
//! requests in a session (`client_id`, `seq`), sends each to a random node,
//! retries a request that timed out or got an indefinite error with the same
//! (`client_id`, `seq`) at another random node, and keeps retrying until it has
//! a definite answer. Some clients pipeline (several requests outstanding, with
//! `first_outstanding`), some start their seq near `u64::MAX`, and now and then
//! one sends a malformed or oversized line, which must be refused. Every
//! operation goes into the history the linearizability checker reads.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{World, lock, net};
use crate::tools::history::{HistoryOp, OpType, Process};

/// Keys for write/cas/read, and keys only ever added to (the counters).
pub const REGISTERS: [&str; 3] = ["r0", "r1", "r2"];
/// Keys only `add` touches: their final value must equal the sum of the adds
/// that ran.
pub const COUNTERS: [&str; 2] = ["k0", "k1"];

/// Replies awaited by message id.
type Waiting = Arc<Mutex<BTreeMap<u64, oneshot::Sender<Value>>>>;

/// One client's connection to the network: its name, inbox and the replies it
/// waits for.
struct Endpoint {
    name: String,
    waiting: Waiting,
    next_msg_id: Mutex<u64>,
}

impl Endpoint {
    fn open(world: &Arc<World>, name: String) -> Arc<Endpoint> {
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        lock(&world.net).inboxes.insert(name.clone(), tx);
        let waiting: Waiting = Arc::default();
        let w = waiting.clone();
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let Some(id) = v["body"]["in_reply_to"].as_u64() else {
                    continue;
                };
                if let Some(waiter) = lock(&w).remove(&id) {
                    let _ = waiter.send(v["body"].clone());
                }
            }
        });
        Arc::new(Endpoint {
            name,
            waiting,
            next_msg_id: Mutex::new(1),
        })
    }

    /// Sends `body` to `dest` and waits up to `timeout` for the reply.
    async fn call(
        &self,
        world: &Arc<World>,
        dest: &str,
        mut body: Value,
        timeout: Duration,
    ) -> Option<Value> {
        let id = self.next_id();
        body["msg_id"] = json!(id);
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).insert(id, tx);
        let line = json!({"src": self.name, "dest": dest, "body": body}).to_string();
        net::send(&world.net, &world.trace, &self.name, dest, line);
        let reply = tokio::time::timeout(timeout, rx).await.ok()?.ok();
        lock(&self.waiting).remove(&id);
        reply
    }

    /// The next message id of this client.
    fn next_id(&self) -> u64 {
        let mut n = lock(&self.next_msg_id);
        *n += 1;
        *n
    }

    /// Sends a line made hostile on purpose, with message id `id` when it has
    /// one, and checks the answer within a second: the error code `expected`
    /// (always a definite one: nothing of it may run), or no answer at all when
    /// the line cannot be answered (`None`: it is logged and dropped). A missing
    /// answer where one is expected is not a failure: the network may lose it.
    async fn call_hostile(
        &self,
        world: &Arc<World>,
        dest: &str,
        id: u64,
        line: String,
        expected: Option<&[u64]>,
    ) {
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).insert(id, tx);
        net::send(&world.net, &world.trace, &self.name, dest, line);
        let reply = tokio::time::timeout(HOSTILE_WAIT, rx)
            .await
            .ok()
            .and_then(|r| r.ok());
        lock(&self.waiting).remove(&id);
        let Some(reply) = reply else { return };
        let code = (reply["type"] == "error")
            .then(|| reply["code"].as_u64())
            .flatten();
        let fine = matches!((expected, code), (Some(codes), Some(c)) if codes.contains(&c));
        if !fine {
            world.fail(format!(
                "a hostile line to {dest} was answered {reply}; expected {}",
                expected.map_or("no answer".to_string(), |c| format!("error {c:?}"))
            ));
        }
    }
}

/// How long a hostile line's answer is waited for.
const HOSTILE_WAIT: Duration = Duration::from_secs(1);

/// A client's session: its id and next seq, shared by its pipeline slots.
struct Session {
    base: String,
    generation: u64,
    next_seq: Option<u64>,
    /// Seqs sent and not yet answered definitely.
    outstanding: std::collections::BTreeSet<u64>,
    pipelining: bool,
}

impl Session {
    fn client_id(&self) -> String {
        format!("{}-{}", self.base, self.generation)
    }

    /// Moves to a new session id (after 1000, or when seq would overflow); three
    /// new sessions in ten start near `u64::MAX`.
    fn renew(&mut self, rng: &mut StdRng) {
        self.generation += 1;
        self.outstanding.clear();
        let high = rng.gen_bool(0.3);
        self.next_seq = Some(first_seq(high, rng));
    }

    /// The next seq, or `None` when the session's seqs are used up.
    fn take_seq(&mut self) -> Option<u64> {
        let seq = self.next_seq?;
        self.next_seq = seq.checked_add(1);
        self.outstanding.insert(seq);
        Some(seq)
    }
}

fn first_seq(high: bool, rng: &mut StdRng) -> u64 {
    if high {
        u64::MAX - rng.gen_range(0..6)
    } else {
        rng.gen_range(0..3)
    }
}

/// What one operation does.
#[derive(Debug, Clone)]
enum Op {
    Read(&'static str),
    Write(&'static str, i64),
    Cas(&'static str, i64, i64),
    Add(&'static str, i64),
}

impl Op {
    fn f(&self) -> &'static str {
        match self {
            Op::Read(_) => "read",
            Op::Write(..) => "write",
            Op::Cas(..) => "cas",
            Op::Add(..) => "add",
        }
    }

    fn key(&self) -> &'static str {
        match self {
            Op::Read(k) | Op::Write(k, _) | Op::Cas(k, ..) | Op::Add(k, _) => k,
        }
    }

    fn invoke_value(&self) -> Value {
        match self {
            Op::Read(_) => Value::Null,
            Op::Write(_, v) => json!(v),
            Op::Cas(_, a, b) => json!([a, b]),
            Op::Add(_, d) => json!(d),
        }
    }

    fn body(&self) -> Value {
        match self {
            Op::Read(k) => json!({"type": "read", "key": k}),
            Op::Write(k, v) => json!({"type": "write", "key": k, "value": v}),
            Op::Cas(k, a, b) => json!({"type": "cas", "key": k, "from": a, "to": b}),
            Op::Add(k, d) => json!({"type": "add", "key": k, "delta": d}),
        }
    }
}

/// Starts every client; they stop taking new work at `world.stop`.
pub fn spawn_all(world: &Arc<World>, _fault_end: u64) -> Vec<JoinHandle<()>> {
    let mut handles = Vec::new();
    for c in 0..world.opts.clients {
        let mut rng = world.fork_rng();
        let pipelining = rng.gen_bool(0.4);
        let high_start = rng.gen_bool(0.3);
        let first = first_seq(high_start, &mut rng);
        let session = Arc::new(Mutex::new(Session {
            base: format!("c{c}"),
            generation: 0,
            next_seq: Some(first),
            outstanding: Default::default(),
            pipelining,
        }));
        let slots = if pipelining { 3 } else { 1 };
        for slot in 0..slots {
            let world = world.clone();
            let session = session.clone();
            let rng = world.fork_rng();
            let process = (c * 10 + slot) as u64;
            let endpoint = Endpoint::open(&world, format!("c{c}s{slot}"));
            handles.push(tokio::spawn(async move {
                worker(world, session, endpoint, rng, process).await;
            }));
        }
    }
    handles
}

/// One client worker: operations one after the other until told to stop.
async fn worker(
    world: Arc<World>,
    session: Arc<Mutex<Session>>,
    endpoint: Arc<Endpoint>,
    mut rng: StdRng,
    process: u64,
) {
    let mut written = 0i64;
    while !world.stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..60))).await;
        if rng.gen_ratio(1, 50) {
            hostile(&world, &endpoint, &mut rng).await;
            continue;
        }
        written += 1;
        let unique = (process as i64) * 1_000_000 + written;
        let op = match rng.gen_range(0..10) {
            0..=2 => Op::Read(pick(&REGISTERS, &mut rng)),
            3..=4 => Op::Write(pick(&REGISTERS, &mut rng), unique),
            5..=6 => {
                let from = if rng.gen_bool(0.5) {
                    rng.gen_range(0..3)
                } else {
                    unique - 1
                };
                Op::Cas(pick(&REGISTERS, &mut rng), from, unique)
            }
            7 => Op::Read(pick(&COUNTERS, &mut rng)),
            _ => Op::Add(pick(&COUNTERS, &mut rng), rng.gen_range(-2..6)),
        };
        perform(&world, &session, &endpoint, &mut rng, process, op).await;
    }
}

fn pick(keys: &[&'static str], rng: &mut StdRng) -> &'static str {
    keys[rng.gen_range(0..keys.len())]
}

/// A line no node may act on: it must be refused with a definite error (or be
/// lost by the network), never crash anything.
async fn hostile(world: &Arc<World>, endpoint: &Arc<Endpoint>, rng: &mut StdRng) {
    let dest = world.names[rng.gen_range(0..world.names.len())].clone();
    let src = &endpoint.name;
    let id = endpoint.next_id();
    let head = format!("{{\"src\":\"{src}\",\"dest\":\"{dest}\",\"body\":");
    // Each line, and the answer the protocol promises for it.
    const MALFORMED: &[u64] = &[12];
    let (line, expected): (String, Option<&[u64]>) = match rng.gen_range(0..6) {
        // Cut short before its msg_id: not answerable.
        0 => (format!("{head}{{\"type\":\"write\""), None),
        // A number JSON cannot hold exactly.
        1 => (
            format!(
                "{head}{{\"type\":\"add\",\"msg_id\":{id},\"key\":\"k0\",\"delta\":1e400,\
                 \"client_id\":\"x\",\"seq\":1}}}}"
            ),
            Some(MALFORMED),
        ),
        // Past the request limit.
        2 => (
            format!(
                "{head}{{\"type\":\"write\",\"msg_id\":{id},\"key\":\"r0\",\"value\":\"{}\"}}}}",
                "x".repeat(world.config.request_bytes_max + 10)
            ),
            Some(MALFORMED),
        ),
        // A negative seq.
        3 => (
            format!(
                "{head}{{\"type\":\"add\",\"msg_id\":{id},\"key\":\"k0\",\"delta\":1,\
                 \"client_id\":\"c9\",\"seq\":-1}}}}"
            ),
            Some(MALFORMED),
        ),
        // A peer's RPC from a client: refused as not supported, or as malformed.
        4 => (
            format!("{head}{{\"type\":\"raft_vote\",\"msg_id\":{id},\"rpc\":{{}}}}}}"),
            Some(&[10, 12]),
        ),
        // Not JSON at all.
        _ => ("\u{0}\u{ff}not json at all".to_string(), None),
    };
    world.event(format_args!("client {src} sends a hostile line to {dest}"));
    endpoint
        .call_hostile(world, &dest, id, line, expected)
        .await;
}

/// Runs one operation to a definite answer (or until the run gives up on it),
/// recording its invocation and completion.
async fn perform(
    world: &Arc<World>,
    session: &Arc<Mutex<Session>>,
    endpoint: &Arc<Endpoint>,
    rng: &mut StdRng,
    process: u64,
    op: Op,
) {
    let sessioned = !matches!(op, Op::Read(_));
    let (client_id, seq) = if sessioned {
        let (taken, closed) = {
            let mut s = lock(session);
            match s.take_seq() {
                Some(seq) => ((s.client_id(), seq), None),
                None => {
                    // Seqs used up: close this session (best effort), open another.
                    let old = s.client_id();
                    s.renew(rng);
                    let seq = s.take_seq().expect("a fresh session has seqs");
                    ((s.client_id(), seq), Some(old))
                }
            }
        };
        // Half the clients close a used-up session; the rest leave it to GC.
        if let Some(old) = closed.filter(|_| rng.gen_bool(0.5)) {
            let dest = world.names[rng.gen_range(0..world.names.len())].clone();
            let body = json!({"type": "close_session", "client_id": old});
            let reply = endpoint
                .call(world, &dest, body, world.config.request_timeout())
                .await;
            world.event(format_args!(
                "client {} closes {old}: {reply:?}",
                endpoint.name
            ));
        }
        (Some(taken.0), Some(taken.1))
    } else {
        (None, None)
    };
    let mut body = op.body();
    if let (Some(c), Some(q)) = (&client_id, seq) {
        body["client_id"] = json!(c);
        body["seq"] = json!(q);
    }
    world.record(HistoryOp {
        process: Process::Client(process),
        kind: OpType::Invoke,
        f: op.f().to_string(),
        key: Some(json!(op.key())),
        value: op.invoke_value(),
        time: world.now_ns(),
        error: None,
        client_id: client_id.clone(),
        seq,
    });
    let timeout = world.config.request_timeout() + Duration::from_millis(500);
    let (kind, value, error) = loop {
        if world.give_up.load(Ordering::SeqCst) {
            break (
                OpType::Info,
                Value::Null,
                Some((-1, "run ended".to_string())),
            );
        }
        if sessioned {
            let s = lock(session);
            if s.pipelining {
                let fo = s.outstanding.first().copied().unwrap_or(seq.unwrap_or(0));
                body["first_outstanding"] = json!(fo);
            }
        }
        let dest = world.names[rng.gen_range(0..world.names.len())].clone();
        let reply = endpoint.call(world, &dest, body.clone(), timeout).await;
        let Some(reply) = reply else {
            continue;
        };
        match (reply["type"].as_str(), reply["code"].as_i64()) {
            (Some("read_ok"), _) => break (OpType::Ok, reply["value"].clone(), None),
            (Some("write_ok" | "cas_ok"), _) => break (OpType::Ok, op.invoke_value(), None),
            (Some("add_ok"), _) => break (OpType::Ok, reply["value"].clone(), None),
            (Some("error"), Some(code @ (20 | 22))) => {
                let text = reply["text"].as_str().unwrap_or("").to_string();
                break (OpType::Fail, op.invoke_value(), Some((code, text)));
            }
            (Some("error"), Some(code @ (1000 | 1001))) => {
                let text = reply["text"].as_str().unwrap_or("").to_string();
                if code == 1000 {
                    let mut s = lock(session);
                    if Some(s.client_id()) == client_id {
                        s.renew(rng);
                    }
                }
                break (OpType::Info, op.invoke_value(), Some((code, text)));
            }
            (Some("error"), Some(0 | 11 | 13)) => {
                tokio::time::sleep(Duration::from_millis(rng.gen_range(10..100))).await;
            }
            _ => {
                world.fail(format!(
                    "{}: unexpected reply to a valid {} from {dest}: {reply}",
                    endpoint.name,
                    op.f()
                ));
                break (OpType::Info, op.invoke_value(), None);
            }
        }
    };
    if let Some(q) = seq {
        lock(session).outstanding.remove(&q);
    }
    let mut stats = lock(&world.stats);
    match kind {
        OpType::Ok => stats.ops_ok += 1,
        OpType::Fail => stats.ops_fail += 1,
        _ => stats.ops_info += 1,
    }
    drop(stats);
    world.event(format_args!(
        "client {} {} {} -> {kind:?} {value}",
        endpoint.name,
        op.f(),
        op.key()
    ));
    world.record(HistoryOp {
        process: Process::Client(process),
        kind,
        f: op.f().to_string(),
        key: Some(json!(op.key())),
        value,
        time: world.now_ns(),
        error,
        client_id,
        seq,
    });
}

/// After convergence: one read of every key, so a lost write cannot hide.
pub async fn final_reads(world: &Arc<World>) {
    let endpoint = Endpoint::open(world, "cfinal".to_string());
    let session = Arc::new(Mutex::new(Session {
        base: "cfinal".into(),
        generation: 0,
        next_seq: Some(1),
        outstanding: Default::default(),
        pipelining: false,
    }));
    let mut rng = world.fork_rng();
    for key in REGISTERS.iter().chain(COUNTERS.iter()) {
        perform(world, &session, &endpoint, &mut rng, 9_999, Op::Read(key)).await;
    }
}
