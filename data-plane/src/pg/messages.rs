//! Decoding the few message fields the inspectors need, and building the messages the proxy
//! writes itself. Everything else is forwarded as the bytes it arrived as.

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;

/// A message the proxy could not make sense of; it is refused, never forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl std::error::Error for Malformed {}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed {} message", self.0)
    }
}

/// A cursor over a message body.
pub struct Cursor<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    pub fn new(body: &'a [u8], what: &'static str) -> Self {
        Cursor { rest: body, what }
    }

    fn err(&self) -> Malformed {
        Malformed(self.what)
    }

    pub fn cstr(&mut self) -> Result<&'a str, Malformed> {
        let end = self.rest.iter().position(|b| *b == 0).ok_or(self.err())?;
        let s = std::str::from_utf8(&self.rest[..end]).map_err(|_| self.err())?;
        self.rest = &self.rest[end + 1..];
        Ok(s)
    }

    pub fn u8(&mut self) -> Result<u8, Malformed> {
        let (&b, rest) = self.rest.split_first().ok_or(self.err())?;
        self.rest = rest;
        Ok(b)
    }

    pub fn i16(&mut self) -> Result<i16, Malformed> {
        let bytes = self.take(2)?;
        Ok(i16::from_be_bytes([bytes[0], bytes[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, Malformed> {
        let bytes = self.take(4)?;
        Ok(i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// An Int16 count followed by that many Int16s.
    pub fn i16_list(&mut self) -> Result<Vec<i16>, Malformed> {
        let n = usize::try_from(self.i16()?).map_err(|_| self.err())?;
        (0..n).map(|_| self.i16()).collect()
    }

    /// A NUL-terminated string as raw bytes (names need not be UTF-8 in every client encoding).
    pub fn cbytes(&mut self) -> Result<&'a [u8], Malformed> {
        let end = self.rest.iter().position(|b| *b == 0).ok_or(self.err())?;
        let (s, rest) = self.rest.split_at(end);
        self.rest = &rest[1..];
        Ok(s)
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.rest.len() < n {
            return Err(self.err());
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }
}

/// `Parse`: statement name, statement text.
pub fn parse_message(body: &[u8]) -> Result<(&str, &str), Malformed> {
    let mut c = Cursor::new(body, "Parse");
    Ok((c.cstr()?, c.cstr()?))
}

/// A `Bind`, with its parameters rendered as text for the record.
pub struct Bind<'a> {
    pub portal: &'a str,
    pub statement: &'a str,
    pub params: Vec<Option<String>>,
    /// Result column format codes: none (all text), one (for all) or one per column.
    pub result_formats: Vec<i16>,
}

pub fn bind_message(body: &[u8]) -> Result<Bind<'_>, Malformed> {
    let mut c = Cursor::new(body, "Bind");
    let portal = c.cstr()?;
    let statement = c.cstr()?;
    let formats = c.i16_list()?;
    let n_params = usize::try_from(c.i16()?).map_err(|_| Malformed("Bind"))?;
    let mut params = Vec::with_capacity(n_params);
    for i in 0..n_params {
        let len = c.i32()?;
        if len < 0 {
            params.push(None);
            continue;
        }
        let value = c.take(len as usize)?;
        // One format code applies to all parameters; otherwise there is one per parameter.
        let format = match formats.len() {
            0 => 0,
            1 => formats[0],
            _ => *formats.get(i).ok_or(Malformed("Bind"))?,
        };
        params.push(Some(render_param(value, format)));
    }
    let result_formats = c.i16_list()?;
    Ok(Bind { portal, statement, params, result_formats })
}

fn render_param(value: &[u8], format: i16) -> String {
    match (format, std::str::from_utf8(value)) {
        (0, Ok(text)) => text.to_owned(),
        _ => format!("\\x{}", hex::encode(value)),
    }
}

/// `Execute`: portal name, and the most rows to return (0: all).
pub fn execute_message(body: &[u8]) -> Result<(&str, i32), Malformed> {
    let mut c = Cursor::new(body, "Execute");
    Ok((c.cstr()?, c.i32()?))
}

/// `Close`: `S` or `P`, and the name.
pub fn close_message(body: &[u8]) -> Result<(u8, &str), Malformed> {
    let mut c = Cursor::new(body, "Close");
    Ok((c.u8()?, c.cstr()?))
}

/// `Describe`: `S` or `P`, and the name.
pub fn describe_message(body: &[u8]) -> Result<(u8, &str), Malformed> {
    let mut c = Cursor::new(body, "Describe");
    Ok((c.u8()?, c.cstr()?))
}

/// A Describe of a statement (`S`) or portal (`P`), as the proxy sends it itself.
pub fn describe(kind: u8, name: &str) -> Bytes {
    let mut body = BytesMut::new();
    body.put_u8(kind);
    put_cstr(&mut body, name);
    framed(b'D', &body)
}

/// `Query`: the statement text.
pub fn query_message(body: &[u8]) -> Result<&str, Malformed> {
    Cursor::new(body, "Query").cstr()
}

/// `CommandComplete`: the tag.
pub fn command_complete(body: &[u8]) -> Result<&str, Malformed> {
    Cursor::new(body, "CommandComplete").cstr()
}

/// Rows a command tag reports (`INSERT 0 5` → 5, `SELECT 3` → 3, `CREATE TABLE` → 0).
pub fn tag_rows(tag: &str) -> u64 {
    let mut words = tag.split(' ');
    match words.next() {
        Some("SELECT" | "UPDATE" | "DELETE" | "COPY" | "FETCH" | "MOVE" | "MERGE" | "INSERT") => {
            words.next_back().and_then(|n| n.parse().ok()).unwrap_or(0)
        }
        _ => 0,
    }
}

/// The `C` (SQLSTATE) and `M` (message) fields of an ErrorResponse or NoticeResponse.
pub fn error_fields(body: &[u8]) -> Result<(String, String), Malformed> {
    let mut c = Cursor::new(body, "ErrorResponse");
    let (mut code, mut message) = (String::new(), String::new());
    loop {
        match c.u8()? {
            0 => return Ok((code, message)),
            b'C' => code = c.cstr()?.to_owned(),
            b'M' => message = c.cstr()?.to_owned(),
            _ => {
                c.cstr()?;
            }
        }
    }
}

/// How bad an error the proxy reports is.
#[derive(Debug, Clone, Copy)]
pub enum Severity {
    Error,
    Fatal,
}

/// An ErrorResponse written by the proxy itself.
pub fn error_response(severity: Severity, code: &str, message: &str) -> Bytes {
    let severity = match severity {
        Severity::Error => "ERROR",
        Severity::Fatal => "FATAL",
    };
    let mut body = BytesMut::new();
    for (field, value) in [(b'S', severity), (b'V', severity), (b'C', code), (b'M', message)] {
        body.put_u8(field);
        put_cstr(&mut body, value);
    }
    body.put_u8(0);
    framed(b'E', &body)
}

/// A NoticeResponse written by the proxy itself.
pub fn notice_response(message: &str) -> Bytes {
    let mut body = BytesMut::new();
    for (field, value) in [(b'S', "NOTICE"), (b'V', "NOTICE"), (b'C', "00000"), (b'M', message)] {
        body.put_u8(field);
        put_cstr(&mut body, value);
    }
    body.put_u8(0);
    framed(b'N', &body)
}

/// A statement the upstream refuses to parse, sent in place of a denied one: the upstream
/// answers with an error (aborting a transaction block, as a real error would) and never sees
/// the denied text. Simple protocol: a Query; extended protocol: a Parse of the unnamed
/// statement, after which the upstream skips to the agent's Sync.
const DENIED_TEXT: &str = "tollgate: statement denied";

pub fn denied_query() -> Bytes {
    query(DENIED_TEXT)
}

/// A Query message.
pub fn query(sql: &str) -> Bytes {
    let mut body = BytesMut::new();
    put_cstr(&mut body, sql);
    framed(b'Q', &body)
}

/// The stand-in Parse names a statement of its own: a failed Parse of the unnamed statement
/// would drop the agent's unnamed statement, and a failed named Parse changes nothing.
pub fn denied_parse() -> Bytes {
    let mut body = BytesMut::new();
    put_cstr(&mut body, "tollgate_denied");
    put_cstr(&mut body, DENIED_TEXT);
    body.put_i16(0);
    framed(b'P', &body)
}

/// Names the proxy keeps for its own statements and portals: an agent's name with this prefix
/// is refused, so the proxy's never stand for the agent's.
pub const OWN_NAME_PREFIX: &str = "tollgate_";

/// A Parse of a named statement with no parameter types, as the proxy sends it itself.
pub fn parse(name: &str, sql: &str) -> Bytes {
    let mut body = BytesMut::new();
    put_cstr(&mut body, name);
    put_cstr(&mut body, sql);
    body.put_i16(0);
    framed(b'P', &body)
}

/// A Bind of `statement` to `portal` with no parameters and text results.
pub fn bind(portal: &str, statement: &str) -> Bytes {
    let mut body = BytesMut::new();
    put_cstr(&mut body, portal);
    put_cstr(&mut body, statement);
    body.put_i16(0);
    body.put_i16(0);
    body.put_i16(0);
    framed(b'B', &body)
}

/// An Execute of `portal` to completion.
pub fn execute(portal: &str) -> Bytes {
    let mut body = BytesMut::new();
    put_cstr(&mut body, portal);
    body.put_i32(0);
    framed(b'E', &body)
}

/// A Close of a statement (`S`) or portal (`P`).
pub fn close(kind: u8, name: &str) -> Bytes {
    let mut body = BytesMut::new();
    body.put_u8(kind);
    put_cstr(&mut body, name);
    framed(b'C', &body)
}

/// Flush: the server sends what it has without ending the pipeline's transaction.
pub fn flush() -> Bytes {
    framed(b'H', &[])
}

/// AuthenticationCleartextPassword: ask the agent for its token.
pub fn auth_cleartext_request() -> Bytes {
    framed(b'R', &3i32.to_be_bytes())
}

pub fn auth_ok() -> Bytes {
    framed(b'R', &0i32.to_be_bytes())
}

pub fn backend_key_data(pid: i32, secret: i32) -> Bytes {
    let mut body = [0u8; 8];
    body[..4].copy_from_slice(&pid.to_be_bytes());
    body[4..].copy_from_slice(&secret.to_be_bytes());
    framed(b'K', &body)
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    // A NUL inside would end the field early; PostgreSQL never sends one, so neither do we.
    buf.put_slice(s.replace('\0', "").as_bytes());
    buf.put_u8(0);
}

pub fn framed(tag: u8, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + 5);
    out.put_u8(tag);
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(body);
    out.freeze()
}

#[cfg(test)]
mod tests;
