//! The byte stream to a backend node: plain TCP or TLS over TCP.
//!
//! Everything above [`super::connect`] reads and writes a [`BackendStream`]
//! through `AsyncRead`/`AsyncWrite` and never asks which it is, except where
//! the plain path has a faster or simpler form: splitting (owned TCP halves,
//! no lock) and the idle check of pooled connections.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::connect::REPLY_MAX_DEPTH;
use crate::protocol::reply::ReplyScanner;
use crate::tls::connector::BackendTlsStream;

/// A connection to a backend node, handshake done.
#[derive(Debug)]
pub enum BackendStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (boxed: the TLS state is large).
    Tls(Box<BackendTlsStream>),
}

/// What an idle connection has waiting, without blocking.
#[derive(Debug, PartialEq, Eq)]
pub enum IdleProbe {
    /// Nothing to read: the connection is idle and open.
    Idle,
    /// The node closed the connection.
    Closed,
    /// Application bytes are waiting (someone left state behind).
    Data,
    /// Reading failed.
    Failed(String),
}

impl BackendStream {
    /// Writes one request frame and reads its one reply, on a connection
    /// with nothing else in flight; `buf` holds what was read and not yet
    /// taken (empty, for a connection whose replies are all taken).
    pub async fn round_trip(&mut self, frame: &[u8], buf: &mut BytesMut) -> io::Result<Bytes> {
        self.write_all(frame).await?;
        // TLS holds records until flushed; plain TCP's flush is a no-op.
        self.flush().await?;
        let mut scanner = ReplyScanner::new(REPLY_MAX_DEPTH);
        loop {
            if let Some((reply, _)) = scanner.scan(buf).map_err(io::Error::other)? {
                return Ok(reply);
            }
            if self.read_buf(buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Looks for unread bytes or EOF without waiting.
    ///
    /// Plain TCP uses `try_read`. TLS polls one read with a no-op waker:
    /// that also consumes pending TLS records that carry no data (session
    /// tickets, key updates) and sees `close_notify`, which a raw socket
    /// peek could not tell from application data. The read interest it
    /// registers is replaced by the next real read.
    pub fn probe_idle(&mut self) -> IdleProbe {
        let mut probe = [0u8; 1];
        match self {
            BackendStream::Plain(stream) => match stream.try_read(&mut probe) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => IdleProbe::Idle,
                Ok(0) => IdleProbe::Closed,
                Ok(_) => IdleProbe::Data,
                Err(e) => IdleProbe::Failed(e.to_string()),
            },
            BackendStream::Tls(stream) => {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let mut buf = ReadBuf::new(&mut probe);
                match Pin::new(stream.as_mut()).poll_read(&mut cx, &mut buf) {
                    Poll::Pending => IdleProbe::Idle,
                    Poll::Ready(Ok(())) if buf.filled().is_empty() => IdleProbe::Closed,
                    Poll::Ready(Ok(())) => IdleProbe::Data,
                    Poll::Ready(Err(e)) => IdleProbe::Failed(e.to_string()),
                }
            }
        }
    }
}

impl AsyncRead for BackendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            BackendStream::Plain(s) => s.is_write_vectored(),
            BackendStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_flush(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
