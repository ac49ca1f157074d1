//! DEVELOPMENT ONLY: a local OIDC issuer for the quickstart and the tests. It serves a discovery
//! document and a JWKS, and mints ES256 tokens for any subject on request. Anyone who can run it
//! can mint tokens, so it is off unless started explicitly, binds to loopback only, and must
//! never be listed as an issuer in production.

use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::{Arc, RwLock};

/// One signing key.
struct SigningKey {
    kid: String,
    pkcs8: Vec<u8>,
    /// Uncompressed P-256 point: 0x04 || x || y.
    public: Vec<u8>,
}

impl SigningKey {
    fn generate() -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("key generation failed"))?;
        Self::from_pkcs8(doc.as_ref().to_vec())
    }

    fn from_pkcs8(pkcs8: Vec<u8>) -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
            .map_err(|_| anyhow::anyhow!("not a P-256 PKCS#8 key"))?;
        let public = pair.public_key().as_ref().to_vec();
        let kid = tollgate_shared::event::sha256_hex(&public)[..16].to_owned();
        Ok(SigningKey { kid, pkcs8, public })
    }

    fn jwk(&self) -> Value {
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&self.public[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&self.public[33..65]),
        })
    }
}

/// The issuer: its URL and its keys (the newest signs; older ones stay published).
pub struct DevIssuer {
    url: String,
    keys: RwLock<Vec<SigningKey>>,
    /// How often the JWKS was fetched (tests check that verifiers do not hammer issuers).
    jwks_fetches: std::sync::atomic::AtomicU64,
}

impl DevIssuer {
    pub fn new(url: impl Into<String>) -> anyhow::Result<Self> {
        Ok(DevIssuer {
            url: url.into(),
            keys: RwLock::new(vec![SigningKey::generate()?]),
            jwks_fetches: Default::default(),
        })
    }

    /// Use the key stored at `path`, creating it on first use (so tokens survive restarts).
    pub fn with_key_file(url: impl Into<String>, path: &Path) -> anyhow::Result<Self> {
        let key = match std::fs::read(path) {
            Ok(der) => SigningKey::from_pkcs8(der)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = SigningKey::generate()?;
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(path, &key.pkcs8)?;
                key
            }
            Err(e) => return Err(e.into()),
        };
        Ok(DevIssuer { url: url.into(), keys: RwLock::new(vec![key]), jwks_fetches: Default::default() })
    }

    /// JWKS requests served so far.
    pub fn jwks_fetches(&self) -> u64 {
        self.jwks_fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Start signing with a new key; `keep_old` leaves the previous keys in the JWKS.
    pub fn rotate(&self, keep_old: bool) -> anyhow::Result<()> {
        let key = SigningKey::generate()?;
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        if !keep_old {
            keys.clear();
        }
        keys.push(key);
        Ok(())
    }

    pub fn jwks(&self) -> Value {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        json!({ "keys": keys.iter().map(SigningKey::jwk).collect::<Vec<_>>() })
    }

    pub fn discovery(&self) -> Value {
        json!({
            "issuer": self.url,
            "jwks_uri": format!("{}/jwks", self.url),
            "id_token_signing_alg_values_supported": ["ES256"],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
        })
    }

    /// Sign `claims` as they are (the caller sets iss, sub, aud, exp...).
    pub fn sign(&self, claims: &Value) -> anyhow::Result<String> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let key = keys.last().ok_or_else(|| anyhow::anyhow!("no signing key"))?;
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(key.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &jsonwebtoken::EncodingKey::from_ec_der(&key.pkcs8))?)
    }

    /// Sign `claims` under a header given as JSON, exactly as given (tests build tokens with
    /// headers a real issuer would not send: `crit`, no `kid`...).
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> anyhow::Result<String> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let key = keys.last().ok_or_else(|| anyhow::anyhow!("no signing key"))?;
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(header)?),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?)
        );
        let signature = jsonwebtoken::crypto::sign(
            signing_input.as_bytes(),
            &jsonwebtoken::EncodingKey::from_ec_der(&key.pkcs8),
            jsonwebtoken::Algorithm::ES256,
        )?;
        Ok(format!("{signing_input}.{signature}"))
    }

    /// The id of the key that signs now.
    pub fn current_kid(&self) -> Option<String> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).last().map(|k| k.kid.clone())
    }

    /// A token for `subject` and `audience`, valid for `ttl_secs`, with extra claims merged in.
    pub fn mint(
        &self,
        subject: &str,
        audience: &str,
        ttl_secs: i64,
        extra: &serde_json::Map<String, Value>,
    ) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let mut claims =
            json!({ "iss": self.url, "sub": subject, "aud": audience, "iat": now, "nbf": now, "exp": now + ttl_secs });
        if let Value::Object(map) = &mut claims {
            for (k, v) in extra {
                map.insert(k.clone(), v.clone());
            }
        }
        self.sign(&claims)
    }

    pub fn router(self: Arc<Self>) -> Router {
        let discovery = self.clone();
        Router::new()
            .route("/.well-known/openid-configuration", get(move || async move { Json(discovery.discovery()) }))
            .route(
                "/jwks",
                get(move || async move {
                    self.jwks_fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Json(self.jwks())
                }),
            )
    }
}
