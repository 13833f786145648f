//! A read on its way to Redis whose reply fills the near cache: what the
//! reply plan carries from the request to its reply.

use std::sync::Arc;

use bytes::Bytes;

use super::flight::Landing;
use super::tracking::Stamp;
use super::{NearCache, Ticket};
use crate::protocol::reply::ReplyKind;

/// A read on its way to Redis whose reply fills the near cache.
#[derive(Debug, Clone)]
pub struct Fill {
    cache: Arc<NearCache>,
    /// The key as stored (prefixed).
    key: Bytes,
    /// HGET's field.
    field: Option<Bytes>,
    ticket: Ticket,
    /// The tracking session the read was written under, once written.
    stamp: Arc<Stamp>,
    /// The flight the read leads, landed by its connection's reader.
    landing: Option<Arc<Landing>>,
}

impl PartialEq for Fill {
    fn eq(&self, other: &Fill) -> bool {
        Arc::ptr_eq(&self.cache, &other.cache)
            && self.key == other.key
            && self.field == other.field
            && self.ticket == other.ticket
    }
}

impl Fill {
    /// A fill of `key` (as stored) into `cache`, by the read `ticket` was
    /// taken for; `stamp` learns the session it is written under.
    pub fn new(cache: Arc<NearCache>, key: Bytes, ticket: Ticket, stamp: Arc<Stamp>) -> Fill {
        let landing = ticket
            .flight
            .map(|_| Arc::new(Landing::new(cache.clone(), key.clone(), ticket)));
        Fill {
            cache,
            key,
            field: None,
            ticket,
            stamp,
            landing,
        }
    }

    /// Makes it the fill of HGET's `field` of the key.
    pub fn set_field(&mut self, field: Bytes) {
        self.field = Some(field);
    }

    /// The flight the read leads, for its batch to carry to the reader.
    pub fn landing(&self) -> Option<Arc<Landing>> {
        self.landing.clone()
    }

    /// The read's reply arrived: `frame` of `kind`, and `pttl`, the frame
    /// `PTTL` answered. Only a bulk string is kept, and only when the read
    /// was written under a tracking session.
    pub fn complete(&self, kind: ReplyKind, frame: &[u8], pttl: &[u8]) {
        if kind != ReplyKind::Value || !self.ticket.kind.keeps(frame) {
            return;
        }
        let Some(session) = self.stamp.get() else {
            return;
        };
        let Some(ms) = pttl
            .strip_prefix(b":")
            .and_then(|n| n.strip_suffix(b"\r\n"))
            .and_then(|n| std::str::from_utf8(n).ok())
            .and_then(|n| n.parse::<i64>().ok())
        else {
            return;
        };
        let (key, session) = (self.key.clone(), session.clone());
        match &self.field {
            Some(field) => self
                .cache
                .fill_field(key, field, frame, ms, self.ticket, session),
            None => self.cache.fill(key, frame, ms, self.ticket, session),
        }
    }
}
