//! Names shared by every node: the JetStream stream, its subjects and the projector's consumer.

/// The one stream that holds every fact.
pub const STREAM: &str = "TOLLGATE_EVENTS";
/// Every event subject starts with this prefix; the event type follows it.
pub const SUBJECT_PREFIX: &str = "tollgate.events";
/// The durable consumer shared by every control-plane replica (work-queue semantics).
pub const PROJECTOR_CONSUMER: &str = "tollgate-projector";
/// Header JetStream de-duplicates on; Tollgate sets it to the event id.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// The subject an event of type `kind` is published on, e.g. `tollgate.events.command.result`.
pub fn subject_for(kind: &str) -> String {
    format!("{SUBJECT_PREFIX}.{kind}")
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
