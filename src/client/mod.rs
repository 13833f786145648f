//! The client side: one task per client connection.
//!
//! The task reads bytes, scans requests, and takes each through the stages
//! in order: the command table, the commands keygate answers itself, the
//! service's policy, then routing to a shared (multiplexed) or dedicated
//! backend connection. Replies go back through the [`queue`] in request
//! order.
//!
//! Backpressure: the task stops reading from a client while it has too many
//! replies outstanding, and it writes replies before reading more, so a
//! client that does not read makes keygate stop reading it rather than
//! buffer without bound. The [`budget`] also caps the reply bytes in
//! flight (`max_pending_reply_bytes`), stopping mid-read when needed.
//!
//! Idle connections hold no buffers: the read buffer is allocated only when
//! bytes are ready, and the read and write buffers and the reply queue are
//! released once everything read has been answered.

mod batch;
mod budget;
mod governance;
mod isolation;
pub mod local;
mod pubsub;
pub mod queue;
mod read_wake;
mod rebind;
pub mod session;

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::backend::connect::REPLY_MAX_DEPTH;
use crate::backend::dedicated::DedicatedLease;
use crate::backend::node::Node;
use crate::backend::BackendError;
use crate::command::keyword::is_keyword;
use crate::command::{self, CommandSpec, Flags};
use crate::config::Config;
use crate::metrics::{ErrorKind, Metrics, Recorder};
use crate::policy::access;
use crate::policy::registry::ServiceRegistry;
use crate::policy::service::{DedicatedPermit, Service, Services};
use crate::protocol::encode;
use crate::protocol::reply::ReplyScanner;
use crate::protocol::request::{Request, RequestScanner, ScanLimits};
use crate::router::{self, ConnectionEffect, Router};
use crate::server::ProxyState;
use isolation::Isolated;
use local::LocalAnswer;
use queue::{CommandReply, ReplyPlan, ReplyQueue};
use session::Session;

/// Most reply slots a client may have outstanding before keygate stops
/// reading from it.
const MAX_SLOTS: usize = 1024;
/// Most commands a client may have in flight (sent, reply not yet written)
/// before keygate stops reading from it. Slots alone do not bound this: one
/// slot carries a whole read's worth of pipelined commands, so a client that
/// pipelines large reads and never reads replies could otherwise make keygate
/// hold gigabytes of replies. This caps what it holds at this many replies.
const MAX_PENDING_COMMANDS: usize = 4096;
/// Bytes the read buffer grows by when it has less than [`READ_RESERVE`] free.
const READ_CHUNK: usize = 16 * 1024;
/// Least free space in the read buffer before a read.
const READ_RESERVE: usize = 4 * 1024;
/// The read buffer of a client that holds none (new, or idle and given
/// back): enough for a few commands, so an idle connection stays small.
const FIRST_READ: usize = 1024;

/// What every client task shares.
#[derive(Debug)]
pub struct Context {
    /// The configuration in force for the proxy side (services may be reloaded).
    pub config: Arc<Config>,
    /// The services in force; a config reload swaps them (see [`rebind`]).
    pub services: ServiceRegistry,
    /// Where requests go: the topology of master and replicas.
    pub router: Router,
    /// Readiness and health, shared with the admin listener.
    pub state: Arc<ProxyState>,
    /// The registry each connection's recorder hands its samples to.
    pub metrics: Arc<Metrics>,
    /// Request-scanner limits from `[proxy]`.
    pub scan_limits: ScanLimits,
    /// Source of CLIENT IDs.
    pub next_id: AtomicU64,
    /// Connected clients.
    pub clients: AtomicUsize,
    /// Failed AUTH and HELLO AUTH attempts.
    pub auth_failures: AtomicU64,
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

    /// Builds the shared state and starts the backend connections.
    pub fn new(config: Arc<Config>, state: Arc<ProxyState>, metrics: Arc<Metrics>) -> Context {
        let scan_limits = ScanLimits {
            max_bulk_len: config.proxy.proto_max_bulk_len,
            ..ScanLimits::default()
        };
        Context {
            services: ServiceRegistry::new(Services::from_config(&config)),
            router: Router::start(&config),
            state,
            metrics,
            scan_limits,
            next_id: AtomicU64::new(1),
            clients: AtomicUsize::new(0),
            auth_failures: AtomicU64::new(0),
            config,
        }
    }
}

/// The client's dedicated backend connection and its reading state.
struct Dedicated {
    lease: DedicatedLease,
    scanner: ReplyScanner,
    /// Requests not yet written to it.
    out: BytesMut,
    /// Its subscriptions as Redis confirmed them: while it has any, it is
    /// this client's (until it unsubscribes from all, RESET or disconnect).
    subscriptions: pubsub::Subscriptions,
    /// When the first awaited non-blocking reply is overdue.
    deadline: Option<Instant>,
    /// The node it is connected to (always the master when leased).
    node: Arc<Node>,
    /// Counts it against the service's `max_dedicated` while held.
    _permit: Option<DedicatedPermit>,
    /// When it was leased or last answered: idle time starts here (or at
    /// the client's last request, if later).
    idle_since: Instant,
    /// Completes when the topology stops treating `node` as master; `None`
    /// once it has. Kept across the loop's polls (a fresh `changed()` each
    /// turn would leave the watch's waiter list, and a demotion would wake
    /// nobody).
    demoted: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>,
}

/// One client connection's state between events.
struct Connection {
    ctx: Arc<Context>,
    session: Session,
    scanner: RequestScanner,
    queue: ReplyQueue,
    dedicated: Option<Dedicated>,
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
    /// `on_bytes` stopped with complete requests left in the read buffer.
    backlog: bool,
}

/// Serves one client until it disconnects, QUITs, breaks the protocol or
/// keygate shuts down. The client must have been admitted
/// ([`Context::admit`]); its count is given back when it ends.
pub async fn serve(stream: TcpStream, ctx: Arc<Context>, shutdown: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    serve_io(rd, wr, ctx, shutdown).await
}

/// [`serve`] on any byte stream's two halves (a TLS connection's, say);
/// generic so the plain TCP path keeps its lock-free owned halves.
pub async fn serve_io<R, W>(
    mut rd: R,
    mut wr: W,
    ctx: Arc<Context>,
    shutdown: watch::Receiver<bool>,
) where
    R: ClientRead,
    W: AsyncWrite + Unpin,
{
    // The client was counted by `Context::admit`; `Drop` gives it back.
    let id = ctx.next_id.fetch_add(1, Ordering::Relaxed);
    let mut conn = Connection {
        session: Session::new(id, None),
        scanner: RequestScanner::new(ctx.scan_limits),
        queue: ReplyQueue::default(),
        dedicated: None,
        batch: batch::PendingBatch::default(),
        read_at: Instant::now(),
        recorder: ctx.metrics.recorder(),
        admitted: None,
        counted: false,
        closing: *shutdown.borrow(),
        out: BytesMut::new(),
        procedure: None,
        budget: budget::ReplyBudget::new(ctx.config.proxy.max_pending_reply_bytes),
        backlog: false,
        ctx,
    };
    conn.start_in_current_services();
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
    // One signal for the whole connection: a fresh `changed()` every turn
    // would join and leave the watch's waiter list on every request.
    let mut shutdown_signal = ShutdownSignal::new(shutdown);
    let mut rbuf = BytesMut::new();
    let idle_timeout = conn.ctx.config.proxy.idle_timeout;
    let mut last_activity = Instant::now();
    let mut dedicated_timer = Timer::default();
    let mut idle_timer = Timer::default();
    let mut housekeeping_timer = Timer::default();
    let mut housekeeping = Housekeeping::default();
    // Spares polling the client's socket on wake-ups that were not its own.
    let mut read_wake = read_wake::ReadWake::default();
    loop {
        if conn.closing && conn.queue.is_empty() {
            break;
        }
        let can_read = !conn.closing && conn.may_take_requests();
        let deadline = conn.dedicated_deadline();
        let idle_at = match conn.dedicated {
            None => idle_timeout
                .filter(|_| conn.queue.is_empty())
                .map(|t| last_activity + t),
            Some(_) => conn.dedicated_idle_at(last_activity),
        };
        let watch = Watch {
            read: can_read && !conn.backlog,
            backlog: can_read && conn.backlog,
            front: conn.queue.front_is_shared(),
            shutdown: !conn.closing,
            deadline,
            idle_at,
            housekeeping: housekeeping.due(&conn.recorder),
        };
        let event = std::future::poll_fn(|cx| {
            if watch.shutdown && shutdown_signal.poll(cx).is_ready() {
                return Poll::Ready(Event::Shutdown);
            }
            if housekeeping_timer
                .poll_fired(cx, watch.housekeeping)
                .is_ready()
            {
                return Poll::Ready(Event::Housekeeping);
            }
            if watch.front && conn.queue.poll_front_answered(cx).is_ready() {
                return Poll::Ready(Event::FrontAnswered);
            }
            if conn.dedicated.is_some() {
                if let Poll::Ready(read) = poll_dedicated(&mut conn.dedicated, cx) {
                    return Poll::Ready(Event::DedicatedRead(read));
                }
            }
            if dedicated_timer.poll_fired(cx, watch.deadline).is_ready() {
                return Poll::Ready(Event::DedicatedTimeout);
            }
            if watch.backlog {
                return Poll::Ready(Event::Backlog);
            }
            if watch.read {
                let read =
                    read_wake.poll(cx, |cx| std::pin::pin!(rd.read_some(&mut rbuf)).poll(cx));
                if let Poll::Ready(read) = read {
                    return Poll::Ready(Event::ClientRead(read));
                }
            }
            if idle_timer.poll_fired(cx, watch.idle_at).is_ready() {
                return Poll::Ready(Event::Idle);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::ClientRead(Ok(0) | Err(_)) => break,
            Event::Idle => {
                conn.on_idle();
                break;
            }
            Event::ClientRead(Ok(n)) => {
                last_activity = Instant::now();
                conn.read_at = last_activity;
                conn.recorder.bytes_in(n);
                conn.on_bytes(&mut rbuf).await;
            }
            Event::Backlog => conn.on_bytes(&mut rbuf).await,
            Event::FrontAnswered => {}
            Event::DedicatedRead(read) => conn.on_dedicated_read(read),
            Event::DedicatedTimeout => conn.on_dedicated_timeout(),
            Event::Housekeeping => {
                conn.recorder.flush_if_due();
                if housekeeping.tick() && conn.queue.is_empty() && !conn.backlog {
                    // Idle for a whole tick: give back what the last burst grew.
                    conn.release_buffers(&mut rbuf);
                    housekeeping.released();
                }
                continue;
            }
            Event::Shutdown => conn.closing = true,
        }
        housekeeping.active();
        let (out_before, pending_before) = (conn.out.len(), conn.queue.commands_pending());
        conn.queue.drain_ready(&mut conn.out, &mut conn.recorder);
        conn.budget.observe(
            conn.out.len().saturating_sub(out_before),
            pending_before.saturating_sub(conn.queue.commands_pending()),
        );
        conn.release_dedicated_if_clean();
        if !conn.out.is_empty() {
            // flush: TLS holds records until flushed; a no-op on plain TCP.
            if wr.write_all(&conn.out).await.is_err() || wr.flush().await.is_err() {
                break;
            }
            conn.recorder.bytes_out(conn.out.len());
            conn.out.clear();
        }
        if conn.queue.is_empty()
            && !conn.backlog
            && conn.out.capacity() + rbuf.capacity() > RETAIN_LIMIT
        {
            // A burst grew the buffers past what an active client keeps.
            conn.release_buffers(&mut rbuf);
        }
    }
    conn.finish();
}

/// What woke the client loop: one source per turn.
enum Event {
    /// The client's socket gave bytes, end of stream or an error.
    ClientRead(std::io::Result<usize>),
    /// Complete requests left in the read buffer may be taken now.
    Backlog,
    /// The front slot's shared-connection reply arrived.
    FrontAnswered,
    /// The dedicated connection gave bytes or failed.
    DedicatedRead(std::io::Result<usize>),
    /// An awaited dedicated reply is overdue.
    DedicatedTimeout,
    /// The client was idle for `idle_timeout`, or held a dedicated
    /// connection idle for `dedicated_idle_timeout`.
    Idle,
    /// The housekeeping tick or the metrics hand-over is due.
    Housekeeping,
    /// Keygate is shutting down.
    Shutdown,
}

/// The sources the client loop waits on this turn, worked out once before
/// it waits: a disabled source is not polled at all (unlike `select!`,
/// which builds every branch's future on every turn).
struct Watch {
    /// The client may send more requests (and none are held back).
    read: bool,
    /// Complete requests wait in the read buffer and may be taken.
    backlog: bool,
    /// The front slot waits on a shared connection.
    front: bool,
    /// Not closing yet: a shutdown would change something.
    shutdown: bool,
    /// When the first awaited dedicated reply is overdue.
    deadline: Option<Instant>,
    /// When an idle client is disconnected.
    idle_at: Option<Instant>,
    /// The housekeeping tick or the metrics hand-over, whichever is first.
    housekeeping: Option<Instant>,
}

/// How the client loop reads a client's bytes.
///
/// Plain TCP waits for readiness whenever nothing is pending and only then
/// reserves buffer space, so an idle client holds no more read buffer than
/// it has (thousands of idle connections stay a few KiB each); a TLS stream
/// has no such readiness of its own and reads into the buffer directly.
pub trait ClientRead: Send {
    /// Reads what is available into `buf`; `Ok(0)` is end of stream.
    fn read_some<'a>(
        &'a mut self,
        buf: &'a mut BytesMut,
    ) -> impl std::future::Future<Output = std::io::Result<usize>> + Send + 'a;
}

/// Makes room for one more read: a small first buffer for a new or idle
/// client (most send a few small commands, or nothing for a long while),
/// a [`READ_CHUNK`] more once it reads more than that.
fn reserve_for_read(buf: &mut BytesMut) {
    if buf.capacity() == 0 {
        buf.reserve(FIRST_READ);
    } else if buf.capacity() - buf.len() < READ_RESERVE {
        buf.reserve(READ_CHUNK);
    }
}

impl ClientRead for tokio::net::tcp::OwnedReadHalf {
    async fn read_some(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        if buf.is_empty() {
            // Nothing pending: no more buffer until there is data, so an idle
            // client holds only what it has. Through the socket's own waker
            // slot, not `readable()`: the client loop drops this future on
            // every turn it stays pending, and `readable()`'s waiter would
            // leave with it.
            let stream: &TcpStream = self.as_ref();
            std::future::poll_fn(|cx| stream.poll_read_ready(cx)).await?;
        }
        reserve_for_read(buf);
        // `read_buf` rather than `try_read_buf`: a short read tells tokio the
        // socket is drained, which saves the `EAGAIN` read per request that
        // `try_read_buf` needs to learn the same.
        self.read_buf(buf).await
    }
}

impl<T: AsyncRead + Send> ClientRead for tokio::io::ReadHalf<T> {
    async fn read_some(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        reserve_for_read(buf);
        self.read_buf(buf).await
    }
}

/// Buffers an active client keeps between requests (read buffer plus
/// output buffer); more is given back as soon as everything is answered.
const RETAIN_LIMIT: usize = 4 * READ_CHUNK;

/// The client loop's periodic chores: handing metrics over and giving back
/// an idle client's buffers. Its deadline moves once a tick, not once a
/// request, so a busy client re-arms no timer; a client idle for a whole
/// tick has its buffers released, so thousands of idle connections stay
/// small while a busy one reuses its buffers instead of reallocating them on
/// every request.
#[derive(Default)]
struct Housekeeping {
    /// The next tick, while buffers are held.
    next: Option<Instant>,
    /// A request was handled since the last tick.
    busy: bool,
}

impl Housekeeping {
    /// How often an idle client's buffers are checked.
    const TICK: Duration = Duration::from_secs(1);

    /// The client handled something: hold its buffers for at least a tick.
    fn active(&mut self) {
        self.busy = true;
        if self.next.is_none() {
            self.next = Some(Instant::now() + Self::TICK);
        }
    }

    /// When the loop must wake next: the tick or the metrics hand-over.
    fn due(&self, recorder: &Recorder) -> Option<Instant> {
        let flush = recorder.flush_due_at().map(Instant::from_std);
        match (self.next, flush) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A wake-up: true when a whole tick passed without activity. Moves the
    /// tick on either way, so a client that stays busy or cannot give its
    /// buffers back (a blocked command) is looked at once a tick, not in a
    /// loop.
    fn tick(&mut self) -> bool {
        let Some(next) = self.next else {
            return false;
        };
        let now = Instant::now();
        if now < next {
            return false; // the metrics hand-over woke the loop
        }
        self.next = Some(now + Self::TICK);
        !std::mem::take(&mut self.busy)
    }

    /// The buffers were given back: no tick until the client is active again.
    fn released(&mut self) {
        self.next = None;
    }
}

/// A timer re-armed only when its deadline changes, so the client loop does
/// not register a new timer on every turn (the metrics hand-over deadline,
/// for one, stays the same for a second at a time).
///
/// Once the sleep has registered the task's waker, later turns only look at
/// whether it has elapsed (an atomic load) instead of polling it again: the
/// client loop polls every branch on every wake-up, once per request.
struct Timer {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    armed: Option<Instant>,
    /// The sleep was polled since it was armed and holds the task's waker.
    registered: bool,
}

impl Default for Timer {
    fn default() -> Self {
        Timer {
            sleep: Box::pin(tokio::time::sleep(Duration::from_secs(86_400))),
            armed: None,
            registered: false,
        }
    }
}

impl Timer {
    /// Ready once `at` has passed; never when `at` is `None`. A timer that
    /// fired is disarmed, so the same `at` arms it again.
    ///
    /// Inlined: the usual answers (no deadline, or armed for the same one
    /// and not elapsed) cost a few loads, not a call.
    #[inline]
    fn poll_fired(&mut self, cx: &mut std::task::Context<'_>, at: Option<Instant>) -> Poll<()> {
        match at {
            None => Poll::Pending,
            Some(at) if self.registered && self.armed == Some(at) && !self.sleep.is_elapsed() => {
                Poll::Pending
            }
            Some(at) => self.poll_sleep(cx, at),
        }
    }

    /// Arms the sleep for `at` if it is not already, and polls it.
    #[inline(never)]
    fn poll_sleep(&mut self, cx: &mut std::task::Context<'_>, at: Instant) -> Poll<()> {
        if self.armed != Some(at) {
            self.sleep.as_mut().reset(at);
            self.armed = Some(at);
        }
        // Unconstrained: a `Pending` from the cooperative budget would not
        // register the waker, and `registered` would lie.
        let poll = std::pin::pin!(tokio::task::unconstrained(self.sleep.as_mut())).poll(cx);
        self.registered = poll.is_pending();
        if poll.is_ready() {
            self.armed = None;
        }
        poll
    }
}

/// Completes when keygate starts shutting down (or the signal's sender is
/// gone). Polled on every turn of the client loop, so after the first poll
/// has put the task's waker in the watch's waiter list, a turn only compares
/// versions (inline) instead of joining the list again.
struct ShutdownSignal {
    /// A second receiver that only looks at the version.
    probe: watch::Receiver<bool>,
    /// Waits on the watch, holding the task's place in its waiter list.
    changed: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
    /// `changed` was polled and holds the task's waker.
    registered: bool,
    /// `changed` completed: it must not be polled again.
    fired: bool,
}

impl ShutdownSignal {
    fn new(mut shutdown: watch::Receiver<bool>) -> ShutdownSignal {
        let probe = shutdown.clone();
        ShutdownSignal {
            probe,
            changed: Box::pin(tokio::task::unconstrained(async move {
                let _ = shutdown.changed().await;
            })),
            registered: false,
            fired: false,
        }
    }

    /// Ready once keygate is shutting down (and from then on).
    #[inline]
    fn poll(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.registered && !self.probe.has_changed().unwrap_or(true) {
            return Poll::Pending;
        }
        self.poll_changed(cx)
    }

    #[inline(never)]
    fn poll_changed(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.fired {
            return Poll::Ready(());
        }
        let poll = self.changed.as_mut().poll(cx);
        self.registered = poll.is_pending();
        self.fired = poll.is_ready();
        poll
    }
}

/// Completes when `demotions` changes (or its sender is gone).
fn demotion_of(
    mut demotions: watch::Receiver<u64>,
) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let _ = demotions.changed().await;
    })
}

/// Polls the dedicated connection for reply bytes, or for its node's
/// demotion. Both keep their registration between polls: the read through
/// the socket's own waker slot, the demotion through `demoted`.
fn poll_dedicated(
    d: &mut Option<Dedicated>,
    cx: &mut std::task::Context<'_>,
) -> Poll<std::io::Result<usize>> {
    let Some(d) = d else {
        return Poll::Pending;
    };
    let demoted = match d.demoted.as_mut() {
        Some(demotion) => demotion.as_mut().poll(cx).is_ready(),
        None => true,
    };
    if demoted {
        // topology: a dedicated connection to a demoted master is treated
        // as lost (its client gets an error and is closed).
        d.demoted = None;
        return Poll::Ready(Err(std::io::Error::other("node is no longer master")));
    }
    let conn = &mut *d.lease;
    std::pin::pin!(conn.stream.read_buf(&mut conn.read_buf)).poll(cx)
}

/// The reply to a command that needs a login first.
const NOAUTH: &str = "NOAUTH Authentication required.";

/// Why the stages stopped with a request: `None` when it was answered (or
/// refused) here, or the work it left that waits on a backend.
type Stopped = Option<Deferred>;

/// Work a request leaves that waits on a backend; it runs before the next
/// request is taken, so nothing overtakes it.
enum Deferred {
    /// A request for the client's dedicated connection (leased first if needed).
    Dedicated {
        frames: Vec<Bytes>,
        effect: ConnectionEffect,
        /// A SUBSCRIBE-family command: how its confirmations are counted.
        subscription: Option<pubsub::SubscriptionCall>,
        reply: CommandReply,
        suppress: bool,
    },
    /// A keyspace-wide command of a namespaced service, run as a procedure.
    Procedure(isolation::ProcedureCall),
}

/// A request refused by keygate's own stages: the error to answer, and
/// whether Redis gives that error only when it runs the command (so inside
/// MULTI it belongs in EXEC's reply, see [`Connection::refuse`]).
pub(super) struct Refused {
    text: String,
    at_run: bool,
}

impl Refused {
    pub(super) fn new(text: String, at_run: bool) -> Refused {
        Refused { text, at_run }
    }
}

fn error_reply(msg: &str) -> Bytes {
    let mut out = BytesMut::new();
    encode::error(&mut out, msg);
    out.freeze()
}

impl Connection {
    /// Gives back the storage a burst grew: the write buffer, the reply
    /// queue's and the batch's, and the read buffer if it holds nothing.
    fn release_buffers(&mut self, rbuf: &mut BytesMut) {
        self.out = BytesMut::new();
        self.queue.release_memory();
        self.batch.release_memory();
        if rbuf.is_empty() {
            *rbuf = BytesMut::new();
        }
    }

    /// Takes every complete request off `rbuf` through the pipeline.
    async fn on_bytes(&mut self, rbuf: &mut BytesMut) {
        self.backlog = false;
        loop {
            if !self.may_take_requests() {
                // Over a limit: the rest waits until replies are written.
                self.backlog = !rbuf.is_empty();
                break;
            }
            match self.scanner.scan(rbuf) {
                Ok(Some(req)) => {
                    // The stages are synchronous; only work that waits on a
                    // backend is awaited, before the next request is taken.
                    if let Err(Some(deferred)) = self.on_request(req) {
                        self.run_deferred(deferred).await;
                    }
                    if self.batch.has_sealed() {
                        self.submit_sealed().await;
                    }
                    if self.closing {
                        // QUIT (or lost connection state): like Redis, run
                        // nothing the client pipelined after it.
                        rbuf.clear();
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let msg = format!("ERR Protocol error: {e}");
                    tracing::debug!(client = self.session.id, error = %e, "protocol error; closing");
                    self.reply(error_reply(&msg), false);
                    self.closing = true;
                    rbuf.clear();
                    break;
                }
            }
        }
        self.flush_batch().await;
        self.flush_dedicated().await;
    }

    /// Whether the client may have more requests taken: its outstanding
    /// replies are within the slot, command and reply-byte limits.
    fn may_take_requests(&self) -> bool {
        let in_flight = self.queue.commands_pending() + self.batch.commands();
        self.queue.len() < MAX_SLOTS
            && in_flight < MAX_PENDING_COMMANDS
            && self.budget.allows(in_flight)
    }

    /// A reply keygate made: it goes after everything already queued.
    fn reply(&mut self, reply: Bytes, suppress: bool) {
        self.seal_batch();
        self.queue.push_ready(reply, suppress);
    }

    /// An error reply; inside MULTI it also dooms the transaction, as Redis
    /// does for a command rejected while queuing. Returns the stages'
    /// verdict for a request answered here.
    fn reject(
        &mut self,
        command: &'static str,
        kind: ErrorKind,
        msg: &str,
        suppress: bool,
    ) -> Stopped {
        let service = self.session.service.as_ref().map(|s| s.index);
        self.recorder.error(service, command, kind);
        if self.session.tx.open {
            self.session.tx.poisoned = true;
        }
        self.reply(error_reply(msg), suppress);
        None
    }

    /// A request keygate refuses itself. Inside MULTI, an error Redis
    /// answers only when it runs the command (its own errors for arguments
    /// it cannot parse) is answered as Redis does: the command is queued
    /// (a PING takes its place, keygate never forwards what it cannot
    /// read) and its element of EXEC's reply is the error. Anything else
    /// dooms the transaction, as Redis's refusals while queuing do.
    fn refuse(&mut self, spec: &'static CommandSpec, refused: Refused, suppress: bool) -> Stopped {
        if !(refused.at_run && self.session.tx.open) {
            return self.reject(spec.name, ErrorKind::Policy, &refused.text, suppress);
        }
        let service = self.session.service.as_ref().map(|s| s.index);
        self.recorder.error(service, spec.name, ErrorKind::Policy);
        let reply = CommandReply {
            plan: ReplyPlan::Replace(error_reply(&refused.text)),
            ..CommandReply::plain(spec.name, service)
        };
        let reply = self.track_transaction(spec, reply);
        Some(Deferred::Dedicated {
            frames: vec![Request::from_args(&["PING"]).into_frame()],
            effect: ConnectionEffect::None,
            subscription: None,
            reply,
            suppress,
        })
    }

    /// Runs what a request left for a backend.
    async fn run_deferred(&mut self, deferred: Deferred) {
        match deferred {
            Deferred::Dedicated {
                frames,
                effect,
                subscription,
                reply,
                suppress,
            } => {
                self.send_dedicated(frames, effect, subscription, reply, suppress)
                    .await
            }
            Deferred::Procedure(call) => self.run_procedure(call).await,
        }
    }

    /// Takes one request through the stages, in order: `Ok` once it is in
    /// the batch for a shared connection.
    fn on_request(&mut self, req: Request) -> Result<(), Stopped> {
        self.follow_reload();
        let suppress = self.session.take_suppression();
        let name = req.get(0).unwrap_or_default();
        if !self.session.tx.open {
            if name.eq_ignore_ascii_case(b"client") && self.session.service.is_some() {
                if let Some(LocalAnswer::Reply(reply)) =
                    local::answer_client(&mut self.session, &req)
                {
                    // CLIENT REPLY OFF/SKIP get no reply; CLIENT REPLY ON
                    // always does, even while replies were off (as in Redis),
                    // so the suppression taken before it ran does not apply.
                    let quiet = if req.get(1).is_some_and(|s| s.eq_ignore_ascii_case(b"reply")) {
                        let turned_on = req.get(2).is_some_and(|m| is_keyword(m, b"on"));
                        self.session.reply_mode != session::ReplyMode::On
                            || (suppress && !turned_on)
                    } else {
                        suppress
                    };
                    self.reply(reply, quiet);
                    return Err(None);
                }
            }
            if name.eq_ignore_ascii_case(b"keygate") {
                if let LocalAnswer::Reply(reply) =
                    local::answer_keygate(&self.ctx, &self.session, &req)
                {
                    self.reply(reply, suppress);
                }
                return Err(None);
            }
        }
        let spec = match command::lookup(&req) {
            Ok(spec) => spec,
            Err(e) => {
                return Err(self.reject("unknown", ErrorKind::Client, &e.to_string(), suppress))
            }
        };
        if self.session.service.is_none()
            && !spec.flags.contains(Flags::NO_AUTH)
            && spec.name != "quit"
        {
            return Err(self.reject(spec.name, ErrorKind::Policy, NOAUTH, suppress));
        }
        self.route_transaction_control(spec, suppress)?;
        if self.session.tx.open && spec.flags.contains(Flags::NO_MULTI) {
            // Redis refuses these before its ACL check, dooming the transaction.
            return Err(self.reject(
                spec.name,
                ErrorKind::Client,
                "ERR Command not allowed inside a transaction",
                suppress,
            ));
        }
        let held = self.session.tx.open || self.dedicated.is_some();
        let forwards_when_held = matches!(spec.name, "ping" | "echo" | "info");
        if !(held && forwards_when_held) {
            if spec.name == "hello" && self.dedicated.is_some() {
                return Err(self.reject(
                    spec.name,
                    ErrorKind::Client,
                    "ERR keygate: HELLO is not allowed while a transaction, subscription or blocking command holds the connection",
                    suppress,
                ));
            }
            self.answer_locally(spec, &req, suppress)?;
        }
        let service = match self.session.service.as_ref() {
            Some(service) => service,
            None => return Err(self.reject(spec.name, ErrorKind::Policy, NOAUTH, suppress)),
        };
        if let Err(refusal) = access::check(service, spec) {
            let msg = refusal.to_string();
            return Err(self.reject(spec.name, ErrorKind::Policy, &msg, suppress));
        }
        let mut plan = if spec.name == "info" && !held {
            ReplyPlan::AppendProxyInfo(local::proxy_info(&self.ctx, &self.session))
        } else if spec.name == "acl|whoami" {
            // Queued in MULTI: EXEC's element is keygate's answer.
            ReplyPlan::Replace(local::acl_whoami(&self.session))
        } else {
            ReplyPlan::Forward
        };
        // The common case (no namespace, no TTL change) moves nothing.
        let mut req = req;
        // The argument the batch puts the namespace's prefix in front of.
        let mut prefix_key = None;
        match isolation::isolate(service, spec, &req, &mut plan, &self.session, suppress) {
            Ok(None) => {}
            Ok(Some(Isolated::Forward(confined, confined_plan))) => {
                req = confined;
                plan = confined_plan;
            }
            Ok(Some(Isolated::PrefixKey(at))) => match service.namespace.as_ref() {
                Some(ns) if !governance::governs_before_prefix(service) => {
                    req = req.prefix_arg(at, ns.prefix_bytes())
                }
                _ => prefix_key = Some(at),
            },
            Ok(Some(Isolated::Procedure(call))) => return Err(Some(Deferred::Procedure(call))),
            Err(refused) => return Err(self.refuse(spec, refused, suppress)),
        }
        let mut follow_ups = Vec::new();
        let mut governed = governance::govern(service, spec, &req, &mut self.recorder);
        if let (Some(at), Ok(Some((request, added)))) = (prefix_key, &mut governed) {
            // Governed as the client sent it; the prefix is written with the
            // batch. Should the policy ever move the key, confine first.
            let prefix = service.namespace.as_ref().map(|ns| ns.prefix_bytes());
            let prefix = prefix.unwrap_or_default();
            if !governance::confine_follow_ups(&req, at, request, added, prefix) {
                req = req.prefix_arg(at, prefix);
                prefix_key = None;
                governed = governance::govern(service, spec, &req, &mut self.recorder);
            }
        }
        match governed {
            Ok(None) => {}
            Ok(Some((request, added))) => {
                req = request;
                follow_ups = added;
            }
            Err(refused) => return Err(self.refuse(spec, refused, suppress)),
        }
        let effect = router::connection_effect(spec, &req);
        let subscription = (effect == ConnectionEffect::Subscribe)
            .then(|| pubsub::SubKind::of_command(spec.name))
            .flatten()
            .map(|kind| pubsub::SubscriptionCall {
                kind,
                names: u32::try_from(req.argc().saturating_sub(1)).unwrap_or(u32::MAX),
            });
        let mut reply = CommandReply {
            plan,
            frames: 1 + follow_ups.len() as u32,
            ..CommandReply::plain(spec.name, Some(service.index))
        };
        if self.session.tx.open {
            reply = self.track_transaction(spec, reply);
        }
        if held || effect != ConnectionEffect::None {
            if let Some((at, ns)) = prefix_key.zip(self.session.namespace()) {
                req = req.prefix_arg(at, ns.prefix_bytes());
            }
            let frames = std::iter::once(req.into_frame())
                .chain(follow_ups.into_iter().map(Request::into_frame))
                .collect();
            return Err(Some(Deferred::Dedicated {
                frames,
                effect,
                subscription,
                reply,
                suppress,
            }));
        }
        if !self.batch.takes(suppress) {
            self.seal_batch();
        }
        // topology: a batch may go to a replica only if all of it is read-only.
        let read_only = spec.flags.contains(Flags::READONLY) && follow_ups.is_empty();
        let confine = prefix_key.zip(self.session.namespace());
        self.batch
            .push(req, confine, follow_ups, reply, suppress, read_only);
        Ok(())
    }

    /// Commands keygate answers itself: `Err` when answered here.
    fn answer_locally(
        &mut self,
        spec: &'static CommandSpec,
        req: &Request,
        suppress: bool,
    ) -> Result<(), Stopped> {
        if spec.name == "info" {
            let only_proxy = req.argc() > 1
                && req.args().skip(1).all(|s| {
                    // Redis reads section names as C strings too.
                    is_keyword(s, b"keygate") || is_keyword(s, b"proxy")
                });
            if !only_proxy {
                return Ok(());
            }
            let text = local::proxy_info(&self.ctx, &self.session);
            let mut out = BytesMut::new();
            encode::bulk(&mut out, text.trim_start().as_bytes());
            self.reply(out.freeze(), suppress);
            return Err(None);
        }
        if self.session.tx.open {
            // Connection-state commands cannot be queued: refusing them dooms
            // the transaction, which is what a client sees from Redis for a
            // command it cannot queue.
            let admin = self.session.service.as_ref().is_some_and(|s| s.admin);
            if spec.name == "config|get" && !admin
                || matches!(
                    spec.name,
                    "auth"
                    | "hello"
                    | "select"
                    | "reset"
                    | "quit"
                    | "command|count"
                    | "command|getkeys"
                    // Redis puts their several confirmations in EXEC's
                    // reply beyond the count it announces: no plan fits.
                    | "subscribe"
                    | "psubscribe"
                    | "ssubscribe"
                    | "unsubscribe"
                    | "punsubscribe"
                    | "sunsubscribe"
                )
            {
                let msg = format!("ERR keygate: '{}' cannot be used inside MULTI", spec.name);
                return Err(self.reject(spec.name, ErrorKind::Client, &msg, suppress));
            }
            return Ok(());
        }
        // Only a login or RESET can switch the service: only they pay for
        // remembering the one before.
        let before =
            matches!(spec.name, "auth" | "hello" | "reset").then(|| self.session.service.clone());
        let Some(answer) = local::answer(&self.ctx, &mut self.session, spec, req) else {
            return Ok(());
        };
        if let Some(before) = before {
            let switched = match (&before, &self.session.service) {
                (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
                (None, None) => false,
                _ => true,
            };
            if switched {
                let now = self.session.service.clone();
                if let Some(new) = &now {
                    if !new.try_admit() {
                        // Like Redis's maxclients, but per service: the login
                        // fails and the client stays what it was.
                        self.session.service = before;
                        let msg = format!(
                            "ERR max number of clients reached for service '{}'",
                            new.name
                        );
                        return Err(self.reject(spec.name, ErrorKind::Policy, &msg, suppress));
                    }
                }
                self.ctx.metrics.client_disconnected(self.admitted_index());
                if let Some(old) = self.admitted.take() {
                    old.release();
                }
                self.admitted = now;
                self.ctx.metrics.client_connected(self.admitted_index());
            }
        }
        match answer {
            LocalAnswer::Reply(r) => self.reply(r, suppress),
            LocalAnswer::ReplyAndClose(r) => {
                self.reply(r, suppress);
                self.closing = true;
            }
            LocalAnswer::ReplyAfterReset(r) => {
                self.drop_dedicated(true);
                self.reply(r, suppress);
            }
        }
        Err(None)
    }

    /// MULTI, EXEC, DISCARD, WATCH and UNWATCH where keygate must answer
    /// itself (nesting, no transaction, nothing watched, a doomed EXEC):
    /// `Err` when answered here.
    fn route_transaction_control(
        &mut self,
        spec: &'static CommandSpec,
        suppress: bool,
    ) -> Result<(), Stopped> {
        let tx = self.session.tx;
        match spec.name {
            "multi" if tx.open => {
                // Redis answers this without dooming the transaction.
                self.reply(error_reply("ERR MULTI calls can not be nested"), suppress);
                Err(None)
            }
            "exec" | "discard" if !tx.open => {
                let msg = format!("ERR {} without MULTI", spec.name.to_uppercase());
                self.reply(error_reply(&msg), suppress);
                Err(None)
            }
            "exec" if tx.poisoned => {
                let discard = Request::from_args(&["DISCARD"]);
                let abort =
                    error_reply("EXECABORT Transaction discarded because of previous errors.");
                let reply = CommandReply {
                    plan: ReplyPlan::Replace(abort),
                    ..CommandReply::plain(spec.name, self.session.service.as_ref().map(|s| s.index))
                };
                Err(Some(Deferred::Dedicated {
                    frames: vec![discard.into_frame()],
                    effect: ConnectionEffect::EndTransaction,
                    subscription: None,
                    reply,
                    suppress,
                }))
            }
            "unwatch" if self.dedicated.is_none() && !tx.open => {
                self.reply(Bytes::from_static(b"+OK\r\n"), suppress);
                Err(None)
            }
            _ => Ok(()),
        }
    }

    /// Sends a request on the client's dedicated connection, leasing one first
    /// if needed, and tracks what it does to the connection's state.
    async fn send_dedicated(
        &mut self,
        frames: Vec<Bytes>,
        effect: ConnectionEffect,
        subscription: Option<pubsub::SubscriptionCall>,
        reply: CommandReply,
        suppress: bool,
    ) {
        self.flush_batch().await;
        self.await_procedure().await;
        if self.dedicated.is_none() {
            // Isolation: one service cannot hold the dedicated connections
            // the others are entitled to.
            let permit = match self.session.service.clone() {
                Some(service) => match service.try_hold_dedicated() {
                    Some(permit) => Some(permit),
                    None => {
                        self.ctx.metrics.dedicated_refused(Some(service.index));
                        let msg = format!(
                            "ERR keygate: service '{}' holds its max_dedicated of {} dedicated connections",
                            service.name, service.max_dedicated
                        );
                        self.reject(reply.command, ErrorKind::Policy, &msg, suppress);
                        return;
                    }
                },
                None => None,
            };
            // The client moves from shared connections to a dedicated one:
            // what it sent before must have run on Redis first, or this
            // request could overtake it (`SET k v` then `MULTI; GET k; EXEC`
            // in one write). A client that never switches never waits here;
            // the way back is ordered already, as the dedicated connection
            // is kept until every reply awaited on it has arrived.
            std::future::poll_fn(|cx| self.queue.poll_shared_answered(cx)).await;
            // topology: dedicated connections always go to the master.
            let leased = match self.ctx.router.master_for().await {
                Ok(node) => node
                    .lease(self.session.protocol)
                    .await
                    .map(|lease| (lease, node)),
                Err(e) => Err(e.into()),
            };
            match leased {
                Ok((lease, node)) => {
                    self.dedicated = Some(Dedicated {
                        lease,
                        scanner: ReplyScanner::new(REPLY_MAX_DEPTH),
                        out: BytesMut::new(),
                        subscriptions: pubsub::Subscriptions::default(),
                        deadline: None,
                        demoted: Some(demotion_of(node.health().demotions())),
                        node,
                        _permit: permit,
                        idle_since: Instant::now(),
                    })
                }
                Err(e) => {
                    let command = reply.command;
                    self.reject(command, ErrorKind::Backend, &e.client_message(), suppress);
                    return;
                }
            }
        }
        let Some(d) = self.dedicated.as_mut() else {
            return;
        };
        for frame in &frames {
            d.out.extend_from_slice(frame);
        }
        let tx = &mut self.session.tx;
        match effect {
            ConnectionEffect::BeginTransaction => {
                tx.open = true;
                tx.poisoned = false;
                self.session.queued.clear();
            }
            ConnectionEffect::EndTransaction => {
                tx.open = false;
                tx.poisoned = false;
                tx.watching = false;
            }
            ConnectionEffect::Watch => tx.watching = true,
            ConnectionEffect::Unwatch => tx.watching = false,
            ConnectionEffect::Subscribe => {}
            ConnectionEffect::Block | ConnectionEffect::None => {}
        }
        // Every request takes a slot, whatever the subscription state, so
        // every reply gets its plan (see `pubsub`).
        match subscription {
            Some(call) => self
                .queue
                .push_subscription(reply, call, suppress, self.read_at),
            None => {
                let blocking = effect == ConnectionEffect::Block && !self.session.tx.open;
                self.queue
                    .push_dedicated(reply, blocking, suppress, self.read_at);
            }
        }
    }

    async fn flush_dedicated(&mut self) {
        let Some(d) = self.dedicated.as_mut() else {
            return;
        };
        if d.out.is_empty() {
            return;
        }
        let out = d.out.split();
        let written = match d.lease.stream.write_all(&out).await {
            Ok(()) => d.lease.stream.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            tracing::debug!(client = self.session.id, error = %e, "dedicated write failed");
            self.dedicated_lost();
        }
    }

    fn on_dedicated_read(&mut self, read: std::io::Result<usize>) {
        match read {
            Ok(n) if n > 0 => {}
            _ => return self.dedicated_lost(),
        }
        let Some(d) = self.dedicated.as_mut() else {
            return;
        };
        d.deadline = None;
        d.idle_since = Instant::now();
        loop {
            let conn = &mut *d.lease;
            match d.scanner.scan(&mut conn.read_buf) {
                Ok(Some((frame, kind))) => {
                    let awaited = self.queue.awaited_dedicated();
                    let protocol = self.session.protocol;
                    // Pub/sub frames (messages and confirmations) are
                    // confined to the session's namespace like any reply.
                    let service = self.session.service.as_deref();
                    match d.subscriptions.route(&frame, kind, protocol, awaited) {
                        pubsub::Route::Reply => self.queue.dedicated_reply(frame),
                        pubsub::Route::Confirms { all } => {
                            let frame = isolation::confine_unasked(service, frame);
                            self.queue
                                .subscription_frame(frame.as_deref().unwrap_or_default(), all);
                        }
                        pubsub::Route::Ends => self.queue.end_subscription(&frame),
                        pubsub::Route::Unasked => {
                            if let Some(frame) = isolation::confine_unasked(service, frame) {
                                self.queue.dedicated_push(frame);
                            }
                        }
                        pubsub::Route::Unexpected => {
                            tracing::warn!(
                                client = self.session.id,
                                "reply with no request waiting on a dedicated connection"
                            );
                            return self.dedicated_lost();
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(client = self.session.id, error = %e, "invalid reply on a dedicated connection");
                    return self.dedicated_lost();
                }
            }
        }
    }

    fn on_dedicated_timeout(&mut self) {
        let addr = self.dedicated_addr();
        let millis = self.ctx.config.backend.command_timeout.as_millis();
        self.queue
            .fail_dedicated(&BackendError::Timeout { addr, millis });
        self.drop_dedicated(true);
        self.end_connection_state();
    }

    /// The dedicated connection died: its awaited replies become errors and a
    /// client whose state lived there (transaction, subscription) is closed,
    /// so its library reconnects instead of trusting lost state.
    fn dedicated_lost(&mut self) {
        let addr = self.dedicated_addr();
        // topology: a subscriber's stream is gone too; close it so its library resubscribes.
        if self.holds_subscriptions() {
            self.closing = true;
        }
        self.queue
            .fail_dedicated(&BackendError::ConnectionLost { addr });
        self.drop_dedicated(true);
        self.end_connection_state();
    }

    /// The address of the dedicated connection's node, for error messages.
    fn dedicated_addr(&self) -> String {
        self.dedicated
            .as_ref()
            .map_or_else(|| "backend".to_string(), |d| d.node.addr().to_string())
    }

    fn end_connection_state(&mut self) {
        let tx = self.session.tx;
        if tx.open || tx.watching {
            self.session.tx = Default::default();
            self.closing = true;
        }
    }

    fn dedicated_deadline(&mut self) -> Option<Instant> {
        let d = self.dedicated.as_mut()?;
        if !self.queue.awaits_dedicated() || self.queue.first_dedicated_is_blocking() {
            d.deadline = None;
            return None;
        }
        let timeout = self.ctx.config.backend.command_timeout;
        Some(*d.deadline.get_or_insert_with(|| Instant::now() + timeout))
    }

    /// When a client holding its dedicated connection with nothing pending
    /// (an open transaction, watched keys) has been idle for
    /// `dedicated_idle_timeout`; never for a subscriber or while a reply
    /// (a blocked command's, say) is awaited.
    fn dedicated_idle_at(&self, last_request: Instant) -> Option<Instant> {
        let d = self.dedicated.as_ref()?;
        if self.closing
            || !d.out.is_empty()
            || self.queue.awaits_dedicated()
            || d.subscriptions.active()
        {
            return None;
        }
        Some(d.idle_since.max(last_request) + self.ctx.config.backend.dedicated_idle_timeout)
    }

    /// The idle timer fired: the client is closed, like Redis's `timeout`
    /// closes one; a dedicated connection it held is closed with it (it
    /// carries the client's transaction or watched keys).
    fn on_idle(&mut self) {
        if self.dedicated.is_none() {
            return;
        }
        let service = self.session.service.as_ref();
        self.ctx
            .metrics
            .dedicated_idle_closed(service.map(|s| s.index));
        tracing::info!(
            client = self.session.id,
            service = service.map_or("-", |s| s.name.as_str()),
            timeout_secs = self.ctx.config.backend.dedicated_idle_timeout.as_secs_f64(),
            "closing a client that held a dedicated connection idle (dedicated_idle_timeout)"
        );
    }

    /// Gives the dedicated connection back once nothing lives on it.
    fn release_dedicated_if_clean(&mut self) {
        let Some(d) = &self.dedicated else {
            return;
        };
        let clean = !d.subscriptions.active()
            && !self.session.tx.open
            && !self.session.tx.watching
            && d.out.is_empty()
            && d.lease.read_buf.is_empty()
            && !self.queue.awaits_dedicated();
        if clean {
            self.dedicated = None;
        }
    }

    /// Drops the dedicated connection; `broken` closes it instead of pooling it.
    fn drop_dedicated(&mut self, broken: bool) {
        if let Some(mut d) = self.dedicated.take() {
            if d.subscriptions.active() {
                // A subscriber's pending messages must not reach anyone else.
                d.lease.broken = true;
            }
            d.lease.broken |= broken;
        }
    }

    /// The client is subscribed, or waits for a subscription command's answer.
    fn holds_subscriptions(&self) -> bool {
        self.dedicated
            .as_ref()
            .is_some_and(|d| d.subscriptions.active())
            || matches!(
                self.queue.awaited_dedicated(),
                Some(pubsub::Awaited::Subscription(_))
            )
    }

    fn admitted_index(&self) -> Option<usize> {
        self.admitted.as_ref().map(|s| s.index)
    }

    /// Ends the connection; the work is in `Drop`, so that it also happens
    /// when the client's task panics.
    fn finish(self) {
        drop(self);
    }
}

impl Drop for Connection {
    /// Gives back everything the connection holds, on a normal end and on a
    /// panic alike: the dedicated connection (closed when it may carry this
    /// client's state), the service's `max_clients` slot, the clients gauge
    /// and the proxy's client count. A panic that skipped this would leak
    /// them for good, and a leaked count eventually refuses every client.
    fn drop(&mut self) {
        let dirty = self.session.tx.open
            || self.session.tx.watching
            || self.queue.awaits_dedicated()
            || self.holds_subscriptions();
        self.drop_dedicated(dirty || std::thread::panicking());
        if std::mem::take(&mut self.counted) {
            self.ctx.metrics.client_disconnected(self.admitted_index());
        }
        if let Some(service) = self.admitted.take() {
            service.release();
        }
        self.ctx.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn housekeeping_releases_after_an_idle_tick_and_never_spins() {
        let mut h = Housekeeping::default();
        assert!(!h.tick(), "nothing held, nothing to do");
        h.active();
        assert!(!h.tick(), "not due yet");
        tokio::time::advance(Housekeeping::TICK).await;
        assert!(!h.tick(), "busy during the last tick");
        tokio::time::advance(Housekeeping::TICK).await;
        assert!(h.tick(), "idle for a whole tick");
        // Not released (a blocked command holds the queue): the next tick is
        // a tick away, not due again at once.
        assert!(h.next.is_some_and(|next| next > Instant::now()));
        assert!(!h.tick());
        h.released();
        assert!(h.next.is_none());
    }
}
