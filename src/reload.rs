//! Hot reload: re-reading the config file on SIGHUP or `POST /reload`.
//!
//! What a reload changes: the `[[service]]` list (names, passwords,
//! prefixes, isolation, TTL policy, limits, deny lists, read policy). The new
//! services are put in force by swapping the client context's
//! [`ServiceRegistry`](crate::policy::registry::ServiceRegistry); no
//! connection is dropped, and each client follows on its next command.
//!
//! What it does not change: `[proxy]` and `[backend]` (listeners, workers,
//! backend address, Sentinel set, timeouts, ...) are read once at start. A
//! reload that changes them still applies its services, and logs one
//! warning naming each such key as "requires restart"; the running values
//! stay in force. Keys are compared as written in the file, so adding a key
//! set to its default value is also reported.
//!
//! Invariants: a new config is validated whole before anything changes; an
//! invalid one changes nothing, is logged with its key and line, counted in
//! `keygate_config_reload_failures_total` and shown in `/health`. Reloads are
//! serialized, so generations rise one at a time.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::client::Context;
use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::policy::service::Services;

/// The sections read only at start.
const RESTART_SECTIONS: [&str; 2] = ["proxy", "backend"];

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// keygate was given its config as text, not as a file.
    #[error("keygate was not started from a config file; nothing to reload")]
    NoConfigFile,
    /// The proxy is not serving yet.
    #[error("the proxy is not running yet")]
    NotRunning,
    /// The new config is unreadable or invalid; the old one stays in force.
    #[error("invalid config {path}:\n{source}")]
    Invalid {
        /// The config file.
        path: String,
        /// Every problem, with key and line, as `--check` prints them.
        #[source]
        source: ConfigError,
    },
}

/// What an applied reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// The registry generation now in force.
    pub generation: u64,
    /// How many services are in force.
    pub services: usize,
    /// `section.key` names whose change needs a restart (not applied).
    pub requires_restart: Vec<String>,
}

impl ReloadReport {
    /// The JSON `POST /reload` answers with.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "ok": true,
            "generation": self.generation,
            "services": self.services,
            "requires_restart": self.requires_restart,
        })
    }
}

/// The outcome of the last reload, for `/health`.
#[derive(Debug, Clone)]
struct LastReload {
    at_unix_seconds: u64,
    outcome: Result<ReloadReport, String>,
}

/// Where reloads read from, and how the last one went.
#[derive(Debug, Default)]
pub struct Reloader {
    /// The config file, once the binary (or a test) names it.
    path: OnceLock<PathBuf>,
    /// The start-only sections as the file had them at start.
    started_with: OnceLock<toml::Table>,
    /// The last outcome; also serializes reloads.
    last: Mutex<Option<LastReload>>,
}

impl Reloader {
    /// Reloads will read `path`; its current start-only sections become the
    /// baseline for "requires restart". Only the first call counts.
    pub fn set_path(&self, path: PathBuf) {
        if let Some(table) = read_table(&path) {
            let _ = self.started_with.set(table);
        }
        let _ = self.path.set(path);
    }

    /// The config file reloads read, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.get().map(PathBuf::as_path)
    }

    /// Re-reads the config file and puts its services in force in `ctx`, or
    /// changes nothing and records why.
    pub fn reload(
        &self,
        ctx: Option<&Context>,
        metrics: &Metrics,
    ) -> Result<ReloadReport, ReloadError> {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let result = self.apply(ctx);
        match &result {
            Ok(report) => {
                tracing::info!(
                    generation = report.generation,
                    services = report.services,
                    "config reloaded"
                );
                if !report.requires_restart.is_empty() {
                    tracing::warn!(
                        keys = %report.requires_restart.join(", "),
                        "config reload: these settings require a restart; the running values stay in force"
                    );
                }
            }
            Err(error) => {
                metrics.config_reload_failure();
                tracing::error!(
                    "config reload failed; the previous config stays in force: {error}"
                );
            }
        }
        *last = Some(LastReload {
            at_unix_seconds: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            outcome: result.as_ref().map_err(ToString::to_string).cloned(),
        });
        result
    }

    fn apply(&self, ctx: Option<&Context>) -> Result<ReloadReport, ReloadError> {
        let path = self.path.get().ok_or(ReloadError::NoConfigFile)?;
        let ctx = ctx.ok_or(ReloadError::NotRunning)?;
        let config = Config::load(path).map_err(|source| ReloadError::Invalid {
            path: path.display().to_string(),
            source,
        })?;
        let requires_restart = match (self.started_with.get(), read_table(path)) {
            (Some(before), Some(now)) => changed_restart_keys(before, &now),
            _ => Vec::new(),
        };
        let metrics_slot = |name: &str| ctx.metrics.slot_for(name);
        let services = Services::reloaded(
            &config,
            &ctx.services.current(),
            &metrics_slot,
            ctx.config.backend.dedicated_max,
        );
        let report = ReloadReport {
            generation: services.generation(),
            services: services.all().len(),
            requires_restart,
        };
        ctx.services.replace(services);
        Ok(report)
    }

    /// The `last_reload` field of `/health`: `null` before any reload.
    pub fn status_json(&self) -> serde_json::Value {
        let last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match last.as_ref() {
            None => serde_json::Value::Null,
            Some(LastReload {
                at_unix_seconds,
                outcome: Ok(report),
            }) => serde_json::json!({
                "ok": true,
                "at": at_unix_seconds,
                "generation": report.generation,
                "requires_restart": report.requires_restart,
            }),
            Some(LastReload {
                at_unix_seconds,
                outcome: Err(error),
            }) => serde_json::json!({
                "ok": false,
                "at": at_unix_seconds,
                "error": error,
            }),
        }
    }
}

/// The file as a TOML table, or `None` when unreadable (validation reports why).
fn read_table(path: &Path) -> Option<toml::Table> {
    let text = std::fs::read_to_string(path).ok()?;
    text.parse::<toml::Table>().ok()
}

/// `section.key` for every key of the start-only sections that differs
/// between `before` and `now` (added, removed or changed), sorted.
fn changed_restart_keys(before: &toml::Table, now: &toml::Table) -> Vec<String> {
    let empty = toml::Table::new();
    let mut changed = Vec::new();
    for section in RESTART_SECTIONS {
        let old = before.get(section).and_then(toml::Value::as_table);
        let new = now.get(section).and_then(toml::Value::as_table);
        let (old, new) = (old.unwrap_or(&empty), new.unwrap_or(&empty));
        let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            if old.get(key) != new.get(key) {
                changed.push(format!("{section}.{key}"));
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().expect("toml")
    }

    #[test]
    fn names_changed_start_only_keys() {
        let before = table(
            "[proxy]\nlisten = \"a:1\"\nmax_clients = 5\n[backend]\naddress = \"b:1\"\n[[service]]\nname = \"x\"\n",
        );
        let now = table(
            "[proxy]\nlisten = \"a:2\"\nmax_clients = 5\nworkers = 2\n[backend]\naddress = \"b:1\"\n[[service]]\nname = \"y\"\n",
        );
        assert_eq!(
            changed_restart_keys(&before, &now),
            vec!["proxy.listen".to_string(), "proxy.workers".to_string()]
        );
    }

    #[test]
    fn service_only_changes_need_no_restart() {
        let before = table("[proxy]\nlisten = \"a:1\"\n[[service]]\nname = \"x\"\n");
        let now = table("[proxy]\nlisten = \"a:1\"\n[[service]]\nname = \"x\"\nprefix = \"p:\"\n");
        assert!(changed_restart_keys(&before, &now).is_empty());
    }

    #[test]
    fn reload_without_a_file_is_refused_and_counted() {
        let reloader = Reloader::default();
        let metrics = Metrics::new(Vec::new(), true);
        let error = reloader.reload(None, &metrics).expect_err("no file");
        assert!(matches!(error, ReloadError::NoConfigFile));
        assert_eq!(reloader.status_json()["ok"], serde_json::json!(false));
    }
}
