//! Adversarial isolation suite: two namespaced services (`billing`,
//! `auth`), a namespaced `default` (`legacy:`) and one whose prefix holds
//! glob characters (`a*`), each trying to see or touch the others' keys
//! and channels. The backend is checked directly with redis-cli.
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
// The reply type every assertion here compares with.
use common::Reply as V;

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
name = "glob"
prefix = "a*"
password = "globpw"
"#;

fn setup() -> (RedisServer, Keygate) {
    let redis = RedisServer::start();
    let kg = Keygate::start_with(&standalone_config(&redis.addr(), SERVICES));
    // Ready once a command reaches the backend.
    let _ = wait_until(Duration::from_secs(5), || {
        kg.cli(&["EXISTS", "ready"]) == "0"
    });
    (redis, kg)
}

fn backend_keys(redis: &RedisServer) -> BTreeSet<String> {
    redis
        .cli(&["KEYS", "*"])
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn seed(redis: &RedisServer) {
    for k in [
        "billing:a",
        "billing:b",
        "auth:x",
        "auth:y",
        "legacy:l",
        "plain",
        "a*1",
        "abc",
    ] {
        redis.cli(&["SET", k, "v"]);
    }
}

#[test]
fn keys_scan_randomkey_dbsize_show_only_own_keys() {
    let (redis, kg) = setup();
    seed(&redis);
    for i in 0..60 {
        redis.cli(&["SET", &format!("billing:n{i}"), "v"]);
        redis.cli(&["SET", &format!("auth:n{i}"), "v"]);
    }
    let mut billing = RawConn::login(kg.port(), "billing", "billpw");
    let keys = billing.call(&["KEYS", "*"]).strings();
    assert_eq!(keys.len(), 62);
    assert!(keys.iter().all(|k| !k.contains(':')), "{keys:?}");
    assert!(keys.contains("a") && keys.contains("n0"));
    assert_eq!(billing.call(&["DBSIZE"]), V::Int(62));

    // SCAN pages through with the cursor and sees exactly its own keys.
    let mut seen = BTreeSet::new();
    let mut cursor = "0".to_string();
    let mut rounds = 0;
    loop {
        let reply = billing.call(&["SCAN", &cursor, "COUNT", "7"]).items();
        cursor = reply[0].text();
        seen.extend(reply[1].strings());
        rounds += 1;
        if cursor == "0" {
            break;
        }
    }
    assert!(rounds > 1);
    assert_eq!(seen, keys);
    // MATCH is the client's own pattern, inside the namespace.
    let only_a = billing
        .call(&["SCAN", "0", "MATCH", "a", "COUNT", "1000"])
        .items();
    assert_eq!(only_a[1].strings(), set(&["a"]));

    for _ in 0..10 {
        let k = billing.call(&["RANDOMKEY"]).text();
        assert!(keys.contains(&k), "{k}");
    }
    let mut auth = RawConn::login(kg.port(), "auth", "authpw");
    assert_eq!(auth.call(&["DBSIZE"]), V::Int(62));
    let mut legacy = RawConn::connect(kg.port());
    assert_eq!(legacy.call(&["KEYS", "*"]).strings(), set(&["l"]));
    assert_eq!(legacy.call(&["RANDOMKEY"]), V::Bulk("l".into()));
    redis.cli(&["DEL", "legacy:l"]);
    assert_eq!(legacy.call(&["RANDOMKEY"]), V::Nil);
    assert_eq!(legacy.call(&["DBSIZE"]), V::Int(0));
}

#[test]
fn pattern_tricks_stay_inside_the_namespace() {
    let (redis, kg) = setup();
    seed(&redis);
    redis.cli(&["SET", "billing:[x", "v"]);
    redis.cli(&["SET", "billing:\\y", "v"]);
    let mut billing = RawConn::login(kg.port(), "billing", "billpw");
    for pattern in [
        "*",
        "*:*",
        "[",
        "\\",
        "\\*",
        "?*",
        "[a-z]*",
        "*auth*",
        "../auth:*",
    ] {
        let keys = billing.call(&["KEYS", pattern]);
        if let V::Array(items) = &keys {
            for k in items {
                let k = k.text();
                assert!(
                    ["a", "b", "[x", "\\y"].contains(&k.as_str()),
                    "{pattern}: {k}"
                );
            }
        }
    }
    // A prefix with glob characters matches nothing wider: `a*` must not
    // see `abc` (which `a*` as a glob would match).
    let mut glob = RawConn::login(kg.port(), "glob", "globpw");
    assert_eq!(glob.call(&["KEYS", "*"]).strings(), set(&["1"]));
    assert_eq!(glob.call(&["DBSIZE"]), V::Int(1));
    let scan = glob.call(&["SCAN", "0", "COUNT", "1000"]).items();
    assert_eq!(scan[1].strings(), set(&["1"]));
}

#[test]
fn commands_that_cannot_be_confined_are_refused() {
    let (redis, kg) = setup();
    seed(&redis);
    let mut billing = RawConn::login(kg.port(), "billing", "billpw");
    billing.call(&["RPUSH", "list", "1", "2"]);
    for args in [
        &["EVAL", "return redis.call('GET', 'auth:x')", "0"][..],
        &["EVAL", "return redis.call('GET', KEYS[1])", "1", "k"],
        &["EVALSHA", "0000000000000000000000000000000000000000", "0"],
        &["FCALL", "f", "0"],
        &["SCRIPT", "FLUSH"],
        &["FUNCTION", "LIST"],
        &["PUBSUB", "NUMPAT"],
        // Databases outside the service's `databases`.
        &["COPY", "a", "b", "DB", "1"],
        &["MOVE", "a", "1"],
        &["SWAPDB", "0", "1"],
        &["MIGRATE", "127.0.0.1", "1", "a", "0", "10"],
        &["MEMORY", "STATS"],
        // Keyevent channels may be subscribed (their messages are filtered
        // to the service's keys), never published to or counted.
        &["PUBLISH", "__keyevent@0__:set", "billing:x"],
        &["PUBSUB", "NUMSUB", "__keyevent@0__:set"],
        &["PUBSUB", "CHANNELS", "__keyevent@*"],
        &["PSUBSCRIBE", "__keyspace@*__:*"],
        &["OBJECT", "HELP", "x"],
    ] {
        let reply = billing.call(args);
        assert!(
            reply.is_noperm() || matches!(&reply, V::Error(e) if e.contains("wrong number")),
            "{args:?}: {reply:?}"
        );
    }
    // SORT's BY and GET patterns are confined, not refused: they read the
    // service's own keys (tests/isolation_options.rs checks what they read).
    for args in [
        &["SORT", "list", "BY", "auth:*"][..],
        &["SORT", "list", "GET", "*"],
        &["SORT_RO", "list", "BY", "x_*"],
    ] {
        let reply = billing.call(args);
        assert!(matches!(reply, V::Array(_)), "{args:?}: {reply:?}");
    }
    // SORT without patterns is fine, and so is `GET #`.
    assert_eq!(
        billing
            .call(&["SORT", "list", "BY", "nosort", "GET", "#"])
            .strings(),
        set(&["1", "2"])
    );
    assert_eq!(billing.call(&["PING"]), V::Status("PONG".into()));
    assert!(matches!(billing.call(&["TIME"]), V::Array(_)));
    // INFO hides the keyspace section (every service's key counts).
    let info = billing.call(&["INFO"]).text();
    assert!(info.contains("redis_version"));
    assert!(
        !info.contains("# Keyspace") && !info.contains("db0:keys"),
        "{info}"
    );
    let keyspace = billing.call(&["INFO", "keyspace"]).text();
    assert!(!keyspace.contains("keys="), "{keyspace}");
}

#[test]
fn renames_and_copies_cannot_cross_namespaces() {
    let (redis, kg) = setup();
    seed(&redis);
    let mut billing = RawConn::login(kg.port(), "billing", "billpw");
    assert_eq!(
        billing.call(&["RENAME", "a", "auth:x"]),
        V::Status("OK".into())
    );
    assert_eq!(billing.call(&["COPY", "b", "auth:y"]), V::Int(1));
    assert_eq!(redis.cli(&["GET", "billing:auth:x"]), "v");
    assert_eq!(redis.cli(&["EXISTS", "auth:x", "auth:y"]), "2");
    // Guessed names of other services resolve inside the own namespace.
    assert_eq!(billing.call(&["GET", "x"]), V::Nil);
    assert_eq!(
        billing.call(&["EXISTS", "auth:x", "x", "legacy:l", "plain"]),
        V::Int(1)
    );
    assert_eq!(billing.call(&["OBJECT", "ENCODING", "plain"]), V::Nil);
    assert_eq!(billing.call(&["MEMORY", "USAGE", "x"]), V::Nil);
    assert_eq!(billing.call(&["TYPE", "y"]), V::Status("none".into()));
    assert_eq!(billing.call(&["DEL", "x", "y", "l"]), V::Int(0));
    assert_eq!(redis.cli(&["EXISTS", "auth:x", "auth:y", "legacy:l"]), "3");
}

#[test]
fn flushdb_deletes_only_own_keys() {
    let (redis, kg) = setup();
    seed(&redis);
    for i in 0..1200 {
        redis.cli(&["SET", &format!("billing:f{i}"), "v"]);
    }
    let mut billing = RawConn::login(kg.port(), "billing", "billpw");
    assert_eq!(billing.call(&["FLUSHDB"]), V::Status("OK".into()));
    assert_eq!(billing.call(&["DBSIZE"]), V::Int(0));
    assert_eq!(
        backend_keys(&redis),
        set(&["auth:x", "auth:y", "legacy:l", "plain", "a*1", "abc"])
    );
    // Commands after a flush run after it.
    billing.send_cmd(&["SET", "k1", "v"]);
    billing.send_cmd(&["FLUSHALL", "SYNC"]);
    billing.send_cmd(&["SET", "k2", "v"]);
    billing.send_cmd(&["KEYS", "*"]);
    assert_eq!(billing.read_value(), V::Status("OK".into()));
    assert_eq!(billing.read_value(), V::Status("OK".into()));
    assert_eq!(billing.read_value(), V::Status("OK".into()));
    assert_eq!(billing.read_value().strings(), set(&["k2"]));
    // ASYNC answers at once and finishes in the background.
    assert_eq!(billing.call(&["FLUSHALL", "ASYNC"]), V::Status("OK".into()));
    let empty = wait_until(Duration::from_secs(5), || {
        billing.call(&["DBSIZE"]) == V::Int(0)
    });
    assert!(empty);
    assert!(billing.call(&["FLUSHDB", "NOW"]).text().contains("syntax"));
    assert_eq!(backend_keys(&redis).len(), 6);
    // Keyspace procedures cannot run inside MULTI.
    billing.call(&["MULTI"]);
    assert!(billing.call(&["DBSIZE"]).is_noperm());
    assert!(matches!(billing.call(&["EXEC"]), V::Error(e) if e.starts_with("EXECABORT")));
}

#[test]
fn multi_exec_replies_are_stripped_element_wise() {
    let (redis, kg) = setup();
    seed(&redis);
    let mut billing = RawConn::login(kg.port(), "billing", "billpw");
    billing.call(&["RPUSH", "q", "item"]);
    assert_eq!(billing.call(&["MULTI"]), V::Status("OK".into()));
    for args in [
        &["SET", "k", "v"][..],
        &["KEYS", "*"],
        &["GET", "k"],
        &["SCAN", "0", "COUNT", "1000"],
        &["LPOP", "nothing"],
        &["BLPOP", "q", "1"],
        &["INFO", "keyspace"],
    ] {
        assert_eq!(billing.call(args), V::Status("QUEUED".into()), "{args:?}");
    }
    let exec = billing.call(&["EXEC"]).items();
    assert_eq!(exec.len(), 7);
    assert_eq!(exec[0], V::Status("OK".into()));
    assert_eq!(exec[1].strings(), set(&["a", "b", "k", "q"]));
    assert_eq!(exec[2], V::Bulk("v".into()));
    assert_eq!(exec[3].items()[1].strings(), set(&["a", "b", "k", "q"]));
    assert_eq!(exec[4], V::Nil);
    assert_eq!(exec[5].strings(), set(&["q", "item"]));
    assert!(!exec[6].text().contains("keys="));
    assert_eq!(redis.cli(&["GET", "billing:k"]), "v");
}

#[test]
fn pipelined_auth_confines_each_command_to_the_current_service() {
    let (redis, kg) = setup();
    let mut c = RawConn::connect(kg.port());
    let script: &[&[&str]] = &[
        &["SET", "p", "legacy"],
        &["AUTH", "billing", "billpw"],
        &["SET", "p", "billing"],
        &["KEYS", "*"],
        &["AUTH", "auth", "authpw"],
        &["SET", "p", "auth"],
        &["GET", "p"],
        &["AUTH", "billing", "wrong"],
        &["GET", "p"],
    ];
    for args in script {
        c.send_cmd(args);
    }
    let replies: Vec<V> = script.iter().map(|_| c.read_value()).collect();
    assert_eq!(replies[3].strings(), set(&["p"]));
    assert_eq!(replies[6], V::Bulk("auth".into()));
    assert!(matches!(&replies[7], V::Error(e) if e.starts_with("WRONGPASS")));
    assert_eq!(replies[8], V::Bulk("auth".into()));
    assert_eq!(redis.cli(&["GET", "legacy:p"]), "legacy");
    assert_eq!(redis.cli(&["GET", "billing:p"]), "billing");
    assert_eq!(redis.cli(&["GET", "auth:p"]), "auth");
    assert_eq!(redis.cli(&["EXISTS", "p"]), "0");
}

#[test]
fn xread_and_blocking_pops_name_keys_without_prefix() {
    let (_redis, kg) = setup();
    for proto in ["2", "3"] {
        let mut c = RawConn::connect(kg.port());
        assert!(matches!(
            c.call(&["HELLO", proto, "AUTH", "billing", "billpw"]),
            V::Array(_)
        ));
        c.call(&["DEL", "s", "l", "z"]);
        c.call(&["XADD", "s", "1-1", "f", "v"]);
        let xread = c
            .call(&["XREAD", "COUNT", "5", "STREAMS", "s", "0"])
            .items();
        let name = match proto {
            "2" => xread[0].items()[0].text(),
            _ => xread[0].text(),
        };
        assert_eq!(name, "s");
        let blocking = c
            .call(&["XREAD", "BLOCK", "100", "STREAMS", "s", "0"])
            .items();
        assert!(
            format!("{blocking:?}").contains("Bulk(\"s\")"),
            "{blocking:?}"
        );
        assert!(!format!("{blocking:?}").contains("billing"));
        c.call(&["RPUSH", "l", "x"]);
        assert_eq!(
            c.call(&["BLPOP", "none", "l", "1"]).items(),
            vec![V::Bulk("l".into()), V::Bulk("x".into())]
        );
        c.call(&["RPUSH", "l", "y"]);
        assert_eq!(
            c.call(&["LMPOP", "1", "l", "LEFT"]).items()[0],
            V::Bulk("l".into())
        );
        c.call(&["ZADD", "z", "1", "m"]);
        assert_eq!(
            c.call(&["BZPOPMIN", "z", "1"]).items()[0],
            V::Bulk("z".into())
        );
        assert_eq!(c.call(&["BLPOP", "none", "0.05"]), V::Nil);
    }
}

/// Reads pub/sub frames until `n` arrive or the read times out.
fn read_frames(c: &mut RawConn, n: usize) -> Vec<V> {
    (0..n).map(|_| c.read_value()).collect()
}

#[test]
fn pubsub_sees_only_own_channels() {
    let (_redis, kg) = setup();
    let mut sub = RawConn::login(kg.port(), "billing", "billpw");
    sub.send_cmd(&["PSUBSCRIBE", "*"]);
    assert_eq!(
        sub.read_value(),
        V::Array(vec![
            V::Bulk("psubscribe".into()),
            V::Bulk("*".into()),
            V::Int(1)
        ])
    );
    let mut plain = RawConn::login(kg.port(), "billing", "billpw");
    let mut chan = RawConn::login(kg.port(), "billing", "billpw");
    chan.send_cmd(&["SUBSCRIBE", "news"]);
    assert_eq!(chan.read_value().items()[1], V::Bulk("news".into()));
    let mut other = RawConn::login(kg.port(), "auth", "authpw");
    let mut other_sub = RawConn::login(kg.port(), "auth", "authpw");
    other_sub.send_cmd(&["SUBSCRIBE", "secret"]);
    other_sub.read_value();
    assert_eq!(other.call(&["PUBLISH", "news", "from-auth"]), V::Int(0));
    assert_eq!(plain.call(&["PUBLISH", "news", "hello"]), V::Int(2));
    assert_eq!(
        sub.read_value(),
        V::Array(vec![
            V::Bulk("pmessage".into()),
            V::Bulk("*".into()),
            V::Bulk("news".into()),
            V::Bulk("hello".into())
        ])
    );
    assert_eq!(chan.read_value().items()[1], V::Bulk("news".into()));
    // PUBSUB shows only own channels, without the prefix.
    assert_eq!(
        plain.call(&["PUBSUB", "CHANNELS"]).strings(),
        set(&["news"])
    );
    assert_eq!(
        plain.call(&["PUBSUB", "CHANNELS", "*ecre*"]).strings(),
        set(&[])
    );
    assert_eq!(
        plain.call(&["PUBSUB", "NUMSUB", "news", "secret"]).items(),
        vec![
            V::Bulk("news".into()),
            V::Int(1),
            V::Bulk("secret".into()),
            V::Int(0)
        ]
    );
    assert_eq!(
        other.call(&["PUBSUB", "CHANNELS"]).strings(),
        set(&["secret"])
    );
    // Unsubscribe confirmations come back stripped too.
    sub.send_cmd(&["PUNSUBSCRIBE"]);
    assert_eq!(
        sub.read_value(),
        V::Array(vec![
            V::Bulk("punsubscribe".into()),
            V::Bulk("*".into()),
            V::Int(0)
        ])
    );
}

#[test]
fn keyspace_notifications_are_confined() {
    let (redis, kg) = setup();
    assert_eq!(
        redis.cli(&["CONFIG", "SET", "notify-keyspace-events", "KA"]),
        "OK"
    );
    let mut sub = RawConn::login(kg.port(), "billing", "billpw");
    sub.send_cmd(&["PSUBSCRIBE", "__keyspace@0__:*"]);
    assert_eq!(
        sub.read_value().items()[1],
        V::Bulk("__keyspace@0__:*".into())
    );
    sub.send_cmd(&["SUBSCRIBE", "__keyspace@0__:watched"]);
    assert_eq!(
        sub.read_value().items()[1],
        V::Bulk("__keyspace@0__:watched".into())
    );
    let mut other = RawConn::login(kg.port(), "auth", "authpw");
    other.call(&["SET", "watched", "x"]);
    redis.cli(&["SET", "plain", "x"]);
    let mut billing = RawConn::login(kg.port(), "billing", "billpw");
    billing.call(&["SET", "watched", "1"]);
    let frames = read_frames(&mut sub, 2);
    let mut kinds = BTreeSet::new();
    for f in &frames {
        let items = f.items();
        let text = format!("{items:?}");
        assert!(
            !text.contains("billing") && !text.contains("auth"),
            "{text}"
        );
        kinds.insert(items[0].text());
        let channel = items[items.len() - 2].text();
        assert_eq!(channel, "__keyspace@0__:watched");
        assert_eq!(items[items.len() - 1], V::Bulk("set".into()));
    }
    assert_eq!(kinds, set(&["message", "pmessage"]));
}

#[test]
fn every_command_is_confined_or_refused() {
    use keygate::command;
    use keygate::policy::confinement::{rule, Rule, UNCLASSIFIED};
    let (redis, kg) = setup();
    let specs: Vec<&command::CommandSpec> = command::all()
        .iter()
        .flat_map(|c| std::iter::once(c).chain(c.subcommands.iter()))
        .collect();
    let mut checked = 0;
    for spec in specs {
        let r = rule(spec.name);
        assert_ne!(r, Rule::Refuse(UNCLASSIFIED), "{}", spec.name);
        if spec.is_container() && spec.name != "command" {
            continue;
        }
        // A request with the right number of arguments, all named `kx`.
        let mut args: Vec<String> = spec.name.split('|').map(str::to_string).collect();
        while args.len() < spec.arity.unsigned_abs() as usize {
            args.push("kx".into());
        }
        if matches!(spec.name, "shutdown" | "quit" | "reset" | "hello" | "auth") {
            continue;
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut c = RawConn::login(kg.port(), "billing", "billpw");
        let reply = c.call(&argv);
        // billing is not admin: administration is refused too.
        if let Rule::Refuse(_) | Rule::Admin(_) | Rule::AdminKeys(_) | Rule::Debug(_) = r {
            // Commands keygate answers itself never reach the backend:
            // CLIENT subcommands (which may fail their own way) and CONFIG
            // GET (keygate's own view), SELECT (only its own database) and
            // the cluster flags (Redis's answer without cluster).
            let local = (spec.name.starts_with("client|") && matches!(reply, V::Error(_)))
                // A client's own tracking state (tracking off here), and
                // keygate's table of the service's own clients.
                || matches!(
                    spec.name,
                    "client|getredir"
                        | "client|trackinginfo"
                        | "client|list"
                        | "client|info"
                        | "client|kill"
                        | "client|unblock"
                )
                || matches!(
                    spec.name,
                    "config|get" | "select" | "readonly" | "readwrite" | "asking"
                );
            assert!(reply.is_noperm() || local, "{}: {reply:?}", spec.name);
        }
        checked += 1;
    }
    assert!(checked > 300);
    // Whatever the commands did, no key outside a namespace appeared.
    for k in backend_keys(&redis) {
        assert!(k.starts_with("billing:"), "unconfined key {k}");
    }
}

#[test]
fn a_flood_of_flushes_runs_few_scans_and_others_keep_being_served() {
    let (redis, kg) = setup();
    // 6000 keys: half billing's, half auth's, written straight to Redis.
    let mut direct = RawConn::connect(redis.port());
    for (prefix, n) in [("billing:f", 3000), ("auth:o", 3000)] {
        let mut burst = Vec::new();
        for i in 0..n {
            burst.extend(resp_command(&["SET", &format!("{prefix}{i}"), "v"]));
        }
        direct.send(&burst);
        for _ in 0..n {
            direct.read_reply();
        }
    }
    assert_eq!(direct.cmd_str(&["CONFIG", "RESETSTAT"]), "+OK\r\n");
    let mut billing = RawConn::login(kg.port(), "billing", "billpw");
    let mut auth = RawConn::login(kg.port(), "auth", "authpw");
    for _ in 0..300 {
        billing.send_cmd(&["FLUSHDB", "ASYNC"]);
    }
    // auth's requests are served while the flushes run.
    let mut latencies = Vec::new();
    for i in 0..300 {
        let started = std::time::Instant::now();
        assert_eq!(auth.call(&["GET", &format!("o{i}")]), V::Bulk("v".into()));
        latencies.push(started.elapsed());
    }
    for _ in 0..300 {
        assert_eq!(billing.read_value(), V::Status("OK".into()));
    }
    let billing_keys =
        || redis.cli(&["EVAL", "return #redis.call('keys', 'billing:*')", "0"]) == "0";
    assert!(wait_until(Duration::from_secs(30), billing_keys));
    // Wait for the flushes to finish: SCAN calls stop rising.
    let mut last = redis.calls("scan");
    assert!(wait_until(Duration::from_secs(30), || {
        // "Stopped rising" means unchanged over this interval: the sleep
        // is the state's definition, not a guess that work has finished.
        std::thread::sleep(Duration::from_millis(300));
        let now = redis.calls("scan");
        std::mem::replace(&mut last, now) == now
    }));
    let scans = last;
    latencies.sort();
    println!(
        "300 FLUSHDB ASYNC: {scans} SCAN calls, {} UNLINK calls; auth GET p50 {:?}, p99 {:?}, max {:?}",
        redis.calls("unlink"),
        latencies[150],
        latencies[297],
        latencies[299]
    );
    // A run reads one page per 1000 slots of the hash table (8192 for 6000
    // keys): about 9 SCAN calls, so 300 runs would be about 2700. Calls
    // that arrive while a run waits join it: usually two runs in all (the
    // one running and the one every later call joins), a few more if the
    // first finishes before all 300 calls were read.
    assert!(scans <= 5 * 10, "{scans} SCAN calls for 300 flushes");
    assert_eq!(redis.cli(&["DBSIZE"]), "3000");
}
