//! Self-test of the shared integration harness in `tests/common`.

mod common;

use common::RedisServer;

#[test]
fn server_starts_answers_and_restarts_on_the_same_port() {
    let mut server = RedisServer::start_with(&["--maxmemory", "10mb"]);
    assert_eq!(server.cli(&["PING"]), "PONG");
    assert_eq!(
        server.cli(&["CONFIG", "GET", "maxmemory"]),
        "maxmemory\n10485760"
    );
    let (port, pid) = (server.port(), server.pid());
    server.restart();
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), pid);
    assert_eq!(server.cli(&["PING"]), "PONG");
    server.kill();
    assert_eq!(server.pid(), None);
    assert_ne!(server.cli(&["PING"]), "PONG");
}
