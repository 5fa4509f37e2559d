//! A BROKEN test node: each node keeps its own map, applies writes and cas locally,
//! answers at once, and gossips the new value to the other nodes lazily (on a timer).
//! Reads come from the local, possibly stale, copy. The harness must find it invalid.

#[path = "common.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Event, apply, run};
use serde_json::{Value, json};

fn main() {
    let mut map: BTreeMap<String, Value> = BTreeMap::new();
    let mut dirty: BTreeMap<String, Value> = BTreeMap::new();
    run(Some(Duration::from_millis(200)), |node, ev| match ev {
        Event::Tick => {
            if dirty.is_empty() {
                return;
            }
            let batch: Vec<Value> = std::mem::take(&mut dirty)
                .into_iter()
                .map(|(k, v)| json!([k, v]))
                .collect();
            for p in node.peers() {
                node.send(&p, json!({"type": "gossip", "kvs": batch}));
            }
        }
        Event::Msg(msg) => {
            let body = &msg["body"];
            if body["type"] == "gossip" {
                for kv in body["kvs"].as_array().into_iter().flatten() {
                    if let Some(k) = kv[0].as_str() {
                        map.insert(k.to_string(), kv[1].clone());
                    }
                }
                return;
            }
            let reply = apply(&mut map, body);
            if body["type"] != "read" {
                let key = body["key"].to_string();
                if let Some(v) = map.get(&key) {
                    dirty.insert(key, v.clone());
                }
            }
            node.reply(&msg, reply);
        }
    });
}
