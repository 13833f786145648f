//! What keygate remembers about one client connection between commands.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::config::OnExpiry;
use crate::policy::namespace::Namespace;
use crate::policy::reply::Queued;
use crate::policy::service::Service;
use crate::protocol::Protocol;

/// CLIENT REPLY mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplyMode {
    /// Every command gets its reply.
    #[default]
    On,
    /// No command gets a reply until CLIENT REPLY ON.
    Off,
    /// The next command gets no reply.
    SkipNext,
}

/// Transaction state as the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Transaction {
    /// MULTI was sent and EXEC/DISCARD not yet.
    pub open: bool,
    /// A command was refused while queuing: EXEC must abort, as Redis does.
    pub poisoned: bool,
    /// WATCH was sent and not yet undone by EXEC, DISCARD or UNWATCH.
    pub watching: bool,
}

/// Per-connection state.
#[derive(Debug)]
pub struct Session {
    /// CLIENT ID.
    pub id: u64,
    /// RESP version chosen with HELLO; shapes keygate's own replies.
    pub protocol: Protocol,
    /// The service this client acts as; `None` until AUTH when there is no `default`.
    pub service: Option<Arc<Service>>,
    /// The service registry generation `service` was resolved in; a client
    /// re-resolves it by name when a reload raised the generation.
    pub generation: u64,
    /// CLIENT SETNAME.
    pub name: Option<Vec<u8>>,
    /// CLIENT REPLY state.
    pub reply_mode: ReplyMode,
    /// MULTI/WATCH state as the client sees it.
    pub tx: Transaction,
    /// Inside MULTI: the reply plan of each queued command, applied to its
    /// element of EXEC's reply (the backend answers `+QUEUED` meanwhile).
    pub queued: Vec<Queued>,
    /// The database the client is in (SELECT).
    pub database: u32,
    /// Inside MULTI: the database a queued SELECT switches to at EXEC.
    pub tx_database: Option<u32>,
    /// EXEC was sent for a transaction that SELECTs this database: the
    /// session moves there if EXEC's reply says the transaction ran.
    pub exec_database: Option<u32>,
    /// When the token the client logged in with expires; `None` for a
    /// password login (or none).
    pub token_expiry: Option<Instant>,
}

impl Session {
    /// The current service's namespace, if it has one.
    pub fn namespace(&self) -> Option<&Namespace> {
        self.service.as_ref()?.namespace.as_deref()
    }

    /// A new connection, logged in as the default service if there is one.
    pub fn new(id: u64, default: Option<Arc<Service>>, database: u32) -> Session {
        Session {
            id,
            protocol: Protocol::Resp2,
            service: default,
            generation: 0,
            name: None,
            reply_mode: ReplyMode::On,
            tx: Transaction::default(),
            queued: Vec::new(),
            database,
            tx_database: None,
            exec_database: None,
            token_expiry: None,
        }
    }

    /// Logs the client in as `service`, whose token (if one was used)
    /// expires at `expires`.
    pub fn log_in(&mut self, service: Arc<Service>, expires: Option<SystemTime>) {
        self.service = Some(service);
        self.token_expiry = expires.map(|at| {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            Instant::now() + left
        });
    }

    /// Whether the client logged in with a token that has expired (a
    /// `close` service's connection is closed by then; see [`Self::closes_at`]).
    pub fn token_expired(&self) -> bool {
        self.token_expiry.is_some_and(|at| Instant::now() >= at)
    }

    /// When the connection is to be closed for its token's expiry
    /// (`on_expiry = "close"`).
    pub fn closes_at(&self) -> Option<Instant> {
        let at = self.token_expiry?;
        let token = self.service.as_ref()?.token.as_ref()?;
        (token.on_expiry == OnExpiry::Close).then_some(at)
    }

    /// Whether the next reply is to be dropped (CLIENT REPLY OFF/SKIP), and
    /// advances SKIP.
    pub fn take_suppression(&mut self) -> bool {
        match self.reply_mode {
            ReplyMode::On => false,
            ReplyMode::Off => true,
            ReplyMode::SkipNext => {
                self.reply_mode = ReplyMode::On;
                true
            }
        }
    }
}
