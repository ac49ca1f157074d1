//! Agents seen in any event.

use super::{ApiError, AppState};
use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct AgentView {
    pub id: Uuid,
    pub issuer: String,
    pub subject: String,
    pub name: String,
    pub groups: Vec<String>,
    #[schema(value_type = Object)]
    pub attributes: serde_json::Value,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub sessions: i64,
}

/// Every agent, most recently seen first.
#[utoipa::path(get, path = "/api/v1/agents", tag = "agents",
    responses((status = 200, body = [AgentView]), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)), security(("bearer" = [])))]
pub async fn list_agents(State(state): State<AppState>) -> Result<Json<Vec<AgentView>>, ApiError> {
    let rows = sqlx::query_as::<_, AgentView>(
        "SELECT a.id, a.issuer, a.subject, a.name, a.groups, a.attributes, a.first_seen, a.last_seen,
                (SELECT count(*) FROM sessions s WHERE s.agent_id = a.id) AS sessions
         FROM agents a ORDER BY a.last_seen DESC",
    )
    .fetch_all(&state.db)
    .await?;
    Ok(Json(rows))
}
