//! The shape of a policy document (DESIGN.md §7).

use crate::identity::ResourceKind;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    #[serde(default)]
    pub resources: Vec<ResourcePolicy>,
    #[serde(default)]
    pub grants: Vec<Grant>,
}

/// How a resource may be used. Credentials are not policy: they stay in the proxies' config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcePolicy {
    pub name: String,
    pub kind: ResourceKind,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub guardrails: Guardrails,
    #[serde(default)]
    pub approvals: Vec<ApprovalRule>,
    #[serde(default)]
    pub masking: Masking,
    #[serde(default)]
    pub recording: Recording,
}

/// Statements refused outright, whoever sends them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guardrails {
    /// Statement classes (see `STATEMENT_CLASSES`), e.g. `drop`, `truncate`, `copy_program`.
    #[serde(default)]
    pub deny_classes: Vec<String>,
    /// Refuse writes no condition bounds, anywhere in a statement: UPDATE and DELETE without
    /// WHERE or with one true for every row, unbounded MERGE actions, upserts from a query.
    #[serde(default)]
    pub deny_unbounded_writes: bool,
    /// The most rows one statement may write. The proxy runs a write inside a transaction (or a
    /// savepoint, in the agent's own transaction) it controls and rolls it back when the
    /// server's count is over the limit (PostgreSQL, simple protocol; see the README).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rows_written: Option<u64>,
    /// Function names, bare (`pg_read_file`) or schema-qualified.
    #[serde(default)]
    pub deny_functions: Vec<String>,
    /// Relation names, bare or schema-qualified.
    #[serde(default)]
    pub deny_relations: Vec<String>,
    /// SSH: command patterns refused (see `policy::command::Pattern`), e.g. `rm -rf /`,
    /// `shutdown`, `curl * | sh`.
    #[serde(default)]
    pub deny_commands: Vec<String>,
    /// SSH: when set, only commands these patterns allow run (matched word by word, `...` for
    /// any words); variables, redirections to files and opaque lines are refused.
    #[serde(default)]
    pub allow_commands: Vec<String>,
    /// SSH: the `host:port` destinations (globs) agents may forward to through the host
    /// (`ssh -L`); none when empty.
    #[serde(default)]
    pub allow_forwarding: Vec<String>,
    /// SSH: paths (globs) no sftp operation may touch, e.g. `/etc/*`, `*/.ssh/*`.
    #[serde(default)]
    pub deny_paths: Vec<String>,
}

/// Commands held until people approve them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRule {
    pub name: String,
    /// Statement classes that are held.
    #[serde(default)]
    pub hold_classes: Vec<String>,
    /// Hold only statements touching these relations (all, when empty).
    #[serde(default)]
    pub relations: Vec<String>,
    /// SSH: hold only commands matching one of these patterns (all, when empty).
    #[serde(default)]
    pub commands: Vec<String>,
    /// Hold only for agents in these groups (all, when empty).
    #[serde(default)]
    pub agent_groups: Vec<String>,
    /// Groups whose members may approve.
    #[serde(default)]
    pub approver_groups: Vec<String>,
    /// Approvals needed.
    #[serde(default = "one")]
    pub quorum: u32,
    /// Seconds a request lives before it expires (and the command is refused).
    #[serde(default = "fifteen_minutes")]
    pub timeout_secs: u64,
    /// PostgreSQL: hold by what a write did, not what it says: the statement runs (under the
    /// row limit's transaction) and, when it wrote more rows than this, its commit waits for
    /// approval; denied or expired, it is rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_over: Option<u64>,
}

fn one() -> u32 {
    1
}
fn fifteen_minutes() -> u64 {
    900
}

/// What is masked, and where (see `crate::mask`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Masking {
    /// Content detectors to run (every built-in one when absent; none when empty).
    #[serde(default)]
    pub detectors: Option<Vec<String>>,
    /// Detectors whose matches keep their last four characters (`****1234`).
    #[serde(default)]
    pub partial: Vec<String>,
    /// Columns masked whatever their content, by result column name (glob, case-insensitive)
    /// and optionally type.
    #[serde(default)]
    pub columns: Vec<ColumnRule>,
    /// Extra detectors.
    #[serde(default)]
    pub custom: Vec<CustomDetector>,
    /// Values never masked (exact match of what a detector found).
    #[serde(default)]
    pub allow_values: Vec<String>,
    #[serde(default)]
    pub apply_to: MaskTarget,
}

/// A column rule: a bare name glob (`"*password*"`), or a name glob with a type
/// (`{ name: "*", type: "bytea" }`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ColumnRule {
    Name(String),
    Typed(TypedColumnRule),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypedColumnRule {
    #[serde(default = "any_name")]
    pub name: String,
    /// A PostgreSQL type name (`text`, `jsonb`, `bytea`...); any type when absent.
    #[serde(default, rename = "type")]
    pub type_name: Option<String>,
}

fn any_name() -> String {
    "*".into()
}

impl ColumnRule {
    pub fn name(&self) -> &str {
        match self {
            ColumnRule::Name(name) => name,
            ColumnRule::Typed(rule) => &rule.name,
        }
    }

    pub fn type_name(&self) -> Option<&str> {
        match self {
            ColumnRule::Name(_) => None,
            ColumnRule::Typed(rule) => rule.type_name.as_deref(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomDetector {
    pub name: String,
    /// A regular expression (Rust `regex` syntax); the whole match is masked, or the group
    /// named `v` when the pattern has one.
    pub pattern: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskTarget {
    /// What the agent receives and every record (the default).
    #[default]
    AgentAndRecords,
    /// Records only; the agent sees real values.
    RecordsOnly,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recording {
    #[serde(default)]
    pub mode: RecordingMode,
    /// Masked sample rows kept in each result event.
    #[serde(default)]
    pub result_sample_rows: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingMode {
    /// A command runs only once its event is stored by JetStream.
    #[default]
    Strict,
    /// A command may run once its event is on the node's local disk.
    Spooled,
}

/// Who may reach which resources, with what access, until when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub name: String,
    pub who: Who,
    pub resources: ResourceSelector,
    pub access: Access,
    #[serde(default)]
    pub expires: Option<DateTime<Utc>>,
}

/// Agents a grant applies to: every given matcher must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Who {
    #[serde(default)]
    pub issuer: Option<String>,
    /// The agent is in at least one of these groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Agent name globs; the agent matches at least one.
    #[serde(default)]
    pub agents: Vec<String>,
    /// Attribute globs, e.g. `{ repository = "acme/*" }`.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
}

impl Who {
    pub fn is_empty(&self) -> bool {
        self.issuer.is_none() && self.groups.is_empty() && self.agents.is_empty() && self.claims.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSelector {
    #[serde(default)]
    pub names: Vec<String>,
    /// Every label must match.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    ReadOnly,
    ReadWrite,
    Admin,
}
