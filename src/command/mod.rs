//! The command table: every Redis 7.0 command and subcommand, with its arity,
//! flags, where its keys are and how its reply carries key names.
//!
//! The table is an allow-list: a command that is not in it is unknown, and
//! the policy stage refuses what it cannot confine.

pub mod glob;
pub mod keys;
pub mod keyword;
pub mod state;
mod table;

use crate::protocol::request::Request;

/// Redis command flags (`COMMAND INFO`'s flags), as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(pub u32);

impl Flags {
    /// Redis's `write` command flag.
    pub const WRITE: Flags = Flags(1 << 0);
    /// Redis's `readonly` command flag.
    pub const READONLY: Flags = Flags(1 << 1);
    /// Redis's `denyoom` command flag.
    pub const DENYOOM: Flags = Flags(1 << 2);
    /// Redis's `module` command flag.
    pub const MODULE: Flags = Flags(1 << 3);
    /// Redis's `admin` command flag.
    pub const ADMIN: Flags = Flags(1 << 4);
    /// Redis's `pubsub` command flag.
    pub const PUBSUB: Flags = Flags(1 << 5);
    /// Redis's `noscript` command flag.
    pub const NOSCRIPT: Flags = Flags(1 << 6);
    /// Redis's `blocking` command flag.
    pub const BLOCKING: Flags = Flags(1 << 7);
    /// Redis's `loading` command flag.
    pub const LOADING: Flags = Flags(1 << 8);
    /// Redis's `stale` command flag.
    pub const STALE: Flags = Flags(1 << 9);
    /// Redis's `skip_monitor` command flag.
    pub const SKIP_MONITOR: Flags = Flags(1 << 10);
    /// Redis's `skip_slowlog` command flag.
    pub const SKIP_SLOWLOG: Flags = Flags(1 << 11);
    /// Redis's `fast` command flag.
    pub const FAST: Flags = Flags(1 << 12);
    /// Redis's `no_auth` command flag.
    pub const NO_AUTH: Flags = Flags(1 << 13);
    /// Redis's `may_replicate` command flag.
    pub const MAY_REPLICATE: Flags = Flags(1 << 14);
    /// Redis's `sentinel` command flag.
    pub const SENTINEL: Flags = Flags(1 << 15);
    /// Redis's `only_sentinel` command flag.
    pub const ONLY_SENTINEL: Flags = Flags(1 << 16);
    /// Redis's `no_mandatory_keys` command flag.
    pub const NO_MANDATORY_KEYS: Flags = Flags(1 << 17);
    /// Redis's `protected` command flag.
    pub const PROTECTED: Flags = Flags(1 << 18);
    /// Redis's `movablekeys` command flag.
    pub const MOVABLEKEYS: Flags = Flags(1 << 19);
    /// Redis's `no_async_loading` command flag.
    pub const NO_ASYNC_LOADING: Flags = Flags(1 << 20);
    /// Redis's `no_multi` command flag.
    pub const NO_MULTI: Flags = Flags(1 << 21);
    /// Redis's `allow_busy` command flag.
    pub const ALLOW_BUSY: Flags = Flags(1 << 22);
    /// Redis 7's `asking` flag: the command is accepted on an importing slot
    /// after ASKING (cluster only).
    pub const ASKING: Flags = Flags(1 << 23);

    /// True when every bit of `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
}

/// ACL categories (`@read`, `@transaction`, ...), as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AclCategories(pub u32);

impl AclCategories {
    /// The `@keyspace` ACL category.
    pub const KEYSPACE: AclCategories = AclCategories(1 << 0);
    /// The `@read` ACL category.
    pub const READ: AclCategories = AclCategories(1 << 1);
    /// The `@write` ACL category.
    pub const WRITE: AclCategories = AclCategories(1 << 2);
    /// The `@set` ACL category.
    pub const SET: AclCategories = AclCategories(1 << 3);
    /// The `@sortedset` ACL category.
    pub const SORTEDSET: AclCategories = AclCategories(1 << 4);
    /// The `@list` ACL category.
    pub const LIST: AclCategories = AclCategories(1 << 5);
    /// The `@hash` ACL category.
    pub const HASH: AclCategories = AclCategories(1 << 6);
    /// The `@string` ACL category.
    pub const STRING: AclCategories = AclCategories(1 << 7);
    /// The `@bitmap` ACL category.
    pub const BITMAP: AclCategories = AclCategories(1 << 8);
    /// The `@hyperloglog` ACL category.
    pub const HYPERLOGLOG: AclCategories = AclCategories(1 << 9);
    /// The `@geo` ACL category.
    pub const GEO: AclCategories = AclCategories(1 << 10);
    /// The `@stream` ACL category.
    pub const STREAM: AclCategories = AclCategories(1 << 11);
    /// The `@pubsub` ACL category.
    pub const PUBSUB: AclCategories = AclCategories(1 << 12);
    /// The `@admin` ACL category.
    pub const ADMIN: AclCategories = AclCategories(1 << 13);
    /// The `@fast` ACL category.
    pub const FAST: AclCategories = AclCategories(1 << 14);
    /// The `@slow` ACL category.
    pub const SLOW: AclCategories = AclCategories(1 << 15);
    /// The `@blocking` ACL category.
    pub const BLOCKING: AclCategories = AclCategories(1 << 16);
    /// The `@dangerous` ACL category.
    pub const DANGEROUS: AclCategories = AclCategories(1 << 17);
    /// The `@connection` ACL category.
    pub const CONNECTION: AclCategories = AclCategories(1 << 18);
    /// The `@transaction` ACL category.
    pub const TRANSACTION: AclCategories = AclCategories(1 << 19);
    /// The `@scripting` ACL category.
    pub const SCRIPTING: AclCategories = AclCategories(1 << 20);

    /// True when every bit of `other` is set.
    pub const fn contains(self, other: AclCategories) -> bool {
        self.0 & other.0 == other.0
    }
}

/// Where a key-spec starts looking for keys (Redis 7 key-spec `begin_search`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeginSearch {
    /// At a fixed argument index (negative counts from the end).
    Index(i32),
    /// After `keyword`, searching from `startfrom` (negative: backwards from the end).
    Keyword {
        keyword: &'static str,
        startfrom: i32,
    },
    /// Redis cannot say; keygate handles the command with its own code.
    Unknown,
}

/// How a key-spec finds keys once it has a start (Redis 7 key-spec `find_keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindKeys {
    /// Keys from the start to `lastkey` (relative; -1 is the last argument) every `step`;
    /// `limit` > 0 means "1/limit of the remaining arguments".
    Range { lastkey: i32, step: i32, limit: i32 },
    /// The number of keys is at `keynumidx`, the first key at `firstkey`, every `step`
    /// (indexes relative to the start).
    Keynum {
        keynumidx: i32,
        firstkey: i32,
        step: i32,
    },
    /// Redis cannot say; keygate handles the command with its own code.
    Unknown,
}

/// Key-spec flags (`RO`, `RW`, `OW`, `RM`, `access`, `update`, `insert`, `delete`,
/// `not_key`, `incomplete`, `variable_flags`), as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeySpecFlags(pub u16);

impl KeySpecFlags {
    /// The key-spec flag `RO`.
    pub const RO: KeySpecFlags = KeySpecFlags(1 << 0);
    /// The key-spec flag `RW`.
    pub const RW: KeySpecFlags = KeySpecFlags(1 << 1);
    /// The key-spec flag `OW`.
    pub const OW: KeySpecFlags = KeySpecFlags(1 << 2);
    /// The key-spec flag `RM`.
    pub const RM: KeySpecFlags = KeySpecFlags(1 << 3);
    /// The key-spec flag `access`.
    pub const ACCESS: KeySpecFlags = KeySpecFlags(1 << 4);
    /// The key-spec flag `update`.
    pub const UPDATE: KeySpecFlags = KeySpecFlags(1 << 5);
    /// The key-spec flag `insert`.
    pub const INSERT: KeySpecFlags = KeySpecFlags(1 << 6);
    /// The key-spec flag `delete`.
    pub const DELETE: KeySpecFlags = KeySpecFlags(1 << 7);
    /// The key-spec flag `not_key`.
    pub const NOT_KEY: KeySpecFlags = KeySpecFlags(1 << 8);
    /// The key-spec flag `incomplete`.
    pub const INCOMPLETE: KeySpecFlags = KeySpecFlags(1 << 9);
    /// The key-spec flag `variable_flags`.
    pub const VARIABLE_FLAGS: KeySpecFlags = KeySpecFlags(1 << 10);

    /// True when every bit of `other` is set.
    pub const fn contains(self, other: KeySpecFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

/// One Redis 7 key specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpec {
    /// Access and operation flags of the keys this spec finds.
    pub flags: KeySpecFlags,
    /// Where the search for keys starts.
    pub begin_search: BeginSearch,
    /// How keys are found from that start.
    pub find_keys: FindKeys,
}

/// How a command's reply carries key (or channel) names, so the namespace
/// stage knows what to strip on the way back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKeys {
    /// The reply holds no key names.
    None,
    /// An array of key names (KEYS).
    KeyArray,
    /// `[cursor, [keys...]]` (SCAN).
    Scan,
    /// One key name or nil (RANDOMKEY).
    Key,
    /// `[key, ...rest]` or nil: the first element is a key (BLPOP, BRPOP,
    /// BZPOPMIN, BZPOPMAX, BLMPOP, LMPOP, ZMPOP, BZMPOP).
    FirstElement,
    /// XREAD/XREADGROUP: an array (RESP2) or map (RESP3) keyed by stream name.
    Streams,
    /// An array of channel names (PUBSUB CHANNELS / SHARDCHANNELS).
    ChannelArray,
    /// Alternating `[channel, count, ...]` (PUBSUB NUMSUB / SHARDNUMSUB).
    ChannelCounts,
    /// SLOWLOG GET: entries whose fourth element is the logged command's
    /// arguments, keys among them.
    SlowlogEntries,
}

/// One command or subcommand of the table.
#[derive(Debug)]
pub struct CommandSpec {
    /// Lower-case full name as Redis 7 reports it (`get`, `config|get`).
    pub name: &'static str,
    /// Redis arity: positive is exact, negative is a minimum.
    pub arity: i32,
    /// Command flags (write, readonly, blocking, ...).
    pub flags: Flags,
    /// ACL categories.
    pub acl: AclCategories,
    /// Legacy first/last/step key positions from `COMMAND INFO`.
    pub first_key: i32,
    /// Legacy last key position (negative counts from the end).
    pub last_key: i32,
    /// Legacy step between keys.
    pub step: i32,
    /// Redis 7 key specifications: the source of key positions.
    pub key_specs: &'static [KeySpec],
    /// Subcommands of a container command (CONFIG, CLIENT, ...); empty otherwise.
    pub subcommands: &'static [CommandSpec],
    /// keygate's annotation of where the reply carries key names.
    pub reply_keys: ReplyKeys,
}

/// Why a request has no entry in the table; the text is Redis's own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// `ERR unknown command '...', with args beginning with: ...`
    #[error("ERR unknown command '{name}', with args beginning with: {args}")]
    UnknownCommand { name: String, args: String },
    /// `ERR unknown subcommand '...'. Try CONFIG HELP.`
    #[error("ERR unknown subcommand '{sub}'. Try {container} HELP.")]
    UnknownSubcommand { sub: String, container: String },
    /// `ERR wrong number of arguments for '...' command`
    #[error("ERR wrong number of arguments for '{0}' command")]
    WrongArity(&'static str),
}

/// Longest command name (and each argument) Redis quotes in an unknown
/// command or subcommand error (`%.128s`), and how long the quoted argument
/// list grows before Redis stops adding arguments.
const ERROR_QUOTE_LIMIT: usize = 128;

impl CommandSpec {
    /// True for a container command (CONFIG, CLIENT, ...) that dispatches on
    /// its first argument.
    pub fn is_container(&self) -> bool {
        !self.subcommands.is_empty()
    }

    /// True when `argc` arguments (the command name included, and for a
    /// subcommand the container's name too) satisfy the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let arity = self.arity.unsigned_abs() as usize;
        if self.arity >= 0 {
            argc == arity
        } else {
            argc >= arity
        }
    }

    /// The subcommand named `sub` (any case), if this is a container that has it.
    pub fn subcommand(&self, sub: &[u8]) -> Option<&'static CommandSpec> {
        search(self.subcommands, sub, |spec| {
            // A subcommand's name is "container|sub"; compare the part after '|'.
            let name = spec.name.as_bytes();
            let bar = name.iter().position(|&b| b == b'|').map_or(0, |i| i + 1);
            name.get(bar..).unwrap_or(name)
        })
    }
}

/// Binary search of a name-sorted slice with an ASCII-case-insensitive
/// comparison, so lookups never allocate.
fn search<'a>(
    specs: &'a [CommandSpec],
    wanted: &[u8],
    key: impl Fn(&CommandSpec) -> &[u8],
) -> Option<&'a CommandSpec> {
    specs
        .binary_search_by(|spec| {
            let name = key(spec).iter();
            let wanted = wanted.iter().map(u8::to_ascii_lowercase);
            name.copied().cmp(wanted)
        })
        .ok()
        .and_then(|i| specs.get(i))
}

/// The top-level command named `name` (any case), without arity checks.
pub fn find(name: &[u8]) -> Option<&'static CommandSpec> {
    NAME_INDEX.find(name)
}

/// Slots in the open-addressing table of top-level names: a power of two
/// several times the number of commands, so nearly every name is found on
/// its first probe.
const NAME_SLOTS: usize = 1024;

/// Marks an empty slot of [`NameIndex`].
const EMPTY_SLOT: u16 = u16::MAX;

/// `0x20` in every byte: OR-ed in, it lower-cases ASCII letters.
const FOLD: u64 = 0x2020_2020_2020_2020;

/// A name's first and last eight bytes as little-endian words (a shorter
/// name is zero-padded and both words are the same), so names of up to 16
/// bytes are compared in two word operations.
fn name_words(name: &[u8]) -> (u64, u64) {
    match (name.first_chunk::<8>(), name.last_chunk::<8>()) {
        (Some(head), Some(tail)) => (u64::from_le_bytes(*head), u64::from_le_bytes(*tail)),
        _ => {
            let word = name
                .iter()
                .rev()
                .fold(0u64, |word, &b| (word << 8) | u64::from(b));
            (word, word)
        }
    }
}

/// One top-level command as the index compares it.
#[derive(Debug, Clone, Copy)]
struct NameEntry {
    /// [`name_words`] of the lower-case name.
    head: u64,
    tail: u64,
    /// `0x20` in each byte of `head`/`tail` that is a letter: OR-ed into a
    /// client's word, it folds the case of letters and nothing else, so
    /// `GET` matches `get` but `\r` never matches `-`.
    head_letters: u64,
    tail_letters: u64,
    /// The name's length.
    len: usize,
    /// The command.
    spec: &'static CommandSpec,
}

/// `0x20` in each byte of `word` that is an ASCII lower-case letter.
fn letter_bits(word: u64) -> u64 {
    word.to_le_bytes().iter().rev().fold(0u64, |bits, &b| {
        (bits << 8) | if b.is_ascii_lowercase() { 0x20 } else { 0 }
    })
}

/// The slot a name hashes to, from its case-folded words and length.
fn name_slot(head: u64, tail: u64, len: usize) -> usize {
    let mixed = ((head | FOLD) ^ (tail | FOLD).rotate_left(29) ^ len as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 54) as usize
}

/// The top-level commands by name, case-insensitively: a name's first and
/// last eight bytes pick a slot, and the candidate is checked with two
/// masked word comparisons (plus a byte comparison past 16 bytes), with no
/// lower-cased copy and no general-purpose hash.
struct NameIndex {
    /// Index into `entries` per slot, or [`EMPTY_SLOT`].
    slots: Box<[u16; NAME_SLOTS]>,
    /// One entry per top-level command.
    entries: Vec<NameEntry>,
}

impl NameIndex {
    /// The index of every top-level command.
    fn build() -> NameIndex {
        let mut slots = Box::new([EMPTY_SLOT; NAME_SLOTS]);
        let mut entries = Vec::with_capacity(table::COMMANDS.len());
        for spec in table::COMMANDS {
            let name = spec.name.as_bytes();
            let (head, tail) = name_words(name);
            let mut at = name_slot(head, tail, name.len());
            // Fewer commands than slots: an empty slot is always ahead.
            while let Some(slot) = slots.get_mut(at % NAME_SLOTS) {
                if *slot == EMPTY_SLOT {
                    *slot = u16::try_from(entries.len()).unwrap_or(EMPTY_SLOT);
                    break;
                }
                at += 1;
            }
            entries.push(NameEntry {
                head,
                tail,
                head_letters: letter_bits(head),
                tail_letters: letter_bits(tail),
                len: name.len(),
                spec,
            });
        }
        NameIndex { slots, entries }
    }

    /// The command whose name equals `name` in any case.
    fn find(&self, name: &[u8]) -> Option<&'static CommandSpec> {
        let (head, tail) = name_words(name);
        let mut at = name_slot(head, tail, name.len());
        loop {
            let slot = *self.slots.get(at % NAME_SLOTS)?;
            let entry = self.entries.get(usize::from(slot))?;
            if entry.len == name.len()
                && head | entry.head_letters == entry.head
                && tail | entry.tail_letters == entry.tail
                && (name.len() <= 16 || entry.spec.name.as_bytes().eq_ignore_ascii_case(name))
            {
                return Some(entry.spec);
            }
            at += 1;
        }
    }

    /// Probes beyond the first that the worst-placed command needs.
    #[cfg(test)]
    fn longest_probe(&self) -> usize {
        table::COMMANDS
            .iter()
            .map(|spec| {
                let name = spec.name.as_bytes();
                let (head, tail) = name_words(name);
                let home = name_slot(head, tail, name.len());
                (0..NAME_SLOTS)
                    .find(|k| {
                        let slot = self.slots[(home + k) % NAME_SLOTS];
                        self.entries
                            .get(usize::from(slot))
                            .is_some_and(|e| std::ptr::eq(e.spec, spec))
                    })
                    .unwrap_or(NAME_SLOTS)
            })
            .max()
            .unwrap_or(0)
    }
}

/// The top-level name index, built on first use.
static NAME_INDEX: std::sync::LazyLock<NameIndex> = std::sync::LazyLock::new(NameIndex::build);

/// Longer than the longest top-level command name (`georadiusbymember_ro`).
#[cfg(test)]
const LONGEST_NAME: usize = 32;

/// The command or subcommand with the full lower-case or mixed-case name Redis
/// reports (`get`, `config|get`).
pub fn find_by_full_name(full: &[u8]) -> Option<&'static CommandSpec> {
    match full.iter().position(|&b| b == b'|') {
        Some(bar) => {
            let container = find(full.get(..bar)?)?;
            container.subcommand(full.get(bar + 1..)?)
        }
        None => find(full),
    }
}

/// Finds the table entry for a request (descending into subcommands) and
/// checks its arity, without touching any backend.
///
/// Mirrors Redis 7.0's `processCommand`: a container called with no
/// subcommand resolves to the container itself, which then fails its arity
/// check; error texts are byte-for-byte Redis's.
pub fn lookup(req: &Request) -> Result<&'static CommandSpec, LookupError> {
    let name = req.get(0).unwrap_or_default();
    let Some(base) = find(name) else {
        return Err(unknown_command(req));
    };
    let spec = match req.get(1) {
        Some(sub) if base.is_container() => match base.subcommand(sub) {
            Some(spec) => spec,
            None => return Err(unknown_subcommand(base, sub)),
        },
        _ => base,
    };
    if spec.arity_ok(req.argc()) {
        Ok(spec)
    } else {
        Err(LookupError::WrongArity(spec.name))
    }
}

/// Every top-level command in the table.
pub fn all() -> &'static [CommandSpec] {
    table::COMMANDS
}

/// Every command and subcommand of the table, in dense-index order: the
/// top-level commands, then each container's subcommands in turn.
pub fn every_spec() -> impl Iterator<Item = &'static CommandSpec> {
    table::COMMANDS
        .iter()
        .chain(table::COMMANDS.iter().flat_map(|c| c.subcommands.iter()))
}

/// How many entries [`dense_index`] numbers: the length of a per-command
/// decision table.
pub fn spec_count() -> usize {
    SUBCOMMAND_RUNS.total
}

/// A number below [`spec_count`] unique to each command and subcommand of
/// the table (its position in [`every_spec`]), so a policy can keep one
/// decision per command in a `Vec` and find it without hashing the name.
///
/// Found from where the spec sits in the static table, so it is `None` for
/// a `CommandSpec` that is not the table's own.
pub fn dense_index(spec: &CommandSpec) -> Option<usize> {
    if let Some(i) = position_in(table::COMMANDS, spec) {
        return Some(i);
    }
    SUBCOMMAND_RUNS
        .runs
        .iter()
        .find_map(|&(subs, base)| position_in(subs, spec).map(|i| base + i))
}

/// The index of `spec` within `specs`, by address.
fn position_in(specs: &[CommandSpec], spec: &CommandSpec) -> Option<usize> {
    let size = std::mem::size_of::<CommandSpec>();
    let start = specs.as_ptr() as usize;
    let offset = (spec as *const CommandSpec as usize).checked_sub(start)?;
    let i = offset / size;
    (offset % size == 0 && i < specs.len()).then_some(i)
}

/// Each container's subcommand slice with the dense index of its first entry.
struct SubcommandRuns {
    runs: Vec<(&'static [CommandSpec], usize)>,
    total: usize,
}

/// The subcommand runs, worked out once.
static SUBCOMMAND_RUNS: std::sync::LazyLock<SubcommandRuns> = std::sync::LazyLock::new(|| {
    let mut runs = Vec::new();
    let mut next = table::COMMANDS.len();
    for container in table::COMMANDS.iter().filter(|c| c.is_container()) {
        runs.push((container.subcommands, next));
        next += container.subcommands.len();
    }
    SubcommandRuns { runs, total: next }
});

/// What C's `%.Ns` makes of an argument: cut at the first NUL, then at `max`
/// bytes; Redis then maps CR and LF to spaces so the error stays one line.
fn quoted(arg: &[u8], max: usize) -> String {
    let upto_nul = arg.iter().position(|&b| b == 0).unwrap_or(arg.len());
    let cut = arg.get(..upto_nul.min(max)).unwrap_or(arg);
    String::from_utf8_lossy(cut)
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect()
}

/// Redis's unknown-command error: the name, then `'arg' ` for each argument
/// while the list is shorter than 128 bytes, each cut to what is left of 128.
fn unknown_command(req: &Request) -> LookupError {
    let name = quoted(req.get(0).unwrap_or_default(), ERROR_QUOTE_LIMIT);
    let mut args = String::new();
    let mut args_len = 0usize; // Bytes as Redis counts them, before lossy decoding.
    for arg in req.args().skip(1) {
        if args_len >= ERROR_QUOTE_LIMIT {
            break;
        }
        let room = ERROR_QUOTE_LIMIT - args_len;
        let upto_nul = arg.iter().position(|&b| b == 0).unwrap_or(arg.len());
        args_len += upto_nul.min(room) + 3;
        args.push('\'');
        args.push_str(&quoted(arg, room));
        args.push_str("' ");
    }
    LookupError::UnknownCommand { name, args }
}

/// Redis's unknown-subcommand error, naming the container in upper case.
fn unknown_subcommand(container: &CommandSpec, sub: &[u8]) -> LookupError {
    LookupError::UnknownSubcommand {
        sub: quoted(sub, ERROR_QUOTE_LIMIT),
        container: container.name.to_ascii_uppercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(args: &[&[u8]]) -> Result<&'static str, String> {
        lookup(&Request::from_args(args))
            .map(|spec| spec.name)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn table_is_sorted_for_binary_search() {
        for list in std::iter::once(all()).chain(all().iter().map(|c| c.subcommands)) {
            for pair in list.windows(2) {
                assert!(
                    pair[0].name < pair[1].name,
                    "{} >= {}",
                    pair[0].name,
                    pair[1].name
                );
            }
        }
    }

    #[test]
    fn every_name_fits_the_lookup_buffer() {
        assert!(all().iter().all(|c| c.name.len() < LONGEST_NAME));
        assert!(find(&[b'g'; LONGEST_NAME + 1]).is_none());
    }

    #[test]
    fn names_are_found_in_a_few_probes() {
        assert!(
            NAME_INDEX.longest_probe() <= 4,
            "{}",
            NAME_INDEX.longest_probe()
        );
        for spec in all() {
            assert!(std::ptr::eq(find(spec.name.as_bytes()).unwrap(), spec));
            let upper = spec.name.to_ascii_uppercase();
            assert!(std::ptr::eq(find(upper.as_bytes()).unwrap(), spec));
        }
        assert!(find(b"GE\x54").is_some());
        assert!(find(b"ge\x14").is_none());
        assert!(find(b"ge@").is_none());
        // Bytes that `| 0x20` would fold onto a name's non-letters.
        assert!(find(b"\x12\x10\x10\x10").is_none()); // not "2000"-like digits
        assert!(find(b"restore\rasking").is_none());
        assert!(find(b"restore-asking").is_some());
        assert!(find(b"GEORADIUSBYMEMBER_RO").is_some());
        assert!(find(b"GEORADIUSBYMEMBER\x7fRO").is_none());
        assert!(find(b"georadiusbymember-ro").is_none());
        assert!(find(b"georadiusbymemberxro").is_none());
        assert!(find(b"get\0").is_none());
        assert!(find(b"").is_none());
    }

    #[test]
    fn dense_indexes_number_every_spec_once() {
        let all: Vec<&CommandSpec> = every_spec().collect();
        assert_eq!(all.len(), spec_count());
        for (i, spec) in all.iter().enumerate() {
            assert_eq!(dense_index(spec), Some(i), "{}", spec.name);
        }
        let stray = CommandSpec {
            subcommands: &[],
            key_specs: &[],
            ..*all[0]
        };
        assert_eq!(dense_index(&stray), None);
    }

    #[test]
    fn finds_any_case() {
        assert_eq!(look(&[b"GeT", b"k"]), Ok("get"));
        assert_eq!(look(&[b"config", b"GET", b"x"]), Ok("config|get"));
        assert_eq!(look(&[b"CLIENT", b"list"]), Ok("client|list"));
        assert_eq!(find(b"ZUNIONSTORE").map(|c| c.name), Some("zunionstore"));
        assert!(find(b"get\0").is_none());
        assert_eq!(
            find_by_full_name(b"CONFIG|Get").map(|c| c.name),
            Some("config|get")
        );
    }

    #[test]
    fn arity_errors_name_the_full_command() {
        assert_eq!(
            look(&[b"GET"]),
            Err("ERR wrong number of arguments for 'get' command".into())
        );
        assert_eq!(
            look(&[b"config", b"get"]),
            Err("ERR wrong number of arguments for 'config|get' command".into())
        );
        assert_eq!(
            look(&[b"CONFIG"]),
            Err("ERR wrong number of arguments for 'config' command".into())
        );
    }

    #[test]
    fn unknown_subcommand_text() {
        assert_eq!(
            look(&[b"config", b"nope"]),
            Err("ERR unknown subcommand 'nope'. Try CONFIG HELP.".into())
        );
    }

    #[test]
    fn unknown_command_text() {
        assert_eq!(
            look(&[b"foo", b"a", b"b"]),
            Err("ERR unknown command 'foo', with args beginning with: 'a' 'b' ".into())
        );
        assert_eq!(
            look(&[b"foo"]),
            Err("ERR unknown command 'foo', with args beginning with: ".into())
        );
        let long = vec![b'x'; 200];
        let text = look(&[b"foo", &long, b"b"]).unwrap_err();
        let quoted = format!("'{}' ", "x".repeat(128));
        assert_eq!(
            text,
            format!("ERR unknown command 'foo', with args beginning with: {quoted}")
        );
        assert_eq!(
            look(&[b"f\r\no", b"a\nb"]),
            Err("ERR unknown command 'f  o', with args beginning with: 'a b' ".into())
        );
    }
}
