//! keygate: a Redis-protocol proxy that confines each service to its own key
//! namespace, governs TTLs, follows Sentinel and measures every command.
//!
//! [`proxy`] builds keygate once from its config (TLS, metrics, services,
//! backend, client settings) and hands each layer below what it uses.
//!
//! A command travels through keygate in one direction, one module per stage:
//!
//! - [`server`] accepts client connections and owns shutdown.
//! - [`client`] runs one client connection: reads bytes, answers what keygate
//!   answers itself, and writes replies back in request order.
//! - [`protocol`] frames bytes: the request scanner turns client bytes into
//!   [`protocol::request::Request`]s, the reply scanner delimits backend replies.
//! - [`command`] is the command table: arity, flags and where the keys are.
//! - [`policy`] applies per-service rules (access, databases, namespace,
//!   TTL) to a request in one call that returns a typed decision (forward
//!   with a reply plan, a keyspace procedure, or a refusal), and rewrites
//!   the reply by that plan on the way back.
//! - [`near_cache`] answers a service's hot reads from keygate's memory
//!   (after the policy's decision, before routing), kept coherent by
//!   Redis's client-side caching invalidations.
//! - [`router`] picks the backend node and connection kind for a request
//!   (on a cluster backend, the master of its keys' slot, or one of its
//!   shard's replicas for a replica-reading service's reads).
//! - [`topology`] knows the master and replicas, from Sentinel or config,
//!   or a Redis Cluster's slot map.
//! - [`backend`] owns connections to Redis: multiplexed pipelined ones for
//!   ordinary commands and a pool of dedicated ones for MULTI, blocking and
//!   pub/sub.
//! - [`config`] reads and validates the TOML configuration.
//! - [`metrics`] records latency histograms and counters without locks on the data path.
//! - [`tls`] loads certificates and runs TLS handshakes on both sides.
//! - [`admin`] serves health and metrics over HTTP, apart from the data path.
//! - [`health`] is the readiness latch and start time that [`proxy`] keeps in
//!   step with the backend and the admin listener and the client side read.
//! - [`hotkeys`] ranks each service's most-read keys from a sample of its
//!   reads, for `KEYGATE HOTKEYS` and the admin listener's `/hotkeys`.
//! - [`reload`] re-reads the config file and swaps the services in force.

// The modules that handle client bytes may not panic on them: no `unwrap`,
// `expect` or unchecked indexing outside tests (SECURITY.md, "No panic from
// network input"). backend, metrics, config, server and admin are not under
// the lint yet; their few such uses are not reachable from network input
// (a mux index modulo a never-empty pool, a handshake index below its
// length, constant histogram bounds, a just-found series index).

pub mod admin;
pub mod backend;
#[cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]
pub mod client;
#[cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]
pub mod command;
pub mod config;
pub mod health;
#[cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]
pub mod hotkeys;
pub mod metrics;
pub mod near_cache;
#[cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]
pub mod policy;
#[cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]
pub mod protocol;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod server;
pub mod tls;
pub mod topology;
