//! `oncekv client status`, `members` and `health`: what the nodes say about
//! themselves, as a table for people (in the manner of etcdctl's `endpoint
//! status`, `member list` and `endpoint health`) or, with `-o json`, one JSON
//! document for scripts. Node ids are shown by name (`n1`), from the membership
//! every node reports in its status.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::Instant;

use serde_json::{Value, json};

use super::{Output, output_failed};
use crate::cli::exit;
use crate::node::{NodeStatus, Role};
use crate::tcp::Client;

/// What each peer answered to `status`, in `--peers` order.
async fn statuses(
    client: &mut Client,
    peers: &[String],
) -> Vec<(String, Result<NodeStatus, String>)> {
    let mut all = Vec::with_capacity(peers.len());
    for (i, addr) in peers.iter().enumerate() {
        all.push((addr.clone(), client.status_of(i).await));
    }
    all
}

/// Node names by id, from every answer's membership and own name.
fn names(all: &[(String, Result<NodeStatus, String>)]) -> BTreeMap<u64, String> {
    let mut names = BTreeMap::new();
    for s in all.iter().filter_map(|(_, s)| s.as_ref().ok()) {
        for (id, peer) in &s.members {
            names.insert(*id, peer.name.clone());
        }
        names.insert(s.id, s.name.clone());
    }
    names
}

/// A node id by name, or `#id` for an id no answer named.
fn name_of(names: &BTreeMap<u64, String>, id: u64) -> String {
    names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"))
}

/// An optional index as a cell.
fn cell(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// Writes `rows` under `header`, each column as wide as its widest cell.
fn table(out: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(c);
            } else {
                text.push_str(&format!("{c:<w$}  "));
            }
        }
        text.trim_end().to_string()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    out.flush()
}

/// Writes one JSON document and a newline.
fn document(out: &mut dyn Write, doc: &Value) -> io::Result<()> {
    writeln!(out, "{doc}")?;
    out.flush()
}

/// `status`: one row (or JSON object) per peer: its status, or why it did not
/// answer. Exit 0 if any node answered, else 2.
pub async fn status(
    client: &mut Client,
    peers: &[String],
    output: Output,
    out: &mut dyn Write,
) -> i32 {
    let all = statuses(client, peers).await;
    let names = names(&all);
    let answered = all.iter().filter(|(_, s)| s.is_ok()).count();
    let code = if answered == 0 {
        exit::UNKNOWN
    } else {
        exit::OK
    };
    let written = match output {
        Output::Json => {
            let doc: Vec<Value> = all
                .iter()
                .map(|(addr, s)| match s {
                    Ok(s) => {
                        let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
                        v["address"] = Value::from(addr.as_str());
                        v["leader_name"] = s.leader.map(|l| name_of(&names, l)).into();
                        v
                    }
                    Err(e) => json!({"address": addr, "error": e}),
                })
                .collect();
            document(out, &Value::from(doc))
        }
        Output::Table => {
            let keyed = all
                .iter()
                .any(|(_, s)| s.as_ref().is_ok_and(|s| s.cluster_key == Some(true)));
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|(addr, s)| match s {
                    Ok(s) => vec![
                        s.name.clone(),
                        addr.clone(),
                        s.role.to_string(),
                        s.term.to_string(),
                        s.leader.map_or_else(|| "-".into(), |l| name_of(&names, l)),
                        cell(s.last_log_index),
                        cell(s.applied_index),
                        s.sessions.to_string(),
                        // A node whose peers refuse its hello answers, but
                        // cannot reach them: say so on its row.
                        problems(s, keyed),
                    ],
                    Err(e) => {
                        let mut row = vec!["-".to_string(); 9];
                        row[1] = addr.clone();
                        row[2] = "unreachable".into();
                        row[8] = e.clone();
                        row
                    }
                })
                .collect();
            let mut header = vec![
                "NODE", "ADDRESS", "ROLE", "TERM", "LEADER", "LAST LOG", "APPLIED", "SESSIONS",
                "ERROR",
            ];
            // The error column only when a node did not answer or is refused.
            let mut rows = rows;
            if rows.iter().all(|r| r[8].is_empty()) {
                header.pop();
                rows.iter_mut().for_each(|r| drop(r.pop()));
            }
            table(out, &header, &rows)
        }
    };
    match written {
        Ok(()) => code,
        Err(e) => output_failed(e, code),
    }
}

/// What keeps an answering node from working with its peers, for the ERROR
/// column: no cluster key where other members have one (`keyed`), and the
/// peers refusing its hello.
fn problems(s: &NodeStatus, keyed: bool) -> String {
    let mut all = Vec::new();
    if keyed && s.cluster_key == Some(false) {
        all.push(
            "no cluster key: the members with one refuse its hellos (it cannot forward or vote)"
                .to_string(),
        );
    }
    all.extend(s.hello_refused.iter().cloned());
    all.join("; ")
}

/// `members`: the membership as the leader reports it (or, with no leader
/// answering, the first node that answers): name, address, voter or learner,
/// and which one leads. Exit 0 if a node answered, else 2.
pub async fn members(
    client: &mut Client,
    peers: &[String],
    output: Output,
    out: &mut dyn Write,
) -> i32 {
    let all = statuses(client, peers).await;
    let answers: Vec<&NodeStatus> = all.iter().filter_map(|(_, s)| s.as_ref().ok()).collect();
    let Some(view) = answers
        .iter()
        .find(|s| s.role == Role::Leader)
        .or_else(|| answers.first())
    else {
        for (addr, s) in &all {
            if let Err(e) = s {
                crate::stderr_line!("error: {addr}: {e}");
            }
        }
        crate::stderr_line!("error: no node answered");
        return exit::UNKNOWN;
    };
    let mut ids: Vec<u64> = view.members.keys().copied().collect();
    ids.extend(view.voters.iter().chain(&view.learners));
    ids.sort_unstable();
    ids.dedup();
    let members: Vec<Value> = ids
        .iter()
        .map(|id| {
            let peer = view.members.get(id);
            json!({
                "id": id,
                "name": peer.map_or_else(|| format!("#{id}"), |p| p.name.clone()),
                "address": peer.map(|p| p.addr.clone()).unwrap_or_default(),
                "role": if view.learners.contains(id) { "learner" } else { "voter" },
                "leader": view.leader == Some(*id),
            })
        })
        .collect();
    let written = match output {
        Output::Json => {
            let leader = view
                .leader
                .and_then(|l| view.members.get(&l))
                .map(|p| p.name.clone());
            document(
                out,
                &json!({"members": members, "leader": leader, "reported_by": view.name}),
            )
        }
        Output::Table => {
            let rows: Vec<Vec<String>> = members
                .iter()
                .map(|m| {
                    let text = |k: &str| m[k].as_str().unwrap_or_default().to_string();
                    let leader = if m["leader"] == Value::Bool(true) {
                        "*"
                    } else {
                        ""
                    };
                    vec![text("name"), text("address"), text("role"), leader.into()]
                })
                .collect();
            table(out, &["NAME", "ADDRESS", "ROLE", "LEADER"], &rows)
        }
    };
    match written {
        Ok(()) => exit::OK,
        Err(e) => output_failed(e, exit::OK),
    }
}

/// The key `health` reads: any key does, a read changes nothing.
const HEALTH_KEY: &str = "oncekv-health";

/// `health`: per peer, a linearizable read sent to that node (which it forwards
/// to the leader, which confirms its leadership with a quorum). Healthy when the
/// read is answered (`read_ok`, or error 20: the key is missing); unhealthy when
/// the node cannot be reached or answers anything else. Exit 0 if every peer is
/// healthy, else 1.
pub async fn health(
    client: &mut Client,
    peers: &[String],
    output: Output,
    out: &mut dyn Write,
) -> i32 {
    let mut rows = Vec::with_capacity(peers.len());
    for (i, addr) in peers.iter().enumerate() {
        let started = Instant::now();
        let answer = client
            .call_node(i, json!({"type": "read", "key": HEALTH_KEY}))
            .await;
        let took_ms = started.elapsed().as_secs_f64() * 1e3;
        let error = match answer {
            Err(e) => Some(e),
            Ok(body) => {
                let ok = body.get("type") == Some(&Value::from("read_ok"))
                    || body.get("code") == Some(&Value::from(20));
                (!ok).then(|| {
                    let mut body = body;
                    body.remove("in_reply_to");
                    body.remove("msg_id");
                    Value::Object(body).to_string()
                })
            }
        };
        rows.push((addr.clone(), took_ms, error));
    }
    let code = if rows.iter().all(|(_, _, e)| e.is_none()) {
        exit::OK
    } else {
        exit::FAILED
    };
    let written = match output {
        Output::Json => {
            let doc: Vec<Value> = rows
                .iter()
                .map(|(addr, took, error)| {
                    json!({
                        "endpoint": addr,
                        "healthy": error.is_none(),
                        "took_ms": (took * 10.0).round() / 10.0,
                        "error": error,
                    })
                })
                .collect();
            document(out, &Value::from(doc))
        }
        Output::Table => {
            let mut written = Ok(());
            for (addr, took, error) in &rows {
                let line = match error {
                    None => {
                        format!("{addr} is healthy: served a linearizable read, took {took:.1} ms")
                    }
                    Some(e) => format!("{addr} is unhealthy: took {took:.1} ms, error: {e}"),
                };
                written = written.and_then(|()| writeln!(out, "{line}"));
            }
            written.and_then(|()| out.flush())
        }
    };
    match written {
        Ok(()) => code,
        Err(e) => output_failed(e, code),
    }
}
