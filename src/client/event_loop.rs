//! The client loop: one task per client connection waits on every source
//! the connection has (its socket, the front reply slot, the dedicated
//! connection, the timers, shutdown, CLIENT KILL, the hard reply limit) in
//! one hand-written poll, handles one event a turn, then writes the replies
//! that are ready.
//!
//! Invariants:
//! - a source that cannot matter this turn is not polled at all: [`Watch`]
//!   is worked out before the wait;
//! - timers and signals keep their registration across turns, so a turn
//!   that changes no deadline arms no timer and joins no waiter list;
//! - replies are written before more is read: a client that does not read
//!   its replies is not read (backpressure);
//! - the loop ends once a closing client's replies are all written, or at
//!   once on end of stream, CLIENT KILL, the hard reply limit or idleness.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWrite;
use tokio::sync::watch;
use tokio::time::Instant;

use super::buffers::{ClientRead, RETAIN_LIMIT};
use super::dedicated::poll_dedicated;
use super::{held, read_wake, registry, Connection};
use crate::metrics::Recorder;

/// Runs an admitted client's loop until it is done, then ends the
/// connection.
pub(super) async fn run<R, W>(
    mut conn: Connection,
    mut rd: R,
    mut wr: W,
    shutdown: watch::Receiver<bool>,
    mut kill: registry::KillSignal,
) where
    R: ClientRead,
    W: AsyncWrite + Unpin,
{
    // One signal for the whole connection: a fresh `changed()` every turn
    // would join and leave the watch's waiter list on every request.
    let mut shutdown_signal = ShutdownSignal::new(shutdown);
    let mut tripped = held::TripSignal::new(conn.meter.clone());
    let mut rbuf = BytesMut::new();
    let idle_timeout = conn.ctx.config.proxy.idle_timeout;
    let mut last_activity = Instant::now();
    let mut dedicated_timer = Timer::default();
    let mut idle_timer = Timer::default();
    let mut housekeeping_timer = Timer::default();
    let mut expiry_timer = Timer::default();
    let mut housekeeping = Housekeeping::default();
    // Spares polling the client's socket on wake-ups that were not its own.
    let mut read_wake = read_wake::ReadWake::default();
    loop {
        if conn.closing && conn.queue.is_empty() {
            break;
        }
        let can_read = !conn.closing && conn.may_take_requests();
        let deadline = conn.dedicated_deadline();
        let idle_at = match conn.dedicated {
            None => idle_timeout
                .filter(|_| conn.queue.is_empty())
                .map(|t| last_activity + t),
            Some(_) => conn.dedicated_idle_at(last_activity),
        };
        let watch = Watch {
            read: can_read && !conn.backlog,
            backlog: can_read && conn.backlog,
            front: conn.queue.front_is_shared(),
            shutdown: !conn.closing,
            deadline,
            idle_at,
            housekeeping: housekeeping.due(&conn.recorder),
            closes_at: conn
                .session
                .closes_at()
                .filter(|_| !conn.closing)
                .map(Instant::from_std),
        };
        let event = std::future::poll_fn(|cx| {
            if watch.shutdown && shutdown_signal.poll(cx).is_ready() {
                return Poll::Ready(Event::Shutdown);
            }
            if tripped.poll(cx).is_ready() {
                return Poll::Ready(Event::OverLimit);
            }
            if kill.poll(cx).is_ready() {
                return Poll::Ready(Event::Killed);
            }
            if housekeeping_timer
                .poll_fired(cx, watch.housekeeping)
                .is_ready()
            {
                return Poll::Ready(Event::Housekeeping);
            }
            if watch.front && conn.queue.poll_front_answered(cx).is_ready() {
                return Poll::Ready(Event::FrontAnswered);
            }
            if conn.dedicated.is_some() {
                if let Poll::Ready(read) = poll_dedicated(&mut conn.dedicated, cx) {
                    return Poll::Ready(Event::DedicatedRead(read));
                }
            }
            if dedicated_timer.poll_fired(cx, watch.deadline).is_ready() {
                return Poll::Ready(Event::DedicatedTimeout);
            }
            if watch.backlog {
                return Poll::Ready(Event::Backlog);
            }
            if watch.read {
                let read =
                    read_wake.poll(cx, |cx| std::pin::pin!(rd.read_some(&mut rbuf)).poll(cx));
                if let Poll::Ready(read) = read {
                    return Poll::Ready(Event::ClientRead(read));
                }
            }
            if idle_timer.poll_fired(cx, watch.idle_at).is_ready() {
                return Poll::Ready(Event::Idle);
            }
            if expiry_timer.poll_fired(cx, watch.closes_at).is_ready() {
                return Poll::Ready(Event::TokenExpired);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::ClientRead(Ok(0) | Err(_)) | Event::Killed => break,
            Event::Idle => {
                conn.on_idle();
                break;
            }
            Event::ClientRead(Ok(n)) => {
                last_activity = Instant::now();
                conn.entry.active(last_activity);
                conn.read_at = last_activity;
                conn.recorder.bytes_in(n);
                conn.on_bytes(&mut rbuf).await;
            }
            Event::Backlog => conn.on_bytes(&mut rbuf).await,
            Event::FrontAnswered => {}
            Event::DedicatedRead(read) => conn.on_dedicated_read(read),
            Event::DedicatedTimeout => conn.on_dedicated_timeout(),
            Event::Housekeeping => {
                conn.recorder.flush_if_due();
                if housekeeping.tick() && conn.queue.is_empty() && !conn.backlog {
                    // Idle for a whole tick: give back what the last burst grew.
                    conn.release_buffers(&mut rbuf);
                    housekeeping.released();
                }
                continue;
            }
            Event::Shutdown => conn.closing = true,
            Event::TokenExpired => {
                // `on_expiry = "close"`: the replies already due are
                // written, then the connection ends.
                tracing::debug!(client = conn.session.id, "token expired; closing");
                conn.closing = true;
            }
            Event::OverLimit => {
                conn.over_limit();
                break;
            }
        }
        housekeeping.active();
        let (out_before, pending_before) = (conn.out.len(), conn.queue.commands_pending());
        let drained = conn.queue.drain_ready(&mut conn.out, &mut conn.recorder);
        conn.budget.observe(
            conn.out.len().saturating_sub(out_before),
            pending_before.saturating_sub(conn.queue.commands_pending()),
        );
        conn.follow_moved_shard_channels().await;
        conn.release_dedicated_if_clean();
        conn.publish_state();
        if !conn.out.is_empty() {
            match held::write_watched(&mut wr, &conn.out, &mut tripped).await {
                Ok(()) => {}
                Err(held::WriteStopped::Failed) => break,
                Err(held::WriteStopped::OverLimit) => {
                    conn.over_limit();
                    break;
                }
            }
            conn.recorder.bytes_out(conn.out.len());
            conn.out.clear();
        }
        // Written (or suppressed): no longer held for the client.
        conn.meter.sub(drained);
        if conn.queue.is_empty()
            && !conn.backlog
            && conn.out.capacity() + rbuf.capacity() > RETAIN_LIMIT
        {
            // A burst grew the buffers past what an active client keeps.
            conn.release_buffers(&mut rbuf);
        }
    }
    conn.finish();
}

/// What woke the client loop: one source per turn.
enum Event {
    /// The client's socket gave bytes, end of stream or an error.
    ClientRead(std::io::Result<usize>),
    /// Complete requests left in the read buffer may be taken now.
    Backlog,
    /// The front slot's shared-connection reply arrived.
    FrontAnswered,
    /// The dedicated connection gave bytes or failed.
    DedicatedRead(std::io::Result<usize>),
    /// An awaited dedicated reply is overdue.
    DedicatedTimeout,
    /// The client was idle for `idle_timeout`, or held a dedicated
    /// connection idle for `dedicated_idle_timeout`.
    Idle,
    /// The housekeeping tick or the metrics hand-over is due.
    Housekeeping,
    /// Keygate is shutting down.
    Shutdown,
    /// The replies held for the client went past the hard limit.
    OverLimit,
    /// CLIENT KILL closed this client.
    Killed,
    /// The client's token expired and its service closes such connections.
    TokenExpired,
}

/// The sources the client loop waits on this turn, worked out once before
/// it waits: a disabled source is not polled at all (unlike `select!`,
/// which builds every branch's future on every turn).
struct Watch {
    /// The client may send more requests (and none are held back).
    read: bool,
    /// Complete requests wait in the read buffer and may be taken.
    backlog: bool,
    /// The front slot waits on a shared connection.
    front: bool,
    /// Not closing yet: a shutdown would change something.
    shutdown: bool,
    /// When the first awaited dedicated reply is overdue.
    deadline: Option<Instant>,
    /// When an idle client is disconnected.
    idle_at: Option<Instant>,
    /// The housekeeping tick or the metrics hand-over, whichever is first.
    housekeeping: Option<Instant>,
    /// When the client's token expires, if that closes the connection.
    closes_at: Option<Instant>,
}

/// The client loop's periodic chores: handing metrics over and giving back
/// an idle client's buffers. Its deadline moves once a tick, not once a
/// request, so a busy client re-arms no timer; a client idle for a whole
/// tick has its buffers released, so thousands of idle connections stay
/// small while a busy one reuses its buffers instead of reallocating them on
/// every request.
#[derive(Default)]
struct Housekeeping {
    /// The next tick, while buffers are held.
    next: Option<Instant>,
    /// A request was handled since the last tick.
    busy: bool,
}

impl Housekeeping {
    /// How often an idle client's buffers are checked.
    const TICK: Duration = Duration::from_secs(1);

    /// The client handled something: hold its buffers for at least a tick.
    fn active(&mut self) {
        self.busy = true;
        if self.next.is_none() {
            self.next = Some(Instant::now() + Self::TICK);
        }
    }

    /// When the loop must wake next: the tick or the metrics hand-over.
    fn due(&self, recorder: &Recorder) -> Option<Instant> {
        let flush = recorder.flush_due_at().map(Instant::from_std);
        match (self.next, flush) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A wake-up: true when a whole tick passed without activity. Moves the
    /// tick on either way, so a client that stays busy or cannot give its
    /// buffers back (a blocked command) is looked at once a tick, not in a
    /// loop.
    fn tick(&mut self) -> bool {
        let Some(next) = self.next else {
            return false;
        };
        let now = Instant::now();
        if now < next {
            return false; // the metrics hand-over woke the loop
        }
        self.next = Some(now + Self::TICK);
        !std::mem::take(&mut self.busy)
    }

    /// The buffers were given back: no tick until the client is active again.
    fn released(&mut self) {
        self.next = None;
    }
}

/// A timer re-armed only when its deadline changes, so the client loop does
/// not register a new timer on every turn (the metrics hand-over deadline,
/// for one, stays the same for a second at a time).
///
/// Once the sleep has registered the task's waker, later turns only look at
/// whether it has elapsed (an atomic load) instead of polling it again: the
/// client loop polls every branch on every wake-up, once per request.
struct Timer {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    armed: Option<Instant>,
    /// The sleep was polled since it was armed and holds the task's waker.
    registered: bool,
}

impl Default for Timer {
    fn default() -> Self {
        Timer {
            sleep: Box::pin(tokio::time::sleep(Duration::from_secs(86_400))),
            armed: None,
            registered: false,
        }
    }
}

impl Timer {
    /// Ready once `at` has passed; never when `at` is `None`. A timer that
    /// fired is disarmed, so the same `at` arms it again.
    ///
    /// Inlined: the usual answers (no deadline, or armed for the same one
    /// and not elapsed) cost a few loads, not a call.
    #[inline]
    fn poll_fired(&mut self, cx: &mut std::task::Context<'_>, at: Option<Instant>) -> Poll<()> {
        match at {
            None => Poll::Pending,
            Some(at) if self.registered && self.armed == Some(at) && !self.sleep.is_elapsed() => {
                Poll::Pending
            }
            Some(at) => self.poll_sleep(cx, at),
        }
    }

    /// Arms the sleep for `at` if it is not already, and polls it.
    #[inline(never)]
    fn poll_sleep(&mut self, cx: &mut std::task::Context<'_>, at: Instant) -> Poll<()> {
        if self.armed != Some(at) {
            self.sleep.as_mut().reset(at);
            self.armed = Some(at);
        }
        // Unconstrained: a `Pending` from the cooperative budget would not
        // register the waker, and `registered` would lie.
        let poll = std::pin::pin!(tokio::task::unconstrained(self.sleep.as_mut())).poll(cx);
        self.registered = poll.is_pending();
        if poll.is_ready() {
            self.armed = None;
        }
        poll
    }
}

/// Completes when keygate starts shutting down (or the signal's sender is
/// gone). Polled on every turn of the client loop, so after the first poll
/// has put the task's waker in the watch's waiter list, a turn only compares
/// versions (inline) instead of joining the list again.
struct ShutdownSignal {
    /// A second receiver that only looks at the version.
    probe: watch::Receiver<bool>,
    /// Waits on the watch, holding the task's place in its waiter list.
    changed: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
    /// `changed` was polled and holds the task's waker.
    registered: bool,
    /// `changed` completed: it must not be polled again.
    fired: bool,
}

impl ShutdownSignal {
    fn new(mut shutdown: watch::Receiver<bool>) -> ShutdownSignal {
        let probe = shutdown.clone();
        ShutdownSignal {
            probe,
            changed: Box::pin(tokio::task::unconstrained(async move {
                let _ = shutdown.changed().await;
            })),
            registered: false,
            fired: false,
        }
    }

    /// Ready once keygate is shutting down (and from then on).
    #[inline]
    fn poll(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.registered && !self.probe.has_changed().unwrap_or(true) {
            return Poll::Pending;
        }
        self.poll_changed(cx)
    }

    #[inline(never)]
    fn poll_changed(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.fired {
            return Poll::Ready(());
        }
        let poll = self.changed.as_mut().poll(cx);
        self.registered = poll.is_pending();
        self.fired = poll.is_ready();
        poll
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn housekeeping_releases_after_an_idle_tick_and_never_spins() {
        let mut h = Housekeeping::default();
        assert!(!h.tick(), "nothing held, nothing to do");
        h.active();
        assert!(!h.tick(), "not due yet");
        tokio::time::advance(Housekeeping::TICK).await;
        assert!(!h.tick(), "busy during the last tick");
        tokio::time::advance(Housekeeping::TICK).await;
        assert!(h.tick(), "idle for a whole tick");
        // Not released (a blocked command holds the queue): the next tick is
        // a tick away, not due again at once.
        assert!(h.next.is_some_and(|next| next > Instant::now()));
        assert!(!h.tick());
        h.released();
        assert!(h.next.is_none());
    }
}
