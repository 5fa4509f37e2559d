//! The simulated network: every line a node writes goes through [`Net::send`],
//! which drops it (a partition, loss), delays it by a random time (so messages
//! overtake each other) and sometimes delivers it twice. Partitions cut node-to-
//! node links only, one direction at a time, as Maelstrom's do; clients reach
//! every node, through loss, duplication and delay like everyone else.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use tokio::sync::mpsc;

use super::Trace;

/// Link conditions and who is reachable.
pub struct Net {
    /// Draws losses, duplicates and delays.
    pub rng: StdRng,
    /// Directed node-to-node links that drop everything: (from, to).
    pub blocked: BTreeSet<(String, String)>,
    /// Chance a message is lost.
    pub loss: f64,
    /// Chance a message is delivered twice.
    pub dup: f64,
    /// Delivery delay range, ms.
    pub delay_ms: (u64, u64),
    /// Where lines for each name go: a node's stdin or a client's inbox.
    pub inboxes: BTreeMap<String, mpsc::UnboundedSender<String>>,
    /// Node names (partitions apply between these).
    pub nodes: BTreeSet<String>,
    /// Messages sent, dropped, duplicated.
    pub sent: u64,
    /// Messages dropped by a partition or loss.
    pub dropped: u64,
    /// Messages delivered twice.
    pub duplicated: u64,
}

impl Net {
    /// Calm links: no loss, no duplicates, 1-5 ms delays.
    pub fn new(rng: StdRng, nodes: BTreeSet<String>) -> Net {
        Net {
            rng,
            blocked: BTreeSet::new(),
            loss: 0.0,
            dup: 0.0,
            delay_ms: (1, 5),
            inboxes: BTreeMap::new(),
            nodes,
            sent: 0,
            dropped: 0,
            duplicated: 0,
        }
    }

    /// Back to calm links and no partition.
    pub fn heal(&mut self) {
        self.blocked.clear();
        self.loss = 0.0;
        self.dup = 0.0;
        self.delay_ms = (1, 5);
    }
}

/// Sends `line` from `from` to `to` through the network's current conditions.
pub fn send(net: &Arc<Mutex<Net>>, trace: &Arc<Mutex<Trace>>, from: &str, to: &str, line: String) {
    let mut n = net.lock().unwrap_or_else(|p| p.into_inner());
    n.sent += 1;
    let between_nodes = n.nodes.contains(from) && n.nodes.contains(to);
    let cut = between_nodes && n.blocked.contains(&(from.to_string(), to.to_string()));
    let lost = n.loss > 0.0 && n.rng.r#gen::<f64>() < n.loss;
    if cut || lost {
        n.dropped += 1;
        drop(n);
        trace
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .event(format_args!("drop {from}->{to} {}", excerpt(&line)));
        return;
    }
    let copies = if n.dup > 0.0 && n.rng.r#gen::<f64>() < n.dup {
        n.duplicated += 1;
        2
    } else {
        1
    };
    for _ in 0..copies {
        let (lo, hi) = n.delay_ms;
        let delay = n.rng.gen_range(lo..=hi);
        let net = net.clone();
        let trace = trace.clone();
        let (from, to, line) = (from.to_string(), to.to_string(), line.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let inbox = net
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .inboxes
                .get(&to)
                .cloned();
            let mut t = trace.lock().unwrap_or_else(|p| p.into_inner());
            match inbox {
                Some(tx) if tx.send(line.clone()).is_ok() => {
                    t.event(format_args!("recv {from}->{to} {}", excerpt(&line)));
                    t.hash_bytes(line.as_bytes());
                }
                _ => t.event(format_args!("lost {from}->{to} (down) {}", excerpt(&line))),
            }
        });
    }
}

/// The start of a line, for the trace.
pub fn excerpt(line: &str) -> &str {
    let mut end = line.len().min(160);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    &line[..end]
}
