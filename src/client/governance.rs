//! The client side of TTL governance and value limits: after a request is
//! confined to its namespace, the service's TTL policy may rewrite it (a
//! default TTL added, an over-long TTL clamped) or add follow-ups
//! (`PEXPIRE key ms NX`) that ride right behind it, on the same connection
//! and inside the same transaction, with their replies hidden.
//!
//! Invariant: the client sees exactly one reply per command it sent; the
//! follow-ups are counted in the command's `frames` and dropped on the way
//! back (inside MULTI both their `+QUEUED` and their EXEC elements).

use std::time::SystemTime;

use super::Refused;
use crate::command::{CommandSpec, Flags};
use crate::metrics::Recorder;
use crate::policy::service::Service;
use crate::protocol::request::Request;

/// Whether a request whose namespace prefix is still to be written (the
/// one-key shortcut) may be governed as the client sent it: the value limit
/// counts every argument's length, the key's with its prefix, so it needs
/// the confined request.
pub(super) fn governs_before_prefix(service: &Service) -> bool {
    service.max_value_bytes.is_none()
}

/// After a request was governed before its prefix at argument `at` was
/// written: true when the prefix still goes at `at` of `governed` (the
/// policy never moves a key) and every follow-up names that key at its
/// argument 1 (`PEXPIRE key ms NX`), which then gets the prefix here.
/// False leaves the follow-ups alone; the caller confines and governs again.
pub(super) fn confine_follow_ups(
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
/// instead with its follow-ups, or the refusal to answer with. Clamps and
/// refusals are counted in `recorder`.
pub(super) fn govern(
    service: &Service,
    spec: &'static CommandSpec,
    req: &Request,
    recorder: &mut Recorder,
) -> Result<Option<(Request, Vec<Request>)>, Refused> {
    if let Some(limit) = service.max_value_bytes {
        if spec.flags.contains(Flags::WRITE) {
            if let Some(len) = req.args().skip(1).map(<[u8]>::len).find(|&l| l > limit) {
                return Err(Refused::new(
                    format!(
                        "ERR keygate: value of {len} bytes is over service '{}''s max_value_bytes of {limit}",
                        service.name
                    ),
                    false,
                ));
            }
        }
    }
    if service.ttl.leaves_alone(spec) {
        return Ok(None);
    }
    match service.ttl.govern(spec, req, SystemTime::now()) {
        Ok(governed) => {
            if governed.clamped {
                recorder.ttl_clamped(Some(service.index));
            }
            Ok(Some((governed.request, governed.follow_ups)))
        }
        Err(refusal) => {
            if refusal.is_over_max() {
                recorder.ttl_refused(Some(service.index));
            }
            // Options Redis cannot parse: Redis's own error, which it
            // answers when it runs the command. max_ttl is keygate's policy.
            let at_run = !refusal.is_over_max();
            Err(Refused::new(refusal.to_string(), at_run))
        }
    }
}
