//! What the views hold for an event: one definition, used by the projector that writes the rows
//! and by verification, which re-derives them from the stored event bytes and reports every row
//! that says something the record does not.

use chrono::{DateTime, Utc};
use serde_json::Value;
use tollgate_shared::event::{Command, CommandResult, Envelope};
use uuid::Uuid;

pub mod approvals;

/// A row of `commands`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CommandRow {
    pub event_id: Uuid,
    pub session_id: Uuid,
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub agent_id: Uuid,
    pub resource: String,
    pub protocol: String,
    pub statement: String,
    pub params: Option<Value>,
    pub prepared: Option<String>,
    pub decision: String,
    pub classification: Option<Value>,
    pub parse_error: Option<String>,
    pub rule: Option<String>,
    pub policy_version: Option<i64>,
    pub executes: Option<Value>,
    pub step: Option<String>,
    /// The statement's shape ([`crate::fingerprint`]); absent only on rows projected before
    /// fingerprints existed, until the startup backfill reaches them.
    pub fingerprint: Option<String>,
}

/// A row of `command_results`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ResultRow {
    pub event_id: Uuid,
    pub command_id: Uuid,
    pub session_id: Uuid,
    pub at: DateTime<Utc>,
    pub outcome: String,
    pub tags: Vec<String>,
    pub rows: i64,
    pub duration_us: i64,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
}

/// The columns of `commands`, in the order [`CommandRow`] names them.
pub const COMMAND_COLUMNS: &str = "event_id, session_id, seq, at, agent_id, resource, protocol, statement, params, \
     prepared, decision, classification, parse_error, rule, policy_version, executes, step, fingerprint";

/// The columns of `command_results`, in the order [`ResultRow`] names them.
pub const RESULT_COLUMNS: &str =
    "event_id, command_id, session_id, at, outcome, tags, rows, duration_us, error_code, error_message";

/// The serde name of a unit enum variant (`Outcome::Ok` → "ok").
pub fn enum_text<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

fn json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or_default()
}

impl CommandRow {
    pub fn of<P>(envelope: &Envelope<P>, seq: i64, c: &Command) -> Self {
        let pg = c.postgres.as_ref();
        let protocol = enum_text(&c.protocol);
        CommandRow {
            fingerprint: Some(crate::fingerprint::of(&protocol, &c.statement)),
            event_id: envelope.id,
            session_id: envelope.session,
            seq,
            at: envelope.at,
            agent_id: super::apply::agent_id(&envelope.agent),
            resource: envelope.resource.name.clone(),
            protocol,
            statement: c.statement.clone(),
            params: pg.and_then(|pg| pg.params.as_ref()).map(json),
            prepared: pg.and_then(|pg| pg.prepared.clone()),
            decision: enum_text(&c.decision),
            classification: c.classification.as_ref().map(json),
            parse_error: c.parse_error.clone(),
            rule: c.rule.clone(),
            policy_version: c.policy_version.and_then(|v| i64::try_from(v).ok()),
            executes: pg.filter(|pg| !pg.executes.is_empty()).map(|pg| json(&pg.executes)),
            step: pg.and_then(|pg| pg.step.as_ref()).map(enum_text),
        }
    }

    /// The columns where `self` (as the view holds it) says something other than `recorded`.
    pub fn differences(&self, recorded: &CommandRow) -> Vec<&'static str> {
        differing(&[
            ("event_id", self.event_id == recorded.event_id),
            ("session_id", self.session_id == recorded.session_id),
            ("seq", self.seq == recorded.seq),
            ("at", same_instant(self.at, recorded.at)),
            ("agent_id", self.agent_id == recorded.agent_id),
            ("resource", self.resource == recorded.resource),
            ("protocol", self.protocol == recorded.protocol),
            ("statement", self.statement == recorded.statement),
            ("params", self.params == recorded.params),
            ("prepared", self.prepared == recorded.prepared),
            ("decision", self.decision == recorded.decision),
            ("classification", self.classification == recorded.classification),
            ("parse_error", self.parse_error == recorded.parse_error),
            ("rule", self.rule == recorded.rule),
            ("policy_version", self.policy_version == recorded.policy_version),
            ("executes", self.executes == recorded.executes),
            ("step", self.step == recorded.step),
            ("fingerprint", self.fingerprint == recorded.fingerprint),
        ])
    }
}

impl ResultRow {
    pub fn of<P>(envelope: &Envelope<P>, r: &CommandResult) -> Self {
        ResultRow {
            event_id: envelope.id,
            command_id: r.command_id,
            session_id: envelope.session,
            at: envelope.at,
            outcome: enum_text(&r.outcome),
            tags: r.tags.clone(),
            rows: i64::try_from(r.rows).unwrap_or(i64::MAX),
            duration_us: i64::try_from(r.duration_us).unwrap_or(i64::MAX),
            error_code: r.error.as_ref().map(|e| e.code.clone()),
            error_message: r.error.as_ref().map(|e| e.message.clone()),
        }
    }

    /// The columns where `self` (as the view holds it) says something other than `recorded`.
    pub fn differences(&self, recorded: &ResultRow) -> Vec<&'static str> {
        differing(&[
            ("event_id", self.event_id == recorded.event_id),
            ("command_id", self.command_id == recorded.command_id),
            ("session_id", self.session_id == recorded.session_id),
            ("at", same_instant(self.at, recorded.at)),
            ("outcome", self.outcome == recorded.outcome),
            ("tags", self.tags == recorded.tags),
            ("rows", self.rows == recorded.rows),
            ("duration_us", self.duration_us == recorded.duration_us),
            ("error_code", self.error_code == recorded.error_code),
            ("error_message", self.error_message == recorded.error_message),
        ])
    }
}

/// The names of the columns whose check failed.
fn differing(checks: &[(&'static str, bool)]) -> Vec<&'static str> {
    checks.iter().filter(|(_, same)| !same).map(|(name, _)| *name).collect()
}

/// Postgres keeps microseconds; events carry nanoseconds (the projector's writes truncate).
fn same_instant(a: DateTime<Utc>, b: DateTime<Utc>) -> bool {
    a.timestamp_micros() == b.timestamp_micros()
}

/// [`same_instant`] for times a row may not have yet.
fn instant(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => same_instant(a, b),
        (a, b) => a == b,
    }
}

/// What the views should hold for a session's stored events, or why an event cannot say.
#[derive(Default)]
pub struct Expected {
    pub commands: Vec<CommandRow>,
    pub results: Vec<ResultRow>,
    pub unreadable: Vec<String>,
}

/// Re-derive the command and result rows from stored event bytes.
pub fn expected(raws: &[&[u8]]) -> Expected {
    let mut expected = Expected::default();
    for raw in raws {
        match super::apply::decode(raw) {
            Ok(event) => match &event.payload {
                super::apply::Payload::Command(c) => {
                    expected.commands.push(CommandRow::of(&event.envelope, event.seq, c))
                }
                super::apply::Payload::Result(r) => expected.results.push(ResultRow::of(&event.envelope, r)),
                _ => {}
            },
            Err(e) => expected.unreadable.push(e),
        }
    }
    expected
}

/// Compare what the views hold with what the events say: one line per difference.
pub fn compare(expected: &Expected, commands: &[CommandRow], results: &[ResultRow]) -> Vec<String> {
    let mut problems: Vec<String> =
        expected.unreadable.iter().map(|e| format!("a stored event cannot be read: {e}")).collect();
    let held: std::collections::HashMap<Uuid, &CommandRow> = commands.iter().map(|r| (r.event_id, r)).collect();
    for want in &expected.commands {
        match held.get(&want.event_id) {
            None => {
                problems.push(format!("command {} (seq {}) is missing from the commands view", want.event_id, want.seq))
            }
            Some(row) => {
                let differ = row.differences(want);
                if !differ.is_empty() {
                    problems.push(format!(
                        "the commands view differs from the recorded event {} (seq {}) in: {}",
                        want.event_id,
                        want.seq,
                        differ.join(", ")
                    ));
                }
            }
        }
    }
    let recorded: std::collections::HashSet<Uuid> = expected.commands.iter().map(|c| c.event_id).collect();
    for row in commands.iter().filter(|r| !recorded.contains(&r.event_id)) {
        problems
            .push(format!("the commands view holds {} (seq {}), which no stored event records", row.event_id, row.seq));
    }
    let held: std::collections::HashMap<Uuid, &ResultRow> = results.iter().map(|r| (r.event_id, r)).collect();
    for want in &expected.results {
        match held.get(&want.event_id) {
            None => problems.push(format!(
                "result {} of command {} is missing from the results view",
                want.event_id, want.command_id
            )),
            Some(row) => {
                let differ = row.differences(want);
                if !differ.is_empty() {
                    problems.push(format!(
                        "the results view differs from the recorded event {} (command {}) in: {}",
                        want.event_id,
                        want.command_id,
                        differ.join(", ")
                    ));
                }
            }
        }
    }
    let recorded: std::collections::HashSet<Uuid> = expected.results.iter().map(|r| r.event_id).collect();
    for row in results.iter().filter(|r| !recorded.contains(&r.event_id)) {
        problems.push(format!(
            "the results view holds {} (command {}), which no stored event records",
            row.event_id, row.command_id
        ));
    }
    problems
}

/// The columns of a `sessions` row that its events determine.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct SessionRow {
    pub agent_id: Uuid,
    pub resource: String,
    pub resource_kind: String,
    pub node: String,
    pub client_addr: Option<String>,
    pub client_user: Option<String>,
    pub node_key: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub end_reason: Option<String>,
    pub grant_name: Option<String>,
    pub access: Option<String>,
    pub commands: i64,
    pub events: i64,
}

/// The columns of `sessions` that [`SessionRow`] names.
pub const SESSION_COLUMNS: &str = "agent_id, resource, resource_kind, node, client_addr, client_user, node_key, \
     started_at, ended_at, end_reason, grant_name, access, commands, events";

/// The session row its stored events make (`None` without any readable event).
pub fn expected_session(raws: &[&[u8]]) -> Option<SessionRow> {
    let mut row: Option<SessionRow> = None;
    for raw in raws {
        let Ok(event) = super::apply::decode(raw) else { continue };
        let e = &event.envelope;
        let row = row.get_or_insert_with(|| SessionRow {
            agent_id: super::apply::agent_id(&e.agent),
            resource: e.resource.name.clone(),
            resource_kind: e.resource.kind.as_str().to_owned(),
            node: e.node.clone(),
            ..Default::default()
        });
        row.events += 1;
        match &event.payload {
            super::apply::Payload::Started(p) => {
                row.client_addr = Some(p.client_addr.clone());
                row.client_user = Some(p.client_user.clone());
                row.node_key = Some(p.node_key.clone());
                row.started_at = Some(e.at);
                row.grant_name = p.grant.clone();
                row.access = p.access.as_ref().map(enum_text);
            }
            super::apply::Payload::Command(_) => row.commands += 1,
            super::apply::Payload::Ended(p) => {
                row.ended_at = Some(e.at);
                row.end_reason = Some(enum_text(&p.reason));
            }
            _ => {}
        }
    }
    row
}

impl SessionRow {
    /// The columns where `self` (as the view holds it) says something other than `recorded`.
    pub fn differences(&self, recorded: &SessionRow) -> Vec<&'static str> {
        differing(&[
            ("agent_id", self.agent_id == recorded.agent_id),
            ("resource", self.resource == recorded.resource),
            ("resource_kind", self.resource_kind == recorded.resource_kind),
            ("node", self.node == recorded.node),
            ("client_addr", self.client_addr == recorded.client_addr),
            ("client_user", self.client_user == recorded.client_user),
            ("node_key", self.node_key == recorded.node_key),
            ("started_at", instant(self.started_at, recorded.started_at)),
            ("ended_at", instant(self.ended_at, recorded.ended_at)),
            ("end_reason", self.end_reason == recorded.end_reason),
            ("grant_name", self.grant_name == recorded.grant_name),
            ("access", self.access == recorded.access),
            ("commands", self.commands == recorded.commands),
            ("events", self.events == recorded.events),
        ])
    }
}
