//! The proxy's configuration: a TOML file (see deploy/proxy.example.toml) with `TOLLGATE_`
//! environment overrides. Credentials appear only as `env:`/`file:` references.

use serde::Deserialize;
use std::path::PathBuf;
use tollgate_shared::config::SecretRef;
use tollgate_shared::token::IssuerConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    #[serde(default)]
    pub node: NodeConfig,
    pub nats: NatsConfig,
    #[serde(default)]
    pub postgres: PgListenerConfig,
    /// Issuers whose tokens agents may present.
    #[serde(default)]
    pub agent_issuers: Vec<IssuerConfig>,
    /// The PostgreSQL resources this proxy can reach, with the credentials it holds for them.
    #[serde(default)]
    pub resources: Vec<PgResource>,
    /// The SSH listener; without it, no SSH is served.
    #[serde(default)]
    pub ssh: Option<SshListenerConfig>,
    /// The SSH hosts this proxy can reach, with the keys it holds for them.
    #[serde(default)]
    pub ssh_resources: Vec<SshResource>,
    #[serde(default)]
    pub policy: PolicyWatchConfig,
    #[serde(default)]
    pub approvals: ApprovalsConfig,
    /// Trust in the control plane.
    pub control: ControlPlaneConfig,
}

/// The control plane this proxy takes policy, standing approvals and decisions from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneConfig {
    /// Its public key (hex, as `tollgate-control public-key` prints it), or `file:PATH` of a
    /// file holding it. Control messages it did not sign are refused.
    pub public_key: String,
}

impl ControlPlaneConfig {
    pub fn key(&self) -> Result<tollgate_shared::control::ControlPublicKey, String> {
        let text = match self.public_key.strip_prefix("file:") {
            Some(path) => std::fs::read_to_string(path).map_err(|e| format!("control.public_key {path}: {e}"))?,
            None => self.public_key.clone(),
        };
        tollgate_shared::control::ControlPublicKey::parse(&text).map_err(|e| format!("control.public_key: {e}"))
    }
}

/// How held commands are announced to the agent.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// Base URL where people approve (the notice says `<url>/<approval id>`); without it the
    /// notice names the API route.
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyWatchConfig {
    /// How long startup waits for the policy before serving (agents are refused until it comes).
    #[serde(default = "default_policy_wait")]
    pub wait_at_start_ms: u64,
}

impl Default for PolicyWatchConfig {
    fn default() -> Self {
        PolicyWatchConfig { wait_at_start_ms: default_policy_wait() }
    }
}

fn default_policy_wait() -> u64 {
    5000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Recorded as `node` in every event.
    #[serde(default = "default_node_name")]
    pub name: String,
    /// PKCS#8 ed25519 key that signs the end of each session; created when missing. Without it
    /// the node makes a new key at every start.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig { name: default_node_name(), key_file: None }
    }
}

fn default_node_name() -> String {
    "proxy".to_owned()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// One server, or several separated by commas (a cluster).
    pub url: String,
    /// This node's nkey seed, by reference (`file:` or `env:`): `tollgate-control nats-config`
    /// makes one per node, and the NATS server lets it publish only this node's events.
    #[serde(default)]
    pub nkey: Option<SecretRef>,
    /// The CA that signed the NATS servers' certificates: TLS, verified (certificate and name).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How long a command waits for JetStream to acknowledge its event before it is refused.
    #[serde(default = "default_publish_timeout")]
    pub publish_timeout_ms: u64,
}

fn default_publish_timeout() -> u64 {
    2000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgListenerConfig {
    #[serde(default = "default_pg_listen")]
    pub listen: String,
    /// TLS for agents. Without it tokens cross the wire in clear (the proxy warns at startup).
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Connections beyond this wait in the kernel's accept queue.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Larger protocol messages are refused.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// Time an agent has to finish its handshake.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_ms: u64,
    /// Named prepared statements one session may hold; preparing more is refused (54000-like
    /// denial, rule `prepared_statement_limit`).
    #[serde(default = "default_max_prepared")]
    pub max_prepared_statements: usize,
}

impl Default for PgListenerConfig {
    fn default() -> Self {
        PgListenerConfig {
            listen: default_pg_listen(),
            tls: None,
            max_connections: default_max_connections(),
            max_message_bytes: default_max_message(),
            handshake_timeout_ms: default_handshake_timeout(),
            max_prepared_statements: default_max_prepared(),
        }
    }
}

fn default_pg_listen() -> String {
    "127.0.0.1:15432".to_owned()
}
fn default_max_connections() -> usize {
    1024
}
/// Enough for any statement and for the large values drivers bind or COPY in one message;
/// PostgreSQL's own limit is 1 GiB, which no proxy should buffer per session.
fn default_max_message() -> usize {
    64 * 1024 * 1024
}
fn default_max_prepared() -> usize {
    10_000
}
fn default_handshake_timeout() -> u64 {
    15_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A PostgreSQL database agents reach through the proxy, named by the `dbname` they ask for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgResource {
    pub name: String,
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    pub database: String,
    pub user: String,
    /// The upstream password, by reference. Absent for trust/peer-less setups.
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// A user with read-only privileges for sessions whose grant is read-only (the strongest
    /// boundary: the database's own privileges), and its password by reference.
    #[serde(default)]
    pub read_only_user: Option<String>,
    #[serde(default)]
    pub read_only_password: Option<SecretRef>,
    #[serde(default)]
    pub tls: UpstreamTls,
    /// When a statement may reach the upstream relative to its record (see [`Recording`]).
    #[serde(default)]
    pub recording: Recording,
}

/// `strict` (the default): a statement is forwarded only once its event is stored.
/// `overlapped`: it is forwarded while its event is being stored, and its response is held
/// until the event is stored. Faster (the upstream's work and the store's overlap), at a
/// stated cost: should the store fail or the proxy die in that window, the statement may have
/// run without its event on record (its result never reaches the agent, and the session ends).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Recording {
    #[default]
    Strict,
    Overlapped,
}

fn default_pg_port() -> u16 {
    5432
}

/// Where agents reach SSH hosts: `ssh <resource>@<listen>` with their token as the password.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshListenerConfig {
    pub listen: String,
    /// The gateway's own host key (an OpenSSH private key), by reference. Without it a new key
    /// is made at every start, which agents cannot pin: for development only.
    #[serde(default)]
    pub host_key: Option<SecretRef>,
    #[serde(default = "default_ssh_connections")]
    pub max_connections: usize,
    /// Time an agent has to authenticate.
    #[serde(default = "default_ssh_auth_ms")]
    pub auth_timeout_ms: u64,
    /// The CA (an OpenSSH private key, by reference) that signs agents' certificates in
    /// exchange for a verified token (`tollgate ssh-cert`), and whose certificates the gateway
    /// then accepts. Without it agents log in with their token only.
    #[serde(default)]
    pub user_ca: Option<SecretRef>,
    /// The longest an agent's certificate is valid (never past its token's expiry).
    #[serde(default = "default_certificate_ttl")]
    pub certificate_ttl_secs: u64,
}

fn default_certificate_ttl() -> u64 {
    3600
}

fn default_ssh_connections() -> usize {
    256
}

fn default_ssh_auth_ms() -> u64 {
    30_000
}

/// An SSH host agents reach through the proxy, named by the SSH user they log in as.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshResource {
    pub name: String,
    pub host: String,
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    /// The login on the host.
    pub user: String,
    /// The private key the proxy logs in with (OpenSSH format), by reference; or
    #[serde(default)]
    pub key: Option<SecretRef>,
    /// a CA (OpenSSH private key, by reference) the host trusts: the proxy logs in with a new
    /// key and a five-minute certificate for `user` signed by it, at every session.
    #[serde(default)]
    pub ca: Option<SecretRef>,
    /// The host's public key, pinned, as in known_hosts without the host name
    /// (`ssh-ed25519 AAAA...`). A host presenting another key is refused.
    pub host_key: String,
}

fn default_ssh_port() -> u16 {
    22
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    #[serde(default)]
    pub mode: UpstreamTlsMode,
    /// PEM bundle of CAs to trust; the public web roots when absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// `disable`, or `verify-full` (encrypted, certificate and host name checked). There is no
/// mode that encrypts without verifying: it would hand the credential to whoever answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTlsMode {
    #[default]
    Disable,
    VerifyFull,
}

impl PgResource {
    /// The login for a read-only session: the read-only user when configured, else this one.
    pub fn read_only(self: &std::sync::Arc<Self>) -> std::sync::Arc<PgResource> {
        match &self.read_only_user {
            Some(user) => std::sync::Arc::new(PgResource {
                user: user.clone(),
                password: self.read_only_password.clone(),
                ..(**self).clone()
            }),
            None => self.clone(),
        }
    }
}

impl ProxyConfig {
    /// Top-level keys, the only ones `TOLLGATE_*` variables override.
    const SECTIONS: &'static [&'static str] = &[
        "node",
        "nats",
        "postgres",
        "agent_issuers",
        "resources",
        "ssh",
        "ssh_resources",
        "policy",
        "approvals",
        "control",
    ];

    pub fn load(path: Option<&std::path::Path>) -> Result<Self, tollgate_shared::config::ConfigError> {
        let config: ProxyConfig = tollgate_shared::config::load(path, "TOLLGATE_", Self::SECTIONS, std::env::vars())?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), tollgate_shared::config::ConfigError> {
        use tollgate_shared::config::ConfigError::Invalid;
        let mut names = std::collections::HashSet::new();
        let all = self.resources.iter().map(|r| &r.name).chain(self.ssh_resources.iter().map(|r| &r.name));
        for name in all {
            if !names.insert(name.as_str()) {
                return Err(Invalid(format!("resource {name:?} is defined twice")));
            }
        }
        for r in &self.ssh_resources {
            crate::ssh::pinned_host_key(&r.host_key)
                .map_err(|e| Invalid(format!("ssh_resources {:?}: host_key: {e}", r.name)))?;
            if r.key.is_some() == r.ca.is_some() {
                return Err(Invalid(format!("ssh_resources {:?}: give either key or ca", r.name)));
            }
            if r.name == crate::ssh::certificate::EXCHANGE_USER {
                return Err(Invalid(format!("ssh_resources {:?}: the name is reserved for certificates", r.name)));
            }
        }
        for issuer in &self.agent_issuers {
            issuer.clone().resolve().map_err(Invalid)?;
        }
        self.control.key().map_err(Invalid)?;
        let node = &self.node.name;
        if !tollgate_shared::names::valid_node(node) {
            return Err(Invalid(format!("node.name {node:?}: use letters, digits, - and _ (and not \"control\")")));
        }
        Ok(())
    }

    pub fn resource(&self, name: &str) -> Option<&PgResource> {
        self.resources.iter().find(|r| r.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::ProxyConfig;

    /// The configurations the project ships parse with this code (their paths and keys are
    /// for the deployments they describe, so they are not validated here).
    #[test]
    fn shipped_configurations_parse() {
        for file in ["../deploy/proxy.example.toml", "../deploy/compose/proxy.toml"] {
            let path = std::path::Path::new(file);
            let parsed: Result<ProxyConfig, _> =
                tollgate_shared::config::load(Some(path), "TOLLGATE_", ProxyConfig::SECTIONS, std::iter::empty());
            assert!(parsed.is_ok(), "{file}: {:?}", parsed.err());
        }
    }
}
