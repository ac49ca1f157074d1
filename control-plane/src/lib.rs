//! `tollgate-control`: the event-sourced control plane. It projects the event stream into
//! Postgres views and serves them over a REST API. It is never in the byte path between an agent
//! and a resource, and never holds a resource credential.

mod announce;
pub mod api;
pub mod cli;
pub mod config;
pub mod console;
pub mod dev_issuer;
pub mod fingerprint;
pub mod natsconf;
pub mod policy;
pub mod projector;
pub mod signing;
pub mod ssh_cert;
pub mod web;

use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// A running control plane. Dropping it stops the API and the projector.
pub struct Control {
    pub addr: SocketAddr,
    /// The public half of the key that signs control messages (hex): what proxies verify with.
    pub public_key: String,
    tasks: Vec<JoinHandle<()>>,
}

/// The control plane's signing key, from its file (created there on first start).
pub fn load_signing_key(path: &std::path::Path) -> anyhow::Result<tollgate_shared::control::ControlKey> {
    use tollgate_shared::control::ControlKey;
    let (der, created) = tollgate_shared::keys::load_or_create(path, || ControlKey::generate().map(|(_, der)| der))
        .map_err(anyhow::Error::msg)?;
    let key = ControlKey::from_pkcs8(&der).map_err(anyhow::Error::msg).with_context(|| path.display().to_string())?;
    if created {
        tracing::info!(path = %path.display(), public_key = %key.public_hex(), "created control plane signing key");
    }
    Ok(key)
}

impl Drop for Control {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Connect to NATS as the control plane.
pub async fn connect_nats(nats: &config::NatsConfig) -> anyhow::Result<async_nats::Client> {
    tollgate_shared::stream::connect_options(
        "tollgate-control",
        tollgate_shared::names::CONTROL_NODE,
        nats.nkey.as_ref(),
        nats.ca_file.as_deref(),
    )
    .map_err(anyhow::Error::msg)?
    .connect(tollgate_shared::stream::servers(&nats.url))
    .await
    .with_context(|| format!("NATS at {}", nats.url))
}

impl Control {
    pub async fn start(config: config::ControlConfig) -> anyhow::Result<Control> {
        let control_key = Arc::new(load_signing_key(&config.signing_key_file)?);
        let public_key = control_key.public_hex();
        if let Some(path) = &config.public_key_file {
            std::fs::write(path, format!("{public_key}\n")).with_context(|| format!("writing {}", path.display()))?;
        }
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .connect(&config.database_url)
            .await
            .context("connecting to the projections database")?;
        sqlx::migrate!("../migrations").run(&db).await.context("applying migrations")?;
        if config.reviewer_issuers.is_empty() {
            tracing::warn!("no reviewer_issuers configured: every API call will be refused");
        }
        let nats = connect_nats(&config.nats).await?;
        let js = async_nats::jetstream::new(nats.clone());
        let api_js = js.clone();
        let reviewers =
            tollgate_shared::jwks::Verifier::new(config.reviewer_issuers.clone()).await.map_err(anyhow::Error::msg)?;
        let stats = Arc::new(projector::ProjectorStats::default());
        let mut tasks = vec![
            tokio::spawn(ensure_storage(js.clone(), config.nats.replicas)),
            reviewers.spawn_refresh(),
            tokio::spawn(projector::backfill_fingerprints(db.clone())),
            tokio::spawn(projector::run(
                js,
                db.clone(),
                config.projector.batch_size.max(1),
                stats.clone(),
                tollgate_shared::control::ControlPublicKey::parse(&public_key).map_err(anyhow::Error::msg)?,
            )),
        ];
        if config.roles.is_empty() {
            tracing::warn!("no [roles] configured: every API call will be refused (403)");
        }
        if let Some(announcer) = announce::Announcer::new(db.clone(), config.slack.as_ref(), &config.webhooks)? {
            tasks.push(tokio::spawn(announcer.run(api_js.clone())));
        }
        let slack = match &config.slack {
            Some(slack) => Some(Arc::new(api::SlackInbound {
                signing_secret: slack.signing_secret.resolve()?.into_bytes(),
                users: slack.users.clone(),
            })),
            None => None,
        };
        let inbound_webhook = match &config.inbound_webhook {
            Some(hook) => Some(Arc::new(api::WebhookInbound {
                secret: hook.secret.resolve()?.into_bytes(),
                person: hook.person.clone(),
            })),
            None => None,
        };
        let console = match &config.console {
            Some(console) => {
                let console = Arc::new(console::Console::new(console.clone())?);
                tasks.push(tokio::spawn(console::listen(db.clone(), console.clone())));
                Some(console)
            }
            None => None,
        };
        let state = api::AppState {
            db,
            slack,
            inbound_webhook,
            reviewers,
            nats,
            stats,
            roles: Arc::new(config.roles.clone()),
            js: api_js,
            control_key,
            trusted_nodes: Arc::new(config.nodes.trusted.iter().map(|k| k.trim().to_ascii_lowercase()).collect()),
            self_links: Arc::new(config.approvals.self_links.clone()),
            deciding: Arc::default(),
            console: console.clone(),
        };
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let app = api::router(state);
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "API server stopped");
            }
        }));
        tracing::info!(%addr, public_key = %public_key, "tollgate-control listening");
        Ok(Control { addr, public_key, tasks })
    }
}

/// Create the event stream and the KV buckets proxies read (they may not create them),
/// retrying while NATS is away.
async fn ensure_storage(js: async_nats::jetstream::Context, replicas: usize) {
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        let made = async {
            tollgate_shared::stream::ensure_event_stream(&js, replicas).await?;
            tollgate_shared::stream::ensure_policy_bucket(&js, replicas).await?;
            tollgate_shared::stream::ensure_grants_bucket(&js, replicas).await
        };
        match made.await {
            Ok(_) => return,
            Err(e) => tracing::warn!(error = %e, "event stream or buckets not ready; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_secs(5));
    }
}

/// Publish an event of the control plane's own, signed (proxies act on decisions only with the
/// signature; the projector keeps unsigned control events aside). Returns the ack to await.
pub async fn publish_signed(
    js: &async_nats::jetstream::Context,
    key: &tollgate_shared::control::ControlKey,
    event: &tollgate_shared::event::SealedEvent,
) -> Result<async_nats::jetstream::context::PublishAckFuture, String> {
    let signature = key.sign(tollgate_shared::control::ControlKind::Event, &event.bytes);
    tollgate_shared::stream::publish_signed_event(js, event, &signature).await
}
