//! keygate in front of a Redis Cluster, for a namespaced service's
//! keyspace-wide commands: they cover every master.

mod common;

use std::collections::BTreeSet;

use common::{cluster_config, Keygate, RawConn, RedisCluster, Reply, CLUSTER_MASTERS};
use keygate::topology::slot::key_slot;

/// A namespaced service, and another whose keys must survive its flush.
const SERVICES: &str = r#"
[[service]]
name = "tenant"
password = "pw"
prefix = "t1:"

[[service]]
name = "other"
password = "pw2"
prefix = "t2:"
"#;

#[test]
fn dbsize_randomkey_and_flush_cover_every_master() {
    let cluster = RedisCluster::start();
    let kg = Keygate::start_with(&cluster_config(&cluster, SERVICES));
    kg.wait_ready();
    let mut tenant = RawConn::login(kg.port(), "tenant", "pw");
    let mut other = RawConn::login(kg.port(), "other", "pw2");

    const KEYS: usize = 60;
    let mut owners = std::collections::HashSet::new();
    for i in 0..KEYS {
        let key = format!("k{i}");
        assert_eq!(tenant.call(&["SET", &key, "v"]), Reply::Status("OK".into()));
        assert_eq!(other.call(&["SET", &key, "v"]), Reply::Status("OK".into()));
        owners.insert(
            cluster
                .slot_owner(key_slot(format!("t1:{key}").as_bytes()))
                .1,
        );
    }
    assert_eq!(owners.len(), CLUSTER_MASTERS, "keys on every master");

    assert_eq!(tenant.call(&["DBSIZE"]), Reply::Int(KEYS as i64));
    let expected: BTreeSet<String> = (0..KEYS).map(|i| format!("k{i}")).collect();
    let Reply::Array(listed) = tenant.call(&["KEYS", "*"]) else {
        panic!("KEYS answered no array");
    };
    let listed: BTreeSet<String> = listed.iter().map(Reply::text).collect();
    assert_eq!(listed, expected, "KEYS merges every master's");
    // An ordinary SCAN loop walks every master.
    let (mut cursor, mut scanned, mut calls) = ("0".to_string(), BTreeSet::new(), 0);
    loop {
        calls += 1;
        assert!(calls < 1000, "SCAN ends");
        let Reply::Array(page) = tenant.call(&["SCAN", &cursor, "COUNT", "7"]) else {
            panic!("SCAN answered no array");
        };
        let [Reply::Bulk(next), Reply::Array(keys)] = &page[..] else {
            panic!("SCAN answered {page:?}");
        };
        scanned.extend(keys.iter().map(Reply::text));
        cursor = next.clone();
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(scanned, expected, "SCAN saw every key of the namespace");
    assert!(matches!(tenant.call(&["SCAN", "x"]), Reply::Error(e) if e == "ERR invalid cursor"));
    match tenant.call(&["RANDOMKEY"]) {
        Reply::Bulk(key) => assert!(key.starts_with('k') && !key.contains(':'), "{key}"),
        other => panic!("RANDOMKEY answered {other:?}"),
    }
    assert_eq!(tenant.call(&["FLUSHDB"]), Reply::Status("OK".into()));
    assert_eq!(tenant.call(&["DBSIZE"]), Reply::Int(0));
    assert_eq!(tenant.call(&["RANDOMKEY"]), Reply::Nil);
    // The other service's keys, on the same masters, are untouched.
    assert_eq!(other.call(&["DBSIZE"]), Reply::Int(KEYS as i64));
    assert_eq!(other.call(&["FLUSHALL"]), Reply::Status("OK".into()));
    assert_eq!(other.call(&["DBSIZE"]), Reply::Int(0));
}

/// A service without a namespace that may run scripts.
const WHOLE: &str = r#"
[[service]]
name = "whole"
password = "pw"
prefix = ""
isolation = false
allow_scripts = true
"#;

/// A service without a namespace: its keyspace-wide
/// commands and its script and function loads cover every master.
#[test]
fn a_service_without_a_namespace_runs_keyspace_and_script_commands_on_every_master() {
    let cluster = RedisCluster::start();
    let kg = Keygate::start_with(&cluster_config(&cluster, WHOLE));
    kg.wait_ready();
    let mut c = RawConn::login(kg.port(), "whole", "pw");

    const KEYS: usize = 60;
    for i in 0..KEYS {
        assert_eq!(
            c.call(&["SET", &format!("k{i}"), "v"]),
            Reply::Status("OK".into())
        );
    }
    assert_eq!(c.call(&["DBSIZE"]), Reply::Int(KEYS as i64));
    assert!(matches!(c.call(&["RANDOMKEY"]), Reply::Bulk(k) if k.starts_with('k')));

    // A script loaded through keygate runs by its digest on every slot.
    let Reply::Bulk(sha) = c.call(&["SCRIPT", "LOAD", "return redis.call('GET', KEYS[1])"]) else {
        panic!("SCRIPT LOAD answered no digest");
    };
    for i in 0..KEYS {
        assert_eq!(
            c.call(&["EVALSHA", &sha, "1", &format!("k{i}")]),
            Reply::Bulk("v".into()),
            "k{i}"
        );
    }
    let missing = "0".repeat(40);
    assert_eq!(
        c.call(&["SCRIPT", "EXISTS", &sha, &missing]),
        Reply::Array(vec![Reply::Int(1), Reply::Int(0)])
    );
    // A script on one master only is not on the cluster.
    let first = cluster
        .masters()
        .first()
        .expect("a master")
        .cli(&["SCRIPT", "LOAD", "return 7"]);
    assert_eq!(
        c.call(&["SCRIPT", "EXISTS", first.trim()]),
        Reply::Array(vec![Reply::Int(0)])
    );

    // So does a function library.
    let library = "#!lua name=kglib\nredis.register_function('kgget', function(keys) return redis.call('GET', keys[1]) end)";
    assert_eq!(
        c.call(&["FUNCTION", "LOAD", library]),
        Reply::Bulk("kglib".into())
    );
    for i in 0..KEYS {
        assert_eq!(
            c.call(&["FCALL", "kgget", "1", &format!("k{i}")]),
            Reply::Bulk("v".into())
        );
    }
    assert!(matches!(c.call(&["FUNCTION", "LIST"]), Reply::Array(libs) if libs.len() == 1));
    assert_eq!(
        c.call(&["FUNCTION", "DELETE", "kglib"]),
        Reply::Status("OK".into())
    );
    assert!(matches!(
        c.call(&["FCALL", "kgget", "1", "k0"]),
        Reply::Error(_)
    ));

    assert_eq!(c.call(&["FLUSHALL"]), Reply::Status("OK".into()));
    assert_eq!(c.call(&["DBSIZE"]), Reply::Int(0));
    assert_eq!(c.call(&["RANDOMKEY"]), Reply::Nil);
    for master in cluster.masters() {
        assert_eq!(master.cli(&["DBSIZE"]), "0");
    }
}
