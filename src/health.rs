//! The proxy's readiness latch and start time.
//!
//! The composition root ([`crate::proxy`]) keeps the latch in step with the
//! backend; the admin listener (`/health/ready`, `keygate_ready`) and the
//! client side (INFO's uptime) read it. It sits below both, so neither
//! needs anything of the other's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Readiness and uptime, shared by the admin listener and every client task.
#[derive(Debug)]
pub struct Health {
    /// Flips true once a backend master is confirmed reachable.
    pub ready: AtomicBool,
    /// When the proxy started, for uptime.
    pub started: Instant,
}

impl Health {
    /// Not ready, started now.
    pub(crate) fn new() -> Health {
        Health {
            ready: AtomicBool::new(false),
            started: Instant::now(),
        }
    }

    /// Whether `/health/ready` is green.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}
