//! The reply side of a policy decision: what happens to one command's reply
//! on its way back to the client ([`ReplyPlan`]), and the rewriting by that
//! plan ([`rewrite`]): the namespace's prefix off the key names a reply
//! carries, INFO scoped to the service, keygate's own INFO section
//! appended, a reply replaced, EXEC's elements rewritten one by one.
//!
//! Invariants: a plan is applied to one whole reply frame and writes one
//! whole frame; inside EXEC's reply the elements of follow-ups keygate
//! queued behind a command ([`Queued::frames`]) are dropped, so the client
//! sees exactly one element per command it queued. The reply queue
//! (`client::queue`) owns the order, the slots, dropping the follow-ups'
//! own frames and the writing; this module only rewrites bytes.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::namespace::{self, Namespace};
use crate::backend::connect::REPLY_MAX_DEPTH;
use crate::command::ReplyKeys;
use crate::near_cache::fill::Fill;
use crate::near_cache::Writing;
use crate::protocol::encode;
use crate::protocol::reply::{ReplyScanner, Value};
use crate::protocol::Protocol;

/// What happens to one command's reply on its way to the client.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyPlan {
    /// Written as it came.
    Forward,
    /// INFO: keygate's own section is appended to the text.
    AppendProxyInfo(String),
    /// The backend's reply is replaced by this one (EXEC of a doomed transaction).
    Replace(Bytes),
    /// Isolation: the namespace's prefix comes off the key or channel names
    /// the reply carries (per the command table's `reply_keys`).
    StripKeys {
        namespace: Arc<Namespace>,
        reply_keys: ReplyKeys,
        protocol: Protocol,
    },
    /// INFO for an isolated service: the `# Keyspace` section is removed,
    /// then keygate's own section (if any) appended.
    ScopedInfo(Option<String>),
    /// EXEC: one array element per queued command, in order.
    Exec(Vec<Queued>),
    /// A read that fills the near cache: its frames are `CLIENT CACHING
    /// YES`'s reply (dropped), the command's (written as it came), then
    /// `PTTL`'s (dropped), which the fill reads.
    NearFill(Box<Fill>),
    /// A write of a service with a near cache: rewritten by the plan
    /// inside; the guard keeps its keys from being filled until the reply
    /// is taken ([`crate::near_cache::NearCache::begin_write`]).
    NearWrite(Box<(Writing, ReplyPlan)>),
    /// A fill keygate sent to refresh a near-cache entry, beside the hit it
    /// answered: its frames (as [`ReplyPlan::NearFill`]'s) go to no one.
    NearRefresh(Box<Fill>),
    /// Answered by keygate, with no backend frame of its own: a near-cache
    /// hit gathered into the batch it was read with, written in its place.
    Answered(Bytes),
}

/// A command queued inside MULTI, as EXEC's reply plan sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    /// The elements of EXEC's reply it accounts for: 1 plus its follow-ups
    /// (queued too); the first gets `plan`, the rest are dropped.
    pub frames: u32,
    /// How its element is rewritten.
    pub plan: ReplyPlan,
}

impl Queued {
    /// An element written as it came, with no follow-ups.
    pub fn is_plain(&self) -> bool {
        self.frames == 1 && matches!(self.plan, ReplyPlan::Forward)
    }
}

/// Writes one command's reply `frame` to `out`, rewritten by `plan`.
pub fn rewrite(plan: &ReplyPlan, frame: &[u8], out: &mut BytesMut) {
    match plan {
        ReplyPlan::Forward | ReplyPlan::NearFill(_) => out.extend_from_slice(frame),
        ReplyPlan::Replace(with) | ReplyPlan::Answered(with) => out.extend_from_slice(with),
        ReplyPlan::NearRefresh(_) => {}
        ReplyPlan::AppendProxyInfo(section) => match Value::parse(frame) {
            Ok(Value::Bulk(text)) => {
                let mut joined = BytesMut::from(&text[..]);
                joined.extend_from_slice(section.as_bytes());
                Value::Bulk(joined.freeze()).encode(out);
            }
            Ok(Value::Verbatim(format, text)) => {
                let mut joined = BytesMut::from(&text[..]);
                joined.extend_from_slice(section.as_bytes());
                Value::Verbatim(format, joined.freeze()).encode(out);
            }
            _ => out.extend_from_slice(frame),
        },
        ReplyPlan::StripKeys {
            namespace,
            reply_keys,
            protocol,
        } => out.extend_from_slice(&namespace.strip_reply(*reply_keys, frame, *protocol)),
        ReplyPlan::ScopedInfo(section) => {
            let scoped = |text: &[u8]| {
                let mut kept = namespace::remove_keyspace_section(text);
                if let Some(section) = section {
                    kept.extend_from_slice(section.as_bytes());
                }
                Bytes::from(kept)
            };
            match Value::parse(frame) {
                Ok(Value::Bulk(text)) => Value::Bulk(scoped(&text)).encode(out),
                Ok(Value::Verbatim(format, text)) => {
                    Value::Verbatim(format, scoped(&text)).encode(out)
                }
                _ => out.extend_from_slice(frame),
            }
        }
        ReplyPlan::Exec(queued) => rewrite_exec(queued, frame, out),
        ReplyPlan::NearWrite(inner) => rewrite(&inner.1, frame, out),
    }
}

/// Applies each queued command's plan to its element of an EXEC reply.
/// A nil (WATCH abort) or error passes as it is; an array whose length does
/// not match what was queued becomes an error rather than pass unrewritten.
fn rewrite_exec(queued: &[Queued], frame: &[u8], out: &mut BytesMut) {
    let header_end = frame.windows(2).position(|w| w == b"\r\n");
    let count = header_end
        .filter(|_| frame.first() == Some(&b'*'))
        .and_then(|end| frame.get(1..end))
        .and_then(|n| std::str::from_utf8(n).ok())
        .and_then(|n| n.parse::<i64>().ok());
    let (Some(count), Some(header_end)) = (count, header_end) else {
        return out.extend_from_slice(frame);
    };
    let expected: usize = queued.iter().map(|c| c.frames as usize).sum();
    if count < 0 {
        return out.extend_from_slice(frame);
    }
    let mismatch = b"-ERR keygate: EXEC reply does not match the queued commands\r\n";
    if count as usize != expected {
        return out.extend_from_slice(mismatch);
    }
    let mut scanner = ReplyScanner::new(REPLY_MAX_DEPTH);
    let mut rest = frame.get(header_end + 2..).unwrap_or_default();
    let mut body = BytesMut::with_capacity(rest.len());
    for c in queued {
        let mut first = None;
        for _ in 0..c.frames {
            match scanner.next_frame(rest) {
                Ok(Some(f)) => {
                    let (element, tail) = rest.split_at(f.end.min(rest.len()));
                    scanner.consume(f.end);
                    rest = tail;
                    first.get_or_insert(element);
                }
                _ => return out.extend_from_slice(mismatch),
            }
        }
        if let Some(element) = first {
            rewrite(&c.plan, element, &mut body);
        }
    }
    encode::array_header(out, queued.len());
    out.extend_from_slice(&body);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(plan: &ReplyPlan, frame: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        rewrite(plan, frame, &mut out);
        out.to_vec()
    }

    #[test]
    fn exec_elements_get_their_plans_and_follow_ups_are_dropped() {
        let plan = ReplyPlan::Exec(vec![
            Queued {
                frames: 2,
                plan: ReplyPlan::Forward,
            },
            Queued {
                frames: 1,
                plan: ReplyPlan::Replace(Bytes::from_static(b"+mine\r\n")),
            },
        ]);
        // SET's `+OK`, its PEXPIRE follow-up's `:1`, then a PING's `+PONG`.
        let reply = rewritten(&plan, b"*3\r\n+OK\r\n:1\r\n+PONG\r\n");
        assert_eq!(reply, b"*2\r\n+OK\r\n+mine\r\n".to_vec());
        // A WATCH abort passes; a reply of another shape is an error.
        assert_eq!(rewritten(&plan, b"*-1\r\n"), b"*-1\r\n".to_vec());
        assert_eq!(
            rewritten(&plan, b"*1\r\n+OK\r\n"),
            b"-ERR keygate: EXEC reply does not match the queued commands\r\n".to_vec()
        );
    }
}
