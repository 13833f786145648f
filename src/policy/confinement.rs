//! How each command of the table is confined to a namespace: the explicit
//! classification that [`super::namespace::Namespace::rewrite`] follows.
//!
//! Invariant: every command and subcommand of the table has an entry here
//! (a unit test enumerates [`crate::command::all`] to prove it), so a
//! command added to the table cannot slip through: anything without an
//! entry is refused. A command either is confined by its key positions,
//! gets special handling (patterns, channels, keyspace-wide procedures,
//! INFO), has neither keys nor keyspace information (`Pass`), is server
//! administration that only an `admin = true` service may run (forwarded
//! as it is, keys inside still prefixed), or is refused.

use super::keyspace::ProcedureKind;
use crate::command::CommandSpec;

/// What isolation does with one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// No keys and no keyspace-wide information: forwarded unchanged.
    Pass,
    /// Every key at the positions `key_positions` reports gets the prefix.
    Keys,
    /// SORT/SORT_RO: keys, and BY/GET patterns with `*` get the prefix.
    Sort,
    /// COPY: keys, and the `DB` option is refused.
    Copy,
    /// EVAL/FCALL family: declared keys prefixed, only with `allow_scripts`.
    Script,
    /// SCRIPT EXISTS/LOAD/FLUSH/KILL, FUNCTION LIST/STATS: forwarded only
    /// with `allow_scripts` (a flushed script cache only costs other
    /// services a reload on `NOSCRIPT`).
    ScriptAdmin,
    /// FUNCTION LOAD/DELETE/FLUSH/RESTORE/DUMP/KILL: functions are shared by
    /// every service, so forwarded only with `allow_scripts` and `admin`.
    FunctionAdmin,
    /// KEYS: the pattern gets the escaped prefix.
    KeysPattern,
    /// SCAN: MATCH added or replaced with the escaped prefix.
    Scan,
    /// Every argument from `first` on is a channel name.
    Channels { first: usize },
    /// PUBLISH/SPUBLISH: the first argument is a channel, the message is not.
    Publish,
    /// Every argument after the name is a channel pattern.
    Patterns,
    /// PUBSUB CHANNELS/SHARDCHANNELS `[pattern]`: the pattern (or `*`) confined.
    ChannelPattern,
    /// Keyspace-wide commands answered by a procedure over SCAN.
    Keyspace(ProcedureKind),
    /// INFO: forwarded; the `# Keyspace` section is removed from the reply.
    Info,
    /// Server administration: forwarded as it is for an `admin` service
    /// (trusted with the server); refused for the others, with the reason.
    Admin(&'static str),
    /// Administration that names keys (MIGRATE, PFDEBUG): the keys get the
    /// prefix for an `admin` service; refused for the others, with the reason.
    AdminKeys(&'static str),
    /// DEBUG: for an `admin` service, the keys its subcommands name (OBJECT,
    /// DIGEST-VALUE, POPULATE's key prefix, ...) get the prefix; refused
    /// for the others, with the reason.
    Debug(&'static str),
    /// Cannot be confined, whatever the service; the reason is shown to the client.
    Refuse(&'static str),
}

/// Commands with neither keys nor keyspace information.
const PASS: &[&str] = &[
    "acl|cat",
    "acl|genpass",
    "acl|help",
    "acl|whoami",
    "auth",
    "client|getname",
    "client|help",
    "client|id",
    "client|reply",
    "client|setname",
    "command",
    "command|count",
    "command|docs",
    "command|getkeys",
    "command|getkeysandflags",
    "command|help",
    "command|info",
    "command|list",
    "discard",
    "echo",
    "exec",
    "function|help",
    "hello",
    "lolwut",
    "memory|help",
    "multi",
    "object|help",
    "ping",
    "pubsub|help",
    "quit",
    "reset",
    "script|help",
    "time",
    "unwatch",
    "wait",
    "xgroup|help",
    "xinfo|help",
];

/// Commands confined by their key positions alone.
const KEYS: &[&str] = &[
    "append",
    "bitcount",
    "bitfield",
    "bitfield_ro",
    "bitop",
    "bitpos",
    "blmove",
    "blmpop",
    "blpop",
    "brpop",
    "brpoplpush",
    "bzmpop",
    "bzpopmax",
    "bzpopmin",
    "decr",
    "decrby",
    "del",
    "dump",
    "exists",
    "expire",
    "expireat",
    "expiretime",
    "geoadd",
    "geodist",
    "geohash",
    "geopos",
    "georadius",
    "georadius_ro",
    "georadiusbymember",
    "georadiusbymember_ro",
    "geosearch",
    "geosearchstore",
    "get",
    "getbit",
    "getdel",
    "getex",
    "getrange",
    "getset",
    "hdel",
    "hexists",
    "hget",
    "hgetall",
    "hincrby",
    "hincrbyfloat",
    "hkeys",
    "hlen",
    "hmget",
    "hmset",
    "hrandfield",
    "hscan",
    "hset",
    "hsetnx",
    "hstrlen",
    "hvals",
    "incr",
    "incrby",
    "incrbyfloat",
    "lcs",
    "lindex",
    "linsert",
    "llen",
    "lmove",
    "lmpop",
    "lpop",
    "lpos",
    "lpush",
    "lpushx",
    "lrange",
    "lrem",
    "lset",
    "ltrim",
    "memory|usage",
    "mget",
    "move",
    "mset",
    "msetnx",
    "object|encoding",
    "object|freq",
    "object|idletime",
    "object|refcount",
    "persist",
    "pexpire",
    "pexpireat",
    "pexpiretime",
    "pfadd",
    "pfcount",
    "pfmerge",
    "psetex",
    "pttl",
    "rename",
    "renamenx",
    "restore",
    "rpop",
    "rpoplpush",
    "rpush",
    "rpushx",
    "sadd",
    "scard",
    "sdiff",
    "sdiffstore",
    "set",
    "setbit",
    "setex",
    "setnx",
    "setrange",
    "sinter",
    "sintercard",
    "sinterstore",
    "sismember",
    "smembers",
    "smismember",
    "smove",
    "spop",
    "srandmember",
    "srem",
    "sscan",
    "strlen",
    "substr",
    "sunion",
    "sunionstore",
    "touch",
    "ttl",
    "type",
    "unlink",
    "watch",
    "xack",
    "xadd",
    "xautoclaim",
    "xclaim",
    "xdel",
    "xgroup|create",
    "xgroup|createconsumer",
    "xgroup|delconsumer",
    "xgroup|destroy",
    "xgroup|setid",
    "xinfo|consumers",
    "xinfo|groups",
    "xinfo|stream",
    "xlen",
    "xpending",
    "xrange",
    "xread",
    "xreadgroup",
    "xrevrange",
    "xsetid",
    "xtrim",
    "zadd",
    "zcard",
    "zcount",
    "zdiff",
    "zdiffstore",
    "zincrby",
    "zinter",
    "zintercard",
    "zinterstore",
    "zlexcount",
    "zmpop",
    "zmscore",
    "zpopmax",
    "zpopmin",
    "zrandmember",
    "zrange",
    "zrangebylex",
    "zrangebyscore",
    "zrangestore",
    "zrank",
    "zrem",
    "zremrangebylex",
    "zremrangebyrank",
    "zremrangebyscore",
    "zrevrange",
    "zrevrangebylex",
    "zrevrangebyscore",
    "zrevrank",
    "zscan",
    "zscore",
    "zunion",
    "zunionstore",
];

/// Server administration: forwarded for `admin` services, refused for the
/// others with the reason. A container name covers every subcommand not
/// classified on its own.
const ADMIN: &[(&str, &str)] = &[
    ("acl", "the shared server's users are not the service's"),
    ("bgrewriteaof", "it is server administration"),
    ("bgsave", "it is server administration"),
    (
        "config",
        "the shared server's configuration is not the service's",
    ),
    ("failover", "it is server administration"),
    ("lastsave", "it is server administration"),
    ("monitor", "it shows every service's commands"),
    ("latency", "it shows every service's commands"),
    ("memory|doctor", "it shows the whole keyspace"),
    ("memory|malloc-stats", "it shows the whole keyspace"),
    ("memory|purge", "it is server administration"),
    ("memory|stats", "it shows the whole keyspace"),
    ("module", "it changes the shared server"),
    ("pfselftest", "it is a debugging command"),
    (
        "pubsub|numpat",
        "it counts every service's pattern subscriptions",
    ),
    ("replicaof", "it is server administration"),
    ("role", "it is server administration"),
    ("save", "it is server administration"),
    ("shutdown", "it is server administration"),
    ("slaveof", "it is server administration"),
    ("slowlog", "it shows every service's commands"),
];

/// Administration that names keys: their keys get the prefix for `admin`
/// services; refused for the others with the reason.
const ADMIN_KEYS: &[(&str, &str)] = &[
    ("migrate", "it moves keys out of keygate's reach"),
    ("pfdebug", "it is a debugging command"),
];

/// Commands refused for every namespaced service, `admin` or not, with the
/// reason, beyond those [`super::access`] refuses for every service (which
/// would cross databases or turn the shared backend connection into
/// something else). A container name covers every subcommand not
/// classified on its own; a container's own entry ("unknown ...
/// subcommand") is never reached, as a request always names a subcommand.
const REFUSED: &[(&str, &str)] = &[
    ("client", "it shows or changes other services' connections"),
    (
        "select",
        "answered by keygate, never forwarded as a key command",
    ),
    ("swapdb", "it swaps every service's keys between databases"),
    ("function", "unknown FUNCTION subcommand"),
    ("memory", "unknown MEMORY subcommand"),
    ("object", "unknown OBJECT subcommand"),
    ("pubsub", "unknown PUBSUB subcommand"),
    ("restore-asking", "cluster commands are not proxied"),
    ("script", "unknown SCRIPT subcommand"),
    ("xgroup", "unknown XGROUP subcommand"),
    ("xinfo", "unknown XINFO subcommand"),
];

/// The rule for the command with the table's full name (`get`, `pubsub|channels`).
pub fn rule(name: &str) -> Rule {
    match crate::command::find_by_full_name(name.as_bytes()) {
        Some(spec) if spec.name == name => rule_of(spec),
        _ => classify(name),
    }
}

/// The rule for a command of the table: one indexed load, since every
/// command's rule is worked out once, by [`crate::command::dense_index`]
/// (the lists below are searched linearly, which is fine once but not on
/// every request).
pub fn rule_of(spec: &CommandSpec) -> Rule {
    static RULES: std::sync::LazyLock<Vec<Rule>> = std::sync::LazyLock::new(|| {
        crate::command::every_spec()
            .map(|spec| classify(spec.name))
            .collect()
    });
    crate::command::dense_index(spec)
        .and_then(|i| RULES.get(i).copied())
        .unwrap_or_else(|| classify(spec.name))
}

/// The rule of one command, from the lists below.
fn classify(name: &str) -> Rule {
    if let Some(reason) = super::access::refused_for_everyone(name) {
        return Rule::Refuse(reason);
    }
    match name {
        "sort" | "sort_ro" => return Rule::Sort,
        "copy" => return Rule::Copy,
        "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro" => {
            return Rule::Script
        }
        "script|exists" | "script|load" | "script|flush" | "script|kill" | "function|list"
        | "function|stats" => return Rule::ScriptAdmin,
        "function|load" | "function|delete" | "function|flush" | "function|restore"
        | "function|dump" | "function|kill" => return Rule::FunctionAdmin,
        "debug" => return Rule::Debug("it reads any key and the whole server"),
        "keys" => return Rule::KeysPattern,
        "scan" => return Rule::Scan,
        "subscribe" | "unsubscribe" | "ssubscribe" | "sunsubscribe" => {
            return Rule::Channels { first: 1 }
        }
        "publish" | "spublish" => return Rule::Publish,
        "psubscribe" | "punsubscribe" => return Rule::Patterns,
        "pubsub|numsub" | "pubsub|shardnumsub" => return Rule::Channels { first: 2 },
        "pubsub|channels" | "pubsub|shardchannels" => return Rule::ChannelPattern,
        "randomkey" => return Rule::Keyspace(ProcedureKind::RandomKey),
        "dbsize" => return Rule::Keyspace(ProcedureKind::DbSize),
        "flushdb" | "flushall" => return Rule::Keyspace(ProcedureKind::Flush),
        "info" => return Rule::Info,
        _ => {}
    }
    if PASS.contains(&name) {
        return Rule::Pass;
    }
    if KEYS.contains(&name) {
        return Rule::Keys;
    }
    // A command's own entry first, then its container's.
    let container = name.split_once('|').map(|(c, _)| c);
    for wanted in std::iter::once(name).chain(container) {
        if let Some((_, reason)) = ADMIN.iter().find(|(n, _)| *n == wanted) {
            return Rule::Admin(reason);
        }
        if let Some((_, reason)) = ADMIN_KEYS.iter().find(|(n, _)| *n == wanted) {
            return Rule::AdminKeys(reason);
        }
        if let Some((_, reason)) = REFUSED.iter().find(|(n, _)| *n == wanted) {
            return Rule::Refuse(reason);
        }
    }
    Rule::Refuse(UNCLASSIFIED)
}

/// Refusals beyond the per-command rules: an option, a name or a context a
/// namespaced service cannot use, with the reason (shown in the README's
/// list after the rules).
pub const OTHER_REFUSALS: &[(&str, &str)] = &[
    ("`COPY ... DB`", "keygate serves one database"),
    (
        "PUBLISH to, and PUBSUB NUMSUB/CHANNELS of, `__keyevent@` channels",
        "keyevent notifications carry other services' key names (subscribing is allowed: only the service's keys reach it)",
    ),
    (
        "`__keyspace@` channels and patterns without a literal database number",
        "the key part is confined only after `__keyspace@<db>__:`",
    ),
    (
        "DBSIZE, RANDOMKEY, FLUSHDB and FLUSHALL inside MULTI",
        "they run as procedures of several commands",
    ),
    (
        "SORT BY/GET patterns under a prefix holding `*` or a NUL byte",
        "Redis substitutes at the first `*`, which would be the prefix's",
    ),
    (
        "a request whose keys cannot be located",
        "a key keygate cannot find is a key it cannot confine (Redis's own error text)",
    ),
];

/// Who a rule refuses a command to, and why; `None` for a rule that
/// confines the command for every namespaced service.
fn refused_to(rule: Rule) -> Option<(&'static str, &'static str)> {
    match rule {
        // A container's own entry: never reached.
        Rule::Refuse(reason) if reason.starts_with("unknown ") => None,
        Rule::Refuse(reason) => Some(("every namespaced service", reason)),
        Rule::Admin(reason) | Rule::AdminKeys(reason) | Rule::Debug(reason) => {
            Some(("services without `admin = true`", reason))
        }
        Rule::Script => Some((
            "services without `allow_scripts = true`",
            "a script can compute any key name",
        )),
        Rule::ScriptAdmin => Some((
            "services without `allow_scripts = true`",
            "the service is not trusted with scripts",
        )),
        Rule::FunctionAdmin => Some((
            "services without both `allow_scripts` and `admin`",
            "functions are shared by every service",
        )),
        _ => None,
    }
}

/// The README's list of what a namespaced service is refused, made from the
/// rules above (a test keeps the README's copy equal to it): one row per
/// command, a container's subcommands that share a refusal in one row.
pub fn refusals_markdown() -> String {
    let display = |name: &str| name.replace('|', " ").to_uppercase();
    let mut rows: Vec<(&'static str, String, &'static str)> = Vec::new();
    for base in crate::command::all() {
        if !base.is_container() {
            if let Some((who, why)) = refused_to(rule(base.name)) {
                rows.push((who, format!("`{}`", display(base.name)), why));
            }
            continue;
        }
        let refusals: Vec<(&CommandSpec, Option<(&str, &str)>)> = base
            .subcommands
            .iter()
            .map(|sub| (sub, refused_to(rule(sub.name))))
            .collect();
        // The refusal most subcommands share becomes the container's row.
        let common = refusals
            .iter()
            .filter_map(|(_, r)| *r)
            .max_by_key(|r| refusals.iter().filter(|(_, o)| *o == Some(*r)).count())
            .filter(|r| refusals.iter().filter(|(_, o)| *o == Some(*r)).count() > 1);
        if let Some((who, why)) = common {
            let others: Vec<String> = refusals
                .iter()
                .filter(|(_, r)| *r != common)
                .map(|(sub, _)| display(sub.name.split_once('|').map_or("", |(_, s)| s)))
                .collect();
            let name = display(base.name);
            let command = if others.is_empty() {
                format!("`{name}` (every subcommand)")
            } else {
                format!("`{name}` (every subcommand but {})", others.join(", "))
            };
            rows.push((who, command, why));
        }
        for (sub, refusal) in &refusals {
            if let Some((who, why)) = refusal.filter(|r| Some(*r) != common) {
                rows.push((who, format!("`{}`", display(sub.name)), why));
            }
        }
    }
    let order = |who: &str| {
        [
            "every namespaced service",
            "services without `admin = true`",
            "services without `allow_scripts = true`",
            "services without both `allow_scripts` and `admin`",
        ]
        .iter()
        .position(|w| *w == who)
    };
    rows.sort_by_cached_key(|(who, command, _)| (order(who), command.replace('`', "")));
    let mut out = String::from("| Refused | to | why |\n|---|---|---|\n");
    for (who, command, why) in rows {
        out.push_str(&format!("| {command} | {who} | {why} |\n"));
    }
    for (what, why) in OTHER_REFUSALS {
        out.push_str(&format!("| {what} | every namespaced service | {why} |\n"));
    }
    out
}

/// The reason given for a command this module has no entry for.
pub const UNCLASSIFIED: &str = "keygate has not classified this command for isolation";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{self, KeySpecFlags};

    fn every_spec() -> Vec<&'static CommandSpec> {
        command::all()
            .iter()
            .flat_map(|c| std::iter::once(c).chain(c.subcommands.iter()))
            .collect()
    }

    #[test]
    fn the_rule_table_agrees_with_the_lists() {
        for spec in every_spec() {
            assert_eq!(rule_of(spec), classify(spec.name), "{}", spec.name);
            assert_eq!(rule(spec.name), classify(spec.name), "{}", spec.name);
        }
        assert_eq!(rule("no-such-command"), Rule::Refuse(UNCLASSIFIED));
    }

    #[test]
    fn every_command_is_classified() {
        let unclassified: Vec<&str> = every_spec()
            .into_iter()
            .map(|s| s.name)
            .filter(|n| rule(n) == Rule::Refuse(UNCLASSIFIED))
            .collect();
        assert!(unclassified.is_empty(), "unclassified: {unclassified:?}");
    }

    #[test]
    fn every_entry_names_a_command() {
        let names: Vec<&str> = every_spec().iter().map(|s| s.name).collect();
        for n in PASS
            .iter()
            .chain(KEYS.iter())
            .chain(REFUSED.iter().map(|(n, _)| n))
            .chain(ADMIN.iter().map(|(n, _)| n))
            .chain(ADMIN_KEYS.iter().map(|(n, _)| n))
        {
            assert!(names.contains(n), "{n} is not in the table");
        }
    }

    #[test]
    fn commands_with_keys_are_never_passed_unchanged() {
        for spec in every_spec() {
            let has_keys = spec
                .key_specs
                .iter()
                .any(|ks| !ks.flags.contains(KeySpecFlags::NOT_KEY));
            if has_keys {
                assert_ne!(rule(spec.name), Rule::Pass, "{} has keys", spec.name);
            }
        }
    }

    /// The README lists what a namespaced service is refused, and nothing
    /// else: its list is the one the rules make.
    #[test]
    fn the_readme_lists_every_refusal() {
        let readme = include_str!("../../README.md");
        let begin = "<!-- refusals: begin -->\n";
        let end = "<!-- refusals: end -->";
        let listed = readme
            .split_once(begin)
            .and_then(|(_, rest)| rest.split_once(end))
            .map(|(list, _)| list);
        assert_eq!(
            listed,
            Some(refusals_markdown().as_str()),
            "README.md's list of refusals is stale; between the markers it should read:\n{}",
            refusals_markdown()
        );
    }

    #[test]
    fn entries_of_the_keys_list_have_keys() {
        for name in KEYS {
            let spec = command::find_by_full_name(name.as_bytes()).expect("in table");
            let has_keys = spec
                .key_specs
                .iter()
                .any(|ks| !ks.flags.contains(KeySpecFlags::NOT_KEY));
            assert!(has_keys, "{name} has no keys");
        }
    }
}
