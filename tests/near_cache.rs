//! The near cache against real redis-server: hits, and each coherence rule
//! of issue 17 (invalidations, own writes, lost connections, flushes, TTL).

mod common;

use std::time::Duration;

use common::*;

fn start(redis: &RedisServer) -> Keygate {
    let kg = Keygate::start_with(&standalone_config(&redis.addr(), NEAR_CACHE_SERVICE));
    kg.wait_ready();
    kg
}

fn login(kg: &Keygate) -> RawConn {
    let mut c = RawConn::connect(kg.port());
    assert_eq!(c.cmd_str(&["AUTH", "app", "pw"]), "+OK\r\n");
    c
}

fn bulk(v: &str) -> String {
    format!("${}\r\n{v}\r\n", v.len())
}

/// keygate in front of `redis`, and a client of it whose key `k` (`v1`)
/// is answered from the near cache.
fn cached_k(redis: &RedisServer) -> (Keygate, RawConn) {
    let kg = start(redis);
    wait_tracking(redis);
    let mut c = login(&kg);
    c.cmd_str(&["SET", "k", "v1"]);
    wait_hit(redis, &mut c, "k", "v1");
    (kg, c)
}

/// Reads `key` until a GET is answered without reaching Redis (a hit),
/// and checks the value; bounded.
fn wait_hit(redis: &RedisServer, c: &mut RawConn, key: &str, want: &str) {
    let hit = wait_until(Duration::from_secs(10), || {
        let before = redis.calls("get");
        let got = c.cmd_str(&["GET", key]);
        assert_eq!(got, bulk(want));
        redis.calls("get") == before
    });
    assert!(hit, "{key} never became a near-cache hit");
}

/// Kills keygate's invalidation connections to the node on `port`, and
/// waits until keygate has replaced them: it has seen them go, so what it
/// filled under them is no longer served.
fn kill_invalidation_connections(port: u16) {
    let old = client_ids_named(port, "keygate-invalidation");
    for id in &old {
        cli_at(port, &["CLIENT", "KILL", "ID", id]);
    }
    assert!(
        wait_until(Duration::from_secs(10), || {
            let now = client_ids_named(port, "keygate-invalidation");
            !now.is_empty() && now.iter().all(|id| !old.contains(id))
        }),
        "keygate never replaced its invalidation connection"
    );
}

/// The invalidation connection is up: Redis lists it.
fn wait_tracking(redis: &RedisServer) {
    assert!(
        wait_until(Duration::from_secs(10), || redis
            .cli(&["CLIENT", "LIST"])
            .contains("name=keygate-invalidation")),
        "no invalidation connection"
    );
}

#[test]
fn a_key_read_again_is_answered_from_memory() {
    let redis = RedisServer::start();
    let kg = start(&redis);
    wait_tracking(&redis);
    let mut c = login(&kg);
    assert_eq!(c.cmd_str(&["SET", "k", "v1"]), "+OK\r\n");
    wait_hit(&redis, &mut c, "k", "v1");
    // Redis tracks it for keygate, towards the invalidation connection.
    let tracking = redis.cli(&["CLIENT", "LIST"]);
    assert!(tracking.contains("flags=t"), "{tracking}");
    // /health says how many keys Redis tracks for keygate.
    let health = health(&kg);
    let tracked = &health["near_cache"]["nodes"][0]["tracking_total_keys"];
    assert!(tracked.as_u64().is_some_and(|n| n >= 1), "{health}");
    let metrics = scrape_metrics(kg.admin_port());
    assert!(
        metric_sample(
            &metrics,
            "keygate_near_cache_hits_total",
            &[("service", "app")]
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
}

/// Hits answered in the middle of a pipeline keep their place among the
/// replies Redis gives, and only the misses reach Redis.
#[test]
fn hits_in_a_pipeline_keep_their_place() {
    let redis = RedisServer::start();
    let (_kg, mut c) = cached_k(&redis);
    let before = redis.calls("get");
    let mut pipeline = Vec::new();
    for args in [
        &["GET", "k"][..],
        &["GET", "absent"],
        &["SET", "j", "x"],
        &["GET", "k"],
        &["GET", "j"],
        &["GET", "k"],
        &["GET", "absent2"],
        &["GET", "k"],
    ] {
        pipeline.extend(resp_command(args));
    }
    c.send(&pipeline);
    let replies: Vec<String> = (0..8)
        .map(|_| String::from_utf8_lossy(&c.read_reply()).into_owned())
        .collect();
    let want = [
        bulk("v1"),
        "$-1\r\n".to_string(),
        "+OK\r\n".to_string(),
        bulk("v1"),
        bulk("x"),
        bulk("v1"),
        "$-1\r\n".to_string(),
        bulk("v1"),
    ];
    assert_eq!(replies, want);
    assert_eq!(
        redis.calls("get") - before,
        3,
        "only the misses reach Redis"
    );
    // Hits alone, and a hit whose reply is skipped (CLIENT REPLY SKIP).
    let mut pipeline = Vec::new();
    for args in [
        &["GET", "k"][..],
        &["GET", "k"],
        &["CLIENT", "REPLY", "SKIP"],
        &["GET", "k"],
        &["GET", "k"],
        &["PING"],
    ] {
        pipeline.extend(resp_command(args));
    }
    c.send(&pipeline);
    for want in [bulk("v1"), bulk("v1"), bulk("v1"), "+PONG\r\n".to_string()] {
        assert_eq!(String::from_utf8_lossy(&c.read_reply()), want);
    }
    assert_eq!(redis.calls("get") - before, 3, "hits alone reach no one");
}

#[test]
fn a_write_through_keygate_is_read_back_at_once() {
    let redis = RedisServer::start();
    let kg = start(&redis);
    wait_tracking(&redis);
    let mut c = login(&kg);
    c.cmd_str(&["SET", "k", "v0"]);
    wait_hit(&redis, &mut c, "k", "v0");
    for i in 1..200 {
        let v = format!("v{i}");
        // Every shape of write: plain, TTL follow-up, RENAME target,
        // *STORE destination, MULTI.
        match i % 5 {
            0 => assert_eq!(c.cmd_str(&["SET", "k", &v]), "+OK\r\n"),
            1 => assert_eq!(c.cmd_str(&["SET", "k", &v, "EX", "100"]), "+OK\r\n"),
            2 => {
                c.cmd_str(&["SET", "tmp", &v]);
                assert_eq!(c.cmd_str(&["RENAME", "tmp", "k"]), "+OK\r\n");
            }
            3 => {
                c.cmd_str(&["SET", "tmp", &v]);
                assert_eq!(c.cmd_str(&["COPY", "tmp", "k", "REPLACE"]), ":1\r\n");
            }
            _ => {
                assert_eq!(c.cmd_str(&["MULTI"]), "+OK\r\n");
                assert_eq!(c.cmd_str(&["SET", "k", &v]), "+QUEUED\r\n");
                assert!(c.cmd_str(&["EXEC"]).starts_with("*1\r\n"));
            }
        }
        assert_eq!(c.cmd_str(&["GET", "k"]), bulk(&v), "after write {i}");
        assert_eq!(c.cmd_str(&["GET", "k"]), bulk(&v), "after write {i}");
        // Pipelined: the GET is taken before the write's reply came back.
        let p = format!("p{i}");
        let mut both = resp_command(&["SET", "k", &p]);
        both.extend(resp_command(&["GET", "k"]));
        c.send(&both);
        assert_eq!(c.read_reply(), b"+OK\r\n");
        assert_eq!(c.read_reply(), bulk(&p).into_bytes(), "pipelined {i}");
        c.cmd_str(&["GET", "k"]);
    }
}

#[test]
fn a_direct_write_on_redis_invalidates() {
    let redis = RedisServer::start();
    let kg = start(&redis);
    wait_tracking(&redis);
    let mut c = login(&kg);
    c.cmd_str(&["SET", "k", "old"]);
    wait_hit(&redis, &mut c, "k", "old");
    redis.cli(&["SET", "app:k", "new"]);
    assert!(wait_until(Duration::from_secs(5), || c
        .cmd_str(&["GET", "k"])
        == bulk("new")));
    // FLUSHALL: a null invalidation flushes the cache.
    wait_hit(&redis, &mut c, "k", "new");
    redis.cli(&["FLUSHALL"]);
    assert!(wait_until(Duration::from_secs(5), || c
        .cmd_str(&["GET", "k"])
        == "$-1\r\n"));
}

#[test]
fn no_entry_outlives_its_key_ttl() {
    let redis = RedisServer::start();
    let kg = start(&redis);
    wait_tracking(&redis);
    let mut c = login(&kg);
    c.cmd_str(&["SET", "k", "v", "PX", "1500"]);
    wait_hit(&redis, &mut c, "k", "v");
    // Redis expires the key lazily on access only: no invalidation comes
    // unless someone touches it, so the entry must expire on its own.
    assert!(wait_until(Duration::from_secs(5), || c
        .cmd_str(&["GET", "k"])
        == "$-1\r\n"));
}

#[test]
fn a_lost_invalidation_connection_or_data_connection_stops_hits() {
    let redis = RedisServer::start();
    let (_kg, mut c) = cached_k(&redis);
    // The invalidation connection dies: the cache is flushed, and a write
    // Redis could tell no one of (the data connection still redirects to
    // the dead connection) is never hidden by an old entry.
    kill_invalidation_connections(redis.port());
    redis.cli(&["SET", "app:k", "v2"]);
    assert_eq!(c.cmd_str(&["GET", "k"]), bulk("v2"));
    wait_tracking(&redis);
    wait_hit(&redis, &mut c, "k", "v2");
    // The data connections die: Redis forgets what they tracked, so
    // entries they filled are never served again.
    for id in client_ids_named(redis.port(), "keygate-mux") {
        redis.cli(&["CLIENT", "KILL", "ID", &id]);
    }
    redis.cli(&["SET", "app:k", "v3"]);
    assert!(wait_until(Duration::from_secs(5), || c
        .cmd_str(&["GET", "k"])
        == bulk("v3")));
    wait_hit(&redis, &mut c, "k", "v3");
}

/// A RESP3 client fills the cache as a RESP2 client does (keygate's RESP3
/// connections to Redis track too) and reads its own writes. With the
/// invalidation connection killed, Redis pushes `tracking-redir-broken` on
/// the RESP3 connection when a key it tracks changes: its replies stay in
/// order, the direct write is read, and the key is kept again once the
/// invalidation connection is back.
#[test]
fn a_resp3_client_fills_and_steps_over_a_broken_redirect() {
    let redis = RedisServer::start();
    let kg = start(&redis);
    wait_tracking(&redis);
    let mut r3 = RawConn::connect(kg.port());
    assert!(r3
        .cmd_str(&["HELLO", "3", "AUTH", "app", "pw"])
        .starts_with('%'));
    assert_eq!(r3.cmd_str(&["SET", "k", "v1"]), "+OK\r\n");
    wait_hit(&redis, &mut r3, "k", "v1");
    assert_eq!(r3.cmd_str(&["SET", "k", "v2"]), "+OK\r\n");
    assert_eq!(r3.cmd_str(&["GET", "k"]), bulk("v2"));
    wait_hit(&redis, &mut r3, "k", "v2");
    // A nil is RESP3's own, never a RESP2 leader's.
    assert_eq!(r3.cmd_str(&["GET", "none"]), "_\r\n");
    kill_invalidation_connections(redis.port());
    redis.cli(&["SET", "app:k", "v3"]);
    redis.cli(&["SET", "app:j", "w"]);
    let mut pipeline = Vec::new();
    for key in ["k", "j", "none", "k"] {
        pipeline.extend_from_slice(&resp_command(&["GET", key]));
    }
    r3.send(&pipeline);
    let replies: Vec<Vec<u8>> = (0..4).map(|_| r3.read_reply()).collect();
    let k_now = String::from_utf8_lossy(&replies[0]).into_owned();
    assert_eq!(
        k_now,
        bulk("v3"),
        "the direct write, read after the redirect broke"
    );
    assert_eq!(replies[1], bulk("w").into_bytes());
    assert_eq!(replies[2], b"_\r\n");
    assert_eq!(replies[3], bulk("v3").into_bytes());
    wait_tracking(&redis);
    wait_hit(&redis, &mut r3, "k", "v3");
    redis.cli(&["SET", "app:k", "v4"]);
    assert!(
        wait_until(Duration::from_secs(10), || r3.cmd_str(&["GET", "k"])
            == bulk("v4")),
        "the direct write was never read"
    );
}

/// The same push in the middle of a pipelined batch: while a RESP3 client
/// pipelines reads of tracked keys, the invalidation connection is killed
/// and the keys are written directly (with the values they hold), again and
/// again. Every reply arrives, in order, with its value.
#[test]
fn a_resp3_pipeline_keeps_its_replies_through_broken_redirects() {
    let redis = RedisServer::start();
    let kg = start(&redis);
    wait_tracking(&redis);
    let mut r3 = RawConn::connect(kg.port());
    r3.cmd_str(&["HELLO", "3", "AUTH", "app", "pw"]);
    let keys: Vec<String> = (0..8).map(|i| format!("k{i}")).collect();
    for key in &keys {
        r3.cmd_str(&["SET", key, &format!("v-{key}")]);
    }
    let mut pipeline = Vec::new();
    for _ in 0..250 {
        for key in &keys {
            pipeline.extend_from_slice(&resp_command(&["GET", key]));
        }
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, port, keys) = (stop.clone(), redis.port(), keys.clone());
        std::thread::spawn(move || {
            let mut direct = RawConn::connect(port);
            let mut rounds = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && rounds < 200 {
                for id in client_ids_named(port, "keygate-invalidation") {
                    direct.cmd_str(&["CLIENT", "KILL", "ID", &id]);
                }
                for key in &keys {
                    direct.cmd_str(&["SET", &format!("app:{key}"), &format!("v-{key}")]);
                }
                rounds += 1;
            }
            rounds
        })
    };
    for round in 0..40 {
        r3.send(&pipeline);
        for i in 0..250 * keys.len() {
            let key = &keys[i % keys.len()];
            let got = r3.read_reply();
            assert_eq!(
                String::from_utf8_lossy(&got),
                bulk(&format!("v-{key}")),
                "round {round}, reply {i}"
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = writer.join().expect("writer");
    eprintln!("FIGURES resp3 pipeline: {rounds} rounds of killed invalidation connections and direct writes");
}

/// Reload applies `[service.near_cache]` to the cache in use: a smaller
/// budget evicts at once, and the entries left keep being served.
#[test]
fn reload_shrinks_the_budget_and_evicts() {
    let redis = RedisServer::start();
    let text = standalone_config(&redis.addr(), NEAR_CACHE_SERVICE);
    let file = ConfigFile::new(&text);
    let kg = Keygate::start_from_file(&file.path());
    kg.wait_ready();
    wait_tracking(&redis);
    let mut c = login(&kg);
    let value = "v".repeat(200);
    for i in 0..40 {
        let key = format!("k{i}");
        c.cmd_str(&["SET", &key, &value]);
        wait_hit(&redis, &mut c, &key, &value);
    }
    let bytes = |kg: &Keygate| {
        metric_sum(
            &scrape_metrics(kg.admin_port()),
            "keygate_near_cache_bytes",
            &[("service", "app")],
        )
    };
    assert!(bytes(&kg) > 8000.0, "{}", bytes(&kg));
    file.write(&text.replace(
        "max_bytes = 1048576",
        "max_bytes = 4096\nmax_value_bytes = 1024",
    ));
    let response = http_request(kg.admin_port(), "POST", "/reload");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(bytes(&kg) <= 4096.0, "{}", bytes(&kg));
    let metrics = scrape_metrics(kg.admin_port());
    let budget = metric_sum(
        &metrics,
        "keygate_near_cache_evictions_total",
        &[("service", "app"), ("reason", "budget")],
    );
    assert!(budget >= 1.0, "{metrics}");
    // Still a near cache: a key read again is a hit.
    wait_hit(&redis, &mut c, "k0", &value);
}

/// FLUSHDB through keygate (an unprefixed service forwards it): the next
/// read never sees a value from before it, even before Redis's null
/// invalidation arrives (pipelined right behind it, too).
#[test]
fn a_flush_through_keygate_is_read_back_at_once() {
    let redis = RedisServer::start();
    let service = NEAR_CACHE_SERVICE
        .replace("prefix = \"app:\"", "prefix = \"\"\nisolation = false")
        .replace("name = \"app\"", "name = \"app\"\nadmin = true");
    let kg = Keygate::start_with(&standalone_config(&redis.addr(), &service));
    kg.wait_ready();
    wait_tracking(&redis);
    let mut c = login(&kg);
    for i in 0..50 {
        let v = format!("v{i}");
        c.cmd_str(&["SET", "k", &v]);
        wait_hit(&redis, &mut c, "k", &v);
        let flush = if i % 2 == 0 { "FLUSHDB" } else { "FLUSHALL" };
        if i % 3 == 0 {
            // Pipelined: the GET is taken before any reply came back.
            let mut both = resp_command(&[flush]);
            both.extend(resp_command(&["GET", "k"]));
            c.send(&both);
            assert_eq!(c.read_reply(), b"+OK\r\n");
        } else {
            assert_eq!(c.cmd_str(&[flush]), "+OK\r\n");
            c.send(&resp_command(&["GET", "k"]));
        }
        assert_eq!(c.read_reply(), b"$-1\r\n", "after {flush} {i}");
    }
}

/// Whether the service's near-cache misses reach `n` (bounded wait).
fn misses_reach(kg: &Keygate, n: f64) -> bool {
    wait_until(Duration::from_secs(10), || {
        metric_sum(
            &scrape_metrics(kg.admin_port()),
            "keygate_near_cache_misses_total",
            &[("service", "app")],
        ) >= n
    })
}

/// Single flight: while a fill's read of a key is on its way (Redis is
/// paused), other clients' reads of the key wait for its reply instead of
/// sending their own.
#[test]
fn reads_of_a_key_in_flight_wait_for_its_reply() {
    let redis = RedisServer::start();
    let kg = start(&redis);
    wait_tracking(&redis);
    let mut leader = login(&kg);
    let mut followers = [login(&kg), login(&kg), login(&kg)];
    leader.cmd_str(&["SET", "k", "v"]);
    assert_eq!(leader.cmd_str(&["GET", "k"]), bulk("v"));
    let misses = |n: f64| misses_reach(&kg, n);
    assert!(misses(1.0));
    let gets = redis.calls("get");
    let pid = redis.pid().expect("redis pid");
    let signal = |sig: &str| signal(pid, sig);
    signal("STOP");
    // The second read fills, and leads the flight.
    leader.send(&resp_command(&["GET", "k"]));
    assert!(misses(2.0), "the leader's read never came");
    for f in followers.iter_mut() {
        f.send(&resp_command(&["GET", "k"]));
    }
    let aboard = misses(5.0);
    signal("CONT");
    assert!(aboard, "the followers' reads never came");
    assert_eq!(leader.read_reply(), bulk("v").into_bytes());
    for f in followers.iter_mut() {
        assert_eq!(f.read_reply(), bulk("v").into_bytes());
    }
    let sent = redis.calls("get");
    if sent != gets + 1 {
        let metrics = scrape_metrics(kg.admin_port());
        let near: Vec<&str> = metrics
            .lines()
            .filter(|l| {
                l.starts_with("keygate_near_cache") || l.starts_with("keygate_backend_connections")
            })
            .collect();
        panic!(
            "one GET for four reads, {} reached Redis\n{}\n{}\n{}",
            sent - gets,
            near.join("\n"),
            redis.cli(&["INFO", "commandstats"]),
            redis.cli(&["CLIENT", "LIST"]),
        );
    }
    // A follower's own write pipelined behind its read waits for the
    // read it follows: the read never returns the write's value.
    leader.cmd_str(&["SET", "j", "v1"]);
    assert_eq!(leader.cmd_str(&["GET", "j"]), bulk("v1"));
    assert!(misses(6.0));
    signal("STOP");
    leader.send(&resp_command(&["GET", "j"]));
    assert!(misses(7.0), "the leader's read never came");
    let mut both = resp_command(&["GET", "j"]);
    both.extend(resp_command(&["SET", "j", "v2"]));
    followers[0].send(&both);
    let aboard = misses(8.0);
    signal("CONT");
    assert!(aboard, "the follower's read never came");
    assert_eq!(leader.read_reply(), bulk("v1").into_bytes());
    assert_eq!(followers[0].read_reply(), bulk("v1").into_bytes());
    assert_eq!(followers[0].read_reply(), b"+OK\r\n");
    assert_eq!(followers[0].cmd_str(&["GET", "j"]), bulk("v2"));
    // A client may follow its own read (a pipeline of the same GET).
    leader.cmd_str(&["SET", "q", "w"]);
    leader.cmd_str(&["GET", "q"]);
    let mut three = Vec::new();
    for _ in 0..3 {
        three.extend(resp_command(&["GET", "q"]));
    }
    leader.send(&three);
    for _ in 0..3 {
        assert_eq!(leader.read_reply(), bulk("w").into_bytes());
    }
}

/// After a Sentinel failover flushed the cache, the service's hottest keys
/// are read again from the new master without any client asking: entries
/// come back, the new master tracks them for keygate, and the next client
/// read of a hot key is a hit.
#[test]
fn a_failover_warms_the_hottest_keys_from_the_new_master() {
    const MASTER: &str = "warm";
    let (master, replica) = master_and_replica();
    let sentinel = RedisSentinel::start(MASTER, master.port());
    sentinel.wait_sees_good_replica(MASTER);
    let kg = Keygate::start_with(&sentinel_backend_config(
        &sentinel.addr(),
        MASTER,
        &format!("{NEAR_CACHE_SERVICE}warm_keys = 20"),
    ));
    kg.wait_ready();
    wait_tracking(&master);
    let mut c = login(&kg);
    for i in 0..40 {
        assert_eq!(c.cmd_str(&["SET", &format!("k{i}"), "v"]), "+OK\r\n");
    }
    // Twenty-three hot keys (a count prime to the hot-key sample's 1 in 8,
    // so every key is sampled), read often enough for it.
    for _ in 0..40 {
        for i in 0..23 {
            assert_eq!(c.cmd_str(&["GET", &format!("k{i}")]), bulk("v"));
        }
    }
    master.cli(&["WAIT", "1", "5000"]);
    let entries = |kg: &Keygate| {
        metric_sample(
            &scrape_metrics(kg.admin_port()),
            "keygate_near_cache_entries",
            &[("service", "app")],
        )
        .unwrap_or(0.0)
    };
    assert!(entries(&kg) >= 20.0, "the hot keys were never cached");
    let ok = wait_until(Duration::from_secs(10), || {
        sentinel.cli(&["SENTINEL", "FAILOVER", MASTER]) == "OK"
    });
    assert!(ok, "SENTINEL FAILOVER refused:\n{}", sentinel.log());
    // keygate follows, flushes, and reads the hot keys from the new master
    // on its own: the new master tracks them for keygate.
    assert!(
        wait_until(Duration::from_secs(30), || {
            replica
                .cli(&["INFO", "stats"])
                .lines()
                .find_map(|l| l.strip_prefix("tracking_total_keys:"))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .is_some_and(|n| n >= 20)
        }),
        "the new master never tracked the warmed keys: {}",
        replica.cli(&["INFO", "stats"])
    );
    assert!(entries(&kg) >= 20.0, "warmed keys are not in the cache");
    // The next read of a hot key does not reach the new master.
    let before = replica.calls("get");
    assert_eq!(c.cmd_str(&["GET", "k3"]), bulk("v"));
    assert_eq!(replica.calls("get"), before, "a warmed key missed");
}

/// The master serving `stored` (a key as Redis has it) in `cluster` now.
fn owner<'a>(cluster: &'a RedisCluster, stored: &str) -> &'a RedisServer {
    let (_, port) = cluster.slot_owner(keygate::topology::slot::key_slot(stored.as_bytes()));
    cluster
        .nodes()
        .iter()
        .find(|n| n.port() == port)
        .expect("the owner is a node of the cluster")
}

/// Moves `stored`'s slot, with the key, from `source` to `target` as a
/// resharding does: importing and migrating, `MIGRATE`, then the slot's
/// new owner told to every master.
fn migrate_key(cluster: &RedisCluster, stored: &str, source: &RedisServer, target: &RedisServer) {
    let slot = keygate::topology::slot::key_slot(stored.as_bytes()).to_string();
    let source_id = source.cli(&["CLUSTER", "MYID"]);
    let target_id = target.cli(&["CLUSTER", "MYID"]);
    assert_eq!(
        target.cli(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &source_id]),
        "OK"
    );
    assert_eq!(
        source.cli(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &target_id]),
        "OK"
    );
    let port = target.port().to_string();
    let migrate = [
        "MIGRATE",
        "127.0.0.1",
        &port,
        "",
        "0",
        "5000",
        "KEYS",
        stored,
    ];
    assert_eq!(source.cli(&migrate), "OK");
    give_slot(cluster, &slot, source, target, &target_id);
}

/// On a cluster backend each master tracks the reads keygate filled from
/// it, towards its own invalidation connection: fills of keys on every
/// master in one pipeline, hits, a data connection of one master lost
/// (only its entries go), a direct write on a master, and a slot moved
/// with its key to another master, whose value is then read from there
/// and invalidated by it, and a manual failover. The client never sees a
/// redirect.
#[test]
fn a_cluster_backend_keeps_every_masters_reads_coherent() {
    let cluster = RedisCluster::start();
    // Entries outlive every wait below: only invalidations end them.
    let service = NEAR_CACHE_SERVICE.replace("max_age = \"10s\"", "max_age = \"60s\"");
    assert_ne!(service, NEAR_CACHE_SERVICE);
    let kg = Keygate::start_with(&cluster_config(&cluster, &service));
    kg.wait_ready();
    for master in cluster.masters() {
        wait_tracking(master);
    }
    let mut c = login(&kg);
    let keys: Vec<String> = (0..12).map(|i| format!("k{i}")).collect();
    let stored = |k: &str| format!("app:{k}");
    let ports: std::collections::BTreeSet<u16> = keys
        .iter()
        .map(|k| owner(&cluster, &stored(k)).port())
        .collect();
    assert_eq!(ports.len(), CLUSTER_MASTERS, "keys on every master");
    for k in &keys {
        assert_eq!(c.cmd_str(&["SET", k, "v1"]), "+OK\r\n");
    }
    // Two reads fill (the first is only counted), the third is a hit:
    // each pipeline goes out as one part per master.
    let mut pipeline = Vec::new();
    for k in &keys {
        pipeline.extend(resp_command(&["GET", k]));
    }
    let gets =
        |cluster: &RedisCluster| -> u64 { cluster.masters().iter().map(|m| m.calls("get")).sum() };
    for _ in 0..2 {
        c.send(&pipeline);
        for _ in &keys {
            assert_eq!(c.read_reply(), bulk("v1").into_bytes());
        }
    }
    let before = gets(&cluster);
    c.send(&pipeline);
    for _ in &keys {
        assert_eq!(c.read_reply(), bulk("v1").into_bytes());
    }
    assert_eq!(
        gets(&cluster),
        before,
        "every read of the third pipeline a hit"
    );
    // /health says how many keys each master tracks for keygate.
    let health = health(&kg);
    let nodes = health["near_cache"]["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), CLUSTER_MASTERS, "{health}");
    assert!(
        nodes
            .iter()
            .all(|n| n["tracking_total_keys"].as_u64().is_some_and(|k| k >= 1)),
        "{health}"
    );

    // One master's data connections close: Redis stops tracking what they
    // read, so those entries go; the other masters' stay.
    let lost = owner(&cluster, &stored(&keys[0]));
    let killed = lost.cli(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
    assert_ne!(killed.trim(), "0", "keygate's connections killed");
    let on_lost: Vec<&String> = keys
        .iter()
        .filter(|k| owner(&cluster, &stored(k)).port() == lost.port())
        .collect();
    let elsewhere = keys
        .iter()
        .find(|k| owner(&cluster, &stored(k)).port() != lost.port())
        .expect("a key on another master");
    let other = owner(&cluster, &stored(elsewhere));
    let other_gets = other.calls("get");
    assert_eq!(c.cmd_str(&["GET", elsewhere]), bulk("v1"));
    assert_eq!(
        other.calls("get"),
        other_gets,
        "another master's entry kept"
    );
    for k in &on_lost {
        let lost_gets = lost.calls("get");
        assert_eq!(c.cmd_str(&["GET", k]), bulk("v1"));
        assert_eq!(
            lost.calls("get"),
            lost_gets + 1,
            "{k}: read from its master again"
        );
    }

    // A direct write on a master reaches keygate as that master's
    // invalidation.
    let k = &keys[1];
    owner(&cluster, &stored(k)).cli(&["SET", &stored(k), "v2"]);
    assert!(
        wait_until(Duration::from_secs(10), || c.cmd_str(&["GET", k])
            == bulk("v2")),
        "the direct write was never read"
    );

    // The slot of a cached key moves, with the key, to another master,
    // where it is written directly: keygate reads the new value (the old
    // owner invalidated the key when MIGRATE deleted it; the read it sends
    // there is redirected), then fills it from the new owner, which
    // invalidates it in turn.
    let k = &keys[2];
    let source = owner(&cluster, &stored(k));
    wait_hit(source, &mut c, k, "v1");
    let (target, _) = cluster.other_master(source.port());
    let invalidated = || {
        metric_sum(
            &scrape_metrics(kg.admin_port()),
            "keygate_near_cache_evictions_total",
            &[("service", "app"), ("reason", "invalidation")],
        )
    };
    let before = invalidated();
    migrate_key(&cluster, &stored(k), source, target);
    // The old owner's invalidation is in: the next read is a miss whose
    // fill goes to the old owner, is redirected, and must not be kept.
    assert!(
        wait_until(Duration::from_secs(10), || invalidated() > before),
        "MIGRATE's invalidation never came"
    );
    assert_eq!(target.cli(&["SET", &stored(k), "v3"]), "OK");
    assert!(
        wait_until(Duration::from_secs(10), || {
            let got = c.cmd_str(&["GET", k]);
            assert!(
                got.starts_with('$'),
                "a redirect or error reached the client: {got}"
            );
            got == bulk("v3")
        }),
        "the moved key's new value was never read"
    );
    wait_hit(target, &mut c, k, "v3");
    assert_eq!(target.cli(&["SET", &stored(k), "v4"]), "OK");
    assert!(
        wait_until(Duration::from_secs(10), || c.cmd_str(&["GET", k])
            == bulk("v4")),
        "the new owner's invalidation never came"
    );

    // A manual failover: a master's replica takes over its slots. A write
    // on the new master is read (the old one, now its replica, invalidates
    // the replicated write; the new layout flushes the caches).
    let k = &keys[3];
    let old = owner(&cluster, &stored(k));
    wait_hit(old, &mut c, k, "v1");
    let old_id = old.cli(&["CLUSTER", "MYID"]);
    let heir: u16 = old
        .cli(&["CLUSTER", "NODES"])
        .lines()
        .find(|l| l.contains(&format!("slave {old_id}")))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|addr| addr.split(['@', ':']).nth(1))
        .and_then(|port| port.parse().ok())
        .expect("the master has a replica");
    assert_eq!(cli_at(heir, &["CLUSTER", "FAILOVER"]), "OK");
    let slot = keygate::topology::slot::key_slot(stored(k).as_bytes());
    assert!(
        wait_until(Duration::from_secs(20), || cluster.slot_owner(slot).1
            == heir),
        "the replica never took over"
    );
    assert_eq!(cli_at(heir, &["SET", &stored(k), "v5"]), "OK");
    assert!(
        wait_until(Duration::from_secs(10), || c.cmd_str(&["GET", k])
            == bulk("v5")),
        "the new master's write was never read"
    );
    let metrics = scrape_metrics(kg.admin_port());
    assert!(
        metric_sum(
            &metrics,
            "keygate_near_cache_hits_total",
            &[("service", "app")]
        ) >= 14.0
    );
}

/// Single flight on a cluster backend: while a fill's read of a key is on
/// its way (its master is stopped), other clients' reads of the key wait
/// for its reply, and the master sees one GET for the four reads.
#[test]
fn cluster_reads_of_a_key_in_flight_wait_for_its_reply() {
    let cluster = RedisCluster::start();
    let kg = Keygate::start_with(&cluster_config(&cluster, NEAR_CACHE_SERVICE));
    kg.wait_ready();
    for master in cluster.masters() {
        wait_tracking(master);
    }
    let mut leader = login(&kg);
    let mut followers = [login(&kg), login(&kg), login(&kg)];
    leader.cmd_str(&["SET", "k", "v"]);
    assert_eq!(leader.cmd_str(&["GET", "k"]), bulk("v"));
    let misses = |n: f64| misses_reach(&kg, n);
    assert!(misses(1.0));
    // No failover while the master is stopped, however long that takes.
    for node in cluster.nodes() {
        assert_eq!(
            node.cli(&["CONFIG", "SET", "cluster-node-timeout", "60000"]),
            "OK"
        );
    }
    let master = owner(&cluster, "app:k");
    let gets = master.calls("get");
    let pid = master.pid().expect("the master's pid");
    let signal = |sig: &str| signal(pid, sig);
    signal("STOP");
    leader.send(&resp_command(&["GET", "k"]));
    let led = misses(2.0);
    for f in followers.iter_mut() {
        f.send(&resp_command(&["GET", "k"]));
    }
    let aboard = led && misses(5.0);
    signal("CONT");
    assert!(aboard, "the reads never came");
    assert_eq!(leader.read_reply(), bulk("v").into_bytes());
    for f in followers.iter_mut() {
        assert_eq!(f.read_reply(), bulk("v").into_bytes());
    }
    assert_eq!(master.calls("get"), gets + 1, "one GET for four reads");
}

/// Warm after failover on a cluster backend: a manual failover of one
/// master changes the slot map, which flushes the cache, and keygate then
/// reads the hot keys that master served from its heir on its own (the
/// heir, a replica until then, tracked nothing for keygate), so the next
/// client read of one is a hit.
#[test]
fn a_cluster_failover_warms_the_hottest_keys_from_the_new_master() {
    let cluster = RedisCluster::start();
    // Room for every hot key below.
    let service = format!("{NEAR_CACHE_SERVICE}warm_keys = 30");
    let kg = Keygate::start_with(&cluster_config(&cluster, &service));
    kg.wait_ready();
    for master in cluster.masters() {
        wait_tracking(master);
    }
    let mut c = login(&kg);
    for i in 0..40 {
        assert_eq!(c.cmd_str(&["SET", &format!("k{i}"), "v"]), "+OK\r\n");
    }
    // Twenty-three hot keys (prime to the hot-key sample's 1 in 8).
    for _ in 0..40 {
        for i in 0..23 {
            assert_eq!(c.cmd_str(&["GET", &format!("k{i}")]), bulk("v"));
        }
    }
    let old = owner(&cluster, "app:k0");
    let owned = (0..23)
        .filter(|i| owner(&cluster, &format!("app:k{i}")).port() == old.port())
        .count() as u64;
    old.cli(&["WAIT", "1", "5000"]);
    let old_id = old.cli(&["CLUSTER", "MYID"]);
    let heir: u16 = old
        .cli(&["CLUSTER", "NODES"])
        .lines()
        .find(|l| l.contains(&format!("slave {old_id}")))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|addr| addr.split(['@', ':']).nth(1))
        .and_then(|port| port.parse().ok())
        .expect("the master has a replica");
    let tracked = |port: u16| {
        cli_at(port, &["INFO", "stats"])
            .lines()
            .find_map(|l| l.strip_prefix("tracking_total_keys:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(tracked(heir), 0, "a replica tracks nothing");
    assert_eq!(cli_at(heir, &["CLUSTER", "FAILOVER"]), "OK");
    let slot = keygate::topology::slot::key_slot(b"app:k0");
    assert!(
        wait_until(Duration::from_secs(20), || cluster.slot_owner(slot).1
            == heir),
        "the replica never took over"
    );
    // Only the warm reads the heir's keys for keygate: no client reads.
    assert!(
        wait_until(Duration::from_secs(30), || tracked(heir) >= owned),
        "the new master never tracked the {owned} warmed keys it serves (it tracks {})",
        tracked(heir)
    );
    let entries = || {
        metric_sample(
            &scrape_metrics(kg.admin_port()),
            "keygate_near_cache_entries",
            &[("service", "app")],
        )
        .unwrap_or(0.0)
    };
    assert!(
        wait_until(Duration::from_secs(10), || entries() >= 23.0),
        "the warmed keys were never kept"
    );
    let gets = cli_at(heir, &["INFO", "commandstats"]);
    assert_eq!(c.cmd_str(&["GET", "k0"]), bulk("v"));
    assert_eq!(
        cli_at(heir, &["INFO", "commandstats"])
            .lines()
            .find(|l| l.starts_with("cmdstat_get:"))
            .map(str::to_owned),
        gets.lines()
            .find(|l| l.starts_with("cmdstat_get:"))
            .map(str::to_owned),
        "the first read after the failover was a hit"
    );
}

/// Reads `cmd` until it is answered without reaching Redis (a hit), each
/// reply checked against `want`; bounded.
fn wait_hit_of(redis: &RedisServer, c: &mut RawConn, cmd: &[&str], want: &str) {
    let name = cmd[0].to_ascii_lowercase();
    let hit = wait_until(Duration::from_secs(10), || {
        let before = redis.calls(&name);
        assert_eq!(c.cmd_str(cmd), want);
        redis.calls(&name) == before
    });
    assert!(hit, "{cmd:?} never became a near-cache hit");
}

/// `commands = ["GET", "HGETALL"]`: HGETALL's reply is kept too (one
/// entry per key, answering only the command that filled it), a RESP3
/// client reads it as a map, and writes through keygate or directly on
/// Redis are read back as for GET. Errors and absent keys are not kept.
#[test]
fn hgetall_is_kept_when_listed() {
    let redis = RedisServer::start();
    let service = format!("{NEAR_CACHE_SERVICE}commands = [\"GET\", \"HGETALL\"]\n");
    let kg = Keygate::start_with(&standalone_config(&redis.addr(), &service));
    kg.wait_ready();
    wait_tracking(&redis);
    let mut c = login(&kg);
    assert_eq!(c.cmd_str(&["HSET", "h", "a", "1", "b", "2"]), ":2\r\n");
    let two = "*4\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n";
    wait_hit_of(&redis, &mut c, &["HGETALL", "h"], two);
    // A RESP3 client is answered from the same entry, as a map.
    let mut r3 = RawConn::connect(kg.port());
    r3.cmd_str(&["HELLO", "3", "AUTH", "app", "pw"]);
    let calls = redis.calls("hgetall");
    assert_eq!(
        r3.cmd_str(&["HGETALL", "h"]),
        "%2\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n"
    );
    assert_eq!(redis.calls("hgetall"), calls, "a hit");
    // A write through keygate is read back at once.
    assert_eq!(c.cmd_str(&["HSET", "h", "c", "3"]), ":1\r\n");
    let three = "*6\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n$1\r\nc\r\n$1\r\n3\r\n";
    assert_eq!(c.cmd_str(&["HGETALL", "h"]), three);
    wait_hit_of(&redis, &mut c, &["HGETALL", "h"], three);
    // A direct write on Redis reaches keygate as an invalidation.
    redis.cli(&["HDEL", "app:h", "c"]);
    assert!(
        wait_until(Duration::from_secs(10), || c.cmd_str(&["HGETALL", "h"])
            == two),
        "the direct write was never read"
    );
    // An absent key's empty reply is not kept (its PTTL says -2), and
    // an entry answers only the command that filled it.
    let calls = redis.calls("hgetall");
    for _ in 0..3 {
        assert_eq!(c.cmd_str(&["HGETALL", "none"]), "*0\r\n");
    }
    assert_eq!(redis.calls("hgetall"), calls + 3);
    // GET of a hash is Redis's error, never kept.
    let gets = redis.calls("get");
    for _ in 0..3 {
        assert!(c.cmd_str(&["GET", "h"]).starts_with("-WRONGTYPE"));
    }
    assert_eq!(redis.calls("get"), gets + 3);
}

/// `commands = ["HGET"]`: each field read is kept in its key's entry and
/// answered alone; a write of any field through keygate, or directly on
/// Redis, takes the key's fields with it. A field the hash lacks (nil),
/// and HGET of another type (Redis's error), are not kept.
#[test]
fn hget_is_kept_per_field_when_listed() {
    let redis = RedisServer::start();
    let service = format!("{NEAR_CACHE_SERVICE}commands = [\"HGET\"]\n");
    let kg = Keygate::start_with(&standalone_config(&redis.addr(), &service));
    kg.wait_ready();
    wait_tracking(&redis);
    let mut c = login(&kg);
    assert_eq!(c.cmd_str(&["HSET", "h", "a", "1", "b", "22"]), ":2\r\n");
    wait_hit_of(&redis, &mut c, &["HGET", "h", "a"], "$1\r\n1\r\n");
    wait_hit_of(&redis, &mut c, &["HGET", "h", "b"], "$2\r\n22\r\n");
    // Both fields answer from one entry, each with its own value.
    let calls = redis.calls("hget");
    assert_eq!(c.cmd_str(&["HGET", "h", "a"]), "$1\r\n1\r\n");
    assert_eq!(c.cmd_str(&["HGET", "h", "b"]), "$2\r\n22\r\n");
    assert_eq!(redis.calls("hget"), calls, "both fields were hits");
    // A write of another field through keygate is read back at once.
    assert_eq!(c.cmd_str(&["HSET", "h", "b", "3"]), ":0\r\n");
    assert_eq!(c.cmd_str(&["HGET", "h", "b"]), "$1\r\n3\r\n");
    wait_hit_of(&redis, &mut c, &["HGET", "h", "a"], "$1\r\n1\r\n");
    // A direct write on Redis reaches keygate as an invalidation of the key.
    redis.cli(&["HSET", "app:h", "a", "4"]);
    assert!(
        wait_until(Duration::from_secs(10), || c.cmd_str(&["HGET", "h", "a"])
            == "$1\r\n4\r\n"),
        "the direct write was never read"
    );
    // Nil for a missing field, and another type's error, go to Redis each time.
    let calls = redis.calls("hget");
    for _ in 0..3 {
        assert_eq!(c.cmd_str(&["HGET", "h", "none"]), "$-1\r\n");
    }
    assert_eq!(redis.calls("hget"), calls + 3);
    c.cmd_str(&["SET", "s", "v"]);
    let calls = redis.calls("hget");
    for _ in 0..3 {
        assert!(c.cmd_str(&["HGET", "s", "a"]).starts_with("-WRONGTYPE"));
    }
    assert_eq!(redis.calls("hget"), calls + 3);
}

/// `commands = ["GET", "MGET"]`: an MGET whose keys GET's entries all
/// hold is answered from them, in its keys' order; one key missing sends
/// it to Redis as it is; a write is read back at once.
#[test]
fn mget_is_answered_when_every_key_is_kept() {
    let redis = RedisServer::start();
    let service = format!("{NEAR_CACHE_SERVICE}commands = [\"GET\", \"MGET\"]\n");
    let kg = Keygate::start_with(&standalone_config(&redis.addr(), &service));
    kg.wait_ready();
    wait_tracking(&redis);
    let mut c = login(&kg);
    c.cmd_str(&["SET", "a", "1"]);
    c.cmd_str(&["SET", "b", "22"]);
    wait_hit(&redis, &mut c, "a", "1");
    wait_hit(&redis, &mut c, "b", "22");
    let calls = redis.calls("mget");
    assert_eq!(
        c.cmd_str(&["MGET", "b", "a", "b"]),
        "*3\r\n$2\r\n22\r\n$1\r\n1\r\n$2\r\n22\r\n"
    );
    assert_eq!(redis.calls("mget"), calls, "answered from memory");
    assert_eq!(
        c.cmd_str(&["MGET", "a", "nope"]),
        "*2\r\n$1\r\n1\r\n$-1\r\n"
    );
    assert_eq!(redis.calls("mget"), calls + 1, "a key not kept: sent");
    c.cmd_str(&["SET", "a", "3"]);
    assert_eq!(
        c.cmd_str(&["MGET", "a", "b"]),
        "*2\r\n$1\r\n3\r\n$2\r\n22\r\n"
    );
}
