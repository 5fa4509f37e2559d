//! Forwarding a request to the leader: the request's forwarded form
//! ([`Forwarded`]) and the `forward` RPC from this node's side, with how each
//! way it can end is classified (retry elsewhere, a definite refusal, or an
//! indefinite error). The leader's side is in `peer`. It may not propose or read
//! locally.

use tokio::time::Instant;

use super::Node;
use super::serve::Served;
use crate::protocol::{ErrorCode, Reply, Request};
use crate::raft::network::{Body, CallError, RpcRequest, rpc_field};
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

/// The leader's answer to a `forward` RPC: the `rpc` field of `forward_ok`,
/// `{"outcome": "answered", "reply": {..}}`, `{"outcome": "refused", "code",
/// "text"}`, `{"outcome": "not_leader"}` or `{"outcome": "discarded"}`. How the
/// attempt ended is a typed field, so the forwarding node never reads error text
/// to decide whether to retry or whether an error may stay definite.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ForwardReply {
    /// Served at the leader: the reply for the client, relayed as is. An error
    /// in it already follows the error rule (indefinite once proposed).
    Answered {
        /// The client's reply.
        reply: Reply,
    },
    /// Refused before anything was proposed (the op would make an entry larger
    /// than the log holds): a definite error for the client.
    Refused {
        /// A definite error code.
        code: ErrorCode,
        /// Why.
        text: String,
    },
    /// The node forwarded to does not lead, and nothing was proposed: retry at
    /// another leader. (The hint of the node it believes leads is not carried:
    /// following stale hints back and forth would skip the wait for a leader.)
    NotLeader,
    /// Proposed, then the entry was discarded on a leader change. Only a session
    /// op ends so, whose re-proposal the session table deduplicates: retry, but
    /// if no retry answers, the final answer is indefinite.
    Discarded,
}

impl From<Served> for ForwardReply {
    fn from(served: Served) -> ForwardReply {
        match served {
            Served::Answered(reply) => ForwardReply::Answered { reply },
            Served::NotLeader { .. } => ForwardReply::NotLeader,
            Served::Discarded { .. } => ForwardReply::Discarded,
        }
    }
}

impl Node {
    /// One attempt at serving `fwd` at `leader`, another node, by a `forward`
    /// RPC bounded by `deadline`.
    pub(super) async fn forward(&self, leader: u64, fwd: &Forwarded, deadline: Instant) -> Served {
        let Some(peer) = self.peer(leader) else {
            return Served::NotLeader { leader: None };
        };
        let wait = deadline.saturating_duration_since(Instant::now());
        let req = match RpcRequest::new("forward", fwd) {
            Ok(req) => req,
            Err(e) => return Served::Answered(Reply::error(ErrorCode::Crash, e)),
        };
        forward_result(self.transport.call(&peer, req, wait).await)
    }
}

/// How a `forward` RPC's result ends the attempt. A definite error only when
/// the op did not and will not happen: the leader refused it, or the call was
/// refused before it reached the leader's log; every unknown is indefinite.
fn forward_result(result: Result<Body, CallError>) -> Served {
    match result {
        Ok(body) => match rpc_field::<ForwardReply>(&body) {
            Ok(ForwardReply::Answered { reply }) => Served::Answered(reply),
            Ok(ForwardReply::Refused { code, text }) => Served::Answered(Reply::error(code, text)),
            Ok(ForwardReply::NotLeader) => Served::NotLeader { leader: None },
            Ok(ForwardReply::Discarded) => Served::Discarded { leader: None },
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

    /// The `rpc` of each `forward_ok` outcome, as it goes on the wire.
    #[test]
    fn forward_replies_carry_their_outcome_as_a_typed_field() {
        let cases = [
            (
                ForwardReply::Answered {
                    reply: Reply::WriteOk,
                },
                r#"{"outcome":"answered","reply":{"type":"write_ok"}}"#,
            ),
            (
                ForwardReply::Answered {
                    reply: Reply::error(ErrorCode::Timeout, "t"),
                },
                r#"{"outcome":"answered","reply":{"type":"error","code":0,"text":"t"}}"#,
            ),
            (
                ForwardReply::Refused {
                    code: ErrorCode::MalformedRequest,
                    text: "too large".into(),
                },
                r#"{"outcome":"refused","code":12,"text":"too large"}"#,
            ),
            (ForwardReply::NotLeader, r#"{"outcome":"not_leader"}"#),
            (ForwardReply::Discarded, r#"{"outcome":"discarded"}"#),
        ];
        for (reply, wire) in cases {
            assert_eq!(serde_json::to_string(&reply).unwrap(), wire);
            let back: ForwardReply = serde_json::from_str(wire).unwrap();
            assert_eq!(back, reply);
        }
    }

    fn forward_ok(reply: &ForwardReply) -> Result<Body, CallError> {
        Ok(crate::raft::network::rpc_body("forward_ok", reply))
    }

    /// What the leader says and what the call gives map to the forwarding
    /// node's outcome by type: retries where nothing can have happened (or a
    /// deduplicated session op), definite errors only where the op did not and
    /// will not happen, indefinite ones for every unknown.
    #[test]
    fn a_forward_result_is_classified_by_type_and_keeps_the_error_rule() {
        let answered = |r: Served| match r {
            Served::Answered(reply) => reply,
            other => panic!("not an answer: {other:?}"),
        };
        // The leader's answers.
        let relayed = forward_result(forward_ok(&ForwardReply::Answered {
            reply: Reply::CasOk,
        }));
        assert_eq!(answered(relayed), Reply::CasOk);
        let refused = forward_result(forward_ok(&ForwardReply::Refused {
            code: ErrorCode::MalformedRequest,
            text: "too large".into(),
        }));
        assert_eq!(
            answered(refused).error_code(),
            Some(ErrorCode::MalformedRequest)
        );
        assert_eq!(
            forward_result(forward_ok(&ForwardReply::NotLeader)),
            Served::NotLeader { leader: None }
        );
        assert_eq!(
            forward_result(forward_ok(&ForwardReply::Discarded)),
            Served::Discarded { leader: None }
        );
        // An error reply is relayed, whatever its text says.
        let text = ForwardReply::Answered {
            reply: Reply::error(
                ErrorCode::TemporarilyUnavailable,
                "not the leader; nothing was proposed",
            ),
        };
        assert_eq!(
            answered(forward_result(forward_ok(&text))).error_code(),
            Some(ErrorCode::TemporarilyUnavailable)
        );
        // A reply that does not decode (an older peer's plain Reply): unknown.
        let old = Ok(crate::raft::network::rpc_body(
            "forward_ok",
            &Reply::WriteOk,
        ));
        assert_eq!(
            answered(forward_result(old)).error_code(),
            Some(ErrorCode::Crash)
        );
        // The call itself.
        let unreachable = Err(CallError::Unreachable {
            peer: "n2".into(),
            why: "down".into(),
        });
        assert_eq!(
            forward_result(unreachable),
            Served::NotLeader { leader: None }
        );
        let remote = |code: u64| {
            forward_result(Err(CallError::Remote {
                peer: "n2".into(),
                code,
                text: "t".into(),
            }))
        };
        // Refused before reaching the leader's log (no cluster key): definite.
        assert_eq!(
            answered(remote(12)).error_code(),
            Some(ErrorCode::MalformedRequest)
        );
        // The leader failed to handle it, or an unknown code: indefinite.
        for code in [13, 0, 1000, 99_999, u64::MAX] {
            let code = answered(remote(code)).error_code().expect("an error");
            assert!(!code.is_definite(), "{code:?}");
        }
        let timeout = forward_result(Err(CallError::Timeout("n2".into())));
        assert_eq!(answered(timeout).error_code(), Some(ErrorCode::Timeout));
    }
}
