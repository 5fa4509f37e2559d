//! Maelstrom's services (`src/maelstrom/service.clj`, `db.clj`): `lin-kv`, `seq-kv`,
//! `lww-kv` and `lin-tso`, endpoints on the simulated network that any node may send
//! RPCs to, from before its `init` until the nodes are stopped.
//!
//! What each reproduces (`docs/testing.md`, "Maelstrom's services", says the same):
//! - `lin-kv`: one map; `read`, `write`, `cas` (with `create_if_not_exists`) applied in
//!   arrival order, so linearizable.
//! - `seq-kv`: Maelstrom's `sequential` wrapper around the same map. The last
//!   [`ServiceLimits::seq_kv_states_kept`] states are kept; each client (message `src`)
//!   remembers the newest state it has seen. A request is tried on a state drawn
//!   uniformly between that one and the latest; if it leaves that state as it was
//!   (a read, a failed cas, a write of the value already there) it is answered from
//!   it, stale as it may be; otherwise it is applied to the latest state, making a new
//!   one. Each client thus sees a monotonic order, and writes are never lost.
//! - `lww-kv`: Maelstrom's `eventual` wrapper: [`ServiceLimits::lww_kv_replicas`]
//!   replicas, each request handled by one drawn at random. Maelstrom computes a merge
//!   of two random replicas on every request but then applies the request to the
//!   unmerged vector (the second `replicas'` binding shadows the first), so its
//!   replicas never converge; this reproduces that, so a write lands on one replica
//!   and reads see it about half the time. Its `cas` ignores `create_if_not_exists`.
//! - `lin-tso`: `ts` answers `ts_ok` with 0, 1, 2, ...
//!
//! Replies carry `in_reply_to` (the request's `msg_id`, `null` without one) and no
//! `msg_id`, as Maelstrom's `service-thread` sends them. Errors: 20 key-does-not-exist,
//! 22 precondition-failed as Maelstrom's; beyond it (where Maelstrom's handler throws
//! and sends nothing), an unknown `type` gets 10 not-supported and requests past the
//! limits below get 12 (too long) or 11 (the service is full). A request of an
//! unknown type without a `msg_id` is dropped: there is nothing to answer.
//!
//! It may not touch processes: it reads its queue on the network and sends replies.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Map, Value};
use tokio::task::JoinHandle;

use super::net::Net;
use super::seed::derive_rng;

/// Maelstrom's linearizable key-value service.
pub const LIN_KV: &str = "lin-kv";
/// Maelstrom's sequentially consistent key-value service.
pub const SEQ_KV: &str = "seq-kv";
/// Maelstrom's last-write-wins (eventually consistent) key-value service.
pub const LWW_KV: &str = "lww-kv";
/// Maelstrom's linearizable timestamp oracle.
pub const LIN_TSO: &str = "lin-tso";
/// Every service, as `default-services` in `service.clj` names them.
pub const NAMES: [&str; 4] = [LIN_KV, SEQ_KV, LWW_KV, LIN_TSO];

/// Bounds on what a node can make a service hold. Maelstrom has none; a hostile or
/// buggy node must not be able to exhaust the harness's memory through a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceLimits {
    /// A request whose line (the whole message as delivered) is longer is answered with
    /// error 12 and not applied. 1 MiB, the request limit of oncekv's own protocol:
    /// far above what Maelstrom's tutorials store in one value.
    pub request_bytes_max: usize,
    /// Distinct keys one key-value service may hold (over all its replicas); a
    /// request that would add one more is answered with error 11 and not applied.
    pub state_keys_max: usize,
    /// Bytes (canonical JSON of key plus value, per stored version or replica copy)
    /// one key-value service may hold; past it, error 11 as above. Together with
    /// `state_keys_max` this bounds a service's memory, `seq-kv`'s kept states included.
    pub state_bytes_max: usize,
    /// States `seq-kv` keeps for stale answers (`service.clj` `sequential`: 32).
    pub seq_kv_states_kept: usize,
    /// Replicas `lww-kv` simulates (`service.clj` `eventual`: 2; its docs say 5, its
    /// code says 2).
    pub lww_kv_replicas: usize,
}

impl Default for ServiceLimits {
    fn default() -> Self {
        ServiceLimits {
            request_bytes_max: 1 << 20,
            state_keys_max: 100_000,
            state_bytes_max: 64 << 20,
            seq_kv_states_kept: 32,
            lww_kv_replicas: 2,
        }
    }
}

impl ServiceLimits {
    /// Checks the relations the services rely on.
    pub fn validate(&self) -> Result<(), String> {
        if self.seq_kv_states_kept == 0 || self.lww_kv_replicas == 0 {
            return Err("seq_kv_states_kept and lww_kv_replicas must be positive".into());
        }
        if self.state_keys_max == 0 || self.request_bytes_max == 0 {
            return Err("service limits must be positive".into());
        }
        // One request's value must fit in a service, or a node could never store it.
        if self.state_bytes_max < self.request_bytes_max {
            return Err("state_bytes_max must be at least request_bytes_max".into());
        }
        Ok(())
    }
}

/// A key-value request, parsed as `service.clj` reads it: a missing field is `nil`.
#[derive(Debug, Clone, PartialEq)]
enum KvOp {
    Read,
    Write(Value),
    Cas {
        from: Value,
        to: Value,
        /// Clojure truthiness: anything but `null` and `false`.
        create: bool,
    },
}

/// What a request does to one key's entry.
#[derive(Debug, Clone, PartialEq)]
enum Effect {
    Keep,
    Set(Value),
}

fn error(code: u64, text: impl Into<String>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("type".into(), "error".into());
    m.insert("code".into(), code.into());
    m.insert("text".into(), text.into().into());
    m
}

fn reply(kind: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("type".into(), kind.into());
    m
}

fn key_missing() -> Map<String, Value> {
    error(20, "key does not exist")
}

/// `PersistentKV`'s (and, with `lww`, `LWWKV`'s) `handle` on one key's current value.
fn kv_apply(cur: Option<&Value>, op: &KvOp, lww: bool) -> (Effect, Map<String, Value>) {
    match op {
        KvOp::Read => match cur {
            Some(v) => {
                let mut m = reply("read_ok");
                m.insert("value".into(), v.clone());
                (Effect::Keep, m)
            }
            None => (Effect::Keep, key_missing()),
        },
        KvOp::Write(v) => (Effect::Set(v.clone()), reply("write_ok")),
        KvOp::Cas { from, to, create } => match cur {
            Some(v) if v == from => (Effect::Set(to.clone()), reply("cas_ok")),
            Some(v) => (
                Effect::Keep,
                error(22, format!("current value {v} is not {from}")),
            ),
            None if *create && !lww => (Effect::Set(to.clone()), reply("cas_ok")),
            None => (Effect::Keep, key_missing()),
        },
    }
}

/// Whether `effect` changes an entry whose value is `cur` (Clojure's `=` on the state).
fn changes(cur: Option<&Value>, effect: &Effect) -> bool {
    match effect {
        Effect::Keep => false,
        Effect::Set(v) => cur != Some(v),
    }
}

/// A map key: the key's canonical JSON (objects' keys sorted), so equal JSON values
/// are equal keys; `1` and `1.0` differ, as they do in Clojure's maps.
fn key_of(body: &Map<String, Value>) -> String {
    serde_json::to_string(body.get("key").unwrap_or(&Value::Null)).unwrap_or_default()
}

fn field(body: &Map<String, Value>, k: &str) -> Value {
    body.get(k).cloned().unwrap_or(Value::Null)
}

fn value_bytes(v: &Value) -> usize {
    serde_json::to_string(v).map(|s| s.len()).unwrap_or(0)
}

/// Memory accounting shared by a service's maps.
#[derive(Debug, Default)]
struct Usage {
    keys: usize,
    bytes: usize,
}

impl Usage {
    /// Whether adding `new_keys` keys and `bytes` bytes stays within `limits`; if not,
    /// the error that refuses the request.
    fn admit(
        &self,
        new_keys: usize,
        bytes: usize,
        limits: &ServiceLimits,
        name: &str,
    ) -> Result<(), Map<String, Value>> {
        if self.keys + new_keys > limits.state_keys_max {
            return Err(error(
                11,
                format!(
                    "{name} holds {} keys, its limit (harness limit state_keys_max)",
                    self.keys
                ),
            ));
        }
        if self.bytes + bytes > limits.state_bytes_max {
            return Err(error(
                11,
                format!(
                    "{name} would hold {} bytes, over its limit of {} (harness limit state_bytes_max)",
                    self.bytes + bytes,
                    limits.state_bytes_max
                ),
            ));
        }
        Ok(())
    }
}

/// One map from canonical keys to values (a `lin-kv`, or one `lww-kv` replica).
#[derive(Debug, Default)]
struct Kv {
    map: HashMap<String, Value>,
}

impl Kv {
    /// Applies `op` to `key`, charging `usage`; refuses what would break `limits`.
    fn handle(
        &mut self,
        key: String,
        op: &KvOp,
        lww: bool,
        usage: &mut Usage,
        limits: &ServiceLimits,
        name: &str,
    ) -> Map<String, Value> {
        let cur = self.map.get(&key);
        let (effect, res) = kv_apply(cur, op, lww);
        if let Effect::Set(v) = effect
            && changes(cur, &Effect::Set(v.clone()))
        {
            let add = key.len() + value_bytes(&v);
            let (new_keys, old) = match cur {
                Some(old) => (0, key.len() + value_bytes(old)),
                None => (1, 0),
            };
            let rest = Usage {
                keys: usage.keys,
                bytes: usage.bytes - old,
            };
            if let Err(e) = rest.admit(new_keys, add, limits, name) {
                return e;
            }
            usage.keys += new_keys;
            usage.bytes = rest.bytes + add;
            self.map.insert(key, v);
        }
        res
    }
}

/// `seq-kv`: per key, its versions as (state index, value), oldest first. The value of
/// a key in state `i` is its last version at or before `i`; versions older than the
/// oldest kept state are dropped but for the last of them.
#[derive(Debug, Default)]
struct SeqKv {
    versions: HashMap<String, VecDeque<(u64, Value)>>,
    last_index: u64,
    clients: HashMap<String, u64>,
}

impl SeqKv {
    fn value_at(&self, key: &str, index: u64) -> Option<&Value> {
        self.versions
            .get(key)?
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map(|(_, v)| v)
    }

    fn oldest_kept(&self, kept: usize) -> u64 {
        self.last_index.saturating_sub(kept as u64 - 1)
    }

    #[allow(clippy::too_many_arguments)]
    fn handle(
        &mut self,
        src: &str,
        key: String,
        op: &KvOp,
        rng: &mut StdRng,
        usage: &mut Usage,
        limits: &ServiceLimits,
        name: &str,
    ) -> Map<String, Value> {
        let oldest = self.oldest_kept(limits.seq_kv_states_kept);
        let seen = self.clients.get(src).copied().unwrap_or(0).max(oldest);
        let index = rng.gen_range(seen..=self.last_index);
        let cur = self.value_at(&key, index);
        let (effect, res) = kv_apply(cur, op, false);
        if !changes(cur, &effect) {
            self.clients.insert(src.to_string(), index);
            return res;
        }
        // It would change a past state: apply it to the latest one instead.
        let cur = self.value_at(&key, self.last_index);
        let (effect, res) = kv_apply(cur, op, false);
        if let Effect::Set(v) = &effect
            && changes(cur, &effect)
        {
            let new_keys = usize::from(!self.versions.contains_key(&key));
            let add = key.len() + value_bytes(v);
            if let Err(e) = usage.admit(new_keys, add, limits, name) {
                return e;
            }
            usage.keys += new_keys;
            usage.bytes += add;
            let next = self.last_index + 1;
            let list = self.versions.entry(key.clone()).or_default();
            list.push_back((next, v.clone()));
            // Only this key's list grew: prune it to what the kept states still need.
            let oldest = next.saturating_sub(limits.seq_kv_states_kept as u64 - 1);
            while list.len() >= 2 && list[1].0 <= oldest {
                if let Some((_, old)) = list.pop_front() {
                    usage.bytes -= key.len() + value_bytes(&old);
                }
            }
        }
        // Maelstrom adds a state even when the latest one is left as it was.
        self.last_index += 1;
        self.clients.insert(src.to_string(), self.last_index);
        res
    }
}

/// The state behind one service name.
#[derive(Debug)]
enum State {
    Lin(Kv),
    Seq(SeqKv),
    Lww(Vec<Kv>),
    Tso(u64),
}

/// What a service counted, printed when it stops if anything was refused.
#[derive(Debug, Default)]
pub struct ServiceStats {
    /// Requests handled (answered or not).
    pub requests: AtomicU64,
    /// Requests of a type the service does not know (answered with error 10 when
    /// they have a `msg_id`, else dropped).
    pub unsupported: AtomicU64,
    /// Requests refused by a limit (error 12 or 11).
    pub refused: AtomicU64,
}

/// One service: its name, state, randomness and limits.
pub struct Service {
    name: String,
    state: State,
    usage: Usage,
    rng: StdRng,
    limits: ServiceLimits,
    stats: Arc<ServiceStats>,
}

impl Service {
    /// The service called `name` (one of [`NAMES`]), with randomness from `rng`; `None`
    /// for an unknown name.
    pub fn new(name: &str, limits: ServiceLimits, rng: StdRng) -> Option<Service> {
        let state = match name {
            LIN_KV => State::Lin(Kv::default()),
            SEQ_KV => State::Seq(SeqKv::default()),
            LWW_KV => State::Lww(
                (0..limits.lww_kv_replicas.max(1))
                    .map(|_| Kv::default())
                    .collect(),
            ),
            LIN_TSO => State::Tso(0),
            _ => return None,
        };
        Some(Service {
            name: name.to_string(),
            state,
            usage: Usage::default(),
            rng,
            limits,
            stats: Arc::default(),
        })
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<ServiceStats> {
        self.stats.clone()
    }

    /// Handles one request from `src` whose line was `line_bytes` long; returns the
    /// reply body (with `in_reply_to`), or `None` when nothing is to be sent.
    pub fn handle(&mut self, src: &str, body: &Value, line_bytes: usize) -> Option<Value> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let msg_id = body.get("msg_id").cloned().unwrap_or(Value::Null);
        let res = self.respond(src, body, line_bytes);
        let mut res = match res {
            Some(r) => r,
            None => {
                self.stats.unsupported.fetch_add(1, Ordering::Relaxed);
                let kind = body.get("type").map(Value::to_string);
                let kind = kind.as_deref().unwrap_or("(none)");
                if msg_id.is_null() {
                    return None;
                }
                error(
                    10,
                    format!("{} does not support messages of type {kind}", self.name),
                )
            }
        };
        if res
            .get("code")
            .and_then(Value::as_u64)
            .is_some_and(|c| c == 11 || c == 12)
        {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
        }
        res.insert("in_reply_to".into(), msg_id);
        Some(Value::Object(res))
    }

    /// The reply body without `in_reply_to`; `None` for an unknown request type.
    fn respond(
        &mut self,
        src: &str,
        body: &Value,
        line_bytes: usize,
    ) -> Option<Map<String, Value>> {
        let body = body.as_object()?;
        let kind = body.get("type")?.as_str()?;
        if let State::Tso(next) = &mut self.state {
            if kind != "ts" {
                return None;
            }
            let mut m = reply("ts_ok");
            m.insert("ts".into(), (*next).into());
            *next += 1;
            return Some(m);
        }
        let op = match kind {
            "read" => KvOp::Read,
            "write" => KvOp::Write(field(body, "value")),
            "cas" => KvOp::Cas {
                from: field(body, "from"),
                to: field(body, "to"),
                create: !matches!(
                    body.get("create_if_not_exists"),
                    None | Some(Value::Null) | Some(Value::Bool(false))
                ),
            },
            _ => return None,
        };
        if line_bytes > self.limits.request_bytes_max {
            return Some(error(
                12,
                format!(
                    "request of {line_bytes} bytes is over {}'s limit of {} (harness limit request_bytes_max)",
                    self.name, self.limits.request_bytes_max
                ),
            ));
        }
        let key = key_of(body);
        let (limits, name, usage) = (&self.limits, self.name.as_str(), &mut self.usage);
        Some(match &mut self.state {
            State::Lin(kv) => kv.handle(key, &op, false, usage, limits, name),
            State::Seq(kv) => kv.handle(src, key, &op, &mut self.rng, usage, limits, name),
            State::Lww(replicas) => {
                let i = self.rng.gen_range(0..replicas.len());
                replicas[i].handle(key, &op, true, usage, limits, name)
            }
            State::Tso(_) => return None,
        })
    }
}

/// The running services, one task each.
pub struct Services {
    tasks: Vec<(String, Arc<ServiceStats>, JoinHandle<()>)>,
}

impl Services {
    /// Starts every service of [`NAMES`] that `net` has a queue for, each with its own
    /// random stream derived from `seed`.
    pub fn start(net: Arc<Net>, limits: &ServiceLimits, seed: u64) -> Services {
        let tasks = NAMES
            .iter()
            .filter_map(|name| {
                let i = net.service_index(name)?;
                let rng = derive_rng(seed, &format!("service {name}"));
                let svc = Service::new(name, limits.clone(), rng)?;
                let stats = svc.stats();
                let task = tokio::spawn(serve(net.clone(), i, svc));
                Some((name.to_string(), stats, task))
            })
            .collect();
        Services { tasks }
    }

    /// Stops every service (after the nodes: Maelstrom tears services down last) and
    /// prints, for each that refused or could not answer requests, its counts.
    pub fn stop(self) {
        for (name, stats, task) in &self.tasks {
            task.abort();
            let (n, u, r) = (
                stats.requests.load(Ordering::Relaxed),
                stats.unsupported.load(Ordering::Relaxed),
                stats.refused.load(Ordering::Relaxed),
            );
            if u + r > 0 {
                crate::stderr_line!(
                    "service {name}: {n} requests, {u} of an unsupported type, {r} refused by a limit"
                );
            }
        }
    }
}

impl Drop for Services {
    /// A run that ends early (a node that never answered `init`) leaves no task behind.
    fn drop(&mut self) {
        for (_, _, task) in &self.tasks {
            task.abort();
        }
    }
}

/// One service's loop: takes its due messages in deadline order, as Maelstrom's single
/// `service-thread` per service does, and sends each reply back through the network.
async fn serve(net: Arc<Net>, i: usize, mut svc: Service) {
    let notify = net.notifier(i);
    loop {
        let due = net.take_due(i, Instant::now(), true);
        for line in &due.lines {
            let Ok(msg) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let (Some(src), Some(body)) = (msg["src"].as_str(), msg.get("body")) else {
                continue;
            };
            if let Some(res) = svc.handle(src, body, line.len()) {
                // A full queue is counted by the network; there is no one else to tell.
                let _ = net.send(Instant::now(), &svc.name, src, &res);
            }
        }
        let sleep = due.next.map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = notify.notified() => {}
            _ = async { match sleep { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use serde_json::json;

    fn svc(name: &str) -> Service {
        svc_with(name, ServiceLimits::default())
    }

    fn svc_with(name: &str, limits: ServiceLimits) -> Service {
        Service::new(name, limits, StdRng::seed_from_u64(7)).unwrap()
    }

    /// Sends `body` from `src` and returns the reply.
    fn call(s: &mut Service, src: &str, body: Value) -> Value {
        let len = body.to_string().len();
        s.handle(src, &body, len).expect("a reply")
    }

    fn code(v: &Value) -> Option<u64> {
        v.get("code").and_then(Value::as_u64)
    }

    #[test]
    fn lin_kv_answers_as_maelstroms_persistent_kv() {
        let mut s = svc(LIN_KV);
        let r = call(&mut s, "n0", json!({"type": "read", "key": 1, "msg_id": 5}));
        assert_eq!(
            r,
            json!({"type": "error", "code": 20, "text": "key does not exist", "in_reply_to": 5})
        );
        let r = call(
            &mut s,
            "n0",
            json!({"type": "write", "key": 1, "value": [1, 2], "msg_id": 6}),
        );
        assert_eq!(
            r,
            json!({"type": "write_ok", "in_reply_to": 6}),
            "no msg_id in replies"
        );
        let r = call(&mut s, "n1", json!({"type": "read", "key": 1, "msg_id": 7}));
        assert_eq!(
            r,
            json!({"type": "read_ok", "value": [1, 2], "in_reply_to": 7})
        );
        let r = call(
            &mut s,
            "n1",
            json!({"type": "cas", "key": 1, "from": 3, "to": 4, "msg_id": 8}),
        );
        assert_eq!(code(&r), Some(22));
        assert_eq!(r["text"], "current value [1,2] is not 3");
        let r = call(
            &mut s,
            "n1",
            json!({"type": "cas", "key": 1, "from": [1, 2], "to": 4, "msg_id": 9}),
        );
        assert_eq!(r["type"], "cas_ok");
        assert_eq!(
            call(&mut s, "n2", json!({"type": "read", "key": 1}))["value"],
            4
        );
        // cas on a missing key: 20, unless create_if_not_exists (Clojure-truthy) is set.
        let r = call(
            &mut s,
            "n0",
            json!({"type": "cas", "key": "k", "from": 0, "to": 1}),
        );
        assert_eq!(code(&r), Some(20));
        let r = call(
            &mut s,
            "n0",
            json!({"type": "cas", "key": "k", "from": 0, "to": 1, "create_if_not_exists": false}),
        );
        assert_eq!(code(&r), Some(20));
        let r = call(
            &mut s,
            "n0",
            json!({"type": "cas", "key": "k", "from": 0, "to": 1, "create_if_not_exists": 0}),
        );
        assert_eq!(r["type"], "cas_ok", "0 is truthy in Clojure");
        // No msg_id: answered all the same, in_reply_to null.
        let r = call(&mut s, "n0", json!({"type": "read", "key": "k"}));
        assert_eq!(
            r,
            json!({"type": "read_ok", "value": 1, "in_reply_to": null})
        );
        // A missing key is the key null; 1 and 1.0 are different keys, and values.
        call(&mut s, "n0", json!({"type": "write", "value": "v"}));
        assert_eq!(
            call(&mut s, "n0", json!({"type": "read", "key": null}))["value"],
            "v"
        );
        call(
            &mut s,
            "n0",
            json!({"type": "write", "key": 1.0, "value": 2}),
        );
        assert_eq!(
            call(&mut s, "n0", json!({"type": "read", "key": 1}))["value"],
            4
        );
        let r = call(
            &mut s,
            "n0",
            json!({"type": "cas", "key": 1.0, "from": 2.0, "to": 3}),
        );
        assert_eq!(code(&r), Some(22));
        // Object keys compare as values, whatever their field order.
        call(
            &mut s,
            "n0",
            json!({"type": "write", "key": {"a": 1, "b": 2}, "value": 9}),
        );
        let r: Value = serde_json::from_str(r#"{"type":"read","key":{"b":2,"a":1}}"#).unwrap();
        assert_eq!(call(&mut s, "n0", r)["value"], 9);
        // A write with no value stores null, which reads back.
        call(&mut s, "n0", json!({"type": "write", "key": "z"}));
        assert_eq!(
            call(&mut s, "n0", json!({"type": "read", "key": "z"})),
            json!({"type": "read_ok", "value": null, "in_reply_to": null})
        );
    }

    #[test]
    fn unknown_types_get_not_supported_when_answerable() {
        for name in NAMES {
            let mut s = svc(name);
            let r = call(&mut s, "n0", json!({"type": "frob", "msg_id": 3}));
            assert_eq!(code(&r), Some(10), "{name}");
            assert_eq!(r["in_reply_to"], 3);
            // Nothing to answer without a msg_id; a reply (no msg_id) is never answered,
            // so a service cannot be drawn into a loop with another.
            assert_eq!(s.handle("n0", &json!({"type": "frob"}), 10), None);
            assert_eq!(
                s.handle("lin-kv", &json!({"type": "read_ok", "in_reply_to": 1}), 10),
                None
            );
            assert_eq!(s.handle("n0", &json!("read"), 10), None);
            assert_eq!(
                s.handle("n0", &json!({"type": 1, "msg_id": 1}), 10)
                    .map(|r| code(&r)),
                Some(Some(10))
            );
            assert_eq!(s.stats().unsupported.load(Ordering::Relaxed), 5);
        }
        let mut tso = svc(LIN_TSO);
        assert_eq!(
            code(&call(
                &mut tso,
                "n0",
                json!({"type": "read", "key": 1, "msg_id": 1})
            )),
            Some(10)
        );
        let mut kv = svc(LIN_KV);
        assert_eq!(
            code(&call(&mut kv, "n0", json!({"type": "ts", "msg_id": 1}))),
            Some(10)
        );
    }

    #[test]
    fn lin_tso_counts_from_zero() {
        let mut s = svc(LIN_TSO);
        for i in 0..5u64 {
            let r = call(&mut s, &format!("n{i}"), json!({"type": "ts", "msg_id": i}));
            assert_eq!(r, json!({"type": "ts_ok", "ts": i, "in_reply_to": i}));
        }
    }

    /// Writes 1..=n to key "x" from client "w" (each makes a new state).
    fn seq_written(n: u64, limits: ServiceLimits) -> Service {
        let mut s = svc_with(SEQ_KV, limits);
        for v in 1..=n {
            let r = call(
                &mut s,
                "w",
                json!({"type": "write", "key": "x", "value": v}),
            );
            assert_eq!(r["type"], "write_ok");
        }
        s
    }

    fn read_x(s: &mut Service, src: &str) -> Option<u64> {
        call(s, src, json!({"type": "read", "key": "x"}))["value"].as_u64()
    }

    #[test]
    fn seq_kv_serves_stale_states_but_each_client_moves_forward() {
        let mut s = seq_written(10, ServiceLimits::default());
        // The writer itself always sees its last write.
        assert_eq!(read_x(&mut s, "w"), Some(10));
        // Fresh clients may see any past state, even the one before the key existed.
        let firsts: std::collections::BTreeSet<Option<u64>> = (0..200)
            .map(|i| read_x(&mut s, &format!("fresh{i}")))
            .collect();
        assert!(firsts.len() > 5, "stale reads expected: {firsts:?}");
        assert!(firsts.contains(&None), "{firsts:?}");
        // One client's reads never go back, and reach the latest state.
        let mut last = None;
        for _ in 0..200 {
            let v = read_x(&mut s, "r");
            assert!(v >= last, "{v:?} after {last:?}");
            last = v;
        }
        assert_eq!(last, Some(10));
        // A cas that fails on a past state is answered from it (Maelstrom's rule)...
        let texts: std::collections::BTreeSet<String> = (0..100)
            .map(|i| {
                let r = call(
                    &mut s,
                    &format!("cas{i}"),
                    json!({"type": "cas", "key": "x", "from": 99, "to": 0}),
                );
                // 20 on the state before the first write, 22 on the others.
                assert!(matches!(code(&r), Some(20 | 22)), "{r}");
                r["text"].as_str().unwrap().to_string()
            })
            .collect();
        assert!(texts.len() > 3, "stale cas failures expected: {texts:?}");
        // ...one that would change it runs on the latest state, so no write is lost.
        // ("c" first catches up: from the latest state, its cas cannot fail.)
        assert!((0..1000).any(|_| read_x(&mut s, "c") == Some(10)));
        let r = call(
            &mut s,
            "c",
            json!({"type": "cas", "key": "x", "from": 10, "to": 11}),
        );
        assert_eq!(r["type"], "cas_ok", "applied to the latest state: {r}");
        assert_eq!(read_x(&mut s, "c"), Some(11));
        // After its own write, a client sees at least it.
        call(
            &mut s,
            "z",
            json!({"type": "write", "key": "y", "value": 1}),
        );
        assert_eq!(read_x(&mut s, "z"), Some(11));
    }

    #[test]
    fn seq_kv_keeps_only_its_last_states() {
        let limits = ServiceLimits::default();
        let kept = limits.seq_kv_states_kept as u64;
        let mut s = seq_written(200, limits);
        for i in 0..300 {
            let v = read_x(&mut s, &format!("fresh{i}")).unwrap();
            assert!(v > 200 - kept, "state {v} is older than the kept ones");
        }
        // Memory: one version per kept state, not one per write.
        let State::Seq(kv) = &s.state else {
            unreachable!()
        };
        assert!(kv.versions["\"x\""].len() <= kept as usize + 1);
        let per = "\"x\"".len() + 3;
        assert!(
            s.usage.bytes <= per * (kept as usize + 1),
            "{}",
            s.usage.bytes
        );
    }

    #[test]
    fn lww_kv_replicas_never_converge_and_ignore_create() {
        let mut s = svc(LWW_KV);
        call(
            &mut s,
            "n0",
            json!({"type": "write", "key": "x", "value": 1}),
        );
        let reads: Vec<Option<u64>> = (0..100).map(|_| read_x(&mut s, "n0")).collect();
        assert!(
            reads.contains(&Some(1)) && reads.contains(&None),
            "{reads:?}"
        );
        let r = call(
            &mut s,
            "n0",
            json!({"type": "cas", "key": "new", "from": 0, "to": 1, "create_if_not_exists": true}),
        );
        assert_eq!(code(&r), Some(20), "lww-kv's cas does not create");
    }

    #[test]
    fn limits_refuse_what_would_grow_a_service_past_them() {
        let limits = ServiceLimits {
            request_bytes_max: 100,
            state_keys_max: 3,
            state_bytes_max: 120,
            ..ServiceLimits::default()
        };
        let b50 = "b".repeat(50);
        for name in [LIN_KV, SEQ_KV, LWW_KV] {
            let mut s = svc_with(name, limits.clone());
            let long = "v".repeat(100);
            let r = call(
                &mut s,
                "n0",
                json!({"type": "write", "key": 1, "value": long, "msg_id": 1}),
            );
            assert_eq!(code(&r), Some(12), "{name}: {r}");
            assert!(r["text"].as_str().unwrap().contains("request_bytes_max"));
            assert_eq!(
                code(&call(&mut s, "n0", json!({"type": "read", "key": 1}))),
                Some(20)
            );
            // Bytes: two values of 53 bytes (key and value as JSON) fit in 120, a third not.
            for k in 0..2 {
                let r = call(
                    &mut s,
                    "n0",
                    json!({"type": "write", "key": k, "value": b50}),
                );
                assert_eq!(r["type"], "write_ok", "{name}: {r}");
            }
            let r = call(
                &mut s,
                "n0",
                json!({"type": "write", "key": 2, "value": b50}),
            );
            assert_eq!(code(&r), Some(11), "{name}: {r}");
            assert!(r["text"].as_str().unwrap().contains("state_bytes_max"));
            // Keys: a third fits, a fourth is refused and not stored.
            let r = call(&mut s, "n0", json!({"type": "write", "key": 2, "value": 0}));
            assert_eq!(r["type"], "write_ok", "{name}: {r}");
            let r = call(
                &mut s,
                "n0",
                json!({"type": "cas", "key": 3, "from": 0, "to": 0, "create_if_not_exists": true}),
            );
            let want = if name == LWW_KV { 20 } else { 11 };
            assert_eq!(code(&r), Some(want), "{name}: {r}");
            let r = call(&mut s, "n0", json!({"type": "write", "key": 3, "value": 0}));
            assert_eq!(code(&r), Some(11), "{name}: {r}");
            assert!(r["text"].as_str().unwrap().contains("state_keys_max"));
            assert_eq!(
                code(&call(&mut s, "n0", json!({"type": "read", "key": 3}))),
                Some(20)
            );
            assert!(s.stats().refused.load(Ordering::Relaxed) >= 3);
        }
        // lin-kv: replacing a value frees its bytes.
        let mut s = svc_with(LIN_KV, limits.clone());
        for _ in 0..10 {
            let r = call(
                &mut s,
                "n0",
                json!({"type": "write", "key": 0, "value": b50}),
            );
            assert_eq!(r["type"], "write_ok");
        }
        assert!(ServiceLimits::default().validate().is_ok());
        let bad = ServiceLimits {
            state_bytes_max: 10,
            ..ServiceLimits::default()
        };
        assert!(bad.validate().is_err());
    }
}
