//! Sessions: list with filters and keyset pagination, one session, its events in order, its
//! commands with their results, and verification of its hash chain.

use super::{ApiError, AppState};
use crate::projector::rows::{self, CommandRow, ResultRow, COMMAND_COLUMNS, RESULT_COLUMNS};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, QueryBuilder};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

const SESSION_COLUMNS: &str =
    "s.id, s.agent_id, a.name AS agent_name, a.issuer AS agent_issuer, a.subject AS agent_subject,
    s.resource, s.resource_kind, s.node, s.client_addr, s.client_tls, s.client_user, s.application_name,
    s.started_at, s.ended_at, s.end_reason, s.end_detail, s.commands, s.errors, s.events";

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct SessionView {
    pub id: Uuid,
    pub agent_id: Uuid,
    pub agent_name: String,
    pub agent_issuer: String,
    pub agent_subject: String,
    pub resource: String,
    pub resource_kind: String,
    pub node: String,
    pub client_addr: Option<String>,
    pub client_tls: Option<bool>,
    pub client_user: Option<String>,
    pub application_name: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub end_reason: Option<String>,
    pub end_detail: Option<String>,
    pub commands: i64,
    pub errors: i64,
    pub events: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionPage {
    pub items: Vec<SessionView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<Uuid>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SessionQuery {
    /// Agent id (see /agents).
    pub agent: Option<Uuid>,
    /// Agent name, exact.
    pub agent_name: Option<String>,
    /// Resource name, exact.
    pub resource: Option<String>,
    /// Sessions started at or after this instant (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Sessions started before this instant (RFC 3339).
    pub to: Option<DateTime<Utc>>,
    /// `true`: only sessions still running; `false`: only ended ones.
    pub live: Option<bool>,
    /// Only sessions with at least one command so decided: `allow`, `deny` or `hold`.
    pub decision: Option<String>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<Uuid>,
}

fn query_param<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v).map_err(|e| ApiError::BadRequest(e.body_text()))
}

/// Sessions, newest first.
#[utoipa::path(get, path = "/api/v1/sessions", tag = "sessions", params(SessionQuery),
    responses((status = 200, body = SessionPage), (status = 400, body = super::error::Problem), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn list_sessions(
    State(state): State<AppState>,
    query: Result<Query<SessionQuery>, QueryRejection>,
) -> Result<Json<SessionPage>, ApiError> {
    Ok(Json(find(&state, &query_param(query)?).await?))
}

/// Sessions matching `q`, newest first, one page (the API's and the console's).
pub async fn find(state: &AppState, q: &SessionQuery) -> Result<SessionPage, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be between 1 and 500".into()));
    }
    if let (Some(from), Some(to)) = (q.from, q.to) {
        if from > to {
            return Err(ApiError::BadRequest("`from` is after `to`".into()));
        }
    }
    let mut sql: QueryBuilder<Postgres> = QueryBuilder::new(format!(
        "SELECT {SESSION_COLUMNS} FROM sessions s JOIN agents a ON a.id = s.agent_id WHERE TRUE"
    ));
    if let Some(agent) = q.agent {
        sql.push(" AND s.agent_id = ").push_bind(agent);
    }
    if let Some(name) = &q.agent_name {
        sql.push(" AND a.name = ").push_bind(name);
    }
    if let Some(resource) = &q.resource {
        sql.push(" AND s.resource = ").push_bind(resource);
    }
    if let Some(from) = q.from {
        sql.push(" AND s.started_at >= ").push_bind(from);
    }
    if let Some(to) = q.to {
        sql.push(" AND s.started_at < ").push_bind(to);
    }
    match q.live {
        Some(true) => sql.push(" AND s.ended_at IS NULL"),
        Some(false) => sql.push(" AND s.ended_at IS NOT NULL"),
        None => &mut sql,
    };
    if let Some(decision) = &q.decision {
        if !["allow", "deny", "hold"].contains(&decision.as_str()) {
            return Err(ApiError::BadRequest(format!("decision must be allow, deny or hold, not {decision:?}")));
        }
        sql.push(" AND EXISTS (SELECT 1 FROM commands c WHERE c.session_id = s.id AND c.decision = ")
            .push_bind(decision.clone())
            .push(")");
    }
    // Session ids are UUIDv7: ordering by id is ordering by start time.
    if let Some(cursor) = q.cursor {
        sql.push(" AND s.id < ").push_bind(cursor);
    }
    sql.push(" ORDER BY s.id DESC LIMIT ").push_bind(i64::from(limit) + 1);
    let mut items: Vec<SessionView> = sql.build_query_as().fetch_all(&state.db).await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|s| s.id)
    } else {
        None
    };
    Ok(SessionPage { items, next_cursor })
}

pub(super) async fn load_session(state: &AppState, id: Uuid) -> Result<SessionView, ApiError> {
    sqlx::query_as::<_, SessionView>(&format!(
        "SELECT {SESSION_COLUMNS} FROM sessions s JOIN agents a ON a.id = s.agent_id WHERE s.id = $1"
    ))
    .bind(id)
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(|| ApiError::NotFound(format!("no session {id}")))
}

pub(super) fn session_id(id: Result<Path<Uuid>, axum::extract::rejection::PathRejection>) -> Result<Uuid, ApiError> {
    id.map(|Path(id)| id).map_err(|_| ApiError::BadRequest("the session id must be a UUID".into()))
}

/// One session.
#[utoipa::path(get, path = "/api/v1/sessions/{id}", tag = "sessions", params(("id" = Uuid, Path)),
    responses((status = 200, body = SessionView), (status = 404, body = super::error::Problem), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)), security(("bearer" = [])))]
pub async fn get_session(
    State(state): State<AppState>,
    id: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
) -> Result<Json<SessionView>, ApiError> {
    Ok(Json(load_session(&state, session_id(id)?).await?))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    pub seq: i64,
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    pub at: DateTime<Utc>,
    /// SHA-256 of the stored bytes: the next event's `prev`.
    pub hash: String,
    /// The event exactly as published (envelope and payload).
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
}

/// A session's events in order (replay).
#[utoipa::path(get, path = "/api/v1/sessions/{id}/events", tag = "sessions", params(("id" = Uuid, Path)),
    responses((status = 200, body = [EventView]), (status = 404, body = super::error::Problem), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)), security(("bearer" = [])))]
pub async fn session_events(
    State(state): State<AppState>,
    id: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
) -> Result<Json<Vec<EventView>>, ApiError> {
    let id = session_id(id)?;
    load_session(&state, id).await?;
    let rows = sqlx::query_as::<_, StoredEvent>(
        "SELECT seq, id, type, at, raw FROM events WHERE session_id = $1 ORDER BY seq, id",
    )
    .bind(id)
    .fetch_all(&state.db)
    .await?;
    let events = rows
        .into_iter()
        .map(|e| {
            // The stored bytes were parsed when projected; a row that no longer parses has been
            // edited behind the record's back.
            let event = serde_json::from_slice(&e.raw)
                .map_err(|err| ApiError::Unexpected(anyhow::anyhow!("stored event {} does not parse: {err}", e.id)))?;
            Ok(EventView {
                seq: e.seq,
                id: e.id,
                kind: e.kind,
                at: e.at,
                hash: tollgate_shared::event::sha256_hex(&e.raw),
                event,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Json(events))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CastQuery {
    /// Which shell of the session, from 0 (default 0).
    pub terminal: Option<u32>,
}

/// A shell of an SSH session as an asciicast v2 recording (masked output, resizes), to play
/// with `asciinema play`. Built from the stored event bytes.
#[utoipa::path(get, path = "/api/v1/sessions/{id}/asciicast", tag = "sessions", params(("id" = Uuid, Path), CastQuery),
    responses((status = 200, description = "asciicast v2: a header line, then one event per line", content_type = "application/x-asciicast", body = String),
        (status = 404, body = super::error::Problem), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn session_asciicast(
    State(state): State<AppState>,
    id: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
    query: Result<Query<CastQuery>, QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    use tollgate_shared::event::{kind, Envelope, TerminalOutput, TerminalStarted};
    let id = session_id(id)?;
    let terminal = query_param(query)?.terminal.unwrap_or(0);
    load_session(&state, id).await?;
    let rows = sqlx::query_as::<_, StoredEvent>(
        "SELECT seq, id, type, at, raw FROM events WHERE session_id = $1 AND type IN ($2, $3) ORDER BY seq, id",
    )
    .bind(id)
    .bind(kind::TERMINAL_STARTED)
    .bind(kind::TERMINAL_OUTPUT)
    .fetch_all(&state.db)
    .await?;
    let unreadable = |e: &StoredEvent, err: serde_json::Error| {
        ApiError::Unexpected(anyhow::anyhow!("stored event {} does not parse: {err}", e.id))
    };
    let mut cast = String::new();
    for e in &rows {
        if e.kind == kind::TERMINAL_STARTED {
            let event: Envelope<TerminalStarted> = serde_json::from_slice(&e.raw).map_err(|err| unreadable(e, err))?;
            if event.payload.terminal == terminal {
                let mut header = serde_json::json!({
                    "version": 2,
                    "width": event.payload.width,
                    "height": event.payload.height,
                    "timestamp": event.at.timestamp(),
                    "title": format!("session {id}, shell {terminal}"),
                });
                if let Some(term) = &event.payload.term {
                    header["env"] = serde_json::json!({ "TERM": term });
                }
                cast = format!("{header}\n");
            }
            continue;
        }
        let event: Envelope<TerminalOutput> = serde_json::from_slice(&e.raw).map_err(|err| unreadable(e, err))?;
        if event.payload.terminal != terminal || cast.is_empty() {
            continue;
        }
        for frame in &event.payload.frames {
            let line = serde_json::to_string(frame).map_err(|err| unreadable(e, err))?;
            cast.push_str(&line);
            cast.push('\n');
        }
    }
    if cast.is_empty() {
        return Err(ApiError::NotFound(format!("session {id} has no shell {terminal}")));
    }
    Ok(([(axum::http::header::CONTENT_TYPE, "application/x-asciicast")], cast).into_response())
}

#[derive(sqlx::FromRow)]
struct StoredEvent {
    seq: i64,
    id: Uuid,
    #[sqlx(rename = "type")]
    kind: String,
    at: DateTime<Utc>,
    raw: Vec<u8>,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct CommandView {
    pub event_id: Uuid,
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub protocol: String,
    pub statement: String,
    #[schema(value_type = Option<Vec<Option<String>>>)]
    pub params: Option<serde_json::Value>,
    pub prepared: Option<String>,
    /// The prepared statements a SQL `EXECUTE` in the statement ran (`name`, `statement`), masked.
    #[schema(value_type = Option<Vec<Object>>)]
    pub executes: Option<serde_json::Value>,
    /// Extended protocol: `parse` (refused when prepared) or `bind` (a statement the proxy
    /// did not know), when the command is not an Execute.
    pub step: Option<String>,
    /// What the statement does (classes, relations, functions, unbounded writes).
    #[schema(value_type = Option<Object>)]
    pub classification: Option<serde_json::Value>,
    /// Why the statement did not parse, when it did not.
    pub parse_error: Option<String>,
    pub decision: String,
    /// The rule behind a denial.
    pub rule: Option<String>,
    /// The policy version that judged the command.
    pub policy_version: Option<i64>,
    /// Absent until the result is recorded.
    pub outcome: Option<String>,
    pub tags: Option<Vec<String>>,
    pub rows: Option<i64>,
    pub duration_us: Option<i64>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
}

/// A session's commands with their results, in order.
#[utoipa::path(get, path = "/api/v1/sessions/{id}/commands", tag = "sessions", params(("id" = Uuid, Path)),
    responses((status = 200, body = [CommandView]), (status = 404, body = super::error::Problem), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)), security(("bearer" = [])))]
pub async fn session_commands(
    State(state): State<AppState>,
    id: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
) -> Result<Json<Vec<CommandView>>, ApiError> {
    let id = session_id(id)?;
    load_session(&state, id).await?;
    let rows = sqlx::query_as::<_, CommandView>(
        "SELECT event_id, seq, at, protocol, statement, params, prepared, executes, step, classification, parse_error, decision, rule, policy_version, outcome, tags, rows,
                duration_us, error_code, error_message
         FROM command_log WHERE session_id = $1 ORDER BY seq",
    )
    .bind(id)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(rows))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyView {
    pub session: Uuid,
    pub events: u64,
    /// Seqs run 0..n without gaps and every event links to the one before it.
    pub linked: bool,
    /// The session ended with a valid signature by the node key it announced.
    pub complete: bool,
    pub node_key: Option<String>,
    /// How the key that signed stands: trusted, retired (after this session), pending (never
    /// trusted), unknown (no proxy announced it), revoked.
    pub node_trust: Option<super::nodes::KeyTrust>,
    /// The commands and results the API serves for this session say exactly what the stored
    /// events say (no row edited, added or removed behind the record's back).
    pub views_match: bool,
    /// Complete, linked, signed by a node key that is trusted for this session, and served
    /// as recorded.
    pub trusted: bool,
    pub head: String,
    pub problems: Vec<String>,
}

/// Re-hash a session's stored events and check its chain and end signature.
#[utoipa::path(get, path = "/api/v1/sessions/{id}/verify", tag = "sessions", params(("id" = Uuid, Path)),
    responses((status = 200, body = VerifyView), (status = 404, body = super::error::Problem), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)), security(("bearer" = [])))]
pub async fn verify_session(
    State(state): State<AppState>,
    id: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
) -> Result<Json<VerifyView>, ApiError> {
    let id = session_id(id)?;
    load_session(&state, id).await?;
    Ok(Json(verification(&state, id).await?.0))
}

/// Check a session's chain, its signature and the key behind it, and its views against its
/// stored events; the events come back too (in order), for callers that go on to read them.
pub(super) async fn verification(state: &AppState, id: Uuid) -> Result<(VerifyView, Vec<(Vec<u8>,)>), ApiError> {
    // One snapshot for the events and the views, so a batch the projector commits meanwhile
    // cannot look like a difference.
    let mut tx = state.db.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    let raws: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT raw FROM events WHERE session_id = $1 ORDER BY seq, id")
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
    let commands: Vec<CommandRow> =
        sqlx::query_as(&format!("SELECT {COMMAND_COLUMNS} FROM commands WHERE session_id = $1"))
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
    let results: Vec<ResultRow> =
        // Every result row that names one of the session's commands, wherever it claims to be
        // from, so one planted under another session is seen too.
        sqlx::query_as(&format!(
            "SELECT {RESULT_COLUMNS} FROM command_results WHERE session_id = $1
             UNION SELECT {RESULT_COLUMNS} FROM command_results
             WHERE command_id IN (SELECT event_id FROM commands WHERE session_id = $1)"
        ))
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
    let session_row: Option<rows::SessionRow> =
        sqlx::query_as(&format!("SELECT {} FROM sessions WHERE id = $1", rows::SESSION_COLUMNS))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    // The session's approval requests, as its events and as the view tell them, and every
    // stored event about them (decisions travel in chains of their own).
    let slices: Vec<&[u8]> = raws.iter().map(|(r,)| r.as_slice()).collect();
    let mut asked: Vec<Uuid> = rows::approvals::expected(&slices).approvals.into_keys().collect();
    let approvals: Vec<rows::approvals::ApprovalRow> = sqlx::query_as(&format!(
        "SELECT {} FROM approvals WHERE session_id = $1 OR id = ANY($2)
            OR command_id IN (SELECT event_id FROM commands WHERE session_id = $1)",
        rows::approvals::APPROVAL_COLUMNS
    ))
    .bind(id)
    .bind(&asked)
    .fetch_all(&mut *tx)
    .await?;
    asked.extend(approvals.iter().map(|a| a.id));
    let decisions: Vec<rows::approvals::DecisionRow> = sqlx::query_as(&format!(
        "SELECT {} FROM approval_decisions WHERE approval_id = ANY($1)",
        rows::approvals::DECISION_COLUMNS
    ))
    .bind(&asked)
    .fetch_all(&mut *tx)
    .await?;
    let decision_events: Vec<Uuid> = decisions.iter().map(|d| d.event_id).collect();
    let about: Vec<(Vec<u8>,)> =
        sqlx::query_as("SELECT raw FROM events WHERE session_id <> $1 AND (approval_id = ANY($2) OR id = ANY($3))")
            .bind(id)
            .bind(&asked)
            .bind(&decision_events)
            .fetch_all(&mut *tx)
            .await?;
    tx.commit().await?;
    let report = tollgate_shared::event::verify_chain(&slices);
    let mut view_problems = rows::compare(&rows::expected(&slices), &commands, &results);
    let approval_events: Vec<&[u8]> = slices.iter().copied().chain(about.iter().map(|(r,)| r.as_slice())).collect();
    view_problems.extend(rows::approvals::compare(
        &rows::approvals::expected(&approval_events),
        &approvals,
        &decisions,
    ));
    if let (Some(held), Some(recorded)) = (&session_row, rows::expected_session(&slices)) {
        let differ = held.differences(&recorded);
        if !differ.is_empty() {
            view_problems.push(format!("the sessions view differs from the recorded events in: {}", differ.join(", ")));
        }
    }
    let views_match = view_problems.is_empty();
    let started: Option<(Option<DateTime<Utc>>,)> =
        sqlx::query_as("SELECT started_at FROM sessions WHERE id = $1").bind(id).fetch_optional(&state.db).await?;
    let node_trust = match &report.node_key {
        Some(key) => Some(super::nodes::trust_of(state, key, started.and_then(|(s,)| s)).await?),
        None => None,
    };
    let mut problems = report.problems;
    problems.extend(view_problems);
    let key_trusted = node_trust.as_ref().is_some_and(|t| t.trusted());
    if !key_trusted {
        problems.push(format!(
            "the session is signed by a node key that is not trusted ({})",
            node_trust.as_ref().map_or("none".into(), |t| format!("{t:?}").to_lowercase())
        ));
    }
    let view = VerifyView {
        session: id,
        events: report.events,
        linked: report.linked,
        complete: report.complete,
        views_match,
        trusted: report.linked && report.complete && key_trusted && views_match,
        node_key: report.node_key,
        node_trust,
        head: report.head,
        problems,
    };
    Ok((view, raws))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct EndRequest {
    /// Why (shown to the agent and recorded with the session's end); at most 1000 characters.
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EndAccepted {
    pub session_id: Uuid,
    /// The `session.end_requested` event.
    pub event_id: Uuid,
}

/// End a live session (approver role): the proxy holding it tells the agent, closes the
/// connection and records the session's end with reason `ended_by_person`, naming who.
#[utoipa::path(post, path = "/api/v1/sessions/{id}/end", tag = "sessions", params(("id" = Uuid, Path)), request_body = EndRequest,
    responses((status = 202, body = EndAccepted), (status = 400, body = super::error::Problem), (status = 404, body = super::error::Problem),
        (status = 409, body = super::error::Problem, description = "the session has already ended"), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn end_session(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<super::Caller>,
    id: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
    body: Result<Json<EndRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(axum::http::StatusCode, Json<EndAccepted>), ApiError> {
    let id = session_id(id)?;
    let Json(body) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let accepted = end(&state, &caller.identity, id, tollgate_shared::event::Channel::Rest, body.reason).await?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(accepted)))
}

/// Publish, signed, a person's request to end live session `id` (the API's and the console's).
pub async fn end(
    state: &AppState,
    person: &tollgate_shared::identity::AgentIdentity,
    id: Uuid,
    channel: tollgate_shared::event::Channel,
    reason: Option<String>,
) -> Result<EndAccepted, ApiError> {
    use tollgate_shared::event::{kind, Chain, SessionEndRequested};
    let reason = reason.map(|r| r.chars().filter(|c| !c.is_control()).collect::<String>()).filter(|r| !r.is_empty());
    if reason.as_ref().is_some_and(|r| r.chars().count() > 1000) {
        return Err(ApiError::BadRequest("reason: at most 1000 characters".into()));
    }
    let session = load_session(state, id).await?;
    if session.ended_at.is_some() {
        return Err(ApiError::Conflict(format!("session {id} has already ended")));
    }
    let resource_kind = serde_json::from_value(serde_json::Value::String(session.resource_kind.clone()))
        .map_err(|e| ApiError::Unexpected(anyhow::anyhow!("session {id}: resource kind: {e}")))?;
    let resource = tollgate_shared::identity::ResourceRef { name: session.resource, kind: resource_kind };
    let mut chain = Chain::new(Uuid::now_v7(), tollgate_shared::names::CONTROL_NODE.into(), person.clone(), resource);
    let payload = SessionEndRequested { session_id: id, channel, reason };
    let event = chain.seal(kind::SESSION_END_REQUESTED, &payload).map_err(|e| ApiError::Unexpected(e.into()))?;
    // Signed: proxies end a session only at the control plane's word.
    let ack = crate::publish_signed(&state.js, &state.control_key, &event)
        .await
        .map_err(|e| ApiError::Unavailable(format!("the request could not be recorded: {e}")))?;
    ack.await.map_err(|e| ApiError::Unavailable(format!("the request could not be recorded: {e}")))?;
    tracing::info!(session = %id, by = %person.name, ?channel, "session end requested");
    Ok(EndAccepted { session_id: id, event_id: event.id })
}
