//! What the approvals views hold for a request's events: the request row (with the status its
//! decisions, expiry and release give it) and one row per decision. Verification re-derives
//! them from stored event bytes; the projector reaches the same rows one event at a time in SQL,
//! and this follows it step for step (a denial decides at once, approvals once a quorum of
//! distinct people agrees, only a pending request changes status).

use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use uuid::Uuid;

use super::super::apply::{agent_id, decode, Payload};
use super::{differing, enum_text, instant, same_instant};

/// A row of `approvals`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApprovalRow {
    pub id: Uuid,
    pub event_id: Uuid,
    pub session_id: Uuid,
    pub command_id: Uuid,
    pub agent_id: Uuid,
    pub agent: Value,
    pub resource: String,
    pub node: String,
    pub rule: String,
    pub statement: String,
    pub classes: Vec<String>,
    pub relations: Vec<String>,
    pub approver_groups: Vec<String>,
    pub quorum: i32,
    pub requested_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub grant_minutes: Option<i32>,
    pub status: String,
    pub decided_at: Option<DateTime<Utc>>,
    pub expiry_reason: Option<String>,
    pub released_at: Option<DateTime<Utc>>,
    pub released_by: Option<Vec<String>>,
}

/// The columns of `approvals`, in the order [`ApprovalRow`] names them.
pub const APPROVAL_COLUMNS: &str = "id, event_id, session_id, command_id, agent_id, agent, resource, node, rule, \
     statement, classes, relations, approver_groups, quorum, requested_at, expires_at, grant_minutes, status, \
     decided_at, expiry_reason, released_at, released_by";

/// A row of `approval_decisions`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DecisionRow {
    pub event_id: Uuid,
    pub approval_id: Uuid,
    pub at: DateTime<Utc>,
    pub verdict: String,
    pub channel: String,
    pub reason: Option<String>,
    pub approver_issuer: String,
    pub approver_subject: String,
    pub approver_name: String,
    pub approver_groups: Vec<String>,
    pub grant_minutes: Option<i32>,
}

/// The columns of `approval_decisions`, in the order [`DecisionRow`] names them.
pub const DECISION_COLUMNS: &str = "event_id, approval_id, at, verdict, channel, reason, approver_issuer, \
     approver_subject, approver_name, approver_groups, grant_minutes";

fn minutes(m: Option<u32>) -> Option<i32> {
    m.and_then(|m| i32::try_from(m).ok())
}

impl ApprovalRow {
    /// The columns where `self` (as the view holds it) says something other than `recorded`.
    pub fn differences(&self, recorded: &ApprovalRow) -> Vec<&'static str> {
        differing(&[
            ("event_id", self.event_id == recorded.event_id),
            ("session_id", self.session_id == recorded.session_id),
            ("command_id", self.command_id == recorded.command_id),
            ("agent_id", self.agent_id == recorded.agent_id),
            ("agent", self.agent == recorded.agent),
            ("resource", self.resource == recorded.resource),
            ("node", self.node == recorded.node),
            ("rule", self.rule == recorded.rule),
            ("statement", self.statement == recorded.statement),
            ("classes", self.classes == recorded.classes),
            ("relations", self.relations == recorded.relations),
            ("approver_groups", self.approver_groups == recorded.approver_groups),
            ("quorum", self.quorum == recorded.quorum),
            ("requested_at", same_instant(self.requested_at, recorded.requested_at)),
            ("expires_at", same_instant(self.expires_at, recorded.expires_at)),
            ("grant_minutes", self.grant_minutes == recorded.grant_minutes),
            ("status", self.status == recorded.status),
            ("decided_at", instant(self.decided_at, recorded.decided_at)),
            ("expiry_reason", self.expiry_reason == recorded.expiry_reason),
            ("released_at", instant(self.released_at, recorded.released_at)),
            ("released_by", self.released_by == recorded.released_by),
        ])
    }
}

impl DecisionRow {
    /// The columns where `self` (as the view holds it) says something other than `recorded`.
    pub fn differences(&self, recorded: &DecisionRow) -> Vec<&'static str> {
        differing(&[
            ("approval_id", self.approval_id == recorded.approval_id),
            ("at", same_instant(self.at, recorded.at)),
            ("verdict", self.verdict == recorded.verdict),
            ("channel", self.channel == recorded.channel),
            ("reason", self.reason == recorded.reason),
            ("approver_issuer", self.approver_issuer == recorded.approver_issuer),
            ("approver_subject", self.approver_subject == recorded.approver_subject),
            ("approver_name", self.approver_name == recorded.approver_name),
            ("approver_groups", self.approver_groups == recorded.approver_groups),
            ("grant_minutes", self.grant_minutes == recorded.grant_minutes),
        ])
    }
}

/// What the approvals views should hold for these stored events (a session's own, and the
/// decisions on its requests, which each travel in a chain of their own).
#[derive(Default)]
pub struct ExpectedApprovals {
    pub approvals: BTreeMap<Uuid, ApprovalRow>,
    pub decisions: Vec<DecisionRow>,
}

/// Replay the approval events in the order they happened. The projector follows the stream's
/// order; the control plane decides after the request is on record and a proxy expires or
/// releases after the decisions it saw, so time order is the same order.
pub fn expected(raws: &[&[u8]]) -> ExpectedApprovals {
    let mut events: Vec<_> =
        raws.iter().filter_map(|raw| decode(raw).ok()).filter(|e| e.payload.approval_id().is_some()).collect();
    events.sort_by_key(|e| e.envelope.at);
    let mut out = ExpectedApprovals::default();
    for e in &events {
        let at = e.envelope.at;
        match &e.payload {
            Payload::ApprovalRequested(p) => {
                out.approvals.entry(p.approval_id).or_insert_with(|| ApprovalRow {
                    id: p.approval_id,
                    event_id: e.envelope.id,
                    session_id: e.envelope.session,
                    command_id: p.command_id,
                    agent_id: agent_id(&e.envelope.agent),
                    agent: serde_json::to_value(&e.envelope.agent).unwrap_or_default(),
                    resource: e.envelope.resource.name.clone(),
                    node: e.envelope.node.clone(),
                    rule: p.rule.clone(),
                    statement: p.statement.clone(),
                    classes: p.classes.clone(),
                    relations: p.relations.clone(),
                    approver_groups: p.approver_groups.clone(),
                    quorum: i32::try_from(p.quorum).unwrap_or(i32::MAX),
                    requested_at: at,
                    expires_at: p.expires_at,
                    grant_minutes: minutes(p.grant_minutes),
                    status: "pending".into(),
                    decided_at: None,
                    expiry_reason: None,
                    released_at: None,
                    released_by: None,
                });
            }
            Payload::ApprovalDecided(p) => {
                let by = &e.envelope.agent;
                out.decisions.push(DecisionRow {
                    event_id: e.envelope.id,
                    approval_id: p.approval_id,
                    at,
                    verdict: enum_text(&p.verdict),
                    channel: enum_text(&p.channel),
                    reason: p.reason.clone(),
                    approver_issuer: by.issuer.clone(),
                    approver_subject: by.subject.clone(),
                    approver_name: by.name.clone(),
                    approver_groups: by.groups.clone(),
                    grant_minutes: minutes(p.grant_minutes),
                });
                let approvers: HashSet<(&str, &str)> = out
                    .decisions
                    .iter()
                    .filter(|d| d.approval_id == p.approval_id && d.verdict == "approve")
                    .map(|d| (d.approver_issuer.as_str(), d.approver_subject.as_str()))
                    .collect();
                let votes = i64::try_from(approvers.len()).unwrap_or(i64::MAX);
                if let Some(row) = out.approvals.get_mut(&p.approval_id).filter(|r| r.status == "pending") {
                    if enum_text(&p.verdict) == "deny" {
                        row.status = "denied".into();
                        row.decided_at = Some(at);
                    } else if votes >= i64::from(row.quorum) {
                        row.status = "approved".into();
                        row.decided_at = Some(at);
                    }
                }
            }
            Payload::ApprovalExpired(p) => {
                if let Some(row) = out.approvals.get_mut(&p.approval_id).filter(|r| r.status == "pending") {
                    row.status = "expired".into();
                    row.expiry_reason = Some(enum_text(&p.reason));
                    row.decided_at = Some(at);
                }
            }
            Payload::ApprovalReleased(p) => {
                if let Some(row) = out.approvals.get_mut(&p.approval_id) {
                    row.released_at = Some(at);
                    row.released_by = Some(p.approvers.clone());
                }
            }
            _ => {}
        }
    }
    out
}

/// Compare what the approvals views hold with what the events say: one line per difference.
pub fn compare(expected: &ExpectedApprovals, approvals: &[ApprovalRow], decisions: &[DecisionRow]) -> Vec<String> {
    let mut problems = Vec::new();
    let held: BTreeMap<Uuid, &ApprovalRow> = approvals.iter().map(|r| (r.id, r)).collect();
    for want in expected.approvals.values() {
        match held.get(&want.id) {
            None => problems.push(format!("approval {} is missing from the approvals view", want.id)),
            Some(row) => {
                let differ = row.differences(want);
                if !differ.is_empty() {
                    problems.push(format!(
                        "the approvals view differs from the recorded events of approval {} in: {}",
                        want.id,
                        differ.join(", ")
                    ));
                }
            }
        }
    }
    for row in approvals.iter().filter(|r| !expected.approvals.contains_key(&r.id)) {
        problems.push(format!("the approvals view holds approval {}, which no stored event records", row.id));
    }
    let held: BTreeMap<Uuid, &DecisionRow> = decisions.iter().map(|r| (r.event_id, r)).collect();
    for want in &expected.decisions {
        match held.get(&want.event_id) {
            None => problems.push(format!(
                "the decision {} by {} on approval {} is missing from the decisions view",
                want.event_id, want.approver_name, want.approval_id
            )),
            Some(row) => {
                let differ = row.differences(want);
                if !differ.is_empty() {
                    problems.push(format!(
                        "the decisions view differs from the recorded decision {} on approval {} in: {}",
                        want.event_id,
                        want.approval_id,
                        differ.join(", ")
                    ));
                }
            }
        }
    }
    let recorded: HashSet<Uuid> = expected.decisions.iter().map(|d| d.event_id).collect();
    for row in decisions.iter().filter(|r| !recorded.contains(&r.event_id)) {
        problems.push(format!(
            "the decisions view holds {} on approval {}, which no stored event records",
            row.event_id, row.approval_id
        ));
    }
    problems
}
