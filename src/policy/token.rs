//! Token logins (`[service.token]`): a signed JWT presented as the AUTH
//! password, checked for its signature, `exp`, `nbf`, `iss`, `aud` and the
//! claim naming the service.
//!
//! Invariants: a token is checked only against the keys of the service it
//! names, and only with the algorithm that key is for (an HS256 token is
//! never checked against an RSA public key used as an HMAC secret, `alg =
//! none` is never accepted); a key source that cannot be read leaves the
//! service with no key, so every token is refused (fail closed).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::config::{OnExpiry, TokenConfig};

/// Why a token was refused: the `reason` label of
/// `keygate_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    WrongService,
    Malformed,
}

impl TokenRefusal {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            TokenRefusal::BadSignature => "bad_signature",
            TokenRefusal::Expired => "expired",
            TokenRefusal::NotYetValid => "not_yet_valid",
            TokenRefusal::WrongIssuer => "wrong_issuer",
            TokenRefusal::WrongAudience => "wrong_audience",
            TokenRefusal::WrongService => "wrong_service",
            TokenRefusal::Malformed => "malformed",
        }
    }
}

/// A service's token settings and keys, built at start and on every reload.
pub struct TokenVerifier {
    keys: Vec<(Algorithm, DecodingKey)>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Duration,
    service_claim: String,
    /// What a connection does at the token's expiry.
    pub on_expiry: OnExpiry,
}

impl std::fmt::Debug for TokenVerifier {
    // Keys stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("keys", &self.keys.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("service_claim", &self.service_claim)
            .finish()
    }
}

impl TokenVerifier {
    /// Reads the key source of `config` (the secret's variable or the
    /// JWKS file) for the service `service`.
    pub fn from_config(service: &str, config: &TokenConfig) -> TokenVerifier {
        let keys = match (&config.hs256_secret_env, &config.jwks_file) {
            (Some(var), _) => match std::env::var(var) {
                Ok(secret) if !secret.is_empty() => {
                    vec![(
                        Algorithm::HS256,
                        DecodingKey::from_secret(secret.as_bytes()),
                    )]
                }
                _ => {
                    tracing::error!(service, variable = %var, "token secret variable is not set: every token is refused");
                    Vec::new()
                }
            },
            (None, Some(path)) => match jwks_keys(path) {
                Ok(keys) => keys,
                Err(e) => {
                    tracing::error!(service, file = %path.display(), error = %e, "cannot use the JWKS: every token is refused");
                    Vec::new()
                }
            },
            (None, None) => Vec::new(),
        };
        TokenVerifier {
            keys,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway,
            service_claim: config.service_claim.clone(),
            on_expiry: config.on_expiry,
        }
    }

    /// Whether the token's unverified `service_claim` names `service`: how
    /// a bare `AUTH <token>` finds the service to check it against.
    pub fn names(&self, token: &[u8], service: &str) -> bool {
        unverified_claims(token)
            .and_then(|claims| {
                claims
                    .get(&self.service_claim)
                    .and_then(|v| v.as_str().map(|s| s == service))
            })
            .unwrap_or(false)
    }

    /// Checks `token` for the service `service`; its expiry when valid.
    pub fn verify(&self, token: &[u8], service: &str) -> Result<SystemTime, TokenRefusal> {
        let token = std::str::from_utf8(token).map_err(|_| TokenRefusal::Malformed)?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenRefusal::Malformed)?;
        let candidates = self
            .keys
            .iter()
            .filter(|(alg, _)| *alg == header.alg)
            .map(|(_, key)| key);
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        match &self.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        let mut refusal = TokenRefusal::BadSignature;
        for key in candidates {
            match jsonwebtoken::decode::<serde_json::Value>(token, key, &validation) {
                Ok(data) => return self.accept(&data.claims, service),
                Err(e) => {
                    refusal = refusal_of(e.kind());
                    if refusal != TokenRefusal::BadSignature {
                        // The signature held: the claims are what is wrong.
                        break;
                    }
                }
            }
        }
        Err(refusal)
    }

    /// The service claim and the expiry of a token whose signature and
    /// registered claims held.
    fn accept(
        &self,
        claims: &serde_json::Value,
        service: &str,
    ) -> Result<SystemTime, TokenRefusal> {
        let named = claims.get(&self.service_claim).and_then(|v| v.as_str());
        if named != Some(service) {
            return Err(TokenRefusal::WrongService);
        }
        let exp = claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .ok_or(TokenRefusal::Malformed)?;
        Ok(UNIX_EPOCH + Duration::from_secs(exp))
    }
}

/// Whether a password looks like a compact JWT: three base64url parts, the
/// last (the signature) possibly empty, as in an `alg = none` token, which
/// is then refused as malformed rather than tried as a password.
pub fn looks_like_token(password: &[u8]) -> bool {
    let mut n = 0;
    for part in password.split(|&b| b == b'.') {
        n += 1;
        let base64url = part
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if (part.is_empty() && n < 3) || !base64url || n > 3 {
            return false;
        }
    }
    n == 3
}

fn unverified_claims(token: &[u8]) -> Option<serde_json::Value> {
    use base64::Engine as _;
    let payload = token.split(|&b| b == b'.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn refusal_of(kind: &ErrorKind) -> TokenRefusal {
    match kind {
        ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => TokenRefusal::BadSignature,
        ErrorKind::ExpiredSignature => TokenRefusal::Expired,
        ErrorKind::ImmatureSignature => TokenRefusal::NotYetValid,
        ErrorKind::InvalidIssuer => TokenRefusal::WrongIssuer,
        ErrorKind::InvalidAudience => TokenRefusal::WrongAudience,
        _ => TokenRefusal::Malformed,
    }
}

/// The keys of a JWKS file, each with the one algorithm it is for.
fn jwks_keys(path: &std::path::Path) -> Result<Vec<(Algorithm, DecodingKey)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
                Algorithm::EdDSA
            }
            // Symmetric keys do not belong in a public key set; other
            // curves are not offered.
            _ => continue,
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
        keys.push((alg, key));
    }
    if keys.is_empty() {
        return Err("no RS256, ES256 or EdDSA key".into());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_three_base64url_parts_look_like_a_token() {
        assert!(looks_like_token(b"eyJh.eyJz.c2ln"));
        assert!(!looks_like_token(b"secret"));
        assert!(!looks_like_token(b"a.b"));
        assert!(!looks_like_token(b"a.b.c.d"));
        assert!(!looks_like_token(b"a..c"));
        assert!(looks_like_token(b"eyJh.eyJz."), "an unsigned token");
        assert!(!looks_like_token(b"a.b c.d"));
    }
}
