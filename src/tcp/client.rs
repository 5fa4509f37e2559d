//! [`Client`]: the retrying exactly-once client over TCP, for the CLI, tests and
//! benchmarks.
//!
//! Every mutation carries the session's `client_id` and a fresh `seq`. An attempt
//! that ends without a definite answer (no connection, no reply in time, error 0
//! or 13) is retried **with the same seq** on the next node until a definite answer
//! or the deadline: the session table makes the retry return the cached reply if
//! the first attempt executed. Error 11 (nothing proposed) is retried too. Anything
//! else (an ok reply, errors 10/12/20/22, and 1000/1001, which are final) is the
//! answer.
//!
//! One request at a time (the simple-client rule of `docs/protocol.md`,
//! "Exactly-once sessions"): the client waits for each reply before the next
//! request.
//!
//! Owns the client's connections, attempts and retry rule. May not touch a node's
//! internals: it speaks the protocol over TCP like any client, using only the node's
//! public status types ([`crate::node::NodeStatus`]).

use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::node::{NodeStatus, Role};
use crate::protocol::framing::{Line, LineReader, write_line};
use crate::protocol::{ErrorCode, Reply};

/// How a [`Client`] reaches the cluster and how long it keeps trying.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Node addresses (`127.0.0.1:7001`), any member will do.
    pub peers: Vec<String>,
    /// Total time one operation may take, retries included.
    pub deadline: Duration,
    /// Wait for one reply before trying another node. Above the node's request
    /// timeout (1 s by default), so the node's own indefinite answer usually arrives.
    pub attempt_timeout: Duration,
    /// Deadline of one TCP connect.
    pub connect_timeout: Duration,
    /// Pause between attempts (doubles per failed attempt, up to 8x).
    pub retry_backoff: Duration,
    /// Longest request line sent, in bytes: the nodes' `request_bytes_max`
    /// (`ONCEKV_REQUEST_BYTES_MAX`). A longer request is refused before sending
    /// ([`ClientError::Usage`]). Replies are read up to this plus
    /// [`REPLY_SLACK_BYTES`], so a read of the largest value comes back.
    pub request_bytes_max: usize,
    /// The cluster key, presented on every new connection (`client_hello`):
    /// needed only for membership changes on a cluster that has one.
    pub cluster_key: Option<String>,
}

impl ClientOptions {
    /// Defaults for `peers`: 10 s deadline, 2 s per attempt.
    pub fn new(peers: Vec<String>) -> ClientOptions {
        ClientOptions {
            peers,
            deadline: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(300),
            retry_backoff: Duration::from_millis(25),
            request_bytes_max: crate::config::Config::default().request_bytes_max,
            cluster_key: None,
        }
    }
}

/// How much longer than the request limit a reply line may be: a stored value
/// takes at most `request_bytes_max` plus [`crate::config::ENTRY_SLACK_BYTES`]
/// (the node refuses larger entries), and a reply adds its envelope.
pub const REPLY_SLACK_BYTES: usize = crate::config::ENTRY_SLACK_BYTES + (4 << 10);

/// Why an operation has no definite answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The deadline passed. `maybe_executed` unless every attempt was certainly not
    /// delivered or answered "not proposed" (error 11).
    #[error("no definite answer before the deadline ({attempts} attempts; last: {last})")]
    Deadline {
        /// Attempts made.
        attempts: u32,
        /// What the last attempt got.
        last: String,
        /// Whether the operation may have taken effect.
        maybe_executed: bool,
    },
    /// The client was used wrongly (no peers, no session for a mutation).
    #[error("{0}")]
    Usage(String),
    /// A step the operation needed got a definite refusal (opening its
    /// session): nothing of the operation was done.
    #[error("{0}")]
    Refused(String),
}

impl ClientError {
    /// Whether the operation may have taken effect (an `info` outcome, not `fail`).
    pub fn maybe_executed(&self) -> bool {
        matches!(
            self,
            ClientError::Deadline {
                maybe_executed: true,
                ..
            }
        )
    }
}

/// An open connection to one node.
struct Conn {
    r: LineReader<BufReader<OwnedReadHalf>>,
    w: OwnedWriteHalf,
    /// The `msg_id` of the `client_hello` sent on it, if one was.
    hello: Option<u64>,
    /// Why the node refused that hello (a wrong key), once it said so.
    hello_refused: Option<String>,
}

/// How one attempt ended.
enum Attempt {
    /// A reply body.
    Reply(Map<String, Value>),
    /// Nothing was sent (no connection).
    NotSent(String),
    /// Sent, no reply (timeout, connection lost).
    Lost(String),
    /// Not sent: the request line has this many bytes, over the limit.
    Refused(usize),
}

/// A session-holding client of a oncekv cluster.
pub struct Client {
    /// Where and how long.
    opts: ClientOptions,
    /// Envelope `src` (`c` + random digits).
    name: String,
    /// One lazily opened connection per peer.
    conns: Vec<Option<Conn>>,
    /// Index of the node to try first (the last that answered).
    target: usize,
    /// This client's message counter.
    next_msg_id: u64,
    /// The session: `client_id` and the next `seq`.
    session: Option<(String, u64)>,
    /// The session has used seq `u64::MAX`: there is no next seq, so further
    /// mutations are refused rather than wrapping to a seq that already ran.
    seqs_exhausted: bool,
}

impl Client {
    /// A client without a session (call [`Client::open_session`] or [`Client::set_session`]).
    pub fn new(opts: ClientOptions) -> Client {
        let n = opts.peers.len();
        Client {
            name: format!("c{}", rand::random::<u32>()),
            conns: (0..n).map(|_| None).collect(),
            opts,
            target: 0,
            next_msg_id: 0,
            session: None,
            seqs_exhausted: false,
        }
    }

    /// Uses session `client_id`, numbering the next mutation `next_seq`.
    pub fn set_session(&mut self, client_id: String, next_seq: u64) {
        self.session = Some((client_id, next_seq));
        self.seqs_exhausted = false;
    }

    /// The session (`client_id`, next `seq`), if any.
    pub fn session(&self) -> Option<(&str, u64)> {
        self.session.as_ref().map(|(c, s)| (c.as_str(), *s))
    }

    /// The address the client currently sends to.
    pub fn target(&self) -> &str {
        &self.opts.peers[self.target]
    }

    /// Registers a new session and uses it (seq from 1).
    pub async fn open_session(&mut self) -> Result<String, ClientError> {
        match self.request(json!({"type": "open_session"})).await? {
            Reply::OpenSessionOk { client_id } => {
                self.set_session(client_id.clone(), 1);
                Ok(client_id)
            }
            other => Err(ClientError::Refused(format!(
                "open_session failed: {other}"
            ))),
        }
    }

    /// Closes the client's session (`close_session`) and forgets it. A closed
    /// session's later requests get error 1000; closing one that is already
    /// closed answers `close_session_ok` again, so a retried close is fine. The
    /// session is forgotten only on a definite answer; without one it may still
    /// be open (it expires when idle).
    pub async fn close_session(&mut self) -> Result<Reply, ClientError> {
        let Some((client_id, _)) = &self.session else {
            return Err(ClientError::Usage("no session to close".into()));
        };
        let body = json!({"type": "close_session", "client_id": client_id});
        let reply = self.request(body).await?;
        self.session = None;
        Ok(reply)
    }

    /// A linearizable read.
    pub async fn read(&mut self, key: Value) -> Result<Reply, ClientError> {
        self.request(json!({"type": "read", "key": key})).await
    }

    /// Writes `value` at `key`, exactly once.
    pub async fn write(&mut self, key: Value, value: Value) -> Result<Reply, ClientError> {
        self.mutate(json!({"type": "write", "key": key, "value": value}))
            .await
    }

    /// Sets `key` to `to` if it is `from`, exactly once.
    pub async fn cas(&mut self, key: Value, from: Value, to: Value) -> Result<Reply, ClientError> {
        self.mutate(json!({"type": "cas", "key": key, "from": from, "to": to}))
            .await
    }

    /// Adds `delta` to counter `key`, exactly once.
    pub async fn add(&mut self, key: Value, delta: i64) -> Result<Reply, ClientError> {
        self.mutate(json!({"type": "add", "key": key, "delta": delta}))
            .await
    }

    /// Sends a mutation with the session's next seq (consumed whatever the outcome),
    /// retrying it with that same seq.
    pub async fn mutate(&mut self, mut body: Value) -> Result<Reply, ClientError> {
        let Some((client_id, seq)) = self.session.as_mut() else {
            return Err(ClientError::Usage(
                "a mutation needs a session: open_session or set_session".into(),
            ));
        };
        if self.seqs_exhausted {
            return Err(ClientError::Usage(format!(
                "session {client_id} has used its last seq ({}); open a new session",
                u64::MAX
            )));
        }
        body["client_id"] = Value::from(client_id.clone());
        body["seq"] = Value::from(*seq);
        match seq.checked_add(1) {
            Some(next) => *seq = next,
            None => self.seqs_exhausted = true,
        }
        self.request(body).await
    }

    /// Sends `body` (a request without `msg_id`) until a definite answer or the deadline.
    pub async fn request(&mut self, body: Value) -> Result<Reply, ClientError> {
        let Value::Object(body) = body else {
            return Err(ClientError::Usage("a request body is a JSON object".into()));
        };
        if self.opts.peers.is_empty() {
            return Err(ClientError::Usage("no peers".into()));
        }
        let deadline = Instant::now() + self.opts.deadline;
        let mut attempts = 0u32;
        let mut maybe_executed = false;
        loop {
            attempts += 1;
            let i = self.target;
            let last = match self.attempt(i, body.clone(), deadline).await {
                Attempt::Reply(reply) => match decide(reply) {
                    Ok(reply) => return Ok(reply),
                    Err((text, proposed)) => {
                        maybe_executed |= proposed;
                        text
                    }
                },
                Attempt::Refused(bytes) => return Err(self.too_long(bytes)),
                Attempt::NotSent(text) => text,
                Attempt::Lost(text) => {
                    maybe_executed = true;
                    text
                }
            };
            tracing::debug!("attempt {attempts} at {}: {last}", self.opts.peers[i]);
            let pause = self.opts.retry_backoff * 2u32.pow(attempts.min(4) - 1);
            if Instant::now() + pause >= deadline {
                return Err(ClientError::Deadline {
                    attempts,
                    last,
                    maybe_executed,
                });
            }
            tokio::time::sleep(pause).await;
            self.target = (i + 1) % self.opts.peers.len();
        }
    }

    /// One exchange with node `index` (no retry): its reply body, errors included.
    pub async fn call_node(
        &mut self,
        index: usize,
        body: Value,
    ) -> Result<Map<String, Value>, String> {
        let Value::Object(body) = body else {
            return Err("a request body is a JSON object".into());
        };
        let deadline = Instant::now() + self.opts.attempt_timeout;
        match self.attempt(index, body, deadline).await {
            Attempt::Reply(body) => Ok(body),
            Attempt::NotSent(e) | Attempt::Lost(e) => Err(e),
            Attempt::Refused(bytes) => Err(self.too_long(bytes).to_string()),
        }
    }

    /// The refusal of a request line of `bytes` bytes, over the limit.
    fn too_long(&self, bytes: usize) -> ClientError {
        ClientError::Usage(format!(
            "the request is {bytes} bytes, above the limit of {} bytes; not sent. \
             The nodes refuse longer requests unless started with a larger \
             ONCEKV_REQUEST_BYTES_MAX (set the same for the client)",
            self.opts.request_bytes_max
        ))
    }

    /// Asks node `index` for its status.
    pub async fn status_of(&mut self, index: usize) -> Result<NodeStatus, String> {
        let body = self.call_node(index, json!({"type": "status"})).await?;
        serde_json::from_value(Value::Object(body.clone()))
            .map_err(|e| format!("bad status reply {}: {e}", Value::Object(body)))
    }

    /// The index of the node that says it leads, if any answers so. A member
    /// that names a leader outside the given peers (the cluster has grown or
    /// moved since they were written down) adds that leader's address, from its
    /// own membership, to the peers tried, so any one live member is enough.
    pub async fn find_leader(&mut self) -> Option<usize> {
        let mut hints = Vec::new();
        for i in 0..self.opts.peers.len() {
            match self.status_of(i).await {
                Ok(s) if s.role == Role::Leader => {
                    self.target = i;
                    return Some(i);
                }
                Ok(s) => {
                    let named = s.leader.and_then(|l| s.members.get(&l));
                    if let Some(peer) = named
                        && !peer.addr.is_empty()
                        && !self.opts.peers.contains(&peer.addr)
                        && !hints.contains(&peer.addr)
                    {
                        hints.push(peer.addr.clone());
                    }
                }
                Err(_) => {}
            }
        }
        for addr in hints {
            self.opts.peers.push(addr);
            self.conns.push(None);
            let i = self.opts.peers.len() - 1;
            if let Ok(s) = self.status_of(i).await
                && s.role == Role::Leader
            {
                self.target = i;
                return Some(i);
            }
        }
        None
    }

    /// One request-reply exchange with node `i`.
    async fn attempt(
        &mut self,
        i: usize,
        mut body: Map<String, Value>,
        deadline: Instant,
    ) -> Attempt {
        self.next_msg_id += 1;
        let msg_id = self.next_msg_id;
        body.insert("msg_id".into(), Value::from(msg_id));
        let line = json!({"src": self.name, "dest": "", "body": body}).to_string();
        if line.len() > self.opts.request_bytes_max {
            return Attempt::Refused(line.len());
        }
        let addr = self.opts.peers[i].clone();
        let wait = self
            .opts
            .attempt_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        let conn = match self.conns[i].take() {
            Some(c) => c,
            None => {
                let connect = TcpStream::connect(&addr);
                match tokio::time::timeout(self.opts.connect_timeout.min(wait), connect).await {
                    Ok(Ok(s)) => {
                        let _ = s.set_nodelay(true);
                        let (r, mut w) = s.into_split();
                        let mut hello = None;
                        if let Some(key) = &self.opts.cluster_key {
                            // Its reply is not waited for; a refusal is kept
                            // to explain a later "needs the cluster key".
                            self.next_msg_id += 1;
                            hello = Some(self.next_msg_id);
                            let hello = super::client_hello_line(&self.name, key, self.next_msg_id);
                            if let Err(e) = write_line(&mut w, &hello).await {
                                return Attempt::NotSent(format!("hello to {addr}: {e}"));
                            }
                        }
                        let max = self.opts.request_bytes_max + REPLY_SLACK_BYTES;
                        Conn {
                            r: LineReader::new(BufReader::new(r), max),
                            w,
                            hello,
                            hello_refused: None,
                        }
                    }
                    Ok(Err(e)) => return Attempt::NotSent(format!("connect {addr}: {e}")),
                    Err(_) => return Attempt::NotSent(format!("connect {addr}: timed out")),
                }
            }
        };
        match tokio::time::timeout(wait, exchange(conn, &line, msg_id)).await {
            Ok(Ok((conn, reply))) => {
                self.conns[i] = Some(conn);
                Attempt::Reply(reply)
            }
            Ok(Err(e)) => Attempt::Lost(format!("{addr}: {e}")),
            Err(_) => Attempt::Lost(format!("{addr}: no reply in {wait:?}")),
        }
    }
}

/// Writes `line` and reads until the reply to `msg_id` (a stale reply is skipped).
async fn exchange(
    mut conn: Conn,
    line: &str,
    msg_id: u64,
) -> Result<(Conn, Map<String, Value>), String> {
    write_line(&mut conn.w, line)
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let line = match conn.r.read_line().await.map_err(|e| e.to_string())? {
            None => return Err("connection closed".into()),
            Some(Line::Full(line)) => line,
            Some(Line::TooLong(long)) if long.skeleton.in_reply_to == Some(msg_id) => {
                return Err(format!(
                    "the reply is {} bytes, above the limit of {} (request_bytes_max plus \
                     {REPLY_SLACK_BYTES})",
                    long.bytes, long.limit
                ));
            }
            Some(Line::NotUtf8(bad)) if bad.skeleton.in_reply_to == Some(msg_id) => {
                return Err(format!(
                    "the reply is not valid UTF-8 (byte offset {})",
                    bad.offset
                ));
            }
            Some(Line::TooLong(_) | Line::NotUtf8(_)) => continue,
        };
        let Ok(Value::Object(mut env)) = serde_json::from_str::<Value>(&line) else {
            let mut sk = crate::protocol::Skeleton::default();
            sk.feed(line.as_bytes());
            sk.finish();
            if sk.in_reply_to == Some(msg_id) {
                return Err("the reply is not valid JSON".into());
            }
            continue;
        };
        let Some(Value::Object(mut body)) = env.remove("body") else {
            continue;
        };
        let answers = body.get("in_reply_to").and_then(Value::as_u64);
        if answers.is_some() && answers == conn.hello {
            if body.get("type") == Some(&json!("error")) {
                let why = body
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or("refused");
                conn.hello_refused = Some(why.to_string());
            }
            continue;
        }
        if answers == Some(msg_id) {
            // "Needs the cluster key" when one was sent: say what became of it.
            if let (Some(why), Some(10)) = (
                &conn.hello_refused,
                body.get("code").and_then(Value::as_u64),
            ) {
                let text = body.get("text").and_then(Value::as_str).unwrap_or("");
                let text = format!("{text} (the key this client sent was refused: {why})");
                body.insert("text".into(), Value::from(text));
            }
            return Ok((conn, body));
        }
    }
}

/// A definite answer, or why to retry and whether the attempt may have executed.
fn decide(mut body: Map<String, Value>) -> Result<Reply, (String, bool)> {
    body.remove("in_reply_to");
    body.remove("msg_id");
    let text = Value::Object(body.clone()).to_string();
    let reply: Reply = serde_json::from_value(Value::Object(body))
        .map_err(|e| (format!("unexpected reply {text}: {e}"), true))?;
    match reply.error_code() {
        Some(ErrorCode::TemporarilyUnavailable) => Err((text, false)),
        Some(ErrorCode::Timeout | ErrorCode::Crash) => Err((text, true)),
        _ => Ok(reply),
    }
}
