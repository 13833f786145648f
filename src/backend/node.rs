//! One Redis node: its multiplexed connections and its dedicated pool, for
//! each protocol version, and the health the connection tasks report.
//!
//! A multiplexed connection carries one database: those of the configured
//! database start with the node; those of another are opened the first
//! time a client of that database needs one, at most `connections` per
//! database and protocol, and kept.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;

use super::connect::ConnectOptions;
use super::dedicated::{DedicatedLease, DedicatedManager, DedicatedPool};
use super::health::NodeHealth;
use super::invalidation;
use super::mux::{MuxHandle, MuxOptions};
use super::BackendError;
use crate::near_cache::tracking::NodeTracking;
use crate::near_cache::NearCaches;
use crate::protocol::request::Request;
use crate::protocol::Protocol;

/// Settings shared by every connection to a node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// How to dial and authenticate connections to the node.
    pub connect: ConnectOptions,
    /// Multiplexed connections per protocol version.
    pub connections: usize,
    /// Writes each multiplexed connection keeps awaiting replies (0: no limit).
    pub writes_in_flight: usize,
    /// Upper bound of the node's dedicated-connection pool.
    pub dedicated_max: u32,
    /// A shared connection whose oldest request waits longer is replaced.
    pub command_timeout: Duration,
    /// Every service's near cache, when any is enabled: the node then keeps
    /// an invalidation connection, and its RESP2 multiplexed connections of
    /// the configured database read for the caches.
    pub near_caches: Option<Arc<NearCaches>>,
    /// The node's index among its topology's nodes: its `node` label in
    /// metrics (see [`crate::topology::Topology::node_addrs`]).
    pub label: u16,
}

/// Per-protocol connections of a node.
#[derive(Debug)]
struct ProtocolSide {
    /// Connections of the configured database.
    mux: Vec<MuxHandle>,
    /// Connections of other databases, by database and slot, opened lazily.
    // A std Mutex is right here: the critical section is a lookup and a
    // clone (or a spawn), never an await, and only clients of another
    // database take it.
    other: Mutex<HashMap<(u32, usize), MuxHandle>>,
    /// How to start one of `other` (the database aside).
    options: MuxOptions,
    /// Connections of the configured database that send `READONLY` at
    /// connect, for reads of a cluster replica; started on first use.
    reads: OnceLock<Vec<MuxHandle>>,
    dedicated: DedicatedPool,
}

/// One Redis node as keygate sees it.
#[derive(Debug)]
pub struct Node {
    addr: String,
    /// See [`NodeOptions::label`].
    label: u16,
    health: Arc<NodeHealth>,
    /// The near caches' tracking of this node, when any service has one.
    tracking: Option<Arc<NodeTracking>>,
    resp2: ProtocolSide,
    resp3: ProtocolSide,
}

impl Node {
    /// Starts the node's multiplexed connections; dedicated ones are dialed on demand.
    pub fn start(opts: NodeOptions) -> Arc<Node> {
        let health = Arc::new(NodeHealth::default());
        let tracking = opts.near_caches.clone().map(|caches| {
            let tracking = NodeTracking::new(caches);
            invalidation::spawn(opts.connect.clone(), tracking.clone());
            tracking
        });
        let side = |protocol: Protocol| {
            let connect = ConnectOptions {
                protocol,
                ..opts.connect.clone()
            };
            let options = MuxOptions {
                connect: connect.clone(),
                command_timeout: opts.command_timeout,
                queue_depth: 1024,
                writes_in_flight: opts.writes_in_flight,
                tracking: None,
            };
            // RESP3 connections track too: Redis tells a RESP3 one that
            // its redirect is gone with a push, which may come in the middle
            // of its replies, and the reader steps over pushes.
            let tracked = MuxOptions {
                tracking: tracking.clone(),
                ..options.clone()
            };
            let mux = (0..opts.connections.max(1))
                .map(|_| MuxHandle::spawn(tracked.clone(), health.clone()))
                .collect();
            let dedicated = bb8::Pool::builder()
                .max_size(opts.dedicated_max.max(1))
                .min_idle(None)
                .connection_timeout(opts.connect.connect_timeout)
                .idle_timeout(Some(Duration::from_secs(300)))
                .build_unchecked(DedicatedManager { opts: connect });
            ProtocolSide {
                mux,
                other: Mutex::new(HashMap::new()),
                options,
                reads: OnceLock::new(),
                dedicated,
            }
        };
        Arc::new(Node {
            addr: opts.connect.addr.clone(),
            label: opts.label,
            resp2: side(Protocol::Resp2),
            resp3: side(Protocol::Resp3),
            health,
            tracking,
        })
    }

    /// `host:port` of the node.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The node's `node` label index in metrics ([`NodeOptions::label`]).
    pub fn label(&self) -> u16 {
        self.label
    }

    /// Whether the node's invalidation connection is subscribed, so reads
    /// written now can fill the near caches.
    pub fn tracking_up(&self) -> bool {
        self.tracking
            .as_ref()
            .is_some_and(|t| t.redirect().is_some())
    }

    /// The node's connection health.
    pub fn health(&self) -> &NodeHealth {
        &self.health
    }

    fn side(&self, protocol: Protocol) -> &ProtocolSide {
        match protocol {
            Protocol::Resp2 => &self.resp2,
            Protocol::Resp3 => &self.resp3,
        }
    }

    /// The multiplexed connection a client uses; a client sticks to one so
    /// its requests to this node stay in one FIFO.
    pub fn mux(&self, protocol: Protocol, client_id: u64) -> &MuxHandle {
        let mux = &self.side(protocol).mux;
        &mux[(client_id as usize) % mux.len()]
    }

    /// The multiplexed connection a client of database `db` uses: the
    /// same slot as [`Node::mux`], on a connection of that database.
    pub fn mux_in(&self, protocol: Protocol, client_id: u64, db: u32) -> Cow<'_, MuxHandle> {
        let side = self.side(protocol);
        if db == side.options.connect.database {
            return Cow::Borrowed(self.mux(protocol, client_id));
        }
        let slot = (client_id as usize) % side.mux.len();
        let mut other = match side.other.lock() {
            Ok(other) => other,
            Err(poisoned) => poisoned.into_inner(),
        };
        let handle = other.entry((db, slot)).or_insert_with(|| {
            let mut options = side.options.clone();
            options.connect.database = db;
            MuxHandle::spawn(options, self.health.clone())
        });
        Cow::Owned(handle.clone())
    }

    /// The multiplexed connection a client's reads of this node as a
    /// cluster replica go on: like [`Node::mux`], but `READONLY` was sent
    /// when it connected (see [`ConnectOptions::readonly`]); the node's
    /// first such read starts them. Reads in another database take
    /// [`Node::mux_in`]: the replica redirects them to its master.
    pub fn mux_reads(&self, protocol: Protocol, client_id: u64, db: u32) -> Cow<'_, MuxHandle> {
        let side = self.side(protocol);
        if db != side.options.connect.database {
            return self.mux_in(protocol, client_id, db);
        }
        let reads = side.reads.get_or_init(|| {
            let mut options = side.options.clone();
            options.connect.readonly = true;
            (0..side.mux.len())
                .map(|_| MuxHandle::spawn(options.clone(), self.health.clone()))
                .collect()
        });
        Cow::Borrowed(&reads[(client_id as usize) % reads.len()])
    }

    /// Batches queued for or in flight on the node's multiplexed connections
    /// (those of other databases count once written: their queues are not
    /// looked at, which would take a lock on every replica pick).
    pub fn pending(&self) -> usize {
        let queued: usize = self
            .resp2
            .mux
            .iter()
            .chain(self.resp3.mux.iter())
            .map(MuxHandle::queued)
            .sum();
        queued + self.health.in_flight.load(Ordering::Relaxed)
    }

    /// Sends one command past a busy script on a connection of its own
    /// ([`super::urgent`]) speaking `protocol`, within the command timeout.
    pub async fn urgent(&self, req: &Request, protocol: Protocol) -> Result<Bytes, BackendError> {
        let options = &self.side(protocol).options;
        super::urgent::exchange(&options.connect, req, options.command_timeout).await
    }

    /// Leases a dedicated connection.
    pub async fn lease(&self, protocol: Protocol) -> Result<DedicatedLease, BackendError> {
        self.side(protocol)
            .dedicated
            .get_owned()
            .await
            .map_err(|e| match e {
                bb8::RunError::User(e) => e,
                bb8::RunError::TimedOut => BackendError::PoolExhausted {
                    addr: self.addr.clone(),
                    reason: "timed out waiting for a free connection".into(),
                },
            })
    }
}
