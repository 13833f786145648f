//! Metrics through keygate: after a known workload, `/metrics` counts what
//! was sent per service and command, histograms are cumulative and end in
//! `+Inf` equal to `_count`, hits and misses match, a slow command lands in
//! the right bucket and in the slow log, and the text parses with a real
//! Prometheus parser.
mod common;
use common::*;
use std::collections::HashMap;
use std::time::Duration;

/// The `default` service, passwordless, not isolated, admin.
const ADMIN_DEFAULT: &str = r#"
[[service]]
name = "default"
prefix = ""
isolation = false
admin = true
"#;

fn config(backend: &RedisServer) -> String {
    standalone_config(
        &backend.addr(),
        &(ADMIN_DEFAULT.to_string()
            + r#"
[[service]]
name = "cart"
password = "cart-pw"
prefix = "cart:"
"#),
    )
}

fn scrape(kg: &Keygate) -> String {
    scrape_metrics(kg.admin_port())
}

fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metric_sample(text, name, labels)
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
    let mut text = String::new();
    let shown = wait_until(Duration::from_secs(3), || {
        text = scrape(&kg);
        sample(
            &text,
            "keygate_commands_total",
            &[("service", "cart"), ("command", "blpop")],
        )
        .is_some()
    });
    assert!(shown, "cart's commands show up in /metrics");
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

/// A read of a `read_from = "replica"` service is answered by the replica,
/// and recorded under `role="replica"`; its writes under `role="master"`.
#[test]
fn replica_reads_are_recorded_under_the_replica_role() {
    let (master, replica) = master_and_replica();
    let sentinel = RedisSentinel::start("mymaster", master.port());
    sentinel.wait_sees_good_replica("mymaster");
    let config = format!(
        r#"
[proxy]
listen = "127.0.0.1:0"

[backend]
sentinels = ["{}"]
master_name = "mymaster"
connect_timeout = "1s"
command_timeout = "5s"
failover_wait = "5s"

[[service]]
name = "ro"
password = "ro-pass"
prefix = ""
isolation = false
read_from = "replica"
"#,
        sentinel.addr()
    );
    let (kg, state) = start_keygate_observed(&config);
    let replica_online = || {
        state.health_json()["backend"]["replicas"]
            .as_array()
            .is_some_and(|rs| {
                rs.iter()
                    .any(|r| r["address"] == replica.addr() && r["state"] == "online")
            })
    };
    assert!(
        wait_until(Duration::from_secs(10), replica_online),
        "replica not online: {}",
        state.health_json()
    );
    {
        let mut c = RawConn::connect(kg.port());
        assert_eq!(c.cmd_str(&["AUTH", "ro", "ro-pass"]), "+OK\r\n");
        assert_eq!(c.cmd_str(&["SET", "k", "v"]), "+OK\r\n");
        for _ in 0..5 {
            c.cmd_str(&["GET", "k"]);
        }
    }
    let ro = |t: &str, command: &str, role: &str| {
        sample(
            t,
            "keygate_command_duration_seconds_count",
            &[("service", "ro"), ("command", command), ("role", role)],
        )
    };
    let mut text = String::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            text = scrape(&kg);
            ro(&text, "set", "master").is_some()
        }),
        "ro's commands never showed up:\n{text}"
    );
    assert_eq!(ro(&text, "get", "replica"), Some(5.0), "{text}");
    assert_eq!(ro(&text, "get", "master"), None, "{text}");
    assert_eq!(ro(&text, "set", "master"), Some(1.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "keygate_backend_duration_seconds_count",
            &[("service", "ro"), ("command", "get"), ("role", "replica")]
        ),
        Some(5.0),
        "{text}"
    );
}

/// Refused commands are commands: after N refused and M served, errors
/// over commands is N/(N+M); the isolation-breaking ones among them count
/// in `keygate_isolation_refusals_total`.
#[test]
fn refusals_count_as_commands_and_isolation_refusals_are_counted() {
    let redis = RedisServer::start();
    let kg = Keygate::start_with(&config(&redis));
    kg.wait_ready();
    let isolation_breaking: &[&[&str]] = &[
        // A script can compute any key name.
        &["EVAL", "return 1", "0"],
        &["EVALSHA", "0123456789012345678901234567890123456789", "0"],
        // The keys cannot be located: no number of keys.
        &["ZUNIONSTORE", "dst", "notanumber", "a"],
    ];
    let other_refusals: &[&[&str]] = &[&["BGSAVE"], &["NOSUCHCOMMAND"]];
    let served: &[&[&str]] = &[
        &["SET", "a", "1"],
        &["SET", "b", "2"],
        &["GET", "a"],
        &["GET", "missing"],
        &["INCR", "n"],
        &["EXISTS", "a", "b"],
        &["DEL", "b"],
    ];
    {
        let mut c = RawConn::connect(kg.port());
        assert_eq!(c.cmd_str(&["AUTH", "cart", "cart-pw"]), "+OK\r\n");
        for args in isolation_breaking.iter().chain(other_refusals) {
            let reply = c.cmd_str(args);
            assert!(reply.starts_with('-'), "{args:?} refused: {reply}");
        }
        for args in served {
            let reply = c.cmd_str(args);
            assert!(!reply.starts_with('-'), "{args:?} served: {reply}");
        }
    }
    let refused = (isolation_breaking.len() + other_refusals.len()) as f64;
    let served = served.len() as f64;
    let cart = [("service", "cart")];
    let mut text = String::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            text = scrape(&kg);
            sample(&text, "keygate_isolation_refusals_total", &cart).unwrap_or(0.0) > 0.0
        }),
        "no isolation refusal counted:\n{text}"
    );
    assert_eq!(
        sample(&text, "keygate_isolation_refusals_total", &cart),
        Some(isolation_breaking.len() as f64),
        "{text}"
    );
    let commands = metric_sum(&text, "keygate_commands_total", &cart);
    let errors = metric_sum(&text, "keygate_command_errors_total", &cart);
    assert_eq!((errors, commands), (refused, refused + served), "{text}");
    assert_eq!(errors / commands, refused / (refused + served));
    assert_eq!(
        sample(
            &text,
            "keygate_commands_total",
            &[("service", "cart"), ("command", "eval")]
        ),
        Some(1.0),
        "a refused isolation-breaking command is a command: {text}"
    );
}

/// `keygate_backend_duration_seconds` runs from the backend write to the
/// reply: a request held in keygate behind another client's (one shared
/// connection, one write in flight) spends that wait outside the backend
/// time but inside the total.
#[test]
fn backend_time_excludes_waiting_behind_another_request() {
    let redis = RedisServer::start();
    let kg = Keygate::start_with(&standalone_config(&redis.addr(), ADMIN_DEFAULT).replace(
        "command_timeout = \"5s\"",
        "command_timeout = \"20s\"\nconnections = 1\nwrites_in_flight = 1",
    ));
    kg.wait_ready();
    // Redis holds back writes (reads run) until unpaused: the first
    // client's SET stays on the wire, in flight.
    assert_eq!(redis.cli(&["CLIENT", "PAUSE", "20000", "WRITE"]), "OK");
    let mut first = RawConn::connect(kg.port());
    first.send(&resp_command(&["SET", "held", "1"]));
    let mux_holds_set = || {
        redis
            .cli(&["CLIENT", "LIST"])
            .lines()
            .any(|l| l.contains("name=keygate-mux") && l.contains("cmd=set"))
    };
    assert!(
        wait_until(Duration::from_secs(5), mux_holds_set),
        "the SET never reached Redis: {}",
        redis.cli(&["CLIENT", "LIST"])
    );
    // The second client's read waits in keygate for the write window.
    let mut second = RawConn::connect(kg.port());
    second.send(&resp_command(&["STRLEN", "held"]));
    wait_keygate_read(kg.port(), "strlen");
    // The point of the test: the STRLEN waits this long in keygate, so its
    // total is clearly longer than its backend time.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(redis.cli(&["CLIENT", "UNPAUSE"]), "OK");
    assert_eq!(first.read_reply(), b"+OK\r\n");
    assert_eq!(second.read_reply(), b":1\r\n");
    drop((first, second));
    let strlen = [
        ("service", "default"),
        ("command", "strlen"),
        ("role", "master"),
    ];
    let mut text = String::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            text = scrape(&kg);
            sample(&text, "keygate_backend_duration_seconds_count", &strlen).is_some()
        }),
        "no backend time for STRLEN:\n{text}"
    );
    let total = sample(&text, "keygate_command_duration_seconds_sum", &strlen).unwrap();
    let backend = sample(&text, "keygate_backend_duration_seconds_sum", &strlen).unwrap();
    assert!(total >= 0.2, "the total includes the wait: {total}");
    assert!(
        backend < total / 2.0,
        "backend time {backend}s excludes the wait (total {total}s)"
    );
}
