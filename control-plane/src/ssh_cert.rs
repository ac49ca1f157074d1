//! `tollgate ssh-cert`: trade an agent's token for a short-lived SSH user certificate signed by
//! the gateway's CA, for pipelines that log in with a key (`ssh -i key`, Ansible) rather than
//! a password. The exchange is SSH itself: log in to the gateway as the certificate user with
//! the token as the password, run `sign <public key>`, read the certificate. The gateway's host
//! key is pinned (the token must never reach another server).

use crate::cli::CliError;
use russh::keys::{Certificate, PublicKey, PublicKeyOrCertificate};
use russh::ChannelMsg;
use std::sync::Arc;
use std::time::Duration;
use tollgate_shared::names::SSH_CERTIFICATE_USER;

struct Pinned(PublicKey);

impl russh::client::Handler for Pinned {
    type Error = russh::Error;

    async fn check_server_key(&mut self, presented: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(matches!(presented, PublicKeyOrCertificate::PublicKey { key, .. } if key.key_data() == self.0.key_data()))
    }
}

/// What to ask for: the gateway (`host:port`), its pinned host key (`ssh-ed25519 AAAA...`),
/// the agent's token and the public key to certify (OpenSSH format).
pub struct Ask<'a> {
    pub gateway: &'a str,
    pub gateway_key: &'a str,
    pub token: &'a str,
    pub public_key: &'a str,
}

/// The certificate, as a line for `<key>-cert.pub`.
pub async fn request(ask: &Ask<'_>) -> Result<String, CliError> {
    let pinned = PublicKey::from_openssh(ask.gateway_key.trim())
        .map_err(|e| CliError::Input(format!("--gateway-key is not an OpenSSH public key ({e})")))?;
    PublicKey::from_openssh(ask.public_key.trim())
        .map_err(|e| CliError::Input(format!("the key to certify is not an OpenSSH public key ({e})")))?;
    let exchange = async {
        let config = Arc::new(russh::client::Config::default());
        let mut session = russh::client::connect(config, ask.gateway, Pinned(pinned)).await.map_err(|e| {
            CliError::Input(format!(
                "cannot reach the gateway at {} or its host key is not the pinned one ({e})",
                ask.gateway
            ))
        })?;
        let auth = session
            .authenticate_password(SSH_CERTIFICATE_USER, ask.token.trim())
            .await
            .map_err(|e| CliError::Input(format!("the gateway refused the login: {e}")))?;
        if !auth.success() {
            return Err(CliError::Input(
                "the gateway refused the token (its refusal is on record as auth.failed)".into(),
            ));
        }
        let mut channel = session.channel_open_session().await.map_err(|e| CliError::Input(e.to_string()))?;
        channel
            .exec(true, format!("sign {}", ask.public_key.trim()))
            .await
            .map_err(|e| CliError::Input(e.to_string()))?;
        let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), None);
        while let Some(message) = channel.wait().await {
            match message {
                ChannelMsg::Data { data } => out.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, .. } => err.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                _ => {}
            }
        }
        let _ = session.disconnect(russh::Disconnect::ByApplication, "", "en").await;
        Ok((out, err, status))
    };
    let (out, err, status) = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .map_err(|_| CliError::Input("the gateway did not answer in 30 s".into()))??;
    if status != Some(0) {
        let why = String::from_utf8_lossy(&err).trim().trim_start_matches("tollgate: ").to_owned();
        return Err(CliError::Input(format!("no certificate: {why}")));
    }
    let text = String::from_utf8(out).map_err(|_| CliError::Input("the gateway's answer is not text".into()))?;
    Certificate::from_openssh(text.trim())
        .map_err(|e| CliError::Input(format!("the gateway's answer is not a certificate ({e})")))?;
    Ok(format!("{}\n", text.trim()))
}
