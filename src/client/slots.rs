//! Routing by cluster slot, on a cluster backend: the slot of a forwarded
//! request's keys and the master serving it, or the refusal Redis Cluster
//! (or keygate, for what it does not serve on a cluster yet) answers.
//!
//! Invariants: every key of a request is in one slot, or the request is
//! refused with Redis's `CROSSSLOT`; a key's slot is that of the key as
//! the backend sees it (the service's prefix in front); a command without
//! keys goes to any master unless its meaning is the whole keyspace, which
//! one master does not hold.

use super::Connection;
use crate::command::keys::{key_positions_inline, single_fixed_key};
use crate::command::CommandSpec;
use crate::protocol::request::Request;
use crate::topology::slot::{key_slot, prefixed_key_slot};

/// Redis's reply to keys in more than one slot.
pub(super) const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";

/// The reply to what keygate does not serve on a cluster backend yet:
/// a monitor or tracking stream would have to follow every node.
pub(super) const HELD_ON_CLUSTER: &str =
    "ERR keygate: MONITOR and CLIENT TRACKING are not served on a cluster backend yet";

/// Commands without keys that read or change the whole keyspace (or every
/// node's scripts), which no single master holds: outside a transaction
/// most go to every master ([`super::fan_out`]); here they are refused
/// (inside MULTI, or SWAPDB).
const KEYSPACE_WIDE: &[&str] = &[
    "keys",
    "scan",
    "dbsize",
    "randomkey",
    "flushdb",
    "flushall",
    "swapdb",
    "script|load",
    "script|flush",
    "script|exists",
    "function|load",
    "function|delete",
    "function|flush",
    "function|restore",
    "function|dump",
    "function|list",
];

impl Connection {
    /// Where a forwarded request goes on a cluster backend: the slot of its
    /// keys (the batch finds that slot's master); `Ok(None)` when it has no
    /// keys. `prefix_at` is the key the namespace's prefix is still to be
    /// put in front of (the others are final). `Err` is the client's error.
    pub(super) fn cluster_slot(
        &self,
        spec: &'static CommandSpec,
        req: &Request,
        prefix_at: Option<usize>,
    ) -> Result<Option<u16>, String> {
        let slot = match prefix_at {
            Some(at) => {
                let prefix = self
                    .session
                    .namespace()
                    .map(|ns| ns.prefix_bytes())
                    .unwrap_or_default();
                Some(prefixed_key_slot(prefix, req.get(at).unwrap_or_default()))
            }
            // A shard channel is no key to the command table (NOT_KEY),
            // but the cluster serves it on its slot's master.
            None if spec.name == "spublish" => Some(key_slot(req.get(1).unwrap_or_default())),
            // One key at a fixed place (GET, SET and most others): no search.
            None => match single_fixed_key(spec, req) {
                Some(at) => Some(key_slot(req.get(at).unwrap_or_default())),
                None => {
                    let positions = key_positions_inline(spec, req).map_err(|e| e.to_string())?;
                    let mut slots = positions
                        .iter()
                        .map(|&at| key_slot(req.get(at).unwrap_or_default()));
                    let first = slots.next();
                    if let Some(first) = first {
                        if slots.any(|s| s != first) {
                            return Err(CROSSSLOT.to_string());
                        }
                    }
                    first
                }
            },
        };
        let Some(slot) = slot else {
            if KEYSPACE_WIDE.contains(&spec.name) {
                return Err(not_served(spec));
            }
            return Ok(None);
        };
        Ok(Some(slot))
    }
}

/// The reply to a command keygate does not serve on a cluster backend yet.
pub(super) fn not_served(spec: &CommandSpec) -> String {
    format!(
        "ERR keygate: '{}' is not served on a cluster backend yet",
        spec.name
    )
}
