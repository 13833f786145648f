//! The composition root: keygate assembled from one [`Config`].
//!
//! Every part of the running proxy is built here, once, and each layer is
//! handed only what it uses:
//! - the TLS files of `[proxy.tls]` and `[backend.tls]`, loaded once (a bad
//!   one fails the start): the acceptor goes to the [`server`], the backend
//!   settings to the [`router`](crate::router);
//! - the metrics registry, the readiness latch, the count of connected
//!   clients and the service registry, shared by the client side, the
//!   [`admin`](crate::admin) listener and the [`reload`](crate::reload)er,
//!   which is handed the registry and metrics a reload changes;
//! - when the proxy runs (inside a tokio runtime, which starting backend
//!   connections needs): the backend and topology, the client side's
//!   settings ([`client::Context`]), the readiness watch, then the server's
//!   accept loop.
//!
//! This module uses the layers and no layer uses it, so the arrows between
//! layers point one way: the admin listener reads its [`ProxyState`], never
//! the server; the server runs the client side; reload never sees either.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::admin::ProxyState;
use crate::client::{self, Context};
use crate::config::Config;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::policy::registry::ServiceRegistry;
use crate::policy::service::Services;
use crate::reload::Reloader;
use crate::router::Router;
use crate::server::{self, Listeners};
use crate::tls::acceptor::ClientTlsAcceptor;
use crate::tls::connector::BackendTls;
use crate::tls::TlsError;
use crate::topology::Topology;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A certificate, key or CA file of `[proxy.tls]` or `[backend.tls]` cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// A TLS listener was given without `[proxy.tls]`.
    #[error("a TLS listener needs [proxy.tls] (cert, key)")]
    TlsListenerWithoutCertificate,
}

/// The TLS settings of both sides, loaded from the files the config names.
#[derive(Debug)]
pub struct Tls {
    /// `[proxy.tls]`: the client side's acceptor.
    client: Option<ClientTlsAcceptor>,
    /// `[backend.tls]`: shared by every backend and Sentinel connection.
    backend: Option<Arc<BackendTls>>,
}

/// Loads the TLS files `config` names (certificates, keys, CAs) as a start
/// does. `keygate --check` runs it too, so a missing or bad file is found
/// before a deployment, not at its start.
pub fn load_tls(config: &Config) -> Result<Tls, StartError> {
    let client = config
        .proxy
        .tls
        .as_ref()
        .map(ClientTlsAcceptor::from_config)
        .transpose()?;
    let backend = config
        .backend
        .tls
        .as_ref()
        .map(|tls| BackendTls::from_config(tls).map(Arc::new))
        .transpose()?;
    Ok(Tls { client, backend })
}

/// keygate built from a validated config, ready to run.
pub struct Proxy {
    config: Arc<Config>,
    tls: Tls,
    services: Arc<ServiceRegistry>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    clients: Arc<AtomicUsize>,
    /// What the admin listener reads; it may serve before the proxy runs.
    admin: Arc<ProxyState>,
}

impl Proxy {
    /// Builds every part that needs no runtime; the backend connects when
    /// the proxy runs. TLS files are loaded here, so a bad one fails the start.
    pub fn new(config: Config) -> Result<Proxy, StartError> {
        let tls = load_tls(&config)?;
        let metrics = Metrics::from_config(&config);
        let health = Arc::new(Health::new());
        let services = Arc::new(ServiceRegistry::new(Services::from_config(&config)));
        let clients = Arc::new(AtomicUsize::new(0));
        let reloader = Reloader::new(&config, services.clone(), metrics.clone());
        let admin = Arc::new(ProxyState::new(
            health.clone(),
            metrics.clone(),
            services.clone(),
            clients.clone(),
            reloader,
        ));
        Ok(Proxy {
            config: Arc::new(config),
            tls,
            services,
            health,
            metrics,
            clients,
            admin,
        })
    }

    /// Lets SIGHUP and `POST /reload` re-read `path`, the file `config` came from.
    pub fn reload_from(self, path: PathBuf) -> Proxy {
        self.admin.reload_from(path);
        self
    }

    /// What the admin listener reads: readiness, health detail, metrics, reload.
    pub fn state(&self) -> Arc<ProxyState> {
        self.admin.clone()
    }

    /// Serves clients on `listener` until `shutdown` completes, then lets
    /// in-flight requests finish within the configured grace period.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), StartError> {
        let listeners = Listeners {
            plain: Some(listener),
            tls: None,
        };
        self.run_listeners(listeners, shutdown).await
    }

    /// Like [`Proxy::run`], serving every listener given; the TLS one
    /// needs `[proxy.tls]` in the config. Starts the backend first.
    pub async fn run_listeners(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), StartError> {
        if listeners.tls.is_some() && self.tls.client.is_none() {
            return Err(StartError::TlsListenerWithoutCertificate);
        }
        let near_caches = self.services.near_caches();
        let near_caches = (!near_caches.is_empty()).then(|| near_caches.clone());
        if let Some(caches) = &near_caches {
            caches.spawn_sweeper();
        }
        let router = Router::start(&self.config, self.tls.backend, near_caches);
        let topology = router.topology().clone();
        self.admin
            .backend_started(topology.clone(), router.credential().clone());
        let readiness = tokio::spawn(watch_readiness(self.health.clone(), topology));
        let shared = client::Shared {
            services: self.services,
            router,
            health: self.health,
            metrics: self.metrics,
            clients: self.clients,
        };
        let ctx = Arc::new(Context::new(self.config, shared));
        server::Server::new(ctx, self.tls.client)
            .run(listeners, shutdown)
            .await;
        readiness.abort();
        Ok(())
    }
}

/// Keeps the readiness latch in step with the backend.
async fn watch_readiness(health: Arc<Health>, topology: Arc<Topology>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        health.ready.store(topology.is_ready(), Ordering::Relaxed);
    }
}
