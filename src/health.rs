//! The proxy's readiness latch and start time.
//!
//! The server keeps the latch in step with the backend; the admin listener
//! (`/health/ready`, `keygate_ready`) and the client side (INFO's uptime)
//! read it. It sits below both, so the client side needs nothing of the
//! server's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Readiness and uptime, shared by the server, the admin listener and
/// every client task.
#[derive(Debug)]
pub struct Health {
    /// Flips true once a backend master is confirmed reachable.
    pub ready: AtomicBool,
    /// When the proxy started, for uptime.
    pub started: Instant,
}

impl Health {
    /// Not ready, started now.
    pub fn new() -> Health {
        Health {
            ready: AtomicBool::new(false),
            started: Instant::now(),
        }
    }

    /// Whether `/health/ready` is green.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}
