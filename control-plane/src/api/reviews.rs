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
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct AgentReview {
    pub agent_id: Uuid,
    pub agent_name: String,
    pub issuer: String,
    pub subject: String,
    /// Resources it ran commands on in the period.
    pub resources: Vec<String>,
    /// Sessions it had open at any time in the period.
    pub sessions: i64,
    pub commands: i64,
    pub allowed: i64,
    pub denied: i64,
    /// Held for approval (whatever came of it).
    pub held: i64,
    /// Held, approved and run.
    pub approved: i64,
    /// Held and given up on: nobody decided in time, or the agent left or cancelled.
    pub expired: i64,
    /// The people whose approvals ran its held commands.
    pub approvers: Vec<String>,
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

/// The period, format and page a report was asked for.
struct Asked {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    csv: bool,
    limit: u32,
    cursor: Option<String>,
}

impl Asked {
    /// The cursor of a report keyed by id.
    fn id_cursor(&self) -> Result<Option<Uuid>, ApiError> {
        self.cursor
            .as_deref()
            .map(|c| c.parse().map_err(|_| ApiError::BadRequest("cursor must be the next_cursor of a page".into())))
            .transpose()
    }
}

/// The end of a period (now when not given), after its start.
fn period(from: DateTime<Utc>, to: Option<DateTime<Utc>>) -> Result<DateTime<Utc>, ApiError> {
    let to = to.unwrap_or_else(Utc::now);
    if to <= from {
        return Err(ApiError::BadRequest("to must be after from".into()));
    }
    Ok(to)
}

fn asked(query: Result<Query<ReviewQuery>, QueryRejection>) -> Result<Asked, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let to = period(q.from, q.to)?;
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => return Err(ApiError::BadRequest(format!("format must be json or csv, not {other:?}"))),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be between 1 and 1000".into()));
    }
    Ok(Asked { from: q.from, to, csv, limit, cursor: q.cursor })
}

/// A report's rows as CSV.
trait CsvRow {
    const HEADER: &'static str;
    fn key(&self) -> String;
    fn csv(&self) -> String;
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReportPage<T> {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// One page (`limit + 1` rows were fetched to know whether another follows), as JSON or CSV.
fn respond<T: Serialize + CsvRow>(asked: &Asked, mut items: Vec<T>) -> Response {
    let next_cursor = if items.len() > asked.limit as usize {
        items.truncate(asked.limit as usize);
        items.last().map(CsvRow::key)
    } else {
        None
    };
    if asked.csv {
        let mut body = format!("{}\n", T::HEADER);
        for item in &items {
            body.push_str(&item.csv());
            body.push('\n');
        }
        let mut response = ([(axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response();
        if let Some(cursor) = next_cursor {
            let cursor = crate::cli::urlencode(&cursor);
            if let Ok(value) = axum::http::HeaderValue::from_str(&format!("<?cursor={cursor}>; rel=\"next\"")) {
                response.headers_mut().insert(axum::http::header::LINK, value);
            }
        }
        return response;
    }
    Json(ReportPage { from: asked.from, to: asked.to, items, next_cursor }).into_response()
}

/// The per-agent report: period `$1..$2`, after cursor `$3`, at most `$4` rows.
const AGENTS_SQL: &str = "WITH c AS (
            SELECT c.agent_id, c.resource, c.decision, c.classification, c.policy_version, c.at, ap.id AS approval_id,
                   ap.released_at IS NOT NULL AS released,
                   ap.status = 'expired' OR (ap.status = 'pending' AND ap.expires_at <= now()) AS expired
            FROM commands c
            -- Its session's own approval request, the first one.
            LEFT JOIN LATERAL (SELECT id, released_at, status, expires_at FROM approvals ap
                               WHERE c.decision = 'hold' AND ap.command_id = c.event_id AND ap.session_id = c.session_id
                               ORDER BY requested_at LIMIT 1) ap ON true
            WHERE c.at >= $1 AND c.at < $2
         ), by_whom AS (
            SELECT c.agent_id, array_agg(DISTINCT d.approver_name ORDER BY d.approver_name) AS approvers
            FROM c JOIN approval_decisions d ON d.approval_id = c.approval_id AND d.verdict = 'approve'
            WHERE c.released GROUP BY c.agent_id
         ), per AS (
            SELECT agent_id, array_agg(DISTINCT resource ORDER BY resource) AS resources, count(*) AS commands,
                   count(*) FILTER (WHERE decision = 'allow') AS allowed,
                   count(*) FILTER (WHERE decision = 'deny') AS denied,
                   count(*) FILTER (WHERE decision = 'hold') AS held,
                   count(*) FILTER (WHERE decision = 'hold' AND released) AS approved,
                   count(*) FILTER (WHERE decision = 'hold' AND expired) AS expired,
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
            WHERE started_at < $2 AND (ended_at IS NULL OR ended_at >= $1) GROUP BY agent_id
         ), f AS (
            SELECT agent_id, count(*) AS refused FROM auth_failures
            WHERE verified AND agent_id IS NOT NULL AND at >= $1 AND at < $2 GROUP BY agent_id
         )
         SELECT a.id AS agent_id, a.name AS agent_name, a.issuer, a.subject,
                COALESCE(per.resources, '{}') AS resources, COALESCE(s.sessions, 0) AS sessions,
                COALESCE(per.commands, 0) AS commands, COALESCE(per.allowed, 0) AS allowed,
                COALESCE(per.denied, 0) AS denied, COALESCE(per.held, 0) AS held,
                COALESCE(per.approved, 0) AS approved, COALESCE(per.expired, 0) AS expired,
                COALESCE(by_whom.approvers, '{}') AS approvers, COALESCE(cls.classes, '{}') AS classes,
                COALESCE(f.refused, 0) AS refused_logins, per.first_use, per.last_use,
                COALESCE(per.policy_versions, '{}') AS policy_versions
         FROM agents a
         LEFT JOIN per ON per.agent_id = a.id LEFT JOIN cls ON cls.agent_id = a.id
         LEFT JOIN s ON s.agent_id = a.id LEFT JOIN f ON f.agent_id = a.id LEFT JOIN by_whom ON by_whom.agent_id = a.id
         WHERE (per.agent_id IS NOT NULL OR s.agent_id IS NOT NULL OR f.agent_id IS NOT NULL)
           AND ($3::uuid IS NULL OR a.id > $3)
         ORDER BY a.id LIMIT $4";

/// Per agent: what it reached and did in a period.
#[utoipa::path(get, path = "/api/v1/reviews/agents", tag = "reviews", params(ReviewQuery),
    responses((status = 200, body = ReportPage<AgentReview>, description = "JSON, or text/csv with format=csv (the next page's cursor in the Link header)"),
        (status = 400, body = super::error::Problem), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn agents(
    State(state): State<AppState>,
    query: Result<Query<ReviewQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = asked(query)?;
    let items = sqlx::query_as::<_, AgentReview>(AGENTS_SQL)
        .bind(q.from)
        .bind(q.to)
        .bind(q.id_cursor()?)
        .bind(i64::from(q.limit) + 1)
        .fetch_all(&state.db)
        .await?;
    Ok(respond(&q, items))
}

/// A CSV field: quoted when it holds a separator, a quote or a line break; a leading `=`, `+`,
/// `-` or `@` is prefixed with `'` so a spreadsheet does not run agent-chosen text as a formula.
fn field(value: &str) -> String {
    let value =
        if value.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{value}") } else { value.to_owned() };
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value
    }
}

fn list(values: impl IntoIterator<Item = impl ToString>) -> String {
    values.into_iter().map(|v| v.to_string()).collect::<Vec<_>>().join(";")
}

fn time(t: &Option<DateTime<Utc>>) -> String {
    t.map(|t| t.to_rfc3339()).unwrap_or_default()
}

/// A `{class: count}` object as `class=count;...`.
fn counts(value: &serde_json::Value) -> String {
    value.as_object().map(|m| list(m.iter().map(|(k, v)| format!("{k}={v}")))).unwrap_or_default()
}

impl CsvRow for AgentReview {
    const HEADER: &'static str = "agent_id,agent_name,issuer,subject,resources,sessions,commands,allowed,denied,held,approved,expired,approvers,classes,refused_logins,first_use,last_use,policy_versions";
    fn key(&self) -> String {
        self.agent_id.to_string()
    }
    fn csv(&self) -> String {
        let r = self;
        format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            r.agent_id,
            field(&r.agent_name),
            field(&r.issuer),
            field(&r.subject),
            field(&list(&r.resources)),
            r.sessions,
            r.commands,
            r.allowed,
            r.denied,
            r.held,
            r.approved,
            r.expired,
            field(&list(&r.approvers)),
            field(&counts(&r.classes)),
            r.refused_logins,
            time(&r.first_use),
            time(&r.last_use),
            list(&r.policy_versions)
        )
    }
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct ResourceReview {
    pub resource: String,
    pub resource_kind: String,
    /// Per agent that reached it: `{agent_id, agent_name, sessions, commands, denied, held, classes}`.
    #[schema(value_type = Vec<Object>)]
    pub agents: serde_json::Value,
    /// Sessions open on it at any time in the period.
    pub sessions: i64,
    pub commands: i64,
    pub allowed: i64,
    pub denied: i64,
    pub held: i64,
    pub approved: i64,
    /// Logins to it that were refused (whoever tried).
    pub refused_logins: i64,
    pub first_use: Option<DateTime<Utc>>,
    pub last_use: Option<DateTime<Utc>>,
}

/// Per resource: which agents reached it, and how.
#[utoipa::path(get, path = "/api/v1/reviews/resources", tag = "reviews", params(ReviewQuery),
    responses((status = 200, body = ReportPage<ResourceReview>, description = "JSON, or text/csv with format=csv"),
        (status = 400, body = super::error::Problem), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn resources(
    State(state): State<AppState>,
    query: Result<Query<ReviewQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = asked(query)?;
    let items = sqlx::query_as::<_, ResourceReview>(
        "WITH c AS (
            SELECT c.agent_id, c.resource, c.decision, c.classification, c.at,
                   EXISTS (SELECT 1 FROM approvals ap WHERE ap.command_id = c.event_id AND ap.session_id = c.session_id
                                  AND ap.released_at IS NOT NULL) AS released
            FROM commands c
            WHERE c.at >= $1 AND c.at < $2
         ), s AS (
            SELECT resource, resource_kind, agent_id, count(*) AS sessions FROM sessions
            WHERE started_at < $2 AND (ended_at IS NULL OR ended_at >= $1) GROUP BY resource, resource_kind, agent_id
         ), pa AS (
            SELECT agent_id, resource, count(*) AS commands, count(*) FILTER (WHERE decision = 'deny') AS denied,
                   count(*) FILTER (WHERE decision = 'hold') AS held
            FROM c GROUP BY agent_id, resource
         ), pc AS (
            SELECT agent_id, resource, jsonb_object_agg(class, n ORDER BY class) AS classes FROM (
                SELECT agent_id, resource, class, count(*) AS n
                FROM c, jsonb_array_elements_text(COALESCE(c.classification -> 'classes', '[]')) AS class
                GROUP BY agent_id, resource, class) x
            GROUP BY agent_id, resource
         ), per_agent AS (
            SELECT s.resource, jsonb_agg(jsonb_build_object(
                       'agent_id', s.agent_id, 'agent_name', a.name, 'sessions', s.sessions,
                       'commands', COALESCE(pa.commands, 0), 'denied', COALESCE(pa.denied, 0),
                       'held', COALESCE(pa.held, 0), 'classes', COALESCE(pc.classes, '{}'))
                   ORDER BY a.name, s.agent_id) AS agents
            FROM s JOIN agents a ON a.id = s.agent_id
            LEFT JOIN pa ON pa.agent_id = s.agent_id AND pa.resource = s.resource
            LEFT JOIN pc ON pc.agent_id = s.agent_id AND pc.resource = s.resource
            GROUP BY s.resource
         ), f AS (
            SELECT resource, min(resource_kind) AS resource_kind, count(*) AS refused FROM auth_failures
            WHERE at >= $1 AND at < $2 GROUP BY resource
         ), r AS (
            -- Every resource a session was open on, or a login to was refused, in the period.
            SELECT resource, COALESCE(min(resource_kind), 'unknown') AS resource_kind, sum(sessions)::int8 AS sessions
            FROM (SELECT resource, resource_kind, sessions FROM s UNION ALL SELECT resource, resource_kind, 0 FROM f) x
            GROUP BY resource
         ), rc AS (
            SELECT resource, count(*) AS commands, count(*) FILTER (WHERE decision = 'allow') AS allowed,
                   count(*) FILTER (WHERE decision = 'deny') AS denied, count(*) FILTER (WHERE decision = 'hold') AS held,
                   count(*) FILTER (WHERE decision = 'hold' AND released) AS approved, min(at) AS first_use, max(at) AS last_use
            FROM c GROUP BY resource
         )
         SELECT r.resource, r.resource_kind, COALESCE(per_agent.agents, '[]') AS agents, r.sessions,
                COALESCE(rc.commands, 0) AS commands, COALESCE(rc.allowed, 0) AS allowed, COALESCE(rc.denied, 0) AS denied,
                COALESCE(rc.held, 0) AS held, COALESCE(rc.approved, 0) AS approved, COALESCE(f.refused, 0) AS refused_logins,
                rc.first_use, rc.last_use
         FROM r LEFT JOIN per_agent ON per_agent.resource = r.resource LEFT JOIN rc ON rc.resource = r.resource
         LEFT JOIN f ON f.resource = r.resource
         WHERE ($3::text IS NULL OR r.resource > $3)
         ORDER BY r.resource LIMIT $4",
    )
    .bind(q.from)
    .bind(q.to)
    .bind(q.cursor.as_deref())
    .bind(i64::from(q.limit) + 1)
    .fetch_all(&state.db)
    .await?;
    Ok(respond(&q, items))
}

impl CsvRow for ResourceReview {
    const HEADER: &'static str =
        "resource,resource_kind,agents,sessions,commands,allowed,denied,held,approved,refused_logins,first_use,last_use";
    fn key(&self) -> String {
        self.resource.clone()
    }
    fn csv(&self) -> String {
        let r = self;
        let agents = r.agents.as_array().map(|a| {
            list(a.iter().map(|x| {
                format!("{}={}", x["agent_name"].as_str().unwrap_or("?"), x["commands"].as_i64().unwrap_or(0))
            }))
        });
        format!(
            "{},{},{},{},{},{},{},{},{},{},{},{}",
            field(&r.resource),
            field(&r.resource_kind),
            field(&agents.unwrap_or_default()),
            r.sessions,
            r.commands,
            r.allowed,
            r.denied,
            r.held,
            r.approved,
            r.refused_logins,
            time(&r.first_use),
            time(&r.last_use)
        )
    }
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct ApprovalEvidence {
    pub approval_id: Uuid,
    pub requested_at: DateTime<Utc>,
    pub agent_name: String,
    pub resource: String,
    /// The held command as recorded (masked); nil command id when asked ahead of a run.
    pub command_id: Uuid,
    pub statement: String,
    pub rule: String,
    pub classes: Vec<String>,
    pub quorum: i32,
    pub approver_groups: Vec<String>,
    /// pending, approved, denied or expired.
    pub status: String,
    pub expiry_reason: Option<String>,
    /// `{at, verdict, channel, approver, reason}` in order.
    #[schema(value_type = Vec<Object>)]
    pub decisions: serde_json::Value,
    pub decided_at: Option<DateTime<Utc>>,
    /// From the request to its decision, milliseconds.
    pub waited_ms: Option<i64>,
    /// When the held command went to the upstream (approved and run).
    pub released_at: Option<DateTime<Utc>>,
}

/// The approvals evidence: period `$1..$2`, after cursor `$3`, at most `$4` rows.
const APPROVALS_SQL: &str =
    "SELECT ap.id AS approval_id, ap.requested_at, COALESCE(ap.agent ->> 'name', '') AS agent_name, ap.resource,
                ap.command_id, ap.statement, ap.rule, ap.classes, ap.quorum, ap.approver_groups,
                CASE WHEN ap.status = 'pending' AND ap.expires_at <= now() THEN 'expired' ELSE ap.status END AS status,
                ap.expiry_reason,
                COALESCE((SELECT jsonb_agg(jsonb_build_object('at', d.at, 'verdict', d.verdict, 'channel', d.channel,
                                  'approver', d.approver_name, 'reason', d.reason) ORDER BY d.at)
                          FROM approval_decisions d WHERE d.approval_id = ap.id), '[]') AS decisions,
                ap.decided_at, (extract(epoch FROM ap.decided_at - ap.requested_at) * 1000)::int8 AS waited_ms,
                ap.released_at
         FROM approvals ap
         WHERE ap.requested_at >= $1 AND ap.requested_at < $2 AND ($3::uuid IS NULL OR ap.id > $3)
         ORDER BY ap.id LIMIT $4";

/// Every held command requested in the period: requester, approvers, channel, reason, timing
/// and outcome.
#[utoipa::path(get, path = "/api/v1/reviews/approvals", tag = "reviews", params(ReviewQuery),
    responses((status = 200, body = ReportPage<ApprovalEvidence>, description = "JSON, or text/csv with format=csv"),
        (status = 400, body = super::error::Problem), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn approvals(
    State(state): State<AppState>,
    query: Result<Query<ReviewQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = asked(query)?;
    let items = sqlx::query_as::<_, ApprovalEvidence>(APPROVALS_SQL)
        .bind(q.from)
        .bind(q.to)
        .bind(q.id_cursor()?)
        .bind(i64::from(q.limit) + 1)
        .fetch_all(&state.db)
        .await?;
    Ok(respond(&q, items))
}

impl CsvRow for ApprovalEvidence {
    const HEADER: &'static str = "approval_id,requested_at,agent_name,resource,statement,rule,classes,quorum,status,decisions,decided_at,waited_ms,released_at";
    fn key(&self) -> String {
        self.approval_id.to_string()
    }
    fn csv(&self) -> String {
        let r = self;
        let decisions = r.decisions.as_array().map(|a| {
            list(a.iter().map(|d| {
                let reason = d["reason"].as_str().map(|x| format!(" ({x})")).unwrap_or_default();
                format!(
                    "{} by {} via {}{reason}",
                    d["verdict"].as_str().unwrap_or("?"),
                    d["approver"].as_str().unwrap_or("?"),
                    d["channel"].as_str().unwrap_or("?")
                )
            }))
        });
        format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{}",
            r.approval_id,
            r.requested_at.to_rfc3339(),
            field(&r.agent_name),
            field(&r.resource),
            field(&r.statement),
            field(&r.rule),
            field(&list(&r.classes)),
            r.quorum,
            field(&r.status),
            field(&decisions.unwrap_or_default()),
            time(&r.decided_at),
            r.waited_ms.map(|w| w.to_string()).unwrap_or_default(),
            time(&r.released_at)
        )
    }
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct WhoRanQuery {
    /// The statement exactly as recorded (masked as the record holds it).
    pub text: Option<String>,
    /// Or any statement containing this text (case-insensitive).
    pub contains: Option<String>,
    /// Or every statement with this fingerprint (16 hex digits, as the rows carry it).
    pub fingerprint: Option<String>,
    /// Or every statement of the same shape as this one (its fingerprint: constants, spacing,
    /// comments and case of names aside).
    pub same_as: Option<String>,
    /// What `same_as` is written in: sql (the default) or shell (an SSH command line).
    pub language: Option<String>,
    pub from: DateTime<Utc>,
    pub to: Option<DateTime<Utc>>,
    pub format: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct WhoRan {
    pub command_id: Uuid,
    pub session_id: Uuid,
    pub at: DateTime<Utc>,
    pub agent_id: Uuid,
    pub agent_name: String,
    pub resource: String,
    pub protocol: String,
    pub statement: String,
    /// The statement's shape: every run of the same statement with other values shares it.
    pub fingerprint: Option<String>,
    pub decision: String,
    pub rule: Option<String>,
    pub approval_id: Option<Uuid>,
    pub approval_status: Option<String>,
    /// Who approved it, when it was held.
    pub approvers: Vec<String>,
    /// ok, error... (absent when no result was recorded).
    pub outcome: Option<String>,
}

/// Who ran this: every agent and session that sent a statement, with its decision, approval and
/// outcome, in one request.
#[utoipa::path(get, path = "/api/v1/reviews/statements", tag = "reviews", params(WhoRanQuery),
    responses((status = 200, body = ReportPage<WhoRan>, description = "JSON, or text/csv with format=csv"),
        (status = 400, body = super::error::Problem), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn statements(
    State(state): State<AppState>,
    query: Result<Query<WhoRanQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(w) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    // Each way of asking has its own index: md5 of the text, the fingerprint, or (contains)
    // none beyond the period.
    let (condition, value) = match (w.text, w.contains, w.fingerprint, w.same_as) {
        (Some(t), None, None, None) if !t.is_empty() => ("md5(c.statement) = md5($5) AND c.statement = $5", t),
        (None, Some(c), None, None) if !c.is_empty() => {
            // A LIKE pattern that matches the text literally.
            let escaped = c.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            ("c.statement ILIKE $5", format!("%{escaped}%"))
        }
        (None, None, Some(f), None) => {
            if f.len() != 16 || !f.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                return Err(ApiError::BadRequest(format!("fingerprint {f:?} is not 16 lower-case hex digits")));
            }
            ("c.fingerprint = $5", f)
        }
        (None, None, None, Some(statement)) if !statement.is_empty() => {
            let print = match w.language.as_deref().unwrap_or("sql") {
                "sql" => crate::fingerprint::of_sql(&statement),
                "shell" => crate::fingerprint::of_line(&statement),
                other => return Err(ApiError::BadRequest(format!("language {other:?} is not sql or shell"))),
            };
            ("c.fingerprint = $5", print)
        }
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of text=, contains=, fingerprint= or same_as= (not empty)".into(),
            ))
        }
    };
    let review = ReviewQuery { from: w.from, to: w.to, format: w.format, limit: w.limit, cursor: w.cursor };
    let q = asked(Ok(Query(review)))?;
    let items = sqlx::query_as::<_, WhoRan>(&format!(
        "SELECT c.event_id AS command_id, c.session_id, c.at, c.agent_id, a.name AS agent_name, c.resource, c.protocol,
                c.statement, c.fingerprint, c.decision, c.rule, ap.id AS approval_id, ap.status AS approval_status,
                COALESCE((SELECT array_agg(d.approver_name ORDER BY d.at) FROM approval_decisions d
                          WHERE d.approval_id = ap.id AND d.verdict = 'approve'), '{{}}') AS approvers,
                r.outcome
         FROM commands c JOIN agents a ON a.id = c.agent_id
         -- One row per command: its session's own approval request and result, the first of each.
         LEFT JOIN LATERAL (
             SELECT id, CASE WHEN status = 'pending' AND expires_at <= now() THEN 'expired' ELSE status END AS status
             FROM approvals WHERE command_id = c.event_id AND session_id = c.session_id
             ORDER BY requested_at LIMIT 1) ap ON true
         LEFT JOIN LATERAL (
             SELECT outcome FROM command_results WHERE command_id = c.event_id AND session_id = c.session_id
             ORDER BY at LIMIT 1) r ON true
         WHERE c.at >= $1 AND c.at < $2 AND ($3::uuid IS NULL OR c.event_id > $3)
           AND {condition}
         ORDER BY c.event_id LIMIT $4"
    ))
    .bind(q.from)
    .bind(q.to)
    .bind(q.id_cursor()?)
    .bind(i64::from(q.limit) + 1)
    .bind(value)
    .fetch_all(&state.db)
    .await?;
    Ok(respond(&q, items))
}

impl CsvRow for WhoRan {
    const HEADER: &'static str =
        "command_id,session_id,at,agent_id,agent_name,resource,protocol,statement,fingerprint,decision,rule,approval_id,approval_status,approvers,outcome";
    fn key(&self) -> String {
        self.command_id.to_string()
    }
    fn csv(&self) -> String {
        let r = self;
        format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            r.command_id,
            r.session_id,
            r.at.to_rfc3339(),
            r.agent_id,
            field(&r.agent_name),
            field(&r.resource),
            field(&r.protocol),
            field(&r.statement),
            r.fingerprint.as_deref().unwrap_or(""),
            field(&r.decision),
            field(r.rule.as_deref().unwrap_or("")),
            r.approval_id.map(|a| a.to_string()).unwrap_or_default(),
            field(r.approval_status.as_deref().unwrap_or("")),
            field(&list(&r.approvers)),
            field(r.outcome.as_deref().unwrap_or(""))
        )
    }
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct PeriodQuery {
    pub from: DateTime<Utc>,
    pub to: Option<DateTime<Utc>>,
}

/// How one grant was used on one resource it selects.
#[derive(Debug, Serialize, ToSchema)]
pub struct GrantUse {
    pub grant: String,
    pub resource: String,
    /// The access the grant gives (read-only, read-write, admin).
    #[schema(value_type = String)]
    pub access: tollgate_shared::policy::Access,
    /// Sessions it admitted to the resource in the period.
    pub sessions: i64,
    pub agents: Vec<String>,
    /// Whether any of those sessions wrote: a writing SQL statement that ran (allowed, or held
    /// and approved) and completed, or anything that ran on another protocol (an SSH exec,
    /// shell or forward needs more than read-only). A refused or failed SQL write is not a use.
    pub wrote: bool,
    /// `unused` (no session), `read_only_use` (read-write or admin granted, only reads made).
    pub finding: Option<String>,
    /// False for a grant that was in force in the period but that the live policy no longer
    /// has (nothing left to revoke).
    pub in_live_policy: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UnusedGrants {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The live policy version the grants were read from.
    pub policy_version: u64,
    pub grants: Vec<GrantUse>,
    /// The live policy with the findings revoked: unused grants removed, unused resources taken
    /// out of a grant's selection (as names), read-only use turned into `read-only` access.
    /// `tollgate policy apply` accepts it as it is.
    #[schema(value_type = Object)]
    pub suggested_policy: serde_json::Value,
    #[schema(value_type = Vec<Object>)]
    pub changes: Vec<tollgate_shared::policy::PolicyChange>,
}

#[derive(sqlx::FromRow)]
struct Used {
    grant_name: String,
    resource: String,
    sessions: i64,
    agents: Vec<String>,
    wrote: bool,
}

/// Access granted in the period (by any policy version in force in it) that the period did not
/// use, or used read-only while granted read-write; with the revocation of what the live policy
/// still grants, as a policy to apply.
#[utoipa::path(get, path = "/api/v1/reviews/unused-grants", tag = "reviews", params(PeriodQuery),
    responses((status = 200, body = UnusedGrants), (status = 400, body = super::error::Problem), (status = 404, body = super::error::Problem),
        (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn unused_grants(
    State(state): State<AppState>,
    query: Result<Query<PeriodQuery>, QueryRejection>,
) -> Result<Json<UnusedGrants>, ApiError> {
    use tollgate_shared::policy::{Access, Grant, PolicyDocument, ResourcePolicy, ResourceSelector};
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let to = period(q.from, q.to)?;
    let store = super::policy::store(&state).await?;
    let (live, _) = crate::policy::current(&store, &state.control_key)
        .await
        .map_err(super::policy::store_error)?
        .ok_or_else(|| ApiError::NotFound("no policy has been set".into()))?;
    let used: Vec<Used> = sqlx::query_as(
        "SELECT s.grant_name, s.resource, count(*) AS sessions, array_agg(DISTINCT a.name ORDER BY a.name) AS agents,
                bool_or(EXISTS (
                    SELECT 1 FROM commands c
                    JOIN command_results r ON r.command_id = c.event_id AND r.session_id = c.session_id
                    WHERE c.session_id = s.id AND c.decision IN ('allow', 'hold')
                      AND (c.decision = 'allow' OR EXISTS (SELECT 1 FROM approvals ap WHERE ap.command_id = c.event_id
                                                           AND ap.session_id = c.session_id AND ap.released_at IS NOT NULL))
                      -- SQL: a writing statement that completed. SSH and the rest: anything that
                      -- ran (a read-only grant runs no exec, shell or forward at all).
                      AND ((c.protocol IN ('simple', 'extended') AND (c.classification ->> 'writes')::boolean
                            AND r.outcome = 'ok')
                           OR c.protocol NOT IN ('simple', 'extended')))) AS wrote
         FROM sessions s JOIN agents a ON a.id = s.agent_id
         WHERE s.started_at < $2 AND (s.ended_at IS NULL OR s.ended_at >= $1) AND s.grant_name IS NOT NULL
         GROUP BY s.grant_name, s.resource",
    )
    .bind(q.from)
    .bind(to)
    .fetch_all(&state.db)
    .await?;
    // Every policy version in force at some time in the period: the one in force at its start
    // and those set during it. A grant counts if any of them held it.
    let versions: Vec<(i64, serde_json::Value)> = sqlx::query_as(
        "SELECT version, document FROM policy_versions
         WHERE changed_at < $2 AND version >= COALESCE((SELECT max(version) FROM policy_versions WHERE changed_at <= $1), 0)
         ORDER BY version",
    )
    .bind(q.from)
    .bind(to)
    .fetch_all(&state.db)
    .await?;
    // The live version from the store itself: the views may not have it yet.
    let live_number = i64::try_from(live.version).unwrap_or(i64::MAX);
    let mut in_force: Vec<PolicyDocument> = Vec::new();
    for (version, document) in versions.into_iter().filter(|(v, _)| *v < live_number) {
        match serde_json::from_value(document) {
            Ok(document) => in_force.push(document),
            Err(e) => {
                tracing::warn!(version, error = %e, "a recorded policy version cannot be read; left out of the report")
            }
        }
    }
    if live.changed_at < to {
        in_force.push(live.document.clone());
    }
    let held = |name: &str| in_force.iter().any(|d| d.grants.iter().any(|g| g.name == name));
    let use_of = |grant: &Grant, resource: &ResourcePolicy, live: bool| {
        let usage = used.iter().find(|u| u.grant_name == grant.name && u.resource == resource.name);
        let (sessions, agents, wrote) =
            usage.map_or((0, Vec::new(), false), |u| (u.sessions, u.agents.clone(), u.wrote));
        let finding = if sessions == 0 {
            Some("unused")
        } else if grant.access > Access::ReadOnly && !wrote {
            Some("read_only_use")
        } else {
            None
        };
        GrantUse {
            grant: grant.name.clone(),
            resource: resource.name.clone(),
            access: grant.access,
            sessions,
            agents,
            wrote,
            finding: finding.map(str::to_owned),
            in_live_policy: live,
        }
    };
    let document = &live.document;
    let mut grants = Vec::new();
    let mut suggested = document.clone();
    suggested.grants.clear();
    for grant in &document.grants {
        // A grant that ended before the period, or was set after it, is not access anyone held
        // in it.
        if grant.expires.is_some_and(|at| at <= q.from) || !held(&grant.name) {
            suggested.grants.push(grant.clone());
            continue;
        }
        let selected: Vec<&ResourcePolicy> = document.resources.iter().filter(|r| grant.selects(r)).collect();
        let uses: Vec<GrantUse> = selected.iter().map(|r| use_of(grant, r, true)).collect();
        let kept: Vec<String> = uses.iter().filter(|u| u.sessions > 0).map(|u| u.resource.clone()).collect();
        let any_write = uses.iter().any(|u| u.wrote);
        grants.extend(uses);
        if kept.is_empty() {
            continue;
        }
        let mut revised = grant.clone();
        if kept.len() < selected.len() {
            revised.resources = ResourceSelector { names: kept, labels: Default::default() };
        }
        if revised.access > Access::ReadOnly && !any_write {
            revised.access = Access::ReadOnly;
        }
        suggested.grants.push(revised);
    }
    // Grants the period had that the live policy has dropped since: reported as they stood in
    // the last version that held them.
    let mut gone: Vec<&str> = Vec::new();
    for earlier in in_force.iter().rev() {
        for grant in &earlier.grants {
            if document.grants.iter().any(|g| g.name == grant.name) || gone.contains(&grant.name.as_str()) {
                continue;
            }
            gone.push(&grant.name);
            grants.extend(earlier.resources.iter().filter(|r| grant.selects(r)).map(|r| use_of(grant, r, false)));
        }
    }
    let changes = tollgate_shared::policy::diff(document, &suggested);
    Ok(Json(UnusedGrants {
        from: q.from,
        to,
        policy_version: live.version,
        grants,
        suggested_policy: serde_json::to_value(&suggested).unwrap_or_default(),
        changes,
    }))
}

/// The most events one export may hold: a longer period is exported in parts.
const EXPORT_MAX_EVENTS: i64 = 200_000;
/// ... and the most bytes of events.
const EXPORT_MAX_BYTES: i64 = 64 * 1024 * 1024;

/// A signed export of a period: the agents and approvals reports, every event of the sessions
/// that started in it, and their chain heads, signed with the control plane's key
/// (`tollgate verify-export` checks it offline).
#[utoipa::path(get, path = "/api/v1/reviews/export", tag = "reviews", params(PeriodQuery),
    responses((status = 200, description = "`{body, signature}`: body is the export's JSON text, signed as `export`"),
        (status = 400, body = super::error::Problem), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn export(
    State(state): State<AppState>,
    query: Result<Query<PeriodQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let to = period(q.from, q.to)?;
    // One snapshot for the size check, the reports and the events.
    let mut tx = state.db.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    let (count, bytes): (i64, i64) = sqlx::query_as(
        "SELECT count(*), COALESCE(sum(octet_length(e.raw)), 0)::int8 FROM events e JOIN sessions s ON s.id = e.session_id
         WHERE s.started_at >= $1 AND s.started_at < $2",
    )
    .bind(q.from)
    .bind(to)
    .fetch_one(&mut *tx)
    .await?;
    if count > EXPORT_MAX_EVENTS || bytes > EXPORT_MAX_BYTES {
        return Err(ApiError::BadRequest(format!(
            "the period holds {count} events ({bytes} bytes), more than one export may ({EXPORT_MAX_EVENTS} events, \
             {EXPORT_MAX_BYTES} bytes): export it in parts"
        )));
    }
    let agents = sqlx::query_as::<_, AgentReview>(AGENTS_SQL)
        .bind(q.from)
        .bind(to)
        .bind(None::<Uuid>)
        .bind(i64::MAX)
        .fetch_all(&mut *tx)
        .await?;
    let approvals = sqlx::query_as::<_, ApprovalEvidence>(APPROVALS_SQL)
        .bind(q.from)
        .bind(to)
        .bind(None::<Uuid>)
        .bind(i64::MAX)
        .fetch_all(&mut *tx)
        .await?;
    let rows: Vec<(Uuid, Vec<u8>)> = sqlx::query_as(
        "SELECT e.session_id, e.raw FROM events e JOIN sessions s ON s.id = e.session_id
         WHERE s.started_at >= $1 AND s.started_at < $2 ORDER BY s.started_at, e.session_id, e.seq, e.id",
    )
    .bind(q.from)
    .bind(to)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut sessions: Vec<tollgate_shared::export::ExportedSession> = Vec::new();
    for (session, raw) in rows {
        let text = String::from_utf8(raw)
            .map_err(|_| ApiError::Unexpected(anyhow::anyhow!("a stored event of session {session} is not UTF-8")))?;
        match sessions.last_mut() {
            Some(last) if last.session == session => last.events.push(text),
            _ => sessions.push(tollgate_shared::export::ExportedSession {
                session,
                head: String::new(),
                linked: false,
                complete: false,
                node_key: None,
                node_trusted: false,
                views_match: false,
                events: vec![text],
            }),
        }
    }
    for session in &mut sessions {
        let raws: Vec<&[u8]> = session.events.iter().map(|e| e.as_bytes()).collect();
        let report = tollgate_shared::event::verify_chain(&raws);
        (session.head, session.linked, session.complete) = (report.head, report.linked, report.complete);
        let (verified, _) = super::sessions::verification(&state, session.session).await?;
        session.node_key = report.node_key;
        session.node_trusted = verified.node_trust.as_ref().is_some_and(|t| t.trusted());
        session.views_match = verified.views_match;
    }
    let export = tollgate_shared::export::Export {
        from: q.from,
        to,
        generated_at: Utc::now(),
        control_key: state.control_key.public_hex(),
        reports: serde_json::json!({ "agents": agents, "approvals": approvals }),
        sessions,
    };
    let signed = tollgate_shared::control::Signed::seal(
        &state.control_key,
        tollgate_shared::control::ControlKind::Export,
        &export,
    )
    .map_err(|e| ApiError::Unexpected(anyhow::anyhow!("signing the export: {e}")))?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], signed).into_response())
}
