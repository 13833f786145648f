//! Every error keygate writes itself, compared byte for byte with what
//! redis-server 7.0.15 writes for the same input: each input goes to
//! redis-server directly and through keygate as a plain unprefixed service
//! and as a namespaced admin service (with `allow_scripts` and a TTL
//! policy, so keygate's own option parsers read the requests). The few
//! intended differences are listed in [`INTENDED`] with their reasons.
mod common;

use common::*;

const SERVICES: &str = r#"
[[service]]
name = "default"
prefix = ""
isolation = false

[[service]]
name = "ops"
prefix = "ops:"
password = "opspw"
admin = true
allow_scripts = true
default_ttl = "1h"
"#;

/// Inputs keygate answers (or refuses) itself on at least one of the two
/// services, each a sequence of commands run on one fresh connection; every
/// reply of the sequence is compared.
const CASES: &[&[&[&str]]] = &[
    // The command table: unknown commands, subcommands and arity.
    &[&["FOO", "a", "b"]],
    &[&["FOO"]],
    &[&["CONFIG", "NOPE"]],
    &[&["OBJECT", "NOPE", "k"]],
    &[&["GET"]],
    &[&["GET", "a", "b"]],
    &[&["CONFIG"]],
    &[&["CONFIG", "GET"]],
    &[&["ECHO"]],
    &[&["PING", "a", "b", "c"]],
    &[&["PING", "a", "b"]],
    &[&["DBSIZE", "x"]],
    &[&["RANDOMKEY", "x"]],
    &[&["ACL", "WHOAMI", "x"]],
    // numkeys.
    &[&["LMPOP", "x", "a", "LEFT"]],
    &[&["LMPOP", "0", "a", "LEFT"]],
    &[&["LMPOP", "-1", "a", "LEFT"]],
    &[&["LMPOP", "3", "a", "LEFT"]],
    &[&["LMPOP", "2", "a", "LEFT"]],
    &[&["BLMPOP", "0", "x", "a", "LEFT"]],
    &[&["BLMPOP", "0", "0", "a", "LEFT"]],
    &[&["BLMPOP", "x", "3", "a", "LEFT"]],
    &[&["BLMPOP", "0", "3", "a", "LEFT"]],
    &[&["ZMPOP", "x", "a", "MIN"]],
    &[&["ZMPOP", "0", "a", "MIN"]],
    &[&["ZMPOP", "5", "a", "MIN"]],
    &[&["BZMPOP", "0", "x", "a", "MIN"]],
    &[&["BZMPOP", "0", "-2", "a", "MIN"]],
    &[&["BZMPOP", "x", "5", "a", "MIN"]],
    &[&["SINTERCARD", "x", "a"]],
    &[&["SINTERCARD", "0", "a"]],
    &[&["SINTERCARD", "5", "a"]],
    &[&["ZINTERCARD", "x", "a"]],
    &[&["ZINTERCARD", "0", "a"]],
    &[&["ZINTERCARD", "-1", "a"]],
    &[&["ZINTERCARD", "5", "a"]],
    &[&["ZUNIONSTORE", "d", "x", "a"]],
    &[&["ZUNIONSTORE", "d", "0", "a"]],
    &[&["ZUNIONSTORE", "d", "5", "a"]],
    &[&["ZINTERSTORE", "d", "-1", "a"]],
    &[&["ZDIFFSTORE", "d", "3", "a"]],
    &[&["ZUNION", "5", "a"]],
    &[&["ZINTER", "x", "a"]],
    &[&["ZDIFF", "0", "a"]],
    &[&["EVAL", "return 1", "5", "a"]],
    &[&["EVAL", "return 1", "-1", "a"]],
    &[&["EVAL", "return 1", "y", "a"]],
    &[&[
        "EVALSHA",
        "0000000000000000000000000000000000000000",
        "2",
        "a",
    ]],
    &[&["FCALL", "f", "x"]],
    &[&["FCALL", "f", "-1"]],
    &[&["FCALL_RO", "f", "3", "a"]],
    &[&["FCALL", "nofunc", "x"]],
    // Options keygate reads itself for a namespaced service.
    &[&["SORT", "k", "FOO"]],
    &[&["SORT", "k", "LIMIT", "1"]],
    &[&["SORT", "k", "BY"]],
    &[&["SORT_RO", "k", "STORE", "d"]],
    &[&["GEORADIUS", "g", "0", "0", "1", "km", "STORE"]],
    &[&["GEORADIUS", "g", "0", "0", "1", "km", "FOO"]],
    &[&["GEORADIUSBYMEMBER", "g", "m", "1", "km", "STOREDIST"]],
    &[&["XREAD", "COUNT", "1"]],
    &[&["XREAD", "STREAMS", "a"]],
    &[&["XREAD", "STREAMS", "a", "b", "c"]],
    &[&["XREAD", "FOO", "STREAMS", "a", "0"]],
    &[&["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s"]],
    &[&["XREADGROUP", "STREAMS", "s", "0"]],
    &[&["SCAN", "0", "FOO", "bar"]],
    &[&["SCAN", "0", "MATCH"]],
    &[&["SCAN", "0", "COUNT"]],
    &[&["FLUSHDB", "FOO"]],
    &[&["FLUSHALL", "SYNC", "ASYNC"]],
    // TTL options, read by keygate's TTL policy for the namespaced service.
    &[&["EXPIRE", "k", "10", "FOO"]],
    &[&["EXPIRE", "k", "10", "NX", "XX"]],
    &[&["EXPIRE", "k", "10", "GT", "LT"]],
    &[&["PEXPIREAT", "k", "10", "NX", "GT"]],
    &[&["EXPIRE", "k", "x"]],
    &[&["SET", "k", "v", "NX", "XX"]],
    &[&["SET", "k", "v", "EX"]],
    &[&["SET", "k", "v", "EX", "10", "PX", "10"]],
    &[&["SET", "k", "v", "EX", "10", "KEEPTTL"]],
    &[&["SET", "k", "v", "FOO"]],
    &[&["SET", "k", "v", "EX", "x"]],
    &[&["SET", "k", "v", "EX", "0"]],
    &[&["GETEX", "k", "EX"]],
    &[&["GETEX", "k", "PERSIST", "EX", "10"]],
    &[&["GETEX", "k", "FOO"]],
    &[&["SETEX", "k", "x", "v"]],
    &[&["SETEX", "k", "0", "v"]],
    &[&["RESTORE", "k", "0", "x", "FOO"]],
    &[&["RESTORE", "k", "x", "x"]],
    // Connection commands keygate answers itself.
    &[&["CLIENT", "REPLY", "maybe"]],
    &[&["CLIENT", "REPLY"]],
    &[&["CLIENT", "SETNAME", "a b"]],
    &[&["CLIENT", "GETNAME", "x"]],
    &[&["CLIENT", "ID", "x"]],
    &[&["CLIENT", "NO-EVICT", "maybe"]],
    &[&["HELLO", "4"]],
    &[&["HELLO", "x"]],
    &[&["HELLO", "-1"]],
    &[&["HELLO", "3", "FOO"]],
    &[&["HELLO", "2", "AUTH", "a"]],
    &[&["HELLO", "2", "SETNAME", "a b"]],
    &[&["HELLO", "2", "AUTH", "nobody", "wrong"]],
    &[&["AUTH", "a", "b", "c"]],
    &[&["AUTH", "nobody", "wrong"]],
    &[&["SELECT", "x"]],
    &[&["SELECT", "-1"]],
    &[&["COMMAND", "GETKEYS"]],
    &[&["COMMAND", "GETKEYS", "nosuch"]],
    &[&["COMMAND", "GETKEYS", "GET"]],
    &[&["COMMAND", "GETKEYS", "PING"]],
    &[&["COMMAND", "GETKEYS", "EVAL", "s", "x"]],
    &[&["COMMAND", "GETKEYS", "ZUNIONSTORE", "d", "5", "a"]],
    // Transactions.
    &[&["EXEC"]],
    &[&["DISCARD"]],
    &[&["MULTI"], &["MULTI"], &["DISCARD"]],
    &[&["MULTI"], &["SAVE"], &["PING"], &["EXEC"]],
    &[&["MULTI"], &["SHUTDOWN"], &["EXEC"]],
    &[&["MULTI"], &["SYNC"], &["EXEC"]],
    &[&["MULTI"], &["GET"], &["EXEC"]],
    &[&["MULTI"], &["FOO"], &["EXEC"]],
    &[&["MULTI"], &["PING", "a", "b"], &["EXEC"]],
    &[&["MULTI"], &["LMPOP", "0", "a", "LEFT"], &["EXEC"]],
    &[&["MULTI"], &["EXPIRE", "k", "1", "FOO"], &["EXEC"]],
    &[
        &["MULTI"],
        &["SORT", "k", "FOO"],
        &["SET", "k", "v", "NX", "XX"],
        &["EXEC"],
    ],
    &[&["MULTI"], &["AUTH", "a", "b", "c"], &["EXEC"]],
    &[&["MULTI"], &["HELLO", "2"], &["EXEC"]],
    &[&["MULTI"], &["SELECT", "0"], &["EXEC"]],
    &[&["MULTI"], &["COMMAND", "COUNT"], &["EXEC"]],
    &[&["MULTI"], &["COMMAND", "GETKEYS", "GET", "k"], &["EXEC"]],
    &[&["MULTI"], &["SUBSCRIBE", "c"], &["EXEC"]],
    &[&["MULTI"], &["DBSIZE"], &["EXEC"]],
    // Another database.
    &[&["SELECT", "1"]],
    &[&["SELECT", "99999"]],
    &[&["MOVE", "k", "1"]],
    &[&["COPY", "a", "b", "DB", "1"]],
];

/// Where keygate deliberately answers otherwise than redis-server: the
/// command (the first command of the case that differs), the service it
/// differs for (`None`: both), and why.
const INTENDED: &[(&[&str], Option<&str>, &str)] = &[
    (
        &["FCALL", "nofunc", "x"],
        Some("ops"),
        "Redis looks the function up before it reads numkeys; keygate must \
         find the keys first and cannot know which functions exist",
    ),
    (
        &["AUTH", "a", "b", "c"],
        None,
        "keygate answers AUTH itself (the login selects a service) and cannot queue it",
    ),
    (
        &["HELLO", "2"],
        None,
        "keygate answers HELLO itself (protocol and login) and cannot queue it",
    ),
    (
        &["COMMAND", "COUNT"],
        None,
        "keygate answers COMMAND COUNT from its own table and cannot queue it",
    ),
    (
        &["COMMAND", "GETKEYS", "GET", "k"],
        None,
        "keygate answers COMMAND GETKEYS from its own table and cannot queue it",
    ),
    (
        &["SUBSCRIBE", "c"],
        None,
        "Redis puts SUBSCRIBE's confirmations in EXEC's reply beyond the count it announces",
    ),
    (
        &["DBSIZE"],
        Some("ops"),
        "a namespaced service's DBSIZE is a procedure of several commands, which cannot run inside MULTI",
    ),
];

/// The replies of one case on one connection.
fn run(conn: &mut RawConn, case: &[&[&str]]) -> Vec<String> {
    case.iter()
        .map(|cmd| String::from_utf8_lossy(&conn.cmd(cmd)).into_owned())
        .collect()
}

#[test]
fn errors_keygate_writes_are_redis_own() {
    let redis = RedisServer::start();
    let kg = Keygate::start_with(&standalone_config(&redis.addr(), SERVICES));
    wait_serving(kg.port());
    // FCALL's numkeys errors are Redis's for a function that exists.
    let library = "#!lua name=lib\nredis.register_function('f', function() return 1 end)";
    assert_eq!(redis.cli(&["FUNCTION", "LOAD", library]), "lib");
    let mut differences = Vec::new();
    let mut intended_seen: Vec<&[&str]> = Vec::new();
    for case in CASES {
        let mut direct = RawConn::connect(redis.port());
        let want = run(&mut direct, case);
        for service in ["default", "ops"] {
            let mut conn = RawConn::connect(kg.port());
            if service == "ops" {
                assert_eq!(conn.cmd_str(&["AUTH", "ops", "opspw"]), "+OK\r\n");
            }
            let got = run(&mut conn, case);
            if got == want {
                continue;
            }
            let intended = INTENDED
                .iter()
                .find(|(cmd, s, _)| case.contains(cmd) && s.is_none_or(|s| s == service));
            match intended {
                Some((cmd, _, _)) => intended_seen.push(cmd),
                None => differences.push(format!(
                    "{service}: {case:?}\n  redis:   {want:?}\n  keygate: {got:?}"
                )),
            }
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    // Every intended difference is one (and so still needs its reason).
    for (cmd, _, reason) in INTENDED {
        assert!(
            intended_seen.contains(cmd),
            "{cmd:?} no longer differs ({reason})"
        );
    }
}
