//! Latency histograms: the one HDR configuration every latency series uses,
//! the fixed Prometheus bucket bounds, and conversion between the two.
//!
//! Invariants: every histogram is built by [`new_histogram`], so any two can
//! be added bucket for bucket; values are microseconds, clamped to
//! [`HIGHEST_MICROS`] (60 s) so a never-ending blocking command cannot make a
//! record fail.

use hdrhistogram::{Counter, Histogram};

/// Longest latency a histogram tells apart: 60 s (blocking commands).
pub const HIGHEST_MICROS: u64 = 60_000_000;
/// Significant figures kept: 2 gives under 1% relative error at about
/// 10 KiB (`u32` counts) per histogram.
const SIGNIFICANT_FIGURES: u8 = 2;

/// Prometheus `le` bounds in seconds, as printed, with the same bound in
/// microseconds; `+Inf` follows them.
pub const BUCKET_BOUNDS: [(&str, u64); 18] = [
    ("0.0001", 100),
    ("0.00025", 250),
    ("0.0005", 500),
    ("0.001", 1_000),
    ("0.0025", 2_500),
    ("0.005", 5_000),
    ("0.01", 10_000),
    ("0.025", 25_000),
    ("0.05", 50_000),
    ("0.1", 100_000),
    ("0.25", 250_000),
    ("0.5", 500_000),
    ("1", 1_000_000),
    ("2.5", 2_500_000),
    ("5", 5_000_000),
    ("10", 10_000_000),
    ("30", 30_000_000),
    ("60", 60_000_000),
];

/// An empty latency histogram in microseconds, 1 µs to 60 s.
pub fn new_histogram<T: Counter>() -> Histogram<T> {
    // Constant, valid bounds: creation cannot fail.
    Histogram::new_with_bounds(1, HIGHEST_MICROS, SIGNIFICANT_FIGURES)
        .expect("constant histogram bounds are valid")
}

/// A duration in whole microseconds, saturating.
pub fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Records `value` microseconds, clamped into the trackable range.
pub fn record<T: Counter>(h: &mut Histogram<T>, value: u64) {
    h.saturating_record(value.min(HIGHEST_MICROS));
}

/// Records `value` `count` times in one update (commands that share one
/// latency), saturating like [`record`].
pub fn record_n<T: Counter>(h: &mut Histogram<T>, value: u64, count: u64) {
    let value = value.min(HIGHEST_MICROS);
    match T::from_u64(count) {
        Some(n) => h.saturating_record_n(value, n),
        // More than the counter type holds (never for one slot's commands).
        None => (0..count).for_each(|_| h.saturating_record(value)),
    }
}

/// Adds a `u32`-count histogram into a `u64` one (the registry's totals).
pub fn add_widening(dst: &mut Histogram<u64>, src: &Histogram<u32>) {
    for v in src.iter_recorded() {
        // Same configuration: the highest equivalent value lands in the same bucket.
        let _ = dst.record_n(v.value_iterated_to(), u64::from(v.count_at_value()));
    }
}

/// Cumulative counts at each of [`BUCKET_BOUNDS`]; `+Inf` is `h.len()`.
///
/// An HDR bucket counts below a bound when its lowest equivalent value is at
/// or under the bound, so a bound is exact to the histogram's precision (<1%).
pub fn cumulative_buckets<T: Counter>(h: &Histogram<T>) -> [u64; BUCKET_BOUNDS.len()] {
    let mut out = [0u64; BUCKET_BOUNDS.len()];
    let mut counts = [0u64; BUCKET_BOUNDS.len() + 1];
    for v in h.iter_recorded() {
        let low = h.lowest_equivalent(v.value_iterated_to());
        let slot = BUCKET_BOUNDS
            .iter()
            .position(|&(_, bound)| low <= bound)
            .unwrap_or(BUCKET_BOUNDS.len());
        if let Some(c) = counts.get_mut(slot) {
            *c += v.count_at_value().as_u64();
        }
    }
    let mut running = 0;
    for (o, c) in out.iter_mut().zip(counts.iter()) {
        running += c;
        *o = running;
    }
    out
}

/// The value at `quantile` in seconds; `quantile >= 1` is the maximum.
pub fn quantile_seconds<T: Counter>(h: &Histogram<T>, quantile: f64) -> f64 {
    let micros = if quantile >= 1.0 {
        h.max()
    } else {
        h.value_at_quantile(quantile)
    };
    micros as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_n_is_n_records_in_one() {
        let (mut one_by_one, mut at_once) = (new_histogram::<u32>(), new_histogram::<u32>());
        for _ in 0..16 {
            record(&mut one_by_one, 250);
        }
        record_n(&mut at_once, 250, 16);
        record_n(&mut at_once, u64::MAX, 1);
        record(&mut one_by_one, u64::MAX);
        assert_eq!(one_by_one, at_once);
        assert_eq!(at_once.len(), 17);
    }

    #[test]
    fn buckets_are_cumulative_and_cover_everything() {
        let mut h = new_histogram::<u64>();
        for v in [50, 100, 101, 900, 1_000, 30_000, 59_000_000, 90_000_000] {
            record(&mut h, v);
        }
        let b = cumulative_buckets(&h);
        assert_eq!(b[0], 2, "50 and 100 µs are <= 0.0001 s");
        assert_eq!(b[3], 5, "up to 1 ms");
        assert_eq!(b[7], 5, "up to 25 ms");
        assert_eq!(b[8], 6, "up to 50 ms");
        assert_eq!(
            *b.last().unwrap(),
            h.len(),
            "60 s bound holds the clamped 90 s"
        );
        assert!(b.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn widening_add_keeps_counts_and_values() {
        let mut small = new_histogram::<u32>();
        for v in [10, 200, 3_000, 40_000] {
            record(&mut small, v);
        }
        let mut big = new_histogram::<u64>();
        add_widening(&mut big, &small);
        assert_eq!(big.len(), 4);
        assert_eq!(big.max(), small.max());
        assert_eq!(cumulative_buckets(&big), cumulative_buckets(&small));
    }
}
