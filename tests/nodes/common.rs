//! A tiny Maelstrom node runtime for the harness's test nodes: stdin lines and timer
//! ticks arrive on one channel; replies go to stdout. Std and serde_json only.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

/// What the node's loop sees.
pub enum Event {
    /// A message from the network.
    Msg(Value),
    /// A timer tick.
    Tick,
}

/// Node identity and the output side.
pub struct Node {
    pub id: String,
    pub nodes: Vec<String>,
    next_msg_id: u64,
    out: std::io::Stdout,
}

impl Node {
    /// Sends `body` (plus a fresh `msg_id`) to `dest`.
    pub fn send(&mut self, dest: &str, mut body: Value) {
        body["msg_id"] = json!(self.next_msg_id);
        self.next_msg_id += 1;
        let line = json!({"src": self.id, "dest": dest, "body": body});
        let mut out = self.out.lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// Replies to `msg` with `body`.
    pub fn reply(&mut self, msg: &Value, mut body: Value) {
        body["in_reply_to"] = msg["body"]["msg_id"].clone();
        let dest = msg["src"].as_str().unwrap_or("").to_string();
        self.send(&dest, body);
    }

    /// The other nodes.
    pub fn peers(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| **n != self.id)
            .cloned()
            .collect()
    }
}

/// Applies a lin-kv request to `map`; returns the reply body.
pub fn apply(map: &mut BTreeMap<String, Value>, body: &Value) -> Value {
    let key = body["key"].to_string();
    match body["type"].as_str().unwrap_or("") {
        "read" => match map.get(&key) {
            Some(v) => json!({"type": "read_ok", "value": v}),
            None => json!({"type": "error", "code": 20, "text": "not found"}),
        },
        "write" => {
            map.insert(key, body["value"].clone());
            json!({"type": "write_ok"})
        }
        "cas" => match map.get(&key) {
            None => json!({"type": "error", "code": 20, "text": "not found"}),
            Some(v) if *v != body["from"] => {
                json!({"type": "error", "code": 22, "text": format!("expected {}, had {v}", body["from"])})
            }
            Some(_) => {
                map.insert(key, body["to"].clone());
                json!({"type": "cas_ok"})
            }
        },
        "add" => {
            let cur = map.get(&key).and_then(Value::as_i64).unwrap_or(0);
            let new = cur + body["delta"].as_i64().unwrap_or(0);
            map.insert(key, json!(new));
            json!({"type": "add_ok", "value": new})
        }
        other => json!({"type": "error", "code": 10, "text": format!("unsupported {other}")}),
    }
}

/// Runs a node: answers `init`, then hands every other message and each `tick` (if
/// `tick` is set) to `handle`, until stdin closes.
pub fn run(tick: Option<Duration>, mut handle: impl FnMut(&mut Node, Event)) {
    let (tx, rx) = mpsc::channel();
    let lines = tx.clone();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Value>(&line) {
                Ok(v) => {
                    if lines.send(Some(v)).is_err() {
                        break;
                    }
                }
                Err(e) => eprintln!("bad line {line}: {e}"),
            }
        }
        let _ = lines.send(None);
    });
    if let Some(period) = tick {
        let t = tx.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(period);
                if t.send(Some(Value::Null)).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut node = Node {
        id: String::new(),
        nodes: Vec::new(),
        next_msg_id: 0,
        out: std::io::stdout(),
    };
    while let Ok(Some(v)) = rx.recv() {
        if v.is_null() {
            if !node.id.is_empty() {
                handle(&mut node, Event::Tick);
            }
            continue;
        }
        if v["body"]["type"] == "init" {
            node.id = v["body"]["node_id"].as_str().unwrap_or("").to_string();
            node.nodes = serde_json::from_value(v["body"]["node_ids"].clone()).unwrap_or_default();
            eprintln!("{} initialised with {:?}", node.id, node.nodes);
            // `init-ok-extra`: a key Maelstrom's init check ignores (it reads only the type).
            if std::env::args().any(|a| a == "init-ok-extra") {
                node.reply(&v, json!({"type": "init_ok", "note": "extra key"}));
            } else {
                node.reply(&v, json!({"type": "init_ok"}));
            }
            continue;
        }
        handle(&mut node, Event::Msg(v));
    }
}
