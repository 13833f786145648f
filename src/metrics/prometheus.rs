//! The Prometheus text exposition (format 0.0.4) of the registry.
//!
//! Invariants: every family has one `# HELP` and one `# TYPE` line before its
//! samples; label values are escaped (`\\`, `\"`, `\n`); histogram buckets
//! are cumulative, end in `le="+Inf"` equal to `_count`, and `_sum` is the
//! exact sum in seconds.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use super::histogram::{cumulative_buckets, quantile_seconds, BUCKET_BOUNDS};
use super::registry::{Latency, Registry, Series};
use super::{ErrorKind, Metrics, Role, ServiceCounters, AUTH_FAILURE_REASONS};

/// A gauge the registry cannot know, supplied by the server at scrape time.
#[derive(Debug, Clone, PartialEq)]
pub struct Gauge {
    /// Metric name, e.g. `keygate_backend_connections`.
    pub name: &'static str,
    /// The `# HELP` text (the first gauge of a name supplies it).
    pub help: &'static str,
    /// Label names and values.
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: f64,
}

/// Quantiles of the window gauges, as label value and quantile (1 = max).
const WINDOW_QUANTILES: [(&str, f64); 5] = [
    ("0.5", 0.5),
    ("0.9", 0.9),
    ("0.99", 0.99),
    ("0.999", 0.999),
    ("1", 1.0),
];

/// A counter family read from each (service, command) series: name, help, value.
type SeriesCounter = (&'static str, &'static str, fn(&Series) -> u64);
/// A counter family read from each service's counters: name, help, value.
type ServiceCounter = (&'static str, &'static str, fn(&ServiceCounters) -> u64);

/// Appends `value` escaped for a label value.
fn escape_into(out: &mut String, value: &str) {
    for ch in value.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Appends `{a="x",b="y"}` (nothing for no labels).
pub(crate) fn labels_into(out: &mut String, labels: &[(&str, &str)]) {
    if labels.is_empty() {
        return;
    }
    out.push('{');
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        escape_into(out, value);
        out.push('"');
    }
    out.push('}');
}

/// Appends one family's HELP and TYPE lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
}

/// Appends one sample line.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    out.push_str(name);
    labels_into(out, labels);
    let _ = writeln!(out, " {value}");
}

/// Appends a histogram's `_bucket`, `_sum` and `_count` lines.
fn histogram(out: &mut String, name: &str, labels: &[(&str, &str)], latency: &Latency<u64>) {
    let buckets = cumulative_buckets(&latency.histogram);
    let bucket_name = format!("{name}_bucket");
    let mut with_le: Vec<(&str, &str)> = labels.to_vec();
    for ((le, _), count) in BUCKET_BOUNDS.iter().zip(buckets) {
        with_le.push(("le", le));
        sample(out, &bucket_name, &with_le, count);
        with_le.pop();
    }
    with_le.push(("le", "+Inf"));
    sample(out, &bucket_name, &with_le, latency.histogram.len());
    sample(
        out,
        &format!("{name}_sum"),
        labels,
        latency.sum_micros as f64 / 1e6,
    );
    sample(
        out,
        &format!("{name}_count"),
        labels,
        latency.histogram.len(),
    );
}

/// Renders every metric of `m` from `reg`, then `extra`.
/// Backend times recorded by cluster node are labelled `node` with
/// `nodes[index]` (a node without an address there is left out).
pub(super) fn render(m: &Metrics, reg: &Registry, extra: &[Gauge], nodes: &[String]) -> String {
    let mut out = String::with_capacity(4096 + reg.series.len() * 4096);
    let series = || {
        reg.series
            .iter()
            .map(|((slot, cmd), s)| (m.service_label(*slot), *cmd, s))
    };

    family(
        &mut out,
        "keygate_command_duration_seconds",
        "histogram",
        "Time from reading a request to writing its reply.",
    );
    for (service, command, s) in series() {
        for role in Role::ALL {
            if let Some(Some(r)) = s.roles.get(role.index()) {
                let labels = [
                    ("service", service),
                    ("command", command),
                    ("role", role.label()),
                ];
                histogram(
                    &mut out,
                    "keygate_command_duration_seconds",
                    &labels,
                    &r.total,
                );
            }
        }
    }

    family(
        &mut out,
        "keygate_backend_duration_seconds",
        "histogram",
        "Time from writing a command to a backend to its reply arriving (commands a backend answered).",
    );
    for (service, command, s) in series() {
        for role in Role::ALL {
            let Some(Some(r)) = s.roles.get(role.index()) else {
                continue;
            };
            let labels = [
                ("service", service),
                ("command", command),
                ("role", role.label()),
            ];
            if !r.backend.histogram.is_empty() {
                histogram(
                    &mut out,
                    "keygate_backend_duration_seconds",
                    &labels,
                    &r.backend,
                );
            }
            for (index, latency) in &r.nodes {
                let Some(node) = nodes.get(usize::from(*index)) else {
                    continue;
                };
                let [service, command, role] = labels;
                let labels = [service, command, role, ("node", node.as_str())];
                histogram(
                    &mut out,
                    "keygate_backend_duration_seconds",
                    &labels,
                    latency,
                );
            }
        }
    }

    family(
        &mut out,
        "keygate_command_duration_window_seconds",
        "gauge",
        "Command duration quantiles over the last 50 to 60 seconds (quantile 1 is the maximum).",
    );
    let now = reg.interval(std::time::Instant::now());
    for (service, command, s) in series() {
        for role in Role::ALL {
            let Some(Some(r)) = s.roles.get(role.index()) else {
                continue;
            };
            let Some(h) = r.window.merged(now) else {
                continue;
            };
            for (label, q) in WINDOW_QUANTILES {
                let labels = [
                    ("service", service),
                    ("command", command),
                    ("role", role.label()),
                    ("quantile", label),
                ];
                sample(
                    &mut out,
                    "keygate_command_duration_window_seconds",
                    &labels,
                    quantile_seconds(&h, q),
                );
            }
        }
    }

    let counters: [SeriesCounter; 3] = [
        (
            "keygate_commands_total",
            "Commands completed, refused ones included.",
            |s| s.commands,
        ),
        (
            "keygate_cache_hits_total",
            "Cache hits of read commands (per key for MGET and HMGET).",
            |s| s.hits,
        ),
        (
            "keygate_cache_misses_total",
            "Cache misses of read commands (per key for MGET and HMGET).",
            |s| s.misses,
        ),
    ];
    for (name, help, value) in counters {
        family(&mut out, name, "counter", help);
        for (service, command, s) in series() {
            let v = value(s);
            if v > 0 || name == "keygate_commands_total" {
                sample(
                    &mut out,
                    name,
                    &[("service", service), ("command", command)],
                    v,
                );
            }
        }
    }

    family(
        &mut out,
        "keygate_command_errors_total",
        "counter",
        "Failed commands by kind: client, policy, backend, timeout.",
    );
    for (service, command, s) in series() {
        for kind in ErrorKind::ALL {
            let n = s.errors.get(kind.index()).copied().unwrap_or(0);
            if n > 0 {
                let labels = [
                    ("service", service),
                    ("command", command),
                    ("kind", kind.label()),
                ];
                sample(&mut out, "keygate_command_errors_total", &labels, n);
            }
        }
    }

    family(
        &mut out,
        "keygate_client_connections",
        "gauge",
        "Client connections by service (- for not logged in).",
    );
    for (slot, c) in m.per_service.iter().enumerate() {
        if !m.is_labelled(slot) {
            continue;
        }
        let labels = [("service", m.service_label(slot))];
        sample(
            &mut out,
            "keygate_client_connections",
            &labels,
            c.connections.load(Ordering::Relaxed),
        );
    }

    let per_service: [ServiceCounter; 5] = [
        (
            "keygate_ttl_clamped_total",
            "TTLs above max_ttl lowered to max_ttl.",
            |c| c.ttl_clamped.load(Ordering::Relaxed),
        ),
        (
            "keygate_ttl_refused_total",
            "Commands refused for a TTL above max_ttl.",
            |c| c.ttl_refused.load(Ordering::Relaxed),
        ),
        (
            "keygate_isolation_refusals_total",
            "Commands refused because they cannot be confined to the service's namespace.",
            |c| c.isolation_refused.load(Ordering::Relaxed),
        ),
        (
            "keygate_dedicated_refusals_total",
            "Dedicated connections refused because the service held its max_dedicated.",
            |c| c.dedicated_refused.load(Ordering::Relaxed),
        ),
        (
            "keygate_dedicated_idle_closed_total",
            "Clients closed for holding a dedicated connection idle for dedicated_idle_timeout.",
            |c| c.dedicated_idle_closed.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, value) in per_service {
        family(&mut out, name, "counter", help);
        for (slot, c) in m.per_service.iter().enumerate() {
            if !m.is_labelled(slot) {
                continue;
            }
            sample(
                &mut out,
                name,
                &[("service", m.service_label(slot))],
                value(c),
            );
        }
    }

    family(
        &mut out,
        "keygate_auth_failures_total",
        "counter",
        "Failed AUTH and HELLO AUTH attempts, by reason.",
    );
    for (reason, counter) in AUTH_FAILURE_REASONS.iter().zip(&m.auth_failures) {
        sample(
            &mut out,
            "keygate_auth_failures_total",
            &[("reason", reason)],
            counter.load(Ordering::Relaxed),
        );
    }
    let globals: [(&str, &str, &str, f64); 4] = [
        (
            "keygate_client_bytes_received_total",
            "counter",
            "Bytes read from clients.",
            m.bytes_received.load(Ordering::Relaxed) as f64,
        ),
        (
            "keygate_client_bytes_sent_total",
            "counter",
            "Bytes written to clients.",
            m.bytes_sent.load(Ordering::Relaxed) as f64,
        ),
        (
            "keygate_config_reload_failures_total",
            "counter",
            "Configuration reloads that failed.",
            m.config_reload_failures.load(Ordering::Relaxed) as f64,
        ),
        (
            "keygate_uptime_seconds",
            "gauge",
            "Seconds since keygate started.",
            m.started.elapsed().as_secs_f64(),
        ),
    ];
    for (name, kind, help, value) in globals {
        family(&mut out, name, kind, help);
        sample(&mut out, name, &[], value);
    }

    let mut announced: Vec<&str> = Vec::new();
    for g in extra {
        if !announced.contains(&g.name) {
            announced.push(g.name);
            family(&mut out, g.name, "gauge", g.help);
            // Keep a family's samples together, as the format requires.
            for same in extra.iter().filter(|x| x.name == g.name) {
                let labels: Vec<(&str, &str)> =
                    same.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                sample(&mut out, same.name, &labels, same.value);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        labels_into(
            &mut out,
            &[("service", "a\"b\\c\nd"), ("command", "config|get")],
        );
        assert_eq!(out, r#"{service="a\"b\\c\nd",command="config|get"}"#);
    }
}
