//! The client side of isolation: a keyspace procedure the policy planned
//! runs here, on connections the client leases, and pub/sub frames from the
//! dedicated connection are confined to the namespace. Confining requests
//! and their replies' plans is the policy's ([`crate::policy::decision`]).
//!
//! Invariants: a procedure's slot is a shared slot fed by a oneshot, so
//! reply order is kept, and later requests of the client wait for the
//! procedure ([`Connection::await_procedure`]) so they run after it, as
//! they would on Redis.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::pubsub::PatternAliases;
use super::queue::CommandReply;
use super::Connection;
use crate::command::CommandSpec;
use crate::policy::database;
use crate::policy::decision::Planned;
use crate::policy::keyspace;
use crate::policy::service::Service;

/// A keyspace procedure waiting to run, with what it runs as.
pub(super) struct ProcedureCall {
    pub(super) service: Arc<Service>,
    pub(super) planned: Planned,
    pub(super) spec: &'static CommandSpec,
    pub(super) suppress: bool,
}

impl Connection {
    /// Runs a keyspace procedure in a task; its reply takes a shared slot
    /// after everything the client sent before it.
    pub(super) async fn run_procedure(&mut self, call: ProcedureCall) {
        self.flush_batch().await;
        self.await_procedure().await;
        let protocol = self.session.protocol;
        let (tx, rx) = oneshot::channel();
        // topology: procedures run on the master, waiting through a failover hold.
        match self.ctx.router.master_for().await {
            Ok(node) => {
                let (id, current) = (self.session.id, self.session.database);
                let all = (call.spec.name == "flushall").then(|| {
                    let databases = self.ctx.config.backend.databases;
                    database::allowed(&call.service, databases)
                        .into_iter()
                        .map(|db| node.mux_in(protocol, id, db).into_owned())
                        .collect()
                });
                // topology: on a cluster, every master with slots.
                let masters = self.ctx.router.cluster().map(|cluster| {
                    let map = cluster.map();
                    let shards = map.shards.iter().filter(|s| !s.ranges.is_empty());
                    shards
                        .map(|s| s.master.mux_in(protocol, id, current).into_owned())
                        .collect::<Vec<_>>()
                });
                let all = match &masters {
                    Some(masters) if call.spec.name != "randomkey" => Some(masters.clone()),
                    _ => all,
                };
                let dbs = keyspace::Databases {
                    current,
                    mux: node.mux_in(protocol, id, current).into_owned(),
                    all,
                    masters,
                };
                let Planned {
                    procedure,
                    namespace: ns,
                } = call.planned;
                let gate = call.service.procedures.clone();
                let meter = self.meter.clone();
                self.procedure = Some(tokio::spawn(async move {
                    let reply = keyspace::run(procedure, &ns, &dbs, protocol, &gate).await;
                    // Held for the client like any backend reply, and
                    // taken off the meter once written.
                    if let Ok(replies) = &reply {
                        meter.add(replies.bytes.len());
                    }
                    let _ = tx.send(reply);
                }));
            }
            Err(e) => {
                let _ = tx.send(Err(e.into()));
            }
        }
        self.queue.push_shared(
            rx,
            smallvec::smallvec![CommandReply::plain(
                call.spec.name,
                Some(call.service.index)
            )],
            call.suppress,
            self.read_at,
        );
    }

    /// Waits until a running keyspace procedure has finished, so requests
    /// sent after it reach the backend after it.
    pub(super) async fn await_procedure(&mut self) {
        if let Some(running) = self.procedure.take() {
            let _ = running.await;
        }
    }
}

/// A frame the dedicated connection sent unasked (pub/sub), confined to the
/// session's current namespace; `None` drops it.
pub(super) fn confine_unasked(
    service: Option<&Service>,
    aliases: &PatternAliases,
    frame: Bytes,
) -> Option<Bytes> {
    match service.and_then(|s| s.namespace.as_ref()) {
        Some(ns) if super::tracking::is_invalidation(&frame) => {
            super::tracking::confine_invalidation(ns, &frame)
        }
        Some(ns) => match aliases.translate(ns, &frame) {
            Some(translated) => translated,
            None => ns.strip_pubsub(&frame),
        },
        None => Some(frame),
    }
}
