//! A correct node (the `forward_to_n0` design: the first node holds the only copy
//! of the data, the others relay to it) that misbehaves in one way, chosen by its
//! argument, for the harness's process tests:
//! - `crash-after-ms N`: the first node in `node_ids` writes a line to stderr and
//!   exits with status 3, N ms after its `init`;
//! - `stray-line`: every node writes a message with `"src": null` to stdout before
//!   it reads its `init` (as Maelstrom's demo `raft.rb` does when a vote request
//!   beats its init);
//! - `partial-last-line`: every node writes half a line to stdout when its stdin
//!   closes (the harness stopping it), closes stdout, and exits 300 ms later;
//! - `init-ok-extra`: `init_ok` carries an extra key (Maelstrom checks only the type);
//! - `exit-on-eof-status N`: exits with status N when its stdin closes;
//! - `garbage-after-init`: the first node prints a line that is not JSON when
//!   its first message after `init` arrives, then works on;
//! - `early-reply`: after each `read_ok` the first node sends a client, it also
//!   sends that client a `read_ok` of 999 (never written) answering the client's
//!   next `msg_id`, before the client has sent it.

#[path = "common.rs"]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::time::{Duration, Instant};

use common::{Event, apply, run};
use serde_json::{Value, json};

fn arg_after(flag: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let has = |flag: &str| std::env::args().any(|a| a == flag);
    let crash_after = arg_after("crash-after-ms")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_millis);
    if has("stray-line") {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            r#"{{"src":null,"dest":"n1","body":{{"type":"request_vote_res","term":0}}}}"#
        );
        let _ = out.flush();
    }
    let mut map: BTreeMap<String, Value> = BTreeMap::new();
    let mut pending: HashMap<u64, Value> = HashMap::new();
    let mut next_fwd = 0u64;
    let mut inited_at: Option<Instant> = None;
    let mut garbage = has("garbage-after-init");
    let early_reply = has("early-reply");
    let tick = crash_after.map(|_| Duration::from_millis(20));
    run(tick, |node, ev| {
        let started = *inited_at.get_or_insert_with(Instant::now);
        let owner = node.nodes[0].clone();
        let msg = match ev {
            Event::Tick => {
                if let Some(after) = crash_after
                    && node.id == owner
                    && started.elapsed() >= after
                {
                    eprintln!("{}: crashing on purpose", node.id);
                    std::process::exit(3);
                }
                return;
            }
            Event::Msg(m) => m,
        };
        let body = &msg["body"];
        if garbage && node.id == owner {
            garbage = false;
            println!("debug: hello");
        }
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
            _ if node.id == owner => {
                let reply = apply(&mut map, body);
                let ghost = early_reply && reply["type"] == "read_ok";
                node.reply(&msg, reply);
                if let (true, Some(id)) = (ghost, body["msg_id"].as_u64()) {
                    let to = msg["src"].as_str().unwrap_or("").to_string();
                    node.send(
                        &to,
                        json!({"type": "read_ok", "value": 999, "in_reply_to": id + 1}),
                    );
                }
            }
            _ => {
                next_fwd += 1;
                pending.insert(next_fwd, msg.clone());
                node.send(&owner, json!({"type": "fwd", "req": body, "id": next_fwd}));
            }
        }
    });
    // stdin closed: the harness is stopping this node.
    if has("partial-last-line") {
        let mut out = std::io::stdout().lock();
        let _ = write!(out, r#"{{"src":"n0","dest":"c"#);
        let _ = out.flush();
        // Close stdout and linger, so the harness reads the cut line (at end of
        // file) while this process still runs, not after it is gone.
        // SAFETY: fd 1 is not used again (the lock above is held to the end).
        unsafe { libc::close(1) };
        std::thread::sleep(Duration::from_millis(300));
    }
    if let Some(code) = arg_after("exit-on-eof-status").and_then(|s| s.parse::<i32>().ok()) {
        std::process::exit(code);
    }
}
