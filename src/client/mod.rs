//! The client side: one task per client connection.
//!
//! The task reads bytes, scans requests, and takes each through the stages
//! in order: the command table, the commands keygate answers itself, the
//! service's policy (one call, a typed decision), then routing to a shared
//! (multiplexed) or dedicated backend connection. Replies go back through
//! the [`queue`] in request order, each rewritten by the reply plan the
//! policy made ([`crate::policy::reply`]).
//!
//! Backpressure: the task stops reading from a client while it has too many
//! replies outstanding, and it writes replies before reading more, so a
//! client that does not read makes keygate stop reading it rather than
//! buffer without bound. The [`budget`] also caps the reply bytes held for
//! the client, counted as they arrive (`max_pending_reply_bytes`), stopping
//! mid-read when needed; past the hard limit (`max_pending_reply_bytes_hard`)
//! the client is closed, with an error in the log ([`held`]).
//!
//! Idle connections hold no buffers: the read buffer is allocated only when
//! bytes are ready, and the read and write buffers and the reply queue are
//! released once everything read has been answered.
//!
//! Where things are, in the order a request meets them:
//! - this file: [`Context`] (what every client task shares), the
//!   `Connection` struct and [`serve`]/[`serve_io`], which admit a client
//!   and hand it to the loop;
//! - [`event_loop`]: the client loop, its events, timers and hand-written
//!   poll; [`buffers`]: how the read buffer grows and is given back
//!   ([`ClientRead`]); [`read_wake`]: skipping reads that cannot have news;
//! - [`stages`]: `on_bytes` and `on_request`, the stages a request takes:
//!   [`local`], [`registry`] and [`tracking`] answer what keygate answers
//!   itself, then one call to the policy ([`crate::policy::decision`])
//!   decides the rest; [`isolation`] runs the keyspace procedures it plans
//!   and confines pub/sub frames; [`database`] SELECT and the database a
//!   request runs in;
//!   [`cluster_emulation`] the one-node cluster a cluster-mode client sees;
//!   [`transaction`] MULTI/EXEC/WATCH and the commands queued inside MULTI;
//! - [`slots`]: on a cluster backend, the slot a request goes to (or its
//!   `CROSSSLOT` refusal); [`redirect`]: the cluster's redirects, absorbed;
//!   [`fan_out`]: SCAN and KEYS over every master;
//! - [`batch`]: requests gathered for a shared connection; [`dedicated`]:
//!   the client's dedicated connection (lease, send, read, timeout, loss,
//!   release); [`pubsub`]: subscriptions on it; [`urgent`]: SCRIPT KILL
//!   and FUNCTION KILL, sent past a busy script;
//! - [`queue`]: replies in request order; [`budget`] and [`held`]: the
//!   reply bytes held for the client;
//! - [`lifecycle`]: the limits on outstanding replies, the state shown in
//!   CLIENT LIST, and what the connection gives back when it ends;
//!   [`session`]: what keygate remembers about the client between
//!   commands; [`rebind`]: following a config reload.

mod batch;
mod budget;
mod buffers;
mod cluster_emulation;
mod database;
mod dedicated;
mod event_loop;
mod fan_out;
mod held;
mod isolation;
mod lifecycle;
pub mod local;
mod near;
mod pubsub;
pub mod queue;
mod read_wake;
mod rebind;
mod redirect;
pub mod registry;
pub mod session;
mod slots;
mod split;
mod stages;
mod tracking;
mod transaction;
mod urgent;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::backend::meter::ReplyMeter;
use crate::config::Config;
use crate::health::Health;
use crate::metrics::{Metrics, Recorder};
use crate::policy::registry::ServiceRegistry;
use crate::policy::service::Service;
use crate::protocol::request::{RequestScanner, ScanLimits};
use crate::router::Router;
pub use buffers::ClientRead;
use dedicated::Dedicated;
use queue::ReplyQueue;
use session::Session;

/// What every client task shares.
#[derive(Debug)]
pub struct Context {
    /// The configuration in force for the proxy side (services may be reloaded).
    pub config: Arc<Config>,
    /// The services in force; a config reload swaps them (see [`rebind`]).
    pub services: Arc<ServiceRegistry>,
    /// Where requests go: the topology of master and replicas.
    pub router: Router,
    /// Readiness and uptime, shared with the admin listener.
    pub state: Arc<Health>,
    /// The registry each connection's recorder hands its samples to.
    pub metrics: Arc<Metrics>,
    /// Request-scanner limits from `[proxy]`.
    pub scan_limits: ScanLimits,
    /// Source of CLIENT IDs.
    pub next_id: AtomicU64,
    /// Every connected client, by CLIENT ID.
    pub client_table: registry::ClientTable,
    /// Connected clients (the admin listener's `/health` reads it too).
    pub clients: Arc<AtomicUsize>,
    /// Failed AUTH and HELLO AUTH attempts.
    pub auth_failures: AtomicU64,
    /// The ports the plain and TLS listeners are bound to, once serving
    /// (a `:0` in the config is known only then): cluster emulation
    /// announces them.
    pub listening: std::sync::OnceLock<ListenPorts>,
}

/// The ports keygate's client listeners are bound to.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ListenPorts {
    /// The plain-TCP listener's.
    pub plain: Option<u16>,
    /// The TLS listener's.
    pub tls: Option<u16>,
}

/// The parts of the running proxy a [`Context`] is given: built once, at
/// start, and shared with whoever else reads them.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The services in force, which a reload replaces.
    pub(crate) services: Arc<ServiceRegistry>,
    /// The started backend.
    pub(crate) router: Router,
    /// Readiness and uptime.
    pub(crate) health: Arc<Health>,
    /// The metrics registry.
    pub(crate) metrics: Arc<Metrics>,
    /// The count of connected clients.
    pub(crate) clients: Arc<AtomicUsize>,
}

impl Context {
    /// Counts one more client unless `max_clients` are connected: false
    /// refuses it. One atomic step, so a storm of connections accepted
    /// before any of them runs cannot overshoot the limit. An admitted
    /// client is then served by [`serve`] or [`serve_io`], which give the
    /// count back when it ends.
    pub fn admit(&self) -> bool {
        let max = self.config.proxy.max_clients;
        self.clients
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// The client side's settings derived from `config`, over the `shared` parts.
    pub(crate) fn new(config: Arc<Config>, shared: Shared) -> Context {
        let scan_limits = ScanLimits {
            max_bulk_len: config.proxy.proto_max_bulk_len,
            ..ScanLimits::default()
        };
        Context {
            services: shared.services,
            router: shared.router,
            state: shared.health,
            metrics: shared.metrics,
            scan_limits,
            next_id: AtomicU64::new(1),
            client_table: registry::ClientTable::default(),
            clients: shared.clients,
            auth_failures: AtomicU64::new(0),
            listening: std::sync::OnceLock::new(),
            config,
        }
    }
}

/// One client connection's state between events.
struct Connection {
    ctx: Arc<Context>,
    session: Session,
    scanner: RequestScanner,
    queue: ReplyQueue,
    dedicated: Option<Dedicated>,
    /// Catch-all patterns standing for the client's patterns that may
    /// match keyspace notifications (see [`pubsub::PatternAliases`]).
    patterns: pubsub::PatternAliases,
    /// Requests gathered for a shared-connection batch, and batches sealed
    /// but not yet submitted.
    batch: batch::PendingBatch,
    /// When the bytes being processed were read: latency starts here.
    read_at: Instant,
    recorder: Recorder,
    /// The service this connection is admitted and counted under (the
    /// connections gauge and the service's `max_clients`).
    admitted: Option<Arc<Service>>,
    /// The clients gauge counts this connection (`client_connected` ran), so
    /// `Drop` must take it off again.
    counted: bool,
    /// Stop reading; close once every reply is written.
    closing: bool,
    out: BytesMut,
    /// A keyspace procedure still running; later requests wait for it.
    procedure: Option<tokio::task::JoinHandle<()>>,
    /// Caps the reply bytes this client may have in flight.
    budget: budget::ReplyBudget,
    /// The reply bytes held for this client, counted as they arrive.
    meter: Arc<ReplyMeter>,
    /// `on_bytes` stopped with complete requests left in the read buffer.
    backlog: bool,
    /// This client's entry in the context's table of clients.
    entry: Arc<registry::ClientEntry>,
    /// Which of its reads are sampled for the service's hot keys.
    hot_keys: crate::hotkeys::Sampler,
    /// Near-cache hits not yet recorded (recorded once per read).
    near_hits: near::HitTally,
    /// Near-cache hits are copied here and split off as their answers.
    near_answers: BytesMut,
}

/// Serves one client until it disconnects, QUITs, breaks the protocol or
/// keygate shuts down. The client must have been admitted
/// ([`Context::admit`]); its count is given back when it ends.
pub async fn serve(stream: TcpStream, ctx: Arc<Context>, shutdown: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let peer = registry::Peer::of(&stream);
    let (rd, wr) = stream.into_split();
    serve_io(rd, wr, ctx, shutdown, peer).await
}

/// [`serve`] on any byte stream's two halves (a TLS connection's, say);
/// generic so the plain TCP path keeps its lock-free owned halves.
pub async fn serve_io<R, W>(
    rd: R,
    mut wr: W,
    ctx: Arc<Context>,
    shutdown: watch::Receiver<bool>,
    peer: registry::Peer,
) where
    R: ClientRead,
    W: AsyncWrite + Unpin,
{
    // The client was counted by `Context::admit`; `Drop` gives it back.
    let id = ctx.next_id.fetch_add(1, Ordering::Relaxed);
    let entry = ctx.client_table.add(id, peer, ctx.config.backend.database);
    let kill = registry::KillSignal::new(entry.clone());
    let mut conn = Connection {
        entry,
        session: Session::new(id, None, ctx.config.backend.database),
        scanner: RequestScanner::new(ctx.scan_limits),
        queue: ReplyQueue::default(),
        dedicated: None,
        patterns: Default::default(),
        batch: batch::PendingBatch::for_backend(ctx.router.cluster().is_some()),
        read_at: Instant::now(),
        recorder: ctx.metrics.recorder(),
        admitted: None,
        counted: false,
        closing: *shutdown.borrow(),
        out: BytesMut::new(),
        procedure: None,
        hot_keys: crate::hotkeys::Sampler::default(),
        near_hits: Default::default(),
        near_answers: BytesMut::new(),
        budget: budget::ReplyBudget::new(ctx.config.proxy.max_pending_reply_bytes),
        meter: Arc::new(ReplyMeter::new(ctx.config.proxy.pending_reply_hard_limit())),
        backlog: false,
        ctx,
    };
    conn.start_in_current_services();
    conn.entry.identify(&conn.session);
    if let Some(default) = conn.session.service.clone() {
        if !default.try_admit() {
            let _ = wr
                .write_all(b"-ERR max number of clients reached for service 'default'\r\n")
                .await;
            let _ = wr.flush().await;
            return; // `Drop` takes the connection off `clients`.
        }
        conn.admitted = Some(default);
    }
    conn.ctx.metrics.client_connected(conn.admitted_index());
    conn.counted = true;
    event_loop::run(conn, rd, wr, shutdown, kill).await;
}
