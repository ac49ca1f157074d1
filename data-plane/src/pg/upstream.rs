//! Opening the upstream connection with the credential the proxy holds: optional TLS
//! (verify-full only), then SCRAM-SHA-256, MD5 or cleartext password authentication.

use super::cancel::UpstreamKey;
use super::frame::FrameReader;
use super::Io;
use crate::config::{PgResource, UpstreamTlsMode};
use bytes::{Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect: {0}")]
    Io(std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("credential unavailable: {0}")]
    Credential(String),
    #[error("authentication method {0} is not supported")]
    UnsupportedAuth(&'static str),
    #[error("upstream refused the login: {code} {message}")]
    Refused { code: String, message: String },
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl From<std::io::Error> for UpstreamError {
    fn from(e: std::io::Error) -> Self {
        UpstreamError::Io(e)
    }
}

/// A logged-in upstream session, ready for queries.
pub struct Upstream {
    pub reader: FrameReader<tokio::io::ReadHalf<Box<dyn Io>>>,
    pub writer: tokio::io::WriteHalf<Box<dyn Io>>,
    pub key: Option<UpstreamKey>,
    /// ParameterStatus and NoticeResponse frames to relay to the agent, then ReadyForQuery.
    pub greeting: Vec<Bytes>,
}

/// TCP (and TLS when configured) to the resource, before any PostgreSQL message.
pub async fn open_stream(resource: &PgResource) -> Result<Box<dyn Io>, UpstreamError> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((resource.host.as_str(), resource.port)))
        .await
        .map_err(|_| UpstreamError::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")))??;
    tcp.set_nodelay(true)?;
    match resource.tls.mode {
        UpstreamTlsMode::Disable => Ok(Box::new(tcp)),
        UpstreamTlsMode::VerifyFull => Ok(Box::new(start_tls(tcp, resource).await?)),
    }
}

async fn start_tls(
    mut tcp: TcpStream,
    resource: &PgResource,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, UpstreamError> {
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    tcp.write_all(&buf).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    if answer[0] != b'S' {
        return Err(UpstreamError::Tls("the upstream does not offer TLS".into()));
    }
    let mut roots = rustls::RootCertStore::empty();
    match &resource.tls.ca_file {
        Some(path) => {
            use rustls_pki_types::pem::PemObject;
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| UpstreamError::Tls(format!("{}: {e}", path.display())))?;
            for cert in certs {
                let cert = cert.map_err(|e| UpstreamError::Tls(format!("{}: {e}", path.display())))?;
                roots.add(cert).map_err(|e| UpstreamError::Tls(e.to_string()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(resource.host.clone())
        .map_err(|e| UpstreamError::Tls(format!("bad host name {}: {e}", resource.host)))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| UpstreamError::Tls(e.to_string()))
}

/// Connect and log in. `params` are extra startup parameters relayed from the agent.
pub async fn connect(
    resource: &PgResource,
    params: &[(String, String)],
    max_message: usize,
) -> Result<Upstream, UpstreamError> {
    let password = match &resource.password {
        Some(secret) => Some(secret.resolve().map_err(|e| UpstreamError::Credential(e.to_string()))?),
        None => None,
    };
    let stream = open_stream(resource).await?;
    let (read, mut writer) = tokio::io::split(stream);
    let mut reader = FrameReader::new(read, max_message);

    let mut buf = BytesMut::new();
    let mut startup: Vec<(&str, &str)> = vec![("user", &resource.user), ("database", &resource.database)];
    startup.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    frontend::startup_message(startup, &mut buf)?;
    writer.write_all(&buf).await?;
    writer.flush().await?;

    authenticate(&mut reader, &mut writer, resource, password.as_deref()).await?;

    let mut key = None;
    let mut greeting = Vec::new();
    loop {
        let frame = reader.read_frame().await?.ok_or_else(|| UpstreamError::Protocol("closed before ready".into()))?;
        match frame.tag() {
            b'K' => {
                let body = frame.body();
                if body.len() != 8 {
                    return Err(UpstreamError::Protocol("unexpected BackendKeyData length".into()));
                }
                let pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                let secret = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                key = Some(UpstreamKey { pid, secret });
            }
            b'S' | b'N' => greeting.push(frame.bytes),
            b'Z' => {
                greeting.push(frame.bytes);
                return Ok(Upstream { reader, writer, key, greeting });
            }
            b'E' => return Err(refused(frame.body())),
            other => {
                return Err(UpstreamError::Protocol(format!("unexpected message {:?} during startup", other as char)))
            }
        }
    }
}

fn refused(body: &[u8]) -> UpstreamError {
    match super::messages::error_fields(body) {
        Ok((code, message)) => UpstreamError::Refused { code, message },
        Err(e) => UpstreamError::Protocol(e.to_string()),
    }
}

async fn authenticate<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut W,
    resource: &PgResource,
    password: Option<&str>,
) -> Result<(), UpstreamError>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let need_password = || {
        password
            .ok_or_else(|| UpstreamError::Credential(format!("resource {} has no password configured", resource.name)))
    };
    let mut scram: Option<ScramSha256> = None;
    loop {
        let frame =
            reader.read_frame().await?.ok_or_else(|| UpstreamError::Protocol("closed during authentication".into()))?;
        let mut raw = BytesMut::from(&frame.bytes[..]);
        let message = Message::parse(&mut raw)?.ok_or_else(|| UpstreamError::Protocol("incomplete message".into()))?;
        let mut out = BytesMut::new();
        match message {
            Message::AuthenticationOk => return Ok(()),
            Message::AuthenticationCleartextPassword => {
                frontend::password_message(need_password()?.as_bytes(), &mut out)?;
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = postgres_protocol::authentication::md5_hash(
                    resource.user.as_bytes(),
                    need_password()?.as_bytes(),
                    body.salt(),
                );
                frontend::password_message(hash.as_bytes(), &mut out)?;
            }
            Message::AuthenticationSasl(body) => {
                let mut mechanisms = body.mechanisms();
                let mut offered = false;
                while let Some(m) = fallible_next(&mut mechanisms)? {
                    offered |= m == SCRAM_SHA_256;
                }
                if !offered {
                    return Err(UpstreamError::UnsupportedAuth("SASL without SCRAM-SHA-256"));
                }
                let client = ScramSha256::new(need_password()?.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, client.message(), &mut out)?;
                scram = Some(client);
            }
            Message::AuthenticationSaslContinue(body) => {
                let client =
                    scram.as_mut().ok_or_else(|| UpstreamError::Protocol("SASL continue before start".into()))?;
                client.update(body.data())?;
                frontend::sasl_response(client.message(), &mut out)?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let mut client =
                    scram.take().ok_or_else(|| UpstreamError::Protocol("SASL final before start".into()))?;
                // Verifies the server's signature: a server that does not know the password
                // cannot complete the exchange.
                client.finish(body.data())?;
                continue;
            }
            Message::AuthenticationKerberosV5 => return Err(UpstreamError::UnsupportedAuth("Kerberos")),
            Message::AuthenticationScmCredential => return Err(UpstreamError::UnsupportedAuth("SCM")),
            Message::AuthenticationGss | Message::AuthenticationGssContinue(_) => {
                return Err(UpstreamError::UnsupportedAuth("GSSAPI"))
            }
            Message::AuthenticationSspi => return Err(UpstreamError::UnsupportedAuth("SSPI")),
            Message::ErrorResponse(_) => return Err(refused(frame.body())),
            _ => return Err(UpstreamError::Protocol("unexpected message during authentication".into())),
        }
        writer.write_all(&out).await?;
        writer.flush().await?;
    }
}

fn fallible_next<'a>(
    it: &mut postgres_protocol::message::backend::SaslMechanisms<'a>,
) -> Result<Option<&'a str>, UpstreamError> {
    use fallible_iterator::FallibleIterator;
    it.next().map_err(UpstreamError::Io)
}
