//! keygate in front of a Redis Cluster, on the local six-node cluster of
//! `tests/common/cluster.rs`: the slot function against the cluster's own
//! answers, and the slot map keygate reads and reports.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{
    backend_counts_by_node, backend_health, cli_at, cluster_config, give_slot, http_get,
    metric_sample, resp_command, scrape_metrics, wait_until, Keygate, RawConn, RedisCluster, Reply,
    CLUSTER_MASTERS, DEFAULT_SERVICE,
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

/// A namespaced service with a default TTL, beside the plain `default` one.
const TENANT: &str = r#"
[[service]]
name = "default"
prefix = ""
isolation = false

[[service]]
name = "tenant"
password = "pw"
prefix = "t1:"
default_ttl = "1h"
"#;

/// What a key the tenant writes is called on the cluster.
fn tenant_key(key: &str) -> String {
    format!("t1:{key}")
}

#[test]
fn single_slot_commands_go_to_their_slots_master_in_order() {
    let cluster = RedisCluster::start();
    let kg = Keygate::start_with(&cluster_config(&cluster, TENANT));
    kg.wait_ready();
    let mut conn = RawConn::login(kg.port(), "tenant", "pw");

    // One pipelined write of keys spread over every master: each SET is
    // answered in order, none with a redirect.
    const KEYS: usize = 300;
    let mut pipeline = Vec::new();
    for i in 0..KEYS {
        pipeline.extend(resp_command(&["SET", &format!("k{i}"), &format!("v{i}")]));
        pipeline.extend(resp_command(&["GET", &format!("k{i}")]));
    }
    conn.send(&pipeline);
    for i in 0..KEYS {
        assert_eq!(conn.read_value(), Reply::Status("OK".into()), "SET k{i}");
        assert_eq!(conn.read_value(), Reply::Bulk(format!("v{i}")), "GET k{i}");
    }
    // Each key is on its slot's master under the service's prefix, with
    // the default TTL the write's follow-up gave it.
    let mut owners = std::collections::HashSet::new();
    for i in (0..KEYS).step_by(7) {
        let key = tenant_key(&format!("k{i}"));
        let (_, port) = cluster.slot_owner(key_slot(key.as_bytes()));
        owners.insert(port);
        assert_eq!(cli_at(port, &["GET", &key]), format!("v{i}"));
        let ttl: i64 = cli_at(port, &["TTL", &key]).parse().unwrap();
        assert!((3500..=3600).contains(&ttl), "TTL of {key}: {ttl}");
    }
    assert_eq!(owners.len(), CLUSTER_MASTERS, "keys reached every master");
    // Backend times carry the node that answered: every master, by the
    // address the slot map names it by, and nothing without a node.
    let masters: Vec<String> = cluster.masters().iter().map(|m| m.addr()).collect();
    let by_node = || {
        let metrics = scrape_metrics(kg.admin_port());
        backend_counts_by_node(&metrics, "tenant", "get")
    };
    assert!(
        wait_until(Duration::from_secs(5), || by_node()
            .iter()
            .map(|(_, n)| n)
            .sum::<f64>()
            >= KEYS as f64),
        "{:?}",
        by_node()
    );
    let counted = by_node();
    assert_eq!(counted.len(), CLUSTER_MASTERS, "{counted:?}");
    for (node, _) in &counted {
        let node = node.as_deref().expect("a node label on a cluster backend");
        assert!(
            masters.iter().any(|m| m == node),
            "{node} not in {masters:?}"
        );
    }

    // Keys in one slot (a shared hash tag) work together; across slots,
    // Redis's CROSSSLOT.
    assert_eq!(
        conn.call(&["MSET", "{u1}:a", "1", "{u1}:b", "2"]),
        Reply::Status("OK".into())
    );
    assert_eq!(
        conn.call(&["MGET", "{u1}:a", "{u1}:b"]),
        Reply::Array(vec![Reply::Bulk("1".into()), Reply::Bulk("2".into())])
    );
    // Commands that must stay in one slot get Redis's CROSSSLOT across
    // slots (MGET, MSET, DEL and the like are split instead: below).
    let crossslot = Reply::Error("CROSSSLOT Keys in request don't hash to the same slot".into());
    assert_eq!(conn.call(&["MSETNX", "a", "1", "b", "2"]), crossslot);
    assert_eq!(conn.call(&["RENAME", "k1", "k2"]), crossslot);
    assert_eq!(conn.call(&["SUNIONSTORE", "k1", "k2", "k3"]), crossslot);
    assert_eq!(conn.call(&["PFCOUNT", "k1", "k2"]), crossslot);
    let mut plain = RawConn::connect(kg.port());
    assert_eq!(
        plain.call(&["EVAL", "return 1", "2", "k1", "k2"]),
        crossslot
    );
    // The tag keeps its slot under the prefix.
    let tagged = key_slot(tenant_key("{u1}:a").as_bytes());
    assert_eq!(tagged, key_slot(b"u1"));

    // Commands without keys: any master.
    assert_eq!(conn.call(&["PING"]), Reply::Status("PONG".into()));
    // The unprefixed service reaches the same keys by their full names.
    assert_eq!(plain.call(&["GET", "t1:k5"]), Reply::Bulk("v5".into()));
    // Its DBSIZE is every master's (tests/cluster_keyspace.rs counts them).
    assert!(matches!(plain.call(&["DBSIZE"]), Reply::Int(n) if n >= 1));
}

/// Hash tags whose slots are on different masters, one per master, with
/// that master's port.
fn tag_per_master(cluster: &RedisCluster) -> Vec<(String, u16)> {
    let mut tags: Vec<(String, u16)> = Vec::new();
    for i in 0.. {
        if tags.len() == CLUSTER_MASTERS {
            break;
        }
        let tag = format!("t{i}");
        let (_, port) = cluster.slot_owner(key_slot(tag.as_bytes()));
        if !tags.iter().any(|(_, p)| *p == port) {
            tags.push((tag, port));
        }
    }
    tags
}

#[test]
fn multi_key_commands_are_split_by_slot_and_merged_in_order() {
    let cluster = RedisCluster::start();
    let kg = Keygate::start_with(&cluster_config(&cluster, TENANT));
    kg.wait_ready();
    let mut conn = RawConn::connect(kg.port());

    // 100 keys over three hash tags, one per master, interleaved; every
    // tenth is left unset. MSET is split by slot too.
    let tags = tag_per_master(&cluster);
    let keys: Vec<String> = (0..100)
        .map(|i| format!("{{{}}}:k{i}", tags[i % CLUSTER_MASTERS].0))
        .collect();
    let mut mset = vec!["MSET".to_string()];
    for (i, key) in keys.iter().enumerate().filter(|(i, _)| i % 10 != 0) {
        mset.push(key.clone());
        mset.push(format!("v{i}"));
    }
    assert_eq!(conn.call(&mset), Reply::Status("OK".into()));
    for (_, port) in &tags {
        assert_eq!(cli_at(*port, &["CONFIG", "RESETSTAT"]), "OK");
    }
    let mut mget = vec!["MGET".to_string()];
    mget.extend(keys.iter().cloned());
    let want: Vec<Reply> = (0..100)
        .map(|i| match i % 10 {
            0 => Reply::Nil,
            _ => Reply::Bulk(format!("v{i}")),
        })
        .collect();
    assert_eq!(conn.call(&mget), Reply::Array(want));
    // Each master got the MGET as one command (one slot each).
    for (tag, port) in &tags {
        let stats = cli_at(*port, &["INFO", "commandstats"]);
        assert!(
            stats.contains("cmdstat_mget:calls=1,"),
            "{{{tag}}} on {port}: {stats}"
        );
    }

    // Keys in slots of their own: one request per slot, merged.
    let spread: Vec<String> = (0..60).map(|i| format!("spread{i}")).collect();
    let mut pipeline = Vec::new();
    for (i, key) in spread.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        pipeline.extend(resp_command(&["SET", key, &format!("s{i}")]));
    }
    conn.send(&pipeline);
    for _ in 0..30 {
        assert_eq!(conn.read_value(), Reply::Status("OK".into()));
    }
    let with = |name: &str, keys: &[String]| -> Vec<String> {
        std::iter::once(name.to_string())
            .chain(keys.iter().cloned())
            .collect()
    };
    let got = conn.call(&with("MGET", &spread));
    let want: Vec<Reply> = (0..60)
        .map(|i| match i % 2 {
            0 => Reply::Bulk(format!("s{i}")),
            _ => Reply::Nil,
        })
        .collect();
    assert_eq!(got, Reply::Array(want));
    assert_eq!(conn.call(&with("EXISTS", &spread)), Reply::Int(30));
    assert_eq!(conn.call(&with("TOUCH", &spread)), Reply::Int(30));
    assert_eq!(conn.call(&with("UNLINK", &spread[..20])), Reply::Int(10));
    assert_eq!(conn.call(&with("DEL", &spread)), Reply::Int(20));
    assert_eq!(conn.call(&with("EXISTS", &spread)), Reply::Int(0));

    // Pipelined between single-key commands, replies keep request order.
    let mut pipeline = Vec::new();
    pipeline.extend(resp_command(&["SET", "spread1", "a"]));
    pipeline.extend(resp_command(&["MGET", "spread1", "spread2", "spread3"]));
    pipeline.extend(resp_command(&["SET", "spread3", "c"]));
    pipeline.extend(resp_command(&["MGET", "spread3", "spread1"]));
    conn.send(&pipeline);
    assert_eq!(conn.read_value(), Reply::Status("OK".into()));
    assert_eq!(
        conn.read_value(),
        Reply::Array(vec![Reply::Bulk("a".into()), Reply::Nil, Reply::Nil])
    );
    assert_eq!(conn.read_value(), Reply::Status("OK".into()));
    assert_eq!(
        conn.read_value(),
        Reply::Array(vec![Reply::Bulk("c".into()), Reply::Bulk("a".into())])
    );

    // A namespaced service: its keys, under its prefix, split the same way.
    let mut tenant = RawConn::login(kg.port(), "tenant", "pw");
    for key in ["x1", "x2", "x3"] {
        assert_eq!(tenant.call(&["SET", key, key]), Reply::Status("OK".into()));
    }
    assert_eq!(
        tenant.call(&["MGET", "x1", "x9", "x3", "x2"]),
        Reply::Array(vec![
            Reply::Bulk("x1".into()),
            Reply::Nil,
            Reply::Bulk("x3".into()),
            Reply::Bulk("x2".into()),
        ])
    );
    assert_eq!(tenant.call(&["DEL", "x1", "x2", "x3", "x9"]), Reply::Int(3));
}

/// What the loader saw: INCR replies in order and anything unexpected.
#[derive(Default)]
struct Seen {
    rounds: u64,
    last_incr: i64,
    problems: Vec<String>,
}

/// Pipelines rounds of INCR, SET and GET on keys of one hash tag through
/// keygate until `stop`, checking every reply as it comes.
fn load(port: u16, tag: &str, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    let mut conn = RawConn::login(port, "tenant", "pw");
    let counter = format!("{{{tag}}}:ctr");
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut pipeline = Vec::new();
        for i in 0..10 {
            let key = format!("{{{tag}}}:x{}", n * 10 + i);
            pipeline.extend(resp_command(&["INCR", &counter]));
            pipeline.extend(resp_command(&["SET", &key, &key]));
            pipeline.extend(resp_command(&["GET", &key]));
        }
        conn.send(&pipeline);
        let mut seen = seen.lock().unwrap();
        for i in 0..10 {
            let key = format!("{{{tag}}}:x{}", n * 10 + i);
            match conn.read_value() {
                Reply::Int(v) if v == seen.last_incr + 1 => seen.last_incr = v,
                other => seen.problems.push(format!("INCR: {other:?}")),
            }
            let set = conn.read_value();
            if set != Reply::Status("OK".into()) {
                seen.problems.push(format!("SET {key}: {set:?}"));
            }
            let got = conn.read_value();
            if got != Reply::Bulk(key.clone()) {
                seen.problems.push(format!("GET {key}: {got:?}"));
            }
        }
        seen.rounds += 1;
        n += 1;
    }
}

/// Waits until the loader has done `more` rounds past now.
fn wait_rounds(seen: &Mutex<Seen>, more: u64) {
    let target = seen.lock().unwrap().rounds + more;
    assert!(
        wait_until(Duration::from_secs(20), || seen.lock().unwrap().rounds
            >= target),
        "the loader stalled: {:?}",
        seen.lock().unwrap().problems.first()
    );
}

#[test]
fn a_slot_moving_under_load_is_followed_without_a_redirect_reaching_the_client() {
    let cluster = RedisCluster::start();
    // A map read only at start and when a MOVED asks: the move is found by
    // redirects, not by a timely refresh.
    let config = cluster_config(&cluster, TENANT)
        .replace("cluster_refresh = \"500ms\"", "cluster_refresh = \"1h\"");
    let kg = Keygate::start_with(&config);
    kg.wait_ready();
    let tag = "mv";
    let slot = key_slot(tag.as_bytes());
    let (source_id, source_port) = cluster.slot_owner(slot);
    let (target, target_id) = cluster.other_master(source_port);
    let source = cluster
        .nodes()
        .iter()
        .find(|n| n.port() == source_port)
        .expect("source");

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let loader = {
        let (stop, seen, port) = (stop.clone(), seen.clone(), kg.port());
        std::thread::spawn(move || load(port, tag, stop, seen))
    };
    wait_rounds(&seen, 20);

    // Migration: new keys go to the target (ASK), existing ones move key by key.
    let slot_arg = slot.to_string();
    assert_eq!(
        target.cli(&["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", &source_id]),
        "OK"
    );
    assert_eq!(
        source.cli(&["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &target_id]),
        "OK"
    );
    wait_rounds(&seen, 20);
    let target_port = target.port().to_string();
    loop {
        let keys = source.cli(&["CLUSTER", "GETKEYSINSLOT", &slot_arg, "100"]);
        if keys.is_empty() {
            break;
        }
        let mut migrate = vec![
            "MIGRATE",
            "127.0.0.1",
            &target_port,
            "",
            "0",
            "5000",
            "KEYS",
        ];
        migrate.extend(keys.lines());
        assert_eq!(source.cli(&migrate), "OK");
        wait_rounds(&seen, 2);
    }
    wait_rounds(&seen, 20);
    // The slot is the target's: requests to the source are MOVED.
    give_slot(&cluster, &slot_arg, source, target, &target_id);
    wait_rounds(&seen, 40);
    stop.store(true, Ordering::Relaxed);
    loader.join().expect("loader");

    let seen = seen.lock().unwrap();
    assert!(
        seen.problems.is_empty(),
        "{} problems, first: {:?}",
        seen.problems.len(),
        seen.problems.first()
    );
    let counter = format!("t1:{{{tag}}}:ctr");
    assert_eq!(target.cli(&["GET", &counter]), seen.last_incr.to_string());
    assert_eq!(source.cli(&["CLUSTER", "COUNTKEYSINSLOT", &slot_arg]), "0");
    let ttl: i64 = target.cli(&["TTL", &counter]).parse().unwrap();
    assert!(ttl > 0, "the TTL follow-up travelled with the write: {ttl}");
    let metrics = scrape_metrics(kg.admin_port());
    let moved = metric_sample(
        &metrics,
        "keygate_topology_refreshes_total",
        &[("reason", "moved")],
    );
    assert!(moved.is_some_and(|n| n >= 1.0), "{metrics}");
    for kind in ["moved", "ask"] {
        let followed = metric_sample(&metrics, "keygate_redirects_total", &[("kind", kind)]);
        assert!(
            followed.is_some_and(|n| n >= 1.0),
            "no {kind} followed: {metrics}"
        );
    }
    println!(
        "rounds {}, INCR acknowledged {}, redirects {:?}",
        seen.rounds,
        seen.last_incr,
        backend_health(&kg)["redirects"]
    );
    assert_eq!(backend_health(&kg)["slots_covered"], 16384);
}

#[test]
fn a_killed_master_is_replaced_and_the_other_masters_never_fail() {
    let mut cluster = RedisCluster::start();
    let kg = Keygate::start_with(&cluster_config(&cluster, DEFAULT_SERVICE));
    kg.wait_ready();
    let mut conn = RawConn::connect(kg.port());
    // One key per master.
    let mut keys: Vec<(String, u16)> = Vec::new();
    for i in 0.. {
        let key = format!("f{i}");
        let (_, port) = cluster.slot_owner(key_slot(key.as_bytes()));
        if keys.iter().all(|(_, p)| *p != port) {
            assert_eq!(conn.call(&["SET", &key, &key]), Reply::Status("OK".into()));
            keys.push((key, port));
        }
        if keys.len() == CLUSTER_MASTERS {
            break;
        }
    }
    // Replicas have the keys before their master dies. A replica may
    // still be (re)syncing just after the cluster formed, and then no
    // replica counts for WAIT yet: wait for it, bounded.
    for (key, port) in &keys {
        assert!(
            wait_until(Duration::from_secs(30), || cli_at(
                *port,
                &["WAIT", "1", "1000"]
            ) == "1"),
            "{key}: no replica of its master acknowledged"
        );
    }
    let (victim_key, victim_port) = keys[0].clone();
    cluster.kill_node(victim_port);
    let mut failures = 0;
    let recovered = wait_until(Duration::from_secs(30), || {
        for (key, _) in &keys[1..] {
            assert_eq!(
                conn.call(&["GET", key]),
                Reply::Bulk(key.clone()),
                "another master's key"
            );
        }
        match conn.call(&["GET", &victim_key]) {
            Reply::Bulk(v) => v == victim_key,
            _ => {
                failures += 1;
                false
            }
        }
    });
    assert!(
        recovered,
        "the promoted replica never served {victim_key}: {:#}",
        backend_health(&kg)
    );
    println!("errors for the dead master's slot before the promotion: {failures}");
    assert!(wait_until(Duration::from_secs(10), || is_ready(&kg)));
}

#[test]
fn tryagain_is_retried_then_answered_with_redis_text() {
    let cluster = RedisCluster::start();
    let config = cluster_config(&cluster, DEFAULT_SERVICE).replace(
        "cluster_refresh = \"500ms\"",
        "cluster_refresh = \"500ms\"\nmax_redirects = 3",
    );
    let kg = Keygate::start_with(&config);
    kg.wait_ready();
    let mut conn = RawConn::connect(kg.port());
    assert_eq!(
        conn.call(&["MSET", "{t}a", "1", "{t}b", "2"]),
        Reply::Status("OK".into())
    );
    let slot = key_slot(b"t");
    let (source_id, source_port) = cluster.slot_owner(slot);
    let (target, target_id) = cluster.other_master(source_port);
    let slot_arg = slot.to_string();
    assert_eq!(
        target.cli(&["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", &source_id]),
        "OK"
    );
    assert_eq!(
        cli_at(
            source_port,
            &["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &target_id]
        ),
        "OK"
    );
    let target_port = target.port().to_string();
    let migrate = |key: &str| {
        cli_at(
            source_port,
            &["MIGRATE", "127.0.0.1", &target_port, key, "0", "5000"],
        )
    };
    // Half the keys moved: Redis says TRYAGAIN until the move completes.
    assert_eq!(migrate("{t}a"), "OK");
    assert_eq!(
        conn.call(&["MGET", "{t}a", "{t}b"]),
        Reply::Error("TRYAGAIN Multiple keys request during rehashing of slot".into())
    );
    let metrics = scrape_metrics(kg.admin_port());
    assert_eq!(
        metric_sample(&metrics, "keygate_redirects_total", &[("kind", "tryagain")]),
        Some(3.0),
        "{metrics}"
    );
    // Both moved: the request is asked of the target.
    assert_eq!(migrate("{t}b"), "OK");
    assert_eq!(
        conn.call(&["MGET", "{t}a", "{t}b"]),
        Reply::Array(vec![Reply::Bulk("1".into()), Reply::Bulk("2".into())])
    );
}
