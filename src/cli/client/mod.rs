//! `oncekv client`: operations against a TCP cluster. A key-value operation prints
//! the reply body's JSON on stdout; `status`, `members` and `health` print a table,
//! or one JSON document with `-o json` ([`view`]); `shell` is an interactive loop
//! over one session ([`shell`]). Exit statuses: [`crate::cli::exit::CLIENT`].
//!
//! Sessions: `write`, `cas` and `add` open a session, run in it and close it once
//! they have a definite answer (without one it is left open, and its id and seq are
//! printed, so the request can be retried by hand); with `--client-id`/`--seq` they
//! run in that session and leave it open.
//!
//! Owns the command's arguments, their checks, the requests it builds and its exit
//! status; an operation's retrying is [`crate::tcp::Client`]'s (only membership
//! requests are retried here, on the typed `not_leader` mark). May not touch: a
//! node's internals (it reaches the cluster over TCP only), nor stdout other than
//! the output handed in.

pub mod shell;
pub mod view;

use std::fmt::Display;
use std::io::{self, Write};
use std::time::Duration;

use serde_json::{Value, json};

use super::exit;
use crate::protocol::{ErrorCode, Reply};
use crate::tcp::{Client, ClientError, ClientOptions};

/// The environment variable `--peers` falls back to.
pub const PEERS_VAR: &str = "ONCEKV_PEERS";

/// Arguments of `oncekv client`. The options are global: they may stand before
/// or after the subcommand (`client write x 1 --deadline 1`).
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Node addresses, HOST:PORT, comma-separated (any member will do). Falls
    /// back to ONCEKV_PEERS.
    #[arg(
        long,
        env = PEERS_VAR,
        value_delimiter = ',',
        global = true,
        value_name = "HOST:PORT,..."
    )]
    pub peers: Vec<String>,
    /// With --seq: run write, cas or add as this request of your own session ID
    /// (left open); with close-session, the session to close.
    #[arg(long, global = true, value_name = "ID")]
    pub client_id: Option<String>,
    /// With --client-id: this request's seq in that session. Re-run with the same
    /// pair to retry: a seq that already ran returns its cached reply and does not
    /// run again. A retry is known by (client id, seq) alone: another request sent
    /// under a seq that already ran gets that seq's old reply and does not run
    /// (the client says so on stderr when the reply's type shows it).
    #[arg(long, global = true, value_name = "N")]
    pub seq: Option<u64>,
    /// Seconds to keep retrying before giving up without a definite answer
    /// (above 0, at most a day).
    #[arg(
        long,
        global = true,
        default_value_t = 10.0,
        allow_negative_numbers = true,
        value_name = "SECS"
    )]
    pub deadline: f64,
    /// How status, members and health print: a table, or one JSON document.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// The operation.
    #[command(subcommand)]
    pub op: ClientOp,
}

/// How `status`, `members` and `health` print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// One JSON document for scripts.
    Json,
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
    /// Open a session and print its client_id (it stays open).
    OpenSession,
    /// Close the session --client-id names.
    CloseSession,
    /// Each node's role, term, leader, last log and applied index, sessions.
    Status,
    /// The members: name, address, voter or learner, which one leads.
    Members,
    /// Per node: whether it serves a linearizable read, and how long it took.
    Health,
    /// An interactive loop over one session (reads commands from stdin).
    Shell,
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
/// retry addresses that cannot be reached until its deadline. The list comes
/// from `--peers` or, without it, from `ONCEKV_PEERS`: the same rules hold.
fn check_peers(peers: &[String]) -> Result<(), String> {
    if peers.iter().all(|p| p.trim().is_empty()) {
        return Err(format!(
            "no peers: give --peers HOST:PORT,... or set {PEERS_VAR}"
        ));
    }
    for p in peers {
        if p.contains('=') {
            return Err(format!(
                "--peers (or {PEERS_VAR}) entry {p:?} is NAME=HOST:PORT, the form `serve --peers` \
                 takes: the client wants HOST:PORT only (drop the NAME=)"
            ));
        }
        let host_chars = |host: &str| {
            host.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']')
            })
        };
        let port = p
            .rsplit_once(':')
            .filter(|(host, _)| !host.is_empty() && host_chars(host))
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .filter(|port| *port != 0);
        if port.is_none() {
            return Err(format!(
                "--peers (or {PEERS_VAR}) entry {p:?} is not HOST:PORT \
                 (a comma-separated list, no empty entries)"
            ));
        }
    }
    Ok(())
}

/// Refuses `--client-id`/`--seq` where they mean nothing, or one without the other.
fn check_identity(args: &ClientArgs) -> Result<(), String> {
    let (id, seq) = (args.client_id.is_some(), args.seq.is_some());
    match &args.op {
        ClientOp::Write { .. } | ClientOp::Cas { .. } | ClientOp::Add { .. } => match (id, seq) {
            (true, false) => {
                Err("--client-id needs --seq (the request's seq in that session)".into())
            }
            (false, true) => Err("--seq needs --client-id (the session it numbers)".into()),
            _ => Ok(()),
        },
        ClientOp::CloseSession if !id => Err("close-session needs --client-id".into()),
        ClientOp::CloseSession if seq => Err("close-session takes no --seq".into()),
        ClientOp::CloseSession => Ok(()),
        op if id || seq => Err(format!(
            "--client-id and --seq apply to write, cas, add (and close-session), not {}",
            op_name(op)
        )),
        _ => Ok(()),
    }
}

/// The subcommand's name as typed.
fn op_name(op: &ClientOp) -> &'static str {
    match op {
        ClientOp::Read { .. } => "read",
        ClientOp::Write { .. } => "write",
        ClientOp::Cas { .. } => "cas",
        ClientOp::Add { .. } => "add",
        ClientOp::OpenSession => "open-session",
        ClientOp::CloseSession => "close-session",
        ClientOp::Status => "status",
        ClientOp::Members => "members",
        ClientOp::Health => "health",
        ClientOp::Shell => "shell",
        ClientOp::AddNode { .. } => "add-node",
        ClientOp::RemoveNode { .. } => "remove-node",
    }
}

/// A key or value argument: JSON if it parses, else the string it is.
pub(crate) fn json_arg(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::from(text))
}

/// Refuses a key or value holding an integer beyond 64 bits: parsed, it would
/// become the nearest double and be stored rounded (the node refuses such a
/// request with error 12; here it never gets sent).
pub(crate) fn check_wide_integers(texts: &[&str]) -> Result<(), String> {
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

/// The key and value arguments of `op`.
fn op_texts(op: &ClientOp) -> Vec<&str> {
    match op {
        ClientOp::Read { key } => vec![key],
        ClientOp::Write { key, value } => vec![key, value],
        ClientOp::Cas { key, from, to } => vec![key, from, to],
        ClientOp::Add { key, .. } => vec![key],
        _ => vec![],
    }
}

/// Writes `line` and a newline to `out`, flushed so that a reader sees it at once.
pub(crate) fn write_line(out: &mut dyn Write, line: impl Display) -> io::Result<()> {
    writeln!(out, "{line}")?;
    out.flush()
}

/// The exit status when the output could not be written: the command's own
/// `status` if the reader went away (a closed pipe, `| head -1`), which is no
/// error; otherwise the error is reported and the status says that no answer was
/// delivered.
pub(crate) fn output_failed(e: io::Error, status: i32) -> i32 {
    if e.kind() == io::ErrorKind::BrokenPipe {
        return status;
    }
    crate::stderr_line!("error: cannot write the output: {e}");
    exit::UNKNOWN
}

/// Prints `reply` and returns its exit status (0 ok, 1 an error reply).
fn print_reply(reply: &Reply, out: &mut dyn Write) -> i32 {
    let status = if matches!(reply, Reply::Error { .. }) {
        exit::FAILED
    } else {
        exit::OK
    };
    match write_line(out, reply) {
        Ok(()) => status,
        Err(e) => output_failed(e, status),
    }
}

/// The exit status of a request with no reply: bad usage (a request over the
/// size limit, refused before sending), a definite refusal of a step it needed
/// (its session), or no definite answer.
fn no_reply(e: &ClientError) -> i32 {
    crate::stderr_line!("error: {e}");
    match e {
        ClientError::Usage(_) => exit::USAGE,
        ClientError::Refused(_) => exit::FAILED,
        ClientError::Deadline { .. } => exit::UNKNOWN,
    }
}

/// A request's lack of a reply, as the shell prints it.
pub(crate) fn no_reply_text(e: &ClientError) -> String {
    e.to_string()
}

/// Runs one client command, writing its answer to `out`; returns the exit status.
pub async fn run(args: ClientArgs, out: &mut dyn Write) -> i32 {
    let opts = match options(&args) {
        Ok(opts) => opts,
        Err(e) => {
            crate::stderr_line!("error: {e}");
            return exit::USAGE;
        }
    };
    let deadline = opts.deadline;
    let mut client = Client::new(opts);
    let output = args.output;
    match args.op.clone() {
        ClientOp::Status => view::status(&mut client, &args.peers, output, out).await,
        ClientOp::Members => view::members(&mut client, &args.peers, output, out).await,
        ClientOp::Health => view::health(&mut client, &args.peers, output, out).await,
        ClientOp::Shell => shell::run(&mut client, out).await,
        ClientOp::AddNode { node } => {
            let (name, addr) = node.split_once('=').unwrap_or_default();
            let timeout_ms = (deadline.as_secs_f64() * (ADD_NODE_CATCH_UP_SHARE * 1e3)) as u64;
            let body =
                json!({"type": "add_node", "name": name, "addr": addr, "timeout_ms": timeout_ms});
            admin(&mut client, body, deadline, out).await
        }
        ClientOp::RemoveNode { name } => {
            let body = json!({"type": "remove_node", "name": name});
            admin(&mut client, body, deadline, out).await
        }
        ClientOp::OpenSession => match client.request(json!({"type": "open_session"})).await {
            Ok(reply) => print_reply(&reply, out),
            Err(e) => no_reply(&e),
        },
        ClientOp::CloseSession => {
            let id = args.client_id.clone().unwrap_or_default();
            client.set_session(id, 1);
            match client.close_session().await {
                Ok(reply) => print_reply(&reply, out),
                Err(e) => no_reply(&e),
            }
        }
        ClientOp::Read { key } => match client.read(json_arg(&key)).await {
            Ok(reply) => print_reply(&reply, out),
            Err(e) => no_reply(&e),
        },
        op => one_shot(&mut client, &args, op, out).await,
    }
}

/// The client's options from the flags and the environment (the cluster key, the
/// nodes' request limit), or why the command is refused before sending anything.
fn options(args: &ClientArgs) -> Result<ClientOptions, String> {
    check_peers(&args.peers)?;
    check_identity(args)?;
    let mut opts = ClientOptions::new(args.peers.clone());
    opts.cluster_key = crate::tcp::cluster_key_from_env().map(|k| k.to_string());
    // The same request limit as the nodes (ONCEKV_REQUEST_BYTES_MAX).
    let config = crate::config::Config::from_env().map_err(|e| e.to_string())?;
    opts.request_bytes_max = config.request_bytes_max;
    opts.deadline = deadline(args.deadline)?;
    opts.attempt_timeout = opts.attempt_timeout.min(opts.deadline);
    match &args.op {
        ClientOp::AddNode { node } => {
            let ok = node.split_once('=').is_some_and(|(name, addr)| {
                !name.is_empty() && crate::tcp::split_addr(addr).is_ok()
            });
            if !ok {
                return Err(format!("add-node wants NAME=HOST:PORT, got {node:?}"));
            }
            // The leader answers add_node once the learner has caught up.
            opts.attempt_timeout = opts.deadline;
        }
        ClientOp::RemoveNode { .. } => opts.attempt_timeout = opts.deadline,
        _ => {}
    }
    check_wide_integers(&op_texts(&args.op))?;
    Ok(opts)
}

/// A write, cas or add as its request body (without session fields).
fn mutation_body(op: &ClientOp) -> Value {
    match op {
        ClientOp::Write { key, value } => {
            json!({"type": "write", "key": json_arg(key), "value": json_arg(value)})
        }
        ClientOp::Cas { key, from, to } => json!({
            "type": "cas", "key": json_arg(key), "from": json_arg(from), "to": json_arg(to)
        }),
        ClientOp::Add { key, delta } => {
            json!({"type": "add", "key": json_arg(key), "delta": delta})
        }
        _ => unreachable!("only mutations reach here"),
    }
}

/// Whether `reply` can be the answer to a request of type `kind` run now. A reply
/// that cannot (an `add_ok` to a `write`) is the cached reply of another request
/// that ran under the same seq.
pub(crate) fn reply_fits(kind: &str, reply: &Reply) -> bool {
    match (kind, reply) {
        (
            _,
            Reply::Error {
                code: ErrorCode::SessionExpired | ErrorCode::StaleRequest,
                ..
            },
        ) => true,
        ("write", Reply::WriteOk) => true,
        ("cas", Reply::CasOk) => true,
        ("add", Reply::AddOk { .. }) => true,
        ("cas", Reply::Error { code, .. }) => matches!(
            code,
            ErrorCode::KeyDoesNotExist | ErrorCode::PreconditionFailed
        ),
        ("add", Reply::Error { code, .. }) => *code == ErrorCode::PreconditionFailed,
        _ => false,
    }
}

/// A write, cas or add: in the user's session (`--client-id`/`--seq`, left open),
/// or in one opened for it and closed once the answer is definite.
async fn one_shot(
    client: &mut Client,
    args: &ClientArgs,
    op: ClientOp,
    out: &mut dyn Write,
) -> i32 {
    let own = match (&args.client_id, args.seq) {
        (Some(id), Some(seq)) => {
            client.set_session(id.clone(), seq);
            false
        }
        _ => {
            if let Err(e) = client.open_session().await {
                return no_reply(&e);
            }
            true
        }
    };
    let (id, seq) = match client.session() {
        Some((id, seq)) => (id.to_string(), seq),
        None => unreachable!("a session was set or opened above"),
    };
    let body = mutation_body(&op);
    let kind = op_name(&op);
    let reply = match client.mutate(body).await {
        Ok(reply) => reply,
        Err(e) => {
            let code = no_reply(&e);
            if own && code == exit::UNKNOWN {
                crate::stderr_line!(
                    "session {id} is left open so that the request can be retried: \
                     oncekv client {kind} ... --client-id {id} --seq {seq}; \
                     close it with: oncekv client close-session --client-id {id}"
                );
            } else if own {
                // Refused before sending (too large, say): nothing ran in it.
                close_own(client, &id).await;
            }
            return code;
        }
    };
    if !own && !reply_fits(kind, &reply) {
        crate::stderr_line!(
            "note: this reply is not a {kind}'s: seq {seq} of session {id} is not above \
             the latest seq the session ran, so the reply is a cached one (of seq {seq} or \
             of that latest seq), and this {kind} did not run"
        );
    }
    let code = print_reply(&reply, out);
    if own {
        close_own(client, &id).await;
    }
    code
}

/// Closes the session a one-shot command opened, saying so if it may stay open.
async fn close_own(client: &mut Client, id: &str) {
    match client.close_session().await {
        Ok(Reply::CloseSessionOk) => {}
        Ok(other) => crate::stderr_line!("note: closing session {id}: {other}"),
        Err(e) => {
            crate::stderr_line!("note: session {id} may still be open (it expires when idle): {e}")
        }
    }
}

/// Sends a membership request to the leader, retrying until it answers or the deadline.
async fn admin(client: &mut Client, body: Value, deadline: Duration, out: &mut dyn Write) -> i32 {
    let deadline = std::time::Instant::now() + deadline;
    let mut last = String::from("no leader found");
    let mut sent = false;
    while std::time::Instant::now() < deadline {
        if let Some(i) = client.find_leader().await {
            sent = true;
            match client.call_node(i, body.clone()).await {
                Ok(mut reply) if reply.get("type") != Some(&Value::from("error")) => {
                    reply.remove("in_reply_to");
                    reply.remove("msg_id");
                    return match write_line(out, Value::Object(reply)) {
                        Ok(()) => exit::OK,
                        Err(e) => output_failed(e, exit::OK),
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
                        crate::stderr_line!("error: {last}");
                        return exit::FAILED;
                    }
                }
                Err(e) => last = e,
            }
        }
        tokio::time::sleep(ADMIN_RETRY_PAUSE).await;
    }
    if !sent {
        // No member named a reachable leader, so the change was never sent.
        crate::stderr_line!(
            "error: no leader found among the given peers or the leaders they name; \
             nothing was sent"
        );
        return exit::FAILED;
    }
    crate::stderr_line!("error: {last}");
    exit::UNKNOWN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wide_integer_argument_is_refused_before_sending() {
        assert!(check_wide_integers(&["k", "18446744073709551615"]).is_ok());
        assert!(check_wide_integers(&["k", "[1.5, -3]"]).is_ok());
        // Not JSON: sent as the string it is, nothing to round.
        assert!(check_wide_integers(&["k", "123456789012345678901234567890x"]).is_ok());
        assert!(check_wide_integers(&["k", "\"123456789012345678901234567890\""]).is_ok());
        let e = check_wide_integers(&["k", "123456789012345678901234567890"]).unwrap_err();
        assert!(e.contains("123456789012345678901234567890"), "{e}");
        assert!(check_wide_integers(&["k", "1", "{\"a\":99999999999999999999}"]).is_err());
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
            &[][..],
            &[""],
            &["", ""],
            &["127.0.0.1:7001", ""],
            &["127.0.0.1"],
            &["nonsense"],
            &["h:0"],
            &["h:70000"],
            &[":7001"],
            &[" 127.0.0.1:7001"],
            &["n1=127.0.0.1:7001"],
            &["exa mple:7001"],
        ] {
            assert!(check_peers(&peers(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_reply_of_another_type_is_known_as_another_requests() {
        let error = |code| Reply::error(code, "x");
        assert!(reply_fits("write", &Reply::WriteOk));
        assert!(reply_fits("add", &Reply::AddOk { value: 3 }));
        assert!(reply_fits("cas", &error(ErrorCode::PreconditionFailed)));
        assert!(reply_fits("write", &error(ErrorCode::SessionExpired)));
        assert!(!reply_fits("write", &Reply::AddOk { value: 3 }));
        assert!(!reply_fits("add", &Reply::CasOk));
        assert!(!reply_fits("write", &error(ErrorCode::KeyDoesNotExist)));
        assert!(!reply_fits("add", &error(ErrorCode::KeyDoesNotExist)));
    }
}
