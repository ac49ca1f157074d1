//! The event envelope, the payload of each event type, and the per-session hash chain.
//!
//! An event's hash is the SHA-256 of the exact JSON bytes that were published; `prev` links each
//! event to the one before it in the same session, so a reviewer can prove a session is complete
//! and unmodified by re-hashing the stored bytes (see [`verify_chain`]).

use crate::identity::{AgentIdentity, ResourceRef};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

mod chain;
mod payload;
mod time;

pub use chain::{signing_message, verify_chain, Chain, ChainReport, SealedEvent, SessionSigner};
pub use payload::*;

/// The envelope version this code writes.
pub const ENVELOPE_VERSION: u32 = 1;

/// Event type names (the `type` field and the last part of the subject).
pub mod kind {
    pub const SESSION_STARTED: &str = "session.started";
    pub const SESSION_ENDED: &str = "session.ended";
    pub const SESSION_END_REQUESTED: &str = "session.end_requested";
    pub const COMMAND: &str = "command";
    pub const COMMAND_RESULT: &str = "command.result";
    pub const AUTH_FAILED: &str = "auth.failed";
    pub const POLICY_CHANGED: &str = "policy.changed";
    pub const APPROVAL_REQUESTED: &str = "approval.requested";
    pub const APPROVAL_DECIDED: &str = "approval.decided";
    pub const APPROVAL_EXPIRED: &str = "approval.expired";
    pub const APPROVAL_REFUSED: &str = "approval.refused";
    pub const APPROVAL_RELEASED: &str = "approval.released";
    pub const NODE_STARTED: &str = "node.started";
    pub const NODE_DECIDED: &str = "node.decided";
    pub const TERMINAL_STARTED: &str = "terminal.started";
    pub const TERMINAL_OUTPUT: &str = "terminal.output";
    pub const CERTIFICATE_ISSUED: &str = "certificate.issued";
}

/// One fact, as published on JetStream. `P` is the payload; readers that do not care about the
/// payload's shape use `serde_json::Value`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<P = serde_json::Value> {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    pub v: u32,
    #[serde(with = "time::rfc3339_nanos")]
    pub at: DateTime<Utc>,
    pub node: String,
    pub session: Uuid,
    pub seq: u64,
    pub prev: String,
    pub agent: AgentIdentity,
    pub resource: ResourceRef,
    pub payload: P,
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

#[cfg(test)]
mod tests;
