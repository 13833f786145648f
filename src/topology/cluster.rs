//! Redis Cluster topology: which master serves each of the 16384 slots,
//! read with `CLUSTER SHARDS` and kept up to date.
//!
//! A refresh asks two nodes at once (the known masters first, then their
//! replicas, then the configured seeds); when their answers disagree, or
//! one does not answer, it asks more, and takes the answer of the node with
//! the highest `cluster_current_epoch` (ties: the layout most nodes gave).
//! Each shard's nodes are named by `endpoint`, or by the answering node's
//! own host when the endpoint is empty or `?` (Redis's "unknown endpoint").
//!
//! Each refresh also probes every shard's replicas the way the Sentinel
//! monitor does ([`super::probe`]: role, link, loading, and the master's
//! acknowledgement lag within `max_replica_lag`); a map takes over the
//! previous map's verdicts until its own probe is in, so reads do not
//! fall back to the masters at every refresh.
//!
//! Invariants:
//! - the data path reads the slot map lock-free (one `ArcSwap` load);
//! - a map is never replaced by one from an older epoch, so an answer from
//!   a node that has not heard of a failover or a slot move yet cannot
//!   take keygate back;
//! - refreshes are debounced: one runs at a time, the next starts at least
//!   [`MIN_REFRESH_GAP`] after the last one began, and any number of
//!   requests for one meanwhile (each `MOVED` asks) make one refresh;
//! - nodes are keyed by address and reused across maps ([`Topology::node`]),
//!   so a promoted replica or a shard that gains slots keeps its warm
//!   connections.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::control::{info_field, items, text, ControlConn};
use super::probe;
use super::slot::SLOTS;
use super::{ReplicaState, Snapshot, Topology};
use crate::backend::connect::ConnectOptions;
use crate::backend::node::Node;
use crate::near_cache::Evicted;
use crate::protocol::reply::Value;

/// The shortest time between the starts of two refreshes.
pub const MIN_REFRESH_GAP: Duration = Duration::from_millis(100);
/// Most nodes one refresh asks.
const MOST_ASKED: usize = 4;
/// Marks a slot no shard serves in [`SlotMap`].
const UNCOVERED: u16 = u16::MAX;

/// Why a refresh ran (the `reason` label of `keygate_topology_refreshes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshReason {
    /// The first map, at start.
    Start,
    /// `cluster_refresh` passed.
    Periodic,
    /// A `MOVED` named another node for a slot.
    Moved,
    /// A connection to a node was lost.
    ConnectionLost,
    /// A node answered `-CLUSTERDOWN`.
    ClusterDown,
}

impl RefreshReason {
    /// Every reason, in label order.
    pub const ALL: [RefreshReason; 5] = [
        RefreshReason::Start,
        RefreshReason::Periodic,
        RefreshReason::Moved,
        RefreshReason::ConnectionLost,
        RefreshReason::ClusterDown,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            RefreshReason::Start => "start",
            RefreshReason::Periodic => "periodic",
            RefreshReason::Moved => "moved",
            RefreshReason::ConnectionLost => "connection_lost",
            RefreshReason::ClusterDown => "clusterdown",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn from_index(index: u8) -> RefreshReason {
        RefreshReason::ALL
            .get(usize::from(index))
            .copied()
            .unwrap_or(RefreshReason::Periodic)
    }
}

/// One node of a shard as a `CLUSTER SHARDS` answer names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// `host:port` keygate dials.
    pub addr: String,
    /// `online`, `loading` or `fail`.
    pub health: String,
}

/// One shard as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardView {
    /// Its master.
    pub master: NodeView,
    /// Its replicas.
    pub replicas: Vec<NodeView>,
    /// Its slot ranges, inclusive, in the order given.
    pub ranges: Vec<(u16, u16)>,
}

/// One node's answer: its current epoch and the shards it knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// `cluster_current_epoch` of the answering node.
    pub epoch: u64,
    /// The shards, masters without slots included.
    pub shards: Vec<ShardView>,
}

impl Answer {
    /// The slots and their masters, comparable between answers: sorted
    /// (master, ranges) of the shards that serve slots.
    fn layout(&self) -> Vec<(&str, Vec<(u16, u16)>)> {
        let mut layout: Vec<(&str, Vec<(u16, u16)>)> = self
            .shards
            .iter()
            .filter(|s| !s.ranges.is_empty())
            .map(|s| {
                let mut ranges = s.ranges.clone();
                ranges.sort_unstable();
                (s.master.addr.as_str(), ranges)
            })
            .collect();
        layout.sort();
        layout
    }
}

/// A shard keygate routes to.
#[derive(Debug)]
pub struct Shard {
    /// Its master.
    pub master: Arc<Node>,
    /// Its replicas and their health as last read.
    pub replicas: Vec<(Arc<Node>, String)>,
    /// Its slot ranges, inclusive.
    pub ranges: Vec<(u16, u16)>,
    /// What the last probe said of each replica, in `replicas`' order.
    pub replica_states: Vec<ReplicaState>,
    /// The replicas that may serve reads (probed `online`).
    pub reads: Vec<Arc<Node>>,
}

/// Probe verdicts by (master, replica) address: a verdict holds only for
/// a replica of the master it was judged against.
type Verdicts = HashMap<(String, String), ReplicaState>;

/// Which shard serves each slot; replaced whole, never mutated.
#[derive(Debug)]
pub struct SlotMap {
    /// Per slot, the index of its shard in `shards`, or [`UNCOVERED`].
    owner: Box<[u16]>,
    /// The shards, masters without slots included.
    pub shards: Vec<Shard>,
    /// The epoch of the answer this map was built from.
    pub epoch: u64,
    /// Slots some shard serves.
    pub covered: usize,
}

impl Default for SlotMap {
    fn default() -> Self {
        SlotMap {
            owner: vec![UNCOVERED; SLOTS].into_boxed_slice(),
            shards: Vec::new(),
            epoch: 0,
            covered: 0,
        }
    }
}

impl SlotMap {
    /// Builds the map of `answer`, its nodes from `node` (by address), its
    /// replicas judged by `verdicts` (unknown ones serve no reads).
    fn build(answer: &Answer, node: impl Fn(&str) -> Arc<Node>, verdicts: &Verdicts) -> SlotMap {
        let mut map = SlotMap {
            epoch: answer.epoch,
            ..SlotMap::default()
        };
        for view in &answer.shards {
            let Ok(index) = u16::try_from(map.shards.len()) else {
                break;
            };
            for &(from, to) in &view.ranges {
                let to = usize::from(to).min(SLOTS - 1);
                for slot in usize::from(from)..=to {
                    if let Some(owner) = map.owner.get_mut(slot) {
                        *owner = index;
                    }
                }
            }
            let replica_states: Vec<ReplicaState> = view
                .replicas
                .iter()
                .map(|r| {
                    verdicts
                        .get(&(view.master.addr.clone(), r.addr.clone()))
                        .cloned()
                        .unwrap_or_else(|| ReplicaState {
                            addr: r.addr.clone(),
                            state: "unknown".into(),
                            lag_seconds: None,
                            lag_bytes: None,
                        })
                })
                .collect();
            let replicas: Vec<(Arc<Node>, String)> = view
                .replicas
                .iter()
                .map(|r| (node(&r.addr), r.health.clone()))
                .collect();
            let reads = replicas
                .iter()
                .zip(&replica_states)
                .filter(|(_, state)| state.serves_reads())
                .map(|((n, _), _)| n.clone())
                .collect();
            map.shards.push(Shard {
                master: node(&view.master.addr),
                replicas,
                ranges: view.ranges.clone(),
                replica_states,
                reads,
            });
        }
        map.covered = map.owner.iter().filter(|&&o| o != UNCOVERED).count();
        map
    }

    /// The master serving `slot`, if any shard does.
    pub fn master(&self, slot: u16) -> Option<&Arc<Node>> {
        let index = *self.owner.get(usize::from(slot))?;
        self.shards.get(usize::from(index)).map(|s| &s.master)
    }

    /// The replica a read of `slot` goes to: of those of its shard that
    /// may serve reads, a connected one with the fewest pending requests
    /// (as [`Topology::replica`] picks under Sentinel); `None` also when
    /// no shard serves the slot.
    pub fn replica(&self, slot: u16) -> Option<&Arc<Node>> {
        let index = *self.owner.get(usize::from(slot))?;
        self.shards
            .get(usize::from(index))?
            .reads
            .iter()
            .filter(|n| n.health().connected() > 0)
            .min_by_key(|n| n.pending())
    }

    /// The verdicts this map holds, for the next map to start from.
    fn verdicts(&self) -> Verdicts {
        let mut verdicts = Verdicts::new();
        for shard in &self.shards {
            for state in &shard.replica_states {
                let key = (shard.master.addr().to_string(), state.addr.clone());
                verdicts.insert(key, state.clone());
            }
        }
        verdicts
    }

    /// Whether every slot has a shard.
    pub fn is_complete(&self) -> bool {
        self.covered == SLOTS
    }

    /// A master serving slots, for commands without keys.
    pub fn any_master(&self) -> Option<&Arc<Node>> {
        self.shards
            .iter()
            .find(|s| !s.ranges.is_empty())
            .map(|s| &s.master)
    }
}

/// The cluster side of a [`Topology`]: seeds, the published slot map and
/// the refresh requests.
#[derive(Debug)]
pub struct Cluster {
    seeds: Vec<String>,
    period: Duration,
    max_redirects: u32,
    /// Replicas further behind their master serve no reads.
    max_replica_lag: Duration,
    map: ArcSwap<SlotMap>,
    /// Wakes the refresh task; its one stored permit coalesces requests.
    wanted: Notify,
    /// The reason of the latest request, as [`RefreshReason`]'s index.
    wanted_reason: AtomicU8,
    refreshes: [AtomicU64; RefreshReason::ALL.len()],
    /// Bumped whenever a map with another layout is published.
    generation: AtomicU64,
    /// Redirects followed, by kind: moved, ask, tryagain.
    redirects: [AtomicU64; 3],
}

impl Cluster {
    /// The cluster side for `seeds`, refreshed every `period`; replicas
    /// more than `max_replica_lag` behind serve no reads.
    pub fn new(
        seeds: Vec<String>,
        period: Duration,
        max_redirects: u32,
        max_replica_lag: Duration,
    ) -> Cluster {
        Cluster {
            seeds,
            period,
            max_redirects,
            max_replica_lag,
            map: ArcSwap::from_pointee(SlotMap::default()),
            wanted: Notify::new(),
            wanted_reason: AtomicU8::new(RefreshReason::Start as u8),
            refreshes: Default::default(),
            generation: AtomicU64::new(0),
            redirects: Default::default(),
        }
    }

    /// Counts a redirect followed.
    pub fn count_redirect(&self, redirect: &Redirect) {
        let index = match redirect {
            Redirect::Moved { .. } => 0,
            Redirect::Ask { .. } => 1,
            Redirect::TryAgain => 2,
            Redirect::ClusterDown => return,
        };
        self.redirects[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Redirects followed since start, by kind (the `kind` label of
    /// `keygate_redirects_total`).
    pub fn redirects(&self) -> [(&'static str, u64); 3] {
        let n = |i: usize| self.redirects[i].load(Ordering::Relaxed);
        [("moved", n(0)), ("ask", n(1)), ("tryagain", n(2))]
    }

    /// Changes whenever a map with another layout is published: a request
    /// routed by an older one may be answered with a redirect.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current slot map.
    pub fn map(&self) -> arc_swap::Guard<Arc<SlotMap>> {
        self.map.load()
    }

    /// Most redirects one request follows.
    pub fn max_redirects(&self) -> u32 {
        self.max_redirects
    }

    /// Asks for a refresh soon; requests while one is due make one refresh.
    pub fn request_refresh(&self, reason: RefreshReason) {
        self.wanted_reason.store(reason as u8, Ordering::Relaxed);
        self.wanted.notify_one();
    }

    /// Refreshes run since start, by reason, in [`RefreshReason::ALL`] order.
    pub fn refreshes(&self) -> [(RefreshReason, u64); RefreshReason::ALL.len()] {
        RefreshReason::ALL.map(|r| (r, self.refreshes[r.index()].load(Ordering::Relaxed)))
    }

    /// Addresses to ask, most likely current first, without repeats: the
    /// masters, their replicas, then the seeds.
    fn candidates(&self) -> Vec<String> {
        let map = self.map.load();
        let masters = map.shards.iter().map(|s| s.master.addr().to_string());
        let replicas = map
            .shards
            .iter()
            .flat_map(|s| s.replicas.iter().map(|(r, _)| r.addr().to_string()));
        let mut seen = HashSet::new();
        masters
            .chain(replicas)
            .chain(self.seeds.iter().cloned())
            .filter(|a| seen.insert(a.clone()))
            .collect()
    }

    /// Publishes `map` unless it is older than the current one; returns
    /// whether it did.
    fn publish(&self, map: SlotMap) -> bool {
        let current = self.map.load();
        if map.epoch < current.epoch {
            tracing::warn!(
                current = current.epoch,
                answered = map.epoch,
                "cluster: ignoring a slot map from an older epoch"
            );
            return false;
        }
        let moved = !same_layout(&current, &map);
        self.map.store(Arc::new(map));
        if moved {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        true
    }

    /// The `/health` shards.
    pub fn health_json(&self) -> serde_json::Value {
        let map = self.map.load();
        let shards: Vec<_> = map
            .shards
            .iter()
            .map(|s| {
                let ranges: Vec<String> = s
                    .ranges
                    .iter()
                    .map(|&(from, to)| format!("{from}-{to}"))
                    .collect();
                let replicas: Vec<_> = s
                    .replicas
                    .iter()
                    .zip(&s.replica_states)
                    .map(|((node, health), probed)| {
                        serde_json::json!({
                            "address": node.addr(),
                            "health": health,
                            "connections": node.health().connected(),
                            "state": probed.state,
                            "lag_seconds": probed.lag_seconds,
                            "lag_bytes": probed.lag_bytes,
                        })
                    })
                    .collect();
                serde_json::json!({
                    "master": {
                        "address": s.master.addr(),
                        "connections": s.master.health().connected(),
                        "last_error": s.master.health().last_error(),
                        "pending": s.master.pending(),
                    },
                    "replicas": replicas,
                    "slots": ranges,
                })
            })
            .collect();
        let refreshes: serde_json::Map<String, serde_json::Value> = self
            .refreshes()
            .iter()
            .map(|(r, n)| (r.label().to_string(), serde_json::json!(n)))
            .collect();
        serde_json::json!({
            "seeds": self.seeds,
            "epoch": map.epoch,
            "slots_covered": map.covered,
            "shards": shards,
            "refreshes": refreshes,
            "redirects": serde_json::Map::from_iter(
                self.redirects().iter().map(|(k, n)| (k.to_string(), serde_json::json!(n)))
            ),
        })
    }
}

/// Starts the task that keeps `topology`'s slot map up to date; it ends
/// when the topology is dropped.
pub fn spawn(topology: &Arc<Topology>, timeout: Duration) {
    let weak = Arc::downgrade(topology);
    tokio::spawn(async move {
        let mut reason = RefreshReason::Start;
        loop {
            let Some(topology) = weak.upgrade() else {
                return;
            };
            let Some(cluster) = topology.cluster_side() else {
                return;
            };
            let started = tokio::time::Instant::now();
            cluster.refreshes[reason.index()].fetch_add(1, Ordering::Relaxed);
            refresh(&topology, cluster, timeout).await;
            let period = cluster.period;
            let wanted = async {
                cluster.wanted.notified().await;
                RefreshReason::from_index(cluster.wanted_reason.load(Ordering::Relaxed))
            };
            // A map without every slot is looked at again soon: a cluster
            // still forming or failing over; so is a replica unfit for
            // reads, as often as the Sentinel monitor polls.
            let map = cluster.map();
            let period = if !map.is_complete() {
                period.min(Duration::from_secs(1))
            } else if map.shards.iter().any(|s| s.reads.len() < s.replicas.len()) {
                period.min(super::monitor::POLL_INTERVAL)
            } else {
                period
            };
            drop(map);
            reason = tokio::select! {
                r = wanted => r,
                () = tokio::time::sleep(period) => RefreshReason::Periodic,
            };
            drop(topology);
            tokio::time::sleep_until(started + MIN_REFRESH_GAP).await;
        }
    });
}

/// One refresh: ask nodes, pick the answer, publish it.
async fn refresh(topology: &Arc<Topology>, cluster: &Cluster, timeout: Duration) {
    let mut candidates = cluster.candidates().into_iter();
    let mut answers: Vec<(String, Answer)> = Vec::new();
    let mut asked = 0;
    while asked < MOST_ASKED {
        // Two at first, so a disagreement shows at once; then one more at a time.
        let wave: Vec<String> = candidates
            .by_ref()
            .take(if asked == 0 { 2 } else { 1 })
            .collect();
        if wave.is_empty() {
            break;
        }
        asked += wave.len();
        let mut tasks = JoinSet::new();
        for addr in wave {
            let opts = topology.probe_options(&addr);
            tasks.spawn(async move { (addr, ask(&opts, timeout).await) });
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((addr, Ok(answer))) => answers.push((addr, answer)),
                Ok((addr, Err(reason))) => {
                    tracing::debug!(node = %addr, %reason, "cluster: no slot map from node");
                }
                Err(_) => {}
            }
        }
        let agree = answers.len() >= 2
            && answers
                .windows(2)
                .all(|w| w[0].1.layout() == w[1].1.layout());
        if agree {
            break;
        }
    }
    let Some(best) = choose(&answers) else {
        tracing::warn!(asked, "cluster: no node answered CLUSTER SHARDS");
        return;
    };
    let node = |addr: &str| topology.node(addr);
    let map = SlotMap::build(best, node, &cluster.map().verdicts());
    let first_master = map.any_master().cloned();
    let generation = cluster.generation();
    // Only a change of a map that served slots is worth warming after: at
    // start nothing was flushed.
    let served = cluster.map().any_master().is_some();
    if !cluster.publish(map) {
        return;
    }
    if cluster.generation() != generation {
        // A slot moved (or its master changed): what a node's invalidations
        // covered for it proves nothing on its new owner.
        if let Some(caches) = topology.near_caches() {
            caches.flush_all(Evicted::Flush);
            if served {
                super::warm::spawn_cluster(Arc::clone(&cluster.map()), caches.clone());
            }
        }
    }
    // Commands without keys go to a master of the cluster.
    topology.publish(Snapshot {
        master: first_master,
        ..Snapshot::default()
    });
    // The same map again, with what its replicas say now (one refresh
    // runs at a time, so no newer map was published meanwhile).
    let verdicts = probe_replicas(topology, best, timeout, cluster.max_replica_lag).await;
    cluster.publish(SlotMap::build(best, node, &verdicts));
}

/// Probes every shard's master and replicas at once and judges whether
/// each replica may serve reads, as under Sentinel ([`probe`]).
async fn probe_replicas(
    topology: &Arc<Topology>,
    answer: &Answer,
    timeout: Duration,
    max_lag: Duration,
) -> Verdicts {
    let mut shards = JoinSet::new();
    for shard in answer.shards.iter().filter(|s| !s.replicas.is_empty()) {
        let topology = topology.clone();
        let master = shard.master.addr.clone();
        // A replica the cluster flags as failed is not asked.
        let replicas: Vec<(String, bool)> = shard
            .replicas
            .iter()
            .map(|r| (r.addr.clone(), r.health == "fail"))
            .collect();
        shards.spawn(async move {
            let opts = topology.probe_options(&master);
            let report = probe::probe_master(&opts, timeout).await.ok().flatten();
            let states = probe::judge_replicas(
                &topology,
                &replicas,
                Some(&master),
                report.as_ref(),
                timeout,
                max_lag,
            )
            .await;
            (master, states)
        });
    }
    let mut verdicts = Verdicts::new();
    while let Some(done) = shards.join_next().await {
        let Ok((master, states)) = done else { continue };
        for state in states {
            verdicts.insert((master.clone(), state.addr.clone()), state);
        }
    }
    verdicts
}

/// Whether two maps send every slot to the same master.
fn same_layout(a: &SlotMap, b: &SlotMap) -> bool {
    a.owner.iter().zip(b.owner.iter()).all(|(&x, &y)| {
        let master = |map: &SlotMap, index: u16| {
            map.shards
                .get(usize::from(index))
                .map(|s| Arc::as_ptr(&s.master))
        };
        master(a, x) == master(b, y)
    })
}

/// A cluster's answer that the request belongs elsewhere, or may be
/// retried: read from an error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// `MOVED slot host:port`: the slot lives there now.
    Moved { addr: String },
    /// `ASK slot host:port`: this key is being imported there; ask once,
    /// preceded by `ASKING`.
    Ask { addr: String },
    /// `TRYAGAIN`: a multi-key request during a slot's migration.
    TryAgain,
    /// `CLUSTERDOWN`: the cluster cannot serve the slot now.
    ClusterDown,
}

impl Redirect {
    /// The redirect an error reply `frame` is, if any; an address without a
    /// host (Redis's unknown endpoint) is on `answering_host`.
    pub fn parse(frame: &[u8], answering_host: &str) -> Option<Redirect> {
        let line = frame.strip_prefix(b"-")?;
        let line = line.strip_suffix(b"\r\n").unwrap_or(line);
        if line.starts_with(b"TRYAGAIN") {
            return Some(Redirect::TryAgain);
        }
        if line.starts_with(b"CLUSTERDOWN") {
            return Some(Redirect::ClusterDown);
        }
        let (ask, rest) = if let Some(rest) = line.strip_prefix(b"MOVED ") {
            (false, rest)
        } else {
            (true, line.strip_prefix(b"ASK ")?)
        };
        let rest = std::str::from_utf8(rest).ok()?;
        let (_slot, addr) = rest.split_once(' ')?;
        let (host, port) = addr.rsplit_once(':')?;
        let host = if host.is_empty() || host == "?" {
            answering_host
        } else {
            host
        };
        let addr = format!("{host}:{port}");
        Some(if ask {
            Redirect::Ask { addr }
        } else {
            Redirect::Moved { addr }
        })
    }
}

/// The host part of `host:port` (an IPv6 address keeps its brackets).
pub fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(host, _)| host)
}

/// The answer to trust: the highest epoch, then the layout most nodes gave.
fn choose(answers: &[(String, Answer)]) -> Option<&Answer> {
    answers.iter().map(|(_, a)| a).max_by_key(|a| {
        let agreeing = answers
            .iter()
            .filter(|(_, b)| b.layout() == a.layout())
            .count();
        (a.epoch, agreeing)
    })
}

/// Asks one node for its epoch and shards.
async fn ask(opts: &ConnectOptions, timeout: Duration) -> Result<Answer, String> {
    let mut conn = ControlConn::open(opts, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let info = conn
        .call(&["CLUSTER", "INFO"])
        .await
        .map_err(|e| e.to_string())?;
    let info = text(&info).ok_or("CLUSTER INFO is not text")?;
    let epoch = info_field(&info, "cluster_current_epoch")
        .and_then(|e| e.parse().ok())
        .ok_or("CLUSTER INFO has no cluster_current_epoch")?;
    let shards = conn
        .call(&["CLUSTER", "SHARDS"])
        .await
        .map_err(|e| e.to_string())?;
    let host = host_of(&opts.addr);
    let shards = parse_shards(&shards, host)?;
    Ok(Answer { epoch, shards })
}

/// Reads a `CLUSTER SHARDS` reply (RESP2 arrays of name/value pairs, or
/// RESP3 maps); nodes with an empty or `?` endpoint are named by
/// `answering_host`.
pub fn parse_shards(reply: &Value, answering_host: &str) -> Result<Vec<ShardView>, String> {
    if let Value::Error(e) = reply {
        return Err(String::from_utf8_lossy(e).into_owned());
    }
    let shards = items(reply).ok_or("CLUSTER SHARDS is not an array")?;
    let mut out = Vec::with_capacity(shards.len());
    for shard in shards {
        let fields = pairs(shard).ok_or("a shard is not a map")?;
        let mut ranges = Vec::new();
        let mut master = None;
        let mut replicas = Vec::new();
        for (name, value) in fields {
            match text(name).as_deref() {
                Some("slots") => {
                    let bounds: Vec<u16> = items(value)
                        .ok_or("slots is not an array")?
                        .iter()
                        .map(|b| match b {
                            Value::Integer(i) => u16::try_from(*i).ok(),
                            _ => None,
                        })
                        .collect::<Option<_>>()
                        .ok_or("a slot bound is not a slot")?;
                    for pair in bounds.chunks(2) {
                        if let [from, to] = *pair {
                            if from <= to && usize::from(to) < SLOTS {
                                ranges.push((from, to));
                            }
                        }
                    }
                }
                Some("nodes") => {
                    for node in items(value).ok_or("nodes is not an array")? {
                        let (view, role) = parse_node(node, answering_host)?;
                        if role == "master" {
                            master = Some(view);
                        } else {
                            replicas.push(view);
                        }
                    }
                }
                _ => {}
            }
        }
        // A shard whose master failed and has no successor yet lists only
        // replicas; its slots stay uncovered until one is promoted.
        if let Some(master) = master {
            out.push(ShardView {
                master,
                replicas,
                ranges,
            });
        }
    }
    Ok(out)
}

/// One node of a shard: its address and health, and its role.
fn parse_node(node: &Value, answering_host: &str) -> Result<(NodeView, String), String> {
    let mut endpoint = None;
    let mut port = None;
    let mut role = String::new();
    let mut health = String::new();
    for (name, value) in pairs(node).ok_or("a node is not a map")? {
        match text(name).as_deref() {
            Some("endpoint") => endpoint = text(value),
            Some("port") => port = text(value),
            Some("role") => role = text(value).unwrap_or_default(),
            Some("health") => health = text(value).unwrap_or_default(),
            _ => {}
        }
    }
    let port = port.ok_or("a node has no port")?;
    let host = match endpoint.as_deref() {
        None | Some("") | Some("?") => answering_host.to_string(),
        Some(host) if host.contains(':') && !host.starts_with('[') => format!("[{host}]"),
        Some(host) => host.to_string(),
    };
    Ok((
        NodeView {
            addr: format!("{host}:{port}"),
            health,
        },
        role,
    ))
}

/// The name/value pairs of a RESP3 map or a RESP2 flat array.
fn pairs(v: &Value) -> Option<Vec<(&Value, &Value)>> {
    match v {
        Value::Map(m) => Some(m.iter().map(|(k, v)| (k, v)).collect()),
        Value::Array(a) if a.len() % 2 == 0 => Some(
            a.chunks(2)
                .filter_map(|p| Some((p.first()?, p.get(1)?)))
                .collect(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn bulk(s: &str) -> Value {
        Value::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn node(endpoint: &str, port: i64, role: &str) -> Value {
        Value::Array(vec![
            bulk("id"),
            bulk("a1b2"),
            bulk("port"),
            Value::Integer(port),
            bulk("ip"),
            bulk("10.0.0.1"),
            bulk("endpoint"),
            bulk(endpoint),
            bulk("role"),
            bulk(role),
            bulk("replication-offset"),
            Value::Integer(10),
            bulk("health"),
            bulk("online"),
        ])
    }

    fn shard(slots: &[i64], nodes: Vec<Value>) -> Value {
        Value::Array(vec![
            bulk("slots"),
            Value::Array(slots.iter().map(|&s| Value::Integer(s)).collect()),
            bulk("nodes"),
            Value::Array(nodes),
        ])
    }

    #[test]
    fn shards_are_read_with_endpoints_and_fallbacks() {
        let reply = Value::Array(vec![
            shard(
                &[0, 5460, 10923, 10999],
                vec![node("10.0.0.1", 7000, "master"), node("?", 7003, "replica")],
            ),
            shard(&[], vec![node("", 7001, "master")]),
            shard(&[5461, 5470], vec![node("::1", 7002, "master")]),
            // A master that failed with no replica promoted yet.
            shard(&[11000, 16383], vec![node("10.0.0.4", 7004, "replica")]),
        ]);
        let shards = parse_shards(&reply, "127.0.0.1").expect("parsed");
        assert_eq!(shards.len(), 3);
        assert_eq!(shards[0].master.addr, "10.0.0.1:7000");
        assert_eq!(shards[0].replicas[0].addr, "127.0.0.1:7003");
        assert_eq!(shards[0].ranges, vec![(0, 5460), (10923, 10999)]);
        assert_eq!(shards[1].master.addr, "127.0.0.1:7001");
        assert!(shards[1].ranges.is_empty());
        assert_eq!(shards[2].master.addr, "[::1]:7002");
        assert!(parse_shards(&Value::Error(Bytes::from_static(b"ERR x")), "h").is_err());
    }

    fn answer(epoch: u64, masters: &[(&str, u16, u16)]) -> Answer {
        Answer {
            epoch,
            shards: masters
                .iter()
                .map(|&(addr, from, to)| ShardView {
                    master: NodeView {
                        addr: addr.into(),
                        health: "online".into(),
                    },
                    replicas: Vec::new(),
                    ranges: vec![(from, to)],
                })
                .collect(),
        }
    }

    #[test]
    fn the_newest_epoch_wins_then_the_majority() {
        let old = answer(5, &[("a:1", 0, 16383)]);
        let new = answer(6, &[("b:1", 0, 16383)]);
        let answers = vec![
            ("x".to_string(), old.clone()),
            ("y".to_string(), old.clone()),
            ("z".to_string(), new.clone()),
        ];
        assert_eq!(choose(&answers), Some(&new));
        let tied = vec![
            ("x".to_string(), answer(6, &[("a:1", 0, 16383)])),
            ("y".to_string(), new.clone()),
            ("z".to_string(), new.clone()),
        ];
        assert_eq!(choose(&tied), Some(&new));
        assert_eq!(choose(&[]), None);
    }

    #[test]
    fn redirects_are_read_from_error_replies() {
        let parse = |frame: &[u8]| Redirect::parse(frame, "10.0.0.9");
        assert_eq!(
            parse(b"-MOVED 3999 127.0.0.1:6381\r\n"),
            Some(Redirect::Moved {
                addr: "127.0.0.1:6381".into()
            })
        );
        assert_eq!(
            parse(b"-ASK 3999 :6381\r\n"),
            Some(Redirect::Ask {
                addr: "10.0.0.9:6381".into()
            })
        );
        assert_eq!(
            parse(b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n"),
            Some(Redirect::TryAgain)
        );
        assert_eq!(
            parse(b"-CLUSTERDOWN Hash slot not served\r\n"),
            Some(Redirect::ClusterDown)
        );
        assert_eq!(parse(b"-ERR wrong\r\n"), None);
        assert_eq!(parse(b"+MOVED 1 a:1\r\n"), None);
        assert_eq!(parse(b"-MOVED nonsense\r\n"), None);
    }

    /// A cluster topology whose seed nothing listens on.
    fn unreachable_cluster() -> Arc<Topology> {
        Topology::cluster(
            Cluster::new(
                vec!["127.0.0.1:1".into()],
                Duration::from_secs(3600),
                5,
                Duration::from_secs(10),
            ),
            crate::topology::tests::opts(),
            Duration::from_millis(10),
        )
    }

    #[tokio::test]
    async fn maps_route_slots_and_never_go_back_an_epoch() {
        let topology = unreachable_cluster();
        let cluster = topology.cluster_side().expect("cluster");
        let node = |addr: &str| topology.node(addr);
        let split = answer(7, &[("a:1", 0, 8000), ("b:1", 8001, 16383)]);
        assert!(cluster.publish(SlotMap::build(&split, node, &Verdicts::new())));
        let map = cluster.map();
        assert!(map.is_complete());
        assert_eq!(map.master(0).map(|n| n.addr()), Some("a:1"));
        assert_eq!(map.master(8001).map(|n| n.addr()), Some("b:1"));
        assert_eq!(map.master(16383).map(|n| n.addr()), Some("b:1"));
        let generation = cluster.generation();
        // An older epoch is ignored, whatever it says.
        let stale = answer(6, &[("a:1", 0, 16383)]);
        assert!(!cluster.publish(SlotMap::build(&stale, node, &Verdicts::new())));
        assert_eq!(cluster.map().master(9000).map(|n| n.addr()), Some("b:1"));
        // The same layout again does not count as a move.
        assert!(cluster.publish(SlotMap::build(&split, node, &Verdicts::new())));
        assert_eq!(cluster.generation(), generation);
        // A newer one with a slot missing: published, incomplete, moved.
        let partial = answer(8, &[("a:1", 0, 8000), ("b:1", 8002, 16383)]);
        assert!(cluster.publish(SlotMap::build(&partial, node, &Verdicts::new())));
        let map = cluster.map();
        assert_eq!(map.covered, 16383);
        assert!(map.master(8001).is_none());
        assert_ne!(cluster.generation(), generation);
        // Nodes are shared across maps by address.
        assert!(Arc::ptr_eq(
            map.master(0).expect("a"),
            &topology.node("a:1")
        ));
        assert_eq!(
            topology.slot_master(8001).await.err(),
            Some(crate::topology::RouteError::SlotUncovered { slot: 8001 })
        );
    }

    #[tokio::test]
    async fn replicas_serve_reads_by_their_verdict_for_their_master() {
        let topology = unreachable_cluster();
        let node = |addr: &str| topology.node(addr);
        let mut two = answer(3, &[("a:1", 0, 8000), ("b:1", 8001, 16383)]);
        for (shard, replica) in two.shards.iter_mut().zip(["ra:1", "rb:1"]) {
            shard.replicas.push(NodeView {
                addr: replica.into(),
                health: "online".into(),
            });
        }
        let verdict = |state: &str, addr: &str| ReplicaState {
            addr: addr.into(),
            state: state.into(),
            lag_seconds: Some(0),
            lag_bytes: Some(0),
        };
        let mut verdicts = Verdicts::new();
        verdicts.insert(("a:1".into(), "ra:1".into()), verdict("online", "ra:1"));
        // Judged against another master: no verdict for this shard.
        verdicts.insert(("x:1".into(), "rb:1".into()), verdict("online", "rb:1"));
        let map = SlotMap::build(&two, node, &verdicts);
        let reads: Vec<Vec<&str>> = map
            .shards
            .iter()
            .map(|s| s.reads.iter().map(|n| n.addr()).collect())
            .collect();
        assert_eq!(reads, [vec!["ra:1"], vec![]]);
        assert_eq!(map.shards[1].replica_states[0].state, "unknown");
        // The next map starts from this one's verdicts.
        assert_eq!(map.verdicts().len(), 2);
        // Nothing listens there: no connected replica to read from.
        assert!(map.replica(0).is_none());
        assert!(map.replica(9000).is_none());
    }

    #[tokio::test]
    async fn refresh_requests_are_debounced() {
        let topology = unreachable_cluster();
        spawn(&topology, Duration::from_millis(50));
        let cluster = topology.cluster_side().expect("cluster");
        let started = tokio::time::Instant::now();
        let mut asked = 0;
        while started.elapsed() < Duration::from_millis(500) {
            cluster.request_refresh(RefreshReason::Moved);
            asked += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let moved = cluster.refreshes()[RefreshReason::Moved.index()].1;
        // At most one per 100 ms (plus the one in flight when asking began).
        assert!(asked > 100, "{asked}");
        assert!(
            (1..=7).contains(&moved),
            "{moved} refreshes for {asked} requests"
        );
    }

    #[test]
    fn layouts_ignore_shard_and_range_order() {
        let a = answer(1, &[("a:1", 0, 99), ("b:1", 100, 16383)]);
        let mut b = answer(2, &[("b:1", 100, 16383), ("a:1", 0, 99)]);
        assert_eq!(a.layout(), b.layout());
        b.shards[0].ranges = vec![(100, 200)];
        assert_ne!(a.layout(), b.layout());
    }
}
