//! The control plane's configuration: a TOML file (see deploy/control.example.toml) with
//! `TOLLGATE_` environment overrides.

use serde::Deserialize;
use tollgate_shared::token::IssuerConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    /// PostgreSQL URL of the projections database. Prefer the `TOLLGATE_DATABASE_URL`
    /// override to writing a password here.
    pub database_url: String,
    pub nats: NatsConfig,
    /// The control plane's ed25519 key (PKCS#8), created there on first start. It signs policy
    /// versions, standing approvals and approval decisions; proxies are configured with its
    /// public key (`tollgate-control public-key`) and refuse what it did not sign.
    pub signing_key_file: std::path::PathBuf,
    /// Where to write the public key at startup (hex), for proxies to read
    /// (`[control] public_key = "file:..."`).
    #[serde(default)]
    pub public_key_file: Option<std::path::PathBuf>,
    /// Issuers whose tokens reviewers present to the API.
    #[serde(default)]
    pub reviewer_issuers: Vec<IssuerConfig>,
    #[serde(default)]
    pub projector: ProjectorConfig,
    /// Groups (from the reviewer issuers' identity mapping) that grant each role.
    #[serde(default)]
    pub roles: crate::api::RoleConfig,
    /// Approval requests posted to Slack with Approve / Deny buttons.
    #[serde(default)]
    pub slack: Option<SlackConfig>,
    /// Signed notifications of every approval request and decision.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// Signed decisions from another system (`POST /webhooks/decisions`).
    #[serde(default)]
    pub inbound_webhook: Option<InboundWebhookConfig>,
    /// Proxies whose sessions verify as trusted.
    #[serde(default)]
    pub nodes: NodesConfig,
    #[serde(default)]
    pub approvals: ApprovalsConfig,
    /// The web console for reviewers and approvers, signed in with an identity provider.
    #[serde(default)]
    pub console: Option<ConsoleConfig>,
}

/// `[console]`: people sign in with `issuer` (OpenID Connect, authorization code with PKCE).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// The identity provider's issuer URL, exactly as its tokens name it. It must also be one of
    /// `reviewer_issuers`: its identity mapping gives people their groups, and so their roles.
    pub issuer: String,
    /// The console's client id at the provider (the ID token's audience).
    pub client_id: String,
    /// For a confidential client, its secret by reference (`env:...`, `file:...`).
    #[serde(default)]
    pub client_secret: Option<tollgate_shared::config::SecretRef>,
    /// The control plane's address as browsers reach it; the redirect URI registered at the
    /// provider is `<public_url>/console/callback`.
    pub public_url: String,
    /// Scopes asked for (`openid` first).
    #[serde(default = "default_console_scopes")]
    pub scopes: Vec<String>,
    /// How long a sign-in lasts.
    #[serde(default = "default_console_session_minutes")]
    pub session_minutes: u64,
}

fn default_console_scopes() -> Vec<String> {
    vec!["openid".into(), "profile".into(), "groups".into()]
}

fn default_console_session_minutes() -> u64 {
    480
}

/// Node keys trusted without an admin's decision.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodesConfig {
    /// Public keys (hex) of the proxies' node keys (`node_key` in each proxy's startup log).
    #[serde(default)]
    pub trusted: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// Slack's Web API base (a local fake in tests).
    #[serde(default = "default_slack_api")]
    pub api_base: String,
    /// The app's bot token (`xoxb-...`), by reference.
    pub bot_token: tollgate_shared::config::SecretRef,
    /// The app's signing secret, by reference: interactive callbacks are verified with it.
    pub signing_secret: tollgate_shared::config::SecretRef,
    /// Channel id the requests are posted to.
    pub channel: String,
    /// Slack user id → the person it is (their groups decide their roles and approver groups).
    #[serde(default)]
    pub users: std::collections::BTreeMap<String, PersonConfig>,
}

fn default_slack_api() -> String {
    "https://slack.com/api".into()
}

/// A person deciding through another channel (a Slack user, a webhook's signer), named as the
/// reviewer issuer names them, so a person is one identity in every channel: one vote, and the
/// same self-approval checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonConfig {
    /// The reviewer issuer they sign in to the API with (its exact `iss`).
    pub issuer: String,
    /// Their `sub` at that issuer.
    pub subject: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Claims of theirs the self-approval links compare (`preferred_username`, `email`...).
    #[serde(default)]
    pub claims: std::collections::BTreeMap<String, String>,
}

/// How approvals are judged beyond the policy's rules.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// Links from an agent's claims to a person's: whoever a link matches started the run and
    /// may not approve it (e.g. the CI `actor` and the reviewer's `preferred_username`).
    #[serde(default)]
    pub self_links: Vec<SelfLink>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfLink {
    /// A claim of the agent's token (kept in its identity's attributes), e.g. `actor`.
    pub agent_claim: String,
    /// A claim of the person's (their reviewer token's kept claims, or a channel person's
    /// `claims`; `sub` and `name` too), e.g. `preferred_username`.
    pub person_claim: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// HMAC-SHA256 key, by reference.
    pub secret: tollgate_shared::config::SecretRef,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundWebhookConfig {
    /// HMAC-SHA256 key the sender signs with, by reference.
    pub secret: tollgate_shared::config::SecretRef,
    /// Who decides through it: every decision it signs is this person's (a body never names
    /// its approver).
    pub person: PersonConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// One server, or several separated by commas (a cluster).
    pub url: String,
    /// The control plane's nkey seed, by reference (`file:` or `env:`).
    #[serde(default)]
    pub nkey: Option<tollgate_shared::config::SecretRef>,
    /// The CA that signed the NATS servers' certificates: TLS, verified.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Copies of the event stream and the buckets the control plane creates (3 in a
    /// three-node JetStream cluster).
    #[serde(default = "one_replica")]
    pub replicas: usize,
}

fn one_replica() -> usize {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectorConfig {
    /// Most events written in one transaction.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        ProjectorConfig { batch_size: default_batch() }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".to_owned()
}
fn default_batch() -> usize {
    256
}

impl ControlConfig {
    /// Top-level keys, the only ones `TOLLGATE_*` variables override.
    const SECTIONS: &'static [&'static str] = &[
        "listen",
        "database_url",
        "nats",
        "signing_key_file",
        "public_key_file",
        "reviewer_issuers",
        "projector",
        "roles",
        "slack",
        "webhooks",
        "inbound_webhook",
        "nodes",
        "approvals",
        "console",
    ];

    pub fn load(path: Option<&std::path::Path>) -> Result<Self, tollgate_shared::config::ConfigError> {
        let config: ControlConfig = tollgate_shared::config::load(path, "TOLLGATE_", Self::SECTIONS, std::env::vars())?;
        for issuer in &config.reviewer_issuers {
            issuer.clone().resolve().map_err(tollgate_shared::config::ConfigError::Invalid)?;
        }
        if let Some(console) = &config.console {
            if !config.reviewer_issuers.iter().any(|i| i.issuer == console.issuer) {
                return Err(tollgate_shared::config::ConfigError::Invalid(format!(
                    "console.issuer {:?} is not one of reviewer_issuers: its identity mapping gives people their roles",
                    console.issuer
                )));
            }
        }
        if !(1..=5).contains(&config.nats.replicas) {
            return Err(tollgate_shared::config::ConfigError::Invalid(format!(
                "nats.replicas is {}: JetStream keeps 1 to 5 copies (3 in a three-server cluster)",
                config.nats.replicas
            )));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::ControlConfig;

    /// The configurations the project ships parse with this code.
    #[test]
    fn shipped_configurations_parse() {
        for file in ["../deploy/control.example.toml", "../deploy/compose/control.toml"] {
            let path = std::path::Path::new(file);
            let parsed: Result<ControlConfig, _> =
                tollgate_shared::config::load(Some(path), "TOLLGATE_", ControlConfig::SECTIONS, std::iter::empty());
            assert!(parsed.is_ok(), "{file}: {:?}", parsed.err());
        }
    }

    /// A replica count JetStream cannot keep is refused at load, with the reason.
    #[test]
    fn replicas_out_of_range_are_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("control.toml");
        let text = std::fs::read_to_string("../deploy/control.example.toml").expect("example");
        let edited = text.replacen("replicas = 3", "replicas = 7", 1);
        std::fs::write(&path, edited).expect("write");
        let err = ControlConfig::load(Some(&path)).expect_err("seven replicas refused");
        assert!(err.to_string().contains("nats.replicas is 7"), "{err}");
    }
}
