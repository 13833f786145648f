//! Configuration: what serde reads from TOML ([`Config`]) and its validation.
//!
//! `Config::load` returns either a config that is safe to run or a
//! [`ConfigError`] that names the bad key and its line.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub backend: BackendConfig,
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
}

/// `[proxy]`: the client side.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Client listener address, `host:port`.
    pub listen: String,
    /// Admin HTTP listener (metrics, health); none when absent.
    #[serde(default)]
    pub admin_listen: Option<String>,
    /// Most client connections at once.
    #[serde(default = "defaults::max_clients")]
    pub max_clients: usize,
    /// Close clients idle this long; off when absent.
    #[serde(default, with = "duration_opt")]
    pub idle_timeout: Option<Duration>,
    /// Per-client cap on reply bytes waiting to be written; past it keygate stops reading from that client.
    #[serde(default = "defaults::max_pending_reply_bytes")]
    pub max_pending_reply_bytes: usize,
    /// Longest bulk argument accepted (Redis's proto-max-bulk-len).
    #[serde(default = "defaults::proto_max_bulk_len")]
    pub proto_max_bulk_len: usize,
    /// How long in-flight requests may finish after SIGTERM.
    #[serde(default = "defaults::shutdown_grace", with = "duration")]
    pub shutdown_grace: Duration,
    /// `compact` (default) or `json`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Record metrics (latency histograms, counters); `false` for the cost benchmark.
    #[serde(default = "defaults::yes")]
    pub metrics: bool,
    /// Tokio worker threads; the number of cores when absent.
    #[serde(default)]
    pub workers: Option<usize>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Compact,
    Json,
}

/// `[backend]`: the Redis side.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// A standalone backend, `host:port`.
    #[serde(default)]
    pub address: Option<String>,
    /// Sentinel addresses; with `master_name`, instead of `address`.
    #[serde(default)]
    pub sentinels: Vec<String>,
    #[serde(default)]
    pub master_name: Option<String>,
    /// ACL user for the data nodes.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// The one database keygate serves (SELECT of any other is refused).
    #[serde(default)]
    pub database: u32,
    /// Multiplexed connections per backend node and protocol.
    #[serde(default = "defaults::connections")]
    pub connections: usize,
    /// Most dedicated connections (MULTI, blocking, pub/sub) per node.
    #[serde(default = "defaults::dedicated_max")]
    pub dedicated_max: u32,
    #[serde(default = "defaults::connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// How long an ordinary command may wait for its reply before the client gets an error.
    #[serde(default = "defaults::command_timeout", with = "duration")]
    pub command_timeout: Duration,
    /// How long requests wait for a master while none is known.
    #[serde(default = "defaults::failover_wait", with = "duration")]
    pub failover_wait: Duration,
    /// ACL user for the Sentinels (Sentinel's own `AUTH`).
    #[serde(default)]
    pub sentinel_username: Option<String>,
    /// Password for the Sentinels.
    #[serde(default)]
    pub sentinel_password: Option<String>,
    /// Environment variable holding the Sentinel password.
    #[serde(default)]
    pub sentinel_password_env: Option<String>,
    /// Replicas further behind their master than this are not read from.
    #[serde(default = "defaults::max_replica_lag", with = "duration")]
    pub max_replica_lag: Duration,
    /// Hold requests for the master from the first failover-start event until
    /// the new master is confirmed (or the failover aborts); `false` only to
    /// measure what the hold buys.
    #[serde(default = "defaults::yes")]
    pub failover_hold: bool,
}

impl BackendConfig {
    /// The backend password, read from `password` or the `password_env` variable.
    pub fn resolved_password(&self) -> Option<String> {
        match (&self.password, &self.password_env) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(var)) => std::env::var(var).ok(),
            (None, None) => None,
        }
    }

    /// The Sentinel password, read from `sentinel_password` or the `sentinel_password_env` variable.
    pub fn resolved_sentinel_password(&self) -> Option<String> {
        match (&self.sentinel_password, &self.sentinel_password_env) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(var)) => std::env::var(var).ok(),
            (None, None) => None,
        }
    }
}

/// `[[service]]`: one login and its policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_sha256: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub prefix: String,
    /// Must be spelled out as `false` to allow an empty prefix.
    #[serde(default)]
    pub isolation: Option<bool>,
    #[serde(default, with = "duration_opt")]
    pub default_ttl: Option<Duration>,
    #[serde(default, with = "duration_opt")]
    pub max_ttl: Option<Duration>,
    #[serde(default)]
    pub ttl_over_max: TtlOverMax,
    #[serde(default)]
    pub max_value_bytes: Option<usize>,
    #[serde(default)]
    pub max_clients: Option<usize>,
    #[serde(default)]
    pub deny_commands: Vec<String>,
    #[serde(default)]
    pub read_from: ReadFrom,
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub allow_scripts: bool,
}

/// What happens to a TTL above `max_ttl`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TtlOverMax {
    #[default]
    Clamp,
    Reject,
}

/// Where a service's reads go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadFrom {
    #[default]
    Master,
    Replica,
    PreferReplica,
}

/// A configuration that cannot be used, with the key and line at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))
    }
}

mod defaults {
    use std::time::Duration;
    pub fn max_clients() -> usize {
        10_000
    }
    pub fn max_pending_reply_bytes() -> usize {
        16 * 1024 * 1024
    }
    pub fn proto_max_bulk_len() -> usize {
        512 * 1024 * 1024
    }
    pub fn shutdown_grace() -> Duration {
        Duration::from_secs(10)
    }
    pub fn yes() -> bool {
        true
    }
    pub fn connections() -> usize {
        2
    }
    pub fn dedicated_max() -> u32 {
        256
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub fn command_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn failover_wait() -> Duration {
        Duration::from_secs(5)
    }
    pub fn max_replica_lag() -> Duration {
        Duration::from_secs(10)
    }
}

/// Durations written as `"15m"`, `"500ms"`, `"1h"`.
mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

mod duration_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}
