//! The policy document: resources (with their guardrails, approval rules, masking and recording
//! settings) and grants (who may reach which resources, how). One schema, written as YAML or
//! JSON; every error names the offending path (`grants[2].resources.names[0]`).
//!
//! Pure data and validation. Distribution and enforcement live in the planes.

pub mod command;
mod diff;
mod evaluate;
mod model;
mod relation;

pub use diff::{diff, PolicyChange};
pub use evaluate::{Denial, Judgement, UNBOUNDED_WRITE};
pub use model::*;
pub use relation::RelationName;

/// What the policy KV bucket holds under `current`: the live version, as every proxy loads it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub version: u64,
    pub document: PolicyDocument,
    pub event_id: uuid::Uuid,
    /// Hash of the version's `policy.changed` event: the next version links to it.
    pub event_hash: String,
    /// Hash of the previous version's `policy.changed` event (`""` for version 1): proxies
    /// check that a version they were not shown follows the one they hold.
    #[serde(default)]
    pub previous: String,
    pub changed_by: String,
    pub changed_at: chrono::DateTime<chrono::Utc>,
    /// Each resource's compiled masking, built on first use.
    #[serde(skip)]
    pub maskers: MaskerCache,
}

impl Snapshot {
    /// The masking for a resource; the strictest masking (every detector) when the resource
    /// is not in the policy or its masking does not compile here (fail closed).
    pub fn masker(&self, resource: &str) -> Arc<Masker> {
        let compiled = self.maskers.0.get_or_init(|| {
            self.document
                .resources
                .iter()
                .map(|r| (r.name.clone(), Masker::new(&r.masking).map(Arc::new).unwrap_or_else(|_| Masker::strict())))
                .collect()
        });
        compiled.get(resource).cloned().unwrap_or_else(Masker::strict)
    }
}

/// A standing approval: commands of these classes by this agent on this resource, held by this
/// rule, touching only these relations, run without a new request until `until` (each is still
/// recorded, naming the approval it ran under).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StandingApproval {
    pub approval_id: uuid::Uuid,
    pub agent_issuer: Option<String>,
    pub agent_name: String,
    pub resource: String,
    /// The approval rule it was granted under: it stands in for that rule's quorum only.
    #[serde(default)]
    pub rule: String,
    pub classes: Vec<String>,
    /// The relations it was granted for (any, when empty).
    #[serde(default)]
    pub relations: Vec<String>,
    pub until: chrono::DateTime<chrono::Utc>,
    /// Who approved (names).
    pub approvers: Vec<String>,
}

/// What a standing approval is asked to cover: one statement, held by one rule.
pub struct Covered<'a> {
    pub issuer: &'a str,
    pub agent: &'a str,
    pub resource: &'a str,
    pub rule: &'a str,
    pub classes: &'a [&'a str],
    pub relations: &'a [&'a str],
}

impl StandingApproval {
    /// Whether this approval covers the statement now. Relations must be named as they were
    /// approved: an approval for `public.orders` does not cover a bare `orders`, which the
    /// session's search_path could point at another schema (an approval opens, so it is exact).
    pub fn covers(&self, what: &Covered<'_>, now: chrono::DateTime<chrono::Utc>) -> bool {
        let relations = self.relations.iter().filter_map(|r| RelationName::parse(r)).collect::<Vec<_>>();
        let relations_covered = self.relations.is_empty()
            || what
                .relations
                .iter()
                .all(|used| RelationName::parse(used).is_some_and(|used| relations.contains(&used)));
        now < self.until
            && !self.rule.is_empty()
            && self.rule == what.rule
            && self.agent_issuer.as_deref().is_none_or(|i| i == what.issuer)
            && self.agent_name == what.agent
            && self.resource == what.resource
            && !what.classes.is_empty()
            && what.classes.iter().all(|c| self.classes.iter().any(|g| g == c))
            && relations_covered
    }
}

/// Compiled maskers of a snapshot (not serialized: derived from the document).
#[derive(Default, Clone)]
pub struct MaskerCache(std::sync::OnceLock<HashMap<String, Arc<Masker>>>);

impl std::fmt::Debug for MaskerCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MaskerCache")
    }
}

use crate::mask::Masker;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The classes of SSH commands: guardrails and approval rules of SSH resources may name only
/// these (`exec`: a command run by an exec request; `forward`: a forwarded connection;
/// `sftp_read`, `sftp_write`: sftp operations that only read, or change something).
pub const SSH_CLASSES: &[&str] = &["exec", "forward", "sftp_read", "sftp_write"];

/// The classes a resource of this kind's commands can have.
pub fn classes_for(kind: crate::identity::ResourceKind) -> &'static [&'static str] {
    match kind {
        crate::identity::ResourceKind::Ssh => SSH_CLASSES,
        _ => STATEMENT_CLASSES,
    }
}

/// The statement classes the data plane's classifier produces; guardrails and approval rules
/// may name only these.
pub const STATEMENT_CLASSES: &[&str] = &[
    "select",
    "insert",
    "update",
    "delete",
    "merge",
    "truncate",
    "drop",
    "alter",
    "alter_system",
    "grant",
    "role",
    "create",
    "create_function",
    "do_block",
    "call",
    "copy_from",
    "copy_to",
    "copy_program",
    "explain",
    "transaction",
    "set",
    "show",
    "lock",
    "vacuum",
    "prepare",
    "execute",
    "cursor",
    "listen",
    "notify",
    "load",
    "checkpoint",
    "refresh",
    "user_function",
    "dynamic_sql",
    "other",
];

/// One problem in a policy document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    /// Where: `resources[0].guardrails.deny_classes[1]`, or `.` for the document.
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found, so an author fixes them in one round.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid policy: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct PolicyErrors(pub Vec<PolicyProblem>);

/// The document's text format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl PolicyDocument {
    /// Parse and validate a document.
    pub fn parse(text: &str, format: Format) -> Result<Self, PolicyErrors> {
        let parsed: Result<PolicyDocument, (String, String)> = match format {
            Format::Json => {
                let mut de = serde_json::Deserializer::from_str(text);
                serde_path_to_error::deserialize(&mut de).map_err(|e| (e.path().to_string(), e.inner().to_string()))
            }
            Format::Yaml => {
                let de = serde_norway::Deserializer::from_str(text);
                serde_path_to_error::deserialize(de).map_err(|e| (e.path().to_string(), e.inner().to_string()))
            }
        };
        let document = parsed.map_err(|(path, message)| PolicyErrors(vec![PolicyProblem { path, message }]))?;
        document.validate()?;
        Ok(document)
    }

    /// Semantic checks the schema cannot express.
    pub fn validate(&self) -> Result<(), PolicyErrors> {
        let mut problems = Vec::new();
        let mut problem = |path: String, message: String| problems.push(PolicyProblem { path, message });
        let mut names = HashSet::new();
        for (i, r) in self.resources.iter().enumerate() {
            let at = format!("resources[{i}]");
            if r.name.trim().is_empty() {
                problem(format!("{at}.name"), "must not be empty".into());
            }
            if !names.insert(r.name.as_str()) {
                problem(format!("{at}.name"), format!("resource {:?} is defined twice", r.name));
            }
            let classes = classes_for(r.kind);
            let ssh = r.kind == crate::identity::ResourceKind::Ssh;
            let patterns = |at: String, list: &[String], problem: &mut dyn FnMut(String, String)| {
                for (j, pattern) in list.iter().enumerate() {
                    if !ssh {
                        problem(format!("{at}[{j}]"), "command patterns apply to ssh resources only".into());
                    } else if let Err(e) = command::Pattern::parse(pattern) {
                        problem(format!("{at}[{j}]"), format!("{pattern:?} is not a command pattern: {e}"));
                    }
                }
            };
            patterns(format!("{at}.guardrails.deny_commands"), &r.guardrails.deny_commands, &mut problem);
            patterns(format!("{at}.guardrails.allow_commands"), &r.guardrails.allow_commands, &mut problem);
            for (j, rule) in r.approvals.iter().enumerate() {
                patterns(format!("{at}.approvals[{j}].commands"), &rule.commands, &mut problem);
            }
            match r.guardrails.max_rows_written {
                Some(0) => problem(
                    format!("{at}.guardrails.max_rows_written"),
                    "0 would refuse every write; deny the write classes instead".into(),
                ),
                Some(_) if ssh => problem(
                    format!("{at}.guardrails.max_rows_written"),
                    "a row limit applies to postgres resources only".into(),
                ),
                _ => {}
            }
            if !ssh && !r.guardrails.deny_paths.is_empty() {
                problem(format!("{at}.guardrails.deny_paths"), "paths apply to ssh resources only".into());
            }
            for (j, destination) in r.guardrails.allow_forwarding.iter().enumerate() {
                let at = format!("{at}.guardrails.allow_forwarding[{j}]");
                if !ssh {
                    problem(at, "forwarding applies to ssh resources only".into());
                } else if destination.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.is_empty()) {
                    problem(at, format!("{destination:?} is not host:port (globs allowed)"));
                }
            }
            for (j, class) in r.guardrails.deny_classes.iter().enumerate() {
                if !classes.contains(&class.as_str()) {
                    problem(format!("{at}.guardrails.deny_classes[{j}]"), format!("unknown statement class {class:?}"));
                }
            }
            for (j, relation) in r.guardrails.deny_relations.iter().enumerate() {
                if RelationName::parse(relation).is_none() {
                    problem(
                        format!("{at}.guardrails.deny_relations[{j}]"),
                        format!("{relation:?} is not a relation name"),
                    );
                }
            }
            for (j, rule) in r.approvals.iter().enumerate() {
                let at = format!("{at}.approvals[{j}]");
                for (k, relation) in rule.relations.iter().enumerate() {
                    if RelationName::parse(relation).is_none() {
                        problem(format!("{at}.relations[{k}]"), format!("{relation:?} is not a relation name"));
                    }
                }
                if rule.hold_classes.is_empty() {
                    problem(format!("{at}.hold_classes"), "name the statement classes to hold".into());
                }
                for (k, class) in rule.hold_classes.iter().enumerate() {
                    if !classes.contains(&class.as_str()) && class != evaluate::UNBOUNDED_WRITE {
                        problem(format!("{at}.hold_classes[{k}]"), format!("unknown statement class {class:?}"));
                    }
                }
                if rule.quorum == 0 {
                    problem(format!("{at}.quorum"), "must be at least 1".into());
                }
                if rule.timeout_secs == 0 {
                    problem(format!("{at}.timeout_secs"), "must be at least 1".into());
                }
                if rule.approver_groups.is_empty() {
                    problem(format!("{at}.approver_groups"), "name at least one group that may approve".into());
                }
                if rule.rows_over.is_some() && ssh {
                    problem(
                        format!("{at}.rows_over"),
                        "holding by rows written applies to postgres resources only".into(),
                    );
                }
            }
            if let Err(found) = crate::mask::Masker::new(&r.masking) {
                for p in found {
                    problem(format!("{at}.masking.{}", p.field), p.message);
                }
            }
        }
        for (i, g) in self.grants.iter().enumerate() {
            let at = format!("grants[{i}]");
            if g.who.is_empty() {
                problem(format!("{at}.who"), "must match something (issuer, groups, agents or claims)".into());
            }
            if g.resources.names.is_empty() && g.resources.labels.is_empty() {
                problem(format!("{at}.resources"), "must name resources or select them by labels".into());
            }
            for (j, name) in g.resources.names.iter().enumerate() {
                if !names.contains(name.as_str()) {
                    problem(format!("{at}.resources.names[{j}]"), format!("no resource named {name:?}"));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(PolicyErrors(problems))
        }
    }
}

#[cfg(test)]
mod tests;
