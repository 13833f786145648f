//! Tracking sessions: when a cached reply may still be trusted.
//!
//! Redis tracks a key for the connection that read it with `CLIENT CACHING
//! YES` and sends the key's invalidation to that connection's redirect (one
//! invalidation connection per node, [`crate::backend::invalidation`]).
//! Invalidations are lost without notice when either connection closes, so
//! an entry is only as good as the pair that filled it:
//! - a [`Link`] is one invalidation connection instance, up until it drops;
//! - a [`Session`] is one multiplexed connection instance tracking towards
//!   one [`Link`]; it is confirmed when Redis answers `CLIENT TRACKING ON`
//!   with `+OK`, and ends when its connection closes or it re-tracks;
//! - an entry keeps the session its read was written under ([`Stamp`]), and
//!   a hit checks [`Session::is_live`] (two atomic loads).
//!
//! [`NodeTracking`] is a node's current link: the multiplexed connections
//! of the node compare its generation before each write and re-track
//! (`CLIENT TRACKING ON REDIRECT <id> OPTIN`) when it changed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::{Evicted, NearCaches};

/// One invalidation connection instance.
#[derive(Debug, Default)]
pub struct Link {
    up: AtomicBool,
}

impl Link {
    /// A link that is up (for tests of what a live session allows).
    #[cfg(test)]
    pub(crate) fn new_up() -> Link {
        Link {
            up: AtomicBool::new(true),
        }
    }

    /// Whether the invalidation connection is still up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
}

/// One multiplexed connection instance tracking towards one [`Link`].
#[derive(Debug)]
pub struct Session {
    live: AtomicBool,
    link: Arc<Link>,
}

impl Session {
    /// A session not yet confirmed by Redis.
    pub fn new(link: Arc<Link>) -> Arc<Session> {
        Arc::new(Session {
            live: AtomicBool::new(false),
            link,
        })
    }

    /// Redis answered `CLIENT TRACKING ON` with `+OK`.
    pub fn confirm(&self) {
        self.live.store(true, Ordering::Release);
    }

    /// Its connection closed, or it re-tracked: what it filled is stale.
    pub fn end(&self, caches: &NearCaches) {
        if self.live.swap(false, Ordering::AcqRel) {
            caches.session_ended();
        }
    }

    /// Whether invalidations for what it read still reach keygate.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire) && self.link.is_up()
    }
}

/// Where a multiplexed connection records the session a batch was
/// written under; the batch's fills read it when the replies arrive.
pub type Stamp = OnceLock<Arc<Session>>;

/// A node's invalidation link, as its multiplexed connections see it.
#[derive(Debug)]
pub struct NodeTracking {
    /// The caches invalidations and flushes apply to.
    pub caches: Arc<NearCaches>,
    // A std Mutex is right: a clone or a swap, never held across an await.
    current: Mutex<Option<(i64, Arc<Link>)>>,
    generation: AtomicU64,
}

impl NodeTracking {
    /// A node's tracking, with no link up yet.
    pub fn new(caches: Arc<NearCaches>) -> Arc<NodeTracking> {
        Arc::new(NodeTracking {
            caches,
            current: Mutex::new(None),
            generation: AtomicU64::new(1),
        })
    }

    /// Bumped whenever the link goes up or down.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The invalidation connection's client id and link, while up.
    pub fn redirect(&self) -> Option<(i64, Arc<Link>)> {
        self.lock().clone()
    }

    /// The invalidation connection with this client id is subscribed.
    pub fn link_up(&self, id: i64) -> Arc<Link> {
        let link = Arc::new(Link {
            up: AtomicBool::new(true),
        });
        *self.lock() = Some((id, link.clone()));
        self.generation.fetch_add(1, Ordering::AcqRel);
        link
    }

    /// The invalidation connection dropped: invalidations may have been
    /// lost, so every cache is flushed, and fills wait for the next link.
    pub fn link_down(&self) {
        if let Some((_, link)) = self.lock().take() {
            link.up.store(false, Ordering::Release);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.caches.flush_all(Evicted::Flush);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(i64, Arc<Link>)>> {
        match self.current.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_live_only_while_confirmed_and_linked() {
        let caches = NearCaches::new();
        let tracking = NodeTracking::new(caches.clone());
        let g0 = tracking.generation();
        let link = tracking.link_up(7);
        assert_ne!(tracking.generation(), g0);
        assert_eq!(tracking.redirect().map(|(id, _)| id), Some(7));
        let session = Session::new(link);
        assert!(!session.is_live(), "not before Redis confirmed");
        session.confirm();
        assert!(session.is_live());
        tracking.link_down();
        assert!(!session.is_live(), "the link dropped");
        assert!(tracking.redirect().is_none());
        let again = Session::new(tracking.link_up(8));
        again.confirm();
        again.end(&caches);
        assert!(!again.is_live(), "its connection closed");
    }
}
