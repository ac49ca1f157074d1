//! The policy: the live version, putting a new one (optimistic concurrency on the version
//! number), its history, diffs between versions, and dry runs.

use super::auth::Caller;
use super::{ApiError, AppState};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollgate_shared::policy::{diff, PolicyChange, PolicyDocument, PolicyErrors};
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyView {
    pub version: u64,
    #[schema(value_type = Object)]
    pub document: Value,
    pub changed_by: String,
    pub changed_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct PutPolicy {
    /// The version this change was based on (0 for the first policy). A stale base is refused
    /// (409) so concurrent edits cannot silently overwrite each other.
    pub base_version: u64,
    /// The policy document (the JSON form of the YAML schema).
    #[schema(value_type = Object)]
    pub document: Value,
    pub comment: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PutPolicyResult {
    pub version: u64,
    #[schema(value_type = Vec<Object>)]
    pub changes: Vec<PolicyChange>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct DryRun {
    #[schema(value_type = Object)]
    pub document: Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DryRunResult {
    pub valid: bool,
    pub problems: Vec<Problem>,
    /// The live version the document was compared with (0: none yet).
    pub live_version: u64,
    #[schema(value_type = Vec<Object>)]
    pub changes: Vec<PolicyChange>,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct PolicyVersionView {
    pub version: i64,
    pub changed_by: String,
    pub changed_by_issuer: String,
    pub changed_at: DateTime<Utc>,
    pub comment: Option<String>,
    #[schema(value_type = Vec<Object>)]
    pub changes: Value,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DiffQuery {
    /// Older version (0: the empty policy).
    pub from: u64,
    /// Newer version.
    pub to: u64,
}

/// Parse a document from JSON, reporting every problem with its path.
fn parse_document(document: &Value) -> Result<PolicyDocument, PolicyErrors> {
    PolicyDocument::parse(&document.to_string(), tollgate_shared::policy::Format::Json)
}

fn invalid(errors: PolicyErrors) -> ApiError {
    ApiError::BadRequest(errors.to_string())
}

pub(super) async fn store(state: &AppState) -> Result<async_nats::jetstream::kv::Store, ApiError> {
    tollgate_shared::stream::open_policy_bucket(&state.js).await.map_err(ApiError::Unavailable)
}

pub(super) fn store_error(e: crate::policy::ApplyError) -> ApiError {
    match e {
        crate::policy::ApplyError::Conflict { .. } => ApiError::Conflict(e.to_string()),
        crate::policy::ApplyError::Store(message) => ApiError::Unavailable(message),
    }
}

/// The live policy.
#[utoipa::path(get, path = "/api/v1/policy", tag = "policy",
    responses((status = 200, body = PolicyView), (status = 404, body = super::error::Problem), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn get_policy(State(state): State<AppState>) -> Result<Json<PolicyView>, ApiError> {
    let store = store(&state).await?;
    let (snapshot, _) = crate::policy::current(&store, &state.control_key)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::NotFound("no policy has been set".into()))?;
    Ok(Json(PolicyView {
        version: snapshot.version,
        document: serde_json::to_value(&snapshot.document).unwrap_or_default(),
        changed_by: snapshot.changed_by,
        changed_at: snapshot.changed_at,
    }))
}

/// Put a new policy version (admin).
#[utoipa::path(put, path = "/api/v1/policy", tag = "policy", request_body = PutPolicy,
    responses((status = 200, body = PutPolicyResult), (status = 400, body = super::error::Problem), (status = 409, body = super::error::Problem),
        (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn put_policy(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<PutPolicy>, JsonRejection>,
) -> Result<Json<PutPolicyResult>, ApiError> {
    let Json(body) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let document = parse_document(&body.document).map_err(invalid)?;
    let store = store(&state).await?;
    let (snapshot, changes) = crate::policy::apply(
        &state.js,
        &store,
        &state.control_key,
        &caller.identity,
        body.base_version,
        document,
        body.comment,
    )
    .await
    .map_err(store_error)?;
    tracing::info!(version = snapshot.version, by = %caller.subject, changes = changes.len(), "policy changed");
    Ok(Json(PutPolicyResult { version: snapshot.version, changes }))
}

/// Validate a document and show what it would change, without applying it (admin).
#[utoipa::path(post, path = "/api/v1/policy/dry-run", tag = "policy", request_body = DryRun,
    responses((status = 200, body = DryRunResult), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn dry_run(
    State(state): State<AppState>,
    body: Result<Json<DryRun>, JsonRejection>,
) -> Result<Json<DryRunResult>, ApiError> {
    let Json(body) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let store = store(&state).await?;
    let live = crate::policy::current(&store, &state.control_key).await.map_err(store_error)?;
    let live_version = live.as_ref().map_or(0, |(s, _)| s.version);
    match parse_document(&body.document) {
        Ok(document) => {
            let empty = PolicyDocument::default();
            let changes = diff(live.as_ref().map_or(&empty, |(s, _)| &s.document), &document);
            Ok(Json(DryRunResult { valid: true, problems: vec![], live_version, changes }))
        }
        Err(errors) => Ok(Json(DryRunResult {
            valid: false,
            problems: errors.0.into_iter().map(|p| Problem { path: p.path, message: p.message }).collect(),
            live_version,
            changes: vec![],
        })),
    }
}

/// Every policy version, newest first.
#[utoipa::path(get, path = "/api/v1/policy/versions", tag = "policy",
    responses((status = 200, body = [PolicyVersionView]), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn list_versions(State(state): State<AppState>) -> Result<Json<Vec<PolicyVersionView>>, ApiError> {
    let rows = sqlx::query_as::<_, PolicyVersionView>(
        "SELECT version, changed_by, changed_by_issuer, changed_at, comment, changes FROM policy_versions ORDER BY version DESC",
    )
    .fetch_all(&state.db)
    .await?;
    Ok(Json(rows))
}

async fn document_at(state: &AppState, version: u64) -> Result<PolicyDocument, ApiError> {
    if version == 0 {
        return Ok(PolicyDocument::default());
    }
    let version_i64 = i64::try_from(version).map_err(|_| ApiError::BadRequest("version out of range".into()))?;
    let row: Option<(Value,)> = sqlx::query_as("SELECT document FROM policy_versions WHERE version = $1")
        .bind(version_i64)
        .fetch_optional(&state.db)
        .await?;
    let (document,) = row.ok_or_else(|| ApiError::NotFound(format!("no policy version {version}")))?;
    serde_json::from_value(document).map_err(|e| ApiError::Unexpected(e.into()))
}

/// One policy version's document.
#[utoipa::path(get, path = "/api/v1/policy/versions/{version}", tag = "policy", params(("version" = u64, Path)),
    responses((status = 200, body = Object), (status = 404, body = super::error::Problem), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn get_version(
    State(state): State<AppState>,
    version: Result<Path<u64>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(version) = version.map_err(|_| ApiError::BadRequest("the version must be a positive integer".into()))?;
    if version == 0 {
        return Err(ApiError::NotFound("versions start at 1".into()));
    }
    Ok(Json(serde_json::to_value(document_at(&state, version).await?).unwrap_or_default()))
}

/// What changed between two versions.
#[utoipa::path(get, path = "/api/v1/policy/diff", tag = "policy", params(DiffQuery),
    responses((status = 200, body = [Object]), (status = 404, body = super::error::Problem), (status = 401, body = super::error::Problem), (status = 403, body = super::error::Problem)),
    security(("bearer" = [])))]
pub async fn diff_versions(
    State(state): State<AppState>,
    query: Result<Query<DiffQuery>, QueryRejection>,
) -> Result<Json<Vec<PolicyChange>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let before = document_at(&state, q.from).await?;
    let after = document_at(&state, q.to).await?;
    Ok(Json(diff(&before, &after)))
}
