//! Refused connection attempts.

use super::{ApiError, AppState};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, QueryBuilder};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct AuthFailureView {
    pub event_id: Uuid,
    pub at: DateTime<Utc>,
    pub node: String,
    /// What the agent was told.
    pub reason: String,
    /// SQLSTATE it was refused with.
    pub code: String,
    pub client_addr: String,
    pub client_tls: bool,
    pub client_user: String,
    /// The resource it asked for.
    pub resource: String,
    /// The token verified (the agent was refused for another reason).
    pub verified: bool,
    pub agent_id: Option<Uuid>,
    pub agent_name: Option<String>,
    /// From a token that may not have verified: possibly forged.
    pub claimed_issuer: Option<String>,
    /// From a token that may not have verified: possibly forged.
    pub claimed_subject: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuthFailureQuery {
    /// Requested resource, exact.
    pub resource: Option<String>,
    /// At or after this instant (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Before this instant (RFC 3339).
    pub to: Option<DateTime<Utc>>,
    /// At most this many, 1 to 500 (default 100).
    pub limit: Option<u32>,
}

/// Refused connection attempts, newest first.
#[utoipa::path(get, path = "/api/v1/auth-failures", tag = "agents", params(AuthFailureQuery),
    responses((status = 200, body = [AuthFailureView]), (status = 400, body = super::error::Problem), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn list_auth_failures(
    State(state): State<AppState>,
    query: Result<Query<AuthFailureQuery>, QueryRejection>,
) -> Result<Json<Vec<AuthFailureView>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be between 1 and 500".into()));
    }
    let mut sql: QueryBuilder<Postgres> = QueryBuilder::new("SELECT * FROM auth_failures WHERE TRUE");
    if let Some(resource) = &q.resource {
        sql.push(" AND resource = ").push_bind(resource);
    }
    if let Some(from) = q.from {
        sql.push(" AND at >= ").push_bind(from);
    }
    if let Some(to) = q.to {
        sql.push(" AND at < ").push_bind(to);
    }
    sql.push(" ORDER BY at DESC, event_id DESC LIMIT ").push_bind(i64::from(limit));
    Ok(Json(sql.build_query_as().fetch_all(&state.db).await?))
}
