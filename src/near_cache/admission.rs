//! Admission: a count-min sketch of how often each key was read lately.
//!
//! A key is filled only once the sketch says it was read before (a
//! uniform random stream of keys seldom is, so it does not churn the
//! cache), and a full cache takes a new entry only in place of one read
//! less often (TinyLFU). Counters are 4-bit-ish saturating bytes, halved
//! every `width / 4` reads: yesterday's hot keys fade, and a stream of keys
//! read once never fills the counters enough that a new key looks read
//! before (at a quarter of a read per counter, all four rows collide for
//! about one key in a thousand; at ten, the old period, for nearly all).
//!
//! A key's four counters (one per row) lie in one 64-byte block chosen by
//! its hash, each row a 16-counter quarter of it, so a lookup touches one
//! cache line instead of four (a blocked count-min sketch, as Caffeine's
//! frequency sketch is). Counters are atomics updated with relaxed loads
//! and stores: a lost increment under contention only makes the estimate
//! a little low.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// Rows of the sketch (independent hash functions).
const ROWS: usize = 4;
/// Counters saturate here.
const MAX_COUNT: u8 = 15;
/// Counters per block: a cache line, a quarter per row.
const BLOCK: usize = 64;
/// Counters of one row in a block.
const ROW_SPAN: usize = BLOCK / ROWS;

/// A count-min sketch over key hashes.
#[derive(Debug)]
pub(crate) struct Sketch {
    counters: Box<[AtomicU8]>,
    /// Blocks of [`BLOCK`] counters, less one (a power of two).
    block_mask: u64,
    /// Reads recorded since the last halving.
    reads: AtomicU64,
    /// Reads between halvings.
    period: u64,
}

impl Sketch {
    /// A sketch sized for about `entries` cached keys.
    pub(crate) fn new(entries: usize) -> Sketch {
        let width = (entries.saturating_mul(8))
            .clamp(1024, 1 << 21)
            .next_power_of_two();
        Sketch {
            counters: (0..width * ROWS).map(|_| AtomicU8::new(0)).collect(),
            block_mask: (width * ROWS / BLOCK) as u64 - 1,
            reads: AtomicU64::new(0),
            period: width as u64 / 4,
        }
    }

    fn slots(&self, hash: u64) -> [usize; ROWS] {
        const SEEDS: [u64; ROWS] = [
            0x9E37_79B9_7F4A_7C15,
            0xC2B2_AE3D_27D4_EB4F,
            0x1656_67B1_9E37_79F9,
            0x27D4_EB2F_1656_67C5,
        ];
        // The block from the hash's low bits; each row's counter in it
        // from the top bits of the hash through the row's odd multiplier.
        let block = (hash & self.block_mask) as usize * BLOCK;
        let mut out = [0; ROWS];
        for (row, slot) in out.iter_mut().enumerate() {
            let h = hash.wrapping_mul(SEEDS[row]) >> 60;
            *slot = block + row * ROW_SPAN + h as usize % ROW_SPAN;
        }
        out
    }

    /// How often the key was read lately (an over-estimate at worst).
    pub(crate) fn estimate(&self, hash: u64) -> u8 {
        self.min_of(&self.slots(hash))
    }

    fn min_of(&self, slots: &[usize; ROWS]) -> u8 {
        slots
            .iter()
            .map(|&i| {
                self.counters
                    .get(i)
                    .map_or(0, |c| c.load(Ordering::Relaxed))
            })
            .min()
            .unwrap_or(0)
    }

    /// Records one read of the key and returns its estimate, this read included.
    pub(crate) fn record(&self, hash: u64) -> u8 {
        let slots = self.slots(hash);
        let now = self.min_of(&slots);
        if now < MAX_COUNT {
            // Conservative update: only the counters at the minimum grow.
            for &i in &slots {
                if let Some(c) = self.counters.get(i) {
                    if c.load(Ordering::Relaxed) == now {
                        c.store(now + 1, Ordering::Relaxed);
                    }
                }
            }
        }
        if self.reads.fetch_add(1, Ordering::Relaxed) + 1 >= self.period {
            self.reads.store(0, Ordering::Relaxed);
            for c in self.counters.iter() {
                c.store(c.load(Ordering::Relaxed) / 2, Ordering::Relaxed);
            }
        }
        now.saturating_add(1).min(MAX_COUNT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_read_again_counts_more_than_a_key_read_once() {
        let sketch = Sketch::new(1000);
        assert_eq!(sketch.record(42), 1);
        assert_eq!(sketch.record(42), 2);
        assert_eq!(sketch.estimate(42), 2);
        assert_eq!(sketch.estimate(43), 0);
    }

    /// Keys read once, as many as the sketch is sized for, rarely look
    /// "read again" (what keeps a uniform stream from churning the cache
    /// beyond that is the victim comparison in [`super::super::store`]).
    #[test]
    fn a_uniform_stream_seldom_looks_repeated() {
        let sketch = Sketch::new(1000);
        let mut x = 0x1234_5678_9abc_def0u64;
        let mut repeated = 0;
        for _ in 0..1000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if sketch.record(x) >= 2 {
                repeated += 1;
            }
        }
        assert!(repeated < 1000 / 20, "{repeated}");
    }

    /// A long stream of keys read once (many times the sketch's width, as
    /// uniform reads over millions of keys are) keeps looking new.
    #[test]
    fn a_long_uniform_stream_keeps_looking_new() {
        let sketch = Sketch::new(1000);
        // 200 times the width (the period is a quarter of it).
        let reads = 800 * sketch.period;
        let mut x = 0x0fed_cba9_8765_4321u64;
        let mut repeated = 0;
        for _ in 0..reads {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if sketch.record(x) >= 2 {
                repeated += 1;
            }
        }
        assert!(repeated < reads / 100, "{repeated} of {reads}");
    }

    #[test]
    fn counts_fade_by_halving() {
        let sketch = Sketch::new(1);
        for _ in 0..10 {
            sketch.record(7);
        }
        assert!(sketch.estimate(7) >= 10);
        for i in 0..sketch.period {
            sketch.record(1_000_000 + i);
        }
        assert!(sketch.estimate(7) <= 5, "{}", sketch.estimate(7));
    }
}
