//! Parsing one input line: the envelope derived, the body read field by field
//! into typed slots in one serde_json pass, then checked and typed by its
//! `type`.
//!
//! Owns [`parse_line`] and everything it needs: the field names, the error texts
//! of malformed bodies, the detection of integers beyond 64 bits
//! ([`wide_integer`]), value depths and the re-encoding bound
//! ([`crate::protocol::Message::encoded_bytes_max`]). It may not decide what a
//! request does (that is the node's and the state machine's), nor read a line
//! it has not been handed whole: a line too long to hold is the
//! [`super::skeleton`]'s.

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

use super::{
    Body, CLIENT_ID_BYTES_MAX, ENCODED_SLACK_BYTES, JSON_DEPTH_MAX, KvOp, Message, Name,
    ParseError, Request, SessionRef, Skeleton, VALUE_DEPTH_MAX, canonical_key,
};

/// Parses one input line.
///
/// One pass of serde_json over the line, into typed slots: the envelope is a
/// derived struct, the body is read field by field into `BodyFields` (every
/// value a [`Value`], so a field of the wrong type is reported by name instead
/// of failing the whole line), then checked and turned into a [`Body`] by its
/// `type`. A line serde_json cannot take as a whole (a number out of range such
/// as `1e400`, nesting past its recursion limit, broken JSON) still gets its
/// addressing read by [`Skeleton`], so a request with a readable `src` and
/// `msg_id` is answered with error 12 instead of being dropped.
pub fn parse_line(line: &str) -> Result<Message, ParseError> {
    let env = match serde_json::from_str::<WireEnvelope>(line) {
        Ok(env) => env,
        Err(e) => return Err(unparsed(line, &e)),
    };
    // Looked for once, only when a double read was zero.
    let odd = if env.body.zero_doubles() {
        odd_zero(line)
    } else {
        None
    };
    if odd != Some(OddZero::IntegerMinusZero) {
        return env.into_message(line, odd);
    }
    // serde_json reads the integer `-0` as the double -0.0, so a value written
    // as `-0` would read back as `-0.0`: it is the integer 0 (as Maelstrom's
    // JSON reader has it), read again from text that says so (with no
    // underflow in it: `odd_zero` names that first).
    let line = &integer_minus_zeros_as_zero(line);
    match serde_json::from_str::<WireEnvelope>(line) {
        Ok(env) => env.into_message(line, None),
        Err(e) => Err(unparsed(line, &e)),
    }
}

/// Each number in the JSON text `line` (outside strings): its byte range and
/// whether it is an integer (no fraction, no exponent).
fn numbers(line: &str, mut each: impl FnMut(std::ops::Range<usize>, bool) -> bool) {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // Skip the string, escapes included.
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
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
                if !each(start..i, integer) {
                    return;
                }
            }
            _ => i += 1,
        }
    }
}

/// A number whose double is zero for another reason than being written 0.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum OddZero {
    /// The integer `-0` (read by serde_json as the double -0.0).
    IntegerMinusZero,
    /// A number too small for a double (`1e-400`), read as 0: its text.
    Underflow(String),
}

/// The first odd zero in `line` (an underflow first: it refuses the line).
pub(super) fn odd_zero(line: &str) -> Option<OddZero> {
    let mut found = None;
    numbers(line, |r, integer| {
        let token = &line[r];
        if integer {
            if token == "-0" && found.is_none() {
                found = Some(OddZero::IntegerMinusZero);
            }
            return true;
        }
        let mantissa = token.split(['e', 'E']).next().unwrap_or("");
        let nonzero = mantissa.bytes().any(|b| matches!(b, b'1'..=b'9'));
        if nonzero && token.parse::<f64>().is_ok_and(|x| x == 0.0) {
            found = Some(OddZero::Underflow(token.to_string()));
            return false;
        }
        true
    });
    found
}

/// `line` with every integer `-0` (outside strings) written `0`.
pub(super) fn integer_minus_zeros_as_zero(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut at = 0;
    numbers(line, |r, integer| {
        if integer && &line[r.clone()] == "-0" {
            out.push_str(&line[at..r.start]);
            out.push('0');
            at = r.end;
        }
        true
    });
    out.push_str(&line[at..]);
    out
}

/// The longest spelling serde_json gives a number (`-2.2250738585072014e-308`).
const NUMBER_TEXT_BYTES_MAX: usize = 24;

/// The smallest magnitude of an integer literal that fits neither `i64` nor
/// `u64` (serde_json hands such a literal over as the nearest double): 2^63.
const WIDE_INTEGER_MAGNITUDE_MIN: f64 = 9_223_372_036_854_775_808.0;

/// The first integer literal in the JSON text `line` (outside strings) that does
/// not fit in an `i64` or a `u64`, if any. serde_json would turn it into the
/// nearest double, so a value written with it would read back different.
/// Numbers with a fraction or an exponent are doubles by definition (RFC 8259
/// section 6) and pass. The parser looks only when a double it read could have
/// been such a literal, or when serde_json refused a number.
pub fn wide_integer(line: &str) -> Option<&str> {
    let mut wide = None;
    numbers(line, |r, integer| {
        let token = &line[r];
        // ("-" alone is not JSON: serde_json reports that itself.)
        if integer && token != "-" && token.parse::<i64>().is_err() && token.parse::<u64>().is_err()
        {
            wide = Some(token);
        }
        wide.is_none()
    });
    wide
}

/// The text of error 12 for an integer literal beyond 64 bits.
fn wide_integer_text(wide: &str) -> String {
    // Refused, not rounded: kept as a double it would read back different.
    format!(
        "the integer {wide} does not fit in 64 bits; integers are kept exactly only \
         from -9223372036854775808 to 18446744073709551615"
    )
}

/// The envelope as it arrives. Other top-level fields (Maelstrom's `id`) are
/// skipped unread.
#[derive(Deserialize)]
struct WireEnvelope<'a> {
    src: Name,
    dest: Name,
    #[serde(borrow)]
    body: BodyFields<'a>,
}

/// The body fields the parser knows, by name; [`BodyFields`] keeps one slot each.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Field {
    Type,
    MsgId,
    InReplyTo,
    Key,
    Value,
    From,
    To,
    Delta,
    ClientId,
    Seq,
    FirstOutstanding,
    CreateIfNotExists,
    NodeId,
    NodeIds,
}

/// Every [`Field`] with its name on the wire, in slot order.
const FIELDS: [(Field, &str); 14] = [
    (Field::Type, "type"),
    (Field::MsgId, "msg_id"),
    (Field::InReplyTo, "in_reply_to"),
    (Field::Key, "key"),
    (Field::Value, "value"),
    (Field::From, "from"),
    (Field::To, "to"),
    (Field::Delta, "delta"),
    (Field::ClientId, "client_id"),
    (Field::Seq, "seq"),
    (Field::FirstOutstanding, "first_outstanding"),
    (Field::CreateIfNotExists, "create_if_not_exists"),
    (Field::NodeId, "node_id"),
    (Field::NodeIds, "node_ids"),
];

impl Field {
    fn named(name: &str) -> Option<Field> {
        FIELDS.iter().find(|(_, n)| *n == name).map(|(f, _)| *f)
    }

    fn name(self) -> &'static str {
        FIELDS[self as usize].1
    }
}

/// A body's `rpc` field: as text for a `raft_*` request (decoded later straight
/// into openraft's type: building a generic JSON tree of an append and then
/// decoding it took ~5 µs against ~1 µs straight into the type), as a value in
/// any other message.
enum Rpc<'a> {
    Text(&'a RawValue),
    Value(Value),
}

/// One body as read: a slot per known field (the last occurrence wins, as in a
/// JSON object), the other fields, and what reading the values found.
struct BodyFields<'a> {
    slots: [Option<Value>; FIELDS.len()],
    /// How deep the values of `value`, `from` and `to` nest.
    depths: [usize; FIELDS.len()],
    rpc: Option<Rpc<'a>>,
    /// Fields of no slot: part of a peer message's raw body, ignored in a request.
    rest: Map<String, Value>,
    facts: ValueFacts,
    /// What reading `rpc` as a value found: counted with the rest unless the
    /// body turns out a `raft_*` request, whose `rpc` is never looked into.
    rpc_facts: ValueFacts,
}

/// What reading a body's values found.
#[derive(Default)]
struct ValueFacts {
    /// Numbers read as doubles: each may be spelled longer when re-encoded
    /// (`1e15` is `1000000000000000.0`); integers are re-encoded as they came.
    doubles: usize,
    /// A double that may have been written as an integer beyond 64 bits.
    maybe_wide: bool,
    /// A double that is zero: it may have been written `-0` or underflowed.
    zero_doubles: bool,
}

impl<'de: 'a, 'a> Deserialize<'de> for BodyFields<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(BodyVisitor(std::marker::PhantomData))
    }
}

struct BodyVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for BodyVisitor<'a> {
    type Value = BodyFields<'a>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<BodyFields<'a>, A::Error> {
        let mut b = BodyFields {
            slots: Default::default(),
            depths: [0; FIELDS.len()],
            rpc: None,
            rest: Map::new(),
            facts: ValueFacts::default(),
            rpc_facts: ValueFacts::default(),
        };
        while let Some(FieldName(name)) = map.next_key()? {
            if name == "rpc" {
                // Kept as text when the type read so far says a raft request;
                // `BodyFields::rpc` settles the rare other orders.
                b.rpc = Some(if b.raft_request() {
                    Rpc::Text(map.next_value()?)
                } else {
                    Rpc::Value(map.next_value_seed(Tracked(&mut b.rpc_facts))?.0)
                });
            } else if let Some(f) = Field::named(&name) {
                let (v, depth) = map.next_value_seed(Tracked(&mut b.facts))?;
                b.slots[f as usize] = Some(v);
                b.depths[f as usize] = depth;
            } else {
                let (v, _) = map.next_value_seed(Tracked(&mut b.facts))?;
                b.rest.insert(name.into_owned(), v);
            }
        }
        Ok(b)
    }
}

/// A field name, borrowed from the line when it has no escapes.
struct FieldName<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for FieldName<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FieldName<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<FieldName<'de>, E> {
                Ok(FieldName(s.into()))
            }
            fn visit_str<E>(self, s: &str) -> Result<FieldName<'de>, E> {
                Ok(FieldName(s.to_owned().into()))
            }
            fn visit_string<E>(self, s: String) -> Result<FieldName<'de>, E> {
                Ok(FieldName(s.into()))
            }
        }
        d.deserialize_str(V)
    }
}

/// Reads any JSON value as serde_json's own [`Value`] does, and also returns how
/// deep it nests (a scalar is 0, `[]` is 1) and counts its doubles in
/// [`ValueFacts`]: no second walk over the value and no second pass over the line.
struct Tracked<'f>(&'f mut ValueFacts);

impl<'de> DeserializeSeed<'de> for Tracked<'_> {
    type Value = (Value, usize);

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(Value, usize), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Tracked<'_> {
    type Value = (Value, usize);

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<(Value, usize), E> {
        Ok((Value::Bool(b), 0))
    }

    fn visit_i64<E>(self, n: i64) -> Result<(Value, usize), E> {
        Ok((Value::from(n), 0))
    }

    fn visit_u64<E>(self, n: u64) -> Result<(Value, usize), E> {
        Ok((Value::from(n), 0))
    }

    fn visit_f64<E>(self, x: f64) -> Result<(Value, usize), E> {
        self.0.doubles += 1;
        self.0.zero_doubles |= x == 0.0;
        if x.fract() == 0.0 && x.abs() >= WIDE_INTEGER_MAGNITUDE_MIN {
            self.0.maybe_wide = true;
        }
        Ok((Number::from_f64(x).map_or(Value::Null, Value::Number), 0))
    }

    fn visit_str<E>(self, s: &str) -> Result<(Value, usize), E> {
        Ok((Value::String(s.to_owned()), 0))
    }

    fn visit_string<E>(self, s: String) -> Result<(Value, usize), E> {
        Ok((Value::String(s), 0))
    }

    fn visit_unit<E>(self) -> Result<(Value, usize), E> {
        Ok((Value::Null, 0))
    }

    fn visit_none<E>(self) -> Result<(Value, usize), E> {
        Ok((Value::Null, 0))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(Value, usize), A::Error> {
        let mut items = Vec::new();
        let mut deepest = 0;
        while let Some((v, depth)) = seq.next_element_seed(Tracked(&mut *self.0))? {
            deepest = deepest.max(depth);
            items.push(v);
        }
        Ok((Value::Array(items), deepest + 1))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(Value, usize), A::Error> {
        let mut m = Map::new();
        let mut deepest = 0;
        while let Some(k) = map.next_key::<String>()? {
            let (v, depth) = map.next_value_seed(Tracked(&mut *self.0))?;
            deepest = deepest.max(depth);
            m.insert(k, v);
        }
        Ok((Value::Object(m), deepest + 1))
    }
}

impl WireEnvelope<'_> {
    /// Checks the body's fields and types it; `line` is the text it came from.
    /// `odd` is [`odd_zero`] of `line`, if it was looked for.
    fn into_message(self, line: &str, odd: Option<OddZero>) -> Result<Message, ParseError> {
        let WireEnvelope {
            src,
            dest,
            mut body,
        } = self;
        if !body.raft_request() {
            body.facts.doubles += body.rpc_facts.doubles;
            body.facts.maybe_wide |= body.rpc_facts.maybe_wide;
        }
        let msg_id = body.u64_field(Field::MsgId, "msg_id must be a non-negative integer");
        let in_reply_to = body.u64_field(Field::InReplyTo, "in_reply_to must be an integer");
        let error =
            |msg_id: Option<u64>, in_reply_to: Option<u64>, text: String| ParseError::Body {
                src: src.clone(),
                dest: dest.clone(),
                msg_id,
                in_reply_to,
                text,
            };
        // An integer beyond 64 bits became a double: refused, whatever else is wrong.
        if body.facts.maybe_wide
            && let Some(wide) = wide_integer(line)
        {
            let (msg_id, in_reply_to) = match msg_id {
                Ok(m) => (m, in_reply_to.unwrap_or(None)),
                Err(_) => (None, None),
            };
            return Err(error(msg_id, in_reply_to, wide_integer_text(wide)));
        }
        // A number too small for a double was read as 0: refused, as one too large is.
        if let Some(OddZero::Underflow(tiny)) = odd {
            let (msg_id, in_reply_to) = match msg_id {
                Ok(m) => (m, in_reply_to.unwrap_or(None)),
                Err(_) => (None, None),
            };
            let text = format!(
                "the number {tiny} is too small for a 64-bit double: it would read back as 0"
            );
            return Err(error(msg_id, in_reply_to, text));
        }
        let msg_id = msg_id.map_err(|text| error(None, None, text))?;
        let in_reply_to = in_reply_to.map_err(|text| error(msg_id, None, text))?;
        let bad = |text: String| error(msg_id, in_reply_to, text);
        let (body, encoded_bytes_max) = body.into_body(line.len()).map_err(bad)?;
        Ok(Message {
            src,
            dest,
            msg_id,
            in_reply_to,
            body,
            encoded_bytes_max,
        })
    }
}

/// Typed field access with error texts that name the field.
impl BodyFields<'_> {
    /// Whether a double it read is zero (see [`odd_zero`]).
    fn zero_doubles(&self) -> bool {
        self.facts.zero_doubles || self.rpc_facts.zero_doubles
    }

    fn get(&self, f: Field) -> Option<&Value> {
        self.slots[f as usize].as_ref()
    }

    /// Whether the body read so far is a `raft_*` request (not a reply).
    fn raft_request(&self) -> bool {
        matches!(self.get(Field::Type), Some(Value::String(k)) if k.starts_with("raft_"))
            && self.get(Field::InReplyTo).is_none()
    }

    /// `msg_id`, `in_reply_to`: absent, or an unsigned integer.
    fn u64_field(&self, f: Field, must: &str) -> Result<Option<u64>, String> {
        match self.get(f) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("{must}, got {v}")),
        }
    }

    fn any(&mut self, f: Field) -> Result<Value, String> {
        self.slots[f as usize]
            .take()
            .ok_or_else(|| format!("missing field {}", f.name()))
    }

    fn key(&mut self) -> Result<String, String> {
        Ok(canonical_key(&self.any(Field::Key)?))
    }

    /// Refuses a stored value (`value`, `from`, `to`) deeper than [`VALUE_DEPTH_MAX`],
    /// once every field has been checked.
    fn check_depths(&self, request: &Request) -> Result<(), String> {
        let stored: &[Field] = match request {
            Request::Mutate {
                op: KvOp::Write { .. },
                ..
            } => &[Field::Value],
            Request::Mutate {
                op: KvOp::Cas { .. },
                ..
            } => &[Field::From, Field::To],
            _ => &[],
        };
        for &f in stored {
            let depth = self.depths[f as usize];
            if depth > VALUE_DEPTH_MAX {
                return Err(format!(
                    "{} nests {depth} levels deep; values may nest at most {VALUE_DEPTH_MAX} levels",
                    f.name()
                ));
            }
        }
        Ok(())
    }

    fn string(&mut self, f: Field) -> Result<String, String> {
        match self.slots[f as usize].take() {
            Some(Value::String(s)) => Ok(s),
            Some(v) => Err(format!("{} must be a string, got {v}", f.name())),
            None => Err(format!("missing field {}", f.name())),
        }
    }

    fn string_list(&mut self, f: Field) -> Result<Vec<String>, String> {
        let name = f.name();
        let Some(Value::Array(items)) = self.slots[f as usize].take() else {
            return Err(format!("{name} must be a list of strings"));
        };
        let list: Vec<String> = items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Some(s),
                _ => None,
            })
            .collect::<Option<_>>()
            .ok_or_else(|| format!("{name} must be a list of strings"))?;
        if list.is_empty() {
            return Err(format!("{name} must not be empty"));
        }
        Ok(list)
    }

    fn int(&self, f: Field) -> Result<i64, String> {
        match self.get(f) {
            Some(v) => v
                .as_i64()
                .ok_or_else(|| format!("{} must be a 64-bit integer, got {v}", f.name())),
            None => Err(format!("missing field {}", f.name())),
        }
    }

    fn opt_u64(&self, f: Field) -> Result<Option<u64>, String> {
        match self.get(f) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("{} must be a non-negative integer, got {v}", f.name())),
        }
    }

    fn opt_bool(&self, f: Field) -> Result<bool, String> {
        match self.get(f) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(format!("{} must be a boolean, got {v}", f.name())),
        }
    }

    /// A session's name, of at most [`CLIENT_ID_BYTES_MAX`] bytes.
    fn client_id(&mut self) -> Result<String, String> {
        let id = self.string(Field::ClientId)?;
        if id.len() > CLIENT_ID_BYTES_MAX {
            return Err(format!(
                "client_id of {} bytes; at most {CLIENT_ID_BYTES_MAX}",
                id.len()
            ));
        }
        Ok(id)
    }

    /// `client_id` and `seq` come together or not at all.
    fn session(&mut self) -> Result<Option<SessionRef>, String> {
        let has_client = !matches!(self.get(Field::ClientId), None | Some(Value::Null));
        let seq = self.opt_u64(Field::Seq)?;
        let first_outstanding = self.opt_u64(Field::FirstOutstanding)?;
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

    /// The body by its type, and the bound of
    /// [`Message::encoded_bytes_max`] for a line of `line_bytes`.
    fn into_body(mut self, line_bytes: usize) -> Result<(Body, usize), String> {
        let kind = match self.slots[Field::Type as usize].take() {
            Some(Value::String(s)) => s,
            Some(v) => return Err(format!("type must be a string, got {v}")),
            None => return Err("body has no type".into()),
        };
        // Doubles may be spelled out longer; integers and strings never grow
        // (serde_json writes the shortest escapes), structure only shrinks.
        let grown = line_bytes + ENCODED_SLACK_BYTES + NUMBER_TEXT_BYTES_MAX * self.facts.doubles;
        let request = match kind.as_str() {
            "init" => {
                let body = Body::Init {
                    node_id: self.string(Field::NodeId)?,
                    node_ids: self.string_list(Field::NodeIds)?,
                };
                return Ok((body, grown));
            }
            "read" => Request::Read { key: self.key()? },
            "write" => Request::Mutate {
                op: KvOp::Write {
                    key: self.key()?,
                    value: self.any(Field::Value)?,
                },
                session: self.session()?,
            },
            "cas" => Request::Mutate {
                op: KvOp::Cas {
                    key: self.key()?,
                    from: self.any(Field::From)?,
                    to: self.any(Field::To)?,
                    create: self.opt_bool(Field::CreateIfNotExists)?,
                },
                session: self.session()?,
            },
            "add" => Request::Mutate {
                op: KvOp::Add {
                    key: self.key()?,
                    delta: self.int(Field::Delta)?,
                },
                session: self.session()?,
            },
            "open_session" => Request::OpenSession,
            "close_session" => Request::CloseSession {
                client_id: self.client_id()?,
            },
            _ => return self.into_other(kind, line_bytes),
        };
        self.check_depths(&request)?;
        let key_growth = match &request {
            Request::Read { key }
            | Request::Mutate {
                op: KvOp::Write { key, .. } | KvOp::Cas { key, .. } | KvOp::Add { key, .. },
                ..
            } => quoting_growth(key),
            _ => 0,
        };
        Ok((Body::Request(request), grown + key_growth))
    }

    /// A body of any other type, raw, with its bound as a request's (without
    /// the key's quoting); a `raft_*` request keeps its `rpc` as text (and gets
    /// no bound: it is never measured). An `rpc` read as text that turns out not
    /// to be a `raft_*` request's must read as a value, as any other field.
    fn into_other(mut self, kind: String, line_bytes: usize) -> Result<(Body, usize), String> {
        let raft_request = kind.starts_with("raft_") && self.get(Field::InReplyTo).is_none();
        let mut raw = std::mem::take(&mut self.rest);
        for (f, name) in FIELDS {
            if let Some(v) = self.slots[f as usize].take() {
                raw.insert(name.to_owned(), v);
            }
        }
        raw.insert("type".to_owned(), Value::String(kind.clone()));
        let rpc = match self.rpc.take() {
            None => None,
            Some(Rpc::Text(text)) if raft_request => Some(text.to_owned()),
            Some(Rpc::Value(v)) if raft_request => serde_json::value::to_raw_value(&v).ok(),
            // Read as text before an `in_reply_to` showed a reply.
            Some(Rpc::Text(text)) => {
                let mut d = serde_json::Deserializer::from_str(text.get());
                let (v, depth) = Tracked(&mut self.facts)
                    .deserialize(&mut d)
                    .map_err(|e| format!("not a valid message: {}", unreadable(&e)))?;
                // Read inside the line, it would have stopped two levels sooner
                // (the envelope and the body; serde_json reads fewer than
                // JSON_DEPTH_MAX levels).
                if depth + 2 >= JSON_DEPTH_MAX {
                    return Err(format!("not a valid message: {}", too_deep()));
                }
                raw.insert("rpc".to_owned(), v);
                None
            }
            Some(Rpc::Value(v)) => {
                raw.insert("rpc".to_owned(), v);
                None
            }
        };
        let bound = match rpc {
            Some(_) => usize::MAX,
            None => line_bytes + ENCODED_SLACK_BYTES + NUMBER_TEXT_BYTES_MAX * self.facts.doubles,
        };
        Ok((Body::Other { kind, raw, rpc }, bound))
    }
}

/// What storing `key` (a key's canonical text) as a JSON string adds to it:
/// its quotes, and a backslash before each quote and backslash in it.
fn quoting_growth(key: &str) -> usize {
    2 + key.bytes().filter(|b| matches!(b, b'"' | b'\\')).count()
}

/// What serde_json found wrong with a text, the depth limit named as ours.
fn unreadable(e: &serde_json::Error) -> String {
    if e.to_string().starts_with("recursion limit exceeded") {
        too_deep()
    } else {
        e.to_string()
    }
}

fn too_deep() -> String {
    format!(
        "JSON nested deeper than {JSON_DEPTH_MAX} levels; values may nest at most \
         {VALUE_DEPTH_MAX} levels"
    )
}

/// Whether `line` is a JSON object with string `src` and `dest` and a `body`, as
/// far as JSON's syntax goes: values are skipped unread (`IgnoredAny`), so a
/// number no type holds (`1e400`, an integer beyond 64 bits) or nesting beyond
/// the parser's depth limit still passes, while a line cut short, not JSON, or
/// without its envelope does not. Only a line that passes is answered when
/// serde_json refused it: anything else is logged and dropped.
pub(super) fn has_envelope(line: &str) -> bool {
    // Raw values: read for their syntax only (a field named twice is no fault
    // here, as it is none for the parse).
    let Ok(fields) =
        serde_json::from_str::<std::collections::BTreeMap<String, Box<RawValue>>>(line)
    else {
        return false;
    };
    let string = |name: &str| {
        fields
            .get(name)
            .is_some_and(|v| serde_json::from_str::<String>(v.get()).is_ok())
    };
    string("src") && string("dest") && fields.contains_key("body")
}

/// The error for a line serde_json refused as a whole: a body error when the
/// line has its envelope ([`has_envelope`]) and [`Skeleton`] can read who sent
/// it (`src`) and a `msg_id` or `in_reply_to`, so the request is answered (or
/// the reply's caller told); otherwise an envelope error (log and drop).
fn unparsed(line: &str, e: &serde_json::Error) -> ParseError {
    if !has_envelope(line) {
        return ParseError::Envelope(unreadable(e));
    }
    let mut sk = Skeleton::default();
    sk.feed(line.as_bytes());
    sk.finish();
    let what = unreadable(e);
    match sk.src {
        Some(src) if sk.msg_id.is_some() || sk.in_reply_to.is_some() => ParseError::Body {
            src,
            dest: sk.dest.unwrap_or_default(),
            msg_id: sk.msg_id,
            in_reply_to: sk.in_reply_to,
            // An integer too long even for a double is named as such.
            text: match wide_integer(line) {
                Some(wide) => wide_integer_text(wide),
                None => format!("not a valid message: {what}"),
            },
        },
        _ => ParseError::Envelope(what),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{
        Body, CLIENT_ID_BYTES_MAX, ParseError, Request, SessionRef, VALUE_DEPTH_MAX,
    };
    use serde_json::{Map, Value};

    #[test]
    fn wide_integers_are_found_outside_strings_only() {
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

    /// The op of a line that parses into a mutation.
    fn mutation(line: &str) -> KvOp {
        match parse_line(line).expect("parses").body {
            Body::Request(Request::Mutate { op, .. }) => op,
            other => panic!("not a mutation: {other:?}"),
        }
    }

    #[test]
    fn the_integer_minus_zero_is_the_integer_zero_and_underflow_is_refused() {
        let w = |key: &str, value: &str| {
            format!(
                r#"{{"src":"c1","dest":"n1","body":{{"type":"write","msg_id":4,"key":{key},"value":{value}}}}}"#
            )
        };
        // serde_json alone reads `-0` as the double -0.0 (`-0.0` on the way back).
        match mutation(&w("-0", "[-0, -0.0, \"-0\", {\"-0\": -0}]")) {
            KvOp::Write { key, value } => {
                assert_eq!(key, "0");
                assert_eq!(value.to_string(), r#"[0,-0.0,"-0",{"-0":0}]"#);
                assert!(value[0].is_u64());
            }
            other => panic!("{other:?}"),
        }
        let add =
            r#"{"src":"c1","dest":"n1","body":{"type":"add","msg_id":5,"key":"k","delta":-0}}"#;
        assert!(matches!(mutation(add), KvOp::Add { delta: 0, .. }));
        // Zeros written as zeros are kept as they are.
        match mutation(&w("1", "[0.0, 0e-999, -0.0e5, 0]")) {
            KvOp::Write { value, .. } => assert_eq!(value.to_string(), "[0.0,0.0,-0.0,0]"),
            other => panic!("{other:?}"),
        }
        // Too small for a double: refused with its msg_id, as 1e400 is.
        for tiny in ["1e-400", "-2.5E-330", "0.000001e-320"] {
            match parse_line(&w("1", tiny)) {
                Err(ParseError::Body { msg_id, text, .. }) => {
                    assert_eq!(msg_id, Some(4));
                    assert!(text.contains(tiny) && text.contains("too small"), "{text}");
                }
                other => panic!("{tiny}: expected a body error, got {other:?}"),
            }
        }
        // The smallest double there is reads as itself, and so does a literal
        // that rounds to it (read exactly: serde_json's float_roundtrip).
        for smallest in ["5e-324", "2.4703282292062328e-324"] {
            match mutation(&w("1", smallest)) {
                KvOp::Write { value, .. } => assert_eq!(value.as_f64(), Some(5e-324), "{smallest}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn raft_requests_keep_their_rpc_as_text_and_other_messages_in_the_body() {
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

        // In any order, with more fields: still a raft request.
        for line in [
            r#"{"src":"n1","dest":"n2","body":{"rpc":{"a":1},"msg_id":7,"type":"raft_vote"}}"#,
            r#"{"src":"n1","dest":"n2","body":{"type":"raft_vote","rpc":{"a":1},"msg_id":7,"x":1}}"#,
        ] {
            let m = parse_line(line).expect("parses");
            let Body::Other { raw, rpc, .. } = m.body else {
                panic!("not Other: {line}")
            };
            assert_eq!(rpc.expect("kept as text").get(), r#"{"a":1}"#, "{line}");
            assert!(!raw.contains_key("rpc"), "{line}");
        }
        // Its rpc is not looked into here, in either order: a number in it that
        // openraft's types cannot take is for their decoder to refuse.
        for line in [
            r#"{"src":"n1","dest":"n2","body":{"type":"raft_vote","msg_id":7,"rpc":{"t":18446744073709551616}}}"#,
            r#"{"src":"n1","dest":"n2","body":{"rpc":{"t":18446744073709551616},"msg_id":7,"type":"raft_vote"}}"#,
        ] {
            let m = parse_line(line).expect(line);
            let Body::Other { rpc, .. } = m.body else {
                panic!("not Other: {line}")
            };
            assert!(rpc.is_some(), "{line}");
        }
        // A reply (its in_reply_to before or after the rpc) or another type: `rpc` in `raw`.
        for line in [
            r#"{"src":"n1","dest":"n2","body":{"type":"raft_append_ok","rpc":{},"msg_id":8,"in_reply_to":7}}"#,
            r#"{"src":"n1","dest":"n2","body":{"type":"raft_append_ok","in_reply_to":7,"rpc":{},"msg_id":8}}"#,
            r#"{"src":"n1","dest":"n2","body":{"type":"forward","rpc":{},"msg_id":7}}"#,
        ] {
            let m = parse_line(line).expect("parses");
            let Body::Other { raw, rpc, .. } = m.body else {
                panic!("not Other: {line}")
            };
            assert!(rpc.is_none(), "{line}");
            assert_eq!(raw.get("rpc"), Some(&Value::Object(Map::new())), "{line}");
        }
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
}
