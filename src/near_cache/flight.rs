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
    id: u64,
    /// The command read: only a read of the same one follows.
    kind: Cacheable,
    followers: Vec<oneshot::Sender<Bytes>>,
}

/// The flights of one shard, by key (as stored), and the grounded ones
/// (no new followers) by id.
#[derive(Debug, Default)]
pub(crate) struct Flights {
    by_key: HashMap<Bytes, Flight>,
    grounded: HashMap<u64, Vec<oneshot::Sender<Bytes>>>,
}

impl Flights {
    /// Joins the key's flight, if one is on its way.
    pub(crate) fn join(&mut self, key: &[u8], kind: Cacheable) -> Option<Boarding> {
        let flight = self.by_key.get_mut(key).filter(|f| f.kind == kind)?;
        let (tx, rx) = oneshot::channel();
        flight.followers.push(tx);
        Some(rx)
    }

    /// Registers a leader's flight `id` for `key`, unless one is on its way.
    pub(crate) fn lead(&mut self, key: &[u8], id: u64, kind: Cacheable) -> bool {
        if self.by_key.contains_key(key) {
            return false;
        }
        self.by_key.insert(
            Bytes::copy_from_slice(key),
            Flight {
                id,
                kind,
                followers: Vec::new(),
            },
        );
        true
    }

    /// Takes flight `id`'s followers, aboard `key`'s flight or grounded.
    fn take(&mut self, key: &[u8], id: u64) -> Vec<oneshot::Sender<Bytes>> {
        if self.by_key.get(key).is_some_and(|f| f.id == id) {
            return self
                .by_key
                .remove(key)
                .map(|f| f.followers)
                .unwrap_or_default();
        }
        self.grounded.remove(&id).unwrap_or_default()
    }

    /// The leader's reply: every follower of flight `id` gets `frame`.
    pub(crate) fn land(&mut self, key: &[u8], id: u64, frame: &[u8]) {
        let followers = self.take(key, id);
        if !followers.is_empty() {
            let frame = Bytes::copy_from_slice(frame);
            for follower in followers {
                let _ = follower.send(frame.clone());
            }
        }
    }

    /// The leader is gone without a reply: its followers read on their own.
    pub(crate) fn abort(&mut self, key: &[u8], id: u64) {
        drop(self.take(key, id));
    }

    /// No more followers for `key` (a write or an invalidation); those
    /// aboard still get the reply their read raced with.
    pub(crate) fn ground(&mut self, key: &[u8]) {
        if let Some(flight) = self.by_key.remove(key) {
            if !flight.followers.is_empty() {
                self.grounded.insert(flight.id, flight.followers);
            }
        }
    }

    /// Every flight grounded (a flush).
    pub(crate) fn ground_all(&mut self) {
        for (_, flight) in self.by_key.drain() {
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

    #[test]
    fn followers_get_the_leaders_reply_or_read_on_their_own() {
        let mut flights = Flights::default();
        assert!(
            flights.join(b"k", GET).is_none(),
            "no flight, nothing to join"
        );
        assert!(flights.lead(b"k", 1, GET));
        assert!(!flights.lead(b"k", 2, GET), "one leader per key");
        assert!(
            flights.join(b"k", Cacheable::HGetAll).is_none(),
            "another command's read does not follow"
        );
        let mut a = flights.join(b"k", GET).expect("aboard");
        flights.land(b"k", 1, b"$1\r\nv\r\n");
        assert_eq!(&a.try_recv().expect("landed")[..], b"$1\r\nv\r\n");
        assert!(
            flights.join(b"k", GET).is_none(),
            "landed flights take no one"
        );

        assert!(flights.lead(b"k", 3, GET));
        let mut b = flights.join(b"k", GET).expect("aboard");
        flights.ground(b"k");
        assert!(
            flights.join(b"k", GET).is_none(),
            "grounded: never across a write"
        );
        flights.land(b"k", 3, b"$1\r\nw\r\n");
        assert_eq!(&b.try_recv().expect("still landed")[..], b"$1\r\nw\r\n");

        assert!(flights.lead(b"k", 4, GET));
        let mut c = flights.join(b"k", GET).expect("aboard");
        flights.abort(b"k", 4);
        assert!(matches!(
            c.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        assert!(flights.by_key.is_empty() && flights.grounded.is_empty());
    }
}
