//! TLS on both sides of the proxy, with rustls and the `ring` provider.
//!
//! - [`pem`] reads certificates and keys from PEM files.
//! - [`acceptor`] terminates client TLS on `listen_tls` (`[proxy.tls]`),
//!   optionally requiring client certificates.
//! - [`connector`] wraps backend connections (`[backend.tls]`) for the data
//!   nodes and the Sentinels alike.
//!
//! Invariant: everything is loaded and checked when the proxy starts, so a
//! bad file fails the start with a message naming it, never a connection later.

pub mod acceptor;
pub mod connector;
pub mod pem;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// TLS settings that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is missing, unreadable or malformed.
    #[error("cannot load {key} {path:?}: {reason}")]
    Pem {
        /// The config key that names the file, e.g. `proxy.tls.cert`.
        key: &'static str,
        /// The file as configured.
        path: String,
        /// Why it could not be used.
        reason: String,
    },
    /// The files load but rustls refuses the combination (e.g. a key that
    /// does not match its certificate).
    #[error("invalid {section}: {reason}")]
    Config {
        /// `[proxy.tls]` or `[backend.tls]`.
        section: &'static str,
        /// What rustls said.
        reason: String,
    },
}

/// The one crypto provider keygate uses; chosen explicitly so no process-wide
/// default has to be installed.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The protocol versions keygate offers on both sides: TLS 1.3 and 1.2.
const VERSIONS: &[&rustls::SupportedProtocolVersion] = rustls::DEFAULT_VERSIONS;
