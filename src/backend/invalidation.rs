//! A node's invalidation connection: the redirect target of every
//! multiplexed connection that reads for the near cache.
//!
//! It logs in (RESP2), learns its CLIENT ID, subscribes to
//! `__redis__:invalidate`, and only then announces itself to the node's
//! [`NodeTracking`] (the multiplexed connections re-track towards it before
//! their next write). Each message names keys Redis invalidated, which go
//! out of every near cache; a null message (FLUSHALL, FLUSHDB) flushes them
//! all. When the connection drops, invalidations may have been lost: the
//! link goes down (every entry filled under it stops being served), the
//! caches are flushed, and the connection is dialed again with backoff.
//! One per node, so the same works for every node of a Redis Cluster.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::connect::{client_id, connect, ConnectOptions, Role, REPLY_MAX_DEPTH};
use super::stream::BackendStream;
use crate::near_cache::tracking::NodeTracking;
use crate::near_cache::Evicted;
use crate::protocol::reply::{ReplyScanner, Value};
use crate::protocol::request::Request;
use crate::protocol::Protocol;

const CHANNEL: &[u8] = b"__redis__:invalidate";
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// Starts the node's invalidation connection; it runs while `tracking`
/// has other owners (the node's multiplexed connections).
pub fn spawn(connect: ConnectOptions, tracking: Arc<NodeTracking>) {
    let opts = ConnectOptions {
        protocol: Protocol::Resp2,
        ..connect
    };
    let weak = Arc::downgrade(&tracking);
    drop(tracking);
    tokio::spawn(async move {
        let mut backoff = BACKOFF_FIRST;
        loop {
            let Some(tracking) = weak.upgrade() else {
                return;
            };
            let mut subscribed = false;
            let reason = listen(&opts, &tracking, &mut subscribed).await;
            tracing::warn!(backend = %opts.addr, %reason, "near cache invalidation connection lost");
            if subscribed {
                backoff = BACKOFF_FIRST;
            }
            tracking.link_down();
            drop(tracking);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_CAP);
        }
    });
}

/// One connection's life: returns why it ended.
async fn listen(
    opts: &ConnectOptions,
    tracking: &Arc<NodeTracking>,
    subscribed: &mut bool,
) -> String {
    match run(opts, tracking, subscribed).await {
        Ok(never) => match never {},
        Err(reason) => reason,
    }
}

async fn run(
    opts: &ConnectOptions,
    tracking: &Arc<NodeTracking>,
    subscribed: &mut bool,
) -> Result<std::convert::Infallible, String> {
    let mut stream = connect(opts, Role::Invalidation)
        .await
        .map_err(|e| e.to_string())?;
    let id = client_id(&mut stream).await.map_err(|e| e.to_string())?;
    if id <= 0 {
        return Err("CLIENT ID refused".into());
    }
    let subscribe = Request::from_args(&[&b"SUBSCRIBE"[..], CHANNEL]);
    stream
        .write_all(subscribe.frame())
        .await
        .map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let mut frames = Frames::new(stream);
    match frames.next().await? {
        Value::Array(items) if matches!(items.first(), Some(Value::Bulk(k)) if k.eq_ignore_ascii_case(b"subscribe")) =>
            {}
        other => return Err(format!("unexpected SUBSCRIBE reply {other:?}")),
    }
    // Keep the link alive only while this connection is.
    let _link = tracking.link_up(id);
    *subscribed = true;
    loop {
        let message = frames.next().await?;
        let Value::Array(items) = message else {
            continue;
        };
        match items.as_slice() {
            [Value::Bulk(kind), Value::Bulk(channel), payload]
                if kind.eq_ignore_ascii_case(b"message") && channel[..] == *CHANNEL =>
            {
                match payload {
                    Value::Array(keys) => {
                        for key in keys {
                            if let Value::Bulk(key) = key {
                                tracking.caches.invalidate(key);
                            }
                        }
                    }
                    // A null: the database was flushed.
                    _ => tracking.caches.flush_all(Evicted::Flush),
                }
            }
            _ => {}
        }
    }
}

/// Whole frames off the connection.
struct Frames {
    stream: BackendStream,
    buf: BytesMut,
    scanner: ReplyScanner,
}

impl Frames {
    fn new(stream: BackendStream) -> Frames {
        Frames {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            scanner: ReplyScanner::new(REPLY_MAX_DEPTH),
        }
    }

    async fn next(&mut self) -> Result<Value, String> {
        loop {
            match self.scanner.scan(&mut self.buf) {
                Ok(Some((frame, _))) => return Value::parse(&frame).map_err(|e| e.to_string()),
                Ok(None) => {
                    let n = self
                        .stream
                        .read_buf(&mut self.buf)
                        .await
                        .map_err(|e| e.to_string())?;
                    if n == 0 {
                        return Err("connection closed".into());
                    }
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}
