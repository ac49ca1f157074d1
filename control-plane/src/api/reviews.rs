//! Access-review reports over a time range, as JSON or CSV.
//!
//! Per agent: the resources it reached, its commands by decision and by class, the holds that
//! were approved, its refused logins, first and last use, and the policy versions that judged
//! it. Answered from the commands view, which `/verify` checks against the record.

use super::{ApiError, AppState};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

#[derive(Debug, Deserialize, IntoParams)]
pub struct ReviewQuery {
    /// Start of the period (RFC 3339, inclusive).
    pub from: DateTime<Utc>,
    /// End of the period (RFC 3339, exclusive); now when absent.
    pub to: Option<DateTime<Utc>>,
    /// `json` (the default) or `csv`.
    pub format: Option<String>,
    /// Rows per page, 1 to 1000 (default 100).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<Uuid>,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct AgentReview {
    pub agent_id: Uuid,
    pub agent_name: String,
    pub issuer: String,
    pub subject: String,
    /// Resources it ran commands on in the period.
    pub resources: Vec<String>,
    /// Sessions it opened in the period.
    pub sessions: i64,
    pub commands: i64,
    pub allowed: i64,
    pub denied: i64,
    /// Held for approval (whatever came of it).
    pub held: i64,
    /// Held, approved and run.
    pub approved: i64,
    /// Commands per class (`select`, `delete`, `exec`...).
    #[schema(value_type = Object)]
    pub classes: serde_json::Value,
    /// Logins refused although its token verified (no grant, unknown resource...).
    pub refused_logins: i64,
    pub first_use: Option<DateTime<Utc>>,
    pub last_use: Option<DateTime<Utc>>,
    /// The policy versions that judged its commands.
    pub policy_versions: Vec<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentReviewPage {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub items: Vec<AgentReview>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<Uuid>,
}

/// Per agent: what it reached and did in a period.
#[utoipa::path(get, path = "/api/v1/reviews/agents", tag = "reviews", params(ReviewQuery),
    responses((status = 200, body = AgentReviewPage, description = "JSON, or text/csv with format=csv (all rows of the page, the cursor in the Link header)"),
        (status = 400, body = super::error::Problem), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn agents(
    State(state): State<AppState>,
    query: Result<Query<ReviewQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let to = q.to.unwrap_or_else(Utc::now);
    if to <= q.from {
        return Err(ApiError::BadRequest("to must be after from".into()));
    }
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => return Err(ApiError::BadRequest(format!("format must be json or csv, not {other:?}"))),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be between 1 and 1000".into()));
    }
    let mut items = sqlx::query_as::<_, AgentReview>(
        "WITH c AS (
            SELECT c.agent_id, c.resource, c.decision, c.classification, c.policy_version, c.at,
                   (ap.released_at IS NOT NULL) AS released
            FROM commands c LEFT JOIN approvals ap ON ap.command_id = c.event_id
            WHERE c.at >= $1 AND c.at < $2
         ), per AS (
            SELECT agent_id, array_agg(DISTINCT resource ORDER BY resource) AS resources, count(*) AS commands,
                   count(*) FILTER (WHERE decision = 'allow') AS allowed,
                   count(*) FILTER (WHERE decision = 'deny') AS denied,
                   count(*) FILTER (WHERE decision = 'hold') AS held,
                   count(*) FILTER (WHERE decision = 'hold' AND released) AS approved,
                   min(at) AS first_use, max(at) AS last_use,
                   array_remove(array_agg(DISTINCT policy_version ORDER BY policy_version), NULL) AS policy_versions
            FROM c GROUP BY agent_id
         ), cls AS (
            SELECT agent_id, jsonb_object_agg(class, n ORDER BY class) AS classes FROM (
                SELECT agent_id, class, count(*) AS n
                FROM c, jsonb_array_elements_text(COALESCE(c.classification -> 'classes', '[]')) AS class
                GROUP BY agent_id, class) x
            GROUP BY agent_id
         ), s AS (
            SELECT agent_id, count(*) AS sessions FROM sessions
            WHERE started_at >= $1 AND started_at < $2 GROUP BY agent_id
         ), f AS (
            SELECT agent_id, count(*) AS refused FROM auth_failures
            WHERE verified AND agent_id IS NOT NULL AND at >= $1 AND at < $2 GROUP BY agent_id
         )
         SELECT a.id AS agent_id, a.name AS agent_name, a.issuer, a.subject,
                COALESCE(per.resources, '{}') AS resources, COALESCE(s.sessions, 0) AS sessions,
                COALESCE(per.commands, 0) AS commands, COALESCE(per.allowed, 0) AS allowed,
                COALESCE(per.denied, 0) AS denied, COALESCE(per.held, 0) AS held,
                COALESCE(per.approved, 0) AS approved, COALESCE(cls.classes, '{}') AS classes,
                COALESCE(f.refused, 0) AS refused_logins, per.first_use, per.last_use,
                COALESCE(per.policy_versions, '{}') AS policy_versions
         FROM agents a
         LEFT JOIN per ON per.agent_id = a.id LEFT JOIN cls ON cls.agent_id = a.id
         LEFT JOIN s ON s.agent_id = a.id LEFT JOIN f ON f.agent_id = a.id
         WHERE (per.agent_id IS NOT NULL OR s.agent_id IS NOT NULL OR f.agent_id IS NOT NULL)
           AND ($3::uuid IS NULL OR a.id > $3)
         ORDER BY a.id LIMIT $4",
    )
    .bind(q.from)
    .bind(to)
    .bind(q.cursor)
    .bind(i64::from(limit) + 1)
    .fetch_all(&state.db)
    .await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|r| r.agent_id)
    } else {
        None
    };
    if csv {
        let mut response =
            ([(axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8")], agents_csv(&items)).into_response();
        if let Some(cursor) = next_cursor {
            if let Ok(value) = axum::http::HeaderValue::from_str(&format!("<?cursor={cursor}>; rel=\"next\"")) {
                response.headers_mut().insert(axum::http::header::LINK, value);
            }
        }
        return Ok(response);
    }
    Ok(Json(AgentReviewPage { from: q.from, to, items, next_cursor }).into_response())
}

/// A CSV field: quoted when it holds a separator, a quote or a line break; a leading `=`, `+`,
/// `-` or `@` is prefixed with `'` so a spreadsheet does not run agent-chosen text as a formula.
fn field(value: &str) -> String {
    let value = if value.starts_with(['=', '+', '-', '@']) { format!("'{value}") } else { value.to_owned() };
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value
    }
}

fn agents_csv(rows: &[AgentReview]) -> String {
    let mut out = String::from(
        "agent_id,agent_name,issuer,subject,resources,sessions,commands,allowed,denied,held,approved,classes,refused_logins,first_use,last_use,policy_versions\n",
    );
    for r in rows {
        let classes = r
            .classes
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";"))
            .unwrap_or_default();
        let time = |t: &Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_default();
        let versions = r.policy_versions.iter().map(i64::to_string).collect::<Vec<_>>().join(";");
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            r.agent_id,
            field(&r.agent_name),
            field(&r.issuer),
            field(&r.subject),
            field(&r.resources.join(";")),
            r.sessions,
            r.commands,
            r.allowed,
            r.denied,
            r.held,
            r.approved,
            field(&classes),
            r.refused_logins,
            time(&r.first_use),
            time(&r.last_use),
            versions
        );
    }
    out
}
