//! keygate in front of a Redis Cluster, for services that read from
//! replicas (`read_from`): their reads go to the replicas of each slot's
//! shard (`READONLY` on those connections) and their writes to the
//! masters, a replica redirecting a read of a slot that moved is followed,
//! and a replica's death moves its reads without a client error. Also:
//! SPUBLISH goes straight to its channel's slot owner.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    backend_counts_by_node, backend_health, cluster_config, metric_sample, move_empty_slot,
    resp_command, scrape_metrics, wait_until, Keygate, RawConn, RedisCluster, RedisServer, Reply,
    CLUSTER_MASTERS, DEFAULT_SERVICE,
};
use keygate::topology::slot::key_slot;

/// The plain `default` service beside `reader`, which reads by `read_from`.
fn services(read_from: &str) -> String {
    format!(
        r#"
[[service]]
name = "default"
prefix = ""
isolation = false

[[service]]
name = "reader"
password = "pw"
prefix = "r:"
read_from = "{read_from}"
"#
    )
}

/// Waits until keygate's probes find every shard's replica fit to serve
/// reads (`/health` says `online`).
fn wait_replicas_online(kg: &Keygate) {
    let online = wait_until(Duration::from_secs(20), || {
        let backend = backend_health(kg);
        backend["shards"].as_array().is_some_and(|shards| {
            shards.len() == CLUSTER_MASTERS
                && shards.iter().all(|shard| {
                    shard["replicas"].as_array().is_some_and(|replicas| {
                        !replicas.is_empty() && replicas.iter().all(|r| r["state"] == "online")
                    })
                })
        })
    });
    assert!(
        online,
        "replicas not online: {:#}",
        backend_health(kg)["shards"]
    );
}

fn reset_stats(cluster: &RedisCluster) {
    for node in cluster.nodes() {
        assert_eq!(node.cli(&["CONFIG", "RESETSTAT"]), "OK");
    }
}

/// The nodes that are replicas now (by `ROLE`).
fn replicas(cluster: &RedisCluster) -> Vec<&RedisServer> {
    cluster
        .nodes()
        .iter()
        .filter(|node| node.cli(&["ROLE"]).starts_with("slave"))
        .collect()
}

/// The node on `port`.
fn node(cluster: &RedisCluster, port: u16) -> &RedisServer {
    cluster
        .nodes()
        .iter()
        .find(|n| n.port() == port)
        .expect("a node on that port")
}

/// The replica of the master on `port`.
fn replica_of(cluster: &RedisCluster, port: u16) -> &RedisServer {
    replicas(cluster)
        .into_iter()
        .find(|r| {
            r.cli(&["INFO", "replication"])
                .contains(&format!("master_port:{port}\r"))
        })
        .expect("a replica of that master")
}

/// Writes `count` keys `k{i}` = `v{i}` in one pipeline and checks each `+OK`.
fn write_keys(conn: &mut RawConn, count: usize) {
    let mut pipeline = Vec::new();
    for i in 0..count {
        pipeline.extend(resp_command(&["SET", &format!("k{i}"), &format!("v{i}")]));
    }
    conn.send(&pipeline);
    for i in 0..count {
        assert_eq!(conn.read_value(), Reply::Status("OK".into()), "SET k{i}");
    }
}

/// Reads keys `k0..count` in one pipeline: whether each has its value.
fn read_keys(conn: &mut RawConn, count: usize) -> Vec<Reply> {
    let mut pipeline = Vec::new();
    for i in 0..count {
        pipeline.extend(resp_command(&["GET", &format!("k{i}")]));
    }
    conn.send(&pipeline);
    (0..count).map(|_| conn.read_value()).collect()
}

fn values(count: usize) -> Vec<Reply> {
    (0..count).map(|i| Reply::Bulk(format!("v{i}"))).collect()
}

#[test]
fn a_replica_reading_service_reads_from_replicas_and_writes_to_masters() {
    let cluster = RedisCluster::start();
    let kg = Keygate::start_with(&cluster_config(&cluster, &services("replica")));
    kg.wait_ready();
    wait_replicas_online(&kg);
    let mut reader = RawConn::login(kg.port(), "reader", "pw");
    let mut writer = RawConn::connect(kg.port());
    let masters = cluster.masters();
    let replicas = replicas(&cluster);
    assert_eq!(replicas.len(), CLUSTER_MASTERS);

    // Writes of the replica-reading service go to the masters.
    const KEYS: usize = 90;
    reset_stats(&cluster);
    write_keys(&mut reader, KEYS);
    let set_on_masters: u64 = masters.iter().map(|m| m.calls("set")).sum();
    assert_eq!(set_on_masters, KEYS as u64);

    // A key just written by another connection is eventually read.
    assert_eq!(
        writer.call(&["SET", "r:fresh", "new"]),
        Reply::Status("OK".into())
    );
    assert!(
        wait_until(Duration::from_secs(5), || reader.call(&["GET", "fresh"])
            == Reply::Bulk("new".into())),
        "the replica never showed the write"
    );
    assert!(
        wait_until(Duration::from_secs(5), || read_keys(&mut reader, KEYS)
            == values(KEYS)),
        "the replicas never showed every write"
    );

    // Reads, pipelined over every slot's shard: all served by replicas.
    const ROUNDS: usize = 5;
    reset_stats(&cluster);
    for _ in 0..ROUNDS {
        assert_eq!(read_keys(&mut reader, KEYS), values(KEYS));
    }
    let get_on_masters: Vec<u64> = masters.iter().map(|m| m.calls("get")).collect();
    let get_on_replicas: Vec<u64> = replicas.iter().map(|r| r.calls("get")).collect();
    assert_eq!(get_on_masters, vec![0; CLUSTER_MASTERS]);
    assert_eq!(get_on_replicas.iter().sum::<u64>(), (KEYS * ROUNDS) as u64);
    assert!(
        get_on_replicas.iter().all(|&n| n > 0),
        "every replica serves its shard's reads: {get_on_replicas:?}"
    );
    // ... and recorded as theirs (recorders hand over about once a second).
    let replica_gets = || {
        let metrics = scrape_metrics(kg.admin_port());
        let labels = [
            ("service", "reader"),
            ("command", "get"),
            ("role", "replica"),
        ];
        metric_sample(&metrics, "keygate_command_duration_seconds_count", &labels)
    };
    assert!(
        wait_until(Duration::from_secs(5), || replica_gets()
            .is_some_and(|n| n >= (KEYS * ROUNDS) as f64)),
        "replica reads recorded: {:?}",
        replica_gets()
    );
    // ... with the replica that answered as their backend times' node.
    let metrics = scrape_metrics(kg.admin_port());
    let addrs: Vec<String> = replicas.iter().map(|r| r.addr()).collect();
    let by_node = backend_counts_by_node(&metrics, "reader", "get");
    let on_replicas: Vec<&str> = by_node
        .iter()
        .filter_map(|(node, _)| node.as_deref())
        .filter(|node| addrs.iter().any(|a| a == node))
        .collect();
    assert_eq!(on_replicas.len(), CLUSTER_MASTERS, "{by_node:?}");
}

#[test]
fn a_read_a_replica_redirects_is_followed_to_the_slots_new_master() {
    let cluster = RedisCluster::start();
    // No periodic refresh: keygate's map is stale until a redirect says so.
    let config = cluster_config(&cluster, &services("replica"))
        .replace("cluster_refresh = \"500ms\"", "cluster_refresh = \"1h\"");
    let kg = Keygate::start_with(&config);
    kg.wait_ready();
    wait_replicas_online(&kg);
    let mut reader = RawConn::login(kg.port(), "reader", "pw");

    // The slot of `{mv}:k` (any prefix: the tag decides) moves elsewhere.
    let slot = key_slot(b"mv");
    let (_, source_port) = cluster.slot_owner(slot);
    let source = node(&cluster, source_port);
    let replica = replica_of(&cluster, source_port);
    let (target, target_id) = cluster.other_master(source_port);
    move_empty_slot(&cluster, slot, source, target, &target_id);
    // The source's replica hears of it and redirects reads of the slot.
    let mut direct = RawConn::connect(replica.port());
    assert_eq!(direct.call(&["READONLY"]), Reply::Status("OK".into()));
    assert!(
        wait_until(Duration::from_secs(10), || {
            matches!(direct.call(&["GET", "r:{mv}:k"]), Reply::Error(e) if e.starts_with("MOVED"))
        }),
        "the replica never redirected the moved slot"
    );

    // keygate still sends the read to that replica and follows the MOVED.
    let moved = |kg: &Keygate| {
        let metrics = scrape_metrics(kg.admin_port());
        metric_sample(&metrics, "keygate_redirects_total", &[("kind", "moved")]).unwrap_or(0.0)
    };
    let before = moved(&kg);
    assert_eq!(reader.call(&["GET", "{mv}:k"]), Reply::Nil);
    assert!(moved(&kg) > before, "the read was not redirected");
    // Written on the new master, read from its replica.
    assert_eq!(
        reader.call(&["SET", "{mv}:k", "here"]),
        Reply::Status("OK".into())
    );
    assert_eq!(target.cli(&["GET", "r:{mv}:k"]), "here");
    assert!(
        wait_until(Duration::from_secs(5), || reader.call(&["GET", "{mv}:k"])
            == Reply::Bulk("here".into())),
        "the new master's replica never showed the write"
    );
}

#[test]
fn a_dead_replicas_reads_move_elsewhere_without_client_errors() {
    let mut cluster = RedisCluster::start();
    let kg = Keygate::start_with(&cluster_config(&cluster, &services("prefer-replica")));
    kg.wait_ready();
    wait_replicas_online(&kg);
    const KEYS: usize = 60;
    let mut writer = RawConn::login(kg.port(), "reader", "pw");
    write_keys(&mut writer, KEYS);
    let mut reader = RawConn::login(kg.port(), "reader", "pw");
    assert!(
        wait_until(Duration::from_secs(5), || read_keys(&mut reader, KEYS)
            == values(KEYS)),
        "the replicas never showed every write"
    );
    reset_stats(&cluster);

    // A client reads on, pipelined, while a replica is killed.
    let stop = Arc::new(AtomicBool::new(false));
    let port = kg.port();
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut reader = RawConn::login(port, "reader", "pw");
            let mut wrong = Vec::new();
            let mut rounds = 0u64;
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                let got = read_keys(&mut reader, KEYS);
                wrong.extend(
                    got.into_iter()
                        .enumerate()
                        .filter(|(i, r)| *r != Reply::Bulk(format!("v{i}"))),
                );
                rounds += 1;
            }
            (rounds, wrong)
        })
    };
    let victim_master = cluster.masters()[0].port();
    let victim = replica_of(&cluster, victim_master).port();
    assert!(
        wait_until(Duration::from_secs(10), || node(&cluster, victim)
            .calls("get")
            > 0),
        "reads never reached the replica"
    );
    let master_before = node(&cluster, victim_master).calls("get");
    assert_eq!(master_before, 0, "its master served reads while it was up");
    cluster.kill_node(victim);
    // Its shard's reads move to its master ("prefer-replica").
    assert!(
        wait_until(Duration::from_secs(10), || node(&cluster, victim_master)
            .calls("get")
            >= 10 * KEYS as u64),
        "the dead replica's reads did not move to its master"
    );
    stop.store(true, Ordering::Relaxed);
    let (rounds, wrong) = client.join().expect("reader thread");
    assert!(rounds > 10, "{rounds} rounds");
    assert!(
        wrong.is_empty(),
        "{} wrong replies: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    // The other replicas kept serving theirs.
    for replica in replicas(&cluster) {
        assert!(
            replica.calls("get") > 0,
            "{} served no reads",
            replica.addr()
        );
    }
}

#[test]
fn spublish_goes_straight_to_its_channels_slot_owner() {
    let cluster = RedisCluster::start();
    let kg = Keygate::start_with(&cluster_config(&cluster, DEFAULT_SERVICE));
    kg.wait_ready();
    let mut sub = RawConn::connect(kg.port());
    let mut publisher = RawConn::connect(kg.port());
    assert_eq!(
        sub.call(&["SSUBSCRIBE", "news"]),
        Reply::Array(vec![
            Reply::Bulk("ssubscribe".into()),
            Reply::Bulk("news".into()),
            Reply::Int(1),
        ])
    );
    let moved = || {
        let metrics = scrape_metrics(kg.admin_port());
        metric_sample(&metrics, "keygate_redirects_total", &[("kind", "moved")])
    };
    let before = moved();
    assert!(before.is_some(), "no redirect counter");
    // Channels in every master's slots.
    let mut owners = std::collections::HashSet::new();
    for i in 0..30 {
        let channel = format!("ch{i}");
        owners.insert(cluster.slot_owner(key_slot(channel.as_bytes())).1);
        assert_eq!(publisher.call(&["SPUBLISH", &channel, "m"]), Reply::Int(0));
    }
    assert_eq!(owners.len(), CLUSTER_MASTERS);
    assert_eq!(publisher.call(&["SPUBLISH", "news", "m1"]), Reply::Int(1));
    assert_eq!(
        sub.read_value(),
        Reply::Array(vec![
            Reply::Bulk("smessage".into()),
            Reply::Bulk("news".into()),
            Reply::Bulk("m1".into()),
        ])
    );
    assert_eq!(moved(), before, "SPUBLISH was redirected");
}
