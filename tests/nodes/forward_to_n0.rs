//! A correct, trivially linearizable test node: the first node in `node_ids` holds the
//! only copy of the data; every other node forwards requests to it and relays its reply.
//! With the argument `local`, every node serves from its own map instead (fast, used to
//! measure the harness's throughput, not linearizable across nodes).

#[path = "common.rs"]
mod common;

use std::collections::{BTreeMap, HashMap};

use common::{Event, apply, run};
use serde_json::{Value, json};

fn main() {
    let local = std::env::args().any(|a| a == "local");
    let mut map: BTreeMap<String, Value> = BTreeMap::new();
    // Forwarded request msg_id -> the client's original message.
    let mut pending: HashMap<u64, Value> = HashMap::new();
    let mut next_fwd = 0u64;
    run(None, |node, ev| {
        let Event::Msg(msg) = ev else { return };
        let body = &msg["body"];
        let owner = node.nodes[0].clone();
        match body["type"].as_str().unwrap_or("") {
            "fwd" => {
                let reply = apply(&mut map, &body["req"]);
                node.reply(
                    &msg,
                    json!({"type": "fwd_ok", "reply": reply, "id": body["id"]}),
                );
            }
            "fwd_ok" => {
                if let Some(orig) = body["id"].as_u64().and_then(|id| pending.remove(&id)) {
                    node.reply(&orig, body["reply"].clone());
                }
            }
            _ if local || node.id == owner => {
                let reply = apply(&mut map, body);
                node.reply(&msg, reply);
            }
            _ => {
                next_fwd += 1;
                pending.insert(next_fwd, msg.clone());
                node.send(&owner, json!({"type": "fwd", "req": body, "id": next_fwd}));
            }
        }
    });
}
