//! The live service registry: the [`Services`] in force, swapped whole by a
//! config reload.
//!
//! The data path never locks: the registry sits in an [`ArcSwap`], and a
//! separate generation counter lets a client check for a reload with one
//! atomic load per command. Invariant: the counter is raised only after the
//! new registry is stored, so a reader that sees generation `n` then loads a
//! registry of generation `n` or later.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::service::{Login, LoginError, Service, Services};
use crate::near_cache::NearCaches;

/// The services in force right now.
#[derive(Debug)]
pub struct ServiceRegistry {
    current: ArcSwap<Services>,
    generation: AtomicU64,
    /// Every service's near cache, of every generation still in use: what
    /// Redis's invalidations and flushes apply to.
    near_caches: Arc<NearCaches>,
}

impl ServiceRegistry {
    /// A registry starting with `services`.
    pub fn new(services: Services) -> ServiceRegistry {
        let generation = AtomicU64::new(services.generation());
        let near_caches = NearCaches::new();
        adopt_near_caches(&near_caches, &services);
        ServiceRegistry {
            current: ArcSwap::from_pointee(services),
            generation,
            near_caches,
        }
    }

    /// Every service's near cache (empty when none is enabled).
    pub fn near_caches(&self) -> &Arc<NearCaches> {
        &self.near_caches
    }

    /// The generation in force: one atomic load, for the per-command check.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The services in force.
    pub fn current(&self) -> Arc<Services> {
        self.current.load_full()
    }

    /// Puts `services` in force for every later lookup.
    pub fn replace(&self, services: Services) {
        let generation = services.generation();
        adopt_near_caches(&self.near_caches, &services);
        self.current.store(Arc::new(services));
        self.generation.store(generation, Ordering::Release);
    }

    /// The service of clients that never AUTH, from the services in force.
    pub fn default_service(&self) -> Option<Arc<Service>> {
        self.current.load().default_service()
    }

    /// A service in force, by name.
    pub fn get(&self, name: &str) -> Option<Arc<Service>> {
        self.current.load().get(name).cloned()
    }

    /// `AUTH [service] password` against the services in force.
    pub fn login(&self, name: Option<&[u8]>, password: &[u8]) -> Result<Login, LoginError> {
        self.current.load().login(name, password)
    }
}

fn adopt_near_caches(near_caches: &NearCaches, services: &Services) {
    for cache in services.all().iter().filter_map(|s| s.near_cache.as_ref()) {
        near_caches.adopt(cache);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(services: &str) -> Config {
        let text = format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n[backend]\naddress = \"127.0.0.1:1\"\n{services}"
        );
        Config::parse(&text).expect("valid config")
    }

    const A: &str = "[[service]]\nname = \"a\"\npassword = \"pa\"\nprefix = \"a:\"\n";
    const B: &str = "[[service]]\nname = \"b\"\npassword = \"pb\"\nprefix = \"b:\"\n";

    #[test]
    fn replace_raises_the_generation_and_swaps_services() {
        let start = config(A);
        let registry = ServiceRegistry::new(Services::from_config(&start));
        assert_eq!(registry.generation(), 0);
        let before = registry.get("a").expect("a");
        let slot = |n: &str| start.services.iter().position(|s| s.name == n);
        let next = Services::reloaded(&config(&format!("{B}{A}")), &registry.current(), &slot, 256);
        registry.replace(next);
        assert_eq!(registry.generation(), 1);
        assert_eq!(registry.current().generation(), 1);
        let after = registry.get("a").expect("a still there");
        assert!(!Arc::ptr_eq(&before, &after));
        assert!(before.shares_client_count(&after), "counter carried over");
        assert_eq!(after.index, 0, "metrics slot of the name at start");
        assert_eq!(registry.get("b").expect("b added").index, usize::MAX);
        assert!(registry.login(Some(b"b"), b"pb").is_ok());
    }

    #[test]
    fn client_counts_survive_a_reload() {
        let start = config(A);
        let registry = ServiceRegistry::new(Services::from_config(&start));
        let old = registry.get("a").expect("a");
        assert!(old.try_admit());
        let next = Services::reloaded(&start, &registry.current(), &|_| Some(0), 256);
        registry.replace(next);
        let new = registry.get("a").expect("a");
        assert_eq!(new.clients.load(Ordering::Relaxed), 1);
        old.release();
        assert_eq!(new.clients.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn dedicated_holds_survive_a_reload_and_the_new_cap_applies() {
        let start = config(A);
        let registry = ServiceRegistry::new(Services::from_config(&start));
        let old = registry.get("a").expect("a");
        assert_eq!(old.max_dedicated, 256, "one service: the whole pool");
        let permit = old.try_hold_dedicated().expect("within the share");
        let next = Services::reloaded(
            &config(&format!("{A}{B}")),
            &registry.current(),
            &|_| None,
            4,
        );
        registry.replace(next);
        let new = registry.get("a").expect("a");
        assert_eq!(new.max_dedicated, 2, "two services share the pool in force");
        assert_eq!(new.dedicated_held(), 1);
        let second = new.try_hold_dedicated().expect("one more");
        assert!(new.try_hold_dedicated().is_none(), "at its share");
        drop((permit, second));
        assert_eq!(new.dedicated_held(), 0);
    }

    #[test]
    fn a_removed_and_readded_service_counts_afresh() {
        let start = config(A);
        let registry = ServiceRegistry::new(Services::from_config(&start));
        let old = registry.get("a").expect("a");
        assert!(old.try_admit());
        let without = Services::reloaded(&config(B), &registry.current(), &|_| None, 256);
        registry.replace(without);
        assert!(registry.get("a").is_none());
        let again = Services::reloaded(&start, &registry.current(), &|_| None, 256);
        registry.replace(again);
        let new = registry.get("a").expect("a back");
        assert!(!old.shares_client_count(&new));
        assert_eq!(new.clients.load(Ordering::Relaxed), 0);
    }
}
