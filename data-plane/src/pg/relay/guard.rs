//! Judging one statement as the server will run it: its own analysis plus the prepared
//! statements a SQL `EXECUTE` in it runs, against the live policy's guardrails and approval
//! rules, the session's grant, and the rules no policy can switch off (SQL the proxy cannot see,
//! settings that would change how the server reads SQL). The record of the judgement (masked)
//! comes out with the decision; wire bytes are the relay's business.

use super::super::catalog::{Calls, CatalogCell};
use super::super::classify::{self, Analysis, ClassifyCache, ParseError, Setting, SettingValue};
use super::super::names::Prepared;
use super::super::session::INSUFFICIENT_PRIVILEGE;
use super::super::{lexical, mask::mask_statement, messages};
use crate::approvals::ApprovalHub;
use crate::grants::StandingApprovals;
use crate::policy::PolicyReceiver;
use crate::session::hold::Hold;
use crate::session::judge::{Asker, Verdict};
use bytes::Bytes;
use std::sync::Arc;
use tollgate_shared::event::{Classification, Command, Decision, Executed, PgCommand, Protocol, Step};
use tollgate_shared::identity::AgentIdentity;
use tollgate_shared::mask::{Masker, Tally};
use tollgate_shared::policy::{Access, Denial};

/// What judges each statement: its classification (cached by text) against the live policy's
/// guardrails and approval rules for this resource and the session's grant.
pub struct Guard<'a> {
    pub classifier: &'a ClassifyCache,
    pub policy: &'a PolicyReceiver,
    pub resource: &'a str,
    pub access: Access,
    /// The agent (approval rules may hold only some groups; standing approvals name agents).
    pub agent: &'a AgentIdentity,
    pub standing: &'a StandingApprovals,
    /// Signalled by the agent's cancel requests: a held statement is withdrawn.
    pub withdraw: Option<Arc<tokio::sync::Notify>>,
    pub approvals: &'a Arc<ApprovalHub>,
    pub approval_url: Option<&'a str>,
    /// Named prepared statements a session may hold at once.
    pub max_prepared: usize,
    /// The resource's functions, to judge calls by what they can do.
    pub catalog: &'a CatalogCell,
}

/// A refusal the relay decided before judging (a name it does not know, a limit).
pub struct Refusal {
    pub rule: &'static str,
    pub reason: String,
}

/// One statement, as the server will run it.
pub struct Subject<'a> {
    pub protocol: Protocol,
    pub step: Option<Step>,
    /// The text the server runs: the Query, or the prepared statement's text.
    pub text: &'a str,
    pub analysis: Result<&'a Analysis, &'a ParseError>,
    /// Prepared statements a SQL `EXECUTE` in it runs.
    pub executes: &'a [(String, Arc<Prepared>)],
    pub refusal: Option<Refusal>,
    pub params: Option<Vec<Option<String>>>,
    pub prepared: Option<String>,
}

/// A statement judged: its record, and what happens to it.
pub struct Judged {
    pub command: Command,
    /// Denied: the ErrorResponse the agent gets.
    pub refusal: Option<Bytes>,
    /// Held until people approve it.
    pub hold: Option<Hold>,
}

impl Guard<'_> {
    /// The live masking for this resource (every detector when no policy is loaded).
    pub fn masker(&self) -> Arc<Masker> {
        crate::policy::masker(self.policy.borrow().as_deref(), self.resource)
    }

    /// Approval rules that would hold this statement by the rows it writes (`rows_over`).
    pub fn rows_rules(&self, c: &Classification) -> Vec<tollgate_shared::policy::ApprovalRule> {
        let policy = self.policy.borrow();
        let Some(resource) = policy.as_ref().and_then(|p| p.document.resource(self.resource)) else {
            return Vec::new();
        };
        resource.holds_after(&self.agent.groups, c).into_iter().cloned().collect()
    }

    /// The live policy's `max_rows_written` for this resource.
    pub fn row_limit(&self) -> Option<u64> {
        let policy = self.policy.borrow();
        policy.as_ref()?.document.resource(self.resource)?.guardrails.max_rows_written
    }

    pub fn judge(&self, subject: Subject<'_>) -> Judged {
        let policy = self.policy.borrow().clone();
        let resource = policy.as_ref().and_then(|p| p.document.resource(self.resource));
        // What runs: the statement, and every prepared statement it EXECUTEs.
        let runs: Vec<&Analysis> = match subject.analysis {
            Ok(own) => std::iter::once(own).chain(subject.executes.iter().map(|(_, p)| &*p.analysis)).collect(),
            Err(_) => Vec::new(),
        };
        let mut calls = None;
        let classification = runs.first().map(|own| {
            let mut c = own.classification.clone();
            for inner in &runs[1..] {
                classify::merge(&mut c, &inner.classification);
            }
            let catalog = self.catalog.current();
            calls = Some(catalog.expand(&mut c, &runs, self.access == Access::ReadOnly));
            // `IS NOT NULL` on a column that cannot be null bounds nothing.
            c.unbounded_write |= runs.iter().flat_map(|a| &a.null_tested).any(|t| catalog.reaches_every_row(t));
            c
        });
        let masker = crate::policy::masker(policy.as_deref(), self.resource);
        let denial = match (&subject.refusal, subject.analysis, &classification) {
            (Some(r), _, _) => Some(Denial { rule: r.rule.into(), reason: r.reason.clone() }),
            // Refuse what cannot be parsed: nobody can say what it would do.
            (None, Err(e), _) => Some(Denial { rule: "unparsable".into(), reason: e.to_string() }),
            (None, Ok(_), Some(c)) => self.unconditional(&runs, calls, &masker).or_else(|| match (&policy, resource) {
                (None, _) => Some(Denial { rule: "no_policy".into(), reason: "no policy is loaded".into() }),
                (Some(_), None) => Some(Denial {
                    rule: "resource_not_in_policy".into(),
                    reason: "the resource left the policy".into(),
                }),
                (Some(_), Some(resource)) => resource.deny(self.access, c),
            }),
            (None, Ok(_), None) => None,
        };
        // Approval rules hold what runs, never a Parse or a Bind. Every rule that holds it needs
        // its own quorum, or a standing approval granted under that rule.
        let asker = Asker { agent: self.agent, resource: self.resource, standing: self.standing };
        let verdict =
            Verdict::of(&asker, denial.as_ref(), classification.as_ref(), resource, None, subject.step.is_none());
        let refusal = denial.as_ref().map(|d| self.denial_error(&d.rule, &d.reason));
        let approval_id = verdict.approval_id();
        let record = Record { subject: &subject, classification, decision: verdict.decision, rule: verdict.rule };
        let mut command = record.masked(&masker);
        command.policy_version = policy.map(|p| p.version);
        command.approval_id = approval_id;
        let hold = verdict.hold;
        Judged { command, refusal, hold }
    }

    /// A Bind or Execute of a name the proxy does not know, refused before any judgement.
    pub fn refused(&self, step: Option<Step>, prepared: &str, refusal: Refusal) -> Judged {
        let postgres =
            PgCommand { prepared: (!prepared.is_empty()).then(|| prepared.to_owned()), step, ..Default::default() };
        let command = Command {
            postgres: postgres.unless_empty(),
            rule: Some(refusal.rule.into()),
            policy_version: self.policy.borrow().as_ref().map(|p| p.version),
            ..Command::new(Protocol::Extended, String::new(), Decision::Deny)
        };
        Judged { command, refusal: Some(self.denial_error(refusal.rule, &refusal.reason)), hold: None }
    }

    /// The ErrorResponse a denied statement's agent gets.
    fn denial_error(&self, rule: &str, reason: &str) -> Bytes {
        let message = format!("tollgate: statement denied by rule {rule} on resource {}: {reason}", self.resource);
        messages::error_response(messages::Severity::Error, INSUFFICIENT_PRIVILEGE, &message)
    }

    /// What no policy can allow: SQL the proxy cannot see before it runs, settings that would
    /// make the server read SQL differently from the proxy, and (for a read-only grant) a
    /// change of role.
    fn unconditional(&self, runs: &[&Analysis], calls: Option<Calls>, masker: &Masker) -> Option<Denial> {
        let calls = calls.unwrap_or(Calls { read_only_violation: None, refusal: None });
        if let Some(reason) = calls.refusal {
            return Some(Denial { rule: classify::DYNAMIC_SQL.into(), reason: format!("a called function: {reason}") });
        }
        if let Some(function) = calls.read_only_violation {
            return Some(Denial {
                rule: "read_only_grant".into(),
                reason: format!("{function} is a volatile function that can change state a read-only session may not"),
            });
        }
        if masker.masks_agent() && runs.iter().any(|a| a.binary_copy_out) {
            return Some(Denial {
                rule: "masking:copy_binary".into(),
                reason: "binary COPY output cannot be masked value by value; use the text or CSV format".into(),
            });
        }
        for analysis in runs {
            if let Some(reason) = &analysis.refusal {
                return Some(Denial { rule: classify::DYNAMIC_SQL.into(), reason: reason.clone() });
            }
            for setting in &analysis.settings {
                if let Err(reason) = lexical::check_setting(setting) {
                    return Some(Denial { rule: "session_settings".into(), reason });
                }
                if self.access == Access::ReadOnly && changes_role(setting) {
                    return Some(Denial {
                        rule: "read_only_grant".into(),
                        reason: "a read-only session cannot change its role".into(),
                    });
                }
            }
        }
        None
    }
}

/// `SET ROLE x`, `SET SESSION AUTHORIZATION x` (or set_config of either) to anything but the
/// session's own.
fn changes_role(setting: &Setting) -> bool {
    let Some(name) = &setting.name else { return true };
    (name == "role" || name == "session_authorization")
        && match &setting.value {
            SettingValue::Literal(v) => !v.eq_ignore_ascii_case("none") && !v.eq_ignore_ascii_case("default"),
            SettingValue::Computed => true,
            SettingValue::Reset | SettingValue::ResetAll => false,
        }
}

/// The parts of a command record, before masking.
struct Record<'s, 'a> {
    subject: &'s Subject<'a>,
    classification: Option<Classification>,
    decision: Decision,
    rule: Option<String>,
}

impl Record<'_, '_> {
    /// The command as recorded: statement, executed statements, parameters and parse error
    /// masked with the resource's masking (the upstream gets them as the agent sent them).
    fn masked(self, masker: &Masker) -> Command {
        let subject = self.subject;
        let mut tally = Tally::default();
        let statement = mask_statement(masker, subject.text, &mut tally).into_owned();
        let executes = subject
            .executes
            .iter()
            .map(|(name, p)| Executed {
                name: name.clone(),
                statement: mask_statement(masker, &p.text, &mut tally).into_owned(),
            })
            .collect();
        let params = subject.params.clone().map(|params| {
            params.into_iter().map(|p| p.map(|p| masker.mask_str(&p, None, &mut tally).into_owned())).collect()
        });
        let parse_error = subject.analysis.err().map(|e| masker.mask_str(&e.0, None, &mut tally).into_owned());
        let postgres =
            PgCommand { params, prepared: subject.prepared.clone(), executes, step: subject.step, row_limit: None };
        Command {
            postgres: postgres.unless_empty(),
            classification: self.classification,
            parse_error,
            rule: self.rule,
            masked: tally.into_counts(),
            ..Command::new(subject.protocol, statement, self.decision)
        }
    }
}
