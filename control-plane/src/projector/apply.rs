//! Writing one batch of events into the projection tables: one transaction, and a fixed number
//! of statements per batch whatever its size (rows travel as arrays through UNNEST), so the
//! projector's load on Postgres shrinks per event as traffic grows.

use async_nats::jetstream::Message;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use sqlx::{PgPool, Postgres, Transaction};
use std::collections::{BTreeMap, HashSet};
use tollgate_shared::control::{ControlKind, ControlPublicKey, SIGNATURE_HEADER};
use tollgate_shared::event::{
    kind, ApprovalDecided, ApprovalExpired, ApprovalRefused, ApprovalReleased, ApprovalRequested, AuthFailed, Command,
    CommandResult, Envelope, NodeDecided, NodeStarted, PolicyChanged, SessionEndRequested, SessionEnded,
    SessionStarted,
};
use tollgate_shared::identity::AgentIdentity;
use uuid::Uuid;

use super::rows::{enum_text, CommandRow, ResultRow, COMMAND_COLUMNS, RESULT_COLUMNS};

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

/// A message that decoded into an event with a payload of the shape its type promises.
pub(super) struct Decoded<'a> {
    pub(super) envelope: Envelope<&'a RawValue>,
    pub(super) seq: i64,
    raw: &'a [u8],
    pub(super) payload: Payload,
}

pub(super) enum Payload {
    Started(SessionStarted),
    Command(Command),
    Result(CommandResult),
    Ended(SessionEnded),
    AuthFailed(AuthFailed),
    PolicyChanged(Box<PolicyChanged>),
    ApprovalRequested(Box<ApprovalRequested>),
    ApprovalDecided(ApprovalDecided),
    ApprovalExpired(ApprovalExpired),
    ApprovalRefused(ApprovalRefused),
    ApprovalReleased(ApprovalReleased),
    NodeStarted(NodeStarted),
    NodeDecided(NodeDecided),
    /// A person asked to end a session (checked for its shape; its session's own end says the
    /// rest).
    SessionEndRequested,
    /// A type this version does not project; the event is still stored.
    Other,
}

impl Payload {
    /// The approval request an approval event is about.
    pub(super) fn approval_id(&self) -> Option<Uuid> {
        match self {
            Payload::ApprovalRequested(p) => Some(p.approval_id),
            Payload::ApprovalDecided(p) => Some(p.approval_id),
            Payload::ApprovalExpired(p) => Some(p.approval_id),
            Payload::ApprovalReleased(p) => Some(p.approval_id),
            Payload::ApprovalRefused(p) => p.approval_id,
            _ => None,
        }
    }
}

fn typed<'a, T: Deserialize<'a>>(envelope: &Envelope<&'a RawValue>) -> Result<T, String> {
    serde_json::from_str(envelope.payload.get()).map_err(|e| format!("{} payload: {e}", envelope.kind))
}

/// Parse an event once: the envelope, and the payload in the shape its type promises.
pub(super) fn decode(raw: &[u8]) -> Result<Decoded<'_>, String> {
    let envelope: Envelope<&RawValue> =
        serde_json::from_slice(raw).map_err(|e| format!("not an event envelope: {e}"))?;
    let seq = i64::try_from(envelope.seq).map_err(|_| "seq out of range".to_owned())?;
    let payload = match envelope.kind.as_str() {
        kind::SESSION_STARTED => Payload::Started(typed(&envelope)?),
        kind::COMMAND => Payload::Command(typed(&envelope)?),
        kind::COMMAND_RESULT => Payload::Result(typed(&envelope)?),
        kind::SESSION_ENDED => Payload::Ended(typed(&envelope)?),
        kind::AUTH_FAILED => Payload::AuthFailed(typed(&envelope)?),
        kind::POLICY_CHANGED => Payload::PolicyChanged(Box::new(typed(&envelope)?)),
        kind::APPROVAL_REQUESTED => Payload::ApprovalRequested(Box::new(typed(&envelope)?)),
        kind::APPROVAL_DECIDED => Payload::ApprovalDecided(typed(&envelope)?),
        kind::APPROVAL_EXPIRED => Payload::ApprovalExpired(typed(&envelope)?),
        kind::APPROVAL_REFUSED => Payload::ApprovalRefused(typed(&envelope)?),
        kind::APPROVAL_RELEASED => Payload::ApprovalReleased(typed(&envelope)?),
        kind::NODE_STARTED => Payload::NodeStarted(typed(&envelope)?),
        kind::NODE_DECIDED => Payload::NodeDecided(typed(&envelope)?),
        kind::SESSION_END_REQUESTED => {
            let _: SessionEndRequested = typed(&envelope)?;
            Payload::SessionEndRequested
        }
        _ => Payload::Other,
    };
    Ok(Decoded { envelope, seq, raw, payload })
}

/// Whether an event is one only the control plane publishes (so it must carry its signature):
/// decisions, refusals, policy changes, node decisions, approvals asked ahead of a run,
/// people ending sessions.
fn from_control(event: &Decoded<'_>) -> bool {
    match &event.payload {
        Payload::ApprovalDecided(_)
        | Payload::ApprovalRefused(_)
        | Payload::PolicyChanged(_)
        | Payload::NodeDecided(_)
        | Payload::SessionEndRequested => true,
        Payload::ApprovalRequested(r) => r.command_id.is_nil() || r.grant_minutes.is_some(),
        _ => false,
    }
}

fn signed_by_control(message: &Message, control: &ControlPublicKey) -> bool {
    let signature = message.headers.as_ref().and_then(|h| h.get(SIGNATURE_HEADER)).map(|v| v.as_str());
    signature.is_some_and(|s| control.verify(ControlKind::Event, &message.payload, s).is_ok())
}

pub async fn write_batch(db: &PgPool, batch: &[Message], control: &ControlPublicKey) -> sqlx::Result<BatchOutcome> {
    let mut outcome = BatchOutcome::default();
    let mut seen = HashSet::new();
    let mut decoded = Vec::with_capacity(batch.len());
    let mut rejected: Vec<(&str, &[u8], String)> = Vec::new();
    for message in batch {
        // A proxy's batch message holds several of its events, one per line; control-plane
        // events always travel alone, signed.
        let batched = tollgate_shared::stream::is_batch(&message.subject);
        for raw in tollgate_shared::stream::events_in(&message.subject, &message.payload) {
            match decode(raw) {
                Ok(event) if from_control(&event) && (batched || !signed_by_control(message, control)) => rejected
                    .push((
                        message.subject.as_str(),
                        raw,
                        format!("{} event without the control plane's signature", event.envelope.kind),
                    )),
                // The same event twice in one batch (a redelivery) counts once.
                Ok(event) if !seen.insert(event.envelope.id) => outcome.duplicates += 1,
                Ok(event) => decoded.push(event),
                Err(reason) => rejected.push((message.subject.as_str(), raw, reason)),
            }
        }
    }

    let mut tx = db.begin().await?;
    let inserted = insert_events(&mut tx, &decoded).await?;
    let fresh: Vec<&Decoded> = decoded.iter().filter(|d| inserted.contains(&d.envelope.id)).collect();
    outcome.duplicates += (decoded.len() - fresh.len()) as u64;
    outcome.projected = fresh.len() as u64;
    // Refused attempts, policy changes and people's decisions belong to no session; only
    // agents name agents.
    let in_sessions: Vec<&Decoded> = fresh
        .iter()
        .copied()
        .filter(|d| {
            let ahead_of_run = matches!(&d.payload, Payload::ApprovalRequested(r) if r.command_id.is_nil());
            !ahead_of_run
                && !matches!(
                    d.payload,
                    Payload::AuthFailed(_)
                        | Payload::PolicyChanged(_)
                        | Payload::ApprovalDecided(_)
                        | Payload::ApprovalRefused(_)
                        | Payload::NodeStarted(_)
                        | Payload::NodeDecided(_)
                        | Payload::SessionEndRequested
                )
        })
        .collect();
    let verified: Vec<&Decoded> = fresh
        .iter()
        .copied()
        .filter(|d| match &d.payload {
            Payload::AuthFailed(a) => a.verified,
            Payload::PolicyChanged(_)
            | Payload::ApprovalDecided(_)
            | Payload::ApprovalRefused(_)
            | Payload::NodeStarted(_)
            | Payload::NodeDecided(_)
            | Payload::SessionEndRequested => false,
            // Asked ahead of a run: the agent has not shown up yet.
            Payload::ApprovalRequested(r) => !r.command_id.is_nil(),
            _ => true,
        })
        .collect();
    upsert_agents(&mut tx, &verified).await?;
    upsert_sessions(&mut tx, &in_sessions).await?;
    insert_commands(&mut tx, &fresh).await?;
    insert_results(&mut tx, &fresh).await?;
    for event in &fresh {
        session_lifecycle(&mut tx, event).await?;
    }
    for (subject, raw, error) in &rejected {
        tracing::warn!(subject, error, "event rejected by the projector (kept in rejected_events)");
        sqlx::query("INSERT INTO rejected_events (subject, raw, error) VALUES ($1, $2, $3)")
            .bind(subject)
            .bind(raw)
            .bind(error)
            .execute(&mut *tx)
            .await?;
    }
    outcome.rejected = rejected.len() as u64;
    tx.commit().await?;
    Ok(outcome)
}

async fn insert_events(tx: &mut Transaction<'_, Postgres>, events: &[Decoded<'_>]) -> sqlx::Result<HashSet<Uuid>> {
    if events.is_empty() {
        return Ok(HashSet::new());
    }
    let ids: Vec<Uuid> = events.iter().map(|e| e.envelope.id).collect();
    let sessions: Vec<Uuid> = events.iter().map(|e| e.envelope.session).collect();
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.envelope.kind.as_str()).collect();
    let ats: Vec<DateTime<Utc>> = events.iter().map(|e| e.envelope.at).collect();
    let nodes: Vec<&str> = events.iter().map(|e| e.envelope.node.as_str()).collect();
    let raws: Vec<&[u8]> = events.iter().map(|e| e.raw).collect();
    let approvals: Vec<Option<Uuid>> = events.iter().map(|e| e.payload.approval_id()).collect();
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO events (id, session_id, seq, type, at, node, raw, approval_id)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::int8[], $4::text[], $5::timestamptz[], $6::text[], $7::bytea[],
                              $8::uuid[])
         ON CONFLICT (id) DO NOTHING RETURNING id",
    )
    .bind(ids)
    .bind(sessions)
    .bind(seqs)
    .bind(kinds)
    .bind(ats)
    .bind(nodes)
    .bind(raws)
    .bind(approvals)
    .fetch_all(&mut **tx)
    .await?;
    Ok(inserted.into_iter().collect())
}

async fn upsert_agents(tx: &mut Transaction<'_, Postgres>, events: &[&Decoded<'_>]) -> sqlx::Result<()> {
    // One row per agent: its first and last appearance in the batch, and its latest claims.
    let mut agents: BTreeMap<Uuid, (&AgentIdentity, DateTime<Utc>, DateTime<Utc>)> = BTreeMap::new();
    for e in events {
        let entry =
            agents.entry(agent_id(&e.envelope.agent)).or_insert((&e.envelope.agent, e.envelope.at, e.envelope.at));
        if e.envelope.at >= entry.2 {
            *entry = (&e.envelope.agent, entry.1, e.envelope.at);
        }
        entry.1 = entry.1.min(e.envelope.at);
    }
    if agents.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = agents.keys().copied().collect();
    let rows: Vec<&(&AgentIdentity, DateTime<Utc>, DateTime<Utc>)> = agents.values().collect();
    let json = |a: &AgentIdentity| serde_json::to_value(a).unwrap_or_default();
    sqlx::query(
        "INSERT INTO agents (id, issuer, subject, name, groups, attributes, first_seen, last_seen)
         SELECT u.id, u.a->>'issuer', u.a->>'subject', u.a->>'name',
                ARRAY(SELECT jsonb_array_elements_text(COALESCE(u.a->'groups', '[]'))), COALESCE(u.a->'attributes', '{}'),
                u.first_seen, u.last_seen
         FROM UNNEST($1::uuid[], $2::jsonb[], $3::timestamptz[], $4::timestamptz[]) AS u(id, a, first_seen, last_seen)
         ON CONFLICT (id) DO UPDATE SET
            groups = CASE WHEN EXCLUDED.last_seen >= agents.last_seen THEN EXCLUDED.groups ELSE agents.groups END,
            attributes = CASE WHEN EXCLUDED.last_seen >= agents.last_seen THEN EXCLUDED.attributes ELSE agents.attributes END,
            first_seen = LEAST(agents.first_seen, EXCLUDED.first_seen),
            last_seen = GREATEST(agents.last_seen, EXCLUDED.last_seen)",
    )
    .bind(ids)
    .bind(rows.iter().map(|r| json(r.0)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.2).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Every event makes sure its session row exists and counts itself, so arrival order does not
/// matter; commands and errors are counted here too.
async fn upsert_sessions(tx: &mut Transaction<'_, Postgres>, events: &[&Decoded<'_>]) -> sqlx::Result<()> {
    #[derive(Default)]
    struct Counts {
        events: i64,
        commands: i64,
        errors: i64,
    }
    let mut sessions: BTreeMap<Uuid, (&Decoded, Counts)> = BTreeMap::new();
    for e in events {
        let (_, counts) = sessions.entry(e.envelope.session).or_insert((e, Counts::default()));
        counts.events += 1;
        match &e.payload {
            Payload::Command(_) => counts.commands += 1,
            Payload::Result(r) if r.error.is_some() => counts.errors += 1,
            _ => {}
        }
    }
    if sessions.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = sessions.keys().copied().collect();
    let rows: Vec<&(&Decoded, Counts)> = sessions.values().collect();
    sqlx::query(
        "INSERT INTO sessions (id, agent_id, resource, resource_kind, node, events, commands, errors)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::int8[], $8::int8[])
         ON CONFLICT (id) DO UPDATE SET events = sessions.events + EXCLUDED.events,
            commands = sessions.commands + EXCLUDED.commands, errors = sessions.errors + EXCLUDED.errors",
    )
    .bind(ids)
    .bind(rows.iter().map(|(e, _)| agent_id(&e.envelope.agent)).collect::<Vec<_>>())
    .bind(rows.iter().map(|(e, _)| e.envelope.resource.name.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(e, _)| e.envelope.resource.kind.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(e, _)| e.envelope.node.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, c)| c.events).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, c)| c.commands).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, c)| c.errors).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_commands(tx: &mut Transaction<'_, Postgres>, events: &[&Decoded<'_>]) -> sqlx::Result<()> {
    let rows: Vec<CommandRow> = events
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::Command(c) => Some(CommandRow::of(&e.envelope, e.seq, c)),
            _ => None,
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&CommandRow) -> Option<&str>| rows.iter().map(f).collect::<Vec<_>>();
    sqlx::query(&format!(
        "INSERT INTO commands ({COMMAND_COLUMNS})
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::int8[], $4::timestamptz[], $5::uuid[], $6::text[], $7::text[],
                              $8::text[], $9::jsonb[], $10::text[], $11::text[], $12::jsonb[], $13::text[], $14::text[], $15::int8[],
                              $16::jsonb[], $17::text[], $18::text[])"
    ))
    .bind(rows.iter().map(|r| r.event_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.session_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.seq).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.agent_id).collect::<Vec<_>>())
    .bind(column(|r| Some(&r.resource)))
    .bind(column(|r| Some(&r.protocol)))
    .bind(column(|r| Some(&r.statement)))
    .bind(rows.iter().map(|r| r.params.as_ref()).collect::<Vec<_>>())
    .bind(column(|r| r.prepared.as_deref()))
    .bind(column(|r| Some(&r.decision)))
    .bind(rows.iter().map(|r| r.classification.as_ref()).collect::<Vec<_>>())
    .bind(column(|r| r.parse_error.as_deref()))
    .bind(column(|r| r.rule.as_deref()))
    .bind(rows.iter().map(|r| r.policy_version).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.executes.as_ref()).collect::<Vec<_>>())
    .bind(column(|r| r.step.as_deref()))
    .bind(column(|r| r.fingerprint.as_deref()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_results(tx: &mut Transaction<'_, Postgres>, events: &[&Decoded<'_>]) -> sqlx::Result<()> {
    let rows: Vec<ResultRow> = events
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::Result(r) => Some(ResultRow::of(&e.envelope, r)),
            _ => None,
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(&format!(
        "INSERT INTO command_results ({RESULT_COLUMNS})
         SELECT u.event_id, u.command_id, u.session_id, u.at, u.outcome, ARRAY(SELECT jsonb_array_elements_text(u.tags)),
                u.rows, u.duration_us, u.error_code, u.error_message
         FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::timestamptz[], $5::text[], $6::jsonb[], $7::int8[], $8::int8[],
                     $9::text[], $10::text[])
              AS u(event_id, command_id, session_id, at, outcome, tags, rows, duration_us, error_code, error_message)"
    ))
    .bind(rows.iter().map(|r| r.event_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.command_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.session_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.outcome.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| serde_json::to_value(&r.tags).unwrap_or_default()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.rows).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.duration_us).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.error_code.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.error_message.as_deref()).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A node key announced by a node starting: pending until an admin decides. (A key only a
/// session names is unknown: no proxy announced it.)
async fn seen_key(tx: &mut Transaction<'_, Postgres>, key: &str, node: &str, at: DateTime<Utc>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO node_keys (key, node, first_seen, last_seen) VALUES ($1, $2, $3, $3)
         ON CONFLICT (key) DO UPDATE SET last_seen = greatest(node_keys.last_seen, $3),
             node = CASE WHEN node_keys.node = '' THEN $2 ELSE node_keys.node END",
    )
    .bind(key)
    .bind(node)
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Start and end of a session, and refused attempts: rare events, written one by one.
async fn session_lifecycle(tx: &mut Transaction<'_, Postgres>, e: &Decoded<'_>) -> sqlx::Result<()> {
    match &e.payload {
        Payload::Started(p) => {
            sqlx::query(
                "UPDATE sessions SET started_at = $2, client_addr = $3, client_tls = $4, client_user = $5,
                    application_name = $6, upstream = $7, node_key = $8, grant_name = $9, access = $10 WHERE id = $1",
            )
            .bind(e.envelope.session)
            .bind(e.envelope.at)
            .bind(&p.client_addr)
            .bind(p.client_tls)
            .bind(&p.client_user)
            .bind(&p.application_name)
            .bind(serde_json::to_value(&p.upstream).unwrap_or_default())
            .bind(&p.node_key)
            .bind(&p.grant)
            .bind(p.access.as_ref().map(enum_text))
            .execute(&mut **tx)
            .await?;
        }
        Payload::NodeStarted(p) => seen_key(tx, &p.node_key, &e.envelope.node, e.envelope.at).await?,
        Payload::NodeDecided(p) => {
            sqlx::query(
                "INSERT INTO node_keys (key, node, first_seen, last_seen, status, decided_by, decided_at, reason)
                 VALUES ($1, '', $3, $3, $2, $4, $3, $5)
                 ON CONFLICT (key) DO UPDATE SET status = $2, decided_by = $4, decided_at = $3, reason = $5",
            )
            .bind(&p.node_key)
            .bind(enum_text(&p.trust))
            .bind(e.envelope.at)
            .bind(&e.envelope.agent.name)
            .bind(&p.reason)
            .execute(&mut **tx)
            .await?;
        }
        Payload::Ended(p) => {
            sqlx::query("UPDATE sessions SET ended_at = $2, end_reason = $3, end_detail = $4 WHERE id = $1")
                .bind(e.envelope.session)
                .bind(e.envelope.at)
                .bind(enum_text(&p.reason))
                .bind(&p.detail)
                .execute(&mut **tx)
                .await?;
        }
        Payload::AuthFailed(p) => {
            sqlx::query(
                "INSERT INTO auth_failures (event_id, at, node, reason, code, client_addr, client_tls, client_user, resource,
                    verified, agent_id, agent_name, claimed_issuer, claimed_subject, resource_kind)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
            )
            .bind(e.envelope.id)
            .bind(e.envelope.at)
            .bind(&e.envelope.node)
            .bind(&p.reason)
            .bind(&p.code)
            .bind(&p.client_addr)
            .bind(p.client_tls)
            .bind(&p.client_user)
            .bind(&p.requested_resource)
            .bind(p.verified)
            .bind(p.verified.then(|| agent_id(&e.envelope.agent)))
            .bind(p.verified.then_some(e.envelope.agent.name.as_str()))
            .bind(&p.claimed_issuer)
            .bind(&p.claimed_subject)
            .bind(e.envelope.resource.kind.as_str())
            .execute(&mut **tx)
            .await?;
        }
        Payload::PolicyChanged(p) => {
            sqlx::query(
                "INSERT INTO policy_versions (version, event_id, changed_by, changed_by_issuer, changed_at, comment, changes, document)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (version) DO NOTHING",
            )
            .bind(i64::try_from(p.version).unwrap_or(i64::MAX))
            .bind(e.envelope.id)
            .bind(&e.envelope.agent.subject)
            .bind(&e.envelope.agent.issuer)
            .bind(e.envelope.at)
            .bind(&p.comment)
            .bind(serde_json::to_value(&p.changes).unwrap_or_default())
            .bind(serde_json::to_value(&p.document).unwrap_or_default())
            .execute(&mut **tx)
            .await?;
        }
        Payload::ApprovalRequested(p) => {
            sqlx::query(
                "INSERT INTO approvals (id, event_id, session_id, command_id, agent_id, agent, resource, node, rule, statement,
                    classes, relations, approver_groups, quorum, requested_at, expires_at, grant_minutes)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) ON CONFLICT (id) DO NOTHING",
            )
            .bind(p.approval_id)
            .bind(e.envelope.id)
            .bind(e.envelope.session)
            .bind(p.command_id)
            .bind(agent_id(&e.envelope.agent))
            .bind(serde_json::to_value(&e.envelope.agent).unwrap_or_default())
            .bind(&e.envelope.resource.name)
            .bind(&e.envelope.node)
            .bind(&p.rule)
            .bind(&p.statement)
            .bind(&p.classes)
            .bind(&p.relations)
            .bind(&p.approver_groups)
            .bind(i32::try_from(p.quorum).unwrap_or(i32::MAX))
            .bind(e.envelope.at)
            .bind(p.expires_at)
            .bind(p.grant_minutes.and_then(|m| i32::try_from(m).ok()))
            .execute(&mut **tx)
            .await?;
        }
        Payload::ApprovalDecided(p) => {
            let by = &e.envelope.agent;
            sqlx::query(
                "INSERT INTO approval_decisions (event_id, approval_id, at, verdict, channel, reason, approver_issuer,
                    approver_subject, approver_name, approver_groups, grant_minutes)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(e.envelope.id)
            .bind(p.approval_id)
            .bind(e.envelope.at)
            .bind(enum_text(&p.verdict))
            .bind(enum_text(&p.channel))
            .bind(&p.reason)
            .bind(&by.issuer)
            .bind(&by.subject)
            .bind(&by.name)
            .bind(&by.groups)
            .bind(p.grant_minutes.and_then(|m| i32::try_from(m).ok()))
            .execute(&mut **tx)
            .await?;
            // A denial decides at once; approvals once a quorum of distinct people agrees.
            sqlx::query(
                "WITH votes AS (
                    SELECT count(DISTINCT (approver_issuer, approver_subject)) AS n FROM approval_decisions
                    WHERE approval_id = $1 AND verdict = 'approve'),
                 next AS (
                    SELECT CASE WHEN $3 = 'deny' THEN 'denied' WHEN votes.n >= a.quorum THEN 'approved' ELSE 'pending' END AS status
                    FROM approvals a, votes WHERE a.id = $1)
                 UPDATE approvals a SET status = next.status, decided_at = CASE WHEN next.status <> 'pending' THEN $2 END
                 FROM next WHERE a.id = $1 AND a.status = 'pending'",
            )
            .bind(p.approval_id)
            .bind(e.envelope.at)
            .bind(enum_text(&p.verdict))
            .execute(&mut **tx)
            .await?;
        }
        Payload::ApprovalExpired(p) => {
            sqlx::query(
                "UPDATE approvals SET status = 'expired', expiry_reason = $2, decided_at = $3 WHERE id = $1 AND status = 'pending'",
            )
            .bind(p.approval_id)
            .bind(enum_text(&p.reason))
            .bind(e.envelope.at)
            .execute(&mut **tx)
            .await?;
        }
        Payload::ApprovalRefused(p) => {
            let who = &e.envelope.agent;
            sqlx::query(
                "INSERT INTO approval_refusals (event_id, approval_id, at, channel, status, reason, who)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(e.envelope.id)
            .bind(p.approval_id)
            .bind(e.envelope.at)
            .bind(enum_text(&p.channel))
            .bind(i32::from(p.status))
            .bind(&p.reason)
            .bind((!who.subject.is_empty()).then(|| who.name.clone()))
            .execute(&mut **tx)
            .await?;
        }
        Payload::ApprovalReleased(p) => {
            sqlx::query("UPDATE approvals SET released_at = $2, released_by = $3 WHERE id = $1")
                .bind(p.approval_id)
                .bind(e.envelope.at)
                .bind(&p.approvers)
                .execute(&mut **tx)
                .await?;
        }
        // The session's own end (its proxy's `session.ended`) says who ended it.
        Payload::Command(_) | Payload::Result(_) | Payload::SessionEndRequested | Payload::Other => {}
    }
    Ok(())
}
