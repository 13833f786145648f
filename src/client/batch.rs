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
use tokio::sync::oneshot;

use super::queue::{CommandReply, Commands};
use super::{redirect, Connection};
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
    bytes: usize,
    suppress: bool,
    /// Every command in the batch is READONLY (topology: may go to a replica).
    read_only: bool,
    /// On a cluster backend, the slot of its first command with keys and
    /// the master that served it when that command joined; `None` while it
    /// holds only commands without keys (and always on other backends).
    route: Option<SlotRoute>,
    /// On a cluster backend, each gathered request frame's length (the
    /// redirect follower pairs request frames with reply frames) and the
    /// client's chain of followers; `None` on other backends.
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
#[derive(Debug, Default)]
struct ClusterBatching {
    frame_lens: Vec<u32>,
    chain: redirect::Chain,
}

/// Where a cluster batch goes: every command in it was for this slot's
/// master when it joined.
#[derive(Debug)]
pub(super) struct SlotRoute {
    /// The slot of the batch's first command with keys.
    pub(super) slot: u16,
    /// Its master in the slot map then; `None` while no map covers it.
    pub(super) node: Option<Arc<Node>>,
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
    /// On a cluster backend, the slot whose master it goes to.
    key_slot: Option<u16>,
    /// On a cluster backend, each request frame's length.
    frame_lens: Vec<u32>,
}

impl Default for PendingBatch {
    fn default() -> Self {
        PendingBatch {
            payload: Payload::new(),
            staged: BytesMut::new(),
            commands: Commands::new(),
            bytes: 0,
            suppress: false,
            read_only: true,
            route: None,
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
            cluster: cluster.then(Box::default),
            ..PendingBatch::default()
        }
    }

    /// Notes a request frame's length, on a cluster backend.
    fn note_frame(&mut self, len: usize) {
        if let Some(cluster) = &mut self.cluster {
            cluster
                .frame_lens
                .push(u32::try_from(len).unwrap_or(u32::MAX));
        }
    }

    /// Commands gathered and not yet sealed (they count as in flight).
    pub(super) fn commands(&self) -> usize {
        self.commands.len()
    }

    /// Whether a command with this suppression may join the batch, or the
    /// batch must be sealed first (replies of one slot share suppression,
    /// and a batch stays within [`MAX_BATCH_BYTES`]).
    pub(super) fn takes(&self, suppress: bool) -> bool {
        self.is_empty() || (self.suppress == suppress && self.bytes < MAX_BATCH_BYTES)
    }

    /// Whether a command for cluster slot `route.slot` may join, or the
    /// batch must be sealed first: a batch goes to one node, so a command
    /// joins only a batch for the same master (or one for the same slot
    /// while no map covers it), or one with no keys yet.
    pub(super) fn takes_route(&self, route: &SlotRoute) -> bool {
        match (&self.route, &route.node) {
            (None, _) => true,
            (Some(ours), Some(node)) => ours.node.as_ref().is_some_and(|n| Arc::ptr_eq(n, node)),
            (Some(ours), None) => ours.node.is_none() && ours.slot == route.slot,
        }
    }

    /// Sets where the batch goes, if no command with keys set it before.
    pub(super) fn set_route(&mut self, route: SlotRoute) {
        if self.route.is_none() {
            self.route = Some(route);
        }
    }

    /// Nothing is gathered (every command has a frame, so no bytes means none).
    fn is_empty(&self) -> bool {
        self.bytes == 0
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
                    self.make_room(most);
                    let before = self.staged.len();
                    ns.write_confined(&request, at, &mut self.staged);
                    let written = self.staged.len() - before;
                    self.bytes += written;
                    self.note_frame(written);
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
        if let ReplyPlan::NearFill(fill) = &reply.plan {
            if let Some(landing) = fill.landing() {
                // The read's own reply, behind CLIENT CACHING's.
                self.landings.push(self.frames + 1, landing);
            }
        }
        self.add_frame(Bytes::from_static(CACHING_YES));
        self.push(request, confine, vec![pttl], reply, suppress, false);
    }

    /// The stamp of the batch being gathered, for a fill's reply.
    pub(super) fn stamp(&mut self) -> Arc<Stamp> {
        self.stamp.get_or_insert_with(Default::default).clone()
    }

    fn add_frame(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.note_frame(frame.len());
        if frame.len() >= LARGE_PIECE {
            self.unstage();
            self.payload.push(frame);
        } else if self.staged.is_empty() && self.payload.is_empty() {
            // Alone it needs no copy; with the staged frames that may follow
            // it, the payload stays within its inline pieces.
            self.payload.push(frame);
        } else {
            self.make_room(frame.len());
            self.staged.extend_from_slice(&frame);
        }
    }

    /// Room for `len` more staged bytes, grown a chunk at a time: once its
    /// earlier bytes are sent and released, the buffer reuses its storage.
    fn make_room(&mut self, len: usize) {
        if self.staged.capacity() - self.staged.len() < len {
            self.staged.reserve(len.max(STAGE_CHUNK));
        }
    }

    /// The command just pushed runs a script (see [`Batch::script`]).
    pub(super) fn mark_script(&mut self) {
        self.script = true;
    }

    /// Moves the staged frames into the payload as one piece, so a piece
    /// pushed after them goes out after them.
    fn unstage(&mut self) {
        if !self.staged.is_empty() {
            self.payload.push(self.staged.split().freeze());
        }
    }

    /// Gives back the storage a burst grew; only while nothing waits in it.
    pub(super) fn release_memory(&mut self) {
        if self.sealed.is_empty() {
            self.sealed = VecDeque::new();
        }
        if self.is_empty() {
            self.staged = BytesMut::new();
        }
    }
}

impl Connection {
    /// Closes the gathered batch: its replies take their place in the reply
    /// order now, and it waits to be submitted.
    pub(super) fn seal_batch(&mut self) {
        let pending = &mut self.batch;
        if pending.is_empty() {
            return;
        }
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
        let key_slot = pending.route.take().map(|r| r.slot);
        let frame_lens = pending
            .cluster
            .as_mut()
            .map(|c| std::mem::take(&mut c.frame_lens))
            .unwrap_or_default();
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
            key_slot,
            frame_lens,
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

    /// Hands a sealed batch to the master of its slot (any master when it
    /// has no keys), with a follower that absorbs the cluster's redirects
    /// ([`redirect`]); first waits for the client's batches routed by an
    /// older slot map, so none of its requests overtakes a retried one.
    async fn submit_to_cluster(&mut self, sealed: Sealed) {
        let ctx = self.ctx.clone();
        // Read before routing: a batch is never marked newer than its route.
        let generation = ctx.router.cluster().map_or(0, |c| c.generation());
        let node = match sealed.key_slot {
            Some(slot) => ctx.router.master_for_slot(slot).await,
            None => ctx.router.master_for().await,
        };
        let node = match node {
            Ok(node) => node,
            Err(e) => {
                self.queue.served_by(sealed.slot, Role::Proxy);
                let _ = sealed.batch.reply.send(Err(e.into()));
                return;
            }
        };
        let Some(cluster) = self.batch.cluster.as_mut() else {
            return;
        };
        if let Some(tail) = cluster.chain.must_wait(generation) {
            redirect::wait_done(tail).await;
        }
        let follow = redirect::Follow {
            ctx,
            node,
            protocol: sealed.protocol,
            client_id: self.session.id,
            database: sealed.database,
            payload: sealed.batch.payload.clone(),
            frame_lens: sealed.frame_lens,
            meter: self.meter.clone(),
            script: sealed.batch.script,
        };
        redirect::submit(&mut cluster.chain, generation, sealed.batch, follow).await;
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
}
