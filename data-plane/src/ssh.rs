//! The SSH data path, on the session core: agents log in to the gateway with `ssh
//! <resource>@<gateway>` and their token as the password; the gateway logs in to the host with
//! the key it holds (the agent never sees it), after checking the host's pinned key. Each exec
//! request is a command: judged (guardrails and approval rules on the command line), held for
//! approval when a rule says so, recorded before it runs, its output masked on the way back
//! and its end recorded with the exit status.
//!
//! Lifecycle of one connection: accept → SSH handshake (the gateway's host key) → password =
//! token → admission (session core) → `session.started` (durable) → log in to the host →
//! channels (exec) → `session.ended` (signed).

pub mod certificate;
mod exec;
mod forward;
mod server;
mod sftp;
mod shell;
mod upstream;

use crate::config::{ProxyConfig, SshListenerConfig, SshResource};
use crate::session::NodeServices;
use anyhow::Context;
use russh::keys::{PrivateKey, PublicKey};
use std::sync::Arc;
use tokio::net::TcpListener;

/// What every SSH session of this node shares.
pub struct SshContext {
    pub services: Arc<NodeServices>,
    pub listener: SshListenerConfig,
    pub resources: Vec<Arc<SshResource>>,
    /// Signs agents' certificates and checks them at login, when configured.
    pub user_ca: Option<certificate::UserCa>,
    server: Arc<russh::server::Config>,
}

impl SshContext {
    pub fn new(
        config: &ProxyConfig,
        listener: &SshListenerConfig,
        services: Arc<NodeServices>,
    ) -> anyhow::Result<Self> {
        let host_key = match &listener.host_key {
            Some(reference) => {
                let text = reference.resolve().context("ssh.host_key")?;
                PrivateKey::from_openssh(text.trim()).context("ssh.host_key is not an OpenSSH private key")?
            }
            None => {
                tracing::warn!("ssh.host_key is not set: a new host key is made at every start (development only)");
                let mut seed = [0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
                    .map_err(|_| anyhow::anyhow!("no randomness for a host key"))?;
                PrivateKey::from(russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed))
            }
        };
        let mut resources = Vec::new();
        for resource in &config.ssh_resources {
            // Refuse to start with a key that cannot be read, rather than at an agent's login.
            upstream::Credential::load(resource)
                .map_err(|e| anyhow::anyhow!("ssh_resources {:?}: {e}", resource.name))?;
            resources.push(Arc::new(resource.clone()));
        }
        let user_ca = match &listener.user_ca {
            Some(reference) => {
                let text = reference.resolve().context("ssh.user_ca")?;
                let key = certificate::load_ca(&text).map_err(|e| anyhow::anyhow!("ssh.user_ca: {e}"))?;
                Some(certificate::UserCa::new(key, listener.certificate_ttl_secs))
            }
            None => None,
        };
        let mut methods = vec![russh::MethodKind::Password, russh::MethodKind::KeyboardInteractive];
        if user_ca.is_some() {
            methods.push(russh::MethodKind::PublicKey);
        }
        let server = russh::server::Config {
            keys: vec![host_key],
            methods: russh::MethodSet::from(&methods[..]),
            auth_rejection_time: std::time::Duration::from_millis(300),
            auth_rejection_time_initial: Some(std::time::Duration::ZERO),
            max_auth_attempts: 3,
            inactivity_timeout: None,
            nodelay: true,
            ..Default::default()
        };
        Ok(SshContext { services, listener: listener.clone(), resources, user_ca, server: Arc::new(server) })
    }

    /// The resource an SSH user names: `resource`, or `resource+login` (the login must be the
    /// one the resource logs in as: the gateway holds no other).
    fn resource(&self, user: &str) -> Result<Arc<SshResource>, String> {
        let (name, login) = match user.split_once('+') {
            Some((name, login)) => (name, Some(login)),
            None => (user, None),
        };
        let resource = self.resources.iter().find(|r| r.name == name).ok_or(format!("unknown resource {name:?}"))?;
        match login {
            Some(login) if login != resource.user => {
                Err(format!("resource {name:?} logs in as {:?}, not {login:?}", resource.user))
            }
            _ => Ok(resource.clone()),
        }
    }
}

/// Serve SSH agents on the session core's accept loop.
pub async fn serve(listener: TcpListener, ctx: Arc<SshContext>) {
    let (max, shutdown) = (ctx.listener.max_connections, ctx.services.shutdown.clone());
    crate::session::listener::serve(listener, max, shutdown, move |tcp, peer| server::run(ctx.clone(), tcp, peer))
        .await;
}

/// A host key as pinned in configuration: `ssh-ed25519 AAAA...` (a known_hosts entry without
/// its host names; a trailing comment is allowed).
pub fn pinned_host_key(text: &str) -> Result<PublicKey, String> {
    PublicKey::from_openssh(text.trim()).map_err(|e| format!("not an OpenSSH public key ({e})"))
}
