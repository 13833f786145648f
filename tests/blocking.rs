//! Blocking commands through keygate: woken by other clients, not cut off
//! by `command_timeout`, and harmless when their client goes away.
mod common;
use common::*;

use std::time::{Duration, Instant};

/// keygate with a 1 s command_timeout, shorter than the blocking waits below.
fn setup() -> (RedisServer, Keygate) {
    let redis = RedisServer::start();
    let config = standalone_config(&redis.addr(), DEFAULT_SERVICE)
        .replace("command_timeout = \"5s\"", "command_timeout = \"1s\"");
    assert!(config.contains("command_timeout = \"1s\""));
    let kg = Keygate::start_with(&config);
    wait_serving(kg.port());
    (redis, kg)
}

#[test]
fn blpop_woken_by_another_clients_lpush() {
    let (redis, kg) = setup();
    let mut waiter = RawConn::connect(kg.port());
    waiter.send(&resp_command(&["BLPOP", "bl:q", "5"]));
    redis.wait_blocked(1);
    let mut pusher = RawConn::connect(kg.port());
    assert_eq!(pusher.cmd_str(&["LPUSH", "bl:q", "v1"]), ":1\r\n");
    assert_eq!(
        String::from_utf8_lossy(&waiter.read_reply()),
        "*2\r\n$4\r\nbl:q\r\n$2\r\nv1\r\n"
    );
    // The connection goes on serving ordinary commands afterwards.
    assert_eq!(waiter.cmd_str(&["LLEN", "bl:q"]), ":0\r\n");
}

#[test]
fn blpop_with_timeout_zero_outlives_command_timeout() {
    let (redis, kg) = setup();
    let mut waiter = RawConn::connect(kg.port());
    waiter.send(&resp_command(&["BLPOP", "bl:long", "0"]));
    redis.wait_blocked(1);
    // The point of the test: time passes well beyond command_timeout (1 s)
    // while the client stays blocked, and keygate must not cut it off.
    std::thread::sleep(Duration::from_millis(2500));
    let mut pusher = RawConn::connect(kg.port());
    assert_eq!(pusher.cmd_str(&["RPUSH", "bl:long", "late"]), ":1\r\n");
    assert_eq!(
        String::from_utf8_lossy(&waiter.read_reply()),
        "*2\r\n$7\r\nbl:long\r\n$4\r\nlate\r\n"
    );
}

#[test]
fn blpop_timeout_expires_with_nil() {
    let (_redis, kg) = setup();
    let mut waiter = RawConn::connect(kg.port());
    let started = Instant::now();
    // 1.5 s is past command_timeout: the client's own timeout must win.
    assert_eq!(waiter.cmd_str(&["BLPOP", "bl:none", "1.5"]), "*-1\r\n");
    assert!(started.elapsed() >= Duration::from_millis(1400));
}

#[test]
fn blocked_client_disconnecting_leaves_no_blocked_backend_connection() {
    let (redis, kg) = setup();
    {
        let mut waiter = RawConn::connect(kg.port());
        waiter.send(&resp_command(&["BLPOP", "bl:gone", "0"]));
        redis.wait_blocked(1);
    } // dropped: the client disconnects while blocked
    assert!(
        wait_until(Duration::from_secs(5), || redis.blocked_clients() == 0),
        "the backend connection stayed blocked after its client left"
    );
    let mut other = RawConn::connect(kg.port());
    assert_eq!(other.cmd_str(&["PING"]), "+PONG\r\n");
    // A value pushed now must not be eaten by a leftover BLPOP.
    assert_eq!(other.cmd_str(&["LPUSH", "bl:gone", "kept"]), ":1\r\n");
    assert_eq!(other.cmd_str(&["LLEN", "bl:gone"]), ":1\r\n");
    // Blocking still works for a new client.
    assert_eq!(
        other.cmd_str(&["BLPOP", "bl:gone", "1"]),
        "*2\r\n$7\r\nbl:gone\r\n$4\r\nkept\r\n"
    );
}

#[test]
fn many_concurrent_blocked_clients_all_woken() {
    let (redis, kg) = setup();
    let mut waiters: Vec<RawConn> = (0..20)
        .map(|_| {
            let mut c = RawConn::connect(kg.port());
            c.send(&resp_command(&["BLPOP", "bl:many", "10"]));
            c
        })
        .collect();
    redis.wait_blocked(20);
    let mut pusher = RawConn::connect(kg.port());
    let values: Vec<String> = (0..20).map(|i| format!("x{i}")).collect();
    let mut args = vec!["RPUSH".to_string(), "bl:many".to_string()];
    args.extend(values.iter().cloned());
    assert_eq!(pusher.cmd_str(&args), ":20\r\n");
    for w in &mut waiters {
        let reply = String::from_utf8_lossy(&w.read_reply()).into_owned();
        assert!(reply.starts_with("*2\r\n$7\r\nbl:many\r\n"), "{reply}");
    }
    // Still usable after the burst.
    assert_eq!(pusher.cmd_str(&["LLEN", "bl:many"]), ":0\r\n");
}
