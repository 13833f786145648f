//! TLS on both sides against real redis-server processes: client TLS
//! (plain and mutual) on keygate's TLS listener, keygate to a TLS-only
//! Redis, and the clear errors for a wrong CA and an expired certificate.

mod common;

use common::{
    cli_at, tls_cli_at, wait_serving, Keygate, RawConn, RedisServer, TestPki, DEFAULT_SERVICE,
};

/// A config with both client listeners and `[proxy.tls]` (plus `proxy_tls_extra`
/// lines in it), and `backend_extra` lines after `[backend]`'s own.
fn tls_config(pki: &TestPki, backend: &str, proxy_tls_extra: &str, backend_extra: &str) -> String {
    let (cert, key) = pki.server();
    format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
listen_tls = "127.0.0.1:1"

[proxy.tls]
cert = "{cert}"
key = "{key}"
{proxy_tls_extra}

[backend]
address = "{backend}"
connect_timeout = "1s"
command_timeout = "5s"
{backend_extra}

{DEFAULT_SERVICE}
"#
    )
}

/// `[backend.tls]` trusting `ca`, with keygate's client certificate.
fn backend_tls(pki: &TestPki, ca: &str, extra: &str) -> String {
    let (cert, key) = pki.client();
    format!("\n[backend.tls]\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n{extra}\n")
}

#[test]
fn redis_cli_over_tls_through_keygate() {
    let pki = TestPki::generate();
    let redis = RedisServer::start();
    let (kg, tls_port) = Keygate::start_with_tls(&tls_config(&pki, &redis.addr(), "", ""));
    wait_serving(kg.port());
    let ca = pki.ca();
    let tls = ["--cacert", ca.as_str()];
    assert_eq!(tls_cli_at(tls_port, &tls, &["SET", "tls:k", "v1"]), "OK");
    assert_eq!(tls_cli_at(tls_port, &tls, &["GET", "tls:k"]), "v1");
    // The plain listener serves beside it, on the same data.
    assert_eq!(cli_at(kg.port(), &["GET", "tls:k"]), "v1");
    // A pipeline of many commands over one TLS connection (-r repeats).
    let counted = tls_cli_at(tls_port, &tls, &["-r", "200", "INCR", "tls:n"]);
    assert_eq!(counted.lines().last(), Some("200"), "{counted}");
}

#[test]
fn mutual_tls_refuses_clients_without_a_certificate() {
    let pki = TestPki::generate();
    let redis = RedisServer::start();
    let ca = pki.ca();
    let extra = format!("client_ca = \"{ca}\"");
    let (kg, tls_port) = Keygate::start_with_tls(&tls_config(&pki, &redis.addr(), &extra, ""));
    wait_serving(kg.port());

    let refused = tls_cli_at(tls_port, &["--cacert", &ca], &["PING"]);
    assert!(
        !refused.contains("PONG"),
        "served without a client cert: {refused}"
    );

    let (cert, key) = pki.client();
    let with_cert = [
        "--cacert",
        ca.as_str(),
        "--cert",
        cert.as_str(),
        "--key",
        key.as_str(),
    ];
    assert_eq!(tls_cli_at(tls_port, &with_cert, &["SET", "m:k", "v"]), "OK");
    assert_eq!(tls_cli_at(tls_port, &with_cert, &["GET", "m:k"]), "v");

    // A certificate of the right CA but not issued for client auth (the
    // server's) is refused as well; other clients are unaffected.
    let (server_cert, server_key) = pki.server();
    let wrong = tls_cli_at(
        tls_port,
        &[
            "--cacert",
            &ca,
            "--cert",
            &server_cert,
            "--key",
            &server_key,
        ],
        &["PING"],
    );
    assert!(
        !wrong.contains("PONG"),
        "served with a server-only cert: {wrong}"
    );
    assert_eq!(tls_cli_at(tls_port, &with_cert, &["GET", "m:k"]), "v");
    assert_eq!(cli_at(kg.port(), &["GET", "m:k"]), "v");
}

#[test]
fn keygate_talks_tls_to_a_tls_only_redis() {
    let pki = TestPki::generate();
    let (cert, key) = pki.server();
    let redis = RedisServer::start_tls(&cert, &key, &pki.ca(), true);
    let backend = backend_tls(&pki, &pki.ca(), "server_name = \"localhost\"");
    let (kg, _tls_port) = Keygate::start_with_tls(&tls_config(&pki, &redis.addr(), "", &backend));
    wait_serving(kg.port());
    assert_eq!(kg.cli(&["SET", "b:k", "v"]), "OK");
    assert_eq!(kg.cli(&["GET", "b:k"]), "v");

    // Dedicated connections (MULTI) over TLS, twice: the second lease
    // passes the pool's idle check on a TLS connection.
    for round in 0..2 {
        let mut c = RawConn::connect(kg.port());
        assert_eq!(c.cmd_str(&["MULTI"]), "+OK\r\n");
        assert_eq!(c.cmd_str(&["INCR", "b:n"]), "+QUEUED\r\n");
        let exec = c.cmd_str(&["EXEC"]);
        assert_eq!(exec, format!("*1\r\n:{}\r\n", round + 1));
    }
    // A blocking command on a dedicated TLS connection.
    let mut c = RawConn::connect(kg.port());
    assert_eq!(c.cmd_str(&["RPUSH", "b:list", "x"]), ":1\r\n");
    assert_eq!(
        c.cmd_str(&["BLPOP", "b:list", "1"]),
        "*2\r\n$6\r\nb:list\r\n$1\r\nx\r\n"
    );
}

#[test]
fn backend_with_the_address_as_server_name_and_no_client_cert() {
    let pki = TestPki::generate();
    let (cert, key) = pki.server();
    let redis = RedisServer::start_tls(&cert, &key, &pki.ca(), false);
    // No server_name: 127.0.0.1 is verified against the certificate's IP SAN.
    let backend = format!("\n[backend.tls]\nca = \"{}\"\n", pki.ca());
    let (kg, tls_port) = Keygate::start_with_tls(&tls_config(&pki, &redis.addr(), "", &backend));
    wait_serving(kg.port());
    // TLS end to end: client TLS into keygate, keygate TLS to Redis.
    let ca = pki.ca();
    assert_eq!(
        tls_cli_at(tls_port, &["--cacert", &ca], &["SET", "e:k", "v"]),
        "OK"
    );
    assert_eq!(kg.cli(&["GET", "e:k"]), "v");
}

/// The error a client gets for a command while the backend refuses TLS.
fn backend_error(config: &str) -> String {
    let (kg, _tls_port) = Keygate::start_with_tls(config);
    let mut c = RawConn::connect(kg.port());
    c.cmd_str(&["GET", "x"])
}

#[test]
fn wrong_backend_ca_gives_the_client_a_clear_error() {
    let pki = TestPki::generate();
    let (cert, key) = pki.server();
    let redis = RedisServer::start_tls(&cert, &key, &pki.ca(), false);
    let backend = backend_tls(&pki, &pki.other_ca(), "");
    let reply = backend_error(&tls_config(&pki, &redis.addr(), "", &backend));
    let expected = format!(
        "-ERR keygate: backend {} is unavailable: TLS handshake failed: invalid peer certificate",
        redis.addr()
    );
    assert!(reply.starts_with(&expected), "{reply}");
    assert!(reply.contains("UnknownIssuer"), "{reply}");
}

#[test]
fn expired_backend_certificate_gives_the_client_a_clear_error() {
    let pki = TestPki::generate();
    let (cert, key) = pki.expired();
    let redis = RedisServer::start_tls(&cert, &key, &pki.ca(), false);
    let backend = backend_tls(&pki, &pki.ca(), "");
    let reply = backend_error(&tls_config(&pki, &redis.addr(), "", &backend));
    assert!(
        reply.starts_with("-ERR keygate: backend ") && reply.contains("TLS handshake failed"),
        "{reply}"
    );
    assert!(reply.to_lowercase().contains("expired"), "{reply}");
}

#[test]
fn unreadable_certificate_fails_the_start_naming_the_key() {
    let pki = TestPki::generate();
    let text = tls_config(&pki, "127.0.0.1:1", "", "").replace("server.key", "missing.key");
    let config = keygate::config::Config::parse(&text).expect("valid syntax");
    let err = keygate::proxy::Proxy::new(config)
        .err()
        .expect("start must fail");
    let text = err.to_string();
    assert!(
        text.contains("proxy.tls.key") && text.contains("missing.key"),
        "{text}"
    );
}
