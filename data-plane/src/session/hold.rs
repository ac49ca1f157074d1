//! Holding a command until people approve it, the same for every protocol: the request, the
//! words the agent is told while it waits, and the wait itself. The protocol supplies a future
//! that ends when its agent goes away (reading what the agent sends meanwhile, so a vanished
//! agent is noticed and its command never runs); the outcome comes back without wire bytes.

use crate::approvals::Waiter;
use chrono::{DateTime, Utc};
use std::collections::BTreeSet;
use std::future::Future;
use tokio::sync::Notify;
use tollgate_shared::event::{ApprovalExpired, ApprovalRequested, Command, ExpiryReason, Verdict};
use tollgate_shared::policy::ApprovalRule;
use uuid::Uuid;

/// A command the policy holds.
pub struct Hold {
    pub approval_id: Uuid,
    pub rule: ApprovalRule,
    pub expires_at: DateTime<Utc>,
}

impl Hold {
    pub fn new(rule: &ApprovalRule) -> Hold {
        let expires_at =
            Utc::now() + chrono::Duration::seconds(i64::try_from(rule.timeout_secs).unwrap_or(i64::MAX / 2));
        Hold { approval_id: Uuid::now_v7(), rule: rule.clone(), expires_at }
    }

    /// The `approval.requested` payload, from the (already masked) command record.
    pub fn request(&self, command: &Command, command_id: Uuid) -> ApprovalRequested {
        let classification = command.classification.as_ref();
        ApprovalRequested {
            approval_id: self.approval_id,
            command_id,
            rule: self.rule.name.clone(),
            statement: command.statement.clone(),
            classes: classification.map(|c| c.classes.iter().cloned().collect()).unwrap_or_default(),
            relations: classification.map(|c| c.relations.iter().cloned().collect()).unwrap_or_default(),
            approver_groups: self.rule.approver_groups.clone(),
            quorum: self.rule.quorum,
            expires_at: self.expires_at,
            grant_minutes: None,
        }
    }

    /// What the agent is told while nothing happens yet.
    pub fn notice(&self, url: Option<&str>) -> String {
        let where_ = match url {
            Some(base) => format!("{}/{}", base.trim_end_matches('/'), self.approval_id),
            None => format!("POST /api/v1/approvals/{}/approve on the Tollgate API", self.approval_id),
        };
        format!(
            "tollgate: waiting for approval {} (rule {}, {} approval(s) needed, expires {}); approve at {where_}",
            self.approval_id,
            self.rule.name,
            self.rule.quorum,
            self.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )
    }
}

/// Why a held command will not run.
pub enum Refusal {
    Denied {
        by: String,
        reason: String,
    },
    Expired {
        after_secs: u64,
    },
    /// The agent withdrew it (a PostgreSQL cancel request).
    Withdrawn,
}

impl Refusal {
    /// What the agent is told; `noun` is what the protocol calls a command ("statement").
    pub fn message(&self, noun: &str, approval_id: Uuid) -> String {
        match self {
            Refusal::Denied { by, reason } => format!("tollgate: {noun} denied by {by} (approval {approval_id}): {reason}"),
            Refusal::Expired { after_secs } => format!(
                "tollgate: {noun} not approved in time (approval {approval_id} expired after {after_secs} s); it was not run"
            ),
            Refusal::Withdrawn => {
                format!("tollgate: {noun} withdrawn by a cancel request (approval {approval_id}); it was not run")
            }
        }
    }

    /// How the record states the end of a request nobody decided.
    pub fn expiry(&self) -> Option<ExpiryReason> {
        match self {
            Refusal::Denied { .. } => None,
            Refusal::Expired { .. } => Some(ExpiryReason::Timeout),
            Refusal::Withdrawn => Some(ExpiryReason::Canceled),
        }
    }
}

/// Put on record that a request ended without a decision (it expired, was withdrawn, or its
/// session ended); nothing waits for it.
pub fn record_expiry(recorder: &crate::recorder::SessionRecorder, approval_id: Uuid, reason: ExpiryReason) {
    match recorder.seal(tollgate_shared::event::kind::APPROVAL_EXPIRED, &ApprovalExpired { approval_id, reason }) {
        Ok(event) => recorder.background(event),
        Err(e) => tracing::error!(error = %e, "cannot seal approval.expired"),
    }
}

/// How a hold ended.
pub enum Release {
    /// Approved by a quorum: forward the command.
    Run { approvers: Vec<String> },
    /// Denied, expired or withdrawn: the command never runs.
    Refuse(Refusal),
    /// The agent went away while waiting.
    AgentGone,
}

/// Wait for decisions until a quorum approves, someone denies, the request expires, the agent
/// withdraws it (`withdraw`) or leaves (`gone` ends).
pub async fn await_release(
    hold: &Hold,
    waiter: &mut Waiter,
    withdraw: Option<&Notify>,
    gone: impl Future<Output = ()>,
) -> Release {
    // Listening from now on, so a cancel that arrives between two turns of the loop counts.
    let never = Notify::new();
    let withdrawn = withdraw.unwrap_or(&never).notified();
    tokio::pin!(withdrawn);
    withdrawn.as_mut().enable();
    tokio::pin!(gone);
    let deadline =
        tokio::time::Instant::now() + (hold.expires_at - Utc::now()).to_std().unwrap_or(std::time::Duration::ZERO);
    let mut approvers = BTreeSet::new();
    loop {
        tokio::select! {
            decision = waiter.next() => match decision.decided.verdict {
                Verdict::Deny => {
                    let reason = decision.decided.reason.as_deref().unwrap_or("no reason given").to_owned();
                    return Release::Refuse(Refusal::Denied { by: decision.by.name, reason });
                }
                Verdict::Approve => {
                    // One vote per person, however many times they click.
                    approvers.insert((decision.by.issuer, decision.by.subject));
                    if approvers.len() >= hold.rule.quorum as usize {
                        let approvers = approvers.into_iter().map(|(issuer, subject)| format!("{subject} ({issuer})"));
                        return Release::Run { approvers: approvers.collect() };
                    }
                }
            },
            _ = tokio::time::sleep_until(deadline) => {
                return Release::Refuse(Refusal::Expired { after_secs: hold.rule.timeout_secs });
            }
            () = &mut withdrawn => return Release::Refuse(Refusal::Withdrawn),
            () = &mut gone => return Release::AgentGone,
        }
    }
}
