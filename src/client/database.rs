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
//! MOVE and COPY ... DB name a destination database: it must be one of the
//! service's, and a TTL follow-up for the destination key runs in the
//! destination database, bracketed by SELECTs on the client's dedicated
//! connection (never on a shared one).

use bytes::Bytes;

use super::queue::CommandReply;
use super::session::Session;
use super::stages::{error_reply, Deferred, Stopped};
use super::Connection;
use crate::command::keyword::is_keyword;
use crate::command::{CommandSpec, Flags};
use crate::metrics::ErrorKind;
use crate::policy::service::Service;
use crate::protocol::decimal::parse_ll;
use crate::protocol::request::Request;
use crate::router::ConnectionEffect;

/// Redis's error for an argument that is not a 64-bit integer.
const NOT_AN_INTEGER: &str = "ERR value is not an integer or out of range";
/// Redis's error for an integer past a C `int`.
const NOT_AN_INT: &str = "ERR value is out of range, value must between -2147483648 and 2147483647";
/// Redis's error for a database number past the server's `databases`.
const OUT_OF_RANGE: &str = "ERR DB index is out of range";

/// Reads a database number as Redis's `getIntFromObjectOrReply` then
/// `selectDb` do, with Redis's error text for each failure.
pub(super) fn parse_database(arg: &[u8], databases: u32) -> Result<u32, &'static str> {
    let n = parse_ll(arg).ok_or(NOT_AN_INTEGER)?;
    if i32::try_from(n).is_err() {
        return Err(NOT_AN_INT);
    }
    u32::try_from(n)
        .ok()
        .filter(|&db| db < databases)
        .ok_or(OUT_OF_RANGE)
}

/// Whether `service` may use database `db`.
pub(crate) fn allows(service: &Service, db: u32) -> bool {
    match &service.databases {
        None => true,
        Some(list) => list.binary_search(&db).is_ok(),
    }
}

/// Every database `service` may use, of the backend's `databases`.
pub(crate) fn allowed(service: &Service, databases: u32) -> Vec<u32> {
    match &service.databases {
        None => (0..databases).collect(),
        Some(list) => list.to_vec(),
    }
}

/// The refusal of a database the service may not use.
pub(super) fn refusal(service: &Service, db: u32) -> String {
    format!(
        "NOPERM keygate: service '{}' may not use database {db}",
        service.name
    )
}

/// COPY's destination database, its options read as Redis's `copyCommand`
/// reads them (`REPLACE`, `DB n`, anything else a syntax error; the last
/// DB wins): `Ok(None)` without DB, Redis's error for a bad option.
pub(super) fn copy_destination(req: &Request, databases: u32) -> Result<Option<u32>, &'static str> {
    let mut db = None;
    let mut j = 3;
    while j < req.argc() {
        let arg = req.get(j).unwrap_or_default();
        let additional = req.argc() - j - 1;
        if is_keyword(arg, b"replace") {
        } else if is_keyword(arg, b"db") && additional >= 1 {
            db = Some(parse_database(
                req.get(j + 1).unwrap_or_default(),
                databases,
            )?);
            j += 1;
        } else {
            return Err("ERR syntax error");
        }
        j += 1;
    }
    Ok(db)
}

/// MOVE's destination database, read as `moveCommand` reads it.
pub(super) fn move_destination(req: &Request, databases: u32) -> Result<u32, &'static str> {
    parse_database(req.get(2).unwrap_or_default(), databases)
}

/// Keyspace and keyevent channels (`__keyspace@<n>__:...`) name a
/// database: a service limited to some databases may subscribe only to
/// theirs (a pattern must name its database literally).
pub(super) fn check_channels(
    service: &Service,
    spec: &CommandSpec,
    req: &Request,
) -> Result<(), String> {
    if !spec.flags.contains(Flags::PUBSUB) || service.databases.is_none() {
        return Ok(());
    }
    for name in req.args().skip(1) {
        let rest = [&b"__keyspace@"[..], b"__keyevent@"]
            .iter()
            .find_map(|head| name.strip_prefix(*head));
        let Some(rest) = rest else {
            continue;
        };
        let db = rest
            .iter()
            .position(|&c| c == b'_')
            .and_then(|end| rest.get(..end))
            .and_then(parse_ll)
            .and_then(|n| u32::try_from(n).ok());
        match db {
            Some(db) if allows(service, db) => {}
            Some(db) => return Err(refusal(service, db)),
            None => {
                return Err(format!(
                    "NOPERM keygate: service '{}' may use only some databases; a keyspace channel must name one of them",
                    service.name
                ))
            }
        }
    }
    Ok(())
}

/// `SELECT n` as a frame.
pub(super) fn select_frame(db: u32) -> Bytes {
    Request::from_args(&["SELECT", &db.to_string()]).into_frame()
}

/// The database a MOVE or COPY sends its key to, when it is another one
/// than the client's (`Ok(None)` otherwise, and for every other command);
/// `Err` is the reply that refuses the request.
pub(super) fn destination(
    service: &Service,
    name: &str,
    req: &Request,
    current: u32,
    databases: u32,
) -> Result<Option<u32>, String> {
    let db = match name {
        "move" => Some(move_destination(req, databases)?),
        "copy" => copy_destination(req, databases)?,
        _ => return Ok(None),
    };
    match db {
        Some(db) if !allows(service, db) => Err(refusal(service, db)),
        Some(db) if db != current => Ok(Some(db)),
        _ => Ok(None),
    }
}

/// The TTL follow-ups of a command that writes its key in database `dst`
/// while the client is in `current`: run in `dst`, then back.
pub(super) fn bracket(follow_ups: Vec<Request>, dst: u32, current: u32) -> Vec<Request> {
    if follow_ups.is_empty() {
        return follow_ups;
    }
    let select = |db: u32| Request::from_args(&["SELECT", &db.to_string()]);
    std::iter::once(select(dst))
        .chain(follow_ups)
        .chain(std::iter::once(select(current)))
        .collect()
}

/// `PEXPIRE key ms NX` for a key MOVE takes to another database, when the
/// service gives keys a default TTL (MOVE keeps the key's own TTL; this
/// covers a key that had none).
pub(super) fn move_follow_up(service: &Service, key: &[u8]) -> Vec<Request> {
    match service.default_ttl {
        Some(ttl) => {
            let ms = ttl.as_millis().to_string();
            vec![Request::from_args(&[
                &b"PEXPIRE"[..],
                key,
                ms.as_bytes(),
                b"NX",
            ])]
        }
        None => Vec::new(),
    }
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
            let msg = refusal(&service, db);
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
                reply,
                suppress,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_numbers_are_read_as_redis_reads_them() {
        assert_eq!(parse_database(b"4", 16), Ok(4));
        assert_eq!(parse_database(b"0", 16), Ok(0));
        assert_eq!(parse_database(b"16", 16), Err(OUT_OF_RANGE));
        assert_eq!(parse_database(b"-1", 16), Err(OUT_OF_RANGE));
        assert_eq!(parse_database(b"abc", 16), Err(NOT_AN_INTEGER));
        assert_eq!(parse_database(b"04", 16), Err(NOT_AN_INTEGER));
        assert_eq!(parse_database(b" 4", 16), Err(NOT_AN_INTEGER));
        assert_eq!(parse_database(b"", 16), Err(NOT_AN_INTEGER));
        assert_eq!(parse_database(b"2147483648", 16), Err(NOT_AN_INT));
        assert_eq!(
            parse_database(b"99999999999999999999", 16),
            Err(NOT_AN_INTEGER)
        );
    }

    #[test]
    fn copy_options_are_read_as_copy_command_reads_them() {
        let req = |args: &[&str]| Request::from_args(args);
        assert_eq!(copy_destination(&req(&["COPY", "a", "b"]), 16), Ok(None));
        assert_eq!(
            copy_destination(&req(&["COPY", "a", "b", "db", "4", "REPLACE"]), 16),
            Ok(Some(4))
        );
        assert_eq!(
            copy_destination(&req(&["COPY", "a", "b", "DB\0x", "4"]), 16),
            Ok(Some(4)),
            "a keyword is compared up to its first NUL"
        );
        assert_eq!(
            copy_destination(&req(&["COPY", "a", "b", "DB", "1", "DB", "5"]), 16),
            Ok(Some(5)),
            "the last DB wins"
        );
        assert_eq!(
            copy_destination(&req(&["COPY", "a", "b", "DB"]), 16),
            Err("ERR syntax error")
        );
        assert_eq!(
            copy_destination(&req(&["COPY", "a", "b", "DB", "x", "bogus"]), 16),
            Err(NOT_AN_INTEGER),
            "options are read in order"
        );
        assert_eq!(
            copy_destination(&req(&["COPY", "a", "b", "bogus", "DB", "x"]), 16),
            Err("ERR syntax error")
        );
        assert_eq!(
            copy_destination(&req(&["COPY", "a", "b", "DB", "16"]), 16),
            Err(OUT_OF_RANGE)
        );
    }

    #[test]
    fn follow_ups_for_another_database_are_bracketed() {
        let f = vec![Request::from_args(&["PEXPIRE", "k", "10", "NX"])];
        let b = bracket(f, 4, 0);
        let args: Vec<Vec<u8>> = b.iter().map(|r| r.get(0).unwrap().to_vec()).collect();
        assert_eq!(
            args,
            vec![b"SELECT".to_vec(), b"PEXPIRE".to_vec(), b"SELECT".to_vec()]
        );
        assert_eq!(b[0].get(1), Some(&b"4"[..]));
        assert_eq!(b[2].get(1), Some(&b"0"[..]));
        assert!(bracket(Vec::new(), 4, 0).is_empty());
    }
}
