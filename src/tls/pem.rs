//! Reading PEM files into rustls types, with errors that name the config key.

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsError;

/// Every certificate in the PEM file at `path`, in file order; at least one.
pub fn certificates(
    key: &'static str,
    path: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |reason: String| TlsError::Pem {
        key,
        path: path.to_owned(),
        reason,
    };
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| error(e.to_string()))?;
    let certs = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if certs.is_empty() {
        return Err(error("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in the PEM file at `path`.
pub fn private_key(key: &'static str, path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        key,
        path: path.to_owned(),
        reason: match e {
            rustls_pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY block found".into(),
            other => other.to_string(),
        },
    })
}

/// A root store holding every certificate in the PEM file at `path`.
pub fn roots(key: &'static str, path: &str) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certificates(key, path)? {
        store.add(cert).map_err(|e| TlsError::Pem {
            key,
            path: path.to_owned(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_names_key_and_path() {
        let err = certificates("proxy.tls.cert", "/nonexistent/keygate.pem").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("proxy.tls.cert"), "{text}");
        assert!(text.contains("/nonexistent/keygate.pem"), "{text}");
    }

    #[test]
    fn file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not pem at all\n").unwrap();
        let path = path.to_str().unwrap();
        let err = certificates("backend.tls.ca", path).unwrap_err();
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
        let err = private_key("backend.tls.key", path).unwrap_err();
        assert!(err.to_string().contains("no PRIVATE KEY"), "{err}");
    }
}
