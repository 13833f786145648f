//! Routing: which backend node serves a request, and whether it needs a
//! connection of its own.
//!
//! Ordinary commands share multiplexed connections. A command that leaves
//! state on its connection (MULTI, WATCH), blocks it (BLPOP, WAIT, XREAD
//! BLOCK) or turns it into a push stream (SUBSCRIBE) needs a dedicated one.

use std::sync::Arc;

use crate::backend::connect::ConnectOptions;
use crate::backend::credential::Credential;
use crate::backend::node::{Node, NodeOptions};
use crate::command::keyword::is_keyword;
use crate::command::{CommandSpec, Flags};
use crate::config::{Config, ReadFrom};
use crate::near_cache::NearCaches;
use crate::protocol::request::Request;
use crate::protocol::Protocol;
use crate::tls::connector::BackendTls;
use crate::topology::cluster::{self, Cluster};
use crate::topology::monitor::{self, MonitorSettings};
use crate::topology::{RouteError, Topology};

/// The kind of backend connection a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionKind {
    /// A shared multiplexed connection.
    Shared,
    /// A dedicated connection held by the client until its state is clean.
    Dedicated,
}

/// Which kind of node a request was routed to (what its metrics are labelled with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// The master.
    Master,
    /// A replica.
    Replica,
}

/// What a command does to the state of a dedicated connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEffect {
    /// Nothing lasting.
    None,
    /// MULTI opens a transaction.
    BeginTransaction,
    /// EXEC or DISCARD ends the transaction and forgets watched keys.
    EndTransaction,
    /// WATCH watches keys.
    Watch,
    /// UNWATCH forgets watched keys.
    Unwatch,
    /// SUBSCRIBE and friends: the connection carries pushes from now on.
    Subscribe,
    /// A command that may block until its timeout.
    Block,
    /// MONITOR: the connection carries monitor lines from now on.
    Monitor,
    /// CLIENT TRACKING ON: the connection holds the client's tracking state.
    Track,
}

/// Classifies a command by what it does to its connection.
pub fn connection_effect(spec: &CommandSpec, req: &Request) -> ConnectionEffect {
    match spec.name {
        "multi" => ConnectionEffect::BeginTransaction,
        "exec" | "discard" => ConnectionEffect::EndTransaction,
        "watch" => ConnectionEffect::Watch,
        "unwatch" => ConnectionEffect::Unwatch,
        "subscribe" | "psubscribe" | "ssubscribe" | "unsubscribe" | "punsubscribe"
        | "sunsubscribe" => ConnectionEffect::Subscribe,
        "wait" => ConnectionEffect::Block,
        "monitor" => ConnectionEffect::Monitor,
        "client|tracking" if req.get(2).is_some_and(|m| is_keyword(m, b"on")) => {
            ConnectionEffect::Track
        }
        "xread" | "xreadgroup" => {
            // Any argument Redis could read as BLOCK: a request whose
            // options do not parse is refused before it is sent anyway.
            let blocks = req.args().skip(1).any(|a| is_keyword(a, b"block"));
            if blocks {
                ConnectionEffect::Block
            } else {
                ConnectionEffect::None
            }
        }
        _ if spec.flags.contains(Flags::BLOCKING) => ConnectionEffect::Block,
        _ => ConnectionEffect::None,
    }
}

/// The replica for a read by `read_from`'s rule: none for the master;
/// `replica()` or the master for "prefer-replica"; `replica()` or
/// [`RouteError::NoReplica`] (naming `name()`) for "replica".
fn pick_read(
    read_from: ReadFrom,
    replica: impl FnOnce() -> Option<Arc<Node>>,
    name: impl FnOnce() -> String,
) -> Result<Option<Arc<Node>>, RouteError> {
    match read_from {
        ReadFrom::Master => Ok(None),
        ReadFrom::PreferReplica => Ok(replica()),
        ReadFrom::Replica => match replica() {
            Some(node) => Ok(Some(node)),
            None => Err(RouteError::NoReplica { name: name() }),
        },
    }
}

/// The backend topology keygate routes to: a fixed standalone node, or
/// whatever Sentinel says (see [`crate::topology`]).
#[derive(Debug)]
pub struct Router {
    topology: Arc<Topology>,
    /// The data nodes' password ([`Credential`]), shared by every connection.
    credential: Arc<Credential>,
    /// Reads `[backend] password_file` for new values while the router lives.
    password_file: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Router {
    fn drop(&mut self) {
        if let Some(follower) = &self.password_file {
            follower.abort();
        }
    }
}

impl Router {
    /// Starts connections to the configured backend and, with Sentinels,
    /// the topology monitor, over `tls` (`[backend.tls]`, loaded at start).
    /// Must be called inside a tokio runtime.
    /// `near_caches`: every service's near cache, when any is enabled.
    pub fn start(
        config: &Config,
        tls: Option<Arc<BackendTls>>,
        near_caches: Option<Arc<NearCaches>>,
    ) -> Router {
        let b = &config.backend;
        // The template address of a cluster's nodes is replaced per node.
        let addr = b
            .address
            .clone()
            .or_else(|| b.cluster.as_ref().and_then(|seeds| seeds.first().cloned()))
            .unwrap_or_else(|| "127.0.0.1:6379".to_string());
        // One TLS setting for data nodes and Sentinels alike: certificates
        // are verified against `server_name`, never an announced address.
        let credential = Credential::new(b.resolved_password());
        let password_file = b
            .password_file
            .clone()
            .map(|path| credential.follow_file(path));
        let opts = NodeOptions {
            connect: ConnectOptions {
                addr,
                username: b.username.clone(),
                password: credential.clone(),
                database: b.database,
                protocol: Default::default(),
                connect_timeout: b.connect_timeout,
                tls: tls.clone(),
                readonly: false,
            },
            connections: config.backend_connections(),
            writes_in_flight: b.writes_in_flight,
            dedicated_max: b.dedicated_max,
            command_timeout: b.command_timeout,
            near_caches,
            label: 0,
        };
        if let Some(seeds) = &b.cluster {
            let cluster = Cluster::new(
                seeds.clone(),
                b.cluster_refresh,
                b.max_redirects,
                b.max_replica_lag,
            );
            let topology = Topology::cluster(cluster, opts, b.failover_wait);
            cluster::spawn(&topology, b.connect_timeout);
            return Router {
                topology,
                credential,
                password_file,
            };
        }
        let master_name = b.master_name.clone().unwrap_or_default();
        if b.sentinels.is_empty() || master_name.is_empty() {
            return Router {
                topology: Topology::standalone(opts, b.failover_wait),
                credential,
                password_file,
            };
        }
        let topology = Topology::sentinel(
            master_name.clone(),
            opts,
            b.failover_wait,
            b.sentinels.len(),
        );
        let sentinels = b
            .sentinels
            .iter()
            .map(|addr| ConnectOptions {
                addr: addr.clone(),
                username: b.sentinel_username.clone(),
                password: Credential::new(b.resolved_sentinel_password()),
                database: 0,
                protocol: Protocol::Resp2,
                connect_timeout: b.connect_timeout,
                tls: tls.clone(),
                readonly: false,
            })
            .collect();
        monitor::spawn(
            topology.clone(),
            MonitorSettings {
                master_name,
                sentinels,
                timeout: b.connect_timeout,
                failover_wait: b.failover_wait,
                hold: b.failover_hold,
                max_replica_lag: b.max_replica_lag,
            },
        );
        Router {
            topology,
            credential,
            password_file,
        }
    }

    /// The data nodes' password, for its metrics
    /// (`keygate_backend_credential_errors_total`, `..._rotations_total`).
    pub fn credential(&self) -> &Arc<Credential> {
        &self.credential
    }

    /// The confirmed master, if any, without waiting (for INFO and health).
    pub fn master(&self) -> Option<Arc<Node>> {
        self.topology.load().master.clone()
    }

    /// The master for a request, waiting through a failover hold or an
    /// unknown master for at most `failover_wait`.
    pub async fn master_for(&self) -> Result<Arc<Node>, RouteError> {
        self.topology.master().await
    }

    /// The replica a read of a `read_from` service goes to; `Ok(None)` means
    /// the master serves it.
    pub fn node_for_read(&self, read_from: ReadFrom) -> Result<Option<Arc<Node>>, RouteError> {
        pick_read(
            read_from,
            || self.topology.replica(),
            || self.topology.master_name().to_string(),
        )
    }

    /// On a cluster backend, the replica a read of cluster `slot` by a
    /// `read_from` service goes to, by the same rules as
    /// [`Router::node_for_read`] among the replicas of the slot's shard;
    /// `Ok(None)` means the slot's master serves it.
    pub fn replica_for_slot(
        &self,
        read_from: ReadFrom,
        slot: u16,
    ) -> Result<Option<Arc<Node>>, RouteError> {
        let Some(cluster) = self.cluster() else {
            return self.node_for_read(read_from);
        };
        pick_read(
            read_from,
            || cluster.map().replica(slot).cloned(),
            || format!("cluster slot {slot}"),
        )
    }

    /// The node for a batch on a shared connection, and whether it is a
    /// replica: a replica when the service reads from replicas and every
    /// command in it is read-only, otherwise the master.
    pub async fn node_for_batch(
        &self,
        read_from: ReadFrom,
        read_only: bool,
    ) -> Result<(Arc<Node>, Served), RouteError> {
        if read_only {
            if let Some(replica) = self.node_for_read(read_from)? {
                return Ok((replica, Served::Replica));
            }
        }
        Ok((self.master_for().await?, Served::Master))
    }

    /// The cluster side, on a cluster backend: requests with keys go to
    /// the master of their slot.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.topology.cluster_side()
    }

    /// The master serving cluster `slot` (waiting while none does, for at
    /// most `failover_wait`).
    pub async fn master_for_slot(&self, slot: u16) -> Result<Arc<Node>, RouteError> {
        self.topology.slot_master(slot).await
    }

    /// The topology, for health, readiness and metrics.
    pub fn topology(&self) -> &Arc<Topology> {
        &self.topology
    }

    /// Whether `/health/ready` should be green.
    pub fn is_ready(&self) -> bool {
        self.topology.is_ready()
    }
}
