//! Reviewer authentication: a bearer JWT from a configured reviewer issuer.

use super::{ApiError, AppState};
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;

/// Who is calling, once their token checked out.
#[derive(Debug, Clone)]
pub struct Reviewer {
    pub issuer: String,
    pub subject: String,
}

pub async fn require_reviewer(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = request
        .headers()
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("a bearer token is required".into()))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(|| ApiError::Unauthorized("the Authorization header must be `Bearer <token>`".into()))?;
    let verified = state.reviewers.verify(token).await.map_err(|e| ApiError::Unauthorized(e.to_string()))?;
    let reviewer = Reviewer { issuer: verified.issuer, subject: verified.subject };
    tracing::info!(reviewer = %reviewer.subject, issuer = %reviewer.issuer, path = %request.uri().path(), "api access");
    request.extensions_mut().insert(reviewer);
    Ok(next.run(request).await)
}
