//! The client side of isolation: each request of a namespaced service is
//! confined (or refused) after the access check, its reply gets the plan
//! that strips the prefix, keyspace-wide commands run as procedures, and
//! pub/sub frames from the dedicated connection are stripped too.
//!
//! Invariants: a service with isolation off pays one `Option` check; the
//! namespace used is the session's service *at the time of the request*,
//! so a pipeline that AUTHs between services confines each command to the
//! service current at that point. A procedure's slot is a shared slot fed
//! by a oneshot, so reply order is kept, and later requests of the client
//! wait for the procedure ([`Connection::await_procedure`]) so they run
//! after it, as they would on Redis.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::queue::{CommandReply, ReplyPlan};
use super::Connection;
use crate::command::{CommandSpec, ReplyKeys};
use crate::metrics::ErrorKind;
use crate::policy::keyspace::{self, Procedure};
use crate::policy::namespace::{Namespace, Rewritten};
use crate::policy::service::Service;
use crate::protocol::request::Request;

impl Connection {
    /// Confines `req` to `service`'s namespace: the request to send and its
    /// reply plan, or `None` when the command was answered here (refused, or
    /// run as a keyspace procedure).
    pub(super) async fn isolate(
        &mut self,
        service: &Arc<Service>,
        spec: &'static CommandSpec,
        req: Request,
        plan: ReplyPlan,
        suppress: bool,
    ) -> Option<(Request, ReplyPlan)> {
        let Some(ns) = &service.namespace else {
            return Some((req, plan));
        };
        match ns.rewrite(spec, &req, service) {
            Err(refusal) => {
                self.reject(spec.name, ErrorKind::Policy, &refusal.to_string(), suppress)
                    .await;
                None
            }
            Ok(Rewritten::Procedure(procedure)) => {
                self.run_procedure(service, ns, spec, procedure, suppress)
                    .await;
                None
            }
            Ok(Rewritten::Forward {
                request,
                reply_keys,
            }) => {
                let plan = if spec.name == "info" {
                    ReplyPlan::ScopedInfo(match plan {
                        ReplyPlan::AppendProxyInfo(section) => Some(section),
                        _ => None,
                    })
                } else if reply_keys != ReplyKeys::None {
                    ReplyPlan::StripKeys {
                        namespace: ns.clone(),
                        reply_keys,
                        protocol: self.session.protocol,
                    }
                } else {
                    plan
                };
                Some((request, plan))
            }
        }
    }

    /// Runs a keyspace procedure in a task; its reply takes a shared slot.
    async fn run_procedure(
        &mut self,
        service: &Arc<Service>,
        ns: &Arc<Namespace>,
        spec: &'static CommandSpec,
        procedure: Procedure,
        suppress: bool,
    ) {
        if self.session.tx.open {
            let msg = format!(
                "NOPERM keygate: '{}' cannot run inside MULTI for namespaced service '{}'",
                spec.name, service.name
            );
            return self
                .reject(spec.name, ErrorKind::Policy, &msg, suppress)
                .await;
        }
        self.flush_batch().await;
        self.await_procedure().await;
        let protocol = self.session.protocol;
        let (tx, rx) = oneshot::channel();
        // topology: procedures run on the master, waiting through a failover hold.
        match self.ctx.router.master_for().await {
            Ok(node) => {
                let mux = node.mux(protocol, self.session.id).clone();
                let ns = ns.clone();
                self.procedure = Some(tokio::spawn(async move {
                    let _ = tx.send(keyspace::run(procedure, &ns, &mux, protocol).await);
                }));
            }
            Err(e) => {
                let _ = tx.send(Err(e.into()));
            }
        }
        self.queue.push_shared(
            rx,
            smallvec::smallvec![CommandReply::plain(spec.name, Some(service.index))],
            suppress,
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

    /// Inside MULTI: remembers the queued command's plan for EXEC and
    /// returns what the `+QUEUED` gets (forwarded); at EXEC, the plan that
    /// applies the remembered plans element-wise.
    pub(super) fn track_transaction(
        &mut self,
        spec: &'static CommandSpec,
        reply: CommandReply,
    ) -> CommandReply {
        if !self.session.tx.open {
            return reply;
        }
        match spec.name {
            "exec" => {
                let queued = std::mem::take(&mut self.session.queued);
                if queued.iter().all(CommandReply::is_plain) {
                    reply
                } else {
                    CommandReply {
                        plan: ReplyPlan::Exec(queued),
                        ..reply
                    }
                }
            }
            "discard" => {
                self.session.queued.clear();
                reply
            }
            // Not queued by Redis: answered at once.
            "multi" | "watch" => reply,
            _ => {
                let answer = CommandReply {
                    plan: ReplyPlan::Forward,
                    ..reply.clone()
                };
                self.session.queued.push(reply);
                answer
            }
        }
    }
}

/// A frame the dedicated connection sent unasked (pub/sub), confined to the
/// session's current namespace; `None` drops it.
pub(super) fn confine_unasked(service: Option<&Service>, frame: Bytes) -> Option<Bytes> {
    match service.and_then(|s| s.namespace.as_ref()) {
        Some(ns) => ns.strip_pubsub(&frame),
        None => Some(frame),
    }
}
