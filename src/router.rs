//! Routing: which backend node serves a request, and whether it needs a
//! connection of its own.
//!
//! Ordinary commands share multiplexed connections. A command that leaves
//! state on its connection (MULTI, WATCH), blocks it (BLPOP, WAIT, XREAD
//! BLOCK) or turns it into a push stream (SUBSCRIBE) needs a dedicated one.

use std::sync::Arc;

use crate::backend::connect::ConnectOptions;
use crate::backend::node::{Node, NodeOptions};
use crate::command::{CommandSpec, Flags};
use crate::config::Config;
use crate::protocol::request::Request;
use crate::tls::connector::BackendTls;

/// The kind of backend connection a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionKind {
    /// A shared multiplexed connection.
    Shared,
    /// A dedicated connection held by the client until its state is clean.
    Dedicated,
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
        "xread" | "xreadgroup" => {
            let blocks = req.args().any(|a| a.eq_ignore_ascii_case(b"BLOCK"));
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

/// The backend topology keygate routes to.
#[derive(Debug)]
pub struct Router {
    master: Arc<Node>,
}

impl Router {
    /// Starts connections to the configured standalone backend.
    pub fn start(config: &Config) -> Router {
        let b = &config.backend;
        let addr = b
            .address
            .clone()
            .unwrap_or_else(|| "127.0.0.1:6379".to_string());
        let opts = NodeOptions {
            connect: ConnectOptions {
                addr,
                username: b.username.clone(),
                password: b.resolved_password(),
                database: b.database,
                protocol: Default::default(),
                connect_timeout: b.connect_timeout,
                tls: b
                    .tls
                    .as_ref()
                    .map(|tls| Arc::new(BackendTls::from_config_or_refusing(tls))),
            },
            connections: b.connections,
            dedicated_max: b.dedicated_max,
            command_timeout: b.command_timeout,
        };
        Router {
            master: Node::start(opts),
        }
    }

    /// The node that takes writes (and, for now, every read).
    pub fn master(&self) -> &Arc<Node> {
        &self.master
    }
}
