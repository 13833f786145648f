//! Databases: SELECT, and the database each request runs in.
//!
//! A client starts in `[backend] database` and SELECT moves it to another
//! of its service's `databases`, answered by keygate as Redis answers it.
//! Shared (multiplexed) connections carry one database each, so a batch
//! goes to a connection of the database its client was in when the batch
//! was sealed; a dedicated connection is switched to the client's database
//! with a SELECT written in front of the request that needs it (its reply
//! hidden), and keeps the database it was left in when pooled, known, so
//! the next lease switches it again if needed.
//!
//! Invariants:
//! - ordering: a SELECT that changes the database waits until every reply
//!   the client awaits on a shared connection has arrived (the same barrier
//!   as the move to a dedicated connection), so requests for the new
//!   database never overtake those for the old one on another connection;
//! - inside MULTI, SELECT is queued on the transaction's connection and the
//!   session's database changes only when EXEC succeeds: keygate waits for
//!   that EXEC's reply before it takes the client's next request;
//! - a client that never SELECTs pays one comparison per batch.
//!
//! Which databases a service may use, and MOVE and COPY ... DB's
//! destination, are policy ([`crate::policy::database`]).

use bytes::Bytes;

use super::queue::CommandReply;
use super::session::Session;
use super::stages::{error_reply, Deferred, Stopped};
use super::Connection;
use crate::command::CommandSpec;
use crate::metrics::ErrorKind;
use crate::policy::database::{allows, parse_database, refusal};
use crate::protocol::request::Request;
use crate::router::ConnectionEffect;

/// `SELECT n` as a frame.
pub(super) fn select_frame(db: u32) -> Bytes {
    Request::from_args(&["SELECT", &db.to_string()]).into_frame()
}

/// `INFO keygate`'s clients per database (those the session may see).
pub(super) fn info_lines(ctx: &super::Context, session: &Session) -> String {
    use std::fmt::Write;
    let mut text = String::new();
    for (db, clients) in ctx.client_table.per_database(session) {
        let _ = write!(text, "clients_db{db}:{clients}\r\n");
    }
    text
}

impl Connection {
    /// The database the client's next request runs in: inside MULTI, the
    /// one a queued SELECT switches to at EXEC.
    pub(super) fn effective_database(&self) -> u32 {
        self.session.tx_database.unwrap_or(self.session.database)
    }

    /// SELECT, outside or inside MULTI. `Err` when answered (or deferred).
    pub(super) fn select(
        &mut self,
        spec: &'static CommandSpec,
        req: &Request,
        suppress: bool,
    ) -> Result<(), Stopped> {
        let Some(service) = self.session.service.clone() else {
            return Ok(()); // refused NOAUTH by the next stage
        };
        let databases = self.ctx.config.backend.databases;
        let db = match parse_database(req.get(1).unwrap_or_default(), databases) {
            Ok(db) => db,
            Err(msg) if self.session.tx.open => {
                // Redis queues it and answers the error in EXEC's array.
                return Err(self.queue_in_transaction(spec, error_reply(msg), suppress));
            }
            Err(msg) => return Err(self.reject("select", ErrorKind::Client, msg, suppress)),
        };
        if !allows(&service, db) {
            let msg = refusal(&service, db).to_string();
            return Err(self.reject("select", ErrorKind::Policy, &msg, suppress));
        }
        if self.session.tx.open {
            self.session.tx_database = Some(db);
            let reply = CommandReply::plain("select", Some(service.index));
            let reply = self.track_transaction(spec, reply);
            return Err(Some(Deferred::Dedicated {
                frames: vec![select_frame(db)],
                effect: ConnectionEffect::None,
                subscription: None,
                reply: Box::new(reply),
                suppress,
                slot: None,
            }));
        }
        if db == self.session.database {
            self.reply(Bytes::from_static(b"+OK\r\n"), suppress);
            return Err(None);
        }
        Err(Some(Deferred::Select {
            db,
            reply: Bytes::from_static(b"+OK\r\n"),
            suppress,
        }))
    }

    /// Moves the client to database `db` once everything it sent before
    /// has been answered on the shared connections of the old one.
    pub(super) async fn switch_database(&mut self, db: u32) {
        self.flush_batch().await;
        self.await_procedure().await;
        std::future::poll_fn(|cx| self.queue.poll_shared_answered(cx)).await;
        self.set_database(db);
    }

    /// The session is now in `db` (CLIENT LIST and INFO show it).
    pub(super) fn set_database(&mut self, db: u32) {
        self.session.database = db;
        self.entry.database(db);
    }

    /// The database HELLO and RESET return the client to.
    pub(super) fn default_database(&self) -> u32 {
        self.ctx.config.backend.database
    }

    /// The frames to write on the dedicated connection before a request
    /// that runs in `db`: a SELECT when the connection is in another one
    /// (its reply hidden in a slot of its own), none otherwise.
    pub(super) fn select_dedicated(&mut self, db: u32) {
        let Some(d) = self.dedicated.as_mut() else {
            return;
        };
        if self.session.tx.open || d.subscriptions.active() || d.monitor {
            return;
        }
        if d.lease.database == Some(db) {
            return;
        }
        d.out.extend_from_slice(&select_frame(db));
        d.lease.database = Some(db);
        let service = self.session.service.as_ref().map(|s| s.index);
        self.queue.push_dedicated(
            CommandReply::plain("select", service),
            false,
            true,
            self.read_at,
        );
    }
}

/// EXEC's reply arrived for a transaction that queued a SELECT: the
/// session moves to that database if the transaction ran (an array; not
/// nil after a failed WATCH, not EXECABORT). Returns the database the
/// session and its dedicated connection are in now.
pub(super) fn exec_answered(session: &mut Session, frame: &[u8]) -> u32 {
    let ran = frame.first() == Some(&b'*') && !frame.starts_with(b"*-1");
    if let Some(db) = session.exec_database.take().filter(|_| ran) {
        session.database = db;
    }
    session.database
}
