//! The admin HTTP listener: health and metrics, apart from the data path.
//!
//! Routes:
//! - `GET /health/live`: 200 `ok` while the process serves HTTP at all.
//! - `GET /health/ready`: 200 `ready` once a backend master is confirmed,
//!   503 `not ready` before (load balancers route on this one).
//! - `GET /health`: the `ProxyState::health_json` detail.
//! - `GET /metrics`: the Prometheus text exposition.
//! - `GET /hotkeys`: each service's most-read keys, by reads and by bytes
//!   (JSON; `?service=NAME` for one service, `&count=N` for more than ten).
//! - `POST /reload`: re-reads the config file (see [`crate::reload`]); 200
//!   with a short JSON when applied, 400 with the error when the new config
//!   is invalid (the old one stays in force), 409 when keygate has no
//!   config file.
//!
//! Handlers only read [`ProxyState`], the parts of the proxy they report on
//! (reload swaps the service registry, which clients pick up lock-free);
//! they never touch the data path, so a scrape cannot slow clients down
//! beyond rendering the metrics.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;

use crate::backend::credential::Credential;
use crate::health::Health;
use crate::hotkeys::{self, HotKeys, Rank};
use crate::metrics::{Gauge, Metrics};
use crate::policy::registry::ServiceRegistry;
use crate::reload::{ReloadError, ReloadReport, Reloader};
use crate::topology::Topology;

/// Content type of the Prometheus text exposition format 0.0.4.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the admin listener reads: readiness, health detail and metrics.
#[derive(Debug)]
pub struct ProxyState {
    /// Readiness and uptime, shared with every client task.
    pub health: Arc<Health>,
    /// The metrics registry every client records into.
    metrics: Arc<Metrics>,
    /// The services in force, for their dedicated-connection gauges.
    services: Arc<ServiceRegistry>,
    /// Connected clients, counted by the client side.
    clients: Arc<AtomicUsize>,
    /// The backend, once the proxy has started it.
    backend: OnceLock<Backend>,
    /// Hot reload of the config file (SIGHUP, `POST /reload`).
    reloader: Reloader,
}

impl ProxyState {
    /// The admin view of the given parts; the topology follows with
    /// [`ProxyState::backend_started`].
    pub(crate) fn new(
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        services: Arc<ServiceRegistry>,
        clients: Arc<AtomicUsize>,
        reloader: Reloader,
    ) -> ProxyState {
        ProxyState {
            health,
            metrics,
            services,
            clients,
            backend: OnceLock::new(),
            reloader,
        }
    }

    /// The backend is started: `/health` and `/metrics` report on it from now on.
    pub(crate) fn backend_started(&self, topology: Arc<Topology>, credential: Arc<Credential>) {
        let _ = self.backend.set(Backend {
            topology,
            credential,
        });
    }

    /// Lets reloads re-read `path`; see [`Reloader::set_path`].
    pub(crate) fn reload_from(&self, path: std::path::PathBuf) {
        self.reloader.set_path(path);
    }

    /// Whether `/health/ready` is green.
    pub fn is_ready(&self) -> bool {
        self.health.is_ready()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render_metrics(&self) -> String {
        let mut extra = vec![Gauge {
            name: "keygate_ready",
            help: "1 once a backend master is confirmed reachable.",
            labels: Vec::new(),
            value: if self.is_ready() { 1.0 } else { 0.0 },
        }];
        let mut failovers = None;
        let mut refreshes = None;
        // On a cluster backend, the `node` label values of backend times.
        let mut nodes = Vec::new();
        let (mut credential_errors, mut credential_rotations) = (0, 0);
        if let Some(Backend {
            topology,
            credential,
        }) = self.backend.get()
        {
            credential_errors = credential.errors();
            credential_rotations = credential.generation();
            let snapshot = topology.load();
            extra.push(Gauge {
                name: "keygate_master_confirmed",
                help: "1 while a master is confirmed with ROLE.",
                labels: Vec::new(),
                value: if snapshot.master.is_some() { 1.0 } else { 0.0 },
            });
            let cluster = topology.cluster_side();
            if let Some(cluster) = cluster {
                // One series per node of the slot map, so bounded by the
                // cluster's nodes; read at scrape time, off the data path.
                let map = cluster.map();
                for shard in &map.shards {
                    let replicas = shard.replicas.iter().map(|(n, _)| (n, "replica"));
                    for (node, role) in std::iter::once((&shard.master, "master")).chain(replicas) {
                        extra.push(Gauge {
                            name: "keygate_backend_connections",
                            help: "Open connections to a backend node.",
                            labels: vec![
                                ("node", node.addr().to_string()),
                                ("role", role.to_string()),
                            ],
                            value: node.health().connected() as f64,
                        });
                    }
                }
            } else if let Some(master) = &snapshot.master {
                extra.push(Gauge {
                    name: "keygate_backend_connections",
                    help: "Open connections to a backend node.",
                    labels: vec![
                        ("node", master.addr().to_string()),
                        ("role", "master".to_string()),
                    ],
                    value: master.health().connected() as f64,
                });
            }
            failovers = Some(topology.failovers_total());
            if let Some(cluster) = cluster {
                extra.push(Gauge {
                    name: "keygate_slots_covered",
                    help: "Cluster slots with a master in keygate's slot map (16384 when whole).",
                    labels: Vec::new(),
                    value: cluster.map().covered as f64,
                });
                refreshes = Some((cluster.refreshes(), cluster.redirects()));
                nodes = topology.node_addrs();
            }
            for service in self.services.current().all() {
                extra.push(Gauge {
                    name: "keygate_dedicated_connections",
                    help: "Dedicated backend connections held by each service's clients.",
                    labels: vec![("service", service.name.clone())],
                    value: service.dedicated_held() as f64,
                });
            }
        }
        let mut text = self.metrics.render_prometheus_with_nodes(&extra, &nodes);
        let services = self.services.current();
        let near: Vec<(&str, &crate::near_cache::NearCache)> = services
            .all()
            .iter()
            .filter_map(|s| s.near_cache.as_deref().map(|c| (s.name.as_str(), c)))
            .collect();
        crate::near_cache::metrics::render(&near, &mut text);
        text.push_str(&format!(
            "# HELP keygate_backend_credential_errors_total Reads of [backend] password_file that failed (the last good password is kept).\n\
             # TYPE keygate_backend_credential_errors_total counter\n\
             keygate_backend_credential_errors_total {credential_errors}\n\
             # HELP keygate_backend_credential_rotations_total Times the backend password changed (password_file).\n\
             # TYPE keygate_backend_credential_rotations_total counter\n\
             keygate_backend_credential_rotations_total {credential_rotations}\n"
        ));
        if let Some(n) = failovers {
            text.push_str(&format!(
                "# HELP keygate_failovers_total Master changes followed since start.\n\
                 # TYPE keygate_failovers_total counter\n\
                 keygate_failovers_total {n}\n"
            ));
        }
        if let Some((refreshes, redirects)) = refreshes {
            text.push_str(
                "# HELP keygate_redirects_total Cluster redirects keygate followed for its clients, by kind.\n\
                 # TYPE keygate_redirects_total counter\n",
            );
            for (kind, n) in redirects {
                text.push_str(&format!("keygate_redirects_total{{kind=\"{kind}\"}} {n}\n"));
            }
            text.push_str(
                "# HELP keygate_topology_refreshes_total Cluster slot map refreshes, by what asked for them.\n\
                 # TYPE keygate_topology_refreshes_total counter\n",
            );
            for (reason, n) in refreshes {
                text.push_str(&format!(
                    "keygate_topology_refreshes_total{{reason=\"{}\"}} {n}\n",
                    reason.label()
                ));
            }
        }
        text
    }

    /// Re-reads the config file and applies its services; see [`crate::reload`].
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        self.reloader.reload()
    }

    /// The `/slowlog` JSON.
    pub(crate) fn slowlog_json(&self) -> serde_json::Value {
        self.metrics.slowlog_json()
    }

    /// The `/hotkeys` JSON: per service, its top `count` keys by reads and
    /// by bytes (`None` for a service whose hot keys are not counted).
    /// Key names are shown here, on the admin listener, and nowhere else.
    pub fn hot_keys_json(&self, service: Option<&str>, count: usize) -> serde_json::Value {
        let listing = |rank| {
            move |hot: &HotKeys| {
                hot.top(rank, count)
                    .iter()
                    .map(|h| {
                        serde_json::json!({
                            "key": String::from_utf8_lossy(&h.key),
                            "reads": h.reads,
                            "bytes": h.bytes,
                        })
                    })
                    .collect::<Vec<_>>()
            }
        };
        let services = self.services.current();
        let mut out = serde_json::Map::new();
        for s in services.all() {
            if service.is_some_and(|wanted| wanted != s.name) {
                continue;
            }
            let hot = s.hot_keys.as_deref();
            out.insert(
                s.name.clone(),
                serde_json::json!({
                    "by_reads": hot.map(listing(Rank::Reads)),
                    "by_bytes": hot.map(listing(Rank::Bytes)),
                }),
            );
        }
        serde_json::json!({
            "sample_every": hotkeys::SAMPLE_EVERY,
            "services": out,
        })
    }

    /// The near cache's part of `/health`, when a service has one: how
    /// many keys Redis tracks for keygate on each master (the master, or
    /// every master of a cluster): `tracking_total_keys` of its `INFO
    /// stats`, asked on a connection of its own, all at once, within a
    /// second; `null` for a master that does not answer.
    pub async fn near_cache_json(&self) -> Option<serde_json::Value> {
        if self.services.near_caches().is_empty() {
            return None;
        }
        let topology = &self.backend.get()?.topology;
        let masters: Vec<Arc<crate::backend::node::Node>> = match topology.cluster_side() {
            Some(cluster) => cluster
                .map()
                .shards
                .iter()
                .map(|s| s.master.clone())
                .collect(),
            None => vec![topology.load().master.clone()?],
        };
        let mut asked = tokio::task::JoinSet::new();
        for (i, master) in masters.iter().enumerate() {
            let master = master.clone();
            asked.spawn(async move {
                let info = crate::protocol::request::Request::from_args(&["INFO", "stats"]);
                let reply = master.urgent(&info, crate::protocol::Protocol::Resp2);
                let keys = tokio::time::timeout(std::time::Duration::from_secs(1), reply)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .and_then(|reply| {
                        String::from_utf8_lossy(&reply).lines().find_map(|l| {
                            l.strip_prefix("tracking_total_keys:")
                                .and_then(|n| n.trim().parse::<u64>().ok())
                        })
                    });
                (i, keys)
            });
        }
        let mut keys = vec![None; masters.len()];
        while let Some(done) = asked.join_next().await {
            if let Some((slot, n)) = done.ok().and_then(|(i, n)| Some((keys.get_mut(i)?, n))) {
                *slot = n;
            }
        }
        let nodes: Vec<serde_json::Value> = masters
            .iter()
            .zip(keys)
            .map(
                |(m, keys)| serde_json::json!({ "address": m.addr(), "tracking_total_keys": keys }),
            )
            .collect();
        Some(serde_json::json!({ "nodes": nodes }))
    }

    /// The `/health` JSON detail.
    pub fn health_json(&self) -> serde_json::Value {
        let started = self.backend.get();
        serde_json::json!({
            "ready": self.is_ready(),
            "uptime_seconds": self.health.started.elapsed().as_secs(),
            "clients": started.map(|_| self.clients.load(Ordering::Relaxed)),
            "backend": started.map(|backend| backend.topology.health_json()),
            "last_reload": self.reloader.status_json(),
        })
    }
}

/// The started backend, as the admin listener reports on it.
#[derive(Debug)]
struct Backend {
    /// The master and replicas.
    topology: Arc<Topology>,
    /// The data nodes' password (`[backend] password_file` rotations).
    credential: Arc<Credential>,
}

/// Serves `/metrics`, `/health/live`, `/health/ready` and `/health` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ProxyState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The admin routes over `state`.
fn router(state: Arc<ProxyState>) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/slowlog", get(slowlog))
        .route("/hotkeys", get(hot_keys))
        .route("/reload", post(reload))
        .with_state(state)
}

async fn live() -> &'static str {
    "ok"
}

async fn ready(State(state): State<Arc<ProxyState>>) -> (StatusCode, &'static str) {
    if state.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn health(State(state): State<Arc<ProxyState>>) -> impl IntoResponse {
    let mut json = state.health_json();
    if let Some(near) = state.near_cache_json().await {
        json["near_cache"] = near;
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        json.to_string(),
    )
}

async fn metrics(State(state): State<Arc<ProxyState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        state.render_metrics(),
    )
}

/// `GET /slowlog`: the slow log as JSON, newest first.
async fn slowlog(State(state): State<Arc<ProxyState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.slowlog_json().to_string(),
    )
}

/// `GET /hotkeys[?service=NAME][&count=N]`: 404 for an unknown service,
/// 400 for a count that is not a positive number.
async fn hot_keys(State(state): State<Arc<ProxyState>>, uri: Uri) -> impl IntoResponse {
    let (mut service, mut count) = (None, hotkeys::DEFAULT_COUNT);
    for pair in uri.query().unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("service", name)) => service = Some(name.to_string()),
            Some(("count", n)) => match n.parse::<usize>() {
                Ok(n) if n > 0 => count = n.min(hotkeys::MAX_COUNT),
                _ => {
                    return (
                        StatusCode::BAD_REQUEST,
                        [(header::CONTENT_TYPE, "application/json")],
                        r#"{"error":"count must be a positive number"}"#.to_string(),
                    )
                }
            },
            _ => {}
        }
    }
    if let Some(name) = &service {
        if state.services.current().get(name).is_none() {
            return (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"error":"no such service"}"#.to_string(),
            );
        }
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        state.hot_keys_json(service.as_deref(), count).to_string(),
    )
}

/// `POST /reload`: re-reads the config file; the file read runs off the
/// admin runtime's only thread.
async fn reload(State(state): State<Arc<ProxyState>>) -> impl IntoResponse {
    let outcome = tokio::task::spawn_blocking(move || state.reload()).await;
    let (status, body) = match outcome {
        Ok(Ok(report)) => (StatusCode::OK, report.to_json()),
        Ok(Err(error)) => {
            let status = match error {
                ReloadError::Invalid { .. } => StatusCode::BAD_REQUEST,
                ReloadError::NoConfigFile => StatusCode::CONFLICT,
            };
            (
                status,
                serde_json::json!({"ok": false, "error": error.to_string()}),
            )
        }
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({"ok": false, "error": "reload task failed"}),
        ),
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}
