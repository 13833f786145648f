//! Following a cluster's redirects for one client's batches, so the client
//! never sees `MOVED` or `ASK`.
//!
//! A batch for a cluster goes out as one part per node, with a follower:
//! a future in the client's reply queue (polled by the client's own task,
//! no task of its own) that takes each part's replies first. When none is
//! a redirect (`MOVED`, `ASK`, `TRYAGAIN`; only error kinds the reader
//! recorded are looked at), it hands them on, merged back in the client's
//! order when the batch had several parts. Otherwise it sends each
//! redirected request again (request frames and reply frames pair one to
//! one, TTL follow-ups included, so a follow-up is retried with its write
//! or alone when only it was redirected): `MOVED` to the named node, after
//! asking for a map refresh; `ASK` to the named node with `ASKING` in
//! front, in the same write, leaving the map alone; `TRYAGAIN` to the same
//! node after a short pause. At most `max_redirects` times per request,
//! then the client gets Redis's `TRYAGAIN` error. The replies are put back
//! in place, so the client still gets one reply per command, in order.
//!
//! Ordering invariants (a later command of the client for the same key
//! never runs before a retried one):
//! - a client's followers form a chain: each retries only after the one
//!   before it is done, so retries leave in request order;
//! - a batch routed by a newer slot map than a batch still in flight waits
//!   for that chain to finish before it is sent ([`Chain::must_wait`]; the
//!   client's task polls its queue's followers meanwhile);
//! - a slot's requests in one batch are in one part, retried in order.
//!   batches routed by the same map send a slot's requests to the same
//!   node, where a stale one is redirected too and retried in turn.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;
use tokio::sync::{oneshot, Notify};

use super::batch::SplitAt;
use super::queue::Following;
use super::{split, Context};
use crate::backend::meter::ReplyMeter;
use crate::backend::mux::{Batch, BatchReply, Payload};
use crate::backend::node::Node;
use crate::backend::BackendError;
use crate::near_cache::Evicted;
use crate::protocol::reply::{
    is_cluster_redirect, FrameEnd, FrameEnds, Frames, Replies, ReplyKind, DEFAULT_MAX_DEPTH,
};
use crate::protocol::request::{Request, RequestScanner, ScanLimits};
use crate::protocol::Protocol;
use crate::topology::cluster::{host_of, Redirect, RefreshReason};

/// The pause before a `TRYAGAIN` is retried.
const TRYAGAIN_PAUSE: Duration = Duration::from_millis(20);

/// What a client answers when its request was redirected more than
/// `max_redirects` times (Redis's text for a slot in migration).
const EXHAUSTED: &[u8] = b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n";

/// The tail of a client's chain of followers, and the map generation its
/// batches were routed by.
#[derive(Debug, Default)]
pub(super) struct Chain {
    tail: Option<Arc<Link>>,
    generation: u64,
}

/// One follower's place in its client's chain: done once it and every
/// follower before it are done (or gone).
///
/// One flag and one wake-up rather than a watch channel: a batch sets it
/// once and at most its successor waits on it, so this is all a follower
/// pays when nothing was redirected.
#[derive(Debug, Default)]
struct Link {
    done: AtomicBool,
    /// Wakes the successor waiting in [`Link::wait`]; its permit covers a
    /// wake-up sent before the successor waits.
    wake: Notify,
}

impl Link {
    fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    async fn wait(&self) {
        while !self.is_done() {
            self.wake.notified().await;
        }
    }
}

/// Marks its follower's link done when dropped: when the follower
/// finishes, and when it is dropped unfinished (its client went away), so
/// a successor never waits on a gone follower.
struct Done(Arc<Link>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.done.store(true, Ordering::Release);
        self.0.wake.notify_one();
    }
}

impl Chain {
    /// Whether a batch routed by map `generation` must wait for the
    /// followers in flight first: they were routed by another map.
    pub(super) fn must_wait(&self, generation: u64) -> bool {
        self.tail
            .as_ref()
            .is_some_and(|tail| self.generation != generation && !tail.is_done())
    }

    /// Links a new follower routed by `generation`: returns the previous
    /// tail to wait for and the guard that marks the new one done.
    fn link(&mut self, generation: u64) -> (Option<Arc<Link>>, Done) {
        let link = Arc::new(Link::default());
        self.generation = generation;
        let previous = self.tail.replace(link.clone());
        (previous, Done(link))
    }
}

/// Everything a follower needs to resend a batch's requests.
pub(super) struct Follow {
    pub(super) ctx: Arc<Context>,
    /// The node the batch went to.
    pub(super) node: Arc<Node>,
    pub(super) protocol: Protocol,
    pub(super) client_id: u64,
    pub(super) database: u32,
    /// The batch's request bytes, and how many request frames they hold.
    pub(super) payload: Payload,
    pub(super) frames: u32,
    pub(super) meter: Arc<ReplyMeter>,
    /// The batch carries a script (see [`Batch::script`]); so do its retries.
    pub(super) script: bool,
    /// It went to a replica for reads of this slot: when that connection
    /// is lost, it is read again from the slot's master.
    pub(super) read_slot: Option<u16>,
}

impl Follow {
    /// A read-only part whose replica connection failed, sent again to
    /// its slot's master: reads run twice harmlessly, and a replica that
    /// died is no error of the client's. Its replies are counted on the
    /// client's meter as they arrive, as the first attempt's would have been.
    async fn read_from_master(mut self, slot: u16) -> (BatchReply, Follow) {
        let node = match self.ctx.router.master_for_slot(slot).await {
            Ok(node) => node,
            Err(e) => return (Err(e.into()), self),
        };
        let (tx, rx) = oneshot::channel();
        let batch = Batch {
            payload: self.payload.clone(),
            count: self.frames,
            reply: tx,
            meter: Some(self.meter.clone()),
            script: self.script,
            stamp: None,
            landings: Default::default(),
        };
        node.mux_in(self.protocol, self.client_id, self.database)
            .submit(batch)
            .await;
        let reply = rx.await.unwrap_or_else(|_| {
            Err(BackendError::ConnectionLost {
                addr: node.addr().to_string(),
            })
        });
        self.node = node;
        self.read_slot = None;
        (reply, self)
    }
}

/// Parts whose replies a merge walks without a heap allocation (a small
/// cluster's masters).
const INLINE_PARTS: usize = 4;

/// A part of a client batch: sent to its node, with what its follower
/// needs to resend it, or not sent because no node could be routed to.
pub(super) enum Sent {
    Part(oneshot::Receiver<BatchReply>, Follow),
    Failed(BackendError),
}

/// The follower of one client batch, linked into `chain`: it takes each
/// part's replies, retries what was redirected (only then doing more than
/// looking at the reply kinds the reader recorded), and puts every reply
/// back in the client's order (`order`: each request frame's part). It is
/// polled by the client's reply queue, so a batch without redirects costs
/// no task of its own.
pub(super) fn follow(
    chain: &mut Chain,
    generation: u64,
    parts: Vec<Sent>,
    (order, splits): (Vec<u8>, Vec<SplitAt>),
    meter: &Arc<ReplyMeter>,
) -> Following {
    let (previous, done) = chain.link(generation);
    let meter = meter.clone();
    Following::new(async move {
        let mut parts = parts;
        // Each part's first replies, taken where the part lies: what to
        // resend stays in place unless a reply asks for it.
        let mut firsts: Vec<BatchReply> = Vec::with_capacity(parts.len());
        for part in &mut parts {
            firsts.push(match part {
                Sent::Part(rx, follow) => rx.await.unwrap_or_else(|_| Err(lost(follow))),
                // Its error is taken below.
                Sent::Failed(_) => Ok(Replies::default()),
            });
        }
        if let Some(previous) = previous {
            previous.wait().await;
        }
        let answered = parts.iter().zip(&firsts).all(|part| match part {
            (Sent::Part(..), Ok(replies)) => !has_redirect(replies),
            _ => false,
        });
        let mut results = if answered {
            // The usual batch: every part answered, nothing redirected.
            drop(parts);
            firsts
        } else {
            Box::pin(settle_parts(parts, firsts)).await
        };
        let merged = match (results.len(), splits.is_empty()) {
            // One part: its replies as they are.
            (1, true) => results.pop().unwrap_or_else(|| Ok(Replies::default())),
            _ => Ok(merge(results, &order, &splits, &meter)),
        };
        drop(done);
        merged
    })
}

/// The parts' results once what failed or was redirected is settled: a
/// replica's lost read read again from the master, redirected requests
/// retried ([`retry`]), a failed part's error its result.
async fn settle_parts(parts: Vec<Sent>, firsts: Vec<BatchReply>) -> Vec<BatchReply> {
    let mut results = Vec::with_capacity(parts.len());
    for (part, first) in parts.into_iter().zip(firsts) {
        let (first, follow) = match part {
            Sent::Part(_, follow) => reread(first, Some(follow)).await,
            Sent::Failed(e) => (Err(e), None),
        };
        results.push(match settle(first, follow) {
            Settled::Done(result) => result,
            Settled::Retry(replies, follow) => Ok(retry(&follow, replies).await),
        });
    }
    results
}

/// Whether the node may be gone: the connection failed or stalled.
fn is_lost(e: &BackendError) -> bool {
    matches!(
        e,
        BackendError::ConnectionLost { .. }
            | BackendError::Unavailable { .. }
            | BackendError::Timeout { .. }
    )
}

/// A part a replica's lost connection left unanswered: its read goes to the
/// slot's master instead ([`Follow::read_from_master`]).
async fn reread(first: BatchReply, follow: Option<Follow>) -> (BatchReply, Option<Follow>) {
    match (first, follow) {
        (Err(e), Some(follow)) if is_lost(&e) => match follow.read_slot {
            Some(slot) => {
                let (again, follow) = follow.read_from_master(slot).await;
                (again, Some(follow))
            }
            None => (Err(e), Some(follow)),
        },
        other => other,
    }
}

/// A part whose connection went before it answered.
fn lost(follow: &Follow) -> BackendError {
    BackendError::ConnectionLost {
        addr: follow.node.addr().to_string(),
    }
}

/// What a part's first replies need.
enum Settled {
    /// Nothing more: the part's result.
    Done(BatchReply),
    /// Its redirected requests retried ([`retry`]).
    Retry(Replies, Follow),
}

/// Whether a part's first replies hold redirects (only the reply kinds the
/// reader recorded are looked at, then the error lines); a lost master
/// asks for a map refresh.
fn settle(first: BatchReply, follow: Option<Follow>) -> Settled {
    match (first, follow) {
        (Ok(replies), Some(follow)) if has_redirect(&replies) => Settled::Retry(replies, follow),
        (Err(e), Some(follow)) => {
            // A master that died may have been replaced: look now.
            if let Some(cluster) = follow.ctx.router.cluster().filter(|_| is_lost(&e)) {
                cluster.request_refresh(RefreshReason::ConnectionLost);
            }
            Settled::Done(Err(e))
        }
        (result, _) => Settled::Done(result),
    }
}

/// The parts' replies in the client's order: request frame `i` is
/// answered by the next frame of part `order[i]`. A failed part answers
/// each of its requests with its error. The client's meter is set to what
/// is handed on (the queue takes every handed byte off it).
fn merge(
    results: Vec<BatchReply>,
    order: &[u8],
    splits: &[SplitAt],
    meter: &ReplyMeter,
) -> Replies {
    let parts: SmallVec<[Result<Replies, Bytes>; INLINE_PARTS]> = results
        .into_iter()
        .map(|r| {
            r.map_err(|e| {
                let mut line = BytesMut::new();
                crate::protocol::encode::error(&mut line, &e.client_message());
                line.freeze()
            })
        })
        .collect();
    let written_at = parts
        .iter()
        .filter_map(|p| p.as_ref().ok().and_then(|r| r.written_at))
        .min();
    let total: usize = parts
        .iter()
        .map(|p| p.as_ref().map_or(0, |r| r.bytes.len()))
        .sum();
    let mut bytes = BytesMut::with_capacity(total);
    let mut ends = FrameEnds::with_capacity(order.len());
    // Each part's frames, walked in step with `order`.
    let mut frames: SmallVec<[Result<Frames<'_>, &Bytes>; INLINE_PARTS]> = parts
        .iter()
        .map(|p| p.as_ref().map(|r| r.frames(DEFAULT_MAX_DEPTH)))
        .collect();
    let mut next = |part: u8| -> (&[u8], ReplyKind) {
        match frames.get_mut(usize::from(part)) {
            Some(Ok(frames)) => frames.next().unwrap_or((INTERNAL, ReplyKind::Error)),
            Some(Err(line)) => (&line[..], ReplyKind::Error),
            None => (INTERNAL, ReplyKind::Error),
        }
    };
    let mut splits = splits.iter().peekable();
    let mut i = 0;
    while let Some(&part) = order.get(i) {
        match splits.next_if(|s| s.start == i) {
            Some(split) => {
                // A command split by slot: its parts' replies become one.
                let parts = order.get(i..i + split.count).unwrap_or_default();
                let replies: Vec<&[u8]> = parts.iter().map(|&p| next(p).0).collect();
                let one = split::merge(&split.merge, &replies);
                bytes.extend_from_slice(&one);
                ends.push(FrameEnd {
                    end: bytes.len(),
                    kind: ReplyKind::of_frame(&one),
                });
                i += split.count.max(1);
            }
            None => {
                // A run of one part's frames lies end to end in its
                // bytes: copied at once (`run`, not yet in `bytes`).
                let whole = parts.get(usize::from(part)).and_then(|p| p.as_ref().ok());
                let (mut run, kind) = next(part);
                ends.push(FrameEnd {
                    end: bytes.len() + run.len(),
                    kind,
                });
                i += 1;
                while order.get(i) == Some(&part) && splits.peek().is_none_or(|s| s.start != i) {
                    let (frame, kind) = next(part);
                    match whole.and_then(|w| joined(&w.bytes, run, frame)) {
                        Some(longer) => run = longer,
                        None => {
                            bytes.extend_from_slice(run);
                            run = frame;
                        }
                    }
                    ends.push(FrameEnd {
                        end: bytes.len() + run.len(),
                        kind,
                    });
                    i += 1;
                }
                bytes.extend_from_slice(run);
            }
        }
    }
    // The meter counted what arrived; the client is handed this.
    let handed = bytes.len();
    if handed > total {
        meter.add(handed - total);
    } else {
        meter.sub(total - handed);
    }
    Replies {
        bytes: bytes.freeze(),
        ends,
        written_at,
    }
}

/// `a` and then `b` as one slice of `whole`, when `b` starts where `a`
/// ends and both lie in `whole`.
fn joined<'a>(whole: &'a [u8], a: &[u8], b: &[u8]) -> Option<&'a [u8]> {
    let base = whole.as_ptr() as usize;
    let start = (a.as_ptr() as usize).checked_sub(base)?;
    let middle = start.checked_add(a.len())?;
    if (b.as_ptr() as usize).checked_sub(base)? != middle {
        return None;
    }
    whole.get(start..middle.checked_add(b.len())?)
}

/// A frame the parts do not hold (keygate miscounted): said so, not a desync.
const INTERNAL: &[u8] = b"-ERR keygate: internal error merging replies\r\n";

/// Whether any reply is an error a cluster uses to send a request elsewhere
/// (or to say it is down).
fn has_redirect(replies: &Replies) -> bool {
    // The kinds the reader recorded say first whether any reply is an
    // error at all (almost never): only then are frames looked at.
    if !replies.ends.is_empty() && replies.ends.iter().all(|e| e.kind != ReplyKind::Error) {
        return false;
    }
    replies
        .frames(DEFAULT_MAX_DEPTH)
        .any(|(frame, kind)| kind == ReplyKind::Error && is_cluster_redirect(frame))
}

/// One request being retried: its index in the batch, and where it goes next.
struct Pending {
    index: usize,
    node: Arc<Node>,
    asking: bool,
    /// It was answered `TRYAGAIN`: wait a moment first.
    pause: bool,
    /// What it was answered, counted when it is followed.
    redirect: Redirect,
}

/// Retries every redirected request of a batch and returns its replies with
/// the retried ones in place.
async fn retry(follow: &Follow, replies: Replies) -> Replies {
    let mut frames: Vec<Bytes> = replies
        .frames(DEFAULT_MAX_DEPTH)
        .map(|(frame, _)| replies.bytes.slice_ref(frame))
        .collect();
    let requests = split_requests(&follow.payload);
    let arrived: usize = frames.iter().map(Bytes::len).sum();
    let cluster = follow.ctx.router.cluster();
    let max = if frames.len() == requests.len() {
        cluster.map_or(0, |c| c.max_redirects())
    } else {
        // Requests cannot be paired with replies: none is retried, and the
        // redirects are answered as exhausted rather than passed on.
        tracing::warn!(
            requests = requests.len(),
            replies = frames.len(),
            "cluster: a batch's requests and replies do not pair up"
        );
        0
    };
    let mut pending = redirects(
        follow,
        &frames,
        (0..frames.len()).map(|i| (i, &follow.node, false)),
    );
    if !pending.is_empty() {
        // A redirected read is sent again without `CLIENT CACHING YES`, to
        // a node that may track nothing of it, and a redirect means a slot
        // is moving: the near caches are flushed, which also drops the
        // fill of every read already on its way, this one's included.
        if let Some(caches) = follow.ctx.router.topology().near_caches() {
            caches.flush_all(Evicted::Flush);
        }
    }
    for attempt in 0..max {
        if pending.is_empty() {
            break;
        }
        tracing::debug!(
            attempt,
            requests = pending.len(),
            "cluster: following redirects"
        );
        if let Some(cluster) = cluster {
            for p in &pending {
                cluster.count_redirect(&p.redirect);
            }
        }
        // Requests to one node (with or without ASKING) go in one write.
        let mut next = Vec::new();
        for group in pending.chunk_by(|a, b| Arc::ptr_eq(&a.node, &b.node)) {
            let answers = resend(follow, group, &requests).await;
            for (p, answer) in group.iter().zip(answers) {
                if let Some(frame) = frames.get_mut(p.index) {
                    *frame = answer;
                }
            }
            let again = redirects(
                follow,
                &frames,
                group.iter().map(|p| (p.index, &p.node, p.asking)),
            );
            next.extend(again);
        }
        pending = next;
    }
    for p in &pending {
        if let Some(frame) = frames.get_mut(p.index) {
            *frame = Bytes::from_static(EXHAUSTED);
        }
    }
    let rebuilt = rebuild(&frames, replies.written_at);
    // The meter counted what arrived first; the client is handed this.
    let handed = rebuilt.bytes.len();
    if handed > arrived {
        follow.meter.add(handed - arrived);
    } else {
        follow.meter.sub(arrived - handed);
    }
    rebuilt
}

/// The requests among `candidates` (index, node it went to, whether with
/// ASKING) whose replies in `frames` say to go elsewhere or try again, and
/// where to; `CLUSTERDOWN` is left to the client and asks for a refresh.
fn redirects<'a>(
    follow: &Follow,
    frames: &[Bytes],
    candidates: impl Iterator<Item = (usize, &'a Arc<Node>, bool)>,
) -> Vec<Pending> {
    let topology = follow.ctx.router.topology();
    let cluster = follow.ctx.router.cluster();
    let mut out = Vec::new();
    for (index, node, asking) in candidates {
        let Some(frame) = frames.get(index) else {
            continue;
        };
        let Some(redirect) = Redirect::parse(frame, host_of(node.addr())) else {
            continue;
        };
        let (node, asking, pause) = match &redirect {
            Redirect::Moved { addr } => {
                if let Some(cluster) = cluster {
                    cluster.request_refresh(RefreshReason::Moved);
                }
                (topology.node(addr), false, false)
            }
            Redirect::Ask { addr } => (topology.node(addr), true, false),
            Redirect::TryAgain => (node.clone(), asking, true),
            Redirect::ClusterDown => {
                if let Some(cluster) = cluster {
                    cluster.request_refresh(RefreshReason::ClusterDown);
                }
                continue;
            }
        };
        out.push(Pending {
            index,
            node,
            asking,
            pause,
            redirect,
        });
    }
    out
}

/// Sends one node's share of the retries in one write (`ASKING` in front of
/// each request that needs it) and returns their replies, in order; a
/// failure answers each with its error.
async fn resend(follow: &Follow, group: &[Pending], requests: &[Bytes]) -> Vec<Bytes> {
    let Some(first) = group.first() else {
        return Vec::new();
    };
    let asking = Request::from_args(&["ASKING"]);
    let mut payload = BytesMut::new();
    let mut count = 0u32;
    for p in group {
        let Some(request) = requests.get(p.index) else {
            continue;
        };
        if p.asking {
            payload.extend_from_slice(asking.frame());
            count += 1;
        }
        payload.extend_from_slice(request);
        count += 1;
    }
    let (tx, rx) = oneshot::channel();
    let batch = Batch {
        payload: Payload::from_iter([payload.freeze()]),
        count,
        reply: tx,
        meter: None,
        script: follow.script,
        stamp: None,
        landings: Default::default(),
    };
    if group.iter().any(|p| p.pause) {
        tokio::time::sleep(TRYAGAIN_PAUSE).await;
    }
    first
        .node
        .mux_in(follow.protocol, follow.client_id, follow.database)
        .submit(batch)
        .await;
    let answer = rx.await.unwrap_or_else(|_| {
        Err(BackendError::ConnectionLost {
            addr: first.node.addr().to_string(),
        })
    });
    match answer {
        Ok(replies) => {
            let mut frames = replies
                .frames(DEFAULT_MAX_DEPTH)
                .map(|(frame, _)| replies.bytes.slice_ref(frame));
            group
                .iter()
                .map(|p| {
                    if p.asking {
                        // ASKING's own +OK.
                        let _ = frames.next();
                    }
                    frames
                        .next()
                        .unwrap_or_else(|| Bytes::from_static(EXHAUSTED))
                })
                .collect()
        }
        Err(e) => {
            let mut line = BytesMut::new();
            crate::protocol::encode::error(&mut line, &e.client_message());
            let line = line.freeze();
            group.iter().map(|_| line.clone()).collect()
        }
    }
}

/// The batch's request frames, one by one, read back from its payload
/// (keygate wrote them: only a retry needs them apart); as many as could be
/// read (then the pairing with replies fails).
fn split_requests(payload: &Payload) -> Vec<Bytes> {
    let mut whole = BytesMut::new();
    for piece in payload.iter() {
        whole.extend_from_slice(piece);
    }
    // Whatever keygate sent is read back, however large.
    let mut scanner = RequestScanner::new(ScanLimits {
        max_bulk_len: usize::MAX,
        max_args: usize::MAX,
        max_inline_len: usize::MAX,
    });
    let mut out = Vec::new();
    while let Ok(Some(request)) = scanner.scan(&mut whole) {
        out.push(request.into_frame());
    }
    out
}

/// Frames back to back, with their boundaries.
fn rebuild(frames: &[Bytes], written_at: Option<std::time::Instant>) -> Replies {
    let mut bytes = BytesMut::with_capacity(frames.iter().map(Bytes::len).sum());
    let mut ends = FrameEnds::new();
    for frame in frames {
        bytes.extend_from_slice(frame);
        ends.push(FrameEnd {
            end: bytes.len(),
            kind: ReplyKind::of_frame(frame),
        });
    }
    Replies {
        bytes: bytes.freeze(),
        ends,
        written_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_back_across_pieces() {
        let payload = Payload::from_iter([
            Bytes::from_static(b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET"),
            Bytes::from_static(b"\r\n$1\r\nk\r\n"),
        ]);
        let requests = split_requests(&payload);
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0], &b"*1\r\n$4\r\nPING\r\n"[..]);
        assert_eq!(requests[1], &b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"[..]);
        // A cut-off frame is not a request (and the pairing then fails).
        let short = Payload::from_iter([Bytes::from_static(b"*1\r\n$4\r\nPING\r\n*2\r\n$3")]);
        assert_eq!(split_requests(&short).len(), 1);
        // A large value is read back whole.
        let large = Request::from_args(&[&b"SET"[..], b"k", &vec![b'v'; 1 << 20]]);
        let payload = Payload::from_iter([large.frame().clone()]);
        assert_eq!(split_requests(&payload), [large.frame().clone()]);
    }

    #[test]
    fn rebuilt_replies_keep_frames_and_kinds() {
        let frames = [
            Bytes::from_static(b"+OK\r\n"),
            Bytes::from_static(b"-ERR x\r\n"),
            Bytes::from_static(b"$-1\r\n"),
        ];
        let replies = rebuild(&frames, None);
        assert_eq!(&replies.bytes[..], b"+OK\r\n-ERR x\r\n$-1\r\n");
        let kinds: Vec<ReplyKind> = replies.ends.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [ReplyKind::Value, ReplyKind::Error, ReplyKind::Nil]);
        assert!(!has_redirect(&replies));
        assert!(has_redirect(&rebuild(
            &[Bytes::from_static(b"-ASK 1 h:1\r\n")],
            None
        )));
    }

    /// Parts' replies go back in the client's order; a failed part's
    /// requests get its error, and the meter says what is handed on.
    #[test]
    fn parts_merge_in_client_order() {
        let meter = ReplyMeter::new(1 << 20);
        let a = Bytes::from_static(b"$1\r\n1\r\n$1\r\n3\r\n");
        let b = Bytes::from_static(b"$1\r\n2\r\n");
        meter.add(a.len() + b.len());
        let results = vec![
            Ok(Replies::from(a)),
            Ok(Replies::from(b)),
            Err(BackendError::ConnectionLost { addr: "x".into() }),
        ];
        let merged = merge(results, &[0, 1, 2, 0], &[], &meter);
        let want_err = {
            let mut line = BytesMut::new();
            let e = BackendError::ConnectionLost { addr: "x".into() };
            crate::protocol::encode::error(&mut line, &e.client_message());
            line.freeze()
        };
        let want = [&b"$1\r\n1\r\n$1\r\n2\r\n"[..], &want_err, b"$1\r\n3\r\n"].concat();
        assert_eq!(&merged.bytes[..], &want[..]);
        let kinds: Vec<ReplyKind> = merged.ends.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                ReplyKind::Value,
                ReplyKind::Value,
                ReplyKind::Error,
                ReplyKind::Value
            ]
        );
        assert_eq!(meter.held(), want.len());
    }

    /// Runs of one part's frames are copied at once, with every frame's
    /// own end and kind; a failed part's error repeats in a run too.
    #[test]
    fn runs_of_one_part_merge_frame_by_frame() {
        let meter = ReplyMeter::new(1 << 20);
        let a = Bytes::from_static(b"$1\r\n1\r\n-ERR e\r\n$-1\r\n$1\r\n5\r\n");
        let b = Bytes::from_static(b":4\r\n");
        let delimited = |bytes: &Bytes| {
            let mut replies = Replies::from(bytes.clone());
            replies.ends = rebuild(
                &replies
                    .frames(DEFAULT_MAX_DEPTH)
                    .map(|(f, _)| bytes.slice_ref(f))
                    .collect::<Vec<_>>(),
                None,
            )
            .ends;
            replies
        };
        meter.add(a.len() + b.len());
        let lost = BackendError::ConnectionLost { addr: "x".into() };
        let results = vec![Ok(delimited(&a)), Ok(delimited(&b)), Err(lost)];
        let merged = merge(results, &[0, 0, 0, 1, 2, 2, 0], &[], &meter);
        let err = {
            let mut line = BytesMut::new();
            let e = BackendError::ConnectionLost { addr: "x".into() };
            crate::protocol::encode::error(&mut line, &e.client_message());
            line.freeze()
        };
        let want = [
            &b"$1\r\n1\r\n-ERR e\r\n$-1\r\n:4\r\n"[..],
            &err,
            &err,
            b"$1\r\n5\r\n",
        ]
        .concat();
        assert_eq!(&merged.bytes[..], &want[..]);
        let frames: Vec<&[u8]> = merged.frames(DEFAULT_MAX_DEPTH).map(|(f, _)| f).collect();
        assert_eq!(frames.len(), 7);
        assert_eq!(frames[1], b"-ERR e\r\n");
        assert_eq!(frames[5], &err[..]);
        let kinds: Vec<ReplyKind> = merged.ends.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                ReplyKind::Value,
                ReplyKind::Error,
                ReplyKind::Nil,
                ReplyKind::Value,
                ReplyKind::Error,
                ReplyKind::Error,
                ReplyKind::Value
            ]
        );
    }

    #[test]
    fn slices_join_only_end_to_end_inside_the_whole() {
        let whole = b"abcdef";
        assert_eq!(
            joined(whole, &whole[0..2], &whole[2..5]),
            Some(&b"abcde"[..])
        );
        assert_eq!(joined(whole, &whole[0..2], &whole[3..5]), None);
        assert_eq!(joined(whole, &whole[2..4], &whole[0..2]), None);
        let elsewhere = b"cd";
        assert_eq!(joined(whole, &whole[0..2], elsewhere), None);
    }

    #[test]
    fn a_batch_of_a_newer_map_waits_for_the_chain() {
        let mut chain = Chain::default();
        assert!(!chain.must_wait(1), "nothing in flight");
        let (previous, done) = chain.link(1);
        assert!(previous.is_none());
        assert!(!chain.must_wait(1), "same map: no wait");
        assert!(chain.must_wait(2), "newer map: wait");
        drop(done);
        assert!(!chain.must_wait(2), "chain done");
    }

    /// A follower waiting on the one before it wakes when that one is
    /// done, whether it started waiting before or after.
    #[tokio::test]
    async fn a_follower_waits_for_the_one_before() {
        let mut chain = Chain::default();
        let (_, first) = chain.link(1);
        let (previous, second) = chain.link(1);
        let previous = previous.expect("the first link");
        let waiter = tokio::spawn(async move { previous.wait().await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(first);
        waiter.await.expect("woken");
        let (previous, _third) = chain.link(1);
        drop(second);
        previous.expect("the second link").wait().await;
    }
}
