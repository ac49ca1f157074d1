//! Control messages: what the control plane tells proxies through NATS (policy versions,
//! standing approvals, approval decisions) and every event it publishes. Each is signed with the control plane's ed25519
//! key, so nothing else that can reach NATS can change policy, grant or approve: proxies
//! verify against the control plane's public key and refuse what is unsigned, badly signed or
//! out of order (and keep enforcing what they had).
//!
//! The signature covers `tollgate-control/v1\n<kind>\n<body>`: the kind keeps a signature for
//! one kind of message from passing as another.

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// The header carrying the control plane's signature of an event it publishes (decisions).
pub const SIGNATURE_HEADER: &str = "Tollgate-Signature";

/// What a signature is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlKind {
    /// A policy snapshot in the policy bucket.
    Policy,
    /// A standing approval in the grants bucket.
    Grant,
    /// An event the control plane publishes (`approval.decided`, `policy.changed`...): the
    /// signature travels in the message's `Tollgate-Signature` header.
    Event,
    /// A signed export of a review period (reports, raw events, chain heads) for auditors.
    Export,
}

impl ControlKind {
    fn as_str(self) -> &'static str {
        match self {
            ControlKind::Policy => "policy",
            ControlKind::Grant => "grant",
            ControlKind::Event => "event",
            ControlKind::Export => "export",
        }
    }
}

fn signing_input(kind: ControlKind, body: &[u8]) -> Vec<u8> {
    let mut input = format!("tollgate-control/v1\n{}\n", kind.as_str()).into_bytes();
    input.extend_from_slice(body);
    input
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("not signed")]
    Unsigned,
    #[error("signature does not verify with the control plane's key")]
    BadSignature,
    #[error("unreadable: {0}")]
    Unreadable(String),
    #[error("not a control plane public key (64 hex digits): {0}")]
    BadKey(String),
}

/// The control plane's signing key.
pub struct ControlKey {
    pair: Ed25519KeyPair,
}

impl ControlKey {
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        Ed25519KeyPair::from_pkcs8(der)
            .map(|pair| ControlKey { pair })
            .map_err(|e| format!("not an ed25519 PKCS#8 key: {e}"))
    }

    /// A fresh key, with its PKCS#8 DER so the caller can keep it.
    pub fn generate() -> Result<(Self, Vec<u8>), String> {
        let der = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .map_err(|e| format!("key generation failed: {e}"))?;
        Ok((Self::from_pkcs8(der.as_ref())?, der.as_ref().to_vec()))
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.pair.public_key().as_ref())
    }

    /// The signature (hex) of `body` as a message of `kind`.
    pub fn sign(&self, kind: ControlKind, body: &[u8]) -> String {
        hex::encode(self.pair.sign(&signing_input(kind, body)).as_ref())
    }
}

/// The control plane's public key, as proxies hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPublicKey([u8; 32]);

impl ControlPublicKey {
    pub fn parse(hex_key: &str) -> Result<Self, ControlError> {
        let bytes = hex::decode(hex_key.trim()).map_err(|e| ControlError::BadKey(e.to_string()))?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| ControlError::BadKey("not 32 bytes".into()))?;
        Ok(ControlPublicKey(key))
    }

    pub fn verify(&self, kind: ControlKind, body: &[u8], signature_hex: &str) -> Result<(), ControlError> {
        let signature = hex::decode(signature_hex.trim()).map_err(|_| ControlError::BadSignature)?;
        UnparsedPublicKey::new(&ED25519, self.0)
            .verify(&signing_input(kind, body), &signature)
            .map_err(|_| ControlError::BadSignature)
    }
}

impl std::fmt::Display for ControlPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A signed value as a KV bucket holds it: the exact JSON text signed, and its signature.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    pub body: String,
    pub signature: String,
}

impl Signed {
    /// `value` as JSON, signed as a message of `kind`; the bytes to store.
    pub fn seal<T: Serialize>(key: &ControlKey, kind: ControlKind, value: &T) -> Result<Vec<u8>, ControlError> {
        let body = serde_json::to_string(value).map_err(|e| ControlError::Unreadable(e.to_string()))?;
        let signature = key.sign(kind, body.as_bytes());
        serde_json::to_vec(&Signed { body, signature }).map_err(|e| ControlError::Unreadable(e.to_string()))
    }

    /// The value in stored bytes, if the control plane signed it as a message of `kind`.
    pub fn open<T: DeserializeOwned>(
        bytes: &[u8],
        key: &ControlPublicKey,
        kind: ControlKind,
    ) -> Result<T, ControlError> {
        let signed: Signed = serde_json::from_slice(bytes).map_err(|_| ControlError::Unsigned)?;
        key.verify(kind, signed.body.as_bytes(), &signed.signature)?;
        serde_json::from_str(&signed.body).map_err(|e| ControlError::Unreadable(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_control_plane_key_and_the_right_kind_verify() {
        let (key, _) = ControlKey::generate().unwrap();
        let public = ControlPublicKey::parse(&key.public_hex()).unwrap();
        let sealed = Signed::seal(&key, ControlKind::Policy, &serde_json::json!({"version": 2})).unwrap();
        let opened: serde_json::Value = Signed::open(&sealed, &public, ControlKind::Policy).unwrap();
        assert_eq!(opened["version"], 2);
        // The same signature does not pass as another kind of message.
        assert_eq!(
            Signed::open::<serde_json::Value>(&sealed, &public, ControlKind::Grant).unwrap_err(),
            ControlError::BadSignature
        );
        // Another key, a changed body, an unsigned value.
        let (other, _) = ControlKey::generate().unwrap();
        let forged = Signed::seal(&other, ControlKind::Policy, &serde_json::json!({"version": 2})).unwrap();
        assert_eq!(
            Signed::open::<serde_json::Value>(&forged, &public, ControlKind::Policy).unwrap_err(),
            ControlError::BadSignature
        );
        let mut tampered: Signed = serde_json::from_slice(&sealed).unwrap();
        tampered.body = tampered.body.replace('2', "3");
        let tampered = serde_json::to_vec(&tampered).unwrap();
        assert_eq!(
            Signed::open::<serde_json::Value>(&tampered, &public, ControlKind::Policy).unwrap_err(),
            ControlError::BadSignature
        );
        assert_eq!(
            Signed::open::<serde_json::Value>(br#"{"version": 99}"#, &public, ControlKind::Policy).unwrap_err(),
            ControlError::Unsigned
        );
        assert!(ControlPublicKey::parse("nope").is_err());
        assert!(ControlPublicKey::parse(&"ab".repeat(31)).is_err());
    }
}
