//! First contact: redis-cli through keygate to a real redis-server.
mod common;
use common::*;

#[test]
fn redis_cli_ping_set_get() {
    let redis = RedisServer::start();
    let kg = Keygate::start(&redis);
    assert_eq!(kg.cli(&["PING"]), "PONG");
    assert_eq!(kg.cli(&["SET", "a", "1"]), "OK");
    assert_eq!(kg.cli(&["GET", "a"]), "1");
    assert_eq!(redis.cli(&["GET", "a"]), "1");
}
