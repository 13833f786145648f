//! keygate in front of a Redis Cluster, for a namespaced service's
//! keyspace-wide commands: they cover every master.

mod common;

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
