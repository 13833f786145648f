//! Metrics: per-service, per-command latency histograms, cache hits and
//! misses, errors, connections, bytes, TTL and isolation decisions, a recent
//! latency window and a slow log.
//!
//! The data path never takes a lock a scrape holds: each client connection
//! records into its own [`Recorder`] (lazily allocated HDR histograms per
//! (service, command, role)) and hands its deltas over at most about once a
//! second and on drop, through a channel whose send never blocks. Pending
//! hand-overs are merged into the [`registry`] by whoever next finds its
//! mutex free: a recorder that just handed over (`try_lock`, never waiting)
//! or a reader (scrape, `KEYGATE LATENCY`, INFO, slow log), which waits.
//! So what a reader sees is at most about a second old, provided the client
//! loop calls [`Recorder::flush_if_due`] after its work and on a periodic tick.
//!
//! Label values are bounded: services are the configured ones plus
//! [`NOT_LOGGED_IN`], commands are the command table's `&'static str` names.
//!
//! Cache hits and misses: see [`cache`] for which commands count and how.
//! Histogram buckets: see [`histogram::BUCKET_BOUNDS`] (100 µs to 60 s).
//! The window: see [`window`] (the last 50 to 60 seconds).

pub mod cache;
pub mod histogram;
pub mod prometheus;
mod recorder;
pub mod registry;
pub mod slowlog;
pub mod window;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use cache::cache_outcome;
pub use prometheus::Gauge;
pub use recorder::{Recorder, FLUSH_INTERVAL};
pub use slowlog::SlowlogEntry;

use histogram::quantile_seconds;
use registry::{Delta, Registry};

/// The `service` label value of clients that have not logged in.
pub const NOT_LOGGED_IN: &str = "-";

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

impl Role {
    /// How many roles there are.
    pub const COUNT: usize = 3;
    /// Every role, in [`Role::index`] order.
    pub const ALL: [Role; Role::COUNT] = [Role::Master, Role::Replica, Role::Proxy];

    /// Position in per-role arrays.
    pub const fn index(self) -> usize {
        match self {
            Role::Master => 0,
            Role::Replica => 1,
            Role::Proxy => 2,
        }
    }

    /// The `role` label value.
    pub const fn label(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Replica => "replica",
            Role::Proxy => "proxy",
        }
    }
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

impl ErrorKind {
    /// How many kinds there are.
    pub const COUNT: usize = 4;
    /// Every kind, in [`ErrorKind::index`] order.
    pub const ALL: [ErrorKind; ErrorKind::COUNT] = [
        ErrorKind::Client,
        ErrorKind::Policy,
        ErrorKind::Backend,
        ErrorKind::Timeout,
    ];

    /// Position in per-kind arrays.
    pub const fn index(self) -> usize {
        match self {
            ErrorKind::Client => 0,
            ErrorKind::Policy => 1,
            ErrorKind::Backend => 2,
            ErrorKind::Timeout => 3,
        }
    }

    /// The `kind` label value.
    pub const fn label(self) -> &'static str {
        match self {
            ErrorKind::Client => "client",
            ErrorKind::Policy => "policy",
            ErrorKind::Backend => "backend",
            ErrorKind::Timeout => "timeout",
        }
    }
}

/// Slow log settings (`[proxy] slowlog_threshold`, `slowlog_max_len`).
#[derive(Debug, Clone, Copy)]
pub struct SlowlogOptions {
    /// Commands at least this slow are logged.
    pub threshold: Duration,
    /// Most entries kept; 0 turns the slow log off.
    pub max_len: usize,
}

impl Default for SlowlogOptions {
    fn default() -> Self {
        SlowlogOptions {
            threshold: Duration::from_millis(10),
            max_len: 128,
        }
    }
}

/// Per-service counters updated with atomics at hand-over.
#[derive(Debug, Default)]
struct ServiceCounters {
    connections: AtomicI64,
    ttl_clamped: AtomicU64,
    ttl_refused: AtomicU64,
    isolation_refused: AtomicU64,
}

/// The registry and the receiving end of hand-overs, behind one mutex.
#[derive(Debug)]
struct Collector {
    registry: Registry,
    pending: Receiver<Delta>,
}

impl Collector {
    /// Merges every pending hand-over.
    fn drain(&mut self) {
        while let Ok(delta) = self.pending.try_recv() {
            self.registry.merge(delta);
        }
    }
}

/// The shared metrics registry.
#[derive(Debug)]
pub struct Metrics {
    enabled: bool,
    /// Label values by slot; the last is [`NOT_LOGGED_IN`].
    service_labels: Vec<String>,
    per_service: Vec<ServiceCounters>,
    auth_failures: AtomicU64,
    config_reload_failures: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    slowlog_threshold_micros: u64,
    slowlog_max_len: usize,
    started: Instant,
    hand_overs: Sender<Delta>,
    collector: Mutex<Collector>,
}

impl Metrics {
    /// A registry for the configured services; `enabled = false` records nothing.
    pub fn new(services: Vec<String>, enabled: bool) -> Arc<Metrics> {
        Metrics::with_slowlog(services, enabled, SlowlogOptions::default())
    }

    /// A registry for `[proxy]`'s `metrics` and slow log settings and the configured services.
    pub fn from_config(config: &crate::config::Config) -> Arc<Metrics> {
        Metrics::with_slowlog(
            config.services.iter().map(|s| s.name.clone()).collect(),
            config.proxy.metrics,
            SlowlogOptions {
                threshold: config.proxy.slowlog_threshold,
                max_len: config.proxy.slowlog_max_len,
            },
        )
    }

    /// A registry with explicit slow log settings.
    pub fn with_slowlog(
        services: Vec<String>,
        enabled: bool,
        slowlog: SlowlogOptions,
    ) -> Arc<Metrics> {
        let mut service_labels = services;
        service_labels.push(NOT_LOGGED_IN.to_string());
        let per_service = service_labels
            .iter()
            .map(|_| ServiceCounters::default())
            .collect();
        let started = Instant::now();
        let (hand_overs, pending) = channel();
        Arc::new(Metrics {
            enabled,
            service_labels,
            per_service,
            auth_failures: AtomicU64::new(0),
            config_reload_failures: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            slowlog_threshold_micros: histogram::micros(slowlog.threshold),
            slowlog_max_len: slowlog.max_len,
            started,
            hand_overs,
            collector: Mutex::new(Collector {
                registry: Registry::new(started, slowlog.max_len),
                pending,
            }),
        })
    }

    /// Whether metrics are recorded at all (`[proxy] metrics`).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// A per-connection recorder.
    pub fn recorder(self: &Arc<Self>) -> Recorder {
        Recorder::new(self.clone())
    }

    /// The label slot of a service index; unknown indexes and `None` are "not logged in".
    fn slot(&self, service: Option<usize>) -> usize {
        let not_logged_in = self.service_labels.len() - 1;
        match service {
            Some(i) if i < not_logged_in => i,
            _ => not_logged_in,
        }
    }

    /// How many service label slots there are.
    fn slots(&self) -> usize {
        self.service_labels.len()
    }

    /// The `service` label value of a slot.
    fn service_label(&self, slot: usize) -> &str {
        self.service_labels
            .get(slot)
            .map(String::as_str)
            .unwrap_or(NOT_LOGGED_IN)
    }

    /// Queues a recorder's delta and merges pending ones if nobody holds the registry.
    fn hand_over(&self, delta: Delta) {
        // The receiver lives as long as `self`: sending cannot fail.
        let _ = self.hand_overs.send(delta);
        if let Ok(mut c) = self.collector.try_lock() {
            c.drain();
        }
    }

    /// The registry with every pending hand-over merged (readers only: waits).
    fn collected(&self) -> MutexGuard<'_, Collector> {
        let mut c = self
            .collector
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        c.drain();
        c
    }

    /// The Prometheus text exposition, with `extra` gauges the server knows
    /// (backend connections, pending requests) appended.
    pub fn render_prometheus(&self, extra: &[Gauge]) -> String {
        let c = self.collected();
        prometheus::render(self, &c.registry, extra)
    }

    /// A failed AUTH or HELLO AUTH.
    pub fn auth_failure(&self) {
        if self.enabled {
            self.auth_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A configuration reload failed (`keygate_config_reload_failures_total`).
    pub fn config_reload_failure(&self) {
        self.config_reload_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A client connection is now counted under `service` (`None`: not logged in).
    pub fn client_connected(&self, service: Option<usize>) {
        if let Some(c) = self.per_service.get(self.slot(service)) {
            c.connections.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A client connection is no longer counted under `service`.
    pub fn client_disconnected(&self, service: Option<usize>) {
        if let Some(c) = self.per_service.get(self.slot(service)) {
            c.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The slow log, newest first.
    pub fn slowlog(&self) -> Vec<SlowlogEntry> {
        let c = self.collected();
        c.registry.slowlog.entries(|slot| self.service_label(slot))
    }

    /// The slow log as JSON for `GET /slowlog`.
    pub fn slowlog_json(&self) -> serde_json::Value {
        serde_json::json!({
            "threshold_us": self.slowlog_threshold_micros,
            "max_len": self.slowlog_max_len,
            "entries": self.slowlog(),
        })
    }

    /// The window interval now falls in.
    fn current_interval(&self, registry: &Registry) -> u64 {
        registry.interval(Instant::now())
    }

    /// The `KEYGATE LATENCY [service] [command]` table: one line per
    /// (service, command, role) with samples in the recent window: count,
    /// p50, p90, p99, p99.9 and max in milliseconds. Filters match exactly
    /// (the command case-insensitively).
    pub fn latency_table(&self, service: Option<&str>, command: Option<&str>) -> String {
        let c = self.collected();
        let now = self.current_interval(&c.registry);
        let mut out = String::from("service command role count p50_ms p90_ms p99_ms p999_ms max_ms\n");
        for ((slot, cmd), series) in &c.registry.series {
            let label = self.service_label(*slot);
            if service.is_some_and(|s| s != label) || command.is_some_and(|m| !m.eq_ignore_ascii_case(cmd)) {
                continue;
            }
            for role in Role::ALL {
                let Some(Some(r)) = series.roles.get(role.index()) else {
                    continue;
                };
                let Some(h) = r.window.merged(now) else {
                    continue;
                };
                let ms = |q: f64| quantile_seconds(&h, q) * 1e3;
                let _ = writeln!(
                    out,
                    "{label} {cmd} {} {} {:.3} {:.3} {:.3} {:.3} {:.3}",
                    role.label(),
                    h.len(),
                    ms(0.5),
                    ms(0.9),
                    ms(0.99),
                    ms(0.999),
                    ms(1.0),
                );
            }
        }
        out
    }

    /// Lines for INFO's `# Proxy` section (each ending in CRLF): uptime, then
    /// per service (all, or only `service`) its commands, cache hits, misses
    /// and hit ratio since start, e.g.
    /// `service_cart:ops=10,hits=6,misses=2,hit_ratio=0.7500`.
    pub fn info_section(&self, service: Option<&str>) -> String {
        let c = self.collected();
        let mut per_slot = vec![(0u64, 0u64, 0u64); self.slots()];
        for ((slot, _), s) in &c.registry.series {
            if let Some(t) = per_slot.get_mut(*slot) {
                t.0 += s.commands;
                t.1 += s.hits;
                t.2 += s.misses;
            }
        }
        let mut out = String::new();
        let _ = write!(
            out,
            "keygate_uptime_in_seconds:{}\r\n",
            self.started.elapsed().as_secs()
        );
        for (slot, (ops, hits, misses)) in per_slot.iter().enumerate() {
            let label = self.service_label(slot);
            if service.is_some_and(|s| s != label) || (slot == self.slots() - 1 && *ops == 0) {
                continue;
            }
            let name: String = label
                .chars()
                .map(|ch| if ch.is_ascii_alphanumeric() || ch == '_' || ch == '-' { ch } else { '_' })
                .collect();
            let ratio = if hits + misses > 0 {
                *hits as f64 / (hits + misses) as f64
            } else {
                0.0
            };
            let _ = write!(
                out,
                "service_{name}:ops={ops},hits={hits},misses={misses},hit_ratio={ratio:.4}\r\n"
            );
        }
        out
    }
}
