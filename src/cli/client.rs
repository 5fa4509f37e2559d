//! `oncekv client`: one operation against a cluster, printed as the reply body's
//! JSON on stdout. Exit status: 0 an ok reply, 1 a definite error reply (or a final
//! one: 1000, 1001), 2 no definite answer before the deadline, 3 bad usage (a
//! request longer than `ONCEKV_REQUEST_BYTES_MAX`, 1 MiB by default, is refused
//! before sending).
//!
//! Owns the command's arguments, the request it builds and its exit status; an
//! operation's retrying is [`crate::tcp::Client`]'s (only membership requests are
//! retried here, on the typed `not_leader` mark). May not touch: a node's
//! internals (it reaches the cluster over TCP only), nor stdout other than the
//! output handed in.

use std::fmt::Display;
use std::io::{self, Write};
use std::time::Duration;

use serde_json::{Value, json};

use crate::protocol::{ErrorCode, Reply};
use crate::tcp::{Client, ClientError, ClientOptions};

/// Arguments of `oncekv client`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Node addresses, comma-separated (any member will do).
    #[arg(long, value_delimiter = ',', required = true)]
    pub peers: Vec<String>,
    /// Use this session instead of opening one (with --seq).
    #[arg(long, requires = "seq")]
    pub client_id: Option<String>,
    /// The seq of this request in --client-id's session (reuse it to retry).
    #[arg(long, requires = "client_id")]
    pub seq: Option<u64>,
    /// Seconds to keep retrying before giving up without a definite answer
    /// (above 0, at most a day).
    #[arg(long, default_value_t = 10.0, allow_negative_numbers = true)]
    pub deadline: f64,
    /// The operation.
    #[command(subcommand)]
    pub op: ClientOp,
}

/// What `oncekv client` does. Keys and values are JSON if they parse, else strings.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ClientOp {
    /// Linearizable read.
    Read {
        /// Key.
        key: String,
    },
    /// Write a value.
    Write {
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// Compare-and-set.
    Cas {
        /// Key.
        key: String,
        /// Expected value.
        from: String,
        /// New value.
        to: String,
    },
    /// Add to a counter (missing counts as 0).
    Add {
        /// Key.
        key: String,
        /// Increment.
        #[arg(allow_hyphen_values = true)]
        delta: i64,
    },
    /// Open a session and print its client_id.
    OpenSession,
    /// Each node's role, term, leader, log and applied index, sessions.
    Status,
    /// Add a node (NAME=HOST:PORT), started with `serve --join`: learner, then voter.
    AddNode {
        /// NAME=HOST:PORT.
        node: String,
    },
    /// Remove a node from the membership.
    RemoveNode {
        /// Node name.
        name: String,
    },
}

/// Exit status: no definite answer.
const EXIT_INDEFINITE: i32 = 2;
/// Exit status: bad usage.
pub const EXIT_USAGE: i32 = 3;

/// The share of `--deadline` the leader may spend waiting for an added node to
/// catch up before making it a voter; the rest is left for undoing the learner
/// and for the reply.
const ADD_NODE_CATCH_UP_SHARE: f64 = 0.75;
/// Pause between a membership request's attempts (finding the leader again).
const ADMIN_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The longest `--deadline` accepted, in seconds: one day. A longer one is a
/// slip (a unit, a digit), and not every float is a `Duration` (`inf`, `1e300`).
pub const DEADLINE_MAX_S: f64 = 86_400.0;

/// `--deadline` as a duration: a number of seconds above 0 (and not so small it
/// rounds to nothing) and at most [`DEADLINE_MAX_S`]; NaN and infinities are refused.
fn deadline(seconds: f64) -> Result<Duration, String> {
    let refused = || {
        format!(
            "--deadline must be a number of seconds above 0 and at most {DEADLINE_MAX_S} \
             (one day), got {seconds:?}"
        )
    };
    // Written so that NaN fails it too.
    if !(seconds > 0.0 && seconds <= DEADLINE_MAX_S) {
        return Err(refused());
    }
    match Duration::try_from_secs_f64(seconds) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(refused()),
    }
}

/// Refuses an empty `--peers` (or an empty entry in it) and an entry that is
/// not `HOST:PORT` with a port from 1 to 65535: otherwise the client would
/// retry addresses that cannot be reached until its deadline.
fn check_peers(peers: &[String]) -> Result<(), String> {
    if peers.iter().all(|p| p.trim().is_empty()) {
        return Err("--peers is empty: give at least one HOST:PORT".into());
    }
    for p in peers {
        let port = p
            .rsplit_once(':')
            .filter(|(host, _)| !host.trim().is_empty())
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .filter(|port| *port != 0);
        if port.is_none() {
            return Err(format!(
                "--peers entry {p:?} is not HOST:PORT (a comma-separated list, no empty entries)"
            ));
        }
    }
    Ok(())
}

fn json_arg(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::from(text))
}

/// Refuses a key or value argument holding an integer beyond 64 bits: parsed, it
/// would become the nearest double and be stored rounded (the node refuses such
/// a request with error 12; here it never gets sent).
fn check_wide_integers(op: &ClientOp) -> Result<(), String> {
    let texts: Vec<&str> = match op {
        ClientOp::Read { key } => vec![key],
        ClientOp::Write { key, value } => vec![key, value],
        ClientOp::Cas { key, from, to } => vec![key, from, to],
        ClientOp::Add { key, .. } => vec![key],
        _ => vec![],
    };
    for text in texts {
        if serde_json::from_str::<Value>(text).is_ok()
            && let Some(wide) = crate::protocol::wide_integer(text)
        {
            return Err(format!(
                "the integer {wide} does not fit in 64 bits and would be stored rounded; \
                 quote it to store it as a string ('\"{wide}\"')"
            ));
        }
    }
    Ok(())
}

/// Writes `line` and a newline to `out`, flushed so that a reader sees it at once.
fn write_line(out: &mut dyn Write, line: impl Display) -> io::Result<()> {
    writeln!(out, "{line}")?;
    out.flush()
}

/// The exit status when the output could not be written: the command's own
/// `status` if the reader went away (a closed pipe, `| head -1`), which is no
/// error; otherwise the error is reported and the status says that no answer was
/// delivered.
fn output_failed(e: io::Error, status: i32) -> i32 {
    if e.kind() == io::ErrorKind::BrokenPipe {
        return status;
    }
    eprintln!("error: cannot write the output: {e}");
    EXIT_INDEFINITE
}

/// Runs one client command, writing its answer to `out`; returns the exit status.
pub async fn run(args: ClientArgs, out: &mut dyn Write) -> i32 {
    let opts = match options(&args) {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_USAGE;
        }
    };
    let deadline = opts.deadline;
    let mut client = Client::new(opts);
    let result = match args.op.clone() {
        ClientOp::Status => return status(&mut client, &args.peers, out).await,
        ClientOp::AddNode { node } => {
            let Some((name, addr)) = node.split_once('=') else {
                eprintln!("add-node wants NAME=HOST:PORT");
                return EXIT_USAGE;
            };
            let timeout_ms = (deadline.as_secs_f64() * (ADD_NODE_CATCH_UP_SHARE * 1e3)) as u64;
            let body =
                json!({"type": "add_node", "name": name, "addr": addr, "timeout_ms": timeout_ms});
            return admin(&mut client, body, deadline, out).await;
        }
        ClientOp::RemoveNode { name } => {
            let body = json!({"type": "remove_node", "name": name});
            return admin(&mut client, body, deadline, out).await;
        }
        ClientOp::OpenSession => client.request(json!({"type": "open_session"})).await,
        ClientOp::Read { key } => client.read(json_arg(&key)).await,
        op => match session(&mut client, &args).await {
            Err(e) => Err(e),
            Ok(()) => mutate(&mut client, op).await,
        },
    };
    match result {
        Ok(reply) => {
            let status = i32::from(matches!(reply, Reply::Error { .. }));
            match write_line(out, &reply) {
                Ok(()) => status,
                Err(e) => output_failed(e, status),
            }
        }
        Err(e @ ClientError::Usage(_)) => {
            eprintln!("error: {e}");
            EXIT_USAGE
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_INDEFINITE
        }
    }
}

/// The client's options from the flags and the environment (the cluster key, the
/// nodes' request limit), or why the command is refused before sending anything.
fn options(args: &ClientArgs) -> Result<ClientOptions, String> {
    let mut opts = ClientOptions::new(args.peers.clone());
    opts.cluster_key = crate::tcp::cluster_key_from_env().map(|k| k.to_string());
    // The same request limit as the nodes (ONCEKV_REQUEST_BYTES_MAX).
    let config = crate::config::Config::from_env().map_err(|e| format!("error: {e}"))?;
    opts.request_bytes_max = config.request_bytes_max;
    opts.deadline = deadline(args.deadline).map_err(|e| format!("error: {e}"))?;
    check_peers(&args.peers).map_err(|e| format!("error: {e}"))?;
    if matches!(
        args.op,
        ClientOp::AddNode { .. } | ClientOp::RemoveNode { .. }
    ) {
        // The leader answers add_node once the learner has caught up.
        opts.attempt_timeout = opts.deadline;
    }
    check_wide_integers(&args.op)?;
    Ok(opts)
}

/// A write, cas or add in the client's session.
async fn mutate(client: &mut Client, op: ClientOp) -> Result<Reply, ClientError> {
    match op {
        ClientOp::Write { key, value } => client.write(json_arg(&key), json_arg(&value)).await,
        ClientOp::Cas { key, from, to } => {
            client
                .cas(json_arg(&key), json_arg(&from), json_arg(&to))
                .await
        }
        ClientOp::Add { key, delta } => client.add(json_arg(&key), delta).await,
        _ => unreachable!("only mutations reach here"),
    }
}

/// Uses --client-id/--seq, or opens a session (and says so on stderr, so the
/// request can be retried by hand with the same pair).
async fn session(client: &mut Client, args: &ClientArgs) -> Result<(), ClientError> {
    match (&args.client_id, args.seq) {
        (Some(id), Some(seq)) => client.set_session(id.clone(), seq),
        _ => {
            client.open_session().await?;
        }
    }
    if let Some((id, seq)) = client.session() {
        eprintln!("session: --client-id {id} --seq {seq}");
    }
    Ok(())
}

/// Writes one line per node: its status, or why it did not answer.
async fn status(client: &mut Client, peers: &[String], out: &mut dyn Write) -> i32 {
    let mut answered = 0;
    for (i, addr) in peers.iter().enumerate() {
        let line = match client.status_of(i).await {
            Ok(s) => {
                answered += 1;
                let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
                v["addr"] = Value::from(addr.as_str());
                v
            }
            Err(e) => json!({"addr": addr, "error": e}),
        };
        if let Err(e) = write_line(out, &line) {
            return output_failed(e, status_of(answered));
        }
    }
    status_of(answered)
}

/// The exit status of `status`: 0 if any node answered.
fn status_of(answered: usize) -> i32 {
    if answered == 0 { EXIT_INDEFINITE } else { 0 }
}

/// Sends a membership request to the leader, retrying until it answers or the deadline.
async fn admin(client: &mut Client, body: Value, deadline: Duration, out: &mut dyn Write) -> i32 {
    let deadline = std::time::Instant::now() + deadline;
    let mut last = String::from("no leader found");
    while std::time::Instant::now() < deadline {
        if let Some(i) = client.find_leader().await {
            match client.call_node(i, body.clone()).await {
                Ok(mut reply) if reply.get("type") != Some(&Value::from("error")) => {
                    reply.remove("in_reply_to");
                    reply.remove("msg_id");
                    return match write_line(out, Value::Object(reply)) {
                        Ok(()) => 0,
                        Err(e) => output_failed(e, 0),
                    };
                }
                Ok(reply) => {
                    let code = (reply.get("code").and_then(Value::as_u64))
                        .and_then(|c| ErrorCode::try_from(c as u32).ok());
                    // A definite refusal (a bad request, no cluster key, a node
                    // that did not catch up) ends it; one marked `not_leader`
                    // is retried at the leader.
                    let not_leader =
                        reply.get(crate::node::NOT_LEADER_FIELD) == Some(&Value::Bool(true));
                    last = Value::Object(reply).to_string();
                    if code.is_some_and(|c| c.is_definite()) && !not_leader {
                        eprintln!("error: {last}");
                        return 1;
                    }
                }
                Err(e) => last = e,
            }
        }
        tokio::time::sleep(ADMIN_RETRY_PAUSE).await;
    }
    eprintln!("error: {last}");
    EXIT_INDEFINITE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wide_integer_argument_is_refused_before_sending() {
        let write = |value: &str| ClientOp::Write {
            key: "k".into(),
            value: value.into(),
        };
        assert!(check_wide_integers(&write("18446744073709551615")).is_ok());
        assert!(check_wide_integers(&write("[1.5, -3]")).is_ok());
        // Not JSON: sent as the string it is, nothing to round.
        assert!(check_wide_integers(&write("123456789012345678901234567890x")).is_ok());
        assert!(check_wide_integers(&write("\"123456789012345678901234567890\"")).is_ok());
        let e = check_wide_integers(&write("123456789012345678901234567890")).unwrap_err();
        assert!(e.contains("123456789012345678901234567890"), "{e}");
        let cas = ClientOp::Cas {
            key: "k".into(),
            from: "1".into(),
            to: "{\"a\":99999999999999999999}".into(),
        };
        assert!(check_wide_integers(&cas).is_err());
    }

    #[test]
    fn a_deadline_must_be_a_finite_positive_number_of_seconds_up_to_a_day() {
        assert_eq!(deadline(10.0), Ok(Duration::from_secs(10)));
        assert_eq!(deadline(DEADLINE_MAX_S), Ok(Duration::from_secs(86_400)));
        for bad in [
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            1e300,
            DEADLINE_MAX_S + 1.0,
            -1.0,
            0.0,
            -0.0,
            1e-12,
        ] {
            let e = deadline(bad).unwrap_err();
            assert!(e.contains("--deadline"), "{bad}: {e}");
        }
    }

    #[test]
    fn peers_must_be_host_port_entries() {
        let peers = |s: &[&str]| s.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        assert!(check_peers(&peers(&["127.0.0.1:7001", "[::1]:7002", "db:1"])).is_ok());
        for bad in [
            &[""][..],
            &["", ""],
            &["127.0.0.1:7001", ""],
            &["127.0.0.1"],
            &["h:0"],
            &["h:70000"],
            &[":7001"],
        ] {
            assert!(check_peers(&peers(bad)).is_err(), "{bad:?}");
        }
    }
}
