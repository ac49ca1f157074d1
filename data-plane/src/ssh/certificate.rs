//! OpenSSH certificates, both ways.
//!
//! **Agents**: a pipeline that cannot type a password trades its token for a short-lived user
//! certificate (`tollgate ssh-cert`): it logs in as [`EXCHANGE_USER`] with the token, runs
//! `sign <public key>`, and gets back a certificate signed by the gateway's user CA. Inside: the
//! agent's identity (an extension), the SSH resources its grants reach (the principals), and
//! an expiry no later than the token's. At login the gateway checks the certificate (its CA,
//! type, validity, principals, no unknown critical option) and admits the identity inside
//! through the same admission as a token: the grant is judged again under the policy of the
//! moment, so a revoked grant ends the certificate's use too.
//!
//! **Hosts**: a resource configured with `ca` instead of `key` is logged in to with a fresh
//! key and a five-minute certificate for its login, signed by that CA, at every session.

use super::SshContext;
use crate::session::NodeServices;
use bytes::Bytes;
use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::{Certificate, Fingerprint, HashAlg};
use russh::keys::{PrivateKey, PublicKey};
use russh::server::Msg;
use russh::{Channel, ChannelMsg};
use tollgate_shared::event::{kind, CertificateIssued, Chain};
use tollgate_shared::identity::{AgentIdentity, ResourceKind, ResourceRef};
use tollgate_shared::policy::Judgement;
use uuid::Uuid;

/// The SSH user an agent logs in as to trade its token for a certificate.
pub const EXCHANGE_USER: &str = tollgate_shared::names::SSH_CERTIFICATE_USER;
/// The extension that carries the agent's identity (JSON).
const IDENTITY: &str = "identity@tollgate";
/// Clocks differ: a certificate is valid from a minute before it was signed.
const SKEW_SECS: u64 = 60;
/// How long a certificate the gateway signs for its own login to a host is valid.
const LOGIN_SECS: u64 = 300;

fn random<const N: usize>() -> Result<[u8; N], String> {
    let mut bytes = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| "no randomness".to_owned())?;
    Ok(bytes)
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Load a CA key (OpenSSH private key text).
pub fn load_ca(text: &str) -> Result<PrivateKey, String> {
    PrivateKey::from_openssh(text.trim()).map_err(|e| format!("not an OpenSSH private key ({e})"))
}

/// The gateway's user CA: signs agents' certificates and checks them at login.
pub struct UserCa {
    key: PrivateKey,
    fingerprint: Fingerprint,
    ttl_secs: u64,
}

/// What an agent asked a certificate for, once its token verified.
pub struct Request<'a> {
    pub agent: &'a AgentIdentity,
    pub public_key: &'a str,
    /// The SSH resources its grants reach now.
    pub principals: Vec<String>,
    /// When its token expires (Unix seconds).
    pub token_expiry: u64,
}

impl UserCa {
    pub fn new(key: PrivateKey, ttl_secs: u64) -> Self {
        let fingerprint = key.public_key().fingerprint(HashAlg::Sha256);
        UserCa { key, fingerprint, ttl_secs }
    }

    /// Sign a user certificate for `request`, valid from a minute ago until the sooner of
    /// the TTL and the token's expiry.
    pub fn sign(&self, request: &Request<'_>, now: u64) -> Result<Certificate, String> {
        let key = PublicKey::from_openssh(request.public_key.trim())
            .map_err(|e| format!("not an OpenSSH public key ({e})"))?;
        if request.principals.is_empty() {
            return Err("no grant gives this agent any SSH resource".into());
        }
        let until = request.token_expiry.min(now.saturating_add(self.ttl_secs));
        if until <= now {
            return Err("the token has expired".into());
        }
        let identity = serde_json::to_string(request.agent).map_err(|e| e.to_string())?;
        let nonce = random::<32>()?;
        let mut builder = Builder::new(nonce.to_vec(), key.key_data().clone(), now.saturating_sub(SKEW_SECS), until)
            .map_err(|e| e.to_string())?;
        let agent = request.agent;
        builder
            .serial(u64::from_be_bytes(random::<8>()?))
            .and_then(|b| b.cert_type(CertType::User))
            .and_then(|b| b.key_id(format!("{} ({} {})", agent.name, agent.issuer, agent.subject)))
            .and_then(|b| b.extension(IDENTITY, identity))
            .map_err(|e| e.to_string())?;
        for principal in &request.principals {
            builder.valid_principal(principal.clone()).map_err(|e| e.to_string())?;
        }
        builder.sign(&self.key).map_err(|e| format!("cannot sign: {e}"))
    }

    /// The identity a certificate vouches for, when it may log in to `resource` now.
    pub fn vouch(&self, certificate: &Certificate, resource: &str, now: u64) -> Result<AgentIdentity, String> {
        certificate
            .validate_at(now, [&self.fingerprint])
            .map_err(|_| "the certificate is not signed by this gateway's CA, or is not valid now".to_owned())?;
        if certificate.cert_type() != CertType::User {
            return Err("not a user certificate".into());
        }
        if let Some((name, _)) = certificate.critical_options().iter().next() {
            return Err(format!("the certificate has a critical option the gateway does not know ({name})"));
        }
        if !certificate.valid_principals().iter().any(|p| p == resource) {
            return Err(format!("the certificate is not valid for resource {resource:?}"));
        }
        let identity = certificate.extensions().get(IDENTITY).ok_or("the certificate names no agent")?;
        serde_json::from_str(identity).map_err(|e| format!("the certificate's agent cannot be read ({e})"))
    }
}

/// A fresh key and a certificate for `user` signed by `ca`, for the gateway's own login.
pub fn login_certificate(ca: &PrivateKey, user: &str, key_id: &str) -> Result<(PrivateKey, Certificate), String> {
    let key = PrivateKey::from(russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&random::<32>()?));
    let now = now();
    let mut builder = Builder::new(
        random::<32>()?.to_vec(),
        key.public_key().key_data().clone(),
        now.saturating_sub(SKEW_SECS),
        now + LOGIN_SECS,
    )
    .map_err(|e| e.to_string())?;
    builder
        .serial(u64::from_be_bytes(random::<8>()?))
        .and_then(|b| b.cert_type(CertType::User))
        .and_then(|b| b.key_id(key_id))
        .and_then(|b| b.valid_principal(user))
        // OpenSSH allows a terminal and forwarding only when the certificate says so; what the
        // agent may do is the gateway's judgement, made before the host sees anything.
        .and_then(|b| b.extension("permit-pty", ""))
        .and_then(|b| b.extension("permit-port-forwarding", ""))
        .map_err(|e| e.to_string())?;
    let certificate = builder.sign(ca).map_err(|e| format!("cannot sign: {e}"))?;
    Ok((key, certificate))
}

/// An agent logged in to trade its token.
pub struct Exchange {
    pub agent: AgentIdentity,
    pub token_expiry: u64,
}

/// Serve the exchange's one channel: `sign <public key>` → the certificate on stdout.
pub async fn serve(ctx: std::sync::Arc<SshContext>, exchange: std::sync::Arc<Exchange>, channel: Channel<Msg>) {
    let (mut from, to) = channel.split();
    while let Some(message) = from.wait().await {
        let command = match message {
            ChannelMsg::Exec { command, .. } => command,
            ChannelMsg::Close | ChannelMsg::Eof => return,
            ChannelMsg::RequestShell { .. } | ChannelMsg::RequestSubsystem { .. } => Vec::new(),
            _ => continue,
        };
        let (status, out, err) = match issue(&ctx, &exchange, &command).await {
            Ok(certificate) => (0, format!("{certificate}\n"), String::new()),
            Err(why) => (1, String::new(), format!("tollgate: {why}\r\n")),
        };
        if !out.is_empty() {
            let _ = to.data_bytes(Bytes::from(out)).await;
        }
        if !err.is_empty() {
            let _ = to.extended_data_bytes(1, Bytes::from(err)).await;
        }
        let _ = to.exit_status(status).await;
        let _ = to.eof().await;
        let _ = to.close().await;
        return;
    }
}

/// Judge and sign; the certificate is on record (durable) before the agent has it.
async fn issue(ctx: &SshContext, exchange: &Exchange, command: &[u8]) -> Result<String, String> {
    let ca = ctx.user_ca.as_ref().ok_or("this gateway signs no certificates")?;
    let command = std::str::from_utf8(command).map_err(|_| "the request is not UTF-8")?;
    let public_key = command.strip_prefix("sign ").ok_or("ask with `sign <OpenSSH public key>`")?;
    let principals = granted(&ctx.services, &exchange.agent, ctx.resources.iter().map(|r| r.name.as_str()));
    let request = Request { agent: &exchange.agent, public_key, principals, token_expiry: exchange.token_expiry };
    let certificate = ca.sign(&request, now())?;
    let issued = CertificateIssued {
        serial: format!("{:016x}", certificate.serial()),
        key_id: certificate.key_id().to_owned(),
        principals: certificate.valid_principals().to_vec(),
        valid_after: certificate.valid_after(),
        valid_before: certificate.valid_before(),
        public_key: certificate.public_key().fingerprint(HashAlg::Sha256).to_string(),
    };
    let resource = ResourceRef { name: EXCHANGE_USER.into(), kind: ResourceKind::Ssh };
    let mut chain = Chain::new(Uuid::now_v7(), ctx.services.node.clone(), exchange.agent.clone(), resource);
    let event = chain.seal(kind::CERTIFICATE_ISSUED, &issued).map_err(|e| e.to_string())?;
    ctx.services
        .publisher
        .durable(vec![event])
        .await
        .map_err(|e| format!("the certificate cannot be recorded ({e}); none was issued"))?;
    tracing::info!(agent = %exchange.agent.name, serial = %issued.serial, principals = ?issued.principals, "SSH certificate issued");
    certificate.to_openssh().map_err(|e| e.to_string())
}

/// The resources among `names` that the policy grants `agent` now, as SSH resources.
fn granted<'a>(node: &NodeServices, agent: &AgentIdentity, names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let policy = node.policy.borrow().clone();
    let Some(policy) = policy else { return Vec::new() };
    let at = chrono::Utc::now();
    names
        .filter(|name| policy.document.resource(name).is_some_and(|r| r.kind == ResourceKind::Ssh))
        .filter(|name| matches!(policy.document.judge(agent, name, at), Judgement::Allowed { .. }))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests;
