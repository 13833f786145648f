//! What a token login costs (issue 18): one `TokenVerifier::verify` for an
//! HS256, an ES256 and an RS256 token, the keys made here (RS256's with the
//! `openssl` command, skipped when it is missing). Besides criterion's
//! figures, each prints the p99 of 20,000 single verifications, the figure
//! the issue bounds (50 µs RS256, 10 µs HS256). An authenticated
//! connection pays nothing per command: the check runs at AUTH only.
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keygate::config::{OnExpiry, TokenConfig};
use keygate::policy::token::TokenVerifier;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

const SECRET_VAR: &str = "KEYGATE_BENCH_TOKEN_SECRET";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn claims() -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    serde_json::json!({ "sub": "svc", "iss": "bench", "aud": "redis", "exp": now + 3600 })
}

fn config(hs256: bool, jwks: Option<&std::path::Path>) -> TokenConfig {
    TokenConfig {
        issuer: Some("bench".into()),
        audience: Some("redis".into()),
        hs256_secret_env: hs256.then(|| SECRET_VAR.to_string()),
        jwks_file: jwks.map(|p| p.to_path_buf()),
        leeway: Duration::from_secs(30),
        service_claim: "sub".into(),
        on_expiry: OnExpiry::Deny,
    }
}

fn jwks_file(dir: &std::path::Path, jwk: serde_json::Value) -> std::path::PathBuf {
    let path = dir.join(format!("jwks-{}.json", jwk["kty"].as_str().unwrap_or("k")));
    std::fs::write(&path, serde_json::json!({ "keys": [jwk] }).to_string()).expect("jwks");
    path
}

/// An RS256 signing key and its JWK, from `openssl`.
fn rsa_key(dir: &std::path::Path) -> Option<(EncodingKey, serde_json::Value)> {
    let pem = dir.join("rsa.pem");
    let der = dir.join("rsa.der");
    let run = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
    };
    run(&["genrsa", "-traditional", "-out", pem.to_str()?, "2048"])?;
    run(&[
        "rsa",
        "-in",
        pem.to_str()?,
        "-traditional",
        "-outform",
        "DER",
        "-out",
        der.to_str()?,
    ])?;
    let modulus = run(&["rsa", "-in", pem.to_str()?, "-noout", "-modulus"])?;
    let hex = String::from_utf8(modulus.stdout).ok()?;
    let hex = hex.trim().strip_prefix("Modulus=")?;
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<_, _>>()
        .ok()?;
    let jwk = serde_json::json!({ "kty": "RSA", "alg": "RS256", "n": b64(&n), "e": "AQAB" });
    Some((EncodingKey::from_rsa_der(&std::fs::read(der).ok()?), jwk))
}

fn p99(verifier: &TokenVerifier, token: &[u8]) -> Duration {
    let mut times: Vec<Duration> = (0..20_000)
        .map(|_| {
            let start = Instant::now();
            verifier.verify(token, "svc").expect("valid token");
            start.elapsed()
        })
        .collect();
    times.sort_unstable();
    times[times.len() * 99 / 100]
}

fn token_verify(c: &mut Criterion) {
    std::env::set_var(SECRET_VAR, "bench-shared-secret-0123456789abcdef");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cases = Vec::new();

    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(b"bench-shared-secret-0123456789abcdef"),
    )
    .expect("sign");
    cases.push((
        "hs256",
        TokenVerifier::from_config("svc", &config(true, None)),
        hs,
    ));

    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("ec");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .expect("ec pair");
    let point = pair.public_key().as_ref();
    let ec_jwk = serde_json::json!({ "kty": "EC", "crv": "P-256", "alg": "ES256",
        "x": b64(&point[1..33]), "y": b64(&point[33..65]) });
    let es = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &claims(),
        &EncodingKey::from_ec_der(pkcs8.as_ref()),
    )
    .expect("sign");
    let ec_path = jwks_file(dir.path(), ec_jwk);
    cases.push((
        "es256",
        TokenVerifier::from_config("svc", &config(false, Some(&ec_path))),
        es,
    ));

    match rsa_key(dir.path()) {
        Some((key, jwk)) => {
            let rs = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims(), &key)
                .expect("sign");
            let rsa_path = jwks_file(dir.path(), jwk);
            cases.push((
                "rs256",
                TokenVerifier::from_config("svc", &config(false, Some(&rsa_path))),
                rs,
            ));
        }
        None => eprintln!("token_verify/rs256 skipped: openssl could not make an RSA key"),
    }

    let mut group = c.benchmark_group("token_verify");
    for (name, verifier, token) in &cases {
        println!(
            "token_verify/{name}: p99 of 20000 single verifications {:?}",
            p99(verifier, token.as_bytes())
        );
        group.bench_function(*name, |b| {
            b.iter(|| {
                verifier
                    .verify(black_box(token.as_bytes()), "svc")
                    .expect("valid")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, token_verify);
criterion_main!(benches);
