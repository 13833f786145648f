//! Keyspace-wide commands scoped to one namespace: RANDOMKEY, DBSIZE and
//! FLUSHDB/FLUSHALL answered by procedures of several backend round trips
//! over `SCAN cursor MATCH <escaped prefix>* COUNT 1000`.
//!
//! Costs (N = keys in the whole database, n = keys of the service):
//! - RANDOMKEY: SCAN pages from cursor 0 until one holds a key of the
//!   service, then a key of that page at random. Worst case O(N/1000) round
//!   trips (a sparse namespace), at most [`RANDOMKEY_MAX_ROUNDS`] per call
//!   (nil after that). The pick favours keys early in the hash table.
//! - DBSIZE: a full SCAN, O(N/1000) round trips and O(N) work on the
//!   backend, spread over many small commands.
//! - FLUSHDB/FLUSHALL: a full SCAN plus one UNLINK per [`UNLINK_BATCH`]
//!   keys, O(N/1000 + n/500) round trips; UNLINK frees memory in the
//!   background, so the backend never stalls on one big command. `SYNC`
//!   (the default) replies once done; `ASYNC` replies `+OK` at once and runs
//!   in a spawned task. Not atomic: keys the service writes while a flush
//!   runs may or may not survive it (with ASYNC, the flushing client's own
//!   later writes too).
//!
//! Each runs in the client's database; FLUSHALL covers the service's keys in
//! every database it may use, one after the other.
//!
//! One procedure of a service runs at a time, and FLUSH and DBSIZE calls
//! that arrive while one runs share the next run ([`super::procedure_gate`]):
//! a flood costs a couple of scans, not one per call. Each step is one
//! bounded command (a SCAN page, an UNLINK batch) on the shared connection,
//! so other clients' requests wait behind at most one step.
//!
//! Invariant: a procedure only ever reads, counts or deletes names that
//! start with the service's prefix; names SCAN returns are checked again.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use super::access::Refusal;
use super::namespace::Namespace;
use super::procedure_gate::{Joinable, ProcedureGate};
use crate::backend::mux::{Batch, BatchReply, MuxHandle};
use crate::backend::BackendError;
use crate::command::keys::KeysError;
use crate::command::keyword::is_keyword;
use crate::protocol::encode;
use crate::protocol::reply::Value;
use crate::protocol::request::Request;
use crate::protocol::Protocol;
use crate::topology::slot::key_slot;

/// Keys asked of each SCAN call.
pub const SCAN_COUNT: &str = "1000";
/// Keys per UNLINK of a flush.
pub const UNLINK_BATCH: usize = 500;
/// Most SCAN calls one RANDOMKEY makes before answering nil.
pub const RANDOMKEY_MAX_ROUNDS: usize = 10_000;

/// Which keyspace-wide command a procedure answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcedureKind {
    /// RANDOMKEY confined to the namespace.
    RandomKey,
    /// DBSIZE counting the namespace's keys.
    DbSize,
    /// FLUSHDB/FLUSHALL deleting the namespace's keys only.
    Flush,
}

/// A keyspace-wide command with its options read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Procedure {
    /// RANDOMKEY.
    RandomKey,
    /// DBSIZE.
    DbSize,
    /// FLUSHDB/FLUSHALL; `asynchronous` for the ASYNC option.
    Flush { asynchronous: bool },
}

impl ProcedureKind {
    /// Reads the command's options (FLUSHDB/FLUSHALL `[ASYNC|SYNC]`).
    pub fn parse(self, req: &Request) -> Result<Procedure, Refusal> {
        Ok(match self {
            ProcedureKind::RandomKey => Procedure::RandomKey,
            ProcedureKind::DbSize => Procedure::DbSize,
            ProcedureKind::Flush => {
                let asynchronous = match (req.argc(), req.get(1)) {
                    (1, _) => false,
                    (2, Some(a)) if is_keyword(a, b"async") => true,
                    (2, Some(a)) if is_keyword(a, b"sync") => false,
                    _ => return Err(Refusal::Unlocatable(KeysError::Syntax)),
                };
                Procedure::Flush { asynchronous }
            }
        })
    }
}

/// Why a procedure stopped early.
enum Stop {
    /// The connection failed.
    Backend(BackendError),
    /// The backend answered an error (or an unreadable reply): it is the client's answer.
    Reply(Bytes),
}

impl From<BackendError> for Stop {
    fn from(e: BackendError) -> Stop {
        Stop::Backend(e)
    }
}

/// Where a procedure runs: the client's database and a connection of it,
/// and for FLUSHALL a connection of each of the service's databases.
#[derive(Debug, Clone)]
pub struct Databases {
    /// The client's database.
    pub current: u32,
    /// A multiplexed connection of `current`.
    pub mux: MuxHandle,
    /// FLUSHALL: a connection of every database of the service; `None`
    /// for the other procedures, which run in `current` only. On a
    /// cluster backend, FLUSHDB and FLUSHALL: a connection of every master.
    pub all: Option<Vec<MuxHandle>>,
    /// On a cluster backend, a connection of every master: RANDOMKEY and
    /// DBSIZE cover them all (`mux` is one of them), and a flush unlinks
    /// the keys of one slot per UNLINK.
    pub masters: Option<Vec<MuxHandle>>,
}

/// Runs `procedure` for `ns` in `dbs` in the service's turn (`gate`); the
/// reply bytes are ready for a client speaking `protocol`.
pub async fn run(
    procedure: Procedure,
    ns: &Namespace,
    dbs: &Databases,
    protocol: Protocol,
    gate: &Arc<ProcedureGate>,
) -> BatchReply {
    let mux = &dbs.mux;
    let nodes = dbs.masters.as_deref().unwrap_or(std::slice::from_ref(mux));
    let scope = match dbs.all {
        Some(_) => None,
        None => Some(dbs.current),
    };
    let flush_all = |ns: &Namespace, dbs: &Databases| {
        let muxes: Vec<MuxHandle> = dbs.all.clone().unwrap_or_else(|| vec![dbs.mux.clone()]);
        let ns = ns.clone();
        let by_slot = dbs.masters.is_some();
        async move {
            for mux in &muxes {
                flush(&ns, mux, by_slot).await?;
            }
            Ok(Bytes::from_static(b"+OK\r\n"))
        }
    };
    match procedure {
        Procedure::RandomKey => {
            let work = || async { answer(random_key(ns, nodes, protocol).await) };
            gate.run(None, work).await
        }
        Procedure::DbSize => {
            let work = || async { answer(db_size(ns, nodes).await) };
            gate.run(Some(Joinable::DbSize(dbs.current)), work).await
        }
        Procedure::Flush {
            asynchronous: false,
        } => {
            let work = || async { answer(flush_all(ns, dbs).await) };
            gate.run(Some(Joinable::Flush(scope)), work).await
        }
        Procedure::Flush { asynchronous: true } => {
            let (ns, dbs, gate) = (ns.clone(), dbs.clone(), gate.clone());
            tokio::spawn(async move {
                let work = || async { answer(flush_all(&ns, &dbs).await) };
                if let Err(e) = gate.run(Some(Joinable::Flush(scope)), work).await {
                    tracing::warn!(error = %e, "background flush of a namespace stopped");
                }
            });
            Ok(Bytes::from_static(b"+OK\r\n").into())
        }
    }
}

/// A procedure's outcome as the client's reply.
fn answer(result: Result<Bytes, Stop>) -> BatchReply {
    match result {
        Ok(b) | Err(Stop::Reply(b)) => Ok(b.into()),
        Err(Stop::Backend(e)) => Err(e),
    }
}

/// One request, one reply frame (an error reply included).
pub async fn submit_one(mux: &MuxHandle, req: &Request) -> Result<Bytes, BackendError> {
    let (tx, rx) = oneshot::channel();
    mux.submit(Batch {
        payload: smallvec::smallvec![req.frame().clone()],
        count: 1,
        reply: tx,
        meter: None,
        script: false,
        stamp: None,
        landings: Default::default(),
    })
    .await;
    let replies = rx.await.map_err(|_| BackendError::ConnectionLost {
        addr: "backend".into(),
    })??;
    Ok(replies.bytes)
}

/// One request, one reply frame; an error reply stops the procedure.
async fn round_trip(mux: &MuxHandle, req: Request) -> Result<Bytes, Stop> {
    let reply = submit_one(mux, &req).await?;
    if reply.first() == Some(&b'-') {
        return Err(Stop::Reply(reply));
    }
    Ok(reply)
}

/// One SCAN page of the namespace: the next cursor and the keys (backend names).
async fn scan_page(
    ns: &Namespace,
    mux: &MuxHandle,
    cursor: &[u8],
) -> Result<(Bytes, Vec<Bytes>), Stop> {
    let pattern = ns.prefix_pattern(b"*");
    let req = Request::from_args(&[
        &b"SCAN"[..],
        cursor,
        b"MATCH",
        &pattern,
        b"COUNT",
        SCAN_COUNT.as_bytes(),
    ]);
    let reply = round_trip(mux, req).await?;
    let unreadable = || {
        Stop::Reply(Bytes::from_static(
            b"-ERR keygate: unexpected SCAN reply\r\n",
        ))
    };
    let Ok(Value::Array(items)) = Value::parse(&reply) else {
        return Err(unreadable());
    };
    let mut items = items.into_iter();
    let (Some(Value::Bulk(next)), Some(Value::Array(keys))) = (items.next(), items.next()) else {
        return Err(unreadable());
    };
    let keys = keys
        .into_iter()
        .filter_map(|k| match k {
            Value::Bulk(k) if ns.strip(&k).is_some() => Some(k),
            _ => None,
        })
        .collect();
    Ok((next, keys))
}

/// A number from the process's random hasher keys (no extra dependency).
fn random_index(len: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(len);
    (h.finish() % len.max(1) as u64) as usize
}

/// A key of the first node in `nodes` (from a random one on) that holds
/// one of the namespace's.
async fn random_key(
    ns: &Namespace,
    nodes: &[MuxHandle],
    protocol: Protocol,
) -> Result<Bytes, Stop> {
    let first = random_index(nodes.len());
    let mut rounds = 0;
    for mux in nodes.iter().cycle().skip(first).take(nodes.len()) {
        let mut cursor = Bytes::from_static(b"0");
        while rounds < RANDOMKEY_MAX_ROUNDS {
            rounds += 1;
            let (next, keys) = scan_page(ns, mux, &cursor).await?;
            if let Some(key) = keys.get(random_index(keys.len())) {
                let mut out = BytesMut::new();
                encode::bulk(&mut out, ns.strip(key).unwrap_or_default());
                return Ok(out.freeze());
            }
            if &next[..] == b"0" {
                break;
            }
            cursor = next;
        }
    }
    let mut out = BytesMut::new();
    encode::nil(&mut out, protocol);
    Ok(out.freeze())
}

/// The namespace's keys over `nodes` (the masters of a cluster).
async fn db_size(ns: &Namespace, nodes: &[MuxHandle]) -> Result<Bytes, Stop> {
    let mut count: i64 = 0;
    for mux in nodes {
        let mut cursor = Bytes::from_static(b"0");
        loop {
            let (next, keys) = scan_page(ns, mux, &cursor).await?;
            count += keys.len() as i64;
            if &next[..] == b"0" {
                break;
            }
            cursor = next;
        }
    }
    let mut out = BytesMut::new();
    encode::integer(&mut out, count);
    Ok(out.freeze())
}

/// Unlinks the namespace's keys on `mux`; `by_slot` (a cluster's master)
/// puts only keys of one slot in each UNLINK, as the cluster demands.
async fn flush(ns: &Namespace, mux: &MuxHandle, by_slot: bool) -> Result<Bytes, Stop> {
    let mut cursor = Bytes::from_static(b"0");
    loop {
        let (next, mut keys) = scan_page(ns, mux, &cursor).await?;
        if by_slot {
            keys.sort_by_key(|k| key_slot(k));
        }
        let groups = keys.chunk_by(|a, b| !by_slot || key_slot(a) == key_slot(b));
        for chunk in groups.flat_map(|group| group.chunks(UNLINK_BATCH)) {
            let mut args: Vec<&[u8]> = Vec::with_capacity(chunk.len() + 1);
            args.push(b"UNLINK");
            args.extend(chunk.iter().map(|k| &k[..]));
            round_trip(mux, Request::from_args(&args)).await?;
        }
        if &next[..] == b"0" {
            break;
        }
        cursor = next;
    }
    Ok(Bytes::from_static(b"+OK\r\n"))
}
