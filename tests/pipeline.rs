//! A long mixed pipeline in one write comes back complete and in order,
//! byte for byte what redis-server itself answers.
mod common;
use common::*;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// 1,000 mixed commands whose replies keygate must not change.
fn mixed_pipeline() -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut count = 0;
    for i in 0..125 {
        let cmds: Vec<Vec<String>> = vec![
            vec!["SET".into(), format!("p:{i}"), format!("v{i}")],
            vec!["GET".into(), format!("p:{i}")],
            vec!["INCR".into(), "p:counter".into()],
            vec!["LPUSH".into(), "p:list".into(), format!("e{i}")],
            vec!["PING".into()],
            vec!["ECHO".into(), format!("echo {i}")],
            vec!["NOSUCHCOMMAND".into(), format!("arg{i}"), "x".into()],
            vec!["GET".into()],
        ];
        for c in cmds {
            out.extend_from_slice(&resp_command(&c));
            count += 1;
        }
    }
    (out, count)
}

/// Writes `bytes` in one write and reads until `replies` complete frames
/// have arrived (bounded); returns the raw reply stream.
fn exchange(port: u16, bytes: &[u8], replies: usize) -> Vec<u8> {
    let mut conn = RawConn::connect(port);
    conn.send(bytes);
    let mut all = Vec::new();
    for n in 0..replies {
        let frame = conn
            .try_read_reply(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("only {n} of {replies} replies arrived"));
        all.extend_from_slice(&frame);
    }
    // Nothing more may follow.
    let stream: &mut TcpStream = conn.stream();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut extra = [0u8; 64];
    if let Ok(n) = stream.read(&mut extra) {
        assert_eq!(n, 0, "unexpected extra bytes: {:?}", &extra[..n]);
    }
    all
}

#[test]
fn thousand_mixed_commands_in_one_write_match_redis() {
    let direct = RedisServer::start();
    let behind = RedisServer::start();
    let kg = Keygate::start(&behind);
    wait_serving(kg.port());
    let (bytes, count) = mixed_pipeline();
    assert_eq!(count, 1000);
    let started = Instant::now();
    let via_keygate = exchange(kg.port(), &bytes, count);
    println!("1000-command pipeline via keygate: {:?}", started.elapsed());
    let from_redis = exchange(direct.port(), &bytes, count);
    if via_keygate != from_redis {
        let at = via_keygate
            .iter()
            .zip(&from_redis)
            .position(|(a, b)| a != b)
            .unwrap_or(via_keygate.len().min(from_redis.len()));
        let lo = at.saturating_sub(80);
        panic!(
            "replies differ at byte {at}:\nkeygate: {:?}\nredis:   {:?}",
            String::from_utf8_lossy(&via_keygate[lo..(at + 80).min(via_keygate.len())]),
            String::from_utf8_lossy(&from_redis[lo..(at + 80).min(from_redis.len())]),
        );
    }
    assert_eq!(behind.cli(&["LLEN", "p:list"]), "125");
    assert_eq!(behind.cli(&["GET", "p:counter"]), "125");
}

#[test]
fn inline_and_multibulk_pipeline_interleaved() {
    let redis = RedisServer::start();
    let kg = Keygate::start(&redis);
    wait_serving(kg.port());
    let mut bytes = Vec::new();
    for i in 0..200 {
        bytes.extend_from_slice(format!("SET inl:{i} {i}\r\n").as_bytes());
        bytes.extend_from_slice(&resp_command(&["GET".to_string(), format!("inl:{i}")]));
    }
    let replies = exchange(kg.port(), &bytes, 400);
    let mut expected = Vec::new();
    for i in 0..200 {
        expected.extend_from_slice(b"+OK\r\n");
        let v = i.to_string();
        expected.extend_from_slice(format!("${}\r\n{v}\r\n", v.len()).as_bytes());
    }
    assert_eq!(
        String::from_utf8_lossy(&replies),
        String::from_utf8_lossy(&expected)
    );
}

#[test]
fn large_values_round_trip() {
    let redis = RedisServer::start();
    let kg = Keygate::start(&redis);
    wait_serving(kg.port());
    let mut c = RawConn::connect(kg.port());
    let value: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        String::from_utf8_lossy(&c.cmd(&[&b"SET"[..], b"pl:big", &value])),
        "+OK\r\n"
    );
    let mut expected = format!("${}\r\n", value.len()).into_bytes();
    expected.extend_from_slice(&value);
    expected.extend_from_slice(b"\r\n");
    // Twice in one pipeline, then a small command after them.
    let mut bytes = resp_command(&["GET", "pl:big"]);
    bytes.extend(resp_command(&["GET", "pl:big"]));
    bytes.extend(resp_command(&["STRLEN", "pl:big"]));
    c.send(&bytes);
    assert!(c.read_reply() == expected);
    assert!(c.read_reply() == expected);
    assert_eq!(
        String::from_utf8_lossy(&c.read_reply()),
        format!(":{}\r\n", value.len())
    );
}

#[test]
fn client_reply_off_and_skip_in_a_pipeline() {
    let redis = RedisServer::start();
    let kg = Keygate::start(&redis);
    wait_serving(kg.port());
    let script: &[&[&str]] = &[
        &["CLIENT", "REPLY", "OFF"],
        &["SET", "cr:a", "1"],
        &["INCR", "cr:a"],
        &["PING"],
        &["CLIENT", "REPLY", "ON"],
        &["GET", "cr:a"],
        &["CLIENT", "REPLY", "SKIP"],
        &["INCR", "cr:a"],
        &["GET", "cr:a"],
    ];
    let mut bytes = Vec::new();
    for cmd in script {
        bytes.extend(resp_command(cmd));
    }
    let via_keygate = exchange(kg.port(), &bytes, 3);
    redis.cli(&["DEL", "cr:a"]);
    let direct = exchange(redis.port(), &bytes, 3);
    assert_eq!(
        String::from_utf8_lossy(&via_keygate),
        String::from_utf8_lossy(&direct)
    );
    assert_eq!(
        String::from_utf8_lossy(&direct),
        "+OK\r\n$1\r\n2\r\n$1\r\n3\r\n"
    );
}

#[test]
fn quit_in_a_pipeline_answers_earlier_commands_then_closes() {
    let redis = RedisServer::start();
    let kg = Keygate::start(&redis);
    wait_serving(kg.port());
    let mut c = RawConn::connect(kg.port());
    let mut bytes = resp_command(&["SET", "q:a", "1"]);
    bytes.extend(resp_command(&["GET", "q:a"]));
    bytes.extend(resp_command(&["QUIT"]));
    bytes.extend(resp_command(&["SET", "q:a", "after-quit"]));
    c.send(&bytes);
    assert_eq!(String::from_utf8_lossy(&c.read_reply()), "+OK\r\n");
    assert_eq!(String::from_utf8_lossy(&c.read_reply()), "$1\r\n1\r\n");
    assert_eq!(String::from_utf8_lossy(&c.read_reply()), "+OK\r\n");
    assert!(c.closed_within(Duration::from_secs(3)));
    assert_eq!(redis.cli(&["GET", "q:a"]), "1");
}

/// A Lua script that keeps Redis busy for about `millis` (no other client
/// is served meanwhile), so the write window stays full.
fn busy_script(millis: u64) -> String {
    format!(
        "local s = redis.call('TIME') local t0 = s[1] * 1000000 + s[2] \
         repeat local n = redis.call('TIME') until n[1] * 1000000 + n[2] - t0 > {} \
         return 1",
        millis * 1000
    )
}

/// Many clients pipelining at once, while one script holds Redis, all get
/// their replies complete and in order, with one write in flight at a time
/// (everything gathers behind it) and with no limit.
#[test]
fn concurrent_pipelines_complete_in_order_whatever_the_write_window() {
    let redis = RedisServer::start();
    for window in [1, 0] {
        let config = standalone_config(&redis.addr(), DEFAULT_SERVICE).replace(
            "command_timeout = \"5s\"",
            &format!("command_timeout = \"5s\"\nwrites_in_flight = {window}"),
        );
        let kg = Keygate::start_with(&config);
        wait_serving(kg.port());
        let port = kg.port();
        let slow = std::thread::spawn(move || {
            let mut c = RawConn::connect(port);
            c.cmd_str(&["EVAL", &busy_script(300), "0"])
        });
        // The script is on its way to Redis before the pipelines start.
        wait_keygate_read(port, "eval");
        let clients: Vec<_> = (0..16)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut bytes = Vec::new();
                    let mut expected = Vec::new();
                    for i in 0..300 {
                        let key = format!("w{window}:{t}:{i}");
                        let value = format!("{t}-{i}");
                        bytes.extend(resp_command(&["SET", &key, &value]));
                        bytes.extend(resp_command(&["GET", &key]));
                        expected.extend_from_slice(b"+OK\r\n");
                        expected.extend(format!("${}\r\n{value}\r\n", value.len()).into_bytes());
                    }
                    let replies = exchange(port, &bytes, 600);
                    assert!(
                        replies == expected,
                        "client {t} (writes_in_flight = {window}): replies out of order or wrong"
                    );
                })
            })
            .collect();
        for client in clients {
            client.join().expect("client thread");
        }
        assert_eq!(slow.join().expect("script thread"), ":1\r\n");
    }
}
