//! A correct, trivially linearizable test node: the first node in `node_ids` holds the
//! only copy of the data; every other node forwards requests to it and relays its reply.
//! The owner deduplicates requests carrying `client_id`/`seq` (a retry gets the cached
//! reply of the latest executed seq and runs nothing), so it also passes the
//! exactly-once workload.
//!
//! Arguments change it for specific tests:
//! - `local`: every node serves from its own map (fast, to measure the harness's
//!   throughput; not linearizable across nodes);
//! - `nosessions`: no deduplication, so retried adds run twice (exactly-once must fail);
//! - `noisy`: breaks the protocol (a non-JSON stdout line, `write_ok` with an extra key).

#[path = "common.rs"]
mod common;

use std::collections::{BTreeMap, HashMap};

use common::{Event, apply, run};
use serde_json::{Value, json};

fn main() {
    let has = |flag: &str| std::env::args().any(|a| a == flag);
    let (local, sessions, noisy) = (has("local"), !has("nosessions"), has("noisy"));
    let mut map: BTreeMap<String, Value> = BTreeMap::new();
    // client_id -> (latest executed seq, its reply).
    let mut table: HashMap<String, (u64, Value)> = HashMap::new();
    let mut execute = move |map: &mut BTreeMap<String, Value>, req: &Value| -> Value {
        let session = req["client_id"].as_str().zip(req["seq"].as_u64());
        match session {
            Some((cid, seq)) if sessions => {
                if let Some((last, reply)) = table.get(cid)
                    && seq <= *last
                {
                    eprintln!("{cid} seq {seq}: cached (latest {last})");
                    return reply.clone();
                }
                let reply = apply(map, req);
                eprintln!("{cid} seq {seq}: executed {req}");
                table.insert(cid.to_string(), (seq, reply.clone()));
                reply
            }
            _ => apply(map, req),
        }
    };
    let mut said_hello = false;
    // Forwarded request msg_id -> the client's original message.
    let mut pending: HashMap<u64, Value> = HashMap::new();
    let mut next_fwd = 0u64;
    run(None, |node, ev| {
        let Event::Msg(msg) = ev else { return };
        let body = &msg["body"];
        if noisy && !said_hello {
            said_hello = true;
            println!("hello from {}", node.id);
        }
        let owner = node.nodes[0].clone();
        match body["type"].as_str().unwrap_or("") {
            "fwd" => {
                let reply = execute(&mut map, &body["req"]);
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
                let mut reply = execute(&mut map, body);
                if noisy && reply["type"] == "write_ok" {
                    reply["leader"] = json!(owner);
                }
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
