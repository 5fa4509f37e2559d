//! Answering peers' RPCs: Raft's appends, votes and snapshot chunks, and
//! `forward` (the leader's side: serve the request locally and say how it
//! ended). It may not forward or change the membership.

use tokio::time::Instant;

use openraft::async_runtime::WatchReceiver;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use serde_json::{Map, Value};

use super::budget::RawReply;
use super::serve::{Served, check_entry_bytes};
use super::{ForwardReply, Forwarded, Node};
use crate::protocol::{ErrorCode, Reply};
use crate::raft::TypeConfig;
use crate::raft::network::{Body, ChunkReply, SnapshotChunk, check_terms, rpc_body, rpc_from};
use crate::raft::sm_store::Snapshot;
use crate::raft::snapshot_transfer::Accepted;

impl Node {
    /// The reply to a `forward` whose op would make a log entry larger than
    /// [`Config::entry_bytes_max`](crate::config::Config::entry_bytes_max)
    /// (error 12, nothing proposed), if it would; `encoded_bytes_max` bounds
    /// its size as the message's
    /// [`crate::protocol::Message::encoded_bytes_max`] does. A transport calls
    /// it before [`Node::handle_peer`]: a forward comes from a node that checked
    /// the request already, or from anyone when the cluster has no key.
    pub fn refuse_oversized_forward(
        &self,
        body: &Body,
        rpc: Option<&serde_json::value::RawValue>,
        encoded_bytes_max: usize,
    ) -> Option<Body> {
        if encoded_bytes_max <= self.config.entry_bytes_max() {
            return None;
        }
        let fwd: Forwarded = rpc_from(body, rpc).ok()?;
        let refused = match check_entry_bytes(&self.config, &fwd, None)? {
            Reply::Error { code, text } => ForwardReply::Refused { code, text },
            reply => ForwardReply::Answered { reply },
        };
        Some(rpc_body("forward_ok", &refused))
    }

    /// Handles a request body from a peer node; returns the reply body (with
    /// its place among the replies not yet written, for a forwarded read's).
    pub async fn handle_peer(
        &self,
        kind: &str,
        body: &Body,
        rpc: Option<&serde_json::value::RawValue>,
    ) -> RawReply {
        let answered = if kind == "forward" {
            self.serve_forward(body, rpc).await
        } else {
            self.handle_peer_inner(kind, body, rpc)
                .await
                .map(Into::into)
        };
        answered.unwrap_or_else(|text| error_body(ErrorCode::Crash, &text).into())
    }

    /// Serves a forwarded request here and says how it ended; a large reply
    /// takes its place among the replies not yet written (or is error 11), as
    /// a client's does.
    async fn serve_forward(
        &self,
        body: &Body,
        rpc: Option<&serde_json::value::RawValue>,
    ) -> Result<RawReply, String> {
        let fwd: Forwarded = rpc_from(body, rpc)?;
        let deadline = Instant::now() + self.config.request_timeout();
        let (served, held) = match self.serve_local(&fwd, deadline).await {
            Served::Answered(reply) => {
                let (reply, held) = self.hold_reply(reply);
                (Served::Answered(reply), held)
            }
            served => (served, None),
        };
        let body = rpc_body("forward_ok", &ForwardReply::from(served));
        Ok(RawReply { body, held })
    }

    async fn handle_peer_inner(
        &self,
        kind: &str,
        body: &Body,
        raw_rpc: Option<&serde_json::value::RawValue>,
    ) -> Result<Body, String> {
        let s = |e: &dyn std::fmt::Display| e.to_string();
        Ok(match kind {
            "raft_append" => {
                let rpc: AppendEntriesRequest<TypeConfig> = rpc_from(body, raw_rpc)?;
                check_terms(&(&rpc.vote, &rpc.prev_log_id, &rpc.leader_commit))?;
                rpc.entries
                    .iter()
                    .try_for_each(|e| check_terms(&e.log_id))?;
                let leader = rpc.vote.leader_id();
                self.heard_from_leader(leader.term, leader.node_id);
                let r = self.raft.append_entries(rpc).await.map_err(|e| s(&e))?;
                rpc_body("raft_append_ok", &r)
            }
            "raft_vote" => {
                let rpc: VoteRequest<TypeConfig> = rpc_from(body, raw_rpc)?;
                check_terms(&rpc)?;
                let rpc = self.vote_request_in_light_of_gone_leader(rpc);
                let r = self.raft.vote(rpc).await.map_err(|e| s(&e))?;
                self.vote_answered(r.vote_granted);
                rpc_body("raft_vote_ok", &r)
            }
            "raft_pre_vote" => {
                let rpc: VoteRequest<TypeConfig> = rpc_from(body, raw_rpc)?;
                check_terms(&rpc)?;
                let r = self.raft.pre_vote(rpc).await.map_err(|e| s(&e))?;
                rpc_body("raft_pre_vote_ok", &r)
            }
            "raft_snapshot" => {
                let chunk: SnapshotChunk = rpc_from(body, raw_rpc)?;
                check_terms(&(&chunk.vote, &chunk.meta))?;
                let r = self.snapshot_chunk(chunk).await?;
                rpc_body("raft_snapshot_ok", &r)
            }
            other => {
                return Ok(error_body(
                    ErrorCode::NotSupported,
                    &format!("unknown peer request type {other}"),
                ));
            }
        })
    }

    /// Takes one chunk of a snapshot a leader sends: the next offset it wants,
    /// or, once the last chunk is in, the snapshot installed.
    async fn snapshot_chunk(&self, chunk: SnapshotChunk) -> Result<ChunkReply, String> {
        let s = |e: &dyn std::fmt::Display| e.to_string();
        Ok(
            match self.snapshots_in.accept(&chunk).await.map_err(|e| s(&e))? {
                Accepted::Next(next) => ChunkReply::Next(next),
                Accepted::Complete(data) => {
                    let snapshot = Snapshot {
                        meta: chunk.meta.clone(),
                        snapshot: data,
                    };
                    let r = self
                        .raft
                        .install_full_snapshot(chunk.vote, snapshot)
                        .await
                        .map_err(|e| s(&e))?;
                    self.snapshots_in.installed(&chunk);
                    ChunkReply::Done(r)
                }
                Accepted::Installed => {
                    let vote = self.raft.metrics().borrow_watched().vote;
                    ChunkReply::Done(openraft::raft::SnapshotResponse { vote })
                }
            },
        )
    }
}

/// An error reply body `{type: error, code, text}` for peers.
pub fn error_body(code: ErrorCode, text: &str) -> Body {
    let mut b = Map::new();
    b.insert("type".into(), Value::from("error"));
    b.insert("code".into(), Value::from(code.code()));
    b.insert("text".into(), Value::from(text));
    b
}
