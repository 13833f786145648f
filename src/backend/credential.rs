//! The password keygate logs in to the data nodes with, which may rotate
//! (`[backend] password_file`).
//!
//! Every connection to a data node reads it when it dials, and remembers
//! the generation it logged in with; a connection that finds a newer one
//! logs in again in band, between requests (a multiplexed connection puts
//! an AUTH in front of its next write, a dedicated one sends it before it
//! is handed out), so a rotation closes no connection and fails no request.
//! A file that cannot be read, or is empty, keeps the last good password.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;

/// How often a `password_file` is read for a new value.
const FILE_CHECK_PERIOD: Duration = Duration::from_secs(1);

/// A password and how many times it changed.
#[derive(Default)]
pub struct Credential {
    password: ArcSwapOption<String>,
    generation: AtomicU64,
    /// Reads of the password file that failed (each failure counted once,
    /// when the file goes bad).
    errors: AtomicU64,
}

impl std::fmt::Debug for Credential {
    // The password stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("set", &self.password.load().is_some())
            .field("generation", &self.generation())
            .finish()
    }
}

impl Credential {
    /// A credential holding `password` (none: no AUTH).
    pub fn new(password: Option<String>) -> Arc<Credential> {
        Arc::new(Credential {
            password: ArcSwapOption::new(password.map(Arc::new)),
            ..Credential::default()
        })
    }

    /// The password now.
    pub fn password(&self) -> Option<Arc<String>> {
        self.password.load_full()
    }

    /// Changes each time the password does.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Failed reads of the password file so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Takes `password` if it differs from the current one.
    pub fn set(&self, password: String) {
        if self.password().as_deref() != Some(&password) {
            self.password.store(Some(Arc::new(password)));
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Reads `path` once a period for as long as the returned task runs,
    /// taking each new password it holds.
    pub fn follow_file(self: &Arc<Self>, path: PathBuf) -> tokio::task::JoinHandle<()> {
        let credential = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FILE_CHECK_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut bad = false;
            loop {
                tick.tick().await;
                match crate::config::read_password_file(&path) {
                    Ok(password) => {
                        if bad {
                            tracing::info!(file = %path.display(), "backend password file readable again");
                        }
                        bad = false;
                        let before = credential.generation();
                        credential.set(password);
                        if credential.generation() != before {
                            tracing::info!(file = %path.display(), "backend password changed; connections log in again");
                        }
                    }
                    Err(error) if !bad => {
                        bad = true;
                        credential.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(file = %path.display(), %error, "cannot read the backend password file; keeping the last good password");
                    }
                    Err(_) => {}
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_password_moves_the_generation_and_the_same_one_does_not() {
        let c = Credential::new(Some("a".into()));
        let g = c.generation();
        c.set("a".into());
        assert_eq!(c.generation(), g);
        c.set("b".into());
        assert_eq!(c.generation(), g + 1);
        assert_eq!(c.password().as_deref().map(String::as_str), Some("b"));
    }
}
