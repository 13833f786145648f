//! Configuration: what serde reads from TOML ([`Config`]) and its validation.
//!
//! `Config::load` returns either a config that is safe to run or a
//! [`ConfigError`] that names the bad key and its line.

mod locate;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[proxy]`: listeners and client limits.
    pub proxy: ProxyConfig,
    /// `[backend]`: the Redis topology and connections.
    pub backend: BackendConfig,
    /// `[[service]]`: the logins, in file order.
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
}

/// `[proxy]`: the client side.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Plain-TCP client listener address, `host:port`; may be left out when `listen_tls` is set.
    #[serde(default)]
    pub listen: Option<String>,
    /// TLS client listener address, `host:port`; needs `[proxy.tls]`.
    #[serde(default)]
    pub listen_tls: Option<String>,
    /// `[proxy.tls]`: the certificate the TLS listener presents.
    #[serde(default)]
    pub tls: Option<ProxyTlsConfig>,
    /// Admin HTTP listener (metrics, health); none when absent.
    #[serde(default)]
    pub admin_listen: Option<String>,
    /// Most client connections at once.
    #[serde(default = "defaults::max_clients")]
    pub max_clients: usize,
    /// Close clients idle this long; off when absent.
    #[serde(default, with = "duration_opt")]
    pub idle_timeout: Option<Duration>,
    /// Per-client cap on reply bytes held for the client (arrived from the
    /// backend, not yet written to it); past it keygate stops reading from
    /// that client until it catches up.
    #[serde(default = "defaults::max_pending_reply_bytes")]
    pub max_pending_reply_bytes: usize,
    /// Past this many reply bytes held for one client, keygate disconnects
    /// it (with an error in the log) and drops what still arrives for it,
    /// like Redis's `client-output-buffer-limit` hard limit. Twice
    /// `max_pending_reply_bytes` when absent; at least that key.
    #[serde(default)]
    pub max_pending_reply_bytes_hard: Option<usize>,
    /// Longest bulk argument accepted (Redis's proto-max-bulk-len), and
    /// the longest keygate sends: a request whose namespace rewrite makes an
    /// argument longer is refused. Keep it at most the backend's own.
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
    /// Commands at least this slow go to the slow log.
    #[serde(default = "defaults::slowlog_threshold", with = "duration")]
    pub slowlog_threshold: Duration,
    /// Answer `CLUSTER SLOTS`/`SHARDS`/`NODES`/`INFO`/`MYID` as a one-node
    /// cluster owning every slot at keygate's own address, for clients that
    /// insist on cluster mode.
    #[serde(default)]
    pub cluster_emulation: bool,
    /// The `host:port` cluster emulation announces, when clients reach
    /// keygate by another address than `listen`.
    #[serde(default)]
    pub announce: Option<String>,
    /// Most slow log entries kept; 0 turns the slow log off.
    #[serde(default = "defaults::slowlog_max_len")]
    pub slowlog_max_len: usize,
}

/// `[proxy.tls]`: TLS for client connections on `listen_tls`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyTlsConfig {
    /// PEM file with the certificate chain keygate presents, leaf first.
    pub cert: String,
    /// PEM file with the private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// PEM file with the CAs client certificates must chain to; when set,
    /// every TLS client must present a valid certificate (mutual TLS).
    #[serde(default)]
    pub client_ca: Option<String>,
}

/// `[backend.tls]`: TLS for connections to the data nodes and the Sentinels.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendTlsConfig {
    /// PEM file with the CAs backend certificates must chain to; the
    /// built-in web PKI roots when absent.
    #[serde(default)]
    pub ca: Option<String>,
    /// PEM file with the client certificate keygate presents (for `tls-auth-clients yes`).
    #[serde(default)]
    pub cert: Option<String>,
    /// PEM file with the private key of `cert`.
    #[serde(default)]
    pub key: Option<String>,
    /// The name verified in every backend certificate; the host part of the
    /// node's address when absent. Set it when Sentinels announce IPs.
    #[serde(default)]
    pub server_name: Option<String>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Compact,
    /// One JSON object per event, for log collectors.
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
    /// The Sentinel-monitored master to follow; with `sentinels`.
    #[serde(default)]
    pub master_name: Option<String>,
    /// Redis Cluster seed nodes, `host:port`; instead of `address` and
    /// `sentinels`. The rest of the cluster is discovered from them.
    #[serde(default)]
    pub cluster: Option<Vec<String>>,
    /// How often the cluster's slot map is read again when nothing asked
    /// for it sooner.
    #[serde(default = "defaults::cluster_refresh", with = "duration")]
    pub cluster_refresh: Duration,
    /// Most times one request follows `MOVED`, `ASK` or `-TRYAGAIN` before
    /// the client gets Redis's error.
    #[serde(default = "defaults::max_redirects")]
    pub max_redirects: u32,
    /// ACL user for the data nodes.
    #[serde(default)]
    pub username: Option<String>,
    /// Password for the data nodes, inline.
    #[serde(default)]
    pub password: Option<String>,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// A file holding the password (a trailing newline is not part of it),
    /// read at start and again whenever it changes: a rotating credential.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The database a new client connection starts in (and HELLO and
    /// RESET return it to); SELECT moves a client to another of its
    /// service's `databases`.
    #[serde(default)]
    pub database: u32,
    /// How many databases the backend has (its own `databases` setting):
    /// SELECT of a number at or past it is `ERR DB index is out of range`.
    /// Always 1 on a cluster backend (Redis Cluster has database 0 only).
    #[serde(default = "defaults::databases")]
    pub databases: u32,
    /// Multiplexed connections per backend node and protocol; absent means
    /// [`Config::backend_connections`] picks by worker count.
    #[serde(default)]
    pub connections: Option<usize>,
    /// Gathered writes one multiplexed connection keeps awaiting replies
    /// (0: no limit). Batches that arrive meanwhile join the next write:
    /// fewer, larger writes cost Redis and keygate fewer system calls per
    /// request when the connection is busy, and an idle connection still
    /// writes at once.
    #[serde(default = "defaults::writes_in_flight")]
    pub writes_in_flight: usize,
    /// Most dedicated connections (MULTI, blocking, pub/sub) per node.
    #[serde(default = "defaults::dedicated_max")]
    pub dedicated_max: u32,
    /// A client that holds a dedicated connection for a transaction or
    /// WATCH and sends nothing for this long is closed, and the connection
    /// with it (like Redis's `timeout`). A blocked command waiting for its
    /// reply and a subscriber are not idle.
    #[serde(default = "defaults::dedicated_idle_timeout", with = "duration")]
    pub dedicated_idle_timeout: Duration,
    /// How long connecting (and the handshake) to a backend node may take.
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
    /// `[backend.tls]`: speak TLS to every backend node and Sentinel; plain TCP when absent.
    #[serde(default)]
    pub tls: Option<BackendTlsConfig>,
}

impl ProxyConfig {
    /// `max_pending_reply_bytes_hard`, or its default.
    pub fn pending_reply_hard_limit(&self) -> usize {
        self.max_pending_reply_bytes_hard
            .unwrap_or_else(|| self.max_pending_reply_bytes.saturating_mul(2))
    }
}

/// The password in a `password_file`: its text without a trailing newline;
/// an empty one is an error.
pub fn read_password_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let password = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if password.is_empty() {
        return Err("the file is empty".into());
    }
    Ok(password.to_string())
}

impl BackendConfig {
    /// True when the backend is a Redis Cluster (`cluster` seed nodes).
    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// The backend password, read from `password` or the `password_env` variable.
    pub fn resolved_password(&self) -> Option<String> {
        match (&self.password, &self.password_env, &self.password_file) {
            (Some(p), _, _) => Some(p.clone()),
            (None, Some(var), _) => std::env::var(var).ok(),
            (None, None, Some(path)) => read_password_file(path).ok(),
            (None, None, None) => None,
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
    /// The login name (AUTH username); `default` is the passwordless login.
    pub name: String,
    /// The password, inline.
    #[serde(default)]
    pub password: Option<String>,
    /// The password's SHA-256, 64 hex characters.
    #[serde(default)]
    pub password_sha256: Option<String>,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// The key namespace on the backend; clients see keys without it.
    #[serde(default)]
    pub prefix: String,
    /// Must be spelled out as `false` to allow an empty prefix.
    #[serde(default)]
    pub isolation: Option<bool>,
    /// TTL given to writes that set none.
    #[serde(default, with = "duration_opt")]
    pub default_ttl: Option<Duration>,
    /// Longest TTL allowed; at least `default_ttl`.
    #[serde(default, with = "duration_opt")]
    pub max_ttl: Option<Duration>,
    /// What happens to a TTL above `max_ttl`.
    #[serde(default)]
    pub ttl_over_max: TtlOverMax,
    /// Largest value this service may write, in bytes.
    #[serde(default)]
    pub max_value_bytes: Option<usize>,
    /// Most connections logged in as this service at once.
    #[serde(default)]
    pub max_clients: Option<usize>,
    /// Most dedicated connections (MULTI/WATCH, blocking, pub/sub) this
    /// service's clients hold at once; absent: its fair share of
    /// `dedicated_max` ([`ServiceConfig::max_dedicated_of`]).
    #[serde(default)]
    pub max_dedicated: Option<u32>,
    /// Commands this service may not run (checked against the command table elsewhere).
    #[serde(default)]
    pub deny_commands: Vec<String>,
    /// Where this service's reads go.
    #[serde(default)]
    pub read_from: ReadFrom,
    /// May run administrative commands.
    #[serde(default)]
    pub admin: bool,
    /// May run scripts and functions (EVAL, FCALL).
    #[serde(default)]
    pub allow_scripts: bool,
    /// The databases this service's clients may SELECT (and MOVE or COPY
    /// keys to); absent: all of the backend's `databases`.
    #[serde(default)]
    pub databases: Option<Vec<u32>>,
    /// `[service.token]`: signed tokens accepted as the AUTH password.
    #[serde(default)]
    pub token: Option<TokenConfig>,
    /// `[service.near_cache]`: hot reads answered from keygate's memory.
    #[serde(default)]
    pub near_cache: Option<NearCacheConfig>,
}

/// `[service.near_cache]`: a per-service cache of read replies in keygate's
/// memory, kept coherent by Redis's client-side caching invalidations
/// (see [`crate::near_cache`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NearCacheConfig {
    /// Off unless spelled out.
    #[serde(default)]
    pub enabled: bool,
    /// The service's budget: key plus value bytes plus a fixed per-entry
    /// overhead, summed over its entries.
    #[serde(default = "defaults::near_cache_max_bytes")]
    pub max_bytes: usize,
    /// The longest an entry lives, even if no invalidation comes.
    #[serde(default = "defaults::near_cache_max_age", with = "duration")]
    pub max_age: Duration,
    /// The commands whose replies are kept (names as Redis spells them).
    #[serde(default = "defaults::near_cache_commands")]
    pub commands: Vec<String>,
    /// Larger values are not kept.
    #[serde(default = "defaults::near_cache_max_value_bytes")]
    pub max_value_bytes: usize,
    /// After a failover flushed the cache, this many of the service's
    /// hottest keys are read again from the new master (0: none).
    #[serde(default = "defaults::near_cache_warm_keys")]
    pub warm_keys: usize,
}

/// A command whose replies the near cache keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cacheable {
    /// GET: a bulk string per key.
    Get,
    /// HGETALL: the hash's fields and values (an array; a map to a RESP3
    /// client).
    HGetAll,
    /// MGET: answered when GET's entries hold every key (it fills nothing).
    MGet,
    /// HGET: a bulk string per field; one entry per key holds the fields
    /// read, so an invalidation of the key takes them all.
    HGet,
}

impl Cacheable {
    /// The names `commands` accepts, for `--check`'s message.
    pub const SUPPORTED: &'static str = "GET, HGET, HGETALL, MGET";

    /// The command named in `[service.near_cache] commands`, if kept.
    pub fn from_name(name: &str) -> Option<Cacheable> {
        if name.eq_ignore_ascii_case("get") {
            Some(Cacheable::Get)
        } else if name.eq_ignore_ascii_case("hgetall") {
            Some(Cacheable::HGetAll)
        } else if name.eq_ignore_ascii_case("mget") {
            Some(Cacheable::MGet)
        } else if name.eq_ignore_ascii_case("hget") {
            Some(Cacheable::HGet)
        } else {
            None
        }
    }

    /// Its bit in a set of kept commands.
    pub fn bit(self) -> u8 {
        1 << self as u8
    }

    /// Whether `frame`, a reply of this command that is neither an error
    /// nor a nil, has the shape the near cache keeps.
    pub fn keeps(self, frame: &[u8]) -> bool {
        match self {
            Cacheable::Get | Cacheable::HGet => frame.first() == Some(&b'$'),
            Cacheable::HGetAll => frame.first() == Some(&b'*'),
            Cacheable::MGet => false,
        }
    }
}

/// `[service.token]`: a JWT the service already has, presented as its
/// Redis password (`AUTH <token>`, `AUTH <service> <token>`, `HELLO 3 AUTH
/// <service> <token>`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The `iss` a token must carry; absent: not checked.
    #[serde(default)]
    pub issuer: Option<String>,
    /// The `aud` a token must carry; absent: not checked.
    #[serde(default)]
    pub audience: Option<String>,
    /// Environment variable holding the HS256 shared secret.
    #[serde(default)]
    pub hs256_secret_env: Option<String>,
    /// A JWKS file (JSON) with RS256, ES256 or EdDSA public keys; read again
    /// on every reload.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_token_leeway", with = "duration")]
    pub leeway: Duration,
    /// The claim whose value must be the service's name.
    #[serde(default = "default_service_claim")]
    pub service_claim: String,
    /// What a connection logged in by a token does once the token expires.
    #[serde(default)]
    pub on_expiry: OnExpiry,
}

fn default_token_leeway() -> Duration {
    Duration::from_secs(30)
}

fn default_service_claim() -> String {
    "sub".into()
}

/// What a token-authenticated connection does at the token's expiry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExpiry {
    /// Every command but AUTH, HELLO, PING, QUIT and RESET gets `-NOAUTH
    /// token expired` until the client logs in again.
    #[default]
    Deny,
    /// The connection is closed once the replies already due are written.
    Close,
}

impl ServiceConfig {
    /// The dedicated connections this service may hold at once, among
    /// `services` sharing `dedicated_max`: `max_dedicated` if set, else an
    /// equal share, `dedicated_max / services` (at least 1). Equal shares
    /// add up to at most `dedicated_max`, so no service can take what
    /// another is entitled to (with more services than `dedicated_max`
    /// each still gets 1, and that promise cannot hold). Never above
    /// `dedicated_max`.
    pub fn max_dedicated_of(&self, dedicated_max: u32, services: usize) -> u32 {
        let services = u32::try_from(services.max(1)).unwrap_or(u32::MAX);
        self.max_dedicated
            .unwrap_or(dedicated_max / services)
            .clamp(1, dedicated_max.max(1))
    }
}

/// What happens to a TTL above `max_ttl`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TtlOverMax {
    /// Lower it to `max_ttl`.
    #[default]
    Clamp,
    /// Refuse the command with an error.
    Reject,
}

/// Where a service's reads go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadFrom {
    /// Always the master: reads see the service's own writes.
    #[default]
    Master,
    /// Replicas only, within `max_replica_lag`.
    Replica,
    /// A replica within `max_replica_lag`, else the master.
    PreferReplica,
}

/// A configuration that cannot be used, with the key and line at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file as given.
        path: String,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The text is not a valid config; every problem found, in line order.
    #[error("{0}")]
    Invalid(Problems),
}

/// One thing wrong with a config: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line of the key at fault (or of its enclosing table when the key is missing).
    pub line: usize,
    /// What is wrong, naming the key, e.g. `service[1].max_ttl ("30s") is below default_ttl ("15m")`.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Every problem found in one config, never empty, sorted by line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Multiplexed connections per backend node and protocol:
    /// `[backend] connections` when set, otherwise 1 with one worker thread
    /// and 2 with more. One thread gains nothing from a second pipelined
    /// connection (Redis serves them one at a time too) and loses half of
    /// each batch to it: more, smaller writes for keygate and Redis alike.
    /// With several threads a second connection keeps one connection's
    /// reader from being the only path for every worker's replies.
    pub fn backend_connections(&self) -> usize {
        self.backend
            .connections
            .unwrap_or(if self.proxy.workers == Some(1) { 1 } else { 2 })
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text)
    }

    /// Parses and validates config text; `password_env` variables are looked
    /// up in the process environment.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, &|name| std::env::var_os(name).is_some())
    }

    /// Parses and validates config text, asking `env_has` whether an
    /// environment variable exists.
    fn parse_with_env(text: &str, env_has: &dyn Fn(&str) -> bool) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Invalid(Problems(vec![toml_problem(text, &e)])))?;
        if config.backend.is_cluster() {
            // Redis Cluster serves database 0 only: SELECT of any other is
            // refused as out of range, and a service may list no other.
            config.backend.databases = 1;
        }
        let findings = validate::validate(&config, env_has);
        if findings.is_empty() {
            return Ok(config);
        }
        let map = locate::SourceMap::new(text);
        let mut problems: Vec<Problem> = findings
            .into_iter()
            .map(|finding| Problem {
                line: map.as_ref().map_or(1, |m| m.line(&finding.path)),
                message: finding.message,
            })
            .collect();
        problems.sort_by_key(|p| p.line);
        Err(ConfigError::Invalid(Problems(problems)))
    }
}

/// Turns a toml syntax or type error into a [`Problem`] naming the key at its span.
fn toml_problem(text: &str, error: &toml::de::Error) -> Problem {
    let message = error.message().trim_end().to_owned();
    let Some(span) = error.span() else {
        return Problem { line: 1, message };
    };
    let line = locate::line_of(text, span.start);
    let Some(map) = locate::SourceMap::new(text) else {
        return Problem { line, message };
    };
    let path = map.path_at(&span);
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((name, expected)) = rest.split_once('`') {
            let expected = expected.trim_start_matches(", ");
            return Problem {
                line,
                message: format!(
                    "unknown key '{name}' in {} ({expected})",
                    path.parent().table_name()
                ),
            };
        }
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        if let Some((name, _)) = rest.split_once('`') {
            return Problem {
                line,
                message: format!("missing key '{name}' in {}", path.table_name()),
            };
        }
    }
    let message = if path.0.is_empty() {
        message
    } else {
        format!("{path}: {message}")
    };
    Problem { line, message }
}

/// Defaults for keys left out.
mod defaults {
    pub fn near_cache_max_bytes() -> usize {
        64 * 1024 * 1024
    }
    pub fn near_cache_max_age() -> std::time::Duration {
        std::time::Duration::from_secs(10)
    }
    pub fn near_cache_commands() -> Vec<String> {
        vec!["GET".to_string()]
    }
    pub fn near_cache_max_value_bytes() -> usize {
        64 * 1024
    }
    pub fn near_cache_warm_keys() -> usize {
        1000
    }
    use std::time::Duration;
    pub fn databases() -> u32 {
        16
    }
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
    pub fn slowlog_threshold() -> Duration {
        Duration::from_millis(10)
    }
    pub fn slowlog_max_len() -> usize {
        128
    }
    pub fn yes() -> bool {
        true
    }
    pub fn dedicated_max() -> u32 {
        256
    }
    pub fn dedicated_idle_timeout() -> Duration {
        Duration::from_secs(300)
    }
    pub fn writes_in_flight() -> usize {
        2
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
    pub fn cluster_refresh() -> Duration {
        Duration::from_secs(5)
    }
    pub fn max_redirects() -> u32 {
        5
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

/// Optional durations, spelled as in [`duration`].
mod duration_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid config; tests append to or edit it. Line numbers matter.
    const BASE: &str = r#"[proxy]
listen = "127.0.0.1:6380"
admin_listen = "127.0.0.1:9121"

[backend]
address = "127.0.0.1:6390"

[[service]]
name = "default"
prefix = ""
isolation = false

[[service]]
name = "demo"
password = "secret"
prefix = "demo:"
default_ttl = "15m"
max_ttl = "1h"
"#;

    /// Environment variables the tests pretend are set.
    fn fake_env(name: &str) -> bool {
        matches!(name, "KG_TEST_SET" | "KG_TEST_OTHER")
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, &fake_env)
    }

    fn problems(text: &str) -> Vec<Problem> {
        match parse(text) {
            Ok(_) => panic!("config was accepted:\n{text}"),
            Err(ConfigError::Invalid(Problems(problems))) => problems,
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    /// Asserts that some problem sits on `line` and its message contains `needle`.
    #[track_caller]
    fn assert_problem(text: &str, line: usize, needle: &str) {
        let found = problems(text);
        assert!(
            found
                .iter()
                .any(|p| p.line == line && p.message.contains(needle)),
            "expected line {line} containing {needle:?}, got:\n{}",
            Problems(found.clone())
        );
    }

    fn replace(from: &str, to: &str) -> String {
        assert!(BASE.contains(from), "{from:?} not in BASE");
        BASE.replacen(from, to, 1)
    }

    #[test]
    fn base_config_is_valid_with_defaults() {
        let config = parse(BASE).expect("valid");
        assert_eq!(config.services.len(), 2);
        assert_eq!(config.proxy.max_clients, 10_000);
        assert_eq!(config.backend.max_replica_lag, Duration::from_secs(10));
        assert_eq!(
            config.services[1].default_ttl,
            Some(Duration::from_secs(900))
        );
    }

    #[test]
    fn backend_connections_default_follows_workers() {
        let config = |extra_proxy: &str, extra_backend: &str| {
            let text = BASE.replace(
                "[backend]",
                &format!("{extra_proxy}\n[backend]\n{extra_backend}"),
            );
            parse(&text).expect("valid").backend_connections()
        };
        assert_eq!(config("", ""), 2);
        assert_eq!(config("workers = 2", ""), 2);
        assert_eq!(config("workers = 1", ""), 1);
        assert_eq!(config("workers = 1", "connections = 3"), 3);
        assert_eq!(config("", "connections = 1"), 1);
    }

    #[test]
    fn problem_display_has_line_prefix() {
        let p = Problem {
            line: 12,
            message: "x".into(),
        };
        assert_eq!(p.to_string(), "line 12: x");
    }

    #[test]
    fn toml_syntax_error_has_line() {
        assert_problem(&replace("max_ttl = \"1h\"", "max_ttl = "), 18, "");
    }

    #[test]
    fn unknown_key_is_named_with_its_table() {
        let text = replace("admin_listen", "admin_lissen");
        assert_problem(&text, 3, "unknown key 'admin_lissen' in [proxy]");
    }

    #[test]
    fn unknown_key_in_service_is_named() {
        let text = replace("max_ttl = \"1h\"", "max_tll = \"1h\"");
        assert_problem(&text, 18, "unknown key 'max_tll' in service[1]");
    }

    #[test]
    fn missing_key_is_named_with_its_table() {
        let text = replace("listen = \"127.0.0.1:6380\"\n", "");
        assert_problem(&text, 1, "missing key 'listen' in [proxy]");
        let text = "[proxy]\nlisten = \"127.0.0.1:1\"\n";
        assert_problem(text, 1, "missing key 'backend' in the top level");
    }

    #[test]
    fn bad_type_names_key() {
        let text = BASE.replace("[backend]", "[backend]\nconnections = \"two\"");
        assert_problem(&text, 6, "backend.connections");
    }

    #[test]
    fn bad_duration_names_key() {
        let text = replace("\"15m\"", "\"15 parsecs\"");
        assert_problem(&text, 17, "service[1].default_ttl");
    }

    #[test]
    fn listen_must_be_socket_address() {
        assert_problem(&replace("127.0.0.1:6380", "localhost"), 2, "proxy.listen");
        assert_problem(
            &replace("127.0.0.1:9121", "::1:9121"),
            3,
            "proxy.admin_listen",
        );
        let ipv6 = replace("127.0.0.1:9121", "[::1]:9121");
        assert!(parse(&ipv6).is_ok());
    }

    #[test]
    fn proxy_sizes_are_bounded() {
        let text = BASE.replace("[backend]", "max_clients = 0\n[backend]");
        assert_problem(&text, 5, "proxy.max_clients");
        let text = BASE.replace("[backend]", "max_pending_reply_bytes = 1000\n[backend]");
        assert_problem(&text, 5, "proxy.max_pending_reply_bytes (1000)");
        let text = BASE.replace(
            "[backend]",
            "max_pending_reply_bytes = 1048576\nmax_pending_reply_bytes_hard = 1048575\n[backend]",
        );
        assert_problem(&text, 6, "proxy.max_pending_reply_bytes_hard (1048575)");
        let text = BASE.replace("[backend]", "proto_max_bulk_len = 1000\n[backend]");
        assert_problem(&text, 5, "proxy.proto_max_bulk_len");
        let text = BASE.replace("[backend]", "proto_max_bulk_len = 5000000000\n[backend]");
        assert_problem(&text, 5, "proxy.proto_max_bulk_len");
        let text = BASE.replace("[backend]", "workers = 0\n[backend]");
        assert_problem(&text, 5, "proxy.workers");
    }

    #[test]
    fn backend_needs_exactly_one_topology() {
        let none = replace("address = \"127.0.0.1:6390\"", "database = 0");
        assert_problem(
            &none,
            5,
            "backend needs one of address, sentinels + master_name, or cluster",
        );
        let both = replace(
            "address = \"127.0.0.1:6390\"",
            "address = \"127.0.0.1:6390\"\nsentinels = [\"s1:26379\"]\nmaster_name = \"m\"",
        );
        assert_problem(&both, 6, "backend.address is set together with sentinels");
        let no_master = replace("address = \"127.0.0.1:6390\"", "sentinels = [\"s1:26379\"]");
        assert_problem(&no_master, 5, "backend.master_name is required");
        let no_sentinels = replace(
            "address = \"127.0.0.1:6390\"",
            "sentinels = []\nmaster_name = \"m\"",
        );
        assert_problem(&no_sentinels, 6, "backend.sentinels must list");
        let sentinel = replace(
            "address = \"127.0.0.1:6390\"",
            "sentinels = [\"s1.example:26379\", \"[::1]:26379\"]\nmaster_name = \"m\"",
        );
        assert!(parse(&sentinel).is_ok());
    }

    /// `BASE` on a cluster backend: `backend` replaces the `address` line (line 6).
    fn cluster_with(backend: &str) -> String {
        replace("address = \"127.0.0.1:6390\"", backend)
    }

    #[test]
    fn cluster_backend_takes_seeds_and_defaults() {
        let config = parse(&cluster_with(
            "cluster = [\"127.0.0.1:7000\", \"redis-1.internal:7001\"]",
        ))
        .expect("valid");
        let b = &config.backend;
        assert!(b.is_cluster());
        assert_eq!(b.cluster.as_ref().map(Vec::len), Some(2));
        assert_eq!(b.cluster_refresh, Duration::from_secs(5));
        assert_eq!(b.max_redirects, 5);
        assert!(!config.proxy.cluster_emulation);
        assert_eq!(config.proxy.announce, None);
        assert!(!parse(BASE).expect("valid").backend.is_cluster());
        let set = parse(&cluster_with(
            "cluster = [\"127.0.0.1:7000\"]\ncluster_refresh = \"750ms\"\nmax_redirects = 3",
        ))
        .expect("valid");
        assert_eq!(set.backend.cluster_refresh, Duration::from_millis(750));
        assert_eq!(set.backend.max_redirects, 3);
    }

    #[test]
    fn cluster_is_exclusive_with_address_and_sentinels() {
        let pick = "use exactly one of address (standalone), sentinels + master_name (Sentinel), cluster (Redis Cluster)";
        let with_address =
            cluster_with("address = \"127.0.0.1:6390\"\ncluster = [\"127.0.0.1:7000\"]");
        assert_problem(
            &with_address,
            7,
            "backend.cluster is set together with address",
        );
        assert_problem(&with_address, 7, pick);
        let with_sentinels = cluster_with(
            "sentinels = [\"s1:26379\"]\nmaster_name = \"m\"\ncluster = [\"127.0.0.1:7000\"]",
        );
        assert_problem(
            &with_sentinels,
            8,
            "backend.cluster is set together with sentinels/master_name",
        );
        assert_problem(&with_sentinels, 8, pick);
    }

    #[test]
    fn cluster_keys_are_checked() {
        assert_problem(
            &cluster_with("cluster = []"),
            6,
            "backend.cluster must list at least one seed node",
        );
        assert_problem(
            &cluster_with("cluster = [\"127.0.0.1:7000\", \"nope\"]"),
            6,
            "backend.cluster[1] (\"nope\") is not host:port",
        );
        for (line, problem) in [
            (
                "cluster_refresh = \"0s\"",
                "backend.cluster_refresh must be greater than 0",
            ),
            (
                "max_redirects = 0",
                "backend.max_redirects (0) must be between 1 and 100",
            ),
            ("max_redirects = 101", "backend.max_redirects (101)"),
        ] {
            let text = cluster_with(&format!("cluster = [\"127.0.0.1:7000\"]\n{line}"));
            assert_problem(&text, 7, problem);
        }
    }

    #[test]
    fn cluster_refuses_braces_in_prefixes_naming_the_service() {
        for prefix in ["demo{", "de}mo:", "{demo}:"] {
            let text = cluster_with("cluster = [\"127.0.0.1:7000\"]")
                .replace("prefix = \"demo:\"", &format!("prefix = {prefix:?}"));
            assert_problem(
                &text,
                16,
                &format!(
                    "service[1].prefix ({prefix:?}) of service \"demo\" contains '{{' or '}}'"
                ),
            );
        }
        let replica = cluster_with("cluster = [\"127.0.0.1:7000\"]").replace(
            "max_ttl = \"1h\"",
            "max_ttl = \"1h\"\nread_from = \"replica\"",
        );
        // Both replica modes read from each slot's replicas.
        assert!(parse(&replica).is_ok());
        let prefer = replica.replace("\"replica\"", "\"prefer-replica\"");
        assert!(parse(&prefer).is_ok());
        // Braces are only a problem where keys hash to slots.
        let standalone = replace("prefix = \"demo:\"", "prefix = \"{demo}:\"");
        assert!(parse(&standalone).is_ok());
    }

    #[test]
    fn a_cluster_has_database_zero_only() {
        let config = parse(&cluster_with("cluster = [\"127.0.0.1:7000\"]")).expect("valid");
        assert_eq!(config.backend.databases, 1);
        let listed = cluster_with("cluster = [\"127.0.0.1:7000\"]")
            .replace("max_ttl = \"1h\"", "max_ttl = \"1h\"\ndatabases = [0, 4]");
        assert_problem(
            &listed,
            19,
            "service[1].databases lists 4, past the backend's databases (1)",
        );
        assert_problem(
            &cluster_with("cluster = [\"127.0.0.1:7000\"]\ndatabase = 2"),
            7,
            "backend.database (2) must be below backend.databases (1)",
        );
    }

    #[test]
    fn cluster_emulation_and_announce_parse() {
        let text = BASE.replace(
            "[backend]",
            "cluster_emulation = true\nannounce = \"keygate.internal:6380\"\n[backend]",
        );
        let config = parse(&text).expect("valid");
        assert!(config.proxy.cluster_emulation);
        assert_eq!(
            config.proxy.announce.as_deref(),
            Some("keygate.internal:6380")
        );
        let bad = BASE.replace(
            "[backend]",
            "cluster_emulation = true\nannounce = \"keygate\"\n[backend]",
        );
        assert_problem(&bad, 6, "proxy.announce (\"keygate\") is not host:port");
        let alone = BASE.replace("[backend]", "announce = \"keygate:6380\"\n[backend]");
        assert_problem(
            &alone,
            5,
            "proxy.announce is set but proxy.cluster_emulation is not",
        );
    }

    #[test]
    fn backend_addresses_are_host_port() {
        assert_problem(
            &replace("127.0.0.1:6390", "127.0.0.1"),
            6,
            "backend.address",
        );
        let text = replace(
            "address = \"127.0.0.1:6390\"",
            "sentinels = [\"s1:26379\", \"s2\"]\nmaster_name = \"m\"",
        );
        assert_problem(&text, 6, "backend.sentinels[1] (\"s2\")");
    }

    #[test]
    fn sentinel_auth_needs_sentinels() {
        let text = replace(
            "address = \"127.0.0.1:6390\"",
            "address = \"127.0.0.1:6390\"\nsentinel_password = \"x\"",
        );
        assert_problem(
            &text,
            7,
            "backend.sentinel_password is set but no sentinels",
        );
    }

    #[test]
    fn backend_password_sources() {
        let both = replace(
            "address = \"127.0.0.1:6390\"",
            "address = \"127.0.0.1:6390\"\npassword = \"x\"\npassword_env = \"KG_TEST_SET\"",
        );
        assert_problem(
            &both,
            8,
            "backend.password and backend.password_env are both set",
        );
        let unset = replace(
            "address = \"127.0.0.1:6390\"",
            "address = \"127.0.0.1:6390\"\npassword_env = \"KG_TEST_UNSET\"",
        );
        assert_problem(
            &unset,
            7,
            "backend.password_env names environment variable \"KG_TEST_UNSET\"",
        );
        let set = replace(
            "address = \"127.0.0.1:6390\"",
            "address = \"127.0.0.1:6390\"\npassword_env = \"KG_TEST_SET\"",
        );
        assert!(parse(&set).is_ok());
        let sentinel_unset = replace(
            "address = \"127.0.0.1:6390\"",
            "sentinels = [\"s:1\"]\nmaster_name = \"m\"\nsentinel_password_env = \"NOPE\"",
        );
        assert_problem(&sentinel_unset, 8, "backend.sentinel_password_env");
    }

    /// `BASE` with one more `[backend]` line (it lands on line 8).
    fn with_backend_line(line: &str) -> String {
        BASE.replace(
            "[[service]]\nname = \"default\"",
            &format!("{line}\n[[service]]\nname = \"default\""),
        )
    }

    #[test]
    fn backend_connection_counts() {
        for (line, problem) in [
            ("connections = 65", "backend.connections (65)"),
            ("connections = 0", "backend.connections (0)"),
            ("writes_in_flight = 1025", "backend.writes_in_flight (1025)"),
            ("dedicated_max = 0", "backend.dedicated_max"),
        ] {
            assert_problem(&with_backend_line(line), 8, problem);
        }
        let unlimited = parse(&with_backend_line("writes_in_flight = 0")).expect("0 is no limit");
        assert_eq!(unlimited.backend.writes_in_flight, 0);
        assert_eq!(parse(BASE).expect("valid").backend.writes_in_flight, 2);
    }

    #[test]
    fn databases_default_to_sixteen_and_services_list_theirs() {
        let config = parse(BASE).expect("valid");
        assert_eq!(config.backend.databases, 16);
        assert_eq!(config.backend.database, 0);
        assert_eq!(config.services[1].databases, None);
        let listed = parse(&format!("{BASE}databases = [0, 4]\n")).expect("valid");
        assert_eq!(listed.services[1].databases, Some(vec![0, 4]));
        assert_problem(
            &format!("{BASE}databases = [0, 16]\n"),
            19,
            "service[1].databases lists 16, past the backend's databases (16)",
        );
        assert_problem(
            &format!("{BASE}databases = [4]\n"),
            19,
            "service[1].databases must include backend.database (0)",
        );
        assert_problem(
            &format!("{BASE}databases = []\n"),
            19,
            "service[1].databases must list at least one database",
        );
        assert_problem(
            &with_backend_line("databases = 0"),
            8,
            "backend.databases must be greater than 0",
        );
        assert_problem(
            &with_backend_line("database = 4\ndatabases = 4"),
            8,
            "backend.database (4) must be below backend.databases (4)",
        );
    }

    #[test]
    fn max_dedicated_defaults_to_a_fair_share_within_the_pool() {
        let config = parse(BASE).expect("valid");
        assert_eq!(config.backend.dedicated_max, 256);
        assert_eq!(
            config.backend.dedicated_idle_timeout,
            Duration::from_secs(300)
        );
        let service = &config.services[1];
        assert_eq!(service.max_dedicated_of(256, 2), 128);
        assert_eq!(service.max_dedicated_of(7, 3), 2);
        assert_eq!(service.max_dedicated_of(2, 5), 1, "at least one");
        let set = parse(&format!("{BASE}max_dedicated = 200\n")).expect("valid");
        assert_eq!(set.services[1].max_dedicated_of(256, 2), 200);
        assert_eq!(
            set.services[1].max_dedicated_of(100, 2),
            100,
            "never above the pool"
        );
        for value in ["0", "257"] {
            assert_problem(
                &format!("{BASE}max_dedicated = {value}\n"),
                19,
                &format!("service[1].max_dedicated ({value}) must be between 1 and backend.dedicated_max (256)"),
            );
        }
        assert_problem(
            &with_backend_line("dedicated_idle_timeout = \"0s\""),
            8,
            "backend.dedicated_idle_timeout must be greater than 0",
        );
    }

    #[test]
    fn service_names_unique_and_non_empty() {
        assert_problem(
            &replace("name = \"demo\"", "name = \"default\""),
            14,
            "service[1].name (\"default\") is already used by service[0]",
        );
        assert_problem(
            &replace("name = \"demo\"", "name = \"\""),
            14,
            "service[1].name must not be empty",
        );
    }

    #[test]
    fn service_password_rules() {
        let text = replace("name = \"default\"", "name = \"default\"\npassword = \"x\"");
        assert_problem(
            &text,
            10,
            "service[0].password is set, but the service named \"default\"",
        );
        let text = replace("password = \"secret\"\n", "");
        assert_problem(&text, 13, "service[1] (\"demo\") has no password");
        let text = replace(
            "password = \"secret\"",
            "password = \"secret\"\npassword_env = \"KG_TEST_SET\"",
        );
        assert_problem(
            &text,
            16,
            "service[1] sets more than one of password, password_env",
        );
        let text = replace("password = \"secret\"", "password_sha256 = \"abc\"");
        assert_problem(&text, 15, "service[1].password_sha256 must be 64 hex");
        let hash = "a".repeat(64);
        let text = replace(
            "password = \"secret\"",
            &format!("password_sha256 = \"{hash}\""),
        );
        assert!(parse(&text).is_ok());
        let text = replace("password = \"secret\"", "password_env = \"KG_TEST_UNSET\"");
        assert_problem(
            &text,
            15,
            "service[1].password_env names environment variable",
        );
    }

    #[test]
    fn empty_prefix_needs_explicit_isolation_false() {
        let text = replace("isolation = false\n", "");
        assert_problem(&text, 10, "service[0].prefix is empty");
        let text = replace("prefix = \"demo:\"\n", "");
        assert_problem(&text, 13, "service[1].prefix is empty");
    }

    #[test]
    fn prefixes_must_not_overlap() {
        let extra = "\n[[service]]\nname = \"demo2\"\npassword = \"p\"\nprefix = \"demo:x\"\n";
        let text = format!("{BASE}{extra}");
        assert_problem(
            &text,
            23,
            "service[2].prefix (\"demo:x\") overlaps service[1].prefix (\"demo:\")",
        );
        let text = format!("{BASE}{}", extra.replace("demo:x", "demo:"));
        assert_problem(&text, 23, "overlaps");
        let text = format!("{BASE}{}", extra.replace("demo:x", "dem"));
        assert_problem(&text, 23, "overlaps");
        let text = format!("{BASE}{}", extra.replace("demo:x", "other:"));
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn max_ttl_not_below_default_ttl() {
        let text = replace("max_ttl = \"1h\"", "max_ttl = \"30s\"");
        assert_problem(
            &text,
            18,
            "service[1].max_ttl (\"30s\") is below default_ttl (\"15m\")",
        );
        let text = replace("max_ttl = \"1h\"", "max_ttl = \"0s\"");
        assert_problem(&text, 18, "service[1].max_ttl must be greater than 0");
    }

    #[test]
    fn reject_requires_max_ttl() {
        let text = replace("max_ttl = \"1h\"", "ttl_over_max = \"reject\"");
        assert_problem(
            &text,
            18,
            "service[1].ttl_over_max = \"reject\" requires max_ttl",
        );
        let text = format!("{BASE}ttl_over_max = \"reject\"\n");
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn deny_commands_are_names() {
        let text = format!("{BASE}deny_commands = [\"FLUSHALL\",\n  \"\"]\n");
        assert_problem(
            &text,
            20,
            "service[1].deny_commands[1] (\"\") is not a command name",
        );
        let text = format!("{BASE}deny_commands = [\"CONFIG SET\"]\n");
        assert_problem(&text, 19, "service[1].deny_commands[0]");
    }

    #[test]
    fn near_cache_defaults_and_checks() {
        let text = format!("{BASE}[service.near_cache]\nenabled = true\n");
        let config = parse(&text).expect("valid");
        let near = config.services[1].near_cache.as_ref().expect("near_cache");
        assert_eq!(near.max_age, Duration::from_secs(10));
        assert_eq!(near.commands, vec!["GET".to_string()]);
        assert_eq!(near.max_value_bytes, 64 * 1024);
        assert!(config.services[0].near_cache.is_none());
        let text = format!(
            "{BASE}[service.near_cache]\nenabled = true\ncommands = [\"GET\", \"HSCAN\"]\nmax_age = \"0s\"\nmax_bytes = 0\n"
        );
        assert_problem(
            &text,
            21,
            "service[1].near_cache.commands[1] (\"HSCAN\") is not a command the near cache keeps (supported: GET, HGET, HGETALL, MGET)",
        );
        assert_problem(
            &text,
            22,
            "service[1].near_cache.max_age must be greater than 0",
        );
        assert_problem(
            &text,
            23,
            "service[1].near_cache.max_bytes must be greater than 0",
        );
        let text = format!("{BASE}[service.near_cache]\nmax_sizes = 1\n");
        assert!(parse(&text).is_err(), "unknown keys are refused");
    }

    #[test]
    fn service_limits_positive() {
        let text = format!("{BASE}max_value_bytes = 0\n");
        assert_problem(&text, 19, "service[1].max_value_bytes");
        let text = format!("{BASE}max_clients = 0\n");
        assert_problem(&text, 19, "service[1].max_clients");
    }

    #[test]
    fn every_problem_is_reported_in_line_order() {
        let text =
            replace("max_ttl = \"1h\"", "max_ttl = \"30s\"").replace("127.0.0.1:6380", "nope");
        let found = problems(&text);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].line, 2);
        assert_eq!(found[1].line, 18);
    }

    #[test]
    fn tls_only_proxy_is_valid_without_listen() {
        let text = replace(
            "listen = \"127.0.0.1:6380\"\n",
            "listen_tls = \"127.0.0.1:6443\"\n",
        )
        .replace(
            "[backend]",
            "[proxy.tls]\ncert = \"server.pem\"\nkey = \"server.key\"\nclient_ca = \"ca.pem\"\n\n[backend]",
        );
        let config = parse(&text).expect("valid");
        assert_eq!(config.proxy.listen, None);
        assert_eq!(config.proxy.listen_tls.as_deref(), Some("127.0.0.1:6443"));
        let tls = config.proxy.tls.expect("tls");
        assert_eq!(tls.client_ca.as_deref(), Some("ca.pem"));
    }

    #[test]
    fn listen_tls_without_certificate_is_named() {
        let text = replace(
            "admin_listen",
            "listen_tls = \"127.0.0.1:6443\"\nadmin_listen",
        );
        assert_problem(&text, 3, "[proxy.tls] (cert, key) is missing");
    }

    #[test]
    fn certificate_without_listen_tls_is_named() {
        let text = replace(
            "[backend]",
            "[proxy.tls]\ncert = \"a.pem\"\nkey = \"a.key\"\n\n[backend]",
        );
        assert_problem(&text, 5, "proxy.listen_tls is not");
    }

    #[test]
    fn backend_tls_cert_needs_key_and_a_valid_server_name() {
        let text = replace(
            "address = \"127.0.0.1:6390\"\n",
            "address = \"127.0.0.1:6390\"\n\n[backend.tls]\ncert = \"c.pem\"\nserver_name = \"not a name\"\n",
        );
        assert_problem(&text, 9, "backend.tls.cert is set without backend.tls.key");
        assert_problem(&text, 10, "backend.tls.server_name (\"not a name\")");
        let ok = replace(
            "address = \"127.0.0.1:6390\"\n",
            "address = \"127.0.0.1:6390\"\n\n[backend.tls]\nca = \"ca.pem\"\nserver_name = \"redis.internal\"\n",
        );
        let config = parse(&ok).expect("valid");
        let tls = config.backend.tls.expect("tls");
        assert_eq!(tls.server_name.as_deref(), Some("redis.internal"));
    }
}
