//! Sealing events into a per-session hash chain, signing its end, and verifying it.

use super::{kind, sha256_hex, ENVELOPE_VERSION};
use crate::identity::{AgentIdentity, ResourceRef};
use bytes::Bytes;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An event ready to publish: its bytes are final, its hash is what the next event links to.
#[derive(Debug, Clone)]
pub struct SealedEvent {
    pub id: Uuid,
    pub kind: &'static str,
    pub seq: u64,
    pub hash: String,
    pub bytes: Bytes,
    /// The subject it is published on (its node's).
    pub subject: String,
}

/// [`Envelope`]'s shape, borrowing from the chain: sealing copies nothing but the payload's text.
#[derive(Serialize)]
struct EnvelopeRef<'a, P> {
    id: Uuid,
    #[serde(rename = "type")]
    kind: &'a str,
    v: u32,
    #[serde(with = "super::time::rfc3339_nanos")]
    at: chrono::DateTime<chrono::Utc>,
    node: &'a str,
    session: Uuid,
    seq: u64,
    prev: &'a str,
    agent: &'a AgentIdentity,
    resource: &'a ResourceRef,
    payload: &'a P,
}

/// The running chain of one session. Sealing is the only way to produce a session's events, so
/// `seq` and `prev` cannot go wrong.
#[derive(Debug)]
pub struct Chain {
    session: Uuid,
    node: String,
    agent: AgentIdentity,
    resource: ResourceRef,
    next_seq: u64,
    prev: String,
}

impl Chain {
    pub fn new(session: Uuid, node: String, agent: AgentIdentity, resource: ResourceRef) -> Self {
        Self::resume(session, node, agent, resource, 0, String::new())
    }

    /// Continue a chain whose last event had seq `next_seq - 1` and hash `prev`.
    pub fn resume(
        session: Uuid,
        node: String,
        agent: AgentIdentity,
        resource: ResourceRef,
        next_seq: u64,
        prev: String,
    ) -> Self {
        Chain { session, node, agent, resource, next_seq, prev }
    }

    pub fn session(&self) -> Uuid {
        self.session
    }

    pub fn agent(&self) -> &AgentIdentity {
        &self.agent
    }

    /// Hash of the last sealed event ("" before the first).
    pub fn head(&self) -> &str {
        &self.prev
    }

    /// The seq the next sealed event will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Serialize the next event of this session and advance the chain.
    pub fn seal<P: Serialize>(&mut self, kind: &'static str, payload: &P) -> Result<SealedEvent, serde_json::Error> {
        self.seal_within(kind, payload, usize::MAX).map(|sealed| sealed.unwrap_or_else(|_| unreachable!()))
    }

    /// Like [`Chain::seal`], but an event larger than `max` bytes is not sealed: the chain does
    /// not advance and the size is returned instead (`Ok(Err(size))`).
    pub fn seal_within<P: Serialize>(
        &mut self,
        kind: &'static str,
        payload: &P,
        max: usize,
    ) -> Result<Result<SealedEvent, usize>, serde_json::Error> {
        let envelope = EnvelopeRef {
            id: Uuid::now_v7(),
            kind,
            v: ENVELOPE_VERSION,
            at: chrono::Utc::now(),
            node: &self.node,
            session: self.session,
            seq: self.next_seq,
            prev: &self.prev,
            agent: &self.agent,
            resource: &self.resource,
            payload,
        };
        let bytes = Bytes::from(serde_json::to_vec(&envelope)?);
        if bytes.len() > max {
            return Ok(Err(bytes.len()));
        }
        let hash = sha256_hex(&bytes);
        let subject = crate::names::subject_for(&self.node, kind);
        let sealed = SealedEvent { id: envelope.id, kind, seq: self.next_seq, hash: hash.clone(), bytes, subject };
        self.next_seq += 1;
        self.prev = hash;
        Ok(Ok(sealed))
    }
}

/// The text a node signs when it closes a session: binds the session, the seq of the
/// `session.ended` event and the hash of everything before it.
pub fn signing_message(session: Uuid, seq: u64, head: &str) -> String {
    format!("tollgate-session-end/v1\n{session}\n{seq}\n{head}")
}

/// The node's ed25519 key that signs the end of each session.
pub struct SessionSigner {
    pair: Ed25519KeyPair,
}

impl SessionSigner {
    /// Load a key from its PKCS#8 DER bytes.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        Ed25519KeyPair::from_pkcs8(der)
            .map(|pair| SessionSigner { pair })
            .map_err(|e| format!("not an ed25519 PKCS#8 key: {e}"))
    }

    /// A fresh key, returned with its PKCS#8 DER so the caller can persist it.
    pub fn generate() -> Result<(Self, Vec<u8>), String> {
        let rng = ring::rand::SystemRandom::new();
        let der = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| format!("key generation failed: {e}"))?;
        let signer = Self::from_pkcs8(der.as_ref())?;
        Ok((signer, der.as_ref().to_vec()))
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.pair.public_key().as_ref())
    }

    pub fn sign_end(&self, session: Uuid, seq: u64, head: &str) -> String {
        hex::encode(self.pair.sign(signing_message(session, seq, head).as_bytes()).as_ref())
    }
}

/// What verifying a session's stored events found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChainReport {
    /// Number of events checked.
    pub events: u64,
    /// Every event links to the one before it and seqs run 0..n without a gap.
    pub linked: bool,
    /// The session has its `session.ended` event, with a valid signature by the key its
    /// `session.started` event announced.
    pub complete: bool,
    /// Public key (hex) that signed the end, to compare with the node keys you trust.
    pub node_key: Option<String>,
    /// Hash of the last event.
    pub head: String,
    /// Human-readable problems, empty when the chain is intact.
    pub problems: Vec<String>,
}

#[derive(Deserialize)]
struct ChainFields {
    #[serde(rename = "type")]
    kind: String,
    session: Uuid,
    seq: u64,
    prev: String,
    payload: serde_json::Value,
}

/// Verify a session's events, given as the exact bytes that were published, in seq order.
pub fn verify_chain(events: &[&[u8]]) -> ChainReport {
    let mut problems = Vec::new();
    let mut prev_hash = String::new();
    let mut node_key: Option<String> = None;
    let mut complete = false;
    let mut session: Option<Uuid> = None;
    let mut linked = true;
    for (index, raw) in events.iter().enumerate() {
        let expected_seq = index as u64;
        let fields: ChainFields = match serde_json::from_slice(raw) {
            Ok(f) => f,
            Err(e) => {
                problems.push(format!("event #{expected_seq} is not a valid envelope: {e}"));
                linked = false;
                prev_hash = sha256_hex(raw);
                continue;
            }
        };
        if *session.get_or_insert(fields.session) != fields.session {
            problems.push(format!("event seq {} belongs to another session", fields.seq));
            linked = false;
        }
        if fields.seq != expected_seq {
            problems.push(format!("expected seq {expected_seq}, found {} (missing or extra events)", fields.seq));
            linked = false;
        }
        if fields.prev != prev_hash {
            problems.push(format!("seq {} does not link to the event before it", fields.seq));
            linked = false;
        }
        if fields.kind == kind::SESSION_STARTED {
            node_key = fields.payload.get("node_key").and_then(|k| k.as_str()).map(str::to_owned);
        }
        if fields.kind == kind::SESSION_ENDED {
            if index + 1 != events.len() {
                problems.push(format!("events follow session.ended at seq {}", fields.seq));
                linked = false;
            }
            complete = verify_end(&fields, &prev_hash, node_key.as_deref(), &mut problems);
        }
        prev_hash = sha256_hex(raw);
    }
    if !complete && problems.is_empty() {
        problems.push("session has not ended (or its end was not recorded)".to_owned());
    }
    ChainReport { events: events.len() as u64, linked, complete, node_key, head: prev_hash, problems }
}

fn verify_end(fields: &ChainFields, head: &str, node_key: Option<&str>, problems: &mut Vec<String>) -> bool {
    let claimed_head = fields.payload.get("head").and_then(|h| h.as_str()).unwrap_or_default();
    if claimed_head != head {
        problems.push("session.ended names a head that is not the hash of the event before it".to_owned());
        return false;
    }
    let Some(key) = node_key.and_then(|k| hex::decode(k).ok()) else {
        problems.push("no node key announced in session.started; signature cannot be checked".to_owned());
        return false;
    };
    let signature = fields.payload.get("signature").and_then(|s| s.as_str()).and_then(|s| hex::decode(s).ok());
    let Some(signature) = signature else {
        problems.push("session.ended has no readable signature".to_owned());
        return false;
    };
    let message = signing_message(fields.session, fields.seq, head);
    if UnparsedPublicKey::new(&ED25519, key).verify(message.as_bytes(), &signature).is_err() {
        problems.push("session.ended signature does not verify".to_owned());
        return false;
    }
    true
}
