//! A BROKEN test node: primary-backup where the primary acknowledges a write before any
//! backup has it. Each node takes as primary the lowest node id it has heard a heartbeat
//! from recently (itself included); others forward to it. The primary applies, answers,
//! then replicates without waiting. Under a partition two primaries accept writes and
//! acknowledged writes are lost. The harness must find it invalid.

#[path = "common.rs"]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::{Event, apply, run};
use serde_json::{Value, json};

/// A peer is considered down after this long without a heartbeat.
const SUSPECT_AFTER: Duration = Duration::from_millis(400);

fn main() {
    let mut map: BTreeMap<String, Value> = BTreeMap::new();
    let mut last_heard: HashMap<String, Instant> = HashMap::new();
    let mut pending: HashMap<u64, Value> = HashMap::new();
    let mut next_fwd = 0u64;
    run(Some(Duration::from_millis(100)), |node, ev| {
        let primary = |node: &common::Node, heard: &HashMap<String, Instant>| {
            node.nodes
                .iter()
                .find(|n| {
                    **n == node.id || heard.get(*n).is_some_and(|t| t.elapsed() < SUSPECT_AFTER)
                })
                .cloned()
                .unwrap_or_else(|| node.id.clone())
        };
        match ev {
            Event::Tick => {
                for p in node.peers() {
                    node.send(&p, json!({"type": "heartbeat"}));
                }
            }
            Event::Msg(msg) => {
                let body = &msg["body"];
                let src = msg["src"].as_str().unwrap_or("").to_string();
                match body["type"].as_str().unwrap_or("") {
                    "heartbeat" => {
                        last_heard.insert(src, Instant::now());
                    }
                    "replicate" => {
                        let key = body["key"].as_str().unwrap_or("").to_string();
                        map.insert(key, body["value"].clone());
                    }
                    "fwd_ok" => {
                        if let Some(orig) = body["id"].as_u64().and_then(|id| pending.remove(&id)) {
                            node.reply(&orig, body["reply"].clone());
                        }
                    }
                    t => {
                        let (req, fwd) = if t == "fwd" {
                            (body["req"].clone(), true)
                        } else {
                            (body.clone(), false)
                        };
                        let p = primary(node, &last_heard);
                        if p != node.id && !fwd {
                            next_fwd += 1;
                            pending.insert(next_fwd, msg.clone());
                            node.send(&p, json!({"type": "fwd", "req": req, "id": next_fwd}));
                            return;
                        }
                        let reply = apply(&mut map, &req);
                        if fwd {
                            node.reply(
                                &msg,
                                json!({"type": "fwd_ok", "reply": reply, "id": body["id"]}),
                            );
                        } else {
                            node.reply(&msg, reply);
                        }
                        // Replicate after acknowledging, without waiting for anyone.
                        if req["type"] != "read" {
                            let key = req["key"].to_string();
                            if let Some(v) = map.get(&key).cloned() {
                                for peer in node.peers() {
                                    node.send(
                                        &peer,
                                        json!({"type": "replicate", "key": key, "value": v}),
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    });
}
