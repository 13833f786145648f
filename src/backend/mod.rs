//! The backend side: connections from keygate to Redis nodes.
//!
//! - [`connect`] dials a node and runs the handshake (AUTH, SELECT, HELLO);
//!   [`credential`] is the password it logs in with, which may rotate.
//! - [`mux`] runs the multiplexed, pipelined connections that carry ordinary
//!   commands of many clients, replies matched first in, first out.
//! - [`dedicated`] pools connections a single client holds for MULTI/WATCH,
//!   blocking commands and pub/sub.
//! - [`meter`] counts the reply bytes held for one client as they arrive.
//! - [`node`] groups both kinds for one Redis node; [`health`] is what its
//!   connection tasks report about it.
//! - [`stream`] is the byte stream to a node, plain TCP or TLS.
//! - [`invalidation`] is a node's invalidation connection for the near
//!   cache: Redis's `__redis__:invalidate` messages for what keygate holds.
//! - [`urgent`] sends SCRIPT KILL and FUNCTION KILL past a busy script.

pub mod connect;
pub mod credential;
pub mod dedicated;
pub mod health;
pub mod invalidation;
pub mod meter;
pub mod mux;
pub mod node;
pub mod stream;
pub mod urgent;

/// A failure on the backend side, as the client will be told about it.
///
/// Cloneable because one dead connection fails every request in flight on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The node cannot be reached or refused the handshake.
    #[error("backend {addr} is unavailable: {reason}")]
    Unavailable { addr: String, reason: String },
    /// The connection died with this request in flight; it may or may not have run.
    #[error("backend {addr} connection lost with the request in flight")]
    ConnectionLost { addr: String },
    /// The node did not answer within `command_timeout`.
    #[error("backend {addr} did not answer within {millis} ms")]
    Timeout { addr: String, millis: u128 },
    /// The node sent bytes that are not RESP.
    #[error("backend {addr} sent an invalid reply: {reason}")]
    Protocol { addr: String, reason: String },
    /// The topology has no node for the request (no confirmed master within
    /// `failover_wait`, or no healthy replica for a replica-only service).
    #[error("{reason}")]
    NoRoute { reason: String },
    /// No master serves the request's cluster slot (none did within
    /// `failover_wait`): Redis's own error for it.
    #[error("CLUSTERDOWN Hash slot not served")]
    ClusterDown,
    /// No dedicated connection could be had in time.
    #[error("no dedicated backend connection to {addr} available: {reason}")]
    PoolExhausted { addr: String, reason: String },
}

impl BackendError {
    /// The RESP error line the client gets (without the leading `-`).
    pub fn client_message(&self) -> String {
        match self {
            BackendError::ClusterDown => self.to_string(),
            _ => format!("ERR keygate: {self}"),
        }
    }

    /// True when the request certainly never reached Redis, so a retry is safe.
    pub fn never_sent(&self) -> bool {
        matches!(
            self,
            BackendError::Unavailable { .. }
                | BackendError::PoolExhausted { .. }
                | BackendError::NoRoute { .. }
                | BackendError::ClusterDown
        )
    }
}
