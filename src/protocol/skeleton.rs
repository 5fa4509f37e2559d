//! The addressing of a line read leniently, in constant memory: for lines that
//! are never parsed whole (longer than the request limit, or refused by the
//! parser), so their sender can still be answered.
//!
//! Owns [`Skeleton`]. It may not judge a line (it never fails and never
//! refuses), nor hold more than a few short fields whatever it is fed.

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
    /// The last key read at depth 1 or 2, as written (`None` if long: not one
    /// we want).
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

/// Longest field name a [`Skeleton`] keeps, as written: `in_reply_to` with every
/// character escaped (`\u0069...`, 66 bytes), since a JSON reader takes
/// escaped names for the plain ones and so must the skeleton.
const SKELETON_KEY_BYTES_MAX: usize = 6 * "in_reply_to".len();

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
                if k.len() < SKELETON_KEY_BYTES_MAX {
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
        let raw = self.key.as_deref()?;
        // A name spelled with escapes is the same name to a JSON reader.
        let unescaped;
        let key = if raw.contains(&b'\\') {
            let mut quoted = Vec::with_capacity(raw.len() + 2);
            quoted.push(b'"');
            quoted.extend_from_slice(raw);
            quoted.push(b'"');
            unescaped = serde_json::from_slice::<String>(&quoted).ok()?;
            unescaped.as_bytes()
        } else {
            raw
        };
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
            // (`-0` is the integer 0, as the parser reads it.)
            let n = std::str::from_utf8(&digits)
                .ok()
                .and_then(|d| if d == "-0" { Some(0) } else { d.parse().ok() });
            match f {
                SkField::MsgId => self.msg_id = n,
                SkField::InReplyTo => self.in_reply_to = n,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
