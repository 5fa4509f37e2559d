//! [`TcpTransport`]: how a node reaches its peers. One *link* per peer address: a
//! task owning one outgoing connection, fed by a bounded queue of calls. Calls are
//! multiplexed on the connection by `msg_id` (openraft sends appends, votes and
//! snapshots concurrently) and their replies routed back by `in_reply_to`.
//!
//! The error rule the node relies on ([`CallError`]): `Unreachable` only when the
//! request was certainly not delivered (no connection, back-off, a line not fully
//! written: the reader discards an unterminated line); once a line was written, a
//! lost connection or a missed deadline is `Timeout` (it may have been acted on).
//!
//! Reconnection: a failed connect starts a back-off (doubling from
//! [`TcpConfig::reconnect_backoff_min`] to `..._max`) during which calls fail fast
//! as `Unreachable`, so openraft's own retry loop paces the attempts.
//!
//! Owns: outgoing peer connections, our `peer_hello`, the links' queues and
//! back-off. Calls awaiting replies live in the shared
//! [`PendingCalls`] table. May not touch:
//! the served side of connections ([`super::handler`]) or the node.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::TcpConfig;
use crate::protocol::Skeleton;
use crate::protocol::framing::{Line, LineReader, write_line};
use crate::raft::Peer;
use crate::raft::network::{Body, CallError, RpcRequest, Transport};
use crate::raft::pending::{PendingCalls, ReplyTx};

/// Calls written on a connection and awaiting their reply, by `msg_id`.
type Pending = Arc<PendingCalls>;

/// [`Transport`] over TCP connections to the peers' addresses.
pub struct TcpTransport {
    /// This node's name, the `src` of its RPCs.
    me: String,
    /// Links by peer address, created on first use.
    links: Mutex<HashMap<String, mpsc::Sender<Call>>>,
    /// The node's message counter (shared with the server's writers).
    msg_ids: Arc<AtomicU64>,
    /// Bounds and timeouts.
    config: TcpConfig,
    /// Longest reply line read from a peer.
    line_bytes_max: usize,
    /// Peers refusing our hello, while they do: why, by link (`name=addr`).
    refusals: Refusals,
}

/// The links' standing hello refusals (why, when last refused), by link key.
type Refusals = Arc<Mutex<BTreeMap<String, (String, Instant)>>>;

/// A refusal is shown in `status` for this many of the longest reconnect
/// back-offs after it was last heard (5 s by default).
const REFUSAL_SHOWN_BACKOFFS: u32 = 10;

/// One request for a link.
struct Call {
    /// Where to (its name is the envelope's `dest`).
    peer: Peer,
    /// The request (without `msg_id`, which the link assigns).
    req: RpcRequest,
    /// Where the outcome goes.
    reply: ReplyTx,
}

impl TcpTransport {
    /// A transport for node `me`.
    pub fn new(me: String, msg_ids: Arc<AtomicU64>, config: TcpConfig) -> TcpTransport {
        TcpTransport {
            me,
            links: Mutex::default(),
            refusals: Refusals::default(),
            msg_ids,
            config,
            line_bytes_max: crate::config::Config::default().peer_line_bytes_max,
        }
    }

    /// Reads peers' replies up to `n` bytes a line (the node's
    /// [`crate::config::Config::peer_line_bytes_max`]).
    pub fn with_line_bytes_max(mut self, n: usize) -> TcpTransport {
        self.line_bytes_max = n;
        self
    }

    /// The link to `peer`: one per name and address, as its hello names both.
    fn link(&self, peer: &Peer) -> mpsc::Sender<Call> {
        let key = format!("{}={}", peer.name, peer.addr);
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = links.get(&key).filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(self.config.queue_capacity);
        let link = Link {
            addr: peer.addr.clone(),
            name: peer.name.clone(),
            line_bytes_max: self.line_bytes_max,
            me: self.me.clone(),
            msg_ids: self.msg_ids.clone(),
            config: self.config.clone(),
            conn: None,
            backoff: self.config.reconnect_backoff_min,
            retry_at: Instant::now(),
            refused: None,
            key: key.clone(),
            refusals: self.refusals.clone(),
        };
        tokio::spawn(link.run(rx));
        links.insert(key, tx.clone());
        tx
    }
}

impl Transport for TcpTransport {
    fn keyed(&self) -> Option<bool> {
        Some(self.config.cluster_key.is_some())
    }

    fn refusals(&self) -> Vec<String> {
        // A link refused again at each reconnect (its back-off is at most
        // `reconnect_backoff_max`) while calls keep coming; one no call uses
        // any more (a peer's old address, a member removed) fades out.
        let shown_for = self.config.reconnect_backoff_max * REFUSAL_SHOWN_BACKOFFS;
        let all = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        all.values()
            .filter(|(_, at)| at.elapsed() < shown_for)
            .map(|(why, _)| why.clone())
            .collect()
    }

    fn call(
        &self,
        peer: &Peer,
        req: RpcRequest,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Body, CallError>> {
        let unreachable = |why: &str| CallError::Unreachable {
            peer: peer.to_string(),
            why: why.to_string(),
        };
        if peer.addr.is_empty() {
            let e = unreachable("no address");
            return Box::pin(async move { Err(e) });
        }
        let link = self.link(peer);
        let peer = peer.clone();
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            let (tx, rx) = oneshot::channel();
            let call = Call {
                peer: peer.clone(),
                req,
                reply: tx,
            };
            let unreachable = |why: &str| CallError::Unreachable {
                peer: peer.to_string(),
                why: why.to_string(),
            };
            match tokio::time::timeout_at(deadline, link.send(call)).await {
                Err(_) => return Err(unreachable("link queue full")),
                Ok(Err(_)) => return Err(unreachable("link closed")),
                Ok(Ok(())) => {}
            }
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(outcome)) => outcome,
                // Dropped by a broken connection, or no reply in time: maybe delivered.
                Ok(Err(_)) | Err(_) => Err(CallError::Timeout(peer.to_string())),
            }
        })
    }
}

/// A live outgoing connection.
struct Conn {
    /// The write half (the link task writes; the reader task reads).
    w: OwnedWriteHalf,
    /// Calls awaiting replies on this connection.
    pending: Pending,
    /// Routes replies; finished when the connection is gone.
    reader: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Pending callers see their senders dropped: `Timeout` (maybe delivered).
        self.reader.abort();
    }
}

/// The task state of one link.
struct Link {
    /// The peer's address.
    addr: String,
    /// The peer's name, the receiver its hello names.
    name: String,
    /// Longest reply line read.
    line_bytes_max: usize,
    /// This node's name.
    me: String,
    /// The node's message counter.
    msg_ids: Arc<AtomicU64>,
    /// Bounds and timeouts.
    config: TcpConfig,
    /// The connection, when up.
    conn: Option<Conn>,
    /// Current reconnect delay.
    backoff: Duration,
    /// No connect attempt before this.
    retry_at: Instant,
    /// The peer's refusal of our last hello (code, why), while it stands: calls
    /// fail with it until a connect gets further.
    refused: Option<(u64, String)>,
    /// This link's key among the transport's links (`name=addr`).
    key: String,
    /// The transport's standing refusals, by link key.
    refusals: Refusals,
}

impl Link {
    async fn run(mut self, mut calls: mpsc::Receiver<Call>) {
        while let Some(call) = calls.recv().await {
            if call.reply.is_closed() {
                continue; // the caller gave up while queued
            }
            if let Err(why) = self.connect().await {
                // A peer that refused our hello answered definitely (wrong cluster
                // key, not the member we meant): its code travels with the call, so
                // a forwarded request's client hears a definite refusal, not
                // "no leader". Anything else is plain unreachability.
                let error = match &self.refused {
                    Some((code, text)) => CallError::Remote {
                        peer: call.peer.to_string(),
                        code: *code,
                        text: text.clone(),
                    },
                    None => CallError::Unreachable {
                        peer: call.peer.to_string(),
                        why,
                    },
                };
                let _ = call.reply.send(Err(error));
                continue;
            }
            self.send(call).await;
        }
    }

    /// Makes sure a connection is up (or says why not).
    async fn connect(&mut self) -> Result<(), String> {
        if self.conn.as_ref().is_some_and(|c| c.reader.is_finished()) {
            self.conn = None;
        }
        if self.conn.is_some() {
            return Ok(());
        }
        if Instant::now() < self.retry_at {
            return Err("backing off after a failed connect".into());
        }
        let connect = TcpStream::connect(&self.addr);
        let why = match tokio::time::timeout(self.config.connect_timeout, connect).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                let (r, mut w) = stream.into_split();
                let mut lines = LineReader::new(BufReader::new(r), self.line_bytes_max);
                // First on the connection, and answered before any call is sent:
                // the receiver says whether it is the member we mean to reach.
                let msg_id = self.msg_ids.fetch_add(1, Ordering::Relaxed);
                let key = self.config.cluster_key.as_deref();
                let hello = super::hello_line(&self.me, &self.name, key, msg_id);
                let exchange = async {
                    write_line(&mut w, &hello)
                        .await
                        .map_err(|e| HelloError::Failed(e.to_string()))?;
                    hello_reply(&mut lines, msg_id).await
                };
                match tokio::time::timeout(self.config.write_timeout, exchange).await {
                    Ok(Ok(())) => self.set_refused(None),
                    Ok(Err(HelloError::Refused { code, text })) => {
                        let why =
                            format!("{} at {} refused our hello: {text}", self.name, self.addr);
                        // Logged when it starts or changes, not at every retry.
                        if self.refused.as_ref().is_none_or(|(_, w)| *w != why) {
                            if text.contains("cluster key") {
                                let hint = if key.is_none() {
                                    "this node has no cluster key (--cluster-key-file)"
                                } else {
                                    "do the members share one cluster key?"
                                };
                                tracing::warn!("{why}; {hint}");
                                super::key_problem_on_stderr(
                                    super::KeyProblem::RefusedByPeer,
                                    &format!("{}: {why}; {hint}", self.me),
                                );
                            } else {
                                tracing::warn!("{why}");
                            }
                        }
                        self.set_refused(Some((code, why.clone())));
                        return self.backoff_after(why);
                    }
                    Ok(Err(HelloError::Failed(e))) => {
                        let why = format!(
                            "{} at {}: no answer to our hello: {e}",
                            self.name, self.addr
                        );
                        tracing::warn!("{why}");
                        self.set_refused(None);
                        return self.backoff_after(why);
                    }
                    Err(_) => return self.backoff_after("no answer to our hello in time".into()),
                }
                let pending = Pending::default();
                let reader = tokio::spawn(read_replies(lines, pending.clone()));
                self.conn = Some(Conn { w, pending, reader });
                self.backoff = self.config.reconnect_backoff_min;
                tracing::debug!("connected to {}", self.addr);
                return Ok(());
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connect timed out".to_string(),
        };
        self.set_refused(None);
        self.backoff_after(why)
    }

    /// Records the peer's refusal of our hello (or that none stands), here and
    /// in the transport's list that `status` shows.
    fn set_refused(&mut self, refused: Option<(u64, String)>) {
        let mut all = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        match &refused {
            Some((_, why)) => all.insert(self.key.clone(), (why.clone(), Instant::now())),
            None => all.remove(&self.key),
        };
        self.refused = refused;
    }

    /// Starts (or lengthens) the back-off after a failed connect.
    fn backoff_after(&mut self, why: String) -> Result<(), String> {
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(self.config.reconnect_backoff_max);
        Err(why)
    }

    async fn send(&mut self, call: Call) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let msg_id = self.msg_ids.fetch_add(1, Ordering::Relaxed);
        let line = call.req.line(&self.me, &call.peer.name, msg_id);
        conn.pending.insert(msg_id, call.reply);
        let write = write_line(&mut conn.w, &line);
        let failed = match tokio::time::timeout(self.config.write_timeout, write).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "write timed out".to_string(),
        };
        // The line was not fully written, so it cannot be acted on: Unreachable.
        if let Some(tx) = conn.pending.take(msg_id) {
            let _ = tx.send(Err(CallError::Unreachable {
                peer: call.peer.to_string(),
                why: failed,
            }));
        }
        self.conn = None;
    }
}

/// Why a hello did not get `peer_hello_ok`.
enum HelloError {
    /// The peer answered with an error: it refuses this link.
    Refused {
        /// The error's code.
        code: u64,
        /// Its text.
        text: String,
    },
    /// No answer (connection closed or broken).
    Failed(String),
}

/// Waits for the answer to our hello (`msg_id`): `Ok` for `peer_hello_ok`, else
/// why not.
async fn hello_reply(lines: &mut Replies, msg_id: u64) -> Result<(), HelloError> {
    loop {
        let line = match lines.read_line().await {
            Ok(Some(Line::Full(line))) => line,
            Ok(Some(Line::TooLong(_) | Line::NotUtf8(_))) => continue,
            Ok(None) => return Err(HelloError::Failed("connection closed".into())),
            Err(e) => return Err(HelloError::Failed(e.to_string())),
        };
        let Ok(Value::Object(mut env)) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let Some(Value::Object(body)) = env.remove("body") else {
            continue;
        };
        if body.get("in_reply_to").and_then(Value::as_u64) != Some(msg_id) {
            continue;
        }
        return match body.get("type").and_then(Value::as_str) {
            Some("peer_hello_ok") => Ok(()),
            _ => Err(HelloError::Refused {
                // An answer without a known code is not a definite refusal.
                code: body.get("code").and_then(Value::as_u64).unwrap_or(13),
                // Whatever listens at the address wrote it: cut and escaped
                // before it is logged or shown in `status`.
                text: crate::reject_log::cut(
                    body.get("text")
                        .and_then(Value::as_str)
                        .unwrap_or("unexpected answer"),
                ),
            }),
        };
    }
}

/// The reader of a peer connection.
type Replies = LineReader<BufReader<OwnedReadHalf>>;

/// Tells the caller of the `in_reply_to` that `sk` read from an unreadable reply
/// that it could not be read (it may have been acted on: an indefinite outcome,
/// at once rather than at its deadline).
fn unreadable(pending: &Pending, sk: &Skeleton, why: String) {
    crate::reject!("dropping an unreadable reply from a peer: {why}");
    let src = sk.src.as_deref().unwrap_or("?");
    if let Some(id) = sk.in_reply_to {
        pending.unreadable(id, src, &why);
    }
}

/// Routes reply lines to their callers until the connection ends.
async fn read_replies(mut lines: Replies, pending: Pending) {
    while let Ok(Some(line)) = lines.read_line().await {
        let line = match line {
            Line::Full(line) => line,
            Line::TooLong(long) => {
                let why = format!(
                    "a line of {} bytes, over the limit of {}",
                    long.bytes, long.limit
                );
                unreadable(&pending, &long.skeleton, why);
                continue;
            }
            Line::NotUtf8(bad) => {
                let why = format!("a line of {} bytes: {}", bad.bytes, bad.text());
                unreadable(&pending, &bad.skeleton, why);
                continue;
            }
        };
        // Let what is already runnable, and what the I/O driver finds ready next,
        // go first (`yield_now` re-queues behind both). A leader commits on the
        // first follower's ack; the second one tends to arrive together with the
        // client's next request, and handling it first delayed that request's
        // appends. Measured (oncekv alone, alternating runs, each won 5 of 5 or
        // 3 of 3): +7% writes/s at 1 client, +8% at 64 (docs/benchmarks.md). Replies
        // on this connection keep their order: this task handles them one by one.
        tokio::task::yield_now().await;
        let mut env = match serde_json::from_str::<Value>(&line) {
            Ok(Value::Object(env)) => env,
            Ok(_) => {
                unreadable(&pending, &Skeleton::default(), "not a JSON object".into());
                continue;
            }
            Err(e) => {
                let mut sk = Skeleton::default();
                sk.feed(line.as_bytes());
                sk.finish();
                unreadable(&pending, &sk, e.to_string());
                continue;
            }
        };
        let src = env
            .get("src")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        let Some(Value::Object(body)) = env.remove("body") else {
            continue;
        };
        let Some(id) = body.get("in_reply_to").and_then(Value::as_u64) else {
            continue;
        };
        pending.complete(id, crate::raft::network::reply_or_remote_error(&src, body));
    }
    // Dropping the remaining senders tells their callers: maybe delivered.
    pending.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::framing::encode_raw;

    #[test]
    fn an_rpc_line_is_the_line_of_the_same_body_built_as_a_map() {
        let rpc = serde_json::json!({"vote": {"term": 3}, "entries": [1, "x\n"]});
        let fast = RpcRequest::new("raft_append", &rpc)
            .expect("encodes")
            .line("n1", "n2", 9);
        let body = crate::raft::network::rpc_body("raft_append", &rpc);
        let slow = encode_raw("n1", "n2", body, None, 9);
        assert_eq!(fast, slow);
        assert_eq!(
            fast,
            r#"{"src":"n1","dest":"n2","body":{"type":"raft_append","rpc":{"entries":[1,"x\n"],"vote":{"term":3}},"msg_id":9}}"#
        );
    }
}
