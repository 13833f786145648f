//! Multiplexed, pipelined backend connections.
//!
//! Many clients' requests share one connection: the writer gathers every
//! batch waiting in its queue into one write, keeping at most
//! `writes_in_flight` writes awaiting replies (batches arriving meanwhile
//! join the next one), and the reader hands replies back first in, first
//! out. Invariants:
//! - a batch's pending entry is queued for the reader before its bytes are
//!   written, so a reply never arrives before the reader knows who wants it;
//! - a batch of `count` requests gets exactly `count` replies, as one
//!   contiguous `Bytes` split off the read buffer (no copy), with the end
//!   and kind of each frame the reader found, so the client never scans
//!   them again;
//! - when a connection dies or stalls past `command_timeout` (its oldest
//!   request is older and no byte came for a tick), every request in flight
//!   on it gets an error, nothing is dropped silently, and the connection is
//!   replaced with capped exponential backoff;
//! - reply bytes are counted on their client's meter as they arrive, and a
//!   batch whose client is gone is dropped frame by frame, never gathered.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use super::connect::{connect, reauth_request, ConnectOptions, Role, REPLY_MAX_DEPTH};
use super::health::NodeHealth;
use super::meter::ReplyMeter;
use super::stream::BackendStream;
use super::BackendError;
use crate::near_cache::flight::Landings;
use crate::near_cache::tracking::{NodeTracking, Session, Stamp};
use crate::near_cache::Evicted;
use crate::protocol::reply::{FrameEnds, Replies, ReplyKind, ReplyScanner};
use crate::protocol::request::Request;

/// Frame ends reserved up front for one batch at most (a deeper batch
/// grows past it as usual).
const MAX_ENDS_RESERVED: usize = 1024;
/// Payload pieces at least this large are written as they are instead of
/// being copied into the connection's write buffer (a client's batch keeps
/// frames this large as pieces of their own for the same reason).
pub const LARGE_PIECE: usize = 16 * 1024;
/// The writer stops gathering batches into one write past this many bytes.
const MAX_GATHER: usize = 256 * 1024;

/// What a batch's sender gets back: all its replies, contiguous, each
/// frame's end recorded.
pub type BatchReply = Result<Replies, BackendError>;

/// A batch's request frames: usually one or two (a command and its TTL
/// follow-up), kept inline so that case allocates nothing.
pub type Payload = smallvec::SmallVec<[Bytes; 2]>;

/// Requests of one client sent together, answered together.
#[derive(Debug)]
pub struct Batch {
    /// Request frames, written in order.
    pub payload: Payload,
    /// How many replies the payload produces.
    pub count: u32,
    /// Where the replies go.
    pub reply: oneshot::Sender<BatchReply>,
    /// Counts the replies' bytes for their client as they arrive.
    pub meter: Option<Arc<ReplyMeter>>,
    /// It carries a script (EVAL, FCALL, ...): while it is unanswered and
    /// the node silent, the node may be busy running it.
    pub script: bool,
    /// The batch fills the near cache: told the tracking session it is
    /// written under (none: its reads are not tracked, nothing is filled).
    pub stamp: Option<Arc<Stamp>>,
    /// Near-cache flights its reads lead, by the index of the reply frame
    /// that lands each: landed by the reader as soon as the replies are in.
    pub landings: Landings,
}

/// Settings of a multiplexed connection.
#[derive(Debug, Clone)]
pub struct MuxOptions {
    /// How to dial and authenticate the connection (and each replacement).
    pub connect: ConnectOptions,
    /// A request older than this fails the whole connection (the node is stalled).
    pub command_timeout: Duration,
    /// Batches that may wait for the writer before senders feel backpressure.
    pub queue_depth: usize,
    /// Writes kept awaiting replies before the next one waits (0: no limit).
    pub writes_in_flight: usize,
    /// The node's near-cache tracking, when this connection reads for the
    /// near cache: it runs `CLIENT TRACKING ON REDIRECT <id> OPTIN`
    /// towards the node's invalidation connection before its first write,
    /// and again before the next write whenever that connection changed.
    pub tracking: Option<Arc<NodeTracking>>,
}

/// A cheap handle to one multiplexed connection.
#[derive(Debug, Clone)]
pub struct MuxHandle {
    tx: mpsc::Sender<Batch>,
    addr: Arc<str>,
}

impl MuxHandle {
    /// Starts the connection's task; it connects, and reconnects, on its own.
    pub fn spawn(opts: MuxOptions, health: Arc<NodeHealth>) -> MuxHandle {
        let (tx, rx) = mpsc::channel(opts.queue_depth.max(1));
        let addr: Arc<str> = opts.connect.addr.as_str().into();
        tokio::spawn(supervise(opts, rx, health));
        MuxHandle { tx, addr }
    }

    /// Batches waiting in the queue, not yet written.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Queues a batch, waiting while the connection's queue is full.
    pub async fn submit(&self, batch: Batch) {
        // The queue almost always has room: skip the semaphore's wait future.
        let batch = match self.tx.try_send(batch) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(batch)) => batch,
            Err(mpsc::error::TrySendError::Closed(batch)) => {
                let _ = batch.reply.send(Err(self.stopped()));
                return;
            }
        };
        if let Err(mpsc::error::SendError(batch)) = self.tx.send(batch).await {
            let _ = batch.reply.send(Err(self.stopped()));
        }
    }

    /// The error for a batch whose connection task is gone.
    fn stopped(&self) -> BackendError {
        BackendError::Unavailable {
            addr: self.addr.to_string(),
            reason: "connection task stopped".into(),
        }
    }
}

/// Capped exponential backoff between reconnect attempts.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const CAP: Duration = Duration::from_secs(2);

    fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    fn step(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(Self::CAP);
        now
    }
}

/// Keeps one connection alive for as long as any handle exists.
async fn supervise(opts: MuxOptions, mut rx: mpsc::Receiver<Batch>, health: Arc<NodeHealth>) {
    let mut backoff = Backoff::new();
    loop {
        // The password generation the handshake logs in with (read first:
        // a rotation during the dial is then caught by the next write).
        let logged_in = opts.connect.password.generation();
        match connect(&opts.connect, Role::Mux).await {
            Ok(stream) => {
                backoff = Backoff::new();
                health.connection_up();
                let open = run(stream, &mut rx, &opts, &health, logged_in).await;
                health.connection_down();
                if !open {
                    return;
                }
            }
            Err(err) => {
                health.record_error(&err);
                tracing::warn!(backend = %opts.connect.addr, error = %err, "backend connect failed");
                // While down, fail new batches at once instead of letting them wait.
                let retry_at = Instant::now() + backoff.step();
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(retry_at) => break,
                        batch = rx.recv() => match batch {
                            Some(batch) => { let _ = batch.reply.send(Err(err.clone())); }
                            None => return,
                        },
                    }
                }
            }
        }
    }
}

/// One reply slot the reader fills.
struct Pending {
    count: u32,
    /// The last batch of one write: answering it closes the write's window slot.
    closes_write: bool,
    /// When the write carrying the batch started: the stall check and the
    /// backend time (`Replies::written_at`) count from here.
    sent_at: Instant,
    reply: oneshot::Sender<BatchReply>,
    meter: Option<Arc<ReplyMeter>>,
    /// An injected `CLIENT TRACKING ON`: its `+OK` confirms this session.
    confirms: Option<Arc<Session>>,
    landings: Landings,
    _in_flight: InFlight,
    _script: Option<ScriptInFlight>,
}

impl Pending {
    /// A request keygate puts in front of a write itself (re-AUTH, CLIENT
    /// TRACKING): its reply has no client (the receiver is gone), so the
    /// reader drops it, after confirming `confirms` on success.
    fn injected(
        sent_at: Instant,
        health: &Arc<NodeHealth>,
        confirms: Option<Arc<Session>>,
    ) -> Pending {
        let (reply, _) = oneshot::channel();
        Pending {
            count: 1,
            closes_write: false,
            sent_at,
            reply,
            meter: None,
            confirms,
            landings: Landings::default(),
            _in_flight: InFlight::new(health),
            _script: None,
        }
    }

    /// Its client is gone (the receiver was dropped), or is being closed
    /// because its replies went past the hard limit: its replies are
    /// dropped as they arrive instead of being gathered.
    fn abandoned(&self) -> bool {
        self.reply.is_closed() || self.meter.as_ref().is_some_and(|m| m.tripped())
    }
}

/// Counts a written batch in its node's in-flight total until dropped
/// (answered, failed, or the connection went away).
struct InFlight(Arc<NodeHealth>);

impl InFlight {
    fn new(health: &Arc<NodeHealth>) -> InFlight {
        health.batch_sent();
        InFlight(health.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.batch_done();
    }
}

/// Counts a written script batch in its node's health until dropped.
struct ScriptInFlight(Arc<NodeHealth>);

impl ScriptInFlight {
    fn new(health: &Arc<NodeHealth>, script: bool) -> Option<ScriptInFlight> {
        script.then(|| {
            health.script_sent();
            ScriptInFlight(health.clone())
        })
    }
}

impl Drop for ScriptInFlight {
    fn drop(&mut self) {
        self.0.script_done();
    }
}

/// The writes on the wire whose replies have not all come back, shared by
/// the writer (which waits for room) and the reader (which makes it).
///
/// Holding the next write back while the connection is busy lets it gather
/// every batch that arrives meanwhile: at `-P 16` on loopback the writes to
/// Redis carried ~70 requests each without a limit and several hundred with
/// two in flight, and Redis and keygate together spent ~8% less CPU per
/// request. An idle connection writes at once, so a lone request waits for
/// nothing.
#[derive(Debug, Default)]
struct WriteWindow {
    in_flight: AtomicUsize,
    room: Notify,
}

impl WriteWindow {
    /// Waits until fewer than `limit` writes are in flight (0: never waits).
    async fn wait_for_room(&self, limit: usize) {
        while limit > 0 && self.in_flight.load(Ordering::Acquire) >= limit {
            // A permit stored by an `answered` between the load and here
            // is not lost: `notify_one` keeps it for the next `notified`.
            self.room.notified().await;
        }
    }

    /// A write went out.
    fn sent(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// The last reply of a write came back.
    fn answered(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.room.notify_one();
    }
}

/// Runs one live connection; returns false when every handle is gone.
///
/// Plain TCP splits into owned halves (no lock between reader and writer);
/// TLS, one state machine for both directions, splits with `tokio::io::split`.
async fn run(
    stream: BackendStream,
    rx: &mut mpsc::Receiver<Batch>,
    opts: &MuxOptions,
    health: &Arc<NodeHealth>,
    logged_in: u64,
) -> bool {
    match stream {
        BackendStream::Plain(tcp) => {
            let (rd, wr) = tcp.into_split();
            run_split(rd, wr, rx, opts, health, logged_in).await
        }
        BackendStream::Tls(tls) => {
            let (rd, wr) = tokio::io::split(*tls);
            run_split(rd, wr, rx, opts, health, logged_in).await
        }
    }
}

/// [`run`] on the two halves of a connection.
async fn run_split<R, W>(
    rd: R,
    mut wr: W,
    rx: &mut mpsc::Receiver<Batch>,
    opts: &MuxOptions,
    health: &Arc<NodeHealth>,
    mut logged_in: u64,
) -> bool
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let addr: Arc<str> = opts.connect.addr.as_str().into();
    let (pending_tx, pending_rx) = mpsc::unbounded_channel::<Pending>();
    let window = Arc::new(WriteWindow::default());
    let mut reader = tokio::spawn(read_loop(
        rd,
        pending_rx,
        window.clone(),
        addr.clone(),
        opts.command_timeout,
        health.clone(),
        opts.tracking.clone(),
    ));
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut small = BytesMut::with_capacity(16 * 1024);
    // The tracking generation this connection tracks towards (none yet),
    // and the session its reads are tracked under.
    let mut tracked = 0u64;
    let mut session: Option<Arc<Session>> = None;
    let open = loop {
        let first = tokio::select! {
            biased;
            _ = &mut reader => break true,
            batch = rx.recv() => match batch {
                Some(batch) => batch,
                None => break false,
            },
        };
        // While the window is full, the batches arriving wait in the
        // queue and join this write.
        tokio::select! {
            biased;
            _ = &mut reader => break true,
            _ = window.wait_for_room(opts.writes_in_flight) => {}
        }
        // Let the other clients that are ready run first, so their batches
        // join this write: one syscall for many clients' requests.
        tokio::task::yield_now().await;
        let mut gathered = 0;
        let sent_at = Instant::now();
        if opts.connect.password.generation() != logged_in {
            // The password rotated: log in again in front of this write.
            // Its reply has no client (the receiver is gone), so the reader
            // drops it; a refused AUTH leaves the login as it was.
            logged_in = opts.connect.password.generation();
            if let Some(auth) = reauth_request(&opts.connect) {
                small.extend_from_slice(auth.frame());
                let pending = Pending::injected(sent_at, health, None);
                if pending_tx.send(pending).is_err() {
                    break true;
                }
            }
        }
        if let Some(t) = &opts.tracking {
            if t.generation() != tracked {
                // The invalidation connection changed (or this connection
                // is new): track towards the current one, in front of this
                // write; what was filled under the old session is stale.
                tracked = t.generation();
                if let Some(old) = session.take() {
                    old.end(&t.caches);
                }
                if let Some((id, link)) = t.redirect() {
                    let track = Request::from_args(&[
                        "CLIENT",
                        "TRACKING",
                        "ON",
                        "REDIRECT",
                        &id.to_string(),
                        "OPTIN",
                    ]);
                    small.extend_from_slice(track.frame());
                    let fresh = Session::new(link);
                    let pending = Pending::injected(sent_at, health, Some(fresh.clone()));
                    session = Some(fresh);
                    if pending_tx.send(pending).is_err() {
                        break true;
                    }
                }
            }
        }
        let mut next = Some(first);
        // Each batch's entry is queued for the reader once the next one is
        // gathered: the last one is marked as closing the write.
        let mut held: Option<Pending> = None;
        while let Some(batch) = next.take() {
            if let (Some(stamp), Some(session)) = (&batch.stamp, &session) {
                let _ = stamp.set(session.clone());
            }
            for piece in batch.payload {
                gathered += piece.len();
                if piece.len() >= LARGE_PIECE {
                    if !small.is_empty() {
                        chunks.push(small.split().freeze());
                    }
                    chunks.push(piece);
                } else {
                    small.extend_from_slice(&piece);
                }
            }
            let pending = Pending {
                count: batch.count,
                closes_write: false,
                sent_at,
                reply: batch.reply,
                meter: batch.meter,
                confirms: None,
                landings: batch.landings,
                _in_flight: InFlight::new(health),
                _script: ScriptInFlight::new(health, batch.script),
            };
            if let Some(prev) = held.replace(pending) {
                if pending_tx.send(prev).is_err() {
                    break;
                }
            }
            if gathered < MAX_GATHER {
                next = rx.try_recv().ok();
            }
        }
        if let Some(mut last) = held.take() {
            last.closes_write = true;
            window.sent();
            let _ = pending_tx.send(last);
        }
        if !small.is_empty() {
            chunks.push(small.split().freeze());
        }
        let mut failed = false;
        for chunk in chunks.drain(..) {
            if let Err(e) = wr.write_all(&chunk).await {
                tracing::warn!(backend = %addr, error = %e, "backend write failed");
                failed = true;
                break;
            }
        }
        // TLS holds records until flushed; plain TCP's flush is a no-op.
        if !failed {
            if let Err(e) = wr.flush().await {
                tracing::warn!(backend = %addr, error = %e, "backend write failed");
                failed = true;
            }
        }
        if failed {
            break true;
        }
    };
    reader.abort();
    if let (Some(session), Some(t)) = (session, &opts.tracking) {
        // Redis forgets what a closed connection tracked, silently.
        session.end(&t.caches);
    }
    open
}

/// Bytes of a batch's replies the reader gathers before it counts them on
/// the client's meter and looks whether the client is still there: a small
/// batch is counted once, when it is complete.
const COUNT_STEP: usize = 64 * 1024;
/// The read buffer's usual size, and the least it grows by.
const READ_CHUNK: usize = 64 * 1024;
/// A read buffer a large reply grew past this is replaced once empty, so
/// the memory goes back with the reply.
const RETAINED_READ_BUF: usize = 1024 * 1024;

/// Reads replies and hands them to pending batches in order.
///
/// Reply bytes are counted on their client's meter as they arrive, a
/// batch's bytes before it is complete included (a slow client's replies
/// are held here, so that the connection keeps serving the others, up to
/// the client's hard limit). A batch whose client is gone is not gathered:
/// its frames are dropped as they are found.
async fn read_loop<R: AsyncRead + Unpin>(
    mut rd: R,
    mut pending_rx: mpsc::UnboundedReceiver<Pending>,
    window: Arc<WriteWindow>,
    addr: Arc<str>,
    timeout: Duration,
    health: Arc<NodeHealth>,
    tracking: Option<Arc<NodeTracking>>,
) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut scanner = ReplyScanner::new(REPLY_MAX_DEPTH);
    let mut queue: VecDeque<Pending> = VecDeque::new();
    let mut found = 0u32;
    // The ends of the front batch's frames found so far.
    let mut ends = FrameEnds::new();
    // Where the next frame starts in `buf` (frames of a batch stay in `buf`
    // until the batch is complete).
    let mut frame_start = 0usize;
    // Bytes at the front of `buf` already counted on the front batch's meter.
    let mut counted = 0usize;
    // The front batch's client is gone: its frames are dropped as found.
    let mut discarding = false;
    // `buf`'s allocation grew past RETAINED_READ_BUF: its capacity cannot
    // tell (after `split_to` it counts only what lies past the frames
    // handed out, which can be little while the allocation is large).
    let mut grown = false;
    // Bytes arrived since the last tick: a node still sending is not stalled
    // (a large reply may take longer than `timeout` to arrive whole).
    let mut progressed = false;
    let mut tick = tokio::time::interval(
        (timeout / 4).clamp(Duration::from_millis(10), Duration::from_millis(250)),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let fail_all = |queue: &mut VecDeque<Pending>,
                    pending_rx: &mut mpsc::UnboundedReceiver<Pending>,
                    counted: usize,
                    err: BackendError| {
        while let Ok(p) = pending_rx.try_recv() {
            queue.push_back(p);
        }
        // What was counted for the front batch's client is an error now.
        uncount(queue.front(), counted);
        for p in queue.drain(..) {
            let _ = p.reply.send(Err(err.clone()));
        }
    };
    loop {
        loop {
            let frame = match scanner.next_frame(&buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(backend = %addr, error = %e, "invalid backend reply");
                    let err = BackendError::Protocol {
                        addr: addr.to_string(),
                        reason: e.to_string(),
                    };
                    fail_all(&mut queue, &mut pending_rx, counted, err);
                    return;
                }
            };
            if frame.kind == ReplyKind::Push {
                // Out-of-band push on a shared connection: nobody asked for
                // it, and it is no reply. The only one a connection here
                // gets is RESP3 tracking's `tracking-redir-broken` (the
                // invalidation connection is gone, which keygate learns on
                // that connection), and Redis may put it between two replies
                // of a batch: it is cut out of the batch's bytes.
                let start = if discarding { 0 } else { frame_start };
                let len = frame.end - start;
                if start == 0 {
                    let _ = buf.split_to(frame.end);
                } else {
                    let rest = buf.split_off(frame.end);
                    buf.truncate(start);
                    buf.unsplit(rest);
                }
                scanner.consume(len);
                let pushed = counted.saturating_sub(start).min(len);
                uncount(queue.front(), pushed);
                counted -= pushed;
                continue;
            }
            if queue.is_empty() {
                if let Ok(p) = pending_rx.try_recv() {
                    queue.push_back(p);
                }
            }
            let Some(front) = queue.front() else {
                tracing::warn!(backend = %addr, "backend sent a reply nobody asked for");
                return;
            };
            if frame.kind == ReplyKind::Error
                && buf
                    .get(frame_start..frame.end)
                    .is_some_and(|f| f.starts_with(b"-READONLY"))
            {
                // The node was demoted under us: the topology re-checks roles.
                health.readonly_reply();
                if let Some(t) = &tracking {
                    t.caches.flush_all(Evicted::Flush);
                }
            }
            if found == 0 {
                if let Some(session) = &front.confirms {
                    if frame.kind != ReplyKind::Error {
                        session.confirm();
                    }
                }
                discarding = front.abandoned();
                if !discarding {
                    // One allocation for a pipelined batch, none for one or two frames.
                    ends.reserve_exact((front.count as usize).min(MAX_ENDS_RESERVED));
                }
            }
            found += 1;
            if discarding {
                // Nobody will read it: gone as soon as it is whole.
                let _ = buf.split_to(frame.end);
                scanner.consume(frame.end);
                counted = counted.saturating_sub(frame.end);
            } else {
                frame_start = frame.end;
                ends.push(frame);
            }
            if found == front.count {
                found = 0;
                let Some(p) = queue.pop_front() else {
                    return;
                };
                if p.closes_write {
                    window.answered();
                }
                if std::mem::take(&mut discarding) {
                    counted = 0;
                    continue;
                }
                let bytes = buf.split_to(frame_start).freeze();
                scanner.consume(frame_start);
                frame_start = 0;
                if let Some(meter) = &p.meter {
                    // The meter now holds exactly this batch's bytes, which
                    // the client takes off once it has written them.
                    if counted < bytes.len() {
                        meter.add(bytes.len() - counted);
                    } else {
                        meter.sub(counted - bytes.len());
                    }
                }
                counted = 0;
                let replies = Replies {
                    bytes,
                    ends: std::mem::take(&mut ends),
                    written_at: Some(p.sent_at.into_std()),
                };
                p.landings.land(|i| {
                    let start = match i.checked_sub(1) {
                        Some(before) => replies.ends.get(before)?.end,
                        None => 0,
                    };
                    let end = replies.ends.get(i)?.end;
                    (start <= end && end <= replies.bytes.len())
                        .then(|| replies.bytes.slice(start..end))
                });
                let _ = p.reply.send(Ok(replies));
            }
        }
        // A batch still arriving is counted as it arrives, so a client
        // whose replies outgrow its hard limit is cut off before they are whole.
        if !discarding && buf.len().saturating_sub(counted) >= COUNT_STEP {
            if queue.is_empty() {
                if let Ok(p) = pending_rx.try_recv() {
                    queue.push_back(p);
                }
            }
            if let Some(meter) = queue.front().and_then(|p| p.meter.as_ref()) {
                meter.add(buf.len().saturating_sub(counted));
                counted = buf.len();
            }
        }
        if !discarding && frame_start >= COUNT_STEP && queue.front().is_some_and(Pending::abandoned)
        {
            // The client left, or just went past its hard limit, with this
            // batch half gathered: free what was gathered before the buffer
            // grows again for the rest.
            let _ = buf.split_to(frame_start);
            scanner.consume(frame_start);
            counted = counted.saturating_sub(frame_start);
            frame_start = 0;
            ends.clear();
            discarding = true;
        }
        if grown && buf.len() < RETAINED_READ_BUF {
            // A large reply grew the buffer and is gone from it: move what
            // little followed it to a small one, so the large allocation is
            // freed once its replies are written (or at once if dropped).
            let mut small = BytesMut::with_capacity(READ_CHUNK.max(buf.len()));
            small.extend_from_slice(&buf);
            buf = small;
            grown = false;
        }
        tokio::select! {
            read = rd.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    let err = BackendError::ConnectionLost { addr: addr.to_string() };
                    tracing::warn!(backend = %addr, "backend connection closed");
                    fail_all(&mut queue, &mut pending_rx, counted, err);
                    return;
                }
                Ok(_) => {
                    progressed = true;
                    health.progressed();
                }
            },
            _ = tick.tick() => {
                while let Ok(p) = pending_rx.try_recv() {
                    queue.push_back(p);
                }
                let idle = !std::mem::take(&mut progressed);
                if let Some(front) = queue.front() {
                    if idle && front.sent_at.elapsed() > timeout {
                        tracing::warn!(backend = %addr, "backend stalled; dropping the connection");
                        let err = BackendError::Timeout { addr: addr.to_string(), millis: timeout.as_millis() };
                        fail_all(&mut queue, &mut pending_rx, counted, err);
                        return;
                    }
                }
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            // Doubling while a large reply arrives: a buffer still shared
            // with replies handed out is copied on growth, and growing it a
            // chunk at a time would copy the reply over and over.
            buf.reserve(buf.len().max(READ_CHUNK));
            grown |= buf.capacity() > RETAINED_READ_BUF;
        }
    }
}

/// Takes `n` counted bytes back off the meter of `front`'s client.
fn uncount(front: Option<&Pending>, n: usize) {
    if let Some(meter) = front.and_then(|p| p.meter.as_ref()) {
        meter.sub(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RESP3 tracking's `tracking-redir-broken` push between two replies of
    /// one batch, whole or arriving in pieces, is cut out of the batch's
    /// bytes; one between batches is dropped.
    #[tokio::test]
    async fn a_push_between_replies_is_cut_out() {
        use tokio::io::AsyncWriteExt;
        let (mut node, rd) = tokio::io::duplex(4096);
        let (tx, rx) = mpsc::unbounded_channel();
        let health = Arc::new(NodeHealth::default());
        let reader = tokio::spawn(read_loop(
            rd,
            rx,
            Arc::new(WriteWindow::default()),
            Arc::from("node"),
            Duration::from_secs(5),
            health.clone(),
            None,
        ));
        let batch = |count| {
            let (reply, answer) = oneshot::channel();
            let mut p = Pending::injected(Instant::now(), &health, None);
            p.count = count;
            p.reply = reply;
            tx.send(p).expect("reader");
            answer
        };
        let (first, second) = (batch(3), batch(1));
        const PUSH: &[u8] = b">2\r\n$21\r\ntracking-redir-broken\r\n:7\r\n";
        let mut bytes = b"+OK\r\n".to_vec();
        bytes.extend_from_slice(PUSH);
        bytes.extend_from_slice(b"$1\r\nv\r\n");
        bytes.extend_from_slice(PUSH);
        bytes.extend_from_slice(b":1\r\n");
        bytes.extend_from_slice(PUSH);
        bytes.extend_from_slice(b":5\r\n");
        let (a, b) = bytes.split_at(12);
        node.write_all(a).await.expect("write");
        tokio::task::yield_now().await;
        node.write_all(b).await.expect("write");
        let replies = first.await.expect("answered").expect("replies");
        assert_eq!(&replies.bytes[..], b"+OK\r\n$1\r\nv\r\n:1\r\n");
        let ends: Vec<usize> = replies.ends.iter().map(|e| e.end).collect();
        assert_eq!(ends, [5, 12, 16]);
        let replies = second.await.expect("answered").expect("replies");
        assert_eq!(&replies.bytes[..], b":5\r\n");
        reader.abort();
    }

    /// The writer waits only while the window is full, and an answer made
    /// before it started waiting still lets it through.
    #[tokio::test]
    async fn window_waits_only_while_full() {
        let window = WriteWindow::default();
        window.wait_for_room(2).await;
        window.sent();
        window.wait_for_room(2).await;
        window.sent();
        let full = tokio::time::timeout(Duration::from_millis(20), window.wait_for_room(2)).await;
        assert!(full.is_err(), "two writes in flight fill a window of two");
        // Unlimited never waits.
        window.wait_for_room(0).await;
        window.answered();
        tokio::time::timeout(Duration::from_secs(1), window.wait_for_room(2))
            .await
            .expect("room after an answer");
        assert_eq!(window.in_flight.load(Ordering::Acquire), 1);
    }
}
