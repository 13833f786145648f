//! Backend outages: prompt errors while it is down, a reply for every request
//! in flight when it dies, and service resumed when it returns.
mod common;
use common::*;

use std::io::Write;
use std::time::{Duration, Instant};

/// Polls `SET` on `conn` until it succeeds; returns how long it took. Each
/// shared backend connection reconnects on its own backoff, so a client must
/// see service resume on its own connection, not just on a fresh one.
fn wait_until_served(conn: &mut RawConn, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let reply = conn.cmd_str(&["SET", "bf:probe", "1"]);
        if reply == "+OK\r\n" {
            return started.elapsed();
        }
        assert!(reply.starts_with("-ERR keygate: backend"), "{reply}");
        assert!(
            started.elapsed() < within,
            "service did not resume within {within:?}"
        );
        // Paces the retries; the loop itself waits for the state (served).
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn backend_down_at_start_gives_prompt_error_then_recovers() {
    let mut redis = RedisServer::start();
    redis.kill();
    let kg = Keygate::start(&redis);
    // keygate has tried the backend and failed: /health names the error.
    let tried = || {
        let health = http_get(kg.admin_port(), "/health");
        let body = health.split("\r\n\r\n").nth(1).unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(body)
            .is_ok_and(|h| h["backend"]["master"]["last_error"].is_string())
    };
    assert!(
        wait_until(Duration::from_secs(5), tried),
        "{}",
        http_get(kg.admin_port(), "/health")
    );
    let mut c = RawConn::connect(kg.port());
    let started = Instant::now();
    let reply = c.cmd_str(&["GET", "bf:k"]);
    let took = started.elapsed();
    println!("error while down after {took:?}: {reply:?}");
    assert!(reply.starts_with("-ERR keygate: backend"), "{reply}");
    assert!(
        reply.contains(&redis.addr()),
        "error does not name the backend: {reply}"
    );
    assert!(took < Duration::from_secs(2), "error took {took:?}");
    // Locally answered commands keep working.
    assert_eq!(c.cmd_str(&["PING"]), "+PONG\r\n");
    // A transaction needs a dedicated connection: also a prompt error.
    let started = Instant::now();
    let multi = c.cmd_str(&["MULTI"]);
    assert!(multi.starts_with("-ERR keygate:"), "{multi}");
    assert!(started.elapsed() < Duration::from_secs(3));

    redis.restart();
    let took = wait_until_served(&mut c, Duration::from_secs(8));
    println!("service resumed {took:?} after the backend restarted");
    let mut fresh = RawConn::connect(kg.port());
    wait_until_served(&mut fresh, Duration::from_secs(8));
    assert_eq!(fresh.cmd_str(&["GET", "bf:probe"]), "$1\r\n1\r\n");
}

#[test]
fn backend_killed_mid_pipeline_every_request_gets_a_reply() {
    let mut redis = RedisServer::start();
    let kg = Keygate::start(&redis);
    wait_serving(kg.port());
    let mut c = RawConn::connect(kg.port());
    // Slow-ish commands: each LRANGE returns a 500-element list.
    let mut seed = vec!["RPUSH".to_string(), "bf:list".to_string()];
    seed.extend((0..500).map(|i| format!("element-{i}")));
    assert_eq!(c.cmd_str(&seed), ":500\r\n");
    const N: usize = 6_000;
    let mut pipeline = Vec::new();
    for i in 0..N {
        if i % 2 == 0 {
            pipeline.extend(resp_command(&["LRANGE", "bf:list", "0", "-1"]));
        } else {
            pipeline.extend(resp_command(&["INCR", "bf:counter"]));
        }
    }
    let mut writer_conn = c.stream().try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        let _ = writer_conn.write_all(&pipeline);
    });
    for _ in 0..50 {
        c.read_reply();
    }
    redis.kill();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut ok, mut errors) = (50usize, 0usize);
    while ok + errors < N {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(reply) = c.try_read_reply(left) else {
            panic!(
                "only {} of {N} replies arrived ({errors} errors)",
                ok + errors
            );
        };
        if reply.starts_with(b"-") {
            let text = String::from_utf8_lossy(&reply);
            assert!(text.starts_with("-ERR keygate: backend"), "{text}");
            errors += 1;
        } else {
            ok += 1;
        }
    }
    let _ = writer.join();
    println!("mid-pipeline kill: {ok} replies, {errors} errors");
    assert!(errors > 0, "the kill came too late to test anything");

    redis.restart();
    let took = wait_until_served(&mut c, Duration::from_secs(8));
    println!("service resumed {took:?} after restart");
    assert_eq!(c.cmd_str(&["GET", "bf:probe"]), "$1\r\n1\r\n");
}

#[test]
fn backend_killed_during_transaction_closes_client_and_recovers() {
    let mut redis = RedisServer::start();
    let kg = Keygate::start(&redis);
    wait_serving(kg.port());
    let mut c = RawConn::connect(kg.port());
    assert_eq!(c.cmd_str(&["MULTI"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["SET", "bf:t", "1"]), "+QUEUED\r\n");
    redis.kill();
    // The transaction lived on the dead connection. If keygate notices
    // first, it closes the client (so its library reconnects instead of
    // trusting lost state); if EXEC gets there first, EXEC fails with an
    // error, which ends the transaction, and the client goes on.
    let _ = c.stream().write_all(&resp_command(&["EXEC"]));
    let exec_reply = c.try_read_reply(Duration::from_secs(3));
    redis.restart();
    match exec_reply {
        None => assert!(c.closed_within(Duration::from_secs(3))),
        Some(reply) => {
            let text = String::from_utf8_lossy(&reply);
            assert!(text.starts_with("-ERR keygate: backend"), "{text}");
            wait_until_served(&mut c, Duration::from_secs(8));
            assert_eq!(c.cmd_str(&["EXEC"]), "-ERR EXEC without MULTI\r\n");
        }
    }
    let mut fresh = RawConn::connect(kg.port());
    wait_until_served(&mut fresh, Duration::from_secs(8));
    assert_eq!(fresh.cmd_str(&["GET", "bf:t"]), "$-1\r\n");
}
