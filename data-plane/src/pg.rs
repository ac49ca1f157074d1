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
use crate::session::NodeServices;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

/// Statements the proxy itself runs upstream (not on any agent's behalf), by exact text: the
/// upstream statement log check leaves them out.
pub const OWN_STATEMENTS: &[&str] = &[catalog::QUERY, catalog::NOT_NULL_QUERY, catalog::DEFERRABLE_TRIGGERS_QUERY];

/// A byte stream to an agent or an upstream, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What every PostgreSQL session of this node shares.
pub struct PgContext {
    pub services: Arc<NodeServices>,
    pub listener: PgListenerConfig,
    pub resources: Vec<Arc<PgResource>>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub cancels: cancel::CancelRegistry,
    /// Statement classifications by text, shared by every session of this node.
    pub classifier: classify::ClassifyCache,
    /// Each resource's function catalog.
    pub catalogs: std::collections::HashMap<String, Arc<catalog::CatalogCell>>,
}

impl PgContext {
    pub fn new(config: &ProxyConfig, services: Arc<NodeServices>) -> anyhow::Result<Self> {
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
            services,
            listener: config.postgres.clone(),
            resources,
            catalogs,
            tls,
            cancels: cancel::CancelRegistry::default(),
            classifier: classify::ClassifyCache::new(10_000),
        })
    }

    fn resource(&self, name: &str) -> Option<Arc<PgResource>> {
        self.resources.iter().find(|r| r.name == name).cloned()
    }
}

/// Serve PostgreSQL agents on the session core's accept loop.
pub async fn serve(listener: TcpListener, ctx: Arc<PgContext>) {
    let (max, shutdown) = (ctx.listener.max_connections, ctx.services.shutdown.clone());
    crate::session::listener::serve(listener, max, shutdown, move |tcp, peer| session::run(ctx.clone(), tcp, peer))
        .await;
}
