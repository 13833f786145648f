//! Client-side caching (CLIENT TRACKING) through keygate.
//!
//! Tracking is state of the connection Redis tracks reads on, so a client
//! that turns it on moves to a dedicated connection of its own and stays
//! there until it disconnects or RESETs; the connection is then closed, not
//! pooled (see [`crate::command::state`]). Invalidations come back on that
//! connection as RESP3 pushes and go to that client only.
//!
//! `REDIRECT <id>` is refused (by [`crate::policy::tracking`]): Redis would need the backend id of another
//! client's connection subscribed to `__redis__:invalidate`, and keygate
//! does not lease one per redirect target. A client speaks RESP3 (HELLO 3)
//! to get invalidations as pushes instead.
//!
//! For a namespaced service, `BCAST` prefixes get the service's prefix
//! (BCAST without PREFIX gets `PREFIX <prefix>`, both by the policy),
//! invalidated key names lose
//! it, and invalidations for keys outside the namespace are dropped, so a
//! tracking client never learns another service's key names.

use bytes::{Bytes, BytesMut};

use crate::policy::namespace::Namespace;
use crate::protocol::encode;
use crate::protocol::reply::Value;
use crate::protocol::request::Request;
use crate::protocol::Protocol;

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
