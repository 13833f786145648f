//! The client side of the near cache ([`crate::near_cache`]): what a
//! request does to its service's cache on its way through the stages.
//!
//! - A cacheable read (GET, or HGET or HGETALL when the service lists
//!   them, outside MULTI, off a dedicated connection, in the configured
//!   database) is looked up by its prefixed key: a hit is
//!   answered here, in order with the client's other replies; a miss of a
//!   key read before is sent as a fill (`CLIENT CACHING YES`, the read,
//!   `PTTL`), whose reply fills the cache ([`Fill::complete`]).
//! - A write's keys (every key of a command that is not read-only, queued
//!   in MULTI or not, on any connection) go out of the cache when it is
//!   queued and again when its reply is taken, and are not filled in
//!   between: a client always reads its own writes.
//!
//! Only the service's own cache is used, keyed by the prefixed key, so an
//! entry is never served to another service. Services without a near cache
//! pay one branch on an `Option`.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use super::queue::CommandReply;
use super::Connection;
use crate::command::keys::key_positions_inline;
use crate::command::{CommandSpec, Flags};
use crate::config::{Cacheable, ReadFrom};
use crate::metrics::ErrorKind;
use crate::metrics::Role;
use crate::near_cache::fill::Fill;
use crate::near_cache::flight::Boarding;
use crate::near_cache::{Lookup, NearCache, Sharing, Writing};
use crate::protocol::reply::ReplyKind;
use crate::protocol::request::{peek_small_request, Request};
use crate::protocol::Protocol;
use crate::topology::slot::{key_slot, prefixed_key_slot};

/// What the near cache makes of a read.
pub(super) enum NearRead {
    /// Answered from the cache: this frame.
    Hit(Bytes),
    /// Answered from the cache, and the entry refreshed by a fill sent
    /// with the batch (its reply goes to no one).
    Refresh(Bytes, Box<Fill>, Request),
    /// Sent with a fill.
    Fill(Box<Fill>, Request),
    /// Waits for another client's read of the key, already on its way.
    Follow(Boarding),
    /// Sent as it is.
    Plain,
}

/// Requests looked at ahead for [`Connection::near_prefetch`], at most.
const PREFETCH_MAX: usize = 32;

/// `prefix` and `key` together, on the stack for the common short key.
fn prefixed(prefix: &[u8], key: &[u8]) -> SmallVec<[u8; 128]> {
    let mut stored = SmallVec::with_capacity(prefix.len() + key.len());
    stored.extend_from_slice(prefix);
    stored.extend_from_slice(key);
    stored
}

impl Connection {
    /// Prefetches the near-cache lookups of the GETs among the next
    /// requests in `rbuf` (those pipelined behind the request just taken,
    /// up to the first that is not whole, small and canonical): a
    /// pipeline's lookups of keys read seldom then wait on memory
    /// together instead of one after the other. Returns how many requests
    /// it looked at, so that the next look ahead starts past them
    /// (`usize::MAX` when there is nothing to prefetch for).
    pub(super) fn near_prefetch(&self, rbuf: &[u8]) -> usize {
        let Some(cache) = self
            .session
            .service
            .as_ref()
            .and_then(|s| s.near_cache.as_deref())
        else {
            return usize::MAX;
        };
        if !cache.keeps(Cacheable::Get) || self.session.database != self.default_database() {
            return usize::MAX;
        }
        let prefix = self.session.namespace().map(|ns| ns.prefix_bytes());
        let mut hashes: SmallVec<[u64; PREFETCH_MAX]> = SmallVec::new();
        let mut rest = rbuf;
        let mut looked = 0;
        while looked < PREFETCH_MAX {
            let Some((len, mut args)) = peek_small_request(rest) else {
                break;
            };
            looked += 1;
            if let (Some(name), Some(key), None) = (args.next(), args.next(), args.next()) {
                if name.eq_ignore_ascii_case(b"get") {
                    hashes.push(match prefix {
                        Some(prefix) if !prefix.is_empty() => {
                            cache.prefetch(&prefixed(prefix, key))
                        }
                        _ => cache.prefetch(key),
                    });
                }
            }
            rest = rest.get(len..).unwrap_or_default();
        }
        cache.prefetch_entries(&hashes);
        // A partial request next: looked at again once it is whole.
        looked.max(1)
    }

    /// The key at `at` as stored on the backend: with the namespace's
    /// prefix when it is still to be put in front (`prefix_at`).
    fn stored_key(&self, req: &Request, at: usize, prefix_at: Option<usize>) -> Option<Bytes> {
        let arg = req.get(at)?;
        match (prefix_at == Some(at), self.session.namespace()) {
            (true, Some(ns)) => {
                let mut key = BytesMut::with_capacity(ns.prefix_bytes().len() + arg.len());
                key.extend_from_slice(ns.prefix_bytes());
                key.extend_from_slice(arg);
                Some(key.freeze())
            }
            _ => Some(Bytes::copy_from_slice(arg)),
        }
    }

    /// A command that may write: its keys go out of the service's near
    /// cache now, before it is sent, and stay unfilled until the returned
    /// guard goes with its reply (inside MULTI, with EXEC's).
    pub(super) fn near_write(
        &self,
        cache: &Arc<NearCache>,
        spec: &'static CommandSpec,
        req: &Request,
        prefix_at: Option<usize>,
    ) -> Option<Writing> {
        if spec.flags.contains(Flags::READONLY) {
            return None;
        }
        if matches!(spec.name, "flushall" | "flushdb" | "swapdb") {
            return Some(cache.begin_flush());
        }
        let positions = key_positions_inline(spec, req).ok()?;
        let keys: Vec<Bytes> = positions
            .into_iter()
            .filter_map(|at| self.stored_key(req, at, prefix_at))
            .collect();
        (!keys.is_empty()).then(|| cache.begin_write(keys))
    }

    /// A read the near cache may answer or fill: GET, HGET or HGETALL of
    /// one key (or an MGET it may answer), not held, in the configured
    /// database, of a command the service's cache keeps.
    pub(super) fn near_read(
        &mut self,
        cache: &Arc<NearCache>,
        spec: &'static CommandSpec,
        req: &Request,
        prefix_at: Option<usize>,
    ) -> NearRead {
        let (kind, argc) = match spec.name {
            "get" => (Cacheable::Get, 2),
            "hgetall" => (Cacheable::HGetAll, 2),
            "hget" => (Cacheable::HGet, 3),
            "mget" => return self.near_mget(cache, spec, req, prefix_at),
            _ => return NearRead::Plain,
        };
        if req.argc() != argc
            || !cache.keeps(kind)
            || self.session.database != self.default_database()
        {
            return NearRead::Plain;
        }
        let Some(arg) = req.get(1) else {
            return NearRead::Plain;
        };
        let field = if kind == Cacheable::HGet {
            req.get(2)
        } else {
            None
        };
        // Looked up as the client sent it, or with the prefix in front on
        // the stack: only a fill keeps the key.
        let stored: SmallVec<[u8; 128]>;
        let key: &[u8] = match (prefix_at == Some(1), self.session.namespace()) {
            (true, Some(ns)) => {
                stored = prefixed(ns.prefix_bytes(), arg);
                &stored
            }
            _ => arg,
        };
        let resp3 = self.session.protocol == Protocol::Resp3;
        // Connections to the master track for the cache, RESP2 and RESP3
        // alike; a RESP3 HGETALL reply is a map, and entries hold RESP2's
        // array, so it fills nothing.
        let tracks = self
            .session
            .service
            .as_ref()
            .is_some_and(|s| s.read_from == ReadFrom::Master);
        // A follower waits for its leader before anything it sends after:
        // only a client with nothing else on its way (not pipelining)
        // follows; a pipelined read is sent (a fill of its own, or as it
        // is) rather than stall the pipeline behind another's round trip.
        // On a cluster backend a leader's redirect lands nothing (its
        // followers then read on their own). A RESP3 reply is handed to
        // no RESP2 follower (their nils differ), and HGET's flights would
        // have to be per field: those fill alone.
        let sharing = if !tracks || (resp3 && kind == Cacheable::HGetAll) {
            Sharing::None
        } else if resp3 || field.is_some() {
            Sharing::Alone
        } else if self.batch.is_empty() && self.queue.is_empty() {
            Sharing::LeadsOrFollows
        } else {
            Sharing::Leads
        };
        match cache.lookup(
            key,
            kind,
            field,
            sharing,
            self.read_at,
            &mut self.near_answers,
        ) {
            Lookup::Hit(frame) => {
                self.record_hit(spec);
                NearRead::Hit(as_client_reads(kind, resp3, frame))
            }
            Lookup::Refresh(frame, ticket) => {
                self.record_hit(spec);
                let (fill, pttl) = self.fill_of(cache, key, ticket);
                NearRead::Refresh(as_client_reads(kind, resp3, frame), fill, pttl)
            }
            Lookup::Follow(boarding) => NearRead::Follow(boarding),
            Lookup::Miss(Some(ticket)) => {
                let (mut fill, pttl) = self.fill_of(cache, key, ticket);
                if let Some(field) = field {
                    fill.set_field(Bytes::copy_from_slice(field));
                }
                NearRead::Fill(fill, pttl)
            }
            Lookup::Miss(None) => NearRead::Plain,
        }
    }

    /// An MGET answered from GET's entries when they hold every key (in
    /// the configured database, its keys already prefixed in the request);
    /// else sent as it is.
    fn near_mget(
        &mut self,
        cache: &Arc<NearCache>,
        spec: &'static CommandSpec,
        req: &Request,
        prefix_at: Option<usize>,
    ) -> NearRead {
        if prefix_at.is_some()
            || req.argc() < 2
            || !cache.keeps(Cacheable::MGet)
            || self.session.database != self.default_database()
        {
            return NearRead::Plain;
        }
        let keys = (1..req.argc()).filter_map(|i| req.get(i));
        let keys: SmallVec<[&[u8]; 8]> = keys.collect();
        match cache.lookup_all(keys.into_iter(), self.read_at, &mut self.near_answers) {
            Some(answer) => {
                self.record_hit(spec);
                NearRead::Hit(answer)
            }
            None => NearRead::Plain,
        }
    }

    /// The fill of a read of `key` (as stored) that `ticket` was taken
    /// for, and the `PTTL` that goes with it.
    fn fill_of(
        &mut self,
        cache: &Arc<NearCache>,
        key: &[u8],
        ticket: crate::near_cache::Ticket,
    ) -> (Box<Fill>, Request) {
        let pttl = Request::from_args(&[&b"PTTL"[..], key]);
        let key = Bytes::copy_from_slice(key);
        let fill = Fill::new(cache.clone(), key, ticket, self.batch.stamp());
        (Box::new(fill), pttl)
    }

    /// A read the near cache answered, recorded as keygate's own answer
    /// with the others of its read (see [`HitTally`]).
    fn record_hit(&mut self, spec: &'static CommandSpec) {
        let service = self.session.service.as_ref().map(|s| s.index);
        let tally = &mut self.near_hits;
        if tally.count > 0 && (tally.service != service || tally.command != spec.name) {
            self.record_near_hits();
        }
        let tally = &mut self.near_hits;
        tally.service = service;
        tally.command = spec.name;
        tally.count += 1;
    }

    /// Records the hits tallied since the bytes being processed were read.
    pub(super) fn record_near_hits(&mut self) {
        let HitTally {
            service,
            command,
            count,
        } = std::mem::take(&mut self.near_hits);
        if count == 0 {
            return;
        }
        let elapsed = self.read_at.elapsed();
        self.recorder
            .commands(service, command, Role::Proxy, elapsed, None, count);
        self.recorder.cache(
            service,
            command,
            u32::try_from(count).unwrap_or(u32::MAX),
            0,
        );
    }

    /// A read waiting for another read's reply ([`crate::near_cache::flight`]):
    /// what the client sent before goes first; the client's next request
    /// waits for this answer, so nothing it sends later (its own write of
    /// the key) can reach Redis before the read it follows. If the leader
    /// goes without a reply, the read is sent on its own.
    pub(super) async fn follow(&mut self, call: FollowCall) {
        self.flush_batch().await;
        let FollowCall {
            boarding,
            request,
            prefix_at,
            reply,
            suppress,
        } = call;
        match boarding.await {
            Ok(frame) => {
                let service = reply.service;
                let elapsed = self.read_at.elapsed();
                self.recorder
                    .command(service, reply.command, Role::Master, elapsed, None);
                match ReplyKind::of_frame(&frame) {
                    ReplyKind::Error => {
                        self.recorder
                            .error(service, reply.command, ErrorKind::Backend)
                    }
                    ReplyKind::Nil => self.recorder.cache(service, reply.command, 0, 1),
                    _ => self.recorder.cache(service, reply.command, 1, 0),
                }
                if let Some(sample) = &reply.hot {
                    sample.record(&frame);
                }
                self.reply(frame, suppress);
            }
            Err(_) => {
                if !self.batch.takes(suppress) {
                    self.seal_batch();
                }
                if self.ctx.router.cluster().is_some() {
                    // To its key's master, as it would have gone.
                    let slot = match (prefix_at, self.session.namespace()) {
                        (Some(_), Some(ns)) => {
                            prefixed_key_slot(ns.prefix_bytes(), request.get(1).unwrap_or_default())
                        }
                        _ => key_slot(request.get(1).unwrap_or_default()),
                    };
                    self.route_batch_to(slot);
                }
                let confine = prefix_at.zip(self.session.namespace());
                self.batch
                    .push(request, confine, Vec::new(), reply, suppress, true);
            }
        }
    }
}

/// A kept reply frame as the client reads it: entries hold RESP2 frames
/// (a RESP3 connection fills only GET and HGET, whose bulk strings the
/// two protocols share), and a RESP3 client reads HGETALL's
/// fields and values as a map (`%n`) where RESP2 has an array of twice as
/// many (`*2n`); the elements are the same bulk strings.
fn as_client_reads(kind: Cacheable, resp3: bool, frame: Bytes) -> Bytes {
    if kind != Cacheable::HGetAll || !resp3 {
        return frame;
    }
    let header = frame
        .strip_prefix(b"*")
        .and_then(|rest| Some((rest, rest.iter().position(|&b| b == b'\r')?)))
        .and_then(|(rest, end)| {
            let n: usize = std::str::from_utf8(rest.get(..end)?).ok()?.parse().ok()?;
            Some((n, end + 1))
        });
    let Some((items, digits_end)) = header else {
        return frame;
    };
    let mut map = BytesMut::with_capacity(frame.len());
    crate::protocol::encode::map_header(&mut map, items / 2, Protocol::Resp3);
    // The elements, after the array header's CRLF.
    map.extend_from_slice(frame.get(digits_end + 2..).unwrap_or_default());
    map.freeze()
}

/// Near-cache hits of one read of the client's bytes, for one service and
/// command: they were read and answered together, so they share one
/// latency, recorded once with their count (as the reply queue does for a
/// pipeline's replies) instead of a clock read and a histogram update each.
#[derive(Debug, Default)]
pub(super) struct HitTally {
    service: Option<usize>,
    command: &'static str,
    count: u64,
}

/// A read that follows another's flight, deferred until it lands.
pub(super) struct FollowCall {
    pub(super) boarding: Boarding,
    pub(super) request: Request,
    pub(super) prefix_at: Option<usize>,
    pub(super) reply: CommandReply,
    pub(super) suppress: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resp3_client_reads_hgetall_as_a_map() {
        let array = Bytes::from_static(b"*4\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n");
        let map = as_client_reads(Cacheable::HGetAll, true, array.clone());
        assert_eq!(
            &map[..],
            b"%2\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n"
        );
        assert_eq!(
            as_client_reads(Cacheable::HGetAll, false, array.clone()),
            array
        );
        let empty = as_client_reads(Cacheable::HGetAll, true, Bytes::from_static(b"*0\r\n"));
        assert_eq!(&empty[..], b"%0\r\n");
        let value = Bytes::from_static(b"$1\r\nv\r\n");
        assert_eq!(as_client_reads(Cacheable::Get, true, value.clone()), value);
    }
}
