//! Pub/sub through keygate, RESP2 and RESP3.
mod common;
use common::*;

use std::time::Duration;

fn setup() -> (RedisServer, Keygate) {
    let redis = RedisServer::start();
    let kg = Keygate::start(&redis);
    wait_serving(kg.port());
    (redis, kg)
}

fn text(b: Vec<u8>) -> String {
    String::from_utf8_lossy(&b).into_owned()
}

#[test]
fn subscribe_publish_unsubscribe_resp2() {
    let (_redis, kg) = setup();
    let mut sub = RawConn::connect(kg.port());
    let mut publisher = RawConn::connect(kg.port());
    assert_eq!(
        sub.cmd_str(&["SUBSCRIBE", "news"]),
        "*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"
    );
    assert_eq!(publisher.cmd_str(&["PUBLISH", "news", "hello"]), ":1\r\n");
    assert_eq!(
        text(sub.read_reply()),
        "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nhello\r\n"
    );
    // PING while subscribed answers in the RESP2 subscriber shape.
    assert_eq!(sub.cmd_str(&["PING"]), "*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    assert_eq!(
        sub.cmd_str(&["UNSUBSCRIBE", "news"]),
        "*3\r\n$11\r\nunsubscribe\r\n$4\r\nnews\r\n:0\r\n"
    );
    assert_eq!(publisher.cmd_str(&["PUBLISH", "news", "nobody"]), ":0\r\n");
}

#[test]
fn psubscribe_gets_pattern_messages() {
    let (_redis, kg) = setup();
    let mut sub = RawConn::connect(kg.port());
    let mut publisher = RawConn::connect(kg.port());
    assert_eq!(
        sub.cmd_str(&["PSUBSCRIBE", "ev.*"]),
        "*3\r\n$10\r\npsubscribe\r\n$4\r\nev.*\r\n:1\r\n"
    );
    assert_eq!(publisher.cmd_str(&["PUBLISH", "ev.login", "u1"]), ":1\r\n");
    assert_eq!(
        text(sub.read_reply()),
        "*4\r\n$8\r\npmessage\r\n$4\r\nev.*\r\n$8\r\nev.login\r\n$2\r\nu1\r\n"
    );
    assert_eq!(
        sub.cmd_str(&["PUNSUBSCRIBE"]),
        "*3\r\n$12\r\npunsubscribe\r\n$4\r\nev.*\r\n:0\r\n"
    );
}

#[test]
fn many_messages_arrive_in_order() {
    let (_redis, kg) = setup();
    let mut sub = RawConn::connect(kg.port());
    let mut publisher = RawConn::connect(kg.port());
    sub.cmd(&["SUBSCRIBE", "seq"]);
    let mut burst = Vec::new();
    for i in 0..500 {
        burst.extend(resp_command(&[
            "PUBLISH".to_string(),
            "seq".into(),
            i.to_string(),
        ]));
    }
    publisher.send(&burst);
    for _ in 0..500 {
        assert_eq!(text(publisher.read_reply()), ":1\r\n");
    }
    for i in 0..500 {
        let v = i.to_string();
        assert_eq!(
            text(sub.read_reply()),
            format!(
                "*3\r\n$7\r\nmessage\r\n$3\r\nseq\r\n${}\r\n{v}\r\n",
                v.len()
            )
        );
    }
}

#[test]
fn resp3_subscriber_gets_pushes_and_can_ping() {
    let (_redis, kg) = setup();
    let mut sub = RawConn::connect(kg.port());
    let mut publisher = RawConn::connect(kg.port());
    let hello = text(sub.cmd(&["HELLO", "3"]));
    assert!(hello.starts_with('%'), "{hello}");
    assert_eq!(
        sub.cmd_str(&["SUBSCRIBE", "r3"]),
        ">3\r\n$9\r\nsubscribe\r\n$2\r\nr3\r\n:1\r\n"
    );
    assert_eq!(publisher.cmd_str(&["PUBLISH", "r3", "push!"]), ":1\r\n");
    assert_eq!(
        text(sub.read_reply()),
        ">3\r\n$7\r\nmessage\r\n$2\r\nr3\r\n$5\r\npush!\r\n"
    );
    // In RESP3 a subscribed client may run ordinary commands.
    assert_eq!(sub.cmd_str(&["PING"]), "+PONG\r\n");
    assert_eq!(sub.cmd_str(&["SET", "r3:k", "v"]), "+OK\r\n");
    assert_eq!(sub.cmd_str(&["GET", "r3:k"]), "$1\r\nv\r\n");
    assert_eq!(publisher.cmd_str(&["PUBLISH", "r3", "again"]), ":1\r\n");
    assert_eq!(
        text(sub.read_reply()),
        ">3\r\n$7\r\nmessage\r\n$2\r\nr3\r\n$5\r\nagain\r\n"
    );
    assert_eq!(
        sub.cmd_str(&["UNSUBSCRIBE", "r3"]),
        ">3\r\n$11\r\nunsubscribe\r\n$2\r\nr3\r\n:0\r\n"
    );
    assert!(sub.try_read_reply(Duration::from_millis(200)).is_none());
}

#[test]
fn subscriber_disconnect_does_not_leak_messages() {
    let (redis, kg) = setup();
    {
        let mut sub = RawConn::connect(kg.port());
        sub.cmd(&["SUBSCRIBE", "gone"]);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n = redis.cli(&["PUBSUB", "NUMSUB", "gone"]);
        if n.ends_with('0') {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "subscription outlived its client: {n}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut c = RawConn::connect(kg.port());
    assert_eq!(c.cmd_str(&["PUBLISH", "gone", "x"]), ":0\r\n");
}

#[test]
fn multi_channel_subscribe_then_back_to_normal_commands() {
    let (_redis, kg) = setup();
    let mut sub = RawConn::connect(kg.port());
    sub.send(&resp_command(&["SUBSCRIBE", "a", "b", "c"]));
    for (i, ch) in ["a", "b", "c"].iter().enumerate() {
        assert_eq!(
            text(sub.read_reply()),
            format!("*3\r\n$9\r\nsubscribe\r\n$1\r\n{ch}\r\n:{}\r\n", i + 1)
        );
    }
    sub.send(&resp_command(&["UNSUBSCRIBE"]));
    let mut left = Vec::new();
    for _ in 0..3 {
        left.push(text(sub.read_reply()));
    }
    assert!(left[2].ends_with(":0\r\n"), "{left:?}");
    // Out of subscribed mode: ordinary commands and replies again.
    assert_eq!(sub.cmd_str(&["SET", "ps:k", "v"]), "+OK\r\n");
    assert_eq!(sub.cmd_str(&["GET", "ps:k"]), "$1\r\nv\r\n");
    assert_eq!(sub.cmd_str(&["PING"]), "+PONG\r\n");
}

#[test]
fn reset_leaves_subscribed_mode() {
    let (_redis, kg) = setup();
    let mut sub = RawConn::connect(kg.port());
    let mut publisher = RawConn::connect(kg.port());
    sub.cmd(&["SUBSCRIBE", "rst"]);
    assert_eq!(sub.cmd_str(&["RESET"]), "+RESET\r\n");
    assert_eq!(sub.cmd_str(&["GET", "ps:none"]), "$-1\r\n");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while publisher.cmd_str(&["PUBLISH", "rst", "x"]) != ":0\r\n" {
        assert!(
            std::time::Instant::now() < deadline,
            "RESET left the subscription behind"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(sub.try_read_reply(Duration::from_millis(200)).is_none());
}
