//! A client's commands take effect on Redis in the order it sent them,
//! whichever backend connection each one travels on: a pipeline that moves
//! from a shared connection to a dedicated one (MULTI, WATCH, a blocking
//! command, SUBSCRIBE) and back sees its own earlier writes.
mod common;
use common::*;

fn setup() -> (RedisServer, Keygate) {
    let redis = RedisServer::start();
    let kg = Keygate::start(&redis);
    wait_serving(kg.port());
    (redis, kg)
}

/// Sends every command in one write and reads one reply per command.
fn pipeline(c: &mut RawConn, commands: &[Vec<String>]) -> Vec<String> {
    let mut bytes = Vec::new();
    for args in commands {
        bytes.extend(resp_command(args));
    }
    c.send(&bytes);
    (0..commands.len())
        .map(|_| String::from_utf8_lossy(&c.read_reply()).into_owned())
        .collect()
}

fn cmd(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_transaction_sees_the_write_pipelined_before_it() {
    let (_redis, kg) = setup();
    let mut c = RawConn::connect(kg.port());
    for i in 0..100 {
        let value = format!("v{i}");
        let replies = pipeline(
            &mut c,
            &[
                cmd(&["SET", "k1", &value]),
                cmd(&["MULTI"]),
                cmd(&["GET", "k1"]),
                cmd(&["EXEC"]),
                cmd(&["GET", "k1"]),
            ],
        );
        let expected = format!("${}\r\n{value}\r\n", value.len());
        assert_eq!(
            replies,
            [
                "+OK\r\n".to_string(),
                "+OK\r\n".to_string(),
                "+QUEUED\r\n".to_string(),
                format!("*1\r\n{expected}"),
                expected.clone(),
            ],
            "pipeline {i}"
        );
    }
}

#[test]
fn a_blocking_command_runs_after_the_writes_pipelined_before_it() {
    let (_redis, kg) = setup();
    let mut c = RawConn::connect(kg.port());
    for i in 0..20 {
        assert_eq!(c.cmd_str(&["RPUSH", "list", "stale"]), ":1\r\n");
        // Run first, BLPOP would pop the element DEL removes.
        let replies = pipeline(
            &mut c,
            &[cmd(&["DEL", "list"]), cmd(&["BLPOP", "list", "0.01"])],
        );
        assert_eq!(replies, [":1\r\n", "*-1\r\n"], "pipeline {i}");
    }
}

#[test]
fn watch_sees_the_write_pipelined_before_it() {
    let (_redis, kg) = setup();
    let mut c = RawConn::connect(kg.port());
    for i in 0..100 {
        let value = format!("w{i}");
        let replies = pipeline(
            &mut c,
            &[
                cmd(&["SET", "w", &value]),
                cmd(&["WATCH", "w"]),
                cmd(&["GET", "w"]),
                cmd(&["UNWATCH"]),
                cmd(&["GET", "w"]),
            ],
        );
        let bulk = format!("${}\r\n{value}\r\n", value.len());
        assert_eq!(replies[2], bulk, "pipeline {i}");
        assert_eq!(replies[4], bulk, "pipeline {i}");
    }
}

#[test]
fn a_subscriber_gets_the_message_published_after_subscribing() {
    let (_redis, kg) = setup();
    let mut c = RawConn::connect(kg.port());
    let mut publisher = RawConn::connect(kg.port());
    let replies = pipeline(
        &mut c,
        &[cmd(&["SET", "before", "1"]), cmd(&["SUBSCRIBE", "ch"])],
    );
    assert_eq!(replies[0], "+OK\r\n");
    assert_eq!(replies[1], "*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n");
    assert_eq!(publisher.cmd_str(&["PUBLISH", "ch", "m"]), ":1\r\n");
    assert_eq!(
        String::from_utf8_lossy(&c.read_reply()),
        "*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nm\r\n"
    );
}

/// Found by the isolation fuzzer: RESET pipelined behind a command still
/// waiting on the dedicated connection left the client without replies.
#[test]
fn reset_after_a_blocking_command_answers_both() {
    let (_redis, kg) = setup();
    let mut c = RawConn::connect(kg.port());
    for _ in 0..10 {
        let replies = pipeline(&mut c, &[cmd(&["BRPOP", "n", "0.001"]), cmd(&["RESET"])]);
        assert_eq!(replies, ["*-1\r\n", "+RESET\r\n"]);
        let replies = pipeline(
            &mut c,
            &[
                cmd(&["XREAD", "BLOCK", "2", "STREAMS", "x", "$"]),
                cmd(&["RESET"]),
                cmd(&["PING"]),
            ],
        );
        assert_eq!(replies, ["*-1\r\n", "+RESET\r\n", "+PONG\r\n"]);
    }
}
