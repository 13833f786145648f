//! `admin = true` means trusted with the server, also under a prefix: an
//! admin namespaced service runs administration commands as they are (keys
//! inside them still get the prefix), compared byte for byte with
//! redis-server answering the same commands directly; a namespaced service
//! that is not admin is refused as before; and what would break the shared
//! backend connection is refused for every service (databases: issue 19,
//! tests/databases.rs).
mod common;

use std::time::Duration;

use common::*;

const SERVICES: &str = r#"
[[service]]
name = "root"
prefix = ""
isolation = false
password = "rootpw"
admin = true

[[service]]
name = "ops"
prefix = "ops:"
password = "opspw"
admin = true
allow_scripts = true

[[service]]
name = "app"
prefix = "app:"
password = "apppw"
allow_scripts = true

[[service]]
name = "adm"
prefix = "adm:"
password = "admpw"
admin = true
"#;

fn setup() -> (RedisServer, Keygate) {
    let redis = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let kg = Keygate::start_with(&standalone_config(&redis.addr(), SERVICES));
    kg.wait_ready();
    (redis, kg)
}

fn login(kg: &Keygate, service: &str) -> RawConn {
    RawConn::login(kg.port(), service, &format!("{service}pw"))
}

fn is_noperm(reply: &str) -> bool {
    reply.starts_with("-NOPERM")
}

#[test]
fn an_admin_namespaced_service_administers_the_server_as_redis_answers() {
    let (redis, kg) = setup();
    let mut ops = login(&kg, "ops");
    let mut direct = RawConn::connect(redis.port());
    // Server-wide commands: the same bytes as straight from Redis.
    assert_eq!(
        ops.cmd_str(&["CONFIG", "SET", "slowlog-log-slower-than", "12345"]),
        "+OK\r\n"
    );
    for args in [
        &["CONFIG", "GET", "slowlog-log-slower-than"][..],
        &["CONFIG", "GET", "maxmemory"],
        &["CONFIG", "GET", "databases"],
        &["SLOWLOG", "LEN"],
        &["SLOWLOG", "RESET"],
        &["LATENCY", "LATEST"],
        &["LATENCY", "RESET"],
        &["MODULE", "LIST"],
        &["PUBSUB", "NUMPAT"],
        &["ACL", "LIST"],
        &["ACL", "USERS"],
        &["DEBUG", "SLEEP", "0"],
        &["DEBUG", "PROTOCOL", "bignum"],
        &["MEMORY", "PURGE"],
        &["CONFIG", "RESETSTAT"],
    ] {
        assert_eq!(ops.cmd_str(args), direct.cmd_str(args), "{args:?}");
    }
    // Figures that change between two calls: the reply's shape.
    for args in [
        &["ROLE"][..],
        &["LASTSAVE"],
        &["MEMORY", "STATS"],
        &["MEMORY", "DOCTOR"],
        &["SAVE"],
        &["DEBUG", "DIGEST"],
    ] {
        let (got, want) = (ops.cmd_str(args), direct.cmd_str(args));
        assert_eq!(got.get(..1), want.get(..1), "{args:?}: {got} / {want}");
        assert!(!got.starts_with('-'), "{args:?}: {got}");
    }
    assert_eq!(
        ops.cmd_str(&["ROLE"]).lines().nth(2),
        Some("master"),
        "ROLE"
    );
    // Keys inside administration commands still get the prefix.
    assert_eq!(ops.cmd_str(&["RPUSH", "list", "a", "b"]), ":2\r\n");
    assert_eq!(ops.cmd_str(&["PFADD", "hll", "x"]), ":1\r\n");
    for (through, direct_args) in [
        (
            &["DEBUG", "DIGEST-VALUE", "list", "nokey"][..],
            &["DEBUG", "DIGEST-VALUE", "ops:list", "ops:nokey"][..],
        ),
        (
            &["DEBUG", "LISTPACK", "list"],
            &["DEBUG", "LISTPACK", "ops:list"],
        ),
        (
            &["DEBUG", "QUICKLIST", "list"],
            &["DEBUG", "QUICKLIST", "ops:list"],
        ),
        (
            &["DEBUG", "SDSLEN", "nokey"],
            &["DEBUG", "SDSLEN", "ops:nokey"],
        ),
        (
            &["MEMORY", "USAGE", "list"],
            &["MEMORY", "USAGE", "ops:list"],
        ),
        (
            &["OBJECT", "ENCODING", "list"],
            &["OBJECT", "ENCODING", "ops:list"],
        ),
        (
            &["PFDEBUG", "GETREG", "hll"],
            &["PFDEBUG", "GETREG", "ops:hll"],
        ),
        (
            &["PFDEBUG", "ENCODING", "nokey"],
            &["PFDEBUG", "ENCODING", "ops:nokey"],
        ),
    ] {
        assert_eq!(
            ops.cmd_str(through),
            direct.cmd_str(direct_args),
            "{through:?}"
        );
    }
    let object = ops.cmd_str(&["DEBUG", "OBJECT", "list"]);
    assert!(object.contains("encoding:quicklist"), "{object}");
    assert!(ops
        .cmd_str(&["DEBUG", "OBJECT", "nokey"])
        .starts_with("-ERR no such key"));
    // DEBUG POPULATE writes the service's keys, under its default key prefix
    // and under one it names.
    assert_eq!(ops.cmd_str(&["DEBUG", "POPULATE", "2"]), "+OK\r\n");
    assert_eq!(
        ops.cmd_str(&["DEBUG", "POPULATE", "1", "mine", "3"]),
        "+OK\r\n"
    );
    for key in ["ops:key:0", "ops:key:1", "ops:mine:0"] {
        assert_eq!(redis.cli(&["EXISTS", key]), "1", "{key}");
    }
    assert_eq!(ops.cmd_str(&["GET", "mine:0"]), "$3\r\nval\r\n");
    // MIGRATE moves the service's own key, by its full name.
    let other = RedisServer::start();
    let port = other.port().to_string();
    assert_eq!(
        ops.cmd_str(&["MIGRATE", "127.0.0.1", &port, "list", "0", "5000"]),
        "+OK\r\n"
    );
    assert_eq!(other.cli(&["LLEN", "ops:list"]), "2");
    assert_eq!(
        ops.cmd_str(&[
            "MIGRATE",
            "127.0.0.1",
            &port,
            "",
            "0",
            "5000",
            "KEYS",
            "hll"
        ]),
        "+OK\r\n"
    );
    assert_eq!(other.cli(&["EXISTS", "ops:hll"]), "1");
    // Inside MULTI too.
    assert_eq!(ops.cmd_str(&["MULTI"]), "+OK\r\n");
    assert_eq!(ops.cmd_str(&["CONFIG", "GET", "maxmemory"]), "+QUEUED\r\n");
    assert_eq!(ops.cmd_str(&["MEMORY", "USAGE", "nokey"]), "+QUEUED\r\n");
    assert_eq!(
        ops.cmd_str(&["EXEC"]),
        "*2\r\n*2\r\n$9\r\nmaxmemory\r\n$1\r\n0\r\n$-1\r\n"
    );
    // SHUTDOWN goes to the server, as asked.
    let reply = ops.cmd_str(&["SHUTDOWN", "NOSAVE"]);
    assert!(reply.starts_with('-'), "{reply}");
    assert!(wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", redis.port())).is_err()
    }));
}

#[test]
fn a_namespaced_service_that_is_not_admin_is_refused_administration() {
    let (_redis, kg) = setup();
    let mut app = login(&kg, "app");
    for args in [
        &["CONFIG", "SET", "maxmemory", "0"][..],
        &["CONFIG", "RESETSTAT"],
        &["SLOWLOG", "LEN"],
        &["LATENCY", "LATEST"],
        &["MODULE", "LIST"],
        &["PUBSUB", "NUMPAT"],
        &["ACL", "LIST"],
        &["DEBUG", "OBJECT", "k"],
        &["SAVE"],
        &["BGSAVE"],
        &["LASTSAVE"],
        &["MEMORY", "STATS"],
        &["ROLE"],
        &["REPLICAOF", "NO", "ONE"],
        &["SHUTDOWN"],
        &["MIGRATE", "127.0.0.1", "1", "k", "0", "10"],
        &["PFDEBUG", "GETREG", "k"],
        &["PFSELFTEST"],
    ] {
        let reply = app.cmd_str(args);
        assert!(is_noperm(&reply), "{args:?}: {reply}");
    }
    // CONFIG GET is still keygate's own view.
    assert_eq!(
        app.cmd_str(&["CONFIG", "GET", "cluster-enabled"]),
        "*2\r\n$15\r\ncluster-enabled\r\n$2\r\nno\r\n"
    );
}

#[test]
fn what_breaks_the_shared_connection_is_refused_for_everyone() {
    let (_redis, kg) = setup();
    for service in ["root", "ops", "app"] {
        let mut conn = login(&kg, service);
        for args in [
            &["SYNC"][..],
            &["PSYNC", "?", "-1"],
            &["REPLCONF", "listening-port", "1"],
            &["CLUSTER", "INFO"],
            &["SCRIPT", "DEBUG", "YES"],
        ] {
            let reply = conn.cmd_str(args);
            assert!(is_noperm(&reply), "{service} {args:?}: {reply}");
        }
        // Answered by keygate as a Redis without cluster support answers
        // (src/command/state.rs), never sent to a shared connection.
        for args in [&["READONLY"][..], &["READWRITE"], &["ASKING"]] {
            let reply = conn.cmd_str(args);
            assert_eq!(
                reply, "-ERR This instance has cluster support disabled\r\n",
                "{service} {args:?}"
            );
        }
        assert_eq!(conn.cmd_str(&["PING"]), "+PONG\r\n");
    }
}

const LIBRARY: &str = "#!lua name=lib\nredis.register_function('f', function() return 1 end)";

#[test]
fn scripts_and_functions_follow_allow_scripts_and_admin() {
    let (redis, kg) = setup();
    let mut direct = RawConn::connect(redis.port());
    let mut ops = login(&kg, "ops");
    let mut app = login(&kg, "app");
    let mut adm = login(&kg, "adm");
    let sha = "e0e1f9fabfc9d4800c877a703b823ac0578ff8db";
    // allow_scripts: the script cache and the function listing.
    for conn in [&mut ops, &mut app] {
        for args in [
            &["SCRIPT", "LOAD", "return 1"][..],
            &["SCRIPT", "EXISTS", sha, "0000"],
            &["SCRIPT", "KILL"],
            &["FUNCTION", "LIST"],
            &["FUNCTION", "STATS"],
            &["SCRIPT", "FLUSH"],
            &["SCRIPT", "EXISTS", sha],
        ] {
            assert_eq!(conn.cmd_str(args), direct.cmd_str(args), "{args:?}");
        }
    }
    // allow_scripts and admin: functions, which every service shares.
    assert_eq!(ops.cmd_str(&["FUNCTION", "LOAD", LIBRARY]), "$3\r\nlib\r\n");
    for args in [
        &["FUNCTION", "LOAD", LIBRARY][..],
        &["FUNCTION", "LIST", "WITHCODE"],
        &["FUNCTION", "KILL"],
    ] {
        assert_eq!(ops.cmd_str(args), direct.cmd_str(args), "{args:?}");
    }
    assert_eq!(ops.cmd_str(&["FCALL", "f", "0"]), ":1\r\n");
    let dump = ops.cmd(&["FUNCTION", "DUMP"]);
    assert_eq!(dump, direct.cmd(&["FUNCTION", "DUMP"]));
    let payload = &dump[dump.iter().position(|&b| b == b'\n').unwrap() + 1..dump.len() - 2];
    assert_eq!(ops.cmd_str(&["FUNCTION", "DELETE", "lib"]), "+OK\r\n");
    let restore: [&[u8]; 3] = [b"FUNCTION", b"RESTORE", payload];
    assert_eq!(ops.cmd_str(&restore), "+OK\r\n");
    assert_eq!(ops.cmd_str(&["FUNCTION", "FLUSH"]), "+OK\r\n");
    assert_eq!(direct.cmd_str(&["FUNCTION", "LIST"]), "*0\r\n");
    // Without admin, or without allow_scripts: refused.
    for args in [
        &["FUNCTION", "LOAD", LIBRARY][..],
        &["FUNCTION", "DELETE", "lib"],
        &["FUNCTION", "FLUSH"],
        &["FUNCTION", "RESTORE", "x"],
        &["FUNCTION", "DUMP"],
        &["FUNCTION", "KILL"],
    ] {
        assert!(is_noperm(&app.cmd_str(args)), "app {args:?}");
        assert!(is_noperm(&adm.cmd_str(args)), "adm {args:?}");
    }
    for args in [
        &["SCRIPT", "LOAD", "return 1"][..],
        &["SCRIPT", "FLUSH"],
        &["SCRIPT", "KILL"],
        &["SCRIPT", "EXISTS", sha],
        &["FUNCTION", "LIST"],
        &["FUNCTION", "STATS"],
        &["EVAL", "return 1", "0"],
    ] {
        assert!(is_noperm(&adm.cmd_str(args)), "adm {args:?}");
    }
}

#[test]
fn acl_whoami_is_the_service_and_cat_and_genpass_are_for_everyone() {
    let (redis, kg) = setup();
    let mut direct = RawConn::connect(redis.port());
    for service in ["root", "ops", "app", "adm"] {
        let mut conn = login(&kg, service);
        let name = format!("${}\r\n{service}\r\n", service.len());
        assert_eq!(conn.cmd_str(&["ACL", "WHOAMI"]), name);
        for args in [
            &["ACL", "CAT"][..],
            &["ACL", "CAT", "string"],
            &["ACL", "CAT", "nope"],
            &["ACL", "HELP"],
            &["ACL", "GENPASS", "x"],
        ] {
            assert_eq!(
                conn.cmd_str(args),
                direct.cmd_str(args),
                "{service} {args:?}"
            );
        }
        assert_eq!(
            conn.cmd(&["ACL", "GENPASS"]).len(),
            "$64\r\n".len() + 64 + 2
        );
        assert_eq!(conn.cmd_str(&["ACL", "GENPASS", "32"]).len(), 4 + 8 + 2);
        // Queued in a transaction, the answer is the same.
        assert_eq!(conn.cmd_str(&["MULTI"]), "+OK\r\n");
        assert_eq!(conn.cmd_str(&["ACL", "WHOAMI"]), "+QUEUED\r\n");
        assert_eq!(conn.cmd_str(&["PING"]), "+QUEUED\r\n");
        assert_eq!(conn.cmd_str(&["EXEC"]), format!("*2\r\n{name}+PONG\r\n"));
        // The rest of ACL is administration.
        for args in [
            &["ACL", "LIST"][..],
            &["ACL", "USERS"],
            &["ACL", "GETUSER", "default"],
            &["ACL", "LOG"],
            &["ACL", "DRYRUN", "default", "GET", "k"],
        ] {
            let reply = conn.cmd_str(args);
            if matches!(service, "app") {
                assert!(is_noperm(&reply), "{service} {args:?}: {reply}");
            } else {
                assert_eq!(reply, direct.cmd_str(args), "{service} {args:?}");
            }
        }
    }
}

/// Nil replies of commands whose replies name keys keep Redis's own bytes
/// (a null array in RESP2), through a namespaced service.
#[test]
fn nil_replies_naming_no_key_are_redis_own() {
    let (redis, kg) = setup();
    let mut direct = RawConn::connect(redis.port());
    let mut app = login(&kg, "app");
    for args in [
        &["BLPOP", "nokey", "0.01"][..],
        &["BZPOPMIN", "nokey", "0.01"],
        &["LMPOP", "1", "nokey", "LEFT"],
        &["BLMPOP", "0.01", "1", "nokey", "LEFT"],
        &["ZMPOP", "1", "nokey", "MIN"],
        &["BZMPOP", "0.01", "1", "nokey", "MIN"],
        &["XREAD", "STREAMS", "nokey", "0"],
        &["RANDOMKEY"],
    ] {
        assert_eq!(app.cmd_str(args), direct.cmd_str(args), "{args:?}");
    }
}

/// MONITOR is server administration: an admin namespaced service watches
/// the backend's own stream (prefixed keys and all), which a service that
/// is not admin is refused.
#[test]
fn an_admin_namespaced_service_may_monitor() {
    let (_redis, kg) = setup();
    let mut app = login(&kg, "app");
    assert!(is_noperm(&app.cmd_str(&["MONITOR"])));
    let mut ops = login(&kg, "ops");
    assert_eq!(ops.cmd_str(&["MONITOR"]), "+OK\r\n");
    let mut writer = login(&kg, "app");
    assert_eq!(writer.cmd_str(&["SET", "watched", "1"]), "+OK\r\n");
    let seen = wait_until(Duration::from_secs(10), || {
        let line = ops.try_read_reply(Duration::from_millis(200));
        line.is_some_and(|l| String::from_utf8_lossy(&l).contains("\"app:watched\""))
    });
    assert!(seen, "the monitor stream never showed the write");
}

/// SLOWLOG GET for an admin namespaced service shows its own keys without
/// the prefix, as the service wrote them (Redis's suite compares the logged
/// arguments with what it sent), trimmed arguments included; other
/// services' keys stay as Redis logged them.
#[test]
fn slowlog_shows_the_services_own_keys_as_it_wrote_them() {
    let (redis, kg) = setup();
    let mut direct = RawConn::connect(redis.port());
    let mut ops = login(&kg, "ops");
    let mut app = login(&kg, "app");
    assert_eq!(
        ops.cmd_str(&["CONFIG", "SET", "slowlog-log-slower-than", "0"]),
        "+OK\r\n"
    );
    assert_eq!(ops.cmd_str(&["SLOWLOG", "RESET"]), "+OK\r\n");
    let long = "A".repeat(200);
    let many: Vec<String> = (0..40).map(|i| i.to_string()).collect();
    let mut sadd_many = vec!["SADD", "set"];
    sadd_many.extend(many.iter().map(String::as_str));
    assert_eq!(ops.cmd_str(&["SADD", "set", "foo", &long]), ":2\r\n");
    assert_eq!(ops.cmd_str(&sadd_many), ":40\r\n");
    assert_eq!(ops.cmd_str(&["MSET", "a", "1", "b", "2"]), "+OK\r\n");
    assert_eq!(app.cmd_str(&["SET", "mine", "1"]), "+OK\r\n");
    assert_eq!(
        ops.cmd_str(&["CONFIG", "SET", "slowlog-log-slower-than", "-1"]),
        "+OK\r\n"
    );
    let logged = |conn: &mut RawConn| -> Vec<Vec<String>> {
        let Reply::Array(entries) = conn.call(&["SLOWLOG", "GET", "-1"]) else {
            panic!("SLOWLOG GET is an array")
        };
        entries
            .into_iter()
            .filter_map(|e| match e {
                Reply::Array(fields) => match fields.into_iter().nth(3) {
                    Some(Reply::Array(args)) => Some(
                        args.into_iter()
                            .map(|a| match a {
                                Reply::Bulk(b) => b,
                                other => format!("{other:?}"),
                            })
                            .collect(),
                    ),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    };
    let through = logged(&mut ops);
    let backend = logged(&mut direct);
    let find = |entries: &[Vec<String>], first: &str, second: &str| {
        entries
            .iter()
            .find(|a| a.len() > 1 && a[0].eq_ignore_ascii_case(first) && a[1] == second)
            .cloned()
    };
    // Redis logged the prefixed names; the service sees its own.
    let sadd = through
        .iter()
        .find(|a| a.len() == 4 && a[1] == "set")
        .expect("SADD set foo logged");
    assert_eq!(sadd[2], "foo");
    assert!(sadd[3].ends_with("... (72 more bytes)"), "{:?}", sadd[3]);
    let logged_sadd = backend
        .iter()
        .find(|a| a.len() == 4 && a[1] == "ops:set")
        .expect("Redis logged the prefixed key");
    assert_eq!(logged_sadd[2..], sadd[2..]);
    let trimmed = through
        .iter()
        .find(|a| a.len() == 32 && a[1] == "set")
        .expect("the trimmed SADD");
    assert!(trimmed[31].contains("more arguments"), "{trimmed:?}");
    let mset = find(&through, "mset", "a").expect("MSET logged");
    assert_eq!(mset, ["MSET", "a", "1", "b", "2"]);
    // Another service's key is not this namespace's: shown as logged.
    assert!(find(&through, "set", "app:mine").is_some(), "{through:?}");
}
