//! Hot reload: re-reading the config file on SIGHUP or `POST /reload`.
//!
//! What a reload changes: the `[[service]]` list (names, passwords,
//! prefixes, isolation, TTL policy, limits, deny lists, read policy). The new
//! services are put in force by swapping the
//! [`ServiceRegistry`] the client side reads; no connection is dropped, and
//! each client follows on its next command. The `Reloader` is handed what
//! a reload changes (the registry, the metrics that name services, the
//! start-only limits the services derive from) when keygate is assembled.
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
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::policy::registry::ServiceRegistry;
use crate::policy::service::Services;

/// The sections read only at start.
const RESTART_SECTIONS: [&str; 2] = ["proxy", "backend"];

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// keygate was given its config as text, not as a file.
    #[error("keygate was not started from a config file; nothing to reload")]
    NoConfigFile,
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
    pub(crate) generation: u64,
    /// How many services are in force.
    pub(crate) services: usize,
    /// `section.key` names whose change needs a restart (not applied).
    pub(crate) requires_restart: Vec<String>,
}

impl ReloadReport {
    /// The JSON `POST /reload` answers with.
    pub(crate) fn to_json(&self) -> serde_json::Value {
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

/// Where reloads read from, what they change, and how the last one went.
#[derive(Debug)]
pub(crate) struct Reloader {
    /// The services in force, which a reload replaces.
    services: Arc<ServiceRegistry>,
    /// Counts failed reloads, and gives new services their metrics slots.
    metrics: Arc<Metrics>,
    /// `[backend] dedicated_max` as started: services share it out.
    dedicated_max: u32,
    /// The config file, once the binary (or a test) names it.
    path: OnceLock<PathBuf>,
    /// The start-only sections as the file had them at start.
    started_with: OnceLock<toml::Table>,
    /// The last outcome; also serializes reloads.
    last: Mutex<Option<LastReload>>,
}

impl Reloader {
    /// Reloads will replace the services in `services`, following the
    /// start-only settings of `config` (the config keygate started with).
    pub(crate) fn new(
        config: &Config,
        services: Arc<ServiceRegistry>,
        metrics: Arc<Metrics>,
    ) -> Reloader {
        Reloader {
            services,
            metrics,
            dedicated_max: config.backend.dedicated_max,
            path: OnceLock::new(),
            started_with: OnceLock::new(),
            last: Mutex::new(None),
        }
    }

    /// Reloads will read `path`; its current start-only sections become the
    /// baseline for "requires restart". Only the first call counts.
    pub(crate) fn set_path(&self, path: PathBuf) {
        if let Some(table) = read_table(&path) {
            let _ = self.started_with.set(table);
        }
        let _ = self.path.set(path);
    }

    /// Re-reads the config file and puts its services in force, or changes
    /// nothing and records why.
    pub(crate) fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let result = self.apply();
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
                self.metrics.config_reload_failure();
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

    fn apply(&self) -> Result<ReloadReport, ReloadError> {
        let path = self.path.get().ok_or(ReloadError::NoConfigFile)?;
        let config = Config::load(path).map_err(|source| ReloadError::Invalid {
            path: path.display().to_string(),
            source,
        })?;
        let requires_restart = match (self.started_with.get(), read_table(path)) {
            (Some(before), Some(now)) => changed_restart_keys(before, &now),
            _ => Vec::new(),
        };
        let metrics_slot = |name: &str| self.metrics.slot_for(name);
        let services = Services::reloaded(
            &config,
            &self.services.current(),
            &metrics_slot,
            self.dedicated_max,
        );
        let report = ReloadReport {
            generation: services.generation(),
            services: services.all().len(),
            requires_restart,
        };
        self.services.replace(services);
        Ok(report)
    }

    /// The `last_reload` field of `/health`: `null` before any reload.
    pub(crate) fn status_json(&self) -> serde_json::Value {
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
        let config = Config::parse(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n[backend]\naddress = \"127.0.0.1:1\"\n\
             [[service]]\nname = \"default\"\nprefix = \"\"\nisolation = false\n",
        )
        .expect("config");
        let services = Arc::new(ServiceRegistry::new(Services::from_config(&config)));
        let metrics = Metrics::new(Vec::new(), true);
        let reloader = Reloader::new(&config, services, metrics);
        let error = reloader.reload().expect_err("no file");
        assert!(matches!(error, ReloadError::NoConfigFile));
        assert_eq!(reloader.status_json()["ok"], serde_json::json!(false));
    }
}
