//! A connection of its own for a command Redis runs while a script is busy
//! (SCRIPT KILL, FUNCTION KILL).
//!
//! A busy EVAL or FCALL holds the connection it runs on: a KILL pipelined on
//! the same shared connection would wait behind it until the command
//! timeout, and a dedicated connection cannot be dialed meanwhile (Redis
//! answers its handshake's CLIENT SETNAME with `-BUSY`). So the KILL goes on
//! a connection dialed for it, whose handshake uses only commands Redis
//! allows during a busy script (AUTH), and which is closed after the one
//! reply. Rare by nature: a dial per KILL costs nothing that matters.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::connect::{connect, ConnectOptions, Role, REPLY_MAX_DEPTH};
use super::BackendError;
use crate::protocol::reply::ReplyScanner;
use crate::protocol::request::Request;
use crate::protocol::Protocol;

/// Sends `req` on a new connection to the node of `opts` and returns its
/// one reply frame (RESP2: a KILL answers a status or an error, the same
/// bytes in either protocol).
pub async fn exchange(
    opts: &ConnectOptions,
    req: &Request,
    timeout: Duration,
) -> Result<Bytes, BackendError> {
    let opts = ConnectOptions {
        protocol: Protocol::Resp2,
        database: 0,
        ..opts.clone()
    };
    let mut stream = connect(&opts, Role::Urgent).await?;
    let addr = opts.addr.as_str();
    let lost = || BackendError::ConnectionLost {
        addr: addr.to_string(),
    };
    let exchange = async {
        stream.write_all(req.frame()).await.map_err(|_| lost())?;
        stream.flush().await.map_err(|_| lost())?;
        let mut scanner = ReplyScanner::new(REPLY_MAX_DEPTH);
        let mut buf = BytesMut::with_capacity(256);
        loop {
            match scanner.scan(&mut buf) {
                Ok(Some((frame, _))) => return Ok(frame),
                Ok(None) => {
                    if stream.read_buf(&mut buf).await.map_err(|_| lost())? == 0 {
                        return Err(lost());
                    }
                }
                Err(e) => {
                    return Err(BackendError::Protocol {
                        addr: addr.to_string(),
                        reason: e.to_string(),
                    })
                }
            }
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| BackendError::Timeout {
            addr: addr.to_string(),
            millis: timeout.as_millis(),
        })?
}
