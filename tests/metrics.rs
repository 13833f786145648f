//! Metrics through keygate: after a known workload, `/metrics` counts what
//! was sent per service and command, histograms are cumulative and end in
//! `+Inf` equal to `_count`, hits and misses match, a slow command lands in
//! the right bucket and in the slow log, and the text parses with a real
//! Prometheus parser.
mod common;
use common::*;
use std::collections::HashMap;
use std::time::Duration;

fn config(backend: &RedisServer) -> String {
    standalone_config(
        &backend.addr(),
        r#"
[[service]]
name = "default"
prefix = ""
isolation = false
admin = true

[[service]]
name = "cart"
password = "cart-pw"
prefix = "cart:"
"#,
    )
}

fn scrape(kg: &Keygate) -> String {
    let resp = http_get(kg.admin_port(), "/metrics");
    let body = resp
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    body
}

/// The value of the first sample line of `name` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn counts_histograms_hits_and_slowlog_match_the_workload() {
    let redis = RedisServer::start();
    let kg = Keygate::start_with(&config(&redis));
    kg.wait_ready();
    {
        let mut c = RawConn::connect(kg.port());
        assert_eq!(c.cmd_str(&["AUTH", "cart", "cart-pw"]), "+OK\r\n");
        for i in 0..10 {
            c.cmd_str(&["SET", &format!("k{i}"), "v"]);
        }
        for i in 0..7 {
            c.cmd_str(&["GET", &format!("k{i}")]); // hits
        }
        for i in 0..3 {
            c.cmd_str(&["GET", &format!("missing{i}")]); // misses
        }
        // MGET counts per key: 2 hits, 1 miss.
        c.cmd_str(&["MGET", "k1", "k2", "nope"]);
        // A slow command: BLPOP that times out after 0.3 s.
        c.cmd_str(&["BLPOP", "empty", "0.3"]);
        c.cmd_str(&["NOSUCHCOMMAND"]);
    }
    // The connection closed: its samples were handed over on drop.
    let text = (0..50)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            scrape(&kg)
        })
        .find(|t| {
            sample(
                t,
                "keygate_commands_total",
                &[("service", "cart"), ("command", "blpop")],
            )
            .is_some()
        })
        .expect("cart's commands show up in /metrics");
    let cart = |name: &str, command: &str| {
        sample(&text, name, &[("service", "cart"), ("command", command)]).unwrap_or(0.0)
    };
    assert_eq!(cart("keygate_commands_total", "set"), 10.0);
    assert_eq!(cart("keygate_commands_total", "get"), 10.0);
    assert_eq!(cart("keygate_cache_hits_total", "get"), 7.0);
    assert_eq!(cart("keygate_cache_misses_total", "get"), 3.0);
    assert_eq!(cart("keygate_cache_hits_total", "mget"), 2.0);
    assert_eq!(cart("keygate_cache_misses_total", "mget"), 1.0);
    assert!(
        sample(
            &text,
            "keygate_command_errors_total",
            &[("service", "cart"), ("kind", "client")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );

    // Histogram buckets are cumulative and +Inf equals _count.
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with("keygate_command_duration_seconds_bucket{"))
        .filter(|l| l.contains("service=\"cart\"") && l.contains("command=\"blpop\""))
        .map(|l| {
            let le = l
                .split(",le=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap();
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            (le, l.rsplit(' ').next().unwrap().parse().unwrap())
        })
        .collect();
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "cumulative: {buckets:?}"
    );
    let count = cart("keygate_command_duration_seconds_count", "blpop");
    assert_eq!(
        buckets.last().map(|b| (b.0, b.1)),
        Some((f64::INFINITY, count))
    );
    assert_eq!(count, 1.0);
    // 0.3 s lands above the 0.25 s bound and within 0.5 s.
    let at = |le: f64| buckets.iter().find(|b| b.0 == le).map(|b| b.1).unwrap();
    assert_eq!(at(0.25), 0.0);
    assert_eq!(at(0.5), 1.0);

    // The slow log has it, with no argument values.
    let slow = http_get(kg.admin_port(), "/slowlog");
    assert!(slow.contains("\"command\":\"blpop\""), "{slow}");
    assert!(
        !slow.contains("empty"),
        "no argument values in the slow log: {slow}"
    );

    // A real Prometheus text parser accepts the whole exposition.
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let names: HashMap<&str, ()> = parsed
        .samples
        .iter()
        .map(|s| (s.metric.as_str(), ()))
        .collect();
    for want in [
        "keygate_command_duration_seconds",
        "keygate_backend_duration_seconds",
        "keygate_commands_total",
        "keygate_cache_hits_total",
        "keygate_cache_misses_total",
        "keygate_client_connections",
    ] {
        assert!(names.contains_key(want), "{want} missing");
    }
}

#[test]
fn redis_cli_sees_the_proxy_section_and_latency_table() {
    let redis = RedisServer::start();
    let kg = Keygate::start_with(&config(&redis));
    kg.wait_ready();
    assert_eq!(kg.cli(&["SET", "a", "1"]), "OK");
    std::thread::sleep(Duration::from_millis(100));
    let info = kg.cli(&["INFO", "keygate"]);
    assert!(info.contains("# Proxy"), "{info}");
    assert!(info.contains("keygate_version:"), "{info}");
    let table = kg.cli(&["KEYGATE", "LATENCY"]);
    assert!(table.starts_with("service command role"), "{table}");
    // A non-admin service may not read another service's figures.
    let denied = kg.cli(&[
        "--user", "cart", "--pass", "cart-pw", "KEYGATE", "LATENCY", "default",
    ]);
    assert!(denied.contains("NOPERM"), "{denied}");
}
