//! A local Redis Cluster for tests: six `redis-server --cluster-enabled yes`
//! processes (three masters, three replicas) joined by `redis-cli --cluster
//! create`.
//!
//! Invariants: every node is a [`RedisServer`] (free loopback port, its own
//! temp dir, killed by pid on drop), with its cluster bus on a second free
//! port (`--cluster-port`), since a free port plus 10000 may pass 65535;
//! [`RedisCluster::start`] returns only once every node says
//! `cluster_state:ok`, knows all six nodes and sees the three replicas.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::{free_port, http_get, info_field, wait_until, Keygate, RedisServer};

/// Masters in the test cluster; each has one replica.
pub const CLUSTER_MASTERS: usize = 3;

/// How long the cluster gets to form.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// A running six-node cluster.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts six nodes, creates the cluster (three masters, one replica
    /// each) and waits until every node reports it healthy.
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..CLUSTER_MASTERS * 2)
            .map(|_| {
                let bus = free_port().to_string();
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    &bus,
                    "--cluster-node-timeout",
                    "2000",
                    // A failed master's slots alone stop being served
                    // until its replica takes over, as in production
                    // setups that keep the rest of the cluster up.
                    "--cluster-require-full-coverage",
                    "no",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(RedisServer::addr).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_healthy();
        cluster
    }

    /// Waits until every node says `cluster_state:ok`, knows every node
    /// and sees every replica attached.
    pub fn wait_healthy(&self) {
        let total = self.nodes.len().to_string();
        let healthy = wait_until(FORM_TIMEOUT, || {
            self.nodes.iter().all(|node| {
                let info = node.cli(&["CLUSTER", "INFO"]);
                let replicas = node
                    .cli(&["CLUSTER", "NODES"])
                    .lines()
                    .filter(|l| l.split(' ').nth(2).is_some_and(|f| f.contains("slave")))
                    .count();
                info_field(&info, "cluster_state").as_deref() == Some("ok")
                    && info_field(&info, "cluster_known_nodes").as_deref() == Some(&total)
                    && replicas == CLUSTER_MASTERS
            })
        });
        assert!(
            healthy,
            "the cluster did not reach cluster_state:ok on every node within {FORM_TIMEOUT:?}"
        );
    }

    /// Every node, masters and replicas, in start order.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Every node's `127.0.0.1:PORT`, to use as seeds.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::addr).collect()
    }

    /// Kills the node on `port` (SIGKILL).
    pub fn kill_node(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .expect("a node on that port");
        node.kill();
    }

    /// The nodes that are masters now (by `ROLE`).
    pub fn masters(&self) -> Vec<&RedisServer> {
        self.nodes
            .iter()
            .filter(|node| node.cli(&["ROLE"]).starts_with("master"))
            .collect()
    }

    /// A master other than the one on `port`, and its node id.
    pub fn other_master(&self, port: u16) -> (&RedisServer, String) {
        let master = self
            .masters()
            .into_iter()
            .find(|m| m.port() != port)
            .expect("another master");
        (master, master.cli(&["CLUSTER", "MYID"]))
    }

    /// The node serving `slot` as master now (by `CLUSTER NODES` on any
    /// master): its node id and port.
    pub fn slot_owner(&self, slot: u16) -> (String, u16) {
        let nodes = self.nodes[0].cli(&["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.len() < 9 || !fields[2].contains("master") {
                continue;
            }
            let owns = fields[8..].iter().any(|range| {
                if range.starts_with('[') {
                    return false;
                }
                let (from, to) = range.split_once('-').unwrap_or((range, range));
                let (from, to): (u16, u16) = (from.parse().unwrap(), to.parse().unwrap());
                (from..=to).contains(&slot)
            });
            if owns {
                let port = fields[1]
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .expect("node address");
                return (fields[0].to_string(), port);
            }
        }
        panic!("no master serves slot {slot}:\n{nodes}");
    }
}

/// A config for keygate in front of `cluster` (every node a seed), its
/// map read again every 500 ms; `extra` is appended (services, ...).
pub fn cluster_config(cluster: &RedisCluster, extra: &str) -> String {
    let seeds: Vec<String> = cluster.addrs().iter().map(|a| format!("{a:?}")).collect();
    format!(
        r#"
[proxy]
listen = "127.0.0.1:0"

[backend]
cluster = [{}]
cluster_refresh = "500ms"
connect_timeout = "1s"
command_timeout = "5s"

{extra}
"#,
        seeds.join(", ")
    )
}

/// Moves `slot`, which holds no keys, from `source` to `target` (node id
/// `target_id`) as a resharding does (importing and migrating first, so
/// the target's config epoch is bumped), telling every master.
pub fn move_empty_slot(
    cluster: &RedisCluster,
    slot: u16,
    source: &RedisServer,
    target: &RedisServer,
    target_id: &str,
) {
    let (source_id, _) = cluster.slot_owner(slot);
    let slot = slot.to_string();
    assert_eq!(
        target.cli(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &source_id]),
        "OK"
    );
    assert_eq!(
        source.cli(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", target_id]),
        "OK"
    );
    give_slot(cluster, &slot, source, target, target_id);
}

/// Ends a slot's move from `source` to `target` (node id `target_id`):
/// both, then every master, are told the slot is the target's.
pub fn give_slot(
    cluster: &RedisCluster,
    slot: &str,
    source: &RedisServer,
    target: &RedisServer,
    target_id: &str,
) {
    for node in [target, source] {
        assert_eq!(
            node.cli(&["CLUSTER", "SETSLOT", slot, "NODE", target_id]),
            "OK"
        );
    }
    for master in cluster.masters() {
        master.cli(&["CLUSTER", "SETSLOT", slot, "NODE", target_id]);
    }
}

/// keygate's `/health` backend section.
pub fn backend_health(kg: &Keygate) -> serde_json::Value {
    health(kg)["backend"].clone()
}

/// keygate's `/health`.
pub fn health(kg: &Keygate) -> serde_json::Value {
    let response = http_get(kg.admin_port(), "/health");
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).expect("health JSON")
}

/// The `keygate_backend_duration_seconds_count` samples of `service`'s
/// `command`: each one's `node` label (if any) and value.
pub fn backend_counts_by_node(
    metrics: &str,
    service: &str,
    command: &str,
) -> Vec<(Option<String>, f64)> {
    let wanted = format!("service=\"{service}\",command=\"{command}\",");
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("keygate_backend_duration_seconds_count{"))
        .filter(|l| l.starts_with(&wanted))
        .map(|l| {
            let (labels, value) = l.rsplit_once(' ').expect("a sample");
            let node = labels
                .split_once("node=\"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .map(|(node, _)| node.to_string());
            (node, value.parse().expect("a number"))
        })
        .collect()
}
