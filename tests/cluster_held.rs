//! keygate in front of a Redis Cluster, for what holds a connection of
//! its own: transactions and blocking commands on the master of their
//! keys' slot, `CROSSSLOT` across slots, and a slot moving under a
//! transaction.

mod common;

use std::time::Duration;

use common::{
    cluster_config, move_empty_slot, wait_until, Keygate, RawConn, RedisCluster, RedisServer, Reply,
};
use keygate::topology::slot::key_slot;

/// A namespaced service beside the plain `default` one.
const TENANT: &str = r#"
[[service]]
name = "default"
prefix = ""
isolation = false

[[service]]
name = "tenant"
password = "pw"
prefix = "t1:"
allow_scripts = true
"#;

fn ok() -> Reply {
    Reply::Status("OK".into())
}

fn queued() -> Reply {
    Reply::Status("QUEUED".into())
}

fn crossslot() -> Reply {
    Reply::Error("CROSSSLOT Keys in request don't hash to the same slot".into())
}

/// A subscription command's confirmation of `name`, with the count.
fn confirmation(kind: &str, name: &str, count: i64) -> Reply {
    Reply::Array(vec![
        Reply::Bulk(kind.into()),
        Reply::Bulk(name.into()),
        Reply::Int(count),
    ])
}

/// The node serving the tenant's `key` as master.
fn owner<'a>(cluster: &'a RedisCluster, key: &str) -> &'a RedisServer {
    let (_, port) = cluster.slot_owner(key_slot(format!("t1:{key}").as_bytes()));
    cluster
        .nodes()
        .iter()
        .find(|n| n.port() == port)
        .expect("owner")
}

#[test]
fn transactions_and_blocking_commands_run_on_their_slots_master() {
    let cluster = RedisCluster::start();
    let kg = Keygate::start_with(&cluster_config(&cluster, TENANT));
    kg.wait_ready();
    let mut conn = RawConn::login(kg.port(), "tenant", "pw");

    // MULTI/EXEC in one slot, the connection leased for its first key.
    assert_eq!(conn.call(&["MULTI"]), ok());
    assert_eq!(conn.call(&["SET", "{u1}:a", "1"]), queued());
    assert_eq!(conn.call(&["INCR", "{u1}:b"]), queued());
    assert_eq!(
        conn.call(&["EXEC"]),
        Reply::Array(vec![ok(), Reply::Int(1)])
    );
    assert_eq!(owner(&cluster, "{u1}:a").cli(&["GET", "t1:{u1}:a"]), "1");
    // Empty transactions never reach a node.
    assert_eq!(conn.call(&["MULTI"]), ok());
    assert_eq!(conn.call(&["EXEC"]), Reply::Array(vec![]));
    assert_eq!(conn.call(&["MULTI"]), ok());
    assert_eq!(conn.call(&["DISCARD"]), ok());
    // WATCH pins the slot; a conflicting write aborts EXEC as in Redis.
    assert_eq!(conn.call(&["WATCH", "{u2}:x"]), ok());
    assert_eq!(conn.call(&["MULTI"]), ok());
    assert_eq!(conn.call(&["SET", "{u2}:x", "1"]), queued());
    assert_eq!(conn.call(&["EXEC"]), Reply::Array(vec![ok()]));
    assert_eq!(conn.call(&["WATCH", "{u2}:x"]), ok());
    owner(&cluster, "{u2}:x").cli(&["SET", "t1:{u2}:x", "other"]);
    assert_eq!(conn.call(&["MULTI"]), ok());
    assert_eq!(conn.call(&["GET", "{u2}:x"]), queued());
    assert_eq!(conn.call(&["EXEC"]), Reply::Nil);

    // Across slots: CROSSSLOT, and the transaction is doomed.
    assert_eq!(conn.call(&["MULTI"]), ok());
    assert_eq!(conn.call(&["SET", "{u1}:a", "2"]), queued());
    assert_eq!(conn.call(&["SET", "{u3}:a", "2"]), crossslot());
    match conn.call(&["EXEC"]) {
        Reply::Error(e) => assert!(e.starts_with("EXECABORT"), "{e}"),
        other => panic!("EXEC answered {other:?}"),
    }
    assert_eq!(owner(&cluster, "{u1}:a").cli(&["GET", "t1:{u1}:a"]), "1");
    assert_eq!(conn.call(&["WATCH", "{u1}:a", "{u3}:a"]), crossslot());
    assert_eq!(conn.call(&["WATCH", "{u1}:a"]), ok());
    assert_eq!(conn.call(&["WATCH", "{u3}:a"]), crossslot());
    assert_eq!(conn.call(&["UNWATCH"]), ok());

    // EVAL in one slot, and across slots.
    let script = "return redis.call('INCR', KEYS[1]) + redis.call('INCR', KEYS[2])";
    assert_eq!(
        conn.call(&["EVAL", script, "2", "{u4}:a", "{u4}:b"]),
        Reply::Int(2)
    );
    assert_eq!(
        conn.call(&["EVAL", script, "2", "{u4}:a", "{u5}:b"]),
        crossslot()
    );

    // Blocking commands block on their slot's master, one after another
    // on slots of different masters.
    let mut pusher = RawConn::login(kg.port(), "tenant", "pw");
    let (q1, q2) = ("{q1}:list", "{q2}:list");
    assert_ne!(
        owner(&cluster, q1).port(),
        owner(&cluster, q2).port(),
        "the queues are on two masters"
    );
    for queue in [q1, q2, q1] {
        let node = owner(&cluster, queue);
        conn.send(&common::resp_command(&["BLPOP", queue, "10"]));
        assert!(
            wait_until(Duration::from_secs(5), || node.blocked_clients() == 1),
            "BLPOP {queue} blocks on its master"
        );
        assert_eq!(pusher.call(&["RPUSH", queue, "x"]), Reply::Int(1));
        assert_eq!(
            conn.read_value(),
            Reply::Array(vec![Reply::Bulk(queue.into()), Reply::Bulk("x".into())])
        );
    }
    assert_eq!(conn.call(&["BLPOP", q1, q2, "1"]), crossslot());
    // Shared commands after held ones.
    assert_eq!(conn.call(&["GET", "{u1}:a"]), Reply::Bulk("1".into()));

    // CLUSTER KEYSLOT answers the slot of the key as the cluster has it.
    for key in ["k", "{u1}:a", "{}x", "a{b"] {
        let expected = owner(&cluster, key).cli(&["CLUSTER", "KEYSLOT", &format!("t1:{key}")]);
        assert_eq!(
            conn.call(&["CLUSTER", "KEYSLOT", key]),
            Reply::Int(expected.parse().unwrap()),
            "{key}"
        );
    }
}

#[test]
fn a_slot_moving_under_a_transaction_aborts_it_without_a_redirect() {
    let cluster = RedisCluster::start();
    let kg = Keygate::start_with(&cluster_config(&cluster, TENANT));
    kg.wait_ready();
    let mut conn = RawConn::login(kg.port(), "tenant", "pw");

    let key = "{mv}:a";
    let slot = key_slot(format!("t1:{key}").as_bytes());
    let source = owner(&cluster, key);
    let (target, target_id) = cluster.other_master(source.port());
    assert_eq!(conn.call(&["MULTI"]), ok());
    assert_eq!(conn.call(&["SET", key, "1"]), queued());
    // The slot (empty: nothing ran yet) moves to another master.
    move_empty_slot(&cluster, slot, source, target, &target_id);
    assert_eq!(
        conn.call(&["SET", "{mv}:b", "1"]),
        Reply::Error("ERR keygate: slot moved during the transaction".into())
    );
    // Redis refuses EXEC itself with a redirect (keygate's error) or, had
    // the queued keys stayed, with EXECABORT: never a half-applied EXEC.
    match conn.call(&["EXEC"]) {
        Reply::Error(e) => assert!(
            e.starts_with("EXECABORT") || e == "ERR keygate: slot moved during the transaction",
            "{e}"
        ),
        other => panic!("EXEC answered {other:?}"),
    }
    // Nothing was applied; the next transaction runs on the new owner.
    assert_eq!(target.cli(&["EXISTS", "t1:{mv}:a"]), "0");
    assert!(wait_until(Duration::from_secs(5), || {
        conn.call(&["MULTI"]);
        conn.call(&["SET", key, "2"]);
        conn.call(&["EXEC"]) == Reply::Array(vec![ok()])
    }));
    assert_eq!(target.cli(&["GET", "t1:{mv}:a"]), "2");
}

#[test]
fn pubsub_reaches_subscribers_on_any_node_and_shard_channels_on_their_slot() {
    let cluster = RedisCluster::start();
    let kg = Keygate::start_with(&cluster_config(&cluster, TENANT));
    kg.wait_ready();
    let mut sub = RawConn::login(kg.port(), "tenant", "pw");
    let mut publisher = RawConn::login(kg.port(), "tenant", "pw");

    // Classic pub/sub: the cluster carries a message to every node.
    assert_eq!(
        sub.call(&["SUBSCRIBE", "news"]),
        confirmation("subscribe", "news", 1)
    );
    for node in cluster.masters() {
        node.cli(&["PUBLISH", "t1:news", "direct"]);
        assert_eq!(
            sub.read_value(),
            Reply::Array(vec![
                Reply::Bulk("message".into()),
                Reply::Bulk("news".into()),
                Reply::Bulk("direct".into())
            ])
        );
    }
    assert_eq!(publisher.call(&["PUBLISH", "news", "m1"]), Reply::Int(1));
    assert_eq!(
        sub.read_value(),
        Reply::Array(vec![
            Reply::Bulk("message".into()),
            Reply::Bulk("news".into()),
            Reply::Bulk("m1".into())
        ])
    );
    assert_eq!(
        sub.call(&["UNSUBSCRIBE"]),
        confirmation("unsubscribe", "news", 0)
    );

    // Shard channels: on the master of the prefixed channel's slot.
    let channel = "{s1}:ch";
    let node = owner(&cluster, channel);
    assert_eq!(
        sub.call(&["SSUBSCRIBE", channel]),
        confirmation("ssubscribe", channel, 1)
    );
    assert_eq!(
        node.cli(&["PUBSUB", "SHARDCHANNELS"]),
        format!("t1:{channel}")
    );
    assert_eq!(publisher.call(&["SPUBLISH", channel, "s1"]), Reply::Int(1));
    assert_eq!(
        sub.read_value(),
        Reply::Array(vec![
            Reply::Bulk("smessage".into()),
            Reply::Bulk(channel.into()),
            Reply::Bulk("s1".into())
        ])
    );
    // Channels of two slots in one SSUBSCRIBE: Redis's CROSSSLOT.
    assert_eq!(sub.call(&["SSUBSCRIBE", "{s1}:a", "{s2}:b"]), crossslot());
}

#[test]
fn a_shard_subscriber_keeps_receiving_across_a_move_of_its_slot() {
    let cluster = RedisCluster::start();
    let kg = Keygate::start_with(&cluster_config(&cluster, TENANT));
    kg.wait_ready();
    let mut sub = RawConn::login(kg.port(), "tenant", "pw");
    let mut publisher = RawConn::login(kg.port(), "tenant", "pw");

    let channel = "{mv}:ch";
    let slot = key_slot(format!("t1:{channel}").as_bytes());
    let source = owner(&cluster, channel);
    let (target, target_id) = cluster.other_master(source.port());
    let smessage = |text: &str| {
        Reply::Array(vec![
            Reply::Bulk("smessage".into()),
            Reply::Bulk(channel.into()),
            Reply::Bulk(text.into()),
        ])
    };
    assert_eq!(
        sub.call(&["SSUBSCRIBE", channel]),
        confirmation("ssubscribe", channel, 1)
    );
    assert_eq!(
        publisher.call(&["SPUBLISH", channel, "before"]),
        Reply::Int(1)
    );
    assert_eq!(sub.read_value(), smessage("before"));

    // The (empty) slot moves: Redis unsubscribes the channel on the source.
    move_empty_slot(&cluster, slot, source, target, &target_id);
    // keygate subscribes again on the target; the client sees no
    // sunsubscribe, only the next message.
    assert!(
        wait_until(Duration::from_secs(5), || target
            .cli(&["PUBSUB", "SHARDCHANNELS"])
            == format!("t1:{channel}")),
        "the subscription follows its slot: source {:?} target {:?} owner {:?}",
        source.cli(&["PUBSUB", "SHARDCHANNELS"]),
        target.cli(&["PUBSUB", "SHARDCHANNELS"]),
        cluster.slot_owner(slot),
    );
    assert_eq!(
        publisher.call(&["SPUBLISH", channel, "after"]),
        Reply::Int(1)
    );
    assert_eq!(sub.read_value(), smessage("after"));
    assert_eq!(
        sub.call(&["SUNSUBSCRIBE"]),
        confirmation("sunsubscribe", channel, 0)
    );
    assert_eq!(sub.call(&["PING"]), Reply::Status("PONG".into()));
}
