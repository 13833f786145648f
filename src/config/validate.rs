//! The rules a deserialized [`Config`] must meet before keygate runs it.
//!
//! Each rule reports a [`Finding`]: the [`KeyPath`] at fault and a message
//! that starts with that path. Every rule is checked, so one `--check` run
//! lists every problem, not just the first. Positions are not known here;
//! the caller maps paths to lines.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::locate::KeyPath;
use super::{
    BackendConfig, BackendTlsConfig, Cacheable, Config, NearCacheConfig, ProxyConfig,
    ProxyTlsConfig, ServiceConfig, TokenConfig, TtlOverMax,
};

/// Smallest `max_pending_reply_bytes`: below this a single ordinary reply could stall a client.
const MIN_PENDING_REPLY_BYTES: usize = 64 * 1024;
/// Smallest `proto_max_bulk_len` (Redis's own lower bound).
const MIN_BULK_LEN: usize = 1024 * 1024;
/// Largest `proto_max_bulk_len`.
const MAX_BULK_LEN: usize = 4 * 1024 * 1024 * 1024;
/// Most multiplexed connections per backend node.
const MAX_CONNECTIONS: usize = 64;
/// Most writes a multiplexed connection may keep awaiting replies, when limited.
const MAX_WRITES_IN_FLIGHT: usize = 1024;
/// Most redirects one request may follow on a cluster backend.
const MAX_REDIRECTS: u32 = 100;
/// The service name that is the passwordless login.
const DEFAULT_SERVICE: &str = "default";

/// One broken rule: the key at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The key at fault (or the table missing a key).
    pub path: KeyPath,
    /// What is wrong; starts with the path.
    pub message: String,
}

/// Collects findings as the rules run.
struct Findings(Vec<Finding>);

impl Findings {
    fn add(&mut self, path: KeyPath, message: String) {
        self.0.push(Finding { path, message });
    }
}

/// Checks every rule; an empty result means `config` is safe to run.
/// `env_has` says whether an environment variable exists.
pub fn validate(config: &Config, env_has: &dyn Fn(&str) -> bool) -> Vec<Finding> {
    let mut findings = Findings(Vec::new());
    check_proxy(&config.proxy, &mut findings);
    check_backend(&config.backend, env_has, &mut findings);
    check_services(&config.services, env_has, &mut findings);
    check_max_dedicated(config, &mut findings);
    check_databases(config, &mut findings);
    check_cluster_prefixes(config, &mut findings);
    findings.0
}

/// On a cluster backend a prefix may hold no `{` or `}`: keygate puts it
/// in front of the key, and a brace in it would become (or close) the
/// key's hash tag, moving the service's keys to other slots or pinning all
/// of them to one.
fn check_cluster_prefixes(config: &Config, out: &mut Findings) {
    if !config.backend.is_cluster() {
        return;
    }
    for (i, service) in config.services.iter().enumerate() {
        if service.prefix.contains(['{', '}']) {
            let at = KeyPath::root("service").index(i);
            out.add(
                at.key("prefix"),
                format!(
                    "{at}.prefix ({:?}) of service {:?} contains '{{' or '}}', which a cluster backend does not allow: it would change or pin the slots of the service's keys",
                    service.prefix, service.name
                ),
            );
        }
    }
}

/// `[backend] databases` is at least 1 and holds the default `database`;
/// a service's `databases` lists numbers below it, the default among them
/// (a new connection starts there, before any SELECT).
fn check_databases(config: &Config, out: &mut Findings) {
    let backend = &config.backend;
    let at = KeyPath::root("backend");
    if backend.databases == 0 {
        out.add(
            at.key("databases"),
            "backend.databases must be greater than 0".into(),
        );
    } else if backend.database >= backend.databases {
        out.add(
            at.key("database"),
            format!(
                "backend.database ({}) must be below backend.databases ({})",
                backend.database, backend.databases
            ),
        );
    }
    for (i, service) in config.services.iter().enumerate() {
        let Some(list) = &service.databases else {
            continue;
        };
        let at = KeyPath::root("service").index(i);
        let path = at.key("databases");
        if list.is_empty() {
            out.add(
                path,
                format!("{at}.databases must list at least one database (leave it out for all)"),
            );
            continue;
        }
        if let Some(db) = list.iter().find(|&&db| db >= backend.databases) {
            out.add(
                path,
                format!(
                    "{at}.databases lists {db}, past the backend's databases ({})",
                    backend.databases
                ),
            );
        } else if !list.contains(&backend.database) {
            out.add(
                path,
                format!(
                    "{at}.databases must include backend.database ({}), where every connection starts",
                    backend.database
                ),
            );
        }
    }
}

/// A service's `max_dedicated` is at least 1 and at most the pool it is
/// taken from.
fn check_max_dedicated(config: &Config, out: &mut Findings) {
    let pool = config.backend.dedicated_max;
    for (i, service) in config.services.iter().enumerate() {
        let Some(max) = service.max_dedicated else {
            continue;
        };
        let at = KeyPath::root("service").index(i);
        if max == 0 || max > pool {
            out.add(
                at.key("max_dedicated"),
                format!("{at}.max_dedicated ({max}) must be between 1 and backend.dedicated_max ({pool})"),
            );
        }
    }
}

fn check_proxy(proxy: &ProxyConfig, out: &mut Findings) {
    let at = KeyPath::root("proxy");
    check_listeners(&at, proxy, out);
    if let Some(admin) = &proxy.admin_listen {
        check_listen_address(&at.key("admin_listen"), admin, out);
    }
    if proxy.max_clients == 0 {
        out.add(
            at.key("max_clients"),
            "proxy.max_clients must be greater than 0".into(),
        );
    }
    if proxy.max_pending_reply_bytes < MIN_PENDING_REPLY_BYTES {
        out.add(
            at.key("max_pending_reply_bytes"),
            format!(
                "proxy.max_pending_reply_bytes ({}) is below the minimum of {MIN_PENDING_REPLY_BYTES} (64 KiB)",
                proxy.max_pending_reply_bytes
            ),
        );
    }
    if let Some(hard) = proxy.max_pending_reply_bytes_hard {
        if hard < proxy.max_pending_reply_bytes {
            out.add(
                at.key("max_pending_reply_bytes_hard"),
                format!(
                    "proxy.max_pending_reply_bytes_hard ({hard}) is below proxy.max_pending_reply_bytes ({})",
                    proxy.max_pending_reply_bytes
                ),
            );
        }
    }
    if !(MIN_BULK_LEN..=MAX_BULK_LEN).contains(&proxy.proto_max_bulk_len) {
        out.add(
            at.key("proto_max_bulk_len"),
            format!(
                "proxy.proto_max_bulk_len ({}) must be between {MIN_BULK_LEN} (1 MiB) and {MAX_BULK_LEN} (4 GiB)",
                proxy.proto_max_bulk_len
            ),
        );
    }
    if let Some(announce) = &proxy.announce {
        if proxy.cluster_emulation {
            check_host_port(&at.key("announce"), announce, out);
        } else {
            out.add(
                at.key("announce"),
                "proxy.announce is set but proxy.cluster_emulation is not, so nothing would announce it".into(),
            );
        }
    }
    if proxy.workers == Some(0) {
        out.add(
            at.key("workers"),
            "proxy.workers must be greater than 0 (leave it out for one per core)".into(),
        );
    }
}

/// At least one client listener; the TLS one only with its certificate, and
/// a certificate only with a listener that uses it.
fn check_listeners(at: &KeyPath, proxy: &ProxyConfig, out: &mut Findings) {
    if let Some(listen) = &proxy.listen {
        check_listen_address(&at.key("listen"), listen, out);
    }
    if let Some(listen_tls) = &proxy.listen_tls {
        check_listen_address(&at.key("listen_tls"), listen_tls, out);
    }
    match (&proxy.listen, &proxy.listen_tls, &proxy.tls) {
        (None, None, _) => out.add(
            at.clone(),
            "missing key 'listen' in [proxy] (set listen, listen_tls, or both)".into(),
        ),
        (Some(plain), Some(tls), _) if plain == tls => out.add(
            at.key("listen_tls"),
            format!("proxy.listen_tls ({tls:?}) is the same address as proxy.listen"),
        ),
        _ => {}
    }
    match (&proxy.listen_tls, &proxy.tls) {
        (Some(_), None) => out.add(
            at.key("listen_tls"),
            "proxy.listen_tls is set but [proxy.tls] (cert, key) is missing".into(),
        ),
        (None, Some(_)) => out.add(
            at.key("tls"),
            "[proxy.tls] is set but proxy.listen_tls is not, so no listener would use it".into(),
        ),
        _ => {}
    }
    if let Some(tls) = &proxy.tls {
        check_proxy_tls(&at.key("tls"), tls, out);
    }
}

fn check_proxy_tls(at: &KeyPath, tls: &ProxyTlsConfig, out: &mut Findings) {
    check_pem_path(&at.key("cert"), &tls.cert, out);
    check_pem_path(&at.key("key"), &tls.key, out);
    if let Some(ca) = &tls.client_ca {
        check_pem_path(&at.key("client_ca"), ca, out);
    }
}

fn check_backend_tls(at: &KeyPath, tls: &BackendTlsConfig, out: &mut Findings) {
    for (key, value) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
        if let Some(path) = value {
            check_pem_path(&at.key(key), path, out);
        }
    }
    match (&tls.cert, &tls.key) {
        (Some(_), None) => out.add(
            at.key("cert"),
            format!("{at}.cert is set without {at}.key; a client certificate needs both"),
        ),
        (None, Some(_)) => out.add(
            at.key("key"),
            format!("{at}.key is set without {at}.cert; a client certificate needs both"),
        ),
        _ => {}
    }
    if let Some(name) = &tls.server_name {
        if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
            out.add(
                at.key("server_name"),
                format!("{at}.server_name ({name:?}) is not a DNS name or IP address"),
            );
        }
    }
}

/// A PEM path must at least be non-empty; whether it reads is checked at start.
fn check_pem_path(path: &KeyPath, value: &str, out: &mut Findings) {
    if value.trim().is_empty() {
        out.add(path.clone(), format!("{path} must name a PEM file"));
    }
}

/// A listener address must be an IP socket address: `127.0.0.1:6380` or `[::1]:6380`.
fn check_listen_address(path: &KeyPath, value: &str, out: &mut Findings) {
    if value.parse::<SocketAddr>().is_err() {
        out.add(
            path.clone(),
            format!("{path} ({value:?}) is not a socket address (ip:port, IPv6 as [addr]:port)"),
        );
    }
}

fn check_backend(backend: &BackendConfig, env_has: &dyn Fn(&str) -> bool, out: &mut Findings) {
    let at = KeyPath::root("backend");
    let sentinel_mode = !backend.sentinels.is_empty() || backend.master_name.is_some();
    check_backend_kind(&at, backend, sentinel_mode, out);
    if let Some(address) = &backend.address {
        check_host_port(&at.key("address"), address, out);
    }
    if sentinel_mode {
        if backend.sentinels.is_empty() {
            out.add(
                at.key("sentinels"),
                "backend.sentinels must list at least one sentinel when master_name is set".into(),
            );
        }
        match &backend.master_name {
            None => out.add(
                at.key("master_name"),
                "backend.master_name is required when sentinels are set".into(),
            ),
            Some(name) if name.trim().is_empty() => out.add(
                at.key("master_name"),
                "backend.master_name must not be empty".into(),
            ),
            Some(_) => {}
        }
    } else {
        for (key, set) in [
            ("sentinel_username", backend.sentinel_username.is_some()),
            ("sentinel_password", backend.sentinel_password.is_some()),
            (
                "sentinel_password_env",
                backend.sentinel_password_env.is_some(),
            ),
        ] {
            if set {
                out.add(
                    at.key(key),
                    format!("backend.{key} is set but no sentinels are configured"),
                );
            }
        }
    }
    for (i, sentinel) in backend.sentinels.iter().enumerate() {
        check_host_port(&at.key("sentinels").index(i), sentinel, out);
    }
    check_secret_pair(
        &at,
        ("password", backend.password.as_deref()),
        ("password_env", backend.password_env.as_deref()),
        env_has,
        out,
    );
    if let Some(path) = &backend.password_file {
        if backend.password.is_some() || backend.password_env.is_some() {
            out.add(
                at.key("password_file"),
                "backend.password_file is set beside password or password_env; use one".into(),
            );
        }
        if let Err(e) = super::read_password_file(path) {
            out.add(
                at.key("password_file"),
                format!("backend.password_file {}: {e}", path.display()),
            );
        }
    }
    check_secret_pair(
        &at,
        ("sentinel_password", backend.sentinel_password.as_deref()),
        (
            "sentinel_password_env",
            backend.sentinel_password_env.as_deref(),
        ),
        env_has,
        out,
    );
    if let Some(connections) = backend
        .connections
        .filter(|n| !(1..=MAX_CONNECTIONS).contains(n))
    {
        out.add(
            at.key("connections"),
            format!("backend.connections ({connections}) must be between 1 and {MAX_CONNECTIONS}"),
        );
    }
    if backend.writes_in_flight > MAX_WRITES_IN_FLIGHT {
        out.add(
            at.key("writes_in_flight"),
            format!(
                "backend.writes_in_flight ({}) must be at most {MAX_WRITES_IN_FLIGHT} (0: no limit)",
                backend.writes_in_flight
            ),
        );
    }
    if backend.dedicated_max < 1 {
        out.add(
            at.key("dedicated_max"),
            "backend.dedicated_max must be at least 1".into(),
        );
    }
    if let Some(tls) = &backend.tls {
        check_backend_tls(&at.key("tls"), tls, out);
    }
    for (key, value) in [
        ("connect_timeout", backend.connect_timeout),
        ("command_timeout", backend.command_timeout),
        ("dedicated_idle_timeout", backend.dedicated_idle_timeout),
    ] {
        if value.is_zero() {
            out.add(at.key(key), format!("backend.{key} must be greater than 0"));
        }
    }
}

/// Exactly one backend kind: `address` (standalone), `sentinels` +
/// `master_name`, or `cluster`; the cluster's own keys are checked here too.
fn check_backend_kind(
    at: &KeyPath,
    backend: &BackendConfig,
    sentinel_mode: bool,
    out: &mut Findings,
) {
    const PICK: &str = "use exactly one of address (standalone), sentinels + master_name (Sentinel), cluster (Redis Cluster)";
    match (&backend.address, sentinel_mode, &backend.cluster) {
        (None, false, None) => out.add(
            at.clone(),
            "backend needs one of address, sentinels + master_name, or cluster".into(),
        ),
        (Some(_), true, _) => out.add(
            at.key("address"),
            format!("backend.address is set together with sentinels/master_name; {PICK}"),
        ),
        (Some(_), false, Some(_)) => out.add(
            at.key("cluster"),
            format!("backend.cluster is set together with address; {PICK}"),
        ),
        _ => {}
    }
    let Some(seeds) = &backend.cluster else {
        return;
    };
    if sentinel_mode {
        out.add(
            at.key("cluster"),
            format!("backend.cluster is set together with sentinels/master_name; {PICK}"),
        );
    }
    if seeds.is_empty() {
        out.add(
            at.key("cluster"),
            "backend.cluster must list at least one seed node (host:port)".into(),
        );
    }
    for (i, seed) in seeds.iter().enumerate() {
        check_host_port(&at.key("cluster").index(i), seed, out);
    }
    if backend.cluster_refresh.is_zero() {
        out.add(
            at.key("cluster_refresh"),
            "backend.cluster_refresh must be greater than 0".into(),
        );
    }
    if backend.max_redirects == 0 || backend.max_redirects > MAX_REDIRECTS {
        out.add(
            at.key("max_redirects"),
            format!(
                "backend.max_redirects ({}) must be between 1 and {MAX_REDIRECTS}",
                backend.max_redirects
            ),
        );
    }
}

/// A password given inline and from the environment: not both, and the
/// variable must exist now, so a missing secret fails at start, not at first use.
fn check_secret_pair(
    at: &KeyPath,
    (inline_key, inline): (&str, Option<&str>),
    (env_key, env): (&str, Option<&str>),
    env_has: &dyn Fn(&str) -> bool,
    out: &mut Findings,
) {
    if inline.is_some() && env.is_some() {
        out.add(
            at.key(env_key),
            format!("{at}.{inline_key} and {at}.{env_key} are both set; use one"),
        );
    }
    if let Some(var) = env {
        check_env_var(&at.key(env_key), var, env_has, out);
    }
}

/// The variable a `*_env` key names must be a plausible name that is set.
fn check_env_var(path: &KeyPath, var: &str, env_has: &dyn Fn(&str) -> bool, out: &mut Findings) {
    if var.is_empty() {
        out.add(path.clone(), format!("{path} must name a variable"));
    } else if !env_has(var) {
        out.add(
            path.clone(),
            format!("{path} names environment variable {var:?}, which is not set"),
        );
    }
}

/// A backend address: `host:port` with a hostname, IPv4 or `[IPv6]`, and a non-zero port.
fn check_host_port(path: &KeyPath, value: &str, out: &mut Findings) {
    if !is_host_port(value) {
        out.add(
            path.clone(),
            format!("{path} ({value:?}) is not host:port (IPv6 as [addr]:port)"),
        );
    }
}

fn is_host_port(value: &str) -> bool {
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return addr.port() != 0;
    }
    let Some((host, port)) = value.rsplit_once(':') else {
        return false;
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    port_ok && host_ok
}

fn check_services(services: &[ServiceConfig], env_has: &dyn Fn(&str) -> bool, out: &mut Findings) {
    let mut first_with_name: HashMap<&str, usize> = HashMap::new();
    for (i, service) in services.iter().enumerate() {
        let at = KeyPath::root("service").index(i);
        check_service(&at, service, env_has, out);
        if let Some(first) = first_with_name.get(service.name.as_str()) {
            out.add(
                at.key("name"),
                format!(
                    "{at}.name ({:?}) is already used by service[{first}]",
                    service.name
                ),
            );
        } else {
            first_with_name.insert(&service.name, i);
        }
    }
    check_prefix_overlaps(services, out);
}

fn check_service(
    at: &KeyPath,
    service: &ServiceConfig,
    env_has: &dyn Fn(&str) -> bool,
    out: &mut Findings,
) {
    if service.name.trim().is_empty() {
        out.add(at.key("name"), format!("{at}.name must not be empty"));
    }
    check_service_password(at, service, env_has, out);

    if service.prefix.is_empty() && service.isolation != Some(false) {
        out.add(
            at.key("prefix"),
            format!(
                "{at}.prefix is empty; an unprefixed service must say isolation = false explicitly"
            ),
        );
    }

    for (key, value) in [
        ("default_ttl", service.default_ttl),
        ("max_ttl", service.max_ttl),
    ] {
        if value.is_some_and(|d| d.is_zero()) {
            out.add(at.key(key), format!("{at}.{key} must be greater than 0"));
        }
    }
    if let (Some(default_ttl), Some(max_ttl)) = (service.default_ttl, service.max_ttl) {
        if max_ttl < default_ttl {
            out.add(
                at.key("max_ttl"),
                format!(
                    "{at}.max_ttl ({:?}) is below default_ttl ({:?})",
                    human(max_ttl),
                    human(default_ttl)
                ),
            );
        }
    }
    if service.ttl_over_max == TtlOverMax::Reject && service.max_ttl.is_none() {
        out.add(
            at.key("ttl_over_max"),
            format!("{at}.ttl_over_max = \"reject\" requires max_ttl"),
        );
    }

    for (i, command) in service.deny_commands.iter().enumerate() {
        let is_name = !command.is_empty()
            && command
                .chars()
                .all(|c| c.is_ascii_graphic() && c != '"' && c != '\'');
        if !is_name {
            let path = at.key("deny_commands").index(i);
            out.add(
                path.clone(),
                format!("{path} ({command:?}) is not a command name"),
            );
        }
    }

    if let Some(near) = &service.near_cache {
        check_near_cache(&at.key("near_cache"), near, out);
    }
    for (key, value) in [
        ("max_value_bytes", service.max_value_bytes),
        ("max_clients", service.max_clients),
    ] {
        if value == Some(0) {
            out.add(at.key(key), format!("{at}.{key} must be greater than 0"));
        }
    }
}

/// `default` is the passwordless login; every other service has exactly one password source.
fn check_service_password(
    at: &KeyPath,
    service: &ServiceConfig,
    env_has: &dyn Fn(&str) -> bool,
    out: &mut Findings,
) {
    let sources: Vec<&str> = [
        ("password", service.password.is_some()),
        ("password_sha256", service.password_sha256.is_some()),
        ("password_env", service.password_env.is_some()),
    ]
    .into_iter()
    .filter_map(|(key, set)| set.then_some(key))
    .collect();

    if service.name == DEFAULT_SERVICE {
        if let Some(key) = sources.first() {
            out.add(
                at.key(key),
                format!("{at}.{key} is set, but the service named \"default\" is the passwordless login and takes no password"),
            );
        }
    } else if sources.is_empty() && service.token.is_none() {
        out.add(
            at.clone(),
            format!(
                "{at} ({:?}) has no password; set one of password, password_sha256, password_env, or [service.token]",
                service.name
            ),
        );
    } else if let [_, second, ..] = sources[..] {
        out.add(
            at.key(second),
            format!("{at} sets more than one of {}; use one", sources.join(", ")),
        );
    }

    if let Some(password) = &service.password {
        if password.is_empty() {
            out.add(
                at.key("password"),
                format!("{at}.password must not be empty"),
            );
        }
    }
    if let Some(hash) = &service.password_sha256 {
        if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
            out.add(
                at.key("password_sha256"),
                format!("{at}.password_sha256 must be 64 hex characters (a SHA-256 digest)"),
            );
        }
    }
    if let Some(var) = &service.password_env {
        check_env_var(&at.key("password_env"), var, env_has, out);
    }
    if let Some(token) = &service.token {
        check_service_token(&at.key("token"), service, token, env_has, out);
    }
}

/// `[service.near_cache]`: budgets above zero, and only commands the near
/// cache knows how to keep.
fn check_near_cache(at: &KeyPath, near: &NearCacheConfig, out: &mut Findings) {
    for (key, value) in [
        ("max_bytes", near.max_bytes),
        ("max_value_bytes", near.max_value_bytes),
    ] {
        if value == 0 {
            out.add(at.key(key), format!("{at}.{key} must be greater than 0"));
        }
    }
    if near.max_value_bytes > near.max_bytes {
        out.add(
            at.key("max_value_bytes"),
            format!(
                "{at}.max_value_bytes ({}) is above max_bytes ({})",
                near.max_value_bytes, near.max_bytes
            ),
        );
    }
    if near.max_age.is_zero() {
        out.add(
            at.key("max_age"),
            format!("{at}.max_age must be greater than 0"),
        );
    }
    for (i, command) in near.commands.iter().enumerate() {
        if Cacheable::from_name(command).is_none() {
            let path = at.key("commands").index(i);
            out.add(
                path.clone(),
                format!(
                    "{path} ({command:?}) is not a command the near cache keeps (supported: {})",
                    Cacheable::SUPPORTED
                ),
            );
        }
    }
}

/// `[service.token]`: one key source that can be used now, and a claim to
/// name the service by.
fn check_service_token(
    at: &KeyPath,
    service: &ServiceConfig,
    token: &TokenConfig,
    env_has: &dyn Fn(&str) -> bool,
    out: &mut Findings,
) {
    if service.name == DEFAULT_SERVICE {
        out.add(
            at.clone(),
            format!("{at} is set, but the service named \"default\" is the passwordless login"),
        );
    }
    match (&token.hs256_secret_env, &token.jwks_file) {
        (Some(_), Some(_)) => out.add(
            at.key("jwks_file"),
            format!("{at} sets both hs256_secret_env and jwks_file; use one"),
        ),
        (None, None) => out.add(
            at.clone(),
            format!("{at} needs a key: hs256_secret_env or jwks_file"),
        ),
        (Some(var), None) => check_env_var(&at.key("hs256_secret_env"), var, env_has, out),
        (None, Some(path)) => {
            let read = std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|text| {
                    serde_json::from_str::<jsonwebtoken::jwk::JwkSet>(&text)
                        .map_err(|e| e.to_string())
                });
            match read {
                Ok(set) if set.keys.is_empty() => out.add(
                    at.key("jwks_file"),
                    format!("{at}.jwks_file {} holds no key", path.display()),
                ),
                Ok(_) => {}
                Err(e) => out.add(
                    at.key("jwks_file"),
                    format!(
                        "{at}.jwks_file {} is not a readable JWKS: {e}",
                        path.display()
                    ),
                ),
            }
        }
    }
    if token.service_claim.is_empty() {
        out.add(
            at.key("service_claim"),
            format!("{at}.service_claim must name a claim"),
        );
    }
}

/// Isolated services' prefixes must not overlap, or one service could reach
/// another's keys. Unprefixed services (`isolation = false`) see the whole
/// keyspace by design and are left out.
fn check_prefix_overlaps(services: &[ServiceConfig], out: &mut Findings) {
    for (j, later) in services.iter().enumerate() {
        if later.prefix.is_empty() {
            continue;
        }
        for (i, earlier) in services.iter().enumerate().take(j) {
            if earlier.prefix.is_empty() {
                continue;
            }
            let overlap = later.prefix.starts_with(&earlier.prefix)
                || earlier.prefix.starts_with(&later.prefix);
            if overlap {
                out.add(
                    KeyPath::root("service").index(j).key("prefix"),
                    format!(
                        "service[{j}].prefix ({:?}) overlaps service[{i}].prefix ({:?})",
                        later.prefix, earlier.prefix
                    ),
                );
            }
        }
    }
}

/// A duration as it would be written in the config (`15m`, `500ms`).
fn human(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}
