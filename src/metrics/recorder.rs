//! The per-connection [`Recorder`]: accumulates samples without touching
//! shared state, and hands them to the registry at most about once a second.
//!
//! Invariants: recording never locks, never waits and allocates only the
//! first time a (service, command, role) is seen since the last hand-over; a
//! hand-over moves the accumulated series out (so an idle connection keeps no
//! histograms), sends them down a channel that never blocks, and then merges
//! pending hand-overs only if the registry lock is free at that instant.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::histogram::{micros, record_n};
use super::registry::{Delta, Latency, RoleDelta, SeriesDelta};
use super::slowlog::SlowSample;
use super::{ErrorKind, Metrics, Role};

/// Shortest time between two hand-overs of one recorder.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// The latency of cluster node `node` among `nodes`, added if new (a
/// cluster has a few nodes: a short list).
fn node_latency(nodes: &mut Vec<(u16, Latency<u32>)>, node: u16) -> &mut Latency<u32> {
    let index = match nodes.iter().position(|(n, _)| *n == node) {
        Some(i) => i,
        None => {
            nodes.push((node, Latency::new()));
            nodes.len() - 1
        }
    };
    // In bounds: found by position or just pushed.
    &mut nodes[index].1
}

/// Records the backend time of `count` commands in `r`, under the cluster
/// node of label index `node` when known.
fn record_backend(r: &mut RoleDelta, node: Option<u16>, backend: Duration, count: u64) {
    let backend_us = micros(backend);
    let b = match node {
        None => r.backend.get_or_insert_with(Latency::new),
        Some(node) => node_latency(&mut r.nodes, node),
    };
    record_n(&mut b.histogram, backend_us, count);
    b.sum_micros = b
        .sum_micros
        .saturating_add(backend_us.saturating_mul(count));
}

/// Per-service counters that are not per command.
#[derive(Debug, Default, Clone, Copy)]
struct ServiceCounts {
    ttl_clamped: u64,
    ttl_refused: u64,
    isolation_refused: u64,
}

/// Records one client connection's samples without locks; deltas reach the
/// registry in [`Recorder::flush_if_due`] and on drop.
#[derive(Debug)]
pub struct Recorder {
    metrics: Arc<Metrics>,
    /// Copied from the registry so a disabled one costs one branch.
    enabled: bool,
    series: Vec<SeriesDelta>,
    /// Index into `series` of the last one used: consecutive commands are
    /// often the same.
    last: usize,
    slow: Vec<SlowSample>,
    /// Indexed by service label slot; allocated on first use.
    service_counts: Vec<ServiceCounts>,
    bytes_in: u64,
    bytes_out: u64,
    /// Something was recorded since the last hand-over.
    dirty: bool,
    last_flush: Instant,
}

impl Recorder {
    pub(super) fn new(metrics: Arc<Metrics>) -> Recorder {
        Recorder {
            enabled: metrics.enabled(),
            metrics,
            series: Vec::new(),
            last: 0,
            slow: Vec::new(),
            service_counts: Vec::new(),
            bytes_in: 0,
            bytes_out: 0,
            dirty: false,
            last_flush: Instant::now(),
        }
    }

    /// Whether samples are recorded (`[proxy] metrics`); callers skip work
    /// that only feeds metrics when this is false.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The accumulating series for (service, command), created if new.
    /// Inlined for the usual case, the same series as last time (a GET
    /// records its latency and then its cache outcome on one series).
    #[inline]
    fn series(&mut self, service: Option<usize>, command: &'static str) -> &mut SeriesDelta {
        let slot = self.metrics.slot(service);
        self.dirty = true;
        let last = self.last;
        if self
            .series
            .get(last)
            .is_some_and(|s| same_series(s, slot, command))
        {
            // In bounds: just looked at.
            return &mut self.series[last];
        }
        self.find_series(slot, command)
    }

    /// [`Self::series`] off its fast path: looked up, or created if new.
    #[inline(never)]
    fn find_series(&mut self, slot: usize, command: &'static str) -> &mut SeriesDelta {
        let index = match self
            .series
            .iter()
            .position(|s| same_series(s, slot, command))
        {
            Some(i) => i,
            None => {
                self.series.push(SeriesDelta {
                    service: slot,
                    command,
                    commands: 0,
                    hits: 0,
                    misses: 0,
                    errors: [0; ErrorKind::COUNT],
                    roles: Default::default(),
                });
                self.series.len() - 1
            }
        };
        self.last = index;
        // `index` is in bounds: found by position or just pushed.
        &mut self.series[index]
    }

    /// One completed command: `total` from reading the request to writing the
    /// reply, `backend` from writing it to a backend to the reply's arrival
    /// (`None` when no backend answered it).
    pub fn command(
        &mut self,
        service: Option<usize>,
        command: &'static str,
        role: Role,
        total: Duration,
        backend: Option<Duration>,
    ) {
        self.commands(service, command, role, total, backend, 1);
    }

    /// `count` completed commands that share one latency (pipelined together
    /// and answered together): one histogram update of weight `count`.
    pub fn commands(
        &mut self,
        service: Option<usize>,
        command: &'static str,
        role: Role,
        total: Duration,
        backend: Option<Duration>,
        count: u64,
    ) {
        self.commands_on(service, command, role, None, total, backend, count);
    }

    /// [`Self::commands`] answered by the cluster node of label index
    /// `node`, when known: the backend time is recorded under it.
    #[allow(clippy::too_many_arguments)]
    pub fn commands_on(
        &mut self,
        service: Option<usize>,
        command: &'static str,
        role: Role,
        node: Option<u16>,
        total: Duration,
        backend: Option<Duration>,
        count: u64,
    ) {
        if !self.enabled || count == 0 {
            return;
        }
        let total_us = micros(total);
        let series = self.series(service, command);
        series.commands += count;
        let Some(r) = series.roles.get_mut(role.index()) else {
            return;
        };
        let r = r.get_or_insert_with(|| Box::new(RoleDelta::default()));
        record_n(&mut r.total.histogram, total_us, count);
        r.total.sum_micros = r
            .total
            .sum_micros
            .saturating_add(total_us.saturating_mul(count));
        if let Some(backend) = backend {
            record_backend(r, node, backend, count);
        }
        if total_us >= self.metrics.slowlog_threshold_micros {
            self.slow_command(service, command, role, total_us);
        }
    }

    /// The backend time of `count` commands answered by the cluster node
    /// of label index `node` (when known), whose commands and total time
    /// [`Self::commands_on`] recorded without it.
    pub fn backend_on(
        &mut self,
        service: Option<usize>,
        command: &'static str,
        role: Role,
        node: Option<u16>,
        backend: Duration,
        count: u64,
    ) {
        if !self.enabled || count == 0 {
            return;
        }
        let series = self.series(service, command);
        if let Some(r) = series.roles.get_mut(role.index()) {
            let r = r.get_or_insert_with(|| Box::new(RoleDelta::default()));
            record_backend(r, node, backend, count);
        }
    }

    /// Keeps a slow command for the slow log (rare: off the fast path).
    #[cold]
    fn slow_command(&mut self, service: Option<usize>, command: &'static str, role: Role, us: u64) {
        let max = self.metrics.slowlog_max_len;
        if max == 0 {
            return;
        }
        if self.slow.len() >= max {
            self.slow.remove(0);
        }
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        self.slow.push(SlowSample {
            service: self.metrics.slot(service),
            command,
            role,
            micros: us,
            unix_ms,
        });
    }

    /// Cache hits and misses of a read command (MGET counts per key).
    pub fn cache(&mut self, service: Option<usize>, command: &'static str, hits: u32, misses: u32) {
        if !self.enabled {
            return;
        }
        let s = self.series(service, command);
        s.hits += u64::from(hits);
        s.misses += u64::from(misses);
    }

    /// A failed command.
    pub fn error(&mut self, service: Option<usize>, command: &'static str, kind: ErrorKind) {
        if !self.enabled {
            return;
        }
        if let Some(e) = self.series(service, command).errors.get_mut(kind.index()) {
            *e += 1;
        }
    }

    /// Bytes read from the client.
    pub fn bytes_in(&mut self, n: usize) {
        if !self.enabled {
            return;
        }
        self.bytes_in = self.bytes_in.saturating_add(n as u64);
        self.dirty = true;
    }

    /// Bytes written to the client.
    pub fn bytes_out(&mut self, n: usize) {
        if !self.enabled {
            return;
        }
        self.bytes_out = self.bytes_out.saturating_add(n as u64);
        self.dirty = true;
    }

    /// The per-service counters of `service`, allocated on first use.
    fn service_counts(&mut self, service: Option<usize>) -> Option<&mut ServiceCounts> {
        if !self.enabled {
            return None;
        }
        let slot = self.metrics.slot(service);
        if self.service_counts.is_empty() {
            self.service_counts = vec![ServiceCounts::default(); self.metrics.slots()];
        }
        self.dirty = true;
        self.service_counts.get_mut(slot)
    }

    /// A TTL above `max_ttl` was clamped.
    pub fn ttl_clamped(&mut self, service: Option<usize>) {
        if let Some(c) = self.service_counts(service) {
            c.ttl_clamped += 1;
        }
    }

    /// A TTL above `max_ttl` was refused.
    pub fn ttl_refused(&mut self, service: Option<usize>) {
        if let Some(c) = self.service_counts(service) {
            c.ttl_refused += 1;
        }
    }

    /// A command was refused because it cannot be confined to the namespace.
    pub fn isolation_refused(&mut self, service: Option<usize>) {
        if let Some(c) = self.service_counts(service) {
            c.isolation_refused += 1;
        }
    }

    /// Hands accumulated samples to the registry if the last hand-over is old
    /// enough (about a second). Costs one branch when nothing was recorded and
    /// a clock read otherwise. Call it after each batch of replies and from a
    /// periodic tick, so an idle connection's last samples are not held back:
    /// a scrape then sees samples at most about a second old.
    pub fn flush_if_due(&mut self) {
        if !self.dirty || !self.enabled {
            return;
        }
        let now = Instant::now();
        if now.saturating_duration_since(self.last_flush) >= FLUSH_INTERVAL {
            self.flush(now);
        }
    }

    /// When the samples held here are due to be handed over, if any are held:
    /// the client loop sleeps until then so an idle connection's last samples
    /// still reach a scrape.
    pub fn flush_due_at(&self) -> Option<Instant> {
        (self.dirty && self.enabled).then(|| self.last_flush + FLUSH_INTERVAL)
    }

    /// Hands everything over now.
    fn flush(&mut self, now: Instant) {
        self.dirty = false;
        self.last_flush = now;
        self.last = 0;
        let m = &self.metrics;
        if self.bytes_in > 0 {
            m.bytes_received.fetch_add(self.bytes_in, Ordering::Relaxed);
            self.bytes_in = 0;
        }
        if self.bytes_out > 0 {
            m.bytes_sent.fetch_add(self.bytes_out, Ordering::Relaxed);
            self.bytes_out = 0;
        }
        for (counts, shared) in self.service_counts.iter().zip(m.per_service.iter()) {
            shared
                .ttl_clamped
                .fetch_add(counts.ttl_clamped, Ordering::Relaxed);
            shared
                .ttl_refused
                .fetch_add(counts.ttl_refused, Ordering::Relaxed);
            shared
                .isolation_refused
                .fetch_add(counts.isolation_refused, Ordering::Relaxed);
        }
        // Dropped rather than zeroed: the next use allocates again.
        self.service_counts = Vec::new();
        if self.series.is_empty() && self.slow.is_empty() {
            return;
        }
        m.hand_over(Delta {
            at: now,
            series: std::mem::take(&mut self.series),
            slow: std::mem::take(&mut self.slow),
        });
    }
}

/// Whether `s` is the series of (`slot`, `command`). Names come from the
/// command table: the same command is almost always the same pointer, so
/// addresses are compared before bytes.
#[inline]
fn same_series(s: &SeriesDelta, slot: usize, command: &'static str) -> bool {
    s.service == slot && (std::ptr::eq(s.command, command) || s.command == command)
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.dirty && self.enabled {
            self.flush(Instant::now());
        }
    }
}
