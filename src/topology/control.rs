//! A control connection: one request at a time, for the low-volume traffic
//! of topology discovery (Sentinel queries, ROLE and INFO probes) and for
//! reading Sentinel event messages.
//!
//! Invariant: every call is bounded by the connection's timeout, so a node
//! that stalls cannot stall the monitor.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend::connect::{connect, ConnectOptions, Role, REPLY_MAX_DEPTH};
use crate::backend::stream::BackendStream;
use crate::backend::BackendError;
use crate::protocol::reply::{ReplyScanner, Value};
use crate::protocol::request::Request;

/// An open control connection to one node or Sentinel.
#[derive(Debug)]
pub struct ControlConn {
    stream: BackendStream,
    buf: BytesMut,
    scanner: ReplyScanner,
    addr: String,
    timeout: Duration,
}

impl ControlConn {
    /// Dials and authenticates; `timeout` bounds every later call too.
    pub async fn open(
        opts: &ConnectOptions,
        timeout: Duration,
    ) -> Result<ControlConn, BackendError> {
        let stream = connect(opts, Role::Control).await?;
        Ok(ControlConn {
            stream,
            buf: BytesMut::with_capacity(4096),
            scanner: ReplyScanner::new(REPLY_MAX_DEPTH),
            addr: opts.addr.clone(),
            timeout,
        })
    }

    /// The address dialed.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends one command and reads its reply (an error reply is `Ok(Value::Error)`).
    pub async fn call(&mut self, args: &[&str]) -> Result<Value, BackendError> {
        let req = Request::from_args(args);
        let timeout = self.timeout;
        let addr = self.addr.clone();
        let exchange = async {
            self.write(req.frame()).await?;
            self.read_value().await
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| BackendError::Timeout {
                addr,
                millis: timeout.as_millis(),
            })?
    }

    /// Writes a command without waiting for a reply (SUBSCRIBE).
    pub async fn send(&mut self, args: &[&str]) -> Result<(), BackendError> {
        let req = Request::from_args(args);
        self.write(req.frame()).await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), BackendError> {
        let lost = |_| BackendError::ConnectionLost {
            addr: self.addr.clone(),
        };
        self.stream.write_all(bytes).await.map_err(lost)?;
        // TLS holds records until flushed; plain TCP's flush is a no-op.
        self.stream.flush().await.map_err(lost)
    }

    /// Reads the next reply or message, waiting as long as it takes.
    pub async fn read_value(&mut self) -> Result<Value, BackendError> {
        loop {
            let scanned = self
                .scanner
                .scan(&mut self.buf)
                .map_err(|e| self.protocol_error(e.to_string()))?;
            if let Some((frame, _)) = scanned {
                return Value::parse(&frame).map_err(|e| self.protocol_error(e.to_string()));
            }
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|_| self.lost())?;
            if n == 0 {
                return Err(self.lost());
            }
        }
    }

    fn lost(&self) -> BackendError {
        BackendError::ConnectionLost {
            addr: self.addr.clone(),
        }
    }

    fn protocol_error(&self, reason: String) -> BackendError {
        BackendError::Protocol {
            addr: self.addr.clone(),
            reason,
        }
    }
}

/// The text of a simple, bulk or verbatim string reply.
pub fn text(v: &Value) -> Option<String> {
    match v {
        Value::Simple(b) | Value::Bulk(b) | Value::Verbatim(_, b) => {
            Some(String::from_utf8_lossy(b).into_owned())
        }
        Value::Integer(i) => Some(i.to_string()),
        _ => None,
    }
}

/// The elements of an array-like reply.
pub fn items(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) | Value::Set(a) | Value::Push(a) => Some(a),
        _ => None,
    }
}

/// `key: value` lines of an INFO reply.
pub fn info_field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k == key).then(|| v.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_are_found_by_exact_key() {
        let info =
            "# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\nmaster_link_status:up\r\n";
        assert_eq!(info_field(info, "role"), Some("slave"));
        assert_eq!(info_field(info, "master_link_status"), Some("up"));
        assert_eq!(info_field(info, "master"), None);
    }
}
