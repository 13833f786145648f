//! Where a request's keys are: Redis 7's key-spec search, plus keygate's own
//! code for the commands whose specs say "unknown" (SORT's STORE, ...).
//!
//! This is a port of Redis 7.0's `getKeysFromCommandWithSpecs` (db.c) as
//! `COMMAND GETKEYS` runs it: key specs first; when a spec is incomplete,
//! unknown or fails, the command's native "getkeys" procedure instead. The
//! answer must match the keys the command itself reads and writes, because
//! a key keygate misses is a key it does not confine. Where `COMMAND
//! GETKEYS` and the command disagree, the command wins: SORT, GEORADIUS,
//! GEORADIUSBYMEMBER, XREAD, XREADGROUP and MIGRATE have their keys found
//! by [`own_parser`], and so have the commands with a `numkeys` whose own
//! errors differ from the key finder's (LMPOP, ZMPOP, SINTERCARD, ZUNION &
//! co., FCALL). Those parsers read the options exactly as the command's own
//! C code does (the last STORE of GEORADIUS, not the first one its key spec
//! finds; the STREAMS after `GROUP STREAMS c` of XREADGROUP, not the group
//! name), and refuse what that code would refuse, with its error text.
//! Every option word is matched by [`is_keyword`], as `strcasecmp` does.
//!
//! Invariants: positions are in argument order without duplicates; a request
//! whose keys cannot be found is an error, never an empty answer, unless the
//! command declares its keys optional (`no_mandatory_keys`, e.g. EVAL with
//! zero keys) or has none at all. One deliberate difference from Redis: a bad
//! `numkeys` is an error even for optional-key commands, where Redis's key
//! finder answers no keys (keygate's `COMMAND GETKEYS` answers Redis's empty
//! list there all the same).

use super::keyword::is_keyword;
use super::{BeginSearch, CommandSpec, FindKeys, Flags, KeySpec, KeySpecFlags};
use crate::protocol::decimal::parse_ll;
use crate::protocol::request::Request;
use smallvec::{smallvec, SmallVec};

/// Why keygate cannot say where a request's keys are; the text is Redis-style
/// and fit to send to the client as the command's refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeysError {
    /// A `numkeys` argument is not an integer.
    #[error("ERR value is not an integer or out of range")]
    NotAnInteger,
    /// A `numkeys` argument is negative.
    #[error("ERR Number of keys can't be negative")]
    NegativeKeyCount,
    /// A `numkeys` argument (or a key list) runs past the last argument.
    #[error("ERR Number of keys can't be greater than number of args")]
    TooManyKeys,
    /// The keys' place could not be found (missing keyword, too few arguments).
    #[error("ERR syntax error")]
    Syntax,
    /// LMPOP, BLMPOP, ZMPOP, BZMPOP, SINTERCARD: `numkeys` not an integer or < 1.
    #[error("ERR numkeys should be greater than 0")]
    NumkeysNotPositive,
    /// ZUNION, ZINTER, ZDIFF, ZINTERCARD and the *STORE forms: `numkeys` < 1.
    #[error("ERR at least 1 input key is needed for '{0}' command")]
    AtLeastOneKey(&'static str),
    /// FCALL, FCALL_RO: `numkeys` not an integer.
    #[error("ERR Bad number of keys provided")]
    BadNumberOfKeys,
    /// XREAD/XREADGROUP with an odd number of arguments after STREAMS.
    #[error(
        "ERR Unbalanced XREAD list of streams: for each stream key an ID or '$' must be specified."
    )]
    UnbalancedStreams,
}

/// Key positions, inline for commands with up to four keys (no allocation
/// for the common single-key commands).
pub type KeyPositions = SmallVec<[usize; 4]>;

/// Argument indexes of every key in `req`, in argument order.
///
/// Errors when the command has keys but they cannot be located, so the
/// caller can refuse the request instead of forwarding unconfined keys.
pub fn key_positions(spec: &CommandSpec, req: &Request) -> Result<Vec<usize>, KeysError> {
    key_positions_inline(spec, req).map(KeyPositions::into_vec)
}

/// [`key_positions`] without a heap allocation for up to four keys: the
/// per-request form the namespace rewrite uses.
pub fn key_positions_inline(spec: &CommandSpec, req: &Request) -> Result<KeyPositions, KeysError> {
    match single_fixed_key(spec, req) {
        Some(key) => Ok(smallvec![key]),
        None => search_key_positions(spec, req),
    }
}

/// Redis's `doesCommandHaveKeys`: a key spec that names keys, or a key
/// finder of its own.
pub fn has_keys(spec: &CommandSpec) -> bool {
    spec.key_specs
        .iter()
        .any(|ks| !ks.flags.contains(KeySpecFlags::NOT_KEY))
        || native_getkeys(spec.name).is_some()
        || own_parser(spec.name).is_some()
}

/// The full key search behind [`key_positions_inline`].
fn search_key_positions(spec: &CommandSpec, req: &Request) -> Result<KeyPositions, KeysError> {
    if let Some(parse) = own_parser(spec.name) {
        let mut keys = parse(req)?;
        keys.sort_unstable();
        keys.dedup();
        return Ok(keys);
    }
    let has_key_spec = spec
        .key_specs
        .iter()
        .any(|ks| !ks.flags.contains(KeySpecFlags::NOT_KEY));
    let has_variable_flags = spec
        .key_specs
        .iter()
        .any(|ks| ks.flags.contains(KeySpecFlags::VARIABLE_FLAGS));
    let native = native_getkeys(spec.name);

    let mut failure = None;
    let mut keys = KeyPositions::new();
    let mut resolved = false;
    if has_key_spec && !has_variable_flags {
        match keys_from_specs(spec, req) {
            Ok(found) => {
                keys = found;
                resolved = true;
            }
            Err(e) => failure = Some(e),
        }
    }
    if !resolved {
        if let Some(getkeys) = native {
            keys = getkeys(req);
        }
    }
    if !keys.windows(2).all(|pair| matches!(pair, [a, b] if a < b)) {
        keys.sort_unstable();
        keys.dedup();
    }

    let has_keys = has_key_spec || native.is_some();
    // Redis answers "no keys" for a command whose keys are optional even when
    // its numkeys is bad (the command then fails on its own); keygate refuses
    // those up front so an unparsable request never travels unconfined.
    let bad_count = matches!(
        failure,
        Some(KeysError::NotAnInteger | KeysError::NegativeKeyCount | KeysError::TooManyKeys)
    );
    let optional = spec.flags.contains(Flags::NO_MANDATORY_KEYS) && !bad_count;
    if keys.is_empty() && has_keys && !optional {
        return Err(failure.unwrap_or(KeysError::Syntax));
    }
    Ok(keys)
}

/// The key of a command whose only key spec is one fixed, present
/// position (GET, SET, INCR, ...): what the full search below answers for
/// it, without the search. `None` sends every other shape the long way.
pub fn single_fixed_key(spec: &CommandSpec, req: &Request) -> Option<usize> {
    let [ks] = spec.key_specs else {
        return None;
    };
    // VARIABLE_FLAGS (SET, BITFIELD) changes what the key is used for, not
    // where it is: Redis's own key finders for those answer the same place.
    let odd = KeySpecFlags(KeySpecFlags::NOT_KEY.0 | KeySpecFlags::INCOMPLETE.0);
    if ks.flags.0 & odd.0 != 0 {
        return None;
    }
    let (BeginSearch::Index(at), FindKeys::Range { lastkey: 0, .. }) =
        (ks.begin_search, ks.find_keys)
    else {
        return None;
    };
    usize::try_from(at)
        .ok()
        .filter(|&at| at > 0 && at < req.argc())
}

/// Like [`key_positions`], each key paired with the flags of the key spec
/// that names it, so a policy can tell a destination (`OW`/`INSERT`) from a
/// source (`RO`).
///
/// A position claimed by several specs gets the union of their flags. A
/// position no locatable spec claims (found by Redis's native procedure, e.g.
/// SORT's STORE destination) gets the union of the flags of the specs that
/// cannot be located, or of every spec when all were located: a conservative
/// answer that may call a key written when it is only read, never the reverse.
pub fn key_positions_with_flags(
    spec: &CommandSpec,
    req: &Request,
) -> Result<Vec<(usize, KeySpecFlags)>, KeysError> {
    let positions = key_positions(spec, req)?;
    if positions.is_empty() {
        return Ok(Vec::new());
    }
    // Each spec's (first, last, step) when it can be located on this request.
    let mut located: Vec<(KeySpecFlags, i64, i64, i64)> = Vec::with_capacity(spec.key_specs.len());
    let mut unlocatable = KeySpecFlags::default();
    let mut every = KeySpecFlags::default();
    for ks in spec.key_specs {
        if ks.flags.contains(KeySpecFlags::NOT_KEY) {
            continue;
        }
        every.0 |= ks.flags.0;
        let range = match begin_search(ks, req) {
            Ok(Some(first)) => find_keys(ks, req, first).ok(),
            // The keyword is absent: this spec names no key here.
            Ok(None) => continue,
            Err(_) => None,
        };
        match range {
            Some((first, last, step)) => located.push((ks.flags, first, last, step.max(1))),
            None => unlocatable.0 |= ks.flags.0,
        }
    }
    let fallback = if unlocatable == KeySpecFlags::default() {
        every
    } else {
        unlocatable
    };
    Ok(positions
        .into_iter()
        .map(|pos| {
            let at = pos as i64;
            let mut flags = KeySpecFlags::default();
            for &(spec_flags, first, last, step) in &located {
                if at >= first && at <= last && (at - first) % step == 0 {
                    flags.0 |= spec_flags.0;
                }
            }
            if flags == KeySpecFlags::default() {
                flags = fallback;
            }
            (pos, flags)
        })
        .collect())
}

/// Redis's `getKeysUsingKeySpecs` with default search flags: `NOT_KEY` specs
/// are skipped, and an incomplete, unknown or out-of-range spec fails the
/// whole search.
fn keys_from_specs(spec: &CommandSpec, req: &Request) -> Result<KeyPositions, KeysError> {
    let argc = req.argc() as i64;
    let mut keys = KeyPositions::new();
    for ks in spec.key_specs {
        if ks.flags.contains(KeySpecFlags::NOT_KEY) {
            continue;
        }
        let Some(first) = begin_search(ks, req)? else {
            // The keyword is absent: this spec simply has no keys.
            continue;
        };
        let (first, last, step) = find_keys(ks, req, first)?;
        if last >= argc || last < first || first >= argc {
            return Err(if last >= argc {
                KeysError::TooManyKeys
            } else {
                KeysError::Syntax
            });
        }
        // Redis skips (rather than fails on) positions past the end for
        // commands of variable arity; the check above already bounds `last`.
        let step = step.max(1);
        let mut i = first;
        while i <= last {
            keys.push(i as usize);
            i += step;
        }
        if ks.flags.contains(KeySpecFlags::INCOMPLETE) {
            return Err(KeysError::Syntax);
        }
    }
    Ok(keys)
}

/// Where a spec's keys start: `Ok(None)` when its keyword is absent.
fn begin_search(ks: &KeySpec, req: &Request) -> Result<Option<i64>, KeysError> {
    let argc = req.argc() as i64;
    match ks.begin_search {
        BeginSearch::Index(pos) => Ok(Some(i64::from(pos))),
        BeginSearch::Keyword { keyword, startfrom } => {
            let startfrom = i64::from(startfrom);
            let (start, end) = if startfrom > 0 {
                (startfrom, argc - 1)
            } else {
                (argc + startfrom, 0)
            };
            // Redis walks from `start` towards `end`, `end` itself excluded.
            let mut i = start;
            while i != end {
                if i >= argc || i < 0 {
                    break;
                }
                let hit = usize::try_from(i)
                    .ok()
                    .and_then(|i| req.get(i))
                    .is_some_and(|arg| is_keyword(arg, keyword.as_bytes()));
                if hit {
                    return Ok(Some(i + 1));
                }
                i += if start <= end { 1 } else { -1 };
            }
            Ok(None)
        }
        BeginSearch::Unknown => Err(KeysError::Syntax),
    }
}

/// The `(first, last, step)` of a spec's keys, given where they start.
fn find_keys(ks: &KeySpec, req: &Request, first: i64) -> Result<(i64, i64, i64), KeysError> {
    let argc = req.argc() as i64;
    match ks.find_keys {
        FindKeys::Range {
            lastkey,
            step,
            limit,
        } => {
            let lastkey = i64::from(lastkey);
            let last = if lastkey >= 0 {
                first + lastkey
            } else if limit == 0 {
                argc + lastkey
            } else {
                first + ((argc - first) / i64::from(limit) + lastkey)
            };
            Ok((first, last, i64::from(step)))
        }
        FindKeys::Keynum {
            keynumidx,
            firstkey,
            step,
        } => {
            let at = first + i64::from(keynumidx);
            if keynumidx < 0 || at >= argc {
                return Err(KeysError::Syntax);
            }
            let raw = usize::try_from(at)
                .ok()
                .and_then(|at| req.get(at))
                .ok_or(KeysError::Syntax)?;
            let numkeys = parse_ll(raw).ok_or(KeysError::NotAnInteger)?;
            if numkeys < 0 {
                return Err(KeysError::NegativeKeyCount);
            }
            let first = first + i64::from(firstkey);
            // Redis casts numkeys to int here; keep its arithmetic.
            let last = first + i64::from(numkeys as i32) - 1;
            Ok((first, last, i64::from(step)))
        }
        FindKeys::Unknown => Err(KeysError::Syntax),
    }
}

/// A native "getkeys" procedure: argument vector in, key positions out
/// (empty when Redis's procedure finds none).
type GetKeys = fn(&Request) -> KeyPositions;

/// The Redis 7.0 commands that carry a `getkeys_proc`, used when key specs
/// cannot answer (incomplete, unknown or variable-flag specs, or a failure).
fn native_getkeys(name: &str) -> Option<GetKeys> {
    let getkeys: GetKeys = match name {
        "eval" | "evalsha" | "eval_ro" | "evalsha_ro" => |r| numkeys_keys(r, None, 2, 3),
        "sort_ro" | "set" | "bitfield" => |r| {
            if r.argc() > 1 {
                smallvec![1]
            } else {
                KeyPositions::new()
            }
        },
        _ => return None,
    };
    Some(getkeys)
}

/// A command's own option parser, as far as it decides where the keys are:
/// key positions in, or the error the command would answer.
type OwnParser = fn(&Request) -> Result<KeyPositions, KeysError>;

/// The commands whose key specs (and `COMMAND GETKEYS`) can name other
/// arguments than the command itself uses as keys, with keygate's reading
/// of each command's options.
fn own_parser(name: &str) -> Option<OwnParser> {
    let parse: OwnParser = match name {
        "sort" => |r| sort_options(r, false).map(|o| o.keys()),
        "sort_ro" => |r| sort_options(r, true).map(|o| o.keys()),
        "georadius" => |r| georadius_keys(r, 6),
        "georadiusbymember" => |r| georadius_keys(r, 5),
        "xread" => |r| xread_options(r, false).map(|o| o.keys()),
        "xreadgroup" => |r| xread_options(r, true).map(|o| o.keys()),
        "migrate" => migrate_keys,
        "lmpop" | "zmpop" => |r| mpop_keys(r, 1),
        "blmpop" | "bzmpop" => |r| mpop_keys(r, 2),
        "sintercard" => sintercard_keys,
        "zunion" => |r| zset_op_keys(r, "zunion", false),
        "zinter" => |r| zset_op_keys(r, "zinter", false),
        "zdiff" => |r| zset_op_keys(r, "zdiff", false),
        "zintercard" => |r| zset_op_keys(r, "zintercard", false),
        "zunionstore" => |r| zset_op_keys(r, "zunionstore", true),
        "zinterstore" => |r| zset_op_keys(r, "zinterstore", true),
        "zdiffstore" => |r| zset_op_keys(r, "zdiffstore", true),
        "fcall" | "fcall_ro" => fcall_keys,
        _ => return None,
    };
    Some(parse)
}

/// The `numkeys` keys right after argument `at`, once the caller has
/// checked that there are at least `numkeys` arguments after it.
fn keys_after(at: usize, numkeys: i64) -> KeyPositions {
    let n = usize::try_from(numkeys).unwrap_or_default();
    (at + 1..=at + n).collect()
}

/// `lmpopGenericCommand` (t_list.c) and `zmpopGenericCommand` (t_zset.c):
/// `numkeys` at `at` must be an integer of at least 1, and the LEFT/RIGHT
/// (MIN/MAX) word must follow the keys. BLMPOP and BZMPOP read their
/// timeout only after that.
fn mpop_keys(req: &Request, at: usize) -> Result<KeyPositions, KeysError> {
    let numkeys = req
        .get(at)
        .and_then(parse_ll)
        .filter(|&n| n >= 1)
        .ok_or(KeysError::NumkeysNotPositive)?;
    let args_after = req.argc().saturating_sub(at + 1) as i64;
    if numkeys >= args_after {
        return Err(KeysError::Syntax);
    }
    Ok(keys_after(at, numkeys))
}

/// `sinterCardCommand` (t_set.c): `numkeys` must be an integer of at least 1
/// and no more than the arguments after it.
fn sintercard_keys(req: &Request) -> Result<KeyPositions, KeysError> {
    let numkeys = req
        .get(1)
        .and_then(parse_ll)
        .filter(|&n| n >= 1)
        .ok_or(KeysError::NumkeysNotPositive)?;
    if numkeys > req.argc().saturating_sub(2) as i64 {
        return Err(KeysError::TooManyKeys);
    }
    Ok(keys_after(1, numkeys))
}

/// `zunionInterDiffGenericCommand` (t_zset.c) for `name`: `numkeys` (after
/// the destination for the STORE forms) must be an integer, at least 1,
/// and no more than the arguments after it.
fn zset_op_keys(req: &Request, name: &'static str, store: bool) -> Result<KeyPositions, KeysError> {
    let at = if store { 2 } else { 1 };
    let numkeys = req
        .get(at)
        .and_then(parse_ll)
        .ok_or(KeysError::NotAnInteger)?;
    if numkeys < 1 {
        return Err(KeysError::AtLeastOneKey(name));
    }
    if numkeys > req.argc().saturating_sub(at + 1) as i64 {
        return Err(KeysError::Syntax);
    }
    let mut keys = keys_after(at, numkeys);
    if store {
        keys.insert(0, 1);
    }
    Ok(keys)
}

/// `fcallCommandGeneric` (functions.c): `numkeys` must be an integer, no
/// more than the arguments after it, and not negative. (Redis first answers
/// `Function not found` for a function that does not exist; keygate cannot
/// know which exist, so it answers as for one that does.)
fn fcall_keys(req: &Request) -> Result<KeyPositions, KeysError> {
    let numkeys = req
        .get(2)
        .and_then(parse_ll)
        .ok_or(KeysError::BadNumberOfKeys)?;
    if numkeys > req.argc().saturating_sub(3) as i64 {
        return Err(KeysError::TooManyKeys);
    }
    if numkeys < 0 {
        return Err(KeysError::NegativeKeyCount);
    }
    Ok(keys_after(2, numkeys))
}

/// C's `atoi`: optional blanks, an optional sign, then digits; 0 otherwise.
fn atoi(arg: &[u8]) -> i64 {
    let mut bytes = arg
        .iter()
        .skip_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c))
        .peekable();
    let negative = match bytes.peek() {
        Some(b'-') => {
            bytes.next();
            true
        }
        Some(b'+') => {
            bytes.next();
            false
        }
        _ => false,
    };
    let mut n: i64 = 0;
    for b in bytes.take_while(|b| b.is_ascii_digit()) {
        n = n.saturating_mul(10).saturating_add(i64::from(b - b'0'));
    }
    let n = if negative { -n } else { n };
    i64::from(n.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32)
}

/// Redis's `genericGetKeys`: `numkeys` at `count_at`, keys from `first_at`,
/// plus an optional destination key at `store_at`.
fn numkeys_keys(
    req: &Request,
    store_at: Option<usize>,
    count_at: usize,
    first_at: usize,
) -> KeyPositions {
    let Some(count) = req.get(count_at) else {
        return KeyPositions::new();
    };
    let num = atoi(count);
    let available = req.argc().saturating_sub(first_at) as i64;
    if num < 1 || num > available {
        return KeyPositions::new();
    }
    let mut keys: KeyPositions = (first_at..first_at + num as usize).collect();
    keys.extend(store_at);
    keys
}

/// SORT's and SORT_RO's options as `sortCommandGeneric` (sort.c) reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SortOptions {
    /// The argument the command stores into: the last STORE's (SORT only).
    pub store: Option<usize>,
    /// The arguments of BY and GET: patterns the command turns into key names.
    pub patterns: SmallVec<[usize; 4]>,
}

impl SortOptions {
    /// The sorted key and the destination.
    fn keys(&self) -> KeyPositions {
        let mut keys: KeyPositions = smallvec![1];
        keys.extend(self.store);
        keys
    }
}

/// Reads SORT (or SORT_RO, `readonly`) options from argument 2 on: ASC,
/// DESC, ALPHA, `LIMIT offset count`, `BY pattern`, `GET pattern` and, for
/// SORT, `STORE destination` (the last one wins). Anything else is the
/// syntax error Redis answers.
pub fn sort_options(req: &Request, readonly: bool) -> Result<SortOptions, KeysError> {
    let mut opts = SortOptions::default();
    let mut j = 2;
    while let Some(arg) = req.get(j) {
        let left = req.argc() - j - 1;
        if is_keyword(arg, b"asc") || is_keyword(arg, b"desc") || is_keyword(arg, b"alpha") {
        } else if is_keyword(arg, b"limit") && left >= 2 {
            j += 2;
        } else if !readonly && is_keyword(arg, b"store") && left >= 1 {
            opts.store = Some(j + 1);
            j += 1;
        } else if (is_keyword(arg, b"by") || is_keyword(arg, b"get")) && left >= 1 {
            opts.patterns.push(j + 1);
            j += 1;
        } else {
            return Err(KeysError::Syntax);
        }
        j += 1;
    }
    Ok(opts)
}

/// Redis's `migrateCommand` options: the key argument, or with `KEYS`
/// (which needs an empty key argument) every argument after it.
fn migrate_keys(req: &Request) -> Result<KeyPositions, KeysError> {
    let mut j = 6;
    while let Some(arg) = req.get(j) {
        let more = req.argc() - j - 1;
        if is_keyword(arg, b"copy") || is_keyword(arg, b"replace") {
        } else if is_keyword(arg, b"auth") {
            if more < 1 {
                return Err(KeysError::Syntax);
            }
            j += 1;
        } else if is_keyword(arg, b"auth2") {
            if more < 2 {
                return Err(KeysError::Syntax);
            }
            j += 2;
        } else if is_keyword(arg, b"keys") {
            if !req.get(3).unwrap_or_default().is_empty() {
                return Err(KeysError::Syntax);
            }
            return Ok((j + 1..req.argc()).collect());
        } else {
            return Err(KeysError::Syntax);
        }
        j += 1;
    }
    if req.argc() > 3 {
        Ok(smallvec![3])
    } else {
        Err(KeysError::Syntax)
    }
}

/// Redis's `georadiusGeneric` options for GEORADIUS (`base` 6) and
/// GEORADIUSBYMEMBER (`base` 5): the source key, plus the last STORE or
/// STOREDIST destination. COUNT takes its argument with it, so a STORE
/// there is a count, not an option.
fn georadius_keys(req: &Request, base: usize) -> Result<KeyPositions, KeysError> {
    let mut keys: KeyPositions = smallvec![1];
    let mut store = None;
    let remaining = req.argc().saturating_sub(base);
    let mut i = 0;
    while i < remaining {
        let arg = req.get(base + i).unwrap_or_default();
        let flag = [
            b"withdist" as &[u8],
            b"withhash",
            b"withcoord",
            b"any",
            b"asc",
            b"desc",
        ];
        if flag.iter().any(|word| is_keyword(arg, word)) {
        } else if is_keyword(arg, b"count") && i + 1 < remaining {
            i += 1;
        } else if (is_keyword(arg, b"store") || is_keyword(arg, b"storedist")) && i + 1 < remaining
        {
            store = Some(base + i + 1);
            i += 1;
        } else {
            return Err(KeysError::Syntax);
        }
        i += 1;
    }
    keys.extend(store);
    Ok(keys)
}

/// XREAD's and XREADGROUP's options as `xreadCommand` (t_stream.c) reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XreadOptions {
    /// The first stream key (the argument after the first STREAMS option).
    pub streams_at: usize,
    /// How many stream keys follow (as many IDs come after them).
    pub streams: usize,
    /// Whether a BLOCK option was given.
    pub blocks: bool,
}

impl XreadOptions {
    fn keys(&self) -> KeyPositions {
        (self.streams_at..self.streams_at + self.streams).collect()
    }
}

/// Reads XREAD (or XREADGROUP, `group`) options from argument 1 until the
/// first `STREAMS`: `BLOCK ms`, `COUNT n`, and for XREADGROUP `GROUP g c`
/// and `NOACK`. Anything else, or no STREAMS, is Redis's syntax error.
pub fn xread_options(req: &Request, group: bool) -> Result<XreadOptions, KeysError> {
    let mut blocks = false;
    let mut i = 1;
    while let Some(arg) = req.get(i) {
        let more = req.argc() - i - 1;
        if is_keyword(arg, b"block") && more >= 1 {
            blocks = true;
            i += 1;
        } else if is_keyword(arg, b"count") && more >= 1 {
            i += 1;
        } else if is_keyword(arg, b"streams") && more >= 1 {
            if more % 2 != 0 {
                return Err(KeysError::UnbalancedStreams);
            }
            return Ok(XreadOptions {
                streams_at: i + 1,
                streams: more / 2,
                blocks,
            });
        } else if group && is_keyword(arg, b"group") && more >= 2 {
            i += 2;
        } else if !(group && is_keyword(arg, b"noack")) {
            return Err(KeysError::Syntax);
        }
        i += 1;
    }
    Err(KeysError::Syntax)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::find;

    fn keys(args: &[&str]) -> Result<Vec<usize>, KeysError> {
        let req = Request::from_args(args);
        let name = args.first().copied().unwrap_or_default();
        let spec = find(name.as_bytes()).expect("command in table");
        let spec = if spec.is_container() {
            spec.subcommand(args[1].as_bytes()).expect("subcommand")
        } else {
            spec
        };
        key_positions(spec, &req)
    }

    #[test]
    fn fixed_positions() {
        assert_eq!(keys(&["GET", "k"]), Ok(vec![1]));
        assert_eq!(keys(&["MSET", "a", "1", "b", "2"]), Ok(vec![1, 3]));
        assert_eq!(keys(&["DEL", "a", "b", "c"]), Ok(vec![1, 2, 3]));
        assert_eq!(keys(&["RENAME", "a", "b"]), Ok(vec![1, 2]));
        assert_eq!(keys(&["OBJECT", "ENCODING", "k"]), Ok(vec![2]));
        assert_eq!(keys(&["SET", "k", "v", "GET"]), Ok(vec![1]));
    }

    #[test]
    fn numkeys() {
        assert_eq!(keys(&["EVAL", "s", "2", "a", "b", "x"]), Ok(vec![3, 4]));
        assert_eq!(keys(&["EVAL", "s", "0", "x"]), Ok(vec![]));
        assert_eq!(keys(&["EVAL", "s", "3", "a"]), Err(KeysError::TooManyKeys));
        assert_eq!(keys(&["EVAL", "s", "x", "a"]), Err(KeysError::NotAnInteger));
        assert_eq!(
            keys(&["EVAL", "s", "-1", "a"]),
            Err(KeysError::NegativeKeyCount)
        );
        assert_eq!(
            keys(&["ZUNIONSTORE", "d", "2", "a", "b"]),
            Ok(vec![1, 3, 4])
        );
        assert!(keys(&["ZUNIONSTORE", "d", "0", "a"]).is_err());
        assert_eq!(
            keys(&["BLMPOP", "0", "2", "a", "b", "LEFT"]),
            Ok(vec![3, 4])
        );
    }

    /// Each command's own numkeys errors (checked against redis-server in
    /// tests/redis_errors.rs).
    #[test]
    fn numkeys_errors_are_the_commands_own() {
        use KeysError::*;
        for (args, want) in [
            (&["LMPOP", "x", "a", "LEFT"][..], NumkeysNotPositive),
            (&["LMPOP", "0", "a", "LEFT"], NumkeysNotPositive),
            (&["LMPOP", "2", "a", "LEFT"], Syntax),
            (&["BZMPOP", "0", "-1", "a", "MIN"], NumkeysNotPositive),
            (&["BZMPOP", "x", "9", "a", "MIN"], Syntax),
            (&["SINTERCARD", "0", "a"], NumkeysNotPositive),
            (&["SINTERCARD", "2", "a"], TooManyKeys),
            (&["ZINTERCARD", "x", "a"], NotAnInteger),
            (&["ZINTERCARD", "0", "a"], AtLeastOneKey("zintercard")),
            (&["ZINTERCARD", "2", "a"], Syntax),
            (&["ZDIFFSTORE", "d", "-1", "a"], AtLeastOneKey("zdiffstore")),
            (&["FCALL", "f", "x"], BadNumberOfKeys),
            (&["FCALL_RO", "f", "2", "a"], TooManyKeys),
            (&["FCALL", "f", "-1"], NegativeKeyCount),
        ] {
            assert_eq!(keys(args), Err(want), "{args:?}");
        }
        assert_eq!(keys(&["LMPOP", "2", "a", "b", "LEFT"]), Ok(vec![2, 3]));
        assert_eq!(keys(&["SINTERCARD", "1", "a", "LIMIT", "1"]), Ok(vec![2]));
        assert_eq!(keys(&["ZINTERSTORE", "d", "1", "a"]), Ok(vec![1, 3]));
        assert_eq!(keys(&["FCALL", "f", "0"]), Ok(vec![]));
    }

    #[test]
    fn keywords() {
        assert_eq!(
            keys(&["XREAD", "COUNT", "2", "STREAMS", "a", "b", "0", "0"]),
            Ok(vec![4, 5])
        );
        assert_eq!(keys(&["XREAD", "COUNT", "2"]), Err(KeysError::Syntax));
        assert_eq!(
            keys(&["GEORADIUS", "g", "0", "0", "1", "km", "STORE", "d"]),
            Ok(vec![1, 7])
        );
    }

    #[test]
    fn own_code_for_unknown_specs() {
        assert_eq!(keys(&["SORT", "k"]), Ok(vec![1]));
        assert_eq!(
            keys(&["SORT", "k", "BY", "w*", "STORE", "d"]),
            Ok(vec![1, 5])
        );
        assert_eq!(
            keys(&["SORT", "k", "LIMIT", "0", "1", "STORE", "d"]),
            Ok(vec![1, 6])
        );
        assert_eq!(keys(&["MIGRATE", "h", "1", "k", "0", "5"]), Ok(vec![3]));
        assert_eq!(
            keys(&["MIGRATE", "h", "1", "", "0", "5", "AUTH", "p", "KEYS", "a", "b"]),
            Ok(vec![9, 10])
        );
        assert_eq!(
            keys(&["MIGRATE", "h", "1", "x", "0", "5", "KEYS", "a"]),
            Err(KeysError::Syntax)
        );
    }

    #[test]
    fn strict_integers() {
        assert_eq!(parse_ll(b"12"), Some(12));
        assert_eq!(parse_ll(b"-3"), Some(-3));
        assert_eq!(parse_ll(b"0"), Some(0));
        assert_eq!(parse_ll(b"01"), None);
        assert_eq!(parse_ll(b"-0"), None);
        assert_eq!(parse_ll(b"+1"), None);
        assert_eq!(parse_ll(b"99999999999999999999"), None);
        assert_eq!(atoi(b" 12abc"), 12);
        assert_eq!(atoi(b"x"), 0);
    }

    fn flagged(args: &[&str]) -> Vec<(usize, bool)> {
        let req = Request::from_args(args);
        let spec = find(args[0].as_bytes()).expect("command in table");
        key_positions_with_flags(spec, &req)
            .expect("keys")
            .into_iter()
            .map(|(pos, flags)| (pos, flags.contains(KeySpecFlags::RO)))
            .collect()
    }

    #[test]
    fn flags_tell_sources_from_destinations() {
        assert_eq!(flagged(&["COPY", "a", "b"]), vec![(1, true), (2, false)]);
        assert_eq!(
            flagged(&["ZUNIONSTORE", "d", "2", "a", "b"]),
            vec![(1, false), (3, true), (4, true)]
        );
        assert_eq!(flagged(&["SET", "k", "v"]), vec![(1, false)]);
        // SORT's STORE comes from native code: it gets the unknown specs' flags.
        let req = Request::from_args(&["SORT", "k", "STORE", "d"]);
        let spec = find(b"sort").expect("sort");
        let keys = key_positions_with_flags(spec, &req).expect("keys");
        assert_eq!(keys.len(), 2);
        assert!(keys[0].1.contains(KeySpecFlags::RO));
        assert!(keys[1].1.contains(KeySpecFlags::OW));
        assert_eq!(
            flagged(&["GEORADIUS", "g", "0", "0", "1", "km", "STORE", "d"]),
            vec![(1, true), (7, false)]
        );
    }

    /// The single-fixed-key shortcut answers what the full search answers,
    /// for every command of the table it applies to, whatever the argc.
    #[test]
    fn single_fixed_key_agrees_with_the_search() {
        let mut checked = 0;
        for spec in crate::command::all() {
            let subs = spec.subcommands.iter();
            for spec in std::iter::once(spec).chain(subs) {
                for argc in 1..6 {
                    let args: Vec<String> = (0..argc).map(|i| format!("a{i}")).collect();
                    let req = Request::from_args(&args);
                    if let Some(key) = single_fixed_key(spec, &req) {
                        checked += 1;
                        let searched = search_key_positions(spec, &req);
                        assert_eq!(searched.as_deref(), Ok(&[key][..]), "{}", spec.name);
                    }
                }
            }
        }
        assert!(checked > 100, "{checked}");
    }

    #[test]
    fn no_keys() {
        assert_eq!(keys(&["PUBLISH", "ch", "m"]), Ok(vec![]));
        assert_eq!(keys(&["PING"]), Ok(vec![]));
    }
}
