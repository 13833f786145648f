//! The client's dedicated backend connection: leased for connection state
//! (a transaction, watched keys, a subscription, a blocking command,
//! MONITOR, tracking), then written, read, timed out, lost and given back.
//!
//! Invariants:
//! - a dedicated connection is clean or closed: it goes back to the pool
//!   only when nothing of this client's lives on it (no transaction, watched
//!   keys, subscription, monitor or tracking, no unwritten or unread bytes,
//!   no awaited reply); otherwise it is closed;
//! - the move from shared connections to a dedicated one waits until every
//!   reply awaited on the shared ones has arrived, so nothing overtakes;
//! - it is always the master's; its node's demotion counts as losing it;
//! - on a cluster backend it is the master's of the slot of the first keys
//!   sent on it, and while a transaction or watched keys live on it every
//!   later key must be in that slot (else Redis's `CROSSSLOT`, dooming the
//!   transaction as Redis does); a slot that moves away under it answers
//!   keygate's own error, never the cluster's `MOVED` or `ASK`; shard
//!   channels whose slot moves away (Redis unsubscribes them unasked) are
//!   subscribed again on the slot's new master, unseen by the client;
//! - losing it fails every reply awaited on it and closes a client whose
//!   state lived there, so its library reconnects instead of trusting lost
//!   state.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::buffers::RETAIN_LIMIT;
use super::queue::CommandReply;
use super::stages::{error_reply, Stopped};
use super::{database, isolation, pubsub, slots, Connection};
use crate::backend::connect::REPLY_MAX_DEPTH;
use crate::backend::dedicated::DedicatedLease;
use crate::backend::node::Node;
use crate::backend::BackendError;
use crate::command::CommandSpec;
use crate::metrics::ErrorKind;
use crate::policy::service::DedicatedPermit;
use crate::protocol::reply::{ReplyScanner, Value};
use crate::protocol::request::Request;
use crate::router::ConnectionEffect;
use crate::topology::cluster::{Cluster, RefreshReason};
use crate::topology::slot::{key_slot, prefixed_key_slot};

/// The client's error for a `MOVED` or `ASK` inside a transaction: Redis
/// has doomed it (EXEC answers `EXECABORT`, or was refused itself).
const MOVED_IN_TRANSACTION: &str = "ERR keygate: slot moved during the transaction";

/// The client's error for shard channels (or keys) of a slot another
/// node serves than the one the client's subscriptions live on.
const SHARD_CHANNELS_ELSEWHERE: &str = "ERR keygate: on a cluster backend, a subscribed client's shard channels must all be in one slot, served by the node of its other subscriptions";

/// The client's error for a `MOVED` or `ASK` to a command sent on a
/// dedicated connection outside a transaction (a blocked command whose
/// slot moved away): nothing ran, the client may send it again.
const MOVED_WHILE_HELD: &str =
    "ERR keygate: slot moved while the command waited on its node; send it again";

/// The client's dedicated backend connection and its reading state.
pub(super) struct Dedicated {
    pub(super) lease: DedicatedLease,
    scanner: ReplyScanner,
    /// Requests not yet written to it.
    pub(super) out: BytesMut,
    /// Its subscriptions as Redis confirmed them: while it has any, it is
    /// this client's (until it unsubscribes from all, RESET or disconnect).
    pub(super) subscriptions: pubsub::Subscriptions,
    /// MONITOR made the connection a push stream of monitor lines; it stays
    /// this client's until RESET or disconnect, then is closed.
    pub(super) monitor: bool,
    /// CLIENT TRACKING was turned on: the connection holds this client's
    /// tracking state until RESET or disconnect, then is closed.
    pub(super) tracking: bool,
    /// When the first awaited non-blocking reply is overdue.
    deadline: Option<Instant>,
    /// The node it is connected to (always the master when leased).
    node: Arc<Node>,
    /// On a cluster backend, the slot whose master it was leased from
    /// (`None` until a command with keys is sent on it).
    slot: Option<u16>,
    /// Shard channels (as Redis names them) the cluster unsubscribed
    /// unasked as their slot moved away: to subscribe again on its new
    /// master (see `follow_moved_shard_channels`).
    moved: Vec<Bytes>,
    /// Confirmations of such a new subscription still to come: hidden.
    hidden_confirms: usize,
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

impl Dedicated {
    /// Returns the connection to its pool (or closes it, if broken) without
    /// the read buffer a large reply grew: pooled connections stay small.
    fn give_back(mut self) {
        // Unread bytes stay: the pool's check must still see them.
        if self.lease.read_buf.is_empty() && self.lease.read_buf.capacity() > RETAIN_LIMIT {
            self.lease.read_buf = BytesMut::new();
        }
    }

    /// The connection carries this client's state until RESET or
    /// disconnect (MONITOR, tracking): never pooled again. Subscriptions
    /// pin it only while they last (see `pubsub`).
    pub(super) fn pinned(&self) -> bool {
        self.subscriptions.active() || self.monitor || self.tracking || !self.moved.is_empty()
    }
}

/// A cluster's `MOVED` or `ASK` answered on the dedicated connection
/// becomes keygate's error (and the map is refreshed): the connection
/// follows one slot, and what was queued on it cannot move.
fn absorb_redirect(cluster: Option<&Cluster>, in_transaction: bool, frame: Bytes) -> Bytes {
    let Some(cluster) = cluster else {
        return frame;
    };
    if !(frame.starts_with(b"-MOVED ") || frame.starts_with(b"-ASK ")) {
        return frame;
    }
    cluster.request_refresh(RefreshReason::Moved);
    error_reply(if in_transaction {
        MOVED_IN_TRANSACTION
    } else {
        MOVED_WHILE_HELD
    })
}

/// On a cluster backend, a frame of a shard subscriber that moves with
/// its slot, taken here (`true`): Redis's unasked `sunsubscribe` of a
/// channel whose slot it no longer serves (noted in `moved`), and the
/// confirmations of keygate's own `SSUBSCRIBE` on the new master.
fn shard_moved(d: &mut Dedicated, frame: &[u8]) -> bool {
    let Ok(Value::Array(items) | Value::Push(items)) = Value::parse(frame) else {
        return false;
    };
    let (Some(Value::Bulk(word) | Value::Simple(word)), Some(Value::Bulk(channel)), 3) =
        (items.first(), items.get(1), items.len())
    else {
        return false;
    };
    if word.eq_ignore_ascii_case(b"sunsubscribe") {
        d.moved.push(Bytes::copy_from_slice(channel));
        return true;
    }
    if word.eq_ignore_ascii_case(b"ssubscribe") && d.hidden_confirms > 0 {
        d.hidden_confirms -= 1;
        return true;
    }
    false
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
pub(super) fn poll_dedicated(
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

impl Connection {
    /// Sends a request on the client's dedicated connection, leasing one first
    /// if needed, and tracks what it does to the connection's state.
    pub(super) async fn send_dedicated(
        &mut self,
        frames: Vec<Bytes>,
        effect: ConnectionEffect,
        subscription: Option<pubsub::SubscriptionCall>,
        reply: CommandReply,
        suppress: bool,
        slot: Option<u16>,
    ) {
        self.flush_batch().await;
        self.await_procedure().await;
        if slot.is_some() && self.dedicated.as_ref().is_some_and(|d| d.slot != slot) {
            // A held connection to another slot's master (a blocking
            // command's, now answered) is given back first; one a
            // transaction lives on was refused CROSSSLOT before this.
            self.flush_dedicated().await;
            self.await_dedicated_replies().await;
            self.release_dedicated_if_clean();
            if self.dedicated.as_ref().is_some_and(|d| d.slot.is_some()) {
                // Subscriptions to another slot's shard channels live on it.
                let msg = SHARD_CHANNELS_ELSEWHERE;
                self.reject(reply.command, ErrorKind::Client, msg, suppress);
                return;
            }
        }
        // On a cluster, MULTI was answered here and is sent with the
        // first command queued after it, to that command's slot's master.
        let deferred_multi =
            self.dedicated.is_none() && self.session.tx.open && self.ctx.router.cluster().is_some();
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
            // topology: dedicated connections always go to the master (on a
            // cluster, the master of their keys' slot).
            let master = match slot {
                Some(slot) => self.ctx.router.master_for_slot(slot).await,
                None => self.ctx.router.master_for().await,
            };
            let leased = match master {
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
                        monitor: false,
                        tracking: false,
                        deadline: None,
                        demoted: Some(demotion_of(node.health().demotions())),
                        node,
                        slot,
                        moved: Vec::new(),
                        hidden_confirms: 0,
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
        // In the client's database (a pooled connection may be in another).
        self.select_dedicated(self.session.database);
        let Some(d) = self.dedicated.as_mut() else {
            return;
        };
        if let (Some(slot), None) = (slot, d.slot) {
            // The first keys on a connection leased for keyless commands:
            // they must be served where it goes.
            let here = self
                .ctx
                .router
                .cluster()
                .and_then(|c| c.map().master(slot).cloned())
                .is_some_and(|master| master.addr() == d.node.addr());
            if !here {
                let msg = match effect {
                    ConnectionEffect::Subscribe => SHARD_CHANNELS_ELSEWHERE,
                    _ => slots::CROSSSLOT,
                };
                self.reject(reply.command, ErrorKind::Client, msg, suppress);
                return;
            }
            d.slot = Some(slot);
        }
        if deferred_multi {
            let multi = CommandReply::plain("multi", reply.service);
            d.out
                .extend_from_slice(&Request::from_args(&["MULTI"]).into_frame());
            // Its `+OK` was the client's already.
            self.queue.push_dedicated(multi, false, true, self.read_at);
        }
        for frame in &frames {
            d.out.extend_from_slice(frame);
        }
        let tx = &mut self.session.tx;
        match effect {
            ConnectionEffect::BeginTransaction => {
                tx.open = true;
                tx.poisoned = false;
                self.session.queued.clear();
                self.session.tx_database = None;
            }
            ConnectionEffect::EndTransaction => {
                // A transaction that SELECTs moves the session when its EXEC
                // runs (not a doomed EXEC, which is sent as DISCARD).
                let db = self.session.tx_database.take();
                if reply.command == "exec" && !tx.poisoned {
                    self.session.exec_database = db;
                }
                tx.open = false;
                tx.poisoned = false;
                tx.watching = false;
            }
            ConnectionEffect::Watch => tx.watching = true,
            ConnectionEffect::Unwatch => tx.watching = false,
            ConnectionEffect::Subscribe => {}
            ConnectionEffect::Block | ConnectionEffect::None => {}
            // Inside MULTI it is only queued (Redis refuses it at EXEC).
            ConnectionEffect::Monitor => d.monitor |= !tx.open,
            ConnectionEffect::Track => d.tracking = true,
        }
        // Every request takes a slot, whatever the subscription state, so
        // every reply gets its plan (see `pubsub`). A monitor stream is the
        // exception: its lines are simple strings like any reply, so
        // everything on it (MONITOR's own +OK first) is taken in stream order.
        if d.monitor {
            return;
        }
        match subscription {
            // Redis pushes subscription confirmations even while replies
            // are off or skipped (CLIENT_PUSHING in its pubsub.c).
            Some(call) => self
                .queue
                .push_subscription(reply, call, false, self.read_at),
            None => {
                let blocking = effect == ConnectionEffect::Block && !self.session.tx.open;
                self.queue
                    .push_dedicated(reply, blocking, suppress, self.read_at);
            }
        }
        if self.session.exec_database.is_some() {
            // The database the client's next request runs in depends on
            // whether this EXEC runs: its reply is awaited first.
            self.flush_dedicated().await;
            self.await_dedicated_replies().await;
            self.session.exec_database = None;
        }
    }

    pub(super) async fn flush_dedicated(&mut self) {
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

    /// Reads the dedicated connection until no reply is awaited on it, with
    /// the same timeout the client loop applies to a non-blocking reply.
    pub(super) async fn await_dedicated_replies(&mut self) {
        while self.dedicated.is_some() && self.queue.awaits_dedicated() {
            let deadline = self.dedicated_deadline();
            let read = std::future::poll_fn(|cx| poll_dedicated(&mut self.dedicated, cx));
            match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, read).await {
                    Ok(read) => self.on_dedicated_read(read),
                    Err(_) => self.on_dedicated_timeout(),
                },
                None => {
                    let read = read.await;
                    self.on_dedicated_read(read);
                }
            }
        }
    }

    pub(super) fn on_dedicated_read(&mut self, read: std::io::Result<usize>) {
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
                    let frame = match self.patterns.before_route(frame) {
                        pubsub::Hidden::Confirmation => continue,
                        pubsub::Hidden::Visible(frame) => frame,
                    };
                    let awaited = self.queue.awaited_dedicated();
                    let protocol = self.session.protocol;
                    // Pub/sub frames (messages and confirmations) are
                    // confined to the session's namespace like any reply.
                    let service = self.session.service.as_deref();
                    // A monitor stream: once the replies awaited before
                    // MONITOR are in, every frame comes in stream order.
                    let route = if d.monitor && awaited.is_none() {
                        pubsub::Route::Unasked
                    } else {
                        d.subscriptions.route(&frame, kind, protocol, awaited)
                    };
                    match route {
                        // Every frame the queue keeps is held for the client
                        // until written: counted on its reply meter.
                        pubsub::Route::Reply => {
                            let in_transaction = self.session.tx.open
                                || self.queue.awaited_command() == Some("exec");
                            let frame =
                                absorb_redirect(self.ctx.router.cluster(), in_transaction, frame);
                            if self.session.exec_database.is_some()
                                && self.queue.awaited_command() == Some("exec")
                            {
                                let db = database::exec_answered(&mut self.session, &frame);
                                self.entry.database(db);
                                d.lease.database = Some(db);
                            }
                            self.meter.add(frame.len());
                            self.queue.dedicated_reply(frame);
                        }
                        pubsub::Route::Confirms { all } => {
                            let frame = isolation::confine_unasked(service, &self.patterns, frame);
                            let held = self
                                .queue
                                .subscription_frame(frame.as_deref().unwrap_or_default(), all);
                            self.meter.add(held);
                        }
                        pubsub::Route::Ends => {
                            let held = self.queue.end_subscription(&frame);
                            self.meter.add(held);
                        }
                        pubsub::Route::Unasked
                            if self.ctx.router.cluster().is_some()
                                && d.subscriptions.shard_only()
                                && shard_moved(d, &frame) => {}
                        pubsub::Route::Unasked => {
                            if let Some(frame) =
                                isolation::confine_unasked(service, &self.patterns, frame)
                            {
                                self.meter.add(frame.len());
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

    pub(super) fn on_dedicated_timeout(&mut self) {
        let addr = self.dedicated_addr();
        let millis = self.ctx.config.backend.command_timeout.as_millis();
        let dropped = self
            .queue
            .fail_dedicated(&BackendError::Timeout { addr, millis });
        self.meter.sub(dropped);
        self.drop_dedicated(true);
        self.end_connection_state();
    }

    /// The dedicated connection died: its awaited replies become errors and a
    /// client whose state lived there (transaction, subscription) is closed,
    /// so its library reconnects instead of trusting lost state.
    fn dedicated_lost(&mut self) {
        let addr = self.dedicated_addr();
        // topology: a subscriber's stream is gone too; close it so its library resubscribes.
        if self.dedicated.as_ref().is_some_and(Dedicated::pinned) || self.holds_subscriptions() {
            self.closing = true;
        }
        let dropped = self
            .queue
            .fail_dedicated(&BackendError::ConnectionLost { addr });
        self.meter.sub(dropped);
        self.drop_dedicated(true);
        self.end_connection_state();
    }

    /// Moves a shard subscriber whose slot moved (see `shard_moved`) to the
    /// slot's new master once the map names it: a new connection there,
    /// subscribed to the same shard channels, replaces the old one. A
    /// subscriber that cannot follow (no new master within
    /// `failover_wait`, no connection) is closed, as on a lost connection,
    /// so its library subscribes again.
    pub(super) async fn follow_moved_shard_channels(&mut self) {
        let Some(d) = self.dedicated.as_ref() else {
            return;
        };
        if d.moved.is_empty() || self.queue.awaits_dedicated() {
            return;
        }
        let (Some(cluster), Some(slot)) = (self.ctx.router.cluster(), d.slot) else {
            return;
        };
        // The slot's master in a map read after Redis unsubscribed: the
        // second one published from now on (the first may have been read
        // before). It may be the same node: `CLUSTER SETSLOT slot NODE`
        // on the slot's own master drops and adds the slot again.
        let deadline = Instant::now() + self.ctx.config.backend.failover_wait;
        let mut last = Arc::clone(&*cluster.map());
        let mut fresh = 0;
        let node = loop {
            let map = cluster.map();
            if !Arc::ptr_eq(&*map, &last) {
                fresh += 1;
                last = Arc::clone(&*map);
            }
            if let Some(master) = map.master(slot).filter(|_| fresh >= 2) {
                break Some(master.clone());
            }
            if Instant::now() >= deadline {
                break None;
            }
            cluster.request_refresh(RefreshReason::Moved);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        let leased = match node {
            Some(node) => node
                .lease(self.session.protocol)
                .await
                .ok()
                .map(|lease| (lease, node)),
            None => None,
        };
        let Some(Dedicated {
            mut lease,
            mut subscriptions,
            moved,
            _permit,
            ..
        }) = self.dedicated.take()
        else {
            return;
        };
        lease.broken = true;
        drop(lease);
        let Some((lease, node)) = leased else {
            tracing::info!(
                client = self.session.id,
                slot,
                "shard channels could not follow their slot; closing the subscriber"
            );
            self.closing = true;
            self.end_connection_state();
            return;
        };
        subscriptions.resubscribed_shard_channels(u32::try_from(moved.len()).unwrap_or(u32::MAX));
        let mut args = vec![Bytes::from_static(b"SSUBSCRIBE")];
        args.extend(moved.iter().cloned());
        let mut out = BytesMut::new();
        out.extend_from_slice(&Request::from_args(&args).into_frame());
        self.dedicated = Some(Dedicated {
            lease,
            scanner: ReplyScanner::new(REPLY_MAX_DEPTH),
            out,
            subscriptions,
            monitor: false,
            tracking: false,
            deadline: None,
            demoted: Some(demotion_of(node.health().demotions())),
            node,
            slot: Some(slot),
            moved: Vec::new(),
            hidden_confirms: moved.len(),
            _permit,
            idle_since: Instant::now(),
        });
        self.flush_dedicated().await;
    }

    /// On a cluster backend, the slot a command for the dedicated connection
    /// goes to (`None`: no keys, any master), or its refusal. MULTI with no
    /// connection held is answered here (`Err(None)`): its connection is
    /// leased for the first command queued in it, whose slot is then known.
    pub(super) fn dedicated_slot(
        &mut self,
        spec: &'static CommandSpec,
        req: &Request,
        prefix_at: Option<usize>,
        effect: ConnectionEffect,
        suppress: bool,
    ) -> Result<Option<u16>, Stopped> {
        let refused = match effect {
            ConnectionEffect::Monitor | ConnectionEffect::Track => {
                Err(slots::HELD_ON_CLUSTER.to_string())
            }
            ConnectionEffect::BeginTransaction if self.dedicated.is_none() => {
                self.begin_transaction_here(suppress);
                return Err(None);
            }
            // Shard channels are no keys to the command table (NOT_KEY),
            // but the cluster serves each on its slot's master.
            _ if matches!(spec.name, "ssubscribe" | "sunsubscribe") => {
                self.shard_channels_slot(req, prefix_at)
            }
            _ => self.cluster_slot(spec, req, prefix_at),
        };
        let slot = match refused {
            Ok(slot) => slot,
            Err(msg) => return Err(self.reject(spec.name, ErrorKind::Client, &msg, suppress)),
        };
        let tx = self.session.tx;
        let pinned = self.dedicated.as_ref().and_then(|d| d.slot);
        if let (Some(slot), Some(pinned)) = (slot, pinned) {
            if slot != pinned && (tx.open || tx.watching) {
                let crossslot = slots::CROSSSLOT;
                return Err(self.reject(spec.name, ErrorKind::Client, crossslot, suppress));
            }
        }
        Ok(slot)
    }

    /// The one slot of an SSUBSCRIBE's or SUNSUBSCRIBE's shard channels
    /// as Redis names them (`prefix_at`: the one still to be prefixed), or
    /// Redis's `CROSSSLOT`.
    fn shard_channels_slot(
        &self,
        req: &Request,
        prefix_at: Option<usize>,
    ) -> Result<Option<u16>, String> {
        let prefix = self.session.namespace().map(|ns| ns.prefix_bytes());
        let mut each = (1..req.argc()).map(|at| {
            let channel = req.get(at).unwrap_or_default();
            match prefix {
                Some(prefix) if prefix_at == Some(at) => prefixed_key_slot(prefix, channel),
                _ => key_slot(channel),
            }
        });
        let first = each.next();
        match first {
            Some(first) if each.any(|s| s != first) => Err(slots::CROSSSLOT.to_string()),
            _ => Ok(first),
        }
    }

    /// The address of the dedicated connection's node, for error messages.
    fn dedicated_addr(&self) -> String {
        self.dedicated
            .as_ref()
            .map_or_else(|| "backend".to_string(), |d| d.node.addr().to_string())
    }

    fn end_connection_state(&mut self) {
        self.patterns.clear();
        self.session.tx_database = None;
        self.session.exec_database = None;
        let tx = self.session.tx;
        if tx.open || tx.watching {
            self.session.tx = Default::default();
            self.closing = true;
        }
    }

    pub(super) fn dedicated_deadline(&mut self) -> Option<Instant> {
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
    pub(super) fn dedicated_idle_at(&self, last_request: Instant) -> Option<Instant> {
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
    pub(super) fn on_idle(&mut self) {
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
    pub(super) fn release_dedicated_if_clean(&mut self) {
        let Some(d) = &self.dedicated else {
            return;
        };
        let clean = !d.pinned()
            && !self.session.tx.open
            && !self.session.tx.watching
            && d.out.is_empty()
            && d.lease.read_buf.is_empty()
            && !self.queue.awaits_dedicated();
        if clean {
            if let Some(d) = self.dedicated.take() {
                d.give_back();
            }
        }
    }

    /// Drops the dedicated connection; `broken` closes it instead of pooling it.
    pub(super) fn drop_dedicated(&mut self, broken: bool) {
        if let Some(mut d) = self.dedicated.take() {
            if d.pinned() {
                // A subscriber's pending messages (a monitor's lines, a
                // tracker's invalidations) must not reach anyone else.
                d.lease.broken = true;
            }
            d.lease.broken |= broken;
            d.give_back();
        }
    }

    /// The client is subscribed, or waits for a subscription command's answer.
    pub(super) fn holds_subscriptions(&self) -> bool {
        self.dedicated
            .as_ref()
            .is_some_and(|d| d.subscriptions.active())
            || matches!(
                self.queue.awaited_dedicated(),
                Some(pubsub::Awaited::Subscription(_))
            )
    }
}
