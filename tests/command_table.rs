//! The command table, lookup and key positions against a real Redis 7.0:
//! every command the server reports is in the table with the same metadata,
//! key positions match `COMMAND GETKEYS`, and lookup errors match the
//! server's own texts byte for byte.

mod common;

use std::collections::BTreeSet;

use common::{redis_rs, RawConn, RedisServer};
use keygate::command::keys::key_positions;
use keygate::command::{
    self, AclCategories, BeginSearch, CommandSpec, FindKeys, Flags, KeySpec, KeySpecFlags,
};
use keygate::protocol::request::Request;
use redis::Value;

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Okay => "OK".into(),
        other => panic!("expected a string, got {other:?}"),
    }
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        other => panic!("expected an integer, got {other:?}"),
    }
}

fn array(v: &Value) -> &[Value] {
    match v {
        Value::Array(items) | Value::Set(items) => items,
        Value::Nil => &[],
        other => panic!("expected an array, got {other:?}"),
    }
}

/// A flat `[k1, v1, k2, v2, ...]` reply as key/value pairs.
fn pairs(v: &Value) -> Vec<(String, &Value)> {
    array(v)
        .chunks(2)
        .map(|kv| (text(&kv[0]), &kv[1]))
        .collect()
}

fn field<'a>(v: &'a Value, name: &str) -> &'a Value {
    pairs(v)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no field {name} in {v:?}"))
}

fn flags_of(names: &[Value]) -> Flags {
    let mut bits = 0;
    for n in names {
        bits |= match text(n).as_str() {
            "write" => Flags::WRITE.0,
            "readonly" => Flags::READONLY.0,
            "denyoom" => Flags::DENYOOM.0,
            "module" => Flags::MODULE.0,
            "admin" => Flags::ADMIN.0,
            "pubsub" => Flags::PUBSUB.0,
            "noscript" => Flags::NOSCRIPT.0,
            "blocking" => Flags::BLOCKING.0,
            "loading" => Flags::LOADING.0,
            "stale" => Flags::STALE.0,
            "skip_monitor" => Flags::SKIP_MONITOR.0,
            "skip_slowlog" => Flags::SKIP_SLOWLOG.0,
            "fast" => Flags::FAST.0,
            "no_auth" => Flags::NO_AUTH.0,
            "may_replicate" => Flags::MAY_REPLICATE.0,
            "no_mandatory_keys" => Flags::NO_MANDATORY_KEYS.0,
            "movablekeys" => Flags::MOVABLEKEYS.0,
            "no_async_loading" => Flags::NO_ASYNC_LOADING.0,
            "no_multi" => Flags::NO_MULTI.0,
            "allow_busy" => Flags::ALLOW_BUSY.0,
            "asking" => Flags::ASKING.0,
            other => panic!("unknown command flag {other}"),
        };
    }
    Flags(bits)
}

fn acl_of(names: &[Value]) -> AclCategories {
    let all = [
        ("@keyspace", AclCategories::KEYSPACE),
        ("@read", AclCategories::READ),
        ("@write", AclCategories::WRITE),
        ("@set", AclCategories::SET),
        ("@sortedset", AclCategories::SORTEDSET),
        ("@list", AclCategories::LIST),
        ("@hash", AclCategories::HASH),
        ("@string", AclCategories::STRING),
        ("@bitmap", AclCategories::BITMAP),
        ("@hyperloglog", AclCategories::HYPERLOGLOG),
        ("@geo", AclCategories::GEO),
        ("@stream", AclCategories::STREAM),
        ("@pubsub", AclCategories::PUBSUB),
        ("@admin", AclCategories::ADMIN),
        ("@fast", AclCategories::FAST),
        ("@slow", AclCategories::SLOW),
        ("@blocking", AclCategories::BLOCKING),
        ("@dangerous", AclCategories::DANGEROUS),
        ("@connection", AclCategories::CONNECTION),
        ("@transaction", AclCategories::TRANSACTION),
        ("@scripting", AclCategories::SCRIPTING),
    ];
    let mut bits = 0;
    for n in names {
        let n = text(n);
        let (_, c) = all
            .iter()
            .find(|(name, _)| *name == n)
            .unwrap_or_else(|| panic!("unknown ACL category {n}"));
        bits |= c.0;
    }
    AclCategories(bits)
}

fn key_spec_of(v: &Value) -> KeySpec {
    let mut flags = 0;
    for f in array(field(v, "flags")) {
        flags |= match text(f).as_str() {
            "RO" => KeySpecFlags::RO.0,
            "RW" => KeySpecFlags::RW.0,
            "OW" => KeySpecFlags::OW.0,
            "RM" => KeySpecFlags::RM.0,
            "access" => KeySpecFlags::ACCESS.0,
            "update" => KeySpecFlags::UPDATE.0,
            "insert" => KeySpecFlags::INSERT.0,
            "delete" => KeySpecFlags::DELETE.0,
            "not_key" => KeySpecFlags::NOT_KEY.0,
            "incomplete" => KeySpecFlags::INCOMPLETE.0,
            "variable_flags" => KeySpecFlags::VARIABLE_FLAGS.0,
            other => panic!("unknown key-spec flag {other}"),
        };
    }
    let bs = field(v, "begin_search");
    let begin_search = match text(field(bs, "type")).as_str() {
        "index" => BeginSearch::Index(int(field(field(bs, "spec"), "index")) as i32),
        "keyword" => {
            let spec = field(bs, "spec");
            let keyword = text(field(spec, "keyword"));
            BeginSearch::Keyword {
                // Leak the handful of keywords so the spec compares by value.
                keyword: Box::leak(keyword.into_boxed_str()),
                startfrom: int(field(spec, "startfrom")) as i32,
            }
        }
        _ => BeginSearch::Unknown,
    };
    let fk = field(v, "find_keys");
    let find_keys = match text(field(fk, "type")).as_str() {
        "range" => {
            let spec = field(fk, "spec");
            FindKeys::Range {
                lastkey: int(field(spec, "lastkey")) as i32,
                step: int(field(spec, "keystep")) as i32,
                limit: int(field(spec, "limit")) as i32,
            }
        }
        "keynum" => {
            let spec = field(fk, "spec");
            FindKeys::Keynum {
                keynumidx: int(field(spec, "keynumidx")) as i32,
                firstkey: int(field(spec, "firstkey")) as i32,
                step: int(field(spec, "keystep")) as i32,
            }
        }
        _ => FindKeys::Unknown,
    };
    KeySpec {
        flags: KeySpecFlags(flags),
        begin_search,
        find_keys,
    }
}

/// Checks one server-reported command (and its subcommands) against the
/// table; returns the full names seen.
fn check_command(info: &Value, seen: &mut BTreeSet<String>) {
    let info = array(info);
    let name = text(&info[0]).to_ascii_lowercase();
    let spec: &CommandSpec = command::find_by_full_name(name.as_bytes())
        .unwrap_or_else(|| panic!("{name} missing from the table"));
    assert_eq!(spec.name, name);
    assert_eq!(i64::from(spec.arity), int(&info[1]), "{name} arity");
    assert_eq!(spec.flags, flags_of(array(&info[2])), "{name} flags");
    assert_eq!(i64::from(spec.first_key), int(&info[3]), "{name} first key");
    assert_eq!(i64::from(spec.last_key), int(&info[4]), "{name} last key");
    assert_eq!(i64::from(spec.step), int(&info[5]), "{name} step");
    assert_eq!(spec.acl, acl_of(array(&info[6])), "{name} ACL categories");
    let specs: Vec<KeySpec> = array(&info[8]).iter().map(key_spec_of).collect();
    assert_eq!(spec.key_specs, specs.as_slice(), "{name} key specs");
    let subs = array(&info[9]);
    assert_eq!(
        spec.subcommands.len(),
        subs.len(),
        "{name} subcommand count"
    );
    seen.insert(name);
    for sub in subs {
        check_command(sub, seen);
    }
}

#[test]
fn table_matches_the_server_command_by_command() {
    let server = RedisServer::start();
    let mut con = redis_rs(&server.url());
    let reply: Value = redis::cmd("COMMAND").query(&mut con).expect("COMMAND");
    let mut seen = BTreeSet::new();
    for info in array(&reply) {
        check_command(info, &mut seen);
    }
    let mut in_table = BTreeSet::new();
    for spec in command::all() {
        in_table.insert(spec.name.to_string());
        for sub in spec.subcommands {
            in_table.insert(sub.name.to_string());
        }
    }
    assert_eq!(in_table, seen, "the table has entries the server lacks");
    assert!(
        seen.len() > 350,
        "suspiciously few commands: {}",
        seen.len()
    );
}

/// The server's `COMMAND GETKEYS` answer as argument indexes, or its error.
fn server_getkeys(con: &mut redis::Connection, args: &[&str]) -> Result<Vec<usize>, String> {
    let mut cmd = redis::cmd("COMMAND");
    cmd.arg("GETKEYS");
    for a in args {
        cmd.arg(*a);
    }
    let reply: Value = cmd.query(con).map_err(|e| e.to_string())?;
    let mut positions = Vec::new();
    for key in array(&reply) {
        let key = text(key);
        let at: Vec<usize> = (0..args.len()).filter(|&i| args[i] == key).collect();
        assert_eq!(at.len(), 1, "sample {args:?}: key {key:?} must occur once");
        positions.push(at[0]);
    }
    positions.sort_unstable();
    positions.dedup();
    Ok(positions)
}

const KEY_SAMPLES: &[&[&str]] = &[
    &["GET", "k"],
    &["SET", "k", "v"],
    &["SET", "k", "v", "GET", "EX", "10"],
    &["GETEX", "k", "PERSIST"],
    &["MSET", "a", "1", "b", "2", "c", "3"],
    &["MGET", "a", "b", "c"],
    &["DEL", "a", "b", "c", "d", "e", "f", "g"],
    &["EXISTS", "a", "b"],
    &["TOUCH", "a", "b", "c"],
    &["UNLINK", "a", "b"],
    &["WATCH", "a", "b"],
    &["EVAL", "return 1", "2", "a", "b", "x", "y"],
    &["EVAL", "return 1", "0", "x"],
    &["EVAL", "return 1", "0"],
    &["EVAL", "return 1", "3", "a", "b"],
    &["EVAL", "return 1", "-1", "a"],
    &["EVAL", "return 1", "two", "a"],
    &["EVALSHA", "abc", "1", "a", "x"],
    &["EVAL_RO", "return 1", "1", "a"],
    &["EVALSHA_RO", "abc", "2", "a", "b"],
    &["FCALL", "f", "2", "a", "b", "x"],
    &["FCALL_RO", "f", "1", "a"],
    &["ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"],
    &["ZUNIONSTORE", "d", "0", "a"],
    &["ZINTERSTORE", "d", "1", "a"],
    &["ZDIFFSTORE", "d", "2", "a", "b"],
    &["ZUNION", "2", "a", "b", "WITHSCORES"],
    &["ZINTER", "3", "a", "b", "c"],
    &["ZDIFF", "2", "a", "b"],
    &["ZINTERCARD", "2", "a", "b", "LIMIT", "1"],
    &["SINTERCARD", "3", "a", "b", "c"],
    &["SINTERCARD", "5", "a", "b"],
    &["LMPOP", "2", "a", "b", "LEFT", "COUNT", "3"],
    &["BLMPOP", "0", "2", "a", "b", "RIGHT"],
    &["ZMPOP", "1", "a", "MIN"],
    &["BZMPOP", "1.5", "2", "a", "b", "MAX"],
    &["BLPOP", "a", "b", "0"],
    &["BZPOPMIN", "a", "b", "0"],
    &["XREAD", "STREAMS", "a", "b", "0", "$"],
    &["XREAD", "COUNT", "5", "BLOCK", "100", "STREAMS", "a", "0"],
    &["XREAD", "COUNT", "5", "BLOCK", "100", "a"],
    &["XREAD", "COUNT", "1", "STREAMS", "a"],
    &["XREADGROUP", "GROUP", "g", "c", "NOACK", "STREAMS", "a"],
    &["XREADGROUP", "GROUP", "streams", "c", "STREAMS", "a", ">"],
    &[
        "XREADGROUP",
        "GROUP",
        "g",
        "c",
        "COUNT",
        "1",
        "NOACK",
        "STREAMS",
        "a",
        "b",
        ">",
        ">",
    ],
    &["GEORADIUS", "g", "0", "0", "10", "km"],
    &["GEORADIUS", "g", "0", "0", "10", "km", "STORE", "d"],
    &["GEORADIUS", "g", "0", "0", "10", "km", "STOREDIST", "d"],
    &[
        "GEORADIUS",
        "g",
        "0",
        "0",
        "10",
        "km",
        "STORE",
        "d",
        "STOREDIST",
        "e",
    ],
    &["GEORADIUSBYMEMBER", "g", "m", "10", "km", "STORE", "d"],
    &[
        "GEORADIUSBYMEMBER",
        "g",
        "m",
        "10",
        "km",
        "COUNT",
        "1",
        "STOREDIST",
        "d",
    ],
    &["GEORADIUS_RO", "g", "0", "0", "10", "km"],
    &[
        "GEOSEARCHSTORE",
        "d",
        "g",
        "FROMMEMBER",
        "m",
        "BYRADIUS",
        "1",
        "km",
    ],
    &["SORT", "k"],
    &["SORT", "k", "STORE", "d"],
    &[
        "SORT", "k", "BY", "w_*", "GET", "o_*", "LIMIT", "0", "10", "STORE", "d",
    ],
    &["SORT", "k", "STORE", "d", "STORE", "e"],
    &["SORT", "k", "GET", "#", "ALPHA", "DESC"],
    &["SORT_RO", "k", "BY", "w_*", "GET", "o_*"],
    &["MIGRATE", "h", "6390", "k", "0", "1000"],
    &["MIGRATE", "h", "6390", "k", "0", "1000", "COPY", "REPLACE"],
    &["MIGRATE", "h", "6390", "", "0", "1000", "KEYS", "a", "b"],
    &[
        "MIGRATE", "h", "6390", "", "0", "1000", "COPY", "AUTH", "pw", "KEYS", "a",
    ],
    &[
        "MIGRATE", "h", "6390", "", "0", "1000", "AUTH2", "u", "pw", "KEYS", "a", "b",
    ],
    &["MIGRATE", "h", "6390", "k", "0", "1000", "KEYS", "a"],
    &["OBJECT", "ENCODING", "k"],
    &["OBJECT", "FREQ", "k"],
    &["MEMORY", "USAGE", "k", "SAMPLES", "5"],
    &["LCS", "a", "b", "LEN"],
    &["COPY", "a", "b", "REPLACE"],
    &["RENAME", "a", "b"],
    &["RENAMENX", "a", "b"],
    &["SMOVE", "a", "b", "m"],
    &["LMOVE", "a", "b", "LEFT", "RIGHT"],
    &["BLMOVE", "a", "b", "LEFT", "RIGHT", "0"],
    &["BRPOPLPUSH", "a", "b", "0"],
    &["RPOPLPUSH", "a", "b"],
    &["BITOP", "AND", "d", "a", "b"],
    &["BITFIELD", "k", "GET", "u8", "0"],
    &["BITFIELD_RO", "k", "GET", "u8", "0"],
    &["PFMERGE", "d", "a", "b"],
    &["PFCOUNT", "a", "b"],
    &["XINFO", "STREAM", "s", "FULL"],
    &["XGROUP", "CREATE", "s", "g", "$", "MKSTREAM"],
    &["XADD", "s", "*", "f", "v"],
    &["XAUTOCLAIM", "s", "g", "c", "10", "0"],
    &["XCLAIM", "s", "g", "c", "10", "0-1"],
    &["HSET", "h", "f", "v"],
    &["SUNIONSTORE", "d", "a", "b"],
    &["ZRANGESTORE", "d", "a", "0", "-1"],
    &["RESTORE", "k", "0", "payload"],
    &["SETRANGE", "k", "0", "v"],
    &["PUBLISH", "ch", "msg"],
    &["SPUBLISH", "ch", "msg"],
    &["ECHO", "hello"],
    &["SCRIPT", "FLUSH"],
];

/// Where keygate deliberately answers what the command itself reads and
/// writes rather than what `COMMAND GETKEYS` says (src/command/keys.rs,
/// `own_parser`): GEORADIUS stores into the last STORE/STOREDIST only.
const COMMAND_NOT_GETKEYS: &[(&[&str], &[usize])] = &[(
    &[
        "GEORADIUS",
        "g",
        "0",
        "0",
        "10",
        "km",
        "STORE",
        "d",
        "STOREDIST",
        "e",
    ],
    &[1, 9],
)];

#[test]
fn key_positions_match_command_getkeys() {
    let server = RedisServer::start();
    let mut con = redis_rs(&server.url());
    let mut mismatches = Vec::new();
    for args in KEY_SAMPLES {
        let req = Request::from_args(args);
        let spec = command::lookup(&req).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let ours = key_positions(spec, &req);
        if let Some((_, expected)) = COMMAND_NOT_GETKEYS.iter().find(|(a, _)| a == args) {
            if ours.as_deref() != Ok(expected) {
                mismatches.push(format!(
                    "{args:?}: ours {ours:?}, the command's {expected:?}"
                ));
            }
            continue;
        }
        let theirs = server_getkeys(&mut con, args);
        let agree = match &theirs {
            // Redis answers an empty list only for optional-key commands;
            // keygate may refuse those when numkeys is unparsable.
            Ok(v) if v.is_empty() => {
                spec.flags.contains(Flags::NO_MANDATORY_KEYS)
                    && (ours.is_err() || ours.as_ref().is_ok_and(Vec::is_empty))
            }
            Ok(v) => ours.as_ref() == Ok(v),
            Err(e) if e.contains("The command has no key arguments") => {
                ours.as_ref().is_ok_and(Vec::is_empty)
            }
            Err(_) => ours.is_err(),
        };
        if !agree {
            mismatches.push(format!("{args:?}: ours {ours:?}, Redis {theirs:?}"));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// Sends `args` as one multibulk over a raw socket and returns the reply's
/// first line, CRLF removed (an error reply is exactly one line).
fn raw_first_line(server: &RedisServer, args: &[&[u8]]) -> String {
    let reply = RawConn::connect(server.port()).cmd(args);
    let text = String::from_utf8_lossy(&reply);
    text.split("\r\n").next().unwrap_or_default().to_string()
}

#[test]
fn lookup_errors_match_the_server() {
    let server = RedisServer::start();
    let long_a = "a".repeat(100);
    let long_b = "b".repeat(100);
    let long_name = "n".repeat(200);
    let samples: Vec<Vec<&[u8]>> = vec![
        vec![b"nosuchcmd", b"a", b"b"],
        vec![b"nosuchcmd"],
        vec![b"NoSuch", long_a.as_bytes(), long_b.as_bytes(), b"c"],
        vec![long_name.as_bytes(), b"x"],
        vec![b"nosuch", b"x\r\ny", b"a\0b"],
        vec![b"config", b"nosuchsub"],
        vec![b"Client", b"NOPE", b"x"],
        vec![b"config", long_name.as_bytes()],
        vec![b"get"],
        vec![b"get", b"a", b"b"],
        vec![b"config", b"get"],
        vec![b"CONFIG"],
        vec![b"object"],
        vec![b"object", b"encoding"],
        vec![b"xinfo", b"stream"],
    ];
    for args in samples {
        let theirs = raw_first_line(&server, &args);
        let ours = command::lookup(&Request::from_args(&args))
            .map(|spec| spec.name.to_string())
            .map_err(|e| format!("-{e}"));
        assert_eq!(ours, Err(theirs), "{args:?}");
    }
}
