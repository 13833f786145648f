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

use bytes::{Bytes, BytesMut};

use crate::command::glob::{self, Case};
use crate::policy::namespace::Namespace;
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

    /// Whether it holds no channel or pattern subscriptions (shard
    /// channels only, or nothing).
    pub fn shard_only(&self) -> bool {
        self.channels + self.patterns == 0
    }

    /// Counts `n` shard channels subscribed again on a new connection
    /// before Redis confirms them, so their confirmations are read as a
    /// subscriber's frames.
    pub fn resubscribed_shard_channels(&mut self, n: u32) {
        self.shard_channels = n;
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

/// Patterns of a namespaced client that could match keyspace or keyevent
/// channels without naming them (`*`, `_*`). The prefixed pattern matches
/// none of those, so each such pattern also gets a hidden pattern of its
/// own on Redis, `__key` and stars (`__key*`, `__key**`, ...: distinct, so
/// Redis holds one per client pattern), which matches only notification
/// channels: other services' channels never reach it, and their PUBLISH
/// counts never include it. keygate judges every message the hidden
/// pattern brings ([`Namespace::notification_view`] and the client's
/// pattern) and shows it under the client's pattern.
///
/// Invariant: the client sees the subscriptions it made and no other.
/// Hidden patterns' confirmations are dropped before anything counts them,
/// and the counts in the confirmations it sees are Redis's less the hidden
/// patterns Redis holds at that point.
#[derive(Debug, Default)]
pub struct PatternAliases {
    /// The client's pattern, its hidden pattern, and whether Redis holds it.
    aliases: Vec<(Bytes, Bytes, bool)>,
    /// Hidden patterns Redis holds.
    held: u32,
}

/// What a frame from a subscribed connection is, as far as hidden patterns go.
#[derive(Debug, PartialEq, Eq)]
pub enum Hidden {
    /// A hidden pattern's confirmation: nobody sees it.
    Confirmation,
    /// Anything else, its count made the client's where it is a confirmation.
    Visible(Bytes),
}

/// Start of every hidden pattern.
const HIDDEN_START: &[u8] = b"__key";

impl PatternAliases {
    /// The hidden pattern for `pattern`: the one it has, or a new one.
    pub fn alias(&mut self, pattern: &[u8]) -> Bytes {
        if let Some(alias) = self.existing(pattern) {
            return alias;
        }
        let stars = (1..)
            .find(|&n| {
                !self
                    .aliases
                    .iter()
                    .any(|(_, a, _)| a.len() == HIDDEN_START.len() + n)
            })
            .unwrap_or(1);
        let mut alias = HIDDEN_START.to_vec();
        alias.resize(HIDDEN_START.len() + stars, b'*');
        let alias = Bytes::from(alias);
        self.aliases
            .push((Bytes::copy_from_slice(pattern), alias.clone(), false));
        alias
    }

    /// The hidden pattern `pattern` has, if any.
    pub fn existing(&self, pattern: &[u8]) -> Option<Bytes> {
        self.aliases
            .iter()
            .find(|(p, _, _)| p[..] == *pattern)
            .map(|(_, a, _)| a.clone())
    }

    /// Forgets every hidden pattern (the connection's subscriptions are gone).
    pub fn clear(&mut self) {
        self.aliases.clear();
        self.held = 0;
    }

    /// Sorts out a frame read from the subscribed connection before it is
    /// routed: hidden confirmations are taken out (and counted), the
    /// others' counts lose the hidden patterns.
    pub fn before_route(&mut self, frame: Bytes) -> Hidden {
        if self.aliases.is_empty() && self.held == 0 {
            return Hidden::Visible(frame);
        }
        let Some(PubsubFrame::Confirmation(kind, count)) = pubsub_frame(&frame) else {
            return Hidden::Visible(frame);
        };
        let Ok(Value::Array(mut items) | Value::Push(mut items)) = Value::parse(&frame) else {
            return Hidden::Visible(frame);
        };
        let push = frame.first() == Some(&b'>');
        let hidden = match items.get(1) {
            Some(Value::Bulk(name)) => self.aliases.iter().position(|(_, a, _)| a == name),
            _ => None,
        };
        match (kind, hidden) {
            (SubKind::PSubscribe, Some(at)) => {
                if let Some((_, _, held)) = self.aliases.get_mut(at) {
                    if !*held {
                        *held = true;
                        self.held += 1;
                    }
                }
                Hidden::Confirmation
            }
            (SubKind::PUnsubscribe, Some(at)) => {
                let (_, _, held) = self.aliases.swap_remove(at);
                if held {
                    self.held = self.held.saturating_sub(1);
                }
                Hidden::Confirmation
            }
            (SubKind::SSubscribe | SubKind::SUnsubscribe, _) => Hidden::Visible(frame),
            _ if self.held == 0 => Hidden::Visible(frame),
            _ => {
                if let Some(slot) = items.get_mut(2) {
                    *slot = Value::Integer(count.saturating_sub(i64::from(self.held)));
                }
                Hidden::Visible(encode(items, push, frame.len()))
            }
        }
    }

    /// A message a hidden pattern brought, as the client sees it under its
    /// own pattern: `None` when the frame is not one, `Some(None)` to drop
    /// it (not the namespace's, or not matching the client's pattern).
    pub fn translate(&self, ns: &Namespace, frame: &Bytes) -> Option<Option<Bytes>> {
        if self.aliases.is_empty() {
            return None;
        }
        let (push, mut items) = match Value::parse(frame).ok()? {
            Value::Push(items) => (true, items),
            Value::Array(items) => (false, items),
            _ => return None,
        };
        let is_pmessage = matches!(items.first(), Some(Value::Bulk(w) | Value::Simple(w))
            if w.eq_ignore_ascii_case(b"pmessage"));
        if !is_pmessage || items.len() != 4 {
            return None;
        }
        let Some(Value::Bulk(alias)) = items.get(1) else {
            return None;
        };
        let (pattern, _, _) = self.aliases.iter().find(|(_, a, _)| a == alias)?;
        let (Some(Value::Bulk(channel)), Some(Value::Bulk(payload))) = (items.get(2), items.get(3))
        else {
            return Some(None);
        };
        if !Namespace::is_notification(channel) {
            // The client's prefixed pattern brings the namespace's own
            // channels; this one would bring them twice.
            return Some(None);
        }
        let Some((channel, payload)) = ns.notification_view(channel, payload) else {
            return Some(None);
        };
        if !glob::matches(pattern, &channel, Case::Sensitive) {
            return Some(None);
        }
        items.truncate(1);
        items.push(Value::Bulk(pattern.clone()));
        items.push(Value::Bulk(channel.into()));
        items.push(Value::Bulk(payload));
        Some(Some(encode(items, push, frame.len())))
    }
}

/// A pub/sub frame written again, in the shape it came in.
fn encode(items: Vec<Value>, push: bool, size: usize) -> Bytes {
    let mut out = BytesMut::with_capacity(size);
    if push {
        Value::Push(items).encode(&mut out);
    } else {
        Value::Array(items).encode(&mut out);
    }
    out.freeze()
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

    /// Hidden patterns' confirmations are taken out and the client's
    /// counts lose them; their messages show the client's pattern, only
    /// for notification channels of the namespace that match it.
    #[test]
    fn hidden_patterns_stay_hidden() {
        let ns = Namespace::new("app", b"app:");
        let mut aliases = PatternAliases::default();
        let star = aliases.alias(b"*");
        assert_eq!(&star[..], b"__key*");
        assert_eq!(aliases.alias(b"*"), star);
        assert_eq!(&aliases.alias(b"_*")[..], b"__key**");
        let frame = |s: &'static [u8]| Bytes::from_static(s);
        // PSUBSCRIBE * _*: app:*, __key*, app:_*, __key**.
        assert_eq!(
            aliases.before_route(frame(b"*3\r\n$10\r\npsubscribe\r\n$5\r\napp:*\r\n:1\r\n")),
            Hidden::Visible(frame(b"*3\r\n$10\r\npsubscribe\r\n$5\r\napp:*\r\n:1\r\n"))
        );
        assert_eq!(
            aliases.before_route(frame(b"*3\r\n$10\r\npsubscribe\r\n$6\r\n__key*\r\n:2\r\n")),
            Hidden::Confirmation
        );
        assert_eq!(
            aliases.before_route(frame(b">3\r\n$10\r\npsubscribe\r\n$6\r\napp:_*\r\n:3\r\n")),
            Hidden::Visible(frame(b">3\r\n$10\r\npsubscribe\r\n$6\r\napp:_*\r\n:2\r\n"))
        );
        let message = frame(
            b"*4\r\n$8\r\npmessage\r\n$6\r\n__key*\r\n$20\r\n__keyspace@0__:app:k\r\n$3\r\nset\r\n",
        );
        assert_eq!(
            aliases.translate(&ns, &message),
            Some(Some(frame(
                b"*4\r\n$8\r\npmessage\r\n$1\r\n*\r\n$16\r\n__keyspace@0__:k\r\n$3\r\nset\r\n"
            )))
        );
        let foreign = frame(
            b"*4\r\n$8\r\npmessage\r\n$6\r\n__key*\r\n$18\r\n__keyevent@0__:set\r\n$5\r\nbus:k\r\n",
        );
        assert_eq!(aliases.translate(&ns, &foreign), Some(None));
        // A notification the client's own pattern does not match is dropped.
        let mut narrow = PatternAliases::default();
        narrow.alias(b"?x*");
        let keyevent = frame(
            b"*4\r\n$8\r\npmessage\r\n$6\r\n__key*\r\n$18\r\n__keyevent@0__:set\r\n$5\r\napp:k\r\n",
        );
        assert_eq!(narrow.translate(&ns, &keyevent), Some(None));
        // An ordinary message passes by.
        assert_eq!(aliases.translate(&ns, &frame(MESSAGE)), None);
        // PUNSUBSCRIBE *: app:* then __key*.
        assert_eq!(
            aliases.before_route(frame(b"*3\r\n$12\r\npunsubscribe\r\n$5\r\napp:*\r\n:2\r\n")),
            Hidden::Visible(frame(b"*3\r\n$12\r\npunsubscribe\r\n$5\r\napp:*\r\n:1\r\n"))
        );
        assert_eq!(
            aliases.before_route(frame(
                b"*3\r\n$12\r\npunsubscribe\r\n$6\r\n__key*\r\n:1\r\n"
            )),
            Hidden::Confirmation
        );
        assert_eq!(aliases.existing(b"*"), None);
        assert_eq!(aliases.held, 0, "__key** was never confirmed in this test");
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
