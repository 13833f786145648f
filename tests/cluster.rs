//! keygate in front of a Redis Cluster, on the local six-node cluster of
//! `tests/common/cluster.rs`: the slot function against the cluster's own
//! answers, and the slot map keygate reads and reports.

mod common;

use std::time::Duration;

use common::{
    cli_at, cluster_config, http_get, metric_sample, resp_command, scrape_metrics, wait_until,
    Keygate, RawConn, RedisCluster, Reply, CLUSTER_MASTERS, DEFAULT_SERVICE,
};
use keygate::topology::slot::{key_slot, prefixed_key_slot};

/// Keys compared against `CLUSTER KEYSLOT`, each also with every prefix.
const BASE_KEYS: usize = 25_000;
/// Service prefixes put in front of every key (no braces, as `--check`
/// demands on a cluster backend).
const PREFIXES: [&[u8]; 3] = [b"svc:", b"tenant-42/", b"\x00\xfe:"];
/// Commands written before their replies are read.
const PIPELINE: usize = 1_000;

/// Keys that probe `keyHashSlot`'s edges, then pseudo-random keys drawn
/// mostly from braces, a few letters and arbitrary bytes.
fn generated_keys() -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = [
        &b""[..],
        b"{}",
        b"{{a}}",
        b"}{",
        b"{",
        b"}",
        b"{a",
        b"a{",
        b"a}b{c",
        b"{}{a}",
        b"{a}{b}",
        b"x{y}z",
        b"{user1}:a",
        b"{user1}:b",
        b"\x00{\xff}\x00",
        b"\xff\xfe\xfd",
    ]
    .iter()
    .map(|k| k.to_vec())
    .collect();
    // xorshift64: the same keys on every run.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    const ALPHABET: &[u8] = b"{}{}{}ab:\x00";
    while keys.len() < BASE_KEYS {
        let len = (next() % 24) as usize;
        let key = (0..len)
            .map(|_| {
                let r = next();
                if r % 4 == 0 {
                    (r >> 8) as u8
                } else {
                    ALPHABET[(r >> 8) as usize % ALPHABET.len()]
                }
            })
            .collect();
        keys.push(key);
    }
    keys
}

#[test]
fn slot_function_agrees_with_cluster_keyslot() {
    let cluster = RedisCluster::start();
    let mut conn = RawConn::connect(cluster.nodes()[0].port());
    let mut cases: Vec<(Vec<u8>, u16)> = Vec::new();
    for key in generated_keys() {
        cases.push((key.clone(), key_slot(&key)));
        for prefix in PREFIXES {
            let mut whole = prefix.to_vec();
            whole.extend_from_slice(&key);
            cases.push((whole, prefixed_key_slot(prefix, &key)));
        }
    }
    assert_eq!(cases.len(), 100_000);
    let mut differences = Vec::new();
    for chunk in cases.chunks(PIPELINE) {
        let mut batch = Vec::new();
        for (key, _) in chunk {
            batch.extend_from_slice(&resp_command(&[&b"CLUSTER"[..], b"KEYSLOT", key]));
        }
        conn.send(&batch);
        for (key, ours) in chunk {
            let theirs = Reply::parse(&conn.read_reply());
            if theirs != Reply::Int(i64::from(*ours)) {
                differences.push((key.clone(), *ours, theirs));
            }
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} keys differ, first: {:?}",
        differences.len(),
        cases.len(),
        differences.first()
    );
}

/// keygate's `/health` backend section.
fn backend_health(kg: &Keygate) -> serde_json::Value {
    let response = http_get(kg.admin_port(), "/health");
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    let health: serde_json::Value = serde_json::from_str(body).expect("health JSON");
    health["backend"].clone()
}

fn is_ready(kg: &Keygate) -> bool {
    http_get(kg.admin_port(), "/health/ready").starts_with("HTTP/1.1 200")
}

#[test]
fn health_lists_the_shards_and_readiness_follows_slot_coverage() {
    let cluster = RedisCluster::start();
    let kg = Keygate::start_with(&cluster_config(&cluster, DEFAULT_SERVICE));
    kg.wait_ready();
    let backend = backend_health(&kg);
    assert_eq!(backend["mode"], "cluster", "{backend:#}");
    assert_eq!(backend["slots_covered"], 16384, "{backend:#}");
    let masters: Vec<String> = cluster.masters().iter().map(|m| m.addr()).collect();
    let shards = backend["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), CLUSTER_MASTERS, "{backend:#}");
    let mut slots = 0;
    for shard in shards {
        let master = shard["master"]["address"].as_str().expect("address");
        assert!(
            masters.iter().any(|m| m == master),
            "{master} not in {masters:?}"
        );
        assert_eq!(shard["replicas"].as_array().map(Vec::len), Some(1));
        for range in shard["slots"].as_array().expect("slots") {
            let (from, to) = range
                .as_str()
                .and_then(|r| r.split_once('-'))
                .expect("range");
            slots += to.parse::<usize>().unwrap() - from.parse::<usize>().unwrap() + 1;
        }
    }
    assert_eq!(slots, 16384);
    let metrics = scrape_metrics(kg.admin_port());
    assert_eq!(
        metric_sample(&metrics, "keygate_slots_covered", &[]),
        Some(16384.0)
    );
    let started = metric_sample(
        &metrics,
        "keygate_topology_refreshes_total",
        &[("reason", "start")],
    );
    assert_eq!(started, Some(1.0), "{metrics}");

    // Slot 0 served by nobody, in every node's view: not ready.
    let (_, owner_port) = cluster.slot_owner(0);
    for node in cluster.nodes() {
        assert_eq!(node.cli(&["CLUSTER", "DELSLOTS", "0"]), "OK");
    }
    assert!(
        wait_until(Duration::from_secs(10), || !is_ready(&kg)),
        "still ready with slot 0 uncovered: {:#}",
        backend_health(&kg)
    );
    assert_eq!(backend_health(&kg)["slots_covered"], 16383);
    // Its owner takes it back: ready again.
    assert_eq!(cli_at(owner_port, &["CLUSTER", "ADDSLOTS", "0"]), "OK");
    assert!(
        wait_until(Duration::from_secs(10), || is_ready(&kg)),
        "not ready again: {:#}",
        backend_health(&kg)
    );
}
