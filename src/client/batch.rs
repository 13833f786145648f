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
//! in the same read must not move it).

use std::collections::VecDeque;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::queue::{CommandReply, Commands};
use super::Connection;
use crate::backend::mux::{Batch, Payload};
use crate::config::ReadFrom;
use crate::protocol::request::Request;
use crate::protocol::Protocol;

/// A batch is sealed once it holds this many bytes.
pub(super) const MAX_BATCH_BYTES: usize = 64 * 1024;

/// Requests being gathered for one shared-connection batch.
#[derive(Debug)]
pub(super) struct PendingBatch {
    payload: Payload,
    commands: Commands,
    bytes: usize,
    suppress: bool,
    /// Every command in the batch is READONLY (topology: may go to a replica).
    read_only: bool,
    /// Sealed, waiting to be submitted.
    sealed: VecDeque<Sealed>,
}

/// A sealed batch and where it goes.
#[derive(Debug)]
struct Sealed {
    batch: Batch,
    read_from: ReadFrom,
    read_only: bool,
    protocol: Protocol,
}

impl Default for PendingBatch {
    fn default() -> Self {
        PendingBatch {
            payload: Payload::new(),
            commands: Commands::new(),
            bytes: 0,
            suppress: false,
            read_only: true,
            sealed: VecDeque::new(),
        }
    }
}

impl PendingBatch {
    /// Commands gathered and not yet sealed (they count as in flight).
    pub(super) fn commands(&self) -> usize {
        self.commands.len()
    }

    /// Whether a command with this suppression may join the batch, or the
    /// batch must be sealed first (replies of one slot share suppression,
    /// and a batch stays within [`MAX_BATCH_BYTES`]).
    pub(super) fn takes(&self, suppress: bool) -> bool {
        self.payload.is_empty() || (self.suppress == suppress && self.bytes < MAX_BATCH_BYTES)
    }

    /// Whether sealed batches wait to be submitted.
    pub(super) fn has_sealed(&self) -> bool {
        !self.sealed.is_empty()
    }

    /// Adds a command: its request and the follow-ups keygate added.
    pub(super) fn push(
        &mut self,
        request: Request,
        follow_ups: Vec<Request>,
        reply: CommandReply,
        suppress: bool,
        read_only: bool,
    ) {
        if self.payload.is_empty() {
            self.suppress = suppress;
        }
        self.add_frame(request.into_frame());
        if !follow_ups.is_empty() {
            for follow_up in follow_ups {
                self.add_frame(follow_up.into_frame());
            }
        }
        self.read_only &= read_only;
        self.commands.push(reply);
    }

    fn add_frame(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.payload.push(frame);
    }

    /// Gives back the storage a burst grew; only while nothing waits in it.
    pub(super) fn release_memory(&mut self) {
        if self.sealed.is_empty() {
            self.sealed = VecDeque::new();
        }
    }
}

impl Connection {
    /// Closes the gathered batch: its replies take their place in the reply
    /// order now, and it waits to be submitted.
    pub(super) fn seal_batch(&mut self) {
        let pending = &mut self.batch;
        if pending.payload.is_empty() {
            return;
        }
        // The next batch likely looks like this one (a client pipelines the
        // same depth again): size it once instead of growing it step by step.
        let (frames, count) = (pending.payload.len(), pending.commands.len());
        let payload = std::mem::replace(&mut pending.payload, Payload::with_capacity(frames));
        let commands = std::mem::replace(&mut pending.commands, Commands::with_capacity(count));
        let replies = commands.iter().map(|c| c.frames).sum();
        pending.bytes = 0;
        let (tx, rx) = oneshot::channel();
        self.queue
            .push_shared(rx, commands, pending.suppress, self.read_at);
        let read_only = std::mem::replace(&mut pending.read_only, true);
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
            },
            read_from,
            read_only,
            protocol: self.session.protocol,
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
            let node = self
                .ctx
                .router
                .node_for_batch(sealed.read_from, sealed.read_only)
                .await;
            match node {
                Ok(node) => {
                    node.mux(sealed.protocol, self.session.id)
                        .submit(sealed.batch)
                        .await
                }
                Err(e) => {
                    let _ = sealed.batch.reply.send(Err(e.into()));
                }
            }
        }
    }

    /// Seals the gathered batch and submits everything sealed.
    pub(super) async fn flush_batch(&mut self) {
        self.seal_batch();
        self.submit_sealed().await;
    }
}
