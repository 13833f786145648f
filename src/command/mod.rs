//! The command table: every Redis 7.0 command and subcommand, with its arity,
//! flags, where its keys are and how its reply carries key names.
//!
//! The table is an allow-list: a command that is not in it is unknown, and
//! the policy stage refuses what it cannot confine.

pub mod keys;
mod table;

use crate::protocol::request::Request;

/// Redis command flags (`COMMAND INFO`'s flags), as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(pub u32);

impl Flags {
    pub const WRITE: Flags = Flags(1 << 0);
    pub const READONLY: Flags = Flags(1 << 1);
    pub const DENYOOM: Flags = Flags(1 << 2);
    pub const MODULE: Flags = Flags(1 << 3);
    pub const ADMIN: Flags = Flags(1 << 4);
    pub const PUBSUB: Flags = Flags(1 << 5);
    pub const NOSCRIPT: Flags = Flags(1 << 6);
    pub const BLOCKING: Flags = Flags(1 << 7);
    pub const LOADING: Flags = Flags(1 << 8);
    pub const STALE: Flags = Flags(1 << 9);
    pub const SKIP_MONITOR: Flags = Flags(1 << 10);
    pub const SKIP_SLOWLOG: Flags = Flags(1 << 11);
    pub const FAST: Flags = Flags(1 << 12);
    pub const NO_AUTH: Flags = Flags(1 << 13);
    pub const MAY_REPLICATE: Flags = Flags(1 << 14);
    pub const SENTINEL: Flags = Flags(1 << 15);
    pub const ONLY_SENTINEL: Flags = Flags(1 << 16);
    pub const NO_MANDATORY_KEYS: Flags = Flags(1 << 17);
    pub const PROTECTED: Flags = Flags(1 << 18);
    pub const MOVABLEKEYS: Flags = Flags(1 << 19);
    pub const NO_ASYNC_LOADING: Flags = Flags(1 << 20);
    pub const NO_MULTI: Flags = Flags(1 << 21);
    pub const ALLOW_BUSY: Flags = Flags(1 << 22);

    /// True when every bit of `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
}

/// ACL categories (`@read`, `@transaction`, ...), as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AclCategories(pub u32);

impl AclCategories {
    pub const KEYSPACE: AclCategories = AclCategories(1 << 0);
    pub const READ: AclCategories = AclCategories(1 << 1);
    pub const WRITE: AclCategories = AclCategories(1 << 2);
    pub const SET: AclCategories = AclCategories(1 << 3);
    pub const SORTEDSET: AclCategories = AclCategories(1 << 4);
    pub const LIST: AclCategories = AclCategories(1 << 5);
    pub const HASH: AclCategories = AclCategories(1 << 6);
    pub const STRING: AclCategories = AclCategories(1 << 7);
    pub const BITMAP: AclCategories = AclCategories(1 << 8);
    pub const HYPERLOGLOG: AclCategories = AclCategories(1 << 9);
    pub const GEO: AclCategories = AclCategories(1 << 10);
    pub const STREAM: AclCategories = AclCategories(1 << 11);
    pub const PUBSUB: AclCategories = AclCategories(1 << 12);
    pub const ADMIN: AclCategories = AclCategories(1 << 13);
    pub const FAST: AclCategories = AclCategories(1 << 14);
    pub const SLOW: AclCategories = AclCategories(1 << 15);
    pub const BLOCKING: AclCategories = AclCategories(1 << 16);
    pub const DANGEROUS: AclCategories = AclCategories(1 << 17);
    pub const CONNECTION: AclCategories = AclCategories(1 << 18);
    pub const TRANSACTION: AclCategories = AclCategories(1 << 19);
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
    pub const RO: KeySpecFlags = KeySpecFlags(1 << 0);
    pub const RW: KeySpecFlags = KeySpecFlags(1 << 1);
    pub const OW: KeySpecFlags = KeySpecFlags(1 << 2);
    pub const RM: KeySpecFlags = KeySpecFlags(1 << 3);
    pub const ACCESS: KeySpecFlags = KeySpecFlags(1 << 4);
    pub const UPDATE: KeySpecFlags = KeySpecFlags(1 << 5);
    pub const INSERT: KeySpecFlags = KeySpecFlags(1 << 6);
    pub const DELETE: KeySpecFlags = KeySpecFlags(1 << 7);
    pub const NOT_KEY: KeySpecFlags = KeySpecFlags(1 << 8);
    pub const INCOMPLETE: KeySpecFlags = KeySpecFlags(1 << 9);
    pub const VARIABLE_FLAGS: KeySpecFlags = KeySpecFlags(1 << 10);

    /// True when every bit of `other` is set.
    pub const fn contains(self, other: KeySpecFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

/// One Redis 7 key specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpec {
    pub flags: KeySpecFlags,
    pub begin_search: BeginSearch,
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
}

/// One command or subcommand of the table.
#[derive(Debug)]
pub struct CommandSpec {
    /// Lower-case full name as Redis 7 reports it (`get`, `config|get`).
    pub name: &'static str,
    /// Redis arity: positive is exact, negative is a minimum.
    pub arity: i32,
    pub flags: Flags,
    pub acl: AclCategories,
    /// Legacy first/last/step key positions from `COMMAND INFO`.
    pub first_key: i32,
    pub last_key: i32,
    pub step: i32,
    pub key_specs: &'static [KeySpec],
    /// Subcommands of a container command (CONFIG, CLIENT, ...); empty otherwise.
    pub subcommands: &'static [CommandSpec],
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

/// Finds the table entry for a request (descending into subcommands) and
/// checks its arity, without touching any backend.
pub fn lookup(req: &Request) -> Result<&'static CommandSpec, LookupError> {
    let _ = req;
    todo!()
}

/// Every top-level command in the table.
pub fn all() -> &'static [CommandSpec] {
    table::COMMANDS
}
