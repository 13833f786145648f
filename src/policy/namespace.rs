//! A service's namespace: the prefix that confines its keys and channels,
//! the request rewrite that applies it and the reply rewrite that takes it
//! off again.
//!
//! Invariants:
//! - every key a request names (at every position [`key_positions`] finds)
//!   and every channel reaches the backend with the prefix in front; a
//!   pattern reaches it with the *glob-escaped* prefix in front, so it can
//!   only match names inside the namespace, whatever the client's pattern
//!   and whatever glob characters the prefix itself holds;
//! - a request keygate cannot confine (keys it cannot locate, patterns it
//!   cannot scope, commands that reveal the whole keyspace) is refused,
//!   never forwarded as it is; [`super::confinement`] says which rule each
//!   command of the table follows;
//! - on the way back, names lose the prefix. **A name that unexpectedly
//!   lacks the prefix is never shown as it is**: it is dropped from lists
//!   (KEYS, SCAN, PUBSUB CHANNELS/NUMSUB), a single key name becomes nil
//!   (RANDOMKEY), a reply whose shape needs the name (the first element of
//!   BLPOP & co., a stream of XREAD) becomes an error, a pub/sub message on
//!   such a channel is dropped, and a subscription confirmation keeps its
//!   shape with the name replaced by nil (so clients counting
//!   confirmations do not hang).
//!
//! Keyspace notifications: `__keyspace@<db>__:<key>` names are rewritten to
//! `__keyspace@<db>__:<prefix><key>` (the key part of a pattern gets the
//! escaped prefix; `<db>` must be plain digits). `__keyevent@` channels and
//! patterns may be subscribed as they are: their messages carry a key name,
//! and only those naming a key of the namespace reach the client, without
//! the prefix. PUBLISH, PUBSUB NUMSUB and PUBSUB CHANNELS still refuse them.
//! A pattern that could match notification channels without naming them
//! (`*`, `_*`) also gets a hidden pattern that matches only notification
//! channels, from the client layer, which judges each message it brings by
//! [`Namespace::notification_view`] and the client's pattern.
//!
//! [`key_positions`]: crate::command::keys::key_positions

use bytes::{Bytes, BytesMut};

use super::access::Refusal;
use super::confinement::{self, Rule};
use super::keyspace::Procedure;
use super::service::Service;
use crate::command::glob;
use crate::command::keys::{
    key_positions, key_positions_inline, single_fixed_key, sort_options, KeysError,
};
use crate::command::keyword::{c_str, is_keyword};
use crate::command::{CommandSpec, ReplyKeys};
use crate::protocol::reply::Value;
use crate::protocol::request::Request;
use crate::protocol::Protocol;

/// Start of a keyspace notification channel.
const KEYSPACE: &[u8] = b"__keyspace@";
/// Start of a keyevent notification channel.
const KEYEVENT: &[u8] = b"__keyevent@";

/// One service's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// The service's name, for refusals.
    service: String,
    /// Put in front of key and channel names.
    prefix: Bytes,
    /// `prefix` with `*?[]\` escaped, put in front of patterns.
    glob: Bytes,
    /// For each key length below [`KEY_HEADERS`], the bytes a one-key
    /// rewrite puts where the key's `$len` line was: `$<len + prefix>\r\n`
    /// and the prefix, ready so the hot path formats no number.
    key_headers: Box<[Box<[u8]>]>,
}

/// Key lengths whose rewritten `$len` line and prefix a namespace keeps ready.
const KEY_HEADERS: usize = 64;

/// What to send instead of the client's request.
#[derive(Debug, Clone, PartialEq)]
pub enum Rewritten {
    /// Send `request`; take the prefix off the reply's names per `reply_keys`.
    Forward {
        request: Request,
        reply_keys: ReplyKeys,
    },
    /// Answer with a keyspace procedure ([`super::keyspace`]) instead.
    Procedure(Procedure),
}

/// Escapes the glob characters Redis's `stringmatchlen` knows.
pub fn glob_escape(literal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(literal.len() + 4);
    for &b in literal {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

/// Splits `__keyspace@<digits>__:<rest>` into its head (through `__:`) and rest.
fn split_keyspace(name: &[u8]) -> Option<(&[u8], &[u8])> {
    let after = name.strip_prefix(KEYSPACE)?;
    let digits = after.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let tail = after.get(digits..)?.strip_prefix(b"__:")?;
    let head_len = name.len() - tail.len();
    Some((name.get(..head_len)?, tail))
}

fn concat(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    out.extend_from_slice(a);
    out.extend_from_slice(b);
    out
}

impl Namespace {
    /// The namespace of `service`, `None` when its isolation is off.
    pub fn for_service(service: &Service) -> Option<Namespace> {
        service
            .isolation
            .then(|| Namespace::new(&service.name, &service.prefix))
    }

    /// A namespace with this prefix (non-empty for isolation to mean anything).
    pub fn new(service: &str, prefix: &[u8]) -> Namespace {
        Namespace {
            service: service.to_string(),
            prefix: Bytes::copy_from_slice(prefix),
            glob: Bytes::from(glob_escape(prefix)),
            key_headers: (0..KEY_HEADERS)
                .map(|len| {
                    let mut header = format!("${}\r\n", len + prefix.len()).into_bytes();
                    header.extend_from_slice(prefix);
                    header.into_boxed_slice()
                })
                .collect(),
        }
    }

    /// Appends `req` with the prefix in front of argument `at` to `out`:
    /// the bytes of [`Request::prefix_arg`], for a caller gathering frames
    /// in one buffer (see [`Namespace::single_key`]). Reserves nothing.
    pub fn write_confined(&self, req: &Request, at: usize, out: &mut BytesMut) {
        let header = req.arg_len(at).and_then(|len| self.key_headers.get(len));
        match header {
            Some(header) if !self.prefix.is_empty() => req.write_with_key_header(at, header, out),
            _ => req.write_prefixed(at, &self.prefix, out),
        }
    }

    /// The literal prefix.
    pub fn prefix_bytes(&self) -> &[u8] {
        &self.prefix
    }

    /// The glob-escaped prefix.
    pub fn glob_prefix(&self) -> &[u8] {
        &self.glob
    }

    /// A key or channel name as the backend knows it.
    pub fn prefix(&self, name: &[u8]) -> Vec<u8> {
        concat(&self.prefix, name)
    }

    /// A backend key name as the client knows it; `None` outside the namespace.
    pub fn strip<'a>(&self, name: &'a [u8]) -> Option<&'a [u8]> {
        name.strip_prefix(&self.prefix[..])
    }

    /// A client's glob pattern, confined to the namespace.
    pub fn prefix_pattern(&self, pattern: &[u8]) -> Vec<u8> {
        concat(&self.glob, pattern)
    }

    /// A backend pattern as the client wrote it; `None` if not one of ours.
    pub fn strip_pattern<'a>(&self, pattern: &'a [u8]) -> Option<&'a [u8]> {
        pattern.strip_prefix(&self.glob[..])
    }

    /// A channel name as the backend knows it (keyspace channels get the
    /// prefix on their key part).
    pub fn channel(&self, channel: &[u8]) -> Result<Vec<u8>, &'static str> {
        if channel.starts_with(KEYEVENT) {
            return Err("keyevent notifications carry other services' key names");
        }
        if channel.starts_with(KEYSPACE) {
            let (head, key) = split_keyspace(channel)
                .ok_or("a keyspace channel must be __keyspace@<db>__:<key>")?;
            let mut out = concat(head, &self.prefix);
            out.extend_from_slice(key);
            return Ok(out);
        }
        Ok(self.prefix(channel))
    }

    /// A channel name SUBSCRIBE and UNSUBSCRIBE send: keyevent channels
    /// go as they are (their messages are filtered on the way back).
    pub fn subscription_channel(&self, channel: &[u8]) -> Result<Vec<u8>, &'static str> {
        if channel.starts_with(KEYEVENT) {
            return Ok(channel.to_vec());
        }
        self.channel(channel)
    }

    /// A pattern PSUBSCRIBE and PUNSUBSCRIBE send: keyevent patterns go as
    /// they are (every channel they match starts with `__keyevent@`, and
    /// messages are filtered on the way back).
    pub fn subscription_pattern(&self, pattern: &[u8]) -> Result<Vec<u8>, &'static str> {
        if pattern.starts_with(KEYEVENT) {
            return Ok(pattern.to_vec());
        }
        self.channel_pattern(pattern)
    }

    /// Whether a client's pattern could match keyspace or keyevent
    /// channels without naming them (`*`, `_*`, `?_key*`): the prefixed
    /// pattern would match none, so the client layer subscribes it as a
    /// catch-all and judges each message itself.
    pub fn catches_notifications(&self, pattern: &[u8]) -> bool {
        !pattern.starts_with(KEYSPACE)
            && !pattern.starts_with(KEYEVENT)
            && (glob::may_match_text_starting_with(pattern, KEYSPACE)
                || glob::may_match_text_starting_with(pattern, KEYEVENT))
    }

    /// Whether a channel is one Redis sends keyspace notifications on.
    pub fn is_notification(channel: &[u8]) -> bool {
        channel.starts_with(KEYSPACE) || channel.starts_with(KEYEVENT)
    }

    /// A message's channel and payload as the client sees them, `None` when
    /// it is not the namespace's: a keyevent message names one of its keys
    /// (shown without the prefix), a keyspace channel one of its keys, any
    /// other channel carries the prefix.
    pub fn notification_view(&self, channel: &[u8], payload: &Bytes) -> Option<(Vec<u8>, Bytes)> {
        if channel.starts_with(KEYEVENT) {
            let key = self.strip(payload)?;
            return Some((channel.to_vec(), payload.slice_ref(key)));
        }
        Some((self.strip_channel(channel)?, payload.clone()))
    }

    /// A channel pattern as the backend gets it.
    pub fn channel_pattern(&self, pattern: &[u8]) -> Result<Vec<u8>, &'static str> {
        if pattern.starts_with(KEYEVENT) {
            return Err("keyevent notifications carry other services' key names");
        }
        if pattern.starts_with(KEYSPACE) {
            let (head, key) = split_keyspace(pattern).ok_or(
                "a keyspace pattern must be __keyspace@<db>__:<pattern> with a literal database number",
            )?;
            let mut out = concat(head, &self.glob);
            out.extend_from_slice(key);
            return Ok(out);
        }
        Ok(self.prefix_pattern(pattern))
    }

    /// A backend channel name as the client knows it; `None` outside the namespace.
    pub fn strip_channel(&self, channel: &[u8]) -> Option<Vec<u8>> {
        if let Some((head, key)) = split_keyspace(channel) {
            if let Some(own) = self.strip(key) {
                return Some(concat(head, own));
            }
        }
        self.strip(channel).map(<[u8]>::to_vec)
    }

    /// A backend channel pattern as the client wrote it; `None` if not ours.
    pub fn strip_channel_pattern(&self, pattern: &[u8]) -> Option<Vec<u8>> {
        if pattern.starts_with(KEYEVENT) {
            return Some(pattern.to_vec());
        }
        if let Some((head, key)) = split_keyspace(pattern) {
            if let Some(own) = self.strip_pattern(key) {
                return Some(concat(head, own));
            }
        }
        self.strip_pattern(pattern).map(<[u8]>::to_vec)
    }

    fn refuse(&self, spec: &CommandSpec, reason: &'static str) -> Refusal {
        Refusal::Isolation {
            command: spec.name,
            service: self.service.clone(),
            reason,
        }
    }

    /// The one argument to prefix when confining `req` is only that (GET,
    /// SET, INCR, HGET...: one key at a fixed place, nothing refused), so
    /// the caller may write the prefix into its outgoing bytes instead of
    /// building the request [`Namespace::rewrite`] would. `None` for every
    /// other request, which then goes through `rewrite`.
    pub fn single_key(&self, spec: &'static CommandSpec, req: &Request) -> Option<usize> {
        match confinement::rule_of(spec) {
            Rule::Keys => single_fixed_key(spec, req),
            _ => None,
        }
    }

    /// Confines `req` to this namespace, or says why it cannot be.
    pub fn rewrite(
        &self,
        spec: &'static CommandSpec,
        req: &Request,
        service: &Service,
    ) -> Result<Rewritten, Refusal> {
        let forward = |request: Request| Rewritten::Forward {
            request,
            reply_keys: spec.reply_keys,
        };
        let keys = |req: &Request| -> Result<Request, Refusal> {
            // GET, SET, INCR, HGET...: one key at a fixed place.
            if let Some(at) = single_fixed_key(spec, req) {
                return Ok(req.prefix_arg(at, &self.prefix));
            }
            let positions = key_positions_inline(spec, req).map_err(Refusal::Unlocatable)?;
            Ok(req.prefix_args(&positions, &self.prefix))
        };
        match confinement::rule_of(spec) {
            Rule::Pass | Rule::Info => Ok(forward(req.clone())),
            Rule::Keys => Ok(forward(keys(req)?)),
            Rule::Sort => {
                let opts =
                    sort_options(req, spec.name == "sort_ro").map_err(Refusal::Unlocatable)?;
                let positions = key_positions(spec, req).map_err(Refusal::Unlocatable)?;
                let patterns = self
                    .sort_patterns(req, &opts.patterns)
                    .map_err(|reason| self.refuse(spec, reason))?;
                if patterns.is_empty() {
                    return Ok(forward(req.prefix_args(&positions, &self.prefix)));
                }
                let keys: Vec<(usize, Vec<u8>)> = positions
                    .iter()
                    .filter_map(|&at| req.get(at).map(|key| (at, self.prefix(key))))
                    .collect();
                let mut edits: Vec<(usize, &[u8])> = keys
                    .iter()
                    .chain(patterns.iter())
                    .map(|(at, arg)| (*at, &arg[..]))
                    .collect();
                edits.sort_unstable_by_key(|(at, _)| *at);
                Ok(forward(req.splice(&edits)))
            }
            // Its DB option is read and confined to the service's databases
            // by the client side (`client::database`) before it gets here.
            Rule::Copy => Ok(forward(keys(req)?)),
            Rule::Script => {
                if !service.allow_scripts {
                    return Err(self.refuse(
                        spec,
                        "a script can compute any key name; set allow_scripts = true to trust this service",
                    ));
                }
                Ok(forward(keys(req)?))
            }
            Rule::ScriptAdmin => {
                if !service.allow_scripts {
                    return Err(self.refuse(spec, "scripts are not allowed for this service"));
                }
                Ok(forward(req.clone()))
            }
            Rule::FunctionAdmin => {
                if !(service.allow_scripts && service.admin) {
                    return Err(self.refuse(
                        spec,
                        "functions are shared by every service; set allow_scripts = true and admin = true to trust this service",
                    ));
                }
                Ok(forward(req.clone()))
            }
            Rule::Admin(reason) => {
                if !service.admin {
                    return Err(self.refuse(spec, reason));
                }
                Ok(forward(req.clone()))
            }
            Rule::AdminKeys(reason) => {
                if !service.admin {
                    return Err(self.refuse(spec, reason));
                }
                Ok(forward(keys(req)?))
            }
            Rule::Debug(reason) => {
                if !service.admin {
                    return Err(self.refuse(spec, reason));
                }
                Ok(forward(self.rewrite_debug(req)))
            }
            Rule::KeysPattern => {
                let pattern = self.prefix_pattern(req.get(1).unwrap_or_default());
                Ok(forward(req.splice(&[(1, &pattern)])))
            }
            Rule::Scan => Ok(forward(self.rewrite_scan(req)?)),
            Rule::Channels { first } => {
                let subscription = matches!(spec.name, "subscribe" | "unsubscribe");
                let channels = (first..req.argc())
                    .map(|i| {
                        let name = req.get(i).unwrap_or_default();
                        let channel = if subscription {
                            self.subscription_channel(name)
                        } else {
                            self.channel(name)
                        };
                        channel.map(|c| (i, c))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|reason| self.refuse(spec, reason))?;
                let edits: Vec<(usize, &[u8])> =
                    channels.iter().map(|(i, c)| (*i, &c[..])).collect();
                Ok(forward(req.splice(&edits)))
            }
            Rule::Publish => {
                let channel = self
                    .channel(req.get(1).unwrap_or_default())
                    .map_err(|reason| self.refuse(spec, reason))?;
                Ok(forward(req.splice(&[(1, &channel)])))
            }
            Rule::Patterns => {
                let patterns = (1..req.argc())
                    .map(|i| {
                        let pattern = req.get(i).unwrap_or_default();
                        self.subscription_pattern(pattern).map(|p| (i, p))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|reason| self.refuse(spec, reason))?;
                let edits: Vec<(usize, &[u8])> =
                    patterns.iter().map(|(i, p)| (*i, &p[..])).collect();
                Ok(forward(req.splice(&edits)))
            }
            Rule::ChannelPattern => {
                let pattern = self
                    .channel_pattern(req.get(2).unwrap_or(b"*"))
                    .map_err(|reason| self.refuse(spec, reason))?;
                let mut args: Vec<&[u8]> = req.args().take(2).collect();
                args.push(&pattern);
                Ok(forward(Request::from_args(&args)))
            }
            Rule::Keyspace(procedure) => Ok(Rewritten::Procedure(procedure.parse(req)?)),
            Rule::Refuse(reason) => Err(self.refuse(spec, reason)),
        }
    }

    /// DEBUG for an admin service: the keys of the subcommands that read
    /// keys get the prefix, matched as `debugCommand` (debug.c) matches them
    /// (the subcommand word as a C string, with its argument count);
    /// POPULATE's key prefix (default `key`) gets the namespace's in front,
    /// so the keys it creates are the service's. Every other subcommand
    /// names no key and goes as it is.
    fn rewrite_debug(&self, req: &Request) -> Request {
        let argc = req.argc();
        let sub = req.get(1).unwrap_or_default();
        let is = |word: &[u8]| is_keyword(sub, word);
        let one_key = (is(b"object") || is(b"sdslen") || is(b"listpack") || is(b"htstats-key"))
            && argc == 3
            || is(b"quicklist") && (argc == 3 || argc == 4);
        if one_key {
            return req.prefix_arg(2, &self.prefix);
        }
        if is(b"populate") && (3..=5).contains(&argc) {
            if argc == 3 {
                let mut args: Vec<&[u8]> = req.args().collect();
                let populate_prefix = self.prefix(b"key");
                args.push(&populate_prefix);
                return Request::from_args(&args);
            }
            return req.prefix_arg(3, &self.prefix);
        }
        if is(b"digest-value") {
            let keys: Vec<usize> = (2..argc).collect();
            return req.prefix_args(&keys, &self.prefix);
        }
        req.clone()
    }

    /// SCAN: the client's MATCH (or `*`) behind the escaped prefix; COUNT
    /// and TYPE kept. Options are read the way Redis reads them, so an
    /// option keygate does not know is refused rather than forwarded.
    fn rewrite_scan(&self, req: &Request) -> Result<Request, Refusal> {
        let mut args: Vec<&[u8]> = req.args().take(2).collect();
        let mut pattern: &[u8] = b"*";
        let mut i = 2;
        while i < req.argc() {
            let option = req.get(i).unwrap_or_default();
            let value = req
                .get(i + 1)
                .ok_or(Refusal::Unlocatable(KeysError::Syntax))?;
            if is_keyword(option, b"match") {
                pattern = value;
            } else if is_keyword(option, b"count") || is_keyword(option, b"type") {
                args.push(option);
                args.push(value);
            } else {
                return Err(Refusal::Unlocatable(KeysError::Syntax));
            }
            i += 2;
        }
        let confined = self.prefix_pattern(pattern);
        args.push(b"MATCH");
        args.push(&confined);
        Ok(Request::from_args(&args))
    }

    /// SORT's BY and GET patterns, confined: a pattern Redis turns into key
    /// names (its C string holds `*`, see `lookupKeyByPattern` in sort.c)
    /// gets the prefix in front, so every name it makes, `<prefix>` +
    /// the client's text up to `*` + an element + the rest, lies inside the
    /// namespace (`obj_*->field` reads field `field` of `<prefix>obj_<e>`).
    /// `#` and patterns without `*` (`nosort`) read no key and stay. Redis
    /// substitutes at the first `*` of the whole pattern, so a prefix with a
    /// `*` or NUL byte of its own cannot confine one: refused.
    fn sort_patterns(
        &self,
        req: &Request,
        at: &[usize],
    ) -> Result<Vec<(usize, Vec<u8>)>, &'static str> {
        let mut out = Vec::new();
        for &i in at {
            let pattern = req.get(i).unwrap_or_default();
            if !c_str(pattern).contains(&b'*') {
                continue;
            }
            if self.prefix.iter().any(|&b| b == b'*' || b == 0) {
                return Err("BY and GET patterns cannot be confined under a prefix holding '*'");
            }
            out.push((i, self.prefix(pattern)));
        }
        Ok(out)
    }

    /// Takes the prefix off the names in one reply frame, per `reply_keys`.
    pub fn strip_reply(&self, reply_keys: ReplyKeys, frame: &[u8], protocol: Protocol) -> Bytes {
        // A nil names no key and keeps its exact bytes: BLPOP & co. answer
        // a null array (`*-1`), which re-encoding would turn into `$-1`.
        let nil = matches!(frame, b"*-1\r\n" | b"$-1\r\n" | b"_\r\n");
        if reply_keys == ReplyKeys::None || frame.first() == Some(&b'-') || nil {
            return Bytes::copy_from_slice(frame);
        }
        let value = match Value::parse(frame) {
            Ok(v) => v,
            Err(_) => return error("ERR keygate: could not read a reply to confine it"),
        };
        match self.strip_value(reply_keys, value) {
            Some(v) => {
                let mut out = BytesMut::with_capacity(frame.len());
                v.encode_for(&mut out, protocol);
                out.freeze()
            }
            None => error("ERR keygate: the reply named a key outside this service's namespace"),
        }
    }

    /// Strips a key name held in a bulk; `None` outside the namespace.
    fn strip_bulk(&self, v: Value) -> Option<Value> {
        match v {
            Value::Bulk(name) => self
                .strip(&name)
                .map(|own| Value::Bulk(name.slice_ref(own))),
            Value::Simple(name) => self
                .strip(&name)
                .map(|own| Value::Simple(name.slice_ref(own))),
            _ => None,
        }
    }

    fn strip_channel_value(&self, v: Value) -> Option<Value> {
        match v {
            Value::Bulk(name) => self.strip_channel(&name).map(|c| Value::Bulk(c.into())),
            _ => None,
        }
    }

    /// Keeps the names of a list that are in the namespace, stripped.
    fn strip_list(&self, items: Vec<Value>, channels: bool) -> Vec<Value> {
        items
            .into_iter()
            .filter_map(|v| {
                if channels {
                    self.strip_channel_value(v)
                } else {
                    self.strip_bulk(v)
                }
            })
            .collect()
    }

    /// `None` when the reply's shape needs a name that is not ours.
    fn strip_value(&self, reply_keys: ReplyKeys, value: Value) -> Option<Value> {
        Some(match (reply_keys, value) {
            (_, Value::Nil) => Value::Nil,
            (_, e @ Value::Error(_)) => e,
            (ReplyKeys::KeyArray, Value::Array(items)) => {
                Value::Array(self.strip_list(items, false))
            }
            (ReplyKeys::KeyArray, Value::Set(items)) => Value::Set(self.strip_list(items, false)),
            (ReplyKeys::Scan, Value::Array(mut items)) => {
                let slot = items.get_mut(1)?;
                let Value::Array(keys) = std::mem::replace(slot, Value::Nil) else {
                    return None;
                };
                *slot = Value::Array(self.strip_list(keys, false));
                Value::Array(items)
            }
            (ReplyKeys::Key, v) => self.strip_bulk(v).unwrap_or(Value::Nil),
            (ReplyKeys::FirstElement, Value::Array(mut items)) => {
                let first = items.first_mut()?;
                *first = self.strip_bulk(std::mem::replace(first, Value::Nil))?;
                Value::Array(items)
            }
            (ReplyKeys::Streams, Value::Array(streams)) => Value::Array(
                streams
                    .into_iter()
                    .map(|s| match s {
                        Value::Array(mut pair) => {
                            let name = pair.first_mut()?;
                            *name = self.strip_bulk(std::mem::replace(name, Value::Nil))?;
                            Some(Value::Array(pair))
                        }
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()?,
            ),
            (ReplyKeys::Streams, Value::Map(pairs)) => Value::Map(
                pairs
                    .into_iter()
                    .map(|(k, v)| self.strip_bulk(k).map(|k| (k, v)))
                    .collect::<Option<Vec<_>>>()?,
            ),
            (ReplyKeys::ChannelArray, Value::Array(items)) => {
                Value::Array(self.strip_list(items, true))
            }
            (ReplyKeys::ChannelArray, Value::Set(items)) => {
                Value::Set(self.strip_list(items, true))
            }
            (ReplyKeys::ChannelCounts, Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                let mut it = items.into_iter();
                while let (Some(ch), Some(n)) = (it.next(), it.next()) {
                    if let Some(ch) = self.strip_channel_value(ch) {
                        out.push(ch);
                        out.push(n);
                    }
                }
                Value::Array(out)
            }
            (ReplyKeys::ChannelCounts, Value::Map(pairs)) => Value::Map(
                pairs
                    .into_iter()
                    .filter_map(|(ch, n)| self.strip_channel_value(ch).map(|ch| (ch, n)))
                    .collect(),
            ),
            (ReplyKeys::SlowlogEntries, Value::Array(entries)) => Value::Array(
                entries
                    .into_iter()
                    .map(|entry| self.strip_slowlog_entry(entry))
                    .collect(),
            ),
            // A shape the table does not announce: nothing to show safely.
            _ => return None,
        })
    }

    /// A slow log entry as an admin service sees it: the prefix comes off
    /// this namespace's keys among the logged arguments, found by the
    /// command table as for a request. Other services' keys stay as Redis
    /// logged them (an admin service sees the whole server), and so do
    /// arguments Redis trimmed where the table cannot place them.
    fn strip_slowlog_entry(&self, entry: Value) -> Value {
        let Value::Array(mut fields) = entry else {
            return entry;
        };
        if let Some(Value::Array(args)) = fields.get_mut(3) {
            let words: Vec<Bytes> = args
                .iter()
                .map(|a| match a {
                    Value::Bulk(b) | Value::Simple(b) => b.clone(),
                    _ => Bytes::new(),
                })
                .collect();
            let req = Request::from_args(&words);
            let positions = crate::command::lookup(&req)
                .ok()
                .and_then(|spec| key_positions(spec, &req).ok())
                .unwrap_or_default();
            for at in positions {
                if let Some(Value::Bulk(key)) = args.get_mut(at) {
                    if key.starts_with(&self.prefix) {
                        *key = key.slice(self.prefix.len()..);
                    }
                }
            }
        }
        Value::Array(fields)
    }

    /// Rewrites a frame a subscribed connection sent unasked: pub/sub
    /// messages and subscription confirmations (RESP2 arrays or RESP3
    /// pushes). `None` drops the frame. Frames of any other shape pass.
    pub fn strip_pubsub(&self, frame: &Bytes) -> Option<Bytes> {
        if !matches!(frame.first(), Some(b'*' | b'>')) {
            return Some(frame.clone());
        }
        let Ok(value) = Value::parse(frame) else {
            return None;
        };
        let (push, mut items) = match value {
            Value::Push(items) => (true, items),
            Value::Array(items) => (false, items),
            _ => return Some(frame.clone()),
        };
        let kind = match items.first() {
            Some(Value::Bulk(k) | Value::Simple(k)) => k.to_ascii_lowercase(),
            _ => return Some(frame.clone()),
        };
        let name_at = |items: &mut Vec<Value>, i: usize, pattern: bool| -> Option<()> {
            let slot = items.get_mut(i)?;
            let Value::Bulk(name) = slot else {
                return Some(());
            };
            let stripped = if pattern {
                self.strip_channel_pattern(name)
            } else {
                self.strip_channel(name)
            };
            *slot = stripped.map_or(Value::Nil, |s| Value::Bulk(s.into()));
            Some(())
        };
        let is_nil = |items: &[Value], i: usize| matches!(items.get(i), Some(Value::Nil));
        match &kind[..] {
            b"message" if self.keyevent_message(&mut items, 1) => {
                if is_nil(&items, 2) {
                    return None;
                }
            }
            b"pmessage" if self.keyevent_message(&mut items, 2) => {
                name_at(&mut items, 1, true)?;
                if is_nil(&items, 1) || is_nil(&items, 3) {
                    return None;
                }
            }
            b"message" | b"smessage" => {
                name_at(&mut items, 1, false)?;
                if is_nil(&items, 1) {
                    return None;
                }
            }
            b"pmessage" => {
                name_at(&mut items, 1, true)?;
                name_at(&mut items, 2, false)?;
                if is_nil(&items, 1) || is_nil(&items, 2) {
                    return None;
                }
            }
            b"subscribe" | b"unsubscribe" => {
                let keyevent =
                    matches!(items.get(1), Some(Value::Bulk(c)) if c.starts_with(KEYEVENT));
                if !keyevent {
                    name_at(&mut items, 1, false)?;
                }
            }
            b"ssubscribe" | b"sunsubscribe" => {
                name_at(&mut items, 1, false)?;
            }
            b"psubscribe" | b"punsubscribe" => {
                name_at(&mut items, 1, true)?;
            }
            // Client-side caching invalidations name keys; tracking is
            // refused, so one here is not this client's to see.
            b"invalidate" => return None,
            _ => return Some(frame.clone()),
        }
        let mut out = BytesMut::with_capacity(frame.len());
        if push {
            Value::Push(items).encode(&mut out);
        } else {
            Value::Array(items).encode(&mut out);
        }
        Some(out.freeze())
    }
}

impl Namespace {
    /// A message on a keyevent channel (the channel at `at`, the payload
    /// after it): its payload loses the prefix when it names one of the
    /// namespace's keys, and is replaced by nil otherwise (the caller drops
    /// the frame). False when the channel is not a keyevent one.
    fn keyevent_message(&self, items: &mut [Value], at: usize) -> bool {
        let keyevent = matches!(items.get(at), Some(Value::Bulk(c)) if c.starts_with(KEYEVENT));
        if !keyevent {
            return false;
        }
        if let Some(slot) = items.get_mut(at + 1) {
            *slot = match std::mem::replace(slot, Value::Nil) {
                Value::Bulk(payload) => self
                    .strip(&payload)
                    .map_or(Value::Nil, |key| Value::Bulk(payload.slice_ref(key))),
                _ => Value::Nil,
            };
        }
        true
    }
}

fn error(msg: &str) -> Bytes {
    let mut out = BytesMut::new();
    crate::protocol::encode::error(&mut out, msg);
    out.freeze()
}

/// INFO for an isolated service: the `# Keyspace` section (every service's
/// key counts) is removed.
pub fn remove_keyspace_section(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut skipping = false;
    for line in text.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"# ") {
            skipping = line
                .get(2..)
                .is_some_and(|s| s.to_ascii_lowercase().starts_with(b"keyspace"));
        }
        if !skipping {
            out.extend_from_slice(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::lookup;
    use proptest::prelude::*;

    fn ns() -> Namespace {
        Namespace::new("billing", b"billing:")
    }

    /// The ready `$len` lines give the bytes `prefix_arg` builds, for keys
    /// of every length, cached or not.
    #[test]
    fn write_confined_is_prefix_arg() {
        let ns = ns();
        for len in [0, 1, 9, 10, KEY_HEADERS - 1, KEY_HEADERS, 1000] {
            let key = vec![b'k'; len];
            let req = Request::from_args(&[&b"SET"[..], &key, b"v"]);
            let mut out = BytesMut::from(&b"x"[..]);
            ns.write_confined(&req, 1, &mut out);
            let want = req.prefix_arg(1, ns.prefix_bytes());
            assert_eq!(&out[1..], &want.frame()[..], "key of {len} bytes");
        }
    }

    fn service(allow_scripts: bool) -> Service {
        let cfg = crate::config::Config::parse(&format!(
            r#"
[proxy]
listen = "127.0.0.1:0"
[backend]
address = "127.0.0.1:1"
[[service]]
name = "billing"
prefix = "billing:"
password = "x"
allow_scripts = {allow_scripts}
"#
        ))
        .expect("config");
        Service::from_config(0, &cfg.services[0])
    }

    fn rewrite(args: &[&str]) -> Result<Vec<String>, String> {
        let req = Request::from_args(args);
        let spec = lookup(&req).map_err(|e| e.to_string())?;
        match ns().rewrite(spec, &req, &service(false)) {
            Ok(Rewritten::Forward { request, .. }) => Ok(request
                .args()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()),
            Ok(Rewritten::Procedure(p)) => Ok(vec![format!("{p:?}")]),
            Err(e) => Err(e.to_string()),
        }
    }

    fn v(args: &[&str]) -> Result<Vec<String>, String> {
        Ok(args.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn escapes_glob_characters_of_the_prefix() {
        assert_eq!(glob_escape(b"a*b?[c]\\"), b"a\\*b\\?\\[c\\]\\\\".to_vec());
        let n = Namespace::new("x", b"a*");
        assert_eq!(n.prefix_pattern(b"*"), b"a\\**".to_vec());
    }

    #[test]
    fn keys_get_the_prefix() {
        assert_eq!(rewrite(&["GET", "k"]), v(&["GET", "billing:k"]));
        assert_eq!(
            rewrite(&["MSET", "a", "1", "b", "2"]),
            v(&["MSET", "billing:a", "1", "billing:b", "2"])
        );
        assert_eq!(
            rewrite(&["ZUNIONSTORE", "d", "2", "a", "b"]),
            v(&["ZUNIONSTORE", "billing:d", "2", "billing:a", "billing:b"])
        );
        assert_eq!(
            rewrite(&["XREAD", "COUNT", "1", "STREAMS", "s", "0"]),
            v(&["XREAD", "COUNT", "1", "STREAMS", "billing:s", "0"])
        );
        assert_eq!(
            rewrite(&["GEORADIUS", "g", "0", "0", "1", "km", "STOREDIST", "d"]),
            v(&[
                "GEORADIUS",
                "billing:g",
                "0",
                "0",
                "1",
                "km",
                "STOREDIST",
                "billing:d"
            ])
        );
        assert_eq!(
            rewrite(&["SORT", "l", "LIMIT", "0", "1", "STORE", "d"]),
            v(&["SORT", "billing:l", "LIMIT", "0", "1", "STORE", "billing:d"])
        );
        assert!(rewrite(&["XREAD", "STREAMS", "s"]).is_err());
    }

    #[test]
    fn patterns_are_confined() {
        assert_eq!(rewrite(&["KEYS", "*"]), v(&["KEYS", "billing:*"]));
        assert_eq!(
            rewrite(&["SCAN", "0"]),
            v(&["SCAN", "0", "MATCH", "billing:*"])
        );
        assert_eq!(
            rewrite(&["SCAN", "5", "MATCH", "a*", "COUNT", "10", "TYPE", "string"]),
            v(&[
                "SCAN",
                "5",
                "COUNT",
                "10",
                "TYPE",
                "string",
                "MATCH",
                "billing:a*"
            ])
        );
        assert!(rewrite(&["SCAN", "0", "NOPE", "x"]).is_err());
        assert!(rewrite(&["SCAN", "0", "MATCH"]).is_err());
        assert_eq!(
            rewrite(&["PSUBSCRIBE", "*", "__keyspace@0__:*"]),
            v(&["PSUBSCRIBE", "billing:*", "__keyspace@0__:billing:*"])
        );
        // Keyevent patterns go as they are; their messages are filtered.
        assert_eq!(
            rewrite(&["PSUBSCRIBE", "__keyevent@0__:*"]),
            v(&["PSUBSCRIBE", "__keyevent@0__:*"])
        );
        assert!(rewrite(&["PUBSUB", "CHANNELS", "__keyevent@*"]).is_err());
        assert!(rewrite(&["PSUBSCRIBE", "__keyspace@*__:*"]).is_err());
        assert_eq!(
            rewrite(&["PUBSUB", "CHANNELS"]),
            v(&["PUBSUB", "CHANNELS", "billing:*"])
        );
        assert_eq!(
            rewrite(&["PUBSUB", "NUMSUB", "a", "b"]),
            v(&["PUBSUB", "NUMSUB", "billing:a", "billing:b"])
        );
        assert_eq!(rewrite(&["UNSUBSCRIBE"]), v(&["UNSUBSCRIBE"]));
        assert_eq!(
            rewrite(&["PUBLISH", "c", "msg"]),
            v(&["PUBLISH", "billing:c", "msg"])
        );
        assert_eq!(
            rewrite(&["SUBSCRIBE", "c", "__keyspace@0__:k"]),
            v(&["SUBSCRIBE", "billing:c", "__keyspace@0__:billing:k"])
        );
        assert_eq!(
            rewrite(&["SUBSCRIBE", "__keyevent@0__:set"]),
            v(&["SUBSCRIBE", "__keyevent@0__:set"])
        );
        assert!(rewrite(&["PUBLISH", "__keyevent@0__:set", "billing:k"]).is_err());
        assert!(rewrite(&["PUBSUB", "NUMSUB", "__keyevent@0__:set"]).is_err());
        assert!(rewrite(&["SSUBSCRIBE", "__keyevent@0__:set"]).is_err());
    }

    #[test]
    fn refusals() {
        // SORT's patterns are confined now (sort_patterns_get_the_prefix).
        assert!(rewrite(&["SORT", "l", "BY", "nosort", "GET", "#"]).is_ok());
        assert!(rewrite(&["EVAL", "return 1", "0"]).is_err());
        // COPY's DB option is confined by the client side (client::database).
        assert!(rewrite(&["COPY", "a", "b", "DB", "1"]).is_ok());
        assert!(rewrite(&["COPY", "a", "b"]).is_ok());
        assert!(rewrite(&["PUBSUB", "NUMPAT"]).is_err());
        assert!(rewrite(&["MIGRATE", "h", "1", "k", "0", "5"]).is_err());
        let err = rewrite(&["SCRIPT", "FLUSH"]).unwrap_err();
        assert!(err.starts_with("NOPERM"), "{err}");
    }

    #[test]
    fn scripts_with_allow_scripts_prefix_declared_keys() {
        let req = Request::from_args(&["EVAL", "s", "1", "k", "arg"]);
        let spec = lookup(&req).expect("eval");
        let out = ns().rewrite(spec, &req, &service(true)).expect("allowed");
        let Rewritten::Forward { request, .. } = out else {
            panic!("forward")
        };
        assert_eq!(request.get(3), Some(&b"billing:k"[..]));
        assert_eq!(request.get(4), Some(&b"arg"[..]));
    }

    fn strip(keys: ReplyKeys, frame: &[u8], proto: Protocol) -> Vec<u8> {
        ns().strip_reply(keys, frame, proto).to_vec()
    }

    #[test]
    fn replies_lose_the_prefix_and_foreign_names_vanish() {
        assert_eq!(
            strip(
                ReplyKeys::KeyArray,
                b"*2\r\n$9\r\nbilling:a\r\n$6\r\nauth:b\r\n",
                Protocol::Resp2
            ),
            b"*1\r\n$1\r\na\r\n"
        );
        assert_eq!(
            strip(
                ReplyKeys::Scan,
                b"*2\r\n$2\r\n17\r\n*1\r\n$9\r\nbilling:a\r\n",
                Protocol::Resp2
            ),
            b"*2\r\n$2\r\n17\r\n*1\r\n$1\r\na\r\n"
        );
        assert_eq!(
            strip(
                ReplyKeys::FirstElement,
                b"*2\r\n$9\r\nbilling:l\r\n$1\r\nx\r\n",
                Protocol::Resp2
            ),
            b"*2\r\n$1\r\nl\r\n$1\r\nx\r\n"
        );
        // A nil keeps Redis's own bytes.
        for nil in [&b"*-1\r\n"[..], b"$-1\r\n", b"_\r\n"] {
            assert_eq!(strip(ReplyKeys::FirstElement, nil, Protocol::Resp2), nil);
        }
        assert!(strip(
            ReplyKeys::FirstElement,
            b"*2\r\n$6\r\nauth:l\r\n$1\r\nx\r\n",
            Protocol::Resp2
        )
        .starts_with(b"-ERR"));
        assert_eq!(
            strip(ReplyKeys::Key, b"$6\r\nauth:l\r\n", Protocol::Resp3),
            b"_\r\n"
        );
        assert_eq!(
            strip(
                ReplyKeys::Streams,
                b"%1\r\n$9\r\nbilling:s\r\n*0\r\n",
                Protocol::Resp3
            ),
            b"%1\r\n$1\r\ns\r\n*0\r\n"
        );
        assert_eq!(
            strip(
                ReplyKeys::ChannelCounts,
                b"*4\r\n$9\r\nbilling:c\r\n:1\r\n$6\r\nauth:c\r\n:2\r\n",
                Protocol::Resp2
            ),
            b"*2\r\n$1\r\nc\r\n:1\r\n"
        );
    }

    #[test]
    fn pubsub_frames() {
        let n = ns();
        let msg = Bytes::from_static(b"*3\r\n$7\r\nmessage\r\n$9\r\nbilling:c\r\n$2\r\nhi\r\n");
        assert_eq!(
            n.strip_pubsub(&msg).as_deref(),
            Some(&b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\nhi\r\n"[..])
        );
        let foreign = Bytes::from_static(b">3\r\n$7\r\nmessage\r\n$6\r\nauth:c\r\n$2\r\nhi\r\n");
        assert_eq!(n.strip_pubsub(&foreign), None);
        let pmsg = Bytes::from(
            &b"*4\r\n$8\r\npmessage\r\n$9\r\nbilling:*\r\n$27\r\n__keyspace@0__:billing:key1\r\n$3\r\nset\r\n"[..],
        );
        assert_eq!(
            n.strip_pubsub(&pmsg).as_deref(),
            Some(
                &b"*4\r\n$8\r\npmessage\r\n$1\r\n*\r\n$19\r\n__keyspace@0__:key1\r\n$3\r\nset\r\n"
                    [..]
            )
        );
        let sub = Bytes::from_static(b"*3\r\n$11\r\nunsubscribe\r\n$6\r\nauth:c\r\n:0\r\n");
        assert_eq!(
            n.strip_pubsub(&sub).as_deref(),
            Some(&b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n"[..])
        );
    }

    /// Keyevent messages reach the client only when they name one of the
    /// namespace's keys, without the prefix; the channel and a client's
    /// keyevent pattern stay as they are.
    #[test]
    fn keyevent_messages_name_only_the_namespaces_keys() {
        let n = ns();
        let own = Bytes::from_static(
            b"*3\r\n$7\r\nmessage\r\n$18\r\n__keyevent@0__:set\r\n$12\r\nbilling:key1\r\n",
        );
        assert_eq!(
            n.strip_pubsub(&own).as_deref(),
            Some(&b"*3\r\n$7\r\nmessage\r\n$18\r\n__keyevent@0__:set\r\n$4\r\nkey1\r\n"[..])
        );
        let foreign = Bytes::from_static(
            b"*3\r\n$7\r\nmessage\r\n$18\r\n__keyevent@0__:set\r\n$6\r\nauth:k\r\n",
        );
        assert_eq!(n.strip_pubsub(&foreign), None);
        let pmsg = Bytes::from_static(b">4\r\n$8\r\npmessage\r\n$14\r\n__keyevent@*__\r\n$18\r\n__keyevent@0__:del\r\n$9\r\nbilling:x\r\n");
        assert_eq!(
            n.strip_pubsub(&pmsg).as_deref(),
            Some(&b">4\r\n$8\r\npmessage\r\n$14\r\n__keyevent@*__\r\n$18\r\n__keyevent@0__:del\r\n$1\r\nx\r\n"[..])
        );
        let sub =
            Bytes::from_static(b"*3\r\n$9\r\nsubscribe\r\n$18\r\n__keyevent@0__:set\r\n:1\r\n");
        assert_eq!(n.strip_pubsub(&sub).as_deref(), Some(&sub[..]));
        // What a catch-all pattern receives, judged message by message.
        let view = |c: &[u8], m: &'static [u8]| {
            n.notification_view(c, &Bytes::from_static(m))
                .map(|(c, m)| (c, m.to_vec()))
        };
        assert_eq!(
            view(b"__keyevent@0__:set", b"billing:k"),
            Some((b"__keyevent@0__:set".to_vec(), b"k".to_vec()))
        );
        assert_eq!(view(b"__keyevent@0__:set", b"auth:k"), None);
        assert_eq!(
            view(b"__keyspace@0__:billing:k", b"set"),
            Some((b"__keyspace@0__:k".to_vec(), b"set".to_vec()))
        );
        assert_eq!(view(b"__keyspace@0__:auth:k", b"set"), None);
        assert_eq!(
            view(b"billing:news", b"hi"),
            Some((b"news".to_vec(), b"hi".to_vec()))
        );
        assert_eq!(view(b"auth:news", b"hi"), None);
        assert!(n.catches_notifications(b"*"));
        assert!(n.catches_notifications(b"__k*"));
        assert!(!n.catches_notifications(b"news.*"));
        assert!(!n.catches_notifications(b"__keyspace@0__:*"));
        assert!(!n.catches_notifications(b"__keyevent@0__:*"));
    }

    #[test]
    fn keyspace_section_is_removed() {
        let text = b"# Server\r\nredis_version:7\r\n\r\n# Keyspace\r\ndb0:keys=3\r\n\r\n# Keygate\r\nx:1\r\n";
        assert_eq!(
            remove_keyspace_section(text),
            b"# Server\r\nredis_version:7\r\n\r\n# Keygate\r\nx:1\r\n".to_vec()
        );
    }

    /// Found by the `key_rewriter` fuzz target: Redis's key finder for SORT
    /// does not skip STORE's argument, but SORT does, so a destination
    /// named `GET` hid the real (last) STORE destination from keygate and
    /// SORT stored into another service's key, unprefixed. SORT's options
    /// are now read as `sortCommandGeneric` reads them: the destination it
    /// really stores into gets the prefix, and what it refuses is refused.
    #[test]
    fn sort_store_destination_cannot_hide_behind_a_keyword() {
        assert_eq!(
            rewrite(&["SORT", "k", "STORE", "GET", "STORE", "victim"]),
            v(&[
                "SORT",
                "billing:k",
                "STORE",
                "GET",
                "STORE",
                "billing:victim"
            ])
        );
        assert_eq!(
            rewrite(&["SORT", "k", "STORE", "by", "STORE", "victim"]),
            v(&[
                "SORT",
                "billing:k",
                "STORE",
                "by",
                "STORE",
                "billing:victim"
            ])
        );
        assert_eq!(
            rewrite(&["SORT", "k", "STORE", "GET", "BY", "STORE", "ASC"]),
            v(&[
                "SORT",
                "billing:k",
                "STORE",
                "billing:GET",
                "BY",
                "STORE",
                "ASC"
            ])
        );
        let refused = rewrite(&["SORT", "k", "STORE", "LIMIT", "0", "STORE", "victim"]);
        assert!(
            refused.as_ref().is_err_and(|e| e.contains("syntax error")),
            "{refused:?}"
        );
        // The last STORE is the destination for both: `a` is never written.
        assert_eq!(
            rewrite(&["SORT", "k", "STORE", "a", "STORE", "b"]),
            v(&["SORT", "billing:k", "STORE", "a", "STORE", "billing:b"])
        );
        assert_eq!(
            rewrite(&["SORT", "k", "BY", "nosort", "STORE", "d", "LIMIT", "0", "1"]),
            v(&[
                "SORT",
                "billing:k",
                "BY",
                "nosort",
                "STORE",
                "billing:d",
                "LIMIT",
                "0",
                "1"
            ])
        );
    }

    /// Issue 13, holes 1 to 3, 6 and 10: options hidden behind a NUL byte
    /// (`"GET\0"` is GET to Redis's `strcasecmp`) or repeated (the last
    /// STORE wins) are read as Redis reads them.
    #[test]
    fn options_are_read_up_to_the_first_nul_and_the_last_store_wins() {
        // BY and GET patterns hidden behind a NUL are patterns too: confined.
        assert_eq!(
            rewrite(&["SORT", "k", "BY", "nosort", "GET\0", "b:*"]),
            v(&["SORT", "billing:k", "BY", "nosort", "GET\0", "billing:b:*"])
        );
        assert_eq!(
            rewrite(&["SORT_RO", "k", "BY", "nosort", "get\0x", "b:*->f"]),
            v(&[
                "SORT_RO",
                "billing:k",
                "BY",
                "nosort",
                "get\0x",
                "billing:b:*->f"
            ])
        );
        assert_eq!(
            rewrite(&["SORT", "k", "BY\0", "b:*"]),
            v(&["SORT", "billing:k", "BY\0", "billing:b:*"])
        );
        assert_eq!(
            rewrite(&["SORT", "k", "STORE\0", "victim"]),
            v(&["SORT", "billing:k", "STORE\0", "billing:victim"])
        );
        assert_eq!(
            rewrite(&[
                "GEORADIUS",
                "g",
                "0",
                "0",
                "1",
                "km",
                "STORE",
                "x",
                "STORE",
                "victim"
            ]),
            v(&[
                "GEORADIUS",
                "billing:g",
                "0",
                "0",
                "1",
                "km",
                "STORE",
                "x",
                "STORE",
                "billing:victim"
            ])
        );
        assert_eq!(
            rewrite(&[
                "GEORADIUSBYMEMBER",
                "g",
                "m",
                "1",
                "km",
                "STOREDIST\0",
                "victim"
            ]),
            v(&[
                "GEORADIUSBYMEMBER",
                "billing:g",
                "m",
                "1",
                "km",
                "STOREDIST\0",
                "billing:victim"
            ])
        );
        assert_eq!(
            rewrite(&["XREAD", "STREAMS\0", "STREAMS", "x", "0", "0"]),
            v(&[
                "XREAD",
                "STREAMS\0",
                "billing:STREAMS",
                "billing:x",
                "0",
                "0"
            ])
        );
        assert_eq!(
            rewrite(&[
                "XREADGROUP",
                "COUNT",
                "1",
                "GROUP",
                "STREAMS",
                "c",
                "STREAMS",
                "victim",
                ">"
            ]),
            v(&[
                "XREADGROUP",
                "COUNT",
                "1",
                "GROUP",
                "STREAMS",
                "c",
                "STREAMS",
                "billing:victim",
                ">"
            ])
        );
        // The DB option is confined by the client side; both keys get the prefix.
        assert_eq!(
            rewrite(&["COPY", "a", "b", "DB\0", "1"]),
            v(&["COPY", "billing:a", "billing:b", "DB\0", "1"])
        );
        assert_eq!(
            rewrite(&["SCAN", "0", "MATCH\0", "x*"]),
            v(&["SCAN", "0", "MATCH", "billing:x*"])
        );
    }

    /// Issue 14: SORT's BY and GET patterns are confined instead of refused.
    #[test]
    fn sort_patterns_get_the_prefix() {
        assert_eq!(
            rewrite(&["SORT", "k", "BY", "weight_*", "GET", "#", "GET", "obj_*->f", "STORE", "d"]),
            v(&[
                "SORT",
                "billing:k",
                "BY",
                "billing:weight_*",
                "GET",
                "#",
                "GET",
                "billing:obj_*->f",
                "STORE",
                "billing:d"
            ])
        );
        // No `*` before the first NUL: Redis reads no key, the pattern stays.
        assert_eq!(
            rewrite(&["SORT", "k", "BY", "nosort", "GET", "plain", "GET", "x\0*"]),
            v(&[
                "SORT",
                "billing:k",
                "BY",
                "nosort",
                "GET",
                "plain",
                "GET",
                "x\0*"
            ])
        );
        // A prefix with a `*` would be where Redis substitutes.
        let req = Request::from_args(&["SORT", "k", "GET", "o_*"]);
        let spec = lookup(&req).expect("sort");
        let starred = Namespace::new("glob", b"a*");
        let refused = starred.rewrite(spec, &req, &service(false));
        assert!(refused.is_err(), "{refused:?}");
        let req = Request::from_args(&["SORT", "k", "GET", "#"]);
        assert!(starred.rewrite(spec, &req, &service(false)).is_ok());
    }

    /// Every command and subcommand of the table that isolation confines by
    /// key positions alone, with the words that name it.
    fn key_position_commands() -> Vec<(Vec<&'static str>, &'static CommandSpec)> {
        let mut out = Vec::new();
        for spec in crate::command::all() {
            let mut push = |words: Vec<&'static str>, spec: &'static CommandSpec| {
                if confinement::rule(spec.name) == Rule::Keys {
                    out.push((words, spec));
                }
            };
            push(vec![spec.name], spec);
            for sub in spec.subcommands {
                let word = sub.name.split('|').nth(1).unwrap_or(sub.name);
                push(vec![spec.name, word], sub);
            }
        }
        out
    }

    /// Arguments drawn from numbers, option words and arbitrary bytes, so
    /// numkeys-style and keyword-searched key specs are exercised.
    fn arb_arg() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            (0u8..5).prop_map(|n| n.to_string().into_bytes()),
            prop::sample::select(vec![
                "STREAMS", "STORE", "KEYS", "COUNT", "BLOCK", "LIMIT", "WEIGHTS", "-1", "GET",
                "BY",
            ])
            .prop_map(|w| w.as_bytes().to_vec()),
            prop::collection::vec(any::<u8>(), 0..8),
        ]
    }

    proptest! {
        #[test]
        fn strip_undoes_prefix(
            prefix in prop::collection::vec(any::<u8>(), 0..16),
            key in prop::collection::vec(any::<u8>(), 0..32),
        ) {
            let ns = Namespace::new("svc", &prefix);
            let prefixed = ns.prefix(&key);
            prop_assert_eq!(ns.strip(&prefixed), Some(&key[..]));
            let pattern = ns.prefix_pattern(&key);
            prop_assert_eq!(ns.strip_pattern(&pattern), Some(&key[..]));
        }

        #[test]
        fn rewrite_prefixes_exactly_the_key_positions(
            pick in any::<prop::sample::Index>(),
            args in prop::collection::vec(arb_arg(), 0..8),
            prefix in prop::collection::vec(any::<u8>(), 1..8),
        ) {
            let commands = key_position_commands();
            prop_assume!(!commands.is_empty());
            let (words, spec) = &commands[pick.index(commands.len())];
            let mut all: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
            all.extend(args);
            let req = Request::from_args(&all);
            let ns = Namespace::new("svc", &prefix);
            let got = ns.rewrite(spec, &req, &service(false));
            match key_positions(spec, &req) {
                Ok(positions) => {
                    let want: Vec<Vec<u8>> = all
                        .iter()
                        .enumerate()
                        .map(|(i, a)| if positions.contains(&i) { ns.prefix(a) } else { a.clone() })
                        .collect();
                    match got {
                        Ok(Rewritten::Forward { request, .. }) => {
                            prop_assert_eq!(request, Request::from_args(&want), "{}", spec.name);
                        }
                        other => prop_assert!(false, "{}: {:?}", spec.name, other),
                    }
                }
                Err(e) => prop_assert_eq!(got, Err(Refusal::Unlocatable(e))),
            }
        }
    }
}
