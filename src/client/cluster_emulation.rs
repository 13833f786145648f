//! Cluster emulation (`[proxy] cluster_emulation = true`): keygate answers
//! `CLUSTER SLOTS`, `SHARDS`, `NODES`, `INFO` and `MYID` as a one-node
//! Redis Cluster that owns all 16384 slots at keygate's own address, so a
//! client that insists on cluster mode (redis-py `RedisCluster`, ioredis
//! `Cluster`, `redis-cli -c`) sends everything to keygate alone, whatever
//! backend sits behind it. `READONLY`, `READWRITE` and `ASKING` are
//! accepted and change nothing: there is no other node to read from or be
//! redirected to.
//!
//! The shapes are Redis 7.0.15's (cluster.c: `clusterReplyMultiBulkSlots`,
//! `clusterReplyShards`, `clusterGenNodesDescription`, CLUSTER INFO) with
//! `cluster-preferred-endpoint-type ip`. The announced host stands in the
//! `ip` fields (Redis's `cluster-announce-ip`). When keygate listens with
//! TLS it answers as a Redis with `tls-cluster yes` does: the node's port is
//! the TLS one and the plain port is its `pport`, so a plain client is
//! given the plain port in SLOTS and NODES, a TLS client the TLS port, and
//! SHARDS lists both as `port` and `tls-port`.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

use super::registry::Peer;
use super::ListenPorts;
use crate::config::ProxyConfig;
use crate::protocol::encode;
use crate::protocol::Protocol;

/// Redis Cluster's slot count.
const SLOTS: i64 = 16384;

/// The one node keygate presents, as one client connection sees it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Node {
    /// 40 hex digits, the same for every connection of this configuration.
    id: String,
    /// The announced host (or the address the client connected to).
    host: String,
    /// Redis's `node->port`: the TLS port when keygate listens with TLS.
    port: u16,
    /// Redis's `node->pport`: the plain port beside a TLS one, else 0.
    pport: u16,
    /// Whether keygate listens with TLS (Redis's `tls-cluster yes`).
    tls: bool,
    /// Whether this client came in over TLS.
    client_tls: bool,
}

impl Node {
    /// The node a client is told about: the address it connected to
    /// (keygate's side of its socket), or `announce`, whose port is the
    /// plain listener's (the TLS one's when keygate listens with TLS only).
    /// `bound` are the listeners' ports once serving, else the config's count.
    pub(super) fn for_client(proxy: &ProxyConfig, bound: ListenPorts, peer: &Peer) -> Node {
        let local: Option<SocketAddr> = peer.laddr.parse().ok();
        let client_tls = peer.tls;
        let port_of = |a: &Option<String>| {
            a.as_deref()
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| p.parse::<u16>().ok())
        };
        let mut plain = bound.plain.or_else(|| port_of(&proxy.listen));
        let mut tls_port = bound.tls.or_else(|| port_of(&proxy.listen_tls));
        if let Some(l) = local {
            // The port the client reached is right even for a `:0` listener.
            if client_tls {
                tls_port = Some(l.port());
            } else {
                plain = Some(l.port());
            }
        }
        let announce = proxy
            .announce
            .as_deref()
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)));
        if let Some((_, p)) = announce {
            if plain.is_some() {
                plain = Some(p);
            } else {
                tls_port = Some(p);
            }
        }
        let host = match (announce, local) {
            (Some((h, _)), _) => h.to_string(),
            (None, Some(l)) => l.ip().to_string(),
            (None, None) => proxy
                .listen
                .as_deref()
                .or(proxy.listen_tls.as_deref())
                .and_then(|a| a.rsplit_once(':'))
                .map_or(String::new(), |(h, _)| h.to_string()),
        };
        let (port, pport, tls) = match tls_port {
            Some(t) => (t, plain.unwrap_or(0), true),
            None => (plain.unwrap_or(0), 0, false),
        };
        // The id depends on the configuration only, so every connection
        // (and a restarted keygate) sees the same node.
        let seed = format!(
            "keygate cluster emulation {:?} {:?} {:?}",
            proxy.announce, proxy.listen, proxy.listen_tls
        );
        let digest = Sha256::digest(seed.as_bytes());
        let id: String = digest.iter().take(20).map(|b| format!("{b:02x}")).collect();
        Node {
            id,
            host,
            port,
            pport,
            tls,
            client_tls,
        }
    }

    /// The port a client is told to use in SLOTS and NODES: Redis's
    /// `use_pport` (a plain client of a TLS cluster gets the plain port).
    fn client_port(&self) -> u16 {
        if self.tls && !self.client_tls && self.pport != 0 {
            self.pport
        } else {
            self.port
        }
    }
}

/// Answers a CLUSTER subcommand or a cluster connection flag as the
/// one-node cluster, or `None` for what emulation does not answer (the
/// caller goes on as without emulation: CLUSTER KEYSLOT, and the rest is
/// refused by policy).
pub(super) fn answer(name: &str, node: &Node, protocol: Protocol) -> Option<Bytes> {
    let mut out = BytesMut::new();
    match name {
        "readonly" | "readwrite" | "asking" => encode::simple(&mut out, "OK"),
        "cluster|myid" => encode::bulk(&mut out, node.id.as_bytes()),
        "cluster|slots" => slots(&mut out, node, protocol),
        "cluster|shards" => shards(&mut out, node, protocol),
        "cluster|nodes" => encode::verbatim(&mut out, b"txt", nodes(node).as_bytes(), protocol),
        "cluster|info" => encode::verbatim(&mut out, b"txt", INFO.as_bytes(), protocol),
        _ => return None,
    }
    Some(out.freeze())
}

/// `clusterReplyMultiBulkSlots`: one range, its master, no replicas, and
/// the empty map of further endpoints (ip is the preferred endpoint).
fn slots(out: &mut BytesMut, node: &Node, protocol: Protocol) {
    encode::array_header(out, 1);
    encode::array_header(out, 3);
    encode::integer(out, 0);
    encode::integer(out, SLOTS - 1);
    encode::array_header(out, 4);
    encode::bulk(out, node.host.as_bytes());
    encode::integer(out, i64::from(node.client_port()));
    encode::bulk(out, node.id.as_bytes());
    encode::map_header(out, 0, protocol);
}

/// `clusterReplyShards`: one shard of one master.
fn shards(out: &mut BytesMut, node: &Node, protocol: Protocol) {
    let (plain, tls) = if node.tls {
        (node.pport, node.port)
    } else {
        (node.port, 0)
    };
    encode::array_header(out, 1);
    encode::map_header(out, 2, protocol);
    encode::bulk(out, b"slots");
    encode::array_header(out, 2);
    encode::integer(out, 0);
    encode::integer(out, SLOTS - 1);
    encode::bulk(out, b"nodes");
    encode::array_header(out, 1);
    let fields = 6 + usize::from(plain != 0) + usize::from(tls != 0);
    encode::map_header(out, fields, protocol);
    encode::bulk(out, b"id");
    encode::bulk(out, node.id.as_bytes());
    if plain != 0 {
        encode::bulk(out, b"port");
        encode::integer(out, i64::from(plain));
    }
    if tls != 0 {
        encode::bulk(out, b"tls-port");
        encode::integer(out, i64::from(tls));
    }
    encode::bulk(out, b"ip");
    encode::bulk(out, node.host.as_bytes());
    encode::bulk(out, b"endpoint");
    encode::bulk(out, node.host.as_bytes());
    encode::bulk(out, b"role");
    encode::bulk(out, b"master");
    encode::bulk(out, b"replication-offset");
    encode::integer(out, 0);
    encode::bulk(out, b"health");
    encode::bulk(out, b"online");
}

/// `clusterGenNodeDescription` of the node itself: no cluster bus (cport
/// 0), config epoch 0, every slot.
fn nodes(node: &Node) -> String {
    // Redis writes an IPv6 address bare before `:port`, as here.
    format!(
        "{} {}:{}@0 myself,master - 0 0 0 connected 0-{}\n",
        node.id,
        node.host,
        node.client_port(),
        SLOTS - 1
    )
}

/// CLUSTER INFO of a healthy one-node cluster with no bus traffic.
const INFO: &str = "cluster_state:ok\r\n\
cluster_slots_assigned:16384\r\n\
cluster_slots_ok:16384\r\n\
cluster_slots_pfail:0\r\n\
cluster_slots_fail:0\r\n\
cluster_known_nodes:1\r\n\
cluster_size:1\r\n\
cluster_current_epoch:0\r\n\
cluster_my_epoch:0\r\n\
cluster_stats_messages_sent:0\r\n\
cluster_stats_messages_received:0\r\n\
total_cluster_links_buffer_limit_exceeded:0\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(listen: Option<&str>, tls: Option<&str>, announce: Option<&str>) -> ProxyConfig {
        let mut text = String::from("[proxy]\n");
        if let Some(l) = listen {
            text.push_str(&format!("listen = \"{l}\"\n"));
        }
        if let Some(l) = tls {
            text.push_str(&format!("listen_tls = \"{l}\"\n"));
        }
        text.push_str("cluster_emulation = true\n");
        if let Some(a) = announce {
            text.push_str(&format!("announce = \"{a}\"\n"));
        }
        #[derive(serde::Deserialize)]
        struct File {
            proxy: ProxyConfig,
        }
        toml::from_str::<File>(&text).expect("proxy config").proxy
    }

    /// A client of the plain (or TLS) listener that reached `laddr`.
    fn peer(laddr: &str, tls: bool) -> Peer {
        Peer {
            laddr: laddr.into(),
            tls,
            ..Peer::default()
        }
    }

    fn text(b: &Bytes) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    #[test]
    fn slots_name_the_address_the_client_reached() {
        let p = proxy(Some("0.0.0.0:6380"), None, None);
        let node = Node::for_client(&p, ListenPorts::default(), &peer("10.1.2.3:6380", false));
        assert_eq!(node.id.len(), 40);
        let reply = answer("cluster|slots", &node, Protocol::Resp2).unwrap();
        let want = format!(
            "*1\r\n*3\r\n:0\r\n:16383\r\n*4\r\n$8\r\n10.1.2.3\r\n:6380\r\n$40\r\n{}\r\n*0\r\n",
            node.id
        );
        assert_eq!(text(&reply), want);
        let reply = answer("cluster|slots", &node, Protocol::Resp3).unwrap();
        assert!(text(&reply).ends_with("\r\n%0\r\n"));
        // Same configuration, same id.
        assert_eq!(
            Node::for_client(&p, ListenPorts::default(), &peer("127.0.0.1:6380", false)).id,
            node.id
        );
    }

    #[test]
    fn announce_replaces_host_and_port() {
        let p = proxy(Some("0.0.0.0:6380"), None, Some("keygate.internal:7000"));
        let node = Node::for_client(&p, ListenPorts::default(), &peer("10.1.2.3:6380", false));
        let nodes = answer("cluster|nodes", &node, Protocol::Resp2).unwrap();
        let line = format!(
            "{} keygate.internal:7000@0 myself,master - 0 0 0 connected 0-16383\n",
            node.id
        );
        assert_eq!(text(&nodes), format!("${}\r\n{line}\r\n", line.len()));
        let nodes = answer("cluster|nodes", &node, Protocol::Resp3).unwrap();
        assert!(text(&nodes).starts_with(&format!("={}\r\ntxt:", line.len() + 4)));
    }

    #[test]
    fn tls_ports_as_a_tls_cluster_gives_them() {
        let p = proxy(Some("127.0.0.1:6380"), Some("127.0.0.1:6443"), None);
        let plain = Node::for_client(&p, ListenPorts::default(), &peer("127.0.0.1:6380", false));
        let tls = Node::for_client(&p, ListenPorts::default(), &peer("127.0.0.1:6443", true));
        assert_eq!((plain.client_port(), tls.client_port()), (6380, 6443));
        let shards = text(&answer("cluster|shards", &plain, Protocol::Resp2).unwrap());
        assert!(shards.contains("$4\r\nport\r\n:6380\r\n$8\r\ntls-port\r\n:6443\r\n"));
        assert!(shards.starts_with("*1\r\n*4\r\n$5\r\nslots\r\n*2\r\n:0\r\n:16383\r\n"));
        assert!(shards.contains("*1\r\n*16\r\n$2\r\nid\r\n"));
        let shards = text(&answer("cluster|shards", &tls, Protocol::Resp3).unwrap());
        assert!(shards.starts_with("*1\r\n%2\r\n"));
        assert!(shards.contains("*1\r\n%8\r\n$2\r\nid\r\n"));
        // The bound ports, once serving, over the config's (`:0`).
        let bound = ListenPorts {
            plain: Some(7000),
            tls: Some(7443),
        };
        let node = Node::for_client(&p, bound, &peer("127.0.0.1:7000", false));
        let shards = text(&answer("cluster|shards", &node, Protocol::Resp2).unwrap());
        assert!(shards.contains("$4\r\nport\r\n:7000\r\n$8\r\ntls-port\r\n:7443\r\n"));
        // TLS only: the port is the TLS one, no plain port is listed.
        let only = proxy(None, Some("127.0.0.1:6443"), None);
        let node = Node::for_client(&only, ListenPorts::default(), &peer("127.0.0.1:6443", true));
        let shards = text(&answer("cluster|shards", &node, Protocol::Resp2).unwrap());
        assert!(!shards.contains("$4\r\nport\r\n"));
        assert!(shards.contains("*14\r\n"));
    }

    #[test]
    fn info_myid_and_flags() {
        let p = proxy(Some("127.0.0.1:6380"), None, None);
        let node = Node::for_client(&p, ListenPorts::default(), &peer("127.0.0.1:6380", false));
        let info = text(&answer("cluster|info", &node, Protocol::Resp2).unwrap());
        assert!(info.contains("cluster_state:ok\r\ncluster_slots_assigned:16384\r\n"));
        let id = text(&answer("cluster|myid", &node, Protocol::Resp2).unwrap());
        assert_eq!(id, format!("$40\r\n{}\r\n", node.id));
        for flag in ["readonly", "readwrite", "asking"] {
            assert_eq!(
                answer(flag, &node, Protocol::Resp2).as_deref(),
                Some(&b"+OK\r\n"[..])
            );
        }
        assert_eq!(answer("cluster|keyslot", &node, Protocol::Resp2), None);
    }
}
