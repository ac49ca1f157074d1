//! Verifying an OIDC token (JWT) against one issuer's keys: signature, algorithm allow-list,
//! issuer, audience, expiry and not-before, with errors a client can show to a person.
//!
//! Pure: the keys are handed in. Fetching and caching them is [`crate::jwks`]'s job.

use crate::identity::mapping::{IdentityMapping, MappingError};
pub use crate::identity::presets::Preset;
use crate::identity::AgentIdentity;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::str::FromStr;

/// One trusted issuer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Defaults for a well-known kind of issuer (see [`Preset`]); explicit settings win.
    #[serde(default)]
    pub preset: Option<Preset>,
    /// Exact `iss` value, e.g. `https://token.actions.githubusercontent.com` (a preset may
    /// provide it).
    #[serde(default)]
    pub issuer: String,
    /// Accepted `aud` values; a token must name at least one.
    pub audience: Vec<String>,
    /// Fetch keys from this JWKS URL instead of discovering it.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Read keys from this JWKS file instead of fetching them.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Signature algorithms accepted from this issuer. HMAC and `none` are never accepted.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`, seconds.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Longer tokens are refused before any parsing.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// How claims become an agent identity (name template, groups, kept claims, rules).
    #[serde(default)]
    pub mapping: Option<IdentityMapping>,
    /// An unknown `kid` refreshes the keys at most this often, seconds.
    #[serde(default = "default_min_refresh")]
    pub min_refresh_secs: u64,
    /// Keys are refreshed in the background this often, seconds.
    #[serde(default = "default_refresh")]
    pub refresh_secs: u64,
}

pub(crate) fn default_algorithms() -> Vec<String> {
    ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"].map(String::from).to_vec()
}
/// Clock skew beyond this is a misconfiguration, not tolerance.
pub const MAX_LEEWAY_SECS: u64 = 300;

fn default_leeway() -> u64 {
    30
}
fn default_max_token_bytes() -> usize {
    8 * 1024
}
fn default_min_refresh() -> u64 {
    10
}
fn default_refresh() -> u64 {
    300
}

impl IssuerConfig {
    /// A config for `issuer` and `audience` with every default.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        IssuerConfig {
            preset: None,
            mapping: None,
            issuer: issuer.into(),
            audience: vec![audience.into()],
            jwks_url: None,
            jwks_file: None,
            algorithms: default_algorithms(),
            leeway_secs: default_leeway(),
            max_token_bytes: default_max_token_bytes(),
            min_refresh_secs: default_min_refresh(),
            refresh_secs: default_refresh(),
        }
    }

    /// Apply the preset's defaults and check the result; call once at startup.
    pub fn resolve(mut self) -> Result<Self, String> {
        if let Some(preset) = self.preset {
            let defaults = preset.defaults();
            if self.issuer.is_empty() {
                self.issuer = defaults
                    .issuer
                    .ok_or_else(|| format!("preset {preset:?} needs `issuer` (it differs per installation)"))?;
            }
            if self.algorithms == default_algorithms() {
                self.algorithms = defaults.algorithms;
            }
            let mine = self.mapping.take().unwrap_or_default();
            self.mapping = Some(IdentityMapping {
                name: mine.name.or(defaults.mapping.name),
                keep: mine.keep.or(defaults.mapping.keep),
                groups_claim: mine.groups_claim.or(defaults.mapping.groups_claim),
                rules: if mine.rules.is_empty() { defaults.mapping.rules } else { mine.rules },
            });
        }
        if self.issuer.is_empty() {
            return Err("an issuer needs `issuer` (its exact `iss` value)".into());
        }
        if self.leeway_secs > MAX_LEEWAY_SECS {
            return Err(format!("issuer {}: leeway_secs may be at most {MAX_LEEWAY_SECS}", self.issuer));
        }
        if let Some(mapping) = &self.mapping {
            mapping.validate().map_err(|e| format!("issuer {}: {e}", self.issuer))?;
        }
        self.allowed_algorithms()?;
        Ok(self)
    }

    /// The identity of a verified token from this issuer.
    pub fn identify(&self, token: &VerifiedToken) -> Result<AgentIdentity, TokenError> {
        let mapping = self.mapping.clone().unwrap_or_default();
        Ok(mapping.identify(&token.issuer, &token.subject, &token.claims)?)
    }

    /// The parsed allow-list; refuses symmetric algorithms and unknown names.
    pub fn allowed_algorithms(&self) -> Result<Vec<Algorithm>, String> {
        if self.audience.is_empty() {
            return Err(format!("issuer {}: `audience` must name at least one value", self.issuer));
        }
        self.algorithms
            .iter()
            .map(|name| {
                let alg = Algorithm::from_str(name)
                    .map_err(|_| format!("issuer {}: unknown algorithm {name}", self.issuer))?;
                if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                    return Err(format!(
                        "issuer {}: HMAC algorithm {name} is not allowed for OIDC issuers",
                        self.issuer
                    ));
                }
                Ok(alg)
            })
            .collect()
    }
}

/// Why a token was refused. The texts are shown to the agent: they say what is wrong without
/// revealing keys or internals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token was presented")]
    Missing,
    #[error("token is {len} bytes, the limit is {max}")]
    TooLarge { len: usize, max: usize },
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token issuer {0:?} is not trusted")]
    UnknownIssuer(String),
    #[error("token algorithm {0} is not allowed")]
    DisallowedAlgorithm(String),
    #[error("token signing key {0:?} is not among the issuer's keys")]
    UnknownKey(String),
    #[error("token names no signing key (kid) while its issuer publishes several")]
    MissingKeyId,
    #[error("token header marks {0} as critical, which this verifier does not implement")]
    CriticalHeader(String),
    #[error("token was issued {0} s in the future")]
    IssuedInFuture(u64),
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token expired {0} s ago")]
    Expired(u64),
    #[error("token is not valid for another {0} s")]
    NotYetValid(u64),
    #[error("token audience does not match")]
    WrongAudience,
    #[error("token issuer does not match")]
    WrongIssuer,
    #[error("token lacks the required claim {0:?}")]
    MissingClaim(String),
    #[error("token claim {0:?} is not a whole number of seconds")]
    BadTime(String),
    #[error("keys of issuer {0:?} are unavailable")]
    KeysUnavailable(String),
    #[error("{0}")]
    Identity(#[from] MappingError),
}

/// A token whose signature and claims checked out.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub issuer: String,
    pub subject: String,
    /// When the token stops being valid (its `exp`, Unix seconds).
    pub expires_at: u64,
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// Read the claims of a token without verifying it: only to pick the issuer and to word errors.
pub fn peek_claims(token: &str) -> Result<serde_json::Map<String, serde_json::Value>, TokenError> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
}

/// The token's header as JSON (verification reads the fields the library does not keep).
fn peek_header(token: &str) -> Option<serde_json::Value> {
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn peek_alg(token: &str) -> Option<String> {
    peek_header(token)?.get("alg")?.as_str().map(str::to_owned)
}

fn same_family(alg: Algorithm, jwk: &Jwk) -> bool {
    use Algorithm::*;
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
        AlgorithmParameters::EllipticCurve(_) => matches!(alg, ES256 | ES384),
        AlgorithmParameters::OctetKeyPair(_) => alg == EdDSA,
        // Symmetric keys are never used to verify an OIDC token.
        AlgorithmParameters::OctetKey(_) => false,
    }
}

/// Verify `token` against `config` and `keys`. Expiry is checked against the system clock;
/// `now` (Unix seconds) words the errors ("expired 42 s ago").
pub fn verify(config: &IssuerConfig, keys: &JwkSet, token: &str, now: u64) -> Result<VerifiedToken, TokenError> {
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    if token.len() > config.max_token_bytes {
        return Err(TokenError::TooLarge { len: token.len(), max: config.max_token_bytes });
    }
    if token.split('.').count() != 3 {
        return Err(TokenError::Malformed);
    }
    let header = match jsonwebtoken::decode_header(token) {
        Ok(h) => h,
        // `none` and other names the library does not know land here; say which.
        Err(_) => {
            return Err(match peek_alg(token) {
                Some(alg) if Algorithm::from_str(&alg).is_err() => TokenError::DisallowedAlgorithm(alg),
                _ => TokenError::Malformed,
            })
        }
    };
    // RFC 7515 §4.1.11: extensions marked critical must be understood; this verifier
    // implements none, so any `crit` is refused.
    if let Some(crit) = peek_header(token).as_ref().and_then(|h| h.get("crit")) {
        return Err(TokenError::CriticalHeader(crit.to_string()));
    }
    let allowed = config.allowed_algorithms().map_err(|_| TokenError::KeysUnavailable(config.issuer.clone()))?;
    // Without a kid, a token must leave no doubt about which key signed it: the issuer may
    // publish one verification key only.
    let verification_keys = keys.keys.iter().filter(|k| !matches!(k.algorithm, AlgorithmParameters::OctetKey(_)));
    if header.kid.is_none() && verification_keys.count() > 1 {
        return Err(TokenError::MissingKeyId);
    }
    if !allowed.contains(&header.alg) {
        return Err(TokenError::DisallowedAlgorithm(format!("{:?}", header.alg)));
    }
    let candidates: Vec<&Jwk> = keys
        .keys
        .iter()
        .filter(|k| same_family(header.alg, k))
        .filter(|k| match &header.kid {
            Some(kid) => k.common.key_id.as_deref() == Some(kid.as_str()),
            None => true,
        })
        .collect();
    let jwk = match (candidates.as_slice(), &header.kid) {
        ([one], _) => *one,
        ([], Some(kid)) => return Err(TokenError::UnknownKey(kid.clone())),
        // Without a kid, a token must leave no doubt about which key signed it.
        (_, _) => return Err(TokenError::UnknownKey(String::new())),
    };
    if let Some(declared) = jwk.common.key_algorithm {
        if format!("{declared:?}") != format!("{:?}", header.alg) {
            return Err(TokenError::DisallowedAlgorithm(format!("{:?}", header.alg)));
        }
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|_| TokenError::KeysUnavailable(config.issuer.clone()))?;
    let mut validation = Validation::new(header.alg);
    validation.algorithms = vec![header.alg];
    validation.leeway = config.leeway_secs;
    validation.validate_nbf = true;
    validation.set_issuer(&[config.issuer.as_str()]);
    validation.set_audience(&config.audience);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let peeked = peek_claims(token)?;
    let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &validation)
        .map_err(|e| explain(e, &peeked, now))?;
    let claims = data.claims;
    // Whatever the library accepted, every use of a time claim reads it as whole seconds: a
    // fraction or a string would be read differently in different places, so refuse it here.
    let time = |name: &str| match claims.get(name) {
        None => Ok(None),
        Some(v) => whole_seconds(v).map(Some).ok_or_else(|| TokenError::BadTime(name.into())),
    };
    let expires_at = time("exp")?.ok_or_else(|| TokenError::MissingClaim("exp".into()))?;
    time("nbf")?;
    time("iat")?;
    if let Some(iat) = claims.get("iat").and_then(serde_json::Value::as_u64) {
        if iat > now.saturating_add(config.leeway_secs) {
            return Err(TokenError::IssuedInFuture(iat - now));
        }
    }
    let subject = match claims.get("sub").and_then(|s| s.as_str()) {
        Some(s) if !s.is_empty() => s.to_owned(),
        _ => return Err(TokenError::MissingClaim("sub".into())),
    };
    Ok(VerifiedToken { issuer: config.issuer.clone(), subject, expires_at, claims })
}

/// A NumericDate as whole seconds: an integer, or a number written with a zero fraction
/// (`1700000000.0`, `1.7e9`), which RFC 7519 allows; not a fraction, a string or a negative.
fn whole_seconds(value: &serde_json::Value) -> Option<u64> {
    if let Some(n) = value.as_u64() {
        return Some(n);
    }
    let f = value.as_f64()?;
    (f >= 0.0 && f.fract() == 0.0 && f < u64::MAX as f64).then_some(f as u64)
}

fn explain(
    e: jsonwebtoken::errors::Error,
    claims: &serde_json::Map<String, serde_json::Value>,
    now: u64,
) -> TokenError {
    use jsonwebtoken::errors::ErrorKind;
    let time = |name: &str| claims.get(name).and_then(whole_seconds).unwrap_or(now);
    match e.kind() {
        ErrorKind::ExpiredSignature => TokenError::Expired(now.saturating_sub(time("exp"))),
        ErrorKind::ImmatureSignature => TokenError::NotYetValid(time("nbf").saturating_sub(now)),
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(c.clone()),
        ErrorKind::InvalidAlgorithm => TokenError::DisallowedAlgorithm("(mismatch)".into()),
        _ => TokenError::Malformed,
    }
}

#[cfg(test)]
mod tests;
