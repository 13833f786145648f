//! Accepting clients and shutting down.
//!
//! `Server::run` takes a bound listener and a shutdown future, so tests bind
//! `127.0.0.1:0` and run the real server in-process; `Server::run_listeners`
//! also serves the TLS listener (`listen_tls`). On shutdown it stops
//! accepting, tells every client to finish what it has in flight, and waits
//! up to the grace period.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::client::{self, Context};
use crate::config::Config;
use crate::health::Health;
use crate::metrics::{Gauge, Metrics};
use crate::reload::{ReloadError, ReloadReport, Reloader};
use crate::tls::acceptor::ClientTlsAcceptor;
use crate::tls::connector::BackendTls;
use crate::tls::TlsError;

/// Why the proxy could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("i/o error: {0}")]
    /// A listener or socket failed.
    Io(#[from] std::io::Error),
    /// A certificate, key or CA file of `[proxy.tls]` or `[backend.tls]` cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// A TLS listener was given without `[proxy.tls]`.
    #[error("a TLS listener needs [proxy.tls] (cert, key)")]
    TlsListenerWithoutCertificate,
}

/// The client listeners a proxy serves: plain TCP, TLS, or both.
#[derive(Debug, Default)]
pub struct Listeners {
    /// `listen`: plain TCP.
    pub plain: Option<TcpListener>,
    /// `listen_tls`: TLS with the certificate of `[proxy.tls]`.
    pub tls: Option<TcpListener>,
}

/// What the admin listener reads: readiness, health detail and metrics.
#[derive(Debug)]
pub struct ProxyState {
    /// Readiness and uptime, shared with every client task.
    pub health: Arc<Health>,
    /// The running proxy, once `run` has started it.
    context: OnceLock<Arc<Context>>,
    /// The metrics registry every client records into.
    metrics: Arc<Metrics>,
    /// Hot reload of the config file (SIGHUP, `POST /reload`).
    reloader: Reloader,
}

impl ProxyState {
    /// Whether `/health/ready` is green.
    pub fn is_ready(&self) -> bool {
        self.health.is_ready()
    }

    /// The metrics registry, for the client context and admin commands.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
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
        let (mut credential_errors, mut credential_rotations) = (0, 0);
        if let Some(ctx) = self.context.get() {
            credential_errors = ctx.router.credential_errors();
            credential_rotations = ctx.router.credential_rotations();
            let topology = ctx.router.topology();
            let snapshot = topology.load();
            extra.push(Gauge {
                name: "keygate_master_confirmed",
                help: "1 while a master is confirmed with ROLE.",
                labels: Vec::new(),
                value: if snapshot.master.is_some() { 1.0 } else { 0.0 },
            });
            if let Some(master) = &snapshot.master {
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
            for service in ctx.services.current().all() {
                extra.push(Gauge {
                    name: "keygate_dedicated_connections",
                    help: "Dedicated backend connections held by each service's clients.",
                    labels: vec![("service", service.name.clone())],
                    value: service.dedicated_held() as f64,
                });
            }
        }
        let mut text = self.metrics.render_prometheus(&extra);
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
        text
    }

    /// Re-reads the config file and applies its services; see [`crate::reload`].
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        self.reloader
            .reload(self.context.get().map(Arc::as_ref), &self.metrics)
    }

    /// The `/slowlog` JSON.
    pub fn slowlog_json(&self) -> serde_json::Value {
        self.metrics.slowlog_json()
    }

    /// The `/health` JSON detail.
    pub fn health_json(&self) -> serde_json::Value {
        let backend = self
            .context
            .get()
            .map(|ctx| ctx.router.topology().health_json());
        serde_json::json!({
            "ready": self.is_ready(),
            "uptime_seconds": self.health.started.elapsed().as_secs(),
            "clients": self.context.get().map(|c| c.clients.load(Ordering::Relaxed)),
            "backend": backend,
            "last_reload": self.reloader.status_json(),
        })
    }
}

/// A configured proxy, ready to serve a listener.
pub struct Server {
    config: Arc<Config>,
    state: Arc<ProxyState>,
    /// Loaded from `[proxy.tls]`, if set.
    client_tls: Option<ClientTlsAcceptor>,
}

impl Server {
    /// Builds the proxy from a validated config; backends connect when it runs.
    /// TLS files are loaded here, so a bad one fails the start.
    pub fn new(config: Config) -> Result<Server, ServerError> {
        let client_tls = load_tls(&config)?;
        let metrics = Metrics::from_config(&config);
        Ok(Server {
            client_tls,
            config: Arc::new(config),
            state: Arc::new(ProxyState {
                health: Arc::new(Health::new()),
                context: OnceLock::new(),
                metrics,
                reloader: Reloader::default(),
            }),
        })
    }

    /// Lets SIGHUP and `POST /reload` re-read `path`, the file `config` came from.
    pub fn reload_from(self, path: PathBuf) -> Server {
        self.state.reloader.set_path(path);
        self
    }

    /// The metrics registry, for the client context.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.state.metrics()
    }

    /// The state shared with the admin listener.
    pub fn state(&self) -> Arc<ProxyState> {
        self.state.clone()
    }

    /// Serves clients on `listener` until `shutdown` completes, then lets
    /// in-flight requests finish within the configured grace period.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServerError> {
        let listeners = Listeners {
            plain: Some(listener),
            tls: None,
        };
        self.run_listeners(listeners, shutdown).await
    }

    /// Like [`Server::run`], serving every listener given; the TLS one
    /// needs `[proxy.tls]` in the config.
    pub async fn run_listeners(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServerError> {
        if listeners.tls.is_some() && self.client_tls.is_none() {
            return Err(ServerError::TlsListenerWithoutCertificate);
        }
        let ctx = Arc::new(Context::new(
            self.config.clone(),
            self.state.health.clone(),
            self.state.metrics(),
        ));
        let _ = self.state.context.set(ctx.clone());
        let readiness = tokio::spawn(watch_readiness(ctx.clone()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let tracker = TaskTracker::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = accept(listeners.plain.as_ref()) => {
                    let (mut stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors and the like: back off, keep serving.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    };
                    if !ctx.admit() {
                        tracker.spawn(async move {
                            let _ = stream.write_all(b"-ERR max number of clients reached\r\n").await;
                        });
                        tracing::debug!(%peer, "refused: max_clients reached");
                        continue;
                    }
                    tracker.spawn(client::serve(stream, ctx.clone(), stop_rx.clone()));
                }
                accepted = accept(listeners.tls.as_ref()) => match (accepted, &self.client_tls) {
                    (Ok((stream, peer)), Some(acceptor)) => {
                        let client = serve_tls_client(acceptor.clone(), stream, peer, ctx.clone(), stop_rx.clone());
                        tracker.spawn(client);
                    }
                    (Ok(_), None) => {}
                    (Err(e), _) => {
                        tracing::warn!(error = %e, "accept failed on the TLS listener");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
            }
        }
        drop(listeners);
        tracing::info!("shutting down: waiting for clients to finish");
        let _ = stop_tx.send(true);
        tracker.close();
        let grace = self.config.proxy.shutdown_grace;
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(?grace, "grace period over; closing remaining clients");
        }
        readiness.abort();
        Ok(())
    }
}

/// Loads the TLS files `config` names (certificates, keys, CAs) as a start
/// would: the client side's acceptor, if any, and the backend side's
/// settings. `keygate --check` runs it too, so a missing or bad file is
/// found before a deployment, not at its start.
pub fn load_tls(config: &Config) -> Result<Option<ClientTlsAcceptor>, ServerError> {
    let client_tls = config
        .proxy
        .tls
        .as_ref()
        .map(ClientTlsAcceptor::from_config)
        .transpose()?;
    if let Some(tls) = &config.backend.tls {
        BackendTls::from_config(tls)?;
    }
    Ok(client_tls)
}

/// Accepts on `listener`; never completes when there is none.
async fn accept(
    listener: Option<&TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Runs the TLS handshake, then serves the client like a plain one
/// (including the `max_clients` refusal, sent over TLS so the client can read it).
async fn serve_tls_client(
    acceptor: ClientTlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    ctx: Arc<Context>,
    stop_rx: watch::Receiver<bool>,
) {
    let addresses = client::registry::Peer::of(&stream);
    let Some(stream) = acceptor.accept(stream, peer).await else {
        return;
    };
    let (rd, mut wr) = tokio::io::split(stream);
    if !ctx.admit() {
        tracing::debug!(%peer, "refused: max_clients reached");
        let _ = wr
            .write_all(b"-ERR max number of clients reached\r\n")
            .await;
        let _ = wr.shutdown().await;
        return;
    }
    client::serve_io(rd, wr, ctx, stop_rx, addresses).await;
}

/// Keeps the readiness latch in step with the backend.
async fn watch_readiness(ctx: Arc<Context>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        ctx.state
            .ready
            .store(ctx.router.is_ready(), Ordering::Relaxed);
    }
}
