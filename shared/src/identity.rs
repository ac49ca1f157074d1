//! Who an agent is, as every event carries it, and which resource it touches.

pub mod mapping;
pub mod presets;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The identity of an agent, derived from its verified token.
///
/// `name` tells apart bots that share one `subject`; `attributes` keeps the claims a reviewer
/// needs (repository, workflow, run id...). No claim holding a secret is ever kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentIdentity {
    pub issuer: String,
    pub subject: String,
    pub name: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, serde_json::Value>,
}

/// The kinds of system Tollgate stands in front of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceKind {
    Postgres,
    Ssh,
    Kubernetes,
    /// The policy itself (the subject of `policy.changed` events).
    Policy,
}

impl ResourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Postgres => "postgres",
            ResourceKind::Ssh => "ssh",
            ResourceKind::Kubernetes => "kubernetes",
            ResourceKind::Policy => "policy",
        }
    }
}

/// The resource a session is attached to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRef {
    pub name: String,
    pub kind: ResourceKind,
}
