//! Databases through keygate (issue 19): SELECT and a Redis URL's `/4`
//! work, each database keeps the service's prefix, a service is held to its
//! `databases`, and a pipeline that switches database keeps its order.
mod common;

use std::time::Duration;

use common::*;

const SERVICES: &str = r#"
[[service]]
name = "default"
prefix = ""
isolation = false

[[service]]
name = "jobs"
prefix = "jobs:"
password = "jobspw"
default_ttl = "1h"
databases = [0, 4]

[[service]]
name = "cache"
prefix = "cache:"
password = "cachepw"
databases = [0, 4]

[[service]]
name = "narrow"
prefix = "narrow:"
password = "narrowpw"
databases = [0]
"#;

fn setup() -> (RedisServer, Keygate) {
    let redis = RedisServer::start();
    let kg = Keygate::start_with(&standalone_config(&redis.addr(), SERVICES));
    kg.wait_ready();
    (redis, kg)
}

/// `args` run straight on the backend in database `db`.
fn backend(redis: &RedisServer, db: u32, args: &[&str]) -> String {
    let mut full = vec!["-n".to_string(), db.to_string()];
    full.extend(args.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = full.iter().map(String::as_str).collect();
    redis.cli(&refs)
}

fn bulk(s: &str) -> String {
    format!("${}\r\n{s}\r\n", s.len())
}

#[test]
fn select_moves_the_client_and_keeps_the_prefix() {
    let (redis, kg) = setup();
    let mut jobs = RawConn::login(kg.port(), "jobs", "jobspw");
    assert_eq!(jobs.cmd_str(&["SELECT", "4"]), "+OK\r\n");
    assert_eq!(jobs.cmd_str(&["SET", "k", "in4"]), "+OK\r\n");
    assert_eq!(jobs.cmd_str(&["GET", "k"]), bulk("in4"));
    assert_eq!(backend(&redis, 4, &["GET", "jobs:k"]), "in4");
    assert_eq!(backend(&redis, 0, &["EXISTS", "jobs:k"]), "0");
    // TTL governance applies in every database.
    let ttl: i64 = backend(&redis, 4, &["TTL", "jobs:k"]).parse().unwrap();
    assert!(ttl > 3000 && ttl <= 3600, "{ttl}");
    // Redis's own errors.
    for (arg, err) in [
        ("abc", "-ERR value is not an integer or out of range\r\n"),
        ("16", "-ERR DB index is out of range\r\n"),
        ("-1", "-ERR DB index is out of range\r\n"),
        (
            "9999999999",
            "-ERR value is out of range, value must between -2147483648 and 2147483647\r\n",
        ),
    ] {
        assert_eq!(jobs.cmd_str(&["SELECT", arg]), err, "SELECT {arg}");
    }
    // A database the service may not use.
    let refused = jobs.cmd_str(&["SELECT", "5"]);
    assert!(
        refused.starts_with("-NOPERM") && refused.contains("'jobs'"),
        "{refused}"
    );
    // Still in 4; CLIENT INFO and INFO keygate show it.
    assert_eq!(jobs.cmd_str(&["GET", "k"]), bulk("in4"));
    assert!(jobs.cmd_str(&["CLIENT", "INFO"]).contains(" db=4 "));
    assert!(jobs
        .cmd_str(&["INFO", "keygate"])
        .contains("clients_db4:1\r\n"));
    // RESET and HELLO go back to the default database.
    assert_eq!(jobs.cmd_str(&["RESET"]), "+RESET\r\n");
    assert_eq!(jobs.cmd_str(&["AUTH", "jobs", "jobspw"]), "+OK\r\n");
    assert_eq!(jobs.cmd_str(&["GET", "k"]), "$-1\r\n");
    assert_eq!(jobs.cmd_str(&["SELECT", "4"]), "+OK\r\n");
    assert!(jobs.cmd_str(&["HELLO", "3"]).starts_with("%7"));
    assert_eq!(jobs.cmd_str(&["GET", "k"]), "_\r\n");
}

#[test]
fn a_service_limited_to_database_0_is_refused_database_4() {
    let (redis, kg) = setup();
    let mut narrow = RawConn::login(kg.port(), "narrow", "narrowpw");
    let refused = narrow.cmd_str(&["SELECT", "4"]);
    assert_eq!(
        refused,
        "-NOPERM keygate: service 'narrow' may not use database 4\r\n"
    );
    assert_eq!(narrow.cmd_str(&["SELECT", "0"]), "+OK\r\n");
    for args in [
        &["MOVE", "k", "4"][..],
        &["COPY", "k", "k2", "DB", "4"],
        &["SUBSCRIBE", "__keyspace@4__:k"],
        &["PSUBSCRIBE", "__keyspace@*__:k"],
    ] {
        let reply = narrow.cmd_str(args);
        assert!(reply.starts_with("-NOPERM"), "{args:?}: {reply}");
    }
    // Inside MULTI the refusal dooms the transaction, as a refused command does.
    assert_eq!(narrow.cmd_str(&["MULTI"]), "+OK\r\n");
    assert!(narrow.cmd_str(&["SELECT", "4"]).starts_with("-NOPERM"));
    assert!(narrow.cmd_str(&["EXEC"]).starts_with("-EXECABORT"));
    assert_eq!(backend(&redis, 4, &["DBSIZE"]), "0");
}

#[test]
fn two_services_in_the_same_database_stay_apart() {
    let (redis, kg) = setup();
    let mut jobs = RawConn::login(kg.port(), "jobs", "jobspw");
    let mut cache = RawConn::login(kg.port(), "cache", "cachepw");
    for c in [&mut jobs, &mut cache] {
        assert_eq!(c.cmd_str(&["SELECT", "4"]), "+OK\r\n");
    }
    assert_eq!(jobs.cmd_str(&["SET", "k", "jobs"]), "+OK\r\n");
    assert_eq!(cache.cmd_str(&["SET", "k", "cache"]), "+OK\r\n");
    assert_eq!(jobs.cmd_str(&["GET", "k"]), bulk("jobs"));
    assert_eq!(cache.cmd_str(&["GET", "k"]), bulk("cache"));
    assert_eq!(jobs.cmd_str(&["DBSIZE"]), ":1\r\n");
    assert_eq!(jobs.cmd_str(&["KEYS", "*"]), format!("*1\r\n{}", bulk("k")));
    assert_eq!(backend(&redis, 4, &["DBSIZE"]), "2");
}

#[test]
fn flushdb_in_database_4_leaves_database_0_and_flushall_covers_both() {
    let (redis, kg) = setup();
    let mut jobs = RawConn::login(kg.port(), "jobs", "jobspw");
    assert_eq!(jobs.cmd_str(&["SET", "zero", "0"]), "+OK\r\n");
    assert_eq!(jobs.cmd_str(&["SELECT", "4"]), "+OK\r\n");
    assert_eq!(jobs.cmd_str(&["SET", "four", "4"]), "+OK\r\n");
    backend(&redis, 4, &["SET", "cache:other", "x"]);
    assert_eq!(jobs.cmd_str(&["DBSIZE"]), ":1\r\n");
    assert_eq!(jobs.cmd_str(&["RANDOMKEY"]), bulk("four"));
    assert_eq!(jobs.cmd_str(&["FLUSHDB"]), "+OK\r\n");
    assert_eq!(backend(&redis, 4, &["EXISTS", "jobs:four"]), "0");
    assert_eq!(backend(&redis, 0, &["GET", "jobs:zero"]), "0");
    assert_eq!(backend(&redis, 4, &["GET", "cache:other"]), "x");
    assert_eq!(jobs.cmd_str(&["SET", "four", "4"]), "+OK\r\n");
    assert_eq!(jobs.cmd_str(&["FLUSHALL"]), "+OK\r\n");
    assert_eq!(backend(&redis, 4, &["EXISTS", "jobs:four"]), "0");
    assert_eq!(backend(&redis, 0, &["EXISTS", "jobs:zero"]), "0");
    assert_eq!(backend(&redis, 4, &["GET", "cache:other"]), "x");
}

#[test]
fn select_inside_multi_takes_effect_when_exec_runs() {
    let (redis, kg) = setup();
    let mut jobs = RawConn::login(kg.port(), "jobs", "jobspw");
    assert_eq!(jobs.cmd_str(&["MULTI"]), "+OK\r\n");
    assert_eq!(jobs.cmd_str(&["SELECT", "4"]), "+QUEUED\r\n");
    assert_eq!(jobs.cmd_str(&["SET", "t", "v"]), "+QUEUED\r\n");
    assert_eq!(jobs.cmd_str(&["SELECT", "x"]), "+QUEUED\r\n");
    assert_eq!(
        jobs.cmd_str(&["EXEC"]),
        "*3\r\n+OK\r\n+OK\r\n-ERR value is not an integer or out of range\r\n"
    );
    assert_eq!(backend(&redis, 4, &["GET", "jobs:t"]), "v");
    // The session is in 4 now, on shared connections too.
    assert_eq!(jobs.cmd_str(&["GET", "t"]), bulk("v"));
    // A transaction a failed WATCH aborts leaves the database alone.
    let mut other = RawConn::login(kg.port(), "jobs", "jobspw");
    assert_eq!(other.cmd_str(&["SELECT", "4"]), "+OK\r\n");
    assert_eq!(jobs.cmd_str(&["WATCH", "t"]), "+OK\r\n");
    assert_eq!(other.cmd_str(&["SET", "t", "changed"]), "+OK\r\n");
    assert_eq!(jobs.cmd_str(&["MULTI"]), "+OK\r\n");
    assert_eq!(jobs.cmd_str(&["SELECT", "0"]), "+QUEUED\r\n");
    assert_eq!(jobs.cmd_str(&["EXEC"]), "*-1\r\n");
    assert_eq!(jobs.cmd_str(&["GET", "t"]), bulk("changed"));
    // Pipelined: the commands after EXEC run in the database EXEC left.
    let mut pipeline = Vec::new();
    for args in [
        &["MULTI"][..],
        &["SELECT", "0"],
        &["EXEC"],
        &["SET", "after", "0"],
    ] {
        pipeline.extend(resp_command(args));
    }
    jobs.send(&pipeline);
    for want in ["+OK\r\n", "+QUEUED\r\n", "*1\r\n+OK\r\n", "+OK\r\n"] {
        assert_eq!(String::from_utf8_lossy(&jobs.read_reply()), want);
    }
    assert_eq!(backend(&redis, 0, &["GET", "jobs:after"]), "0");
}

#[test]
fn a_pipeline_across_select_keeps_its_order() {
    let (redis, kg) = setup();
    let mut jobs = RawConn::login(kg.port(), "jobs", "jobspw");
    for round in 0..50 {
        let mut pipeline = Vec::new();
        let key = format!("p{round}");
        let cmds: Vec<Vec<String>> = vec![
            vec!["SET".into(), key.clone(), "zero".into()],
            vec!["SELECT".into(), "4".into()],
            vec!["SET".into(), key.clone(), "four".into()],
            vec!["GET".into(), key.clone()],
            vec!["MULTI".into()],
            vec!["GET".into(), key.clone()],
            vec!["EXEC".into()],
            vec!["SELECT".into(), "0".into()],
            vec!["GET".into(), key.clone()],
            vec!["APPEND".into(), key.clone(), "!".into()],
            vec!["SELECT".into(), "4".into()],
            vec!["GET".into(), key.clone()],
            vec!["SELECT".into(), "0".into()],
        ];
        for c in &cmds {
            pipeline.extend(resp_command(c));
        }
        jobs.send(&pipeline);
        let want = [
            "+OK\r\n".to_string(),
            "+OK\r\n".into(),
            "+OK\r\n".into(),
            bulk("four"),
            "+OK\r\n".into(),
            "+QUEUED\r\n".into(),
            format!("*1\r\n{}", bulk("four")),
            "+OK\r\n".into(),
            bulk("zero"),
            ":5\r\n".into(),
            "+OK\r\n".into(),
            bulk("four"),
            "+OK\r\n".into(),
        ];
        for (i, w) in want.iter().enumerate() {
            let got = String::from_utf8_lossy(&jobs.read_reply()).into_owned();
            assert_eq!(&got, w, "round {round}, reply {i} ({:?})", cmds[i]);
        }
        assert_eq!(
            backend(&redis, 0, &["GET", &format!("jobs:{key}")]),
            "zero!"
        );
    }
}

#[test]
fn move_and_copy_between_allowed_databases_keep_prefix_and_ttl() {
    let (redis, kg) = setup();
    let mut jobs = RawConn::login(kg.port(), "jobs", "jobspw");
    assert_eq!(jobs.cmd_str(&["SET", "m", "v"]), "+OK\r\n");
    assert_eq!(jobs.cmd_str(&["MOVE", "m", "4"]), ":1\r\n");
    assert_eq!(backend(&redis, 4, &["GET", "jobs:m"]), "v");
    assert_eq!(backend(&redis, 0, &["EXISTS", "jobs:m"]), "0");
    let ttl: i64 = backend(&redis, 4, &["TTL", "jobs:m"]).parse().unwrap();
    assert!(ttl > 3000, "moved key keeps a governed TTL: {ttl}");
    // A key without a TTL (written straight on the backend) gets the
    // default in its destination database.
    backend(&redis, 0, &["SET", "jobs:bare", "b"]);
    assert_eq!(jobs.cmd_str(&["MOVE", "bare", "4"]), ":1\r\n");
    let ttl: i64 = backend(&redis, 4, &["TTL", "jobs:bare"]).parse().unwrap();
    assert!(ttl > 3000, "MOVE's destination is governed: {ttl}");
    backend(&redis, 0, &["SET", "jobs:src", "s"]);
    assert_eq!(jobs.cmd_str(&["COPY", "src", "dst", "DB", "4"]), ":1\r\n");
    assert_eq!(backend(&redis, 4, &["GET", "jobs:dst"]), "s");
    let ttl: i64 = backend(&redis, 4, &["TTL", "jobs:dst"]).parse().unwrap();
    assert!(ttl > 3000, "COPY's destination is governed: {ttl}");
    assert_eq!(backend(&redis, 0, &["TTL", "jobs:src"]), "-1");
    // The client is still in database 0, on shared connections too.
    assert_eq!(jobs.cmd_str(&["GET", "src"]), bulk("s"));
    // Inside MULTI too.
    backend(&redis, 0, &["SET", "jobs:src2", "s"]);
    assert_eq!(jobs.cmd_str(&["MULTI"]), "+OK\r\n");
    assert_eq!(
        jobs.cmd_str(&["COPY", "src2", "dst2", "DB", "4"]),
        "+QUEUED\r\n"
    );
    assert_eq!(jobs.cmd_str(&["EXEC"]), "*1\r\n:1\r\n");
    let ttl: i64 = backend(&redis, 4, &["TTL", "jobs:dst2"]).parse().unwrap();
    assert!(ttl > 3000, "{ttl}");
    // Destinations outside the service's databases, and Redis's errors.
    assert!(jobs.cmd_str(&["MOVE", "src", "5"]).starts_with("-NOPERM"));
    assert_eq!(
        jobs.cmd_str(&["MOVE", "src", "x"]),
        "-ERR value is not an integer or out of range\r\n"
    );
    assert_eq!(
        jobs.cmd_str(&["COPY", "src", "d", "DB", "4", "bogus"]),
        "-ERR syntax error\r\n"
    );
    assert_eq!(
        jobs.cmd_str(&["MOVE", "src", "0"]),
        "-ERR source and destination objects are the same\r\n"
    );
}

#[test]
fn keyspace_notifications_of_an_allowed_database() {
    let (redis, kg) = setup();
    redis.cli(&["CONFIG", "SET", "notify-keyspace-events", "KA"]);
    let mut sub = RawConn::login(kg.port(), "jobs", "jobspw");
    assert_eq!(
        sub.cmd_str(&["SUBSCRIBE", "__keyspace@4__:k"]),
        format!(
            "*3\r\n{}{}:1\r\n",
            bulk("subscribe"),
            bulk("__keyspace@4__:k")
        )
    );
    let mut jobs = RawConn::login(kg.port(), "jobs", "jobspw");
    assert_eq!(jobs.cmd_str(&["SELECT", "4"]), "+OK\r\n");
    assert_eq!(jobs.cmd_str(&["SET", "k", "v"]), "+OK\r\n");
    let msg = sub.try_read_reply(Duration::from_secs(5)).expect("event");
    assert_eq!(
        String::from_utf8_lossy(&msg),
        format!(
            "*3\r\n{}{}{}",
            bulk("message"),
            bulk("__keyspace@4__:k"),
            bulk("set")
        )
    );
}

/// redis-py with a `/4` URL: it sends SELECT 4 on connect.
#[test]
fn redis_py_with_a_database_in_its_url() {
    let (redis, kg) = setup();
    let script = r#"
import sys, redis
port = int(sys.argv[1])
for proto in (2, 3):
    r = redis.Redis.from_url(f"redis://jobs:jobspw@127.0.0.1:{port}/4", protocol=proto, decode_responses=True)
    assert r.set(f"py{proto}", "v") is True
    assert r.get(f"py{proto}") == "v"
    p = r.pipeline(transaction=True)
    p.incr(f"n{proto}").incr(f"n{proto}")
    assert p.execute() == [1, 2]
    r.close()
print("ok")
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(kg.port().to_string())
        .output()
        .expect("python3 with redis-py");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for proto in ["2", "3"] {
        assert_eq!(
            backend(&redis, 4, &["GET", &format!("jobs:py{proto}")]),
            "v"
        );
        assert_eq!(backend(&redis, 4, &["GET", &format!("jobs:n{proto}")]), "2");
        assert_eq!(
            backend(&redis, 0, &["EXISTS", &format!("jobs:py{proto}")]),
            "0"
        );
    }
}

/// ioredis with a `/4` URL (`db: 4`): SELECT 4 on connect.
#[test]
fn ioredis_with_a_database_in_its_url() {
    let (redis, kg) = setup();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/node/ioredis_database.js"
    );
    let out = std::process::Command::new("node")
        .arg(script)
        .arg(kg.port().to_string())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run node (scripts/test installs Node.js and ioredis)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(backend(&redis, 4, &["GET", "jobs:node"]), "v");
    assert_eq!(backend(&redis, 4, &["GET", "jobs:noden"]), "2");
    assert_eq!(backend(&redis, 0, &["EXISTS", "jobs:node"]), "0");
}
