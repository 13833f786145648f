//! Client-facing TLS: the handshake on connections accepted on `listen_tls`.
//!
//! A failed handshake only costs that one connection: it is logged with the
//! peer address (warn when TLS itself refused it, e.g. a client certificate
//! that does not verify; debug for a peer that just went away) and dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::{pem, provider, TlsError, VERSIONS};
use crate::config::ProxyTlsConfig;

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A client connection after the TLS handshake.
pub type ClientTlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// Completes TLS handshakes with the certificate of `[proxy.tls]`.
#[derive(Clone)]
pub struct ClientTlsAcceptor {
    acceptor: TlsAcceptor,
    mutual: bool,
}

impl std::fmt::Debug for ClientTlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTlsAcceptor")
            .field("mutual", &self.mutual)
            .finish_non_exhaustive()
    }
}

impl ClientTlsAcceptor {
    /// Loads the certificate, key and (for mutual TLS) client CA files.
    pub fn from_config(cfg: &ProxyTlsConfig) -> Result<ClientTlsAcceptor, TlsError> {
        let invalid = |e: &dyn std::fmt::Display| TlsError::Config {
            section: "[proxy.tls]",
            reason: e.to_string(),
        };
        let certs = pem::certificates("proxy.tls.cert", &cfg.cert)?;
        let key = pem::private_key("proxy.tls.key", &cfg.key)?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| invalid(&e))?;
        let builder = match &cfg.client_ca {
            Some(ca) => {
                let roots = pem::roots("proxy.tls.client_ca", ca)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|e| invalid(&e))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|e| invalid(&e))?;
        Ok(ClientTlsAcceptor {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            mutual: cfg.client_ca.is_some(),
        })
    }

    /// Runs the server side of the handshake; `None` (logged) when it fails.
    pub async fn accept(&self, stream: TcpStream, peer: SocketAddr) -> Option<ClientTlsStream> {
        let _ = stream.set_nodelay(true);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream)).await {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                let refused_by_tls = e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>());
                if refused_by_tls {
                    tracing::warn!(%peer, error = %e, "client TLS handshake failed");
                } else {
                    tracing::debug!(%peer, error = %e, "client TLS handshake aborted");
                }
                None
            }
            Err(_) => {
                tracing::debug!(%peer, timeout = ?HANDSHAKE_TIMEOUT, "client TLS handshake timed out");
                None
            }
        }
    }
}
