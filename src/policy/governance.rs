//! TTL governance and value limits as one policy stage: after a request is
//! confined to its namespace, the service's TTL policy ([`super::ttl`]) may rewrite it (a
//! default TTL added, an over-long TTL clamped) or add follow-ups
//! (`PEXPIRE key ms NX`) that ride right behind it, on the same connection
//! and inside the same transaction, with their replies hidden.
//!
//! Invariant: the client sees exactly one reply per command it sent; the
//! follow-ups are counted in the command's `frames` and dropped on the way
//! back (inside MULTI both their `+QUEUED` and their EXEC elements).
//!
//! `max_value_bytes` bounds a string by the size a write makes it, not only
//! by its arguments: SETRANGE, SETBIT and BITFIELD are refused when the
//! offset they write at lies past the limit (a string within the limit
//! stays within it, so the offset alone decides). APPEND's result depends
//! on the length already stored, which keygate cannot know without asking;
//! it is sent as a script that checks STRLEN and appends in one atomic step
//! ([`APPEND_WITHIN`]), so no interleaved write can slip past the check.
//! The limits of that choice: the backend must allow EVAL for keygate's
//! user, and MONITOR and command statistics show EVAL instead of APPEND.

use std::time::SystemTime;

use super::decision::Refusal;
use super::service::Service;
use crate::command::keyword::{c_str, is_keyword};
use crate::command::{CommandSpec, Flags};
use crate::protocol::decimal::parse_ll;
use crate::protocol::request::Request;

/// A governed request: the request to send instead, its follow-ups, and
/// whether a TTL was clamped to `max_ttl` (counted by the caller).
pub(crate) struct Governed {
    pub(crate) request: Request,
    pub(crate) follow_ups: Vec<Request>,
    pub(crate) clamped: bool,
}

/// APPEND under `max_value_bytes`: appends ARGV[1] to KEYS[1] unless the
/// result would be longer than ARGV[2] bytes, refused then with ARGV[3].
/// `pcall` passes Redis's own errors (WRONGTYPE) through as they are.
const APPEND_WITHIN: &str = "local n = redis.pcall('strlen', KEYS[1]) \
if type(n) == 'number' and n + #ARGV[1] > tonumber(ARGV[2]) then \
return redis.error_reply(ARGV[3]) end \
return redis.pcall('append', KEYS[1], ARGV[1])";

/// Whether a request whose namespace prefix is still to be written (the
/// one-key shortcut) may be governed as the client sent it: the value limit
/// counts every argument's length, the key's with its prefix, so it needs
/// the confined request.
pub(crate) fn governs_before_prefix(service: &Service) -> bool {
    service.max_value_bytes.is_none()
}

/// After a request was governed before its prefix at argument `at` was
/// written: true when the prefix still goes at `at` of `governed` (the
/// policy never moves a key) and every follow-up names that key at its
/// argument 1 (`PEXPIRE key ms NX`), which then gets the prefix here.
/// False leaves the follow-ups alone; the caller confines and governs again.
pub(crate) fn confine_follow_ups(
    req: &Request,
    at: usize,
    governed: &Request,
    follow_ups: &mut [Request],
    prefix: &[u8],
) -> bool {
    let key = req.get(at);
    let in_place =
        key.is_some() && governed.get(at) == key && follow_ups.iter().all(|f| f.get(1) == key);
    if in_place {
        for follow_up in follow_ups {
            *follow_up = follow_up.prefix_arg(1, prefix);
        }
    }
    in_place
}

/// Applies `max_value_bytes` and the TTL policy: `None` when the request
/// goes as it is (the common case costs no move), the request to send
/// instead with its follow-ups, or the refusal to answer with.
pub(crate) fn govern(
    service: &Service,
    spec: &'static CommandSpec,
    req: &Request,
) -> Result<Option<Governed>, Refusal> {
    if let Some(limit) = service.max_value_bytes {
        if spec.flags.contains(Flags::WRITE) {
            if let Some(len) = req.args().skip(1).map(<[u8]>::len).find(|&l| l > limit) {
                return Err(Refusal::ValueOverLimit {
                    len,
                    service: service.name.clone(),
                    limit,
                });
            }
            // An error here is Redis's own, for arguments it refuses when
            // it runs the command.
            let produced = produced_size(spec.name, req).map_err(Refusal::Arguments)?;
            if let Some(size) = produced {
                if size > limit as u64 {
                    return Err(Refusal::ValueWouldGrow {
                        size,
                        service: service.name.clone(),
                        limit,
                    });
                }
            }
        }
    }
    let governed = govern_ttl(service, spec, req)?;
    match service.max_value_bytes {
        Some(limit) if spec.name == "append" => {
            let governed = governed.unwrap_or_else(|| Governed {
                request: req.clone(),
                follow_ups: Vec::new(),
                clamped: false,
            });
            Ok(Some(Governed {
                request: append_within(&governed.request, limit, &service.name),
                ..governed
            }))
        }
        _ => Ok(governed),
    }
}

/// The TTL policy's part of [`govern`].
fn govern_ttl(
    service: &Service,
    spec: &'static CommandSpec,
    req: &Request,
) -> Result<Option<Governed>, Refusal> {
    if service.ttl.leaves_alone(spec) {
        return Ok(None);
    }
    match service.ttl.govern(spec, req, SystemTime::now()) {
        Ok(governed) => Ok(Some(Governed {
            request: governed.request,
            follow_ups: governed.follow_ups,
            clamped: governed.clamped,
        })),
        Err(refusal) => Err(Refusal::Ttl(refusal)),
    }
}

/// `APPEND key value` as the script that appends only within `limit`.
fn append_within(append: &Request, limit: usize, service: &str) -> Request {
    let key = append.get(1).unwrap_or_default();
    let value = append.get(2).unwrap_or_default();
    let limit = limit.to_string();
    let refusal = format!(
        "ERR keygate: the value would grow over service '{service}''s max_value_bytes of {limit}"
    );
    Request::from_args(&[
        &b"EVAL"[..],
        APPEND_WITHIN.as_bytes(),
        b"1",
        key,
        value,
        limit.as_bytes(),
        refusal.as_bytes(),
    ])
}

/// The size in bytes a write that grows a string at an offset makes it at
/// least: `None` for other commands and for writes that grow nothing (an
/// empty SETRANGE, a BITFIELD of GETs), and for offsets Redis itself
/// refuses (it writes nothing then). A BITFIELD operation keygate cannot
/// read is refused with Redis's own error: Redis would refuse the whole
/// command for it.
fn produced_size(command: &str, req: &Request) -> Result<Option<u64>, &'static str> {
    let offset = |i: usize| {
        req.get(i)
            .and_then(parse_ll)
            .and_then(|o| u64::try_from(o).ok())
    };
    Ok(match command {
        "setrange" => match (offset(2), req.arg_len(3)) {
            (Some(at), Some(len)) if len > 0 => Some(at.saturating_add(len as u64)),
            _ => None,
        },
        "setbit" => offset(2).map(|bit| bit / 8 + 1),
        "bitfield" => bitfield_size(req)?,
        _ => None,
    })
}

/// The highest byte a BITFIELD's SET and INCRBY operations write, plus one.
fn bitfield_size(req: &Request) -> Result<Option<u64>, &'static str> {
    const SYNTAX: &str = "ERR syntax error";
    const TYPE: &str = "ERR Invalid bitfield type. Use something like i16 u8. Note that u64 is not supported but i64 is.";
    const OFFSET: &str = "ERR bit offset is not an integer or out of range";
    let mut size = None;
    let mut i = 2;
    while let Some(op) = req.get(i) {
        let writes = is_keyword(op, b"set") || is_keyword(op, b"incrby");
        if is_keyword(op, b"overflow") {
            i += 2;
            continue;
        }
        if !writes && !is_keyword(op, b"get") {
            return Err(SYNTAX);
        }
        let (Some(kind), Some(at)) = (req.get(i + 1), req.get(i + 2)) else {
            return Err(SYNTAX);
        };
        if writes {
            // As Redis reads them: `i<bits>`/`u<bits>` as a C string, and an
            // offset in bits, `#n` meaning n times the width.
            let bits = match c_str(kind).split_first() {
                Some((b'i', n)) => parse_ll(n).filter(|b| (1..=64).contains(b)),
                Some((b'u', n)) => parse_ll(n).filter(|b| (1..=63).contains(b)),
                _ => None,
            }
            .ok_or(TYPE)?;
            let (scaled, digits) = match at.split_first() {
                Some((b'#', n)) => (bits, n),
                _ => (1, at),
            };
            let bit = parse_ll(digits)
                .and_then(|o| o.checked_mul(scaled))
                .and_then(|o| u64::try_from(o).ok())
                .ok_or(OFFSET)?;
            let end = bit.saturating_add(bits as u64 - 1) / 8 + 1;
            size = size.max(Some(end));
            i += 4;
        } else {
            i += 3;
        }
    }
    Ok(size)
}
