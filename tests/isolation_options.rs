//! Issue 13's option holes, each reproduced against a real redis-server:
//! Redis reads an option up to its first NUL byte, case-insensitively, and
//! takes the last of repeated STOREs, so keygate must too. Every test sends
//! the hostile request as `billing` and checks the effect on the backend
//! directly: `auth`'s keys untouched, nothing written outside `billing:`,
//! no immortal key for the TTL-governed `ttl` service.
mod common;

use std::time::Duration;

use common::*;

const SERVICES: &str = r#"
[[service]]
name = "default"
prefix = "legacy:"

[[service]]
name = "billing"
prefix = "billing:"
password = "billpw"
databases = [0]

[[service]]
name = "auth"
prefix = "auth:"
password = "authpw"

[[service]]
name = "ttl"
prefix = "ttl:"
password = "ttlpw"
default_ttl = "60s"
max_ttl = "1h"
ttl_over_max = "clamp"

[[service]]
name = "strict"
prefix = "strict:"
password = "strictpw"
default_ttl = "60s"
max_ttl = "1h"
ttl_over_max = "reject"
"#;

fn setup() -> (RedisServer, Keygate) {
    let redis = RedisServer::start();
    let kg = Keygate::start_with(&standalone_config(&redis.addr(), SERVICES));
    wait_serving(kg.port());
    (redis, kg)
}

/// A connection logged in as `password`'s service.
fn login(kg: &Keygate, password: &str) -> RawConn {
    let mut c = RawConn::connect(kg.port());
    assert_eq!(c.cmd(&["AUTH", password]), b"+OK\r\n");
    c
}

fn text(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply).into_owned()
}

/// `auth`'s canary, planted directly on the backend.
const CANARY: &str = "auth-canary-7f3a";

#[test]
fn sort_get_and_by_behind_a_nul_cannot_read_another_services_keys() {
    let (redis, kg) = setup();
    redis.cli(&["SET", "auth:1", CANARY]);
    redis.cli(&["HSET", "auth:h1", "f", CANARY]);
    redis.cli(&["SET", "billing:auth:1", "own"]);
    let mut c = login(&kg, "billpw");
    c.cmd(&["RPUSH", "l", "1"]);
    for args in [
        &[&b"SORT"[..], b"l", b"BY", b"nosort", b"GET\0", b"auth:*"][..],
        &[b"SORT", b"l", b"BY", b"nosort", b"get\0x", b"auth:h*->f"],
        &[b"SORT_RO", b"l", b"BY", b"nosort", b"GET\0", b"auth:*"],
        &[b"SORT", b"l", b"BY\0", b"auth:*", b"GET", b"#"],
    ] {
        let reply = text(&c.cmd(args));
        // Sorted by billing's own values ("own" is no score: Redis's error).
        assert!(!reply.contains(CANARY), "{args:?} read {reply}");
        assert!(!reply.starts_with("-NOPERM"), "{args:?}: {reply}");
    }
    // The pattern reads the service's own `auth:1`, which is billing:auth:1.
    let reply = text(&c.cmd(&["SORT", "l", "BY", "nosort", "GET", "auth:*"]));
    assert_eq!(reply, "*1\r\n$3\r\nown\r\n");
}

#[test]
fn sort_store_behind_a_nul_writes_only_inside_the_namespace() {
    let (redis, kg) = setup();
    redis.cli(&["SET", "auth:victim", CANARY]);
    let mut c = login(&kg, "billpw");
    c.cmd(&["RPUSH", "l", "1"]);
    let reply = c.cmd(&[&b"SORT"[..], b"l", b"STORE\0", b"auth:victim"]);
    assert_eq!(reply, b":1\r\n");
    assert_eq!(redis.cli(&["GET", "auth:victim"]), CANARY);
    assert_eq!(
        redis.cli(&["LRANGE", "billing:auth:victim", "0", "-1"]),
        "1"
    );
}

#[test]
fn georadius_stores_into_the_last_store_inside_the_namespace() {
    let (redis, kg) = setup();
    redis.cli(&["SET", "auth:victim", CANARY]);
    let mut c = login(&kg, "billpw");
    c.cmd(&["GEOADD", "g", "13.361389", "38.115556", "palermo"]);
    let store = |c: &mut RawConn, args: &[&[u8]]| text(&c.cmd(args));
    for args in [
        &[
            &b"GEORADIUS"[..],
            b"g",
            b"13",
            b"38",
            b"200",
            b"km",
            b"STORE",
            b"x",
            b"STORE",
            b"auth:victim",
        ][..],
        &[
            b"GEORADIUS",
            b"g",
            b"13",
            b"38",
            b"200",
            b"km",
            b"STORE",
            b"x",
            b"STOREDIST",
            b"auth:victim",
        ],
        &[
            b"GEORADIUS",
            b"g",
            b"13",
            b"38",
            b"200",
            b"km",
            b"STORE\0",
            b"auth:victim",
        ],
        &[
            b"GEORADIUSBYMEMBER",
            b"g",
            b"palermo",
            b"200",
            b"km",
            b"COUNT",
            b"1",
            b"storedist\0",
            b"auth:victim",
        ],
    ] {
        let reply = store(&mut c, args);
        assert_eq!(reply, ":1\r\n", "{args:?}");
        assert_eq!(redis.cli(&["GET", "auth:victim"]), CANARY, "{args:?}");
        assert_eq!(redis.cli(&["EXISTS", "billing:auth:victim"]), "1");
        redis.cli(&["DEL", "billing:auth:victim"]);
    }
}

/// COPY's `DB\0` is read as DB, as Redis reads it: database 1 is not one of
/// the service's.
#[test]
fn copy_db_behind_a_nul_is_refused() {
    let (redis, kg) = setup();
    let mut c = login(&kg, "billpw");
    c.cmd(&["SET", "x", "v"]);
    let reply = text(&c.cmd(&[&b"COPY"[..], b"x", b"y", b"DB\0", b"1"]));
    assert!(reply.starts_with("-NOPERM"), "{reply}");
    assert_eq!(redis.cli(&["-n", "1", "DBSIZE"]), "0");
}

#[test]
fn xread_streams_behind_a_nul_reads_only_own_streams() {
    let (redis, kg) = setup();
    // A foreign key literally named STREAMS, outside every namespace.
    redis.cli(&["XADD", "STREAMS", "*", "secret", CANARY]);
    let mut c = login(&kg, "billpw");
    let reply = text(&c.cmd(&[&b"XREAD"[..], b"STREAMS\0", b"STREAMS", b"x", b"0", b"0"]));
    assert!(!reply.contains(CANARY), "{reply}");
    // The reply check alone hid the foreign stream's entries above; a
    // consumer group shows whether Redis read it: delivered entries stay
    // pending in the group.
    redis.cli(&["XGROUP", "CREATE", "STREAMS", "g", "0"]);
    assert_eq!(
        text(&c.cmd(&["XGROUP", "CREATE", "y", "g", "$", "MKSTREAM"])),
        "+OK\r\n"
    );
    c.cmd(&[
        &b"XREADGROUP"[..],
        b"GROUP",
        b"g",
        b"c",
        b"STREAMS\0",
        b"STREAMS",
        b"y",
        b">",
        b">",
    ]);
    c.cmd(&[
        "XREADGROUP",
        "COUNT",
        "1",
        "GROUP",
        "g",
        "c",
        "STREAMS",
        "STREAMS",
        ">",
    ]);
    assert_eq!(
        redis.cli(&["XPENDING", "STREAMS", "g"]).lines().next(),
        Some("0"),
        "the foreign stream's entries were delivered to billing"
    );
}

#[test]
fn xread_block_behind_a_nul_does_not_block_a_shared_connection() {
    let (redis, kg) = setup();
    let mut blocked = login(&kg, "billpw");
    blocked.send(&resp_command(&[
        &b"XREAD"[..],
        b"BLOCK\0",
        b"0",
        b"STREAMS",
        b"s",
        b"$",
    ]));
    assert!(
        wait_until(Duration::from_secs(10), || {
            redis
                .cli(&["INFO", "clients"])
                .contains("blocked_clients:1")
        }),
        "the XREAD never blocked on the backend"
    );
    // Another service's requests go on being answered while it blocks.
    let mut other = login(&kg, "authpw");
    for i in 0..20 {
        let value = format!("v{i}");
        assert_eq!(other.cmd(&["SET", "k", &value]), b"+OK\r\n");
        assert_eq!(
            text(&other.cmd(&["GET", "k"])),
            format!("${}\r\n{value}\r\n", value.len())
        );
    }
    let mut writer = login(&kg, "billpw");
    assert!(text(&writer.cmd(&["XADD", "s", "*", "f", "v"])).starts_with('$'));
    let delivered = text(&blocked.read_reply());
    assert!(delivered.contains("\r\ns\r\n"), "{delivered}");
}

/// TTL of a backend key in ms (-1: none, -2: no key).
#[test]
fn ttl_options_behind_a_nul_are_governed() {
    let (redis, kg) = setup();
    let mut c = login(&kg, "ttlpw");
    let max_ms = 3_600_000;
    let governed = |redis: &RedisServer, key: &str| {
        let ttl = redis.pttl(key);
        assert!(ttl > 0 && ttl <= max_ms, "{key}: PTTL {ttl}");
    };
    for (key, opt) in [
        ("keepttl", &b"KEEPTTL\0"[..]),
        ("nx", b"NX\0"),
        ("xx", b"XX\0"),
        ("get", b"GET\0"),
    ] {
        if key != "nx" {
            // An immortal key the SET replaces (XX needs one to exist).
            redis.cli(&["SET", &format!("ttl:{key}"), "old"]);
        }
        c.cmd(&[b"SET", key.as_bytes(), b"v", opt]);
        governed(&redis, &format!("ttl:{key}"));
    }
    c.cmd(&[&b"SET"[..], b"ex", b"v", b"EX\0", b"99999999"]);
    governed(&redis, "ttl:ex");
    c.cmd(&["SET", "gt", "v"]);
    c.cmd(&[&b"EXPIRE"[..], b"gt", b"99999999", b"GT\0"]);
    governed(&redis, "ttl:gt");
    c.cmd(&["SET", "persist", "v"]);
    c.cmd(&[&b"GETEX"[..], b"persist", b"PERSIST\0"]);
    governed(&redis, "ttl:persist");
    redis.cli(&["SET", "payload", "x"]);
    let dump = {
        let mut direct = RawConn::connect(redis.port());
        let reply = direct.cmd(&["DUMP", "payload"]);
        let body = reply.splitn(2, |&b| b == b'\n').nth(1).expect("bulk");
        body[..body.len() - 2].to_vec()
    };
    c.cmd(&["SET", "restored", "old"]);
    let reply = c.cmd(&[&b"RESTORE"[..], b"restored", b"0", &dump, b"REPLACE\0"]);
    assert_eq!(reply, b"+OK\r\n");
    governed(&redis, "ttl:restored");

    // Reject mode refuses instead of clamping.
    let mut strict = login(&kg, "strictpw");
    strict.cmd(&["SET", "gt", "v"]);
    let reply = text(&strict.cmd(&[&b"EXPIRE"[..], b"gt", b"99999999", b"GT\0"]));
    assert!(reply.starts_with("-ERR keygate: TTL"), "{reply}");
    governed(&redis, "strict:gt");
    // Options Redis refuses are refused here with Redis's own text.
    let reply = text(&strict.cmd(&["SET", "k", "v", "KEEPTTL", "EX", "10"]));
    assert_eq!(reply, "-ERR syntax error\r\n");
    let reply = text(&strict.cmd(&["EXPIRE", "gt", "10", "SOON"]));
    assert_eq!(reply, "-ERR Unsupported option SOON\r\n");
}
