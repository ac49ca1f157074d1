//! The agent's side of the handshake, before any tagged message: SSLRequest, GSSENCRequest,
//! CancelRequest and the StartupMessage.

use super::cancel::AgentKey;
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt};

const SSL_REQUEST: i32 = 80877103;
const GSSENC_REQUEST: i32 = 80877104;
const CANCEL_REQUEST: i32 = 80877102;
const PROTOCOL_3_0: i32 = 196608;
/// PostgreSQL's own limit for a startup packet.
const MAX_STARTUP_PACKET: usize = 10_000;

pub enum FirstPacket {
    Ssl,
    GssEnc,
    Cancel(AgentKey),
    Startup(Vec<(String, String)>),
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

pub async fn read_first_packet<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<FirstPacket> {
    let len = r.read_i32().await?;
    let len = usize::try_from(len).map_err(|_| invalid("negative startup packet length"))?;
    if !(8..=MAX_STARTUP_PACKET).contains(&len) {
        return Err(invalid(format!("startup packet length {len} out of range")));
    }
    let mut body = vec![0u8; len - 4];
    r.read_exact(&mut body).await?;
    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let rest = &body[4..];
    match code {
        SSL_REQUEST => Ok(FirstPacket::Ssl),
        GSSENC_REQUEST => Ok(FirstPacket::GssEnc),
        CANCEL_REQUEST if rest.len() == 8 => Ok(FirstPacket::Cancel(AgentKey {
            pid: i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]),
            secret: i32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]),
        })),
        PROTOCOL_3_0 => parse_params(rest).map(FirstPacket::Startup),
        other => Err(invalid(format!("unsupported protocol version {}.{}", other >> 16, other & 0xffff))),
    }
}

fn parse_params(mut rest: &[u8]) -> io::Result<Vec<(String, String)>> {
    let mut params = Vec::new();
    loop {
        let (key, after) = cstr(rest)?;
        if key.is_empty() {
            return Ok(params);
        }
        let (value, after) = cstr(after)?;
        params.push((key.to_owned(), value.to_owned()));
        rest = after;
    }
}

fn cstr(buf: &[u8]) -> io::Result<(&str, &[u8])> {
    let end = buf.iter().position(|b| *b == 0).ok_or_else(|| invalid("unterminated startup parameter"))?;
    let s = std::str::from_utf8(&buf[..end]).map_err(|_| invalid("startup parameter is not UTF-8"))?;
    Ok((s, &buf[end + 1..]))
}
