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
//! [`NOT_LOGGED_IN`], commands are the command table's `&'static str` names,
//! a cluster backend's `node`s the nodes its topology has known (recorded
//! as a small index, named at scrape time).
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
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
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
    dedicated_refused: AtomicU64,
    dedicated_idle_closed: AtomicU64,
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

/// Metric slots kept for services a reload adds.
const SPARE_SLOTS: usize = 32;

/// The `reason` label values of `keygate_auth_failures_total`: a wrong
/// password, a bare AUTH with no password configured anywhere, a refused
/// token by why (`policy::token`), and `other`, last.
pub const AUTH_FAILURE_REASONS: [&str; 10] = [
    "wrong_password",
    "no_password_configured",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "wrong_issuer",
    "wrong_audience",
    "wrong_service",
    "malformed",
    "other",
];

/// The shared metrics registry.
#[derive(Debug)]
pub struct Metrics {
    enabled: bool,
    /// Label values by slot: the configured services', then
    /// [`SPARE_SLOTS`] claimed by services a reload adds, then
    /// [`NOT_LOGGED_IN`]. An unclaimed spare slot is empty and never shown.
    service_labels: Vec<OnceLock<String>>,
    per_service: Vec<ServiceCounters>,
    /// Failed logins, by [`AUTH_FAILURE_REASONS`].
    auth_failures: [AtomicU64; AUTH_FAILURE_REASONS.len()],
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
        let named = |label: String| OnceLock::from(label);
        let service_labels: Vec<OnceLock<String>> = services
            .into_iter()
            .map(named)
            .chain((0..SPARE_SLOTS).map(|_| OnceLock::new()))
            .chain(std::iter::once(named(NOT_LOGGED_IN.to_string())))
            .collect();
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
            auth_failures: Default::default(),
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
            .and_then(OnceLock::get)
            .map(String::as_str)
            .unwrap_or(NOT_LOGGED_IN)
    }

    /// Whether a slot has a label (an unclaimed spare slot has none and
    /// records nothing: it is left out of every exposition).
    fn is_labelled(&self, slot: usize) -> bool {
        self.service_labels
            .get(slot)
            .is_some_and(|label| label.get().is_some())
    }

    /// The slot of the service called `name`: its own since start, or one
    /// of the spare slots, claimed now for a service a reload added, so its
    /// metrics carry its name. `None` once every spare slot is taken (the
    /// service is then counted as not logged in, `-`, until a restart).
    pub fn slot_for(&self, name: &str) -> Option<usize> {
        let not_logged_in = self.service_labels.len() - 1;
        let labels = self.service_labels.get(..not_logged_in)?;
        if let Some(slot) = labels
            .iter()
            .position(|l| l.get().is_some_and(|l| l == name))
        {
            return Some(slot);
        }
        labels
            .iter()
            .position(|label| label.set(name.to_string()).is_ok())
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
        self.render_prometheus_with_nodes(extra, &[])
    }

    /// [`Self::render_prometheus`] on a cluster backend: backend times
    /// recorded by node carry the `node` label `nodes[index]` (host:port).
    pub fn render_prometheus_with_nodes(&self, extra: &[Gauge], nodes: &[String]) -> String {
        let c = self.collected();
        prometheus::render(self, &c.registry, extra, nodes)
    }

    /// A failed AUTH or HELLO AUTH, by its reason (one of
    /// [`AUTH_FAILURE_REASONS`]; anything else counts as `other`).
    pub fn auth_failure(&self, reason: &str) {
        if self.enabled {
            let at = AUTH_FAILURE_REASONS
                .iter()
                .position(|r| *r == reason)
                .unwrap_or(AUTH_FAILURE_REASONS.len() - 1);
            if let Some(counter) = self.auth_failures.get(at) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
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

    /// A dedicated connection was refused: the service holds its
    /// `max_dedicated` (`keygate_dedicated_refusals_total`).
    pub fn dedicated_refused(&self, service: Option<usize>) {
        if let Some(c) = self.per_service.get(self.slot(service)) {
            c.dedicated_refused.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A client holding a dedicated connection idle for
    /// `dedicated_idle_timeout` was closed (`keygate_dedicated_idle_closed_total`).
    pub fn dedicated_idle_closed(&self, service: Option<usize>) {
        if let Some(c) = self.per_service.get(self.slot(service)) {
            c.dedicated_idle_closed.fetch_add(1, Ordering::Relaxed);
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
        let mut out =
            String::from("service command role count p50_ms p90_ms p99_ms p999_ms max_ms\n");
        for ((slot, cmd), series) in &c.registry.series {
            let label = self.service_label(*slot);
            if service.is_some_and(|s| s != label)
                || command.is_some_and(|m| !m.eq_ignore_ascii_case(cmd))
            {
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
            let unused = !self.is_labelled(slot) || (slot == self.slots() - 1 && *ops == 0);
            if unused || service.is_some_and(|s| s != label) {
                continue;
            }
            let name: String = label
                .chars()
                .map(|ch| {
                    if ch.is_ascii_alphanumeric() || ch == '_' || ch == '-' {
                        ch
                    } else {
                        '_'
                    }
                })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Arc<Metrics> {
        Metrics::with_slowlog(
            vec!["cart".into(), "we\"ird\\na\nme".into()],
            true,
            SlowlogOptions {
                threshold: Duration::from_millis(10),
                max_len: 4,
            },
        )
    }

    /// The value of the sample line that starts with `prefix`.
    fn value(text: &str, prefix: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no line {prefix} in\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn recorder_deltas_merge_into_the_registry() {
        let m = metrics();
        let mut a = m.recorder();
        let mut b = m.recorder();
        for _ in 0..3 {
            a.command(
                Some(0),
                "get",
                Role::Master,
                Duration::from_micros(200),
                Some(Duration::from_micros(150)),
            );
        }
        b.command(
            Some(0),
            "get",
            Role::Master,
            Duration::from_micros(3_000),
            None,
        );
        b.command(
            Some(0),
            "get",
            Role::Replica,
            Duration::from_micros(400),
            Some(Duration::from_micros(300)),
        );
        b.command(None, "auth", Role::Proxy, Duration::from_micros(20), None);
        a.cache(Some(0), "get", 2, 1);
        b.cache(Some(0), "get", 0, 1);
        a.error(Some(0), "get", ErrorKind::Timeout);
        a.error(Some(7), "set", ErrorKind::Policy);
        a.bytes_in(100);
        b.bytes_out(50);
        a.ttl_clamped(Some(0));
        b.isolation_refused(Some(1));
        m.auth_failure("expired");
        m.client_connected(Some(0));
        m.client_connected(None);
        m.client_connected(Some(0));
        m.client_disconnected(Some(0));
        // Not due yet: nothing handed over.
        a.flush_if_due();
        let text = m.render_prometheus(&[]);
        assert!(!text.contains("command=\"get\""), "{text}");
        drop(a);
        drop(b);
        let text = m.render_prometheus(&[]);
        let get_master = r#"service="cart",command="get",role="master""#;
        assert_eq!(
            value(
                &text,
                &format!("keygate_command_duration_seconds_count{{{get_master}}}")
            ),
            4.0
        );
        let sum = value(
            &text,
            &format!("keygate_command_duration_seconds_sum{{{get_master}}}"),
        );
        assert!((sum - 0.0036).abs() < 1e-9, "{sum}");
        assert_eq!(
            value(
                &text,
                &format!("keygate_command_duration_seconds_bucket{{{get_master},le=\"0.00025\"}}")
            ),
            3.0
        );
        assert_eq!(
            value(
                &text,
                &format!("keygate_command_duration_seconds_bucket{{{get_master},le=\"0.005\"}}")
            ),
            4.0
        );
        assert_eq!(
            value(
                &text,
                &format!("keygate_backend_duration_seconds_count{{{get_master}}}")
            ),
            3.0
        );
        assert_eq!(
            value(
                &text,
                r#"keygate_commands_total{service="cart",command="get"}"#
            ),
            5.0
        );
        assert_eq!(
            value(
                &text,
                r#"keygate_commands_total{service="-",command="auth"}"#
            ),
            1.0
        );
        assert_eq!(
            value(
                &text,
                r#"keygate_cache_hits_total{service="cart",command="get"}"#
            ),
            2.0
        );
        assert_eq!(
            value(
                &text,
                r#"keygate_cache_misses_total{service="cart",command="get"}"#
            ),
            2.0
        );
        assert_eq!(
            value(
                &text,
                r#"keygate_command_errors_total{service="cart",command="get",kind="timeout"}"#
            ),
            1.0
        );
        assert_eq!(
            value(
                &text,
                r#"keygate_command_errors_total{service="-",command="set",kind="policy"}"#
            ),
            1.0
        );
        assert_eq!(value(&text, "keygate_client_bytes_received_total"), 100.0);
        assert_eq!(value(&text, "keygate_client_bytes_sent_total"), 50.0);
        assert_eq!(
            value(&text, r#"keygate_ttl_clamped_total{service="cart"}"#),
            1.0
        );
        assert_eq!(
            value(
                &text,
                r#"keygate_isolation_refusals_total{service="we\"ird\\na\nme"}"#
            ),
            1.0
        );
        assert_eq!(
            value(&text, r#"keygate_auth_failures_total{reason="expired"}"#),
            1.0
        );
        assert_eq!(
            value(&text, r#"keygate_client_connections{service="cart"}"#),
            1.0
        );
        assert_eq!(
            value(&text, r#"keygate_client_connections{service="-"}"#),
            1.0
        );
        let max = value(
            &text,
            &format!("keygate_command_duration_window_seconds{{{get_master},quantile=\"1\"}}"),
        );
        assert!((max - 0.003).abs() < 0.00003, "max within 1%: {max}");
        let p50 = value(
            &text,
            &format!("keygate_command_duration_window_seconds{{{get_master},quantile=\"0.5\"}}"),
        );
        assert_eq!(p50, 0.0002);
        let info = m.info_section(Some("cart"));
        assert!(
            info.contains("service_cart:ops=5,hits=2,misses=2,hit_ratio=0.5000\r\n"),
            "{info}"
        );
        let table = m.latency_table(Some("cart"), Some("GET"));
        assert_eq!(table.lines().count(), 3, "{table}");
        assert!(table.contains("cart get master 4 0.200 3.0"), "{table}");
        assert!(table.contains("cart get replica 1 0.40"), "{table}");
    }

    /// A service added by reload gets a label slot of its own, the same one
    /// on every later reload; unclaimed slots never show, and once every
    /// spare slot is taken a new service counts as not logged in.
    #[test]
    fn reloaded_services_claim_spare_label_slots() {
        let m = Metrics::new(vec!["cart".into()], true);
        assert_eq!(m.slot_for("cart"), Some(0));
        let added = m.slot_for("billing");
        assert_eq!(added, Some(1));
        assert_eq!(
            m.slot_for("billing"),
            added,
            "the same slot on the next reload"
        );
        m.client_connected(added);
        m.client_connected(Some(0));
        let text = m.render_prometheus(&[]);
        assert_eq!(
            value(&text, r#"keygate_client_connections{service="billing"}"#),
            1.0
        );
        let not_logged_in = r#"keygate_client_connections{service="-"}"#;
        assert_eq!(text.matches(not_logged_in).count(), 1, "{text}");
        for i in 1..SPARE_SLOTS {
            assert!(m.slot_for(&format!("s{i}")).is_some(), "spare slot {i}");
        }
        assert_eq!(m.slot_for("one-too-many"), None);
        assert_eq!(m.slot(None), m.slots() - 1);
    }

    #[test]
    fn disabled_records_nothing() {
        let m = Metrics::new(vec!["cart".into()], false);
        let mut r = m.recorder();
        r.command(
            Some(0),
            "get",
            Role::Master,
            Duration::from_millis(50),
            None,
        );
        drop(r);
        let text = m.render_prometheus(&[]);
        assert!(!text.contains("command=\"get\""));
        assert!(m.slowlog().is_empty());
    }

    #[test]
    fn histograms_are_cumulative_and_end_in_count() {
        let m = metrics();
        let mut r = m.recorder();
        for us in [1u64, 90, 100, 260, 7_000, 40_000, 2_000_000, 70_000_000] {
            r.command(
                Some(0),
                "blpop",
                Role::Master,
                Duration::from_micros(us),
                None,
            );
        }
        drop(r);
        let text = m.render_prometheus(&[]);
        let buckets: Vec<f64> = text
            .lines()
            .filter(|l| {
                l.starts_with("keygate_command_duration_seconds_bucket{") && l.contains("blpop")
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(buckets.len(), histogram::BUCKET_BOUNDS.len() + 1);
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
        assert_eq!(buckets[0], 3.0);
        let count = value(
            &text,
            r#"keygate_command_duration_seconds_count{service="cart",command="blpop",role="master"}"#,
        );
        assert_eq!(*buckets.last().unwrap(), count);
        assert_eq!(count, 8.0);
        assert_eq!(
            buckets[buckets.len() - 2],
            8.0,
            "70 s is clamped into the 60 s bucket"
        );
        let sum = value(
            &text,
            r#"keygate_command_duration_seconds_sum{service="cart",command="blpop",role="master"}"#,
        );
        assert!(
            (sum - 72.047451).abs() < 1e-6,
            "exact, unclamped sum: {sum}"
        );
    }

    #[test]
    fn slowlog_is_bounded_and_holds_no_arguments() {
        let m = metrics();
        let mut r = m.recorder();
        r.command(Some(0), "get", Role::Master, Duration::from_millis(9), None);
        for i in 0..6 {
            r.command(
                Some(0),
                "set",
                Role::Master,
                Duration::from_millis(10 + i),
                None,
            );
        }
        drop(r);
        let log = m.slowlog();
        assert_eq!(log.len(), 4);
        assert_eq!(log[0].duration_us, 15_000);
        assert!(log
            .iter()
            .all(|e| e.command == "set" && e.service == "cart"));
        let json = m.slowlog_json().to_string();
        // Only these fields exist: no argument can appear.
        let entry = &m.slowlog_json()["entries"][0];
        let mut keys: Vec<&String> = entry.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "command",
                "duration_us",
                "id",
                "role",
                "service",
                "timestamp_ms"
            ]
        );
        assert!(json.contains("\"threshold_us\":10000"), "{json}");
    }

    #[test]
    fn full_output_parses_with_a_prometheus_parser() {
        let m = metrics();
        let mut r = m.recorder();
        r.command(
            Some(1),
            "config|get",
            Role::Proxy,
            Duration::from_micros(80),
            None,
        );
        r.command(
            Some(0),
            "mget",
            Role::Replica,
            Duration::from_micros(900),
            Some(Duration::from_micros(700)),
        );
        r.cache(Some(0), "mget", 3, 1);
        r.error(Some(0), "mget", ErrorKind::Backend);
        drop(r);
        let extra = [
            Gauge {
                name: "keygate_backend_connections",
                help: "Open connections to a backend node.",
                labels: vec![("node", "127.0.0.1:7000".into()), ("role", "master".into())],
                value: 2.0,
            },
            Gauge {
                name: "keygate_ready",
                help: "Ready.",
                labels: Vec::new(),
                value: 1.0,
            },
            Gauge {
                name: "keygate_backend_connections",
                help: "Open connections to a backend node.",
                labels: vec![
                    ("node", "127.0.0.1:7001".into()),
                    ("role", "replica".into()),
                ],
                value: 1.0,
            },
        ];
        let text = m.render_prometheus(&extra);
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
        let find = |name: &'static str| scrape.samples.iter().filter(move |s| s.metric == name);
        assert_eq!(find("keygate_backend_connections").count(), 2);
        let hist = find("keygate_command_duration_seconds")
            .find(|s| s.labels.get("command") == Some("config|get"))
            .expect("histogram sample");
        // prometheus-parse keeps label values as written (escaped).
        assert_eq!(hist.labels.get("service"), Some(r#"we\"ird\\na\nme"#));
        match &hist.value {
            prometheus_parse::Value::Histogram(buckets) => {
                assert_eq!(buckets.len(), histogram::BUCKET_BOUNDS.len() + 1);
                assert!(buckets.iter().all(|b| b.count == 1.0));
            }
            other => panic!("not a histogram: {other:?}"),
        }
        assert_eq!(
            find("keygate_cache_hits_total")
                .next()
                .map(|s| s.labels.get("command")),
            Some(Some("mget"))
        );
        assert!(find("keygate_uptime_seconds").next().is_some());
        assert_eq!(find("keygate_command_duration_window_seconds").count(), 10);
        // Every family announced once.
        for family in [
            "keygate_command_duration_seconds",
            "keygate_backend_connections",
            "keygate_ready",
        ] {
            let types = text
                .lines()
                .filter(|l| l.starts_with(&format!("# TYPE {family} ")))
                .count();
            assert_eq!(types, 1, "{family}");
        }
        if std::env::var_os("KEYGATE_DUMP_METRICS").is_some() {
            std::fs::write("/tmp/keygate-metrics.txt", &text).unwrap();
        }
    }

    /// Cost of `Recorder::command` (printed, not asserted).
    #[test]
    fn recorder_command_cost() {
        let m = metrics();
        let mut r = m.recorder();
        let n = 1_000_000u32;
        let commands = ["get", "set", "mget", "hget"];
        let start = Instant::now();
        for i in 0..n {
            let cmd = commands[(i % 4) as usize];
            r.command(
                Some(0),
                cmd,
                Role::Master,
                Duration::from_micros(u64::from(i % 5000)),
                Some(Duration::from_micros(90)),
            );
            if i % 1024 == 0 {
                r.flush_if_due();
            }
        }
        let elapsed = start.elapsed();
        println!(
            "Recorder::command: {:.1} ns per call (debug/test profile unless --release)",
            elapsed.as_nanos() as f64 / f64::from(n)
        );
        let idle = m.recorder();
        println!(
            "idle Recorder: {} bytes inline, no heap",
            std::mem::size_of_val(&idle)
        );
        assert!(std::mem::size_of_val(&idle) < 1024);
        println!(
            "per (service, command, role) while active: {} bytes of u32 counts",
            histogram::new_histogram::<u32>().distinct_values() * 4
        );
    }

    #[test]
    fn shareable_across_tasks() {
        fn send<T: Send>() {}
        fn send_sync<T: Send + Sync>() {}
        send::<Recorder>();
        send_sync::<Metrics>();
    }
}
