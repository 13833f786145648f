//! The request stages: every complete request the client sent goes
//! through them in order: the command table, the commands keygate answers
//! itself (CLIENT, KEYGATE, the login, SELECT, transaction control, INFO's
//! proxy section), one call to the service's policy
//! ([`crate::policy::decision::decide`]), then, by its decision, routing to
//! the batch for a shared connection or to the dedicated connection, a
//! keyspace procedure, or the refusal.
//!
//! Invariants:
//! - the stages are synchronous: work that waits on a backend comes back
//!   as a [`Deferred`] and runs before the next request is taken, so
//!   nothing overtakes it;
//! - every request gets exactly one place in the reply order, whether it
//!   is answered here, refused or forwarded;
//! - a request the policy cannot fully govern is refused, never forwarded
//!   ungoverned; a refusal is counted as a command and as an error.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::cluster_emulation;
use super::isolation::ProcedureCall;
use super::local::{self, LocalAnswer};
use super::near::{FollowCall, NearRead};
use super::queue::CommandReply;
use super::urgent::UrgentCall;
use super::{fan_out, pubsub, registry, session, slots, tracking, Connection};
use crate::command::keyword::is_keyword;
use crate::command::state::Treatment;
use crate::command::{self, CommandSpec, Flags};
use crate::hotkeys;
use crate::metrics::{ErrorKind, Role};
use crate::policy::decision::{self, Decision, Forward, Refusal, SessionView};
use crate::policy::namespace::Namespace;
use crate::policy::reply::ReplyPlan;
use crate::protocol::encode;
use crate::protocol::request::Request;
use crate::router::{self, ConnectionEffect};

/// The reply to a command that needs a login first.
const NOAUTH: &str = "NOAUTH Authentication required.";
/// The reply to a command after the login's token expired (`on_expiry =
/// "deny"`).
const TOKEN_EXPIRED: &str = "NOAUTH token expired";

/// How long the master may be silent with a script batch unanswered
/// before a PING goes to Redis instead of being answered here: a script
/// that long may be one Redis answers `-BUSY` about. Shorter silences are
/// ordinary latency, and a PING sent on costs a dial.
const SCRIPT_SILENCE: std::time::Duration = std::time::Duration::from_millis(5);

/// Why the stages stopped with a request: `None` when it was answered (or
/// refused) here, or the work it left that waits on a backend.
pub(super) type Stopped = Option<Deferred>;

/// Work a request leaves that waits on a backend; it runs before the next
/// request is taken, so nothing overtakes it.
pub(super) enum Deferred {
    /// A request for the client's dedicated connection (leased first if needed).
    Dedicated {
        frames: Vec<Bytes>,
        effect: ConnectionEffect,
        /// A SUBSCRIBE-family command: how its confirmations are counted.
        subscription: Option<pubsub::SubscriptionCall>,
        /// Boxed: it keeps every `Stopped` small.
        reply: Box<CommandReply>,
        suppress: bool,
        /// On a cluster backend, the slot of its keys: the connection
        /// goes to (and stays with) that slot's master.
        slot: Option<u16>,
    },
    /// A keyspace-wide command of a namespaced service, run as a procedure.
    Procedure(ProcedureCall),
    /// SCAN or KEYS on a cluster backend: sent to every master.
    FanOut(Box<fan_out::FanOutCall>),
    /// A command Redis runs while a script is busy (SCRIPT KILL, FUNCTION
    /// KILL and STATS, SHUTDOWN), sent past a busy script.
    Urgent(Box<UrgentCall>),
    /// A read waiting for another client's read of the same key, already
    /// on its way to Redis ([`crate::near_cache::flight`]).
    Follow(Box<FollowCall>),
    /// RESET while the dedicated connection still owes replies: they are
    /// awaited first (Redis, too, runs a pipelined RESET only after the
    /// commands before it), then the connection is dropped. A client in
    /// another database is then moved back to the default one.
    Reset { reply: Bytes, suppress: bool },
    /// A switch to another database (SELECT, or HELLO back to the default
    /// one): what the client sent before is answered first, then `reply`.
    Select {
        db: u32,
        reply: Bytes,
        suppress: bool,
    },
}

pub(super) fn error_reply(msg: &str) -> Bytes {
    let mut out = BytesMut::new();
    encode::error(&mut out, msg);
    out.freeze()
}

impl Connection {
    /// Takes every complete request off `rbuf` through the pipeline.
    pub(super) async fn on_bytes(&mut self, rbuf: &mut BytesMut) {
        self.backlog = false;
        // Requests behind the one taken that the last look ahead covered.
        let mut looked_ahead = 0usize;
        loop {
            if !self.may_take_requests() {
                // Over a limit: the rest waits until replies are written.
                self.backlog = !rbuf.is_empty();
                break;
            }
            match self.scanner.scan(rbuf) {
                Ok(Some(req)) => {
                    if looked_ahead == 0 && !rbuf.is_empty() {
                        // Pipelined requests follow (never at `-P 1`).
                        looked_ahead = self.near_prefetch(rbuf);
                    } else {
                        looked_ahead = looked_ahead.saturating_sub(1);
                    }
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
        self.record_near_hits();
        self.flush_batch().await;
        self.flush_dedicated().await;
    }

    /// Takes one request through the stages, in order: the commands keygate
    /// answers itself, one policy decision, then routing by it. `Ok` once
    /// it is in the batch for a shared connection.
    fn on_request(&mut self, req: Request) -> Result<(), Stopped> {
        let revoked = self.follow_reload();
        let suppress = self.session.take_suppression();
        if let Some(msg) = revoked {
            return Err(self.reject("unknown", ErrorKind::Policy, &msg, suppress));
        }
        if self.session.token_expired() {
            // The login lapsed: only what logs in again or ends the
            // connection runs, until a fresh token comes.
            let name = req.get(0).unwrap_or_default();
            let allowed = ["auth", "hello", "ping", "quit", "reset"]
                .iter()
                .any(|c| name.eq_ignore_ascii_case(c.as_bytes()));
            if !allowed {
                return Err(self.reject("unknown", ErrorKind::Policy, TOKEN_EXPIRED, suppress));
            }
        }
        if let Some(answered) = self.answer_client_or_keygate(&req, suppress) {
            return answered;
        }
        let spec = match command::lookup(&req) {
            Ok(spec) => spec,
            Err(e) => {
                return Err(self.reject("unknown", ErrorKind::Client, &e.to_string(), suppress))
            }
        };
        self.entry.command(spec);
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
        if !held && spec.name == "ping" && req.argc() <= 2 && self.master_in_script() {
            // Redis answers a PING while a script holds it with `-BUSY`,
            // or once the script ends: its own answer, past the script.
            let service = self.session.service.as_ref().map(|s| s.index);
            return Err(Some(Deferred::Urgent(Box::new(UrgentCall {
                request: req,
                reply: CommandReply::plain(spec.name, service),
                suppress,
            }))));
        }
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
        // What keygate adds to the reply itself.
        let plan = if spec.name == "info" && !held {
            ReplyPlan::AppendProxyInfo(local::proxy_info(&self.ctx, &self.session))
        } else if spec.name == "acl|whoami" {
            // Queued in MULTI: EXEC's element is keygate's answer.
            ReplyPlan::Replace(local::acl_whoami(&self.session))
        } else {
            ReplyPlan::Forward
        };
        let view = SessionView {
            in_multi: self.session.tx.open,
            database: self.effective_database(),
            databases: self.ctx.config.backend.databases,
            protocol: self.session.protocol,
            max_bulk_len: self.ctx.scan_limits.max_bulk_len,
        };
        let mut req = req;
        // The client's patterns, before the policy prefixes them.
        let patterns = matches!(spec.name, "psubscribe" | "punsubscribe")
            .then(|| service.namespace.clone())
            .flatten()
            .map(|ns| (ns, req.clone()));
        match decision::decide(service, &view, spec, &mut req, plan) {
            Decision::Forward(forward) => {
                if forward.ttl_clamped {
                    let index = Some(service.index);
                    self.recorder.ttl_clamped(index);
                }
                let mut names = None;
                if let Some((ns, original)) = patterns {
                    req = self.catch_notifications(&ns, spec, &original, req);
                    names = u32::try_from(original.argc().saturating_sub(1)).ok();
                }
                self.route(spec, req, forward, held, suppress, names)
            }
            Decision::Procedure(planned) => {
                if let Some(cache) = &service.near_cache {
                    // A keyspace-wide command (FLUSHDB, ...) of the service:
                    // its cache starts over, as Redis's invalidations will say.
                    cache.flush(crate::near_cache::Evicted::Flush);
                }
                Err(Some(Deferred::Procedure(ProcedureCall {
                    service: service.clone(),
                    planned,
                    spec,
                    suppress,
                })))
            }
            Decision::Refuse(refusal) => Err(self.refuse(spec, &refusal, suppress)),
        }
    }

    /// Routes a request the policy forwards: to the client's dedicated
    /// connection when the connection is held or the command needs one of
    /// its own, else into the batch for a shared connection (`Ok`).
    /// Inlined into its one caller, so the decision is not copied again.
    #[inline(always)]
    fn route(
        &mut self,
        spec: &'static CommandSpec,
        mut req: Request,
        forward: Forward,
        held: bool,
        suppress: bool,
        names: Option<u32>,
    ) -> Result<(), Stopped> {
        let Forward {
            prefix_at: prefix_key,
            follow_ups,
            plan,
            treatment,
            destination,
            ..
        } = forward;
        let service = self.session.service.as_ref().map(|s| s.index);
        let near = self
            .session
            .service
            .as_ref()
            .and_then(|s| s.near_cache.clone());
        let mut plan = plan;
        if let Some(cache) = &near {
            if let Some(writing) = self.near_write(cache, spec, &req, prefix_key) {
                plan = ReplyPlan::NearWrite(Box::new((writing, plan)));
            }
        }
        let effect = router::connection_effect(spec, &req);
        let subscription = (effect == ConnectionEffect::Subscribe)
            .then(|| pubsub::SubKind::of_command(spec.name))
            .flatten()
            .map(|kind| pubsub::SubscriptionCall {
                kind,
                // The client's names: hidden patterns keygate adds are
                // confirmed apart (see `pubsub::PatternAliases`).
                names: names.unwrap_or_else(|| {
                    u32::try_from(req.argc().saturating_sub(1)).unwrap_or(u32::MAX)
                }),
            });
        // A state-changing command never goes in a shared batch; a
        // blocking one without its blocking option (XREAD without BLOCK)
        // changes nothing and may share.
        let dedicated_only = treatment == Some(Treatment::Database)
            || (treatment == Some(Treatment::Dedicated)
                && (!spec.flags.contains(Flags::BLOCKING) || effect == ConnectionEffect::Block))
            || (destination.is_some() && !follow_ups.is_empty());
        let mut reply = CommandReply {
            plan,
            frames: 1 + follow_ups.len() as u32,
            ..CommandReply::plain(spec.name, service)
        };
        if self.session.tx.open {
            reply = self.track_transaction(spec, reply);
        }
        if held || effect != ConnectionEffect::None || dedicated_only {
            let slot = match self.ctx.router.cluster() {
                Some(_) => self.dedicated_slot(spec, &req, prefix_key, effect, suppress)?,
                None => None,
            };
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
                reply: Box::new(reply),
                suppress,
                slot,
            }));
        }
        if spec.flags.contains(Flags::ALLOW_BUSY) {
            // Redis runs it while a script is busy, which may be on this
            // client's shared connection: it goes on one of its own.
            return Err(Some(Deferred::Urgent(Box::new(UrgentCall {
                request: req,
                reply,
                suppress,
            }))));
        }
        if !self.batch.takes(suppress) {
            self.seal_batch();
        }
        if self.ctx.router.cluster().is_some()
            && (matches!(spec.name, "scan" | "keys")
                || fan_out::Everywhere::of(spec.name).is_some())
        {
            return Err(Some(Deferred::FanOut(Box::new(fan_out::FanOutCall {
                req,
                reply,
                suppress,
            }))));
        }
        if self.ctx.router.cluster().is_some() {
            // A cluster batch gathers one part per node.
            match self.cluster_slot(spec, &req, prefix_key) {
                Ok(Some(slot)) => self.route_batch_to(slot),
                Ok(None) => {}
                Err(msg) if msg == slots::CROSSSLOT && follow_ups.is_empty() => {
                    // MGET, MSET, DEL and the like are split by slot.
                    let Some(split) = self.split_by_slot(spec, &req) else {
                        return Err(self.reject(spec.name, ErrorKind::Client, &msg, suppress));
                    };
                    if !self.batch.has_room_for(&split, self.ctx.router.cluster()) {
                        self.seal_batch();
                        if !self.batch.has_room_for(&split, self.ctx.router.cluster()) {
                            return Err(self.reject(spec.name, ErrorKind::Client, &msg, suppress));
                        }
                    }
                    let cluster = self.ctx.router.cluster();
                    self.batch.push_split(split, cluster, reply, suppress);
                    return Ok(());
                }
                Err(msg) => return Err(self.reject(spec.name, ErrorKind::Client, &msg, suppress)),
            }
        }
        if let Some(cache) = near.filter(|_| follow_ups.is_empty() && !held) {
            if matches!(reply.plan, ReplyPlan::Forward) {
                match self.near_read(&cache, spec, &req, prefix_key) {
                    NearRead::Hit(frame) => {
                        // Hits are most of a hot key's reads: counted here.
                        if let Some(sample) = self.sample_hot_key(spec, &req, prefix_key) {
                            sample.record(&frame);
                        }
                        // In the batch it was read with: a pipeline of hits
                        // and misses is still one write each way.
                        self.batch.push_answered(frame, reply, suppress);
                        return Ok(());
                    }
                    NearRead::Refresh(frame, fill, pttl) => {
                        if let Some(sample) = self.sample_hot_key(spec, &req, prefix_key) {
                            sample.record(&frame);
                        }
                        let refresh = CommandReply {
                            frames: 3,
                            plan: ReplyPlan::NearRefresh(fill),
                            ..reply.clone()
                        };
                        let confine = prefix_key.zip(self.session.namespace());
                        self.batch.push_fill(req, confine, pttl, refresh, suppress);
                        if !self.batch.takes(suppress) {
                            self.seal_batch();
                        }
                        self.batch.push_answered(frame, reply, suppress);
                        return Ok(());
                    }
                    NearRead::Fill(fill, pttl) => {
                        let hot = self.sample_hot_key(spec, &req, prefix_key);
                        let reply = CommandReply {
                            frames: 3,
                            plan: ReplyPlan::NearFill(fill),
                            hot,
                            ..reply
                        };
                        let confine = prefix_key.zip(self.session.namespace());
                        self.batch.push_fill(req, confine, pttl, reply, suppress);
                        return Ok(());
                    }
                    NearRead::Follow(boarding) => {
                        // Counted with the reply it takes (or its own).
                        let hot = self.sample_hot_key(spec, &req, prefix_key);
                        return Err(Some(Deferred::Follow(Box::new(FollowCall {
                            boarding,
                            request: req,
                            prefix_at: prefix_key,
                            reply: CommandReply { hot, ..reply },
                            suppress,
                        }))));
                    }
                    NearRead::Plain => {}
                }
            }
        }
        // topology: a batch may go to a replica only if all of it is read-only.
        let read_only = spec.flags.contains(Flags::READONLY) && follow_ups.is_empty();
        reply.hot = self.sample_hot_key(spec, &req, prefix_key);
        let confine = prefix_key.zip(self.session.namespace());
        self.batch
            .push(req, confine, follow_ups, reply, suppress, read_only);
        // Scripts carry NOSCRIPT (a bit test first keeps GET and SET from
        // comparing names).
        if spec.flags.contains(Flags::NOSCRIPT)
            && matches!(
                spec.name,
                "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro"
            )
        {
            self.batch.mark_script();
        }
        Ok(())
    }

    /// CLIENT subcommands and KEYGATE, answered before the command-table
    /// lookup (outside MULTI): what [`Self::on_request`] returns when
    /// answered here (`Ok` for a CLIENT UNBLOCK put in the batch).
    fn answer_client_or_keygate(
        &mut self,
        req: &Request,
        suppress: bool,
    ) -> Option<Result<(), Stopped>> {
        let name = req.get(0).unwrap_or_default();
        if self.session.tx.open {
            return None;
        }
        if name.eq_ignore_ascii_case(b"client") && self.session.service.is_some() {
            if let Ok(spec) = command::lookup(req) {
                self.entry.command(spec);
            }
            if let Some(LocalAnswer::Reply(reply)) = local::answer_client(&mut self.session, req) {
                // CLIENT REPLY OFF/SKIP get no reply; CLIENT REPLY ON
                // always does, even while replies were off (as in Redis),
                // so the suppression taken before it ran does not apply.
                let quiet = if req.get(1).is_some_and(|s| s.eq_ignore_ascii_case(b"reply")) {
                    let turned_on = req.get(2).is_some_and(|m| is_keyword(m, b"on"));
                    self.session.reply_mode != session::ReplyMode::On || (suppress && !turned_on)
                } else {
                    suppress
                };
                self.reply(reply, quiet);
                // CLIENT SETNAME: the table shows the new name.
                self.entry.identify(&self.session);
                return Some(Err(None));
            }
            if let Some(answer) =
                registry::answer(&self.ctx.client_table, &self.session, &self.entry, req)
            {
                return Some(self.table_answer(answer, suppress));
            }
            if self.dedicated.is_none() {
                // Tracking state lives on a dedicated connection: a
                // client without one has tracking off.
                if let Some(reply) = tracking::answer_untracked(req, self.session.protocol) {
                    self.reply(reply, suppress);
                    return Some(Err(None));
                }
            }
        }
        if name.eq_ignore_ascii_case(b"keygate") {
            if let LocalAnswer::Reply(reply) = local::answer_keygate(&self.ctx, &self.session, req)
            {
                self.reply(reply, suppress);
            }
            return Some(Err(None));
        }
        None
    }

    /// PSUBSCRIBE or PUNSUBSCRIBE of a namespaced client (`original` as
    /// it wrote it, `req` as the policy confined it): each pattern that may
    /// match keyspace notifications without naming them is followed by its
    /// hidden pattern ([`pubsub::PatternAliases`]).
    fn catch_notifications(
        &mut self,
        ns: &Namespace,
        spec: &CommandSpec,
        original: &Request,
        req: Request,
    ) -> Request {
        let subscribe = spec.name == "psubscribe";
        let mut hidden = Vec::new();
        for i in 1..original.argc() {
            let Some(pattern) = original.get(i) else {
                continue;
            };
            if !ns.catches_notifications(pattern) {
                continue;
            }
            let alias = if subscribe {
                Some(self.patterns.alias(pattern))
            } else {
                self.patterns.existing(pattern)
            };
            if let Some(alias) = alias {
                hidden.push((i, alias));
            }
        }
        if hidden.is_empty() {
            return req;
        }
        let mut args: Vec<&[u8]> = Vec::with_capacity(req.argc() + hidden.len());
        for (i, arg) in req.args().enumerate() {
            args.push(arg);
            if let Some((_, alias)) = hidden.iter().find(|(at, _)| *at == i) {
                args.push(alias);
            }
        }
        Request::from_args(&args)
    }

    /// One read in [`hotkeys::SAMPLE_EVERY`] of a service whose hot keys
    /// are counted, to be counted with its reply.
    fn sample_hot_key(
        &mut self,
        spec: &CommandSpec,
        req: &Request,
        prefix_key: Option<usize>,
    ) -> Option<Box<hotkeys::Sample>> {
        let service = self.session.service.as_ref()?;
        let prefix = service.namespace.as_ref().map(|ns| ns.prefix_bytes());
        self.hot_keys.sample(
            service.hot_keys.as_ref(),
            spec.name,
            req,
            prefix_key,
            prefix.unwrap_or_default(),
        )
    }

    /// Whether the master may be running a long script: a script batch is
    /// unanswered and the master has sent nothing for [`SCRIPT_SILENCE`].
    fn master_in_script(&self) -> bool {
        self.ctx.router.master().is_some_and(|node| {
            node.health()
                .script_silence()
                .is_some_and(|quiet| quiet >= SCRIPT_SILENCE)
        })
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
        if spec.name == "select" {
            return self.select(spec, req, suppress);
        }
        if self.session.tx.open && spec.name == "config|get" {
            return self.queue_config_get(spec, req, suppress);
        }
        if self.session.tx.open && spec.name != "reset" {
            // RESET runs at once inside MULTI too, discarding the
            // transaction with the rest of the connection's state.
            // Connection-state commands cannot be queued: refusing them dooms
            // the transaction, which is what a client sees from Redis for a
            // command it cannot queue.
            if matches!(
                spec.name,
                "auth"
                    | "hello"
                    | "quit"
                    | "config|get"
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
            ) {
                let refusal = Refusal::InsideMulti { command: spec.name };
                return Err(self.refuse(spec, &refusal, suppress));
            }
            return Ok(());
        }
        if self.ctx.config.proxy.cluster_emulation {
            let node = cluster_emulation::Node::for_client(
                &self.ctx.config.proxy,
                self.ctx.listening.get().copied().unwrap_or_default(),
                self.entry.peer(),
            );
            if let Some(reply) = cluster_emulation::answer(spec.name, &node, self.session.protocol)
            {
                self.reply(reply, suppress);
                return Err(None);
            }
        }
        // Only a login or RESET can switch the service: only they pay for
        // remembering the one before.
        let before =
            matches!(spec.name, "auth" | "hello" | "reset").then(|| self.session.service.clone());
        let Some(answer) = local::answer(&self.ctx, &mut self.session, spec, req) else {
            return Ok(());
        };
        if before.is_some() {
            self.entry.identify(&self.session);
        }
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
        let default = self.default_database();
        match answer {
            // HELLO returns the client to the default database.
            LocalAnswer::Reply(r)
                if spec.name == "hello"
                    && self.session.database != default
                    && r.first() != Some(&b'-') =>
            {
                return Err(Some(Deferred::Select {
                    db: default,
                    reply: r,
                    suppress,
                }));
            }
            LocalAnswer::Reply(r) => self.reply(r, suppress),
            LocalAnswer::ReplyAndClose(r) => {
                self.reply(r, suppress);
                self.closing = true;
            }
            LocalAnswer::ReplyAfterReset(r) => {
                self.session.tx_database = None;
                self.session.exec_database = None;
                let switches = self.session.database != default;
                if switches || (self.dedicated.is_some() && self.queue.awaits_dedicated()) {
                    return Err(Some(Deferred::Reset { reply: r, suppress }));
                }
                self.drop_dedicated(true);
                self.reply(r, suppress);
            }
        }
        Err(None)
    }

    /// Acts on a CLIENT subcommand answered from the table of clients.
    fn table_answer(
        &mut self,
        answer: registry::TableAnswer,
        suppress: bool,
    ) -> Result<(), Stopped> {
        match answer {
            registry::TableAnswer::Reply(reply) => self.reply(reply, suppress),
            registry::TableAnswer::ReplyAndClose(reply) => {
                self.reply(reply, suppress);
                self.closing = true;
            }
            registry::TableAnswer::Forward(req) => {
                let service = self.session.service.as_ref().map(|s| s.index);
                if !self.batch.takes(suppress) {
                    self.seal_batch();
                }
                let reply = CommandReply::plain("client|unblock", service);
                self.batch
                    .push(req, None, Vec::new(), reply, suppress, false);
                return Ok(());
            }
        }
        Err(None)
    }

    /// A reply keygate made: it goes after everything already queued.
    pub(super) fn reply(&mut self, reply: Bytes, suppress: bool) {
        self.seal_batch();
        self.queue.push_ready(reply, suppress);
    }

    /// An error reply; inside MULTI it also dooms the transaction, as Redis
    /// does for a command rejected while queuing. Returns the stages'
    /// verdict for a request answered here.
    pub(super) fn reject(
        &mut self,
        command: &'static str,
        kind: ErrorKind,
        msg: &str,
        suppress: bool,
    ) -> Stopped {
        let service = self.session.service.as_ref().map(|s| s.index);
        // A refused command is a command too, answered by keygate: the
        // error rate (errors over commands) stays within 100%.
        let total = self.read_at.elapsed();
        self.recorder
            .command(service, command, Role::Proxy, total, None);
        self.recorder.error(service, command, kind);
        if self.session.tx.open {
            self.session.tx.poisoned = true;
        }
        self.reply(error_reply(msg), suppress);
        None
    }

    /// A request the policy refused. Inside MULTI, an error Redis answers
    /// only when it runs the command (its own errors for arguments it
    /// cannot parse) is answered as Redis does: the command is queued (a
    /// PING takes its place, keygate never forwards what it cannot read)
    /// and its element of EXEC's reply is the error. Anything else dooms
    /// the transaction, as Redis's refusals while queuing do.
    pub(super) fn refuse(
        &mut self,
        spec: &'static CommandSpec,
        refusal: &Refusal,
        suppress: bool,
    ) -> Stopped {
        let service = self.session.service.as_ref().map(|s| s.index);
        if refusal.is_isolation() {
            self.recorder.isolation_refused(service);
        }
        if refusal.is_over_max_ttl() {
            self.recorder.ttl_refused(service);
        }
        let text = refusal.to_string();
        if !(refusal.at_run() && self.session.tx.open) {
            let kind = if refusal.is_clients_mistake() {
                ErrorKind::Client
            } else {
                ErrorKind::Policy
            };
            return self.reject(spec.name, kind, &text, suppress);
        }
        self.recorder.error(service, spec.name, ErrorKind::Policy);
        self.queue_in_transaction(spec, error_reply(&text), suppress)
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
                slot,
            } => {
                self.send_dedicated(frames, effect, subscription, *reply, suppress, slot)
                    .await
            }
            Deferred::Procedure(call) => self.run_procedure(call).await,
            Deferred::FanOut(call) => self.run_fan_out(*call).await,
            Deferred::Urgent(call) => self.send_urgent(*call).await,
            Deferred::Follow(call) => self.follow(*call).await,
            Deferred::Reset { reply, suppress } => {
                self.flush_dedicated().await;
                self.await_dedicated_replies().await;
                self.drop_dedicated(true);
                let default = self.default_database();
                if self.session.database != default {
                    self.switch_database(default).await;
                }
                self.reply(reply, suppress);
            }
            Deferred::Select {
                db,
                reply,
                suppress,
            } => {
                self.switch_database(db).await;
                self.reply(reply, suppress);
            }
        }
    }
}
