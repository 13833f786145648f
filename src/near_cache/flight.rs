//! Single flight: while a fill's read of a key is on its way to Redis,
//! other clients' reads of that key wait for its reply instead of sending
//! their own.
//!
//! A flight is registered by the read that will fill (the leader) and
//! lands when its reply arrives on the multiplexed connection: every
//! follower gets a copy of the reply frame. A write to the key (through keygate, or invalidated by Redis) or
//! a flush grounds the flight: later reads no longer join it (never across
//! a write), while followers already aboard still get the reply their read
//! raced with. A leader that never lands (its connection failed, its client
//! left) drops its followers' senders, and they send their own read.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::{NearCache, Ticket};
use crate::config::Cacheable;
use crate::protocol::reply::is_cluster_redirect;

/// A led flight, landed by the multiplexed reader as soon as the leader's
/// reply frame arrives (never by a client task, which may itself be
/// waiting as a follower); dropped unlanded, it lets its followers go.
#[derive(Debug)]
pub struct Landing {
    cache: Arc<NearCache>,
    key: Bytes,
    ticket: Ticket,
}

impl Landing {
    pub(crate) fn new(cache: Arc<NearCache>, key: Bytes, ticket: Ticket) -> Landing {
        Landing { cache, key, ticket }
    }

    /// The leader's reply frame: every follower gets it.
    pub fn land(&self, frame: &[u8]) {
        self.cache.land(&self.key, &self.ticket, frame);
    }

    /// No reply will come: the followers read on their own (nothing once
    /// landed).
    fn abort(&self) {
        self.cache.abort(&self.key, &self.ticket);
    }
}

/// The flights one batch's reads lead, by the index of the reply frame that
/// lands each. Dropped (the batch answered, failed, or abandoned), it lets
/// go of every flight not landed, at once: a follower never waits on a
/// client task that may itself be waiting.
#[derive(Debug, Default)]
pub struct Landings(Vec<(u32, Arc<Landing>)>);

impl Landings {
    /// A flight landed by reply frame `frame`.
    pub fn push(&mut self, frame: u32, landing: Arc<Landing>) {
        self.0.push((frame, landing));
    }

    /// Lands each flight with its frame, found by `frame_at`. A cluster's
    /// redirect (or its refusal to serve the slot now) is no reply to hand
    /// a follower: the flight is let go, and its followers read on their own.
    pub fn land(&self, frame_at: impl Fn(usize) -> Option<Bytes>) {
        for (i, landing) in &self.0 {
            match frame_at(*i as usize) {
                Some(frame) if !is_cluster_redirect(&frame) => landing.land(&frame),
                _ => landing.abort(),
            }
        }
    }
}

impl Drop for Landings {
    fn drop(&mut self) {
        for (_, landing) in &self.0 {
            landing.abort();
        }
    }
}

impl Drop for Landing {
    fn drop(&mut self) {
        self.abort();
    }
}

/// A follower's wait for the leader's reply frame.
pub type Boarding = oneshot::Receiver<Bytes>;

#[derive(Debug)]
struct Flight {
    /// The key (as stored): flights are found by the key's cache hash, and
    /// a flight answers only its own key.
    key: Bytes,
    id: u64,
    /// The command read: only a read of the same one follows.
    kind: Cacheable,
    followers: Vec<oneshot::Sender<Bytes>>,
}

/// Takes the cache's own hash of a key as the map's hash: that hash is
/// keyed at random already (see [`NearCache`]), and hashing the key again
/// cost each miss and each write a second pass over it. Rotated so that
/// the bits choosing the key's shard, which all of a shard's keys share,
/// do not choose its bucket too.
#[derive(Debug, Default)]
struct CacheHash(u64);

impl Hasher for CacheHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64`s are hashed; any other input still gets a hash.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash.rotate_left(32);
    }
}

/// The flights of one shard, by the key's cache hash, and the grounded
/// ones (no new followers) by id.
#[derive(Debug, Default)]
pub(crate) struct Flights {
    by_hash: HashMap<u64, Flight, BuildHasherDefault<CacheHash>>,
    grounded: HashMap<u64, Vec<oneshot::Sender<Bytes>>>,
}

impl Flights {
    /// The flight on its way for `key` (whose cache hash is `hash`).
    fn of(&mut self, key: &[u8], hash: u64) -> Option<&mut Flight> {
        self.by_hash.get_mut(&hash).filter(|f| f.key == key)
    }

    /// Joins the key's flight, if one is on its way.
    pub(crate) fn join(&mut self, key: &[u8], hash: u64, kind: Cacheable) -> Option<Boarding> {
        let flight = self.of(key, hash).filter(|f| f.kind == kind)?;
        let (tx, rx) = oneshot::channel();
        flight.followers.push(tx);
        Some(rx)
    }

    /// Registers a leader's flight `id` for `key`, unless a flight is on
    /// its way for it (or, as good as never, for another key of the same
    /// hash: this read then fills without leading).
    pub(crate) fn lead(&mut self, key: &[u8], hash: u64, id: u64, kind: Cacheable) -> bool {
        if self.by_hash.contains_key(&hash) {
            return false;
        }
        self.by_hash.insert(
            hash,
            Flight {
                key: Bytes::copy_from_slice(key),
                id,
                kind,
                followers: Vec::new(),
            },
        );
        true
    }

    /// Takes flight `id`'s followers, aboard `key`'s flight or grounded.
    fn take(&mut self, key: &[u8], hash: u64, id: u64) -> Vec<oneshot::Sender<Bytes>> {
        if self.of(key, hash).is_some_and(|f| f.id == id) {
            return self
                .by_hash
                .remove(&hash)
                .map(|f| f.followers)
                .unwrap_or_default();
        }
        self.grounded.remove(&id).unwrap_or_default()
    }

    /// The leader's reply: every follower of flight `id` gets `frame`.
    pub(crate) fn land(&mut self, key: &[u8], hash: u64, id: u64, frame: &[u8]) {
        let followers = self.take(key, hash, id);
        if !followers.is_empty() {
            let frame = Bytes::copy_from_slice(frame);
            for follower in followers {
                let _ = follower.send(frame.clone());
            }
        }
    }

    /// The leader is gone without a reply: its followers read on their own.
    pub(crate) fn abort(&mut self, key: &[u8], hash: u64, id: u64) {
        drop(self.take(key, hash, id));
    }

    /// No more followers for `key` (a write or an invalidation); those
    /// aboard still get the reply their read raced with.
    pub(crate) fn ground(&mut self, key: &[u8], hash: u64) {
        if self.of(key, hash).is_some() {
            if let Some(flight) = self.by_hash.remove(&hash) {
                if !flight.followers.is_empty() {
                    self.grounded.insert(flight.id, flight.followers);
                }
            }
        }
    }

    /// Every flight grounded (a flush).
    pub(crate) fn ground_all(&mut self) {
        for (_, flight) in self.by_hash.drain() {
            if !flight.followers.is_empty() {
                self.grounded.insert(flight.id, flight.followers);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: Cacheable = Cacheable::Get;
    const H: u64 = 0x1234_5678_9abc_def0;

    #[test]
    fn followers_get_the_leaders_reply_or_read_on_their_own() {
        let mut flights = Flights::default();
        assert!(
            flights.join(b"k", H, GET).is_none(),
            "no flight, nothing to join"
        );
        assert!(flights.lead(b"k", H, 1, GET));
        assert!(!flights.lead(b"k", H, 2, GET), "one leader per key");
        assert!(
            flights.join(b"k", H, Cacheable::HGetAll).is_none(),
            "another command's read does not follow"
        );
        let mut a = flights.join(b"k", H, GET).expect("aboard");
        flights.land(b"k", H, 1, b"$1\r\nv\r\n");
        assert_eq!(&a.try_recv().expect("landed")[..], b"$1\r\nv\r\n");
        assert!(
            flights.join(b"k", H, GET).is_none(),
            "landed flights take no one"
        );

        assert!(flights.lead(b"k", H, 3, GET));
        let mut b = flights.join(b"k", H, GET).expect("aboard");
        flights.ground(b"k", H);
        assert!(
            flights.join(b"k", H, GET).is_none(),
            "grounded: never across a write"
        );
        flights.land(b"k", H, 3, b"$1\r\nw\r\n");
        assert_eq!(&b.try_recv().expect("still landed")[..], b"$1\r\nw\r\n");

        assert!(flights.lead(b"k", H, 4, GET));
        let mut c = flights.join(b"k", H, GET).expect("aboard");
        flights.abort(b"k", H, 4);
        assert!(matches!(
            c.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        assert!(flights.by_hash.is_empty() && flights.grounded.is_empty());
    }

    #[test]
    fn another_key_of_the_same_hash_is_not_its_flight() {
        let mut flights = Flights::default();
        assert!(flights.lead(b"k", H, 1, GET));
        assert!(
            flights.join(b"other", H, GET).is_none(),
            "a read follows only its own key's flight"
        );
        assert!(
            !flights.lead(b"other", H, 2, GET),
            "the hash is taken: the read fills without leading"
        );
        flights.ground(b"other", H);
        let mut a = flights
            .join(b"k", H, GET)
            .expect("a write to another key grounds nothing");
        flights.land(b"other", H, 1, b"$1\r\nx\r\n");
        assert!(a.try_recv().is_err(), "only the leader's own key lands it");
        flights.land(b"k", H, 1, b"$1\r\nv\r\n");
        assert_eq!(&a.try_recv().expect("landed")[..], b"$1\r\nv\r\n");
    }
}
