//! A connection of its own for the commands Redis runs while a script is
//! busy that reach a shared connection (the table's ALLOW_BUSY: SCRIPT
//! KILL, FUNCTION KILL, FUNCTION STATS, SHUTDOWN).
//!
//! A busy EVAL or FCALL holds the connection it runs on: a KILL pipelined on
//! the same shared connection would wait behind it until the command
//! timeout, and a dedicated connection cannot be dialed meanwhile (Redis
//! answers its handshake's CLIENT SETNAME with `-BUSY`). So the KILL goes on
//! a connection dialed for it, whose handshake uses only commands Redis
//! allows during a busy script (HELLO and AUTH), and which is closed after
//! the one reply. Rare by nature: a dial per KILL costs nothing that matters.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::connect::{connect, ConnectOptions, Role};
use super::BackendError;
use crate::protocol::request::Request;

/// Sends `req` on a new connection dialed with `opts` (its protocol the
/// client's, so the reply has the client's shape) and returns its one
/// reply frame.
pub async fn exchange(
    opts: &ConnectOptions,
    req: &Request,
    timeout: Duration,
) -> Result<Bytes, BackendError> {
    let mut stream = connect(opts, Role::Urgent).await?;
    let mut buf = BytesMut::with_capacity(256);
    let addr = opts.addr.as_str();
    match tokio::time::timeout(timeout, stream.round_trip(req.frame(), &mut buf)).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::Other => Err(BackendError::Protocol {
            addr: addr.to_string(),
            reason: e.to_string(),
        }),
        Ok(Err(_)) => Err(BackendError::ConnectionLost {
            addr: addr.to_string(),
        }),
        Err(_) => Err(BackendError::Timeout {
            addr: addr.to_string(),
            millis: timeout.as_millis(),
        }),
    }
}
