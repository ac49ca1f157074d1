//! A signed export of a review period: the reports, every event of the sessions that started in
//! it (the exact bytes stored) and each session's chain head, signed by the control plane. An
//! auditor archives the file and checks it offline (`tollgate verify-export`) with nothing but
//! the control plane's public key: the signature, then every session's chain re-hashed from the
//! events in the file, ending at the head and node key the export names.
//!
//! What the file cannot prove by itself, and rests on the control plane's signature: that the
//! node keys were trusted, that the reports were drawn from views matching the events, and that
//! no session of the period was left out.

use crate::control::{ControlKind, ControlPublicKey, Signed};
use crate::event::verify_chain;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Export {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub generated_at: DateTime<Utc>,
    /// The control plane key that signs the export (hex); the auditor checks it against the one
    /// they were given, not against this field.
    pub control_key: String,
    /// The review reports of the period, as the API serves them.
    pub reports: serde_json::Value,
    pub sessions: Vec<ExportedSession>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportedSession {
    pub session: Uuid,
    /// The hash of its last event as the control plane verified it when exporting.
    pub head: String,
    /// Whether the chain was linked and complete (signed end) when exported.
    pub linked: bool,
    pub complete: bool,
    /// The node key that signed its end, and whether the control plane trusted that key for
    /// this session when exporting (its signed word: the file cannot prove trust by itself).
    pub node_key: Option<String>,
    pub node_trusted: bool,
    /// Whether the views the reports come from matched the session's events when exporting.
    pub views_match: bool,
    /// Every stored event, as the exact text the chain hashes, in order.
    pub events: Vec<String>,
}

/// What checking an export found.
#[derive(Debug, Serialize)]
pub struct ExportCheck {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub sessions: usize,
    pub events: usize,
    /// Sessions whose chain is linked, complete and ends at the head the export names.
    pub intact: usize,
    pub problems: Vec<String>,
}

/// Check an export's signature with `public_key`, then every session's chain.
pub fn check(bytes: &[u8], public_key: &str) -> Result<ExportCheck, String> {
    let key = ControlPublicKey::parse(public_key.trim()).map_err(|e| format!("the public key: {e}"))?;
    let export: Export =
        Signed::open(bytes, &key, ControlKind::Export).map_err(|e| format!("the export's signature: {e}"))?;
    let mut check = ExportCheck {
        from: export.from,
        to: export.to,
        sessions: export.sessions.len(),
        events: 0,
        intact: 0,
        problems: Vec::new(),
    };
    for session in &export.sessions {
        check.events += session.events.len();
        let raws: Vec<&[u8]> = session.events.iter().map(|e| e.as_bytes()).collect();
        let report = verify_chain(&raws);
        let mut fine = report.linked && report.complete;
        for problem in report.problems {
            check.problems.push(format!("session {}: {problem}", session.session));
        }
        if report.head != session.head {
            check
                .problems
                .push(format!("session {}: its events end at another head than the export names", session.session));
            fine = false;
        }
        let mut problem = |what: &str| {
            check.problems.push(format!("session {}: {what}", session.session));
            fine = false;
        };
        if report.node_key != session.node_key {
            problem("signed by another node key than the export names");
        }
        if !session.node_trusted {
            problem("the control plane did not trust its node key");
        }
        if !session.views_match {
            problem("its views differed from its events when exported");
        }
        if fine {
            check.intact += 1;
        }
    }
    Ok(check)
}
