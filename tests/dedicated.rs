//! Dedicated connections (MULTI/WATCH, blocking, pub/sub) are returned clean
//! or closed, and running out of them is a prompt error, not a hang.
mod common;
use common::*;

use std::time::{Duration, Instant};

/// keygate allowing only `max` dedicated connections.
fn setup(max: u32) -> (RedisServer, Keygate) {
    let redis = RedisServer::start();
    let config = standalone_config(&redis.addr(), DEFAULT_SERVICE).replace(
        "command_timeout = \"5s\"",
        &format!("command_timeout = \"5s\"\ndedicated_max = {max}"),
    );
    let kg = Keygate::start_with(&config);
    wait_serving(kg.port());
    (redis, kg)
}

#[test]
fn watch_left_by_a_disconnected_client_does_not_reach_the_next() {
    let (_redis, kg) = setup(1);
    {
        let mut a = RawConn::connect(kg.port());
        assert_eq!(a.cmd_str(&["WATCH", "dc:k"]), "+OK\r\n");
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut writer = RawConn::connect(kg.port());
    assert_eq!(writer.cmd_str(&["SET", "dc:k", "changed"]), "+OK\r\n");
    let mut b = RawConn::connect(kg.port());
    assert_eq!(b.cmd_str(&["MULTI"]), "+OK\r\n");
    assert_eq!(b.cmd_str(&["SET", "dc:j", "1"]), "+QUEUED\r\n");
    assert_eq!(b.cmd_str(&["EXEC"]), "*1\r\n+OK\r\n");
}

#[test]
fn one_dedicated_connection_serves_clients_in_turn() {
    let (_redis, kg) = setup(1);
    let mut a = RawConn::connect(kg.port());
    let mut b = RawConn::connect(kg.port());
    for round in 0..3 {
        assert_eq!(a.cmd_str(&["MULTI"]), "+OK\r\n");
        assert_eq!(a.cmd_str(&["INCR", "dc:n"]), "+QUEUED\r\n");
        assert_eq!(
            a.cmd_str(&["EXEC"]),
            format!("*1\r\n:{}\r\n", 2 * round + 1)
        );
        assert_eq!(b.cmd_str(&["BLPOP", "dc:empty", "0.1"]), "*-1\r\n");
        assert_eq!(b.cmd_str(&["WATCH", "dc:n"]), "+OK\r\n");
        assert_eq!(b.cmd_str(&["UNWATCH"]), "+OK\r\n");
        assert_eq!(b.cmd_str(&["MULTI"]), "+OK\r\n");
        assert_eq!(b.cmd_str(&["INCR", "dc:n"]), "+QUEUED\r\n");
        assert_eq!(
            b.cmd_str(&["EXEC"]),
            format!("*1\r\n:{}\r\n", 2 * round + 2)
        );
    }
}

#[test]
fn exhausted_pool_is_a_prompt_error_and_others_keep_working() {
    let (_redis, kg) = setup(2);
    let mut holders: Vec<RawConn> = (0..2)
        .map(|_| {
            let mut c = RawConn::connect(kg.port());
            c.send(&resp_command(&["BLPOP", "dc:wait", "0"]));
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut third = RawConn::connect(kg.port());
    let started = Instant::now();
    let reply = third.cmd_str(&["BLPOP", "dc:wait", "0"]);
    println!("third BLPOP after {:?}: {reply:?}", started.elapsed());
    assert!(
        reply.starts_with("-ERR keygate: no dedicated backend connection"),
        "{reply}"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(third.cmd_str(&["SET", "dc:x", "1"]), "+OK\r\n");
    // Waking the holders frees their connections for the next one.
    assert_eq!(third.cmd_str(&["RPUSH", "dc:wait", "1", "2"]), ":2\r\n");
    for h in &mut holders {
        assert!(String::from_utf8_lossy(&h.read_reply()).starts_with("*2\r\n"));
    }
    assert_eq!(third.cmd_str(&["BLPOP", "dc:wait", "0.1"]), "*-1\r\n");
}

#[test]
fn blocking_command_inside_multi_does_not_block() {
    let (redis, kg) = setup(4);
    let script: &[&[&str]] = &[
        &["MULTI"],
        &["BLPOP", "dc:nothing", "0"],
        &["SET", "dc:m", "1"],
        &["EXEC"],
    ];
    for port in [kg.port(), redis.port()] {
        let mut c = RawConn::connect(port);
        let replies: Vec<String> = script.iter().map(|cmd| c.cmd_str(cmd)).collect();
        assert_eq!(
            replies[3], "*2\r\n*-1\r\n+OK\r\n",
            "port {port}: {replies:?}"
        );
    }
}
