//! Holding a command until people approve it: the request, the notice the agent gets while it
//! waits, and the wait itself, which keeps reading what the agent sends so a vanished agent is
//! noticed (its command then never runs).

use super::super::frame::{Frame, FrameReader};
use super::super::messages::{self, Severity};
use super::super::session::{INSUFFICIENT_PRIVILEGE, QUERY_CANCELED};
use crate::approvals::Waiter;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use std::collections::BTreeSet;
use tokio::io::AsyncRead;
use tokio::sync::Notify;
use tollgate_shared::event::{ApprovalRequested, Command, ExpiryReason, Verdict};
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

    /// The NoticeResponse telling the agent why nothing happens yet.
    pub fn notice(&self, url: Option<&str>) -> Bytes {
        let where_ = match url {
            Some(base) => format!("{}/{}", base.trim_end_matches('/'), self.approval_id),
            None => format!("POST /api/v1/approvals/{}/approve on the Tollgate API", self.approval_id),
        };
        let message = format!(
            "tollgate: waiting for approval {} (rule {}, {} approval(s) needed, expires {}); approve at {where_}",
            self.approval_id,
            self.rule.name,
            self.rule.quorum,
            self.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
        messages::notice_response(&message)
    }
}

/// How a hold ended.
pub enum Release {
    /// Approved by a quorum: forward the command.
    Run { approvers: Vec<String> },
    /// Denied or expired: the agent gets this ErrorResponse; the command never runs.
    Refuse { error: Bytes, expired: Option<ExpiryReason> },
    /// The agent went away while waiting.
    AgentGone,
}

/// Wait for decisions until a quorum approves, someone denies, the request expires or the
/// agent leaves. Frames the agent sends meanwhile are kept in `later`, in order.
pub async fn await_release<R: AsyncRead + Unpin>(
    hold: &Hold,
    waiter: &mut Waiter,
    reader: &mut FrameReader<R>,
    later: &mut Vec<Frame>,
    withdraw: Option<&Notify>,
) -> Release {
    // Listening from now on, so a cancel that arrives between two turns of the loop counts.
    let never = Notify::new();
    let withdrawn = withdraw.unwrap_or(&never).notified();
    tokio::pin!(withdrawn);
    withdrawn.as_mut().enable();
    let deadline =
        tokio::time::Instant::now() + (hold.expires_at - Utc::now()).to_std().unwrap_or(std::time::Duration::ZERO);
    let mut approvers = BTreeSet::new();
    let mut more = Vec::new();
    loop {
        tokio::select! {
            decision = waiter.next() => match decision.decided.verdict {
                Verdict::Deny => {
                    let reason = decision.decided.reason.as_deref().unwrap_or("no reason given");
                    let message = format!(
                        "tollgate: statement denied by {} (approval {}): {reason}",
                        decision.by.name, hold.approval_id
                    );
                    return Release::Refuse {
                        error: messages::error_response(Severity::Error, INSUFFICIENT_PRIVILEGE, &message),
                        expired: None,
                    };
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
                let message = format!(
                    "tollgate: statement not approved in time (approval {} expired after {} s); it was not run",
                    hold.approval_id, hold.rule.timeout_secs
                );
                return Release::Refuse {
                    error: messages::error_response(Severity::Error, INSUFFICIENT_PRIVILEGE, &message),
                    expired: Some(ExpiryReason::Timeout),
                };
            }
            () = &mut withdrawn => {
                let message = format!(
                    "tollgate: statement withdrawn by a cancel request (approval {}); it was not run",
                    hold.approval_id
                );
                return Release::Refuse {
                    error: messages::error_response(Severity::Error, QUERY_CANCELED, &message),
                    expired: Some(ExpiryReason::Canceled),
                };
            }
            read = reader.read_frames(&mut more) => match read {
                // A Terminate means the agent is leaving, whether or not it closes the socket.
                Ok(true) if more.iter().any(|f| f.tag() == b'X') => return Release::AgentGone,
                Ok(true) => later.append(&mut more),
                Ok(false) | Err(_) => return Release::AgentGone,
            },
        }
    }
}
