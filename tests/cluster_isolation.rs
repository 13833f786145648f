//! The central isolation and TTL cases of tests/isolation.rs and
//! tests/ttl.rs, with a Redis Cluster behind keygate: a service's prefix
//! goes outside the key's `{tag}` (so `{user1}:a` and `{user1}:b` share a
//! slot under every prefix), two services writing the same `{user1}` key
//! stay apart, and TTL governance holds on writes routed to any master.

mod common;

use common::*;
use keygate::topology::slot::key_slot;

/// tests/ttl.rs's services, and `other` in a namespace of its own.
fn services() -> String {
    format!(
        "{TTL_SERVICES}{}",
        r#"
[[service]]
name = "other"
password = "other-pw"
prefix = "other:"
"#
    )
}

/// `key` (as stored, prefix included) read on its slot's master.
fn on_owner(cluster: &RedisCluster, args: &[&str], key: &str) -> String {
    let (_, port) = cluster.slot_owner(key_slot(key.as_bytes()));
    let mut full = args.to_vec();
    full.push(key);
    cli_at(port, &full)
}

/// PTTL of a stored key on its master.
fn pttl(cluster: &RedisCluster, key: &str) -> i64 {
    on_owner(cluster, &["PTTL"], key).parse().expect("PTTL")
}

#[test]
fn namespaces_with_hash_tags_stay_apart_on_a_cluster() {
    let cluster = RedisCluster::start();
    let kg = Keygate::start_with(&cluster_config(&cluster, &services()));
    kg.wait_ready();
    let mut legacy = RawConn::connect(kg.port());
    let mut other = RawConn::login(kg.port(), "other", "other-pw");
    let mut strict = RawConn::login(kg.port(), "strict", "strict-pw");
    let ok = Reply::Status("OK".into());

    // One slot under every prefix: a multi-key write of one tag works.
    for (conn, prefix) in [
        (&mut legacy, "legacy:"),
        (&mut other, "other:"),
        (&mut strict, "strict:"),
    ] {
        assert_eq!(
            conn.call(&["MSET", "{user1}:a", prefix, "{user1}:b", prefix]),
            ok,
            "{prefix}"
        );
        for key in ["{user1}:a", "{user1}:b"] {
            let stored = format!("{prefix}{key}");
            assert_eq!(key_slot(stored.as_bytes()), key_slot(b"user1"));
            let (_, port) = cluster.slot_owner(key_slot(b"user1"));
            assert_eq!(
                cli_at(port, &["CLUSTER", "KEYSLOT", &stored]),
                key_slot(b"user1").to_string()
            );
            assert_eq!(on_owner(&cluster, &["GET"], &stored), prefix);
        }
    }

    // Two services writing the same `{user1}` key stay apart.
    assert_eq!(legacy.call(&["SET", "{user1}:profile", "L"]), ok);
    assert_eq!(other.call(&["SET", "{user1}:profile", "O"]), ok);
    assert_eq!(
        legacy.call(&["GET", "{user1}:profile"]),
        Reply::Bulk("L".into())
    );
    assert_eq!(
        other.call(&["GET", "{user1}:profile"]),
        Reply::Bulk("O".into())
    );
    assert_eq!(on_owner(&cluster, &["GET"], "legacy:{user1}:profile"), "L");
    assert_eq!(on_owner(&cluster, &["GET"], "other:{user1}:profile"), "O");
    // Naming the other service's stored key reaches only one's own namespace.
    assert_eq!(other.call(&["GET", "legacy:{user1}:profile"]), Reply::Nil);
    assert_eq!(
        other.call(&["DEL", "legacy:{user1}:profile"]),
        Reply::Int(0)
    );
    // A rename stays in the namespace (and in the tag's slot).
    assert_eq!(
        other.call(&["RENAME", "{user1}:profile", "{user1}:moved"]),
        ok
    );
    assert_eq!(on_owner(&cluster, &["GET"], "legacy:{user1}:profile"), "L");
    assert_eq!(on_owner(&cluster, &["GET"], "other:{user1}:moved"), "O");
    assert_eq!(on_owner(&cluster, &["EXISTS"], "legacy:{user1}:moved"), "0");
    // Keys in several slots: Redis's CROSSSLOT, whatever the prefix.
    assert_eq!(
        other.call(&["RENAME", "{user1}:moved", "{user2}:moved"]),
        Reply::Error("CROSSSLOT Keys in request don't hash to the same slot".into())
    );
}

#[test]
fn ttl_governance_holds_on_cluster_writes() {
    let cluster = RedisCluster::start();
    let kg = Keygate::start_with(&cluster_config(&cluster, &services()));
    kg.wait_ready();

    // Written without a TTL: the default, on whichever master the key is.
    let mut masters = std::collections::HashSet::new();
    for i in 0..30 {
        let key = format!("k{i}");
        assert_eq!(kg.cli(&["SET", &key, "v"]), "OK");
        let stored = format!("legacy:{key}");
        masters.insert(cluster.slot_owner(key_slot(stored.as_bytes())).1);
        let t = pttl(&cluster, &stored);
        assert!(t > 0 && t <= 60_000, "{stored}: PTTL {t}");
    }
    assert_eq!(masters.len(), CLUSTER_MASTERS, "keys on every master");
    assert_eq!(kg.cli(&["LPUSH", "{t}l", "a", "b"]), "2");
    assert_eq!(kg.cli(&["HSET", "{t}h", "f", "v"]), "1");
    for key in ["legacy:{t}l", "legacy:{t}h"] {
        let t = pttl(&cluster, key);
        assert!(t > 0 && t <= 60_000, "{key}: PTTL {t}");
    }

    // Over max_ttl: clamped, or refused for `strict`.
    assert_eq!(kg.cli(&["SET", "k0", "v", "EX", "86400"]), "OK");
    let t = pttl(&cluster, "legacy:k0");
    assert!(t > 3_500_000 && t <= 3_600_000, "clamped to 1h, got {t}");
    assert_eq!(kg.cli(&["EXPIRE", "k1", "999999"]), "1");
    let t = pttl(&cluster, "legacy:k1");
    assert!(t > 3_500_000 && t <= 3_600_000, "clamped to 1h, got {t}");
    let strict = ["--user", "strict", "--pass", "strict-pw"];
    let refused = kg.cli(&[&strict[..], &["SET", "k", "v", "EX", "600"]].concat());
    assert!(refused.contains("max_ttl"), "{refused}");
    assert_eq!(on_owner(&cluster, &["EXISTS"], "strict:k"), "0");

    // PERSIST and KEEPTTL never leave a key immortal.
    // A key made immortal behind keygate's back, as an old client would have.
    let (_, port) = cluster.slot_owner(key_slot(b"legacy:old"));
    assert_eq!(cli_at(port, &["SET", "legacy:old", "v"]), "OK");
    assert_eq!(kg.cli(&["SET", "old", "w", "KEEPTTL"]), "OK");
    assert!(pttl(&cluster, "legacy:old") > 0);
    assert_eq!(kg.cli(&["PERSIST", "old"]), "1");
    assert!(pttl(&cluster, "legacy:old") > 0);
    assert_eq!(kg.cli(&["GETEX", "old", "PERSIST"]), "w");
    assert!(pttl(&cluster, "legacy:old") > 0);

    // A pipeline over several masters: one reply per command, in order,
    // each write with its TTL.
    let mut pipeline = Vec::new();
    for i in 0..20 {
        pipeline.extend(resp_command(&["LPUSH", &format!("pl{i}"), "a"]));
        pipeline.extend(resp_command(&["PING", &format!("hi{i}")]));
    }
    let mut conn = RawConn::connect(kg.port());
    conn.send(&pipeline);
    for i in 0..20 {
        assert_eq!(conn.read_value(), Reply::Int(1), "LPUSH pl{i}");
        assert_eq!(conn.read_value(), Reply::Bulk(format!("hi{i}")));
        let t = pttl(&cluster, &format!("legacy:pl{i}"));
        assert!(t > 0 && t <= 60_000, "pl{i}: PTTL {t}");
    }
}
