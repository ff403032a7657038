//! A single-pass JSON scanner that validates a body and records, with their byte ranges, the
//! few fields a gateway acts on — in one walk over the bytes, with no allocation unless a key
//! or value it reads uses escapes.
//!
//! It accepts exactly the JSON that `serde_json` accepts when skipping a value (RFC 8259:
//! whitespace, literals, numbers, strings with escapes, nesting up to 128 levels), which the
//! `classify_differential` fuzz target checks against `serde_json` itself.

use std::borrow::Cow;
use std::ops::Range;

/// The `_meta` key that carries the protocol version of a 2026-07-28 request.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
/// The `_meta` key that carries the client's capabilities on a 2026-07-28 request.
pub(crate) const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";

/// Nesting limit, as `serde_json`'s.
const MAX_DEPTH: u32 = 128;

/// A scan failure: `syntax` is a JSON error (-32700); otherwise the JSON is valid but not an
/// acceptable JSON-RPC message (-32600).
#[derive(Debug)]
pub(crate) struct ScanError {
    pub(crate) syntax: bool,
    pub(crate) message: Cow<'static, str>,
}

fn syntax(message: impl Into<Cow<'static, str>>) -> ScanError {
    ScanError {
        syntax: true,
        message: message.into(),
    }
}

fn invalid(message: impl Into<Cow<'static, str>>) -> ScanError {
    ScanError {
        syntax: false,
        message: message.into(),
    }
}

/// What one message's envelope holds. Ranges index the scanned body.
#[derive(Default, Debug)]
pub(crate) struct Fields {
    pub(crate) span: Range<usize>,
    pub(crate) jsonrpc: Option<Range<usize>>,
    pub(crate) id: Option<Range<usize>>,
    pub(crate) method: Option<Range<usize>>,
    pub(crate) params: Option<Range<usize>>,
    pub(crate) result: Option<Range<usize>>,
    pub(crate) error: Option<Range<usize>>,
    pub(crate) name: Option<Range<usize>>,
    pub(crate) uri: Option<Range<usize>>,
    pub(crate) meta: Option<Range<usize>>,
    pub(crate) arguments: Option<Range<usize>>,
    pub(crate) protocol_version: Option<Range<usize>>,
    /// `params._meta["io.modelcontextprotocol/clientCapabilities"]` (its first copy).
    pub(crate) client_caps: Option<Range<usize>>,
    /// `result.isError` of a response.
    pub(crate) is_error: Option<Range<usize>>,
    /// `result._meta` of a response.
    pub(crate) result_meta: Option<Range<usize>>,
    /// `error.code` of an error response.
    pub(crate) error_code: Option<Range<usize>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Skip,
    Params,
    Meta,
    /// A response's `result`: `isError` and `_meta` are recorded.
    Result,
    /// A response's `error`: `code` is recorded.
    Error,
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    depth: u32,
    /// Whether the last string scanned had an escape (then its text must be decoded).
    escaped: bool,
}

/// Decodes a JSON string token (`"…"`, quotes included) when it has escapes.
pub(crate) fn decode_string(token: &[u8]) -> Option<Cow<'_, str>> {
    let inner = token.get(1..token.len().checked_sub(1)?)?;
    if !inner.contains(&b'\\') {
        return std::str::from_utf8(inner).ok().map(Cow::Borrowed);
    }
    serde_json::from_slice::<String>(token).ok().map(Cow::Owned)
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8, what: &'static str) -> Result<(), ScanError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else if self.i >= self.b.len() {
            Err(syntax("unexpected end of JSON"))
        } else {
            Err(syntax(what))
        }
    }

    /// A string token; returns its range (quotes included).
    fn string(&mut self) -> Result<Range<usize>, ScanError> {
        let start = self.i;
        self.expect(b'"', "expected a string")?;
        self.escaped = false;
        loop {
            self.skip_plain();
            let Some(c) = self.peek() else {
                return Err(syntax("unterminated string"));
            };
            self.i += 1;
            match c {
                b'"' => return Ok(start..self.i),
                b'\\' => {
                    self.escaped = true;
                    let Some(e) = self.peek() else {
                        return Err(syntax("unterminated string"));
                    };
                    self.i += 1;
                    match e {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            let hex = self.b.get(self.i..self.i + 4);
                            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                return Err(syntax("invalid \\u escape"));
                            }
                            self.i += 4;
                        }
                        _ => return Err(syntax("invalid escape")),
                    }
                }
                0x00..=0x1f => return Err(syntax("control character in string")),
                _ => {}
            }
        }
    }

    /// Skips string bytes that need no attention (not `"`, `\\` or a control character),
    /// eight at a time.
    fn skip_plain(&mut self) {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGHS: u64 = 0x8080_8080_8080_8080;
        let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
        while let Some(chunk) = self.b.get(self.i..self.i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let x = u64::from_le_bytes(word);
            let quote = has_zero(x ^ (ONES * u64::from(b'"')));
            let backslash = has_zero(x ^ (ONES * u64::from(b'\\')));
            // A byte below 0x20 (its high bit clear, and below 0x20 after the subtraction).
            let control = x.wrapping_sub(ONES * 0x20) & !x & HIGHS;
            let hits = quote | backslash | control;
            if hits != 0 {
                // The lowest flagged byte is a real one (a borrow can only flag bytes above
                // a real one): go straight to it.
                self.i += (hits.trailing_zeros() / 8) as usize;
                return;
            }
            self.i += 8;
        }
        while let Some(&c) = self.b.get(self.i) {
            if c == b'"' || c == b'\\' || c < 0x20 {
                return;
            }
            self.i += 1;
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<(), ScanError> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(syntax("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(syntax("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(syntax("invalid number"));
            }
        }
        Ok(())
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), ScanError> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(syntax("invalid literal"))
        }
    }

    /// Any value; objects in a `Params` or `Meta` role record their keys into `f`.
    fn value(&mut self, role: Role, f: &mut Fields) -> Result<Range<usize>, ScanError> {
        if role != Role::Skip && self.peek() == Some(b'{') {
            let start = self.i;
            self.object(role, f)?;
            return Ok(start..self.i);
        }
        self.skip()
    }

    /// Any value, validated and skipped (nothing recorded).
    fn skip(&mut self) -> Result<Range<usize>, ScanError> {
        let start = self.i;
        match self.peek() {
            Some(b'{') => self.members(|_, s| s.skip().map(drop))?,
            Some(b'[') => self.array()?,
            Some(b'"') => {
                self.string()?;
            }
            Some(b't') => self.literal(b"true")?,
            Some(b'f') => self.literal(b"false")?,
            Some(b'n') => self.literal(b"null")?,
            Some(b'-' | b'0'..=b'9') => self.number()?,
            Some(_) => return Err(syntax("expected a JSON value")),
            None => return Err(syntax("unexpected end of JSON")),
        }
        Ok(start..self.i)
    }

    fn enter(&mut self) -> Result<(), ScanError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(syntax("recursion limit exceeded"));
        }
        Ok(())
    }

    fn array(&mut self) -> Result<(), ScanError> {
        self.enter()?;
        self.i += 1;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            self.ws();
            self.skip()?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                None => return Err(syntax("unexpected end of JSON")),
                Some(_) => return Err(syntax("expected ',' or ']'")),
            }
        }
    }

    /// Members of an object; `on_key` says what to do with each key's value, given the key's
    /// text (decoded only when it has escapes; compared as bytes, no UTF-8 check needed as the
    /// whole body was checked).
    fn members(
        &mut self,
        mut on_key: impl FnMut(&[u8], &mut Self) -> Result<(), ScanError>,
    ) -> Result<(), ScanError> {
        self.enter()?;
        self.i += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            self.ws();
            let key = self.string()?;
            self.ws();
            self.expect(b':', "expected ':'")?;
            self.ws();
            let b = self.b;
            let raw = &b[key.start + 1..key.end - 1];
            if self.escaped {
                // Escapes are rare in keys: decode (an undecodable key matches no name).
                let decoded = decode_string(&b[key]).unwrap_or_default();
                on_key(decoded.as_bytes(), self)?;
            } else {
                on_key(raw, self)?;
            }
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                None => return Err(syntax("unexpected end of JSON")),
                Some(_) => return Err(syntax("expected ',' or '}'")),
            }
        }
    }

    fn object(&mut self, role: Role, f: &mut Fields) -> Result<(), ScanError> {
        match role {
            Role::Skip => self.members(|_, s| s.skip().map(drop)),
            Role::Params => self.members(|key, s| {
                let slot = match key {
                    b"name" => Some((&mut f.name, "name", Role::Skip)),
                    b"uri" => Some((&mut f.uri, "uri", Role::Skip)),
                    b"_meta" => Some((&mut f.meta, "_meta", Role::Meta)),
                    b"arguments" => Some((&mut f.arguments, "arguments", Role::Skip)),
                    _ => None,
                };
                match slot {
                    None => s.skip().map(drop),
                    Some((field, label, role)) => {
                        if field.is_some() {
                            return Err(invalid(format!("params: duplicate field `{label}`")));
                        }
                        let mut inner = Fields::default();
                        let r = s.value(role, &mut inner)?;
                        *field = Some(r);
                        if role == Role::Meta {
                            f.protocol_version = inner.protocol_version;
                            f.client_caps = inner.client_caps;
                        }
                        Ok(())
                    }
                }
            }),
            Role::Result => self.members(|key, s| {
                let slot = match key {
                    b"isError" => &mut f.is_error,
                    b"_meta" => &mut f.result_meta,
                    _ => return s.skip().map(drop),
                };
                // A response is only observed, never refused: the first copy of a key counts.
                let r = s.skip()?;
                slot.get_or_insert(r);
                Ok(())
            }),
            Role::Error => self.members(|key, s| {
                let r = s.skip()?;
                if key == b"code" {
                    f.error_code.get_or_insert(r);
                }
                Ok(())
            }),
            Role::Meta => self.members(|key, s| {
                if key == META_PROTOCOL_VERSION.as_bytes() {
                    if f.protocol_version.is_some() {
                        return Err(invalid(
                            "params._meta: duplicate field `io.modelcontextprotocol/protocolVersion`",
                        ));
                    }
                    let r = s.skip()?;
                    match s.b[r.start] {
                        b'"' => f.protocol_version = Some(r),
                        b'n' => {}
                        _ => {
                            return Err(invalid(
                                "params._meta: the protocol version must be a string",
                            ))
                        }
                    }
                    Ok(())
                } else if key == META_CLIENT_CAPABILITIES.as_bytes() {
                    let r = s.skip()?;
                    f.client_caps.get_or_insert(r);
                    Ok(())
                } else {
                    s.skip().map(drop)
                }
            }),
        }
    }

    /// A JSON-RPC message object: the envelope's keys, and `params`' keys when it is an object.
    fn message(&mut self) -> Result<Fields, ScanError> {
        let mut f = Fields::default();
        let start = self.i;
        if self.peek() != Some(b'{') {
            // Valid JSON of another type is not a message.
            self.value(Role::Skip, &mut f)?;
            return Err(invalid("a message must be a JSON object"));
        }
        let mut env = Fields::default();
        self.members(|key, s| {
            let (field, label) = match key {
                b"jsonrpc" => (&mut env.jsonrpc, "jsonrpc"),
                b"id" => (&mut env.id, "id"),
                b"method" => (&mut env.method, "method"),
                b"params" => (&mut env.params, "params"),
                b"result" => (&mut env.result, "result"),
                b"error" => (&mut env.error, "error"),
                _ => return s.skip().map(drop),
            };
            if field.is_some() {
                return Err(invalid(format!("duplicate field `{label}`")));
            }
            let role = match label {
                "params" => Role::Params,
                "result" => Role::Result,
                "error" => Role::Error,
                _ => Role::Skip,
            };
            let mut inner = Fields::default();
            let r = s.value(role, &mut inner)?;
            *field = Some(r);
            match role {
                Role::Params => {
                    f.name = inner.name;
                    f.uri = inner.uri;
                    f.meta = inner.meta;
                    f.arguments = inner.arguments;
                    f.protocol_version = inner.protocol_version;
                    f.client_caps = inner.client_caps;
                }
                Role::Result => {
                    f.is_error = inner.is_error;
                    f.result_meta = inner.result_meta;
                }
                Role::Error => f.error_code = inner.error_code,
                Role::Skip | Role::Meta => {}
            }
            Ok(())
        })?;
        f.span = start..self.i;
        f.jsonrpc = env.jsonrpc;
        f.id = env.id;
        f.method = env.method;
        f.params = env.params;
        f.result = env.result;
        f.error = env.error;
        Ok(f)
    }
}

/// What a body holds: one message, or an array of them (a batch, possibly of one).
#[derive(Debug)]
// One message is nearly every call: inline, as boxing it would cost the allocation this saves.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Found {
    One(Fields),
    Batch(Vec<Fields>),
}

/// Scans a whole body: one message object, or an array of them (a batch).
pub(crate) fn scan(body: &[u8]) -> Result<Found, ScanError> {
    if std::str::from_utf8(body).is_err() {
        return Err(syntax("body is not valid UTF-8"));
    }
    let mut s = Scanner {
        b: body,
        i: 0,
        depth: 0,
        escaped: false,
    };
    s.ws();
    let out = match s.peek() {
        None => return Err(syntax("empty body")),
        Some(b'[') => {
            // A batch: validate the array, scanning each element as a message; report a
            // syntax error anywhere before a message-level one.
            s.enter()?;
            s.i += 1;
            s.ws();
            let mut msgs = Vec::new();
            let mut first_invalid = None;
            if s.peek() == Some(b']') {
                s.i += 1;
            } else {
                loop {
                    s.ws();
                    let at = s.i;
                    match s.message() {
                        Ok(f) => msgs.push(f),
                        Err(e) if e.syntax => return Err(e),
                        Err(e) => {
                            // The message was refused part-way: skip it as plain JSON, so a
                            // syntax error later in the body is still reported as one.
                            s.i = at;
                            s.depth = 1;
                            s.skip()?;
                            first_invalid.get_or_insert(e);
                        }
                    }
                    s.ws();
                    match s.peek() {
                        Some(b',') => s.i += 1,
                        Some(b']') => {
                            s.i += 1;
                            break;
                        }
                        None => return Err(syntax("unexpected end of JSON")),
                        Some(_) => return Err(syntax("expected ',' or ']'")),
                    }
                }
            }
            s.ws();
            if s.i != body.len() {
                return Err(syntax("trailing characters"));
            }
            if let Some(e) = first_invalid {
                return Err(e);
            }
            if msgs.is_empty() {
                return Err(invalid("empty batch"));
            }
            Found::Batch(msgs)
        }
        Some(_) => {
            let at = s.i;
            let m = s.message();
            if let Err(e) = &m {
                if e.syntax {
                    return m.map(Found::One);
                }
                // Refused part-way: the rest must still be valid JSON for this to be an
                // invalid message rather than a parse error.
                s.i = at;
                s.depth = 0;
                s.skip()?;
            }
            s.ws();
            if s.i != body.len() {
                return Err(syntax("trailing characters"));
            }
            Found::One(m?)
        }
    };
    Ok(out)
}
