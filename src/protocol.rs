//! The wire format: Maelstrom envelopes, request and reply bodies, error codes.
//!
//! Parsing is strict and total: any line either becomes a [`Message`] or a
//! [`ParseError`] that says what was wrong, so a node can answer error 12 (or log and
//! drop) instead of crashing. Emitted bodies keep the byte-stable key order of
//! `protocol.md` section 1: `type`, payload, `in_reply_to`, `msg_id`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::state::{Failure, Outcome};
pub use crate::state::{KvOp, SessionRef};

/// A node or client name, as `init` and Maelstrom spell it (`n0`, `c12`).
pub type Name = String;

/// Maelstrom's error codes used by oncekv (`protocol.md` section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "u32", try_from = "u32")]
pub enum ErrorCode {
    /// A forwarded or proposed request got no answer in time (indefinite).
    Timeout,
    /// Unknown `type` (definite).
    NotSupported,
    /// No leader known and the request was not proposed (definite).
    TemporarilyUnavailable,
    /// The body does not parse into a known request (definite).
    MalformedRequest,
    /// Anything after the request may have reached the log (indefinite).
    Crash,
    /// read/cas on a missing key (definite).
    KeyDoesNotExist,
    /// cas `from` mismatch, or `add` on a non-integer (definite).
    PreconditionFailed,
    /// The session expired or was evicted; the request may have run (indefinite).
    SessionExpired,
    /// The cached reply was discarded by the window (indefinite).
    StaleRequest,
}

impl ErrorCode {
    /// The numeric code on the wire.
    pub fn code(self) -> u32 {
        match self {
            ErrorCode::Timeout => 0,
            ErrorCode::NotSupported => 10,
            ErrorCode::TemporarilyUnavailable => 11,
            ErrorCode::MalformedRequest => 12,
            ErrorCode::Crash => 13,
            ErrorCode::KeyDoesNotExist => 20,
            ErrorCode::PreconditionFailed => 22,
            ErrorCode::SessionExpired => 1000,
            ErrorCode::StaleRequest => 1001,
        }
    }

    /// Whether the code promises that the operation did not and will not happen.
    /// This is the one place that decides it (`protocol.md` section 5).
    pub fn is_definite(self) -> bool {
        matches!(
            self,
            ErrorCode::NotSupported
                | ErrorCode::TemporarilyUnavailable
                | ErrorCode::MalformedRequest
                | ErrorCode::KeyDoesNotExist
                | ErrorCode::PreconditionFailed
        )
    }
}

impl From<ErrorCode> for u32 {
    fn from(c: ErrorCode) -> u32 {
        c.code()
    }
}

impl TryFrom<u32> for ErrorCode {
    type Error = String;
    fn try_from(n: u32) -> Result<Self, String> {
        Ok(match n {
            0 => ErrorCode::Timeout,
            10 => ErrorCode::NotSupported,
            11 => ErrorCode::TemporarilyUnavailable,
            12 => ErrorCode::MalformedRequest,
            13 => ErrorCode::Crash,
            20 => ErrorCode::KeyDoesNotExist,
            22 => ErrorCode::PreconditionFailed,
            1000 => ErrorCode::SessionExpired,
            1001 => ErrorCode::StaleRequest,
            other => return Err(format!("unknown error code {other}")),
        })
    }
}

/// A reply body without its addressing (`in_reply_to`, `msg_id`): what the state
/// machine caches per session and what a leader returns to a forwarding follower.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// `init_ok {}`.
    InitOk,
    /// `read_ok {value}`.
    ReadOk {
        /// The value read.
        value: Value,
    },
    /// `write_ok {}`.
    WriteOk,
    /// `cas_ok {}`.
    CasOk,
    /// `add_ok {value}`: the new total.
    AddOk {
        /// The counter after the increment.
        value: i64,
    },
    /// `open_session_ok {client_id}`.
    OpenSessionOk {
        /// The new session's cluster-unique id.
        client_id: String,
    },
    /// `close_session_ok {}`.
    CloseSessionOk,
    /// `error {code, text}`.
    Error {
        /// The Maelstrom error code.
        code: ErrorCode,
        /// A human explanation.
        text: String,
    },
}

impl Reply {
    /// An error reply.
    pub fn error(code: ErrorCode, text: impl Into<String>) -> Reply {
        Reply::Error {
            code,
            text: text.into(),
        }
    }

    /// The error code, if this is an error.
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            Reply::Error { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<Failure> for ErrorCode {
    fn from(f: Failure) -> ErrorCode {
        match f {
            Failure::KeyDoesNotExist => ErrorCode::KeyDoesNotExist,
            Failure::PreconditionFailed => ErrorCode::PreconditionFailed,
            Failure::SessionExpired => ErrorCode::SessionExpired,
            Failure::StaleRequest => ErrorCode::StaleRequest,
        }
    }
}

impl From<Outcome> for Reply {
    /// The wire reply for a state machine outcome. [`Outcome::Applied`] (an
    /// entry no client asked for) has no reply of its own and reads as `write_ok`.
    fn from(o: Outcome) -> Reply {
        match o {
            Outcome::Read { value } => Reply::ReadOk { value },
            Outcome::Written | Outcome::Applied => Reply::WriteOk,
            Outcome::Swapped => Reply::CasOk,
            Outcome::Added { value } => Reply::AddOk { value },
            Outcome::SessionOpened { client_id } => Reply::OpenSessionOk { client_id },
            Outcome::SessionClosed => Reply::CloseSessionOk,
            Outcome::Failed { failure, text } => Reply::error(failure.into(), text),
        }
    }
}

/// A client request, parsed and validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Read a key (linearizable, no log entry).
    Read {
        /// Canonical JSON text of the key.
        key: String,
    },
    /// A mutation, with optional exactly-once session fields.
    Mutate {
        /// The mutation.
        op: KvOp,
        /// Present when the client uses a session.
        session: Option<SessionRef>,
    },
    /// Register a new session.
    OpenSession,
    /// Free a session.
    CloseSession {
        /// The session to free.
        client_id: String,
    },
}

/// The body of a message between nodes or from a client, by type.
#[derive(Debug, Clone)]
pub enum Body {
    /// Maelstrom's `init`.
    Init {
        /// This node's name.
        node_id: Name,
        /// Every node in the cluster, in the same order everywhere.
        node_ids: Vec<Name>,
    },
    /// A client request (or one forwarded by a peer node).
    Request(Request),
    /// Any other type: node-to-node traffic (RPCs and their replies) or an unknown type,
    /// kept raw for the node layer to route.
    Other {
        /// The `type` field.
        kind: String,
        /// The whole body (without `rpc` when that is in `rpc`).
        raw: Map<String, Value>,
        /// A peer request's `rpc` field as text, not yet parsed: the hot path of
        /// `raft_*` requests decodes it straight into openraft's type (see
        /// [`parse_peer_fast`]).
        rpc: Option<Box<serde_json::value::RawValue>>,
    },
}

/// One parsed line: sender, receiver, message id fields and body.
#[derive(Debug, Clone)]
pub struct Message {
    /// Sender.
    pub src: Name,
    /// Receiver.
    pub dest: Name,
    /// The sender's `msg_id`, if any.
    pub msg_id: Option<u64>,
    /// The `in_reply_to`, if this is a reply.
    pub in_reply_to: Option<u64>,
    /// The typed body.
    pub body: Body,
    /// An upper bound of the bytes the body's contents take when the node
    /// re-encodes them (a log entry, a forward): the line's length plus what
    /// re-encoding can add ([`ENCODED_SLACK_BYTES`], and per number and string
    /// in the line). Lets a node skip measuring an entry that cannot be too large.
    pub encoded_bytes_max: usize,
}

/// What re-encoding a request's contents as a log entry or forward may add
/// besides the growth [`parse_line`] counts per number and string: the entry's
/// own field names and a timestamp, with room to spare.
pub const ENCODED_SLACK_BYTES: usize = 512;

/// The longest spelling serde_json gives a number (`-2.2250738585072014e-308`).
const NUMBER_TEXT_BYTES_MAX: usize = 24;

/// Why a line could not be turned into a message.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    /// Not JSON, or not an envelope: log and drop (no `msg_id` to answer).
    #[error("bad envelope: {0}")]
    Envelope(String),
    /// A valid envelope whose body is malformed: answer error 12 if `msg_id` allows.
    #[error("malformed body: {text}")]
    Body {
        /// Sender, to address the error reply.
        src: Name,
        /// Addressee: the node's own name, which the reply must carry as `src`
        /// even before `init` told the node its name.
        dest: Name,
        /// The request's `msg_id`, if one could be read.
        msg_id: Option<u64>,
        /// The `in_reply_to`, if one could be read: the line is a reply, which is
        /// never answered (its caller is told instead).
        in_reply_to: Option<u64>,
        /// What was wrong.
        text: String,
    },
}

#[derive(Deserialize)]
struct RawEnvelope {
    src: Name,
    dest: Name,
    body: Map<String, Value>,
}

/// The common client requests, typed, for the fast path of [`parse_line`]. Any
/// field with an unexpected type fails this parse and the general path then gives
/// the precise error.
#[derive(Deserialize)]
struct FastEnvelope<'a> {
    #[serde(borrow)]
    src: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    dest: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    body: FastBody<'a>,
}

#[derive(Deserialize)]
struct FastBody<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    msg_id: u64,
    key: Option<Value>,
    value: Option<Value>,
    from: Option<Value>,
    to: Option<Value>,
    delta: Option<i64>,
    #[serde(borrow)]
    client_id: Option<std::borrow::Cow<'a, str>>,
    seq: Option<u64>,
    first_outstanding: Option<u64>,
    create_if_not_exists: Option<bool>,
    in_reply_to: Option<Value>,
}

/// Parses `read`/`write`/`cas`/`add` without building a generic JSON map; `None`
/// sends the line down the general path (other types, or anything unusual).
fn parse_fast(line: &str) -> Option<Message> {
    let env: FastEnvelope = serde_json::from_str(line).ok()?;
    let b = env.body;
    if b.in_reply_to.is_some() {
        return None;
    }
    let key = canonical_key(b.key.as_ref()?);
    let session = match (b.client_id, b.seq) {
        (Some(c), Some(seq)) if c.len() <= CLIENT_ID_BYTES_MAX => Some(SessionRef {
            client_id: c.into_owned(),
            seq,
            first_outstanding: b.first_outstanding,
        }),
        (None, None) if b.first_outstanding.is_none() => None,
        _ => return None,
    };
    let request = match &*b.kind {
        "read" if session.is_none() => Request::Read { key },
        "write" => Request::Mutate {
            op: KvOp::Write {
                key,
                value: b.value?,
            },
            session,
        },
        "cas" => Request::Mutate {
            op: KvOp::Cas {
                key,
                from: b.from?,
                to: b.to?,
                create: b.create_if_not_exists.unwrap_or(false),
            },
            session,
        },
        "add" => Request::Mutate {
            op: KvOp::Add {
                key,
                delta: b.delta?,
            },
            session,
        },
        _ => return None,
    };
    Some(Message {
        src: env.src.into_owned(),
        dest: env.dest.into_owned(),
        msg_id: Some(b.msg_id),
        in_reply_to: None,
        body: Body::Request(request),
        encoded_bytes_max: usize::MAX,
    })
}

/// Parses one input line.
///
/// A line that serde_json cannot take as a whole (a number out of range such as
/// `1e400`, nesting past its recursion limit, broken JSON) still gets its
/// addressing read by [`Skeleton`], so a request with a readable `src` and
/// `msg_id` is answered with error 12 instead of being dropped.
pub fn parse_line(line: &str) -> Result<Message, ParseError> {
    if line.contains(r#""type":"raft_"#)
        && let Some(msg) = parse_peer_fast(line)
    {
        return Ok(msg);
    }
    let facts = scan_text(line);
    if let Some(wide) = facts.wide_integer {
        // Refused, not rounded: kept as a double it would read back different.
        let text = format!(
            "the integer {wide} does not fit in 64 bits; integers are kept exactly only \
             from -9223372036854775808 to 18446744073709551615"
        );
        return Err(match parse_general(line) {
            Ok(m) => ParseError::Body {
                src: m.src,
                dest: m.dest,
                msg_id: m.msg_id,
                in_reply_to: m.in_reply_to,
                text,
            },
            Err(ParseError::Body {
                src,
                dest,
                msg_id,
                in_reply_to,
                ..
            }) => ParseError::Body {
                src,
                dest,
                msg_id,
                in_reply_to,
                text,
            },
            Err(e) => e,
        });
    }
    let mut msg = if facts.depth <= LINE_DEPTH_PLAIN
        && let Some(msg) = parse_fast(line)
    {
        msg
    } else {
        parse_general(line)?
    };
    if facts.depth > LINE_DEPTH_PLAIN {
        check_value_depths(&msg)?;
    }
    msg.encoded_bytes_max = line.len() + facts.growth + ENCODED_SLACK_BYTES;
    Ok(msg)
}

/// The most levels of arrays and objects a value (`value`, `from`, `to`) may nest.
/// A value is stored inside a log entry, which travels inside a `raft_append`
/// (about ten more levels), and serde_json refuses anything deeper than
/// [`JSON_DEPTH_MAX`] levels: a value that parses in a request but not inside
/// an append would stop replication, so the bound is far below that limit.
pub const VALUE_DEPTH_MAX: usize = 64;

/// The longest `client_id`, in bytes. A session's name is kept in the session
/// table, its index and, once closed or expired, its tombstone, and any client
/// may name a new session: names as long as a request would multiply what a
/// request costs the state. The node's own names (`open_session`) are short.
pub const CLIENT_ID_BYTES_MAX: usize = 256;

/// serde_json's fixed recursion limit (levels of arrays and objects it parses).
pub const JSON_DEPTH_MAX: usize = 128;

/// Levels a request line adds around its values (the envelope and the body).
const REQUEST_WRAP_DEPTH: usize = 2;

/// A line nesting no deeper than this cannot hold a value deeper than
/// [`VALUE_DEPTH_MAX`], so its values need no check.
const LINE_DEPTH_PLAIN: usize = VALUE_DEPTH_MAX + REQUEST_WRAP_DEPTH;

/// The deepest a log entry nests around a value, as it travels in a
/// `raft_append` (envelope, body, rpc, entries, entry, payload, command, op, kv:
/// nine; one spare). A test encodes a real append and checks it.
pub const APPEND_WRAP_DEPTH: usize = 10;

const _: () = assert!(VALUE_DEPTH_MAX + APPEND_WRAP_DEPTH < JSON_DEPTH_MAX);

/// How deep `v` nests (a scalar is 0, `[]` is 1), without recursion.
pub fn value_depth(v: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        deepest = deepest.max(d + 1);
        stack.extend(children.map(|c| (c, d + 1)));
    }
    deepest
}

/// Refuses a request whose value nests deeper than [`VALUE_DEPTH_MAX`].
fn check_value_depths(msg: &Message) -> Result<(), ParseError> {
    let values: Vec<(&str, &Value)> = match &msg.body {
        Body::Request(Request::Mutate { op, .. }) => match op {
            KvOp::Write { value, .. } => vec![("value", value)],
            KvOp::Cas { from, to, .. } => vec![("from", from), ("to", to)],
            KvOp::Add { .. } => vec![],
        },
        _ => vec![],
    };
    for (name, v) in values {
        let depth = value_depth(v);
        if depth > VALUE_DEPTH_MAX {
            return Err(ParseError::Body {
                src: msg.src.clone(),
                dest: msg.dest.clone(),
                msg_id: msg.msg_id,
                in_reply_to: msg.in_reply_to,
                text: format!(
                    "{name} nests {depth} levels deep; values may nest at most \
                     {VALUE_DEPTH_MAX} levels"
                ),
            });
        }
    }
    Ok(())
}

/// What one pass over a line's text found (outside strings).
struct TextFacts<'a> {
    /// The first integer that fits neither `i64` nor `u64`.
    wide_integer: Option<&'a str>,
    /// The deepest nesting of arrays and objects.
    depth: usize,
    /// The most re-encoding can add to the line's contents: a number may be
    /// spelled out (`1e15` is `1000000000000000.0`), and a string within a key is
    /// quoted again when the key is stored as text (its quotes and backslashes
    /// escaped); string values never grow (serde_json's escapes are the shortest).
    growth: usize,
}

/// The first integer literal in the JSON text `line` (outside strings) that does
/// not fit in an `i64` or a `u64`, if any. serde_json would turn it into the
/// nearest double, so a value written with it would read back different.
/// Numbers with a fraction or an exponent are doubles by definition (RFC 8259
/// section 6) and pass.
pub fn wide_integer(line: &str) -> Option<&str> {
    scan_text(line).wide_integer
}

/// One pass over `line`: wide integers and nesting depth.
fn scan_text(line: &str) -> TextFacts<'_> {
    let bytes = line.as_bytes();
    let mut facts = TextFacts {
        wide_integer: None,
        depth: 0,
        growth: 2,
    };
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // Skip the string, escapes included.
                i += 1;
                let mut escapes = 0;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        escapes += 1;
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
                i += 1;
                facts.growth += 2 + 2 * escapes;
            }
            b'[' | b'{' => {
                depth += 1;
                facts.depth = facts.depth.max(depth);
                i += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                let integer = !matches!(bytes.get(i), Some(b'.' | b'e' | b'E'));
                while i < bytes.len()
                    && matches!(bytes[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                let token = &line[start..i];
                facts.growth += NUMBER_TEXT_BYTES_MAX.saturating_sub(token.len());
                // ("-" alone is not JSON: serde_json reports that itself.)
                if integer
                    && facts.wide_integer.is_none()
                    && token != "-"
                    && token.parse::<i64>().is_err()
                    && token.parse::<u64>().is_err()
                {
                    facts.wide_integer = Some(token);
                }
            }
            _ => i += 1,
        }
    }
    facts
}

#[derive(Deserialize)]
struct PeerEnvelope {
    src: Name,
    dest: Name,
    body: PeerBody,
}

/// Exactly the fields of a `raft_*` request; anything else takes the general path.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerBody {
    #[serde(rename = "type")]
    kind: String,
    msg_id: u64,
    rpc: Box<serde_json::value::RawValue>,
}

/// Parses a `raft_*` request keeping its `rpc` as text: building a generic JSON
/// tree of an append and then decoding it took ~5 µs against ~1 µs straight into
/// the type. `None` sends the line down the general path.
fn parse_peer_fast(line: &str) -> Option<Message> {
    let env: PeerEnvelope = serde_json::from_str(line).ok()?;
    let b = env.body;
    if !b.kind.starts_with("raft_") {
        return None;
    }
    let mut raw = Map::new();
    raw.insert("type".into(), Value::from(b.kind.as_str()));
    raw.insert("msg_id".into(), Value::from(b.msg_id));
    Some(Message {
        src: env.src,
        dest: env.dest,
        msg_id: Some(b.msg_id),
        in_reply_to: None,
        body: Body::Other {
            kind: b.kind,
            raw,
            rpc: Some(b.rpc),
        },
        encoded_bytes_max: usize::MAX,
    })
}

/// The general parser: every type, precise errors.
fn parse_general(line: &str) -> Result<Message, ParseError> {
    let env: RawEnvelope = serde_json::from_str(line).map_err(|e| unparsed(line, &e))?;
    let msg_id_field = env.body.get("msg_id");
    let msg_id = match msg_id_field {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| ParseError::Body {
            src: env.src.clone(),
            dest: env.dest.clone(),
            msg_id: None,
            in_reply_to: None,
            text: format!("msg_id must be a non-negative integer, got {v}"),
        })?),
    };
    let in_reply_to = match env.body.get("in_reply_to") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| ParseError::Body {
            src: env.src.clone(),
            dest: env.dest.clone(),
            msg_id,
            in_reply_to: None,
            text: format!("in_reply_to must be an integer, got {v}"),
        })?),
    };
    let bad = |text: String| ParseError::Body {
        src: env.src.clone(),
        dest: env.dest.clone(),
        msg_id,
        in_reply_to,
        text,
    };
    let kind = match env.body.get("type") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => return Err(bad(format!("type must be a string, got {v}"))),
        None => return Err(bad("body has no type".into())),
    };
    let body = parse_body(&kind, env.body).map_err(bad)?;
    Ok(Message {
        src: env.src,
        dest: env.dest,
        msg_id,
        in_reply_to,
        body,
        encoded_bytes_max: usize::MAX,
    })
}

/// The error for a line serde_json refused as a whole: a body error when
/// [`Skeleton`] can still read who sent it (`src`) and a `msg_id` or
/// `in_reply_to`, so the request is answered (or the reply's caller told);
/// otherwise an envelope error (log and drop).
fn unparsed(line: &str, e: &serde_json::Error) -> ParseError {
    let mut sk = Skeleton::default();
    sk.feed(line.as_bytes());
    sk.finish();
    let what = if e.to_string().starts_with("recursion limit exceeded") {
        format!(
            "JSON nested deeper than {JSON_DEPTH_MAX} levels; values may nest at most \
             {VALUE_DEPTH_MAX} levels"
        )
    } else {
        e.to_string()
    };
    match sk.src {
        Some(src) if sk.msg_id.is_some() || sk.in_reply_to.is_some() => ParseError::Body {
            src,
            dest: sk.dest.unwrap_or_default(),
            msg_id: sk.msg_id,
            in_reply_to: sk.in_reply_to,
            text: format!("not a valid message: {what}"),
        },
        _ => ParseError::Envelope(what),
    }
}

/// The addressing of a JSON message read leniently, byte by byte, in constant
/// memory and without recursion: the envelope's `src` and `dest` strings and the
/// body's `msg_id` and `in_reply_to` integers, wherever they stand in the line.
/// For lines that cannot or must not be parsed whole (too long, a number out of
/// range, nested too deep, broken JSON), so their sender can still be answered.
/// Fields it cannot read stay `None`; it never fails.
#[derive(Debug, Default, Clone)]
pub struct Skeleton {
    /// The envelope's `src`, if it is a short string.
    pub src: Option<String>,
    /// The envelope's `dest`, if it is a short string.
    pub dest: Option<String>,
    /// The body's `msg_id`, if it is an unsigned integer.
    pub msg_id: Option<u64>,
    /// The body's `in_reply_to`, if it is an unsigned integer.
    pub in_reply_to: Option<u64>,
    /// Bytes fed so far.
    pub bytes: usize,
    /// Open arrays and objects.
    depth: usize,
    /// Whether the containers at depth 1 and 2 are objects.
    objects: [bool; 2],
    /// Whether the open depth-2 container is the envelope's `body` object.
    in_body: bool,
    /// Inside a string; the previous byte was an unescaped backslash.
    in_string: bool,
    escape: bool,
    /// In an object, the next string is a key.
    expect_key: bool,
    /// The string being read is a key (at depth 1 or 2).
    string_is_key: bool,
    /// The last key read at depth 1 or 2 (`None` if long: not one we want).
    key: Option<Vec<u8>>,
    /// The field whose value comes next.
    pending: Option<SkField>,
    /// The value being captured, and for which field.
    capture: Option<(SkField, Vec<u8>)>,
}

/// The fields a [`Skeleton`] reads.
#[derive(Debug, Clone, Copy, PartialEq)]
enum SkField {
    Src,
    Dest,
    Body,
    MsgId,
    InReplyTo,
}

/// Longest `src`/`dest` a [`Skeleton`] keeps (names are short).
const SKELETON_NAME_BYTES_MAX: usize = 256;

impl Skeleton {
    /// Reads more of the line.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.bytes += bytes.len();
        let mut i = 0;
        while i < bytes.len() {
            if self.in_string && !self.escape && !self.string_is_key && self.capture.is_none() {
                // Inside a string nobody reads (most of a long line): skip to
                // where it may end.
                match bytes[i..].iter().position(|&b| b == b'"' || b == b'\\') {
                    Some(k) => i += k,
                    None => return,
                }
            }
            self.byte(bytes[i]);
            i += 1;
        }
    }

    /// The line has ended (completes a number standing last).
    pub fn finish(&mut self) {
        self.end_number();
    }

    fn byte(&mut self, b: u8) {
        if self.in_string {
            if self.escape {
                self.escape = false;
            } else if b == b'\\' {
                self.escape = true;
            } else if b == b'"' {
                self.in_string = false;
                return self.end_string();
            }
            self.keep(b);
            return;
        }
        match b {
            b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E' => {
                if let Some(f @ (SkField::MsgId | SkField::InReplyTo)) = self.pending.take() {
                    self.capture = Some((f, Vec::new()));
                }
                self.keep(b);
            }
            _ => {
                self.end_number();
                match b {
                    b'"' => {
                        self.in_string = true;
                        self.string_is_key = self.expect_key && self.depth <= 2;
                        if self.string_is_key {
                            self.key = Some(Vec::new());
                        } else if let Some(f @ (SkField::Src | SkField::Dest)) = self.pending {
                            self.capture = Some((f, Vec::new()));
                        }
                        self.pending = None;
                        self.expect_key = false;
                    }
                    b':' => self.pending = self.field(),
                    b'{' | b'[' => {
                        let object = b == b'{';
                        if self.depth == 1 && self.pending == Some(SkField::Body) && object {
                            self.in_body = true;
                        }
                        self.pending = None;
                        self.depth += 1;
                        if let Some(slot) = self.objects.get_mut(self.depth - 1) {
                            *slot = object;
                        }
                        self.expect_key = object;
                    }
                    b'}' | b']' => {
                        if self.depth == 2 {
                            self.in_body = false;
                        }
                        self.depth = self.depth.saturating_sub(1);
                        self.pending = None;
                        self.expect_key = false;
                    }
                    b',' => {
                        self.pending = None;
                        self.expect_key =
                            self.objects.get(self.depth.wrapping_sub(1)) == Some(&true);
                    }
                    b' ' | b'\t' | b'\r' | b'\n' => {}
                    // A literal (true, null...): not a value we read.
                    _ => self.pending = None,
                }
            }
        }
    }

    /// Appends to the key or value being read, within bounds.
    fn keep(&mut self, b: u8) {
        if self.string_is_key && self.in_string {
            if let Some(k) = &mut self.key {
                if k.len() < 16 {
                    k.push(b);
                } else {
                    self.key = None;
                }
            }
        } else if let Some((_, v)) = &mut self.capture
            && v.len() <= SKELETON_NAME_BYTES_MAX
        {
            v.push(b);
        }
    }

    /// Which field the key just read names, at this depth.
    fn field(&self) -> Option<SkField> {
        let key = self.key.as_deref()?;
        match (self.depth, key) {
            (1, b"src") if self.objects[0] => Some(SkField::Src),
            (1, b"dest") if self.objects[0] => Some(SkField::Dest),
            (1, b"body") if self.objects[0] => Some(SkField::Body),
            (2, b"msg_id") if self.in_body => Some(SkField::MsgId),
            (2, b"in_reply_to") if self.in_body => Some(SkField::InReplyTo),
            _ => None,
        }
    }

    fn end_string(&mut self) {
        if self.string_is_key {
            self.string_is_key = false;
            return;
        }
        if let Some((f, raw)) = self.capture.take() {
            if raw.len() > SKELETON_NAME_BYTES_MAX {
                return;
            }
            let mut quoted = Vec::with_capacity(raw.len() + 2);
            quoted.push(b'"');
            quoted.extend_from_slice(&raw);
            quoted.push(b'"');
            if let Ok(s) = serde_json::from_slice::<String>(&quoted) {
                match f {
                    SkField::Src => self.src = Some(s),
                    SkField::Dest => self.dest = Some(s),
                    _ => {}
                }
            }
        }
    }

    fn end_number(&mut self) {
        if let Some((f, digits)) = self
            .capture
            .take_if(|(f, _)| matches!(f, SkField::MsgId | SkField::InReplyTo))
        {
            let n = std::str::from_utf8(&digits)
                .ok()
                .and_then(|d| d.parse().ok());
            match f {
                SkField::MsgId => self.msg_id = n,
                SkField::InReplyTo => self.in_reply_to = n,
                _ => {}
            }
        }
    }
}

/// Parses a body of a known client type; other types are returned raw.
pub fn parse_body(kind: &str, raw: Map<String, Value>) -> Result<Body, String> {
    let f = Fields(&raw);
    Ok(match kind {
        "init" => Body::Init {
            node_id: f.string("node_id")?,
            node_ids: f.string_list("node_ids")?,
        },
        "read" => Body::Request(Request::Read { key: f.key()? }),
        "write" => Body::Request(Request::Mutate {
            op: KvOp::Write {
                key: f.key()?,
                value: f.any("value")?,
            },
            session: f.session()?,
        }),
        "cas" => Body::Request(Request::Mutate {
            op: KvOp::Cas {
                key: f.key()?,
                from: f.any("from")?,
                to: f.any("to")?,
                create: f.opt_bool("create_if_not_exists")?,
            },
            session: f.session()?,
        }),
        "add" => Body::Request(Request::Mutate {
            op: KvOp::Add {
                key: f.key()?,
                delta: f.int("delta")?,
            },
            session: f.session()?,
        }),
        "open_session" => Body::Request(Request::OpenSession),
        "close_session" => Body::Request(Request::CloseSession {
            client_id: f.client_id()?,
        }),
        _ => Body::Other {
            kind: kind.to_string(),
            raw,
            rpc: None,
        },
    })
}

/// Typed field access with error texts that name the field.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn any(&self, name: &str) -> Result<Value, String> {
        self.0
            .get(name)
            .cloned()
            .ok_or_else(|| format!("missing field {name}"))
    }

    fn key(&self) -> Result<String, String> {
        Ok(canonical_key(&self.any("key")?))
    }

    fn string(&self, name: &str) -> Result<String, String> {
        match self.0.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(format!("{name} must be a string, got {v}")),
            None => Err(format!("missing field {name}")),
        }
    }

    fn string_list(&self, name: &str) -> Result<Vec<String>, String> {
        let Some(Value::Array(items)) = self.0.get(name) else {
            return Err(format!("{name} must be a list of strings"));
        };
        let list: Vec<String> = items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("{name} must be a list of strings"))?;
        if list.is_empty() {
            return Err(format!("{name} must not be empty"));
        }
        Ok(list)
    }

    fn int(&self, name: &str) -> Result<i64, String> {
        match self.0.get(name) {
            Some(v) => v
                .as_i64()
                .ok_or_else(|| format!("{name} must be a 64-bit integer, got {v}")),
            None => Err(format!("missing field {name}")),
        }
    }

    fn opt_u64(&self, name: &str) -> Result<Option<u64>, String> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("{name} must be a non-negative integer, got {v}")),
        }
    }

    fn opt_bool(&self, name: &str) -> Result<bool, String> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(format!("{name} must be a boolean, got {v}")),
        }
    }

    /// A session's name, of at most [`CLIENT_ID_BYTES_MAX`] bytes.
    fn client_id(&self) -> Result<String, String> {
        let id = self.string("client_id")?;
        if id.len() > CLIENT_ID_BYTES_MAX {
            return Err(format!(
                "client_id of {} bytes; at most {CLIENT_ID_BYTES_MAX}",
                id.len()
            ));
        }
        Ok(id)
    }

    /// `client_id` and `seq` come together or not at all.
    fn session(&self) -> Result<Option<SessionRef>, String> {
        let has_client = !matches!(self.0.get("client_id"), None | Some(Value::Null));
        let seq = self.opt_u64("seq")?;
        let first_outstanding = self.opt_u64("first_outstanding")?;
        match (has_client, seq) {
            (false, None) if first_outstanding.is_none() => Ok(None),
            (true, Some(seq)) => Ok(Some(SessionRef {
                client_id: self.client_id()?,
                seq,
                first_outstanding,
            })),
            (true, None) => Err("client_id without seq".into()),
            _ => Err("seq or first_outstanding without client_id".into()),
        }
    }
}

/// The canonical text of a JSON key: serde_json's compact form (object keys sorted,
/// as `serde_json::Map` is a `BTreeMap`), so equal keys map to one entry.
pub fn canonical_key(key: &Value) -> String {
    key.to_string()
}

/// An outgoing message, serialized with `src`, `dest`, `body` in that order.
#[derive(Debug, Serialize)]
pub struct Envelope<'a, B: Serialize> {
    /// Sender.
    pub src: &'a str,
    /// Receiver.
    pub dest: &'a str,
    /// Body, already holding `in_reply_to`/`msg_id`.
    pub body: B,
}

/// A reply body with its addressing, keys in protocol order.
#[derive(Debug, Serialize)]
pub struct ReplyBody<'a> {
    /// The reply payload, `type` first.
    #[serde(flatten)]
    pub reply: &'a Reply,
    /// The request's `msg_id`.
    pub in_reply_to: u64,
    /// This node's next message id.
    pub msg_id: u64,
}

/// Serializes one outgoing line (without the trailing newline).
pub fn encode<B: Serialize>(src: &str, dest: &str, body: B) -> String {
    serde_json::to_string(&Envelope { src, dest, body }).unwrap_or_else(|e| {
        // Serializing our own types cannot fail; keep the process alive if it ever does.
        tracing::error!("cannot encode a message to {dest}: {e}");
        String::new()
    })
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match serde_json::to_string(self) {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "{self:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn wide_integers_are_found_outside_strings_only() {
        use super::wide_integer;
        assert_eq!(
            wide_integer(r#"{"a":18446744073709551615,"b":-9223372036854775808}"#),
            None
        );
        assert_eq!(
            wide_integer(r#"{"a":18446744073709551616}"#),
            Some("18446744073709551616")
        );
        assert_eq!(
            wide_integer(r#"{"a":[1,-9223372036854775809]}"#),
            Some("-9223372036854775809")
        );
        // Doubles by their spelling, however large.
        assert_eq!(
            wide_integer(r#"{"a":1e400,"b":123456789012345678901234.5,"c":-1E+30}"#),
            None
        );
        // Digits inside strings, escaped quotes included, are not numbers.
        assert_eq!(
            wide_integer(
                r#"{"k":"123456789012345678901234567890","e":"x\"99999999999999999999999"}"#
            ),
            None
        );
        assert_eq!(
            wide_integer(r#"{"k":"a\\","v":99999999999999999999999}"#),
            Some("99999999999999999999999")
        );
        assert_eq!(wide_integer("not json -"), None);
    }

    #[test]
    fn a_wide_integer_is_refused_with_error_12_not_rounded() {
        let line = r#"{"src":"c1","dest":"n1","body":{"type":"write","msg_id":4,"key":"k","value":123456789012345678901234567890}}"#;
        match super::parse_line(line) {
            Err(super::ParseError::Body {
                src, msg_id, text, ..
            }) => {
                assert_eq!(src, "c1");
                assert_eq!(msg_id, Some(4));
                assert!(text.contains("123456789012345678901234567890"), "{text}");
            }
            other => panic!("expected a body error, got {other:?}"),
        }
    }
    use super::*;

    #[test]
    fn raft_requests_keep_their_rpc_as_text_and_anything_unusual_goes_the_general_way() {
        let line = r#"{"src":"n1","dest":"n2","body":{"type":"raft_append","rpc":{"a":[1,2]},"msg_id":7}}"#;
        let m = parse_line(line).expect("parses");
        assert_eq!(
            (m.src.as_str(), m.dest.as_str(), m.msg_id),
            ("n1", "n2", Some(7))
        );
        let Body::Other { kind, raw, rpc } = m.body else {
            panic!("not Other")
        };
        assert_eq!(kind, "raft_append");
        assert_eq!(rpc.expect("kept as text").get(), r#"{"a":[1,2]}"#);
        assert_eq!(raw.get("msg_id"), Some(&Value::from(7)));
        assert!(!raw.contains_key("rpc"));

        // An extra field, a reply, or another type: parsed as before, `rpc` in `raw`.
        for line in [
            r#"{"src":"n1","dest":"n2","body":{"type":"raft_append","rpc":{},"msg_id":7,"x":1}}"#,
            r#"{"src":"n1","dest":"n2","body":{"type":"raft_append_ok","rpc":{},"msg_id":8,"in_reply_to":7}}"#,
            r#"{"src":"n1","dest":"n2","body":{"type":"forward","rpc":{},"msg_id":7}}"#,
        ] {
            let m = parse_line(line).expect("parses");
            let Body::Other { raw, rpc, .. } = m.body else {
                panic!("not Other: {line}")
            };
            assert!(rpc.is_none(), "{line}");
            assert!(raw.contains_key("rpc"), "{line}");
        }
    }

    #[test]
    fn reply_keys_come_in_protocol_order() {
        let r = Reply::ReadOk {
            value: Value::from(3),
        };
        let line = encode(
            "n1",
            "c1",
            ReplyBody {
                reply: &r,
                in_reply_to: 7,
                msg_id: 4,
            },
        );
        assert_eq!(
            line,
            r#"{"src":"n1","dest":"c1","body":{"type":"read_ok","value":3,"in_reply_to":7,"msg_id":4}}"#
        );
        let e = Reply::error(ErrorCode::KeyDoesNotExist, "no key");
        let line = encode(
            "n1",
            "c1",
            ReplyBody {
                reply: &e,
                in_reply_to: 1,
                msg_id: 0,
            },
        );
        assert_eq!(
            line,
            r#"{"src":"n1","dest":"c1","body":{"type":"error","code":20,"text":"no key","in_reply_to":1,"msg_id":0}}"#
        );
    }

    #[test]
    fn parses_session_fields_and_rejects_bad_ones() {
        let m = parse_line(r#"{"src":"c1","dest":"n1","id":5,"body":{"type":"write","msg_id":2,"key":"x","value":1,"client_id":"c1","seq":1}}"#).unwrap();
        match m.body {
            Body::Request(Request::Mutate { session, .. }) => assert_eq!(
                session,
                Some(SessionRef {
                    client_id: "c1".into(),
                    seq: 1,
                    first_outstanding: None
                })
            ),
            other => panic!("unexpected {other:?}"),
        }
        for bad in [
            r#""seq":-1,"client_id":"a""#,
            r#""seq":1.5,"client_id":"a""#,
            r#""seq":"1","client_id":"a""#,
            r#""client_id":"a""#,
            r#""seq":1"#,
            r#""seq":1,"client_id":7"#,
        ] {
            let line = format!(
                r#"{{"src":"c1","dest":"n1","body":{{"type":"write","msg_id":9,"key":1,"value":1,{bad}}}}}"#
            );
            match parse_line(&line) {
                Err(ParseError::Body { msg_id, .. }) => assert_eq!(msg_id, Some(9), "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    /// The fast path and the general path agree on every request they both accept.
    #[test]
    fn fast_and_general_parsers_agree() {
        let lines = [
            r#"{"src":"c1","dest":"n1","id":3,"body":{"type":"read","msg_id":2,"key":[1,{"b":1,"a":2}]}}"#,
            r#"{"src":"c1","dest":"n1","body":{"type":"cas","msg_id":2,"key":1,"from":1.0,"to":2,"create_if_not_exists":true}}"#,
            r#"{"src":"c1","dest":"n1","body":{"type":"add","msg_id":2,"key":1,"delta":-4,"client_id":"a","seq":0,"first_outstanding":0}}"#,
            r#"{"src":"c1","dest":"n1","body":{"type":"write","msg_id":2,"key":"x","value":{"z":[1]},"client_id":"c","seq":9}}"#,
        ];
        for line in lines {
            let fast = parse_fast(line).expect("fast path takes it");
            let general = parse_general(line).expect("general path takes it");
            assert_eq!(format!("{fast:?}"), format!("{general:?}"), "{line}");
        }
        // An explicit null value is a value: the fast path declines (serde reads null
        // as an absent Option) and the general path accepts it; a missing value is an
        // error there.
        let null =
            r#"{"src":"c1","dest":"n1","body":{"type":"write","msg_id":2,"key":"x","value":null}}"#;
        assert!(parse_fast(null).is_none());
        assert!(parse_general(null).is_ok());
        let missing = r#"{"src":"c1","dest":"n1","body":{"type":"write","msg_id":2,"key":"x"}}"#;
        assert!(parse_fast(missing).is_none());
        assert!(parse_general(missing).is_err());
    }

    /// Requests serde_json cannot take whole (numbers out of range, nesting past
    /// its limit) are body errors with their sender and msg_id: answered with
    /// error 12, not dropped.
    #[test]
    fn unparseable_requests_keep_their_sender_and_msg_id() {
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let huge = "9".repeat(5000);
        let cases = [
            ("1e400".to_string(), "number out of range"),
            ("-1e400".to_string(), "number out of range"),
            (huge.clone(), "does not fit in 64 bits"),
            (format!("-{huge}"), "does not fit in 64 bits"),
            (format!("{huge}.5"), "number out of range"),
            (deep(127), "nested"),
            (deep(128), "nested"),
            (deep(100_000), "nested"),
            (format!("{{\"a\":{}}}", deep(200)), "nested"),
            (deep(VALUE_DEPTH_MAX + 1), "nests 65 levels"),
        ];
        for (value, why) in cases {
            for line in [
                format!(
                    r#"{{"src":"c1","dest":"n1","body":{{"type":"write","msg_id":7,"key":"k","value":{value}}}}}"#
                ),
                // msg_id last, after the value; the envelope's fields reordered.
                format!(
                    r#"{{"body":{{"type":"cas","key":1,"from":{value},"to":1,"msg_id":7}},"dest":"n1","src":"c1"}}"#
                ),
            ] {
                match parse_line(&line) {
                    Err(ParseError::Body {
                        src,
                        dest,
                        msg_id,
                        in_reply_to,
                        text,
                    }) => {
                        assert_eq!(
                            (src.as_str(), dest.as_str(), msg_id, in_reply_to),
                            ("c1", "n1", Some(7), None),
                            "{}",
                            &line[..80]
                        );
                        assert!(text.contains(why), "{text} for {}", &line[..80]);
                    }
                    other => panic!("{}: {other:?}", &line[..80]),
                }
            }
        }
        // As deep as allowed: accepted.
        let line = format!(
            r#"{{"src":"c1","dest":"n1","body":{{"type":"write","msg_id":7,"key":"k","value":{}}}}}"#,
            deep(VALUE_DEPTH_MAX)
        );
        assert!(parse_line(&line).is_ok());
        // A reply that cannot be parsed keeps its in_reply_to (its caller is told).
        let reply =
            r#"{"src":"n2","dest":"n1","body":{"type":"forward_ok","in_reply_to":9,"rpc":1e999}}"#;
        assert!(matches!(
            parse_line(reply),
            Err(ParseError::Body {
                in_reply_to: Some(9),
                msg_id: None,
                ..
            })
        ));
    }

    #[test]
    fn a_long_client_id_is_refused() {
        let id = "s".repeat(CLIENT_ID_BYTES_MAX);
        for (id, ok) in [(id.clone(), true), (id + "s", false)] {
            for body in [
                format!(r#""type":"write","key":1,"value":1,"client_id":"{id}","seq":1"#),
                format!(r#""type":"close_session","client_id":"{id}""#),
            ] {
                let line = format!(r#"{{"src":"c1","dest":"n1","body":{{{body},"msg_id":3}}}}"#);
                match parse_line(&line) {
                    Ok(_) => assert!(ok, "{body}"),
                    Err(ParseError::Body { msg_id, text, .. }) => {
                        assert!(!ok, "{body}: {text}");
                        assert_eq!(msg_id, Some(3));
                        assert!(text.contains("client_id of 257 bytes"), "{text}");
                    }
                    Err(e) => panic!("{e:?}"),
                }
            }
        }
    }

    #[test]
    fn the_skeleton_reads_addressing_only_where_it_stands() {
        let read = |line: &str| {
            let mut sk = Skeleton::default();
            // Fed in pieces of every size, as a reader would.
            for piece in line.as_bytes().chunks(3) {
                sk.feed(piece);
            }
            sk.finish();
            (sk.src, sk.dest, sk.msg_id, sk.in_reply_to)
        };
        let s = |x: &str| Some(x.to_string());
        assert_eq!(
            read(r#"{"src":"c\"1","dest":"n1","body":{"msg_id":12,"in_reply_to":3}}"#),
            (s("c\"1"), s("n1"), Some(12), Some(3))
        );
        // Fields of the same names deeper down, or outside the body, are not taken.
        assert_eq!(
            read(
                r#"{"x":{"src":"no"},"msg_id":1,"body":{"value":{"msg_id":5},"k":["msg_id",6],"msg_id":7},"src":"c2"}"#
            ),
            (s("c2"), None, Some(7), None)
        );
        // Strings that look like fields, escapes and all, are skipped.
        assert_eq!(
            read(r#"{"body":{"key":"\",\"msg_id\":4","msg_id":8}}"#),
            (None, None, Some(8), None)
        );
        // Not numbers or strings where expected; broken JSON; no envelope.
        assert_eq!(
            read(r#"{"src":5,"dest":null,"body":{"msg_id":-1}}"#),
            (None, None, None, None)
        );
        assert_eq!(
            read(r#"{"src":"c1","body":{"msg_id":3"#),
            (s("c1"), None, Some(3), None)
        );
        assert_eq!(read(r#"["src","c1"]"#), (None, None, None, None));
        assert_eq!(read(""), (None, None, None, None));
        // Deep nesting costs no recursion.
        let deep = format!(
            r#"{{"src":"c1","body":{{"v":{}1{},"msg_id":2}}}}"#,
            "[".repeat(1 << 20),
            "]".repeat(1 << 20)
        );
        assert_eq!(read(&deep), (s("c1"), None, Some(2), None));
    }

    #[test]
    fn envelope_errors_are_not_body_errors() {
        assert!(matches!(
            parse_line("not json"),
            Err(ParseError::Envelope(_))
        ));
        assert!(matches!(
            parse_line(r#"{"src":"c1","body":{}}"#),
            Err(ParseError::Envelope(_))
        ));
    }

    #[test]
    fn only_definite_codes_promise_nothing_happened() {
        for c in [
            ErrorCode::Timeout,
            ErrorCode::Crash,
            ErrorCode::SessionExpired,
            ErrorCode::StaleRequest,
        ] {
            assert!(!c.is_definite(), "{c:?}");
        }
        for c in [10u32, 11, 12, 20, 22] {
            assert!(ErrorCode::try_from(c).unwrap().is_definite());
        }
    }
}
