//! `RaftNetworkV2` over any message transport: each Raft RPC is one request body
//! (`raft_append`, `raft_vote`, `raft_pre_vote`, `raft_snapshot`) holding openraft's
//! message as JSON, answered by one reply body. Maelstrom mode carries these as
//! node-to-node messages on stdout/stdin; TCP mode on peer connections.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use openraft::RaftNetworkV2;
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

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

/// Sends a request body to a peer node and resolves to its reply body.
pub trait Transport: Send + Sync + 'static {
    /// One request-reply exchange with `peer`, bounded by `timeout`.
    fn call(
        &self,
        peer: &Peer,
        body: Body,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Body, CallError>>;
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

/// The factory openraft asks for one client per peer.
#[derive(Clone)]
pub struct Network {
    transport: Arc<dyn Transport>,
}

impl Network {
    /// A factory sending through `transport`.
    pub fn new(transport: Arc<dyn Transport>) -> Self {
        Network { transport }
    }
}

/// A client for one peer.
pub struct PeerClient {
    transport: Arc<dyn Transport>,
    peer: Peer,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, _target: u64, node: &Peer) -> PeerClient {
        PeerClient {
            transport: self.transport.clone(),
            peer: node.clone(),
        }
    }
}

impl PeerClient {
    async fn exchange<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        kind: &str,
        rpc: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let reply = self
            .transport
            .call(&self.peer, rpc_body(kind, rpc), timeout)
            .await?;
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

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.exchange("raft_append", &rpc, option.hard_ttl())
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

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let data = String::from_utf8(snapshot.snapshot)
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
        let rpc = json!({"vote": vote, "meta": snapshot.meta, "data": data});
        let call = self.exchange("raft_snapshot", &rpc, option.hard_ttl());
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = call => r.map_err(|e| match rpc_error(e) {
                RPCError::Network(n) => StreamingError::Network(n),
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                other => StreamingError::Unreachable(Unreachable::new(&other)),
            }),
        }
    }
}

/// The decoded `raft_snapshot` request.
#[derive(serde::Deserialize)]
pub struct SnapshotRpc {
    /// The leader's vote.
    pub vote: Vote,
    /// The snapshot's metadata.
    pub meta: SnapshotMeta,
    /// The state as JSON text.
    pub data: String,
}
