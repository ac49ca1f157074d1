//! The decision on one classified command, the same for every protocol: a denial (the
//! protocol's own unconditional rules, then the resource's guardrails), else the approval rules
//! that hold it and the standing approvals that cover them. Returns Allow, Deny or Hold with the
//! rule behind it; never wire bytes.

use super::hold::Hold;
use crate::grants::StandingApprovals;
use tollgate_shared::event::{Classification, Decision};
use tollgate_shared::identity::AgentIdentity;
use tollgate_shared::policy::command::CommandLine;
use tollgate_shared::policy::{ApprovalRule, Covered, Denial, ResourcePolicy, StandingApproval};

/// Who asks, where: what the approval rules and standing approvals are matched against.
pub struct Asker<'a> {
    pub agent: &'a AgentIdentity,
    pub resource: &'a str,
    pub standing: &'a StandingApprovals,
}

/// A command judged.
pub struct Verdict {
    pub decision: Decision,
    /// The rule behind a deny, a hold (`approval:<rule>`) or a standing approval
    /// (`standing_approval:<rule>`).
    pub rule: Option<String>,
    pub hold: Option<Hold>,
    pub standing: Option<StandingApproval>,
}

impl Verdict {
    /// `denial` decided first; otherwise, when the command can be held (`holdable`: something
    /// that runs, not a preparation step), the approval rules of `resource` decide.
    pub fn of(
        asker: &Asker<'_>,
        denial: Option<&Denial>,
        classification: Option<&Classification>,
        resource: Option<&ResourcePolicy>,
        line: Option<&CommandLine>,
        holdable: bool,
    ) -> Verdict {
        if let Some(d) = denial {
            return Verdict { decision: Decision::Deny, rule: Some(d.rule.clone()), hold: None, standing: None };
        }
        let (held_by, standing) = match (classification, resource, holdable) {
            (Some(c), Some(resource), true) => held_by(asker, resource, c, line),
            _ => (None, None),
        };
        let hold = held_by.map(Hold::new);
        let rule = match (&hold, &standing) {
            (Some(h), _) => Some(format!("approval:{}", h.rule.name)),
            (None, Some(s)) => Some(format!("standing_approval:{}", s.rule)),
            (None, None) => None,
        };
        let decision = if hold.is_some() { Decision::Hold } else { Decision::Allow };
        Verdict { decision, rule, hold, standing: if decision == Decision::Allow { standing } else { None } }
    }

    /// The approval a record names: the request holding it, or the standing approval it ran under.
    pub fn approval_id(&self) -> Option<uuid::Uuid> {
        self.hold.as_ref().map(|h| h.approval_id).or(self.standing.as_ref().map(|s| s.approval_id))
    }
}

/// The rule a command is held under (the strictest one no standing approval covers), and the
/// standing approval it runs under when every rule holding it is covered.
fn held_by<'p>(
    asker: &Asker<'_>,
    resource: &'p ResourcePolicy,
    c: &Classification,
    line: Option<&CommandLine>,
) -> (Option<&'p ApprovalRule>, Option<StandingApproval>) {
    let classes: Vec<&str> = c.classes.iter().map(String::as_str).collect();
    let relations: Vec<&str> = c.relations.iter().map(String::as_str).collect();
    let mut standing = None;
    let mut uncovered: Option<&ApprovalRule> = None;
    for rule in resource.holds_line(&asker.agent.groups, c, line) {
        let wanted = Covered {
            issuer: &asker.agent.issuer,
            agent: &asker.agent.name,
            resource: asker.resource,
            rule: &rule.name,
            classes: &classes,
            relations: &relations,
        };
        match asker.standing.covering(&wanted) {
            Some(covering) => {
                standing.get_or_insert(covering);
            }
            None if uncovered.is_none_or(|u| rule.quorum > u.quorum) => uncovered = Some(rule),
            None => {}
        }
    }
    match uncovered {
        Some(rule) => (Some(rule), None),
        None => (None, standing),
    }
}
