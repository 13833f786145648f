//! The merged state behind a scrape: per (service, command) counters and
//! per role latency histograms, the recent window and the slow log.
//!
//! Invariants: only [`Registry::merge`] changes it, with deltas a
//! [`super::Recorder`] handed over; it lives behind the one mutex that the
//! hand-over (via `try_lock`, never waiting) and readers take. Services are
//! label slots: `0..n` the configured services in config order, `n` for
//! clients not logged in.

use std::collections::BTreeMap;
use std::time::Instant;

use hdrhistogram::Histogram;

use super::histogram::{add_widening, new_histogram};
use super::slowlog::{SlowLog, SlowSample};
use super::window::{Window, SLOT_SECONDS};
use super::{ErrorKind, Role};

/// A latency histogram with the exact sum beside it (HDR keeps no sum).
#[derive(Debug)]
pub struct Latency<T: hdrhistogram::Counter> {
    /// Samples in microseconds.
    pub histogram: Histogram<T>,
    /// Exact sum of the samples in microseconds, unclamped.
    pub sum_micros: u64,
}

impl<T: hdrhistogram::Counter> Latency<T> {
    /// No samples yet.
    pub fn new() -> Self {
        Latency {
            histogram: new_histogram(),
            sum_micros: 0,
        }
    }
}

impl<T: hdrhistogram::Counter> Default for Latency<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// What a recorder accumulated for one (service, command) since its last hand-over.
#[derive(Debug)]
pub struct SeriesDelta {
    /// Service label slot.
    pub service: usize,
    /// Command name from the command table.
    pub command: &'static str,
    /// Completed commands.
    pub commands: u64,
    /// Cache hits and misses.
    pub hits: u64,
    /// See `hits`.
    pub misses: u64,
    /// Errors by [`ErrorKind::index`].
    pub errors: [u64; ErrorKind::COUNT],
    /// Latency per [`Role::index`], allocated on first sample.
    pub roles: [Option<Box<RoleDelta>>; Role::COUNT],
}

/// One role's latency samples in a delta.
#[derive(Debug, Default)]
pub struct RoleDelta {
    /// Request read to reply written.
    pub total: Latency<u32>,
    /// Time waiting for Redis, for commands that went to Redis.
    pub backend: Option<Latency<u32>>,
    /// On a cluster backend the backend time goes here instead, by the
    /// node's label index (see [`super::Metrics::render_prometheus_with_nodes`]).
    pub nodes: Vec<(u16, Latency<u32>)>,
}

/// One hand-over from a recorder.
#[derive(Debug)]
pub struct Delta {
    /// When it was handed over; picks the window interval.
    pub at: Instant,
    /// Per-series samples.
    pub series: Vec<SeriesDelta>,
    /// Slow commands.
    pub slow: Vec<SlowSample>,
}

/// Merged counters of one (service, command).
#[derive(Debug, Default)]
pub struct Series {
    /// See [`SeriesDelta`].
    pub commands: u64,
    /// Cache hits.
    pub hits: u64,
    /// Cache misses.
    pub misses: u64,
    /// Errors by kind.
    pub errors: [u64; ErrorKind::COUNT],
    /// Latency per role, present once the role has a sample.
    pub roles: [Option<Box<RoleSeries>>; Role::COUNT],
}

/// Merged latency of one (service, command, role).
#[derive(Debug, Default)]
pub struct RoleSeries {
    /// Since start.
    pub total: Latency<u64>,
    /// Backend part since start.
    pub backend: Latency<u64>,
    /// Backend part since start by cluster node label index.
    pub nodes: BTreeMap<u16, Latency<u64>>,
    /// Recent samples of `total`.
    pub window: Window,
}

/// Everything merged so far.
#[derive(Debug)]
pub struct Registry {
    /// Keyed by (service slot, command), in label order for rendering.
    pub series: BTreeMap<(usize, &'static str), Series>,
    /// Slow commands.
    pub slowlog: SlowLog,
    started: Instant,
}

impl Registry {
    /// An empty registry; window intervals count from `started`.
    pub fn new(started: Instant, slowlog_max_len: usize) -> Registry {
        Registry {
            series: BTreeMap::new(),
            slowlog: SlowLog::new(slowlog_max_len),
            started,
        }
    }

    /// The window interval `at` falls in.
    pub fn interval(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_secs() / SLOT_SECONDS
    }

    /// Adds one recorder's hand-over.
    pub fn merge(&mut self, delta: Delta) {
        let interval = self.interval(delta.at);
        for d in delta.series {
            let s = self.series.entry((d.service, d.command)).or_default();
            s.commands += d.commands;
            s.hits += d.hits;
            s.misses += d.misses;
            for (sum, add) in s.errors.iter_mut().zip(d.errors) {
                *sum += add;
            }
            for (slot, role) in s.roles.iter_mut().zip(d.roles) {
                let Some(role) = role else { continue };
                let merged = slot.get_or_insert_with(Default::default);
                add_widening(&mut merged.total.histogram, &role.total.histogram);
                merged.total.sum_micros += role.total.sum_micros;
                merged.window.add(interval, &role.total.histogram);
                if let Some(b) = &role.backend {
                    add_widening(&mut merged.backend.histogram, &b.histogram);
                    merged.backend.sum_micros += b.sum_micros;
                }
                for (node, b) in &role.nodes {
                    let into = merged.nodes.entry(*node).or_default();
                    add_widening(&mut into.histogram, &b.histogram);
                    into.sum_micros += b.sum_micros;
                }
            }
        }
        for s in delta.slow {
            self.slowlog.push(s);
        }
    }
}
