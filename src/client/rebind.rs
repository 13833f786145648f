//! Following a config reload: a client keeps its service by name and gets
//! the reloaded policy from its next command on.
//!
//! Each command costs one atomic load (the registry generation). On a
//! mismatch the session re-resolves its service by name in the services in
//! force; a service the reload removed leaves the client unauthenticated, so
//! its next command gets `-NOAUTH`. A client that never logged in stays so.
//!
//! Invariants: `admitted` follows `session.service`, so the per-service
//! client counters and the connections gauge stay right; a rebinding waits
//! while a transaction is open, so one MULTI/EXEC runs under one policy.

use std::sync::Arc;

use super::Connection;
use crate::policy::database;
use crate::policy::service::Service;

impl Connection {
    /// A new connection: the default service of the services in force.
    pub(super) fn start_in_current_services(&mut self) {
        let services = self.ctx.services.current();
        self.session.generation = services.generation();
        self.session.service = services.default_service();
    }

    /// Re-resolves the session's service if a reload happened since it was
    /// resolved; one atomic load when nothing changed. A client left in a
    /// database its service may no longer use is closed: the refusal its
    /// request gets is returned.
    #[inline]
    pub(super) fn follow_reload(&mut self) -> Option<String> {
        if self.ctx.services.generation() == self.session.generation || self.session.tx.open {
            return None;
        }
        self.rebind()
    }

    fn rebind(&mut self) -> Option<String> {
        let services = self.ctx.services.current();
        self.session.generation = services.generation();
        let before = self.session.service.take()?;
        let now = services.get(&before.name).cloned();
        if now.is_none() {
            tracing::debug!(
                client = self.session.id,
                service = %before.name,
                "service removed by reload; client must AUTH again"
            );
        }
        self.session.service = now.clone();
        let db = self.session.database;
        let refusal = now
            .as_ref()
            .filter(|s| !database::allows(s, db))
            .map(|s| database::refusal(s, db).to_string());
        if refusal.is_some() {
            tracing::info!(
                client = self.session.id,
                service = %before.name,
                database = db,
                "the reloaded service may no longer use the client's database; closing it"
            );
            self.closing = true;
        }
        self.readmit(now);
        refusal
    }

    /// Moves the client's admission (per-service count and connections
    /// gauge) to `now`, the reloaded form of its service or none.
    fn readmit(&mut self, now: Option<Arc<Service>>) {
        let before = self.admitted.take();
        let carried = matches!((&before, &now), (Some(b), Some(n)) if b.shares_client_count(n));
        if !carried {
            if let Some(b) = &before {
                b.release();
            }
            if let Some(n) = &now {
                n.admit_carried_over();
            }
        }
        let before_index = before.as_ref().map(|s| s.index);
        let now_index = now.as_ref().map(|s| s.index);
        if before_index != now_index {
            self.ctx.metrics.client_disconnected(before_index);
            self.ctx.metrics.client_connected(now_index);
        }
        self.admitted = now;
    }
}
