//! The parser as it was before the typed one (three parsers: a typed fast path
//! for client requests, one for `raft_*` requests reached by a substring sniff,
//! and a general one over a JSON map, after a scan of the whole line for wide
//! integers and depth), kept for tests only: the property test in
//! `protocol::props` checks that the typed parser answers every generated line
//! as this one did. Frozen: do not change it to follow the product; when the
//! product changes on purpose, the property test says where.
#![allow(dead_code)]

use super::{
    Body, CLIENT_ID_BYTES_MAX, ENCODED_SLACK_BYTES, JSON_DEPTH_MAX, KvOp, Message, Name,
    ParseError, Request, SessionRef, Skeleton, VALUE_DEPTH_MAX, canonical_key,
};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The longest spelling serde_json gives a number.
const NUMBER_TEXT_BYTES_MAX: usize = 24;

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
pub(super) fn parse_line(line: &str) -> Result<Message, ParseError> {
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

/// Levels a request line adds around its values (the envelope and the body).
const REQUEST_WRAP_DEPTH: usize = 2;

/// A line nesting no deeper than this cannot hold a value deeper than
/// [`VALUE_DEPTH_MAX`], so its values need no check.
const LINE_DEPTH_PLAIN: usize = VALUE_DEPTH_MAX + REQUEST_WRAP_DEPTH;

/// How deep `v` nests (a scalar is 0, `[]` is 1), without recursion.
fn value_depth(v: &Value) -> usize {
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
fn wide_integer(line: &str) -> Option<&str> {
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

/// The error for a line serde_json refused as a whole: a body error when the
/// line has its envelope and [`Skeleton`] can read who sent it (`src`) and a
/// `msg_id` or `in_reply_to`, so the request is answered (or the reply's caller
/// told); otherwise an envelope error (log and drop).
fn unparsed(line: &str, e: &serde_json::Error) -> ParseError {
    let mut sk = Skeleton::default();
    sk.feed(line.as_bytes());
    sk.finish();
    let answerable = super::parse::has_envelope(line);
    let what = if e.to_string().starts_with("recursion limit exceeded") {
        format!(
            "JSON nested deeper than {JSON_DEPTH_MAX} levels; values may nest at most \
             {VALUE_DEPTH_MAX} levels"
        )
    } else {
        e.to_string()
    };
    match sk.src {
        Some(src) if answerable && (sk.msg_id.is_some() || sk.in_reply_to.is_some()) => {
            ParseError::Body {
                src,
                dest: sk.dest.unwrap_or_default(),
                msg_id: sk.msg_id,
                in_reply_to: sk.in_reply_to,
                text: format!("not a valid message: {what}"),
            }
        }
        _ => ParseError::Envelope(what),
    }
}

/// Parses a body of a known client type; other types are returned raw.
fn parse_body(kind: &str, raw: Map<String, Value>) -> Result<Body, String> {
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
