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

/// A namespaced service with a default TTL, whose replies all have plans
/// (stripped key names, scoped INFO, dropped TTL follow-ups).
const PLANNED: &str = r#"
[[service]]
name = "default"
prefix = "plain:"
default_ttl = "1h"
"#;

fn planned_setup() -> (RedisServer, Keygate) {
    let redis = RedisServer::start();
    redis.cli(&["SET", "plain:mine", "v"]);
    redis.cli(&["SET", "other:theirs", "v"]);
    let kg = Keygate::start_with(&standalone_config(&redis.addr(), PLANNED));
    wait_serving(kg.port());
    (redis, kg)
}

/// KEYS, SCAN, INFO keyspace and a SET (whose TTL follow-up keygate adds)
/// as the client sees them; the same on a client that never subscribed.
fn planned_replies(c: &mut RawConn) -> Vec<String> {
    let mut replies = vec![
        c.cmd_str(&["KEYS", "*"]),
        c.cmd_str(&["SCAN", "0", "COUNT", "100"]),
    ];
    let info = c.cmd_str(&["INFO", "keyspace"]);
    assert!(!info.contains("keys="), "keyspace counts leaked: {info}");
    replies.push(c.cmd_str(&["SET", "written", "v"]));
    // Nothing else arrives: a TTL follow-up's reply would be read here.
    replies.push(c.cmd_str(&["PING"]));
    replies
}

#[test]
fn replies_after_unsubscribe_get_their_plans_resp2() {
    let (redis, kg) = planned_setup();
    let mut plain = RawConn::connect(kg.port());
    let expected = planned_replies(&mut plain);
    assert_eq!(
        expected,
        [
            "*1\r\n$4\r\nmine\r\n",
            "*2\r\n$1\r\n0\r\n*1\r\n$4\r\nmine\r\n",
            "+OK\r\n",
            "+PONG\r\n"
        ]
    );
    redis.cli(&["DEL", "plain:written"]);
    let mut c = RawConn::connect(kg.port());
    assert_eq!(
        c.cmd_str(&["SUBSCRIBE", "ch"]),
        "*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
    );
    assert_eq!(
        c.cmd_str(&["UNSUBSCRIBE"]),
        "*3\r\n$11\r\nunsubscribe\r\n$2\r\nch\r\n:0\r\n"
    );
    assert_eq!(planned_replies(&mut c), expected);
    let ttl: i64 = redis.cli(&["TTL", "plain:written"]).parse().unwrap();
    assert!(ttl > 0, "default_ttl not applied: {ttl}");
}

#[test]
fn pipelined_subscribe_unsubscribe_then_commands_get_their_plans() {
    let (_redis, kg) = planned_setup();
    let mut c = RawConn::connect(kg.port());
    let mut burst = resp_command(&["SUBSCRIBE", "a", "b"]);
    burst.extend(resp_command(&["PSUBSCRIBE", "p*"]));
    // While subscribed (RESP2) Redis refuses SET: one error, no follow-up.
    burst.extend(resp_command(&["SET", "k", "v"]));
    burst.extend(resp_command(&["UNSUBSCRIBE"]));
    burst.extend(resp_command(&["PUNSUBSCRIBE"]));
    burst.extend(resp_command(&["KEYS", "*"]));
    c.send(&burst);
    let replies: Vec<String> = (0..8).map(|_| text(c.read_reply())).collect();
    assert_eq!(replies[0], "*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n");
    assert_eq!(replies[2], "*3\r\n$10\r\npsubscribe\r\n$2\r\np*\r\n:3\r\n");
    assert!(
        replies[3].starts_with("-ERR Can't execute 'set'"),
        "{replies:?}"
    );
    assert!(
        replies[4].starts_with("*3\r\n$11\r\nunsubscribe\r\n"),
        "{replies:?}"
    );
    assert!(replies[5].ends_with(":1\r\n"), "{replies:?}");
    assert_eq!(
        replies[6],
        "*3\r\n$12\r\npunsubscribe\r\n$2\r\np*\r\n:0\r\n"
    );
    assert_eq!(replies[7], "*1\r\n$4\r\nmine\r\n");
    assert_eq!(c.cmd_str(&["PING"]), "+PONG\r\n");
}

#[test]
fn subscribe_inside_multi_is_refused_and_replies_keep_their_plans() {
    let (_redis, kg) = planned_setup();
    let mut c = RawConn::connect(kg.port());
    assert_eq!(c.cmd_str(&["MULTI"]), "+OK\r\n");
    let refused = c.cmd_str(&["SUBSCRIBE", "x"]);
    assert!(
        refused.starts_with("-ERR keygate: 'subscribe' cannot be used inside MULTI"),
        "{refused}"
    );
    assert_eq!(c.cmd_str(&["KEYS", "*"]), "+QUEUED\r\n");
    assert!(c.cmd_str(&["EXEC"]).starts_with("-EXECABORT"));
    assert_eq!(planned_replies(&mut c)[0], "*1\r\n$4\r\nmine\r\n");
    assert_eq!(c.cmd_str(&["MULTI"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["KEYS", "*"]), "+QUEUED\r\n");
    // KEYS order is the hash table's: look at the names, not their order.
    let exec = c.cmd_str(&["EXEC"]);
    assert!(exec.starts_with("*1\r\n*2\r\n"), "{exec}");
    assert!(
        exec.contains("$4\r\nmine\r\n") && exec.contains("$7\r\nwritten\r\n"),
        "{exec}"
    );
}

#[test]
fn resp3_replies_while_subscribed_get_their_plans() {
    let (_redis, kg) = planned_setup();
    let mut c = RawConn::connect(kg.port());
    assert!(text(c.cmd(&["HELLO", "3"])).starts_with('%'));
    assert_eq!(
        c.cmd_str(&["SUBSCRIBE", "ch"]),
        ">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
    );
    assert_eq!(c.cmd_str(&["KEYS", "*"]), "*1\r\n$4\r\nmine\r\n");
    assert_eq!(c.cmd_str(&["SET", "k", "v"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["PING"]), "+PONG\r\n");
    assert_eq!(
        c.cmd_str(&["UNSUBSCRIBE"]),
        ">3\r\n$11\r\nunsubscribe\r\n$2\r\nch\r\n:0\r\n"
    );
    let keys = c.cmd_str(&["KEYS", "*"]);
    assert!(
        keys.starts_with("*2\r\n") && !keys.contains("plain:"),
        "{keys}"
    );
}

/// Redis's "PubSub messages with CLIENT REPLY OFF" (unit/pubsub), byte for
/// byte against redis-server: subscription confirmations and messages are
/// pushed even while replies are off (Redis's CLIENT_PUSHING), in RESP3 and
/// RESP2; keygate dropped the confirmations, and the client waited forever.
#[test]
fn subscriptions_are_confirmed_while_replies_are_off() {
    let (redis, kg) = setup();
    let run = |port: u16, resp3: bool| -> Vec<String> {
        let mut sub = RawConn::connect(port);
        let mut publisher = RawConn::connect(port);
        let mut seen = Vec::new();
        let read = |conn: &mut RawConn| {
            text(
                conn.try_read_reply(Duration::from_secs(5))
                    .expect("a frame while replies are off"),
            )
        };
        if resp3 {
            sub.cmd(&["HELLO", "3"]);
        }
        sub.send(&resp_command(&["CLIENT", "REPLY", "OFF"]));
        sub.send(&resp_command(&["SUBSCRIBE", "channel"]));
        seen.push(read(&mut sub));
        sub.send(&resp_command(&["PSUBSCRIBE", "ch*"]));
        seen.push(read(&mut sub));
        if resp3 {
            // RESP2 allows no CLIENT while subscribed.
            sub.send(&resp_command(&["CLIENT", "REPLY", "OFF"]));
        }
        seen.push(publisher.cmd_str(&["PUBLISH", "channel", "hello"]));
        seen.push(read(&mut sub));
        seen.push(read(&mut sub));
        if resp3 {
            sub.send(&resp_command(&["CLIENT", "REPLY", "OFF"]));
        }
        sub.send(&resp_command(&["UNSUBSCRIBE", "channel"]));
        seen.push(read(&mut sub));
        sub.send(&resp_command(&["PUNSUBSCRIBE", "ch*"]));
        seen.push(read(&mut sub));
        seen
    };
    for resp3 in [true, false] {
        let direct = run(redis.port(), resp3);
        assert_eq!(run(kg.port(), resp3), direct, "resp3: {resp3}");
    }
}

const NOTIFIED: &str = r#"
[[service]]
name = "app"
prefix = "app:"
password = "apppw"

[[service]]
name = "other"
prefix = "other:"
password = "otherpw"
"#;

/// Keyspace notifications for a namespaced service, as Redis sends them to
/// a client of its own keyspace: `PSUBSCRIBE *` gets the keyspace and
/// keyevent messages of the service's keys (without the prefix) and its
/// own channels' messages, nothing of another service's; SUBSCRIBE of a
/// keyevent channel gets the service's keys only. The same commands sent
/// directly to Redis by a client whose keys have no prefix are the
/// reference, byte for byte, in RESP2 and RESP3.
#[test]
fn keyspace_notifications_reach_a_namespace_for_its_own_keys() {
    let redis = RedisServer::start();
    redis.cli(&["CONFIG", "SET", "notify-keyspace-events", "KEA"]);
    let kg = Keygate::start_with(&standalone_config(&redis.addr(), NOTIFIED));
    kg.wait_ready();
    for protocol in ["2", "3"] {
        let mut direct = RawConn::connect(redis.port());
        let mut direct_writer = RawConn::connect(redis.port());
        let mut app = RawConn::login(kg.port(), "app", "apppw");
        let mut app_writer = RawConn::login(kg.port(), "app", "apppw");
        let mut other = RawConn::login(kg.port(), "other", "otherpw");
        for c in [&mut direct, &mut app] {
            c.cmd_str(&["HELLO", protocol]);
        }
        let subscribe = |c: &mut RawConn| {
            c.send(&resp_command(&["PSUBSCRIBE", "*", "n*"]));
            let mut replies = vec![text(c.read_reply()), text(c.read_reply())];
            c.send(&resp_command(&["SUBSCRIBE", "__keyevent@0__:expired"]));
            replies.push(text(c.read_reply()));
            replies
        };
        assert_eq!(subscribe(&mut app), subscribe(&mut direct));
        let writes: [&[&str]; 3] = [
            &["SET", "foo", "bar"],
            // Not 1 ms: Redis deletes at once, with a "del" event and no
            // "expired", a key whose expiry is already past when PEXPIRE
            // checks it, and 1 ms has passed whenever its clock ticks
            // between reading the time and checking it.
            &["PEXPIRE", "foo", "100"],
            &["PUBLISH", "news", "hi"],
        ];
        let mut seen = Vec::new();
        let mut unsubscribed = Vec::new();
        let rounds = [
            (&mut direct, &mut direct_writer),
            (&mut app, &mut app_writer),
        ];
        for (through_keygate, (c, w)) in rounds.into_iter().enumerate() {
            if through_keygate == 1 {
                // Another service's keys and channels come first: if
                // anything of them leaked, it would be read before the
                // service's own.
                other.cmd_str(&["SET", "foo", "x"]);
                // The service's hidden patterns match no other service's
                // channel: nobody receives this.
                assert_eq!(other.cmd_str(&["PUBLISH", "news", "theirs"]), ":0\r\n");
            }
            for cmd in writes {
                w.cmd_str(cmd);
            }
            // set: keyspace + keyevent; pexpire: both; expired: both, and the
            // SUBSCRIBE; news: one per pattern.
            let got: Vec<String> = (0..9)
                .map(|_| {
                    text(
                        c.try_read_reply(Duration::from_secs(10))
                            .expect("a message"),
                    )
                })
                .collect();
            seen.push(got);
            assert!(c.try_read_reply(Duration::from_millis(200)).is_none());
            unsubscribed.push(c.cmd_str(&["PUNSUBSCRIBE", "*"]));
            c.send(&resp_command(&["PUNSUBSCRIBE"]));
            unsubscribed.push(text(c.read_reply()));
            unsubscribed.push(c.cmd_str(&["UNSUBSCRIBE"]));
        }
        let direct_seen = seen[0].clone();
        let app_seen = seen[1].clone();
        // Expiry happens when Redis gets to it: compare as sets of messages.
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        assert_eq!(sorted(app_seen), sorted(direct_seen), "RESP{protocol}");
        assert_eq!(unsubscribed[3..], unsubscribed[..3]);
        // Cleaned up for the next round; the other service's key stays theirs.
        redis.cli(&["DEL", "foo", "app:foo"]);
        assert_eq!(redis.cli(&["GET", "other:foo"]), "x");
        redis.cli(&["DEL", "other:foo"]);
    }
}
