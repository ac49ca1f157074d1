//! Who may call the API: a bearer JWT from a configured reviewer issuer (authentication), and a
//! role granted by the caller's groups (authorization), checked per route as tower layers.

use super::{ApiError, AppState};
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use serde::Deserialize;
use std::collections::BTreeSet;

/// What a caller may do. `admin` implies every other role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read sessions, commands, agents and refused attempts.
    Reviewer,
    /// Read everything a reviewer can, for access reviews and exports.
    Auditor,
    /// Decide on held commands.
    Approver,
    /// Change policy.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reviewer => "reviewer",
            Role::Auditor => "auditor",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }
}

/// Which groups grant which role (`[roles]` in the control plane's config).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    #[serde(default)]
    pub reviewer: Vec<String>,
    #[serde(default)]
    pub auditor: Vec<String>,
    #[serde(default)]
    pub approver: Vec<String>,
    #[serde(default)]
    pub admin: Vec<String>,
}

impl RoleConfig {
    pub fn is_empty(&self) -> bool {
        self.reviewer.is_empty() && self.auditor.is_empty() && self.approver.is_empty() && self.admin.is_empty()
    }

    /// The roles `groups` grant.
    pub fn roles_of(&self, groups: &[String]) -> BTreeSet<Role> {
        let grants = |list: &[String]| groups.iter().any(|g| list.contains(g));
        let mut roles = BTreeSet::new();
        for (role, list) in [
            (Role::Reviewer, &self.reviewer),
            (Role::Auditor, &self.auditor),
            (Role::Approver, &self.approver),
            (Role::Admin, &self.admin),
        ] {
            if grants(list) {
                roles.insert(role);
            }
        }
        roles
    }
}

/// Who is calling, once their token checked out.
#[derive(Debug, Clone)]
pub struct Caller {
    pub issuer: String,
    pub subject: String,
    /// The caller's identity by their issuer's mapping (recorded as the author of changes).
    pub identity: tollgate_shared::identity::AgentIdentity,
    pub roles: BTreeSet<Role>,
}

impl Caller {
    pub fn has_any(&self, roles: &[Role]) -> bool {
        self.roles.contains(&Role::Admin) || roles.iter().any(|r| self.roles.contains(r))
    }
}

/// Authenticate every `/api/v1` request and attach the [`Caller`].
pub async fn authenticate(
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
    let (verified, identity) =
        state.reviewers.identify(token).await.map_err(|e| ApiError::Unauthorized(e.to_string()))?;
    let roles = state.roles.roles_of(&identity.groups);
    let caller = Caller { issuer: verified.issuer, subject: verified.subject, identity, roles };
    tracing::info!(caller = %caller.subject, issuer = %caller.issuer, roles = ?caller.roles, path = %request.uri().path(), "api access");
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

/// Allow the request only when the caller holds one of `roles` (or admin).
pub async fn require(roles: &'static [Role], request: Request, next: Next) -> Result<Response, ApiError> {
    let caller = request
        .extensions()
        .get::<Caller>()
        .ok_or_else(|| ApiError::Unauthorized("a bearer token is required".into()))?;
    if !caller.has_any(roles) {
        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        return Err(ApiError::Forbidden(format!("this needs one of the roles: {}", names.join(", "))));
    }
    Ok(next.run(request).await)
}

/// Read access: sessions, commands, agents, refused attempts, policy.
pub const READ: &[Role] = &[Role::Reviewer, Role::Auditor];
/// Reading approval requests: reviewers, auditors and the people who decide them.
pub const READ_APPROVALS: &[Role] = &[Role::Reviewer, Role::Auditor, Role::Approver];
/// Deciding approval requests.
pub const APPROVE: &[Role] = &[Role::Approver];
/// Changing policy (admin implies every role, so the list names none besides it).
pub const ADMIN: &[Role] = &[Role::Admin];
