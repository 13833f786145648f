//! A panic inside one client's task never takes down keygate or another
//! client, and gives back everything the client held: its service's
//! `max_clients` slot, the clients gauge and the proxy's client count.
//!
//! The panic is injected with `KEYGATE DEBUG-PANIC`, a hidden command that
//! exists only with the `fault-injection` feature (enabled for tests by the
//! crate's dev-dependency on itself; `cargo build` never has it).
mod common;
use common::*;

use std::time::Duration;

/// The `keygate_client_connections` sample for service `name`.
fn connections_gauge(admin_port: u16, name: &str) -> Option<f64> {
    let body = http_get(admin_port, "/metrics");
    let body = body
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("metrics parse");
    scrape
        .samples
        .iter()
        .find(|s| s.metric == "keygate_client_connections" && s.labels.get("service") == Some(name))
        .and_then(|s| match s.value {
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}

#[test]
fn a_panicking_client_task_harms_no_one_else_and_leaks_nothing() {
    let redis = RedisServer::start();
    // One client slot to spare: a leaked count would refuse the third client.
    let kg = Keygate::start_with(&standalone_config(
        &redis.addr(),
        r#"
[[service]]
name = "default"
prefix = ""
isolation = false
max_clients = 2
"#,
    ));
    wait_serving(kg.port());

    let mut steady = RawConn::connect(kg.port());
    assert_eq!(steady.cmd_str(&["SET", "panic:k", "v"]), "+OK\r\n");

    for round in 0..3 {
        let mut victim = RawConn::connect(kg.port());
        assert_eq!(victim.cmd_str(&["PING"]), "+PONG\r\n", "round {round}");
        victim.send(&resp_command(&["KEYGATE", "DEBUG-PANIC"]));
        assert!(
            victim.closed_within(Duration::from_secs(5)),
            "the panicking client's connection is closed (round {round})"
        );
        // The other client is unaffected.
        assert_eq!(steady.cmd_str(&["GET", "panic:k"]), "$1\r\nv\r\n");
        // The victim's slot comes back as its task unwinds, which may end
        // just after its socket closes: the next round's victim needs it.
        assert!(
            wait_until(Duration::from_secs(10), || connections_gauge(
                kg.admin_port(),
                "default"
            ) == Some(1.0)),
            "round {round}'s victim never gave its slot back: {:?}",
            connections_gauge(kg.admin_port(), "default")
        );
    }

    // keygate still accepts, and the panicked clients gave their slots back
    // (the gauge counts `steady` alone after the last round): one more fits
    // with max_clients = 2.
    let mut late = RawConn::connect(kg.port());
    assert_eq!(late.cmd_str(&["GET", "panic:k"]), "$1\r\nv\r\n");

    // The gauge counts exactly the two live clients once the panicked
    // tasks are gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let gauge = connections_gauge(kg.admin_port(), "default");
        if gauge == Some(2.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "keygate_client_connections{{service=\"default\"}} = {gauge:?}, want 2"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let health = http_get(kg.admin_port(), "/health");
    assert!(health.contains("\"clients\":2"), "{health}");
}
