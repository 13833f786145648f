//! Databases as policy: which of the backend's databases a service may
//! use, the database a MOVE or COPY ... DB sends its key to, the keyspace
//! channels a service limited to some databases may subscribe to, and the
//! TTL follow-ups of a key written in another database. SELECT itself and
//! the database each connection is in are the client side's
//! (`client::database`).
//!
//! A TTL follow-up for a destination key runs in the destination database,
//! bracketed by SELECTs on the client's dedicated connection (never on a
//! shared one): [`bracket`].

use super::decision::Refusal;
use super::service::Service;
use crate::command::keyword::is_keyword;
use crate::command::{CommandSpec, Flags};
use crate::protocol::decimal::parse_ll;
use crate::protocol::request::Request;

/// Redis's error for an argument that is not a 64-bit integer.
const NOT_AN_INTEGER: &str = "ERR value is not an integer or out of range";
/// Redis's error for an integer past a C `int`.
const NOT_AN_INT: &str = "ERR value is out of range, value must between -2147483648 and 2147483647";
/// Redis's error for a database number past the server's `databases`.
const OUT_OF_RANGE: &str = "ERR DB index is out of range";

/// Reads a database number as Redis's `getIntFromObjectOrReply` then
/// `selectDb` do, with Redis's error text for each failure.
pub(crate) fn parse_database(arg: &[u8], databases: u32) -> Result<u32, &'static str> {
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
pub(crate) fn refusal(service: &Service, db: u32) -> Refusal {
    Refusal::Database {
        service: service.name.clone(),
        db,
    }
}

/// COPY's destination database, its options read as Redis's `copyCommand`
/// reads them (`REPLACE`, `DB n`, anything else a syntax error; the last
/// DB wins): `Ok(None)` without DB, Redis's error for a bad option.
fn copy_destination(req: &Request, databases: u32) -> Result<Option<u32>, &'static str> {
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
fn move_destination(req: &Request, databases: u32) -> Result<u32, &'static str> {
    parse_database(req.get(2).unwrap_or_default(), databases)
}

/// Keyspace and keyevent channels (`__keyspace@<n>__:...`) name a
/// database: a service limited to some databases may subscribe only to
/// theirs (a pattern must name its database literally).
pub(crate) fn check_channels(
    service: &Service,
    spec: &CommandSpec,
    req: &Request,
) -> Result<(), Refusal> {
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
                return Err(Refusal::KeyspaceChannel {
                    service: service.name.clone(),
                })
            }
        }
    }
    Ok(())
}

/// The database a MOVE or COPY sends its key to, when it is another one
/// than the client's (`Ok(None)` otherwise, and for every other command);
/// `Err` is the reply that refuses the request.
pub(crate) fn destination(
    service: &Service,
    name: &str,
    req: &Request,
    current: u32,
    databases: u32,
) -> Result<Option<u32>, Refusal> {
    let db = match name {
        "move" => Some(move_destination(req, databases).map_err(Refusal::DatabaseArgument)?),
        "copy" => copy_destination(req, databases).map_err(Refusal::DatabaseArgument)?,
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
pub(crate) fn bracket(follow_ups: Vec<Request>, dst: u32, current: u32) -> Vec<Request> {
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
pub(crate) fn move_follow_up(service: &Service, key: &[u8]) -> Vec<Request> {
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
