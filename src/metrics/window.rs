//! The recent-latency window behind `keygate_command_duration_window_seconds`
//! and `KEYGATE LATENCY`: a ring of per-interval histograms.
//!
//! Invariants: a slot holds only samples handed over during its interval
//! (interval number = seconds since the registry started / [`SLOT_SECONDS`]);
//! a slot from an older lap of the ring is cleared before reuse and ignored
//! when read, so a read covers the current interval and the
//! [`SLOTS`]` - 1` before it: between 50 and 60 seconds of samples. Slots are
//! allocated only when an interval has samples.

use hdrhistogram::Histogram;

use super::histogram::new_histogram;

/// Seconds per slot.
pub const SLOT_SECONDS: u64 = 10;
/// Slots in the ring; the window is `SLOTS * SLOT_SECONDS` seconds.
pub const SLOTS: usize = 6;

/// One series' recent samples.
#[derive(Debug, Default)]
pub struct Window {
    slots: [Option<(u64, Box<Histogram<u32>>)>; SLOTS],
}

impl Window {
    /// Adds samples handed over during interval `interval`.
    pub fn add(&mut self, interval: u64, samples: &Histogram<u32>) {
        let index = (interval % SLOTS as u64) as usize;
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        match slot {
            Some((at, h)) if *at == interval => {
                let _ = h.add(samples);
            }
            Some((at, h)) => {
                h.reset();
                *at = interval;
                let _ = h.add(samples);
            }
            None => {
                let mut h = Box::new(new_histogram::<u32>());
                let _ = h.add(samples);
                *slot = Some((interval, h));
            }
        }
    }

    /// Every sample of the window that ends in interval `now`; `None` when empty.
    pub fn merged(&self, now: u64) -> Option<Histogram<u32>> {
        let mut out: Option<Histogram<u32>> = None;
        for (at, h) in self.slots.iter().flatten() {
            if *at <= now && now - *at < SLOTS as u64 && !h.is_empty() {
                match out.as_mut() {
                    Some(o) => {
                        let _ = o.add(&**h);
                    }
                    None => out = Some((**h).clone()),
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::histogram::record;

    fn samples(values: &[u64]) -> Histogram<u32> {
        let mut h = new_histogram::<u32>();
        for &v in values {
            record(&mut h, v);
        }
        h
    }

    #[test]
    fn quantiles_cover_only_recent_intervals() {
        let mut w = Window::default();
        // 1000 samples of 1..=1000 µs in interval 0.
        let values: Vec<u64> = (1..=1000).collect();
        w.add(0, &samples(&values));
        let h = w.merged(0).unwrap();
        assert_eq!(h.len(), 1000);
        // Within the histogram's precision (2 significant figures: < 1%).
        let near = |got: u64, want: u64| got.abs_diff(want) * 100 <= want;
        assert!(near(h.value_at_quantile(0.5), 500));
        assert!(near(h.value_at_quantile(0.9), 900));
        assert!(near(h.value_at_quantile(0.99), 990));
        assert!(near(h.value_at_quantile(0.999), 999));
        assert!(near(h.max(), 1000));

        // A slow sample later in the window is included...
        w.add(5, &samples(&[50_000]));
        let h = w.merged(5).unwrap();
        assert_eq!(h.len(), 1001);
        assert!(h.max() >= 50_000);
        // ...interval 0 has left the window by interval 6.
        let h = w.merged(6).unwrap();
        assert_eq!(h.len(), 1);
        // The ring reuses slot 0 for interval 6 without old samples.
        w.add(6, &samples(&[7]));
        assert_eq!(w.merged(6).unwrap().len(), 2);
        assert!(w.merged(20).is_none());
    }
}
