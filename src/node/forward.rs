//! Forwarding a request to the leader: the request's forwarded form
//! ([`Forwarded`]) and the `forward` RPC from this node's side, with how each
//! way it can end is classified (retry elsewhere, a definite refusal, or an
//! indefinite error). The leader's side is in `peer`. It may not propose or read
//! locally.

use std::time::Instant;

use super::Node;
use super::serve::Served;
use crate::protocol::{ErrorCode, Reply, Request};
use crate::raft::network::{CallError, RpcRequest, rpc_field};
use crate::state::Op;

/// A request as forwarded between nodes: the op to propose (the leader stamps
/// it), or the key to read.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Forwarded {
    /// A linearizable read of this canonical key.
    Read(String),
    /// An op to propose.
    Propose(Op),
}

impl Forwarded {
    /// The forwarded form of a client request.
    pub fn from_request(req: Request) -> Forwarded {
        match req {
            Request::Read { key } => Forwarded::Read(key),
            Request::Mutate { op, session } => Forwarded::Propose(Op::Kv { kv: op, session }),
            Request::OpenSession => Forwarded::Propose(Op::OpenSession),
            Request::CloseSession { client_id } => {
                Forwarded::Propose(Op::CloseSession { client_id })
            }
        }
    }
}

pub(super) const NOT_LEADER_TEXT: &str = "not the leader; nothing was proposed";
/// A forwarded session op whose entry was discarded on a leader change: indefinite,
/// but safe for the forwarding node to re-propose elsewhere (dedup).
pub(super) const DISCARDED_TEXT: &str =
    "entry discarded on a leader change; retry with the same seq";

impl Node {
    pub(super) async fn forward(&self, leader: u64, fwd: &Forwarded, deadline: Instant) -> Served {
        let Some(peer) = self.peer(leader) else {
            return Served::NotLeader { leader: None };
        };
        let peer = &peer;
        let wait = deadline.saturating_duration_since(Instant::now());
        let req = match RpcRequest::new("forward", fwd) {
            Ok(req) => req,
            Err(e) => return Served::Answered(Reply::error(ErrorCode::Crash, e)),
        };
        match self.transport.call(peer, req, wait).await {
            Ok(reply) => match rpc_field::<Reply>(&reply) {
                Ok(Reply::Error { code, text })
                    if code == ErrorCode::TemporarilyUnavailable && text == NOT_LEADER_TEXT =>
                {
                    Served::NotLeader { leader: None }
                }
                Ok(Reply::Error { code, text })
                    if code == ErrorCode::Crash && text == DISCARDED_TEXT =>
                {
                    Served::Discarded { leader: None }
                }
                Ok(r) => Served::Answered(r),
                Err(e) => Served::Answered(Reply::error(
                    ErrorCode::Crash,
                    format!("bad reply from leader: {e}"),
                )),
            },
            // Never sent: nothing can have been proposed.
            Err(CallError::Unreachable { .. }) => Served::NotLeader { leader: None },
            // The leader refused the forward RPC itself (this node presented no
            // cluster key, or the leader could not parse it): it never reached the
            // leader's log, so a definite code stays definite for the client.
            Err(CallError::Remote { peer, code, text }) if definite_code(code).is_some() => {
                Served::Answered(Reply::error(
                    definite_code(code).expect("checked"),
                    format!("the leader {peer} refused the forwarded request: {text}"),
                ))
            }
            Err(e) => Served::Answered(Reply::error(
                ErrorCode::Timeout,
                format!("forwarded to the leader, no answer: {e}; it may still take effect"),
            )),
        }
    }
}

/// The error code `code` if it is one of ours and definite (see
/// [`ErrorCode::is_definite`]); `None` for indefinite or unknown codes.
fn definite_code(code: u64) -> Option<ErrorCode> {
    let code = ErrorCode::try_from(u32::try_from(code).ok()?).ok()?;
    code.is_definite().then_some(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::serve::tests::{entry, write_op};
    use crate::protocol::{VALUE_DEPTH_MAX, parse_line};
    use crate::raft::TypeConfig;
    use crate::raft::network::rpc_from;
    use openraft::raft::AppendEntriesRequest;
    use serde_json::{Map, Value};

    /// A value as deep as a request may carry still parses inside every line
    /// that carries it between nodes (an append, a forward): serde_json's depth
    /// limit is not reached on the way.
    #[test]
    fn the_deepest_value_allowed_survives_an_append_and_a_forward() {
        let mut value = Value::from(1);
        for _ in 0..VALUE_DEPTH_MAX {
            value = Value::Array(vec![Value::Object(Map::new()), value]);
        }
        let op = write_op(Value::from("k"), value);
        let append = AppendEntriesRequest::<TypeConfig> {
            vote: openraft::Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: vec![entry(op.clone())],
        };
        let line = RpcRequest::new("raft_append", &append)
            .unwrap()
            .line("n1", "n2", 1);
        let parsed = parse_line(&line).expect("an append parses");
        let crate::protocol::Body::Other { raw, rpc, .. } = parsed.body else {
            panic!("not a peer message")
        };
        let decoded: AppendEntriesRequest<TypeConfig> = rpc_from(&raw, rpc.as_deref()).unwrap();
        assert_eq!(decoded.entries.len(), 1);
        let fwd = RpcRequest::new("forward", &Forwarded::Propose(op))
            .unwrap()
            .line("n1", "n2", 1);
        let parsed = parse_line(&fwd).expect("a forward parses");
        let crate::protocol::Body::Other { raw, rpc, .. } = parsed.body else {
            panic!("not a peer message")
        };
        let _: Forwarded = rpc_from(&raw, rpc.as_deref()).expect("decodes");
    }
}
