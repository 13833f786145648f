//! Dialing a Redis node: TCP connect, the TLS handshake when `tls` is set,
//! then AUTH, SELECT, HELLO, READONLY (a cluster replica's read
//! connections) and CLIENT SETNAME pipelined in one round trip.
//! The name tells the connection's role, so the backend's `CLIENT LIST`
//! shows which connections many clients share (a shared one blocked by one
//! client stalls everybody; a dedicated one may block).
//!
//! A connection handed out by [`connect`] has completed its handshake, so the
//! first bytes read from it belong to the first request written.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::credential::Credential;
use super::stream::BackendStream;
use super::BackendError;
use crate::protocol::reply::{ReplyKind, ReplyScanner, Value};
use crate::protocol::request::Request;
use crate::protocol::Protocol;
use crate::tls::connector::BackendTls;

/// Everything needed to open an authenticated connection to one node.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `host:port` of the node.
    pub addr: String,
    /// ACL user; `default` when only a password is set.
    pub username: Option<String>,
    /// Password for AUTH at connect, if the node requires one (read at
    /// each dial: it may rotate).
    pub password: Arc<Credential>,
    /// The database selected at connect.
    pub database: u32,
    /// RESP version the connection speaks (HELLO 3 for RESP3 clients).
    pub protocol: Protocol,
    /// Bounds the TCP connect and the handshake together.
    pub connect_timeout: Duration,
    /// TLS settings; plain TCP when `None`. Shared by every connection,
    /// data node or Sentinel, dialed with these options.
    pub tls: Option<Arc<BackendTls>>,
    /// Send `READONLY` at connect: a cluster replica then serves reads of
    /// its master's slots on this connection instead of redirecting them.
    /// Only a replica's read connections set it: on one that routes by the
    /// slot map, a master demoted meanwhile would answer reads itself
    /// instead of redirecting them to its successor.
    pub readonly: bool,
}

/// Nesting cap for backend replies: none. Replies are trusted and must be
/// read at any depth Redis produces (a Lua script's reply nests as deep as
/// its stack allows, some 8000 levels), or one script would make keygate
/// drop a shared connection. The scanner keeps its open levels on the heap,
/// one word each, never on the call stack, so depth costs memory in
/// proportion to the reply's own bytes and no recursion.
pub const REPLY_MAX_DEPTH: usize = usize::MAX;

/// What a connection is used for, named on the backend with CLIENT SETNAME.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A multiplexed connection many clients share.
    Mux,
    /// A connection one client holds (MULTI, blocking, pub/sub).
    Dedicated,
    /// Topology discovery: ROLE and INFO probes, Sentinel queries.
    Control,
    /// One command past a busy script ([`super::urgent`]): HELLO and AUTH
    /// only, as Redis refuses SELECT and CLIENT SETNAME while a script runs.
    Urgent,
    /// A node's invalidation connection for the near cache
    /// ([`super::invalidation`]).
    Invalidation,
}

impl Role {
    /// The connection's name on the backend (`CLIENT LIST` shows `name=`).
    pub fn client_name(self) -> &'static str {
        match self {
            Role::Mux => "keygate-mux",
            Role::Dedicated => "keygate-dedicated",
            Role::Control => "keygate-control",
            Role::Urgent => "keygate-urgent",
            Role::Invalidation => "keygate-invalidation",
        }
    }
}

/// Opens a connection to `opts.addr` for `role` and completes the handshake.
pub async fn connect(opts: &ConnectOptions, role: Role) -> Result<BackendStream, BackendError> {
    let unavailable = |reason: String| BackendError::Unavailable {
        addr: opts.addr.clone(),
        reason,
    };
    let tcp = tokio::time::timeout(opts.connect_timeout, TcpStream::connect(&opts.addr))
        .await
        .map_err(|_| {
            unavailable(format!(
                "connect timed out after {:?}",
                opts.connect_timeout
            ))
        })?
        .map_err(|e| unavailable(e.to_string()))?;
    tcp.set_nodelay(true)
        .map_err(|e| unavailable(e.to_string()))?;
    let mut stream = match &opts.tls {
        None => BackendStream::Plain(tcp),
        Some(tls) => {
            let tls_stream = tokio::time::timeout(
                opts.connect_timeout,
                tls.handshake(tcp, &opts.addr),
            )
            .await
            .map_err(|_| {
                unavailable(format!(
                    "TLS handshake timed out after {:?}",
                    opts.connect_timeout
                ))
            })?
            .map_err(|reason| {
                tracing::warn!(backend = %opts.addr, %reason, "backend TLS handshake failed");
                unavailable(reason)
            })?;
            BackendStream::Tls(Box::new(tls_stream))
        }
    };

    let handshake = handshake_requests(opts, role);
    let mut out = BytesMut::new();
    for req in &handshake {
        out.extend_from_slice(req.frame());
    }
    let exchange = async {
        stream
            .write_all(&out)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        // TLS buffers records until flushed; plain TCP's flush is a no-op.
        stream
            .flush()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let mut scanner = ReplyScanner::new(REPLY_MAX_DEPTH);
        let mut buf = BytesMut::with_capacity(4096);
        let mut answered = 0;
        while answered < handshake.len() {
            match scanner.scan(&mut buf) {
                Ok(Some((frame, kind))) => {
                    if kind == ReplyKind::Error {
                        let text = match Value::parse(&frame) {
                            Ok(Value::Error(e)) => String::from_utf8_lossy(&e).into_owned(),
                            _ => String::from_utf8_lossy(&frame).trim().to_string(),
                        };
                        let what =
                            String::from_utf8_lossy(handshake[answered].get(0).unwrap_or(b"?"))
                                .to_uppercase();
                        return Err(unavailable(format!("{what} failed: {text}")));
                    }
                    answered += 1;
                }
                Ok(None) => {
                    let n = stream
                        .read_buf(&mut buf)
                        .await
                        .map_err(|e| unavailable(e.to_string()))?;
                    if n == 0 {
                        return Err(unavailable("connection closed during handshake".into()));
                    }
                }
                Err(e) => return Err(unavailable(format!("invalid handshake reply: {e}"))),
            }
        }
        Ok(())
    };
    tokio::time::timeout(opts.connect_timeout, exchange)
        .await
        .map_err(|_| {
            unavailable(format!(
                "handshake timed out after {:?}",
                opts.connect_timeout
            ))
        })??;
    Ok(stream)
}

/// Redis's id of a connection just dialed (CLIENT ID); 0 when Redis
/// refuses it (an ACL user without CLIENT), which only disables CLIENT
/// UNBLOCK through this connection.
pub async fn client_id(stream: &mut BackendStream) -> std::io::Result<i64> {
    stream
        .write_all(b"*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n")
        .await?;
    stream.flush().await?;
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        // One byte at a time: nothing else is in flight, so nothing after
        // this one line may be taken from the stream. Dial time only.
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        line.extend_from_slice(&byte);
        if line.len() > 4096 || (line.len() > 64 && !line.starts_with(b"-")) {
            return Err(std::io::Error::other("CLIENT ID reply too long"));
        }
    }
    Ok(line
        .strip_prefix(b":")
        .and_then(|n| std::str::from_utf8(n).ok())
        .and_then(|n| n.trim_end().parse().ok())
        .unwrap_or(0))
}

/// The AUTH that logs a connection dialed with `opts` in again with the
/// password now, if there is one.
pub fn reauth_request(opts: &ConnectOptions) -> Option<Request> {
    let pass = opts.password.password()?;
    let user = opts.username.as_deref().unwrap_or("default");
    Some(Request::from_args(&["AUTH", user, &pass]))
}

/// The requests of the handshake, in the order they are written.
fn handshake_requests(opts: &ConnectOptions, role: Role) -> Vec<Request> {
    let mut reqs = Vec::new();
    let user = opts.username.clone().unwrap_or_else(|| "default".into());
    match (opts.protocol, opts.password.password()) {
        (Protocol::Resp3, Some(pass)) => {
            reqs.push(Request::from_args(&["HELLO", "3", "AUTH", &user, &pass]))
        }
        (Protocol::Resp3, None) => reqs.push(Request::from_args(&["HELLO", "3"])),
        (Protocol::Resp2, Some(pass)) => reqs.push(Request::from_args(&["AUTH", &user, &pass])),
        (Protocol::Resp2, None) => {}
    }
    if role == Role::Urgent {
        return reqs;
    }
    if opts.database != 0 {
        reqs.push(Request::from_args(&["SELECT", &opts.database.to_string()]));
    }
    if opts.readonly {
        reqs.push(Request::from_args(&["READONLY"]));
    }
    reqs.push(Request::from_args(&[
        "CLIENT",
        "SETNAME",
        role.client_name(),
    ]));
    reqs
}
