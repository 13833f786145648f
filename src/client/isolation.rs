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

use super::queue::CommandReply;
use super::session::Session;
use super::{Connection, Refused};
use crate::command::{CommandSpec, ReplyKeys};
use crate::policy::access::Refusal;
use crate::policy::keyspace::{self, Procedure};
use crate::policy::namespace::{Namespace, Rewritten};
use crate::policy::reply::ReplyPlan;
use crate::policy::service::Service;
use crate::protocol::request::Request;

/// Where isolation sends a request of a namespaced service.
pub(super) enum Isolated {
    /// To the backend as this request, its reply rewritten by this plan.
    Forward(Request, ReplyPlan),
    /// To the backend with the namespace's prefix put in front of this one
    /// argument (GET, SET, ...) by whoever writes the request out, the
    /// reply plan set in place: the common case builds no new request.
    PrefixKey(usize),
    /// A keyspace-wide command, run by keygate as a procedure.
    Procedure(ProcedureCall),
}

/// A keyspace procedure waiting to run, with what it runs as.
pub(super) struct ProcedureCall {
    service: Arc<Service>,
    namespace: Arc<Namespace>,
    spec: &'static CommandSpec,
    procedure: Procedure,
    suppress: bool,
}

/// Confines `req` to `service`'s namespace (as the session stands now):
/// `None` when the service has no namespace (the request goes as it is),
/// where it goes otherwise, or the refusal to answer with.
pub(super) fn isolate(
    service: &Arc<Service>,
    spec: &'static CommandSpec,
    req: &Request,
    plan: &mut ReplyPlan,
    session: &Session,
    suppress: bool,
) -> Result<Option<Isolated>, Refused> {
    let Some(ns) = &service.namespace else {
        return Ok(None);
    };
    if let Some(at) = ns.single_key(spec, req) {
        if spec.reply_keys != ReplyKeys::None {
            *plan = confined_plan(spec.reply_keys, ns, plan, session);
        }
        return Ok(Some(Isolated::PrefixKey(at)));
    }
    let isolated = match ns.rewrite(spec, req, service) {
        Err(refusal) => {
            // Keys that cannot be located: Redis's own error for the
            // command's arguments, which Redis answers when it runs it.
            let at_run = matches!(refusal, Refusal::Unlocatable(_));
            return Err(Refused::new(refusal.to_string(), at_run));
        }
        Ok(Rewritten::Procedure(_)) if session.tx.open => {
            return Err(Refused::new(
                format!(
                    "NOPERM keygate: '{}' cannot run inside MULTI for namespaced service '{}'",
                    spec.name, service.name
                ),
                false,
            ))
        }
        Ok(Rewritten::Procedure(procedure)) => Isolated::Procedure(ProcedureCall {
            service: service.clone(),
            namespace: ns.clone(),
            spec,
            procedure,
            suppress,
        }),
        Ok(Rewritten::Forward {
            request,
            reply_keys,
        }) => {
            let plan = if spec.name == "info" {
                ReplyPlan::ScopedInfo(match std::mem::replace(plan, ReplyPlan::Forward) {
                    ReplyPlan::AppendProxyInfo(section) => Some(section),
                    _ => None,
                })
            } else {
                confined_plan(reply_keys, ns, plan, session)
            };
            Isolated::Forward(request, plan)
        }
    };
    Ok(Some(isolated))
}

/// The plan for a confined request's reply: the prefix comes off the key
/// names it carries, if any; otherwise the plan stays as it was.
fn confined_plan(
    reply_keys: ReplyKeys,
    ns: &Arc<Namespace>,
    plan: &mut ReplyPlan,
    session: &Session,
) -> ReplyPlan {
    if reply_keys != ReplyKeys::None {
        ReplyPlan::StripKeys {
            namespace: ns.clone(),
            reply_keys,
            protocol: session.protocol,
        }
    } else {
        std::mem::replace(plan, ReplyPlan::Forward)
    }
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
                    super::database::allowed(&call.service, databases)
                        .into_iter()
                        .map(|db| node.mux_in(protocol, id, db).into_owned())
                        .collect()
                });
                let dbs = keyspace::Databases {
                    current,
                    mux: node.mux_in(protocol, id, current).into_owned(),
                    all,
                };
                let (procedure, ns) = (call.procedure, call.namespace);
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
pub(super) fn confine_unasked(service: Option<&Service>, frame: Bytes) -> Option<Bytes> {
    match service.and_then(|s| s.namespace.as_ref()) {
        Some(ns) if super::tracking::is_invalidation(&frame) => {
            super::tracking::confine_invalidation(ns, &frame)
        }
        Some(ns) => ns.strip_pubsub(&frame),
        None => Some(frame),
    }
}
