//! The topology monitor: one task that asks the Sentinels, confirms roles
//! with the nodes themselves, follows Sentinel events and publishes
//! [`Snapshot`]s.
//!
//! Re-resolution happens at start, on every Sentinel event, when the
//! master's connections fail or it answers `-READONLY`, every
//! [`POLL_INTERVAL`], and every [`RETRY_INTERVAL`] while no master is
//! confirmed. Invariants:
//! - the master is withdrawn (published as `None`, node marked demoted)
//!   before a different node is published as master;
//! - a master withdrawn by `+switch-master` is not confirmed again for
//!   [`FENCE_FOR`], so a stale Sentinel cannot send writes back to it;
//! - the failover hold lasts at most `failover_wait`;
//! - with every Sentinel unreachable the last confirmed topology keeps
//!   serving (roles are still checked with `ROLE`), and readiness goes red.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::probe::{self, MasterReport};
use super::sentinel::{self, Event, EventKind, SentinelView};
use super::{FailoverRecord, ReplicaState, Snapshot, Topology};
use crate::backend::connect::ConnectOptions;
use crate::backend::node::Node;

/// How often the topology is re-resolved without any event.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// How often it is re-resolved while no master is confirmed.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(250);
/// How long a master withdrawn by `+switch-master` stays fenced.
pub const FENCE_FOR: Duration = Duration::from_secs(15);

/// What the monitor needs to know.
#[derive(Debug, Clone)]
pub struct MonitorSettings {
    /// The name the Sentinels monitor the master under.
    pub master_name: String,
    /// One entry per Sentinel, with the Sentinel credentials.
    pub sentinels: Vec<ConnectOptions>,
    /// Bounds every Sentinel query and node probe.
    pub timeout: Duration,
    /// Longest a write is held during a failover.
    pub failover_wait: Duration,
    /// Hold requests for the master while a failover runs.
    pub hold: bool,
    /// Replicas further behind are not read from.
    pub max_replica_lag: Duration,
}

/// Starts the monitor task; it stops when the runtime does.
pub fn spawn(topology: Arc<Topology>, settings: MonitorSettings) {
    let (events_tx, events_rx) = mpsc::channel(256);
    for opts in &settings.sentinels {
        tokio::spawn(sentinel::follow(
            opts.clone(),
            settings.master_name.clone(),
            settings.timeout,
            events_tx.clone(),
        ));
    }
    let monitor = Monitor {
        topology,
        settings,
        master: None,
        master_report: None,
        last_master_addr: None,
        hold: None,
        episode_start: None,
        fenced: None,
        switch_target: None,
        known_replicas: Vec::new(),
        replica_states: Vec::new(),
        replicas: Vec::new(),
        sentinels_reached: 0,
        last_failover: None,
        readonly_seen: 0,
    };
    tokio::spawn(monitor.run(events_rx));
}

/// A running write hold.
#[derive(Debug, Clone)]
struct Hold {
    since: Instant,
    /// The master when the hold began; a different confirmed master ends it.
    master_addr: Option<String>,
}

/// The monitor's private, mutable view; published as snapshots.
struct Monitor {
    topology: Arc<Topology>,
    settings: MonitorSettings,
    master: Option<Arc<Node>>,
    master_report: Option<MasterReport>,
    /// The last master ever confirmed (for failover records).
    last_master_addr: Option<String>,
    hold: Option<Hold>,
    /// When the current loss of master or failover began.
    episode_start: Option<Instant>,
    fenced: Option<(String, Instant)>,
    /// The address `+switch-master` announced, tried first.
    switch_target: Option<String>,
    /// Replica addresses and whether a Sentinel flags them down.
    known_replicas: Vec<(String, bool)>,
    replica_states: Vec<ReplicaState>,
    replicas: Vec<Arc<Node>>,
    sentinels_reached: usize,
    last_failover: Option<FailoverRecord>,
    /// `-READONLY` replies of the current master already acted on.
    readonly_seen: u64,
}

impl Monitor {
    async fn run(mut self, mut events: mpsc::Receiver<Event>) {
        self.refresh().await;
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let master = self.master.clone();
            let trouble = async {
                match &master {
                    Some(m) => m.health().trouble().await,
                    None => std::future::pending().await,
                }
            };
            let hold_ends = self
                .hold
                .as_ref()
                .map(|h| h.since + self.settings.failover_wait);
            let retry_at = self
                .master
                .is_none()
                .then(|| Instant::now() + RETRY_INTERVAL);
            tokio::select! {
                event = events.recv() => {
                    let Some(event) = event else { return };
                    self.on_event(event);
                    // Three Sentinels send the same event: take them all, resolve once.
                    while let Ok(more) = events.try_recv() {
                        self.on_event(more);
                    }
                    self.refresh().await;
                }
                _ = poll.tick() => self.refresh().await,
                _ = trouble => {
                    // `-READONLY` proves the node is no longer master: stop
                    // at once, before asking anyone.
                    let readonly = master.as_ref().map_or(0, |m| m.health().readonly_replies());
                    if readonly > self.readonly_seen {
                        self.readonly_seen = readonly;
                        self.withdraw_master();
                        self.publish();
                    }
                    self.refresh().await
                }
                _ = sleep_until(hold_ends) => {
                    tracing::warn!(master = %self.settings.master_name, "failover hold reached failover_wait; releasing");
                    self.hold = None;
                    self.refresh().await;
                }
                _ = sleep_until(retry_at) => self.refresh().await,
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        tracing::info!(sentinel = %event.sentinel, kind = ?event.kind, "sentinel event");
        match event.kind {
            EventKind::FailoverStart => {
                let now = Instant::now();
                self.episode_start.get_or_insert(now);
                if self.settings.hold && self.hold.is_none() {
                    self.hold = Some(Hold {
                        since: now,
                        master_addr: self.master.as_ref().map(|m| m.addr().to_string()),
                    });
                    self.publish();
                }
            }
            EventKind::FailoverAbort => {
                self.episode_start = None;
                if self.hold.take().is_some() {
                    self.publish();
                }
            }
            EventKind::SwitchMaster { new } => {
                let current = self.master.as_ref().map(|m| m.addr().to_string());
                if current.as_deref() != Some(new.as_str()) {
                    if let Some(old) = current {
                        self.fenced = Some((old, Instant::now()));
                    }
                    self.withdraw_master();
                    self.publish();
                }
                self.switch_target = Some(new);
            }
            EventKind::ReplicaDown { addr } => {
                self.replicas.retain(|n| n.addr() != addr);
                for r in &mut self.replica_states {
                    if r.addr == addr {
                        r.state = "down".into();
                    }
                }
                self.publish();
            }
            EventKind::Changed => {}
        }
    }

    /// Stops sending anything to the current master.
    fn withdraw_master(&mut self) {
        if let Some(old) = self.master.take() {
            tracing::warn!(master = %old.addr(), "master withdrawn");
            old.health().mark_demoted();
            self.master_report = None;
            self.episode_start.get_or_insert_with(Instant::now);
        }
    }

    fn is_fenced(&self, addr: &str) -> bool {
        self.fenced
            .as_ref()
            .is_some_and(|(a, at)| a == addr && at.elapsed() < FENCE_FOR)
    }

    /// Asks the Sentinels, confirms the master, probes replicas, publishes.
    async fn refresh(&mut self) {
        let views = self.ask_sentinels().await;
        self.sentinels_reached = views.len();
        let mut candidates: Vec<String> = Vec::new();
        if let Some(t) = self.switch_target.take() {
            candidates.push(t);
        }
        if views.is_empty() {
            // No Sentinel: keep to what was last confirmed.
            candidates.extend(self.master.as_ref().map(|m| m.addr().to_string()));
            candidates.extend(self.last_master_addr.clone());
        } else {
            let mut votes: HashMap<&str, usize> = HashMap::new();
            for v in &views {
                if let Some(m) = &v.master {
                    *votes.entry(m.as_str()).or_default() += 1;
                }
            }
            let mut ranked: Vec<(&str, usize)> = votes.into_iter().collect();
            ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            candidates.extend(ranked.into_iter().map(|(a, _)| a.to_string()));
            let mut listed: Vec<(String, bool)> = Vec::new();
            for r in views.iter().flat_map(|v| &v.replicas) {
                match listed.iter_mut().find(|(a, _)| *a == r.addr) {
                    Some(entry) => entry.1 |= r.down,
                    None => listed.push((r.addr.clone(), r.down)),
                }
            }
            self.known_replicas = listed;
        }
        candidates.dedup();
        let fenced: Vec<bool> = candidates.iter().map(|c| self.is_fenced(c)).collect();
        let mut confirmed = None;
        for (addr, fenced) in candidates.iter().zip(fenced) {
            if fenced {
                continue;
            }
            let opts = self.topology.probe_options(addr);
            match probe::probe_master(&opts, self.settings.timeout).await {
                Ok(Some(report)) => {
                    confirmed = Some((addr.clone(), report));
                    break;
                }
                Ok(None) => tracing::debug!(node = %addr, "not a master"),
                Err(e) => tracing::debug!(node = %addr, error = %e, "master probe failed"),
            }
        }
        match confirmed {
            Some((addr, report)) => self.confirm_master(&addr, report),
            None => self.withdraw_master(),
        }
        self.probe_replicas().await;
        if let (Some(hold), Some(m)) = (&self.hold, &self.master) {
            if hold.master_addr.as_deref() != Some(m.addr()) {
                self.hold = None;
            }
        }
        self.publish();
    }

    fn confirm_master(&mut self, addr: &str, report: MasterReport) {
        let same = self.master.as_ref().is_some_and(|m| m.addr() == addr);
        if !same {
            self.withdraw_master();
            let node = self.topology.node(addr);
            let previous = self.last_master_addr.clone();
            if previous.as_deref().is_some_and(|p| p != addr) {
                let took = self.episode_start.map(|s| s.elapsed()).unwrap_or_default();
                self.topology.count_failover();
                self.last_failover = Some(FailoverRecord {
                    from: previous,
                    to: addr.to_string(),
                    at_unix: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0),
                    took_ms: took.as_millis() as u64,
                });
                tracing::warn!(master = %addr, took_ms = took.as_millis() as u64, "new master confirmed");
            } else {
                tracing::info!(master = %addr, "master confirmed");
            }
            self.readonly_seen = node.health().readonly_replies();
            self.master = Some(node);
            self.last_master_addr = Some(addr.to_string());
            self.episode_start = None;
        }
        // A failover that started but neither finished nor announced its
        // abort is forgotten once it is clearly over.
        if self.hold.is_none() && self.episode_start.is_some_and(|s| s.elapsed() > FENCE_FOR) {
            self.episode_start = None;
        }
        self.master_report = Some(report);
    }

    async fn ask_sentinels(&self) -> Vec<SentinelView> {
        let mut asks = JoinSet::new();
        for opts in &self.settings.sentinels {
            let opts = opts.clone();
            let name = self.settings.master_name.clone();
            let timeout = self.settings.timeout;
            asks.spawn(async move { sentinel::ask(&opts, &name, timeout).await });
        }
        let mut views = Vec::new();
        while let Some(done) = asks.join_next().await {
            if let Ok(Ok(view)) = done {
                views.push(view);
            }
        }
        views
    }

    async fn probe_replicas(&mut self) {
        let master_addr = self.master.as_ref().map(|m| m.addr().to_string());
        let states = probe::judge_replicas(
            &self.topology,
            &self.known_replicas,
            master_addr.as_deref(),
            self.master_report.as_ref(),
            self.settings.timeout,
            self.settings.max_replica_lag,
        )
        .await;
        self.replicas = states
            .iter()
            .filter(|s| s.serves_reads())
            .map(|s| self.topology.node(&s.addr))
            .collect();
        self.replica_states = states;
    }

    fn publish(&self) {
        self.topology.publish(Snapshot {
            master: self.master.clone(),
            holding: self.hold.is_some(),
            replicas: self.replicas.clone(),
            replica_states: self.replica_states.clone(),
            sentinels_reached: self.sentinels_reached,
            sentinels_total: self.settings.sentinels.len(),
            last_failover: self.last_failover.clone(),
        });
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
