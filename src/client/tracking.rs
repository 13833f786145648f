//! Client-side caching (CLIENT TRACKING) through keygate.
//!
//! Tracking is state of the connection Redis tracks reads on, so a client
//! that turns it on moves to a dedicated connection of its own and stays
//! there until it disconnects or RESETs; the connection is then closed, not
//! pooled (see [`crate::command::state`]). Invalidations come back on that
//! connection as RESP3 pushes and go to that client only.
//!
//! `REDIRECT <id>` is refused: Redis would need the backend id of another
//! client's connection subscribed to `__redis__:invalidate`, and keygate
//! does not lease one per redirect target. A client speaks RESP3 (HELLO 3)
//! to get invalidations as pushes instead.
//!
//! For a namespaced service, `BCAST` prefixes get the service's prefix
//! (BCAST without PREFIX gets `PREFIX <prefix>`), invalidated key names lose
//! it, and invalidations for keys outside the namespace are dropped, so a
//! tracking client never learns another service's key names.

use bytes::{Bytes, BytesMut};

use crate::command::keyword::is_keyword;
use crate::policy::namespace::Namespace;
use crate::protocol::encode;
use crate::protocol::reply::Value;
use crate::protocol::request::Request;
use crate::protocol::Protocol;

/// The refusal of `CLIENT TRACKING ... REDIRECT <id>`.
pub(super) const REDIRECT_REFUSED: &str = "ERR keygate: CLIENT TRACKING REDIRECT is not supported; use RESP3 (HELLO 3) to receive invalidations as push messages";

/// CLIENT TRACKING as it goes to the backend: `None` to send it as it is,
/// a confined request for a namespaced service, or the refusal. Options are
/// read as Redis reads them (`networking.c`); what Redis would refuse goes
/// as it is, for Redis's own error.
pub(super) fn confine_request(
    ns: Option<&Namespace>,
    req: &Request,
) -> Result<Option<Request>, &'static str> {
    let argc = req.argc();
    let mut prefixes = Vec::new();
    let mut bcast = false;
    let mut j = 3;
    while j < argc {
        let arg = req.get(j).unwrap_or_default();
        let more = j + 1 < argc;
        if is_keyword(arg, b"redirect") && more {
            return Err(REDIRECT_REFUSED);
        } else if is_keyword(arg, b"prefix") && more {
            j += 1;
            prefixes.push(j);
        } else if is_keyword(arg, b"bcast") {
            bcast = true;
        }
        j += 1;
    }
    let Some(ns) = ns else {
        return Ok(None);
    };
    let mut confined = if prefixes.is_empty() {
        req.clone()
    } else {
        req.prefix_args(&prefixes, ns.prefix_bytes())
    };
    if bcast && prefixes.is_empty() {
        confined = confined.append_args(&[b"PREFIX", ns.prefix_bytes()]);
    }
    Ok(Some(confined))
}

/// Whether `frame` is an invalidation push (`>2 invalidate ...`).
pub(super) fn is_invalidation(frame: &[u8]) -> bool {
    frame.starts_with(b">2\r\n$10\r\ninvalidate\r\n")
}

/// An invalidation push confined to `ns`: the prefix comes off each key,
/// keys outside the namespace are dropped, and so is a push left with no
/// key. A flush (nil key list) concerns every client and passes.
pub(super) fn confine_invalidation(ns: &Namespace, frame: &Bytes) -> Option<Bytes> {
    let Ok(Value::Push(items)) = Value::parse(frame) else {
        return None;
    };
    let keys = match items.get(1) {
        Some(Value::Array(keys)) => keys,
        Some(Value::Nil) => return Some(frame.clone()),
        _ => return None,
    };
    let kept: Vec<&[u8]> = keys
        .iter()
        .filter_map(|k| match k {
            Value::Bulk(name) => ns.strip(name),
            _ => None,
        })
        .collect();
    if kept.is_empty() {
        return None;
    }
    let mut out = BytesMut::new();
    encode::push_header(&mut out, 2, Protocol::Resp3);
    encode::bulk(&mut out, b"invalidate");
    encode::array_header(&mut out, kept.len());
    for k in kept {
        encode::bulk(&mut out, k);
    }
    Some(out.freeze())
}

/// CLIENT GETREDIR and CLIENT TRACKINGINFO of a client that holds no
/// dedicated connection, so has never had tracking: what Redis answers for
/// a connection with tracking off. `None` for other subcommands (and for
/// wrong arities, which go on for Redis's error).
pub(super) fn answer_untracked(req: &Request, protocol: Protocol) -> Option<Bytes> {
    if req.argc() != 2 {
        return None;
    }
    let sub = req.get(1)?;
    let mut out = BytesMut::new();
    if sub.eq_ignore_ascii_case(b"getredir") {
        encode::integer(&mut out, -1);
    } else if sub.eq_ignore_ascii_case(b"trackinginfo") {
        encode::map_header(&mut out, 3, protocol);
        encode::bulk(&mut out, b"flags");
        encode::set_header(&mut out, 1, protocol);
        encode::bulk(&mut out, b"off");
        encode::bulk(&mut out, b"redirect");
        encode::integer(&mut out, -1);
        encode::bulk(&mut out, b"prefixes");
        encode::array_header(&mut out, 0);
    } else {
        return None;
    }
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(req: &Request) -> Vec<String> {
        req.args()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    }

    #[test]
    fn bcast_prefixes_are_confined() {
        let ns = Namespace::new("svc", b"svc:");
        let req = Request::from_args(&["CLIENT", "TRACKING", "on", "BCAST", "PREFIX", "user:"]);
        let confined = confine_request(Some(&ns), &req).unwrap().unwrap();
        assert_eq!(
            args(&confined),
            ["CLIENT", "TRACKING", "on", "BCAST", "PREFIX", "svc:user:"]
        );
        let req = Request::from_args(&["CLIENT", "TRACKING", "on", "bcast"]);
        let confined = confine_request(Some(&ns), &req).unwrap().unwrap();
        assert_eq!(
            args(&confined),
            ["CLIENT", "TRACKING", "on", "bcast", "PREFIX", "svc:"]
        );
        assert_eq!(confine_request(None, &req), Ok(None));
    }

    #[test]
    fn redirect_is_refused_even_as_redis_reads_it() {
        for opt in ["REDIRECT", "redirect", "ReDiReCt\0x"] {
            let req = Request::from_args(&["CLIENT", "TRACKING", "on", opt, "7"]);
            assert_eq!(confine_request(None, &req), Err(REDIRECT_REFUSED));
        }
        // No argument after it: Redis's syntax error, from Redis.
        let req = Request::from_args(&["CLIENT", "TRACKING", "on", "REDIRECT"]);
        assert_eq!(confine_request(None, &req), Ok(None));
    }

    #[test]
    fn invalidations_lose_the_prefix_and_other_services_keys() {
        let ns = Namespace::new("svc", b"svc:");
        let frame =
            Bytes::from_static(b">2\r\n$10\r\ninvalidate\r\n*2\r\n$5\r\nsvc:k\r\n$5\r\noth:k\r\n");
        assert!(is_invalidation(&frame));
        assert_eq!(
            confine_invalidation(&ns, &frame).unwrap(),
            Bytes::from_static(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n")
        );
        let other = Bytes::from_static(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$5\r\noth:k\r\n");
        assert_eq!(confine_invalidation(&ns, &other), None);
        let flush = Bytes::from_static(b">2\r\n$10\r\ninvalidate\r\n_\r\n");
        assert_eq!(confine_invalidation(&ns, &flush), Some(flush.clone()));
    }

    #[test]
    fn untracked_answers_match_redis() {
        let info = Request::from_args(&["CLIENT", "TRACKINGINFO"]);
        assert_eq!(
            answer_untracked(&info, Protocol::Resp2).unwrap(),
            Bytes::from_static(
                b"*6\r\n$5\r\nflags\r\n*1\r\n$3\r\noff\r\n$8\r\nredirect\r\n:-1\r\n$8\r\nprefixes\r\n*0\r\n"
            )
        );
        assert_eq!(
            answer_untracked(&info, Protocol::Resp3).unwrap(),
            Bytes::from_static(
                b"%3\r\n$5\r\nflags\r\n~1\r\n$3\r\noff\r\n$8\r\nredirect\r\n:-1\r\n$8\r\nprefixes\r\n*0\r\n"
            )
        );
        let redir = Request::from_args(&["CLIENT", "GETREDIR"]);
        assert_eq!(
            answer_untracked(&redir, Protocol::Resp2).unwrap(),
            Bytes::from_static(b":-1\r\n")
        );
    }
}
