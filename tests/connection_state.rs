//! A command that changes the state of its connection never lands on a
//! shared multiplexed connection: MONITOR and CLIENT TRACKING move their
//! client to a dedicated connection of its own, the rest are answered by
//! keygate or refused (src/command/state.rs).
mod common;
use common::*;
use std::time::Duration;

const ADMIN_AND_CART: &str = r#"
[[service]]
name = "default"
prefix = ""
isolation = false
admin = true

[[service]]
name = "cart"
password = "cart-pw"
prefix = "cart:"
"#;

fn setup() -> (RedisServer, Keygate) {
    let redis = RedisServer::start();
    let kg = Keygate::start_with(&standalone_config(&redis.addr(), ADMIN_AND_CART));
    wait_serving(kg.port());
    (redis, kg)
}

fn bulk(s: &str) -> String {
    format!("${}\r\n{s}\r\n", s.len())
}

#[test]
fn a_monitor_client_sees_other_clients_commands_and_theirs_stay_correct() {
    let (_redis, kg) = setup();
    let mut monitor = RawConn::connect(kg.port());
    assert_eq!(monitor.cmd_str(&["MONITOR"]), "+OK\r\n");
    // Several clients, so some share the multiplexed connection the
    // MONITOR would have taken over before.
    let mut clients: Vec<RawConn> = (0..4).map(|_| RawConn::connect(kg.port())).collect();
    for round in 0..20 {
        for (i, c) in clients.iter_mut().enumerate() {
            let value = format!("v{round}-{i}");
            let key = format!("mon:{i}");
            assert_eq!(c.cmd_str(&["SET", &key, &value]), "+OK\r\n");
            assert_eq!(c.cmd_str(&["GET", &key]), bulk(&value));
        }
    }
    // The monitor gets the other clients' commands as monitor lines.
    let mut seen = String::new();
    let found = wait_until(Duration::from_secs(5), || {
        while let Some(line) = monitor.try_read_reply(Duration::from_millis(50)) {
            seen.push_str(&String::from_utf8_lossy(&line));
        }
        seen.contains("\"SET\" \"mon:3\" \"v19-3\"")
    });
    assert!(found, "monitor lines: {seen}");
    assert!(!seen.contains("Replica can't"), "{seen}");
    // Commands from the monitoring client itself get Redis's own answers,
    // in stream order.
    monitor.send(&resp_command(&["GET", "mon:0"]));
    let mut reply = Vec::new();
    assert!(wait_until(Duration::from_secs(5), || {
        match monitor.try_read_reply(Duration::from_millis(50)) {
            Some(line) if line.starts_with(b"-") => {
                reply = line;
                true
            }
            _ => false,
        }
    }));
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "-ERR Replica can't interact with the keyspace\r\n"
    );
    // RESET ends the monitor; the client is an ordinary one again.
    monitor.send(&resp_command(&["RESET"]));
    assert!(wait_until(Duration::from_secs(5), || {
        monitor
            .try_read_reply(Duration::from_millis(50))
            .is_some_and(|l| l == b"+RESET\r\n")
    }));
    assert_eq!(monitor.cmd_str(&["GET", "mon:0"]), bulk("v19-0"));
}

#[test]
fn monitor_stays_refused_for_other_services() {
    let (_redis, kg) = setup();
    let mut c = RawConn::connect(kg.port());
    assert_eq!(c.cmd_str(&["AUTH", "cart", "cart-pw"]), "+OK\r\n");
    assert!(c.cmd_str(&["MONITOR"]).starts_with("-NOPERM"));
}

#[test]
fn a_tracking_client_gets_invalidations_and_a_new_client_has_tracking_off() {
    let (_redis, kg) = setup();
    let mut tracker = RawConn::connect(kg.port());
    assert!(tracker.cmd_str(&["HELLO", "3"]).starts_with('%'));
    assert_eq!(tracker.cmd_str(&["CLIENT", "TRACKING", "on"]), "+OK\r\n");
    assert_eq!(tracker.cmd_str(&["SET", "tracked", "1"]), "+OK\r\n");
    assert_eq!(tracker.cmd_str(&["GET", "tracked"]), bulk("1"));
    let mut writer = RawConn::connect(kg.port());
    assert_eq!(writer.cmd_str(&["SET", "tracked", "2"]), "+OK\r\n");
    let push = tracker.read_reply();
    assert_eq!(
        String::from_utf8_lossy(&push),
        format!(">2\r\n{}*1\r\n{}", bulk("invalidate"), bulk("tracked"))
    );
    // Fresh clients (some on the multiplexed connection the tracker would
    // have used) have tracking off.
    for _ in 0..4 {
        let mut fresh = RawConn::connect(kg.port());
        assert_eq!(
            fresh.cmd_str(&["CLIENT", "TRACKINGINFO"]),
            "*6\r\n$5\r\nflags\r\n*1\r\n$3\r\noff\r\n$8\r\nredirect\r\n:-1\r\n$8\r\nprefixes\r\n*0\r\n"
        );
        assert_eq!(fresh.cmd_str(&["CLIENT", "GETREDIR"]), ":-1\r\n");
        assert_eq!(fresh.cmd_str(&["GET", "tracked"]), bulk("2"));
    }
    let info = String::from_utf8_lossy(&tracker.cmd(&["CLIENT", "TRACKINGINFO"])).into_owned();
    assert!(info.contains("$2\r\non\r\n"), "{info}");
    assert!(tracker
        .cmd_str(&["CLIENT", "TRACKING", "on", "REDIRECT", "1"])
        .starts_with("-ERR keygate: CLIENT TRACKING REDIRECT is not supported"));
}

#[test]
fn a_namespaced_tracker_sees_only_its_own_keys_without_the_prefix() {
    let (_redis, kg) = setup();
    let mut tracker = RawConn::connect(kg.port());
    assert!(tracker
        .cmd_str(&["HELLO", "3", "AUTH", "cart", "cart-pw"])
        .starts_with('%'));
    assert_eq!(
        tracker.cmd_str(&["CLIENT", "TRACKING", "on", "BCAST"]),
        "+OK\r\n"
    );
    let mut admin = RawConn::connect(kg.port());
    // Outside the namespace: no invalidation reaches the tracker.
    assert_eq!(admin.cmd_str(&["SET", "other:k", "1"]), "+OK\r\n");
    assert_eq!(admin.cmd_str(&["SET", "cart:k", "1"]), "+OK\r\n");
    let push = tracker.read_reply();
    assert_eq!(
        String::from_utf8_lossy(&push),
        format!(">2\r\n{}*1\r\n{}", bulk("invalidate"), bulk("k"))
    );
}

#[test]
fn cluster_connection_flags_get_redis_answer_for_everyone() {
    let (_redis, kg) = setup();
    let mut admin = RawConn::connect(kg.port());
    let mut cart = RawConn::connect(kg.port());
    assert_eq!(cart.cmd_str(&["AUTH", "cart", "cart-pw"]), "+OK\r\n");
    for c in [&mut admin, &mut cart] {
        for cmd in ["READONLY", "READWRITE", "ASKING"] {
            assert_eq!(
                c.cmd_str(&[cmd]),
                "-ERR This instance has cluster support disabled\r\n"
            );
        }
    }
    // Replication streams are refused even for an admin service.
    assert!(admin.cmd_str(&["SYNC"]).starts_with("-NOPERM"));
    assert!(admin.cmd_str(&["PSYNC", "?", "-1"]).starts_with("-NOPERM"));
    // SELECT of another database never switches a shared connection:
    // the admin's write lands in database 1, the others stay in 0.
    assert_eq!(admin.cmd_str(&["SELECT", "1"]), "+OK\r\n");
    assert_eq!(admin.cmd_str(&["SET", "db1", "x"]), "+OK\r\n");
    assert_eq!(cart.cmd_str(&["GET", "db1"]), "$-1\r\n");
    let mut fresh = RawConn::connect(kg.port());
    assert_eq!(fresh.cmd_str(&["GET", "db1"]), "$-1\r\n");
    assert_eq!(admin.cmd_str(&["GET", "db1"]), bulk("x"));
    assert_eq!(admin.cmd_str(&["SELECT", "0"]), "+OK\r\n");
    assert_eq!(admin.cmd_str(&["GET", "db1"]), "$-1\r\n");
}

#[test]
fn config_get_inside_multi() {
    let (_redis, kg) = setup();
    // An admin service's goes to Redis inside the transaction.
    let mut admin = RawConn::connect(kg.port());
    assert_eq!(admin.cmd_str(&["MULTI"]), "+OK\r\n");
    assert_eq!(
        admin.cmd_str(&["CONFIG", "GET", "maxmemory"]),
        "+QUEUED\r\n"
    );
    assert_eq!(
        admin.cmd_str(&["EXEC"]),
        format!("*1\r\n*2\r\n{}{}", bulk("maxmemory"), bulk("0"))
    );
    // Another service's gets keygate's own answer in its place.
    let mut cart = RawConn::connect(kg.port());
    assert_eq!(cart.cmd_str(&["AUTH", "cart", "cart-pw"]), "+OK\r\n");
    let outside = cart.cmd_str(&["CONFIG", "GET", "maxclients"]);
    assert!(outside.starts_with("*2\r\n"), "{outside}");
    assert_eq!(cart.cmd_str(&["MULTI"]), "+OK\r\n");
    assert_eq!(cart.cmd_str(&["SET", "a", "1"]), "+QUEUED\r\n");
    assert_eq!(
        cart.cmd_str(&["CONFIG", "GET", "maxclients"]),
        "+QUEUED\r\n"
    );
    assert_eq!(cart.cmd_str(&["GET", "a"]), "+QUEUED\r\n");
    assert_eq!(
        cart.cmd_str(&["EXEC"]),
        format!("*3\r\n+OK\r\n{outside}{}", bulk("1"))
    );
}
