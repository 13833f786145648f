//! One shard of a service's entries, with its share of the byte budget.
//!
//! Entries live in a vector indexed by their hashes ([`Index`]; removal swaps the last
//! entry into the hole), so a victim can be sampled at random in O(1):
//! eviction looks at a few random entries and takes a stale one (expired,
//! or filled through a session that ended) if there is one, else the least
//! recently used, as Redis's own approximated LRU does. A full shard takes
//! a new entry only in place of a victim read less often (the admission
//! sketch decides, [`super::admission`]).
//!
//! Invariant: `bytes` is the sum of the entries' charges (key + value +
//! [`ENTRY_OVERHEAD`]) and stays within the budget after every insert.

use std::sync::Arc;

use bytes::BytesMut;
use smallvec::SmallVec;
use tokio::time::Instant;

use super::flight::Flights;
use super::tracking::Session;
use super::Evicted;
use crate::config::Cacheable;

/// Bytes charged per entry beyond its key and value: the entry, its index
/// slot and the allocations' headers, rounded up.
pub const ENTRY_OVERHEAD: usize = 96;
/// Key and frame bytes kept inside the entry: a 64-byte value's frame
/// (71 bytes) with a key of up to 17.
const INLINE_DATA: usize = 88;
/// Entries looked at per eviction.
const SAMPLES: usize = 5;

/// A cached reply.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The key, then its reply frame as the client gets it, in the entry
    /// itself when they are small (a short key and a value of about 64
    /// bytes), else in one allocation: a hit compares the key and copies
    /// the frame out of the cache lines it found the entry in. (Separate
    /// `Bytes` took a cache miss each, and a reference count on the
    /// frame's header that was missed again when the answer was dropped.)
    data: SmallVec<[u8; INLINE_DATA]>,
    key_len: usize,
    /// The command whose reply `data` holds: it answers only that one.
    kind: Cacheable,
    /// `max_age` after the read was sent, or the key's own expiry if sooner.
    pub(crate) expires: Instant,
    /// The session the read was written under.
    pub(crate) session: Arc<Session>,
    /// Key-sketch hash, for admission comparisons.
    pub(crate) hash: u64,
    /// The store's clock when last read.
    used: u64,
    /// From then on, a hit also reads the key again for a fresh entry
    /// (once): a hot key is not dropped at `max_age` and missed.
    pub(crate) refresh_at: Instant,
    refreshing: bool,
}

impl Entry {
    pub(crate) fn new(
        key: &[u8],
        kind: Cacheable,
        frame: &[u8],
        expires: Instant,
        session: Arc<Session>,
        hash: u64,
    ) -> Entry {
        let mut data = SmallVec::with_capacity(key.len() + frame.len());
        data.extend_from_slice(key);
        data.extend_from_slice(frame);
        Entry {
            data,
            key_len: key.len(),
            kind,
            expires,
            session,
            hash,
            used: 0,
            refresh_at: expires,
            refreshing: false,
        }
    }

    pub(crate) fn charge(&self) -> usize {
        self.data.len() + ENTRY_OVERHEAD
    }

    pub(crate) fn key(&self) -> &[u8] {
        self.data.get(..self.key_len).unwrap_or_default()
    }

    fn frame(&self) -> &[u8] {
        self.data.get(self.key_len..).unwrap_or_default()
    }

    /// Why it may not be served any more, if so.
    fn stale(&self, now: Instant) -> Option<Evicted> {
        if !self.session.is_live() {
            Some(Evicted::Connection)
        } else if now >= self.expires {
            Some(Evicted::MaxAge)
        } else {
            None
        }
    }
}

/// Appends `frame` to `out`, which grows by at least `chunk` bytes when it must.
fn copy_out(frame: &[u8], out: &mut BytesMut, chunk: usize) {
    if out.capacity() - out.len() < frame.len() {
        out.reserve(frame.len().max(chunk));
    }
    out.extend_from_slice(frame);
}

/// Appends one HGET field and its reply frame to an entry's fields, each
/// behind its length (four bytes, little-endian).
fn encode_field(out: &mut Vec<u8>, field: &[u8], frame: &[u8]) {
    for part in [field, frame] {
        out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(part);
    }
}

/// An HGET entry's (field, frame) pairs, as [`encode_field`] wrote them.
fn field_frames(data: &[u8]) -> FieldFrames<'_> {
    FieldFrames(data)
}

struct FieldFrames<'a>(&'a [u8]);

impl<'a> FieldFrames<'a> {
    fn part(&mut self) -> Option<&'a [u8]> {
        let (len, rest) = self.0.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        let part = rest.get(..len)?;
        self.0 = rest.get(len..)?;
        Some(part)
    }
}

impl<'a> Iterator for FieldFrames<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        Some((self.part()?, self.part()?))
    }
}

/// The index from a key's hash to its entry: open addressing with linear
/// probing over one array of (hash, entry) slots, so a lookup reads one
/// cache line where a `HashMap` read its control bytes and then its bucket
/// (two misses for a key read seldom). Its keys are hashes already (SipHash
/// with the cache's random keys), placed by their high half (the low bits
/// chose the shard, so every key here shares them). Deletion shifts the
/// following slots back, so no tombstones build up.
#[derive(Debug, Default)]
pub(crate) struct Index {
    slots: Vec<Slot>,
    len: usize,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    hash: u64,
    /// The entry's position, or [`EMPTY`].
    at: usize,
}

const EMPTY: usize = usize::MAX;
const FREE: Slot = Slot { hash: 0, at: EMPTY };

impl Index {
    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    fn home(&self, hash: u64) -> usize {
        (hash.rotate_left(32) as usize) & self.mask()
    }

    /// The slot a lookup of `hash` reads first.
    fn home_slot(&self, hash: u64) -> Option<&Slot> {
        self.slots.get(self.home(hash))
    }

    /// The slot holding `hash`, if any.
    fn find(&self, hash: u64) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mut i = self.home(hash);
        loop {
            let slot = self.slots.get(i)?;
            if slot.at == EMPTY {
                return None;
            }
            if slot.hash == hash {
                return Some(i);
            }
            i = (i + 1) & self.mask();
        }
    }

    pub(crate) fn get(&self, hash: u64) -> Option<usize> {
        self.find(hash)
            .and_then(|i| self.slots.get(i))
            .map(|s| s.at)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    /// Points `hash` at entry `at`, replacing what it pointed at.
    pub(crate) fn insert(&mut self, hash: u64, at: usize) {
        // At most five slots in eight in use: probes stay short.
        if (self.len + 1) * 8 > self.slots.len() * 5 {
            self.grow();
        }
        let mut i = self.home(hash);
        loop {
            let Some(slot) = self.slots.get_mut(i) else {
                return;
            };
            if slot.at == EMPTY {
                *slot = Slot { hash, at };
                self.len += 1;
                return;
            }
            if slot.hash == hash {
                slot.at = at;
                return;
            }
            i = (i + 1) & self.mask();
        }
    }

    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(16);
        let old = std::mem::replace(&mut self.slots, vec![FREE; size]);
        self.len = 0;
        for slot in old.into_iter().filter(|s| s.at != EMPTY) {
            self.insert(slot.hash, slot.at);
        }
    }

    /// Takes `hash` out; what followed it in its run moves back.
    pub(crate) fn remove(&mut self, hash: u64) -> Option<usize> {
        let mut hole = self.find(hash)?;
        let removed = self.slots.get(hole)?.at;
        let mask = self.mask();
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let Some(&next) = self.slots.get(j) else {
                break;
            };
            if next.at == EMPTY {
                break;
            }
            // `next` stays unless its home lies cyclically outside (hole, j].
            let home = self.home(next.hash);
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                if let Some(h) = self.slots.get_mut(hole) {
                    *h = next;
                }
                hole = j;
            }
        }
        if let Some(h) = self.slots.get_mut(hole) {
            *h = FREE;
        }
        self.len -= 1;
        Some(removed)
    }

    pub(crate) fn clear(&mut self) {
        self.slots.clear();
        self.len = 0;
    }

    /// Every (hash, entry) pair.
    #[cfg(test)]
    fn pairs(&self) -> impl Iterator<Item = (u64, usize)> + '_ {
        self.slots
            .iter()
            .filter(|s| s.at != EMPTY)
            .map(|s| (s.hash, s.at))
    }
}

/// What a lookup found.
#[derive(Debug)]
pub(crate) enum Found {
    /// Its frame was appended to the caller's buffer.
    Hit,
    /// A hit on an entry due for refreshing ([`Entry::refresh_at`]); it is
    /// told so once.
    Refresh,
    Absent,
    /// There was an entry, removed now for this reason.
    Stale(Evicted),
}

/// Entries of one shard.
#[derive(Debug, Default)]
pub(crate) struct Store {
    /// Entry positions by the key's hash ([`Entry::hash`], computed once per
    /// lookup with the cache's random keys); the entry's key is compared,
    /// so two keys whose hashes collide only displace each other.
    index: Index,
    entries: Vec<Entry>,
    bytes: usize,
    clock: u64,
    rng: u64,
    /// Reads on their way whose reply other reads of the key wait for.
    pub(crate) flights: Flights,
}

impl Store {
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Starts loading the index slot a lookup of `hash` reads first.
    pub(crate) fn prefetch(&self, hash: u64) {
        if let Some(slot) = self.index.home_slot(hash) {
            super::prefetch(slot);
        }
    }

    /// Starts loading the entry `hash`'s home slot points at, when the slot
    /// holds that hash (a key displaced from its home slot is not looked
    /// for: this is a hint).
    pub(crate) fn prefetch_entry(&self, hash: u64) {
        let at = self
            .index
            .home_slot(hash)
            .filter(|slot| slot.hash == hash)
            .map(|slot| slot.at);
        if let Some(entry) = at.and_then(|at| self.entries.get(at)) {
            super::prefetch_all_lines(entry);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Looks `key` up; on a hit its frame is appended to `out`, which
    /// grows by at least `chunk` bytes when it must (hits then share an
    /// allocation).
    pub(crate) fn get(
        &mut self,
        key: &[u8],
        hash: u64,
        kind: Cacheable,
        now: Instant,
        out: &mut BytesMut,
        chunk: usize,
    ) -> Found {
        let i = match self.servable(key, hash, kind, now) {
            Ok(i) => i,
            Err(found) => return found,
        };
        self.clock += 1;
        let clock = self.clock;
        let Some(entry) = self.entries.get_mut(i) else {
            return Found::Absent;
        };
        entry.used = clock;
        copy_out(entry.frame(), out, chunk);
        if now >= entry.refresh_at && !entry.refreshing {
            entry.refreshing = true;
            return Found::Refresh;
        }
        Found::Hit
    }

    /// Looks up HGET's `field` of `key` as [`Store::get`] looks up a key:
    /// absent when the key's entry does not hold that field.
    pub(crate) fn get_field(
        &mut self,
        key: &[u8],
        hash: u64,
        field: &[u8],
        now: Instant,
        out: &mut BytesMut,
        chunk: usize,
    ) -> Found {
        let i = match self.servable(key, hash, Cacheable::HGet, now) {
            Ok(i) => i,
            Err(found) => return found,
        };
        self.clock += 1;
        let clock = self.clock;
        let Some(entry) = self.entries.get_mut(i) else {
            return Found::Absent;
        };
        let Some((_, frame)) = field_frames(entry.frame()).find(|(f, _)| *f == field) else {
            return Found::Absent;
        };
        copy_out(frame, out, chunk);
        entry.used = clock;
        Found::Hit
    }

    /// The position of `key`'s entry filled by `kind`, if it may still be
    /// served at `now` (a stale one is removed, and the reason returned).
    fn servable(
        &mut self,
        key: &[u8],
        hash: u64,
        kind: Cacheable,
        now: Instant,
    ) -> Result<usize, Found> {
        let Some(i) = self.index.get(hash) else {
            return Err(Found::Absent);
        };
        // Another command's reply is not this read's: HGETALL's empty
        // array for an absent key must not answer its GET.
        let Some(entry) = self
            .entries
            .get(i)
            .filter(|e| e.key() == key && e.kind == kind)
        else {
            return Err(Found::Absent);
        };
        if let Some(reason) = entry.stale(now) {
            self.remove_at(i);
            return Err(Found::Stale(reason));
        }
        Ok(i)
    }

    /// The fields an HGET entry of `key` holds after `field`'s reply
    /// `frame` (the pair) joins them (encoded for [`Entry::new`]), and the expiry of
    /// the entry it joined. It joins only an entry that may still be
    /// served and was filled through the same tracking `session` (Redis
    /// tracks the key, not the field, for that connection), and only
    /// while the fields stay within `max_bytes`; otherwise it starts a new
    /// entry alone.
    pub(crate) fn merged_fields(
        &self,
        key: &[u8],
        hash: u64,
        session: &Arc<Session>,
        now: Instant,
        (field, frame): (&[u8], &[u8]),
        max_bytes: usize,
    ) -> (Vec<u8>, Option<Instant>) {
        let mut fields = Vec::with_capacity(8 + field.len() + frame.len());
        let joined = self
            .index
            .get(hash)
            .and_then(|i| self.entries.get(i))
            .filter(|e| {
                e.key() == key
                    && e.kind == Cacheable::HGet
                    && Arc::ptr_eq(&e.session, session)
                    && e.stale(now).is_none()
                    && e.frame().len() + 8 + field.len() + frame.len() <= max_bytes
            });
        if let Some(entry) = joined {
            for (f, v) in field_frames(entry.frame()).filter(|(f, _)| *f != field) {
                encode_field(&mut fields, f, v);
            }
        }
        encode_field(&mut fields, field, frame);
        (fields, joined.map(|e| e.expires))
    }

    /// Removes the key's entry (and grounds its flight); true if there was one.
    pub(crate) fn remove(&mut self, key: &[u8], hash: u64) -> bool {
        self.flights.ground(key, hash);
        match self.index.get(hash) {
            Some(i) if self.entries.get(i).is_some_and(|e| e.key() == key) => {
                self.remove_at(i);
                true
            }
            _ => false,
        }
    }

    fn remove_at(&mut self, i: usize) -> Option<Entry> {
        if i >= self.entries.len() {
            return None;
        }
        let entry = self.entries.swap_remove(i);
        self.index.remove(entry.hash);
        if let Some(moved) = self.entries.get(i) {
            self.index.insert(moved.hash, i);
        }
        self.bytes -= entry.charge();
        Some(entry)
    }

    /// Removes every entry; returns how many there were.
    pub(crate) fn clear(&mut self) -> usize {
        let n = self.entries.len();
        self.flights.ground_all();
        self.entries.clear();
        self.index.clear();
        self.bytes = 0;
        n
    }

    /// Removes entries that may not be served any more; counts each by reason.
    pub(crate) fn sweep(&mut self, now: Instant, evicted: &mut dyn FnMut(Evicted)) {
        let mut i = 0;
        while i < self.entries.len() {
            match self.entries.get(i).and_then(|e| e.stale(now)) {
                Some(reason) => {
                    self.remove_at(i);
                    evicted(reason);
                }
                None => i += 1,
            }
        }
    }

    /// Evicts until the shard holds at most `budget` bytes.
    pub(crate) fn shrink(&mut self, budget: usize, now: Instant, evicted: &mut dyn FnMut(Evicted)) {
        while self.bytes > budget {
            let Some((i, reason)) = self.victim(now) else {
                return;
            };
            self.remove_at(i);
            evicted(reason);
        }
    }

    /// Inserts `entry` (replacing one for the same key) within `budget`.
    /// A full shard evicts for it only victims the sketch says are read no
    /// more often than it (`freq` estimates a hash's reads); otherwise the
    /// entry is not kept. Returns whether it was kept.
    pub(crate) fn insert(
        &mut self,
        mut entry: Entry,
        budget: usize,
        now: Instant,
        freq: &dyn Fn(u64) -> u8,
        evicted: &mut dyn FnMut(Evicted),
    ) -> bool {
        let charge = entry.charge();
        if charge > budget {
            return false;
        }
        if let Some(i) = self.index.get(entry.hash) {
            // The same key, or one whose hash collides: it makes way.
            self.remove_at(i);
        }
        let wanted = freq(entry.hash);
        while self.bytes + charge > budget {
            let Some((i, reason)) = self.victim(now) else {
                return false;
            };
            if reason == Evicted::Budget {
                let victim = self.entries.get(i).map_or(0, |e| freq(e.hash));
                if victim > wanted {
                    return false;
                }
            }
            self.remove_at(i);
            evicted(reason);
        }
        self.clock += 1;
        entry.used = self.clock;
        self.bytes += charge;
        self.index.insert(entry.hash, self.entries.len());
        self.entries.push(entry);
        true
    }

    /// A sampled victim: a stale entry if one is sampled, else the least
    /// recently used of the sample.
    fn victim(&mut self, now: Instant) -> Option<(usize, Evicted)> {
        let n = self.entries.len();
        if n == 0 {
            return None;
        }
        let mut best: Option<(usize, u64)> = None;
        for _ in 0..SAMPLES.min(n) {
            let i = (self.next_random() % n as u64) as usize;
            let entry = self.entries.get(i)?;
            if let Some(reason) = entry.stale(now) {
                return Some((i, reason));
            }
            if best.is_none_or(|(_, used)| entry.used < used) {
                best = Some((i, entry.used));
            }
        }
        best.map(|(i, _)| (i, Evicted::Budget))
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: cheap and good enough to pick eviction samples.
        if self.rng == 0 {
            self.rng = 0x2545_F491_4F6C_DD1D ^ (self as *const Store as u64);
        }
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tracking::{Link, Session};
    use super::*;
    use std::time::Duration;

    fn live() -> Arc<Session> {
        let s = Session::new(Arc::new(Link::new_up()));
        s.confirm();
        s
    }

    /// A key's hash, as the cache computes one (a fixed hasher here).
    fn h(key: &str) -> u64 {
        use std::hash::BuildHasher;
        std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default()
            .hash_one(key.as_bytes())
    }

    fn entry(key: &str, len: usize, session: &Arc<Session>, now: Instant) -> Entry {
        Entry::new(
            key.as_bytes(),
            Cacheable::Get,
            &vec![b'v'; len],
            now + Duration::from_secs(10),
            session.clone(),
            h(key),
        )
    }

    #[test]
    fn the_budget_holds_and_lru_goes_first() {
        let now = Instant::now();
        let s = live();
        let mut store = Store::default();
        let budget = 10 * (100 + 2 + ENTRY_OVERHEAD);
        let mut evictions = 0;
        for i in 0..50 {
            let kept = store.insert(
                entry(&format!("k{i:01}"), 100, &s, now),
                budget,
                now,
                &|_| 1,
                &mut |_| evictions += 1,
            );
            assert!(kept);
            assert!(store.bytes() <= budget);
        }
        assert!(evictions >= 40, "{evictions}");
        assert_eq!(
            store.bytes(),
            store.entries.iter().map(Entry::charge).sum::<usize>()
        );
    }

    #[test]
    fn stale_entries_are_not_served() {
        let now = Instant::now();
        let s = live();
        let mut store = Store::default();
        let mut e = entry("a", 1, &s, now);
        e.expires = now;
        store.insert(e, 10_000, now, &|_| 1, &mut |_| {});
        assert!(matches!(
            store.get(b"a", h("a"), Cacheable::Get, now, &mut BytesMut::new(), 0),
            Found::Stale(Evicted::MaxAge)
        ));
        assert_eq!(store.len(), 0);
        let dead = Session::new(Arc::new(Link::default()));
        store.insert(entry("b", 1, &dead, now), 10_000, now, &|_| 1, &mut |_| {});
        assert!(matches!(
            store.get(b"b", h("b"), Cacheable::Get, now, &mut BytesMut::new(), 0),
            Found::Stale(Evicted::Connection)
        ));
        assert_eq!(store.bytes(), 0);
    }

    #[test]
    fn an_entry_answers_only_the_command_that_filled_it() {
        let now = Instant::now();
        let s = live();
        let mut store = Store::default();
        let mut e = entry("h", 1, &s, now);
        e.kind = Cacheable::HGetAll;
        store.insert(e, 10_000, now, &|_| 1, &mut |_| {});
        let mut out = BytesMut::new();
        assert!(matches!(
            store.get(b"h", h("h"), Cacheable::Get, now, &mut out, 0),
            Found::Absent
        ));
        assert!(out.is_empty());
        assert!(matches!(
            store.get(b"h", h("h"), Cacheable::HGetAll, now, &mut out, 0),
            Found::Hit
        ));
        assert_eq!(&out[..], b"v");
    }

    #[test]
    fn an_hget_entry_answers_the_fields_it_holds() {
        let now = Instant::now();
        let s = live();
        let mut store = Store::default();
        let hash = h("h");
        let add = |store: &mut Store, field: &[u8], frame: &[u8], session: &Arc<Session>, max| {
            let (fields, joined) =
                store.merged_fields(b"h", hash, session, now, (field, frame), max);
            let expires = joined.unwrap_or(now + Duration::from_secs(10));
            let e = Entry::new(
                b"h",
                Cacheable::HGet,
                &fields,
                expires,
                session.clone(),
                hash,
            );
            store.insert(e, 10_000, now, &|_| 1, &mut |_| {});
        };
        let field = |store: &mut Store, field: &[u8]| {
            let mut out = BytesMut::new();
            match store.get_field(b"h", hash, field, now, &mut out, 0) {
                Found::Hit => Some(out.to_vec()),
                _ => None,
            }
        };
        add(&mut store, b"a", b"$1\r\n1\r\n", &s, 1024);
        add(&mut store, b"b", b"$2\r\n22\r\n", &s, 1024);
        add(&mut store, b"a", b"$1\r\n3\r\n", &s, 1024);
        assert_eq!(
            field(&mut store, b"a").as_deref(),
            Some(&b"$1\r\n3\r\n"[..])
        );
        assert_eq!(
            field(&mut store, b"b").as_deref(),
            Some(&b"$2\r\n22\r\n"[..])
        );
        assert_eq!(field(&mut store, b"c"), None);
        assert_eq!(field(&mut store, b""), None);
        assert!(matches!(
            store.get(b"h", hash, Cacheable::Get, now, &mut BytesMut::new(), 0),
            Found::Absent
        ));
        // Another tracking session, or fields past the byte limit, start
        // the entry afresh.
        let other = live();
        add(&mut store, b"c", b"$1\r\nc\r\n", &other, 1024);
        assert_eq!(field(&mut store, b"a"), None);
        add(&mut store, b"d", b"$1\r\nd\r\n", &other, 20);
        assert_eq!(field(&mut store, b"c"), None);
        assert!(field(&mut store, b"d").is_some());
        assert_eq!(store.len(), 1);
        assert!(store.remove(b"h", hash));
        assert_eq!(field(&mut store, b"d"), None);
    }

    #[test]
    fn a_colder_candidate_does_not_displace_hotter_entries() {
        let now = Instant::now();
        let s = live();
        let mut store = Store::default();
        let budget = 2 * (1 + 1 + ENTRY_OVERHEAD);
        store.insert(entry("a", 1, &s, now), budget, now, &|_| 5, &mut |_| {});
        store.insert(entry("b", 1, &s, now), budget, now, &|_| 5, &mut |_| {});
        let cold = h("cc");
        let freq = |x: u64| if x == cold { 2 } else { 5 };
        let kept = store.insert(entry("cc", 0, &s, now), budget, now, &freq, &mut |_| {});
        assert!(!kept);
        assert_eq!(store.len(), 2);
    }

    /// The index against a `HashMap` over inserts and removes whose
    /// hashes crowd a few homes (runs that wrap around the table's end).
    #[test]
    fn the_index_agrees_with_a_hash_map() {
        let mut index = Index::default();
        let mut model = std::collections::HashMap::new();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for step in 0..4_000usize {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Few distinct homes: the high half takes 8 values.
            let hash = ((x % 8) << 32 | (x >> 40)) & 0x0000_0007_00FF_FFFF;
            if x % 3 == 0 {
                assert_eq!(index.remove(hash), model.remove(&hash), "step {step}");
            } else {
                index.insert(hash, step);
                model.insert(hash, step);
            }
            assert_eq!(index.len(), model.len());
        }
        for (hash, at) in &model {
            assert_eq!(index.get(*hash), Some(*at));
        }
        assert_eq!(index.pairs().count(), model.len());
    }

    #[test]
    fn shrink_and_remove_keep_the_index_right() {
        let now = Instant::now();
        let s = live();
        let mut store = Store::default();
        for i in 0..20 {
            store.insert(
                entry(&format!("k{i}"), 10, &s, now),
                1 << 20,
                now,
                &|_| 1,
                &mut |_| {},
            );
        }
        assert!(store.remove(b"k3", h("k3")));
        assert!(!store.remove(b"k3", h("k3")));
        assert!(!store.remove(b"k4", h("k3")), "another key under its hash");
        assert!(matches!(
            store.get(
                b"k19",
                h("k19"),
                Cacheable::Get,
                now,
                &mut BytesMut::new(),
                0
            ),
            Found::Hit
        ));
        let mut n = 0;
        store.shrink(5 * (13 + ENTRY_OVERHEAD), now, &mut |_| n += 1);
        assert!(store.len() <= 5);
        assert_eq!(n + store.len(), 19);
        for (hash, i) in store.index.pairs() {
            assert_eq!(store.entries[i].hash, hash);
        }
        assert_eq!(store.index.len(), store.len());
    }
}
