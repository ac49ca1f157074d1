//! Issuer keys, fetched by OIDC discovery, from a JWKS URL or a file; cached, refreshed in the
//! background and on an unknown `kid` (at most once per `min_refresh_secs`, so a flood of forged
//! tokens cannot hammer the issuer). [`Verifier`] routes a token to its issuer and verifies it.

use crate::identity::AgentIdentity;
use crate::token::{self, IssuerConfig, TokenError, VerifiedToken};
use jsonwebtoken::jwk::JwkSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// The keys of one issuer and how to refresh them.
pub struct IssuerKeys {
    config: IssuerConfig,
    http: reqwest::Client,
    keys: RwLock<Arc<JwkSet>>,
    /// Serializes refreshes and remembers when the last one ran.
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
}

impl IssuerKeys {
    fn new(config: IssuerConfig, http: reqwest::Client) -> Self {
        IssuerKeys {
            config,
            http,
            keys: RwLock::new(Arc::new(JwkSet { keys: Vec::new() })),
            last_refresh: tokio::sync::Mutex::new(None),
        }
    }

    fn current(&self) -> Arc<JwkSet> {
        match self.keys.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Fetch the keys now, unless another refresh ran less than `min_interval` ago.
    async fn refresh(&self, min_interval: Duration) -> Result<(), String> {
        let mut last = self.last_refresh.lock().await;
        if last.is_some_and(|t| t.elapsed() < min_interval) {
            return Ok(());
        }
        *last = Some(Instant::now());
        let fetched = self.fetch().await?;
        match self.keys.write() {
            Ok(mut k) => *k = Arc::new(fetched),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(fetched),
        }
        Ok(())
    }

    async fn fetch(&self) -> Result<JwkSet, String> {
        if let Some(path) = &self.config.jwks_file {
            let text = tokio::fs::read_to_string(path).await.map_err(|e| format!("{}: {e}", path.display()))?;
            return serde_json::from_str(&text).map_err(|e| format!("{}: not a JWKS: {e}", path.display()));
        }
        let jwks_url = match &self.config.jwks_url {
            Some(url) => url.clone(),
            None => self.discover().await?,
        };
        self.get_json::<JwkSet>(&jwks_url).await
    }

    async fn discover(&self) -> Result<String, String> {
        #[derive(serde::Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let url = format!("{}/.well-known/openid-configuration", self.config.issuer.trim_end_matches('/'));
        let doc: Discovery = self.get_json(&url).await?;
        // A discovery document for another issuer would let that issuer's keys sign for this one.
        if doc.issuer.trim_end_matches('/') != self.config.issuer.trim_end_matches('/') {
            return Err(format!("discovery document at {url} names issuer {:?}", doc.issuer));
        }
        Ok(doc.jwks_uri)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let response = self.http.get(url).send().await.map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET {url}: HTTP {status}"));
        }
        let body = response.bytes().await.map_err(|e| format!("GET {url}: {e}"))?;
        if body.len() > 1024 * 1024 {
            return Err(format!("GET {url}: document larger than 1 MiB"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("GET {url}: {e}"))
    }
}

/// Verifies tokens from any of the configured issuers.
#[derive(Clone)]
pub struct Verifier {
    issuers: Arc<Vec<IssuerKeys>>,
}

impl Verifier {
    /// Build the verifier and fetch every issuer's keys once. An issuer whose keys cannot be
    /// fetched yet is kept: its tokens are refused until a refresh succeeds.
    pub async fn new(configs: Vec<IssuerConfig>) -> Result<Self, String> {
        let configs = configs.into_iter().map(IssuerConfig::resolve).collect::<Result<Vec<_>, _>>()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        let issuers: Vec<IssuerKeys> = configs.into_iter().map(|c| IssuerKeys::new(c, http.clone())).collect();
        for issuer in &issuers {
            if let Err(e) = issuer.refresh(Duration::ZERO).await {
                tracing::warn!(issuer = %issuer.config.issuer, error = %e, "issuer keys unavailable; its tokens are refused until they can be fetched");
            }
        }
        Ok(Verifier { issuers: Arc::new(issuers) })
    }

    /// Refresh every issuer's keys periodically until the returned task is aborted.
    pub fn spawn_refresh(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let period = this.issuers.iter().map(|i| i.config.refresh_secs).min().unwrap_or(300).max(1);
            let mut tick = tokio::time::interval(Duration::from_secs(period));
            tick.tick().await;
            loop {
                tick.tick().await;
                for issuer in this.issuers.iter() {
                    if let Err(e) = issuer.refresh(Duration::from_secs(issuer.config.min_refresh_secs)).await {
                        tracing::warn!(issuer = %issuer.config.issuer, error = %e, "issuer key refresh failed");
                    }
                }
            }
        })
    }

    /// Verify a token from any configured issuer.
    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, TokenError> {
        self.verify_with_issuer(token).await.map(|(_, verified)| verified)
    }

    /// Verify a token and map its claims to an agent identity by its issuer's rules.
    pub async fn identify(&self, token: &str) -> Result<(VerifiedToken, AgentIdentity), TokenError> {
        let (issuer, verified) = self.verify_with_issuer(token).await?;
        let identity = issuer.config.identify(&verified)?;
        Ok((verified, identity))
    }

    /// Map claims already verified (an ID token checked by an OpenID Connect client) to an
    /// identity by `issuer`'s rules, as [`Verifier::identify`] would for its tokens.
    pub fn identify_claims(
        &self,
        issuer: &str,
        subject: &str,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<AgentIdentity, String> {
        let keys = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == issuer)
            .ok_or_else(|| format!("{issuer} is not a configured issuer"))?;
        let verified = VerifiedToken {
            issuer: issuer.to_owned(),
            subject: subject.to_owned(),
            expires_at: claims.get("exp").and_then(|e| e.as_u64()).unwrap_or(0),
            claims: claims.clone(),
        };
        keys.config.identify(&verified).map_err(|e| e.to_string())
    }

    async fn verify_with_issuer(&self, token: &str) -> Result<(&IssuerKeys, VerifiedToken), TokenError> {
        let max = self.issuers.iter().map(|i| i.config.max_token_bytes).max().unwrap_or(8192);
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > max {
            return Err(TokenError::TooLarge { len: token.len(), max });
        }
        let claims = token::peek_claims(token)?;
        let iss = claims.get("iss").and_then(|v| v.as_str()).ok_or(TokenError::MissingClaim("iss".into()))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == iss)
            .ok_or_else(|| TokenError::UnknownIssuer(iss.to_owned()))?;
        let now = unix_now();
        let verified = match token::verify(&issuer.config, &issuer.current(), token, now) {
            Err(TokenError::UnknownKey(kid)) => {
                // The issuer may have rotated its keys: refresh (rate-limited) and try once more.
                let min = Duration::from_secs(issuer.config.min_refresh_secs);
                if let Err(e) = issuer.refresh(min).await {
                    tracing::warn!(issuer = %iss, error = %e, "issuer key refresh failed");
                }
                match token::verify(&issuer.config, &issuer.current(), token, now) {
                    Err(TokenError::UnknownKey(_)) => Err(TokenError::UnknownKey(kid)),
                    other => other,
                }
            }
            other => other,
        }?;
        Ok((issuer, verified))
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
