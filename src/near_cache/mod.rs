//! The near cache: hot read replies kept in keygate's memory, per service,
//! never served stale (issue 17).
//!
//! - [`store`]: one shard's entries, the byte budget and sampled LRU eviction;
//! - [`admission`]: the frequency sketch that decides what is filled;
//! - [`tracking`]: which Redis tracking session an entry depends on;
//! - [`fill`]: a read whose reply fills the cache, on its way;
//! - [`flight`]: reads of a key waiting for the fill already on its way;
//! - [`metrics`]: its Prometheus series, read from its counters at scrape.
//!
//! The cache structure is keygate's own rather than a crate's (moka's
//! W-TinyLFU was the candidate): a hit must check the entry's tracking
//! session and expiry under the same lookup, a fill must be refused when an
//! invalidation for its key arrived after the read was sent, and the byte
//! budget must hold at every insert, not eventually; a sharded map behind
//! std mutexes (never held across an await) does all three in one short
//! critical section.
//!
//! Coherence, in order of the rules:
//! - a fill carries a [`Ticket`] taken when the read was queued: the key's
//!   invalidation sequence (one of [`SEQ_SLOTS`] counters the key hashes
//!   to) and the cache's flush epoch. An invalidation bumps the sequence
//!   before it removes the entry, both under the shard's lock, and a fill
//!   whose ticket no longer matches is dropped: a read that raced an
//!   invalidation is never cached;
//! - a write through keygate invalidates its keys when it is queued, and
//!   again when its reply is taken, before the client sees it; in between
//!   its keys are not filled ([`Writing`]): a read of another client that
//!   ran before the write cannot fill the old value after the write's
//!   acknowledgement;
//! - an entry is served only while the session that filled it is live
//!   ([`tracking::Session::is_live`]) and before its expiry (`max_age`, or
//!   the key's TTL learned by a `PTTL` in the same write);
//! - a lost invalidation link, a master change, `-READONLY` or a null
//!   invalidation (FLUSHALL) flush every cache ([`NearCaches::flush_all`]).

pub mod admission;
pub mod fill;
pub mod flight;
pub mod metrics;
pub mod store;
pub mod tracking;

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use crate::config::{Cacheable, NearCacheConfig};
use crate::hotkeys::{HotKeys, Rank};
use admission::Sketch;
use store::{Entry, Found, Store};
use tracking::Session;

/// Most shards per service cache (a power of two).
const MAX_SHARDS: usize = 16;
/// Invalidation sequence counters per cache (a power of two).
pub const SEQ_SLOTS: usize = 4096;
/// Reads of a key (this one included) before it is filled, at least.
const ADMIT_AFTER: u8 = 2;
/// A hit's answer is copied into the caller's buffer, which grows by at
/// least this much at a time (only on a hit: a connection that never hits
/// keeps no buffer, and an idle one gives it back).
const ANSWERS_CHUNK: usize = 4 * 1024;
/// The most the threshold is raised to while fills do not pay.
const ADMIT_AFTER_MAX: u8 = 8;

/// Why entries left the cache (`keygate_near_cache_evictions_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evicted {
    /// Room for another entry, or a smaller budget.
    Budget,
    /// Redis invalidated the key, or keygate wrote it.
    Invalidation,
    /// Older than `max_age` or its key's TTL.
    MaxAge,
    /// The connection that filled it closed (Redis stopped tracking it).
    Connection,
    /// The whole cache: invalidation link lost, master changed, FLUSHALL.
    Flush,
}

impl Evicted {
    /// Every reason, in label order.
    pub const ALL: [Evicted; 5] = [
        Evicted::Budget,
        Evicted::Invalidation,
        Evicted::MaxAge,
        Evicted::Connection,
        Evicted::Flush,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Evicted::Budget => "budget",
            Evicted::Invalidation => "invalidation",
            Evicted::MaxAge => "max_age",
            Evicted::Connection => "connection",
            Evicted::Flush => "flush",
        }
    }
}

/// The settings in force (a reload replaces them).
#[derive(Debug, Clone, Copy)]
struct Settings {
    max_bytes: usize,
    max_age: Duration,
    max_value_bytes: usize,
    /// Kept commands, by [`Cacheable::bit`].
    kept: u8,
    warm_keys: usize,
}

impl Settings {
    fn of(c: &NearCacheConfig) -> Settings {
        Settings {
            max_bytes: c.max_bytes,
            max_age: c.max_age,
            max_value_bytes: c.max_value_bytes,
            warm_keys: c.warm_keys,
            kept: c
                .commands
                .iter()
                .filter_map(|n| Cacheable::from_name(n))
                .fold(0, |kept, c| kept | c.bit()),
        }
    }
}

/// What a cacheable read's lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// The reply frame to answer with.
    Hit(Bytes),
    /// A hit whose entry is due for refreshing: answer with the frame and
    /// send a fill of the key with the ticket (its reply goes to no one).
    Refresh(Bytes, Ticket),
    /// Not cached; fill from the reply when a ticket is given (the key was
    /// read before, [`admission`]).
    Miss(Option<Ticket>),
    /// Not cached, but a fill's read of the key is on its way: wait for its
    /// reply ([`flight`]); a closed channel means: read on your own.
    Follow(flight::Boarding),
}

/// How a cacheable read shares a fill with identical reads ([`flight`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// It only may be answered from the cache: its connection does not
    /// track, so its reply fills nothing.
    None,
    /// It fills on its own: it neither waits for another read's fill nor
    /// hands its reply to reads waiting (a RESP3 reply, whose nil differs
    /// from RESP2's; HGET, whose flights would have to be per field).
    Alone,
    /// Reads waiting for its key may take its reply as it is.
    Leads,
    /// It leads, or while another read of the key is on its way it waits
    /// for that one's reply instead of being sent.
    LeadsOrFollows,
}

/// Taken when a read is queued; a fill is kept only if it still matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    hash: u64,
    seq: u64,
    epoch: u64,
    /// When the read was queued: the entry's age counts from here.
    queued: Instant,
    /// The flight the read leads, if any.
    pub(crate) flight: Option<u64>,
    /// The command read: its entry answers only that command.
    pub(crate) kind: Cacheable,
}

/// Counters of one cache, read when metrics are scraped.
#[derive(Debug, Default)]
pub struct Counters {
    /// Reads answered from the cache.
    pub hits: AtomicU64,
    /// Cacheable reads sent to Redis.
    pub misses: AtomicU64,
    evictions: [AtomicU64; 5],
}

impl Counters {
    /// Entries evicted for `reason` since start.
    pub fn evictions(&self, reason: Evicted) -> u64 {
        self.evictions[reason as usize].load(Ordering::Relaxed)
    }

    fn evicted(&self, reason: Evicted, n: u64) {
        self.evictions[reason as usize].fetch_add(n, Ordering::Relaxed);
    }
}

/// One service's near cache.
#[derive(Debug)]
pub struct NearCache {
    settings: Mutex<Settings>,
    /// `max_bytes / shards`, read on every insert without the settings lock.
    shard_budget: AtomicUsize,
    max_value_bytes: AtomicUsize,
    max_age_ms: AtomicU64,
    /// Kept commands, by [`Cacheable::bit`].
    kept_commands: std::sync::atomic::AtomicU8,
    shards: Box<[Mutex<Store>]>,
    hasher: std::collections::hash_map::RandomState,
    sketch: Sketch,
    seqs: Box<[AtomicU64]>,
    /// Flight ids.
    flights: AtomicU64,
    /// Writes through keygate in flight, per sequence slot: no fills there.
    writing: Box<[std::sync::atomic::AtomicU32]>,
    epoch: AtomicU64,
    /// Hits, misses and evictions.
    pub counters: Counters,
    /// How many hot keys a warm-up after a failover reads again.
    warm_keys: AtomicUsize,
    /// The service's hot keys and prefix, which the warm-up reads.
    warm_source: Mutex<Option<(Arc<HotKeys>, Bytes)>>,
    /// Reads of a key before it is filled now ([`NearCache::adapt`]).
    admit_after: AtomicU8,
    /// Entries filled since start.
    kept: AtomicU64,
    /// Hits, misses and entries filled at the last review of the threshold.
    period_mark: Mutex<[u64; 3]>,
}

/// Asks the processor to start loading `value`'s cache line: a hint with no
/// effect on what the program computes.
fn prefetch<T>(value: &T) {
    prefetch_line((value as *const T).cast::<u8>());
}

/// [`prefetch`] of every cache line `value` spans.
fn prefetch_all_lines<T>(value: &T) {
    let start = (value as *const T).cast::<u8>();
    let end = start.wrapping_add(std::mem::size_of::<T>().saturating_sub(1));
    let mut line = start;
    while (line as usize) & !63 <= (end as usize) & !63 {
        prefetch_line(line);
        line = line.wrapping_add(64);
    }
}

#[allow(unsafe_code)]
fn prefetch_line(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 takes any address and never faults; callers pass
    // addresses inside a live reference besides.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(at.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

fn locked(m: &Mutex<Store>) -> MutexGuard<'_, Store> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl NearCache {
    /// A cache with these settings (validated already).
    pub fn new(config: &NearCacheConfig) -> Arc<NearCache> {
        let settings = Settings::of(config);
        // Each shard holds its share of the budget: as many shards as
        // leave room for four of the largest entries in each.
        let mut shards = MAX_SHARDS;
        while shards > 1 && config.max_bytes / shards < 4 * config.max_value_bytes {
            shards /= 2;
        }
        let cache = NearCache {
            settings: Mutex::new(settings),
            shard_budget: AtomicUsize::new(0),
            max_value_bytes: AtomicUsize::new(0),
            max_age_ms: AtomicU64::new(0),
            kept_commands: Default::default(),
            shards: (0..shards).map(|_| Mutex::new(Store::default())).collect(),
            hasher: Default::default(),
            // Sized for entries of some 128 bytes on average.
            sketch: Sketch::new(config.max_bytes / 128),
            seqs: (0..SEQ_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            flights: AtomicU64::new(0),
            writing: (0..SEQ_SLOTS).map(|_| Default::default()).collect(),
            epoch: AtomicU64::new(0),
            counters: Counters::default(),
            warm_keys: AtomicUsize::new(0),
            warm_source: Mutex::new(None),
            admit_after: AtomicU8::new(ADMIT_AFTER),
            kept: AtomicU64::new(0),
            period_mark: Mutex::new([0; 3]),
        };
        cache.apply(settings);
        Arc::new(cache)
    }

    fn apply(&self, s: Settings) {
        self.shard_budget
            .store(s.max_bytes / self.shards.len(), Ordering::Relaxed);
        self.max_value_bytes
            .store(s.max_value_bytes, Ordering::Relaxed);
        self.max_age_ms.store(
            u64::try_from(s.max_age.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.kept_commands.store(s.kept, Ordering::Relaxed);
        self.warm_keys.store(s.warm_keys, Ordering::Relaxed);
    }

    /// The service's hot keys (unprefixed) and its prefix: what a warm-up
    /// after a failover reads again.
    pub fn set_warm_source(&self, hot: Arc<HotKeys>, prefix: &[u8]) {
        let source = Some((hot, Bytes::copy_from_slice(prefix)));
        match self.warm_source.lock() {
            Ok(mut g) => *g = source,
            Err(poisoned) => *poisoned.into_inner() = source,
        }
    }

    /// The keys (as stored, prefixed) a warm-up reads: the service's
    /// hottest by reads, at most `warm_keys`.
    pub fn warm_keys(&self) -> Vec<Bytes> {
        let count = self.warm_keys.load(Ordering::Relaxed);
        let source = match self.warm_source.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let Some((hot, prefix)) = source.filter(|_| count > 0) else {
            return Vec::new();
        };
        hot.top(Rank::Reads, count)
            .into_iter()
            .map(|h| {
                let mut key = Vec::with_capacity(prefix.len() + h.key.len());
                key.extend_from_slice(&prefix);
                key.extend_from_slice(&h.key);
                Bytes::from(key)
            })
            .collect()
    }

    /// A ticket for a warm-up's read of `key`: none when the key is cached
    /// already or a write of it is on its way. Unlike a client's read, it
    /// counts no read, miss or admission: the key is known to be hot.
    pub fn warm_ticket(&self, key: &[u8]) -> Option<Ticket> {
        let hash = self.hasher.hash_one(key);
        // Hot keys are read again with GET: their types are not known.
        if !self.keeps(Cacheable::Get) || self.writing(hash).load(Ordering::Acquire) > 0 {
            return None;
        }
        let kind = Cacheable::Get;
        match locked(self.shard(hash)).get(key, hash, kind, Instant::now(), &mut BytesMut::new(), 0)
        {
            Found::Hit | Found::Refresh => return None,
            Found::Stale(reason) => self.counters.evicted(reason, 1),
            Found::Absent => {}
        }
        Some(Ticket {
            hash,
            seq: self.seq(hash).load(Ordering::Acquire),
            epoch: self.epoch.load(Ordering::Acquire),
            queued: Instant::now(),
            flight: None,
            kind,
        })
    }

    /// Applies reloaded settings; a smaller budget evicts at once.
    pub fn reconfigure(&self, config: &NearCacheConfig) {
        let s = Settings::of(config);
        match self.settings.lock() {
            Ok(mut g) => *g = s,
            Err(poisoned) => *poisoned.into_inner() = s,
        }
        self.apply(s);
        let budget = s.max_bytes / self.shards.len();
        let now = Instant::now();
        for shard in self.shards.iter() {
            locked(shard).shrink(budget, now, &mut |r| self.counters.evicted(r, 1));
        }
    }

    /// An MGET's answer, when GET's entries hold every one of `keys` (as
    /// stored): `*n` and their frames, copied into `answers` and split off
    /// as for a hit; each key then counts as a hit. Otherwise nothing is
    /// counted or recorded (the MGET goes to Redis as it is, and fills
    /// nothing).
    pub fn lookup_all<'k>(
        &self,
        keys: impl ExactSizeIterator<Item = &'k [u8]>,
        now: Instant,
        answers: &mut BytesMut,
    ) -> Option<Bytes> {
        let n = keys.len();
        let start = answers.len();
        crate::protocol::encode::array_header(answers, n);
        for key in keys {
            let hash = self.hasher.hash_one(key);
            let found = locked(self.shard(hash)).get(
                key,
                hash,
                Cacheable::Get,
                now,
                answers,
                ANSWERS_CHUNK,
            );
            match found {
                Found::Hit | Found::Refresh => {}
                Found::Stale(reason) => {
                    self.counters.evicted(reason, 1);
                    answers.truncate(start);
                    return None;
                }
                Found::Absent => {
                    answers.truncate(start);
                    return None;
                }
            }
        }
        self.counters
            .hits
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
        Some(answers.split().freeze())
    }

    /// Whether `command`'s replies are kept.
    pub fn keeps(&self, command: Cacheable) -> bool {
        self.kept_commands.load(Ordering::Relaxed) & command.bit() != 0
    }

    fn shard(&self, hash: u64) -> &Mutex<Store> {
        &self.shards[(hash as usize) & (self.shards.len() - 1)]
    }

    fn seq(&self, hash: u64) -> &AtomicU64 {
        &self.seqs[((hash >> 32) as usize) & (SEQ_SLOTS - 1)]
    }

    fn writing(&self, hash: u64) -> &std::sync::atomic::AtomicU32 {
        &self.writing[((hash >> 32) as usize) & (SEQ_SLOTS - 1)]
    }

    /// A write of `keys` (as stored) is being sent: they go out of the
    /// cache now, and are not filled until the returned guard is dropped
    /// (when the write's reply is taken, or never comes), which removes
    /// them once more.
    pub fn begin_write(self: &Arc<NearCache>, keys: Vec<Bytes>) -> Writing {
        for key in &keys {
            let hash = self.hasher.hash_one(key);
            self.writing(hash).fetch_add(1, Ordering::AcqRel);
            self.invalidate_hashed(key, hash);
        }
        Writing(Arc::new(WritingKeys {
            cache: self.clone(),
            keys,
            flush: false,
        }))
    }

    /// A command that empties or swaps whole databases (FLUSHALL, FLUSHDB,
    /// SWAPDB) is being sent: the cache is flushed now, and again when the
    /// returned guard goes with its reply (Redis's null invalidation may
    /// come after the acknowledgement).
    pub fn begin_flush(self: &Arc<NearCache>) -> Writing {
        self.flush(Evicted::Flush);
        Writing(Arc::new(WritingKeys {
            cache: self.clone(),
            keys: Vec::new(),
            flush: true,
        }))
    }

    /// Looks a cacheable read's (prefixed) key up. `field`: HGET's field.
    /// `sharing`: whether the read may fill the cache, and how it shares
    /// its fill ([`Sharing`]). `now`: when the read's bytes were read (an
    /// entry is served if it was live then; its fill's age counts from
    /// then, which only shortens it). A hit's frame is copied into
    /// `answers` (kept by the caller from one hit to the next, so hits
    /// share its allocation) and split off as the answer.
    pub fn lookup(
        &self,
        key: &[u8],
        kind: Cacheable,
        field: Option<&[u8]>,
        sharing: Sharing,
        now: Instant,
        answers: &mut BytesMut,
    ) -> Lookup {
        let fills = sharing != Sharing::None;
        let hash = self.hasher.hash_one(key);
        let mut shard = locked(self.shard(hash));
        // The doorkeeper's line and the index's are loaded one beside the
        // other, after the lock: a key read seldom misses both caches, and
        // the two misses then overlap instead of following each other.
        let seen = self.sketch.seen(hash);
        let found = match field {
            Some(field) => shard.get_field(key, hash, field, now, answers, ANSWERS_CHUNK),
            None => shard.get(key, hash, kind, now, answers, ANSWERS_CHUNK),
        };
        let recorded = self.sketch.record(hash, seen);
        if recorded.review {
            self.adapt();
        }
        match found {
            Found::Hit => {
                drop(shard);
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                return Lookup::Hit(answers.split().freeze());
            }
            Found::Refresh => {
                drop(shard);
                let frame = answers.split().freeze();
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                if !fills {
                    return Lookup::Hit(frame);
                }
                // No flight: the entry still answers other reads meanwhile.
                let ticket = Ticket {
                    hash,
                    seq: self.seq(hash).load(Ordering::Acquire),
                    epoch: self.epoch.load(Ordering::Acquire),
                    queued: now,
                    flight: None,
                    kind,
                };
                return Lookup::Refresh(frame, ticket);
            }
            Found::Stale(reason) => self.counters.evicted(reason, 1),
            Found::Absent => {}
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        if !fills {
            return Lookup::Miss(None);
        }
        if sharing == Sharing::LeadsOrFollows {
            if let Some(boarding) = shard.flights.join(key, hash, kind) {
                return Lookup::Follow(boarding);
            }
        }
        if recorded.estimate < self.admit_after.load(Ordering::Relaxed) {
            return Lookup::Miss(None);
        }
        let id = self.flights.fetch_add(1, Ordering::Relaxed);
        let leads = matches!(sharing, Sharing::Leads | Sharing::LeadsOrFollows);
        let flight = (leads && shard.flights.lead(key, hash, id, kind)).then_some(id);
        // The ticket is read after the lookup: an invalidation between
        // the two only makes the fill be dropped.
        Lookup::Miss(Some(Ticket {
            hash,
            seq: self.seq(hash).load(Ordering::Acquire),
            epoch: self.epoch.load(Ordering::Acquire),
            queued: now,
            flight,
            kind,
        }))
    }

    /// Starts loading what a lookup of `key` (as stored) reads first, the
    /// index slot and the sketch's lines: a batch's lookups, prefetched
    /// together, wait on memory once rather than once each.
    /// Returns the key's hash, for [`NearCache::prefetch_entries`].
    pub(crate) fn prefetch(&self, key: &[u8]) -> u64 {
        let hash = self.hasher.hash_one(key);
        for line in self.sketch.lines(hash).into_iter().flatten() {
            prefetch(line);
        }
        locked(self.shard(hash)).prefetch(hash);
        hash
    }

    /// The second step of a batch's prefetch, once [`NearCache::prefetch`]
    /// has asked for the index slots of these `hashes`: starts loading the
    /// entries the slots point at (a hit reads its entry right after its
    /// slot, so the slot alone left one miss per hit).
    pub(crate) fn prefetch_entries(&self, hashes: &[u64]) {
        for &hash in hashes {
            locked(self.shard(hash)).prefetch_entry(hash);
        }
    }

    /// A leading read's reply (any reply: followers get what it got).
    pub(crate) fn land(&self, key: &[u8], ticket: &Ticket, frame: &[u8]) {
        if let Some(id) = ticket.flight {
            locked(self.shard(ticket.hash))
                .flights
                .land(key, ticket.hash, id, frame);
        }
    }

    /// A leading read will not be answered: its followers read on their own.
    pub(crate) fn abort(&self, key: &[u8], ticket: &Ticket) {
        if let Some(id) = ticket.flight {
            locked(self.shard(ticket.hash))
                .flights
                .abort(key, ticket.hash, id);
        }
    }

    /// Keeps a read's reply: `frame` is the whole reply frame, `pttl` the
    /// key's TTL in ms as `PTTL` answered in the same write (-1: none),
    /// `session` the tracking session the read was written under. Dropped
    /// when an invalidation or flush came after the ticket was taken.
    pub fn fill(&self, key: Bytes, frame: &[u8], pttl: i64, ticket: Ticket, session: Arc<Session>) {
        self.fill_reply(&key, None, frame, pttl, ticket, session);
    }

    /// Keeps an HGET's reply as [`NearCache::fill`] keeps a read's: the
    /// field joins those its key's entry holds.
    pub fn fill_field(
        &self,
        key: Bytes,
        field: &[u8],
        frame: &[u8],
        pttl: i64,
        ticket: Ticket,
        session: Arc<Session>,
    ) {
        self.fill_reply(&key, Some(field), frame, pttl, ticket, session);
    }

    fn fill_reply(
        &self,
        key: &[u8],
        field: Option<&[u8]>,
        frame: &[u8],
        pttl: i64,
        ticket: Ticket,
        session: Arc<Session>,
    ) {
        let max_value_bytes = self.max_value_bytes.load(Ordering::Relaxed);
        if frame.len() > max_value_bytes || !session.is_live() {
            return;
        }
        let max_age = Duration::from_millis(self.max_age_ms.load(Ordering::Relaxed));
        let ttl = match pttl {
            -1 => max_age,
            ms if ms > 0 => max_age.min(Duration::from_millis(ms as u64)),
            // -2: the key was gone by the PTTL; 0: about to expire.
            _ => return,
        };
        let expires = ticket.queued + ttl;
        let mut entry = match field {
            Some(_) => None,
            None => {
                let mut entry = Entry::new(
                    key,
                    ticket.kind,
                    frame,
                    expires,
                    session.clone(),
                    ticket.hash,
                );
                if ttl == max_age {
                    // Refreshed in the last quarter of its life if it is read then.
                    entry.refresh_at = ticket.queued + max_age * 3 / 4;
                }
                Some(entry)
            }
        };
        let budget = self.shard_budget.load(Ordering::Relaxed);
        let mut shard = locked(self.shard(ticket.hash));
        if self.seq(ticket.hash).load(Ordering::Acquire) != ticket.seq
            || self.epoch.load(Ordering::Acquire) != ticket.epoch
            || self.writing(ticket.hash).load(Ordering::Acquire) > 0
        {
            return;
        }
        if let Some(field) = field {
            // The fields kept so far are as good as this one: nothing
            // invalidated the key since either was read (that would have
            // removed the entry, or changed the sequence).
            let (fields, joined) = shard.merged_fields(
                key,
                ticket.hash,
                &session,
                Instant::now(),
                (field, frame),
                max_value_bytes,
            );
            let expires = joined.map_or(expires, |e| e.min(expires));
            entry = Some(Entry::new(
                key,
                ticket.kind,
                &fields,
                expires,
                session,
                ticket.hash,
            ));
        }
        let Some(entry) = entry else {
            return;
        };
        let freq = |h: u64| self.sketch.estimate(h);
        let kept = shard.insert(entry, budget, Instant::now(), &freq, &mut |r| {
            self.counters.evicted(r, 1)
        });
        if kept {
            self.kept.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every eighth of the sketch's period: fills that did not pay since
    /// the last review (fewer than two hits per entry filled, and fills a
    /// noticeable share of the reads, as under uniformly random keys)
    /// raise the reads a key needs before it is filled; an interval in
    /// which most reads hit lowers it again.
    fn adapt(&self) {
        let now = [
            self.counters.hits.load(Ordering::Relaxed),
            self.counters.misses.load(Ordering::Relaxed),
            self.kept.load(Ordering::Relaxed),
        ];
        let [hits, misses, kept] = {
            let mut mark = match self.period_mark.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            let delta = [0, 1, 2].map(|i| now[i].saturating_sub(mark[i]));
            *mark = now;
            delta
        };
        let reads = hits + misses;
        let threshold = self.admit_after.load(Ordering::Relaxed);
        let next = if kept.saturating_mul(100) >= reads && hits < kept.saturating_mul(2) {
            (threshold + 1).min(ADMIT_AFTER_MAX)
        } else if hits.saturating_mul(2) >= reads {
            threshold.saturating_sub(1).max(ADMIT_AFTER)
        } else {
            threshold
        };
        self.admit_after.store(next, Ordering::Relaxed);
    }

    /// Reads of a key before it is filled now.
    pub fn admit_after(&self) -> u8 {
        self.admit_after.load(Ordering::Relaxed)
    }

    /// The key changed (Redis said so, or keygate is writing it): its entry
    /// goes, and fills of reads already on their way are dropped.
    pub fn invalidate(&self, key: &[u8]) {
        self.invalidate_hashed(key, self.hasher.hash_one(key));
    }

    fn invalidate_hashed(&self, key: &[u8], hash: u64) {
        let mut shard = locked(self.shard(hash));
        self.seq(hash).fetch_add(1, Ordering::AcqRel);
        if shard.remove(key, hash) {
            self.counters.evicted(Evicted::Invalidation, 1);
        }
    }

    /// Drops every entry, and the fills of reads already on their way.
    pub fn flush(&self, reason: Evicted) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        for shard in self.shards.iter() {
            let n = locked(shard).clear();
            self.counters.evicted(reason, n as u64);
        }
    }

    /// Removes entries that may not be served any more (expired, or filled
    /// through a session that ended), so they stop taking budget.
    pub fn sweep(&self) {
        let now = Instant::now();
        for shard in self.shards.iter() {
            locked(shard).sweep(now, &mut |r| self.counters.evicted(r, 1));
        }
    }

    /// Bytes charged to the budget now.
    pub fn bytes(&self) -> usize {
        self.shards.iter().map(|s| locked(s).bytes()).sum()
    }

    /// Entries now.
    pub fn entries(&self) -> usize {
        self.shards.iter().map(|s| locked(s).len()).sum()
    }
}

/// Keys of a write through keygate whose reply is not taken yet: see
/// [`NearCache::begin_write`]. Clones share one guard.
#[derive(Debug, Clone)]
pub struct Writing(Arc<WritingKeys>);

impl PartialEq for Writing {
    fn eq(&self, other: &Writing) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

#[derive(Debug)]
struct WritingKeys {
    cache: Arc<NearCache>,
    keys: Vec<Bytes>,
    flush: bool,
}

impl Drop for WritingKeys {
    fn drop(&mut self) {
        if self.flush {
            self.cache.flush(Evicted::Flush);
        }
        for key in &self.keys {
            // Removed (and the sequence bumped) before fills may resume.
            let hash = self.cache.hasher.hash_one(key);
            self.cache.invalidate_hashed(key, hash);
            self.cache.writing(hash).fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Every service's near cache, for what applies to all of them:
/// invalidations from Redis (keys are prefixed, so a key only ever matches
/// the entries of the service it belongs to), flushes, and the sweep.
#[derive(Debug, Default)]
pub struct NearCaches {
    // A std Mutex is right: pushes at start and reload, clones otherwise.
    caches: Mutex<Vec<Weak<NearCache>>>,
    /// Sessions ended since the last sweep.
    ended: AtomicU64,
}

impl NearCaches {
    /// An empty registry.
    pub fn new() -> Arc<NearCaches> {
        Arc::new(NearCaches::default())
    }

    /// Adds a cache (services built at start or by a reload).
    pub fn adopt(&self, cache: &Arc<NearCache>) {
        let mut caches = self.lock();
        caches.retain(|c| c.strong_count() > 0);
        if !caches
            .iter()
            .any(|c| std::ptr::eq(c.as_ptr(), Arc::as_ptr(cache)))
        {
            caches.push(Arc::downgrade(cache));
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Weak<NearCache>>> {
        match self.caches.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The caches still in use.
    pub fn live(&self) -> Vec<Arc<NearCache>> {
        self.lock().iter().filter_map(Weak::upgrade).collect()
    }

    /// Whether any cache is registered.
    pub fn is_empty(&self) -> bool {
        self.lock().iter().all(|c| c.strong_count() == 0)
    }

    /// Redis invalidated `key` (as stored, prefix included).
    pub fn invalidate(&self, key: &[u8]) {
        for cache in self.live() {
            cache.invalidate(key);
        }
    }

    /// Flushes every cache.
    pub fn flush_all(&self, reason: Evicted) {
        for cache in self.live() {
            cache.flush(reason);
        }
    }

    pub(crate) fn session_ended(&self) {
        self.ended.fetch_add(1, Ordering::Relaxed);
    }

    /// Sweeps every cache once a second, and soon after a session ended
    /// (its entries are dead weight in the budget). Runs until the
    /// registry is dropped.
    pub fn spawn_sweeper(self: &Arc<NearCaches>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut seen = 0;
            let mut ticks = 0u32;
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let Some(caches) = weak.upgrade() else {
                    return;
                };
                ticks += 1;
                let ended = caches.ended.load(Ordering::Relaxed);
                if ended != seen || ticks >= 10 {
                    seen = ended;
                    ticks = 0;
                    for cache in caches.live() {
                        cache.sweep();
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::tracking::Link;
    use super::*;

    fn config(max_bytes: usize) -> NearCacheConfig {
        NearCacheConfig {
            enabled: true,
            max_bytes,
            max_age: Duration::from_secs(10),
            commands: vec!["GET".into()],
            max_value_bytes: 64 * 1024,
            warm_keys: 1000,
        }
    }

    fn live() -> Arc<Session> {
        let s = Session::new(Arc::new(Link::new_up()));
        s.confirm();
        s
    }

    /// A lookup that lets go of any flight it leads (nobody follows here).
    fn look(cache: &NearCache, key: &[u8]) -> Lookup {
        let found = cache.lookup(
            key,
            Cacheable::Get,
            None,
            Sharing::LeadsOrFollows,
            Instant::now(),
            &mut BytesMut::new(),
        );
        if let Lookup::Miss(Some(t)) = &found {
            cache.abort(key, t);
        }
        found
    }

    fn ticket(cache: &NearCache, key: &[u8]) -> Ticket {
        loop {
            if let Lookup::Miss(Some(t)) = look(cache, key) {
                return t;
            }
        }
    }

    #[tokio::test]
    async fn a_key_is_filled_on_its_second_read_and_then_hit() {
        let cache = NearCache::new(&config(1 << 20));
        assert!(matches!(look(&cache, b"k"), Lookup::Miss(None)));
        let t = ticket(&cache, b"k");
        cache.fill(Bytes::from_static(b"k"), b"$1\r\nv\r\n", -1, t, live());
        match look(&cache, b"k") {
            Lookup::Hit(f) => assert_eq!(&f[..], b"$1\r\nv\r\n"),
            other => panic!("{other:?}"),
        }
        assert_eq!(cache.counters.hits.load(Ordering::Relaxed), 1);
    }

    /// A cluster's redirect of the leader's read lands nothing: its
    /// followers read on their own; a reply lands as it is.
    #[tokio::test]
    async fn a_redirected_leader_lets_its_followers_go() {
        let cache = NearCache::new(&config(1 << 20));
        let _ = look(&cache, b"k");
        for (frame, lands) in [
            (&b"-MOVED 3999 127.0.0.1:7001\r\n"[..], false),
            (b"-ASK 3999 127.0.0.1:7001\r\n", false),
            (
                b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
                false,
            ),
            (b"$1\r\nv\r\n", true),
        ] {
            let lead = |cache: &NearCache| {
                cache.lookup(
                    b"k",
                    Cacheable::Get,
                    None,
                    Sharing::LeadsOrFollows,
                    Instant::now(),
                    &mut BytesMut::new(),
                )
            };
            let Lookup::Miss(Some(ticket)) = lead(&cache) else {
                panic!("no leader");
            };
            let Lookup::Follow(mut boarding) = lead(&cache) else {
                panic!("no follower");
            };
            let mut landings = flight::Landings::default();
            landings.push(
                0,
                Arc::new(flight::Landing::new(
                    cache.clone(),
                    Bytes::from_static(b"k"),
                    ticket,
                )),
            );
            landings.land(|_| Some(Bytes::copy_from_slice(frame)));
            match boarding.try_recv() {
                Ok(got) => assert!(lands && got[..] == frame[..]),
                Err(_) => assert!(!lands, "{frame:?} was not handed on"),
            }
        }
    }

    fn look_field(cache: &NearCache, field: &[u8]) -> Lookup {
        cache.lookup(
            b"h",
            Cacheable::HGet,
            Some(field),
            Sharing::Alone,
            Instant::now(),
            &mut BytesMut::new(),
        )
    }

    /// HGET's fields of one key join one entry, each answered by its own
    /// frame, and an invalidation of the key takes them all; a field read
    /// before the key changed does not join the entry after.
    #[tokio::test]
    async fn hget_fields_share_their_keys_entry_and_go_with_it() {
        let mut c = config(1 << 20);
        c.commands = vec!["HGET".into()];
        let cache = NearCache::new(&c);
        let session = live();
        let field_ticket = |field: &[u8]| loop {
            if let Lookup::Miss(Some(t)) = look_field(&cache, field) {
                assert!(t.flight.is_none(), "a read alone leads no flight");
                return t;
            }
        };
        let (ta, tb) = (field_ticket(b"a"), field_ticket(b"b"));
        let h = Bytes::from_static(b"h");
        cache.fill_field(h.clone(), b"a", b"$1\r\n1\r\n", -1, ta, session.clone());
        cache.fill_field(h.clone(), b"b", b"$2\r\n22\r\n", -1, tb, session.clone());
        match (look_field(&cache, b"a"), look_field(&cache, b"b")) {
            (Lookup::Hit(a), Lookup::Hit(b)) => {
                assert_eq!(&a[..], b"$1\r\n1\r\n");
                assert_eq!(&b[..], b"$2\r\n22\r\n");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cache.entries(), 1);
        assert!(matches!(look_field(&cache, b"c"), Lookup::Miss(_)));
        let before = field_ticket(b"c");
        cache.invalidate(b"h");
        assert!(matches!(look_field(&cache, b"a"), Lookup::Miss(_)));
        cache.fill_field(h, b"c", b"$1\r\n3\r\n", -1, before, session);
        assert_eq!(cache.entries(), 0, "a read that raced the invalidation");
    }

    /// Uniformly random keys: each fill is seldom read again, so the reads
    /// a key needs before it is filled go up; a period of mostly hits
    /// brings them back down.
    #[tokio::test]
    async fn fills_that_do_not_pay_raise_the_threshold_and_hits_lower_it() {
        let cache = NearCache::new(&config(1 << 20));
        let period = cache.sketch.period();
        let mut n = 0u64;
        // Every key read twice and filled, never hit: a period of that.
        while cache.admit_after() == ADMIT_AFTER && n < 2 * period {
            let key = n.to_be_bytes();
            look(&cache, &key);
            let t = ticket(&cache, &key);
            cache.fill(Bytes::copy_from_slice(&key), b"$1\r\nv\r\n", -1, t, live());
            n += 1;
        }
        assert_eq!(cache.admit_after(), ADMIT_AFTER + 1);
        // One hot key, hit for a whole period.
        let t = ticket(&cache, b"hot");
        cache.fill(Bytes::from_static(b"hot"), b"$1\r\nv\r\n", -1, t, live());
        for _ in 0..period + 1 {
            look(&cache, b"hot");
        }
        assert_eq!(cache.admit_after(), ADMIT_AFTER);
    }

    #[tokio::test]
    async fn a_fill_racing_an_invalidation_is_dropped() {
        let cache = NearCache::new(&config(1 << 20));
        let t = ticket(&cache, b"k");
        cache.invalidate(b"k");
        cache.fill(Bytes::from_static(b"k"), b"$1\r\nv\r\n", -1, t, live());
        assert!(matches!(look(&cache, b"k"), Lookup::Miss(_)));
        let t = ticket(&cache, b"k");
        cache.flush(Evicted::Flush);
        cache.fill(Bytes::from_static(b"k"), b"$1\r\nv\r\n", -1, t, live());
        assert_eq!(cache.entries(), 0);
    }

    /// A read that ran before a write and fills after the write was sent
    /// is dropped, whether it fills before or after the write's reply.
    #[tokio::test]
    async fn no_fill_while_a_write_is_in_flight_or_raced_it() {
        let cache = NearCache::new(&config(1 << 20));
        let frame = b"$3\r\nold\r\n";
        let _ = ticket(&cache, b"k");
        let before = ticket(&cache, b"k");
        let writing = cache.begin_write(vec![Bytes::from_static(b"k")]);
        let during = ticket(&cache, b"k");
        cache.fill(Bytes::from_static(b"k"), frame, -1, during, live());
        assert_eq!(cache.entries(), 0, "no fill while the write is in flight");
        drop(writing);
        cache.fill(Bytes::from_static(b"k"), frame, -1, during, live());
        cache.fill(Bytes::from_static(b"k"), frame, -1, before, live());
        assert_eq!(cache.entries(), 0, "tickets from before the reply are void");
        let after = ticket(&cache, b"k");
        cache.fill(Bytes::from_static(b"k"), frame, -1, after, live());
        assert_eq!(cache.entries(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn no_entry_outlives_its_ttl_or_max_age() {
        let cache = NearCache::new(&config(1 << 20));
        let t = ticket(&cache, b"short");
        cache.fill(Bytes::from_static(b"short"), b"$1\r\nv\r\n", 50, t, live());
        let t = ticket(&cache, b"long");
        cache.fill(Bytes::from_static(b"long"), b"$1\r\nv\r\n", -1, t, live());
        assert!(matches!(look(&cache, b"short"), Lookup::Hit(_)));
        tokio::time::advance(Duration::from_millis(60)).await;
        assert!(matches!(look(&cache, b"short"), Lookup::Miss(_)));
        assert!(matches!(look(&cache, b"long"), Lookup::Hit(_)));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(matches!(look(&cache, b"long"), Lookup::Miss(_)));
        assert_eq!(cache.counters.evictions(Evicted::MaxAge), 2);
    }

    /// A hit in the last quarter of an entry's `max_age` asks, once, for a
    /// fill that replaces it; a hot key is then never dropped at `max_age`.
    #[tokio::test(start_paused = true)]
    async fn a_hot_entry_is_refreshed_before_max_age() {
        let cache = NearCache::new(&config(1 << 20));
        let t = ticket(&cache, b"k");
        cache.fill(Bytes::from_static(b"k"), b"$1\r\nv\r\n", -1, t, live());
        assert!(matches!(look(&cache, b"k"), Lookup::Hit(_)));
        tokio::time::advance(Duration::from_millis(7600)).await;
        let Lookup::Refresh(frame, t) = look(&cache, b"k") else {
            panic!("no refresh asked for");
        };
        assert_eq!(&frame[..], b"$1\r\nv\r\n");
        assert!(matches!(look(&cache, b"k"), Lookup::Hit(_)), "asked once");
        cache.fill(Bytes::from_static(b"k"), b"$1\r\nw\r\n", -1, t, live());
        tokio::time::advance(Duration::from_secs(5)).await;
        match look(&cache, b"k") {
            Lookup::Hit(f) => assert_eq!(&f[..], b"$1\r\nw\r\n"),
            other => panic!("{other:?}"),
        }
        // A key's own TTL is not refreshed past.
        let t = ticket(&cache, b"ttl");
        cache.fill(Bytes::from_static(b"ttl"), b"$1\r\nv\r\n", 2000, t, live());
        tokio::time::advance(Duration::from_millis(1900)).await;
        assert!(matches!(look(&cache, b"ttl"), Lookup::Hit(_)));
    }

    /// The budget holds within 5% (entries are charged exactly, and each
    /// shard holds its share), and shrinking it on reload evicts.
    #[tokio::test]
    async fn the_byte_budget_holds_and_shrinks() {
        let max = 256 * 1024;
        let cache = NearCache::new(&config(max));
        let session = live();
        let value = format!("${}\r\n{}\r\n", 100, "v".repeat(100));
        for round in 0..3 {
            for i in 0..5000 {
                let key = format!("key:{i}");
                // Read until admitted (fills never hit here, so the
                // threshold rises).
                let t = ticket(&cache, key.as_bytes());
                cache.fill(Bytes::from(key), value.as_bytes(), -1, t, session.clone());
                assert!(cache.bytes() <= max, "round {round}");
            }
        }
        assert!(
            cache.bytes() as f64 >= max as f64 * 0.95 - 16.0 * 300.0,
            "{}",
            cache.bytes()
        );
        cache.reconfigure(&config(max / 4));
        assert!(cache.bytes() <= max / 4);
        assert!(cache.counters.evictions(Evicted::Budget) > 0);
    }

    #[tokio::test]
    async fn entries_of_an_ended_session_are_never_served_and_are_swept() {
        let caches = NearCaches::new();
        let cache = NearCache::new(&config(1 << 20));
        caches.adopt(&cache);
        let session = live();
        for key in [&b"k"[..], b"j"] {
            let t = ticket(&cache, key);
            let frame = b"$1\r\nv\r\n";
            cache.fill(Bytes::copy_from_slice(key), frame, -1, t, session.clone());
        }
        session.end(&caches);
        assert!(matches!(look(&cache, b"k"), Lookup::Miss(_)));
        cache.sweep();
        assert_eq!(cache.entries(), 0);
        assert_eq!(cache.counters.evictions(Evicted::Connection), 2);
        caches.flush_all(Evicted::Flush);
        caches.invalidate(b"k");
    }
}
