//! Token logins (issue 18): a signed JWT as the AUTH password, checked for
//! signature, `exp`, `nbf`, `iss`, `aud` and the service claim, with keys
//! the test makes (an HS256 secret, an ES256 key pair in a JWKS); refused
//! tokens get Redis's `-WRONGPASS` and their reason counted; a connection
//! whose token expires is denied or closed, per `on_expiry`.
mod common;

use std::io::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::json;

const SECRET_VAR: &str = "KEYGATE_TEST_TOKEN_SECRET";
const SECRET: &[u8] = b"token-test-shared-secret-0123456789";
const WRONGPASS: &str = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A claims set for `sub`, valid for `ttl` seconds, from issuer `kg-test`
/// to audience `redis`.
fn claims(sub: &str, ttl: u64) -> serde_json::Value {
    json!({ "sub": sub, "iss": "kg-test", "aud": "redis", "exp": now() + ttl, "iat": now() })
}

fn hs256(claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET),
    )
    .expect("sign")
}

/// An ES256 key pair: its signing key and its public JWKS.
struct EcKey {
    signing: EncodingKey,
    jwks: String,
}

fn es256_key() -> EcKey {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("keygen");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .expect("key pair");
    let point = pair.public_key().as_ref();
    let jwks = json!({ "keys": [{
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "k1",
        "x": b64(&point[1..33]), "y": b64(&point[33..65]),
    }]});
    EcKey {
        signing: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwks: jwks.to_string(),
    }
}

fn es256(key: &EcKey, claims: &serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    jsonwebtoken::encode(&header, claims, &key.signing).expect("sign")
}

/// keygate with `app` and `other` taking HS256 tokens (the same secret),
/// `ec` taking ES256 tokens from the JWKS, and `closer` closing expired
/// connections.
fn setup(jwks: &str) -> (RedisServer, Keygate, tempfile::NamedTempFile) {
    // Every test sets the same value: no test sees another's.
    std::env::set_var(SECRET_VAR, std::str::from_utf8(SECRET).expect("ascii"));
    let mut file = tempfile::NamedTempFile::new().expect("jwks file");
    file.write_all(jwks.as_bytes()).expect("write jwks");
    let token = |extra: &str| {
        format!(
            "[service.token]\nhs256_secret_env = \"{SECRET_VAR}\"\nissuer = \"kg-test\"\naudience = \"redis\"\nleeway = \"0s\"\n{extra}"
        )
    };
    let services = format!(
        r#"
[[service]]
name = "app"
prefix = "app:"
{app}

[[service]]
name = "other"
prefix = "other:"
{other}

[[service]]
name = "closer"
prefix = "closer:"
{closer}

[[service]]
name = "ec"
prefix = "ec:"
[service.token]
jwks_file = "{jwks_path}"
leeway = "0s"
"#,
        app = token(""),
        other = token(""),
        closer = token("on_expiry = \"close\""),
        jwks_path = file.path().display(),
    );
    let redis = RedisServer::start();
    let kg = Keygate::start_with(&standalone_config(&redis.addr(), &services));
    kg.wait_ready();
    (redis, kg, file)
}

fn failures(kg: &Keygate, reason: &str) -> f64 {
    metric_sample(
        &scrape_metrics(kg.admin_port()),
        "keygate_auth_failures_total",
        &[("reason", reason)],
    )
    .unwrap_or(0.0)
}

#[test]
fn a_valid_token_logs_in_to_its_service_and_is_confined_to_its_prefix() {
    let key = es256_key();
    let (redis, kg, _jwks) = setup(&key.jwks);
    let token = hs256(&claims("app", 300));
    let mut direct = RawConn::connect(redis.port());
    for login in [
        vec!["AUTH", token.as_str()],
        vec!["AUTH", "app", token.as_str()],
    ] {
        let mut conn = RawConn::connect(kg.port());
        assert_eq!(conn.cmd_str(&login), "+OK\r\n");
        assert_eq!(conn.cmd_str(&["SET", "k", "v"]), "+OK\r\n");
    }
    let mut hello = RawConn::connect(kg.port());
    let reply = hello.cmd_str(&["HELLO", "3", "AUTH", "app", &token]);
    assert!(reply.starts_with('%'), "{reply}");
    assert_eq!(hello.cmd_str(&["GET", "k"]), "$1\r\nv\r\n");
    assert_eq!(direct.cmd_str(&["GET", "app:k"]), "$1\r\nv\r\n");
    // An ES256 token against the JWKS.
    let mut ec = RawConn::connect(kg.port());
    assert_eq!(
        ec.cmd_str(&["AUTH", &es256(&key, &claims("ec", 300))]),
        "+OK\r\n"
    );
    assert_eq!(ec.cmd_str(&["SET", "e", "1"]), "+OK\r\n");
    assert_eq!(direct.cmd_str(&["GET", "ec:e"]), "$1\r\n1\r\n");
}

#[test]
fn each_bad_token_is_refused_with_its_reason_counted() {
    let key = es256_key();
    let (_redis, kg, _jwks) = setup(&key.jwks);
    let mut forged = hs256(&claims("app", 300));
    forged.push('x');
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims("app", 300);
        edit(&mut c);
        hs256(&c)
    };
    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims("app", 300).to_string().as_bytes())
    );
    // An HS256 token whose secret is the ES256 service's public key set:
    // the algorithm confusion attack.
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("ec", 300),
        &EncodingKey::from_secret(key.jwks.as_bytes()),
    )
    .expect("sign");
    let cases: Vec<(&str, String, &str)> = vec![
        ("app", forged, "bad_signature"),
        ("app", with(&|c| c["exp"] = json!(now() - 60)), "expired"),
        (
            "app",
            with(&|c| c["nbf"] = json!(now() + 600)),
            "not_yet_valid",
        ),
        (
            "app",
            with(&|c| c["iss"] = json!("elsewhere")),
            "wrong_issuer",
        ),
        (
            "app",
            with(&|c| c["aud"] = json!("postgres")),
            "wrong_audience",
        ),
        // A token for `app` presented as `other` (same secret).
        ("other", hs256(&claims("app", 300)), "wrong_service"),
        ("app", "eyJub3Q.anNvbg.c2ln".into(), "malformed"),
        ("app", unsigned, "malformed"),
        ("ec", confused, "bad_signature"),
    ];
    for (service, token, reason) in cases {
        let before = failures(&kg, reason);
        let mut conn = RawConn::connect(kg.port());
        assert_eq!(
            conn.cmd_str(&["AUTH", service, &token]),
            WRONGPASS,
            "{reason}"
        );
        assert_eq!(
            conn.cmd_str(&["GET", "k"]),
            "-NOAUTH Authentication required.\r\n"
        );
        assert_eq!(failures(&kg, reason), before + 1.0, "{reason}");
    }
}

#[test]
fn an_expired_token_is_denied_until_a_fresh_one_comes_in_the_pipeline() {
    let (_redis, kg, _jwks) = setup(&es256_key().jwks);
    let mut conn = RawConn::connect(kg.port());
    assert_eq!(
        conn.cmd_str(&["AUTH", &hs256(&claims("app", 2))]),
        "+OK\r\n"
    );
    assert_eq!(conn.cmd_str(&["SET", "k", "v"]), "+OK\r\n");
    let expiry = Instant::now() + Duration::from_secs(2);
    let denied = wait_until(Duration::from_secs(10), || {
        conn.cmd_str(&["GET", "k"]) == "-NOAUTH token expired\r\n"
    });
    assert!(denied, "the expired token was never denied");
    assert!(
        Instant::now() < expiry + Duration::from_secs(2),
        "denied too late"
    );
    assert_eq!(conn.cmd_str(&["PING"]), "+PONG\r\n");
    // A fresh token in the middle of a pipeline: from that point on.
    let fresh = hs256(&claims("app", 300));
    conn.send(
        &[
            resp_command(&["GET", "k"]),
            resp_command(&["AUTH", &fresh]),
            resp_command(&["GET", "k"]),
        ]
        .concat(),
    );
    let replies: Vec<String> = (0..3)
        .map(|_| String::from_utf8_lossy(&conn.read_reply()).into_owned())
        .collect();
    assert_eq!(
        replies,
        ["-NOAUTH token expired\r\n", "+OK\r\n", "$1\r\nv\r\n"]
    );
}

#[test]
fn on_expiry_close_closes_the_connection_after_its_replies() {
    let (_redis, kg, _jwks) = setup(&es256_key().jwks);
    let mut conn = RawConn::connect(kg.port());
    assert_eq!(
        conn.cmd_str(&["AUTH", &hs256(&claims("closer", 2))]),
        "+OK\r\n"
    );
    assert_eq!(conn.cmd_str(&["PING"]), "+PONG\r\n");
    let expiry = Instant::now() + Duration::from_secs(2);
    assert!(conn.closed_within(Duration::from_secs(10)), "never closed");
    assert!(
        Instant::now() < expiry + Duration::from_secs(2),
        "closed too late"
    );
}

/// The JWKS is read again on reload: after the key set is replaced and
/// `POST /reload`, tokens of the new key log in and the old key's do not.
#[test]
fn a_replaced_jwks_takes_effect_on_reload() {
    let (old_key, new_key) = (es256_key(), es256_key());
    let dir = tempfile::tempdir().expect("temp dir");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, &old_key.jwks).expect("jwks");
    let redis = RedisServer::start();
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        standalone_config(
            &redis.addr(),
            &format!(
                "[[service]]\nname = \"ec\"\nprefix = \"ec:\"\n[service.token]\njwks_file = \"{}\"\n",
                jwks.display()
            ),
        ),
    )
    .expect("config");
    let kg = Keygate::start_from_file(&config);
    kg.wait_ready();
    let login = |key: &EcKey| {
        RawConn::connect(kg.port()).cmd_str(&["AUTH", &es256(key, &claims("ec", 300))])
    };
    assert_eq!(login(&old_key), "+OK\r\n");
    assert_eq!(login(&new_key), WRONGPASS);
    std::fs::write(&jwks, &new_key.jwks).expect("replace jwks");
    let response = http_request(kg.admin_port(), "POST", "/reload");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(login(&new_key), "+OK\r\n");
    assert_eq!(login(&old_key), WRONGPASS);
}
