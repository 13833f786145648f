//! redis-py, a real client library, through keygate over RESP2 and RESP3
//! (HELLO 3): the session in `tests/python/redis_py_session.py`.
//! `scripts/test` installs redis-py with pip when it is missing.
mod common;
use common::*;

#[test]
fn redis_py_session_over_resp2_and_resp3() {
    let redis = RedisServer::start();
    let kg = Keygate::start(&redis);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/redis_py_session.py"
    );
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(kg.port().to_string())
        .output()
        .expect("run python3 (scripts/test installs redis-py)");
    assert!(
        out.status.success(),
        "redis-py session failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
