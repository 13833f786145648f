//! Which commands a service may run at all.
//!
//! Deny by default for whatever would expose or disturb other services'
//! clients or the server itself: administration, replication, monitoring,
//! other databases. A service with `admin = true` is trusted with the
//! server and may run the administrative commands, except what would break
//! the shared backend connection it runs on ([`NEVER`], refused for every
//! service); the service's own
//! `deny_commands` come on top.

use super::service::Service;
use crate::command::keys::KeysError;
use crate::command::{self, CommandSpec, Flags};

/// Why a command was refused; shown to the client as `-NOPERM ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Refused for every service that is not `admin` (or for every service).
    #[error("NOPERM keygate does not allow '{command}': {reason}")]
    Forbidden {
        command: &'static str,
        reason: &'static str,
    },
    /// Refused by the service's `deny_commands`.
    #[error("NOPERM keygate: service '{service}' may not run '{command}'")]
    DeniedForService {
        service: String,
        command: &'static str,
    },
    /// The service is namespaced and the command cannot be confined to it.
    #[error("NOPERM keygate: '{command}' cannot be confined to the namespace of service '{service}': {reason}")]
    Isolation {
        command: &'static str,
        service: String,
        reason: &'static str,
    },
    /// The request's keys cannot be located, so they cannot be confined.
    #[error("{0}")]
    Unlocatable(KeysError),
}

/// Commands refused for every service, admin or not, with the reason: they
/// turn the shared backend connection into something else (a replication
/// stream, a cluster client, a script debugging session) or reach another
/// database. Matched like [`FORBIDDEN`].
const NEVER: &[(&str, &str)] = &[
    ("sync", "it is for replicas"),
    ("psync", "it is for replicas"),
    ("replconf", "it is for replicas"),
    ("cluster", "cluster commands are not proxied"),
    ("readonly", "cluster commands are not proxied"),
    ("readwrite", "cluster commands are not proxied"),
    ("asking", "cluster commands are not proxied"),
    (
        "script|debug",
        "it turns the shared backend connection into a debugging session",
    ),
];

/// ACL subcommands every service may run: they show nothing of the
/// server's users (keygate answers ACL WHOAMI itself, with the service's name).
///
/// A client's own tracking state (client-side caching) is harmless too: it
/// lives on the client's own dedicated connection.
const HARMLESS: &[&str] = &[
    "acl|cat",
    "acl|genpass",
    "acl|help",
    "acl|whoami",
    "client|tracking",
    "client|caching",
    "client|getredir",
    "client|trackinginfo",
];

/// Commands refused for everybody but admin services, with the reason.
/// Matched on the table's lower-case full names; a container name covers
/// every subcommand not listed on its own.
const FORBIDDEN: &[(&str, &str)] = &[
    ("monitor", "it shows every service's commands"),
    ("debug", "it can crash or stall the shared server"),
    ("shutdown", "it stops the shared server"),
    ("replicaof", "it changes replication of the shared server"),
    ("slaveof", "it changes replication of the shared server"),
    ("failover", "it changes replication of the shared server"),
    ("acl", "ACLs of the shared server are not proxied"),
    ("client", "it would expose or disturb other clients"),
    ("config", "the shared server's configuration is not proxied"),
    ("module", "it changes the shared server"),
    ("save", "it stalls the shared server"),
    ("bgsave", "it is server administration"),
    ("bgrewriteaof", "it is server administration"),
    ("swapdb", "it swaps every service's keys between databases"),
    ("latency", "it is server administration"),
    ("slowlog", "it shows every service's commands"),
    ("memory|doctor", "it is server administration"),
    ("memory|malloc-stats", "it is server administration"),
    ("memory|purge", "it is server administration"),
    ("memory|stats", "it is server administration"),
    ("pfdebug", "it is a debugging command"),
    ("pfselftest", "it is a debugging command"),
    ("sentinel", "Sentinel is keygate's job"),
    ("role", "the topology is keygate's job"),
    ("lastsave", "it is server administration"),
];

/// Why a command is refused for every service, admin or not ([`NEVER`]).
pub fn refused_for_everyone(name: &str) -> Option<&'static str> {
    search(NEVER, name)
}

/// The linear search of a list, subcommand first, then container.
fn search(list: &[(&'static str, &'static str)], name: &str) -> Option<&'static str> {
    let exact = list.iter().find(|(n, _)| *n == name);
    let container = name
        .split_once('|')
        .and_then(|(c, _)| list.iter().find(|(n, _)| *n == c));
    exact.or(container).map(|(_, reason)| *reason)
}

/// What [`check`] answers for one command and one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// The command may run.
    Allowed,
    /// The service's `deny_commands` names it.
    Denied,
    /// Refused for non-admin services, with the reason.
    Forbidden(&'static str),
}

/// One service's decision for every command of the table, by
/// [`command::dense_index`]: worked out when the service is built (also by a
/// reload), so a request's check is one indexed load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessTable {
    decisions: Vec<Decision>,
}

impl AccessTable {
    /// The decisions of a service with these `deny_commands` and `admin` setting.
    pub fn new(deny_commands: &[String], admin: bool) -> AccessTable {
        AccessTable {
            decisions: command::every_spec()
                .map(|spec| decide(deny_commands, admin, spec))
                .collect(),
        }
    }
}

/// The decision for one command, from the lists above and the service's settings.
fn decide(deny_commands: &[String], admin: bool, spec: &'static CommandSpec) -> Decision {
    let container = spec.name.split_once('|').map_or(spec.name, |(c, _)| c);
    let denied = deny_commands.iter().any(|d| {
        d.eq_ignore_ascii_case(container) || d.replace(' ', "|").eq_ignore_ascii_case(spec.name)
    });
    if denied {
        return Decision::Denied;
    }
    if let Some(reason) = search(NEVER, spec.name) {
        return Decision::Forbidden(reason);
    }
    if admin || HARMLESS.contains(&spec.name) {
        return Decision::Allowed;
    }
    if let Some(reason) = search(FORBIDDEN, spec.name) {
        return Decision::Forbidden(reason);
    }
    if spec.flags.contains(Flags::ADMIN) {
        return Decision::Forbidden("it is server administration");
    }
    Decision::Allowed
}

/// Whether `service` may run the command at all (before any key rewriting).
pub fn check(service: &Service, spec: &'static CommandSpec) -> Result<(), Refusal> {
    let decision = command::dense_index(spec)
        .and_then(|i| service.access.decisions.get(i).copied())
        .unwrap_or_else(|| decide(&service.deny_commands, service.admin, spec));
    match decision {
        Decision::Allowed => Ok(()),
        Decision::Denied => Err(Refusal::DeniedForService {
            service: service.name.clone(),
            command: spec.name,
        }),
        Decision::Forbidden(reason) => Err(Refusal::Forbidden {
            command: spec.name,
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_agrees_with_deciding_each_time() {
        let deny = vec!["FLUSHALL".to_string(), "OBJECT FREQ".to_string()];
        for admin in [false, true] {
            let table = AccessTable::new(&deny, admin);
            for (i, spec) in command::every_spec().enumerate() {
                assert_eq!(table.decisions.get(i), Some(&decide(&deny, admin, spec)));
            }
        }
    }

    #[test]
    fn decisions() {
        let deny = vec!["FLUSHALL".to_string(), "OBJECT FREQ".to_string()];
        let spec = |name: &str| command::find_by_full_name(name.as_bytes()).expect("in table");
        assert_eq!(decide(&deny, false, spec("get")), Decision::Allowed);
        assert_eq!(decide(&deny, true, spec("flushall")), Decision::Denied);
        assert_eq!(decide(&deny, false, spec("object|freq")), Decision::Denied);
        assert_eq!(
            decide(&deny, false, spec("object|encoding")),
            Decision::Allowed
        );
        assert!(matches!(
            decide(&deny, false, spec("config|get")),
            Decision::Forbidden(_)
        ));
        assert_eq!(decide(&deny, true, spec("config|get")), Decision::Allowed);
        assert!(matches!(
            decide(&[], false, spec("memory|stats")),
            Decision::Forbidden(_)
        ));
        // Trusted with the server, but not with the shared connection.
        for name in [
            "sync",
            "psync",
            "replconf",
            "cluster|info",
            "readonly",
            "script|debug",
        ] {
            assert!(
                matches!(decide(&[], true, spec(name)), Decision::Forbidden(_)),
                "{name}"
            );
        }
        assert!(matches!(
            decide(&[], false, spec("acl|list")),
            Decision::Forbidden(_)
        ));
        assert_eq!(decide(&[], true, spec("acl|list")), Decision::Allowed);
        for name in ["acl|cat", "acl|genpass", "acl|whoami", "acl|help"] {
            assert_eq!(decide(&[], false, spec(name)), Decision::Allowed, "{name}");
        }
    }
}
