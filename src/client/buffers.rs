//! The client's buffers: how the read buffer grows, and when the buffers
//! are given back.
//!
//! Invariants:
//! - an idle client holds no read buffer: plain TCP waits for readiness
//!   before it reserves space ([`ClientRead`]);
//! - between bursts an active client keeps at most [`RETAIN_LIMIT`] of read
//!   and write buffer; the rest goes back once everything is answered.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;

use super::Connection;

/// Bytes the read buffer grows by when it has less than [`READ_RESERVE`] free.
const READ_CHUNK: usize = 16 * 1024;

/// Least free space in the read buffer before a read.
const READ_RESERVE: usize = 4 * 1024;

/// The read buffer of a client that holds none (new, or idle and given
/// back): enough for a few commands, so an idle connection stays small.
const FIRST_READ: usize = 1024;

/// Buffers an active client keeps between requests (read buffer plus
/// output buffer); more is given back as soon as everything is answered.
pub(super) const RETAIN_LIMIT: usize = 4 * READ_CHUNK;

/// How the client loop reads a client's bytes.
///
/// Plain TCP waits for readiness whenever nothing is pending and only then
/// reserves buffer space, so an idle client holds no more read buffer than
/// it has (thousands of idle connections stay a few KiB each); a TLS stream
/// has no such readiness of its own and reads into the buffer directly.
pub trait ClientRead: Send {
    /// Reads what is available into `buf`; `Ok(0)` is end of stream.
    fn read_some<'a>(
        &'a mut self,
        buf: &'a mut BytesMut,
    ) -> impl std::future::Future<Output = std::io::Result<usize>> + Send + 'a;
}

/// Makes room for one more read: a small first buffer for a new or idle
/// client (most send a few small commands, or nothing for a long while),
/// a [`READ_CHUNK`] more once it reads more than that.
fn reserve_for_read(buf: &mut BytesMut) {
    if buf.capacity() == 0 {
        buf.reserve(FIRST_READ);
    } else if buf.capacity() - buf.len() < READ_RESERVE {
        buf.reserve(READ_CHUNK);
    }
}

impl ClientRead for tokio::net::tcp::OwnedReadHalf {
    async fn read_some(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        if buf.is_empty() {
            // Nothing pending: no more buffer until there is data, so an idle
            // client holds only what it has. Through the socket's own waker
            // slot, not `readable()`: the client loop drops this future on
            // every turn it stays pending, and `readable()`'s waiter would
            // leave with it.
            let stream: &TcpStream = self.as_ref();
            std::future::poll_fn(|cx| stream.poll_read_ready(cx)).await?;
        }
        reserve_for_read(buf);
        // `read_buf` rather than `try_read_buf`: a short read tells tokio the
        // socket is drained, which saves the `EAGAIN` read per request that
        // `try_read_buf` needs to learn the same.
        self.read_buf(buf).await
    }
}

impl<T: AsyncRead + Send> ClientRead for tokio::io::ReadHalf<T> {
    async fn read_some(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        reserve_for_read(buf);
        self.read_buf(buf).await
    }
}

impl Connection {
    /// Gives back the storage a burst grew: the write buffer, the reply
    /// queue's and the batch's, and the read buffer if it holds nothing.
    pub(super) fn release_buffers(&mut self, rbuf: &mut BytesMut) {
        self.out = BytesMut::new();
        self.near_answers = BytesMut::new();
        self.queue.release_memory();
        self.batch.release_memory();
        if rbuf.is_empty() {
            *rbuf = BytesMut::new();
        }
    }
}
