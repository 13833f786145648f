//! Subscriptions on a dedicated connection: which frames Redis sends
//! unasked (messages) and which answer a request, whatever the
//! subscription state.
//!
//! Every request on a dedicated connection takes a slot in the reply queue,
//! subscription commands included, so every reply gets its request's plan.
//! A SUBSCRIBE-family command is answered by one confirmation per name it
//! gives, or, without names (UNSUBSCRIBE, PUNSUBSCRIBE, SUNSUBSCRIBE), one
//! per subscription of its kind the connection holds when Redis runs it (at
//! least one). Confirmations of one command are contiguous in the stream
//! (Redis runs the command whole), so they are gathered in its slot;
//! messages go in front of the first slot still waiting, where Redis put
//! them.
//!
//! Invariant: [`Subscriptions`] is the connection's subscription state as
//! Redis last confirmed it, read off confirmations in stream order; it
//! decides, in RESP2, whether an array may be a message (only while
//! subscribed) or is a reply. RESP3 marks messages and confirmations as
//! pushes.

use crate::protocol::reply::{ReplyKind, Value};
use crate::protocol::Protocol;

/// A SUBSCRIBE-family command, and the kind of its confirmations (Redis
/// names each confirmation after the command that caused it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubKind {
    Subscribe,
    Unsubscribe,
    PSubscribe,
    PUnsubscribe,
    SSubscribe,
    SUnsubscribe,
}

impl SubKind {
    /// The kind of a command by its table name.
    pub fn of_command(name: &str) -> Option<SubKind> {
        Some(match name {
            "subscribe" => SubKind::Subscribe,
            "unsubscribe" => SubKind::Unsubscribe,
            "psubscribe" => SubKind::PSubscribe,
            "punsubscribe" => SubKind::PUnsubscribe,
            "ssubscribe" => SubKind::SSubscribe,
            "sunsubscribe" => SubKind::SUnsubscribe,
            _ => return None,
        })
    }

    /// The kind of a confirmation by its first element.
    fn of_confirmation(word: &[u8]) -> Option<SubKind> {
        let lower = word.to_ascii_lowercase();
        std::str::from_utf8(&lower)
            .ok()
            .and_then(SubKind::of_command)
    }
}

/// A subscription command sent on a dedicated connection, as its slot
/// waits for it: `names` confirmations, or with none given (0), one per
/// subscription of its kind when Redis runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionCall {
    /// The command.
    pub kind: SubKind,
    /// Channel or pattern names it gives.
    pub names: u32,
}

/// What the reply queue waits for first on the dedicated connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Awaited {
    /// An ordinary reply (and any follow-up frames).
    Reply,
    /// Confirmations of a subscription command.
    Subscription(SubKind),
}

/// Where a frame read from the dedicated connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The reply to the first awaited request.
    Reply,
    /// A confirmation of the awaited subscription command; `all` is how
    /// many it takes when the command gave no names.
    Confirms { all: u32 },
    /// Any other frame answering the awaited subscription command (an
    /// error): the command's whole answer.
    Ends,
    /// Sent unasked: a message, or a confirmation nobody waits for.
    Unasked,
    /// A reply with no request waiting for it: the stream cannot be trusted.
    Unexpected,
}

/// The connection's subscriptions as Redis last confirmed them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Subscriptions {
    channels: u32,
    patterns: u32,
    shard_channels: u32,
}

impl Subscriptions {
    /// Whether Redis has the connection in subscribed mode (any kind).
    pub fn active(&self) -> bool {
        self.channels + self.patterns + self.shard_channels > 0
    }

    /// Where `frame` (of `kind`) goes, with `awaited` first in line; a
    /// confirmation updates the counts.
    pub fn route(
        &mut self,
        frame: &[u8],
        kind: ReplyKind,
        protocol: Protocol,
        awaited: Option<Awaited>,
    ) -> Route {
        let waiting_for = match awaited {
            Some(Awaited::Subscription(k)) => Some(k),
            _ => None,
        };
        // In RESP2 a message is an array like any reply: only a subscribed
        // connection (or one about to be) can be sent one.
        let maybe_pubsub = kind == ReplyKind::Push
            || (protocol == Protocol::Resp2
                && frame.first() == Some(&b'*')
                && (self.active() || waiting_for.is_some()));
        if maybe_pubsub {
            match pubsub_frame(frame) {
                Some(PubsubFrame::Confirmation(k, count)) => {
                    let all = self.held(k);
                    self.confirm(k, count);
                    return if waiting_for == Some(k) {
                        Route::Confirms { all }
                    } else {
                        Route::Unasked
                    };
                }
                Some(PubsubFrame::Message) => return Route::Unasked,
                None if kind == ReplyKind::Push => return Route::Unasked,
                None => {}
            }
        }
        match awaited {
            None => Route::Unexpected,
            Some(Awaited::Reply) => Route::Reply,
            Some(Awaited::Subscription(_)) => Route::Ends,
        }
    }

    /// Subscriptions held that an UNSUBSCRIBE-family command of `kind`
    /// without names would end.
    fn held(&self, kind: SubKind) -> u32 {
        match kind {
            SubKind::Unsubscribe => self.channels,
            SubKind::PUnsubscribe => self.patterns,
            SubKind::SUnsubscribe => self.shard_channels,
            _ => 0,
        }
    }

    /// A confirmation's count: channels plus patterns for the plain and
    /// pattern kinds, shard channels for the shard kinds (pubsub.c's
    /// `clientSubscriptionsCount` and `clientShardSubscriptionsCount`). A
    /// plain command changes only channels, a pattern one only patterns.
    fn confirm(&mut self, kind: SubKind, count: i64) {
        let count = u32::try_from(count.max(0)).unwrap_or(u32::MAX);
        match kind {
            SubKind::Subscribe | SubKind::Unsubscribe => {
                self.channels = count.saturating_sub(self.patterns)
            }
            SubKind::PSubscribe | SubKind::PUnsubscribe => {
                self.patterns = count.saturating_sub(self.channels)
            }
            SubKind::SSubscribe | SubKind::SUnsubscribe => self.shard_channels = count,
        }
    }
}

enum PubsubFrame {
    /// `[kind, name, count]`.
    Confirmation(SubKind, i64),
    /// `message`, `pmessage`, `smessage` (and other pushes keygate passes).
    Message,
}

/// Reads a frame shaped like a pub/sub frame; `None` for anything else.
fn pubsub_frame(frame: &[u8]) -> Option<PubsubFrame> {
    let items = match Value::parse(frame).ok()? {
        Value::Array(items) | Value::Push(items) => items,
        _ => return None,
    };
    let word = match items.first()? {
        Value::Bulk(w) | Value::Simple(w) => w.clone(),
        _ => return None,
    };
    if let (Some(kind), 3, Some(Value::Integer(count))) =
        (SubKind::of_confirmation(&word), items.len(), items.get(2))
    {
        return Some(PubsubFrame::Confirmation(kind, *count));
    }
    let message = word.eq_ignore_ascii_case(b"message") && items.len() == 3
        || word.eq_ignore_ascii_case(b"smessage") && items.len() == 3
        || word.eq_ignore_ascii_case(b"pmessage") && items.len() == 4;
    message.then_some(PubsubFrame::Message)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUB_A: &[u8] = b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n";
    const PSUB: &[u8] = b"*3\r\n$10\r\npsubscribe\r\n$2\r\nb*\r\n:2\r\n";
    const UNSUB_A: &[u8] = b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:1\r\n";
    const PUNSUB: &[u8] = b"*3\r\n$12\r\npunsubscribe\r\n$2\r\nb*\r\n:0\r\n";
    const MESSAGE: &[u8] = b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nx\r\n";

    fn route(s: &mut Subscriptions, frame: &[u8], awaited: Option<Awaited>) -> Route {
        s.route(frame, ReplyKind::of_frame(frame), Protocol::Resp2, awaited)
    }

    #[test]
    fn resp2_arrays_are_replies_unless_subscribed() {
        let mut s = Subscriptions::default();
        let reply = Some(Awaited::Reply);
        // LRANGE of a list that looks like a message, not subscribed.
        assert_eq!(route(&mut s, MESSAGE, reply), Route::Reply);
        let sub = Some(Awaited::Subscription(SubKind::Subscribe));
        assert_eq!(route(&mut s, SUB_A, sub), Route::Confirms { all: 0 });
        assert!(s.active());
        assert_eq!(route(&mut s, MESSAGE, reply), Route::Unasked);
        assert_eq!(route(&mut s, b"-ERR only\r\n", reply), Route::Reply);
        let psub = Some(Awaited::Subscription(SubKind::PSubscribe));
        assert_eq!(route(&mut s, PSUB, psub), Route::Confirms { all: 0 });
        // UNSUBSCRIBE without names ends the one channel, not the pattern.
        let unsub = Some(Awaited::Subscription(SubKind::Unsubscribe));
        assert_eq!(route(&mut s, UNSUB_A, unsub), Route::Confirms { all: 1 });
        assert!(s.active());
        let punsub = Some(Awaited::Subscription(SubKind::PUnsubscribe));
        assert_eq!(route(&mut s, PUNSUB, punsub), Route::Confirms { all: 1 });
        assert!(!s.active());
        assert_eq!(route(&mut s, MESSAGE, reply), Route::Reply);
        assert_eq!(route(&mut s, b"+OK\r\n", None), Route::Unexpected);
    }

    #[test]
    fn an_error_ends_a_subscription_command() {
        let mut s = Subscriptions::default();
        let sub = Some(Awaited::Subscription(SubKind::Subscribe));
        assert_eq!(route(&mut s, b"-NOPERM no\r\n", sub), Route::Ends);
        assert!(!s.active());
    }

    #[test]
    fn resp3_pushes_are_unasked_unless_awaited() {
        let mut s = Subscriptions::default();
        let push = b">3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n";
        let reply = Some(Awaited::Reply);
        assert_eq!(
            s.route(push, ReplyKind::Push, Protocol::Resp3, reply),
            Route::Unasked
        );
        assert!(s.active());
        let array = b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nx\r\n";
        assert_eq!(
            s.route(array, ReplyKind::Value, Protocol::Resp3, reply),
            Route::Reply
        );
    }
}
