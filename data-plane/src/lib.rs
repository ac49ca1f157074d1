//! `tollgate-proxy`: the stateless data-plane node. It authenticates agents by their OIDC
//! tokens, opens upstream connections with credentials it holds, and records every command as an
//! event on NATS JetStream before forwarding it.
//!
//! Invariant: this crate never depends on sqlx or axum; it knows the control plane only through
//! events.

pub mod approvals;
pub mod config;
pub mod control;
pub mod grants;
mod node_key;
pub mod pg;
pub mod policy;
pub mod recorder;
pub mod session;
pub mod ssh;
mod tls;

use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// A running proxy node. Dropping it stops the listener and every session it serves at once;
/// [`Proxy::shutdown`] lets sessions end on the record first.
pub struct Proxy {
    pub postgres_addr: SocketAddr,
    /// Where agents reach SSH hosts, when this node serves SSH.
    pub ssh_addr: Option<SocketAddr>,
    pub node_key: String,
    tasks: Vec<JoinHandle<()>>,
    /// One accept loop per protocol.
    listeners: Vec<JoinHandle<()>>,
    shutdown: tokio::sync::watch::Sender<bool>,
    policy: policy::PolicyReceiver,
    standing: Arc<grants::StandingApprovals>,
    trust: Arc<control::ControlTrust>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for task in self.tasks.iter().chain(&self.listeners) {
            task.abort();
        }
    }
}

impl Proxy {
    pub async fn start(config: config::ProxyConfig) -> anyhow::Result<Proxy> {
        config.validate()?;
        let signer = Arc::new(node_key::load_or_create(config.node.key_file.as_deref())?);
        if config.postgres.tls.is_none() {
            tracing::warn!(listen = %config.postgres.listen, "PostgreSQL listener without TLS: agent tokens cross the network in clear");
        }
        if config.agent_issuers.is_empty() {
            tracing::warn!("no agent_issuers configured: every agent will be refused");
        }
        let nats = tollgate_shared::stream::connect_options(
            &format!("tollgate-proxy {}", config.node.name),
            &config.node.name,
            config.nats.nkey.as_ref(),
            config.nats.ca_file.as_deref(),
        )
        .map_err(anyhow::Error::msg)?
        .connect(tollgate_shared::stream::servers(&config.nats.url))
        .await
        .with_context(|| format!("NATS at {}", config.nats.url))?;
        let trust = Arc::new(control::ControlTrust::new(config.control.key().map_err(anyhow::Error::msg)?));
        let (approvals, approvals_task) = approvals::ApprovalHub::start(nats.clone(), trust.clone()).await?;
        let (stops, stops_task) = session::stops::SessionStops::start(nats.clone(), trust.clone()).await?;
        let js = async_nats::jetstream::new(nats);
        let mut tasks = vec![approvals_task, stops_task];
        tasks.push(tokio::spawn(keep_stream(js.clone())));
        let (watcher, mut policy) = policy::spawn_watcher(js.clone(), trust.clone());
        tasks.push(watcher);
        let standing = Arc::new(grants::StandingApprovals::default());
        tasks.push(standing.spawn_watcher(js.clone(), trust.clone()));
        // Serve once the policy is known, but never wait forever: without one, agents are refused.
        let wait = Duration::from_millis(config.policy.wait_at_start_ms);
        if tokio::time::timeout(wait, policy.wait_for(Option::is_some)).await.is_err() {
            tracing::warn!(?wait, "no policy yet: agents are refused until one arrives");
        }

        let verifier =
            tollgate_shared::jwks::Verifier::new(config.agent_issuers.clone()).await.map_err(anyhow::Error::msg)?;
        tasks.push(verifier.spawn_refresh());
        let node_key = signer.public_hex();
        tasks.push(tokio::spawn(announce_node(js.clone(), config.node.name.clone(), node_key.clone())));
        let publisher = Arc::new(recorder::Publisher::new(
            js,
            config.node.name.clone(),
            Duration::from_millis(config.nats.publish_timeout_ms),
        ));
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let services = Arc::new(session::NodeServices {
            node: config.node.name.clone(),
            approval_url: config.approvals.url.clone(),
            verifier,
            publisher,
            signer,
            shutdown: shutdown_rx,
            policy: policy.clone(),
            approvals,
            stops,
            standing: standing.clone(),
        });
        let ctx = Arc::new(pg::PgContext::new(&config, services.clone())?);
        let ssh = match &config.ssh {
            Some(listen) => Some(Arc::new(ssh::SshContext::new(&config, listen, services)?)),
            None => None,
        };

        let listener = tokio::net::TcpListener::bind(&config.postgres.listen)
            .await
            .with_context(|| format!("binding PostgreSQL listener {}", config.postgres.listen))?;
        let postgres_addr = listener.local_addr()?;
        // Every listener bound before any serves: a failed bind leaves nothing running.
        let ssh = match ssh {
            Some(ssh) => {
                let bound = tokio::net::TcpListener::bind(&ssh.listener.listen)
                    .await
                    .with_context(|| format!("binding SSH listener {}", ssh.listener.listen))?;
                Some((bound, ssh))
            }
            None => None,
        };
        let ssh_addr = match &ssh {
            Some((bound, _)) => Some(bound.local_addr()?),
            None => None,
        };
        let mut listeners = vec![tokio::spawn(pg::serve(listener, ctx))];
        if let Some((bound, ssh)) = ssh {
            listeners.push(tokio::spawn(ssh::serve(bound, ssh)));
        }
        tracing::info!(node = %config.node.name, %postgres_addr, ssh_addr = ?ssh_addr, node_key = %node_key, "tollgate-proxy listening");
        Ok(Proxy { postgres_addr, ssh_addr, node_key, tasks, listeners, shutdown, policy, standing, trust })
    }

    /// How many standing approvals this node has loaded.
    pub fn standing_approvals(&self) -> usize {
        self.standing.len()
    }

    /// Control messages (policy versions, standing approvals, decisions) this node refused
    /// because they were unsigned, badly signed or out of order.
    pub fn refused_control_messages(&self) -> u64 {
        self.trust.refused()
    }

    /// The policy version this node enforces now (None: it refuses every agent).
    pub fn policy_version(&self) -> Option<u64> {
        self.policy.borrow().as_ref().map(|p| p.version)
    }

    /// Stop accepting, tell every session the proxy is going away (FATAL 57P01), and wait up
    /// to `grace` for each to record its end. Sessions still running then are cut off.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.shutdown.send(true);
        let aborts: Vec<_> = self.listeners.iter().map(JoinHandle::abort_handle).collect();
        let listeners = futures_util::future::join_all(std::mem::take(&mut self.listeners));
        if tokio::time::timeout(grace, listeners).await.is_err() {
            tracing::warn!(?grace, "sessions did not end in time; cutting them off");
            // Aborting a listener drops its sessions' tasks with it.
            aborts.iter().for_each(tokio::task::AbortHandle::abort);
        }
    }
}

/// Wait for the event stream (the control plane creates it), retrying while NATS is
/// unreachable. Until it exists, durable publishes fail and agents are refused.
async fn keep_stream(js: async_nats::jetstream::Context) {
    let mut delay = Duration::from_millis(200);
    loop {
        match js.get_stream(tollgate_shared::names::STREAM).await.map_err(|e| e.to_string()) {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "event stream not there yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Announce this node's signing key (`node.started`), so an admin can trust it; retried until
/// JetStream takes it.
async fn announce_node(js: async_nats::jetstream::Context, node: String, node_key: String) {
    use tollgate_shared::event::{kind, Chain, NodeStarted};
    use tollgate_shared::identity::{AgentIdentity, ResourceKind, ResourceRef};
    let nobody = AgentIdentity {
        issuer: String::new(),
        subject: String::new(),
        name: String::new(),
        groups: Vec::new(),
        attributes: Default::default(),
    };
    let resource = ResourceRef { name: node.clone(), kind: ResourceKind::Policy };
    let mut chain = Chain::new(uuid::Uuid::now_v7(), node, nobody, resource);
    let payload = NodeStarted { node_key, version: env!("CARGO_PKG_VERSION").to_owned() };
    let event = match chain.seal(kind::NODE_STARTED, &payload) {
        Ok(event) => event,
        Err(e) => return tracing::error!(error = %e, "cannot seal node.started"),
    };
    let mut delay = Duration::from_millis(200);
    loop {
        let published = async {
            let ack = tollgate_shared::stream::publish_event(&js, &event).await?;
            ack.await.map_err(|e| e.to_string())
        };
        match published.await {
            Ok(_) => return,
            Err(e) => tracing::warn!(error = %e, "node.started not recorded yet; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
