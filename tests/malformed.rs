//! Malformed requests: each gets Redis's `-ERR Protocol error: ...` and only
//! its own connection is closed, while other clients keep working.
mod common;
use common::*;

use std::time::Duration;

/// 1 MiB, the smallest proto-max-bulk-len Redis accepts.
const MAX_BULK: usize = 1024 * 1024;

fn setup() -> (RedisServer, Keygate) {
    let redis = RedisServer::start_with(&["--proto-max-bulk-len", &MAX_BULK.to_string()]);
    let config = standalone_config(&redis.addr(), DEFAULT_SERVICE).replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:0\"\nproto_max_bulk_len = {MAX_BULK}"),
    );
    let kg = Keygate::start_with(&config);
    wait_serving(kg.port());
    (redis, kg)
}

/// Sends `bytes`, returns everything received and whether the peer closed.
fn send_malformed(port: u16, bytes: &[u8]) -> (String, bool) {
    let mut c = RawConn::connect(port);
    c.send(bytes);
    let reply = c
        .try_read_reply(Duration::from_secs(3))
        .map(|r| String::from_utf8_lossy(&r).into_owned())
        .unwrap_or_default();
    let closed = c.closed_within(Duration::from_secs(3));
    (reply, closed)
}

fn check_case(
    redis: &RedisServer,
    kg: &Keygate,
    bystander: &mut RawConn,
    bytes: &[u8],
    expected: &str,
) {
    let (direct, direct_closed) = send_malformed(redis.port(), bytes);
    let (via_keygate, closed) = send_malformed(kg.port(), bytes);
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(40)]).into_owned();
    assert_eq!(
        direct, expected,
        "redis-server itself answered {shown:?} differently"
    );
    assert!(direct_closed);
    assert_eq!(via_keygate, expected, "keygate's answer to {shown:?}");
    assert!(
        closed,
        "keygate did not close the connection after {shown:?}"
    );
    assert_eq!(bystander.cmd_str(&["PING"]), "+PONG\r\n");
    assert_eq!(
        bystander.cmd_str(&["INCR", "mal:count"]).chars().next(),
        Some(':')
    );
}

#[test]
fn protocol_errors_match_redis_and_close_only_that_client() {
    let (redis, kg) = setup();
    let mut bystander = RawConn::connect(kg.port());
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"*1\r\n+foo\r\n".to_vec(),
            "-ERR Protocol error: expected '$', got '+'\r\n",
        ),
        (
            b"*abc\r\n".to_vec(),
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*1\r\n$abc\r\n".to_vec(),
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*1\r\n$-5\r\n".to_vec(),
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            format!("*2\r\n$3\r\nSET\r\n${}\r\n", MAX_BULK + 1).into_bytes(),
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*99999999999\r\n".to_vec(),
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"SET \"foo bar\r\n".to_vec(),
            "-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
        (
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n$4\r\nPING\r\n".to_vec(),
            "-ERR Protocol error: expected '$', got '*'\r\n",
        ),
    ];
    for (bytes, expected) in &cases {
        check_case(&redis, &kg, &mut bystander, bytes, expected);
    }
}

#[test]
fn valid_requests_before_the_error_are_answered_first() {
    let (_redis, kg) = setup();
    let mut c = RawConn::connect(kg.port());
    let mut bytes = resp_command(&["SET", "mal:a", "1"]);
    bytes.extend(resp_command(&["GET", "mal:a"]));
    bytes.extend_from_slice(b"*1\r\n+oops\r\n");
    bytes.extend(resp_command(&["SET", "mal:a", "never"]));
    c.send(&bytes);
    assert_eq!(String::from_utf8_lossy(&c.read_reply()), "+OK\r\n");
    assert_eq!(String::from_utf8_lossy(&c.read_reply()), "$1\r\n1\r\n");
    assert_eq!(
        String::from_utf8_lossy(&c.read_reply()),
        "-ERR Protocol error: expected '$', got '+'\r\n"
    );
    assert!(c.closed_within(Duration::from_secs(3)));
    let mut other = RawConn::connect(kg.port());
    assert_eq!(other.cmd_str(&["GET", "mal:a"]), "$1\r\n1\r\n");
}

#[test]
fn bulk_at_the_limit_is_accepted() {
    let (_redis, kg) = setup();
    let mut c = RawConn::connect(kg.port());
    let value = vec![b'x'; MAX_BULK];
    let reply = c.cmd(&[&b"SET"[..], b"mal:big", &value]);
    assert_eq!(String::from_utf8_lossy(&reply), "+OK\r\n");
    assert_eq!(
        c.cmd_str(&["STRLEN", "mal:big"]),
        format!(":{MAX_BULK}\r\n")
    );
}

#[test]
fn huge_argument_count_is_refused_without_buffering() {
    // Redis 7.0 accepts counts up to INT_MAX and waits for the arguments;
    // keygate caps the count (1024*1024, Redis's own inline/arg limits) so
    // one client cannot make it reserve memory for millions of arguments.
    let (_redis, kg) = setup();
    let (reply, closed) = send_malformed(kg.port(), b"*2000000\r\n");
    if !reply.is_empty() {
        assert!(reply.starts_with("-ERR Protocol error:"), "{reply}");
        assert!(closed);
    }
    let mut other = RawConn::connect(kg.port());
    assert_eq!(other.cmd_str(&["PING"]), "+PONG\r\n");
}
