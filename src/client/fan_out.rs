//! SCAN and KEYS on a cluster backend: no master holds the whole keyspace,
//! so each goes to every master and their replies are merged before the
//! command's reply plan (the namespace's confinement) applies. So do the
//! keyspace-wide commands of a service without a namespace (DBSIZE summed,
//! RANDOMKEY from any master that has a key, FLUSHDB and FLUSHALL on
//! every master) and the commands that load or drop scripts and functions,
//! which every master must hold for EVALSHA and FCALL to run on any slot
//! ([`Everywhere`]).
//!
//! SCAN's cursor names the master it is on: `redis_cursor << 14 | slot`,
//! where `slot` is the lowest slot of that master (the master's first in
//! slot order for cursor 0). When a master's own scan ends, the cursor
//! moves to the master with the next lowest slot, and 0 after the last;
//! so a client's ordinary SCAN loop walks every master. Redis's cursor
//! must fit in 50 bits (a table of up to 2^50 buckets). A resharding
//! during a scan may repeat or miss the keys of the slots it moves.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use super::queue::CommandReply;
use super::Connection;
use crate::backend::mux::{BatchReply, MuxHandle};
use crate::backend::node::Node;
use crate::policy::keyspace::submit_one;
use crate::protocol::encode;
use crate::protocol::reply::Value;
use crate::protocol::request::Request;

/// Bits of SCAN's cursor that name the master (by its lowest slot).
const SLOT_BITS: u32 = 14;

/// Redis's reply to a cursor it cannot read.
const INVALID_CURSOR: &str = "ERR invalid cursor";

/// SCAN or KEYS as the policy rewrote it, and its reply's plan.
pub(super) struct FanOutCall {
    pub(super) req: Request,
    pub(super) reply: CommandReply,
    pub(super) suppress: bool,
}

impl Connection {
    /// Runs SCAN or KEYS (`req`, as the policy rewrote it) over the
    /// cluster's masters; the merged reply goes through `reply`'s plan.
    pub(super) async fn run_fan_out(&mut self, call: FanOutCall) {
        let FanOutCall {
            req,
            reply,
            suppress,
        } = call;
        self.flush_batch().await;
        self.await_procedure().await;
        let (tx, rx) = oneshot::channel();
        let masters = self.masters_by_slot();
        let (protocol, id) = (self.session.protocol, self.session.id);
        let muxes: Vec<(u16, MuxHandle)> = masters
            .iter()
            .map(|(slot, node)| (*slot, node.mux_in(protocol, id, 0).into_owned()))
            .collect();
        let command = reply.command;
        let meter = self.meter.clone();
        tokio::spawn(async move {
            let merged = match (command, Everywhere::of(command)) {
                ("scan", _) => scan(&req, &muxes).await,
                (_, Some(how)) => everywhere(how, &req, &muxes).await,
                _ => keys(&req, &muxes).await,
            };
            // Held for the client like any backend reply, and taken off
            // the meter once written.
            if let Ok(replies) = &merged {
                meter.add(replies.bytes.len());
            }
            let _ = tx.send(merged);
        });
        self.queue
            .push_shared(rx, smallvec::smallvec![reply], suppress, self.read_at);
    }

    /// The masters serving slots, each with its lowest slot, in slot order.
    fn masters_by_slot(&self) -> Vec<(u16, Arc<Node>)> {
        let Some(cluster) = self.ctx.router.cluster() else {
            return Vec::new();
        };
        let map = cluster.map();
        let mut masters: Vec<(u16, Arc<Node>)> = map
            .shards
            .iter()
            .filter_map(|s| {
                let lowest = s.ranges.iter().map(|r| r.0).min()?;
                Some((lowest, s.master.clone()))
            })
            .collect();
        masters.sort_by_key(|m| m.0);
        masters
    }
}

/// A command without keys that every master runs on a cluster backend, by
/// how their replies merge into the client's one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Everywhere {
    /// DBSIZE: the masters' integers summed.
    Sum,
    /// RANDOMKEY: the first key from the masters, asked from a random one on.
    AnyKey,
    /// FLUSHDB, FLUSHALL, SCRIPT LOAD and FLUSH, FUNCTION LOAD, DELETE,
    /// FLUSH and RESTORE: run on every master; the first error, else the
    /// reply they all gave (they agree when every master was changed
    /// through keygate; if not, an error says so).
    Agree,
    /// SCRIPT EXISTS: each element 1 only where every master has it.
    AndEach,
    /// FUNCTION DUMP and LIST: read from one master (functions are loaded
    /// on every master alike).
    One,
}

impl Everywhere {
    /// How `command` (the table's name) runs over the masters, if it does.
    pub(super) fn of(command: &str) -> Option<Everywhere> {
        Some(match command {
            "dbsize" => Everywhere::Sum,
            "randomkey" => Everywhere::AnyKey,
            "flushdb" | "flushall" | "script|load" | "script|flush" | "function|load"
            | "function|delete" | "function|flush" | "function|restore" => Everywhere::Agree,
            "script|exists" => Everywhere::AndEach,
            "function|dump" | "function|list" => Everywhere::One,
            _ => return None,
        })
    }
}

/// `req` on the masters as `how` says, one reply for the client.
async fn everywhere(how: Everywhere, req: &Request, muxes: &[(u16, MuxHandle)]) -> BatchReply {
    if muxes.is_empty() {
        return error("CLUSTERDOWN Hash slot not served");
    }
    let start = match how {
        // Any master may be first: a cheap random start from the
        // process's random hasher keys.
        Everywhere::AnyKey => {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(0u8) as usize % muxes.len()
        }
        _ => 0,
    };
    let asked = match how {
        Everywhere::One => 1,
        _ => muxes.len(),
    };
    let mut replies = Vec::with_capacity(asked);
    for (_, mux) in muxes.iter().cycle().skip(start).take(asked) {
        let reply = submit_one(mux, req).await?;
        if reply.first() == Some(&b'-') {
            return own(reply);
        }
        if how == Everywhere::AnyKey && !matches!(Value::parse(&reply), Ok(Value::Nil)) {
            return own(reply);
        }
        replies.push(reply);
    }
    match how {
        Everywhere::Sum => {
            let mut sum = 0i64;
            for reply in &replies {
                match Value::parse(reply) {
                    Ok(Value::Integer(n)) => sum = sum.saturating_add(n),
                    _ => return own(reply.clone()),
                }
            }
            let mut out = BytesMut::new();
            encode::integer(&mut out, sum);
            own(out.freeze())
        }
        Everywhere::AndEach => {
            let mut each: Option<Vec<i64>> = None;
            for reply in &replies {
                let Ok(Value::Array(items)) = Value::parse(reply) else {
                    return own(reply.clone());
                };
                let flags: Vec<i64> = items
                    .iter()
                    .map(|v| match v {
                        Value::Integer(n) => *n,
                        _ => 0,
                    })
                    .collect();
                each = Some(match each {
                    Some(acc) => acc.iter().zip(&flags).map(|(a, b)| *a.min(b)).collect(),
                    None => flags,
                });
            }
            let each = each.unwrap_or_default();
            let mut out = BytesMut::new();
            encode::array_header(&mut out, each.len());
            for flag in each {
                encode::integer(&mut out, flag);
            }
            own(out.freeze())
        }
        Everywhere::Agree if replies.iter().any(|r| Some(r) != replies.first()) => {
            error("ERR keygate: the cluster's masters answered differently")
        }
        // The last master's nil (AnyKey: none had a key), the one
        // master's reply (One), or the reply all agreed on.
        _ => replies
            .pop()
            .map_or_else(|| error("CLUSTERDOWN Hash slot not served"), own),
    }
}

/// A reply frame of keygate's own.
fn own(bytes: Bytes) -> BatchReply {
    Ok(bytes.into())
}

fn error(msg: &str) -> BatchReply {
    let mut out = BytesMut::new();
    encode::error(&mut out, msg);
    own(out.freeze())
}

/// KEYS on every master, one array of all their keys.
async fn keys(req: &Request, muxes: &[(u16, MuxHandle)]) -> BatchReply {
    let mut all = Vec::new();
    for (_, mux) in muxes {
        let reply = submit_one(mux, req).await?;
        match Value::parse(&reply) {
            Ok(Value::Array(items)) => all.extend(items),
            _ => return own(reply),
        }
    }
    let mut out = BytesMut::new();
    encode::array_header(&mut out, all.len());
    for key in &all {
        if let Value::Bulk(key) = key {
            encode::bulk(&mut out, key);
        }
    }
    own(out.freeze())
}

/// SCAN on the master the client's cursor names (see the module's doc).
async fn scan(req: &Request, muxes: &[(u16, MuxHandle)]) -> BatchReply {
    let cursor = req
        .get(1)
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse::<u64>().ok());
    let Some(cursor) = cursor else {
        return error(INVALID_CURSOR);
    };
    let slot = (cursor & ((1 << SLOT_BITS) - 1)) as u16;
    let inner = cursor >> SLOT_BITS;
    let at = if cursor == 0 {
        0
    } else {
        match muxes.iter().position(|(lowest, _)| *lowest == slot) {
            Some(at) => at,
            None => return error(INVALID_CURSOR),
        }
    };
    let Some((lowest, mux)) = muxes.get(at) else {
        return own(Bytes::from_static(b"*2\r\n$1\r\n0\r\n*0\r\n"));
    };
    let mut args: Vec<&[u8]> = (0..req.argc()).filter_map(|i| req.get(i)).collect();
    let inner_text = inner.to_string();
    if let Some(cursor) = args.get_mut(1) {
        *cursor = inner_text.as_bytes();
    }
    let reply = submit_one(mux, &Request::from_args(&args)).await?;
    let Ok(Value::Array(items)) = Value::parse(&reply) else {
        return own(reply);
    };
    let mut items = items.into_iter();
    let (Some(Value::Bulk(next)), Some(Value::Array(keys))) = (items.next(), items.next()) else {
        return own(reply);
    };
    let next = std::str::from_utf8(&next)
        .ok()
        .and_then(|n| n.parse::<u64>().ok());
    let next = match next {
        Some(0) => muxes
            .get(at + 1)
            .map_or(0, |(lowest, _)| u64::from(*lowest)),
        Some(n) if n < 1 << (64 - SLOT_BITS) => n << SLOT_BITS | u64::from(*lowest),
        _ => return error("ERR keygate: a master's SCAN cursor does not fit keygate's cursor"),
    };
    let mut out = BytesMut::new();
    encode::array_header(&mut out, 2);
    encode::bulk(&mut out, next.to_string().as_bytes());
    encode::array_header(&mut out, keys.len());
    for key in &keys {
        if let Value::Bulk(key) = key {
            encode::bulk(&mut out, key);
        }
    }
    own(out.freeze())
}
