//! The client's batch for a shared (multiplexed) connection: the requests
//! it gathers from one read, sealed into the reply queue, then handed to a
//! backend connection.
//!
//! Sealing and submitting are split so that the request stages stay
//! synchronous: sealing (taking the batch's place in the reply order) never
//! waits, while submitting (routing, which may wait through a failover hold,
//! and the connection's queue, which may push back) happens once the stages
//! are done. Invariants: sealed batches are submitted in the order they were
//! sealed, before anything that must reach a backend after them (a dedicated
//! connection's request, a keyspace procedure, the next read); each one goes
//! to the connection its client's protocol, service and commands chose when
//! it was sealed, not when it is submitted (a HELLO or AUTH right after it
//! in the same read must not move it), in the database it was sealed in.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;
use tokio::sync::oneshot;

use super::queue::{Answering, CommandReply, Commands};
use super::{redirect, split, Connection};
use crate::backend::mux::{Batch, Payload, LARGE_PIECE};
use crate::backend::node::Node;
use crate::config::ReadFrom;
use crate::metrics::Role;
use crate::near_cache::flight::Landings;
use crate::near_cache::tracking::Stamp;
use crate::policy::namespace::Namespace;
use crate::policy::reply::ReplyPlan;
use crate::protocol::request::Request;
use crate::protocol::Protocol;
use crate::router::Served;
use crate::topology::cluster::{Cluster, SlotMap};

/// A batch is sealed once it holds this many bytes.
pub(super) const MAX_BATCH_BYTES: usize = 64 * 1024;

/// Put in front of a read that fills the near cache.
const CACHING_YES: &[u8] = b"*3\r\n$6\r\nCLIENT\r\n$7\r\nCACHING\r\n$3\r\nYES\r\n";

/// The staging buffer grows by at least this much.
const STAGE_CHUNK: usize = 4 * 1024;

/// Requests being gathered for one shared-connection batch.
///
/// Small frames are copied end to end into `staged` (the mux copies them
/// into its write buffer anyway), so a pipelined batch is one payload piece
/// instead of one per request, and a one-key prefix rewrite is written
/// straight in instead of building a frame of its own. The first frames
/// of a batch are kept as they are while nothing is staged, so a lone
/// request is not copied here at all; large frames always stay pieces of
/// their own (a large value is never copied).
#[derive(Debug)]
pub(super) struct PendingBatch {
    payload: Payload,
    /// Small frames copied end to end; they follow `payload`'s pieces.
    staged: BytesMut,
    commands: Commands,
    /// Bytes of the request frames gathered.
    bytes: usize,
    /// Bytes of the replies keygate answered itself among them
    /// ([`Self::push_answered`]).
    answered: usize,
    suppress: bool,
    /// Every command in the batch is READONLY (topology: may go to a replica).
    read_only: bool,
    /// On a cluster backend, the batch's parts (its frames go to theirs,
    /// not to `payload` and `staged`) and the client's chain of followers;
    /// `None` on other backends.
    cluster: Option<Box<ClusterBatching>>,
    /// A command in the batch runs a script.
    script: bool,
    /// Sealed, waiting to be submitted.
    sealed: VecDeque<Sealed>,
    /// Near-cache fills in the batch learn their tracking session here.
    stamp: Option<Arc<Stamp>>,
    /// Reply frames gathered so far.
    frames: u32,
    /// Near-cache flights the batch's reads lead, by reply frame.
    landings: Landings,
}

/// What a client's batches carry on a cluster backend.
///
/// A batch gathers one part per node (a payload for each, many commands
/// each), all submitted together, and one slot in the reply queue that
/// merges the parts' replies back in the client's order. Each part stays
/// in its place in `parts`: a command for another node than the last one
/// changes only the `current` index (random keys change node at almost
/// every command), and a sealed batch leaves the parts' staging buffers
/// for the next one.
#[derive(Debug)]
struct ClusterBatching {
    chain: redirect::Chain,
    /// The slot map commands are grouped by, loaded again only when the
    /// cluster's map generation changes (maps of one generation give every
    /// slot the same master), and that generation.
    map: Option<Arc<SlotMap>>,
    generation: u64,
    /// The batch's parts (the first `active`; at least one), then spares
    /// whose staging buffers the next parts reuse.
    parts: Vec<Part>,
    /// How many parts the batch uses.
    active: u8,
    /// The index of the part the next command joins.
    current: u8,
    /// The part of each request frame, in the client's order.
    order: Vec<u8>,
    /// The commands split by slot, by where their frames start in `order`.
    splits: Vec<SplitAt>,
}

/// A command split by slot ([`split`]): its `count` request frames start at
/// frame `start` of the batch, and their replies merge into one.
#[derive(Debug)]
pub(super) struct SplitAt {
    pub(super) start: usize,
    pub(super) count: usize,
    pub(super) merge: split::Merge,
}

/// One node's share of a cluster batch, being gathered.
#[derive(Debug, Default)]
struct Part {
    /// The slot of its first command with keys and the master that served
    /// it when that command joined; `None` while it holds only commands
    /// without keys.
    route: Option<SlotRoute>,
    /// As [`PendingBatch`]'s `payload` and `staged`, for this part.
    payload: Payload,
    staged: BytesMut,
    /// Its request frames (the redirect follower pairs them with reply
    /// frames).
    frames: u32,
    script: bool,
    /// Near-cache fills in the part learn the tracking session of the
    /// node's connection here (each node tracks its own reads).
    stamp: Option<Arc<Stamp>>,
    /// The flights its fills lead, by the part's reply frame that lands
    /// each (a redirect lands none: see [`Landings::land`]).
    landings: Landings,
}

impl ClusterBatching {
    fn new() -> ClusterBatching {
        ClusterBatching {
            chain: redirect::Chain::default(),
            map: None,
            generation: 0,
            parts: vec![Part::default()],
            active: 1,
            current: 0,
            order: Vec::new(),
            splits: Vec::new(),
        }
    }

    fn current(&mut self) -> Option<&mut Part> {
        self.parts.get_mut(usize::from(self.current))
    }
}

/// At most this many parts (nodes, or slots while no map covers them) in
/// one batch; a command for another seals it.
const MAX_PARTS: usize = 16;

/// Where a part of a cluster batch goes: every command in it was for this
/// slot's master when it joined.
#[derive(Debug)]
struct SlotRoute {
    /// The slot of the part's first command with keys.
    slot: u16,
    /// Its master in the slot map then; `None` while no map covers it.
    node: Option<Arc<Node>>,
    /// The map generation `node` was read in.
    generation: u64,
}

/// The label of a part no node was routed to (its replies are keygate's).
const NO_LABEL: u16 = u16::MAX;

/// Which node answers each reply frame of a cluster batch, by the node
/// label of each part (`labels`): a request frame's part's (`order`), the
/// first part's for a command split by slot (its frames merge into one).
/// A request that was redirected counts under the node it was sent to.
fn answering(order: &[u8], splits: &[SplitAt], labels: &[u16]) -> Answering {
    match labels {
        [] => return Answering::Unknown,
        [first, rest @ ..] if rest.iter().all(|l| l == first) => return Answering::One(*first),
        _ => {}
    }
    let label = |part: u8| labels.get(usize::from(part)).copied().unwrap_or(NO_LABEL);
    let mut frames = Vec::with_capacity(order.len());
    let mut splits = splits.iter().peekable();
    let mut i = 0;
    while let Some(&part) = order.get(i) {
        frames.push(label(part));
        i += splits
            .next_if(|s| s.start == i)
            .map_or(1, |s| s.count.max(1));
    }
    Answering::ByFrame(frames.into_boxed_slice())
}

/// A sealed batch and where it goes.
#[derive(Debug)]
struct Sealed {
    batch: Batch,
    /// Its slot in the reply queue, told which node answers.
    slot: u64,
    read_from: ReadFrom,
    read_only: bool,
    protocol: Protocol,
    /// The database its client was in: it goes to a connection of that one.
    database: u32,
    /// On a cluster backend, its parts (`batch` then carries no payload:
    /// its sender answers the queue slot only when no part can be sent).
    cluster: Option<Box<SealedParts>>,
}

/// A sealed cluster batch's parts, the part of each request frame, and
/// the commands split by slot.
#[derive(Debug)]
struct SealedParts {
    parts: Vec<SealedPart>,
    order: Vec<u8>,
    splits: Vec<SplitAt>,
}

/// One node's share of a sealed cluster batch.
#[derive(Debug)]
struct SealedPart {
    payload: Payload,
    /// The slot whose master it goes to (`None`: no keys, any master).
    key_slot: Option<u16>,
    /// That master when the part was gathered, and the map generation it
    /// was read in: still the master while the generation is the same.
    master: Option<(Arc<Node>, u64)>,
    /// Its request frames.
    frames: u32,
    script: bool,
    /// See [`Part`]'s.
    stamp: Option<Arc<Stamp>>,
    /// See [`Part`]'s.
    landings: Landings,
}

/// Whether a command for `slot`, whose master is `node`, may join a part
/// routed by `ours`: a part goes to one node, so only a command for the
/// same master (or the same slot while no map covers it) joins one.
fn takes_route(ours: &SlotRoute, slot: u16, node: Option<&Arc<Node>>) -> bool {
    match (&ours.node, node) {
        (Some(ours), Some(node)) => Arc::ptr_eq(ours, node),
        (None, None) => ours.slot == slot,
        _ => false,
    }
}

impl ClusterBatching {
    /// Makes `map` the one to group commands by: the one loaded before
    /// unless the cluster published a map of another layout since. Returns
    /// its generation.
    fn load_map(&mut self, cluster: &Cluster) -> u64 {
        // The generation is read first: a map loaded after it is at least
        // as new, so the pair is never marked newer than the map it holds.
        let generation = cluster.generation();
        if self.map.is_none() || self.generation != generation {
            self.map = Some(arc_swap::Guard::into_inner(cluster.map()));
            self.generation = generation;
        }
        generation
    }
}

impl Default for PendingBatch {
    fn default() -> Self {
        PendingBatch {
            payload: Payload::new(),
            staged: BytesMut::new(),
            commands: Commands::new(),
            bytes: 0,
            answered: 0,
            suppress: false,
            read_only: true,
            cluster: None,
            script: false,
            sealed: VecDeque::new(),
            stamp: None,
            frames: 0,
            landings: Landings::default(),
        }
    }
}

impl PendingBatch {
    /// The batch of a client of a cluster backend (`cluster`) or another.
    pub(super) fn for_backend(cluster: bool) -> PendingBatch {
        PendingBatch {
            cluster: cluster.then(|| Box::new(ClusterBatching::new())),
            ..PendingBatch::default()
        }
    }

    /// Notes a request frame in its part, on a cluster backend.
    fn note_frame(&mut self) {
        if let Some(cluster) = self.cluster.as_deref_mut() {
            let current = cluster.current;
            cluster.order.push(current);
            if let Some(part) = cluster.current() {
                part.frames += 1;
            }
        }
    }

    /// Where the next frame goes: the current part's payload and staging
    /// buffer on a cluster backend, else the batch's.
    fn buffers(&mut self) -> (&mut Payload, &mut BytesMut) {
        if let Some(part) = self
            .cluster
            .as_deref_mut()
            .and_then(ClusterBatching::current)
        {
            return (&mut part.payload, &mut part.staged);
        }
        (&mut self.payload, &mut self.staged)
    }

    /// Commands gathered and not yet sealed (they count as in flight).
    pub(super) fn commands(&self) -> usize {
        self.commands.len()
    }

    /// Whether a command with this suppression may join the batch, or the
    /// batch must be sealed first (replies of one slot share suppression,
    /// and a batch stays within [`MAX_BATCH_BYTES`]).
    pub(super) fn takes(&self, suppress: bool) -> bool {
        self.is_empty()
            || (self.suppress == suppress && self.bytes + self.answered < MAX_BATCH_BYTES)
    }

    /// Makes the part for cluster slot `slot` the one the next command
    /// joins: the current part when it goes to the slot's master in
    /// `cluster`'s map (or is for the same slot while no map covers it) or
    /// has no keys yet, else the part for that master, else a new one.
    /// `Err` when the batch holds [`MAX_PARTS`] parts already: seal it
    /// first.
    pub(super) fn route_to(&mut self, slot: u16, cluster: Option<&Cluster>) -> Result<(), ()> {
        let (Some(batching), Some(cluster)) = (self.cluster.as_deref_mut(), cluster) else {
            return Ok(());
        };
        let generation = batching.load_map(cluster);
        let ClusterBatching {
            map,
            parts,
            active,
            current,
            ..
        } = batching;
        let node = map.as_deref().and_then(|m| m.master(slot));
        let route = || SlotRoute {
            slot,
            node: node.cloned(),
            generation,
        };
        if let Some(part) = parts.get_mut(usize::from(*current)) {
            match &part.route {
                None => {
                    part.route = Some(route());
                    return Ok(());
                }
                Some(ours) if takes_route(ours, slot, node) => return Ok(()),
                Some(_) => {}
            }
        }
        let used = usize::from(*active);
        let found = parts.iter().take(used).position(|p| {
            p.route
                .as_ref()
                .is_some_and(|ours| takes_route(ours, slot, node))
        });
        let next = match found {
            Some(i) => i,
            None if used < MAX_PARTS => {
                match parts.get_mut(used) {
                    Some(spare) => spare.route = Some(route()),
                    None => parts.push(Part {
                        route: Some(route()),
                        ..Part::default()
                    }),
                }
                *active += 1;
                used
            }
            None => return Err(()),
        };
        *current = u8::try_from(next).unwrap_or(u8::MAX);
        Ok(())
    }

    /// Whether the batch has room for the parts of `split`'s nodes in
    /// `cluster`'s map, or it must be sealed first (a fresh batch may still
    /// have none: then the command is refused).
    pub(super) fn has_room_for(&mut self, split: &split::Split, cluster: Option<&Cluster>) -> bool {
        let (Some(batching), Some(cluster)) = (self.cluster.as_deref_mut(), cluster) else {
            return true;
        };
        let active = usize::from(batching.active);
        let generation = batching.load_map(cluster);
        let map = batching.map.as_deref();
        let mut nodes: Vec<SlotRoute> = Vec::new();
        for &(slot, _) in &split.parts {
            let node = map.and_then(|m| m.master(slot));
            if !nodes.iter().any(|n| takes_route(n, slot, node)) {
                nodes.push(SlotRoute {
                    slot,
                    node: node.cloned(),
                    generation,
                });
            }
        }
        active.saturating_add(nodes.len()) <= MAX_PARTS
    }

    /// Adds a command split by slot (see [`Self::has_room_for`]): each
    /// slot's request joins its node's part in `cluster`'s map, and their
    /// replies merge into the one `reply` answers.
    pub(super) fn push_split(
        &mut self,
        split: split::Split,
        cluster: Option<&Cluster>,
        reply: CommandReply,
        suppress: bool,
    ) {
        if self.is_empty() {
            self.suppress = suppress;
        }
        let start = self.cluster.as_ref().map_or(0, |c| c.order.len());
        let count = split.parts.len();
        for (slot, request) in split.parts {
            if self.route_to(slot, cluster).is_err() {
                // Room was checked: not reached.
                tracing::warn!("cluster: no part for a split command's slot");
            }
            self.add_frame(request.into_frame());
        }
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.splits.push(SplitAt {
                start,
                count,
                merge: split.merge,
            });
        }
        self.read_only = false;
        self.commands.push(reply);
    }

    /// The gathered cluster parts, sealed (the batch keeps none of them).
    fn take_parts(&mut self) -> Option<Box<SealedParts>> {
        let cluster = self.cluster.as_deref_mut()?;
        let active = usize::from(cluster.active);
        let mut parts = Vec::with_capacity(active);
        for part in cluster.parts.iter_mut().take(active) {
            unstage(&mut part.payload, &mut part.staged);
            // The next batch's part likely looks like this one.
            let pieces = part.payload.len();
            let route = part.route.take();
            parts.push(SealedPart {
                payload: std::mem::replace(&mut part.payload, Payload::with_capacity(pieces)),
                key_slot: route.as_ref().map(|r| r.slot),
                master: route.and_then(|r| Some((r.node?, r.generation))),
                frames: std::mem::take(&mut part.frames),
                script: std::mem::take(&mut part.script),
                stamp: part.stamp.take(),
                landings: std::mem::take(&mut part.landings),
            });
        }
        cluster.active = 1;
        cluster.current = 0;
        let splits = std::mem::take(&mut cluster.splits);
        // One part's replies need no merge, so not the order either: it
        // stays, with its storage, for the next batch.
        let order = if active > 1 || !splits.is_empty() {
            // Sized for the next batch once rather than grown step by step.
            let len = cluster.order.len();
            std::mem::replace(&mut cluster.order, Vec::with_capacity(len))
        } else {
            cluster.order.clear();
            Vec::new()
        };
        Some(Box::new(SealedParts {
            parts,
            order,
            splits,
        }))
    }

    /// Nothing is gathered: no request frame (on a cluster backend, in
    /// any part) and no answer of keygate's own.
    pub(super) fn is_empty(&self) -> bool {
        self.bytes == 0 && self.answered == 0
    }

    /// Whether sealed batches wait to be submitted.
    pub(super) fn has_sealed(&self) -> bool {
        !self.sealed.is_empty()
    }

    /// Adds a command: its request (confined by `namespace` to its prefix
    /// at argument `at` first, when given) and the follow-ups keygate added.
    pub(super) fn push(
        &mut self,
        request: Request,
        confine: Option<(usize, &Namespace)>,
        follow_ups: Vec<Request>,
        reply: CommandReply,
        suppress: bool,
        read_only: bool,
    ) {
        if self.is_empty() {
            self.suppress = suppress;
        }
        match confine {
            Some((at, ns)) => {
                // At most this long: the prefix, and a `$len` line longer by
                // at most a number's digits.
                let most = request.frame().len() + ns.prefix_bytes().len() + 20;
                if most >= LARGE_PIECE {
                    self.add_frame(request.prefix_arg(at, ns.prefix_bytes()).into_frame());
                } else {
                    let (_, staged) = self.buffers();
                    make_room(staged, most);
                    let before = staged.len();
                    ns.write_confined(&request, at, staged);
                    let written = staged.len() - before;
                    self.bytes += written;
                    self.note_frame();
                }
            }
            None => self.add_frame(request.into_frame()),
        }
        if !follow_ups.is_empty() {
            for follow_up in follow_ups {
                self.add_frame(follow_up.into_frame());
            }
        }
        self.read_only &= read_only;
        self.frames += reply.frames;
        self.commands.push(reply);
    }

    /// Adds a read that fills the near cache: `CLIENT CACHING YES` in
    /// front of it (so Redis tracks its key for this connection) and a
    /// `PTTL` of its key behind it, in the same write; `reply.near` says so.
    /// Returns the stamp the connection tells its tracking session on.
    pub(super) fn push_fill(
        &mut self,
        request: Request,
        confine: Option<(usize, &Namespace)>,
        pttl: Request,
        reply: CommandReply,
        suppress: bool,
    ) {
        if self.is_empty() {
            self.suppress = suppress;
        }
        if let Some(landing) = match &reply.plan {
            ReplyPlan::NearFill(fill) => fill.landing(),
            _ => None,
        } {
            // The read's own reply, behind CLIENT CACHING's: on a cluster
            // backend in its node's part (a redirect there lands nothing,
            // and the followers read on their own).
            match self.cluster.as_deref_mut() {
                Some(cluster) => {
                    if let Some(part) = cluster.current() {
                        part.landings.push(part.frames + 1, landing);
                    }
                }
                None => self.landings.push(self.frames + 1, landing),
            }
        }
        self.add_frame(Bytes::from_static(CACHING_YES));
        self.push(request, confine, vec![pttl], reply, suppress, false);
    }

    /// Adds a command keygate answered itself (a near-cache hit) instead
    /// of sealing the batch around it (see [`Self::takes`] first): it sends
    /// nothing and takes no reply frame, and its answer is written between
    /// its neighbours' replies, so a pipeline of hits and misses is one
    /// write each way. A batch of nothing but such answers is sealed as
    /// one ready reply. Their bytes count towards the batch's size.
    pub(super) fn push_answered(&mut self, answer: Bytes, reply: CommandReply, suppress: bool) {
        if self.is_empty() {
            self.suppress = suppress;
        }
        self.answered += answer.len();
        self.commands.push(CommandReply {
            frames: 0,
            plan: ReplyPlan::Answered(answer),
            ..reply
        });
    }

    /// The stamp of the batch being gathered (on a cluster backend, of
    /// the part the next command joins), for a fill's reply.
    pub(super) fn stamp(&mut self) -> Arc<Stamp> {
        let stamp = match self
            .cluster
            .as_deref_mut()
            .and_then(ClusterBatching::current)
        {
            Some(part) => &mut part.stamp,
            None => &mut self.stamp,
        };
        stamp.get_or_insert_with(Default::default).clone()
    }

    fn add_frame(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.note_frame();
        let (payload, staged) = self.buffers();
        if frame.len() >= LARGE_PIECE {
            unstage(payload, staged);
            payload.push(frame);
        } else if staged.is_empty() && payload.is_empty() {
            // Alone it needs no copy; with the staged frames that may follow
            // it, the payload stays within its inline pieces.
            payload.push(frame);
        } else {
            make_room(staged, frame.len());
            staged.extend_from_slice(&frame);
        }
    }

    /// The command just pushed runs a script (see [`Batch::script`]).
    pub(super) fn mark_script(&mut self) {
        match self
            .cluster
            .as_deref_mut()
            .and_then(ClusterBatching::current)
        {
            Some(part) => part.script = true,
            None => self.script = true,
        }
    }

    /// Moves the staged frames into the payload as one piece, so a piece
    /// pushed after them goes out after them.
    fn unstage(&mut self) {
        let (payload, staged) = self.buffers();
        unstage(payload, staged);
    }

    /// Gives back the storage a burst grew; only while nothing waits in it.
    pub(super) fn release_memory(&mut self) {
        if self.sealed.is_empty() {
            self.sealed = VecDeque::new();
        }
        if self.is_empty() {
            self.staged = BytesMut::new();
            if let Some(cluster) = self.cluster.as_deref_mut() {
                // An idle client keeps no map alive.
                cluster.map = None;
                cluster.parts.truncate(1);
                for part in &mut cluster.parts {
                    part.staged = BytesMut::new();
                }
            }
        }
    }
}

/// Room for `len` more staged bytes, grown a chunk at a time: once its
/// earlier bytes are sent and released, the buffer reuses its storage.
fn make_room(staged: &mut BytesMut, len: usize) {
    if staged.capacity() - staged.len() < len {
        staged.reserve(len.max(STAGE_CHUNK));
    }
}

/// Moves the staged frames into the payload as one piece, so a piece
/// pushed after them goes out after them.
fn unstage(payload: &mut Payload, staged: &mut BytesMut) {
    if !staged.is_empty() {
        payload.push(staged.split().freeze());
    }
}

impl Connection {
    /// On a cluster backend, makes `slot`'s master's part the one the next
    /// command joins, sealing the batch first when it holds as many parts
    /// as it may.
    pub(super) fn route_batch_to(&mut self, slot: u16) {
        if self
            .batch
            .route_to(slot, self.ctx.router.cluster())
            .is_err()
        {
            self.seal_batch();
            let _ = self.batch.route_to(slot, self.ctx.router.cluster());
        }
    }

    /// Closes the gathered batch: its replies take their place in the reply
    /// order now, and it waits to be submitted.
    pub(super) fn seal_batch(&mut self) {
        let pending = &mut self.batch;
        if pending.is_empty() {
            return;
        }
        if pending.bytes == 0 {
            // Only keygate's own answers: one reply, ready now. The parts
            // their commands were routed to stay empty: none is kept for
            // the next batch.
            drop(pending.take_parts());
            let mut ready = BytesMut::with_capacity(pending.answered);
            for command in pending.commands.drain(..) {
                if let ReplyPlan::Answered(answer) = &command.plan {
                    ready.extend_from_slice(answer);
                }
            }
            pending.answered = 0;
            let suppress = pending.suppress;
            self.queue.push_ready(ready.freeze(), suppress);
            return;
        }
        pending.answered = 0;
        let cluster = pending.take_parts();
        pending.unstage();
        // The next batch likely looks like this one (a client pipelines the
        // same depth again): size it once instead of growing it step by step.
        let (frames, count) = (pending.payload.len(), pending.commands.len());
        let payload = std::mem::replace(&mut pending.payload, Payload::with_capacity(frames));
        let commands = std::mem::replace(&mut pending.commands, Commands::with_capacity(count));
        let replies = std::mem::take(&mut pending.frames);
        pending.bytes = 0;
        let (tx, rx) = oneshot::channel();
        let slot = self
            .queue
            .push_shared(rx, commands, pending.suppress, self.read_at);
        let read_only = std::mem::replace(&mut pending.read_only, true);
        let script = std::mem::take(&mut pending.script);
        let read_from = self
            .session
            .service
            .as_ref()
            .map_or(ReadFrom::Master, |s| s.read_from);
        pending.sealed.push_back(Sealed {
            batch: Batch {
                payload,
                count: replies,
                reply: tx,
                meter: Some(self.meter.clone()),
                script,
                stamp: pending.stamp.take(),
                landings: std::mem::take(&mut pending.landings),
            },
            slot,
            read_from,
            read_only,
            protocol: self.session.protocol,
            database: self.session.database,
            cluster,
        });
    }

    /// Hands every sealed batch to its backend connection, in order.
    pub(super) async fn submit_sealed(&mut self) {
        if self.batch.sealed.is_empty() {
            return;
        }
        // A keyspace procedure queued before these batches runs first.
        self.await_procedure().await;
        while let Some(sealed) = self.batch.sealed.pop_front() {
            // topology: route through the router (replica for read-only
            // batches of replica-reading services; the master otherwise,
            // waiting through a failover hold for at most failover_wait).
            if self.batch.cluster.is_some() {
                self.submit_to_cluster(sealed).await;
                continue;
            }
            let node = self
                .ctx
                .router
                .node_for_batch(sealed.read_from, sealed.read_only)
                .await;
            // metrics: the replies are recorded under the node that answers.
            match node {
                Ok((node, served)) => {
                    if served == Served::Replica {
                        self.queue.served_by(sealed.slot, Role::Replica);
                    }
                    node.mux_in(sealed.protocol, self.session.id, sealed.database)
                        .submit(sealed.batch)
                        .await
                }
                Err(e) => {
                    self.queue.served_by(sealed.slot, Role::Proxy);
                    let _ = sealed.batch.reply.send(Err(e.into()));
                }
            }
        }
    }

    /// Hands each part of a sealed batch to the master of its slot (any
    /// master when it has no keys; a replica of the slot's shard for a
    /// read-only batch of a replica-reading service), and gives its queue
    /// slot the follower that merges the parts' replies and absorbs the
    /// cluster's redirects ([`redirect`]); first waits for the client's batches routed by an
    /// older slot map, so none of its requests overtakes a retried one.
    async fn submit_to_cluster(&mut self, sealed: Sealed) {
        let ctx = self.ctx.clone();
        let Some(SealedParts {
            parts,
            order,
            splits,
        }) = sealed.cluster.map(|c| *c)
        else {
            return;
        };
        // Read before routing: a batch is never marked newer than its route.
        let generation = ctx.router.cluster().map_or(0, |c| c.generation());
        // topology: a read-only batch of a replica-reading service reads
        // each slot from a replica of its shard (by `read_from`'s rule).
        let reads = sealed.read_only && sealed.read_from != ReadFrom::Master;
        let mut routed = Vec::with_capacity(parts.len());
        for mut part in parts {
            // The master it was gathered for, while the map's layout is
            // the one that was read in.
            let gathered = part.master.take().filter(|(_, g)| *g == generation);
            let node = match (part.key_slot, gathered) {
                (Some(slot), _) if reads => {
                    match ctx.router.replica_for_slot(sealed.read_from, slot) {
                        Ok(Some(replica)) => Ok((replica, Some(slot))),
                        Ok(None) => ctx.router.master_for_slot(slot).await.map(|n| (n, None)),
                        Err(e) => Err(e),
                    }
                }
                (Some(_), Some((master, _))) => Ok((master, None)),
                (Some(slot), None) => ctx.router.master_for_slot(slot).await.map(|n| (n, None)),
                (None, _) => ctx.router.master_for().await.map(|n| (n, None)),
            };
            routed.push((part, node));
        }
        if let [(_, Err(_))] = routed.as_slice() {
            if let Some((_, Err(e))) = routed.pop() {
                self.queue.served_by(sealed.slot, Role::Proxy);
                let _ = sealed.batch.reply.send(Err(e.into()));
            }
            return;
        }
        // metrics: a batch read from replicas alone is recorded as theirs.
        if routed
            .iter()
            .all(|(_, node)| matches!(node, Ok((_, Some(_)))))
        {
            self.queue.served_by(sealed.slot, Role::Replica);
        }
        let must_wait = self
            .batch
            .cluster
            .as_ref()
            .is_some_and(|c| c.chain.must_wait(generation));
        if must_wait {
            // The followers in flight are this client's own queue slots:
            // they run as it polls them.
            let tag = sealed.slot;
            std::future::poll_fn(|cx| self.queue.poll_shared_answered_before(tag, cx)).await;
        }
        let mut sent = Vec::with_capacity(routed.len());
        // metrics: each part's node, for the `node` label of backend times.
        let mut labels: SmallVec<[u16; MAX_PARTS]> = SmallVec::new();
        for (part, node) in routed {
            let (node, read_slot) = match node {
                Ok(node) => node,
                Err(e) => {
                    labels.push(NO_LABEL);
                    sent.push(redirect::Sent::Failed(e.into()));
                    continue;
                }
            };
            labels.push(node.label());
            let (tx, rx) = oneshot::channel();
            let batch = Batch {
                payload: part.payload,
                count: part.frames,
                reply: tx,
                meter: Some(self.meter.clone()),
                script: part.script,
                stamp: part.stamp,
                landings: part.landings,
            };
            let follow = redirect::Follow {
                ctx: ctx.clone(),
                node,
                protocol: sealed.protocol,
                client_id: self.session.id,
                database: sealed.database,
                payload: batch.payload.clone(),
                frames: part.frames,
                meter: self.meter.clone(),
                script: part.script,
                read_slot,
            };
            let (id, db) = (self.session.id, sealed.database);
            let mux = match read_slot {
                Some(_) => follow.node.mux_reads(sealed.protocol, id, db),
                None => follow.node.mux_in(sealed.protocol, id, db),
            };
            if batch.count == 0 {
                // Every command routed to it was answered by keygate (near-
                // cache hits): nothing to send, no reply to wait for.
                let _ = batch.reply.send(Ok(Default::default()));
            } else {
                mux.submit(batch).await;
            }
            sent.push(redirect::Sent::Part(rx, follow));
        }
        let Some(cluster) = self.batch.cluster.as_mut() else {
            return;
        };
        let nodes = answering(&order, &splits, &labels);
        self.queue.answered_by(sealed.slot, nodes);
        let follower = redirect::follow(
            &mut cluster.chain,
            generation,
            sent,
            (order, splits),
            &self.meter,
        );
        self.queue.follow(sealed.slot, follower);
    }

    /// Seals the gathered batch and submits everything sealed.
    pub(super) async fn flush_batch(&mut self) {
        self.seal_batch();
        self.submit_sealed().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces_of(batch: &mut PendingBatch) -> Vec<Bytes> {
        batch.unstage();
        batch.payload.drain(..).collect()
    }

    fn push(batch: &mut PendingBatch, req: &Request, prefix: Option<(usize, &[u8])>) {
        let reply = CommandReply::plain("get", None);
        let ns = prefix.map(|(at, prefix)| (at, Namespace::new("svc", prefix)));
        let confine = ns.as_ref().map(|(at, ns)| (*at, ns));
        batch.push(req.clone(), confine, Vec::new(), reply, false, true);
    }

    /// The payload's pieces, end to end, are the frames in the order they
    /// were pushed, prefixed where asked; a lone frame and large frames
    /// stay pieces of their own, the small ones after the first are staged
    /// into one.
    #[test]
    fn pieces_keep_order_and_large_frames_whole() {
        let small = Request::from_args(&["GET", "k"]);
        let large = Request::from_args(&[&b"SET"[..], b"big", &vec![b'v'; LARGE_PIECE]]);
        let mut batch = PendingBatch::default();
        push(&mut batch, &small, None);
        push(&mut batch, &small, Some((1, b"ns:")));
        push(&mut batch, &small, None);
        push(&mut batch, &large, None);
        push(&mut batch, &large, Some((1, b"ns:")));
        push(&mut batch, &small, None);
        let want: Vec<u8> = [
            small.frame().clone(),
            small.prefix_arg(1, b"ns:").into_frame(),
            small.frame().clone(),
            large.frame().clone(),
            large.prefix_arg(1, b"ns:").into_frame(),
            small.frame().clone(),
        ]
        .concat();
        assert_eq!(batch.bytes, want.len());
        assert_eq!(batch.commands(), 6);
        let pieces = pieces_of(&mut batch);
        let lens: Vec<usize> = pieces.iter().map(Bytes::len).collect();
        assert_eq!(pieces.concat(), want);
        assert_eq!(lens.len(), 5, "{lens:?}");
        assert_eq!(lens[0], small.frame().len());
        assert_eq!(lens[2], large.frame().len());
    }

    /// A lone request goes as the frame it was read in (no copy).
    #[test]
    fn lone_request_is_not_copied() {
        let req = Request::from_args(&["GET", "k"]);
        let mut batch = PendingBatch::default();
        push(&mut batch, &req, None);
        let pieces = pieces_of(&mut batch);
        assert_eq!(pieces.len(), 1);
        assert_eq!(pieces[0].as_ptr(), req.frame().as_ptr());
    }

    /// The node of each reply frame: one node for a batch of one part;
    /// else each frame's part's, a split command once (its first part's).
    #[test]
    fn cluster_reply_frames_are_labelled_by_their_parts_node() {
        let split = |start, count| SplitAt {
            start,
            count,
            merge: split::Merge::Sum,
        };
        assert!(matches!(
            answering(&[0, 1, 0], &[], &[7, 7]),
            Answering::One(7)
        ));
        // GET (part 0), a DEL split over parts 1 and 0, GET (part 1).
        let Answering::ByFrame(frames) = answering(&[0, 1, 0, 1], &[split(1, 2)], &[4, 9]) else {
            panic!("labelled by frame");
        };
        assert_eq!(&frames[..], [4, 9, 9]);
    }

    /// On a cluster backend a read's commands gather into one part per
    /// node (here per slot: no map covers them), each in its client's
    /// order, and the order says which part answers each frame.
    #[test]
    fn cluster_commands_gather_one_part_per_node() {
        let mut batch = PendingBatch::for_backend(true);
        let hour = std::time::Duration::from_secs(3600);
        let cluster = Cluster::new(vec!["127.0.0.1:1".into()], hour, 5, hour);
        let gets: Vec<Request> = ["a", "b", "c", "d"]
            .iter()
            .map(|k| Request::from_args(&["GET", k]))
            .collect();
        for (req, slot) in gets.iter().zip([1u16, 2, 1, 3]) {
            batch
                .route_to(slot, Some(&cluster))
                .expect("room for parts");
            push(&mut batch, req, None);
        }
        assert_eq!(batch.commands(), 4);
        let sealed = batch.take_parts().expect("a cluster batch");
        assert_eq!(sealed.order, [0, 1, 0, 2]);
        let slots: Vec<Option<u16>> = sealed.parts.iter().map(|p| p.key_slot).collect();
        assert_eq!(slots, [Some(1), Some(2), Some(3)]);
        let first = &sealed.parts[0];
        assert_eq!(first.frames, 2);
        assert_eq!(
            first.payload.concat(),
            [gets[0].frame().clone(), gets[2].frame().clone()].concat()
        );
        assert_eq!(sealed.parts[1].payload.concat(), gets[1].frame().to_vec());
        // Nothing is left behind for the next batch.
        let next = batch.take_parts().expect("a cluster batch");
        assert_eq!(next.parts.len(), 1);
        assert!(next.parts[0].frames == 0 && next.order.is_empty());
    }
}
