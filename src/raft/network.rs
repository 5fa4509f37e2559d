//! `RaftNetworkV2` over any message transport: each Raft RPC is one request body
//! (`raft_append`, `raft_vote`, `raft_pre_vote`, `raft_snapshot`) holding openraft's
//! message as JSON, answered by one reply body. Maelstrom mode carries these as
//! node-to-node messages on stdout/stdin; TCP mode on peer connections.
//!
//! Owns: the RPC vocabulary ([`Transport`], [`CallError`] and its delivery rule,
//! [`RpcRequest`], reply bodies) and openraft's network traits over it. May not
//! touch: how bytes travel (the transports') or the node's serving logic.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use openraft::RaftNetworkV2;
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, VoteRequest,
    VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::sm_store::Snapshot;
use super::{Peer, SnapshotMeta, TypeConfig, Vote};

/// A JSON object body.
pub type Body = Map<String, Value>;

/// Why a call to a peer produced no reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No reply within the deadline: the peer may or may not have acted.
    #[error("no reply from {0} in time")]
    Timeout(String),
    /// The message could not be sent (peer unknown, connection down, shutting down).
    #[error("cannot reach {peer}: {why}")]
    Unreachable {
        /// The peer.
        peer: String,
        /// What failed.
        why: String,
    },
    /// The peer answered with an error body.
    #[error("{peer} answered error {code}: {text}")]
    Remote {
        /// The peer.
        peer: String,
        /// Its error code.
        code: u64,
        /// Its text.
        text: String,
    },
}

/// A request to a peer: the body `{type: kind, rpc}`, `rpc` already encoded from
/// its type (no generic JSON tree on the hot path of appends). Every node-to-node
/// request has this shape.
#[derive(Debug)]
pub struct RpcRequest {
    /// The body's `type` (`raft_append`, `forward`, ...).
    pub kind: &'static str,
    /// The `rpc` field, as JSON text.
    pub rpc: Box<RawValue>,
}

impl RpcRequest {
    /// Encodes `rpc` as the request's `rpc` field.
    pub fn new(kind: &'static str, rpc: &impl Serialize) -> Result<RpcRequest, String> {
        let rpc = serde_json::value::to_raw_value(rpc)
            .map_err(|e| format!("cannot encode the request: {e}"))?;
        Ok(RpcRequest { kind, rpc })
    }

    /// The whole line (envelope and body, in protocol key order), with `msg_id`.
    pub fn line(&self, src: &str, dest: &str, msg_id: u64) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            rpc: &'a RawValue,
            msg_id: u64,
        }
        crate::protocol::encode(
            src,
            dest,
            Wire {
                kind: self.kind,
                rpc: &self.rpc,
                msg_id,
            },
        )
    }
}

/// Sends a request to a peer node and resolves to its reply body.
pub trait Transport: Send + Sync + 'static {
    /// One request-reply exchange with `peer`, bounded by `timeout`.
    fn call(
        &self,
        peer: &Peer,
        req: RpcRequest,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Body, CallError>>;

    /// Why peers refuse this node's hello (a wrong cluster key, a wrong
    /// address), one line per peer, while they do. None where a transport has
    /// no hellos.
    fn refusals(&self) -> Vec<String> {
        Vec::new()
    }

    /// Whether this node presents a cluster key to its peers; None where a
    /// transport has no keys.
    fn keyed(&self) -> Option<bool> {
        None
    }
}

/// A peer's reply body, or the [`CallError::Remote`] it carries if it is an
/// `error` body. Every transport's `call` ends with this.
pub fn reply_or_remote_error(peer: &str, reply: Body) -> Result<Body, CallError> {
    if reply.get("type").and_then(Value::as_str) != Some("error") {
        return Ok(reply);
    }
    Err(CallError::Remote {
        peer: peer.to_string(),
        code: reply.get("code").and_then(Value::as_u64).unwrap_or(13),
        text: reply
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    })
}

/// Builds a request body `{type, rpc}`.
pub fn rpc_body(kind: &str, rpc: &impl Serialize) -> Body {
    let mut b = Map::new();
    b.insert("type".into(), Value::from(kind));
    b.insert(
        "rpc".into(),
        serde_json::to_value(rpc).unwrap_or(Value::Null),
    );
    b
}

/// Extracts and decodes the `rpc` field of a body.
pub fn rpc_field<T: DeserializeOwned>(body: &Body) -> Result<T, String> {
    let v = body.get("rpc").ok_or("missing field rpc")?;
    T::deserialize(v).map_err(|e| format!("bad rpc field: {e}"))
}

/// The largest Raft term a peer's message may carry. openraft computes a
/// candidate's next term as `term + 1` with plain addition, so a forged vote for
/// term `u64::MAX` made a node panic at its next election, and the vote it had
/// stored made it panic again at every start. No cluster comes near 2^62 terms
/// (one a millisecond for a hundred million years).
pub const TERM_MAX: u64 = 1 << 62;

/// Refuses a part of a peer's RPC (a vote, a log id) whose serialized form holds
/// a `term` above [`TERM_MAX`]. Call it on the Raft metadata only, never on
/// entries' payloads, which are clients' data.
pub fn check_terms(part: &impl Serialize) -> Result<(), String> {
    fn walk(v: &Value) -> Result<(), String> {
        match v {
            Value::Object(m) => {
                if let Some(t) = m.get("term")
                    && t.as_u64().is_none_or(|t| t > TERM_MAX)
                {
                    return Err(format!(
                        "term {t} is beyond the largest accepted ({TERM_MAX}); refused"
                    ));
                }
                m.values().try_for_each(walk)
            }
            Value::Array(items) => items.iter().try_for_each(walk),
            _ => Ok(()),
        }
    }
    walk(&serde_json::to_value(part).map_err(|e| e.to_string())?)
}

/// Decodes a request's `rpc` field: from `raw` when the parser kept it as text
/// (`raft_*` requests, see `protocol::parse_line`), else from the body.
pub fn rpc_from<T: DeserializeOwned>(body: &Body, raw: Option<&RawValue>) -> Result<T, String> {
    match raw {
        Some(r) => serde_json::from_str(r.get()).map_err(|e| format!("bad rpc field: {e}")),
        None => rpc_field(body),
    }
}

/// What bounds the bulk RPCs (appends with entries, snapshot chunks).
#[derive(Debug, Clone, Copy)]
pub struct BulkLimits {
    /// Deadline of one append carrying entries, and of one snapshot chunk.
    pub timeout: Duration,
    /// Bytes of snapshot data per chunk.
    pub chunk_bytes: usize,
}

impl BulkLimits {
    /// The limits `config` sets.
    pub fn from_config(config: &crate::config::Config) -> BulkLimits {
        BulkLimits {
            timeout: config.append_timeout(),
            chunk_bytes: config.snapshot_chunk_bytes as usize,
        }
    }
}

/// The factory openraft asks for one client per peer.
#[derive(Clone)]
pub struct Network {
    transport: Arc<dyn Transport>,
    limits: BulkLimits,
}

impl Network {
    /// A factory sending through `transport`.
    pub fn new(transport: Arc<dyn Transport>, limits: BulkLimits) -> Self {
        Network { transport, limits }
    }
}

/// A client for one peer.
pub struct PeerClient {
    transport: Arc<dyn Transport>,
    peer: Peer,
    limits: BulkLimits,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, _target: u64, node: &Peer) -> PeerClient {
        PeerClient {
            transport: self.transport.clone(),
            peer: node.clone(),
            limits: self.limits,
        }
    }
}

impl PeerClient {
    async fn exchange<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        kind: &'static str,
        rpc: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let req = RpcRequest::new(kind, rpc).map_err(|why| CallError::Unreachable {
            peer: self.peer.name.clone(),
            why,
        })?;
        let reply = self.transport.call(&self.peer, req, timeout).await?;
        rpc_field(&reply).map_err(|why| CallError::Unreachable {
            peer: self.peer.name.clone(),
            why,
        })
    }
}

fn rpc_error(e: CallError) -> RPCError<TypeConfig> {
    match e {
        // openraft backs off from an unreachable peer; a lost reply is retried soon.
        CallError::Timeout(_) => RPCError::Network(NetworkError::new(&e)),
        _ => RPCError::Unreachable(Unreachable::new(&e)),
    }
}

/// How long a bare commit update (an AppendEntries without entries) may wait for
/// the next entries to carry it instead (see [`PeerClient::stream_append`]).
pub const COMMIT_UPDATE_HOLD: Duration = Duration::from_millis(2);

/// One [`PeerClient::stream_append`] call's stream of appends to a follower:
/// openraft's sequential stream (one request in flight, responses in order),
/// except that a bare commit update is held back for up to [`COMMIT_UPDATE_HOLD`].
/// (Not a client session: those live in [`crate::state`].)
struct AppendStream<S> {
    /// openraft's requests; `None` once exhausted or once a response ended the stream.
    input: Option<S>,
    /// A bare commit update not sent yet, and since when it waits.
    held: Option<(AppendEntriesRequest<TypeConfig>, tokio::time::Instant)>,
    /// The hold's timer. It is re-armed lazily: a new hold leaves a timer that is
    /// still pending alone (it fires no later than the new hold ends, and the hold
    /// is checked then). Registering a timer earlier than every other one makes
    /// tokio wake its driver with a system call, and at one client a fresh 2 ms
    /// timer per commit was the earliest each time, on the path between a
    /// follower's ack and the client's reply.
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// A request to send after the one in flight (order is kept).
    next: Option<AppendEntriesRequest<TypeConfig>>,
    /// The peer.
    client: PeerClient,
    /// openraft's per-request options.
    option: RPCOption,
}

impl<S> AppendStream<S>
where
    S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    /// The next request to send: entries at once; a bare commit update only when
    /// nothing newer supersedes it within the hold, or when the input ends.
    async fn pull(&mut self) -> Option<AppendEntriesRequest<TypeConfig>> {
        use futures::StreamExt;
        if let Some(req) = self.next.take() {
            return Some(req);
        }
        loop {
            let Some(input) = self.input.as_mut() else {
                return self.held.take().map(|(req, _)| req);
            };
            let deadline = self
                .held
                .as_ref()
                .map(|(_, since)| *since + COMMIT_UPDATE_HOLD);
            let pulled = tokio::select! {
                biased;
                r = input.next() => r,
                () = self.timer.as_mut(), if deadline.is_some() => {
                    match deadline {
                        Some(d) if d > tokio::time::Instant::now() => {
                            self.timer.as_mut().reset(d);
                            continue;
                        }
                        _ => return self.held.take().map(|(req, _)| req),
                    }
                }
            };
            let Some(req) = pulled else {
                self.input = None;
                continue;
            };
            let same_prev = self
                .held
                .as_ref()
                .is_none_or(|(held, _)| held.prev_log_id == req.prev_log_id);
            match (&mut self.held, req.entries.is_empty()) {
                // A newer bare update replaces the held one (same range, newer
                // commit index), keeping its deadline.
                (Some((held, _)), true) if same_prev => *held = req,
                (None, true) => {
                    let now = tokio::time::Instant::now();
                    if self.timer.deadline() <= now {
                        self.timer.as_mut().reset(now + COMMIT_UPDATE_HOLD);
                    }
                    self.held = Some((req, now));
                }
                // Entries from the same point carry a commit index at least as new:
                // the held update is superseded (openraft's acks are cumulative).
                (_, false) if same_prev => {
                    self.held = None;
                    return Some(req);
                }
                // Anything else goes after the held update, in order.
                _ => {
                    self.next = Some(req);
                    return self.held.take().map(|(req, _)| req);
                }
            }
        }
    }

    /// Sends the next request and yields its outcome; `None` when the stream is over.
    async fn next(
        &mut self,
    ) -> Option<Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>> {
        let req = self.pull().await?;
        let prev = req.prev_log_id;
        let last = req.entries.last().map(|e| e.log_id).or(prev);
        // openraft's deadline for a replication RPC is its heartbeat interval:
        // enough for a commit update, not for a batch of large entries and the
        // follower's fsync of them (`Config::append_timeout_ms`).
        let timeout = if req.entries.is_empty() {
            self.option.hard_ttl()
        } else {
            self.client.limits.timeout.max(self.option.hard_ttl())
        };
        let resp = match self
            .client
            .exchange::<_, AppendEntriesResponse<TypeConfig>>("raft_append", &req, timeout)
            .await
        {
            Ok(resp) => resp,
            Err(e) => {
                self.stop();
                return Some(Err(rpc_error(e)));
            }
        };
        // As openraft's sequential stream: stop after a refusal or a partial success.
        let partial = match &resp {
            AppendEntriesResponse::PartialSuccess(p) => Some(*p),
            _ => None,
        };
        let result = resp.into_stream_result(prev, last);
        if result.is_err() || partial.is_some_and(|p| p != last) {
            self.stop();
        }
        Some(Ok(result))
    }

    fn stop(&mut self) {
        self.input = None;
        self.held = None;
        self.next = None;
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = Vec<u8>;

    /// openraft's sequential stream, plus one change: a bare commit update (an
    /// AppendEntries without entries, sent whenever the commit index moves) waits
    /// up to [`COMMIT_UPDATE_HOLD`] for the next entries, which then carry the
    /// commit index instead. At one client that is one request and one reply
    /// fewer per follower per write; a follower learns a commit index at most
    /// that much later (nothing waits on it: the leader answers clients).
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> openraft::base::BoxFuture<
        's,
        Result<
            openraft::base::BoxStream<
                's,
                Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>,
            >,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>>
            + openraft::OptionalSend
            + Unpin
            + 'static,
    {
        let appends = AppendStream {
            input: Some(input),
            held: None,
            timer: Box::pin(tokio::time::sleep_until(tokio::time::Instant::now())),
            next: None,
            client: PeerClient {
                transport: self.transport.clone(),
                peer: self.peer.clone(),
                limits: self.limits,
            },
            option,
        };
        let stream = futures::stream::unfold(appends, |mut appends| async move {
            let item = appends.next().await?;
            Some((item, appends))
        });
        Box::pin(async move {
            let stream: openraft::base::BoxStream<'s, _> = Box::pin(stream);
            Ok(stream)
        })
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let timeout = if rpc.entries.is_empty() {
            option.hard_ttl()
        } else {
            self.limits.timeout.max(option.hard_ttl())
        };
        self.exchange("raft_append", &rpc, timeout)
            .await
            .map_err(rpc_error)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.exchange("raft_vote", &rpc, option.hard_ttl())
            .await
            .map_err(rpc_error)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.exchange("raft_pre_vote", &rpc, option.hard_ttl())
            .await
            .map_err(rpc_error)
    }

    /// Sends the snapshot in chunks of `Config::snapshot_chunk_bytes`, each its
    /// own RPC with its own deadline. The follower answers each with the offset it
    /// wants next, so a lost or repeated chunk costs one round trip, and a
    /// transfer retried after a failure resumes where the follower's partial
    /// copy ends.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let data = String::from_utf8(snapshot.snapshot)
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
        let meta = snapshot.meta;
        let send = async {
            let total = data.len() as u64;
            let mut offset = 0u64;
            let mut reported = 0u64;
            let started = tokio::time::Instant::now();
            loop {
                let chunk = chunk_at(&data, offset as usize, self.limits.chunk_bytes);
                let rpc = SnapshotChunk {
                    vote,
                    meta: meta.clone(),
                    total,
                    offset,
                    data: chunk.into(),
                };
                let reply: ChunkReply = self
                    .exchange("raft_snapshot", &rpc, self.limits.timeout)
                    .await?;
                match reply {
                    ChunkReply::Done(resp) => {
                        tracing::info!(
                            "snapshot {} to {}: {total} bytes sent in {:?}",
                            meta.last_log_id.map_or(0, |l| l.index),
                            self.peer,
                            started.elapsed()
                        );
                        return Ok(resp);
                    }
                    ChunkReply::Next(next) if next <= total => {
                        // Progress, logged at every tenth of the snapshot.
                        if next >= reported + total / 10 || next < offset {
                            tracing::info!(
                                "snapshot {} to {}: {next} of {total} bytes",
                                meta.last_log_id.map_or(0, |l| l.index),
                                self.peer
                            );
                            reported = next;
                        }
                        offset = next;
                    }
                    ChunkReply::Next(next) => {
                        return Err(CallError::Unreachable {
                            peer: self.peer.name.clone(),
                            why: format!("asked for offset {next} of a {total}-byte snapshot"),
                        });
                    }
                }
            }
        };
        tokio::select! {
            biased;
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = send => r.map_err(|e| match rpc_error(e) {
                RPCError::Network(n) => StreamingError::Network(n),
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                other => StreamingError::Unreachable(Unreachable::new(&other)),
            }),
        }
    }
}

/// The piece of `data` from `offset` of at most `max` bytes, cut at a character
/// boundary (at least one character, so a transfer always advances).
fn chunk_at(data: &str, offset: usize, max: usize) -> &str {
    let offset = offset.min(data.len());
    let mut end = (offset + max).min(data.len());
    while !data.is_char_boundary(end) {
        end -= 1;
    }
    if end == offset && offset < data.len() {
        end = offset + 1;
        while !data.is_char_boundary(end) {
            end += 1;
        }
    }
    &data[offset..end]
}

/// One `raft_snapshot` request: a piece of the leader's snapshot.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct SnapshotChunk {
    /// The leader's vote.
    pub vote: Vote,
    /// The snapshot's metadata.
    pub meta: SnapshotMeta,
    /// The snapshot's whole size in bytes.
    pub total: u64,
    /// Where this piece starts.
    pub offset: u64,
    /// The piece: part of the state's JSON text.
    pub data: String,
}

/// The answer to a [`SnapshotChunk`].
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkReply {
    /// Send the piece starting here next (what the follower holds so far).
    Next(u64),
    /// The snapshot is complete and was installed.
    Done(SnapshotResponse<TypeConfig>),
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures::StreamExt;
    use futures::channel::mpsc;
    use openraft::EntryPayload;

    use super::*;
    use crate::raft::{Entry, LogId};

    /// Answers every append with `Success` (or fails when told to) and records
    /// what was sent: (prev index, entry indexes, leader_commit index).
    #[derive(Default)]
    struct Recorder {
        sent: Mutex<Vec<(u64, Vec<u64>, u64)>>,
        fail: bool,
    }

    impl Transport for Recorder {
        fn call(
            &self,
            peer: &Peer,
            req: RpcRequest,
            _timeout: Duration,
        ) -> BoxFuture<'static, Result<Body, CallError>> {
            assert_eq!(req.kind, "raft_append");
            let req: AppendEntriesRequest<TypeConfig> =
                serde_json::from_str(req.rpc.get()).expect("an append");
            let index = |l: Option<LogId>| l.map_or(0, |l| l.index);
            self.sent.lock().unwrap().push((
                index(req.prev_log_id),
                req.entries.iter().map(|e| e.log_id.index).collect(),
                index(req.leader_commit),
            ));
            let out = if self.fail {
                Err(CallError::Timeout(peer.to_string()))
            } else {
                Ok(rpc_body(
                    "raft_append_ok",
                    &AppendEntriesResponse::<TypeConfig>::Success,
                ))
            };
            Box::pin(async move { out })
        }
    }

    fn log_id(index: u64) -> Option<LogId> {
        Some(openraft::testing::log_id::<TypeConfig>(1, 1, index))
    }

    /// An append from `prev` carrying entries `prev+1..=last`, commit index `commit`.
    fn append(prev: u64, last: u64, commit: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: log_id(prev),
            leader_commit: log_id(commit),
            entries: (prev + 1..=last)
                .map(|i| Entry {
                    log_id: log_id(i).expect("some"),
                    payload: EntryPayload::Blank,
                })
                .collect(),
        }
    }

    fn client(t: &Arc<Recorder>) -> PeerClient {
        PeerClient {
            transport: t.clone(),
            peer: Peer {
                name: "n2".into(),
                addr: String::new(),
            },
            limits: BulkLimits::from_config(&crate::config::Config::default()),
        }
    }

    fn option() -> RPCOption {
        RPCOption::new(Duration::from_millis(50))
    }

    fn matched(r: Option<Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>) -> u64 {
        let matching = r
            .expect("a response")
            .expect("no rpc error")
            .expect("success");
        matching.map_or(0, |l| l.index)
    }

    #[tokio::test(start_paused = true)]
    async fn entries_carry_a_held_commit_update() {
        let t = Arc::new(Recorder::default());
        let mut c = client(&t);
        let (tx, rx) = mpsc::unbounded();
        let mut out = c.stream_append(rx, option()).await.expect("stream");

        tx.unbounded_send(append(4, 5, 4)).unwrap();
        assert_eq!(matched(out.next().await), 5, "entries go at once");
        // The commit moves to 5, then a newer write's entries are ready.
        tx.unbounded_send(append(5, 5, 5)).unwrap();
        tx.unbounded_send(append(5, 6, 5)).unwrap();
        assert_eq!(matched(out.next().await), 6);
        assert_eq!(
            *t.sent.lock().unwrap(),
            vec![(4, vec![5], 4), (5, vec![6], 5)],
            "the bare update was never sent: the entries carried commit 5"
        );

        // Updates replace one another while held; entries then carry the newest.
        tx.unbounded_send(append(6, 6, 5)).unwrap();
        tx.unbounded_send(append(6, 6, 6)).unwrap();
        tx.unbounded_send(append(6, 7, 6)).unwrap();
        assert_eq!(matched(out.next().await), 7);
        assert_eq!(t.sent.lock().unwrap().last(), Some(&(6, vec![7], 6)));
        assert_eq!(t.sent.lock().unwrap().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_commit_update_goes_out_when_nothing_follows() {
        let t = Arc::new(Recorder::default());
        let mut c = client(&t);
        let (tx, rx) = mpsc::unbounded();
        let mut out = c.stream_append(rx, option()).await.expect("stream");

        tx.unbounded_send(append(5, 5, 5)).unwrap();
        let start = tokio::time::Instant::now();
        assert_eq!(matched(out.next().await), 5);
        assert!(start.elapsed() >= COMMIT_UPDATE_HOLD, "held first");
        assert_eq!(*t.sent.lock().unwrap(), vec![(5, vec![], 5)]);

        // A held update is sent, not dropped, when openraft ends the stream.
        tx.unbounded_send(append(5, 5, 6)).unwrap();
        drop(tx);
        assert_eq!(matched(out.next().await), 5);
        assert!(out.next().await.is_none(), "then the stream ends");
        assert_eq!(t.sent.lock().unwrap().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_different_range_goes_after_the_held_update_in_order() {
        let t = Arc::new(Recorder::default());
        let mut c = client(&t);
        let (tx, rx) = mpsc::unbounded();
        let mut out = c.stream_append(rx, option()).await.expect("stream");

        tx.unbounded_send(append(5, 5, 5)).unwrap();
        tx.unbounded_send(append(3, 4, 5)).unwrap();
        assert_eq!(matched(out.next().await), 5);
        assert_eq!(matched(out.next().await), 4);
        assert_eq!(
            *t.sent.lock().unwrap(),
            vec![(5, vec![], 5), (3, vec![4], 5)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_rpc_error_ends_the_stream() {
        let t = Arc::new(Recorder {
            fail: true,
            ..Recorder::default()
        });
        let mut c = client(&t);
        let (tx, rx) = mpsc::unbounded();
        let mut out = c.stream_append(rx, option()).await.expect("stream");
        tx.unbounded_send(append(4, 5, 4)).unwrap();
        tx.unbounded_send(append(5, 6, 4)).unwrap();
        assert!(matches!(out.next().await, Some(Err(_))));
        assert!(out.next().await.is_none(), "nothing after an error");
        assert_eq!(t.sent.lock().unwrap().len(), 1);
    }

    /// A follower's side of `raft_snapshot` in memory: records each chunk's
    /// size, and fails the call for the chunks at these positions in `lose`.
    struct SnapshotPeer {
        rx: crate::raft::snapshot_transfer::SnapshotReceiver,
        chunks: Mutex<Vec<(u64, usize)>>,
        lose: Mutex<Vec<usize>>,
    }

    impl Transport for SnapshotPeer {
        fn call(
            &self,
            peer: &Peer,
            req: RpcRequest,
            _timeout: Duration,
        ) -> BoxFuture<'static, Result<Body, CallError>> {
            assert_eq!(req.kind, "raft_snapshot");
            let chunk: SnapshotChunk = serde_json::from_str(req.rpc.get()).expect("a chunk");
            let n = {
                let mut c = self.chunks.lock().unwrap();
                c.push((chunk.offset, chunk.data.len()));
                c.len()
            };
            let lost = self.lose.lock().unwrap().contains(&n);
            let accepted = if lost {
                None
            } else {
                Some(futures::executor::block_on(self.rx.accept(&chunk)).expect("accepted"))
            };
            let peer = peer.to_string();
            Box::pin(async move {
                use crate::raft::snapshot_transfer::Accepted;
                let reply = match accepted {
                    None => return Err(CallError::Timeout(peer)),
                    Some(Accepted::Next(n)) => ChunkReply::Next(n),
                    Some(Accepted::Complete(data)) => {
                        assert_eq!(data, snapshot_data().into_bytes(), "assembled whole");
                        ChunkReply::Done(SnapshotResponse {
                            vote: Vote::new_committed(1, 1),
                        })
                    }
                    Some(Accepted::Installed) => unreachable!(),
                };
                Ok(rpc_body("raft_snapshot_ok", &reply))
            })
        }
    }

    /// A snapshot's text with multi-byte characters, so chunks cut at
    /// character boundaries.
    fn snapshot_data() -> String {
        (0..2_000)
            .map(|i| format!("{{\"k{i}\":\"é€{i}\"}}"))
            .collect()
    }

    #[tokio::test]
    async fn a_snapshot_goes_in_bounded_chunks_and_a_retry_resumes() {
        let t = Arc::new(SnapshotPeer {
            rx: crate::raft::snapshot_transfer::SnapshotReceiver::new(
                None,
                2,
                Duration::from_secs(60),
            ),
            chunks: Mutex::new(Vec::new()),
            lose: Mutex::new(vec![5]),
        });
        let mut c = PeerClient {
            transport: t.clone(),
            peer: Peer {
                name: "n2".into(),
                addr: String::new(),
            },
            limits: BulkLimits {
                timeout: Duration::from_secs(1),
                chunk_bytes: 4096,
            },
        };
        let snapshot = || Snapshot {
            meta: SnapshotMeta {
                last_log_id: log_id(9),
                last_membership: Default::default(),
            },
            snapshot: snapshot_data().into_bytes(),
        };
        let total = snapshot_data().len();
        let never = futures::future::pending::<ReplicationClosed>();
        // The fifth chunk's answer is lost: this attempt fails.
        let first = c
            .full_snapshot(Vote::new_committed(1, 1), snapshot(), never, option())
            .await;
        assert!(first.is_err(), "a lost chunk fails the attempt");
        let sent_first = t.chunks.lock().unwrap().len();
        assert_eq!(sent_first, 5);
        // The retry starts at 0, is told where the follower is, and resumes.
        let never = futures::future::pending::<ReplicationClosed>();
        let r = c
            .full_snapshot(Vote::new_committed(1, 1), snapshot(), never, option())
            .await
            .expect("installed");
        assert_eq!(r.vote, Vote::new_committed(1, 1));
        let chunks = t.chunks.lock().unwrap().clone();
        assert!(chunks.iter().all(|&(_, len)| len <= 4096), "{chunks:?}");
        let resent: u64 = chunks[sent_first..].iter().map(|&(_, l)| l as u64).sum();
        let first_four: u64 = chunks[..4].iter().map(|&(_, l)| l as u64).sum();
        assert_eq!(chunks[sent_first].0, 0, "the retry starts at 0");
        assert_eq!(chunks[sent_first + 1].0, first_four, "then resumes");
        assert!(
            resent < total as u64 + 4096,
            "nothing but the first chunk twice"
        );
    }
}
