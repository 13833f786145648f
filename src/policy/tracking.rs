//! CLIENT TRACKING as policy: a client's tracking state is its own, so every
//! service may turn it on; for a namespaced service its `BCAST` prefixes
//! are confined to the namespace (`PREFIX <prefix>` added to a BCAST
//! without one), and `REDIRECT <id>` is refused: Redis would need the
//! backend id of another client's connection subscribed to
//! `__redis__:invalidate`, and keygate does not lease one per redirect
//! target. Invalidations on the way back are the client side's
//! (`client::tracking`).

use super::decision::Refusal;
use super::namespace::Namespace;
use crate::command::keyword::is_keyword;
use crate::protocol::request::Request;

/// CLIENT TRACKING as it goes to the backend: `None` to send it as it is,
/// a confined request for a namespaced service, or the refusal. Options are
/// read as Redis reads them (`networking.c`); what Redis would refuse goes
/// as it is, for Redis's own error.
pub(crate) fn confine_request(
    ns: Option<&Namespace>,
    req: &Request,
) -> Result<Option<Request>, Refusal> {
    let argc = req.argc();
    let mut prefixes = Vec::new();
    let mut bcast = false;
    let mut j = 3;
    while j < argc {
        let arg = req.get(j).unwrap_or_default();
        let more = j + 1 < argc;
        if is_keyword(arg, b"redirect") && more {
            return Err(Refusal::TrackingRedirect);
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
            assert_eq!(confine_request(None, &req), Err(Refusal::TrackingRedirect));
        }
        // No argument after it: Redis's syntax error, from Redis.
        let req = Request::from_args(&["CLIENT", "TRACKING", "on", "REDIRECT"]);
        assert_eq!(confine_request(None, &req), Ok(None));
    }
}
