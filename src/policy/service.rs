//! Services: the policy a client gets after AUTH (or, without AUTH, the
//! `default` service), and the login that selects one.
//!
//! Passwords are compared in constant time against a SHA-256 digest, so the
//! plain text of a configured password is not kept once the config is read.
//!
//! A config reload builds a new [`Services`] with [`Services::reloaded`]: each
//! service that keeps its name shares its client counter with its previous
//! self, so `max_clients` counts stay right while old and new `Service`
//! values are both held by clients; a service keeps the metrics slot of its
//! name, so label values stay the ones registered at start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use std::sync::atomic::{AtomicUsize, Ordering};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::access::AccessTable;
use super::namespace::Namespace;
use super::procedure_gate::ProcedureGate;
use crate::config::{Config, ReadFrom, ServiceConfig, TtlOverMax};
use crate::hotkeys::HotKeys;
use crate::near_cache::NearCache;
use crate::policy::token::{self, TokenRefusal, TokenVerifier};
use crate::policy::ttl::TtlPolicy;

/// The runtime form of one `[[service]]`.
#[derive(Debug)]
pub struct Service {
    /// The service's slot in metrics: its position in the config keygate
    /// started with (a service added by reload has none: `usize::MAX`, which
    /// metrics count as not logged in).
    pub index: usize,
    /// The service's name from config.
    pub name: String,
    /// Prepended to every key and channel (empty when isolation is off).
    pub prefix: Vec<u8>,
    /// Whether keys are confined to `prefix`.
    pub isolation: bool,
    /// TTL given to keys written without one.
    pub default_ttl: Option<Duration>,
    /// Longest TTL a key of this service may get.
    pub max_ttl: Option<Duration>,
    /// Clamp or refuse a TTL above `max_ttl`.
    pub ttl_over_max: TtlOverMax,
    /// Writes with a larger argument are refused.
    pub max_value_bytes: Option<usize>,
    /// Most clients logged in as this service at once.
    pub max_clients: Option<usize>,
    /// Upper-case command names this service may not run.
    pub deny_commands: Vec<String>,
    /// Where this service's reads go.
    pub read_from: ReadFrom,
    /// May run administrative commands and see every service's figures.
    pub admin: bool,
    /// May run EVAL/FCALL (declared keys are prefixed; the script is trusted).
    pub allow_scripts: bool,
    /// The namespace confining the service's keys; `None` when isolation is off.
    pub namespace: Option<Arc<Namespace>>,
    /// TTL governance for the keys this service writes.
    pub ttl: TtlPolicy,
    /// [`super::access::check`]'s answer for every command, from `deny_commands`
    /// and `admin`.
    pub access: AccessTable,
    /// Clients logged in as this service right now, for `max_clients`;
    /// shared with the same-named service of earlier and later reloads.
    pub clients: Arc<AtomicUsize>,
    /// Most dedicated connections its clients hold at once (`max_dedicated`
    /// or the fair share [`Services`] works out).
    pub max_dedicated: u32,
    /// Dedicated connections its clients hold right now; shared across
    /// reloads like `clients`.
    pub dedicated: Arc<AtomicUsize>,
    /// Runs its keyspace procedures one at a time; shared across reloads
    /// while the prefix stays the same.
    pub procedures: Arc<ProcedureGate>,
    /// The databases its clients may use, sorted; `None`: all the backend has.
    pub databases: Option<Box<[u32]>>,
    /// `[service.token]`: the keys and claims a token login is checked with.
    pub token: Option<TokenVerifier>,
    /// Its hot keys, when they are counted (`None`: its reads are not
    /// sampled); shared across reloads while the prefix stays the same.
    pub hot_keys: Option<Arc<HotKeys>>,
    /// `[service.near_cache]` when enabled; shared with the same-named
    /// service of earlier and later reloads (a reload reconfigures it).
    pub near_cache: Option<Arc<NearCache>>,
    password_sha256: Option<[u8; 32]>,
}

impl Service {
    /// The near cache warms from this service's hot keys after a failover.
    fn link_warm_source(&self) {
        if let (Some(cache), Some(hot)) = (&self.near_cache, &self.hot_keys) {
            cache.set_warm_source(hot.clone(), &self.prefix);
        }
    }

    /// Builds the runtime service; the config was validated already.
    pub fn from_config(index: usize, c: &ServiceConfig) -> Service {
        let password = c.password.clone().or_else(|| {
            c.password_env
                .as_ref()
                .and_then(|var| std::env::var(var).ok())
        });
        let password_sha256 = match (&password, &c.password_sha256) {
            (Some(p), _) => Some(Sha256::digest(p.as_bytes()).into()),
            (None, Some(hex)) => decode_hex32(hex),
            (None, None) => None,
        };
        let mut service = Service {
            index,
            name: c.name.clone(),
            prefix: c.prefix.as_bytes().to_vec(),
            isolation: c.isolation.unwrap_or(true) && !c.prefix.is_empty(),
            default_ttl: c.default_ttl,
            max_ttl: c.max_ttl,
            ttl_over_max: c.ttl_over_max,
            max_value_bytes: c.max_value_bytes,
            max_clients: c.max_clients,
            deny_commands: c.deny_commands.iter().map(|s| s.to_uppercase()).collect(),
            read_from: c.read_from,
            admin: c.admin,
            allow_scripts: c.allow_scripts,
            namespace: None,
            ttl: TtlPolicy::new(c.default_ttl, c.max_ttl, c.ttl_over_max),
            access: AccessTable::default(),
            clients: Arc::new(AtomicUsize::new(0)),
            // The share depends on the other services: `Services` sets it.
            max_dedicated: c.max_dedicated.unwrap_or(u32::MAX),
            dedicated: Arc::new(AtomicUsize::new(0)),
            procedures: Arc::new(ProcedureGate::default()),
            databases: c.databases.as_ref().map(|list| {
                let mut list = list.clone();
                list.sort_unstable();
                list.dedup();
                list.into_boxed_slice()
            }),
            token: c
                .token
                .as_ref()
                .map(|t| TokenVerifier::from_config(&c.name, t)),
            near_cache: c
                .near_cache
                .as_ref()
                .filter(|n| n.enabled)
                .map(NearCache::new),
            // The hot keys are counted for services with a near cache,
            // which warms its cache from them after a failover.
            hot_keys: c
                .near_cache
                .as_ref()
                .filter(|n| n.enabled)
                .map(|_| Arc::new(HotKeys::default())),
            password_sha256,
        };
        service.namespace = Namespace::for_service(&service).map(Arc::new);
        service.access = AccessTable::new(&service.deny_commands, service.admin);
        service.link_warm_source();
        service
    }

    /// Constant-time check of a password against this service's digest.
    pub fn password_matches(&self, password: &[u8]) -> bool {
        match &self.password_sha256 {
            Some(want) => {
                let got: [u8; 32] = Sha256::digest(password).into();
                bool::from(got.ct_eq(want))
            }
            None => false,
        }
    }

    /// Counts one more client as this service, unless `max_clients` is reached.
    pub fn try_admit(&self) -> bool {
        let limit = self.max_clients.unwrap_or(usize::MAX);
        self.clients
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// A client of this service left or switched away.
    pub fn release(&self) {
        let _ = self
            .clients
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Counts a client that was already logged in as this service before a
    /// reload: it stays, even over a lowered `max_clients` (the limit applies
    /// to new logins).
    pub fn admit_carried_over(&self) {
        self.clients.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether `other` counts its clients in the same counter (the same
    /// service across a reload).
    pub fn shares_client_count(&self, other: &Service) -> bool {
        Arc::ptr_eq(&self.clients, &other.clients)
    }

    /// Counts one more dedicated connection held by this service's
    /// clients, unless it holds `max_dedicated` already.
    pub fn try_hold_dedicated(&self) -> Option<DedicatedPermit> {
        let limit = usize::try_from(self.max_dedicated).unwrap_or(usize::MAX);
        self.dedicated
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| DedicatedPermit {
                held: self.dedicated.clone(),
            })
    }

    /// Dedicated connections this service's clients hold now.
    pub fn dedicated_held(&self) -> usize {
        self.dedicated.load(Ordering::Relaxed)
    }

    /// Whether this service has a password (or takes tokens) at all.
    pub fn has_password(&self) -> bool {
        self.password_sha256.is_some() || self.token.is_some()
    }

    /// Checks `password` as a token of this service, then as its password:
    /// the login's expiry (`None`: a password, which does not expire).
    fn check_login(&self, password: &[u8]) -> Result<Option<SystemTime>, LoginError> {
        let token_refusal = match &self.token {
            Some(verifier) if token::looks_like_token(password) => {
                match verifier.verify(password, &self.name) {
                    Ok(expiry) => return Ok(Some(expiry)),
                    Err(refusal) => Some(refusal),
                }
            }
            _ => None,
        };
        if self.password_matches(password) {
            return Ok(None);
        }
        Err(token_refusal.map_or(LoginError::WrongPass, LoginError::Token))
    }
}

/// One dedicated connection counted against a service's `max_dedicated`;
/// dropping it gives the count back, on every path (a panic included).
#[derive(Debug)]
pub struct DedicatedPermit {
    held: Arc<AtomicUsize>,
}

impl Drop for DedicatedPermit {
    fn drop(&mut self) {
        let _ = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

fn decode_hex32(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        *out.get_mut(i)? = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// Why a login failed; the text is Redis's own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("WRONGPASS invalid username-password pair or user is disabled.")]
    /// Redis's `-WRONGPASS`: no such service or a wrong password.
    WrongPass,
    #[error("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")]
    /// A bare AUTH while no service has a password, as Redis answers it.
    NoPasswordConfigured,
    /// A token refused: the client sees Redis's `-WRONGPASS`, the metrics
    /// the reason.
    #[error("WRONGPASS invalid username-password pair or user is disabled.")]
    Token(TokenRefusal),
}

impl LoginError {
    /// The `reason` label of `keygate_auth_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            LoginError::WrongPass => "wrong_password",
            LoginError::NoPasswordConfigured => "no_password_configured",
            LoginError::Token(refusal) => refusal.reason(),
        }
    }
}

/// A successful login: the service, and when the token it used expires.
#[derive(Debug, Clone)]
pub struct Login {
    pub service: Arc<Service>,
    /// `None` for a password login.
    pub expires: Option<SystemTime>,
}

/// Every configured service, and the login rules between them.
#[derive(Debug)]
pub struct Services {
    by_name: HashMap<String, Arc<Service>>,
    ordered: Vec<Arc<Service>>,
    default: Option<Arc<Service>>,
    /// 0 at start, one more for each applied reload.
    generation: u64,
}

impl Services {
    /// Builds the registry from a validated config.
    pub fn from_config(config: &Config) -> Services {
        let ordered = config
            .services
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut service = Service::from_config(i, c);
                service.max_dedicated =
                    c.max_dedicated_of(config.backend.dedicated_max, config.services.len());
                Arc::new(service)
            })
            .collect();
        Services::from_ordered(ordered, 0)
    }

    /// The registry of a reloaded config, one generation after `previous`.
    ///
    /// `metrics_slot` names the metrics slot of a service name (its position
    /// in the config keygate started with); services it does not know get
    /// `usize::MAX`. Same-named services share `previous`'s client and
    /// dedicated-connection counters. `dedicated_max` is the pool in force
    /// (a changed `[backend]` needs a restart).
    pub fn reloaded(
        config: &Config,
        previous: &Services,
        metrics_slot: &dyn Fn(&str) -> Option<usize>,
        dedicated_max: u32,
    ) -> Services {
        let ordered = config
            .services
            .iter()
            .map(|c| {
                let slot = metrics_slot(&c.name).unwrap_or(usize::MAX);
                let mut service = Service::from_config(slot, c);
                service.max_dedicated = c.max_dedicated_of(dedicated_max, config.services.len());
                if let Some(before) = previous.get(&c.name) {
                    service.clients = before.clients.clone();
                    service.dedicated = before.dedicated.clone();
                    if before.prefix == service.prefix {
                        service.procedures = before.procedures.clone();
                        if service.hot_keys.is_some() {
                            service.hot_keys = before.hot_keys.clone().or(service.hot_keys);
                        }
                        // The entries are keyed by prefixed key: they stay
                        // right while the prefix does.
                        if let (Some(kept), Some(near)) = (&before.near_cache, &c.near_cache) {
                            if service.near_cache.is_some() {
                                kept.reconfigure(near);
                                service.near_cache = Some(kept.clone());
                            }
                        }
                        service.link_warm_source();
                    }
                }
                Arc::new(service)
            })
            .collect();
        Services::from_ordered(ordered, previous.generation.wrapping_add(1))
    }

    fn from_ordered(ordered: Vec<Arc<Service>>, generation: u64) -> Services {
        let by_name = ordered
            .iter()
            .map(|s| (s.name.clone(), s.clone()))
            .collect::<HashMap<_, _>>();
        let default = by_name.get("default").cloned();
        Services {
            by_name,
            ordered,
            default,
            generation,
        }
    }

    /// Which reload built this registry (0: the config keygate started with).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The service of clients that never AUTH; `None` means AUTH is required.
    pub fn default_service(&self) -> Option<Arc<Service>> {
        self.default.clone()
    }

    /// Every service in config order.
    pub fn all(&self) -> &[Arc<Service>] {
        &self.ordered
    }

    /// A service by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Service>> {
        self.by_name.get(name)
    }

    /// `AUTH [service] password`: the service whose password matches.
    ///
    /// With a name, only that service is tried. Without one, every service
    /// with a password is tried (each comparison constant-time), the way a
    /// bare `AUTH password` logs in as `default` in Redis.
    pub fn login(&self, name: Option<&[u8]>, password: &[u8]) -> Result<Login, LoginError> {
        let login = |s: &Arc<Service>| {
            s.check_login(password).map(|expires| Login {
                service: s.clone(),
                expires,
            })
        };
        match name {
            Some(name) => {
                let found = std::str::from_utf8(name)
                    .ok()
                    .and_then(|n| self.by_name.get(n));
                match found {
                    Some(s) => login(s),
                    None => Err(LoginError::WrongPass),
                }
            }
            None => {
                if !self.ordered.iter().any(|s| s.has_password()) {
                    return Err(LoginError::NoPasswordConfigured);
                }
                if token::looks_like_token(password) {
                    // The token names its service; only that one checks it.
                    let named = self
                        .ordered
                        .iter()
                        .find(|s| s.token.as_ref().is_some_and(|t| t.names(password, &s.name)));
                    if let Some(s) = named {
                        return login(s);
                    }
                }
                let mut hit = None;
                for s in &self.ordered {
                    if s.password_matches(password) && hit.is_none() {
                        hit = Some(s.clone());
                    }
                }
                match hit {
                    Some(service) => Ok(Login {
                        service,
                        expires: None,
                    }),
                    None if token::looks_like_token(password)
                        && self.ordered.iter().any(|s| s.token.is_some()) =>
                    {
                        Err(LoginError::Token(TokenRefusal::WrongService))
                    }
                    None => Err(LoginError::WrongPass),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services(service_block: &str) -> Services {
        let config = Config::parse(&format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n[backend]\naddress = \"127.0.0.1:1\"\n{service_block}"
        ))
        .expect("config");
        Services::from_config(&config)
    }

    /// `password_sha256` logs in with the password whose digest it is, and
    /// the runtime service keeps only the digest, never the plain text.
    #[test]
    fn password_sha256_logs_in_and_no_plain_text_is_kept() {
        let digest = hex(&Sha256::digest(b"s3cret-MARKER"));
        let hashed = services(&format!(
            "[[service]]\nname = \"billing\"\nprefix = \"b:\"\npassword_sha256 = \"{digest}\"\n"
        ));
        assert!(hashed.login(Some(b"billing"), b"s3cret-MARKER").is_ok());
        assert_eq!(
            hashed.login(Some(b"billing"), b"s3cret-marker").err(),
            Some(LoginError::WrongPass)
        );
        let plain = services(
            "[[service]]\nname = \"billing\"\nprefix = \"b:\"\npassword = \"s3cret-MARKER\"\n",
        );
        let service = plain.get("billing").expect("service");
        assert!(service.password_matches(b"s3cret-MARKER"));
        assert!(!format!("{service:?}").contains("MARKER"));
    }

    /// Structural check: the password comparison goes through
    /// `subtle::ConstantTimeEq` on fixed-size digests, never `==` on the
    /// password bytes, so its time does not depend on how much matched.
    #[test]
    fn password_comparison_is_constant_time() {
        let source = include_str!("service.rs");
        let start = source
            .find("pub fn password_matches")
            .expect("password_matches exists");
        let body = &source[start..];
        let body = &body[..body.find("\n    }\n").expect("end of fn")];
        assert!(body.contains("Sha256::digest(password)"), "{body}");
        assert!(body.contains(".ct_eq(want)"), "{body}");
        assert!(!body.contains("=="), "{body}");
        let digest: fn(&[u8; 32], &[u8; 32]) -> subtle::Choice = |a, b| a.ct_eq(b);
        assert!(bool::from(digest(&[1; 32], &[1; 32])));
    }

    /// Every reason a login can fail for has its own label value in
    /// `keygate_auth_failures_total` (metrics keeps the list; an unknown
    /// reason would be counted as `other`).
    #[test]
    fn every_login_failure_reason_is_a_metric_label() {
        use crate::policy::token::TokenRefusal::*;
        let reasons = [LoginError::WrongPass, LoginError::NoPasswordConfigured]
            .into_iter()
            .chain(
                [
                    BadSignature,
                    Expired,
                    NotYetValid,
                    WrongIssuer,
                    WrongAudience,
                    WrongService,
                    Malformed,
                ]
                .into_iter()
                .map(LoginError::Token),
            );
        for e in reasons {
            assert!(
                crate::metrics::AUTH_FAILURE_REASONS.contains(&e.reason()),
                "{}",
                e.reason()
            );
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
