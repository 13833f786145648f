//! ioredis, the Node.js client, through keygate: the session in
//! `tests/node/ioredis_session.js`, over RESP2 (ioredis 5) and RESP3
//! (ioredis 6 with `protocol: 3`), plain and logged in to a namespaced
//! service. `scripts/test` installs Node.js and the pinned packages
//! (`npm ci` from `tests/node/package-lock.json`) when they are missing.
mod common;
use common::*;

/// The service the namespaced session logs in to, and its key prefix.
const BILLING: &str = r#"
[[service]]
name = "default"
prefix = ""
isolation = false

[[service]]
name = "billing"
prefix = "billing:"
password = "billpw"
"#;

/// Runs `node tests/node/ioredis_session.js` with `args`; panics with its
/// output unless it exits 0.
fn run_session(args: &[String]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node/ioredis_session.js");
    let out = std::process::Command::new("node")
        .arg(script)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run node (scripts/test installs Node.js and ioredis)");
    assert!(
        out.status.success(),
        "ioredis session failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ioredis_session_over_resp2_and_resp3() {
    let redis = RedisServer::start();
    let kg = Keygate::start(&redis);
    kg.wait_ready();
    run_session(&[kg.port().to_string()]);
}

#[test]
fn ioredis_logs_in_to_a_namespaced_service() {
    let redis = RedisServer::start();
    let kg = Keygate::start_with(&standalone_config(&redis.addr(), BILLING));
    kg.wait_ready();
    run_session(&[kg.port().to_string(), "billing".into(), "billpw".into()]);
    // The backend holds what ioredis wrote under the service's prefix only.
    for proto in ["resp2", "resp3"] {
        assert_eq!(
            redis.cli(&["GET", &format!("billing:node:ns:{proto}")]),
            proto
        );
        assert_eq!(redis.cli(&["EXISTS", &format!("node:ns:{proto}")]), "0");
    }
}
