//! The backend topology: which node is the confirmed master, which replicas
//! may serve reads, and whether new requests for the master are held while a
//! failover runs.
//!
//! - [`control`] is a one-request-at-a-time RESP connection for control traffic.
//! - [`probe`] asks a data node its role and replication state.
//! - [`sentinel`] asks Sentinels for the master and replicas and follows their events.
//! - [`slot`] is the Redis Cluster key slot function (CRC16, hash tags).
//! - [`cluster`] reads a Redis Cluster's slot map and keeps it current.
//! - [`monitor`] is the task that combines all of it and publishes [`Snapshot`]s.
//!
//! Invariants:
//! - the data path reads the topology lock-free (one `ArcSwap` load);
//! - a node is only published as master after it answered `ROLE` with
//!   `master`, and it is withdrawn (and marked demoted) before any other node
//!   is published in its place, so a write never goes to a node keygate
//!   knows is no longer master;
//! - requests for the master wait at most `failover_wait`, then fail with a
//!   clear error; nothing hangs;
//! - nodes are keyed by address and reused when a node changes role, so a
//!   promoted replica keeps its warm connections.
//!
//! Clients holding a dedicated connection (MULTI/WATCH, blocking commands,
//! pub/sub) to a master that is withdrawn get an error for what they await
//! and are closed: their state (queued transaction, watched keys,
//! subscriptions) lived on the old master and cannot be moved, and a closed
//! connection makes client libraries reconnect and resubscribe, where a
//! silently re-pointed one would not.
//!
//! Requests for the master are held from the first failover-start event
//! (`failover_hold`, on by default) because writes the old master
//! acknowledges after a replica was promoted are discarded when it rejoins;
//! `tests/sentinel.rs` measures the difference.

pub mod cluster;
pub mod control;
pub mod monitor;
pub mod probe;
pub mod sentinel;
pub mod slot;
mod warm;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::backend::node::{Node, NodeOptions};
use crate::backend::BackendError;

/// While waiting for a master, how often to look again without a publish.
const RECHECK: Duration = Duration::from_millis(50);

/// Why the topology has no node for a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No master was confirmed (or a failover hold did not end) in time.
    #[error("no master for '{name}' confirmed within {waited} (failover in progress or no Sentinel reachable)")]
    NoMaster { name: String, waited: String },
    /// A replica-only service has no healthy replica.
    #[error("no healthy replica for '{name}' (read_from = \"replica\")")]
    NoReplica { name: String },
    /// No master serves a cluster slot (none did within `failover_wait`).
    #[error("no master serves slot {slot}")]
    SlotUncovered { slot: u16 },
}

impl From<RouteError> for BackendError {
    fn from(e: RouteError) -> BackendError {
        match e {
            RouteError::SlotUncovered { .. } => BackendError::ClusterDown,
            _ => BackendError::NoRoute {
                reason: e.to_string(),
            },
        }
    }
}

/// What a replica looked like at the last probe, for `/health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaState {
    /// `host:port`.
    pub addr: String,
    /// `online`, `down`, `loading`, `syncing`, `link-down`, `lagging`,
    /// `wrong-master` or `not-replica`.
    pub state: String,
    /// Seconds since the replica last acknowledged the master, if known.
    pub lag_seconds: Option<u64>,
    /// Replication offset bytes the replica is behind, if known.
    pub lag_bytes: Option<u64>,
}

impl ReplicaState {
    /// True when reads may go to it.
    pub fn serves_reads(&self) -> bool {
        self.state == "online"
    }
}

/// The last completed master change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverRecord {
    /// The old master, if one was known.
    pub from: Option<String>,
    /// The newly confirmed master.
    pub to: String,
    /// Unix time (seconds) the new master was confirmed.
    pub at_unix: u64,
    /// From the first sign (failover-start event, lost master) to confirmation.
    pub took_ms: u64,
}

/// One published view of the topology; replaced whole, never mutated.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The confirmed master; `None` while none is confirmed.
    pub master: Option<Arc<Node>>,
    /// New requests for the master wait: a failover is running.
    pub holding: bool,
    /// Replicas that may serve reads right now.
    pub replicas: Vec<Arc<Node>>,
    /// Every known replica and its state.
    pub replica_states: Vec<ReplicaState>,
    /// Sentinels that answered the last poll, and how many are configured.
    pub sentinels_reached: usize,
    /// Sentinels configured.
    pub sentinels_total: usize,
    /// The last master change.
    pub last_failover: Option<FailoverRecord>,
}

/// The shared topology: what the data path reads and the monitor writes.
#[derive(Debug)]
pub struct Topology {
    /// The Sentinel master name (`"standalone"` without Sentinel).
    master_name: String,
    /// Whether a Sentinel monitor keeps this topology up to date.
    sentinel: bool,
    failover_wait: Duration,
    snapshot: ArcSwap<Snapshot>,
    /// Bumped on every publish; waiters for a master watch it.
    changes: watch::Sender<u64>,
    /// Every node ever routed to, by address.
    nodes: Mutex<HashMap<String, Arc<Node>>>,
    /// Template for new nodes; `connect.addr` is replaced per node.
    node_options: NodeOptions,
    failovers: AtomicU64,
    /// A master was published before: a master published now replaces one
    /// (a failover), so there is something to warm again.
    had_master: AtomicBool,
    /// The slot map, on a cluster backend.
    cluster: Option<cluster::Cluster>,
}

impl Topology {
    /// A topology with one fixed master and no monitor.
    pub fn standalone(opts: NodeOptions, failover_wait: Duration) -> Arc<Topology> {
        let topology = Topology::new("standalone".into(), false, opts, failover_wait);
        let node = topology.node(&topology.node_options.connect.addr.clone());
        topology.publish(Snapshot {
            master: Some(node),
            ..Snapshot::default()
        });
        Arc::new(topology)
    }

    /// An empty topology a Sentinel monitor will fill.
    pub fn sentinel(
        master_name: String,
        opts: NodeOptions,
        failover_wait: Duration,
        sentinels_total: usize,
    ) -> Arc<Topology> {
        let topology = Topology::new(master_name, true, opts, failover_wait);
        topology.publish(Snapshot {
            sentinels_total,
            ..Snapshot::default()
        });
        Arc::new(topology)
    }

    fn new(
        master_name: String,
        sentinel: bool,
        node_options: NodeOptions,
        failover_wait: Duration,
    ) -> Topology {
        Topology {
            master_name,
            sentinel,
            failover_wait,
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            changes: watch::Sender::new(0),
            nodes: Mutex::new(HashMap::new()),
            node_options,
            failovers: AtomicU64::new(0),
            had_master: AtomicBool::new(false),
            cluster: None,
        }
    }

    /// A topology a cluster refresh task ([`cluster::spawn`]) fills from
    /// `cluster`'s seeds; its snapshot's master is a master of the cluster,
    /// for commands without keys.
    pub fn cluster(
        cluster: cluster::Cluster,
        opts: NodeOptions,
        failover_wait: Duration,
    ) -> Arc<Topology> {
        let mut topology = Topology::new("cluster".into(), false, opts, failover_wait);
        topology.cluster = Some(cluster);
        Arc::new(topology)
    }

    /// Every service's near cache, when any is enabled.
    pub fn near_caches(&self) -> Option<&Arc<crate::near_cache::NearCaches>> {
        self.node_options.near_caches.as_ref()
    }

    /// The cluster side, on a cluster backend.
    pub fn cluster_side(&self) -> Option<&cluster::Cluster> {
        self.cluster.as_ref()
    }

    /// The Sentinel master name.
    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    /// True when Sentinel drives this topology.
    pub fn is_sentinel(&self) -> bool {
        self.sentinel
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Replaces the snapshot and wakes requests waiting for a master.
    pub(crate) fn publish(&self, snapshot: Snapshot) {
        let before = self.snapshot.load();
        let same_master = match (&before.master, &snapshot.master) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        // On a cluster backend this master is only one of many, whichever
        // comes first in the answer: slot moves flush the caches instead
        // (see `cluster`).
        if !same_master && self.cluster.is_none() {
            // What the old master's invalidations covered is no proof of
            // anything on the new one: the near caches start empty.
            if let Some(caches) = &self.node_options.near_caches {
                caches.flush_all(crate::near_cache::Evicted::Flush);
                // ... and the hottest keys are read again from the new one.
                // Not the first master: nothing was flushed then, and the
                // hot keys it would read are the clients' first reads,
                // racing them (a read of its own beside a client's fill).
                let replaces = self.had_master.load(Ordering::Relaxed);
                if let (Some(master), true) = (&snapshot.master, replaces) {
                    warm::spawn(master.clone(), caches.clone());
                }
            }
        }
        if snapshot.master.is_some() {
            self.had_master.store(true, Ordering::Relaxed);
        }
        self.snapshot.store(Arc::new(snapshot));
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The node for `addr`, started on first use and reused afterwards.
    pub fn node(&self, addr: &str) -> Arc<Node> {
        let mut nodes = match self.nodes.lock() {
            Ok(n) => n,
            Err(poisoned) => poisoned.into_inner(),
        };
        let label = u16::try_from(nodes.len()).unwrap_or(u16::MAX);
        nodes
            .entry(addr.to_string())
            .or_insert_with(|| {
                let mut opts = self.node_options.clone();
                opts.connect.addr = addr.to_string();
                opts.label = label;
                Node::start(opts)
            })
            .clone()
    }

    /// Every node's address by its label index ([`Node::label`]), for the
    /// `node` label of metrics: bounded by the nodes the topology has known.
    pub fn node_addrs(&self) -> Vec<String> {
        let nodes = match self.nodes.lock() {
            Ok(n) => n,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut addrs = vec![String::new(); nodes.len()];
        for (addr, node) in nodes.iter() {
            if let Some(slot) = addrs.get_mut(usize::from(node.label())) {
                slot.clone_from(addr);
            }
        }
        addrs
    }

    /// Connection settings for probing `addr` (the data nodes' credentials).
    pub fn probe_options(&self, addr: &str) -> crate::backend::connect::ConnectOptions {
        crate::backend::connect::ConnectOptions {
            addr: addr.to_string(),
            protocol: crate::protocol::Protocol::Resp2,
            readonly: false,
            ..self.node_options.connect.clone()
        }
    }

    /// Completed master changes since start.
    pub fn failovers_total(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    pub(crate) fn count_failover(&self) {
        self.failovers.fetch_add(1, Ordering::Relaxed);
    }

    /// The confirmed master if requests may go to it now: no hold, and
    /// (with Sentinel) at least one live connection, so requests arriving
    /// between a master's death and its withdrawal wait instead of failing.
    fn master_now(&self) -> Option<Arc<Node>> {
        let snap = self.snapshot.load();
        if snap.holding {
            return None;
        }
        let master = snap.master.as_ref()?;
        if self.sentinel && master.health().connected() == 0 {
            return None;
        }
        Some(master.clone())
    }

    /// The master, waiting through a failover hold or an unknown master for
    /// at most `failover_wait`.
    pub async fn master(&self) -> Result<Arc<Node>, RouteError> {
        if let Some(m) = self.master_now() {
            return Ok(m);
        }
        let deadline = Instant::now() + self.failover_wait;
        let mut changes = self.changes.subscribe();
        loop {
            if let Some(m) = self.master_now() {
                return Ok(m);
            }
            if Instant::now() >= deadline {
                return Err(self.no_master());
            }
            // Connections coming back are not published: look again soon.
            let wake = deadline.min(Instant::now() + RECHECK);
            match tokio::time::timeout_at(wake, changes.changed()).await {
                Ok(Ok(())) | Err(_) => continue,
                Ok(Err(_)) => return Err(self.no_master()),
            }
        }
    }

    /// The master serving cluster `slot`, waiting while no map covers it
    /// (at start, or while a failed master's replica is promoted) for at
    /// most `failover_wait`.
    pub async fn slot_master(&self, slot: u16) -> Result<Arc<Node>, RouteError> {
        let Some(cluster) = &self.cluster else {
            return self.master().await;
        };
        if let Some(node) = cluster.map().master(slot) {
            return Ok(node.clone());
        }
        let deadline = Instant::now() + self.failover_wait;
        let mut changes = self.changes.subscribe();
        loop {
            if let Some(node) = cluster.map().master(slot) {
                return Ok(node.clone());
            }
            if Instant::now() >= deadline {
                return Err(RouteError::SlotUncovered { slot });
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) | Err(_) => continue,
                Ok(Err(_)) => return Err(RouteError::SlotUncovered { slot }),
            }
        }
    }

    fn no_master(&self) -> RouteError {
        RouteError::NoMaster {
            name: self.master_name.clone(),
            waited: humantime::format_duration(self.failover_wait).to_string(),
        }
    }

    /// The healthy, connected replica with the fewest pending requests, if any.
    pub fn replica(&self) -> Option<Arc<Node>> {
        let snap = self.snapshot.load();
        snap.replicas
            .iter()
            .filter(|n| n.health().connected() > 0)
            .min_by_key(|n| n.pending())
            .cloned()
    }

    /// Whether `/health/ready` should be green: a master is confirmed and
    /// connected, and (with Sentinel) at least one Sentinel answered lately;
    /// on a cluster backend, every slot has a master with a live connection.
    pub fn is_ready(&self) -> bool {
        if let Some(cluster) = &self.cluster {
            // Every slot has a master with a live connection.
            let map = cluster.map();
            return map.is_complete()
                && map
                    .shards
                    .iter()
                    .filter(|s| !s.ranges.is_empty())
                    .all(|s| s.master.health().connected() > 0);
        }
        let snap = self.snapshot.load();
        let master_up = snap
            .master
            .as_ref()
            .is_some_and(|m| m.health().connected() > 0);
        master_up && (!self.sentinel || snap.sentinels_reached > 0)
    }

    /// The `/health` JSON for the backend.
    pub fn health_json(&self) -> serde_json::Value {
        if let Some(cluster) = &self.cluster {
            let mut json = cluster.health_json();
            json["mode"] = "cluster".into();
            return json;
        }
        let snap = self.snapshot.load();
        let master = snap.master.as_ref().map(|m| {
            serde_json::json!({
                "address": m.addr(),
                "connections": m.health().connected(),
                "last_error": m.health().last_error(),
                "pending": m.pending(),
            })
        });
        let replicas: Vec<_> = snap
            .replica_states
            .iter()
            .map(|r| {
                serde_json::json!({
                    "address": r.addr,
                    "state": r.state,
                    "lag_seconds": r.lag_seconds,
                    "lag_bytes": r.lag_bytes,
                })
            })
            .collect();
        let last_failover = snap.last_failover.as_ref().map(|f| {
            serde_json::json!({
                "from": f.from,
                "to": f.to,
                "at_unix": f.at_unix,
                "took_ms": f.took_ms,
            })
        });
        serde_json::json!({
            "mode": if self.sentinel { "sentinel" } else { "standalone" },
            "master_name": self.master_name,
            "master_confirmed": snap.master.is_some(),
            "failover_hold": snap.holding,
            "master": master,
            "replicas": replicas,
            "sentinels_reached": snap.sentinels_reached,
            "sentinels_total": snap.sentinels_total,
            "failovers_total": self.failovers_total(),
            "last_failover": last_failover,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::connect::ConnectOptions;

    /// Options for nodes nothing listens for (port 1): connections fail
    /// fast and retry.
    pub(super) fn opts() -> NodeOptions {
        NodeOptions {
            connect: ConnectOptions {
                // Nothing listens on port 1; connections fail fast and retry.
                addr: "127.0.0.1:1".into(),
                username: None,
                password: crate::backend::credential::Credential::new(None),
                database: 0,
                protocol: Default::default(),
                connect_timeout: Duration::from_millis(100),
                tls: None,
                readonly: false,
            },
            connections: 1,
            writes_in_flight: 2,
            dedicated_max: 1,
            near_caches: None,
            command_timeout: Duration::from_secs(1),
            label: 0,
        }
    }

    #[tokio::test]
    async fn unknown_master_fails_after_failover_wait() {
        let topology = Topology::sentinel("mymaster".into(), opts(), Duration::from_millis(50), 1);
        let started = Instant::now();
        let err = topology.master().await.expect_err("no master");
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(
            BackendError::from(err).client_message(),
            "ERR keygate: no master for 'mymaster' confirmed within 50ms (failover in progress or no Sentinel reachable)"
        );
    }

    #[tokio::test]
    async fn held_requests_are_released_on_publish() {
        // Not Sentinel-driven, so the unconnected node counts as usable.
        let topology = Arc::new(Topology::new(
            "m".into(),
            false,
            opts(),
            Duration::from_secs(5),
        ));
        let node = topology.node("127.0.0.1:1");
        topology.publish(Snapshot {
            master: Some(node.clone()),
            holding: true,
            ..Snapshot::default()
        });
        let waiter = {
            let topology = topology.clone();
            tokio::spawn(async move { topology.master().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        topology.publish(Snapshot {
            master: Some(node.clone()),
            ..Snapshot::default()
        });
        let got = waiter.await.expect("join").expect("master");
        assert!(Arc::ptr_eq(&got, &node));
        // Nodes are reused by address.
        assert!(Arc::ptr_eq(&topology.node("127.0.0.1:1"), &node));
    }
}
