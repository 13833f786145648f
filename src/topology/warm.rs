//! Warm after failover: once a new master is in place and the near caches
//! were flushed (what the old master's invalidations covered proves nothing
//! on the new one), each service's hottest keys (its hot keys by reads, at
//! most `warm_keys`) are read again from the new master and filled, so the
//! first wave of traffic does not all miss at once.
//!
//! The reads go as a client's fills do (`CLIENT CACHING YES`, GET, PTTL on
//! a tracked shared connection of the default database), under the same
//! tickets, so a write or invalidation meanwhile drops the fill. They are
//! rate-limited: [`BATCH`] keys, then a [`PAUSE`].
//!
//! On a cluster backend the same follows a change of the slot map (a slot
//! moved, or a shard's master changed, which flushed the caches): each
//! key is read from its slot's master in the new map.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use crate::backend::connect::REPLY_MAX_DEPTH;
use crate::backend::mux::Batch;
use crate::backend::node::Node;
use crate::near_cache::fill::Fill;
use crate::near_cache::tracking::Stamp;
use crate::near_cache::{NearCache, NearCaches};
use crate::protocol::request::Request;
use crate::protocol::Protocol;
use crate::topology::cluster::SlotMap;
use crate::topology::slot::key_slot;

/// Keys read in one write.
const BATCH: usize = 50;
/// Between two writes: at most 1,000 keys a second.
const PAUSE: Duration = Duration::from_millis(50);
/// How long the new master's invalidation connection may take to come up.
const TRACKING_WAIT: Duration = Duration::from_secs(10);

/// Starts warming the caches from `master`, if a runtime is there to run it.
pub(crate) fn spawn(master: Arc<Node>, caches: Arc<NearCaches>) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(warm(master, caches));
    }
}

async fn warm(master: Arc<Node>, caches: Arc<NearCaches>) {
    if !tracking_comes_up(&master).await {
        return;
    }
    for cache in caches.live() {
        let keys = cache.warm_keys();
        if !keys.is_empty() {
            let filled = read_from(&master, &cache, &keys).await;
            tracing::info!(master = %master.addr(), keys = keys.len(), read = filled, "near cache warmed after a master change");
        }
    }
}

/// Reads `keys` from `master` for `cache`, [`BATCH`] at a time with a
/// [`PAUSE`] after each; how many were read.
async fn read_from(master: &Node, cache: &Arc<NearCache>, keys: &[Bytes]) -> usize {
    let mut filled = 0usize;
    for chunk in keys.chunks(BATCH) {
        match warm_batch(master, cache, chunk).await {
            Some(n) => filled += n,
            None => break,
        }
        tokio::time::sleep(PAUSE).await;
    }
    filled
}

/// Starts warming the caches from the masters of `map`, each key from its
/// slot's, if a runtime is there to run it.
pub(crate) fn spawn_cluster(map: Arc<SlotMap>, caches: Arc<NearCaches>) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(warm_cluster(map, caches));
    }
}

async fn warm_cluster(map: Arc<SlotMap>, caches: Arc<NearCaches>) {
    for cache in caches.live() {
        // The hottest keys, grouped by master in the order of their heat.
        let mut by_master: Vec<(Arc<Node>, Vec<Bytes>)> = Vec::new();
        for key in cache.warm_keys() {
            let Some(master) = map.master(key_slot(&key)) else {
                continue;
            };
            match by_master.iter_mut().find(|(m, _)| Arc::ptr_eq(m, master)) {
                Some((_, keys)) => keys.push(key),
                None => by_master.push((master.clone(), vec![key])),
            }
        }
        for (master, keys) in by_master {
            if !tracking_comes_up(&master).await {
                continue;
            }
            let filled = read_from(&master, &cache, &keys).await;
            tracing::info!(master = %master.addr(), keys = keys.len(), read = filled, "near cache warmed after a slot map change");
        }
    }
}

/// Waits (at most [`TRACKING_WAIT`]) for `master`'s invalidation
/// connection; false if it did not come up.
async fn tracking_comes_up(master: &Node) -> bool {
    let deadline = tokio::time::Instant::now() + TRACKING_WAIT;
    while !master.tracking_up() {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(master = %master.addr(), "near cache not warmed: the master's invalidation connection did not come up");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Reads `keys` in one write and fills what comes back; how many were
/// read, or `None` when the master did not answer.
async fn warm_batch(master: &Node, cache: &Arc<NearCache>, keys: &[Bytes]) -> Option<usize> {
    let caching = Request::from_args(&["CLIENT", "CACHING", "YES"]);
    let mut payload = BytesMut::new();
    let mut tickets = Vec::with_capacity(keys.len());
    for key in keys {
        let Some(ticket) = cache.warm_ticket(key) else {
            continue;
        };
        payload.extend_from_slice(caching.frame());
        payload.extend_from_slice(Request::from_args(&[&b"GET"[..], key]).frame());
        payload.extend_from_slice(Request::from_args(&[&b"PTTL"[..], key]).frame());
        tickets.push((key.clone(), ticket));
    }
    if tickets.is_empty() {
        return Some(0);
    }
    let stamp: Arc<Stamp> = Arc::default();
    let (tx, rx) = oneshot::channel();
    master
        .mux(Protocol::Resp2, 0)
        .submit(Batch {
            payload: smallvec::smallvec![payload.freeze()],
            count: u32::try_from(tickets.len() * 3).unwrap_or(u32::MAX),
            reply: tx,
            meter: None,
            script: false,
            stamp: Some(stamp.clone()),
            landings: Default::default(),
        })
        .await;
    let replies = rx.await.ok()?.ok()?;
    let mut frames = replies.frames(REPLY_MAX_DEPTH);
    for (key, ticket) in &tickets {
        let _caching = frames.next()?;
        let (frame, kind) = frames.next()?;
        let (pttl, _) = frames.next()?;
        Fill::new(cache.clone(), key.clone(), *ticket, stamp.clone()).complete(kind, frame, pttl);
    }
    Some(tickets.len())
}
