//! Knowing, without polling it, that a client's read has nothing new.
//!
//! The client loop wakes for many reasons (a backend reply, a timer), and
//! after each it would poll the client's socket again just to hear
//! "pending" (a lock and a waker comparison inside tokio's I/O driver).
//! Polling the read with a waker of its own that records that it was woken
//! lets the loop skip that poll: while the read is registered and its waker
//! was not called, the read would only say "pending" again.
//!
//! Invariant: the flag is cleared *before* each poll of the read, so a
//! wake-up that comes during or after the poll is never lost; anything that
//! could make the read ready (readiness, a cooperative-budget yield, a lost
//! registration) goes through the waker and sets the flag.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// Shared between the loop and whoever holds the read's waker.
#[derive(Default)]
struct Shared {
    /// The read's waker was called since the read was last polled.
    woken: AtomicBool,
    /// The task to wake in turn.
    task: Mutex<Option<Waker>>,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        // A poisoned lock still holds a usable waker.
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

/// The waker a client's read is polled with, and whether it is worth polling.
pub(super) struct ReadWake {
    shared: Arc<Shared>,
    /// `shared` as a waker, made once.
    waker: Waker,
    /// The task waker `shared` forwards to (a copy, compared without the lock).
    task: Option<Waker>,
    /// The last poll was pending: the read holds `waker`.
    registered: bool,
}

impl Default for ReadWake {
    fn default() -> Self {
        let shared = Arc::new(Shared::default());
        ReadWake {
            waker: Waker::from(shared.clone()),
            shared,
            task: None,
            registered: false,
        }
    }
}

impl ReadWake {
    /// Polls the read through `poll` unless it is known to be still pending
    /// (registered, not woken since, and for the same task).
    #[inline]
    pub(super) fn poll<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let same_task = self.task.as_ref().is_some_and(|t| t.will_wake(cx.waker()));
        if self.registered && same_task && !self.shared.woken.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        if !same_task {
            self.set_task(cx.waker());
        }
        self.shared.woken.store(false, Ordering::Release);
        let result = poll(&mut Context::from_waker(&self.waker));
        self.registered = result.is_pending();
        result
    }

    #[inline(never)]
    fn set_task(&mut self, task: &Waker) {
        self.task = Some(task.clone());
        *self.shared.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts wake-ups of the "task".
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Polls `rw` with a read that stays pending, keeping the waker it was
    /// given in `held`; true when the read was actually polled.
    fn poll_pending(rw: &mut ReadWake, cx: &mut Context<'_>, held: &mut Option<Waker>) -> bool {
        let mut polled = false;
        let result = rw.poll(cx, |inner| {
            polled = true;
            *held = Some(inner.waker().clone());
            Poll::<()>::Pending
        });
        assert!(result.is_pending());
        polled
    }

    #[test]
    fn skips_a_registered_read_until_its_waker_is_called() {
        let count = Arc::new(Count::default());
        let task = Waker::from(count.clone());
        let mut cx = Context::from_waker(&task);
        let mut rw = ReadWake::default();
        let mut held: Option<Waker> = None;
        assert!(poll_pending(&mut rw, &mut cx, &mut held), "first poll");
        assert!(
            !poll_pending(&mut rw, &mut cx, &mut held),
            "registered, not woken"
        );
        assert!(
            !poll_pending(&mut rw, &mut cx, &mut held),
            "still not woken"
        );
        if let Some(waker) = held.take() {
            waker.wake();
        }
        assert_eq!(count.0.load(Ordering::Relaxed), 1, "the task was woken");
        assert!(
            poll_pending(&mut rw, &mut cx, &mut held),
            "woken: polled again"
        );
        // Another task: polled so the wake-up reaches the right one.
        let other = Waker::from(Arc::new(Count::default()));
        assert!(poll_pending(
            &mut rw,
            &mut Context::from_waker(&other),
            &mut held
        ));
    }
}
