//! Hot keys: each service's most-read keys, by reads and by reply bytes
//! (issue 17), for `KEYGATE HOTKEYS` and the admin listener's `/hotkeys`.
//!
//! The client side samples one read in [`SAMPLE_EVERY`] on each connection
//! (GET, HGET, HGETALL, MGET forwarded on a shared connection): a sampled
//! command carries its keys, as the client named them, to where its reply
//! is written, and there each key is counted with the size of its value.
//! Two Space-Saving sketches per service rank the keys, one by reads and
//! one by bytes.
//!
//! Invariants:
//! - memory is bounded: a sketch holds at most [`CAPACITY`] keys of at most
//!   [`MAX_KEY_BYTES`] each (longer keys are not counted), whatever the
//!   stream of reads;
//! - a sampled read counts [`SAMPLE_EVERY`] reads (and its bytes as many
//!   times), so figures are estimates of the whole stream; Space-Saving
//!   never ranks a key below its true count, and a key read more often
//!   than 1 / [`CAPACITY`] of the (sampled) stream is always present;
//! - key names leave only through the two answers above, each of which
//!   shows a service its own keys (admin services and the admin listener
//!   see every service's): never through metric labels or logs;
//! - recording takes one short lock per sampled read that never awaits;
//! - once a sketch is full, a key it does not hold enters only when its
//!   doorkeeper ([`Door`]) saw the key sampled before, and then with that
//!   sample's count too: a stream of keys read once (uniform keys over a
//!   large keyspace) no longer replaces a slot at every sample, and a key
//!   read more often than 1 / [`CAPACITY`] is sampled twice well within
//!   the doorkeeper's memory ([`DOOR_MEMORY`] samples).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use smallvec::SmallVec;

use crate::protocol::reply::Value;
use crate::protocol::request::Request;

/// One read in this many, per client connection, is sampled.
pub const SAMPLE_EVERY: u32 = 8;
/// Most keys one answer lists (`COUNT`, `?count=`).
pub const MAX_COUNT: usize = 1000;
/// Keys listed when no count is asked for.
pub const DEFAULT_COUNT: usize = 10;
/// Keys one sketch tracks: twice the most one answer lists, so the tail of
/// a listing is not the churning bottom of the sketch.
pub const CAPACITY: usize = 2 * MAX_COUNT;
/// Longer keys are not counted: they would make the bound on memory a
/// bound on the client's key length.
pub const MAX_KEY_BYTES: usize = 1024;
/// Bits of the doorkeeper, two set per key.
const DOOR_BITS: usize = 1 << 16;
/// Keys the doorkeeper takes before it forgets them all: about 1 in 70 of
/// the keys it never saw then look seen, and its window stays twice
/// [`CAPACITY`].
const DOOR_MEMORY: u32 = 4096;

/// One key of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotKey {
    /// As the service's clients name it (without the namespace's prefix).
    pub key: Bytes,
    /// Estimated reads.
    pub reads: u64,
    /// Estimated bytes of the values those reads returned.
    pub bytes: u64,
}

/// What a listing is ranked by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rank {
    Reads,
    Bytes,
}

/// One service's sketches, shared by its clients (and kept across reloads
/// while the service's prefix stays the same).
#[derive(Debug, Default)]
pub struct HotKeys {
    sketches: Mutex<Sketches>,
    /// Keyed: clients choose the keys, and the doorkeeper's bits.
    hasher: RandomState,
}

#[derive(Debug, Default)]
struct Sketches {
    by_reads: SpaceSaving,
    by_bytes: SpaceSaving,
    door: Door,
}

/// A Bloom filter of the keys sampled lately that no full sketch held:
/// the second sample of a key lets it in.
#[derive(Debug)]
struct Door {
    bits: Box<[u64]>,
    /// Keys let through since the bits were last cleared.
    taken: u32,
}

impl Default for Door {
    fn default() -> Door {
        Door {
            bits: vec![0; DOOR_BITS / 64].into_boxed_slice(),
            taken: 0,
        }
    }
}

impl Door {
    /// Whether the key of `hash` was seen since the last clearing.
    fn seen(&self, hash: u64) -> bool {
        let set = |(word, bit): (usize, u64)| self.bits.get(word).is_some_and(|w| w & bit != 0);
        set(Door::bit(hash)) && set(Door::bit(hash >> 32))
    }

    /// The word and bit of one of a key's two bits.
    fn bit(h: u64) -> (usize, u64) {
        ((h as usize) % DOOR_BITS / 64, 1u64 << (h % 64))
    }

    /// Whether the key of `hash` was seen since the last clearing; it is
    /// from now on.
    fn pass(&mut self, hash: u64) -> bool {
        let seen = self.seen(hash);
        if !seen {
            if self.taken >= DOOR_MEMORY {
                self.bits.fill(0);
                self.taken = 0;
            }
            for (word, bit) in [Door::bit(hash), Door::bit(hash >> 32)] {
                if let Some(w) = self.bits.get_mut(word) {
                    *w |= bit;
                }
            }
            self.taken += 1;
        }
        seen
    }
}

impl HotKeys {
    /// Counts `reads` reads of `key` that returned `bytes` value bytes.
    pub fn record(&self, key: &[u8], reads: u64, bytes: u64) {
        if key.len() > MAX_KEY_BYTES {
            return;
        }
        let mut guard = self.lock();
        let sketches = &mut *guard;
        let mut door = Admit::Unasked(&mut sketches.door, &self.hasher);
        sketches.by_reads.add(key, reads, bytes, reads, &mut door);
        if bytes > 0 {
            sketches.by_bytes.add(key, reads, bytes, bytes, &mut door);
        }
    }

    /// The top `count` keys (at most [`MAX_COUNT`]) by `rank`, highest first.
    pub fn top(&self, rank: Rank, count: usize) -> Vec<HotKey> {
        let sketches = self.lock();
        let sketch = match rank {
            Rank::Reads => &sketches.by_reads,
            Rank::Bytes => &sketches.by_bytes,
        };
        sketch.top(rank, count.min(MAX_COUNT))
    }

    fn lock(&self) -> MutexGuard<'_, Sketches> {
        // A panic while counting leaves counts, not broken invariants
        // (the heap is repaired before the lock is let go), so a poisoned
        // lock is still good to use.
        self.sketches.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A Space-Saving sketch: at most [`CAPACITY`] keys, each in a slot of its
/// own, and a min-heap of slots on their count. A new key, when every slot
/// is taken, takes the least-counted key's slot and inherits its count (so
/// counts are upper bounds); its own reads and bytes start at zero. The
/// heap moves slot numbers and their places in plain arrays: counting a
/// read costs one hash lookup, a new key two more.
#[derive(Debug, Default)]
struct SpaceSaving {
    slots: Vec<Entry>,
    /// Slot numbers, a min-heap on their entries' counts.
    heap: Vec<u32>,
    /// Each slot's place in `heap`.
    place: Vec<u32>,
    by_key: HashMap<Bytes, u32>,
}

#[derive(Debug)]
struct Entry {
    key: Bytes,
    /// What the sketch ranks by, with the inherited count.
    count: u64,
    /// Reads and bytes seen since the key entered the sketch.
    reads: u64,
    bytes: u64,
}

/// The doorkeeper's answer for one sampled read, asked at most once
/// whatever the number of sketches that need it.
enum Admit<'a> {
    Unasked(&'a mut Door, &'a RandomState),
    Answered(bool),
}

impl Admit<'_> {
    fn seen(&mut self, key: &[u8]) -> bool {
        match self {
            Admit::Answered(seen) => *seen,
            Admit::Unasked(door, hasher) => {
                let seen = door.pass(hasher.hash_one(key));
                *self = Admit::Answered(seen);
                seen
            }
        }
    }
}

impl SpaceSaving {
    fn add(&mut self, key: &[u8], reads: u64, bytes: u64, weight: u64, door: &mut Admit<'_>) {
        if let Some(&slot) = self.by_key.get(key) {
            if let Some(e) = self.slots.get_mut(slot as usize) {
                e.count = e.count.saturating_add(weight);
                e.reads = e.reads.saturating_add(reads);
                e.bytes = e.bytes.saturating_add(bytes);
            }
            self.sift_down(self.place_of(slot));
            return;
        }
        if self.slots.len() < CAPACITY {
            let key = Bytes::copy_from_slice(key);
            // CAPACITY fits in u32.
            let slot = self.slots.len() as u32;
            self.by_key.insert(key.clone(), slot);
            self.slots.push(Entry {
                key,
                count: weight,
                reads,
                bytes,
            });
            self.place.push(self.heap.len() as u32);
            self.heap.push(slot);
            self.sift_up(self.heap.len() - 1);
            return;
        }
        if !door.seen(key) {
            return;
        }
        let key = Bytes::copy_from_slice(key);
        // The sample that opened the door counts too.
        let (reads, bytes, weight) = (
            reads.saturating_mul(2),
            bytes.saturating_mul(2),
            weight.saturating_mul(2),
        );
        let Some(&slot) = self.heap.first() else {
            return;
        };
        let Some(min) = self.slots.get_mut(slot as usize) else {
            return;
        };
        let evicted = std::mem::replace(&mut min.key, key.clone());
        min.count = min.count.saturating_add(weight);
        min.reads = reads;
        min.bytes = bytes;
        self.by_key.remove(&evicted);
        self.by_key.insert(key, slot);
        self.sift_down(0);
    }

    fn top(&self, rank: Rank, count: usize) -> Vec<HotKey> {
        let mut order: Vec<&Entry> = self.slots.iter().collect();
        order.sort_unstable_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        order
            .into_iter()
            .take(count)
            .map(|e| match rank {
                Rank::Reads => HotKey {
                    key: e.key.clone(),
                    reads: e.count,
                    bytes: e.bytes,
                },
                Rank::Bytes => HotKey {
                    key: e.key.clone(),
                    reads: e.reads,
                    bytes: e.count,
                },
            })
            .collect()
    }

    fn place_of(&self, slot: u32) -> usize {
        self.place.get(slot as usize).map_or(0, |&p| p as usize)
    }

    /// The count of the entry at heap place `i`; past the end, more than any.
    fn count_at(&self, i: usize) -> u64 {
        self.heap
            .get(i)
            .and_then(|&slot| self.slots.get(slot as usize))
            .map_or(u64::MAX, |e| e.count)
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        for i in [a, b] {
            if let Some(&slot) = self.heap.get(i) {
                if let Some(p) = self.place.get_mut(slot as usize) {
                    *p = i as u32;
                }
            }
        }
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.count_at(parent) <= self.count_at(i) {
                break;
            }
            self.swap(parent, i);
            i = parent;
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        loop {
            let (left, right) = (2 * i + 1, 2 * i + 2);
            let mut least = i;
            if self.count_at(left) < self.count_at(least) {
                least = left;
            }
            if self.count_at(right) < self.count_at(least) {
                least = right;
            }
            if least == i {
                break;
            }
            self.swap(i, least);
            i = least;
        }
    }
}

/// The reads whose keys are sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// GET, HGET: the reply is the value.
    Value,
    /// HGETALL: the whole reply is the value.
    Whole,
    /// MGET: one value per key.
    Each,
}

impl Read {
    /// The sampled read a command-table name is, if any.
    pub fn of(command: &str) -> Option<Read> {
        match command {
            "get" | "hget" => Some(Read::Value),
            "hgetall" => Some(Read::Whole),
            "mget" => Some(Read::Each),
            _ => None,
        }
    }
}

/// A sampled read on its way to its reply: where it is counted and the keys
/// it read, sliced from the request (no copy) until the reply is written.
#[derive(Debug, Clone)]
pub struct Sample {
    sketch: Arc<HotKeys>,
    read: Read,
    keys: SmallVec<[Bytes; 1]>,
}

impl PartialEq for Sample {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.sketch, &other.sketch)
            && self.read == other.read
            && self.keys == other.keys
    }
}

impl Sample {
    /// Counts the sampled read with the value sizes in its reply `frame`.
    pub fn record(&self, frame: &[u8]) {
        let reads = u64::from(SAMPLE_EVERY);
        match self.read {
            Read::Value | Read::Whole => {
                let size = if self.read == Read::Value {
                    bulk_len(frame)
                } else {
                    frame.len() as u64
                };
                for key in &self.keys {
                    self.sketch.record(key, reads, size.saturating_mul(reads));
                }
            }
            Read::Each => {
                let values = match Value::parse(frame) {
                    Ok(Value::Array(values)) => values,
                    _ => Vec::new(),
                };
                for (i, key) in self.keys.iter().enumerate() {
                    let size = match values.get(i) {
                        Some(Value::Bulk(v)) => v.len() as u64,
                        _ => 0,
                    };
                    self.sketch.record(key, reads, size.saturating_mul(reads));
                }
            }
        }
    }
}

/// The length a `$n` bulk reply announces; 0 for a nil, an error or
/// anything else.
fn bulk_len(frame: &[u8]) -> u64 {
    let Some(rest) = frame.strip_prefix(b"$") else {
        return 0;
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit());
    digits.fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    })
}

/// One client connection's sampling: every [`SAMPLE_EVERY`]th read, the
/// first included.
#[derive(Debug, Default)]
pub struct Sampler {
    reads: u32,
}

impl Sampler {
    /// The sample of `req` (command `command`, already confined by the
    /// service's policy) when it is a read to sample. `prefix_at` is the
    /// argument whose prefix is still to be written (its key is as the
    /// client sent it); other keys of a namespaced service carry `prefix`
    /// already, which is taken off again.
    pub fn sample(
        &mut self,
        sketch: Option<&Arc<HotKeys>>,
        command: &str,
        req: &Request,
        prefix_at: Option<usize>,
        prefix: &[u8],
    ) -> Option<Box<Sample>> {
        let sketch = sketch?;
        let read = Read::of(command)?;
        let due = self.reads % SAMPLE_EVERY == 0;
        self.reads = self.reads.wrapping_add(1);
        if !due {
            return None;
        }
        let last = match read {
            Read::Each => req.argc().saturating_sub(1),
            Read::Value | Read::Whole => 1,
        };
        let keys = (1..=last)
            .filter_map(|i| {
                let key = req.arg_bytes(i)?;
                if prefix_at == Some(i) || prefix.is_empty() {
                    return Some(key);
                }
                key.starts_with(prefix).then(|| key.slice(prefix.len()..))
            })
            .collect();
        Some(Box::new(Sample {
            sketch: sketch.clone(),
            read,
            keys,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64, for a reproducible stream.
    fn next(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A Zipf(0.99) stream over 100,000 keys (far more than the sketch
    /// holds): the sketch's top 20 are the true top 20, in order.
    #[test]
    fn a_zipf_stream_finds_the_true_top_keys() {
        let n = 100_000usize;
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for rank in 1..=n {
            sum += (rank as f64).powf(-0.99);
            cdf.push(sum);
        }
        let hot = HotKeys::default();
        let mut truth = vec![0u64; n];
        let mut state = 7;
        for _ in 0..400_000 {
            let u = (next(&mut state) >> 11) as f64 / (1u64 << 53) as f64 * sum;
            let i = cdf.partition_point(|&c| c < u).min(n - 1);
            truth[i] += 1;
            hot.record(format!("k{i}").as_bytes(), 1, 64);
        }
        let mut true_order: Vec<usize> = (0..n).collect();
        true_order.sort_by(|a, b| truth[*b].cmp(&truth[*a]));
        let top = hot.top(Rank::Reads, 20);
        let want: Vec<Bytes> = true_order[..20]
            .iter()
            .map(|i| Bytes::from(format!("k{i}")))
            .collect();
        let got: Vec<Bytes> = top.iter().map(|h| h.key.clone()).collect();
        assert_eq!(got, want);
        for h in &top {
            let i: usize = std::str::from_utf8(&h.key[1..]).unwrap().parse().unwrap();
            // An upper bound, and close for a hot key.
            assert!(
                h.reads >= truth[i] && h.reads <= truth[i] + truth[i] / 10,
                "{h:?}"
            );
        }
    }

    /// Once full, keys read once leave the sketch as it was; a key sampled
    /// a second time gets in, counted for both samples.
    #[test]
    fn keys_read_once_do_not_churn_a_full_sketch() {
        let hot = HotKeys::default();
        for i in 0..CAPACITY {
            hot.record(format!("first{i}").as_bytes(), 1, 1);
        }
        let before = hot.top(Rank::Reads, MAX_COUNT);
        let mut state = 11;
        let mut let_in = 0;
        for _ in 0..(DOOR_MEMORY / 2) {
            let key = format!("once{}", next(&mut state));
            hot.record(key.as_bytes(), 1, 1);
            let_in += usize::from(hot.lock().by_reads.by_key.contains_key(key.as_bytes()));
        }
        // Only the doorkeeper's false positives get in (about 1 in 70 at
        // its fullest, fewer before).
        assert!(let_in < 40, "{let_in} of {} let in", DOOR_MEMORY / 2);
        let after = hot.top(Rank::Reads, MAX_COUNT);
        let kept = before.iter().filter(|k| after.contains(k)).count();
        assert!(kept + 40 >= before.len(), "{kept} of {} kept", before.len());

        // A key the doorkeeper has not seen (its hasher is random, so a
        // fixed name could be one of its false positives).
        let twice = (0..)
            .map(|i| Bytes::from(format!("twice{i}")))
            .find(|k| !hot.lock().door.seen(hot.hasher.hash_one(k.as_ref())))
            .unwrap();
        hot.record(&twice, 8, 80);
        assert!(hot
            .top(Rank::Reads, MAX_COUNT)
            .iter()
            .all(|k| k.key != twice));
        hot.record(&twice, 8, 80);
        let top = hot.top(Rank::Reads, 1);
        assert_eq!(top[0].key, twice);
        // Inherited from the least-counted slot (1) plus both samples.
        assert_eq!(top[0].reads, 1 + 16);
        let by_bytes = hot.top(Rank::Bytes, 1);
        assert_eq!((&by_bytes[0].key, by_bytes[0].bytes), (&twice, 1 + 160));
    }

    #[test]
    fn bytes_rank_apart_from_reads_and_memory_stays_bounded() {
        let hot = HotKeys::default();
        for _ in 0..100 {
            hot.record(b"small", 1, 10);
        }
        for _ in 0..10 {
            hot.record(b"large", 1, 10_000);
        }
        for i in 0..(3 * CAPACITY) {
            hot.record(format!("once{i}").as_bytes(), 1, 1);
        }
        hot.record(&[b'x'; MAX_KEY_BYTES + 1], 1, 1);
        assert_eq!(hot.top(Rank::Reads, 1)[0].key, Bytes::from("small"));
        assert_eq!(hot.top(Rank::Bytes, 1)[0].key, Bytes::from("large"));
        assert_eq!(hot.top(Rank::Bytes, 1)[0].bytes, 100_000);
        let sketches = hot.lock();
        let sketch = &sketches.by_reads;
        assert_eq!(sketch.slots.len(), CAPACITY);
        assert_eq!(sketch.by_key.len(), CAPACITY);
        for (i, &slot) in sketch.heap.iter().enumerate() {
            assert_eq!(sketch.place[slot as usize] as usize, i);
            assert_eq!(sketch.by_key[&sketch.slots[slot as usize].key], slot);
            if i > 0 {
                assert!(sketch.count_at((i - 1) / 2) <= sketch.count_at(i));
            }
        }
        drop(sketches);
        assert_eq!(hot.top(Rank::Reads, 5000).len(), MAX_COUNT);
    }

    #[test]
    fn samples_one_read_in_eight_and_shows_keys_as_the_client_named_them() {
        let hot = Arc::new(HotKeys::default());
        let mut sampler = Sampler::default();
        let get = Request::from_args(&["GET", "k"]);
        let sampled = (0..16)
            .filter(|_| {
                sampler
                    .sample(Some(&hot), "get", &get, Some(1), b"ns:")
                    .is_some()
            })
            .count();
        assert_eq!(sampled, 2);
        assert!(sampler
            .sample(Some(&hot), "set", &get, Some(1), b"ns:")
            .is_none());
        let mget = Request::from_args(&["MGET", "ns:a", "ns:b"]);
        let mut sampler = Sampler::default();
        let s = sampler
            .sample(Some(&hot), "mget", &mget, None, b"ns:")
            .unwrap();
        s.record(b"*2\r\n$3\r\nabc\r\n$-1\r\n");
        let top = hot.top(Rank::Reads, 10);
        assert_eq!(
            top[0],
            HotKey {
                key: Bytes::from("a"),
                reads: 8,
                bytes: 24
            }
        );
        assert_eq!(
            top[1],
            HotKey {
                key: Bytes::from("b"),
                reads: 8,
                bytes: 0
            }
        );
        assert_eq!(bulk_len(b"$1234\r\n"), 1234);
        assert_eq!(bulk_len(b"$-1\r\n"), 0);
    }
}
