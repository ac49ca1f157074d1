//! `tollgate login`: a person signs the command line in with their identity provider by the
//! device authorization grant (RFC 8628, through `openidconnect`): the CLI shows a code and an
//! address, the person signs in there in any browser, and the CLI, polling, receives the
//! tokens. It checks the ID token (signature by the provider's published keys, issuer,
//! audience, expiry) and keeps the access token, readable by its owner only, for the next
//! commands.

use super::CliError;
use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClient, CoreClientAuthMethod, CoreDeviceAuthorizationResponse,
    CoreGrantType, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreResponseMode,
    CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AdditionalProviderMetadata, ClientId, DeviceAuthorizationUrl, IssuerUrl, Nonce, OAuth2TokenResponse,
    ProviderMetadata, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The discovery document's device endpoint, which the core metadata does not carry.
#[derive(Clone, Debug, Deserialize, Serialize)]
struct DeviceEndpoint {
    device_authorization_endpoint: Option<DeviceAuthorizationUrl>,
}
impl AdditionalProviderMetadata for DeviceEndpoint {}

type DeviceProviderMetadata = ProviderMetadata<
    DeviceEndpoint,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// What `tollgate login` keeps between commands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub issuer: String,
    pub client_id: String,
    /// The person the ID token names (`sub`).
    pub subject: String,
    pub access_token: String,
    /// When the access token stops working, if the provider said.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The control plane's API this sign-in is for: the token is sent nowhere else.
    pub api: String,
}

/// Where to sign in.
pub struct Login<'a> {
    /// The control plane's API the token will be used with.
    pub api: &'a str,
    pub issuer: &'a str,
    pub client_id: &'a str,
    /// Scopes besides `openid`.
    pub scopes: &'a [String],
    /// Give up waiting for the person after this long.
    pub timeout: Duration,
}

/// What the person must do, shown before the CLI starts waiting.
pub struct Instructions {
    pub verification_uri: String,
    pub user_code: String,
    /// The address with the code already in it, when the provider offers one.
    pub verification_uri_complete: Option<String>,
}

impl std::fmt::Display for Instructions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "To sign in, open {} and enter the code {}", self.verification_uri, self.user_code)?;
        if let Some(complete) = &self.verification_uri_complete {
            write!(f, "\n(or open {complete})")?;
        }
        Ok(())
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::Input(format!("{what}: {e}"))
}

/// Sign in: discovery, the device authorization, `show` the instructions, then poll until the
/// person answers (or the code expires, or `timeout`).
pub async fn login(request: &Login<'_>, show: impl FnOnce(&Instructions)) -> Result<Credentials, CliError> {
    // The address the token will be bound to is checked before anyone signs in.
    let api = api_origin(request.api)?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()?;
    let issuer = IssuerUrl::new(request.issuer.to_owned()).map_err(|e| failed("issuer URL", e))?;
    let metadata = DeviceProviderMetadata::discover_async(issuer, &http)
        .await
        .map_err(|e| failed(&format!("discovery of {}", request.issuer), e))?;
    let device_endpoint = metadata.additional_metadata().device_authorization_endpoint.clone().ok_or_else(|| {
        CliError::Input(format!("{} offers no device sign-in (no device_authorization_endpoint)", request.issuer))
    })?;
    let client = CoreClient::from_provider_metadata(metadata, ClientId::new(request.client_id.to_owned()), None)
        .set_device_authorization_url(device_endpoint);
    let details: CoreDeviceAuthorizationResponse = client
        .exchange_device_code()
        .add_scopes(request.scopes.iter().filter(|s| *s != "openid").map(|s| Scope::new(s.clone())))
        .request_async(&http)
        .await
        .map_err(|e| failed("device authorization", e))?;
    show(&Instructions {
        verification_uri: details.verification_uri().to_string(),
        user_code: details.user_code().secret().clone(),
        verification_uri_complete: details.verification_uri_complete().map(|u| u.secret().clone()),
    });
    let tokens = client
        .exchange_device_access_token(&details)
        .map_err(|e| failed("the provider has no token endpoint", e))?
        .request_async(&http, tokio::time::sleep, Some(request.timeout))
        .await
        .map_err(|e| match e {
            openidconnect::RequestTokenError::ServerResponse(answer) => {
                CliError::Input(format!("sign-in refused: {}", answer.error()))
            }
            other => failed("sign-in", other),
        })?;
    let id_token = tokens.id_token().ok_or_else(|| CliError::Input("the provider sent no ID token".into()))?;
    // A device sign-in carries no nonce: the code was bound to this client by the provider.
    let claims = id_token
        .claims(&client.id_token_verifier(), |_: Option<&Nonce>| Ok(()))
        .map_err(|e| failed("the ID token did not verify", e))?;
    let expires_at = tokens
        .expires_in()
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .and_then(|d| chrono::Utc::now().checked_add_signed(d));
    Ok(Credentials {
        issuer: request.issuer.to_owned(),
        client_id: request.client_id.to_owned(),
        subject: claims.subject().as_str().to_owned(),
        access_token: tokens.access_token().secret().clone(),
        expires_at,
        api,
    })
}

/// The origin of an API address (`scheme://host:port`), which a kept token is bound to. Plain
/// http only on a loopback address: the token is a bearer credential.
pub fn api_origin(api: &str) -> Result<String, CliError> {
    let url = url::Url::parse(api).map_err(|e| failed(&format!("API address {api:?}"), e))?;
    let loopback = url.host_str().is_some_and(|h| {
        h == "localhost" || h.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    });
    if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
        return Err(CliError::Input(format!("API address {api:?}: use https (plain http only on a loopback address)")));
    }
    Ok(url.origin().ascii_serialization())
}

/// The user this process runs as (the owner of `/proc/self`), where the system says.
fn my_uid() -> Result<Option<u32>, CliError> {
    use std::os::unix::fs::MetadataExt;
    if cfg!(target_os = "linux") {
        return Ok(Some(std::fs::metadata("/proc/self").map_err(|e| failed("/proc/self", e))?.uid()));
    }
    Ok(None)
}

/// Refuse `path` (described by `meta`) when another user owns it or its mode has any of
/// `open_bits` (what they let others do: `open_to`; what to do about it: `advice`).
fn private(path: &Path, meta: &std::fs::Metadata, open_bits: u32, open_to: &str, advice: &str) -> Result<(), CliError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if my_uid()?.is_some_and(|me| meta.uid() != me) {
        return Err(CliError::Input(format!("{} belongs to another user", path.display())));
    }
    let mode = meta.permissions().mode();
    if mode & open_bits != 0 {
        return Err(CliError::Input(format!(
            "{} may be {open_to} by others (mode {:o}): {advice}",
            path.display(),
            mode & 0o777
        )));
    }
    Ok(())
}

/// Refuse a directory of another user, or one others may write (they could swap the
/// credentials file).
fn private_dir(dir: &Path) -> Result<(), CliError> {
    let meta = std::fs::metadata(dir).map_err(|e| failed(&dir.display().to_string(), e))?;
    private(dir, &meta, 0o022, "written", "keep credentials in a private directory")
}

/// Where the credentials live: `$TOLLGATE_CREDENTIALS`, else `tollgate/credentials.json` in
/// `$XDG_CONFIG_HOME` or `~/.config`.
pub fn default_path() -> Result<PathBuf, CliError> {
    if let Some(path) = std::env::var_os("TOLLGATE_CREDENTIALS") {
        return Ok(PathBuf::from(path));
    }
    let config = match std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
            Some(home) => PathBuf::from(home).join(".config"),
            None => return Err(CliError::Input("no HOME: set TOLLGATE_CREDENTIALS to a file path".into())),
        },
    };
    Ok(config.join("tollgate").join("credentials.json"))
}

/// Keep the credentials at `path`, readable and writable by their owner only (written beside it
/// and renamed into place, so a reader never sees half a file).
pub fn store(path: &Path, credentials: &Credentials) -> Result<(), CliError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |e: std::io::Error| failed(&path.display().to_string(), e);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
        private_dir(dir)?;
    }
    let text = serde_json::to_vec_pretty(credentials).map_err(|e| failed("credentials", e))?;
    let partial = path.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&partial).map_err(io)?;
    file.write_all(&text).and_then(|()| file.sync_all()).map_err(io)?;
    std::fs::rename(&partial, path).map_err(io)
}

/// The stored credentials for `api`: refused when the file is a link, is not its user's, may be
/// read by others or sits in a directory others may write, when it was made for another API, or
/// when the sign-in has expired.
pub fn load(path: &Path, api: &str) -> Result<Credentials, CliError> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let not_signed_in = |e: std::io::Error| {
        CliError::Input(format!("not signed in ({}: {e}): run `tollgate login` or give a token", path.display()))
    };
    // The path's own entry (a link is not followed), then the file opened there: the same
    // file, or someone swapped it in between.
    let entry = std::fs::symlink_metadata(path).map_err(not_signed_in)?;
    let mut file = std::fs::File::open(path).map_err(not_signed_in)?;
    let opened = file.metadata().map_err(not_signed_in)?;
    if !entry.file_type().is_file() || (entry.dev(), entry.ino()) != (opened.dev(), opened.ino()) {
        return Err(CliError::Input(format!("{} is not a plain file: run `tollgate login` again", path.display())));
    }
    private(path, &opened, 0o077, "read", "run `tollgate login` again")?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        private_dir(dir)?;
    }
    let mut text = Vec::new();
    file.read_to_end(&mut text).map_err(not_signed_in)?;
    let credentials: Credentials =
        serde_json::from_slice(&text).map_err(|e| failed(&format!("{} is not credentials", path.display()), e))?;
    let asked = api_origin(api)?;
    if credentials.api != asked {
        return Err(CliError::Input(format!(
            "you signed in for {}, not {asked}: run `tollgate --api {asked} login` (the token goes nowhere else)",
            credentials.api
        )));
    }
    if let Some(at) = credentials.expires_at {
        if at <= chrono::Utc::now() {
            return Err(CliError::Input(format!(
                "your sign-in as {} expired at {at}: run `tollgate login` again",
                credentials.subject
            )));
        }
    }
    Ok(credentials)
}

/// Forget the stored credentials (nothing to forget is not an error).
pub fn logout(path: &Path) -> Result<bool, CliError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(failed(&path.display().to_string(), e)),
    }
}
