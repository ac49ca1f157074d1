//! The gateway's login to a host: the host must present its pinned key (anything else is
//! refused before a credential is offered), then the held private key authenticates.

use crate::config::SshResource;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use std::sync::Arc;
use std::time::Duration;

/// A logged-in connection to a host; each exec opens a channel on it.
pub type Host = russh::client::Handle<Pinned>;

/// The client side's one check: the host is the one pinned in configuration.
pub struct Pinned {
    expected: PublicKey,
    /// What the host presented, when it was not the pinned key (for the refusal's reason).
    mismatch: Arc<std::sync::Mutex<Option<String>>>,
}

impl russh::client::Handler for Pinned {
    type Error = russh::Error;

    async fn check_server_key(&mut self, presented: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let matches = match presented {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.key_data() == self.expected.key_data(),
            // A certificate is not the pinned key, whoever signed it.
            PublicKeyOrCertificate::Certificate(_) => false,
        };
        if !matches {
            let shown = match presented {
                PublicKeyOrCertificate::PublicKey { key, .. } => key.fingerprint(Default::default()).to_string(),
                PublicKeyOrCertificate::Certificate(_) => "a certificate".to_owned(),
            };
            if let Ok(mut slot) = self.mismatch.lock() {
                *slot = Some(shown);
            }
        }
        Ok(matches)
    }
}

/// What the gateway logs in to a host with: the key it holds, or a CA the host trusts.
pub enum Credential {
    Key(PrivateKey),
    Ca(PrivateKey),
}

impl Credential {
    pub fn load(resource: &SshResource) -> Result<Credential, String> {
        let (reference, what) = match (&resource.key, &resource.ca) {
            (Some(key), None) => (key, "key"),
            (None, Some(ca)) => (ca, "ca"),
            _ => return Err("give either key or ca".into()),
        };
        let text = reference.resolve().map_err(|e| format!("{what}: {e}"))?;
        let key =
            PrivateKey::from_openssh(text.trim()).map_err(|e| format!("{what} is not an OpenSSH private key ({e})"))?;
        Ok(if what == "key" { Credential::Key(key) } else { Credential::Ca(key) })
    }
}

/// Connect and log in as the resource's user with its key.
pub async fn connect(resource: &SshResource, timeout: Duration) -> Result<Host, String> {
    let login = async {
        let expected = super::pinned_host_key(&resource.host_key)?;
        let credential = Credential::load(resource)?;
        let tcp = tokio::net::TcpStream::connect((resource.host.as_str(), resource.port))
            .await
            .map_err(|e| format!("cannot reach {}:{}: {e}", resource.host, resource.port))?;
        let _ = tcp.set_nodelay(true);
        let mismatch = Arc::new(std::sync::Mutex::new(None));
        let handler = Pinned { expected, mismatch: mismatch.clone() };
        let config = Arc::new(russh::client::Config { nodelay: true, preferred: preferred(), ..Default::default() });
        let mut host = match russh::client::connect_stream(config, tcp, handler).await {
            Ok(host) => host,
            Err(e) => {
                let presented = mismatch.lock().ok().and_then(|m| m.clone());
                return Err(match presented {
                    Some(shown) => format!("host key mismatch: the host presented {shown}, not the pinned key"),
                    None => format!("SSH handshake failed: {e}"),
                });
            }
        };
        let auth = match credential {
            Credential::Key(key) => {
                let hash = host.best_supported_rsa_hash().await.map_err(|e| e.to_string())?.flatten();
                host.authenticate_publickey(resource.user.clone(), PrivateKeyWithHashAlg::new(Arc::new(key), hash))
                    .await
            }
            Credential::Ca(ca) => {
                let key_id = format!("tollgate {} for {}", resource.name, resource.user);
                let (key, certificate) = super::certificate::login_certificate(&ca, &resource.user, &key_id)?;
                host.authenticate_openssh_cert(resource.user.clone(), Arc::new(key), certificate).await
            }
        }
        .map_err(|e| format!("login failed: {e}"))?;
        if !auth.success() {
            return Err(format!("the host refused the key held for {:?}", resource.user));
        }
        Ok(host)
    };
    tokio::time::timeout(timeout, login).await.unwrap_or_else(|_| Err("login timed out".into()))
}

/// Algorithms the gateway asks hosts for, AES-GCM first: with the processor's AES instructions
/// it moves bulk data (scp, rsync) faster than ChaCha20 does here.
fn preferred() -> russh::Preferred {
    use russh::cipher;
    const CIPHERS: &[cipher::Name] =
        &[cipher::AES_256_GCM, cipher::CHACHA20_POLY1305, cipher::AES_256_CTR, cipher::AES_128_CTR];
    russh::Preferred { cipher: std::borrow::Cow::Borrowed(CIPHERS), ..Default::default() }
}
