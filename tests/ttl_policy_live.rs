//! TTL policy against a real Redis 7.0: every command the policy says may
//! create a key, run as governed (request plus follow-ups), leaves every key
//! it created or wrote with `0 < PTTL <= 60000`; no sequence of governed
//! commands leaves a key without a TTL; and every WRITE command of the table
//! is either sampled here or listed by the module as unable to create a key.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{redis_rs, RedisServer};
use keygate::command::{self, CommandSpec, Flags};
use keygate::config::TtlOverMax;
use keygate::policy::ttl::{governs, never_creates_reason, TtlPolicy};
use keygate::protocol::request::Request;
use redis::Value;

/// Default and maximum TTL of the policy under test.
const TTL_MS: i64 = 60_000;

/// Placeholder argument replaced by `DUMP src` taken after the setup.
const DUMP: &str = "$DUMP";
/// Placeholder argument replaced by the SHA1 of the script the setup loaded.
const SHA: &str = "$SHA";

/// A Lua script that writes its first key.
const SCRIPT: &str = "return redis.call('SET', KEYS[1], 'v')";
/// A function library with `setit`, which writes its first key.
const LIBRARY: &str = "#!lua name=ttltest\nredis.register_function('setit', function(keys, args) return redis.call('SET', keys[1], 'v') end)";

/// One sample: raw setup commands (not governed, so they may leave keys
/// without a TTL), the governed command, and the keys it must leave written.
struct Sample {
    setup: &'static [&'static [&'static str]],
    command: &'static [&'static str],
    written: &'static [&'static str],
}

const fn sample(
    setup: &'static [&'static [&'static str]],
    command: &'static [&'static str],
    written: &'static [&'static str],
) -> Sample {
    Sample {
        setup,
        command,
        written,
    }
}

/// At least one sample per command the policy governs.
fn samples() -> Vec<Sample> {
    vec![
        sample(&[], &["APPEND", "s", "x"], &["s"]),
        sample(&[&["SET", "s", "v"]], &["APPEND", "s", "x"], &["s"]),
        sample(&[], &["BITFIELD", "b", "SET", "u8", "0", "255"], &["b"]),
        sample(
            &[&["SET", "a", "x"], &["SET", "b", "y"]],
            &["BITOP", "AND", "d", "a", "b"],
            &["d"],
        ),
        sample(
            &[&["RPUSH", "src", "x", "y"]],
            &["BLMOVE", "src", "dst", "LEFT", "RIGHT", "0"],
            &["dst", "src"],
        ),
        sample(
            &[&["RPUSH", "src", "x", "y"]],
            &["BRPOPLPUSH", "src", "dst", "0"],
            &["dst", "src"],
        ),
        sample(&[&["SET", "src", "v"]], &["COPY", "src", "dst"], &["dst"]),
        sample(&[], &["DECR", "n"], &["n"]),
        sample(&[], &["DECRBY", "n", "2"], &["n"]),
        sample(&[&["SET", "k", "v"]], &["EXPIRE", "k", "100"], &["k"]),
        sample(
            &[&["SET", "k", "v"]],
            &["EXPIREAT", "k", "$NOW_S+100"],
            &["k"],
        ),
        sample(
            &[],
            &["GEOADD", "g", "13.361389", "38.115556", "Palermo"],
            &["g"],
        ),
        sample(
            &[&["GEOADD", "g", "13.361389", "38.115556", "Palermo"]],
            &["GEORADIUS", "g", "15", "37", "200", "km", "STORE", "d"],
            &["d"],
        ),
        sample(
            &[&["GEOADD", "g", "13.361389", "38.115556", "Palermo"]],
            &[
                "GEORADIUSBYMEMBER",
                "g",
                "Palermo",
                "200",
                "km",
                "STOREDIST",
                "d",
            ],
            &["d"],
        ),
        sample(
            &[&["GEOADD", "g", "13.361389", "38.115556", "Palermo"]],
            &[
                "GEOSEARCHSTORE",
                "d",
                "g",
                "FROMLONLAT",
                "15",
                "37",
                "BYRADIUS",
                "200",
                "km",
            ],
            &["d"],
        ),
        sample(
            &[&["SET", "k", "v", "EX", "100"]],
            &["GETEX", "k", "PERSIST"],
            &["k"],
        ),
        sample(&[&["SET", "k", "v"]], &["GETEX", "k", "EX", "100"], &["k"]),
        sample(
            &[&["SET", "k", "v", "EX", "10"]],
            &["GETSET", "k", "w"],
            &["k"],
        ),
        sample(&[], &["HINCRBY", "h", "f", "1"], &["h"]),
        sample(&[], &["HINCRBYFLOAT", "h", "f", "1.5"], &["h"]),
        sample(&[], &["HMSET", "h", "f", "v"], &["h"]),
        sample(&[], &["HSET", "h", "f", "v"], &["h"]),
        sample(&[], &["HSETNX", "h", "f", "v"], &["h"]),
        sample(&[], &["INCR", "n"], &["n"]),
        sample(&[], &["INCRBY", "n", "3"], &["n"]),
        sample(&[], &["INCRBYFLOAT", "n", "0.5"], &["n"]),
        sample(
            &[&["RPUSH", "l", "a"]],
            &["LINSERT", "l", "BEFORE", "a", "b"],
            &["l"],
        ),
        sample(
            &[&["RPUSH", "src", "x", "y"]],
            &["LMOVE", "src", "dst", "LEFT", "RIGHT"],
            &["dst", "src"],
        ),
        sample(&[], &["LPUSH", "l", "x"], &["l"]),
        sample(&[&["RPUSH", "l", "a"]], &["LPUSHX", "l", "x"], &["l"]),
        sample(&[], &["MSET", "a", "1", "b", "2"], &["a", "b"]),
        sample(&[], &["MSETNX", "a", "1", "b", "2"], &["a", "b"]),
        sample(
            &[&["SET", "k", "v", "EX", "100"]],
            &["PERSIST", "k"],
            &["k"],
        ),
        sample(&[&["SET", "k", "v"]], &["PEXPIRE", "k", "100000"], &["k"]),
        sample(
            &[&["SET", "k", "v"]],
            &["PEXPIREAT", "k", "$NOW_MS+100000"],
            &["k"],
        ),
        sample(&[], &["PFADD", "hll", "a"], &["hll"]),
        sample(&[&["PFADD", "s1", "a"]], &["PFMERGE", "d", "s1"], &["d"]),
        sample(&[], &["PSETEX", "k", "100000", "v"], &["k"]),
        sample(&[&["SET", "src", "v"]], &["RENAME", "src", "dst"], &["dst"]),
        sample(
            &[&["SET", "src", "v"]],
            &["RENAMENX", "src", "dst"],
            &["dst"],
        ),
        sample(
            &[&["SET", "src", "v"]],
            &["RESTORE", "k", "0", DUMP],
            &["k"],
        ),
        sample(
            &[&["SET", "src", "v"]],
            &["RESTORE", "k", "100000", DUMP],
            &["k"],
        ),
        sample(
            &[&["SET", "src", "v"]],
            &["RESTORE", "k", "0", DUMP, "ABSTTL"],
            &["k"],
        ),
        sample(
            &[&["SET", "src", "v"]],
            &["RESTORE-ASKING", "k", "0", DUMP],
            &["k"],
        ),
        sample(
            &[&["RPUSH", "src", "x", "y"]],
            &["RPOPLPUSH", "src", "dst"],
            &["dst", "src"],
        ),
        sample(&[], &["RPUSH", "l", "x"], &["l"]),
        sample(&[&["RPUSH", "l", "a"]], &["RPUSHX", "l", "x"], &["l"]),
        sample(&[], &["SADD", "s", "m"], &["s"]),
        sample(&[&["SADD", "a", "x"]], &["SDIFFSTORE", "d", "a"], &["d"]),
        sample(&[], &["SET", "k", "v"], &["k"]),
        sample(&[], &["SET", "k", "v", "NX", "EX", "100"], &["k"]),
        sample(&[&["SET", "k", "v"]], &["SET", "k", "w", "KEEPTTL"], &["k"]),
        sample(&[], &["SETBIT", "b", "7", "1"], &["b"]),
        sample(&[], &["SETEX", "k", "100", "v"], &["k"]),
        sample(&[], &["SETNX", "k", "v"], &["k"]),
        sample(&[], &["SETRANGE", "k", "5", "x"], &["k"]),
        sample(&[&["SADD", "a", "x"]], &["SINTERSTORE", "d", "a"], &["d"]),
        sample(
            &[&["SADD", "src", "m", "n"]],
            &["SMOVE", "src", "dst", "m"],
            &["dst", "src"],
        ),
        sample(
            &[&["RPUSH", "l", "3", "1", "2"]],
            &["SORT", "l", "STORE", "d"],
            &["d"],
        ),
        sample(&[&["SADD", "a", "x"]], &["SUNIONSTORE", "d", "a"], &["d"]),
        sample(&[], &["XADD", "s", "*", "f", "v"], &["s"]),
        sample(
            &[],
            &["XGROUP", "CREATE", "s", "g", "$", "MKSTREAM"],
            &["s"],
        ),
        sample(&[], &["ZADD", "z", "1", "m"], &["z"]),
        sample(
            &[&["ZADD", "a", "1", "m"]],
            &["ZDIFFSTORE", "d", "1", "a"],
            &["d"],
        ),
        sample(&[], &["ZINCRBY", "z", "1", "m"], &["z"]),
        sample(
            &[&["ZADD", "a", "1", "m"]],
            &["ZINTERSTORE", "d", "1", "a"],
            &["d"],
        ),
        sample(
            &[&["ZADD", "a", "1", "m"]],
            &["ZRANGESTORE", "d", "a", "0", "-1"],
            &["d"],
        ),
        sample(
            &[&["ZADD", "a", "1", "m"]],
            &["ZUNIONSTORE", "d", "1", "a"],
            &["d"],
        ),
        sample(&[], &["EVAL", SCRIPT, "1", "k"], &["k"]),
        sample(
            &[&["SCRIPT", "LOAD", SCRIPT]],
            &["EVALSHA", SHA, "1", "k"],
            &["k"],
        ),
        sample(
            &[&["FUNCTION", "LOAD", "REPLACE", LIBRARY]],
            &["FCALL", "setit", "1", "k"],
            &["k"],
        ),
    ]
}

fn policy() -> TtlPolicy {
    let ttl = Some(Duration::from_millis(TTL_MS as u64));
    TtlPolicy::new(ttl, ttl, TtlOverMax::Clamp)
}

/// Sends one request as it is.
fn send(con: &mut redis::Connection, req: &Request) -> redis::RedisResult<Value> {
    let mut cmd = redis::Cmd::new();
    for arg in req.args() {
        cmd.arg(arg);
    }
    cmd.query(con)
}

/// Sends `args` through the policy: the governed request, then its
/// follow-ups (whose replies a client would never see). Returns the reply
/// to the request itself.
fn send_governed(con: &mut redis::Connection, args: &[Vec<u8>]) -> redis::RedisResult<Value> {
    let req = Request::from_args(args);
    let spec = command::lookup(&req).expect("command in the table");
    let governed = policy()
        .govern(spec, &req, SystemTime::now())
        .expect("clamped, not refused");
    let reply = send(con, &governed.request);
    for follow_up in &governed.follow_ups {
        let answer = send(con, follow_up);
        assert!(answer.is_ok(), "follow-up {follow_up:?} failed: {answer:?}");
    }
    reply
}

/// `PTTL key`.
fn pttl(con: &mut redis::Connection, key: &[u8]) -> i64 {
    redis::cmd("PTTL").arg(key).query(con).expect("PTTL")
}

/// Every key in the database.
fn all_keys(con: &mut redis::Connection) -> BTreeSet<Vec<u8>> {
    redis::cmd("KEYS").arg("*").query(con).expect("KEYS")
}

/// Asserts `0 < PTTL <= TTL_MS`.
fn assert_governed_ttl(con: &mut redis::Connection, key: &[u8], context: &str) {
    let ttl = pttl(con, key);
    assert!(
        ttl > 0 && ttl <= TTL_MS,
        "{context}: key {:?} has PTTL {ttl}",
        String::from_utf8_lossy(key)
    );
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// An argument with its placeholders filled in.
fn fill(arg: &str, dump: &Option<Vec<u8>>, sha: &Option<Vec<u8>>) -> Vec<u8> {
    match arg {
        DUMP => dump.clone().expect("sample sets up a key to DUMP"),
        SHA => sha.clone().expect("sample loads a script"),
        "$NOW_S+100" => (now_ms() / 1000 + 100).to_string().into_bytes(),
        "$NOW_MS+100000" => (now_ms() + 100_000).to_string().into_bytes(),
        other => other.as_bytes().to_vec(),
    }
}

/// Every WRITE command and subcommand of the table, by full name.
fn write_commands() -> Vec<&'static CommandSpec> {
    let mut specs = Vec::new();
    for spec in command::all() {
        specs.push(spec);
        specs.extend(spec.subcommands.iter());
    }
    specs
        .into_iter()
        .filter(|s| s.flags.contains(Flags::WRITE))
        .collect()
}

/// The table's full name of a sample's command.
fn full_name(args: &[&str]) -> &'static str {
    command::lookup(&Request::from_args(args))
        .expect("sample command in the table")
        .name
}

#[test]
fn every_write_command_is_sampled_or_cannot_create_a_key() {
    let sampled: BTreeSet<&str> = samples().iter().map(|s| full_name(s.command)).collect();
    let mut missing = Vec::new();
    for spec in write_commands() {
        let listed = never_creates_reason(spec.name).is_some();
        if !sampled.contains(spec.name) && !listed {
            missing.push(spec.name);
        }
        assert!(
            governs(spec) || listed,
            "{} is neither governed nor listed as unable to create a key",
            spec.name
        );
    }
    assert!(
        missing.is_empty(),
        "WRITE commands without a sample: {missing:?}"
    );
    for name in ["eval", "evalsha", "fcall"] {
        assert!(sampled.contains(name), "{name} has no sample");
    }
}

#[test]
fn every_governed_write_leaves_its_keys_with_a_bounded_ttl() {
    let server = RedisServer::start();
    let mut con = redis_rs(&server.url());
    let mut checked: BTreeMap<&str, usize> = BTreeMap::new();
    for sample in samples() {
        let context = sample.command.join(" ");
        let _: () = redis::cmd("FLUSHALL").query(&mut con).expect("FLUSHALL");
        let mut sha = None;
        for setup in sample.setup {
            let reply: Value = redis::cmd(setup[0])
                .arg(&setup[1..])
                .query(&mut con)
                .unwrap_or_else(|e| panic!("{context}: setup {setup:?} failed: {e}"));
            if let Value::BulkString(bytes) = reply {
                sha = Some(bytes);
            }
        }
        let dump: Option<Vec<u8>> = redis::cmd("DUMP").arg("src").query(&mut con).expect("DUMP");
        let before = all_keys(&mut con);
        let args: Vec<Vec<u8>> = sample
            .command
            .iter()
            .map(|a| fill(a, &dump, &sha))
            .collect();
        let reply = send_governed(&mut con, &args);
        assert!(reply.is_ok(), "{context}: {reply:?}");
        for key in sample.written {
            assert_governed_ttl(&mut con, key.as_bytes(), &context);
        }
        for key in all_keys(&mut con).difference(&before) {
            assert_governed_ttl(&mut con, key, &format!("{context} (new key)"));
        }
        *checked.entry(full_name(sample.command)).or_default() += 1;
    }
    assert!(
        checked.len() > 60,
        "only {} commands sampled",
        checked.len()
    );
}

/// A list of commands, each as its arguments.
type Commands = &'static [&'static [&'static str]];

#[test]
fn no_governed_sequence_leaves_a_key_immortal() {
    let server = RedisServer::start();
    let mut con = redis_rs(&server.url());
    // Each sequence starts from raw (ungoverned) setup that may leave a key
    // immortal or with a TTL to remove, then runs governed commands.
    let sequences: &[(Commands, Commands)] = &[
        (&[&["SET", "k", "v"]], &[&["SET", "k", "w", "KEEPTTL"]]),
        (
            &[&["SET", "k", "v"]],
            &[&["SET", "k", "w", "KEEPTTL", "GET", "XX"]],
        ),
        (&[&["SET", "k", "v", "EX", "30"]], &[&["PERSIST", "k"]]),
        (
            &[],
            &[&["SET", "k", "v"], &["PERSIST", "k"], &["PERSIST", "k"]],
        ),
        (
            &[&["SET", "k", "v", "EX", "30"]],
            &[&["GETEX", "k", "PERSIST"]],
        ),
        (&[&["SET", "src", "v"]], &[&["RENAME", "src", "dst"]]),
        (&[&["SET", "src", "v"]], &[&["RENAMENX", "src", "dst"]]),
        (&[&["SET", "src", "v"]], &[&["COPY", "src", "dst"]]),
        (&[&["SET", "src", "v"]], &[&["RESTORE", "k", "0", DUMP]]),
        (
            &[&["SET", "src", "v"]],
            &[&["RESTORE", "k", "0", DUMP, "ABSTTL", "REPLACE"]],
        ),
        (&[&["SET", "k", "v", "EX", "30"]], &[&["GETSET", "k", "w"]]),
        (
            &[],
            &[
                &["SET", "k", "v", "EX", "3600"],
                &["EXPIRE", "k", "99999", "GT"],
            ],
        ),
        (
            &[],
            &[
                &["HSET", "h", "f", "v"],
                &["HDEL", "h", "f"],
                &["HSET", "h", "g", "v"],
            ],
        ),
        (
            &[],
            &[&["SET", "k", "1"], &["INCR", "k"], &["APPEND", "k", "0"]],
        ),
    ];
    for (setup, governed) in sequences {
        let context = format!("{setup:?} then {governed:?}");
        let _: () = redis::cmd("FLUSHALL").query(&mut con).expect("FLUSHALL");
        for cmd in *setup {
            let _: Value = redis::cmd(cmd[0])
                .arg(&cmd[1..])
                .query(&mut con)
                .expect("setup");
        }
        let dump: Option<Vec<u8>> = redis::cmd("DUMP").arg("src").query(&mut con).expect("DUMP");
        for cmd in *governed {
            let args: Vec<Vec<u8>> = cmd.iter().map(|a| fill(a, &dump, &None)).collect();
            let reply = send_governed(&mut con, &args);
            assert!(reply.is_ok(), "{context}: {cmd:?} answered {reply:?}");
        }
        // Sources the sequence only read (COPY's `src`) may stay as set up.
        let keys = all_keys(&mut con);
        assert!(!keys.is_empty(), "{context}: nothing was written");
        for key in keys.iter().filter(|k| k.as_slice() != b"src") {
            assert_governed_ttl(&mut con, key, &context);
        }
    }
}

#[test]
fn commands_listed_as_unable_to_create_a_key_do_not() {
    let server = RedisServer::start();
    let mut con = redis_rs(&server.url());
    // The entries that the table alone would call writing (UPDATE/INSERT).
    let attempts: &[&[&str]] = &[
        &["LSET", "l", "0", "x"],
        &["XACK", "s", "g", "0-1"],
        &["XCLAIM", "s", "g", "c", "0", "0-1"],
        &["XAUTOCLAIM", "s", "g", "c", "0", "0"],
        &["XSETID", "s", "0-1"],
        &["XGROUP", "SETID", "s", "g", "$"],
        &["XGROUP", "CREATECONSUMER", "s", "g", "c"],
        &["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", ">"],
        &["HDEL", "h", "f"],
        &["LPOP", "l"],
        &["GETDEL", "k"],
    ];
    for args in attempts {
        let name = full_name(args);
        assert!(never_creates_reason(name).is_some(), "{name} is not listed");
        let _ = send_governed(
            &mut con,
            &args
                .iter()
                .map(|a| a.as_bytes().to_vec())
                .collect::<Vec<_>>(),
        );
        assert!(all_keys(&mut con).is_empty(), "{args:?} created a key");
    }
}
