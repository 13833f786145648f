//! TTL governance: every key a service creates expires, and no TTL is longer
//! than the service allows.
//!
//! The policy is pure: a request (keys already namespaced) goes in, the
//! request to send plus follow-up commands come out; no I/O, no key text
//! assumptions. Rules, by Redis 7.0 command:
//!
//! - SET without EX/PX/EXAT/PXAT/KEEPTTL gets `PX <default>` added (one round
//!   trip); SET KEEPTTL keeps the TTL but gets a `PEXPIRE key <default> NX`
//!   follow-up, because the old key may have had none.
//! - A TTL over `max_ttl` (SET, SETEX, PSETEX, GETEX, EXPIRE family, RESTORE)
//!   is clamped to `max_ttl` or refused, per `ttl_over_max`; absolute times
//!   (EXAT, PXAT, EXPIREAT, PEXPIREAT, RESTORE ABSTTL) are judged against `now`.
//! - PERSIST becomes `PEXPIRE key <default>` (or `<max>` without a default):
//!   it resets the TTL instead of removing it. The integer reply stays
//!   compatible (1 when the key exists, 0 when it does not); only a key that
//!   existed without a TTL answers 1 where Redis would answer 0. GETEX
//!   PERSIST likewise becomes GETEX PX.
//! - RESTORE with ttl 0 gets the default.
//! - Every other command that may create a key (WRITE commands whose key
//!   specs write: `OW`, `INSERT` or `UPDATE`, minus [`NEVER_CREATES`]; and the
//!   declared keys of EVAL, EVALSHA and FCALL) gets a `PEXPIRE key <default>
//!   NX` follow-up per written key. NX leaves an existing TTL alone and does
//!   nothing to a key that was not created. LMOVE, BLMOVE, RPOPLPUSH,
//!   BRPOPLPUSH and SMOVE get one for their source as well
//!   ([`MOVES_OUT_OF_SOURCE`]). The client must never see the follow-ups'
//!   replies.
//!
//! Invariants: options are read exactly as redis-server 7.0 reads them (each
//! word through [`is_keyword`], the last of repeated expiries winning), and
//! fail closed: a request whose options Redis would refuse as a syntax error,
//! or whose keys cannot be located, is refused here with Redis's own error
//! text and never forwarded ungoverned. Only a request keygate has read in
//! full may pass unchanged for Redis to answer: a TTL value Redis refuses
//! without touching the key (not an integer, out of range, `SET EX 0`), or
//! one <= 0 / an absolute time in the past, after which Redis deletes the key
//! instead of keeping it. Without `default_ttl` nothing adds a TTL to a key
//! written without one, so such a service's keys may be immortal; `max_ttl`
//! alone only bounds the TTLs clients ask for.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use smallvec::SmallVec;

use super::service::Service;
use crate::command::keys::{key_positions, key_positions_with_flags, KeysError};
use crate::command::keyword::{c_str, is_keyword};
use crate::command::{CommandSpec, Flags, KeySpecFlags};
use crate::config::TtlOverMax;
use crate::protocol::decimal::parse_ll;
use crate::protocol::request::{EncodedArgs, Request};

/// WRITE commands that get no TTL follow-up although the table may say they
/// write a key, each with the reason it cannot create one. Every other WRITE
/// command is governed (a unit test keeps this list and the table in step, so
/// a new command cannot slip through unclassified).
pub const NEVER_CREATES: &[(&str, &str)] = &[
    // Deleting.
    ("del", "it only deletes keys"),
    ("unlink", "it only deletes keys"),
    ("getdel", "it only deletes its key"),
    ("flushall", "it has no keys and only deletes"),
    ("flushdb", "it has no keys and only deletes"),
    ("swapdb", "it has no keys; keygate serves one database"),
    ("migrate", "it moves keys away from this server"),
    ("move", "it moves the key to another database"),
    // Removing elements from an existing key (an emptied key is deleted).
    ("hdel", "it removes fields from an existing hash"),
    ("lrem", "it removes elements from an existing list"),
    ("ltrim", "it trims an existing list"),
    ("srem", "it removes members from an existing set"),
    ("zrem", "it removes members from an existing sorted set"),
    (
        "zremrangebylex",
        "it removes members from an existing sorted set",
    ),
    (
        "zremrangebyrank",
        "it removes members from an existing sorted set",
    ),
    (
        "zremrangebyscore",
        "it removes members from an existing sorted set",
    ),
    ("xdel", "it removes entries from an existing stream"),
    ("xtrim", "it trims an existing stream"),
    ("lpop", "it pops from an existing list"),
    ("rpop", "it pops from an existing list"),
    ("blpop", "it pops from an existing list"),
    ("brpop", "it pops from an existing list"),
    ("lmpop", "it pops from existing lists"),
    ("blmpop", "it pops from existing lists"),
    ("spop", "it pops from an existing set"),
    ("zpopmin", "it pops from an existing sorted set"),
    ("zpopmax", "it pops from an existing sorted set"),
    ("bzpopmin", "it pops from an existing sorted set"),
    ("bzpopmax", "it pops from an existing sorted set"),
    ("zmpop", "it pops from existing sorted sets"),
    ("bzmpop", "it pops from existing sorted sets"),
    // The table says UPDATE or INSERT, but the key must already exist.
    ("lset", "the list must exist (ERR no such key)"),
    ("xack", "the stream and group must exist"),
    ("xclaim", "the stream and group must exist"),
    ("xautoclaim", "the stream and group must exist"),
    ("xreadgroup", "the stream and group must exist"),
    ("xsetid", "the stream must exist (ERR no such key)"),
    ("xgroup|setid", "the stream must exist"),
    ("xgroup|createconsumer", "the stream and group must exist"),
    ("xgroup|delconsumer", "the stream and group must exist"),
    ("xgroup|destroy", "the stream must exist"),
    // No keys at all.
    ("function|delete", "it has no keys (functions are not keys)"),
    ("function|flush", "it has no keys (functions are not keys)"),
    ("function|load", "it has no keys (functions are not keys)"),
    (
        "function|restore",
        "it has no keys (functions are not keys)",
    ),
    ("pfdebug", "a debugging command that fails on a missing key"),
];

/// Commands with a TTL rule of their own instead of the generic follow-up.
/// EVAL, EVALSHA and FCALL are not WRITE-flagged but may write any declared key.
pub const OWN_RULES: &[&str] = &[
    "set",
    "setex",
    "psetex",
    "getex",
    "expire",
    "pexpire",
    "expireat",
    "pexpireat",
    "persist",
    "restore",
    "restore-asking",
    "eval",
    "evalsha",
    "fcall",
];

/// Commands that modify their source key as well as their destination
/// (an element moves out of it), so an existing immortal source gets the
/// TTL too, as an existing key APPEND or HSET modifies does. The source's
/// key spec says `RW` + `DELETE`, which alone does not count as writing.
pub const MOVES_OUT_OF_SOURCE: &[&str] = &["lmove", "blmove", "rpoplpush", "brpoplpush", "smove"];

/// Key-spec flags that mean the key can be written (and so created).
const WRITING_KEY: KeySpecFlags =
    KeySpecFlags(KeySpecFlags::OW.0 | KeySpecFlags::INSERT.0 | KeySpecFlags::UPDATE.0);

/// Whether a key spec with these flags may write its key.
fn writes(flags: KeySpecFlags) -> bool {
    flags.0 & WRITING_KEY.0 != 0
}

/// Why [`NEVER_CREATES`] says `name` (a table full name) cannot create a key.
pub fn never_creates_reason(name: &str) -> Option<&'static str> {
    NEVER_CREATES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, reason)| *reason)
}

/// Whether the policy may add a TTL for this command (its own rule, or a
/// follow-up because one of its key specs writes), as opposed to leaving it
/// alone.
pub fn governs(spec: &CommandSpec) -> bool {
    if OWN_RULES.contains(&spec.name) {
        return true;
    }
    spec.flags.contains(Flags::WRITE)
        && spec
            .key_specs
            .iter()
            .any(|ks| !ks.flags.contains(KeySpecFlags::NOT_KEY) && writes(ks.flags))
        && never_creates_reason(spec.name).is_none()
}

/// Why a request was refused; the text is Redis-style and goes to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TtlRefusal {
    /// The requested TTL is longer than `max_ttl` and the service refuses those.
    #[error("ERR keygate: TTL of {ttl_ms} ms is over this service's max_ttl of {max_ms} ms")]
    OverMax { ttl_ms: i64, max_ms: i64 },
    /// Options Redis would refuse as a syntax error (SET, GETEX, RESTORE).
    #[error("ERR syntax error")]
    Syntax,
    /// An EXPIRE option that is none of NX, XX, GT, LT (as Redis names it).
    #[error("ERR Unsupported option {0}")]
    UnsupportedOption(String),
    /// EXPIRE's NX with XX, GT or LT.
    #[error("ERR NX and XX, GT or LT options at the same time are not compatible")]
    NxAndOthers,
    /// EXPIRE's GT with LT.
    #[error("ERR GT and LT options at the same time are not compatible")]
    GtAndLt,
    /// The keys a governed write names cannot be located.
    #[error(transparent)]
    Keys(#[from] KeysError),
}

impl TtlRefusal {
    /// Whether the service's `max_ttl` refused the request, as opposed to
    /// a request Redis itself would refuse (counted as a TTL refusal).
    pub fn is_over_max(&self) -> bool {
        matches!(self, TtlRefusal::OverMax { .. })
    }
}

/// What to send for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Governed {
    /// The request to send (the original when nothing changed: a cheap clone).
    pub request: Request,
    /// Commands to pipeline right behind it (typically `PEXPIRE key <default_ms> NX`),
    /// whose replies the client must never see.
    pub follow_ups: Vec<Request>,
    /// Whether a TTL was clamped to `max_ttl` (for `keygate_ttl_clamped_total`).
    pub clamped: bool,
}

impl Governed {
    /// The request as it came, nothing added.
    fn unchanged(req: &Request) -> Governed {
        Governed::rewritten(req.clone())
    }

    /// A rewritten request without follow-ups or clamping.
    fn rewritten(request: Request) -> Governed {
        Governed {
            request,
            follow_ups: Vec::new(),
            clamped: false,
        }
    }

    /// A clamped rewrite.
    fn clamped(request: Request) -> Governed {
        Governed {
            request,
            follow_ups: Vec::new(),
            clamped: true,
        }
    }
}

/// A service's TTL rules, in milliseconds as Redis counts them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TtlPolicy {
    default_ms: Option<i64>,
    /// `PX <default_ms>`, encoded once: what a SET without a TTL gets.
    default_px: Option<EncodedArgs>,
    max_ms: Option<i64>,
    over_max: TtlOverMax,
}

/// A duration in whole milliseconds, at least 1 (Redis refuses a TTL of 0)
/// and at most `i64::MAX`.
fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// Wall-clock time in Unix milliseconds (0 before the epoch).
fn unix_ms(now: SystemTime) -> i64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// An integer as decimal text, for a rewritten argument.
/// (An `i64` takes at most 20 bytes, so this never allocates.)
fn decimal(n: i64) -> SmallVec<[u8; 20]> {
    SmallVec::from_slice(itoa::Buffer::new().format(n).as_bytes())
}

/// How a TTL argument is expressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TtlUnit {
    /// Relative seconds (EX, SETEX, EXPIRE).
    Seconds,
    /// Relative milliseconds (PX, PSETEX, PEXPIRE).
    Millis,
    /// Absolute Unix seconds (EXAT, EXPIREAT).
    UnixSeconds,
    /// Absolute Unix milliseconds (PXAT, PEXPIREAT, RESTORE ABSTTL).
    UnixMillis,
}

impl TtlUnit {
    /// True for the absolute forms.
    fn is_absolute(self) -> bool {
        matches!(self, TtlUnit::UnixSeconds | TtlUnit::UnixMillis)
    }

    /// The TTL in milliseconds from `now_ms`, or `None` when Redis would
    /// refuse the value as out of range (so it passes through). May be <= 0
    /// (the key would be deleted at once).
    fn ttl_ms(self, value: i64, now_ms: i64) -> Option<i64> {
        let ms = match self {
            TtlUnit::Seconds | TtlUnit::UnixSeconds => value.checked_mul(1000)?,
            TtlUnit::Millis | TtlUnit::UnixMillis => value,
        };
        if self.is_absolute() {
            Some(ms.saturating_sub(now_ms))
        } else {
            // Redis refuses a relative TTL whose expiry time overflows.
            ms.checked_add(now_ms)?;
            Some(ms)
        }
    }
}

/// The outcome of judging a requested TTL against `max_ttl`.
enum Verdict {
    /// Within bounds: leave it.
    Keep,
    /// Over the maximum: rewrite to the maximum.
    Clamp { max_ms: i64 },
}

/// Options of SET or GETEX, as Redis 7.0's `parseExtendedStringArgumentsOrReply`
/// accepts them.
#[derive(Debug, Default)]
struct StringOptions {
    keepttl: bool,
    /// GETEX's PERSIST.
    persist: bool,
    /// The effective EX/PX/EXAT/PXAT (the last one given): its unit and the
    /// index of its option word (the value follows).
    expiry: Option<(TtlUnit, usize)>,
}

/// Parses SET (`is_set`) or GETEX options from argument `from` as
/// `parseExtendedStringArgumentsOrReply` does; an error where Redis answers
/// a syntax error. Options are case-insensitive, end at a NUL byte and come
/// in any order; a repeated EX (or PX, ...) is allowed and the last one counts.
fn parse_string_options(
    req: &Request,
    from: usize,
    is_set: bool,
) -> Result<StringOptions, TtlRefusal> {
    let mut opts = StringOptions::default();
    let (mut nx, mut xx) = (false, false);
    let mut unit_given: Option<TtlUnit> = None;
    let mut i = from;
    while let Some(opt) = req.get(i) {
        let has_next = i + 1 < req.argc();
        let is = |word: &[u8]| is_keyword(opt, word);
        let only_unit = |unit: TtlUnit| unit_given.is_none_or(|given| given == unit);
        if is(b"nx") && is_set && !xx {
            nx = true;
        } else if is(b"xx") && is_set && !nx {
            xx = true;
        } else if is(b"get") && is_set {
        } else if is(b"keepttl") && is_set && unit_given.is_none() {
            opts.keepttl = true;
        } else if is(b"persist") && !is_set && unit_given.is_none() {
            opts.persist = true;
        } else {
            let unit = if is(b"ex") {
                TtlUnit::Seconds
            } else if is(b"px") {
                TtlUnit::Millis
            } else if is(b"exat") {
                TtlUnit::UnixSeconds
            } else if is(b"pxat") {
                TtlUnit::UnixMillis
            } else {
                return Err(TtlRefusal::Syntax);
            };
            if opts.keepttl || opts.persist || !only_unit(unit) || !has_next {
                return Err(TtlRefusal::Syntax);
            }
            unit_given = Some(unit);
            opts.expiry = Some((unit, i));
            i += 1;
        }
        i += 1;
    }
    Ok(opts)
}

impl TtlPolicy {
    /// The policy from its three settings.
    pub fn new(
        default_ttl: Option<Duration>,
        max_ttl: Option<Duration>,
        over_max: TtlOverMax,
    ) -> TtlPolicy {
        let default_ms = default_ttl.map(duration_ms);
        TtlPolicy {
            default_ms,
            default_px: default_ms.map(|ms| EncodedArgs::new(&[&b"PX"[..], &decimal(ms)])),
            max_ms: max_ttl.map(duration_ms),
            over_max,
        }
    }

    /// The policy of a service.
    pub fn from_service(s: &Service) -> TtlPolicy {
        TtlPolicy::new(s.default_ttl, s.max_ttl, s.ttl_over_max)
    }

    /// False when neither a default nor a maximum is set: nothing to do.
    pub fn is_active(&self) -> bool {
        self.default_ms.is_some() || self.max_ms.is_some()
    }

    /// The TTL given to keys that would otherwise have none: the default,
    /// or the maximum when only a maximum is set.
    fn fallback_ms(&self) -> Option<i64> {
        self.default_ms.or(self.max_ms)
    }

    /// Judges a requested TTL (milliseconds from now, > 0).
    fn judge(&self, ttl_ms: i64) -> Result<Verdict, TtlRefusal> {
        match self.max_ms {
            Some(max_ms) if ttl_ms > max_ms => match self.over_max {
                TtlOverMax::Clamp => Ok(Verdict::Clamp { max_ms }),
                TtlOverMax::Reject => Err(TtlRefusal::OverMax { ttl_ms, max_ms }),
            },
            _ => Ok(Verdict::Keep),
        }
    }

    /// Whether [`TtlPolicy::govern`] passes every request of this command
    /// through unchanged, so the caller can skip it (and the clock read).
    pub fn leaves_alone(&self, spec: &CommandSpec) -> bool {
        !self.is_active()
            || (!spec.flags.contains(Flags::WRITE)
                && !matches!(spec.name, "eval" | "evalsha" | "fcall"))
    }

    /// Applies the policy to one request whose keys are already namespaced.
    /// `now` is wall-clock time, for the absolute forms (EXAT, PXAT,
    /// EXPIREAT, PEXPIREAT, RESTORE ABSTTL).
    pub fn govern(
        &self,
        spec: &'static CommandSpec,
        req: &Request,
        now: SystemTime,
    ) -> Result<Governed, TtlRefusal> {
        if self.leaves_alone(spec) {
            return Ok(Governed::unchanged(req));
        }
        let name = spec.name;
        match name {
            "set" => self.govern_set(req, unix_ms(now)),
            "getex" => self.govern_getex(req, unix_ms(now)),
            "setex" => self.govern_setex(req, TtlUnit::Seconds),
            "psetex" => self.govern_setex(req, TtlUnit::Millis),
            "expire" => self.govern_expire(req, TtlUnit::Seconds, unix_ms(now)),
            "pexpire" => self.govern_expire(req, TtlUnit::Millis, unix_ms(now)),
            "expireat" => self.govern_expire(req, TtlUnit::UnixSeconds, unix_ms(now)),
            "pexpireat" => self.govern_expire(req, TtlUnit::UnixMillis, unix_ms(now)),
            "persist" => Ok(self.govern_persist(req)),
            "restore" | "restore-asking" => self.govern_restore(req, unix_ms(now)),
            "eval" | "evalsha" | "fcall" => self.follow_up_declared_keys(spec, req),
            _ => self.follow_up_written_keys(spec, req),
        }
    }

    /// `PEXPIRE key <default_ms> NX` for each distinct key.
    fn follow_ups<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) -> Vec<Request> {
        let Some(default_ms) = self.default_ms else {
            return Vec::new();
        };
        let mut keys: SmallVec<[&[u8]; 4]> = keys.collect();
        keys.sort_unstable();
        keys.dedup();
        let ms = decimal(default_ms);
        keys.iter()
            .map(|key| Request::from_args(&[b"PEXPIRE", *key, &ms[..], b"NX"]))
            .collect()
    }

    /// The generic rule: a follow-up for each key whose key spec writes.
    fn follow_up_written_keys(
        &self,
        spec: &'static CommandSpec,
        req: &Request,
    ) -> Result<Governed, TtlRefusal> {
        if self.default_ms.is_none() || !governs(spec) {
            return Ok(Governed::unchanged(req));
        }
        let keys = key_positions_with_flags(spec, req)?;
        let every_key = MOVES_OUT_OF_SOURCE.contains(&spec.name);
        let written = keys
            .iter()
            .filter(|(_, flags)| every_key || writes(*flags))
            .filter_map(|&(pos, _)| req.get(pos));
        Ok(Governed {
            follow_ups: self.follow_ups(written),
            ..Governed::unchanged(req)
        })
    }

    /// EVAL, EVALSHA, FCALL: a follow-up for every declared key.
    fn follow_up_declared_keys(
        &self,
        spec: &'static CommandSpec,
        req: &Request,
    ) -> Result<Governed, TtlRefusal> {
        if self.default_ms.is_none() {
            return Ok(Governed::unchanged(req));
        }
        let keys = key_positions(spec, req)?;
        Ok(Governed {
            follow_ups: self.follow_ups(keys.iter().filter_map(|&pos| req.get(pos))),
            ..Governed::unchanged(req)
        })
    }

    /// Judges the TTL of an EX/PX/EXAT/PXAT option at `opt_at` (value right
    /// after) and rewrites it to PX/PXAT at the maximum when clamped.
    fn govern_expiry_option(
        &self,
        req: &Request,
        unit: TtlUnit,
        opt_at: usize,
        now_ms: i64,
    ) -> Result<Governed, TtlRefusal> {
        let value = req.get(opt_at + 1).and_then(parse_ll);
        // Redis refuses a non-integer or a value <= 0 itself.
        let Some(value) = value.filter(|&v| v > 0) else {
            return Ok(Governed::unchanged(req));
        };
        let Some(ttl_ms) = unit.ttl_ms(value, now_ms).filter(|&t| t > 0) else {
            return Ok(Governed::unchanged(req));
        };
        match self.judge(ttl_ms)? {
            Verdict::Keep => Ok(Governed::unchanged(req)),
            Verdict::Clamp { max_ms } => {
                let (word, at): (&[u8], i64) = if unit.is_absolute() {
                    (b"PXAT", now_ms.saturating_add(max_ms))
                } else {
                    (b"PX", max_ms)
                };
                let at = decimal(at);
                let edits = [(opt_at, word), (opt_at + 1, &at[..])];
                Ok(Governed::clamped(req.splice(&edits)))
            }
        }
    }

    /// SET key value [NX|XX] [GET] [EX|PX|EXAT|PXAT n|KEEPTTL].
    fn govern_set(&self, req: &Request, now_ms: i64) -> Result<Governed, TtlRefusal> {
        let opts = parse_string_options(req, 3, true)?;
        if let Some((unit, opt_at)) = opts.expiry {
            return self.govern_expiry_option(req, unit, opt_at, now_ms);
        }
        let (Some(default_px), Some(key)) = (&self.default_px, req.get(1)) else {
            return Ok(Governed::unchanged(req));
        };
        if opts.keepttl {
            // The kept TTL may be none at all.
            return Ok(Governed {
                follow_ups: self.follow_ups(std::iter::once(key)),
                ..Governed::unchanged(req)
            });
        }
        Ok(Governed::rewritten(req.append_encoded(default_px)))
    }

    /// GETEX key [EX|PX|EXAT|PXAT n|PERSIST].
    fn govern_getex(&self, req: &Request, now_ms: i64) -> Result<Governed, TtlRefusal> {
        let opts = parse_string_options(req, 2, false)?;
        if let Some((unit, opt_at)) = opts.expiry {
            return self.govern_expiry_option(req, unit, opt_at, now_ms);
        }
        match (opts.persist, self.fallback_ms(), req.get(0), req.get(1)) {
            (true, Some(ms), Some(command), Some(key)) => {
                // Only PERSIST words follow the key (anything else was a
                // conflict above), so the whole option list is replaced.
                let ms = decimal(ms);
                let args: [&[u8]; 4] = [command, key, b"PX", &ms[..]];
                Ok(Governed::rewritten(Request::from_args(&args)))
            }
            _ => Ok(Governed::unchanged(req)),
        }
    }

    /// SETEX / PSETEX key ttl value: switched to PSETEX at the maximum when clamped.
    fn govern_setex(&self, req: &Request, unit: TtlUnit) -> Result<Governed, TtlRefusal> {
        let value = req.get(2).and_then(parse_ll).filter(|&v| v > 0);
        // The clock does not matter for a relative TTL except for overflow.
        let ttl_ms = value.and_then(|v| unit.ttl_ms(v, 0));
        let Some(ttl_ms) = ttl_ms else {
            return Ok(Governed::unchanged(req));
        };
        match self.judge(ttl_ms)? {
            Verdict::Keep => Ok(Governed::unchanged(req)),
            Verdict::Clamp { max_ms } => {
                let ms = decimal(max_ms);
                let edits: [(usize, &[u8]); 2] = [(0, b"PSETEX"), (2, &ms[..])];
                Ok(Governed::clamped(req.splice(&edits)))
            }
        }
    }

    /// EXPIRE / PEXPIRE / EXPIREAT / PEXPIREAT key n [NX|XX|GT|LT].
    fn govern_expire(
        &self,
        req: &Request,
        unit: TtlUnit,
        now_ms: i64,
    ) -> Result<Governed, TtlRefusal> {
        expire_options(req)?;
        let ttl_ms = req
            .get(2)
            .and_then(parse_ll)
            .and_then(|v| unit.ttl_ms(v, now_ms))
            .filter(|&t| t > 0);
        // Not an integer, out of range, or <= 0 (Redis deletes the key).
        let Some(ttl_ms) = ttl_ms else {
            return Ok(Governed::unchanged(req));
        };
        match self.judge(ttl_ms)? {
            Verdict::Keep => Ok(Governed::unchanged(req)),
            Verdict::Clamp { max_ms } => {
                let (command, at): (&[u8], i64) = if unit.is_absolute() {
                    (b"PEXPIREAT", now_ms.saturating_add(max_ms))
                } else {
                    (b"PEXPIRE", max_ms)
                };
                let at = decimal(at);
                let edits = [(0, command), (2, &at[..])];
                Ok(Governed::clamped(req.splice(&edits)))
            }
        }
    }

    /// PERSIST key → PEXPIRE key <default> (or <max>): a key cannot be made immortal.
    fn govern_persist(&self, req: &Request) -> Governed {
        match (self.fallback_ms(), req.get(1), req.argc()) {
            (Some(ms), Some(key), 2) => {
                let ms = decimal(ms);
                let args: [&[u8]; 3] = [b"PEXPIRE", key, &ms[..]];
                Governed::rewritten(Request::from_args(&args))
            }
            _ => Governed::unchanged(req),
        }
    }

    /// RESTORE key ttl payload [REPLACE] [ABSTTL] [IDLETIME s] [FREQ f].
    fn govern_restore(&self, req: &Request, now_ms: i64) -> Result<Governed, TtlRefusal> {
        let absttl = restore_absttl(req)?;
        // Redis refuses a non-integer or negative ttl itself.
        let Some(ttl) = req.get(2).and_then(parse_ll).filter(|&t| t >= 0) else {
            return Ok(Governed::unchanged(req));
        };
        let unit = if absttl {
            TtlUnit::UnixMillis
        } else {
            TtlUnit::Millis
        };
        if ttl == 0 {
            // 0 means "no TTL", with or without ABSTTL.
            let Some(default_ms) = self.default_ms else {
                return Ok(Governed::unchanged(req));
            };
            let ttl = if absttl {
                now_ms.saturating_add(default_ms)
            } else {
                default_ms
            };
            let ttl = decimal(ttl);
            return Ok(Governed::rewritten(req.splice(&[(2, &ttl[..])])));
        }
        // An absolute time in the past: Redis does not create the key.
        let Some(ttl_ms) = unit.ttl_ms(ttl, now_ms).filter(|&t| t > 0) else {
            return Ok(Governed::unchanged(req));
        };
        match self.judge(ttl_ms)? {
            Verdict::Keep => Ok(Governed::unchanged(req)),
            Verdict::Clamp { max_ms } => {
                let ttl = if absttl {
                    now_ms.saturating_add(max_ms)
                } else {
                    max_ms
                };
                let ttl = decimal(ttl);
                Ok(Governed::clamped(req.splice(&[(2, &ttl[..])])))
            }
        }
    }
}

/// Checks EXPIRE's options (from argument 3) as Redis 7.0's
/// `parseExtendedExpireArgumentsOrReply` does: NX, XX, GT, LT, with NX alone
/// and not GT with LT; the error is the one Redis answers.
fn expire_options(req: &Request) -> Result<(), TtlRefusal> {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for opt in req.args().skip(3) {
        if is_keyword(opt, b"nx") {
            nx = true;
        } else if is_keyword(opt, b"xx") {
            xx = true;
        } else if is_keyword(opt, b"gt") {
            gt = true;
        } else if is_keyword(opt, b"lt") {
            lt = true;
        } else {
            // Redis prints the option as a C string, with newlines blanked.
            let shown = String::from_utf8_lossy(c_str(opt)).replace(['\r', '\n'], " ");
            return Err(TtlRefusal::UnsupportedOption(shown));
        }
    }
    if nx && (xx || gt || lt) {
        return Err(TtlRefusal::NxAndOthers);
    }
    if gt && lt {
        return Err(TtlRefusal::GtAndLt);
    }
    Ok(())
}

/// Parses RESTORE's options (from argument 4) as `restoreCommand` does:
/// whether ABSTTL is given, or Redis's syntax error.
fn restore_absttl(req: &Request) -> Result<bool, TtlRefusal> {
    let (mut absttl, mut idletime, mut freq) = (false, false, false);
    let mut i = 4;
    while let Some(opt) = req.get(i) {
        let has_next = i + 1 < req.argc();
        if is_keyword(opt, b"replace") {
        } else if is_keyword(opt, b"absttl") {
            absttl = true;
        } else if is_keyword(opt, b"idletime") && has_next && !freq {
            idletime = true;
            i += 1;
        } else if is_keyword(opt, b"freq") && has_next && !idletime {
            freq = true;
            i += 1;
        } else {
            return Err(TtlRefusal::Syntax);
        }
        i += 1;
    }
    Ok(absttl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{all, lookup};

    /// A fixed clock: 2024-01-01T00:00:00Z.
    const NOW_MS: i64 = 1_704_067_200_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(NOW_MS as u64)
    }

    fn policy(default_s: Option<u64>, max_s: Option<u64>, over: TtlOverMax) -> TtlPolicy {
        TtlPolicy::new(
            default_s.map(Duration::from_secs),
            max_s.map(Duration::from_secs),
            over,
        )
    }

    /// default 60 s, max 3600 s, clamp.
    fn clamp() -> TtlPolicy {
        policy(Some(60), Some(3600), TtlOverMax::Clamp)
    }

    /// default 60 s, max 3600 s, reject.
    fn reject() -> TtlPolicy {
        policy(Some(60), Some(3600), TtlOverMax::Reject)
    }

    fn text(req: &Request) -> Vec<String> {
        req.args()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    }

    /// A governed request as text: (request, follow-ups, clamped).
    type Outcome = (Vec<String>, Vec<Vec<String>>, bool);

    /// Governs `args`, as text; a refusal as its client-facing text.
    fn run(p: &TtlPolicy, args: &[&str]) -> Result<Outcome, String> {
        let req = Request::from_args(args);
        let spec = lookup(&req).expect("known command");
        p.govern(spec, &req, now())
            .map(|g| {
                (
                    text(&g.request),
                    g.follow_ups.iter().map(text).collect(),
                    g.clamped,
                )
            })
            .map_err(|e| e.to_string())
    }

    /// The governed request only, asserting no follow-ups.
    fn rewrite(p: &TtlPolicy, args: &[&str]) -> Vec<String> {
        let (req, follow, _) = run(p, args).expect("not refused");
        assert!(follow.is_empty(), "{args:?} got follow-ups {follow:?}");
        req
    }

    fn same(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    fn nx(key: &str) -> Vec<String> {
        same(&["PEXPIRE", key, "60000", "NX"])
    }

    fn unchanged(p: &TtlPolicy, args: &[&str]) {
        assert_eq!(run(p, args), Ok((same(args), vec![], false)), "{args:?}");
    }

    /// Refused here with exactly `error`, as redis-server answers it.
    fn refused(p: &TtlPolicy, args: &[&str], error: &str) {
        assert_eq!(run(p, args), Err(error.to_string()), "{args:?}");
    }

    #[test]
    fn inactive_policy_does_nothing() {
        let p = policy(None, None, TtlOverMax::Clamp);
        assert!(!p.is_active());
        unchanged(&p, &["SET", "k", "v"]);
        unchanged(&p, &["PERSIST", "k"]);
        unchanged(&p, &["EXPIRE", "k", "99999999"]);
        assert!(clamp().is_active());
        assert!(policy(None, Some(1), TtlOverMax::Clamp).is_active());
    }

    #[test]
    fn set_without_ttl_gets_the_default() {
        let p = clamp();
        assert_eq!(
            rewrite(&p, &["SET", "k", "v"]),
            same(&["SET", "k", "v", "PX", "60000"])
        );
        assert_eq!(
            rewrite(&p, &["set", "k", "v", "nx", "Get"]),
            same(&["set", "k", "v", "nx", "Get", "PX", "60000"])
        );
        assert_eq!(
            rewrite(&p, &["SET", "k", "v", "XX"]),
            same(&["SET", "k", "v", "XX", "PX", "60000"])
        );
    }

    #[test]
    fn set_with_ttl_within_max_is_unchanged() {
        let p = clamp();
        unchanged(&p, &["SET", "k", "v", "EX", "3600"]);
        unchanged(&p, &["SET", "k", "v", "NX", "px", "10", "GET"]);
        unchanged(
            &p,
            &["SET", "k", "v", "EXAT", &(NOW_MS / 1000 + 100).to_string()],
        );
        unchanged(
            &p,
            &["SET", "k", "v", "PXAT", &(NOW_MS + 3_600_000).to_string()],
        );
    }

    #[test]
    fn set_over_max_is_clamped() {
        let p = clamp();
        assert_eq!(
            run(&p, &["SET", "k", "v", "EX", "7200"]),
            Ok((same(&["SET", "k", "v", "PX", "3600000"]), vec![], true))
        );
        assert_eq!(
            rewrite(&p, &["SET", "k", "v", "get", "px", "3600001", "nx"]),
            same(&["SET", "k", "v", "get", "PX", "3600000", "nx"])
        );
        let far = (NOW_MS / 1000 + 7200).to_string();
        let clamped_at = (NOW_MS + 3_600_000).to_string();
        assert_eq!(
            rewrite(&p, &["SET", "k", "v", "exat", &far]),
            same(&["SET", "k", "v", "PXAT", &clamped_at])
        );
        assert_eq!(
            rewrite(
                &p,
                &["SET", "k", "v", "PXAT", &(NOW_MS + 3_600_001).to_string()]
            ),
            same(&["SET", "k", "v", "PXAT", &clamped_at])
        );
        // A repeated EX: the last one counts, and is the one rewritten.
        assert_eq!(
            rewrite(&p, &["SET", "k", "v", "EX", "10", "EX", "9000"]),
            same(&["SET", "k", "v", "EX", "10", "PX", "3600000"])
        );
        unchanged(&p, &["SET", "k", "v", "EX", "9000", "EX", "10"]);
    }

    #[test]
    fn set_over_max_is_refused_when_configured() {
        let p = reject();
        assert_eq!(
            run(&p, &["SET", "k", "v", "EX", "7200"]),
            Err(
                "ERR keygate: TTL of 7200000 ms is over this service's max_ttl of 3600000 ms"
                    .into()
            )
        );
        let far = (NOW_MS + 7_200_000).to_string();
        assert!(run(&p, &["SET", "k", "v", "PXAT", &far]).is_err());
        unchanged(&p, &["SET", "k", "v", "EX", "3600"]);
    }

    #[test]
    fn set_keepttl_gets_a_follow_up() {
        let p = clamp();
        assert_eq!(
            run(&p, &["SET", "k", "v", "KEEPTTL"]),
            Ok((same(&["SET", "k", "v", "KEEPTTL"]), vec![nx("k")], false))
        );
        assert_eq!(
            run(&p, &["set", "k", "v", "xx", "keepttl", "get"]),
            Ok((
                same(&["set", "k", "v", "xx", "keepttl", "get"]),
                vec![nx("k")],
                false
            ))
        );
    }

    #[test]
    fn malformed_set_is_refused_or_left_to_redis() {
        let p = reject();
        // Options Redis refuses as a syntax error are refused here, with
        // its text: forwarded, a misread option could leave a key ungoverned.
        for args in [
            &["SET", "k", "v", "EX", "7200", "PX", "10"][..],
            &["SET", "k", "v", "EX"],
            &["SET", "k", "v", "NX", "XX"],
            &["SET", "k", "v", "KEEPTTL", "EX", "99999"],
            &["SET", "k", "v", "EX", "99999", "KEEPTTL"],
            &["SET", "k", "v", "PERSIST"],
            &["SET", "k", "v", "BOGUS"],
            &["SET", "k", "v", "EX\0x\0", "99999", "KEEPTTL"],
        ] {
            refused(&p, args, "ERR syntax error");
        }
        // Values Redis refuses without touching the key pass through, for
        // Redis's own error.
        for args in [
            &["SET", "k", "v", "EX", "abc"][..],
            &["SET", "k", "v", "EX", "0"],
            &["SET", "k", "v", "EX", "-5"],
            &["SET", "k", "v", "EX", "09"],
            &["SET", "k", "v", "EX", "9223372036854775"],
        ] {
            unchanged(&p, args);
        }
        // The one well-formed request over the maximum is refused.
        assert!(run(&p, &["SET", "k", "v", "EX", "99999"]).is_err());
        // An absolute time in the past deletes the key: pass through.
        unchanged(&p, &["SET", "k", "v", "EXAT", "1"]);
    }

    #[test]
    fn setex_and_psetex() {
        let p = clamp();
        unchanged(&p, &["SETEX", "k", "3600", "v"]);
        unchanged(&p, &["PSETEX", "k", "3600000", "v"]);
        assert_eq!(
            run(&p, &["setex", "k", "3601", "v"]),
            Ok((same(&["PSETEX", "k", "3600000", "v"]), vec![], true))
        );
        assert_eq!(
            rewrite(&p, &["PSETEX", "k", "3600001", "v"]),
            same(&["PSETEX", "k", "3600000", "v"])
        );
        unchanged(&p, &["SETEX", "k", "0", "v"]);
        unchanged(&p, &["SETEX", "k", "x", "v"]);
        assert!(run(&reject(), &["SETEX", "k", "3601", "v"]).is_err());
    }

    #[test]
    fn expire_family() {
        let p = clamp();
        unchanged(&p, &["EXPIRE", "k", "3600"]);
        unchanged(&p, &["EXPIRE", "k", "0"]);
        unchanged(&p, &["EXPIRE", "k", "-1"]);
        unchanged(&p, &["PEXPIRE", "k", "abc"]);
        assert_eq!(
            run(&p, &["EXPIRE", "k", "7200", "gt"]),
            Ok((same(&["PEXPIRE", "k", "3600000", "gt"]), vec![], true))
        );
        assert_eq!(
            rewrite(&p, &["pexpire", "k", "3600001", "NX"]),
            same(&["PEXPIRE", "k", "3600000", "NX"])
        );
        let clamped_at = (NOW_MS + 3_600_000).to_string();
        assert_eq!(
            rewrite(&p, &["EXPIREAT", "k", &(NOW_MS / 1000 + 7200).to_string()]),
            same(&["PEXPIREAT", "k", &clamped_at])
        );
        assert_eq!(
            rewrite(
                &p,
                &[
                    "PEXPIREAT",
                    "k",
                    &(NOW_MS + 3_600_001).to_string(),
                    "XX",
                    "LT"
                ]
            ),
            same(&["PEXPIREAT", "k", &clamped_at, "XX", "LT"])
        );
        unchanged(&p, &["EXPIREAT", "k", &(NOW_MS / 1000 + 3600).to_string()]);
        unchanged(&p, &["EXPIREAT", "k", "1"]); // In the past: deletes.
                                                // Options Redis refuses: its own error.
        refused(
            &p,
            &["EXPIRE", "k", "7200", "NX", "XX"],
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        );
        refused(
            &p,
            &["EXPIRE", "k", "7200", "GT", "LT"],
            "ERR GT and LT options at the same time are not compatible",
        );
        refused(
            &p,
            &["EXPIRE", "k", "7200", "FOO"],
            "ERR Unsupported option FOO",
        );
        refused(
            &p,
            &["EXPIRE", "k", "7200", "FOO\0BAR"],
            "ERR Unsupported option FOO",
        );
        assert_eq!(
            run(&reject(), &["PEXPIRE", "k", "3600001"]),
            Err(
                "ERR keygate: TTL of 3600001 ms is over this service's max_ttl of 3600000 ms"
                    .into()
            )
        );
    }

    #[test]
    fn persist_resets_to_the_default_or_max() {
        assert_eq!(
            rewrite(&clamp(), &["PERSIST", "k"]),
            same(&["PEXPIRE", "k", "60000"])
        );
        let max_only = policy(None, Some(3600), TtlOverMax::Clamp);
        assert_eq!(
            rewrite(&max_only, &["persist", "k"]),
            same(&["PEXPIRE", "k", "3600000"])
        );
        let default_only = policy(Some(60), None, TtlOverMax::Clamp);
        assert_eq!(
            rewrite(&default_only, &["PERSIST", "k"]),
            same(&["PEXPIRE", "k", "60000"])
        );
    }

    #[test]
    fn getex() {
        let p = clamp();
        unchanged(&p, &["GETEX", "k"]);
        unchanged(&p, &["GETEX", "k", "EX", "100"]);
        assert_eq!(
            rewrite(&p, &["getex", "k", "persist"]),
            same(&["getex", "k", "PX", "60000"])
        );
        assert_eq!(
            rewrite(&p, &["GETEX", "k", "PERSIST", "PERSIST"]),
            same(&["GETEX", "k", "PX", "60000"])
        );
        assert_eq!(
            rewrite(
                &policy(None, Some(10), TtlOverMax::Clamp),
                &["GETEX", "k", "PERSIST"]
            ),
            same(&["GETEX", "k", "PX", "10000"])
        );
        assert_eq!(
            run(&p, &["GETEX", "k", "ex", "7200"]),
            Ok((same(&["GETEX", "k", "PX", "3600000"]), vec![], true))
        );
        let far = (NOW_MS + 7_200_000).to_string();
        assert_eq!(
            rewrite(&p, &["GETEX", "k", "PXAT", &far]),
            same(&["GETEX", "k", "PXAT", &(NOW_MS + 3_600_000).to_string()])
        );
        assert!(run(&reject(), &["GETEX", "k", "EX", "7200"]).is_err());
        // Malformed: Redis's own error.
        for args in [
            &["GETEX", "k", "PERSIST", "EX", "10"][..],
            &["GETEX", "k", "EX", "10", "PERSIST"],
            &["GETEX", "k", "KEEPTTL"],
            &["GETEX", "k", "NX"],
        ] {
            refused(&p, args, "ERR syntax error");
        }
    }

    #[test]
    fn restore() {
        let p = clamp();
        assert_eq!(
            rewrite(&p, &["RESTORE", "k", "0", "payload"]),
            same(&["RESTORE", "k", "60000", "payload"])
        );
        assert_eq!(
            rewrite(&p, &["RESTORE", "k", "0", "payload", "ABSTTL", "REPLACE"]),
            same(&[
                "RESTORE",
                "k",
                &(NOW_MS + 60_000).to_string(),
                "payload",
                "ABSTTL",
                "REPLACE"
            ])
        );
        unchanged(&p, &["RESTORE", "k", "3600000", "payload"]);
        assert_eq!(
            run(&p, &["RESTORE", "k", "3600001", "payload", "idletime", "5"]),
            Ok((
                same(&["RESTORE", "k", "3600000", "payload", "idletime", "5"]),
                vec![],
                true
            ))
        );
        let far = (NOW_MS + 7_200_000).to_string();
        assert_eq!(
            rewrite(&p, &["RESTORE", "k", &far, "payload", "absttl"]),
            same(&[
                "RESTORE",
                "k",
                &(NOW_MS + 3_600_000).to_string(),
                "payload",
                "absttl"
            ])
        );
        unchanged(&p, &["RESTORE", "k", "5", "payload", "ABSTTL"]); // Past: not created.
        unchanged(&p, &["RESTORE", "k", "-1", "payload"]);
        refused(
            &p,
            &["RESTORE", "k", "0", "payload", "BOGUS"],
            "ERR syntax error",
        );
        refused(
            &p,
            &["RESTORE", "k", "0", "payload", "IDLETIME", "1", "FREQ", "2"],
            "ERR syntax error",
        );
        assert!(run(&reject(), &["RESTORE", "k", "3600001", "payload"]).is_err());
        // Only a maximum: ttl 0 stays 0.
        unchanged(
            &policy(None, Some(10), TtlOverMax::Clamp),
            &["RESTORE", "k", "0", "p"],
        );
    }

    #[test]
    fn key_creating_writes_get_follow_ups() {
        let p = clamp();
        let cases: &[(&[&str], &[&str])] = &[
            (&["SETNX", "k", "v"], &["k"]),
            (&["MSET", "a", "1", "b", "2", "a", "3"], &["a", "b"]),
            (&["HSET", "h", "f", "v"], &["h"]),
            (&["LPUSH", "l", "x"], &["l"]),
            (&["INCR", "n"], &["n"]),
            (&["RENAME", "src", "dst"], &["dst"]),
            (&["COPY", "src", "dst"], &["dst"]),
            (&["LMOVE", "src", "dst", "LEFT", "RIGHT"], &["dst", "src"]),
            (&["BLMOVE", "a", "b", "LEFT", "RIGHT", "0"], &["a", "b"]),
            (&["RPOPLPUSH", "src", "dst"], &["dst", "src"]),
            (&["BRPOPLPUSH", "src", "src", "0"], &["src"]),
            (&["SMOVE", "src", "dst", "m"], &["dst", "src"]),
            (&["SINTERSTORE", "d", "a", "b"], &["d"]),
            (&["ZUNIONSTORE", "d", "2", "a", "b"], &["d"]),
            (&["BITOP", "AND", "d", "a", "b"], &["d"]),
            (&["SORT", "s", "BY", "w", "STORE", "d"], &["d"]),
            (
                &["GEORADIUS", "g", "0", "0", "1", "km", "STORE", "d"],
                &["g", "d"][1..],
            ),
            (&["XGROUP", "CREATE", "s", "g", "$", "MKSTREAM"], &["s"]),
            (&["EVAL", "return 1", "2", "a", "b", "x"], &["a", "b"]),
            (&["FCALL", "f", "1", "a"], &["a"]),
        ];
        for (args, keys) in cases {
            let want: Vec<_> = keys.iter().map(|k| nx(k)).collect();
            assert_eq!(run(&p, args), Ok((same(args), want, false)), "{args:?}");
        }
    }

    #[test]
    fn commands_that_cannot_create_are_left_alone() {
        let p = clamp();
        for args in [
            &["GET", "k"][..],
            &["DEL", "a", "b"],
            &["LPOP", "l"],
            &["SORT", "s"],
            &["GEORADIUS", "g", "0", "0", "1", "km"],
            &["LSET", "l", "0", "x"],
            &["EVAL_RO", "return 1", "1", "a"],
            &["EVAL", "return 1", "0"],
            &["PING"],
        ] {
            unchanged(&p, args);
        }
        // Keys that cannot be found: refused here, never forwarded ungoverned.
        refused(
            &p,
            &["ZUNIONSTORE", "d", "x", "a"],
            "ERR value is not an integer or out of range",
        );
    }

    #[test]
    fn max_only_leaves_writes_without_ttl_alone() {
        let p = policy(None, Some(3600), TtlOverMax::Clamp);
        unchanged(&p, &["SET", "k", "v"]);
        unchanged(&p, &["SET", "k", "v", "KEEPTTL"]);
        unchanged(&p, &["HSET", "h", "f", "v"]);
        unchanged(&p, &["EVAL", "return 1", "1", "a"]);
        assert_eq!(
            rewrite(&p, &["SET", "k", "v", "EX", "7200"]),
            same(&["SET", "k", "v", "PX", "3600000"])
        );
    }

    #[test]
    fn every_write_command_is_classified() {
        let mut specs: Vec<&'static CommandSpec> = Vec::new();
        for spec in all() {
            specs.push(spec);
            specs.extend(spec.subcommands.iter());
        }
        for spec in &specs {
            let listed = never_creates_reason(spec.name).is_some();
            if spec.flags.contains(Flags::WRITE) {
                assert!(
                    governs(spec) != listed,
                    "{}: governed={} and listed={}",
                    spec.name,
                    governs(spec),
                    listed
                );
            } else {
                assert!(!listed, "{} is not a WRITE command", spec.name);
            }
        }
        for (name, _) in NEVER_CREATES {
            assert!(
                specs.iter().any(|s| s.name == *name),
                "{name} not in the table"
            );
        }
        for name in OWN_RULES {
            assert!(
                specs.iter().any(|s| s.name == *name),
                "{name} not in the table"
            );
        }
    }

    /// Issue 13, hole 5: options that end at a NUL byte are still options
    /// to Redis (`strcasecmp`), so they are governed as such.
    #[test]
    fn options_hidden_behind_a_nul_byte_are_governed() {
        let p = clamp();
        assert_eq!(
            run(&p, &["SET", "k", "v", "KEEPTTL\0"]),
            Ok((same(&["SET", "k", "v", "KEEPTTL\0"]), vec![nx("k")], false))
        );
        for opt in ["NX\0", "xx\0junk", "GET\0"] {
            assert_eq!(
                rewrite(&p, &["SET", "k", "v", opt]),
                same(&["SET", "k", "v", opt, "PX", "60000"])
            );
        }
        let (req, _, clamped) = run(&p, &["SET", "k", "v", "EX\0", "99999999"]).expect("clamped");
        assert!(clamped);
        assert_eq!(req, same(&["SET", "k", "v", "PX", "3600000"]));
        let (req, _, clamped) = run(&p, &["EXPIRE", "k", "99999999", "GT\0"]).expect("clamped");
        assert!(clamped);
        assert_eq!(req, same(&["PEXPIRE", "k", "3600000", "GT\0"]));
        assert!(run(&reject(), &["EXPIRE", "k", "99999999", "GT\0"]).is_err());
        assert_eq!(
            rewrite(&p, &["GETEX", "k", "PERSIST\0"]),
            same(&["GETEX", "k", "PX", "60000"])
        );
        assert_eq!(
            rewrite(&p, &["RESTORE", "k", "0", "payload", "REPLACE\0"]),
            same(&["RESTORE", "k", "60000", "payload", "REPLACE\0"])
        );
    }
}
