//! Dedicated connections: one client holds one for a MULTI/WATCH block, a
//! blocking command or a subscription, leased from a bounded bb8 pool.
//!
//! Invariant: a dedicated connection is clean or closed. The client marks
//! it broken when it leaves state behind (an open transaction, watched keys,
//! subscriptions, a blocked command); bb8 then drops it instead of pooling
//! it. An idle pooled connection that has data or EOF waiting is dirty and
//! is not handed out. Its database is part of its known state: kept in
//! [`DedicatedConn::database`], switched by the next holder if it needs
//! another, and a connection whose database is unknown is closed.

use bytes::BytesMut;

use super::connect::{connect, reauth_request, ConnectOptions, Role};
use super::stream::{BackendStream, IdleProbe};
use super::BackendError;

/// A dialed connection owned by one client at a time.
#[derive(Debug)]
pub struct DedicatedConn {
    /// The connection, plain or TLS; write with `write_all` then `flush`.
    pub stream: BackendStream,
    /// Bytes read but not yet taken as replies.
    pub read_buf: BytesMut,
    /// Set when the connection must not go back to the pool.
    pub broken: bool,
    /// Redis's id of the connection (CLIENT ID at dial; 0 if refused), so
    /// CLIENT UNBLOCK can name it for the client that holds it.
    pub backend_id: i64,
    /// The database it is in, as its holders left it (the handshake selects
    /// the configured one); `None` when unknown, which closes it on return.
    pub database: Option<u32>,
    /// The password generation it is logged in with ([`super::credential`]).
    logged_in: u64,
}

/// bb8 manager that dials and checks dedicated connections.
#[derive(Debug, Clone)]
pub struct DedicatedManager {
    /// How to dial and authenticate a new dedicated connection.
    pub opts: ConnectOptions,
}

impl bb8::ManageConnection for DedicatedManager {
    type Connection = DedicatedConn;
    type Error = BackendError;

    async fn connect(&self) -> Result<DedicatedConn, BackendError> {
        let logged_in = self.opts.password.generation();
        let mut stream = connect(&self.opts, Role::Dedicated).await?;
        let backend_id = tokio::time::timeout(
            self.opts.connect_timeout,
            super::connect::client_id(&mut stream),
        )
        .await
        .map_err(|_| self.dirty("CLIENT ID timed out"))?
        .map_err(|e| self.dirty(&e.to_string()))?;
        Ok(DedicatedConn {
            stream,
            read_buf: BytesMut::with_capacity(16 * 1024),
            broken: false,
            backend_id,
            database: Some(self.opts.database),
            logged_in,
        })
    }

    async fn is_valid(&self, conn: &mut DedicatedConn) -> Result<(), BackendError> {
        // Nothing may be waiting on an idle connection: data means someone
        // left state behind, EOF means the node closed it.
        match conn.stream.probe_idle() {
            IdleProbe::Idle if conn.read_buf.is_empty() => self.log_in_again(conn).await,
            IdleProbe::Idle => Err(self.dirty("unread reply bytes")),
            IdleProbe::Closed => Err(self.dirty("closed by the node")),
            IdleProbe::Data => Err(self.dirty("unexpected data while idle")),
            IdleProbe::Failed(e) => Err(self.dirty(&e)),
        }
    }

    fn has_broken(&self, conn: &mut DedicatedConn) -> bool {
        conn.broken || conn.database.is_none()
    }
}

impl DedicatedManager {
    /// Logs an idle connection in with the password now if it rotated
    /// since, before it is handed out (a refused AUTH closes it: a new one
    /// is dialed with the new password).
    async fn log_in_again(&self, conn: &mut DedicatedConn) -> Result<(), BackendError> {
        let generation = self.opts.password.generation();
        if conn.logged_in == generation {
            return Ok(());
        }
        let Some(auth) = reauth_request(&self.opts) else {
            conn.logged_in = generation;
            return Ok(());
        };
        let exchange = conn.stream.round_trip(auth.frame(), &mut conn.read_buf);
        match tokio::time::timeout(self.opts.connect_timeout, exchange).await {
            Ok(Ok(reply)) if reply.as_ref() == b"+OK\r\n" => {
                conn.logged_in = generation;
                Ok(())
            }
            Ok(Ok(_)) => Err(self.dirty("AUTH with the new password refused")),
            Ok(Err(e)) => Err(self.dirty(&e.to_string())),
            Err(_) => Err(self.dirty("AUTH with the new password timed out")),
        }
    }

    fn dirty(&self, why: &str) -> BackendError {
        BackendError::ConnectionLost {
            addr: format!("{} ({why})", self.opts.addr),
        }
    }
}

/// A pool of dedicated connections to one node for one protocol.
pub type DedicatedPool = bb8::Pool<DedicatedManager>;

/// A leased dedicated connection; dropping it returns it (or closes it if broken).
pub type DedicatedLease = bb8::PooledConnection<'static, DedicatedManager>;
