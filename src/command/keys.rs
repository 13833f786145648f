//! Where a request's keys are: Redis 7's key-spec search, plus keygate's own
//! code for the commands whose specs say "unknown" (SORT's STORE, ...).

use super::CommandSpec;
use crate::protocol::request::Request;

/// Argument indexes of every key in `req`, in argument order.
pub fn key_positions(spec: &CommandSpec, req: &Request) -> Vec<usize> {
    let _ = (spec, req);
    todo!()
}
