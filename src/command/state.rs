//! Commands that change the state of the connection they run on, and what
//! keygate does with each: answer it per client, move the client to a
//! dedicated connection, or refuse it.
//!
//! Invariant: no command listed here is ever written to a shared
//! multiplexed connection, for any service (admin or not, namespaced or
//! not). A shared connection carries many clients' commands; state left on
//! it (a MONITOR stream, tracking, a transaction, a subscription, replies
//! switched off) would be every one of those clients' state. The client
//! loop checks [`treatment`] before it puts a request in a shared batch.
//!
//! The list is data, checked against the command table by a test: every
//! command the table says touches its connection (the `@connection` and
//! `@transaction` ACL categories, the `blocking` and `pubsub` flags, and
//! replication) is either here or in [`STATELESS`] with the reason it may
//! share, so a command added to the table cannot slip through unclassified.

use std::sync::LazyLock;

use super::{every_spec, CommandSpec, Flags};

/// What keygate does with a command that changes its connection's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Treatment {
    /// keygate answers or emulates it per client from its own state; it is
    /// never forwarded (inside MULTI, where it would run at EXEC on the
    /// transaction's connection, it is refused).
    Local,
    /// It runs on the client's own dedicated connection, leased for it and
    /// kept while the state lives (closed, not pooled, when the state may
    /// outlive the client).
    Dedicated,
    /// Refused for every service, admin ones included.
    Refused,
    /// The connection's database: keygate keeps it per client. Shared
    /// connections carry one database each and the client's requests go to
    /// those of its database; its dedicated connection is switched to it
    /// (inside MULTI, the SELECT is queued there and takes effect at EXEC).
    /// Never written to a shared connection (only their handshake selects).
    Database,
}

use Treatment::{Database, Dedicated, Local, Refused};

/// Every state-changing command with its treatment and why, by the command
/// table's full name.
pub const TREATMENTS: &[(&str, Treatment, &str)] = &[
    // Who the client is and how it speaks: keygate's per-client session.
    ("auth", Local, "logs the client in as a service"),
    (
        "hello",
        Local,
        "protocol version, login and name of the client",
    ),
    (
        "reset",
        Local,
        "resets the client's session; drops its dedicated connection",
    ),
    ("quit", Local, "closes the client's connection"),
    (
        "select",
        Database,
        "per client: connections of its database, its dedicated one switched",
    ),
    (
        "client|setname",
        Local,
        "the client's name in keygate's table",
    ),
    (
        "client|getname",
        Local,
        "the client's name in keygate's table",
    ),
    ("client|id", Local, "keygate's own client id"),
    (
        "client|reply",
        Local,
        "keygate drops the replies the client turned off",
    ),
    (
        "client|no-evict",
        Local,
        "accepted and ignored: keygate's clients are not Redis's",
    ),
    ("client|list", Local, "keygate's table of clients"),
    ("client|info", Local, "keygate's table of clients"),
    ("client|kill", Local, "closes keygate's clients"),
    (
        "client|unblock",
        Local,
        "keygate's client ids; the backend id of its dedicated connection is unblocked",
    ),
    // Cluster connection flags: Redis without cluster refuses them with
    // this text, which keygate gives itself (a backend never in cluster mode).
    ("readonly", Local, "answered as a non-cluster Redis does"),
    ("readwrite", Local, "answered as a non-cluster Redis does"),
    ("asking", Local, "answered as a non-cluster Redis does"),
    // State that lives on the backend connection: the client holds one.
    ("multi", Dedicated, "opens a transaction"),
    ("exec", Dedicated, "ends the transaction"),
    ("discard", Dedicated, "ends the transaction"),
    ("watch", Dedicated, "watches keys"),
    ("unwatch", Dedicated, "forgets watched keys"),
    ("subscribe", Dedicated, "makes the connection a push stream"),
    (
        "psubscribe",
        Dedicated,
        "makes the connection a push stream",
    ),
    (
        "ssubscribe",
        Dedicated,
        "makes the connection a push stream",
    ),
    ("unsubscribe", Dedicated, "ends subscriptions"),
    ("punsubscribe", Dedicated, "ends subscriptions"),
    ("sunsubscribe", Dedicated, "ends subscriptions"),
    (
        "monitor",
        Dedicated,
        "makes the connection a push stream (admin services)",
    ),
    (
        "client|tracking",
        Dedicated,
        "tracking state and invalidations of the client",
    ),
    ("client|caching", Dedicated, "tracking state of the client"),
    (
        "client|getredir",
        Dedicated,
        "tracking state (answered -1 without tracking)",
    ),
    (
        "client|trackinginfo",
        Dedicated,
        "tracking state (answered `off` without tracking)",
    ),
    ("wait", Dedicated, "blocks its connection"),
    ("blpop", Dedicated, "blocks its connection"),
    ("brpop", Dedicated, "blocks its connection"),
    ("brpoplpush", Dedicated, "blocks its connection"),
    ("blmove", Dedicated, "blocks its connection"),
    ("blmpop", Dedicated, "blocks its connection"),
    ("bzpopmin", Dedicated, "blocks its connection"),
    ("bzpopmax", Dedicated, "blocks its connection"),
    ("bzmpop", Dedicated, "blocks its connection"),
    ("xread", Dedicated, "with BLOCK it blocks its connection"),
    (
        "xreadgroup",
        Dedicated,
        "with BLOCK it blocks its connection",
    ),
    // A replication stream would take the connection over.
    (
        "sync",
        Refused,
        "it makes the connection a replication stream",
    ),
    (
        "psync",
        Refused,
        "it makes the connection a replication stream",
    ),
    ("replconf", Refused, "it is for replicas"),
];

/// Commands the table puts among the connection's (`@connection`,
/// `@transaction`, `pubsub`, `no-multi`) that leave no state on it, with why they may
/// share a connection.
pub const STATELESS: &[(&str, &str)] = &[
    ("ping", "answers only"),
    ("echo", "answers only"),
    ("command", "reads the command table"),
    ("command|count", "reads the command table"),
    ("command|docs", "reads the command table"),
    ("command|getkeys", "reads the command table"),
    ("command|getkeysandflags", "reads the command table"),
    ("command|help", "reads the command table"),
    ("command|info", "reads the command table"),
    ("command|list", "reads the command table"),
    ("client", "the container; each subcommand is classified"),
    ("client|help", "answers only"),
    (
        "client|pause",
        "server-wide, not the connection's (admin services)",
    ),
    (
        "client|unpause",
        "server-wide, not the connection's (admin services)",
    ),
    (
        "publish",
        "sends a message; the publisher's connection is unchanged",
    ),
    (
        "spublish",
        "sends a message; the publisher's connection is unchanged",
    ),
    ("pubsub", "the container; each subcommand reads only"),
    ("pubsub|channels", "reads the server's channels"),
    ("pubsub|help", "answers only"),
    ("pubsub|numpat", "reads the server's channels"),
    ("pubsub|numsub", "reads the server's channels"),
    ("pubsub|shardchannels", "reads the server's channels"),
    ("pubsub|shardnumsub", "reads the server's channels"),
    (
        "save",
        "server-wide (admin services); `no-multi` only keeps it out of MULTI",
    ),
    (
        "shutdown",
        "server-wide (admin services); `no-multi` only keeps it out of MULTI",
    ),
];

/// Whether the command table marks `spec` as one that may touch its
/// connection: what [`TREATMENTS`] and [`STATELESS`] must cover between them.
pub fn touches_connection(spec: &CommandSpec) -> bool {
    use super::AclCategories as Acl;
    spec.acl.contains(Acl::CONNECTION)
        || spec.acl.contains(Acl::TRANSACTION)
        || spec.flags.contains(Flags::BLOCKING)
        || spec.flags.contains(Flags::PUBSUB)
        || spec.flags.contains(Flags::NO_MULTI)
        || matches!(spec.name, "monitor" | "sync" | "psync" | "replconf")
}

/// The treatments by [`super::dense_index`], built once.
static BY_INDEX: LazyLock<Vec<Option<Treatment>>> = LazyLock::new(|| {
    every_spec()
        .map(|spec| {
            TREATMENTS
                .iter()
                .find(|(name, _, _)| *name == spec.name)
                .map(|(_, t, _)| *t)
        })
        .collect()
});

/// The treatment of `spec`, or `None` when it leaves no state on its
/// connection and may share one.
pub fn treatment(spec: &CommandSpec) -> Option<Treatment> {
    match super::dense_index(spec) {
        Some(i) => BY_INDEX.get(i).copied().flatten(),
        // Not the table's own spec (never in practice): look it up by name.
        None => TREATMENTS
            .iter()
            .find(|(name, _, _)| *name == spec.name)
            .map(|(_, t, _)| *t),
    }
}

/// Why `spec` is refused for everyone, if it is.
pub fn refusal_reason(spec: &CommandSpec) -> Option<&'static str> {
    TREATMENTS
        .iter()
        .find(|(name, t, _)| *name == spec.name && *t == Refused)
        .map(|(_, _, why)| *why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::find_by_full_name;

    #[test]
    fn every_command_that_touches_its_connection_has_a_treatment() {
        let mut missing = Vec::new();
        for spec in every_spec() {
            let treated = TREATMENTS.iter().any(|(n, _, _)| *n == spec.name);
            let stateless = STATELESS.iter().any(|(n, _)| *n == spec.name);
            assert!(
                !(treated && stateless),
                "{} is both treated and stateless",
                spec.name
            );
            if touches_connection(spec) && !treated && !stateless {
                missing.push(spec.name);
            }
        }
        assert!(
            missing.is_empty(),
            "commands that touch their connection without a treatment: {missing:?}"
        );
    }

    #[test]
    fn every_listed_command_is_in_the_table_once() {
        let names = TREATMENTS
            .iter()
            .map(|(n, _, _)| *n)
            .chain(STATELESS.iter().map(|(n, _)| *n));
        let mut seen = std::collections::HashSet::new();
        for name in names {
            assert!(
                find_by_full_name(name.as_bytes()).is_some(),
                "{name} is not in the command table"
            );
            assert!(seen.insert(name), "{name} is listed twice");
        }
    }

    #[test]
    fn the_index_agrees_with_the_list() {
        for spec in every_spec() {
            let listed = TREATMENTS
                .iter()
                .find(|(n, _, _)| *n == spec.name)
                .map(|(_, t, _)| *t);
            assert_eq!(treatment(spec), listed, "{}", spec.name);
        }
        let spec = |n: &str| find_by_full_name(n.as_bytes()).expect("in table");
        assert_eq!(treatment(spec("monitor")), Some(Dedicated));
        assert_eq!(treatment(spec("client|tracking")), Some(Dedicated));
        assert_eq!(treatment(spec("client|reply")), Some(Local));
        assert_eq!(treatment(spec("select")), Some(Database));
        assert_eq!(treatment(spec("sync")), Some(Refused));
        assert_eq!(treatment(spec("get")), None);
        assert!(refusal_reason(spec("psync")).is_some());
        assert!(refusal_reason(spec("monitor")).is_none());
    }
}
