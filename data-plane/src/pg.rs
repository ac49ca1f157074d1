//! The PostgreSQL data path: listener, agent handshake, upstream login, and the relay that
//! records every command.
//!
//! Lifecycle of one connection (see docs/postgres.md):
//! accept → SSLRequest? → StartupMessage → token as password → resource → `session.started`
//! (durable) → upstream login with the held credential → relay (command events durable before
//! forwarding, result events after) → `session.ended` (signed).

pub mod cancel;
pub mod catalog;
pub mod classify;
mod frame;
mod lexical;
pub mod mask;
mod messages;
mod names;
mod relay;
mod session;
mod startup;
mod upstream;

use crate::config::{PgListenerConfig, PgResource, ProxyConfig};
use crate::recorder::Publisher;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tollgate_shared::event::SessionSigner;
use tollgate_shared::jwks::Verifier;

/// Statements the proxy itself runs upstream (not on any agent's behalf), by exact text: the
/// upstream statement log check leaves them out.
pub const OWN_STATEMENTS: &[&str] = &[catalog::QUERY];

/// A byte stream to an agent or an upstream, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What every PostgreSQL session of this node shares.
pub struct PgContext {
    pub node: String,
    pub listener: PgListenerConfig,
    pub resources: Vec<Arc<PgResource>>,
    pub verifier: Verifier,
    pub publisher: Arc<Publisher>,
    pub signer: Arc<SessionSigner>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub cancels: cancel::CancelRegistry,
    /// Turns true when the node shuts down.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Statement classifications by text, shared by every session of this node.
    pub classifier: classify::ClassifyCache,
    /// The policy in force.
    pub policy: crate::policy::PolicyReceiver,
    /// Decisions on held commands.
    pub approvals: Arc<crate::approvals::ApprovalHub>,
    /// Standing approvals that let held commands run without a new request.
    pub standing: Arc<crate::grants::StandingApprovals>,
    /// Where people approve, for the notice a held agent gets (`<url>/<approval id>`).
    pub approval_url: Option<String>,
    /// Each resource's function catalog.
    pub catalogs: std::collections::HashMap<String, Arc<catalog::CatalogCell>>,
}

/// What every protocol listener of a node shares: built once in `Proxy::start`.
pub struct NodeServices {
    pub verifier: Verifier,
    pub publisher: Arc<Publisher>,
    pub signer: Arc<SessionSigner>,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    pub policy: crate::policy::PolicyReceiver,
    pub approvals: Arc<crate::approvals::ApprovalHub>,
    pub standing: Arc<crate::grants::StandingApprovals>,
}

impl PgContext {
    pub fn new(config: &ProxyConfig, services: NodeServices) -> anyhow::Result<Self> {
        let NodeServices { verifier, publisher, signer, shutdown, policy, approvals, standing } = services;
        let tls = match &config.postgres.tls {
            Some(files) => Some(crate::tls::acceptor(files)?),
            None => None,
        };
        let resources: Vec<Arc<PgResource>> = config.resources.iter().cloned().map(Arc::new).collect();
        let catalogs = resources
            .iter()
            .map(|r| {
                let cell = catalog::CatalogCell::new(r.clone(), config.postgres.max_message_bytes);
                (r.name.clone(), Arc::new(cell))
            })
            .collect();
        Ok(PgContext {
            node: config.node.name.clone(),
            listener: config.postgres.clone(),
            resources,
            catalogs,
            verifier,
            publisher,
            signer,
            tls,
            cancels: cancel::CancelRegistry::default(),
            shutdown,
            classifier: classify::ClassifyCache::new(10_000),
            policy,
            approvals,
            standing,
            approval_url: config.approvals.url.clone(),
        })
    }

    fn resource(&self, name: &str) -> Option<Arc<PgResource>> {
        self.resources.iter().find(|r| r.name == name).cloned()
    }
}

/// Accept agents until `shutdown` turns true, then wait for the sessions to end (each is told
/// the proxy is shutting down and records its end). Dropping the task ends every session too.
pub async fn serve(listener: TcpListener, ctx: Arc<PgContext>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(ctx.listener.max_connections));
    let mut sessions = JoinSet::new();
    let mut shutdown = ctx.shutdown.clone();
    loop {
        // Take the permit before accepting, so excess connections wait in the kernel's queue
        // instead of costing memory here.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let ctx = ctx.clone();
                sessions.spawn(async move {
                    session::run(ctx, tcp, peer).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    tracing::info!(sessions = sessions.len(), "listener closed; waiting for sessions to end");
    while sessions.join_next().await.is_some() {}
}
