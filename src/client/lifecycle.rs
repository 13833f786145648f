//! A connection's life from admission to its end: the limits on what a
//! client may have outstanding before keygate stops reading it, the state
//! it shows in CLIENT LIST, and what it gives back when it ends. (The
//! proxy's `max_clients` is taken by [`super::Context::admit`], a service's
//! by [`super::serve_io`] and by a login that switches services.)
//!
//! Invariants:
//! - a client is read only while its outstanding replies are within
//!   [`MAX_SLOTS`], [`MAX_PENDING_COMMANDS`] and its reply budget;
//! - everything a connection holds (its dedicated connection, its service's
//!   `max_clients` slot, the clients gauge, the proxy's client count) is
//!   given back in `Drop`, so a panicking client task leaks nothing;
//! - a dedicated connection that may carry the client's state is closed
//!   then, never pooled.

use std::sync::atomic::Ordering;

use super::dedicated::Dedicated;
use super::{registry, Connection};
use crate::protocol::Protocol;

/// Most reply slots a client may have outstanding before keygate stops
/// reading from it.
const MAX_SLOTS: usize = 1024;

/// Most commands a client may have in flight (sent, reply not yet written)
/// before keygate stops reading from it. Slots alone do not bound this: one
/// slot carries a whole read's worth of pipelined commands, so a client that
/// pipelines large reads and never reads replies could otherwise make keygate
/// hold gigabytes of replies. This caps what it holds at this many replies.
const MAX_PENDING_COMMANDS: usize = 4096;

impl Connection {
    /// Whether the client may have more requests taken: its outstanding
    /// replies are within the slot, command and reply-byte limits.
    pub(super) fn may_take_requests(&self) -> bool {
        let in_flight = self.queue.commands_pending() + self.batch.commands();
        self.queue.len() < MAX_SLOTS
            && in_flight < MAX_PENDING_COMMANDS
            && self.budget.allows(in_flight, self.meter.held())
    }

    /// The replies held for this client went past the hard limit: it is
    /// closed at once (what still arrives for it is dropped as it arrives),
    /// as Redis closes a client past its output buffer's hard limit.
    pub(super) fn over_limit(&self) {
        let service = self.session.service.as_ref().map(|s| s.name.as_str());
        tracing::error!(
            client = self.session.id,
            service = service.unwrap_or("-"),
            held = self.meter.held(),
            limit = self.meter.hard_limit(),
            "closing a client that does not read its replies: the bytes held for it went past max_pending_reply_bytes_hard"
        );
    }

    /// Publishes the connection's state for CLIENT LIST (a few loads and
    /// compares; stores only on change).
    pub(super) fn publish_state(&self) {
        use registry::flag;
        let mut flags = 0;
        let mut backend_id = 0;
        if let Some(d) = &self.dedicated {
            backend_id = d.lease.backend_id;
            if d.monitor {
                flags |= flag::MONITOR;
            }
            if d.subscriptions.active() {
                flags |= flag::PUBSUB;
            }
            if d.tracking {
                flags |= flag::TRACKING;
            }
            if self.queue.first_dedicated_is_blocking() {
                flags |= flag::BLOCKED;
            }
        }
        let mut multi = -1;
        if self.session.tx.open {
            flags |= flag::MULTI;
            multi = self.session.queued.len() as i64;
        }
        if self.session.protocol == Protocol::Resp3 {
            flags |= flag::RESP3;
        }
        self.entry.state(flags, multi, backend_id);
    }

    pub(super) fn admitted_index(&self) -> Option<usize> {
        self.admitted.as_ref().map(|s| s.index)
    }

    /// Ends the connection; the work is in `Drop`, so that it also happens
    /// when the client's task panics.
    pub(super) fn finish(self) {
        drop(self);
    }
}

impl Drop for Connection {
    /// Gives back everything the connection holds, on a normal end and on a
    /// panic alike: the dedicated connection (closed when it may carry this
    /// client's state), the service's `max_clients` slot, the clients gauge
    /// and the proxy's client count. A panic that skipped this would leak
    /// them for good, and a leaked count eventually refuses every client.
    fn drop(&mut self) {
        let dirty = self.session.tx.open
            || self.session.tx.watching
            || self.queue.awaits_dedicated()
            || self.dedicated.as_ref().is_some_and(Dedicated::pinned)
            || self.holds_subscriptions();
        self.drop_dedicated(dirty || std::thread::panicking());
        // The slot before the gauge: a gauge that no longer counts this
        // client means its slot is free.
        let index = self.admitted_index();
        if let Some(service) = self.admitted.take() {
            service.release();
        }
        if std::mem::take(&mut self.counted) {
            self.ctx.metrics.client_disconnected(index);
        }
        self.ctx.client_table.remove(self.session.id);
        self.ctx.clients.fetch_sub(1, Ordering::Relaxed);
    }
}
