//! Liveness, readiness and Prometheus metrics (unauthenticated).

use super::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use std::sync::atomic::Ordering;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into(), problems: vec![] })
}

/// The database and NATS are reachable.
#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let mut problems = Vec::new();
    if let Err(e) = sqlx::query("SELECT 1").execute(&state.db).await {
        problems.push(format!("database: {e}"));
    }
    if state.nats.connection_state() != async_nats::connection::State::Connected {
        problems.push("nats: not connected".to_owned());
    }
    let status = if problems.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let text = if problems.is_empty() { "ready" } else { "not_ready" };
    (status, Json(Health { status: text.into(), problems }))
}

pub async fn metrics(State(state): State<AppState>) -> String {
    let s = &state.stats;
    format!(
        "# TYPE tollgate_projector_events_total counter\n\
         tollgate_projector_events_total{{result=\"projected\"}} {}\n\
         tollgate_projector_events_total{{result=\"duplicate\"}} {}\n\
         tollgate_projector_events_total{{result=\"rejected\"}} {}\n\
         # TYPE tollgate_projector_lag_events gauge\n\
         tollgate_projector_lag_events {}\n",
        s.projected.load(Ordering::Relaxed),
        s.duplicates.load(Ordering::Relaxed),
        s.rejected.load(Ordering::Relaxed),
        s.lag.load(Ordering::Relaxed),
    )
}
