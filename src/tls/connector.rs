//! Backend-facing TLS: wrapping a dialed TCP connection to a data node or a
//! Sentinel.
//!
//! The name verified in the backend's certificate is `server_name` when
//! configured, else the host part of the address dialed. Sentinels announce
//! masters by IP, so deployments whose certificates carry DNS names set
//! `server_name`; it applies to every node and Sentinel alike.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{pem, provider, TlsError, VERSIONS};
use crate::config::BackendTlsConfig;

/// A backend connection after the TLS handshake.
pub type BackendTlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// The TLS settings every backend connection uses, shared by all of them.
pub struct BackendTls {
    /// Loaded once at start (a file that does not load fails the start).
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl BackendTls {
    /// Loads the CA (or the built-in web PKI roots) and the optional client certificate.
    pub fn from_config(cfg: &BackendTlsConfig) -> Result<BackendTls, TlsError> {
        Ok(BackendTls {
            connector: connector(cfg)?,
            server_name: server_name_override(cfg),
        })
    }

    /// The name verified in the certificate of the node at `addr` (`host:port`).
    pub fn server_name_for(&self, addr: &str) -> Result<ServerName<'static>, String> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        let host = host_of(addr);
        ServerName::try_from(host.to_owned()).map_err(|_| {
            format!("{host:?} is not a valid TLS server name; set backend.tls.server_name")
        })
    }

    /// Runs the client side of the handshake on a dialed connection to `addr`.
    /// The error is the reason the client will read, starting with what failed.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        addr: &str,
    ) -> Result<BackendTlsStream, String> {
        let name = self.server_name_for(addr)?;
        self.connector
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))
    }
}

fn server_name_override(cfg: &BackendTlsConfig) -> Option<ServerName<'static>> {
    cfg.server_name
        .as_ref()
        .and_then(|name| ServerName::try_from(name.clone()).ok())
}

fn connector(cfg: &BackendTlsConfig) -> Result<TlsConnector, TlsError> {
    let invalid = |e: &dyn std::fmt::Display| TlsError::Config {
        section: "[backend.tls]",
        reason: e.to_string(),
    };
    let roots = match &cfg.ca {
        Some(ca) => pem::roots("backend.tls.ca", ca)?,
        None => rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| invalid(&e))?
        .with_root_certificates(roots);
    let config = match (&cfg.cert, &cfg.key) {
        (Some(cert), Some(key)) => {
            let certs = pem::certificates("backend.tls.cert", cert)?;
            let key = pem::private_key("backend.tls.key", key)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| invalid(&e))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The host part of `host:port`, without the brackets of `[IPv6]:port`.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_is_the_part_before_the_port() {
        assert_eq!(host_of("redis.internal:6379"), "redis.internal");
        assert_eq!(host_of("127.0.0.1:6379"), "127.0.0.1");
        assert_eq!(host_of("[::1]:6379"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }

    #[test]
    fn configured_server_name_wins_over_the_address() {
        let tls = BackendTls::from_config(&BackendTlsConfig {
            server_name: Some("redis.internal".into()),
            ..Default::default()
        })
        .expect("web PKI roots need no files");
        let name = tls.server_name_for("10.0.0.7:6379").unwrap();
        assert_eq!(name.to_str(), "redis.internal");
    }

    #[test]
    fn default_server_name_is_the_host_even_an_ip() {
        let tls = BackendTls::from_config(&BackendTlsConfig::default()).unwrap();
        assert_eq!(tls.server_name_for("[::1]:6379").unwrap().to_str(), "::1");
        assert_eq!(
            tls.server_name_for("localhost:1").unwrap().to_str(),
            "localhost"
        );
    }

    #[test]
    fn unreadable_ca_is_refused_at_load() {
        let cfg = BackendTlsConfig {
            ca: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        assert!(BackendTls::from_config(&cfg).is_err());
    }
}
