//! Which commands a service may run at all.
//!
//! Deny by default for whatever would expose or disturb other services'
//! clients or the server itself: administration, replication, monitoring,
//! other databases. A service with `admin = true` may run the
//! administrative commands; the service's own `deny_commands` come on top.

use super::service::Service;
use crate::command::keys::KeysError;
use crate::command::{CommandSpec, Flags};

/// Why a command was refused; shown to the client as `-NOPERM ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Refused for every service that is not `admin`.
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
    ("sync", "it is for replicas"),
    ("psync", "it is for replicas"),
    ("replconf", "it is for replicas"),
    ("cluster", "cluster administration is not proxied"),
    ("readonly", "cluster administration is not proxied"),
    ("readwrite", "cluster administration is not proxied"),
    ("asking", "cluster administration is not proxied"),
    ("acl", "ACLs of the shared server are not proxied"),
    ("client", "it would expose or disturb other clients"),
    ("config", "the shared server's configuration is not proxied"),
    ("module", "it changes the shared server"),
    ("save", "it stalls the shared server"),
    ("bgsave", "it is server administration"),
    ("bgrewriteaof", "it is server administration"),
    ("swapdb", "keygate serves one database"),
    ("move", "keygate serves one database"),
    ("select", "keygate serves one database"),
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

/// Looks `name` up in the forbidden list, subcommand first, then container;
/// worked out once per table name.
fn forbidden_reason(name: &'static str) -> Option<&'static str> {
    static REASONS: std::sync::LazyLock<rustc_hash::FxHashMap<&'static str, Option<&'static str>>> =
        std::sync::LazyLock::new(|| {
            let mut reasons = rustc_hash::FxHashMap::default();
            for spec in crate::command::all() {
                reasons.insert(spec.name, search_forbidden(spec.name));
                for sub in spec.subcommands {
                    reasons.insert(sub.name, search_forbidden(sub.name));
                }
            }
            reasons
        });
    match REASONS.get(name) {
        Some(reason) => *reason,
        None => search_forbidden(name),
    }
}

/// The linear search behind [`forbidden_reason`].
fn search_forbidden(name: &'static str) -> Option<&'static str> {
    let exact = FORBIDDEN.iter().find(|(n, _)| *n == name);
    let container = name
        .split_once('|')
        .and_then(|(c, _)| FORBIDDEN.iter().find(|(n, _)| *n == c));
    exact.or(container).map(|(_, reason)| *reason)
}

/// Whether `service` may run the command at all (before any key rewriting).
pub fn check(service: &Service, spec: &'static CommandSpec) -> Result<(), Refusal> {
    if !service.deny_commands.is_empty() {
        let container = spec.name.split_once('|').map_or(spec.name, |(c, _)| c);
        let denied = service.deny_commands.iter().any(|d| {
            d.eq_ignore_ascii_case(container) || d.replace(' ', "|").eq_ignore_ascii_case(spec.name)
        });
        if denied {
            return Err(Refusal::DeniedForService {
                service: service.name.clone(),
                command: spec.name,
            });
        }
    }
    if service.admin {
        return Ok(());
    }
    if let Some(reason) = forbidden_reason(spec.name) {
        return Err(Refusal::Forbidden {
            command: spec.name,
            reason,
        });
    }
    if spec.flags.contains(Flags::ADMIN) {
        return Err(Refusal::Forbidden {
            command: spec.name,
            reason: "it is server administration",
        });
    }
    Ok(())
}
