//! One agent connection: the SSH handshake, the token as the password (admitted by the session
//! core), the session's record and the login to the host, then one task per channel
//! (`exec.rs`), and `session.ended` once every channel has finished.

use super::certificate::{self, Exchange, EXCHANGE_USER};
use super::{exec, forward, upstream, SshContext};
use crate::config::SshResource;
use crate::recorder::SessionRecorder;
use crate::session::admit::{
    admit, record_end, record_refusal, record_start, Admitted, Attempt, Credential, RefusalKind, Refused,
};
use russh::server::{Auth, Msg, Session};
use russh::{Channel, ChannelId};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tollgate_shared::event::{EndReason, SessionStarted, UpstreamTarget};
use tollgate_shared::identity::{AgentIdentity, ResourceKind, ResourceRef};
use tollgate_shared::policy::Access;

/// Channels one connection may have open at once.
const MAX_CHANNELS: usize = 10;

/// A session opened for an authenticated agent.
pub struct Opened {
    pub recorder: SessionRecorder,
    pub resource: Arc<SshResource>,
    pub agent: AgentIdentity,
    pub access: Access,
    /// The logged-in host, or why the gateway could not log in.
    pub host: Result<upstream::Host, String>,
    pub commands: AtomicU64,
    /// Shells opened so far (each one's number in its recording).
    pub terminals: AtomicU32,
    channels: Mutex<JoinSet<()>>,
}

/// How SSH names each refusal in `auth.failed.code`.
fn refusal_code(kind: RefusalKind) -> &'static str {
    match kind {
        RefusalKind::BadToken => "ssh:bad_token",
        RefusalKind::NotAuthorized => "ssh:not_authorized",
        RefusalKind::UnknownResource => "ssh:unknown_resource",
        RefusalKind::Unsupported => "ssh:unsupported",
    }
}

/// The russh handler of one connection.
struct Agent {
    ctx: Arc<SshContext>,
    peer: SocketAddr,
    opened: Arc<OnceLock<Arc<Opened>>>,
    /// Told once `opened` is set (the connection then watches for a person ending it).
    opened_signal: Arc<tokio::sync::Notify>,
    /// Set instead when the agent logged in to trade its token for a certificate (which it
    /// must finish within the authentication deadline).
    exchange: Option<Arc<Exchange>>,
    exchanged: bool,
}

pub async fn run(ctx: Arc<SshContext>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let opened = Arc::new(OnceLock::new());
    let opened_signal = Arc::new(tokio::sync::Notify::new());
    let handler = Agent {
        ctx: ctx.clone(),
        peer,
        opened: opened.clone(),
        opened_signal: opened_signal.clone(),
        exchange: None,
        exchanged: false,
    };
    // A peer that never says hello holds a connection permit only until the deadline.
    let limit = Duration::from_millis(ctx.listener.auth_timeout_ms);
    let started = tokio::time::timeout(limit, russh::server::run_stream(ctx.server.clone(), tcp, handler));
    let mut stopping = ctx.services.shutdown.clone();
    let running = tokio::select! {
        started = started => match started {
            Ok(Ok(running)) => running,
            Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "SSH handshake failed"),
            Err(_) => return tracing::debug!(%peer, "SSH handshake timed out"),
        },
        _ = stopping.wait_for(|stop| *stop) => return,
    };
    let handle = running.handle();
    let mut shutdown = ctx.services.shutdown.clone();
    let auth_deadline = tokio::time::sleep(limit);
    tokio::pin!(running, auth_deadline);
    let mut reason = EndReason::ClientClosed;
    let mut ended_by = None;
    let mut stop: Option<crate::session::stops::StopWatch> = None;
    let goodbye = loop {
        tokio::select! {
            ended = &mut running => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "SSH connection ended with an error");
                }
                break None;
            }
            _ = &mut auth_deadline, if opened.get().is_none() => {
                // Woken at the deadline: only an agent still not authenticated is sent away.
                if opened.get().is_none() {
                    tracing::info!(%peer, "SSH agent did not authenticate in time");
                    break Some("tollgate: authentication timed out".to_owned());
                }
            }
            _ = shutdown.wait_for(|stop| *stop) => {
                reason = EndReason::Shutdown;
                break Some("tollgate: the proxy is shutting down".to_owned());
            }
            _ = opened_signal.notified(), if stop.is_none() => {
                stop = opened.get().map(|o| ctx.services.stops.watch(o.recorder.session()));
            }
            by = ended(&mut stop) => {
                reason = EndReason::EndedByPerson;
                let goodbye = format!("tollgate: this session was {by}");
                ended_by = Some(by.to_string());
                break Some(goodbye);
            }
        }
    };
    if let Some(message) = goodbye {
        let _ = handle.disconnect(russh::Disconnect::ByApplication, message, "en".into()).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut running).await;
    }
    let Some(opened) = opened.get() else { return };
    // Every channel's result is on record before the session's end: the agent is gone, so its
    // commands' host channels are being closed; their ends are awaited for a while.
    let mut channels = std::mem::take(&mut *opened.channels.lock().unwrap_or_else(|p| p.into_inner()));
    let drained = async { while channels.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(15), drained).await.is_err() {
        tracing::warn!(session = %opened.recorder.session(), "commands still running after the agent left; cut off");
        channels.abort_all();
        while channels.join_next().await.is_some() {}
    }
    let (reason, detail) = match &opened.host {
        Err(e) => (EndReason::UpstreamFailed, Some(e.clone())),
        Ok(_) => (reason, ended_by),
    };
    let commands = opened.commands.load(Ordering::Relaxed);
    tracing::info!(session = %opened.recorder.session(), ?reason, commands, "session ended");
    record_end(&opened.recorder, reason, detail, commands).await;
}

/// A person's request to end the session, once it is open and one arrives.
async fn ended(stop: &mut Option<crate::session::stops::StopWatch>) -> crate::session::stops::EndedBy {
    match stop {
        Some(stop) => stop.requested().await,
        None => std::future::pending().await,
    }
}

impl Agent {
    /// The token (a password or an answer) admits the agent or not; one session per connection.
    async fn authenticate(&mut self, user: &str, token: &str) -> Auth {
        if self.opened.get().is_some() || self.exchange.is_some() {
            return Auth::reject();
        }
        if user == EXCHANGE_USER {
            return self.exchange(token.trim()).await;
        }
        self.admit(user, Credential::Token(token.trim())).await
    }

    /// Admit the agent to the resource its SSH user names.
    async fn admit(&self, user: &str, credential: Credential<'_>) -> Auth {
        match self.open(user, credential).await {
            Ok(opened) => {
                let _ = self.opened.set(opened);
                self.opened_signal.notify_one();
                Auth::Accept
            }
            Err(refused) => {
                tracing::info!(peer = %self.peer, reason = %refused.reason, "SSH agent refused");
                Auth::reject()
            }
        }
    }

    /// A token traded for a certificate: verified and mapped like any other; the certificate's
    /// principals are judged when it is signed.
    async fn exchange(&mut self, token: &str) -> Auth {
        let services = &self.ctx.services;
        let attempt = Attempt {
            peer: self.peer,
            tls: true,
            client_user: EXCHANGE_USER,
            resource: EXCHANGE_USER,
            credential: Credential::Token(token),
            kind: ResourceKind::Ssh,
            code: refusal_code,
        };
        if self.ctx.user_ca.is_none() {
            let refused = Refused::new(RefusalKind::Unsupported, "this gateway signs no certificates (no ssh.user_ca)");
            record_refusal(services, &attempt, &refused, None);
            return Auth::reject();
        }
        match services.verifier.identify(token).await {
            Ok((verified, agent)) => {
                self.exchange = Some(Arc::new(Exchange { agent, token_expiry: verified.expires_at }));
                Auth::Accept
            }
            Err(e) => {
                let kind = match e {
                    tollgate_shared::token::TokenError::Identity(_) => RefusalKind::NotAuthorized,
                    _ => RefusalKind::BadToken,
                };
                record_refusal(services, &attempt, &Refused::new(kind, e.to_string()), None);
                Auth::reject()
            }
        }
    }

    /// Admit the agent, put the session on record and log in to the host.
    async fn open(&self, user: &str, credential: Credential<'_>) -> Result<Arc<Opened>, Refused> {
        let services = &self.ctx.services;
        let attempt = Attempt {
            peer: self.peer,
            tls: true,
            client_user: user,
            resource: user.split('+').next().unwrap_or(user),
            credential,
            kind: ResourceKind::Ssh,
            code: refusal_code,
        };
        let find =
            |_: &AgentIdentity| self.ctx.resource(user).map_err(|e| Refused::new(RefusalKind::UnknownResource, e));
        let Admitted { agent, subject, resource, access, grant, policy_version } =
            admit(services, &attempt, find, |r| &r.name).await?;
        let started = SessionStarted {
            client_addr: self.peer.to_string(),
            client_tls: true,
            client_user: user.to_owned(),
            application_name: None,
            upstream: UpstreamTarget {
                host: resource.host.clone(),
                port: resource.port,
                database: None,
                user: resource.user.clone(),
            },
            node_key: services.signer.public_hex(),
            policy_version: Some(policy_version),
            grant: Some(grant),
            access: Some(access),
        };
        let where_ = ResourceRef { name: resource.name.clone(), kind: ResourceKind::Ssh };
        let recorder = record_start(services, agent.clone(), where_, &started).await.map_err(|e| {
            tracing::warn!(error = %e, "session.started not recorded; refusing the agent");
            Refused::new(RefusalKind::NotAuthorized, "the session cannot be recorded")
        })?;
        tracing::info!(session = %recorder.session(), peer = %self.peer, resource = %resource.name, agent = %subject, "session started");
        let host = upstream::connect(&resource, Duration::from_millis(self.ctx.listener.auth_timeout_ms)).await;
        if let Err(e) = &host {
            tracing::warn!(session = %recorder.session(), resource = %resource.name, error = %e, "upstream login failed");
        }
        Ok(Arc::new(Opened {
            recorder,
            resource,
            agent,
            access,
            host,
            commands: AtomicU64::new(0),
            terminals: AtomicU32::new(0),
            channels: Mutex::new(JoinSet::new()),
        }))
    }
}

impl Agent {
    /// The opened session, when it may open one more channel (finished ones are reaped
    /// first). `None` refuses the channel: its reply is dropped.
    fn channel_room(&self) -> Option<Arc<Opened>> {
        let opened = self.opened.get().cloned()?;
        let mut channels = opened.channels.lock().unwrap_or_else(|p| p.into_inner());
        while channels.try_join_next().is_some() {}
        if channels.len() >= MAX_CHANNELS {
            tracing::info!(session = %opened.recorder.session(), "too many channels open at once; refused one");
            return None;
        }
        drop(channels);
        Some(opened)
    }
}

impl russh::server::Handler for Agent {
    type Error = russh::Error;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        Ok(self.authenticate(user, password).await)
    }

    /// The token as the answer to one prompt, for clients that offer keyboard-interactive.
    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        let Some(mut answers) = response else {
            return Ok(Auth::Partial {
                name: "Tollgate".into(),
                instructions: "Give the agent's OIDC token.".into(),
                prompts: vec![("Token: ".into(), false)].into(),
            });
        };
        let answer = answers.next().map(|a| String::from_utf8_lossy(&a).into_owned()).unwrap_or_default();
        Ok(self.authenticate(user, &answer).await)
    }

    /// A user certificate the gateway's CA signed: the identity inside is admitted like a
    /// token's, its grant judged under the policy of the moment.
    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &russh::keys::Certificate,
    ) -> Result<Auth, Self::Error> {
        if self.opened.get().is_some() || self.exchange.is_some() {
            return Ok(Auth::reject());
        }
        let resource = user.split('+').next().unwrap_or(user);
        let vouched = match &self.ctx.user_ca {
            Some(ca) => ca.vouch(certificate, resource, certificate::now()),
            None => Err("this gateway accepts no certificates".into()),
        };
        match vouched {
            Ok(agent) => Ok(self.admit(user, Credential::Vouched(&agent)).await),
            Err(why) => {
                // Who the certificate claims to be, never trusted: for the record only.
                let claimed = tollgate_shared::identity::AgentIdentity {
                    issuer: String::new(),
                    subject: certificate.key_id().chars().take(256).collect(),
                    ..Default::default()
                };
                let attempt = Attempt {
                    peer: self.peer,
                    tls: true,
                    client_user: user,
                    resource,
                    credential: Credential::Vouched(&claimed),
                    kind: ResourceKind::Ssh,
                    code: refusal_code,
                };
                record_refusal(&self.ctx.services, &attempt, &Refused::new(RefusalKind::BadToken, why), None);
                Ok(Auth::reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(exchange) = &self.exchange {
            // One certificate per login.
            if std::mem::replace(&mut self.exchanged, true) {
                return Ok(());
            }
            reply.accept().await;
            tokio::spawn(certificate::serve(self.ctx.clone(), exchange.clone(), channel));
            return Ok(());
        }
        let Some(opened) = self.channel_room() else { return Ok(()) };
        reply.accept().await;
        let task = exec::serve_channel(self.ctx.clone(), opened.clone(), channel, session.handle());
        opened.channels.lock().unwrap_or_else(|p| p.into_inner()).spawn(task);
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(opened) = self.channel_room() else { return Ok(()) };
        let to = forward::Destination {
            host: host_to_connect.to_owned(),
            port: port_to_connect,
            originator: originator_address.to_owned(),
            originator_port,
        };
        // Judged, recorded and opened on its own task; the reply waits for that.
        let task = forward::serve(self.ctx.clone(), opened.clone(), channel, reply, to);
        opened.channels.lock().unwrap_or_else(|p| p.into_inner()).spawn(task);
        Ok(())
    }

    // A terminal is answered by the channel's task (asked for on the host with what follows);
    // X11 and environment requests are refused here. Agent forwarding is refused by russh's
    // default (false).
    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }
}
