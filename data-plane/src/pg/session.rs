//! One agent connection from accept to `session.ended`.

use super::cancel::AgentKey;
use super::frame::FrameReader;
use super::messages::{self, Severity};
use super::startup::{read_first_packet, FirstPacket};
use super::upstream::{self, Upstream};
use super::{lexical, mask, relay, Io, PgContext};
use crate::recorder::SessionRecorder;
use crate::session::admit::{admit, record_end, record_start, Admitted, Attempt, Credential, RefusalKind, Refused};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tollgate_shared::event::{EndReason, SessionStarted, UpstreamTarget};
use tollgate_shared::identity::{AgentIdentity, ResourceKind, ResourceRef};
use tollgate_shared::policy::Access;

/// Startup parameters relayed to the upstream; anything else (notably `options`, which could
/// change server settings) stays at the proxy.
const RELAYED_PARAMS: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "extra_float_digits",
    "search_path",
];

/// SQLSTATEs the proxy answers with.
mod sqlstate {
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const UNKNOWN_DATABASE: &str = "3D000";
    pub const CANNOT_CONNECT: &str = "08001";
    pub const SYSTEM_ERROR: &str = "58000";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const QUERY_CANCELED: &str = "57014";
}
pub(super) use sqlstate::{
    ADMIN_SHUTDOWN, FEATURE_NOT_SUPPORTED, INSUFFICIENT_PRIVILEGE, PROTOCOL_VIOLATION, QUERY_CANCELED, SYSTEM_ERROR,
};

pub struct AgentConn {
    pub reader: FrameReader<ReadHalf<Box<dyn Io>>>,
    pub writer: WriteHalf<Box<dyn Io>>,
}

struct Opened {
    agent: AgentConn,
    upstream: Upstream,
    recorder: SessionRecorder,
    cancel_key: Option<AgentKey>,
    resource: String,
    access: Access,
    identity: AgentIdentity,
    catalog: Arc<super::catalog::CatalogCell>,
    recording: crate::config::Recording,
}

pub async fn run(ctx: Arc<PgContext>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let limit = Duration::from_millis(ctx.listener.handshake_timeout_ms);
    // The agent gets `limit` to present its token; after that every step has its own bound
    // (token verification, the durable publish, the upstream login), so a session that was
    // recorded as started is always recorded as ended too.
    let greeted = match tokio::time::timeout(limit, greet(&ctx, tcp, peer)).await {
        Ok(Some(greeted)) => greeted,
        Ok(None) => return,
        Err(_) => {
            tracing::info!(%peer, "agent handshake timed out");
            return;
        }
    };
    let Some(opened) = open(&ctx, peer, greeted).await else { return };
    let Opened { mut agent, mut upstream, recorder, cancel_key, resource, access, identity, catalog, recording } =
        opened;
    let services = &ctx.services;
    let guard = relay::Guard {
        classifier: &ctx.classifier,
        policy: &services.policy,
        resource: &resource,
        access,
        agent: &identity,
        standing: &services.standing,
        withdraw: cancel_key.and_then(|key| ctx.cancels.withdrawals(key)),
        approvals: &services.approvals,
        approval_url: services.approval_url.as_deref(),
        max_prepared: ctx.listener.max_prepared_statements,
        catalog: &catalog,
    };
    let stop = services.stops.watch(recorder.session());
    let ends = relay::Ends { shutdown: services.shutdown.clone(), stop };
    let outcome = relay::run(&recorder, &guard, recording, &mut agent, &mut upstream, ends).await;
    if let Some(key) = cancel_key {
        ctx.cancels.remove(key);
    }
    tracing::info!(session = %recorder.session(), reason = ?outcome.reason, commands = outcome.commands, "session ended");
    record_end(&recorder, outcome.reason, outcome.detail, outcome.commands).await;
}

async fn refuse(writer: &mut WriteHalf<Box<dyn Io>>, code: &str, message: &str) {
    let frame = messages::error_response(Severity::Fatal, code, message);
    let _ = writer.write_all(&frame).await;
    let _ = writer.flush().await;
}

/// An agent that has sent its startup message and its token.
struct Greeted {
    reader: FrameReader<ReadHalf<Box<dyn Io>>>,
    writer: WriteHalf<Box<dyn Io>>,
    params: Vec<(String, String)>,
    resource_name: String,
    tls: bool,
    token: String,
}

/// Negotiate TLS, read the startup message and ask for the token. `None` when the connection
/// ends here (refused, or it was a cancel request).
async fn greet(ctx: &PgContext, tcp: TcpStream, peer: SocketAddr) -> Option<Greeted> {
    let mut stream: Box<dyn Io> = Box::new(tcp);
    let mut tls = false;
    let params = loop {
        let packet = match read_first_packet(&mut stream).await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "bad startup packet");
                return None;
            }
        };
        match packet {
            FirstPacket::Ssl => match (&ctx.tls, tls) {
                (Some(acceptor), false) => {
                    stream.write_all(b"S").await.ok()?;
                    match acceptor.accept(stream).await {
                        Ok(s) => stream = Box::new(s),
                        Err(e) => {
                            tracing::info!(%peer, error = %e, "agent TLS handshake failed");
                            return None;
                        }
                    }
                    tls = true;
                }
                _ => stream.write_all(b"N").await.ok()?,
            },
            FirstPacket::GssEnc => stream.write_all(b"N").await.ok()?,
            FirstPacket::Cancel(key) => {
                ctx.cancels.cancel(key).await;
                return None;
            }
            FirstPacket::Startup(params) => break params,
        }
    };
    let (read, mut writer) = tokio::io::split(stream);
    let mut reader = FrameReader::new(read, 64 * 1024);
    let param = |name: &str| find_param(&params, name);

    if param("replication").is_some_and(|v| !matches!(v.as_str(), "false" | "off" | "0" | "no")) {
        refuse(&mut writer, sqlstate::FEATURE_NOT_SUPPORTED, "tollgate: replication connections are not supported")
            .await;
        return None;
    }
    let Some(resource_name) = param("database").or_else(|| param("user")) else {
        refuse(
            &mut writer,
            sqlstate::INVALID_AUTHORIZATION,
            "tollgate: the startup message names no database (resource)",
        )
        .await;
        return None;
    };

    // The agent's token arrives as its password.
    writer.write_all(&messages::auth_cleartext_request()).await.ok()?;
    writer.flush().await.ok()?;
    let frame = match reader.read_frame().await {
        Ok(Some(frame)) => frame,
        // libpq hangs up here to prompt for a password, then reconnects.
        Ok(None) | Err(_) => return None,
    };
    if frame.tag() != b'p' {
        refuse(
            &mut writer,
            sqlstate::PROTOCOL_VIOLATION,
            "tollgate: expected a password message carrying the agent token",
        )
        .await;
        return None;
    }
    let token = match messages::Cursor::new(frame.body(), "PasswordMessage").cstr() {
        Ok(t) => t.trim().to_owned(),
        Err(e) => {
            refuse(&mut writer, sqlstate::PROTOCOL_VIOLATION, &format!("tollgate: {e}")).await;
            return None;
        }
    };
    Some(Greeted { reader, writer, params, resource_name, tls, token })
}

/// The upstream's ParameterStatus, NoticeResponse and ReadyForQuery frames as the agent gets
/// them: checked (the server must read SQL as the proxy parses it) and masked (a session
/// variable can hold data).
fn relay_greeting(frames: &[Bytes], masker: &tollgate_shared::mask::Masker) -> Result<Vec<Bytes>, String> {
    let mut out = Vec::with_capacity(frames.len());
    for frame in frames {
        let body = &frame[5..];
        let masked = match frame[0] {
            b'S' => {
                let mut c = messages::Cursor::new(body, "ParameterStatus");
                let name = String::from_utf8_lossy(c.cbytes().map_err(|e| e.to_string())?).into_owned();
                let value = String::from_utf8_lossy(c.cbytes().map_err(|e| e.to_string())?).into_owned();
                lexical::check_reported(&name, &value)?;
                mask::mask_parameter_status(masker, body, &mut mask::Findings::default()).map_err(|e| e.to_string())?
            }
            b'N' => mask::mask_fields(masker, b'N', body, &mut mask::Findings::default()).map_err(|e| e.to_string())?,
            _ => None,
        };
        out.push(masked.filter(|_| masker.masks_agent()).unwrap_or_else(|| frame.clone()));
    }
    Ok(out)
}

fn find_param(params: &[(String, String)], name: &str) -> Option<String> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// How PostgreSQL names each refusal.
fn refusal_code(kind: RefusalKind) -> &'static str {
    match kind {
        RefusalKind::BadToken => sqlstate::INVALID_PASSWORD,
        RefusalKind::NotAuthorized => sqlstate::INVALID_AUTHORIZATION,
        RefusalKind::UnknownResource => sqlstate::UNKNOWN_DATABASE,
        RefusalKind::Unsupported => sqlstate::FEATURE_NOT_SUPPORTED,
    }
}

/// Authenticate the agent, record the session and log in upstream.
async fn open(ctx: &PgContext, peer: SocketAddr, greeted: Greeted) -> Option<Opened> {
    let Greeted { reader, mut writer, params, resource_name, tls, token } = greeted;
    let param = |name: &str| find_param(&params, name);
    let services = &ctx.services;
    let client_user = param("user").unwrap_or_default();
    let attempt = Attempt {
        peer,
        tls,
        client_user: &client_user,
        resource: &resource_name,
        credential: Credential::Token(&token),
        kind: ResourceKind::Postgres,
        code: refusal_code,
    };
    let find = |_: &AgentIdentity| {
        let resource = ctx
            .resource(&resource_name)
            .ok_or_else(|| Refused::new(RefusalKind::UnknownResource, format!("unknown resource {resource_name:?}")))?;
        lexical::check_startup(&params).map_err(|reason| Refused::new(RefusalKind::Unsupported, reason))?;
        Ok(resource)
    };
    let admitted = match admit(services, &attempt, find, |r| &r.name).await {
        Ok(admitted) => admitted,
        Err(refused) => {
            refuse(&mut writer, refusal_code(refused.kind), &format!("tollgate: {}", refused.reason)).await;
            return None;
        }
    };
    let Admitted { agent, subject, resource, access, grant, policy_version } = admitted;
    let identity = agent.clone();
    let started = SessionStarted {
        client_addr: peer.to_string(),
        client_tls: tls,
        client_user,
        application_name: param("application_name"),
        upstream: UpstreamTarget {
            host: resource.host.clone(),
            port: resource.port,
            database: Some(resource.database.clone()),
            user: if access == Access::ReadOnly { resource.read_only().user.clone() } else { resource.user.clone() },
        },
        node_key: services.signer.public_hex(),
        policy_version: Some(policy_version),
        grant: Some(grant),
        access: Some(access),
    };
    // Nothing happens upstream before the session is on record.
    let where_ = ResourceRef { name: resource.name.clone(), kind: ResourceKind::Postgres };
    let recorder = match record_start(services, agent, where_, &started).await {
        Ok(recorder) => recorder,
        Err(e) => {
            tracing::warn!(error = %e, "session.started not recorded; refusing the agent");
            refuse(
                &mut writer,
                sqlstate::SYSTEM_ERROR,
                "tollgate: the session cannot be recorded (audit stream unavailable); refusing to connect",
            )
            .await;
            return None;
        }
    };
    let session = recorder.session();
    tracing::info!(%session, %peer, resource = %resource.name, agent = %subject, "session started");

    let mut relayed: Vec<(String, String)> =
        params.iter().filter(|(k, _)| RELAYED_PARAMS.contains(&k.as_str())).cloned().collect();
    // The server must read SQL as the proxy parses it; with a read-only grant, the upstream
    // itself refuses writes, whatever the statement.
    let mut options = lexical::UPSTREAM_OPTIONS.to_owned();
    if access == Access::ReadOnly {
        options.push_str(" -c default_transaction_read_only=on");
    }
    relayed.push(("options".into(), options));
    // A read-only grant logs in as the resource's read-only user when it has one: the
    // database's own privileges are the strongest boundary.
    let login_as = if access == Access::ReadOnly { resource.read_only() } else { resource.clone() };
    let login = upstream::connect(&login_as, &relayed, ctx.listener.max_message_bytes);
    let login = tokio::time::timeout(Duration::from_millis(ctx.listener.handshake_timeout_ms), login).await;
    let login = login.unwrap_or_else(|_| Err(upstream::UpstreamError::Protocol("login timed out".into())));
    let upstream = match login {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(%session, resource = %resource.name, error = %e, "upstream connection failed");
            refuse(
                &mut writer,
                sqlstate::CANNOT_CONNECT,
                &format!("tollgate: cannot open resource {:?}", resource.name),
            )
            .await;
            record_end(&recorder, EndReason::UpstreamFailed, Some(e.to_string()), 0).await;
            return None;
        }
    };

    // Calls are judged against the resource's functions: without them, no session.
    let catalog = match ctx.catalogs.get(&resource.name) {
        Some(cell) => cell.clone(),
        None => Arc::new(super::catalog::CatalogCell::new(resource.clone(), ctx.listener.max_message_bytes)),
    };
    if let Err(reason) = catalog.ensure().await {
        tracing::warn!(%session, resource = %resource.name, %reason, "function catalog unavailable");
        refuse(&mut writer, sqlstate::CANNOT_CONNECT, &format!("tollgate: {reason}")).await;
        record_end(&recorder, EndReason::UpstreamFailed, Some(reason), 0).await;
        return None;
    }
    let masker = crate::policy::masker(services.policy.borrow().as_deref(), &resource.name);
    let greeting = match relay_greeting(&upstream.greeting, &masker) {
        Ok(greeting) => greeting,
        Err(reason) => {
            tracing::warn!(%session, resource = %resource.name, %reason, "upstream session refused");
            refuse(&mut writer, sqlstate::FEATURE_NOT_SUPPORTED, &format!("tollgate: {reason}")).await;
            record_end(&recorder, EndReason::UpstreamFailed, Some(reason), 0).await;
            return None;
        }
    };
    let cancel_key = upstream.key.map(|k| ctx.cancels.register(k, resource.clone()));
    let mut frames: Vec<Bytes> = vec![messages::auth_ok()];
    for frame in greeting {
        if frame[0] == b'Z' {
            if let Some(key) = cancel_key {
                frames.push(messages::backend_key_data(key.pid, key.secret));
            }
        }
        frames.push(frame);
    }
    let greeting = frames;
    for frame in &greeting {
        if writer.write_all(frame).await.is_err() {
            record_end(&recorder, EndReason::ClientClosed, None, 0).await;
            return None;
        }
    }
    if writer.flush().await.is_err() {
        record_end(&recorder, EndReason::ClientClosed, None, 0).await;
        return None;
    }
    let (read, buffered) = reader.into_parts();
    let reader = FrameReader::with_buffer(read, buffered, ctx.listener.max_message_bytes);
    Some(Opened {
        agent: AgentConn { reader, writer },
        upstream,
        recorder,
        cancel_key,
        resource: resource.name.clone(),
        access,
        identity,
        catalog,
        recording: resource.recording,
    })
}
