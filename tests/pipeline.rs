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
