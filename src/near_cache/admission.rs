//! Admission: how often each key was read lately (TinyLFU's two parts).
//!
//! - A **doorkeeper**, a Bloom filter: a key's first read in a period only
//!   sets its bits. A uniform random stream of keys is mostly first reads,
//!   so it touches one cache line per read and leaves the counters alone.
//! - A **count-min sketch** of the reads after the first: a key's estimate
//!   is its doorkeeper bit plus its counters' minimum.
//!
//! A key is filled once its estimate reaches the cache's threshold (two
//! reads, [`super::NearCache`] raises it while fills do not pay), and a
//! full cache takes a new entry only in place of one read less often.
//!
//! Every `period` reads (four times the entries the cache is sized for)
//! the doorkeeper is cleared and the counters are halved, so yesterday's
//! hot keys fade. The period is long enough that a key of a Zipf
//! workload's tail, read every few seconds, is still known at its second
//! read; the doorkeeper has eight bits per read of a period, so a key
//! never read before looks read before about once in a hundred reads at
//! worst.
//!
//! Both are blocked: a key's doorkeeper bits lie in one 64-byte line, and
//! its four counters (one per row) in another, as Caffeine's frequency
//! sketch does. Counters are bytes in 64-bit words, updated with relaxed
//! loads and stores: a lost increment under contention only makes an
//! estimate a little low, and halving is one shift per word.

use std::sync::atomic::{AtomicU64, Ordering};

/// Rows of the sketch (independent hash functions).
const ROWS: usize = 4;
/// Counters saturate here.
const MAX_COUNT: u8 = 15;
/// Words of a block: one 64-byte cache line.
const BLOCK_WORDS: usize = 8;
/// Counters (bytes) of one row in a block.
const ROW_SPAN: u64 = (BLOCK_WORDS * 8 / ROWS) as u64;
/// Bits a key sets in the doorkeeper.
const DOOR_BITS: usize = 4;
/// Doorkeeper bits per read of a period.
const DOOR_BITS_PER_READ: usize = 8;
/// Each byte of a word halved.
const HALF_MASK: u64 = 0x7F7F_7F7F_7F7F_7F7F;

const SEEDS: [u64; ROWS] = [
    0x9E37_79B9_7F4A_7C15,
    0xC2B2_AE3D_27D4_EB4F,
    0x1656_67B1_9E37_79F9,
    0x27D4_EB2F_1656_67C5,
];

/// A read recorded in the sketch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recorded {
    /// How often the key was read lately, this read included.
    pub(crate) estimate: u8,
    /// This read ended an eighth of a period: time for the cache to review
    /// its admission threshold.
    pub(crate) review: bool,
}

/// A doorkeeper and a count-min sketch over key hashes.
#[derive(Debug)]
pub(crate) struct Sketch {
    door: Box<[AtomicU64]>,
    /// Doorkeeper blocks, less one (a power of two).
    door_mask: u64,
    counters: Box<[AtomicU64]>,
    /// Counter blocks, less one (a power of two).
    block_mask: u64,
    /// Reads recorded since the last halving.
    reads: AtomicU64,
    /// Reads between halvings.
    period: u64,
}

fn zeroed(words: usize) -> Box<[AtomicU64]> {
    (0..words).map(|_| AtomicU64::new(0)).collect()
}

impl Sketch {
    /// A sketch for a cache of about `entries` keys.
    pub(crate) fn new(entries: usize) -> Sketch {
        let entries = entries.clamp(1024, 1 << 22).next_power_of_two();
        let period = 4 * entries;
        let door_blocks = (period * DOOR_BITS_PER_READ / 512).max(1);
        // A row as wide as the entries: the counters only see keys read
        // twice within a period.
        let counter_blocks = entries * ROWS / (BLOCK_WORDS * 8);
        Sketch {
            door: zeroed(door_blocks * BLOCK_WORDS),
            door_mask: door_blocks as u64 - 1,
            counters: zeroed(counter_blocks * BLOCK_WORDS),
            block_mask: counter_blocks as u64 - 1,
            reads: AtomicU64::new(0),
            period: period as u64,
        }
    }

    /// The key's doorkeeper bits: (word, mask) each.
    fn door_bits(&self, hash: u64) -> [(usize, u64); DOOR_BITS] {
        // Bits other than those that choose the counter block.
        let block = (hash.rotate_right(24) & self.door_mask) as usize * BLOCK_WORDS;
        let mut out = [(0, 0); DOOR_BITS];
        for (i, bit) in out.iter_mut().enumerate() {
            let b = hash.wrapping_mul(SEEDS[i] ^ 0x5555_5555_5555_5555) >> 55;
            *bit = (block + (b / 64) as usize, 1 << (b % 64));
        }
        out
    }

    /// The first words of the key's doorkeeper line and counter line, for
    /// a prefetch.
    pub(crate) fn lines(&self, hash: u64) -> [Option<&AtomicU64>; 2] {
        let door = (hash.rotate_right(24) & self.door_mask) as usize * BLOCK_WORDS;
        let counters = (hash & self.block_mask) as usize * BLOCK_WORDS;
        [self.door.get(door), self.counters.get(counters)]
    }

    fn in_door(&self, bits: &[(usize, u64); DOOR_BITS]) -> bool {
        bits.iter().all(|&(w, m)| {
            self.door
                .get(w)
                .is_some_and(|x| x.load(Ordering::Relaxed) & m != 0)
        })
    }

    /// The key's counters: (word, shift) each.
    fn slots(&self, hash: u64) -> [(usize, u32); ROWS] {
        let block = (hash & self.block_mask) as usize * BLOCK_WORDS;
        let mut out = [(0, 0); ROWS];
        for (row, slot) in out.iter_mut().enumerate() {
            let at = row as u64 * ROW_SPAN + (hash.wrapping_mul(SEEDS[row]) >> 60) % ROW_SPAN;
            *slot = (block + (at / 8) as usize, (at % 8) as u32 * 8);
        }
        out
    }

    fn min_of(&self, slots: &[(usize, u32); ROWS]) -> u8 {
        slots
            .iter()
            .map(|&(w, shift)| {
                self.counters
                    .get(w)
                    .map_or(0, |c| (c.load(Ordering::Relaxed) >> shift) as u8)
            })
            .min()
            .unwrap_or(0)
    }

    /// How often the key was read lately (an over-estimate at worst).
    pub(crate) fn estimate(&self, hash: u64) -> u8 {
        if !self.in_door(&self.door_bits(hash)) {
            return 0;
        }
        1 + self.min_of(&self.slots(hash))
    }

    /// Whether the key's first read in this period was recorded already:
    /// one load of its doorkeeper line, taken apart from [`Self::record`]
    /// so that a caller can have it in flight beside another lookup.
    pub(crate) fn seen(&self, hash: u64) -> bool {
        self.in_door(&self.door_bits(hash))
    }

    /// Records one read of the key; `seen` is [`Self::seen`] for it.
    pub(crate) fn record(&self, hash: u64, seen: bool) -> Recorded {
        let estimate = if seen {
            let slots = self.slots(hash);
            let now = self.min_of(&slots);
            if now < MAX_COUNT - 1 {
                // Conservative update: only the counters at the minimum grow.
                for &(w, shift) in &slots {
                    if let Some(c) = self.counters.get(w) {
                        let word = c.load(Ordering::Relaxed);
                        if (word >> shift) as u8 == now {
                            c.store(word + (1 << shift), Ordering::Relaxed);
                        }
                    }
                }
            }
            (now + 2).min(MAX_COUNT)
        } else {
            for &(w, m) in &self.door_bits(hash) {
                if let Some(x) = self.door.get(w) {
                    x.fetch_or(m, Ordering::Relaxed);
                }
            }
            1
        };
        let reads = self.reads.fetch_add(1, Ordering::Relaxed) + 1;
        let new_period = reads >= self.period;
        if new_period {
            self.reads.store(0, Ordering::Relaxed);
            for x in self.door.iter() {
                x.store(0, Ordering::Relaxed);
            }
            for c in self.counters.iter() {
                c.store(
                    (c.load(Ordering::Relaxed) >> 1) & HALF_MASK,
                    Ordering::Relaxed,
                );
            }
        }
        Recorded {
            estimate,
            review: new_period || reads % (self.period / 8) == 0,
        }
    }

    /// Reads between halvings.
    #[cfg(test)]
    pub(crate) fn period(&self) -> u64 {
        self.period
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Sketch {
        fn read(&self, hash: u64) -> Recorded {
            self.record(hash, self.seen(hash))
        }
    }

    fn xorshift(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    #[test]
    fn a_key_read_again_counts_more_than_a_key_read_once() {
        let sketch = Sketch::new(1000);
        assert_eq!(sketch.read(42).estimate, 1);
        assert_eq!(sketch.read(42).estimate, 2);
        assert_eq!(sketch.read(42).estimate, 3);
        assert_eq!(sketch.estimate(42), 3);
        assert_eq!(sketch.estimate(43), 0);
    }

    #[test]
    fn counts_saturate() {
        let sketch = Sketch::new(1000);
        for _ in 0..100 {
            sketch.read(9);
        }
        assert_eq!(sketch.estimate(9), MAX_COUNT);
    }

    /// Keys read once, as many as a period holds, rarely look "read
    /// again" (what keeps a uniform stream from churning the cache beyond
    /// that is the victim comparison in [`super::super::store`] and the
    /// threshold in [`super::super::NearCache`]).
    #[test]
    fn a_uniform_stream_seldom_looks_repeated() {
        let sketch = Sketch::new(1000);
        let mut x = 0x1234_5678_9abc_def0u64;
        let mut repeated = 0;
        let reads = sketch.period() - 1;
        for _ in 0..reads {
            if sketch.read(xorshift(&mut x)).estimate >= 2 {
                repeated += 1;
            }
        }
        assert!(repeated < reads / 100, "{repeated} of {reads}");
    }

    /// A long stream of keys read once (many periods, as uniform reads
    /// over millions of keys are) keeps looking new.
    #[test]
    fn a_long_uniform_stream_keeps_looking_new() {
        let sketch = Sketch::new(1000);
        let reads = 50 * sketch.period();
        let mut x = 0x0fed_cba9_8765_4321u64;
        let mut repeated = 0;
        for _ in 0..reads {
            if sketch.read(xorshift(&mut x)).estimate >= 2 {
                repeated += 1;
            }
        }
        assert!(repeated < reads / 100, "{repeated} of {reads}");
    }

    /// A key read again after many other keys (a Zipf tail's key, read
    /// every few seconds) is still known within a period.
    #[test]
    fn a_key_read_again_late_in_a_period_is_known() {
        let sketch = Sketch::new(1000);
        let mut x = 0x0bad_cafe_dead_beefu64;
        sketch.read(7);
        for _ in 0..sketch.period() / 2 {
            sketch.read(xorshift(&mut x));
        }
        assert!(sketch.read(7).estimate >= 2);
    }

    #[test]
    fn counts_fade_by_halving() {
        let sketch = Sketch::new(1);
        for _ in 0..12 {
            sketch.read(7);
        }
        assert!(sketch.estimate(7) >= 12);
        let mut reviews = 0;
        for i in 0..sketch.period() {
            if sketch.read(1_000_000 + i).review {
                reviews += 1;
            }
        }
        assert_eq!(reviews, 8);
        // The doorkeeper forgot it, and its counters were halved.
        assert_eq!(sketch.estimate(7), 0);
        assert!(sketch.read(7).estimate == 1);
        assert!(sketch.read(7).estimate <= 8, "{}", sketch.estimate(7));
    }
}
