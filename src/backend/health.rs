//! The health of one Redis node, written by its connection tasks and read
//! by the topology, the admin listener and clients holding a dedicated
//! connection to it. Below both [`super::mux`] (which reports into it) and
//! [`super::node`] (which owns it), so neither imports the other for it.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use super::BackendError;

/// Connection health of one node, written by its connection tasks.
///
/// Besides counters it carries two signals for the topology: `trouble`
/// (a connection died, a connect failed, or the node answered `-READONLY`,
/// so its role should be checked again) and `demotions` (the topology
/// stopped treating the node as master; clients holding dedicated
/// connections to it close them).
#[derive(Debug)]
pub struct NodeHealth {
    connected: AtomicUsize,
    // A std Mutex is right here: the critical section is one clone and never awaits.
    last_error: Mutex<Option<String>>,
    /// Batches written to a connection and not yet answered.
    pub(super) in_flight: AtomicUsize,
    /// `-READONLY` replies seen on multiplexed connections.
    readonly_replies: AtomicU64,
    trouble: Notify,
    demotions: watch::Sender<u64>,
    /// Script batches (EVAL, FCALL and their kin) written to a multiplexed
    /// connection and not yet answered.
    scripts_in_flight: AtomicU32,
    /// When the node last sent a byte while a script batch was in flight,
    /// in microseconds since [`clock_origin`].
    script_progress: AtomicU64,
}

/// The origin of the microsecond timestamps kept in atomics.
fn clock_origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn micros_now() -> u64 {
    u64::try_from(clock_origin().elapsed().as_micros()).unwrap_or(u64::MAX)
}

impl Default for NodeHealth {
    fn default() -> Self {
        NodeHealth {
            connected: AtomicUsize::new(0),
            last_error: Mutex::new(None),
            in_flight: AtomicUsize::new(0),
            readonly_replies: AtomicU64::new(0),
            trouble: Notify::new(),
            demotions: watch::Sender::new(0),
            scripts_in_flight: AtomicU32::new(0),
            script_progress: AtomicU64::new(0),
        }
    }
}

impl NodeHealth {
    /// A multiplexed connection completed its handshake.
    pub fn connection_up(&self) {
        self.connected.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            *e = None;
        }
    }

    /// A multiplexed connection died.
    pub fn connection_down(&self) {
        self.connected.fetch_sub(1, Ordering::Relaxed);
        self.trouble.notify_one();
    }

    /// A connect attempt failed.
    pub fn record_error(&self, err: &BackendError) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(err.to_string());
        }
        self.trouble.notify_one();
    }

    /// The node answered `-READONLY`: it is no longer (or not yet) a master.
    pub fn readonly_reply(&self) {
        self.readonly_replies.fetch_add(1, Ordering::Relaxed);
        self.trouble.notify_one();
    }

    /// `-READONLY` replies seen so far.
    pub fn readonly_replies(&self) -> u64 {
        self.readonly_replies.load(Ordering::Relaxed)
    }

    /// Resolves once something suggests the node's role should be checked.
    pub async fn trouble(&self) {
        self.trouble.notified().await
    }

    /// The topology stopped treating this node as master.
    pub fn mark_demoted(&self) {
        self.demotions.send_modify(|n| *n += 1);
    }

    /// A receiver that changes whenever the node is demoted.
    pub fn demotions(&self) -> watch::Receiver<u64> {
        self.demotions.subscribe()
    }

    /// A batch was written to one of the node's connections.
    pub(crate) fn batch_sent(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A written batch was answered or failed.
    pub(crate) fn batch_done(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// A script batch was written to one of the node's connections.
    pub(crate) fn script_sent(&self) {
        if self.scripts_in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            self.script_progress.store(micros_now(), Ordering::Release);
        }
    }

    /// A script batch was answered or failed.
    pub(crate) fn script_done(&self) {
        self.scripts_in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// A connection of the node read bytes: it is not stuck in a script.
    pub(crate) fn progressed(&self) {
        if self.scripts_in_flight.load(Ordering::Relaxed) > 0 {
            self.script_progress.store(micros_now(), Ordering::Release);
        }
    }

    /// How long the node has sent nothing while a script batch was in
    /// flight: a script that long still running holds Redis, which answers
    /// other clients only with `-BUSY` (past `busy-reply-threshold`) or
    /// once it ends. `None` when no script batch is in flight.
    pub fn script_silence(&self) -> Option<Duration> {
        if self.scripts_in_flight.load(Ordering::Acquire) == 0 {
            return None;
        }
        let since = self.script_progress.load(Ordering::Acquire);
        Some(Duration::from_micros(micros_now().saturating_sub(since)))
    }

    /// Live multiplexed connections.
    pub fn connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    /// The last connect error, if the node is not healthy.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Silence is measured only while a script is in flight, from the last
    /// byte the node sent.
    #[test]
    fn script_silence_counts_from_the_last_progress() {
        let health = NodeHealth::default();
        health.progressed();
        assert_eq!(health.script_silence(), None);
        health.script_sent();
        health.script_sent();
        std::thread::sleep(Duration::from_millis(5));
        let quiet = health.script_silence().expect("a script is in flight");
        assert!(quiet >= Duration::from_millis(5), "{quiet:?}");
        health.progressed();
        assert!(health.script_silence().expect("still in flight") < quiet);
        health.script_done();
        assert!(health.script_silence().is_some());
        health.script_done();
        assert_eq!(health.script_silence(), None);
    }
}
