//! The near cache's Prometheus series, per service, rendered when metrics
//! are scraped from the caches' own counters (nothing on the data path).

use std::fmt::Write;

use super::{Evicted, NearCache};
use crate::metrics::prometheus::labels_into;

/// Appends one sample: `name{labels} value`.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    out.push_str(name);
    labels_into(out, labels);
    let _ = writeln!(out, " {value}");
}

/// Appends every near-cache series for `caches` (service name, cache).
pub fn render(caches: &[(&str, &NearCache)], out: &mut String) {
    if caches.is_empty() {
        return;
    }
    let counter = |out: &mut String, name: &str, help: &str, value: &dyn Fn(&NearCache) -> u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (service, cache) in caches {
            sample(out, name, &[("service", service)], value(cache));
        }
    };
    counter(
        out,
        "keygate_near_cache_hits_total",
        "Reads answered from the near cache.",
        &|c| c.counters.hits.load(std::sync::atomic::Ordering::Relaxed),
    );
    counter(
        out,
        "keygate_near_cache_misses_total",
        "Cacheable reads the near cache did not hold.",
        &|c| c.counters.misses.load(std::sync::atomic::Ordering::Relaxed),
    );
    let name = "keygate_near_cache_evictions_total";
    let _ = writeln!(
        out,
        "# HELP {name} Entries that left the near cache, by reason.\n# TYPE {name} counter"
    );
    for (service, cache) in caches {
        for reason in Evicted::ALL {
            let labels = [("service", *service), ("reason", reason.label())];
            sample(out, name, &labels, cache.counters.evictions(reason));
        }
    }
    for (name, help, bytes) in [
        (
            "keygate_near_cache_bytes",
            "Bytes charged to the near cache's budget (keys, values, per-entry overhead).",
            true,
        ),
        (
            "keygate_near_cache_entries",
            "Entries in the near cache.",
            false,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (service, cache) in caches {
            let v = if bytes {
                cache.bytes()
            } else {
                cache.entries()
            };
            sample(out, name, &[("service", service)], v);
        }
    }
    let name = "keygate_near_cache_admit_after_reads";
    let _ = writeln!(
        out,
        "# HELP {name} Reads of a key before the near cache keeps it (raised while fills do not pay).\n# TYPE {name} gauge"
    );
    for (service, cache) in caches {
        sample(out, name, &[("service", service)], cache.admit_after());
    }
}
