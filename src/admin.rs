//! The admin HTTP listener: health and metrics, apart from the data path.
//!
//! Routes:
//! - `GET /health/live`: 200 `ok` while the process serves HTTP at all.
//! - `GET /health/ready`: 200 `ready` once a backend master is confirmed,
//!   503 `not ready` before (load balancers route on this one).
//! - `GET /health`: the [`ProxyState::health_json`] detail.
//! - `GET /metrics`: the Prometheus text exposition.
//! - `POST /reload`: re-reads the config file (see [`crate::reload`]); 200
//!   with a short JSON when applied, 400 with the error when the new config
//!   is invalid (the old one stays in force), 409 when keygate has no
//!   config file or is not serving yet.
//!
//! Handlers only read [`ProxyState`] (reload swaps the service registry,
//! which clients pick up lock-free); they never touch the data path, so a
//! scrape cannot slow clients down beyond rendering the metrics.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;

use crate::reload::ReloadError;
use crate::server::ProxyState;

/// Content type of the Prometheus text exposition format 0.0.4.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `/metrics`, `/health/live`, `/health/ready` and `/health` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ProxyState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The admin routes over `state`.
fn router(state: Arc<ProxyState>) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/slowlog", get(slowlog))
        .route("/reload", post(reload))
        .with_state(state)
}

async fn live() -> &'static str {
    "ok"
}

async fn ready(State(state): State<Arc<ProxyState>>) -> (StatusCode, &'static str) {
    if state.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn health(State(state): State<Arc<ProxyState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.health_json().to_string(),
    )
}

async fn metrics(State(state): State<Arc<ProxyState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        state.render_metrics(),
    )
}

/// `GET /slowlog`: the slow log as JSON, newest first.
async fn slowlog(State(state): State<Arc<ProxyState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.slowlog_json().to_string(),
    )
}

/// `POST /reload`: re-reads the config file; the file read runs off the
/// admin runtime's only thread.
async fn reload(State(state): State<Arc<ProxyState>>) -> impl IntoResponse {
    let outcome = tokio::task::spawn_blocking(move || state.reload()).await;
    let (status, body) = match outcome {
        Ok(Ok(report)) => (StatusCode::OK, report.to_json()),
        Ok(Err(error)) => {
            let status = match error {
                ReloadError::Invalid { .. } => StatusCode::BAD_REQUEST,
                ReloadError::NoConfigFile | ReloadError::NotRunning => StatusCode::CONFLICT,
            };
            (
                status,
                serde_json::json!({"ok": false, "error": error.to_string()}),
            )
        }
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({"ok": false, "error": "reload task failed"}),
        ),
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}
