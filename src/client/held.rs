//! The client task's side of the reply bytes held for it (see
//! [`crate::backend::meter`]): noticing that they went past the hard limit,
//! whether the task waits for an event or for the client to take a write.
//!
//! A client that does not read blocks the task in a write while replies to
//! what it already sent keep arriving; so the write watches the meter too,
//! and a tripped meter ends it: the client is closed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

use crate::backend::meter::ReplyMeter;

/// Completes once the client's meter has tripped. Polled on every turn of
/// the client loop, so after the first poll has registered the task's waker,
/// a turn only loads a flag (inline) instead of polling the wait again.
pub(super) struct TripSignal {
    meter: Arc<ReplyMeter>,
    /// Waits for the trip, holding the task's place in the meter's waiters.
    tripped: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// `tripped` was polled and holds the task's waker.
    registered: bool,
}

impl TripSignal {
    pub(super) fn new(meter: Arc<ReplyMeter>) -> TripSignal {
        let waiting = meter.clone();
        TripSignal {
            meter,
            tripped: Box::pin(async move { waiting.wait_tripped().await }),
            registered: false,
        }
    }

    /// Ready once the meter has tripped (and from then on).
    #[inline]
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.registered && !self.meter.tripped() {
            return Poll::Pending;
        }
        self.poll_wait(cx)
    }

    #[inline(never)]
    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.meter.tripped() {
            return Poll::Ready(());
        }
        let poll = self.tripped.as_mut().poll(cx);
        self.registered = poll.is_pending();
        poll
    }
}

/// Why replies could not be written.
pub(super) enum WriteStopped {
    /// The client's socket failed or closed.
    Failed,
    /// The replies held for the client went past the hard limit meanwhile.
    OverLimit,
}

/// Writes `out` whole and flushes it (TLS holds records until flushed; a
/// no-op on plain TCP), unless the meter trips while the client does not
/// take the bytes.
pub(super) async fn write_watched<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &[u8],
    tripped: &mut TripSignal,
) -> Result<(), WriteStopped> {
    let mut rest = out;
    while !rest.is_empty() {
        let n = std::future::poll_fn(|cx| match Pin::new(&mut *wr).poll_write(cx, rest) {
            Poll::Ready(Ok(0) | Err(_)) => Poll::Ready(Err(WriteStopped::Failed)),
            Poll::Ready(Ok(n)) => Poll::Ready(Ok(n)),
            Poll::Pending => tripped.poll(cx).map(|()| Err(WriteStopped::OverLimit)),
        })
        .await?;
        rest = rest.get(n..).unwrap_or_default();
    }
    std::future::poll_fn(|cx| match Pin::new(&mut *wr).poll_flush(cx) {
        Poll::Ready(r) => Poll::Ready(r.map_err(|_| WriteStopped::Failed)),
        Poll::Pending => tripped.poll(cx).map(|()| Err(WriteStopped::OverLimit)),
    })
    .await
}
