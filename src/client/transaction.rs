//! Transactions: MULTI, EXEC, DISCARD, WATCH and UNWATCH where keygate
//! answers itself, and the commands queued inside MULTI.
//!
//! Invariants:
//! - a transaction runs on the client's dedicated connection, and the
//!   session's transaction state follows what is sent on it (see
//!   `send_dedicated`);
//! - a command refused while queuing dooms the transaction (`reject`); a
//!   doomed EXEC is sent as DISCARD and answered EXECABORT, as Redis does;
//! - EXEC's reply keeps the shape Redis gives it: each queued command's
//!   plan is remembered and applied element-wise, and a command keygate
//!   answers itself is queued as a PING whose element its answer replaces.

use bytes::Bytes;

use super::local::{self, LocalAnswer};
use super::queue::CommandReply;
use super::stages::{error_reply, Deferred, Stopped};
use super::Connection;
use crate::command::CommandSpec;
use crate::policy::reply::{Queued, ReplyPlan};
use crate::protocol::request::Request;
use crate::router::ConnectionEffect;

impl Connection {
    /// MULTI, EXEC, DISCARD, WATCH and UNWATCH where keygate must answer
    /// itself (nesting, no transaction, nothing watched, a doomed EXEC):
    /// `Err` when answered here.
    pub(super) fn route_transaction_control(
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
            "exec" | "discard"
                if self.dedicated.is_none() && self.ctx.router.cluster().is_some() =>
            {
                // A cluster transaction nothing was queued in yet: its MULTI
                // was never sent (see `begin_transaction_here`).
                self.session.tx = Default::default();
                self.session.queued.clear();
                let reply = match spec.name {
                    "discard" => Bytes::from_static(b"+OK\r\n"),
                    _ if tx.poisoned => {
                        error_reply("EXECABORT Transaction discarded because of previous errors.")
                    }
                    _ => Bytes::from_static(b"*0\r\n"),
                };
                self.reply(reply, suppress);
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
                    reply: Box::new(reply),
                    suppress,
                    slot: None,
                }))
            }
            "unwatch" if self.dedicated.is_none() && !tx.open => {
                self.reply(Bytes::from_static(b"+OK\r\n"), suppress);
                Err(None)
            }
            _ => Ok(()),
        }
    }

    /// MULTI on a cluster backend with no connection held: answered here,
    /// and sent with the first command queued in it, to the master of that
    /// command's slot (which no MULTI names).
    pub(super) fn begin_transaction_here(&mut self, suppress: bool) {
        let tx = &mut self.session.tx;
        tx.open = true;
        tx.poisoned = false;
        self.session.queued.clear();
        self.session.tx_database = None;
        self.reply(Bytes::from_static(b"+OK\r\n"), suppress);
    }

    /// CONFIG GET inside MULTI. An admin service's goes to Redis in the
    /// transaction (`Ok`: forwarded like any command). For other services
    /// keygate's own answer takes the place of a placeholder queued in its
    /// stead, so EXEC's array keeps its shape: PING, which cannot fail.
    pub(super) fn queue_config_get(
        &mut self,
        spec: &'static CommandSpec,
        req: &Request,
        suppress: bool,
    ) -> Result<(), Stopped> {
        let Some(service) = self.session.service.clone() else {
            return Ok(()); // refused NOAUTH by the next stage
        };
        if service.admin {
            return Ok(());
        }
        let Some(LocalAnswer::Reply(answer)) =
            local::answer(&self.ctx, &mut self.session, spec, req)
        else {
            return Ok(());
        };
        Err(self.queue_in_transaction(spec, answer, suppress))
    }

    /// Inside MULTI, a command keygate answers itself at EXEC: a PING is
    /// queued in its place (it cannot fail) and `answer` replaces its
    /// element of EXEC's reply, so the array keeps its shape.
    pub(super) fn queue_in_transaction(
        &mut self,
        spec: &'static CommandSpec,
        answer: Bytes,
        suppress: bool,
    ) -> Stopped {
        let service = self.session.service.as_ref().map(|s| s.index);
        let queued = CommandReply {
            plan: ReplyPlan::Replace(answer),
            ..CommandReply::plain(spec.name, service)
        };
        let reply = self.track_transaction(spec, queued);
        Some(Deferred::Dedicated {
            frames: vec![Request::from_args(&["PING"]).into_frame()],
            effect: ConnectionEffect::None,
            subscription: None,
            reply: Box::new(reply),
            suppress,
            slot: None,
        })
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
                if queued.iter().all(Queued::is_plain) {
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
                let CommandReply {
                    command,
                    service,
                    frames,
                    plan,
                    ..
                } = reply;
                self.session.queued.push(Queued { frames, plan });
                CommandReply {
                    frames,
                    ..CommandReply::plain(command, service)
                }
            }
        }
    }
}
