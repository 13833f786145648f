//! The reply bytes keygate holds for one client (`[proxy]
//! max_pending_reply_bytes` and `max_pending_reply_bytes_hard`).
//!
//! Replies to commands already sent arrive whether or not the client reads
//! them, and a multiplexed connection must keep reading for its other
//! clients, so a slow client's replies are held in keygate's memory. The
//! meter counts them as they arrive: whoever delivers reply bytes for the
//! client adds them (the multiplexed reader, even for a reply still arriving;
//! the client's own task for its dedicated connection), and the client's task
//! takes them off once they are written to its socket.
//!
//! Invariants: every byte added for a client is taken off exactly once (when
//! written, or by the reader when the batch fails instead); the meter trips
//! once, the first time the bytes held go past the hard limit, and stays
//! tripped: the client is then closed and what still arrives for it dropped.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Reply bytes held for one client, shared by its task and the readers that
/// deliver its replies.
#[derive(Debug)]
pub struct ReplyMeter {
    held: AtomicUsize,
    /// Past this many bytes held, the client is disconnected.
    hard_limit: usize,
    tripped: AtomicBool,
    /// Wakes the client's task once, when the meter trips.
    trip: Notify,
}

impl ReplyMeter {
    /// A meter that trips past `hard_limit` bytes held.
    pub fn new(hard_limit: usize) -> ReplyMeter {
        ReplyMeter {
            held: AtomicUsize::new(0),
            hard_limit,
            tripped: AtomicBool::new(false),
            trip: Notify::new(),
        }
    }

    /// `n` more reply bytes arrived for the client.
    pub fn add(&self, n: usize) {
        let held = self.held.fetch_add(n, Ordering::Relaxed).saturating_add(n);
        if held > self.hard_limit && !self.tripped.swap(true, Ordering::AcqRel) {
            // A permit is stored if the task is not waiting right now.
            self.trip.notify_one();
        }
    }

    /// `n` reply bytes added earlier are no longer held (written, or
    /// replaced by an error).
    pub fn sub(&self, n: usize) {
        if n > 0 {
            // Never below zero: a miscount must not leave the client paused
            // for good behind a wrapped-around total.
            let before = self
                .held
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| {
                    Some(h.saturating_sub(n))
                })
                .unwrap_or(0);
            debug_assert!(before >= n, "took {n} reply bytes off {before} held");
        }
    }

    /// Reply bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Whether the bytes held ever went past the hard limit.
    pub fn tripped(&self) -> bool {
        self.tripped.load(Ordering::Acquire)
    }

    /// The hard limit.
    pub fn hard_limit(&self) -> usize {
        self.hard_limit
    }

    /// Completes once the meter has tripped (at once if it already has).
    pub async fn wait_tripped(&self) {
        if !self.tripped() {
            self.trip.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn trips_once_past_the_hard_limit_and_wakes_a_late_waiter() {
        let meter = ReplyMeter::new(100);
        meter.add(60);
        meter.add(40);
        assert!(!meter.tripped(), "at the limit is not past it");
        meter.sub(50);
        assert_eq!(meter.held(), 50);
        meter.add(51);
        assert!(meter.tripped());
        meter.sub(101);
        assert_eq!(meter.held(), 0);
        assert!(meter.tripped(), "tripped stays tripped");
        // The trip happened before anyone waited: the wait still ends.
        tokio::time::timeout(std::time::Duration::from_secs(1), meter.wait_tripped())
            .await
            .expect("a tripped meter does not wait");
    }
}
