//! Writing one batch of events into the projection tables, in one transaction.

use async_nats::jetstream::Message;
use serde::Deserialize;
use sqlx::{PgPool, Postgres, Transaction};
use tollgate_shared::event::{kind, Command, CommandResult, Envelope, SessionEnded, SessionStarted};
use tollgate_shared::identity::AgentIdentity;
use uuid::Uuid;

#[derive(Default)]
pub struct BatchOutcome {
    pub projected: u64,
    pub duplicates: u64,
    pub rejected: u64,
}

/// The stable id of an agent: same issuer, subject and name, same id, on every node.
pub fn agent_id(agent: &AgentIdentity) -> Uuid {
    let key = format!("{}\n{}\n{}", agent.issuer, agent.subject, agent.name);
    Uuid::new_v5(&Uuid::NAMESPACE_URL, key.as_bytes())
}

pub async fn write_batch(db: &PgPool, batch: &[Message]) -> sqlx::Result<BatchOutcome> {
    let mut tx = db.begin().await?;
    let mut outcome = BatchOutcome::default();
    for message in batch {
        let raw: &[u8] = &message.payload;
        let envelope: Envelope = match serde_json::from_slice(raw) {
            Ok(e) => e,
            Err(e) => {
                reject(&mut tx, message.subject.as_str(), raw, &format!("not an event envelope: {e}")).await?;
                outcome.rejected += 1;
                continue;
            }
        };
        match apply(&mut tx, &envelope, raw).await? {
            Applied::Yes => outcome.projected += 1,
            Applied::Duplicate => outcome.duplicates += 1,
            Applied::Rejected(reason) => {
                reject(&mut tx, message.subject.as_str(), raw, &reason).await?;
                outcome.rejected += 1;
            }
        }
    }
    tx.commit().await?;
    Ok(outcome)
}

async fn reject(tx: &mut Transaction<'_, Postgres>, subject: &str, raw: &[u8], error: &str) -> sqlx::Result<()> {
    tracing::warn!(subject, error, "event rejected by the projector (kept in rejected_events)");
    sqlx::query("INSERT INTO rejected_events (subject, raw, error) VALUES ($1, $2, $3)")
        .bind(subject)
        .bind(raw)
        .bind(error)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

enum Applied {
    Yes,
    Duplicate,
    Rejected(String),
}

fn payload<T: for<'de> Deserialize<'de>>(envelope: &Envelope) -> Result<T, String> {
    serde_json::from_value(envelope.payload.clone()).map_err(|e| format!("{} payload: {e}", envelope.kind))
}

async fn apply(tx: &mut Transaction<'_, Postgres>, e: &Envelope, raw: &[u8]) -> sqlx::Result<Applied> {
    let body: serde_json::Value = match serde_json::from_slice(raw) {
        Ok(b) => b,
        Err(err) => return Ok(Applied::Rejected(err.to_string())),
    };
    let seq = match i64::try_from(e.seq) {
        Ok(s) => s,
        Err(_) => return Ok(Applied::Rejected("seq out of range".into())),
    };
    let inserted = sqlx::query(
        "INSERT INTO events (id, session_id, seq, type, at, node, raw, body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(e.id)
    .bind(e.session)
    .bind(seq)
    .bind(&e.kind)
    .bind(e.at)
    .bind(&e.node)
    .bind(raw)
    .bind(&body)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(Applied::Duplicate);
    }

    let agent = agent_id(&e.agent);
    sqlx::query(
        "INSERT INTO agents (id, issuer, subject, name, groups, attributes, first_seen, last_seen)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
         ON CONFLICT (id) DO UPDATE SET
            groups = CASE WHEN EXCLUDED.last_seen >= agents.last_seen THEN EXCLUDED.groups ELSE agents.groups END,
            attributes = CASE WHEN EXCLUDED.last_seen >= agents.last_seen THEN EXCLUDED.attributes ELSE agents.attributes END,
            first_seen = LEAST(agents.first_seen, EXCLUDED.first_seen),
            last_seen = GREATEST(agents.last_seen, EXCLUDED.last_seen)",
    )
    .bind(agent)
    .bind(&e.agent.issuer)
    .bind(&e.agent.subject)
    .bind(&e.agent.name)
    .bind(&e.agent.groups)
    .bind(serde_json::to_value(&e.agent.attributes).unwrap_or_default())
    .bind(e.at)
    .execute(&mut **tx)
    .await?;

    // Every event makes sure its session row exists, so arrival order does not matter.
    sqlx::query(
        "INSERT INTO sessions (id, agent_id, resource, resource_kind, node, events) VALUES ($1, $2, $3, $4, $5, 1)
         ON CONFLICT (id) DO UPDATE SET events = sessions.events + 1",
    )
    .bind(e.session)
    .bind(agent)
    .bind(&e.resource.name)
    .bind(e.resource.kind.as_str())
    .bind(&e.node)
    .execute(&mut **tx)
    .await?;

    match e.kind.as_str() {
        kind::SESSION_STARTED => {
            let p: SessionStarted = match payload(e) {
                Ok(p) => p,
                Err(reason) => return Ok(Applied::Rejected(reason)),
            };
            sqlx::query(
                "UPDATE sessions SET started_at = $2, client_addr = $3, client_tls = $4, client_user = $5,
                    application_name = $6, upstream = $7, node_key = $8 WHERE id = $1",
            )
            .bind(e.session)
            .bind(e.at)
            .bind(&p.client_addr)
            .bind(p.client_tls)
            .bind(&p.client_user)
            .bind(&p.application_name)
            .bind(serde_json::to_value(&p.upstream).unwrap_or_default())
            .bind(&p.node_key)
            .execute(&mut **tx)
            .await?;
        }
        kind::COMMAND => {
            let p: Command = match payload(e) {
                Ok(p) => p,
                Err(reason) => return Ok(Applied::Rejected(reason)),
            };
            sqlx::query(
                "INSERT INTO commands (event_id, session_id, seq, at, agent_id, resource, protocol, statement, params, prepared, decision)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(e.id)
            .bind(e.session)
            .bind(seq)
            .bind(e.at)
            .bind(agent)
            .bind(&e.resource.name)
            .bind(enum_text(&p.protocol))
            .bind(&p.statement)
            .bind(p.params.as_ref().map(|v| serde_json::to_value(v).unwrap_or_default()))
            .bind(&p.prepared)
            .bind(enum_text(&p.decision))
            .execute(&mut **tx)
            .await?;
            sqlx::query("UPDATE sessions SET commands = commands + 1 WHERE id = $1")
                .bind(e.session)
                .execute(&mut **tx)
                .await?;
        }
        kind::COMMAND_RESULT => {
            let p: CommandResult = match payload(e) {
                Ok(p) => p,
                Err(reason) => return Ok(Applied::Rejected(reason)),
            };
            sqlx::query(
                "INSERT INTO command_results (event_id, command_id, session_id, at, outcome, tags, rows, duration_us, error_code, error_message)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(e.id)
            .bind(p.command_id)
            .bind(e.session)
            .bind(e.at)
            .bind(enum_text(&p.outcome))
            .bind(&p.tags)
            .bind(i64::try_from(p.rows).unwrap_or(i64::MAX))
            .bind(i64::try_from(p.duration_us).unwrap_or(i64::MAX))
            .bind(p.error.as_ref().map(|er| er.code.as_str()))
            .bind(p.error.as_ref().map(|er| er.message.as_str()))
            .execute(&mut **tx)
            .await?;
            if p.error.is_some() {
                sqlx::query("UPDATE sessions SET errors = errors + 1 WHERE id = $1")
                    .bind(e.session)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        kind::SESSION_ENDED => {
            let p: SessionEnded = match payload(e) {
                Ok(p) => p,
                Err(reason) => return Ok(Applied::Rejected(reason)),
            };
            sqlx::query("UPDATE sessions SET ended_at = $2, end_reason = $3, end_detail = $4 WHERE id = $1")
                .bind(e.session)
                .bind(e.at)
                .bind(enum_text(&p.reason))
                .bind(&p.detail)
                .execute(&mut **tx)
                .await?;
        }
        // Types this version does not project are still stored in `events`.
        _ => {}
    }
    Ok(Applied::Yes)
}

/// The serde name of a unit enum variant (`Outcome::Ok` → "ok").
fn enum_text<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}
