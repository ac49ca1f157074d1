//! A raw PostgreSQL protocol client, for message sequences no driver sends: a Parse reusing a
//! name, an Execute of a portal the client never bound, a pipeline mixing both protocols.

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One message from the server.
#[derive(Debug, Clone)]
pub struct Msg {
    pub tag: u8,
    pub body: Bytes,
}

impl Msg {
    /// A NUL-separated field list (ErrorResponse, NoticeResponse): the field with this code.
    fn field(&self, code: u8) -> Option<String> {
        let mut rest = &self.body[..];
        while let Some((&field, after)) = rest.split_first() {
            if field == 0 {
                break;
            }
            let end = after.iter().position(|b| *b == 0)?;
            if field == code {
                return Some(String::from_utf8_lossy(&after[..end]).into_owned());
            }
            rest = &after[end + 1..];
        }
        None
    }

    /// `(SQLSTATE, message)` of an ErrorResponse.
    pub fn error(&self) -> Option<(String, String)> {
        (self.tag == b'E').then(|| (self.field(b'C').unwrap_or_default(), self.field(b'M').unwrap_or_default()))
    }

    /// The tag of a CommandComplete.
    pub fn command(&self) -> Option<String> {
        (self.tag == b'C')
            .then(|| String::from_utf8_lossy(self.body.strip_suffix(b"\0").unwrap_or(&self.body)).into_owned())
    }

    /// The text values of a DataRow.
    pub fn row(&self) -> Option<Vec<Option<String>>> {
        if self.tag != b'D' {
            return None;
        }
        let mut body = self.body.clone();
        let n = body.get_i16();
        let mut out = Vec::new();
        for _ in 0..n {
            let len = body.get_i32();
            if len < 0 {
                out.push(None);
            } else {
                out.push(Some(String::from_utf8_lossy(&body.split_to(len as usize)).into_owned()));
            }
        }
        Some(out)
    }
}

pub struct Wire {
    stream: TcpStream,
    buf: BytesMut,
}

impl Wire {
    /// Connect to `port` for `database` with `token` as the password, up to the first
    /// ReadyForQuery; the server's error if it refuses.
    pub async fn connect(port: u16, database: &str, token: &str) -> Result<Wire, (String, String)> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect to the proxy");
        let mut wire = Wire { stream, buf: BytesMut::new() };
        let mut startup = BytesMut::new();
        frontend::startup_message([("user", "ci-bot"), ("database", database)], &mut startup).expect("startup");
        wire.send(&[startup.freeze()]).await;
        loop {
            let msg = wire.next().await.expect("the server answers the startup");
            match msg.tag {
                b'R' if msg.body[..4] == [0, 0, 0, 3] => {
                    let mut password = BytesMut::new();
                    frontend::password_message(token.as_bytes(), &mut password).expect("password");
                    wire.send(&[password.freeze()]).await;
                }
                b'E' => return Err(msg.error().unwrap_or_default()),
                b'Z' => return Ok(wire),
                _ => {}
            }
        }
    }

    pub async fn send(&mut self, messages: &[Bytes]) {
        let all: Vec<u8> = messages.iter().flat_map(|m| m.iter().copied()).collect();
        self.stream.write_all(&all).await.expect("write to the proxy");
    }

    /// The next message, or `None` when the server closed the connection.
    pub async fn next(&mut self) -> Option<Msg> {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
                if self.buf.len() > len {
                    let frame = self.buf.split_to(len + 1).freeze();
                    return Some(Msg { tag: frame[0], body: frame.slice(5..) });
                }
            }
            let read = tokio::time::timeout(std::time::Duration::from_secs(30), self.stream.read_buf(&mut self.buf))
                .await
                .expect("the server answers within 30 s")
                .expect("read from the proxy");
            if read == 0 {
                return None;
            }
        }
    }

    /// Every message up to and including the next ReadyForQuery.
    pub async fn until_ready(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        while let Some(msg) = self.next().await {
            let ready = msg.tag == b'Z';
            out.push(msg);
            if ready {
                break;
            }
        }
        out
    }

    /// Send, then read `readies` ReadyForQuery messages' worth of answers.
    pub async fn round(&mut self, messages: &[Bytes], readies: usize) -> Vec<Msg> {
        self.send(messages).await;
        let mut out = Vec::new();
        for _ in 0..readies {
            out.extend(self.until_ready().await);
        }
        out
    }
}

fn built(f: impl FnOnce(&mut BytesMut) -> std::io::Result<()>) -> Bytes {
    let mut buf = BytesMut::new();
    f(&mut buf).expect("message encodes");
    buf.freeze()
}

pub fn query(sql: &str) -> Bytes {
    built(|b| frontend::query(sql, b))
}

pub fn parse(name: &str, sql: &str) -> Bytes {
    built(|b| frontend::parse(name, sql, std::iter::empty(), b))
}

/// A Bind of text parameters (NULL for `None`), every result column as text.
pub fn bind(portal: &str, statement: &str, params: &[Option<&str>]) -> Bytes {
    let mut buf = BytesMut::new();
    let values = params.iter().map(|p| p.map(str::as_bytes));
    frontend::bind(
        portal,
        statement,
        std::iter::empty::<i16>(),
        values,
        |value, out| match value {
            Some(v) => {
                out.extend_from_slice(v);
                Ok(postgres_protocol::IsNull::No)
            }
            None => Ok(postgres_protocol::IsNull::Yes),
        },
        std::iter::empty::<i16>(),
        &mut buf,
    )
    .map_err(|_| ())
    .expect("bind encodes");
    buf.freeze()
}

/// A Bind of no parameters asking for every result column in binary format.
pub fn bind_binary_results(portal: &str, statement: &str) -> Bytes {
    let mut buf = BytesMut::new();
    frontend::bind(
        portal,
        statement,
        std::iter::empty::<i16>(),
        std::iter::empty::<Option<&[u8]>>(),
        |_: Option<&[u8]>, _| Ok(postgres_protocol::IsNull::Yes),
        [1i16],
        &mut buf,
    )
    .map_err(|_| ())
    .expect("bind encodes");
    buf.freeze()
}

/// CopyData, CopyDone.
pub fn copy_data(data: &[u8]) -> Bytes {
    let mut buf = BytesMut::new();
    frontend::CopyData::new(data).expect("copy data").write(&mut buf);
    buf.freeze()
}

pub fn execute(portal: &str, max_rows: i32) -> Bytes {
    built(|b| frontend::execute(portal, max_rows, b))
}

pub fn describe(kind: u8, name: &str) -> Bytes {
    built(|b| frontend::describe(kind, name, b))
}

pub fn close(kind: u8, name: &str) -> Bytes {
    built(|b| frontend::close(kind, name, b))
}

pub fn sync() -> Bytes {
    let mut b = BytesMut::new();
    frontend::sync(&mut b);
    b.freeze()
}

/// The errors among messages, as `(SQLSTATE, message)`.
pub fn errors(messages: &[Msg]) -> Vec<(String, String)> {
    messages.iter().filter_map(Msg::error).collect()
}

/// The first column of every DataRow.
pub fn values(messages: &[Msg]) -> Vec<Option<String>> {
    messages.iter().filter_map(Msg::row).map(|row| row.into_iter().next().flatten()).collect()
}
