//! TTL governance through keygate against a real redis-server: every key a
//! governed service writes expires, over-long TTLs are clamped or refused,
//! and the client sees exactly the replies it expects, in pipelines and
//! inside MULTI/EXEC.
mod common;
use common::*;

fn config(backend: &RedisServer) -> String {
    standalone_config(&backend.addr(), TTL_SERVICES)
}

#[test]
fn a_key_written_without_ttl_gets_the_default() {
    let redis = RedisServer::start();
    let kg = Keygate::start_with(&config(&redis));
    assert_eq!(kg.cli(&["SET", "k", "v"]), "OK");
    let t = redis.pttl("legacy:k");
    assert!(t > 0 && t <= 60_000, "PTTL {t}");
    assert_eq!(kg.cli(&["LPUSH", "l", "a", "b"]), "2");
    let t = redis.pttl("legacy:l");
    assert!(t > 0 && t <= 60_000, "PTTL {t}");
    assert_eq!(kg.cli(&["HSET", "h", "f", "v"]), "1");
    let t = redis.pttl("legacy:h");
    assert!(t > 0 && t <= 60_000, "PTTL {t}");
}

#[test]
fn over_max_ttls_are_clamped_or_refused() {
    let redis = RedisServer::start();
    let kg = Keygate::start_with(&config(&redis));
    assert_eq!(kg.cli(&["SET", "k", "v", "EX", "86400"]), "OK");
    let t = redis.pttl("legacy:k");
    assert!(t > 3_500_000 && t <= 3_600_000, "clamped to 1h, got {t}");
    assert_eq!(kg.cli(&["EXPIRE", "k", "999999"]), "1");
    let t = redis.pttl("legacy:k");
    assert!(t > 3_500_000 && t <= 3_600_000, "clamped to 1h, got {t}");
    let refused = kg.cli(&[
        "--user",
        "strict",
        "--pass",
        "strict-pw",
        "SET",
        "k",
        "v",
        "EX",
        "600",
    ]);
    assert!(refused.contains("max_ttl"), "{refused}");
    assert_eq!(redis.cli(&["EXISTS", "strict:k"]), "0");
}

#[test]
fn persist_and_keepttl_never_leave_a_key_immortal() {
    let redis = RedisServer::start();
    let kg = Keygate::start_with(&config(&redis));
    // A key made immortal behind keygate's back, as an old client would have.
    redis.cli(&["SET", "legacy:old", "v"]);
    assert_eq!(kg.cli(&["SET", "old", "w", "KEEPTTL"]), "OK");
    assert!(redis.pttl("legacy:old") > 0);
    assert_eq!(kg.cli(&["PERSIST", "old"]), "1");
    assert!(redis.pttl("legacy:old") > 0);
    assert_eq!(kg.cli(&["GETEX", "old", "PERSIST"]), "w");
    assert!(redis.pttl("legacy:old") > 0);
}

#[test]
fn pipelines_and_transactions_see_one_reply_per_command() {
    let redis = RedisServer::start();
    let kg = Keygate::start_with(&config(&redis));
    let pipeline = b"*3\r\n$5\r\nLPUSH\r\n$1\r\nl\r\n$1\r\na\r\n*3\r\n$4\r\nSADD\r\n$1\r\ns\r\n$1\r\nm\r\n*2\r\n$4\r\nPING\r\n$2\r\nhi\r\n";
    let out = raw_exchange(kg.port(), pipeline, std::time::Duration::from_millis(500));
    assert_eq!(out, b":1\r\n:1\r\n$2\r\nhi\r\n");
    let tx = b"*1\r\n$5\r\nMULTI\r\n*3\r\n$4\r\nSADD\r\n$2\r\ns2\r\n$1\r\nm\r\n*2\r\n$4\r\nINCR\r\n$1\r\nc\r\n*1\r\n$4\r\nEXEC\r\n";
    let out = raw_exchange(kg.port(), tx, std::time::Duration::from_millis(500));
    assert_eq!(
        String::from_utf8_lossy(&out),
        "+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:1\r\n:1\r\n"
    );
    for key in ["legacy:l", "legacy:s", "legacy:s2", "legacy:c"] {
        let t = redis.pttl(key);
        assert!(t > 0 && t <= 60_000, "{key}: PTTL {t}");
    }
}

#[test]
fn value_size_and_per_service_client_limits() {
    let redis = RedisServer::start();
    let kg = Keygate::start_with(&config(&redis));
    let big = "x".repeat(2048);
    let refused = kg.cli(&[
        "--user",
        "strict",
        "--pass",
        "strict-pw",
        "SET",
        "big",
        &big,
    ]);
    assert!(refused.contains("max_value_bytes"), "{refused}");
    // redis-cli has exited; keygate counts its connection until it reads
    // the close: wait for that, or the second login below would be refused.
    let strict = [("service", "strict")];
    assert!(
        wait_until(std::time::Duration::from_secs(10), || {
            let metrics = scrape_metrics(kg.admin_port());
            metric_sample(&metrics, "keygate_client_connections", &strict).unwrap_or(0.0) == 0.0
        }),
        "redis-cli's connection was never let go"
    );
    // Two logged-in clients are allowed, the third is refused.
    let login = b"*3\r\n$4\r\nAUTH\r\n$6\r\nstrict\r\n$9\r\nstrict-pw\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = RawConn::connect(kg.port());
        s.send(login);
        assert_eq!(s.read_reply(), b"+OK\r\n");
        held.push(s);
    }
    let third = raw_exchange(kg.port(), login, std::time::Duration::from_millis(300));
    assert!(
        String::from_utf8_lossy(&third).contains("max number of clients"),
        "{}",
        String::from_utf8_lossy(&third)
    );
}

/// LMOVE & co. modify their source too: an existing immortal source gets
/// the default TTL, on the shared connection, on a dedicated one (the
/// blocking forms) and inside MULTI, with the replies Redis gives.
#[test]
fn an_immortal_source_gets_the_default_when_a_move_modifies_it() {
    let redis = RedisServer::start();
    let kg = Keygate::start_with(&config(&redis));
    let mut direct = RawConn::connect(redis.port());
    let mut conn = RawConn::connect(kg.port());
    for (setup, command, source) in [
        (
            &["RPUSH", "legacy:l1", "a", "b"][..],
            &["LMOVE", "l1", "d1", "LEFT", "RIGHT"][..],
            "legacy:l1",
        ),
        (
            &["RPUSH", "legacy:l2", "a", "b"],
            &["BLMOVE", "l2", "d2", "LEFT", "RIGHT", "0"],
            "legacy:l2",
        ),
        (
            &["RPUSH", "legacy:l3", "a", "b"],
            &["RPOPLPUSH", "l3", "d3"],
            "legacy:l3",
        ),
        (
            &["RPUSH", "legacy:l4", "a", "b"],
            &["BRPOPLPUSH", "l4", "d4", "1"],
            "legacy:l4",
        ),
        (
            &["SADD", "legacy:s5", "a", "b"],
            &["SMOVE", "s5", "d5", "a"],
            "legacy:s5",
        ),
    ] {
        assert!(direct.cmd_str(setup).starts_with(':'));
        assert_eq!(redis.pttl(source), -1, "{source} starts immortal");
        let reply = conn.cmd_str(command);
        assert!(
            matches!(reply.as_str(), "$1\r\na\r\n" | "$1\r\nb\r\n" | ":1\r\n"),
            "{command:?}: {reply}"
        );
        let t = redis.pttl(source);
        assert!(t > 0 && t <= 60_000, "{command:?}: source PTTL {t}");
    }
    assert!(direct
        .cmd_str(&["RPUSH", "legacy:l6", "a", "b"])
        .starts_with(':'));
    assert_eq!(conn.cmd_str(&["MULTI"]), "+OK\r\n");
    assert_eq!(
        conn.cmd_str(&["LMOVE", "l6", "d6", "LEFT", "LEFT"]),
        "+QUEUED\r\n"
    );
    assert_eq!(conn.cmd_str(&["EXEC"]), "*1\r\n$1\r\na\r\n");
    let t = redis.pttl("legacy:l6");
    assert!(t > 0 && t <= 60_000, "MULTI: source PTTL {t}");
}
