//! Node keys: the keys proxies sign the end of sessions with. A key is pending until an admin
//! trusts it (or the configuration lists it); an admin retires a rotated key (sessions it
//! signed before stay trusted) or revokes a compromised one (none are). Each decision is a
//! `node.decided` event; session verification reports the trust of the key that signed.

use super::auth::Caller;
use super::{ApiError, AppState};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tollgate_shared::event::{kind, Chain, NodeDecided, NodeTrust};
use tollgate_shared::identity::{ResourceKind, ResourceRef};
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct NodeKeyView {
    /// The public key (hex).
    pub key: String,
    pub node: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// pending | trusted | retired | revoked (`trusted` for keys the configuration lists).
    pub status: String,
    pub decided_by: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
    pub reason: Option<String>,
}

/// How a node key stands for one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyTrust {
    /// Trusted now (by an admin or the configuration).
    Trusted,
    /// Retired after the session began: trusted for it.
    Retired,
    /// Seen, never trusted.
    Pending,
    /// No node ever announced it: whoever signed the session is not a known proxy.
    Unknown,
    /// Revoked (or retired before the session began): not trusted.
    Revoked,
}

impl KeyTrust {
    pub fn trusted(&self) -> bool {
        matches!(self, KeyTrust::Trusted | KeyTrust::Retired)
    }
}

/// How `key` stands for a session that began at `started`.
pub async fn trust_of(state: &AppState, key: &str, started: Option<DateTime<Utc>>) -> Result<KeyTrust, ApiError> {
    if state.trusted_nodes.iter().any(|k| k.eq_ignore_ascii_case(key)) {
        return Ok(KeyTrust::Trusted);
    }
    let row: Option<(String, Option<DateTime<Utc>>)> =
        sqlx::query_as("SELECT status, decided_at FROM node_keys WHERE key = $1")
            .bind(key)
            .fetch_optional(&state.db)
            .await?;
    Ok(match row {
        None => KeyTrust::Unknown,
        Some((status, decided_at)) => match status.as_str() {
            "trusted" => KeyTrust::Trusted,
            "retired" if started.zip(decided_at).is_some_and(|(s, d)| s < d) => KeyTrust::Retired,
            "pending" => KeyTrust::Pending,
            _ => KeyTrust::Revoked,
        },
    })
}

/// Every node key seen, most recent first.
#[utoipa::path(get, path = "/api/v1/nodes", tag = "nodes",
    responses((status = 200, body = [NodeKeyView]), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)), security(("bearer" = [])))]
pub async fn list_nodes(State(state): State<AppState>) -> Result<Json<Vec<NodeKeyView>>, ApiError> {
    let mut rows = sqlx::query_as::<_, NodeKeyView>(
        "SELECT key, node, first_seen, last_seen, status, decided_by, decided_at, reason FROM node_keys ORDER BY last_seen DESC",
    )
    .fetch_all(&state.db)
    .await?;
    for row in &mut rows {
        if state.trusted_nodes.iter().any(|k| k.eq_ignore_ascii_case(&row.key)) {
            row.status = "trusted".into();
        }
    }
    Ok(Json(rows))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeDecision {
    #[serde(default)]
    pub reason: Option<String>,
}

/// Trust, retire or revoke a node key.
async fn decide(
    state: &AppState,
    caller: &Caller,
    key: &str,
    trust: NodeTrust,
    body: Result<Json<NodeDecision>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let reason = match body {
        Ok(Json(body)) => body.reason,
        Err(JsonRejection::MissingJsonContentType(_)) => None,
        Err(e) => return Err(ApiError::BadRequest(e.body_text())),
    };
    if tollgate_shared::control::ControlPublicKey::parse(key).is_err() {
        return Err(ApiError::BadRequest("a node key is 64 hex digits".into()));
    }
    let known: Option<(String,)> =
        sqlx::query_as("SELECT key FROM node_keys WHERE key = $1").bind(key).fetch_optional(&state.db).await?;
    if known.is_none() && trust == NodeTrust::Trusted {
        return Err(ApiError::NotFound(format!("no node has announced key {key}")));
    }
    let resource = ResourceRef { name: "nodes".into(), kind: ResourceKind::Policy };
    let mut chain = Chain::new(Uuid::now_v7(), "control".into(), caller.identity.clone(), resource);
    let payload = NodeDecided { node_key: key.to_ascii_lowercase(), trust, reason };
    let event = chain.seal(kind::NODE_DECIDED, &payload).map_err(|e| ApiError::Unexpected(e.into()))?;
    let ack = crate::publish_signed(&state.js, &state.control_key, &event)
        .await
        .map_err(|e| ApiError::Unavailable(format!("the decision could not be recorded: {e}")))?;
    ack.await.map_err(|e| ApiError::Unavailable(format!("the decision could not be recorded: {e}")))?;
    tracing::info!(key, ?trust, by = %caller.subject, "node key decided");
    Ok(StatusCode::ACCEPTED)
}

/// Trust a node key: sessions it signs verify as trusted.
#[utoipa::path(post, path = "/api/v1/nodes/{key}/trust", tag = "nodes", params(("key" = String, Path)), request_body = NodeDecision,
    responses((status = 202), (status = 400, body = super::error::Problem), (status = 404, body = super::error::Problem), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)), security(("bearer" = [])))]
pub async fn trust(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
    body: Result<Json<NodeDecision>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    decide(&state, &caller, &key, NodeTrust::Trusted, body).await
}

/// Retire a rotated node key: sessions it signed before now stay trusted.
#[utoipa::path(post, path = "/api/v1/nodes/{key}/retire", tag = "nodes", params(("key" = String, Path)), request_body = NodeDecision,
    responses((status = 202), (status = 400, body = super::error::Problem), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)), security(("bearer" = [])))]
pub async fn retire(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
    body: Result<Json<NodeDecision>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    decide(&state, &caller, &key, NodeTrust::Retired, body).await
}

/// Revoke a compromised node key: no session it signed is trusted.
#[utoipa::path(post, path = "/api/v1/nodes/{key}/revoke", tag = "nodes", params(("key" = String, Path)), request_body = NodeDecision,
    responses((status = 202), (status = 400, body = super::error::Problem), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)), security(("bearer" = [])))]
pub async fn revoke(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
    body: Result<Json<NodeDecision>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    decide(&state, &caller, &key, NodeTrust::Revoked, body).await
}
