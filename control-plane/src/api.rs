//! The REST API: sessions, their events and verification, agents, health. Every `/api/v1`
//! route requires a bearer token and a role (tower layers, not checks in each handler).

mod agents;
pub mod approvals;
mod auth;
mod auth_failures;
mod channels;
mod error;
mod health;
pub mod nodes;
pub mod policy;
pub mod reviews;
pub mod sessions;
pub mod transcript;

use crate::projector::ProjectorStats;
use axum::routing::get;
use axum::Router;
use sqlx::PgPool;
use std::sync::Arc;
use tollgate_shared::jwks::Verifier;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

pub use auth::{Caller, Role, RoleConfig};
/// The roles each part of the API (and the console) needs.
pub use auth::{
    ADMIN as ADMIN_ROLES, APPROVE as APPROVE_ROLES, READ as READ_ROLES, READ_APPROVALS as READ_APPROVAL_ROLES,
};
pub use channels::{SlackInbound, WebhookInbound};
pub use error::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    /// Slack callbacks accepted when set.
    pub slack: Option<Arc<channels::SlackInbound>>,
    /// Signed inbound decisions accepted when set.
    pub inbound_webhook: Option<Arc<channels::WebhookInbound>>,
    pub reviewers: Verifier,
    pub nats: async_nats::Client,
    pub stats: Arc<ProjectorStats>,
    pub roles: Arc<auth::RoleConfig>,
    pub js: async_nats::jetstream::Context,
    /// Signs policy versions, standing approvals and decisions.
    pub control_key: Arc<tollgate_shared::control::ControlKey>,
    /// Node keys the configuration trusts.
    pub trusted_nodes: Arc<Vec<String>>,
    /// Links from agent claims to people, for self-approval.
    pub self_links: Arc<Vec<crate::config::SelfLink>>,
    /// Decisions are taken one at a time, each once its predecessor is projected, so the
    /// checks of the next (one vote per person, the quorum of a standing approval) see it.
    pub deciding: Arc<tokio::sync::Mutex<()>>,
    /// The web console, when configured.
    pub console: Option<Arc<crate::console::Console>>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Tollgate control plane", description = "Sessions, commands and agents recorded by Tollgate proxies."),
    paths(
        sessions::list_sessions,
        sessions::get_session,
        sessions::session_events,
        sessions::session_commands,
        sessions::verify_session,
        sessions::end_session,
        sessions::session_asciicast,
        transcript::session_transcript,
        reviews::agents,
        reviews::resources,
        reviews::approvals,
        reviews::statements,
        reviews::unused_grants,
        reviews::export,
        agents::list_agents,
        auth_failures::list_auth_failures,
        approvals::list_approvals,
        approvals::request_ahead,
        approvals::get_approval,
        approvals::approve,
        approvals::deny,
        policy::get_policy,
        policy::put_policy,
        policy::dry_run,
        policy::list_versions,
        policy::get_version,
        policy::diff_versions,
        nodes::list_nodes,
        nodes::trust,
        nodes::retire,
        nodes::revoke,
        health::healthz,
        health::readyz,
    ),
    modifiers(&BearerAuth),
    tags((name = "sessions"), (name = "agents"), (name = "approvals"), (name = "policy"), (name = "nodes"), (name = "reviews"), (name = "health"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

/// The OpenAPI document, as checked in at openapi/openapi.json.
pub fn openapi_json() -> String {
    let mut text = ApiDoc::openapi().to_pretty_json().unwrap_or_default();
    text.push('\n');
    text
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/sessions", get(sessions::list_sessions))
        .route("/sessions/{id}", get(sessions::get_session))
        .route("/sessions/{id}/events", get(sessions::session_events))
        .route("/sessions/{id}/commands", get(sessions::session_commands))
        .route("/sessions/{id}/verify", get(sessions::verify_session))
        .route("/sessions/{id}/asciicast", get(sessions::session_asciicast))
        .route("/sessions/{id}/transcript", get(transcript::session_transcript))
        .route("/agents", get(agents::list_agents))
        .route("/reviews/agents", get(reviews::agents))
        .route("/reviews/resources", get(reviews::resources))
        .route("/reviews/approvals", get(reviews::approvals))
        .route("/reviews/statements", get(reviews::statements))
        .route("/reviews/unused-grants", get(reviews::unused_grants))
        .route("/reviews/export", get(reviews::export))
        .route("/auth-failures", get(auth_failures::list_auth_failures))
        .route("/policy", get(policy::get_policy))
        .route("/policy/versions", get(policy::list_versions))
        .route("/policy/versions/{version}", get(policy::get_version))
        .route("/policy/diff", get(policy::diff_versions))
        .route("/nodes", get(nodes::list_nodes))
        .route_layer(axum::middleware::from_fn(|r, n| auth::require(auth::READ, r, n)));
    let approvals = Router::new()
        .route("/approvals", get(approvals::list_approvals))
        .route("/approvals/{id}", get(approvals::get_approval))
        .route_layer(axum::middleware::from_fn(|r, n| auth::require(auth::READ_APPROVALS, r, n)));
    // Asking grants nothing by itself: any authenticated caller (a pipeline) may ask.
    let ask = Router::new().route("/approvals", axum::routing::post(approvals::request_ahead));
    let decide = Router::new()
        .route("/approvals/{id}/approve", axum::routing::post(approvals::approve))
        .route("/approvals/{id}/deny", axum::routing::post(approvals::deny))
        .route("/sessions/{id}/end", axum::routing::post(sessions::end_session))
        .route_layer(axum::middleware::from_fn(|r, n| auth::require(auth::APPROVE, r, n)));
    let admin = Router::new()
        .route("/policy", axum::routing::put(policy::put_policy))
        .route("/policy/dry-run", axum::routing::post(policy::dry_run))
        .route("/nodes/{key}/trust", axum::routing::post(nodes::trust))
        .route("/nodes/{key}/retire", axum::routing::post(nodes::retire))
        .route("/nodes/{key}/revoke", axum::routing::post(nodes::revoke))
        .route_layer(axum::middleware::from_fn(|r, n| auth::require(auth::ADMIN, r, n)));
    let api = api
        .merge(admin)
        .merge(approvals)
        .merge(ask)
        .merge(decide)
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::authenticate));
    Router::new()
        .nest("/api/v1", api)
        .route("/slack/interactions", axum::routing::post(channels::slack_interaction))
        .route("/webhooks/decisions", axum::routing::post(channels::webhook_decision))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route(
            "/openapi.json",
            get(|| async { ([(axum::http::header::CONTENT_TYPE, "application/json")], openapi_json()) }),
        )
        .route("/docs", get(|| async { page("text/html; charset=utf-8", DOCS_HTML) }))
        .route("/docs/reference.js", get(|| async { page("text/javascript; charset=utf-8", DOCS_JS) }))
        .route("/docs/reference.css", get(|| async { page("text/css; charset=utf-8", DOCS_CSS) }))
        .merge(crate::console::router())
        .with_state(state)
}

/// The API reference page: the control plane's own files, rendered from `/openapi.json` in the
/// browser, so it works without the internet (and its policy lets nothing else load).
const DOCS_HTML: &str = include_str!("api/docs/index.html");
const DOCS_JS: &str = include_str!("api/docs/reference.js");
const DOCS_CSS: &str = include_str!("api/docs/reference.css");

fn page(content_type: &'static str, body: &'static str) -> impl axum::response::IntoResponse {
    use axum::http::header;
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, "default-src 'self'; frame-ancestors 'none'"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}
