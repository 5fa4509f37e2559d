//! The simulated network, after Maelstrom's `src/maelstrom/net.clj`.
//!
//! - One queue per destination node, ordered by delivery deadline (then send order).
//! - Messages that involve a client have zero latency and are handed to the client's
//!   mailbox at once; node-to-node latency is drawn from the configured distribution.
//! - A partition is a set, per receiver, of senders it does not hear. It is checked when
//!   the receiver dequeues, so messages already in flight are dropped too.
//! - Beyond Maelstrom: node-to-node loss (`p_loss`) and duplication (`p_dup`).
//! - Services (`lin-kv`, `seq-kv`, `lww-kv`, `lin-tso`; [`super::services`]) are
//!   endpoints with queues of their own, as in Maelstrom where `start-services!` adds
//!   them to the network: messages to and from them get node-to-node latency, but no
//!   partition cuts them (Jepsen's grudges name only the test's nodes) and, Maelstrom
//!   having neither, no loss or duplication.
//!
//! Time is passed in (`now`), so the queue logic is testable without a clock.
//!
//! It may not touch processes: it queues and delivers messages only.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::Value;
use thiserror::Error;
use tokio::sync::Notify;

use super::mailbox::Mailbox;
use crate::tools::report::harness::NetFaults;
use crate::tools::report::{NetCounts, NetInputs};

/// Node-to-node latency distribution (Maelstrom's `latency-dist`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LatencyDist {
    /// Always the mean.
    Constant,
    /// An integer uniform in [0, 2 * mean].
    Uniform,
    /// Exponential with the given mean.
    Exponential,
}

/// Network parameters.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Mean node-to-node latency in ms.
    pub latency_mean_ms: u64,
    /// Its distribution.
    pub latency_dist: LatencyDist,
    /// Probability a node-to-node message is lost (beyond Maelstrom).
    pub p_loss: f64,
    /// Probability a node-to-node message is delivered twice (beyond Maelstrom).
    pub p_dup: f64,
    /// Bound on messages waiting in one destination's queue; past it, sends are
    /// refused and counted, so a node flooding the network cannot exhaust memory.
    pub queue_cap: usize,
    /// `--log-net-send`: print every message as it is sent (Maelstrom's `:send`).
    pub log_send: bool,
    /// `--log-net-recv`: print every message as it is delivered (Maelstrom's `:recv`).
    pub log_recv: bool,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            latency_mean_ms: 0,
            latency_dist: LatencyDist::Constant,
            p_loss: 0.0,
            p_dup: 0.0,
            queue_cap: 1_000_000,
            log_send: false,
            log_recv: false,
        }
    }
}

/// Draws a latency in ms (net.clj `latency-dist`).
pub fn draw_latency_ms(rng: &mut StdRng, mean: u64, dist: LatencyDist) -> u64 {
    match dist {
        LatencyDist::Constant => mean,
        LatencyDist::Uniform => rng.gen_range(0..=2 * mean),
        LatencyDist::Exponential => {
            if mean == 0 {
                return 0;
            }
            let u: f64 = rng.r#gen::<f64>();
            (-(mean as f64) * (1.0 - u).ln()) as u64
        }
    }
}

/// Maelstrom's rule for "is this endpoint a client".
pub fn is_client(id: &str) -> bool {
    id.starts_with('c')
}

/// A send the network refuses.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum SendError {
    /// `dest` is neither a node nor a registered client.
    #[error("unknown dest {0:?}")]
    UnknownDest(String),
    /// The destination queue is full.
    #[error("queue for {0} is full")]
    QueueFull(String),
}

/// What the network counted: messages per class (Maelstrom's net checker) and
/// messages it did not deliver as sent. Both are `results.json` types.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Sends and deliveries: every message, messages with a client at either end,
    /// node-to-node messages. A send counts even if the message is then lost or
    /// partitioned away; a duplicated copy is one send and two deliveries.
    pub counts: NetInputs,
    /// Drops, losses, duplicates, refusals.
    pub faults: NetFaults,
}

impl NetStats {
    fn count(&mut self, client: bool, f: impl Fn(&mut NetCounts)) {
        f(&mut self.counts.all);
        if client {
            f(&mut self.counts.clients)
        } else {
            f(&mut self.counts.servers)
        }
    }
}

/// One queued message.
#[derive(Debug)]
struct Queued {
    deadline: Instant,
    id: u64,
    src: Arc<str>,
    line: String,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.deadline, self.id) == (o.deadline, o.id)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.deadline, self.id).cmp(&(o.deadline, o.id))
    }
}

/// Receiver -> senders it does not hear (Jepsen's "grudge").
pub type Grudge = BTreeMap<String, BTreeSet<String>>;

struct State {
    queues: Vec<BinaryHeap<Reverse<Queued>>>,
    partitions: HashMap<String, BTreeSet<String>>,
    rng: StdRng,
    next_id: u64,
    stats: NetStats,
}

/// What came due for one node.
#[derive(Debug, Default)]
pub struct Due {
    /// Lines to write to the node's stdin, in delivery order, each with `id` added.
    pub lines: Vec<String>,
    /// When the next queued message comes due, if any.
    pub next: Option<Instant>,
}

/// The network: queues, partitions, client mailboxes, statistics.
pub struct Net {
    cfg: NetConfig,
    nodes: Vec<String>,
    /// Nodes, then services: the names of the queues, by position.
    endpoints: Vec<String>,
    index: HashMap<String, usize>,
    notify: Vec<Arc<Notify>>,
    mailboxes: Mutex<HashMap<String, Arc<Mailbox>>>,
    state: Mutex<State>,
}

#[derive(Serialize)]
struct Wire<'a> {
    id: u64,
    src: &'a str,
    dest: &'a str,
    body: &'a Value,
}

/// A message as a node reads it: `{"id", "src", "dest", "body"}`.
fn wire_line(id: u64, src: &str, dest: &str, body: &Value) -> String {
    serde_json::to_string(&Wire {
        id,
        src,
        dest,
        body,
    })
    .unwrap_or_default()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Net {
    /// A network between `nodes`, with randomness from `seed`.
    pub fn new(nodes: &[String], cfg: NetConfig, seed: u64) -> Net {
        Net::with_services(nodes, &[], cfg, seed)
    }

    /// A network between `nodes` and `services` (each a queue served by
    /// [`super::services`]); a service named like a node is ignored.
    pub fn with_services(nodes: &[String], services: &[&str], cfg: NetConfig, seed: u64) -> Net {
        let mut endpoints = nodes.to_vec();
        for s in services {
            if !endpoints.iter().any(|e| e == s) {
                endpoints.push(s.to_string());
            }
        }
        Net {
            cfg,
            nodes: nodes.to_vec(),
            index: endpoints
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), i))
                .collect(),
            notify: endpoints.iter().map(|_| Arc::new(Notify::new())).collect(),
            mailboxes: Mutex::new(HashMap::new()),
            state: Mutex::new(State {
                queues: endpoints.iter().map(|_| BinaryHeap::new()).collect(),
                partitions: HashMap::new(),
                rng: StdRng::seed_from_u64(seed),
                next_id: 0,
                stats: NetStats::default(),
            }),
            endpoints,
        }
    }

    /// Node ids, in order.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The position of a node id.
    pub fn node_index(&self, id: &str) -> Option<usize> {
        self.index
            .get(id)
            .copied()
            .filter(|&i| i < self.nodes.len())
    }

    /// The queue position of a service, for [`Net::take_due`] and [`Net::notifier`].
    pub fn service_index(&self, id: &str) -> Option<usize> {
        self.index
            .get(id)
            .copied()
            .filter(|&i| i >= self.nodes.len())
    }

    /// Whether `id` is a service on this network.
    pub fn is_service(&self, id: &str) -> bool {
        self.service_index(id).is_some()
    }

    /// Woken whenever a message is queued for node (or service) `i`.
    pub fn notifier(&self, i: usize) -> Arc<Notify> {
        self.notify[i].clone()
    }

    /// Registers a client id; replies to it go to the returned mailbox.
    pub fn register_client(&self, id: &str) -> Arc<Mailbox> {
        let mb = Arc::new(Mailbox::default());
        lock(&self.mailboxes).insert(id.to_string(), mb.clone());
        mb
    }

    /// Whether `id` is a node, a service or a registered client.
    pub fn knows(&self, id: &str) -> bool {
        self.index.contains_key(id) || lock(&self.mailboxes).contains_key(id)
    }

    /// Sends `body` from `src` to `dest` at time `now`.
    pub fn send(&self, now: Instant, src: &str, dest: &str, body: &Value) -> Result<(), SendError> {
        let client = is_client(src) || is_client(dest);
        let Some(&d) = self.index.get(dest) else {
            let mb = lock(&self.mailboxes).get(dest).cloned();
            let Some(mb) = mb else {
                return Err(SendError::UnknownDest(dest.to_string()));
            };
            let mut st = lock(&self.state);
            st.next_id += 1;
            if self.cfg.log_send || self.cfg.log_recv {
                let line = wire_line(st.next_id, src, dest, body);
                if self.cfg.log_send {
                    crate::stderr_line!(":send {line}");
                }
                if self.cfg.log_recv {
                    crate::stderr_line!(":recv {line}");
                }
            }
            st.stats.count(true, |c| {
                c.send += 1;
                c.recv += 1;
            });
            drop(st);
            mb.deliver(body);
            return Ok(());
        };
        let service = d >= self.nodes.len() || self.is_service(src);
        let mut st = lock(&self.state);
        st.next_id += 1;
        let id = st.next_id;
        st.stats.count(client, |c| c.send += 1);
        if st.queues[d].len() >= self.cfg.queue_cap {
            st.stats.faults.refused_full += 1;
            return Err(SendError::QueueFull(dest.to_string()));
        }
        let copies = if client || service {
            1
        } else if self.cfg.p_loss > 0.0 && st.rng.r#gen::<f64>() < self.cfg.p_loss {
            st.stats.faults.dropped_loss += 1;
            0
        } else if self.cfg.p_dup > 0.0 && st.rng.r#gen::<f64>() < self.cfg.p_dup {
            st.stats.faults.duplicated += 1;
            2
        } else {
            1
        };
        let line = wire_line(id, src, dest, body);
        if self.cfg.log_send {
            crate::stderr_line!(":send {line}");
        }
        let src: Arc<str> = Arc::from(src);
        for _ in 0..copies {
            let ms = if client {
                0
            } else {
                draw_latency_ms(&mut st.rng, self.cfg.latency_mean_ms, self.cfg.latency_dist)
            };
            let deadline = now + Duration::from_millis(ms);
            st.queues[d].push(Reverse(Queued {
                deadline,
                id,
                src: src.clone(),
                line: line.clone(),
            }));
        }
        drop(st);
        if copies > 0 {
            self.notify[d].notify_one();
        }
        Ok(())
    }

    /// Dequeues every message for node (or service) `i` due at `now`, dropping those
    /// from senders `i` does not hear. If `up` is false the node is down and due
    /// messages are lost.
    pub fn take_due(&self, i: usize, now: Instant, up: bool) -> Due {
        let mut st = lock(&self.state);
        let st = &mut *st;
        let me = &self.endpoints[i];
        let mut due = Due::default();
        while let Some(Reverse(top)) = st.queues[i].peek() {
            if top.deadline > now {
                due.next = Some(top.deadline);
                break;
            }
            let Some(Reverse(q)) = st.queues[i].pop() else {
                break;
            };
            let client = is_client(&q.src);
            let cut = st.partitions.get(me).is_some_and(|s| s.contains(&*q.src));
            if cut && !client {
                st.stats.faults.dropped_partition += 1;
            } else if !up {
                st.stats.faults.dropped_down += 1;
            } else {
                st.stats.count(client, |c| c.recv += 1);
                if self.cfg.log_recv {
                    crate::stderr_line!(":recv {}", q.line);
                }
                due.lines.push(q.line);
            }
        }
        due
    }

    /// Installs a partition (replacing any previous one). Clients and services are
    /// never cut off.
    pub fn partition(&self, grudge: &Grudge) {
        let mut st = lock(&self.state);
        st.partitions = grudge
            .iter()
            .filter(|(k, _)| !self.is_service(k))
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.iter()
                        .filter(|s| !is_client(s) && !self.is_service(s))
                        .cloned()
                        .collect(),
                )
            })
            .collect();
    }

    /// Removes every partition.
    pub fn heal(&self) {
        lock(&self.state).partitions.clear();
    }

    /// A snapshot of the statistics.
    pub fn stats(&self) -> NetStats {
        lock(&self.state).stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("n{i}")).collect()
    }

    fn ids(due: &Due) -> Vec<u64> {
        due.lines
            .iter()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["id"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn queue_delivers_in_deadline_order_not_send_order() {
        let cfg = NetConfig {
            latency_mean_ms: 50,
            latency_dist: LatencyDist::Uniform,
            ..NetConfig::default()
        };
        let net = Net::new(&nodes(2), cfg, 7);
        let t0 = Instant::now();
        for k in 0..200 {
            net.send(t0, "n1", "n0", &json!({"type": "x", "k": k}))
                .unwrap();
        }
        let all = net.take_due(0, t0 + Duration::from_secs(1), true);
        assert_eq!(all.lines.len(), 200);
        assert!(all.next.is_none());
        // Deliveries are sorted by deadline, which the uniform draw made differ from send order.
        let got = ids(&all);
        assert_ne!(got, (1..=200).collect::<Vec<_>>(), "latency should reorder");
        // Messages whose deadline has not come stay queued; client messages have none.
        net.send(t0, "n1", "n0", &json!({"type": "late"})).unwrap();
        net.register_client("c0");
        net.send(t0, "c0", "n0", &json!({"type": "now"})).unwrap();
        let early = net.take_due(0, t0, true);
        assert_eq!(early.lines.len(), 1, "only the client message is due at t0");
        assert!(early.lines[0].contains("\"now\""));
        assert!(early.next.is_some());
    }

    #[test]
    fn delivered_lines_carry_id_src_dest_body() {
        let net = Net::new(&nodes(1), NetConfig::default(), 1);
        net.register_client("c3");
        let t0 = Instant::now();
        net.send(
            t0,
            "c3",
            "n0",
            &json!({"type": "read", "key": 1, "msg_id": 1}),
        )
        .unwrap();
        let due = net.take_due(0, t0, true);
        let v: Value = serde_json::from_str(&due.lines[0]).unwrap();
        assert_eq!(
            v,
            json!({"id": 1, "src": "c3", "dest": "n0", "body": {"type": "read", "key": 1, "msg_id": 1}})
        );
    }

    #[test]
    fn partitions_drop_in_flight_messages_at_dequeue_but_never_client_ones() {
        let cfg = NetConfig {
            latency_mean_ms: 10,
            ..NetConfig::default()
        };
        let net = Net::new(&nodes(3), cfg, 1);
        net.register_client("c0");
        let t0 = Instant::now();
        net.send(t0, "n1", "n0", &json!({"type": "a"})).unwrap();
        net.send(t0, "n2", "n0", &json!({"type": "b"})).unwrap();
        net.send(t0, "c0", "n0", &json!({"type": "c"})).unwrap();
        // Cut n0 off from n1 after the send: the in-flight message is lost.
        let grudge: Grudge = [(
            "n0".to_string(),
            ["n1".to_string(), "c0".to_string()].into(),
        )]
        .into();
        net.partition(&grudge);
        let due = net.take_due(0, t0 + Duration::from_millis(20), true);
        let types: Vec<String> = due
            .lines
            .iter()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["body"]["type"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(types, vec!["c", "b"]);
        assert_eq!(net.stats().faults.dropped_partition, 1);
        net.heal();
        net.send(t0, "n1", "n0", &json!({"type": "d"})).unwrap();
        assert_eq!(
            net.take_due(0, t0 + Duration::from_millis(20), true)
                .lines
                .len(),
            1
        );
    }

    #[test]
    fn unknown_dest_is_refused_and_stats_split_clients_from_servers() {
        let net = Net::new(&nodes(2), NetConfig::default(), 1);
        assert_eq!(
            net.send(Instant::now(), "n0", "n9", &json!({})),
            Err(SendError::UnknownDest("n9".into()))
        );
        net.register_client("c1");
        let t0 = Instant::now();
        net.send(t0, "c1", "n0", &json!({"type": "x"})).unwrap();
        net.send(t0, "n0", "n1", &json!({"type": "y"})).unwrap();
        net.send(t0, "n0", "c1", &json!({"type": "z"})).unwrap();
        net.take_due(0, t0, true);
        let s = net.stats();
        assert_eq!(s.counts.clients, NetCounts { send: 2, recv: 2 });
        assert_eq!(s.counts.servers, NetCounts { send: 1, recv: 0 });
        assert_eq!(s.counts.all.send, 3);
    }

    #[test]
    fn loss_and_duplication_apply_to_node_messages_only() {
        let lossy = Net::new(
            &nodes(2),
            NetConfig {
                p_loss: 1.0,
                ..NetConfig::default()
            },
            1,
        );
        lossy.register_client("c0");
        let t0 = Instant::now();
        lossy.send(t0, "n1", "n0", &json!({})).unwrap();
        lossy.send(t0, "c0", "n0", &json!({})).unwrap();
        assert_eq!(lossy.take_due(0, t0, true).lines.len(), 1);
        let dup = Net::new(
            &nodes(2),
            NetConfig {
                p_dup: 1.0,
                ..NetConfig::default()
            },
            1,
        );
        dup.send(t0, "n1", "n0", &json!({})).unwrap();
        let due = dup.take_due(0, t0, true);
        assert_eq!(due.lines.len(), 2);
        assert_eq!(
            due.lines[0], due.lines[1],
            "a duplicate is the same message, same id"
        );
    }

    #[test]
    fn services_get_latency_but_no_partition_loss_or_duplication() {
        let cfg = NetConfig {
            latency_mean_ms: 10,
            p_loss: 1.0,
            p_dup: 1.0,
            ..NetConfig::default()
        };
        let net = Net::with_services(&nodes(2), &["lin-kv", "n1"], cfg, 1);
        assert_eq!(net.nodes(), &nodes(2)[..], "services are not nodes");
        let svc = net.service_index("lin-kv").unwrap();
        assert_eq!(svc, 2);
        assert_eq!(net.node_index("lin-kv"), None);
        assert_eq!(
            net.service_index("n1"),
            None,
            "a node's name is not a service"
        );
        assert!(net.knows("lin-kv"));
        // A partition naming the service (as sender or receiver) cuts nothing to or from it.
        let grudge: Grudge = [
            (
                "n0".to_string(),
                ["n1".to_string(), "lin-kv".to_string()].into(),
            ),
            ("lin-kv".to_string(), ["n0".to_string()].into()),
        ]
        .into();
        net.partition(&grudge);
        let t0 = Instant::now();
        net.send(t0, "n0", "lin-kv", &json!({"type": "read"}))
            .unwrap();
        assert!(
            net.take_due(svc, t0, true).lines.is_empty(),
            "latency applies"
        );
        let due = net.take_due(svc, t0 + Duration::from_millis(10), true);
        assert_eq!(due.lines.len(), 1, "neither lost nor duplicated");
        net.send(t0, "lin-kv", "n0", &json!({"type": "read_ok"}))
            .unwrap();
        net.send(t0, "n1", "n0", &json!({"type": "x"})).unwrap();
        let due = net.take_due(0, t0 + Duration::from_millis(10), true);
        assert_eq!(
            due.lines.len(),
            1,
            "the reply arrives; n1's message is lost"
        );
        assert!(due.lines[0].contains("read_ok"));
        assert_eq!(net.stats().faults.dropped_partition, 0);
    }

    #[test]
    fn latency_draws_match_their_distributions() {
        let mut rng = StdRng::seed_from_u64(3);
        assert_eq!(draw_latency_ms(&mut rng, 40, LatencyDist::Constant), 40);
        let u: Vec<u64> = (0..10_000)
            .map(|_| draw_latency_ms(&mut rng, 40, LatencyDist::Uniform))
            .collect();
        assert!(u.iter().all(|&x| x <= 80));
        let mean_u = u.iter().sum::<u64>() as f64 / u.len() as f64;
        assert!((mean_u - 40.0).abs() < 2.0, "{mean_u}");
        let e: Vec<u64> = (0..10_000)
            .map(|_| draw_latency_ms(&mut rng, 40, LatencyDist::Exponential))
            .collect();
        let mean_e = e.iter().sum::<u64>() as f64 / e.len() as f64;
        // Truncation to whole ms lowers the mean by about half a ms.
        assert!((mean_e - 39.5).abs() < 2.5, "{mean_e}");
    }
}
