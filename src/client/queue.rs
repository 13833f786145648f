//! The reply queue: one slot per request, or per batch of requests sent
//! together on a shared connection, in the order the requests came.
//!
//! Invariants: replies leave in request order, always; a slot is written
//! only when it and every slot before it are complete. Each slot knows the
//! commands it answers ([`CommandReply`]): how many backend frames each
//! produces (follow-ups keygate added are dropped) and how each reply is
//! rewritten. A shared slot's replies come with the frame ends the
//! connection's reader found, so they are split without scanning again;
//! replies without them (a dedicated connection's, keygate's own) are
//! scanned. Frames a dedicated connection sends unasked (pub/sub messages)
//! go in front of the first slot still waiting on that connection, which is
//! exactly where the backend put them in its own stream. A subscription
//! command's slot gathers its confirmations (see [`super::pubsub`]).

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::backend::connect::REPLY_MAX_DEPTH;
use crate::backend::mux::BatchReply;
use crate::backend::BackendError;
use crate::hotkeys::Sample;
use crate::metrics::cache::CacheRule;
use crate::metrics::{ErrorKind, Recorder, Role};
use crate::policy::reply::{self, ReplyPlan};
use crate::protocol::reply::{Replies, ReplyKind};

use super::pubsub::{Awaited, SubKind, SubscriptionCall};

/// One client command answered by a slot.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandReply {
    /// The table name, for metrics.
    pub command: &'static str,
    /// The service it ran as (index in config), for metrics.
    pub service: Option<usize>,
    /// Backend frames it produces: 1 plus any follow-ups keygate added,
    /// whose replies the client never sees.
    pub frames: u32,
    /// How the command's reply is rewritten on its way back.
    pub plan: ReplyPlan,
    /// A read sampled for the service's hot keys: counted with its reply's
    /// value sizes when the reply is written (boxed: most commands carry
    /// none).
    pub hot: Option<Box<Sample>>,
}

impl CommandReply {
    /// A command forwarded as it is, answered by one frame.
    pub fn plain(command: &'static str, service: Option<usize>) -> CommandReply {
        CommandReply {
            command,
            service,
            frames: 1,
            plan: ReplyPlan::Forward,
            hot: None,
        }
    }

    /// Answered by one frame written as it came.
    pub fn is_plain(&self) -> bool {
        self.frames == 1 && matches!(self.plan, ReplyPlan::Forward)
    }
}

#[derive(Debug)]
enum SlotState {
    /// Complete and final: a reply keygate made.
    Ready(Bytes),
    /// Complete and final: a frame the dedicated connection sent unasked
    /// (counted on the client's meter, like every backend reply).
    Pushed(Bytes),
    /// Waiting on a multiplexed connection.
    Shared(oneshot::Receiver<BatchReply>),
    /// Waiting on a cluster batch's follower (its parts on several nodes'
    /// multiplexed connections, and any redirects).
    Following(Following),
    /// Waiting on the client's dedicated connection for `remaining` frames.
    Dedicated {
        remaining: u32,
        acc: BytesMut,
        blocking: bool,
        /// A subscription command: its confirmations are counted here.
        subscription: Option<Confirmations>,
    },
    /// The backend answered; plans are not applied yet.
    Answered(BatchReply),
}

/// A cluster batch's follower (see [`super::redirect`]): a future, polled
/// by the client's own task as it polls its reply queue.
pub struct Following(Pin<Box<dyn Future<Output = BatchReply> + Send>>);

impl Following {
    pub fn new(future: impl Future<Output = BatchReply> + Send + 'static) -> Following {
        Following(Box::pin(future))
    }

    fn poll(&mut self, cx: &mut std::task::Context<'_>) -> Poll<BatchReply> {
        self.0.as_mut().poll(cx)
    }
}

impl std::fmt::Debug for Following {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Following")
    }
}

/// What a subscription command's slot waits for.
#[derive(Debug, Clone, Copy)]
struct Confirmations {
    kind: SubKind,
    /// `remaining` is known: the command named its channels, or its first
    /// confirmation arrived (then the subscriptions it ends are known).
    resolved: bool,
}

/// The commands one slot answers: almost always one (a client that does
/// not pipeline), kept inline so that case allocates nothing.
pub type Commands = SmallVec<[CommandReply; 1]>;

/// One position in the reply order.
#[derive(Debug)]
struct Slot {
    state: SlotState,
    /// The commands answered, in order; empty for replies keygate made.
    commands: Commands,
    /// CLIENT REPLY OFF/SKIP: the replies are dropped.
    suppress: bool,
    /// When the requests were read, for latency.
    started: Instant,
    /// When the replies arrived from a dedicated connection (for backend
    /// time; a shared connection's reader measures it itself).
    answered: Option<Instant>,
    /// The node that answers: the master unless the batch was routed to a
    /// replica ([`ReplyQueue::served_by`]).
    role: Role,
    /// Names a shared slot for [`ReplyQueue::served_by`] (0 for others).
    tag: u64,
    /// On a cluster backend, the nodes that answered ([`ReplyQueue::answered_by`]).
    nodes: Answering,
}

/// The cluster nodes (metrics label indexes, [`crate::backend::node::Node::label`])
/// a slot's replies came from, for the `node` label of backend times.
#[derive(Debug, Default)]
pub enum Answering {
    /// Not a cluster batch: recorded without a node.
    #[default]
    Unknown,
    /// One node answered every reply.
    One(u16),
    /// Each reply frame's node, in order.
    ByFrame(Box<[u16]>),
}

impl Answering {
    /// The node that answered reply frame `frame`.
    fn at(&self, frame: usize) -> Option<u16> {
        match self {
            Answering::Unknown => None,
            Answering::One(node) => Some(*node),
            Answering::ByFrame(nodes) => nodes.get(frame).copied(),
        }
        // A part no node was routed to is answered by keygate.
        .filter(|&node| node != u16::MAX)
    }
}

/// Ordered replies of one client.
#[derive(Debug, Default)]
pub struct ReplyQueue {
    slots: VecDeque<Slot>,
    /// Commands in `slots` whose replies are not yet written: what a client
    /// has in flight, which bounds the reply bytes keygate may have to hold.
    commands_pending: usize,
    /// The last tag given to a shared slot.
    last_tag: u64,
}

impl ReplyQueue {
    /// Slots not yet written.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when every reply has been written.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Client commands whose replies are not yet written (replies keygate
    /// made itself do not count: they are already as small as they get).
    pub fn commands_pending(&self) -> usize {
        self.commands_pending
    }

    /// Frees the slot storage a burst grew; only while empty, so nothing
    /// pending is lost (an empty queue has no commands pending).
    pub fn release_memory(&mut self) {
        if self.slots.is_empty() {
            self.slots = VecDeque::new();
        }
    }

    /// A reply keygate made itself.
    pub fn push_ready(&mut self, reply: Bytes, suppress: bool) {
        self.slots.push_back(Slot {
            state: SlotState::Ready(reply),
            commands: Commands::new(),
            suppress,
            started: Instant::now(),
            answered: None,
            role: Role::Proxy,
            tag: 0,
            nodes: Answering::Unknown,
        });
    }

    /// Commands sent together on a multiplexed connection (the master's,
    /// unless [`Self::served_by`] says otherwise). Returns the slot's tag.
    pub fn push_shared(
        &mut self,
        rx: oneshot::Receiver<BatchReply>,
        commands: Commands,
        suppress: bool,
        started: Instant,
    ) -> u64 {
        self.commands_pending += commands.len();
        self.last_tag += 1;
        self.slots.push_back(Slot {
            state: SlotState::Shared(rx),
            commands,
            suppress,
            started,
            answered: None,
            role: Role::Master,
            tag: self.last_tag,
            nodes: Answering::Unknown,
        });
        self.last_tag
    }

    /// The shared slot `tag` is answered by a node of this role (a replica,
    /// or keygate itself when no node could be routed to), so its commands
    /// are recorded under it. The slot is looked for from the back: it was
    /// sealed moments ago, so it is almost always the last one.
    pub fn served_by(&mut self, tag: u64, role: Role) {
        if let Some(slot) = self.slots.iter_mut().rev().find(|s| s.tag == tag) {
            slot.role = role;
        }
    }

    /// The shared slot `tag` is answered by these cluster nodes (looked for
    /// from the back, like [`Self::served_by`]).
    pub fn answered_by(&mut self, tag: u64, nodes: Answering) {
        if let Some(slot) = self.slots.iter_mut().rev().find(|s| s.tag == tag) {
            slot.nodes = nodes;
        }
    }

    /// The shared slot `tag` waits on this follower instead (a cluster
    /// batch; looked for from the back, like [`Self::served_by`]).
    pub fn follow(&mut self, tag: u64, follower: Following) {
        if let Some(slot) = self.slots.iter_mut().rev().find(|s| s.tag == tag) {
            slot.state = SlotState::Following(follower);
        }
    }

    /// A command sent on the dedicated connection.
    pub fn push_dedicated(
        &mut self,
        command: CommandReply,
        blocking: bool,
        suppress: bool,
        started: Instant,
    ) {
        let state = SlotState::Dedicated {
            remaining: command.frames,
            acc: BytesMut::new(),
            blocking,
            subscription: None,
        };
        self.push_awaiting(state, command, suppress, started);
    }

    /// A subscription command sent on the dedicated connection.
    pub fn push_subscription(
        &mut self,
        command: CommandReply,
        call: SubscriptionCall,
        suppress: bool,
        started: Instant,
    ) {
        let state = SlotState::Dedicated {
            remaining: call.names.max(1),
            acc: BytesMut::new(),
            blocking: false,
            subscription: Some(Confirmations {
                kind: call.kind,
                resolved: call.names > 0,
            }),
        };
        self.push_awaiting(state, command, suppress, started);
    }

    fn push_awaiting(
        &mut self,
        state: SlotState,
        command: CommandReply,
        suppress: bool,
        started: Instant,
    ) {
        self.commands_pending += 1;
        self.slots.push_back(Slot {
            state,
            commands: smallvec::smallvec![command],
            suppress,
            started,
            answered: None,
            // Dedicated connections are always the master's.
            role: Role::Master,
            tag: 0,
            nodes: Answering::Unknown,
        });
    }

    fn first_waiting_dedicated(&self) -> Option<usize> {
        self.slots.iter().position(
            |s| matches!(s.state, SlotState::Dedicated { remaining, .. } if remaining > 0),
        )
    }

    /// Whether a dedicated-connection reply is awaited.
    pub fn awaits_dedicated(&self) -> bool {
        self.first_waiting_dedicated().is_some()
    }

    /// What the dedicated connection's next frame answers, if anything.
    pub fn awaited_dedicated(&self) -> Option<Awaited> {
        let slot = self.slots.get(self.first_waiting_dedicated()?)?;
        Some(match slot.state {
            SlotState::Dedicated {
                subscription: Some(c),
                ..
            } => Awaited::Subscription(c.kind),
            _ => Awaited::Reply,
        })
    }

    /// The command the dedicated connection's next frame answers, if any.
    pub fn awaited_command(&self) -> Option<&'static str> {
        let slot = self.slots.get(self.first_waiting_dedicated()?)?;
        slot.commands.first().map(|c| c.command)
    }

    /// A confirmation of the awaited subscription command (already
    /// confined); `all` is how many it takes if the command named nothing.
    /// Returns the bytes now held for the client (for its reply meter).
    pub fn subscription_frame(&mut self, frame: &[u8], all: u32) -> usize {
        self.answer_subscription(frame, Some(all))
    }

    /// Any other frame for the awaited subscription command (an error):
    /// its whole answer. Returns the bytes now held for the client.
    pub fn end_subscription(&mut self, frame: &[u8]) -> usize {
        self.answer_subscription(frame, None)
    }

    fn answer_subscription(&mut self, frame: &[u8], all: Option<u32>) -> usize {
        let Some(i) = self.first_waiting_dedicated() else {
            return 0;
        };
        let Some(slot) = self.slots.get_mut(i) else {
            return 0;
        };
        if let SlotState::Dedicated {
            remaining,
            acc,
            subscription: Some(c),
            ..
        } = &mut slot.state
        {
            match all {
                Some(all) if !c.resolved => {
                    c.resolved = true;
                    *remaining = all.max(1);
                }
                Some(_) => {}
                None => *remaining = 1,
            }
            acc.extend_from_slice(frame);
            *remaining -= 1;
            if *remaining == 0 {
                slot.answered = Some(Instant::now());
            }
            return frame.len();
        }
        0
    }

    /// Whether the first awaited dedicated reply belongs to a blocking
    /// command (which waits as long as the client asked, with no proxy timer).
    pub fn first_dedicated_is_blocking(&self) -> bool {
        self.first_waiting_dedicated()
            .and_then(|i| self.slots.get(i))
            .is_some_and(|s| matches!(s.state, SlotState::Dedicated { blocking: true, .. }))
    }

    /// A reply frame read from the dedicated connection.
    pub fn dedicated_reply(&mut self, frame: Bytes) {
        let Some(i) = self.first_waiting_dedicated() else {
            return self.dedicated_push(frame);
        };
        if let Some(slot) = self.slots.get_mut(i) {
            if let SlotState::Dedicated { remaining, acc, .. } = &mut slot.state {
                acc.extend_from_slice(&frame);
                *remaining -= 1;
                if *remaining == 0 {
                    slot.answered = Some(Instant::now());
                }
            }
        }
    }

    /// A frame the dedicated connection sent unasked (a pub/sub message).
    pub fn dedicated_push(&mut self, frame: Bytes) {
        let slot = Slot {
            state: SlotState::Pushed(frame),
            commands: Commands::new(),
            suppress: false,
            started: Instant::now(),
            answered: None,
            role: Role::Master,
            tag: 0,
            nodes: Answering::Unknown,
        };
        match self.first_waiting_dedicated() {
            Some(i) => self.slots.insert(i, slot),
            None => self.slots.push_back(slot),
        }
    }

    /// The dedicated connection failed: every reply awaited on it is this
    /// error. Returns the bytes of the frames that had arrived for them,
    /// now dropped (to be taken off the client's meter).
    pub fn fail_dedicated(&mut self, err: &BackendError) -> usize {
        let mut dropped = 0;
        for slot in self.slots.iter_mut() {
            if let SlotState::Dedicated { remaining, acc, .. } = &slot.state {
                if *remaining > 0 {
                    dropped += acc.len();
                    slot.state = SlotState::Answered(Err(err.clone()));
                    slot.answered = Some(Instant::now());
                }
            }
        }
        dropped
    }

    /// Whether the front slot waits on a multiplexed connection.
    pub fn front_is_shared(&self) -> bool {
        matches!(
            self.slots.front(),
            Some(Slot {
                state: SlotState::Shared(_) | SlotState::Following(_),
                ..
            })
        )
    }

    /// Waits until the front slot's shared reply arrives (pending forever if
    /// the front slot is not a shared one; guard with [`Self::front_is_shared`]).
    pub async fn front_answered(&mut self) {
        std::future::poll_fn(|cx| self.poll_front_answered(cx)).await
    }

    /// [`Self::front_answered`] as a poll, for a loop that waits on several
    /// sources without building a future for each: ready once the front
    /// slot's shared reply arrived (kept in the slot for [`Self::drain_ready`]).
    pub fn poll_front_answered(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let Some(slot) = self.slots.front_mut() else {
            return Poll::Pending;
        };
        let rx = match &mut slot.state {
            SlotState::Shared(rx) => rx,
            SlotState::Following(follower) => {
                let result = std::task::ready!(follower.poll(cx));
                slot.state = SlotState::Answered(result);
                return Poll::Ready(());
            }
            _ => return Poll::Pending,
        };
        // Looked at first: an arrived reply is taken without the
        // cooperative-budget bookkeeping a poll does; only a pending one is
        // polled, to leave the task's waker.
        let result = match rx.try_recv() {
            Ok(reply) => Ok(reply),
            Err(oneshot::error::TryRecvError::Closed) => Err(()),
            Err(oneshot::error::TryRecvError::Empty) => {
                std::task::ready!(std::pin::Pin::new(rx).poll(cx)).map_err(|_| ())
            }
        };
        // `answered` stays unset: the reader measured the backend time.
        slot.state = SlotState::Answered(result.unwrap_or_else(|_| Err(lost())));
        Poll::Ready(())
    }

    /// Ready once no slot waits on a multiplexed connection any more (their
    /// replies are kept in the slots for [`Self::drain_ready`]): what a
    /// client's next request must wait for before it goes on another
    /// connection, so that it cannot overtake them on the backend.
    pub fn poll_shared_answered(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        self.poll_shared_answered_before(u64::MAX, cx)
    }

    /// [`Self::poll_shared_answered`] for the shared slots pushed before
    /// the one tagged `tag` only.
    pub fn poll_shared_answered_before(
        &mut self,
        tag: u64,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<()> {
        let mut waiting = false;
        for slot in self.slots.iter_mut() {
            let polled = match &mut slot.state {
                SlotState::Shared(_) | SlotState::Following(_) if slot.tag >= tag => break,
                SlotState::Shared(rx) => std::pin::Pin::new(rx)
                    .poll(cx)
                    .map(|r| r.unwrap_or_else(|_| Err(lost()))),
                SlotState::Following(follower) => follower.poll(cx),
                _ => continue,
            };
            match polled {
                Poll::Ready(result) => slot.state = SlotState::Answered(result),
                Poll::Pending => waiting = true,
            }
        }
        if waiting {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    /// Moves every complete slot at the front to `out`, in order, recording
    /// each command's latency, cache outcome and errors. Returns the backend
    /// reply bytes taken (as they were counted on the client's meter when
    /// they arrived), to be taken off the meter once `out` is written.
    pub fn drain_ready(&mut self, out: &mut BytesMut, recorder: &mut Recorder) -> usize {
        let mut now = None;
        let mut metered = 0;
        while let Some(slot) = self.slots.front_mut() {
            let result = match &mut slot.state {
                SlotState::Ready(b) => Ok(Replies::from(std::mem::take(b))),
                SlotState::Pushed(b) => {
                    metered += b.len();
                    Ok(Replies::from(std::mem::take(b)))
                }
                SlotState::Shared(rx) => match rx.try_recv() {
                    Ok(r) => r,
                    Err(oneshot::error::TryRecvError::Empty) => return metered,
                    Err(oneshot::error::TryRecvError::Closed) => Err(lost()),
                },
                SlotState::Following(follower) => {
                    // Looked at without a waker: the event loop polls the
                    // front with its own when this one is still waiting.
                    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                    match follower.poll(&mut cx) {
                        Poll::Ready(r) => r,
                        Poll::Pending => return metered,
                    }
                }
                SlotState::Dedicated { remaining, acc, .. } => {
                    if *remaining > 0 {
                        return metered;
                    }
                    Ok(Replies::from(std::mem::take(acc).freeze()))
                }
                SlotState::Answered(r) => std::mem::replace(r, Ok(Replies::default())),
            };
            if !matches!(slot.state, SlotState::Ready(_) | SlotState::Pushed(_)) {
                // Shared and dedicated replies; an error made here was never counted.
                metered += result.as_ref().map_or(0, |r| r.bytes.len());
            }
            self.commands_pending = self.commands_pending.saturating_sub(slot.commands.len());
            let now = *now.get_or_insert_with(Instant::now);
            // Written where it lies and only then popped: moving a slot out
            // first copies the whole of it, twice.
            write_replies(slot, result, now, out, recorder);
            release(std::mem::take(&mut slot.commands));
            self.slots.pop_front();
        }
        metered
    }
}

fn lost() -> BackendError {
    BackendError::ConnectionLost {
        addr: "backend".into(),
    }
}

/// Drops a written slot's commands. A plain command's plan owns nothing,
/// yet dropping it calls `ReplyPlan`'s drop glue, which is recursive (EXEC
/// nests plans) so never inlined: a function call per command. The plan
/// is forgotten instead when it is `Forward`, a variant without fields, so
/// nothing is leaked.
fn release(commands: Commands) {
    for command in commands {
        let CommandReply { plan, .. } = command;
        if matches!(plan, ReplyPlan::Forward) {
            std::mem::forget(plan);
        }
    }
}

/// Writes and records one complete slot, before it is released: the fast
/// path copies a batch of plain replies whole; otherwise each command's
/// frames are split off and its plan applied.
///
/// The backend time runs from the write that carried the requests (the
/// multiplexed writer stamps it) to `now`, the turn that takes the replies
/// (a clock read the total needs anyway); for a dedicated connection, from
/// reading the request to its reply's arrival (the request is written at
/// once). A reply with neither (an error, a keyspace procedure) records none.
fn write_replies(
    slot: &Slot,
    result: BatchReply,
    now: Instant,
    out: &mut BytesMut,
    recorder: &mut Recorder,
) {
    let total = now.saturating_duration_since(slot.started);
    let role = slot.role;
    let backend = result
        .as_ref()
        .ok()
        .and_then(|r| r.written_at)
        .map(|written| now.into_std().saturating_duration_since(written))
        .or_else(|| {
            slot.answered
                .map(|answered| answered.saturating_duration_since(slot.started))
        });
    let replies = match result {
        Ok(replies) => replies,
        Err(err) => {
            let kind = match err {
                BackendError::Timeout { .. } => ErrorKind::Timeout,
                _ => ErrorKind::Backend,
            };
            let line = err.client_message();
            for c in &slot.commands {
                match &c.plan {
                    ReplyPlan::Answered(answer) => {
                        // Answered and recorded by keygate before the batch went.
                        if !slot.suppress {
                            out.extend_from_slice(answer);
                        }
                        continue;
                    }
                    // Keygate's own read: no client waits for it.
                    ReplyPlan::NearRefresh(_) => continue,
                    _ => {}
                }
                recorder.error(c.service, c.command, kind);
                recorder.command(c.service, c.command, role, total, backend);
                if !slot.suppress {
                    out.extend_from_slice(b"-");
                    out.extend_from_slice(line.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
            }
            return;
        }
    };
    if slot.commands.is_empty() {
        if !slot.suppress {
            out.extend_from_slice(&replies.bytes);
        }
        return;
    }
    // Plain commands' replies leave exactly as they came: one copy of the
    // whole run, whatever is recorded about each.
    let all_plain = slot.commands.iter().all(CommandReply::is_plain);
    if all_plain && !slot.suppress {
        out.extend_from_slice(&replies.bytes);
    }
    let record_each = recorder.enabled();
    if all_plain && !record_each {
        // Sampled reads are counted below, where the frames are split
        // anyway; here they are split for them alone.
        if slot.commands.iter().any(|c| c.hot.is_some()) {
            record_hot_keys(&slot.commands, &replies);
        }
        return;
    }
    let write = !slot.suppress && !all_plain;
    if let [c] = slot.commands.as_slice() {
        if c.frames == 1 {
            // One command, one frame (a client that does not pipeline): the
            // connection delimited it already, so it is all of the bytes.
            let mut tally = Tally::new(c, slot.nodes.at(0));
            tally.add(
                slot.nodes.at(0),
                replies.first_kind(),
                &replies.bytes,
                recorder,
            );
            tally.record(role, total, backend, recorder);
            if let Some(sample) = &c.hot {
                sample.record(&replies.bytes);
            }
            if write {
                reply::rewrite(&c.plan, &replies.bytes, out);
            }
            return;
        }
    }
    let mut frames = replies.frames(REPLY_MAX_DEPTH);
    let mut tally: Option<Tally<'_>> = None;
    // The reply frame each command starts at (for the node that answered).
    let mut at = 0;
    for c in &slot.commands {
        if c.frames == 0 {
            // Answered by keygate (a near-cache hit), recorded when it was.
            if write {
                reply::rewrite(&c.plan, &[], out);
            }
            continue;
        }
        let node = slot.nodes.at(at);
        at += c.frames as usize;
        // The reply to the `CLIENT CACHING YES` in front of a near-cache fill.
        let near = match &c.plan {
            ReplyPlan::NearFill(fill) | ReplyPlan::NearRefresh(fill) => Some(fill),
            _ => None,
        };
        let lead = u32::from(near.is_some());
        if lead == 1 {
            let _ = frames.next();
        }
        // The command's own frame; the follow-ups keygate added are dropped.
        let (frame, kind) = frames.next().unwrap_or((
            // The connection delimited these frames already; a failure
            // here means keygate miscounted, so say so rather than desync.
            &b"-ERR keygate: internal error splitting a reply\r\n"[..],
            ReplyKind::Error,
        ));
        for i in (1 + lead)..c.frames {
            let follow_up = frames.next();
            if let (Some(near), Some((pttl, _)), true) = (near, follow_up, i == 1 + lead) {
                near.complete(kind, frame, pttl);
            }
        }
        if matches!(c.plan, ReplyPlan::NearRefresh(_)) {
            // Keygate's own read: neither written nor counted.
            continue;
        }
        if let Some(sample) = &c.hot {
            sample.record(frame);
        }
        if record_each {
            match &mut tally {
                Some(t) if t.same_series(c) => t.add(node, kind, frame, recorder),
                _ => {
                    let mut next = Tally::new(c, node);
                    next.add(node, kind, frame, recorder);
                    if let Some(done) = tally.replace(next) {
                        done.record(role, total, backend, recorder);
                    }
                }
            }
        }
        if write {
            reply::rewrite(&c.plan, frame, out);
        }
    }
    if let Some(t) = tally {
        t.record(role, total, backend, recorder);
    }
}

/// Counts the sampled reads among `commands` for their services' hot keys,
/// each with its own reply frame (where the value sizes are).
fn record_hot_keys(commands: &[CommandReply], replies: &Replies) {
    if let [c] = commands {
        if let (1, Some(sample)) = (c.frames, &c.hot) {
            sample.record(&replies.bytes);
            return;
        }
    }
    let mut frames = replies.frames(REPLY_MAX_DEPTH);
    for c in commands {
        let Some((frame, _)) = frames.next() else {
            return;
        };
        for _ in 1..c.frames {
            let _ = frames.next();
        }
        if let Some(sample) = &c.hot {
            sample.record(frame);
        }
    }
}

/// A run of consecutive commands of one slot for the same (service,
/// command): they were read and answered together, so they share one
/// latency, recorded once with their count (a pipeline of 16 GETs costs one
/// histogram update, not 16). On a cluster backend the run's commands may
/// have been answered by several nodes: the backend time is recorded once
/// per node, with that node's count.
struct Tally<'a> {
    command: &'a CommandReply,
    /// The cluster node that answered the run's first command, when known.
    node: Option<u16>,
    count: u64,
    /// Of `count`, the commands other cluster nodes answered, by node.
    others: SmallVec<[(Option<u16>, u64); 3]>,
    /// How the run's replies count as cache hits and misses.
    cache: CacheRule,
    hits: u32,
    misses: u32,
}

impl<'a> Tally<'a> {
    fn new(command: &'a CommandReply, node: Option<u16>) -> Tally<'a> {
        Tally {
            command,
            node,
            count: 0,
            others: SmallVec::new(),
            cache: CacheRule::of(command.command),
            hits: 0,
            misses: 0,
        }
    }

    fn same_series(&self, c: &CommandReply) -> bool {
        // Names are the command table's: equal names are almost always the
        // same pointer, which spares the byte comparison.
        let (a, b) = (self.command.command, c.command);
        self.command.service == c.service && (std::ptr::eq(a, b) || a == b)
    }

    /// One more command of the run, answered by cluster node `node` with
    /// `frame` (a whole frame of kind `kind`); errors are recorded at once
    /// (rare).
    #[inline]
    fn add(&mut self, node: Option<u16>, kind: ReplyKind, frame: &[u8], recorder: &mut Recorder) {
        self.count += 1;
        if node != self.node {
            self.add_other(node);
        }
        let c = self.command;
        if kind == ReplyKind::Error {
            recorder.error(c.service, c.command, ErrorKind::Backend);
        } else if let Some((hits, misses)) = self.cache.outcome(kind, frame) {
            self.hits = self.hits.saturating_add(hits);
            self.misses = self.misses.saturating_add(misses);
        }
    }

    /// A command of the run answered by another node than its first one.
    fn add_other(&mut self, node: Option<u16>) {
        match self.others.iter_mut().find(|(n, _)| *n == node) {
            Some((_, count)) => *count += 1,
            None => self.others.push((node, 1)),
        }
    }

    fn record(
        self,
        role: Role,
        total: std::time::Duration,
        backend: Option<std::time::Duration>,
        recorder: &mut Recorder,
    ) {
        let c = self.command;
        let (node, count) = (self.node, self.count);
        if self.others.is_empty() {
            recorder.commands_on(c.service, c.command, role, node, total, backend, count);
        } else {
            // The total time once for the run; the backend time per node.
            recorder.commands_on(c.service, c.command, role, None, total, None, count);
            if let Some(backend) = backend {
                let others: u64 = self.others.iter().map(|(_, n)| n).sum();
                let firsts = count.saturating_sub(others);
                let others = self.others.iter().copied();
                for (node, n) in std::iter::once((node, firsts)).chain(others) {
                    recorder.backend_on(c.service, c.command, role, node, backend, n);
                }
            }
        }
        if self.hits > 0 || self.misses > 0 {
            recorder.cache(c.service, c.command, self.hits, self.misses);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::protocol::reply::{FrameEnd, FrameEnds, ReplyScanner};

    /// A pipelined run: GET hit, GET miss (RESP3 null), a SET with a
    /// follow-up frame keygate added, an error, a RESP2-nil GET.
    const RUN: &[u8] = b"$1\r\nv\r\n_\r\n+OK\r\n:1\r\n-ERR no\r\n$-1\r\n";

    fn commands() -> Commands {
        smallvec::smallvec![
            CommandReply::plain("get", Some(0)),
            CommandReply::plain("get", Some(0)),
            CommandReply {
                frames: 2,
                ..CommandReply::plain("set", Some(0))
            },
            CommandReply::plain("incr", Some(0)),
            CommandReply::plain("get", Some(0)),
        ]
    }

    /// The ends the multiplexed reader records for [`RUN`].
    fn ends() -> FrameEnds {
        let mut ends = FrameEnds::new();
        let mut scanner = ReplyScanner::new(REPLY_MAX_DEPTH);
        while let Ok(Some(found)) = scanner.next_frame(RUN) {
            ends.push(found);
        }
        ends
    }

    /// What the client gets and what the metrics say for one slot answered with `replies`.
    fn written(replies: Replies, commands: Commands, suppress: bool) -> (Vec<u8>, Vec<String>) {
        let metrics = Metrics::new(vec!["svc".into()], true);
        let mut recorder = metrics.recorder();
        let mut queue = ReplyQueue::default();
        let (tx, rx) = oneshot::channel();
        queue.push_shared(rx, commands, suppress, Instant::now());
        tx.send(Ok(replies)).unwrap();
        let mut out = BytesMut::new();
        queue.drain_ready(&mut out, &mut recorder);
        assert!(queue.is_empty());
        drop(recorder);
        let counters = metrics
            .render_prometheus(&[])
            .lines()
            .filter(|l| l.starts_with("keygate_cache_") || l.starts_with("keygate_command_errors"))
            .map(str::to_string)
            .collect();
        (out.to_vec(), counters)
    }

    /// A near-cache hit gathered between commands sent to the backend.
    fn answered(at: usize, commands: &mut Commands) {
        let hit = CommandReply {
            frames: 0,
            plan: ReplyPlan::Answered(Bytes::from_static(b"$3\r\nhit\r\n")),
            ..CommandReply::plain("get", Some(0))
        };
        commands.insert(at, hit);
    }

    #[test]
    fn an_answered_command_takes_its_place_and_no_frame() {
        let mut with_hits = commands();
        answered(1, &mut with_hits);
        answered(5, &mut with_hits);
        let (out, counters) = written(Bytes::from_static(RUN).into(), with_hits, false);
        assert_eq!(
            out,
            b"$1\r\nv\r\n$3\r\nhit\r\n_\r\n+OK\r\n-ERR no\r\n$3\r\nhit\r\n$-1\r\n".to_vec()
        );
        // Hits are recorded when they are answered, not again here.
        let text = counters.join("\n");
        assert!(
            text.contains(r#"keygate_cache_hits_total{service="svc",command="get"} 1"#),
            "{text}"
        );
        // A batch that fails still answers what keygate answered.
        let mut failed = ReplyQueue::default();
        let (tx, rx) = oneshot::channel();
        let mut one = Commands::new();
        one.push(CommandReply::plain("get", Some(0)));
        answered(1, &mut one);
        failed.push_shared(rx, one, false, Instant::now());
        tx.send(Err(lost())).unwrap();
        let metrics = Metrics::new(vec!["svc".into()], true);
        let mut out = BytesMut::new();
        failed.drain_ready(&mut out, &mut metrics.recorder());
        assert!(out.starts_with(b"-"), "{out:?}");
        assert!(out.ends_with(b"\r\n$3\r\nhit\r\n"), "{out:?}");
    }

    /// A run of one command answered by several cluster nodes: its
    /// commands and total time once, each node's backend time with its
    /// own count (a frame no node answered: without a node).
    #[test]
    fn a_run_over_cluster_nodes_records_backend_time_per_node() {
        let metrics = Metrics::new(vec!["svc".into()], true);
        let mut recorder = metrics.recorder();
        let mut queue = ReplyQueue::default();
        let (tx, rx) = oneshot::channel();
        let gets: Commands = (0..5)
            .map(|_| CommandReply::plain("get", Some(0)))
            .collect();
        let tag = queue.push_shared(rx, gets, false, Instant::now());
        let frames = Box::new([4, 9, 4, u16::MAX, 4]);
        queue.answered_by(tag, Answering::ByFrame(frames));
        let replies = Replies {
            bytes: Bytes::from_static(b"$1\r\na\r\n$1\r\nb\r\n$-1\r\n$1\r\nc\r\n$1\r\nd\r\n"),
            ends: FrameEnds::new(),
            written_at: Some(std::time::Instant::now()),
        };
        tx.send(Ok(replies)).unwrap();
        let mut out = BytesMut::new();
        queue.drain_ready(&mut out, &mut recorder);
        drop(recorder);
        let mut nodes = vec![String::new(); 10];
        nodes[4] = "a:1".into();
        nodes[9] = "b:1".into();
        let text = metrics.render_prometheus_with_nodes(&[], &nodes);
        let count = |metric: &str, node: &str| {
            let labels = r#"{service="svc",command="get",role="master""#;
            let head = format!("{metric}_count{labels}{node}}} ");
            let line = text.lines().find(|l| l.starts_with(&head));
            line.and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        };
        assert_eq!(
            count("keygate_command_duration_seconds", ""),
            Some(5),
            "{text}"
        );
        let backend = "keygate_backend_duration_seconds";
        assert_eq!(count(backend, r#",node="a:1""#), Some(3), "{text}");
        assert_eq!(count(backend, r#",node="b:1""#), Some(1), "{text}");
        assert_eq!(count(backend, ""), Some(1), "{text}");
    }

    #[test]
    fn recorded_ends_and_scanning_agree() {
        assert_eq!(ends().len(), 6);
        let scanned = written(Bytes::from_static(RUN).into(), commands(), false);
        let delimited = written(
            Replies {
                bytes: Bytes::from_static(RUN),
                ends: ends(),
                written_at: None,
            },
            commands(),
            false,
        );
        assert_eq!(scanned, delimited);
        // The follow-up's `:1` is dropped.
        assert_eq!(
            scanned.0,
            b"$1\r\nv\r\n_\r\n+OK\r\n-ERR no\r\n$-1\r\n".to_vec()
        );
        let text = scanned.1.join("\n");
        assert!(
            text.contains(r#"keygate_cache_hits_total{service="svc",command="get"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"keygate_cache_misses_total{service="svc",command="get"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"keygate_command_errors_total{service="svc",command="incr",kind="backend"} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn plain_slot_is_copied_whole_and_still_counted() {
        let bytes = Bytes::from_static(b"$1\r\nv\r\n$-1\r\n");
        let ends: FrameEnds = smallvec::smallvec![
            FrameEnd {
                end: 7,
                kind: ReplyKind::Value
            },
            FrameEnd {
                end: 12,
                kind: ReplyKind::Nil
            },
        ];
        let two_gets = || -> Commands {
            smallvec::smallvec![
                CommandReply::plain("get", Some(0)),
                CommandReply::plain("get", Some(0)),
            ]
        };
        let replies = Replies {
            bytes: bytes.clone(),
            ends,
            written_at: None,
        };
        let (out, counters) = written(replies.clone(), two_gets(), false);
        assert_eq!(out, bytes.to_vec());
        let text = counters.join("\n");
        assert!(text.contains(r#"command="get"} 1"#), "{text}");
        let (out, suppressed) = written(replies, two_gets(), true);
        assert!(out.is_empty());
        assert_eq!(suppressed, counters);
    }

    /// A slot routed to a replica is recorded under `role="replica"`, with
    /// the backend time the reader measured, not the total.
    #[test]
    fn a_replica_slot_records_its_role_and_backend_time() {
        let metrics = Metrics::new(vec!["svc".into()], true);
        let mut recorder = metrics.recorder();
        let mut queue = ReplyQueue::default();
        let (tx, rx) = oneshot::channel();
        let now = Instant::now();
        let started = now - std::time::Duration::from_millis(500);
        let tag = queue.push_shared(
            rx,
            smallvec::smallvec![CommandReply::plain("get", Some(0))],
            false,
            started,
        );
        queue.push_ready(Bytes::from_static(b"+PONG\r\n"), false);
        queue.served_by(tag, Role::Replica);
        let replies = Replies {
            written_at: Some((now - std::time::Duration::from_millis(2)).into_std()),
            ..Replies::from(Bytes::from_static(b"$1\r\nv\r\n"))
        };
        tx.send(Ok(replies)).unwrap();
        let mut out = BytesMut::new();
        queue.drain_ready(&mut out, &mut recorder);
        drop(recorder);
        let text = metrics.render_prometheus(&[]);
        let labels = r#"{service="svc",command="get",role="replica"}"#;
        let sum = |name: &str| -> f64 {
            let prefix = format!("{name}{labels} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {text}"))
        };
        let backend = sum("keygate_backend_duration_seconds_sum");
        let total = sum("keygate_command_duration_seconds_sum");
        // From the write (2 ms before) to the drain; the total is 500 ms more.
        assert!((0.002..0.1).contains(&backend), "{backend}");
        assert!(total >= 0.5, "{total}");
        assert!(
            text.contains(&format!(
                "keygate_command_duration_seconds_count{labels} 1\n"
            )),
            "{text}"
        );
        assert!(!text.contains(r#"role="master""#), "{text}");
    }

    #[test]
    fn a_short_reply_is_an_internal_error_not_a_desync() {
        let replies = Replies::from(Bytes::from_static(b"+OK\r\n"));
        let two: Commands = smallvec::smallvec![
            CommandReply {
                plan: ReplyPlan::Replace(Bytes::from_static(b"+X\r\n")),
                ..CommandReply::plain("set", Some(0))
            },
            CommandReply::plain("set", Some(0)),
        ];
        let (out, _) = written(replies, two, false);
        assert_eq!(
            out,
            b"+X\r\n-ERR keygate: internal error splitting a reply\r\n".to_vec()
        );
    }
}
