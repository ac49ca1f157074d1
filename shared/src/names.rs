//! Names shared by every node: the JetStream stream, its subjects and the projector's consumer.

/// The one stream that holds every fact.
pub const STREAM: &str = "TOLLGATE_EVENTS";
/// Every event subject starts with this prefix; the event type follows it.
pub const SUBJECT_PREFIX: &str = "tollgate.events";
/// The durable consumer shared by every control-plane replica (work-queue semantics).
pub const PROJECTOR_CONSUMER: &str = "tollgate-projector";
/// Header JetStream de-duplicates on; Tollgate sets it to the event id.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// The node name the control plane publishes its events under.
pub const CONTROL_NODE: &str = "control";
/// The SSH user an agent logs in to the gateway as to trade its token for a certificate.
pub const SSH_CERTIFICATE_USER: &str = "tollgate-certificate";

/// The subject an event of type `kind` from `node` is published on, e.g.
/// `tollgate.events.proxy-a.command.result`: NATS permissions let each node publish under its
/// own name only.
pub fn subject_for(node: &str, kind: &str) -> String {
    format!("{SUBJECT_PREFIX}.{node}.{kind}")
}

/// Where approval decisions are published (by the control plane only).
pub fn decisions_subject() -> String {
    subject_for(CONTROL_NODE, crate::event::kind::APPROVAL_DECIDED)
}

/// Where requests to end a live session are published (by the control plane only).
pub fn session_ends_subject() -> String {
    subject_for(CONTROL_NODE, crate::event::kind::SESSION_END_REQUESTED)
}

/// Every `approval.*` event, from any node.
pub fn approval_subjects() -> String {
    format!("{SUBJECT_PREFIX}.*.approval.>")
}

/// Whether a node name can be a subject token (and is not the control plane's).
pub fn valid_node(name: &str) -> bool {
    !name.is_empty() && name != CONTROL_NODE && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The wildcard that covers every event subject.
pub fn all_subjects() -> String {
    format!("{SUBJECT_PREFIX}.>")
}

/// The JetStream KV bucket holding the current policy snapshot, and its key.
pub const POLICY_BUCKET: &str = "tollgate_policy";
pub const POLICY_KEY: &str = "current";

/// The chain every `policy.changed` event belongs to (its `session`): version N is seq N-1.
pub fn policy_chain() -> uuid::Uuid {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, b"tollgate:policy")
}

/// The JetStream KV bucket of standing approvals ("this agent, this resource, these classes,
/// for N minutes"), one key per approval: `grant_<approval id>`.
pub const GRANTS_BUCKET: &str = "tollgate_grants";

pub fn grant_key(approval_id: uuid::Uuid) -> String {
    format!("grant_{}", approval_id.simple())
}
