//! Hot reload against a real backend: the config file in a temp dir is
//! rewritten and reloaded (`POST /reload` in-process, SIGHUP on the real
//! binary); connected clients keep their connections and follow their
//! service's new policy, checked on the backend directly.

mod common;

use std::time::{Duration, Instant};

use common::{
    http_get, http_request, wait_serving_as, wait_until, ConfigFile, Keygate, KeygateProcess,
    RawConn, RedisServer, START_TIMEOUT,
};

/// A config file with `services` appended to a standalone `[proxy]`/`[backend]`.
fn config_text(backend: &RedisServer, extra_backend: &str, services: &str) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n\n[backend]\naddress = \"{}\"\nconnect_timeout = \"1s\"\n{extra_backend}\n{services}",
        backend.addr()
    )
}

/// Service `a` (password `pa`) with `prefix`, and `more` services after it.
fn service_a(prefix: &str, ttl: &str, more: &str) -> String {
    format!("[[service]]\nname = \"a\"\npassword = \"pa\"\nprefix = \"{prefix}\"\n{ttl}\n{more}")
}

const SERVICE_B: &str =
    "[[service]]\nname = \"b\"\npassword = \"pb\"\nprefix = \"b:\"\nmax_clients = 1\n";

/// `POST /reload`; returns the status line and the body.
fn post_reload(admin_port: u16) -> (String, String) {
    let response = http_request(admin_port, "POST", "/reload");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, body.to_string())
}

fn health(admin_port: u16) -> serde_json::Value {
    let response = http_get(admin_port, "/health");
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

fn login(port: u16, name: &str, password: &str) -> (RawConn, String) {
    let mut conn = RawConn::connect(port);
    let reply = conn.cmd_str(&["AUTH", name, password]);
    (conn, reply)
}

#[test]
fn a_logged_in_client_keeps_its_connection_and_gets_the_new_prefix_and_ttl() {
    let backend = RedisServer::start();
    let file = ConfigFile::new(&config_text(&backend, "", &service_a("a1:", "", "")));
    let keygate = Keygate::start_from_file(&file.path());
    keygate.wait_ready();
    let (mut client, auth) = login(keygate.port(), "a", "pa");
    assert_eq!(auth, "+OK\r\n");
    assert_eq!(client.cmd_str(&["SET", "k1", "v"]), "+OK\r\n");
    assert_eq!(backend.cli(&["GET", "a1:k1"]), "v");
    assert_eq!(backend.cli(&["TTL", "a1:k1"]), "-1");

    file.write(&config_text(
        &backend,
        "",
        &service_a("a2:", "default_ttl = \"100s\"", ""),
    ));
    let (status, body) = post_reload(keygate.admin_port());
    assert!(status.contains("200"), "{status} {body}");
    assert!(body.contains("\"ok\":true"), "{body}");

    assert_eq!(client.cmd_str(&["SET", "k2", "v"]), "+OK\r\n");
    assert_eq!(backend.cli(&["GET", "a2:k2"]), "v");
    let ttl: i64 = backend.cli(&["TTL", "a2:k2"]).parse().expect("ttl");
    assert!((90..=100).contains(&ttl), "TTL {ttl}");
    assert_eq!(backend.cli(&["EXISTS", "a1:k2"]), "0");
    assert_eq!(
        client.cmd_str(&["GET", "k1"]),
        "$-1\r\n",
        "old prefix is out of reach"
    );
    let last = &health(keygate.admin_port())["last_reload"];
    assert_eq!(last["ok"], serde_json::json!(true), "{last}");
    assert_eq!(last["generation"], serde_json::json!(1), "{last}");
}

#[test]
fn a_removed_service_gets_noauth_and_stops_being_counted() {
    let backend = RedisServer::start();
    let with_b = config_text(&backend, "", &service_a("a:", "", SERVICE_B));
    let file = ConfigFile::new(&with_b);
    let keygate = Keygate::start_from_file(&file.path());
    keygate.wait_ready();
    let (mut b_client, auth) = login(keygate.port(), "b", "pb");
    assert_eq!(auth, "+OK\r\n");
    let (_, refused) = login(keygate.port(), "b", "pb");
    assert!(refused.contains("max number of clients"), "{refused}");

    file.write(&config_text(&backend, "", &service_a("a:", "", "")));
    let (status, body) = post_reload(keygate.admin_port());
    assert!(status.contains("200"), "{status} {body}");
    assert_eq!(
        b_client.cmd_str(&["GET", "k"]),
        "-NOAUTH Authentication required.\r\n"
    );
    let metrics = http_get(keygate.admin_port(), "/metrics");
    assert!(
        metrics.contains("keygate_client_connections{service=\"b\"} 0"),
        "{metrics}"
    );
    // The connection is still there: it can log in as a service in force.
    assert_eq!(b_client.cmd_str(&["AUTH", "a", "pa"]), "+OK\r\n");

    // b comes back: its count started afresh, so one login fits max_clients = 1.
    file.write(&with_b);
    let (status, body) = post_reload(keygate.admin_port());
    assert!(status.contains("200"), "{status} {body}");
    let (mut again, auth) = login(keygate.port(), "b", "pb");
    assert_eq!(auth, "+OK\r\n");
    assert_eq!(again.cmd_str(&["SET", "k", "v"]), "+OK\r\n");
    assert_eq!(backend.cli(&["GET", "b:k"]), "v");
}

#[test]
fn per_service_client_counts_carry_over_a_reload() {
    let backend = RedisServer::start();
    let file = ConfigFile::new(&config_text(&backend, "", SERVICE_B));
    let keygate = Keygate::start_from_file(&file.path());
    keygate.wait_ready();
    let (mut first, auth) = login(keygate.port(), "b", "pb");
    assert_eq!(auth, "+OK\r\n");
    let changed = SERVICE_B.replace("\"b:\"", "\"b2:\"");
    file.write(&config_text(&backend, "", &changed));
    let (status, body) = post_reload(keygate.admin_port());
    assert!(status.contains("200"), "{status} {body}");
    assert_eq!(first.cmd_str(&["SET", "k", "v"]), "+OK\r\n");
    assert_eq!(backend.cli(&["GET", "b2:k"]), "v");
    let (_, refused) = login(keygate.port(), "b", "pb");
    assert!(refused.contains("max number of clients"), "{refused}");
    drop(first);
    // The first client's disconnect frees the slot (counted under the new b).
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let (_, auth) = login(keygate.port(), "b", "pb");
        if auth == "+OK\r\n" {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed: {auth}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn new_services_and_password_changes_apply_to_new_logins() {
    let backend = RedisServer::start();
    let file = ConfigFile::new(&config_text(&backend, "", &service_a("a:", "", "")));
    let keygate = Keygate::start_from_file(&file.path());
    keygate.wait_ready();
    let (mut old_login, auth) = login(keygate.port(), "a", "pa");
    assert_eq!(auth, "+OK\r\n");
    let (_, before) = login(keygate.port(), "c", "pc");
    assert!(before.starts_with("-WRONGPASS"), "{before}");

    let services = service_a(
        "a:",
        "",
        "[[service]]\nname = \"c\"\npassword = \"pc\"\nprefix = \"c:\"\n",
    )
    .replace("password = \"pa\"", "password = \"pa2\"");
    file.write(&config_text(&backend, "", &services));
    let (status, body) = post_reload(keygate.admin_port());
    assert!(status.contains("200"), "{status} {body}");

    let (mut c, auth) = login(keygate.port(), "c", "pc");
    assert_eq!(auth, "+OK\r\n");
    assert_eq!(c.cmd_str(&["SET", "k", "v"]), "+OK\r\n");
    assert_eq!(backend.cli(&["GET", "c:k"]), "v");
    // Its metrics carry its own name (from the label slots kept for services
    // a reload adds), not the not-logged-in `-`.
    let series = "keygate_commands_total{service=\"c\",command=\"set\"} 1";
    let labelled = wait_until(Duration::from_secs(5), || {
        http_get(keygate.admin_port(), "/metrics").contains(series)
    });
    assert!(labelled, "{}", http_get(keygate.admin_port(), "/metrics"));
    let (_, old_password) = login(keygate.port(), "a", "pa");
    assert!(old_password.starts_with("-WRONGPASS"), "{old_password}");
    let (_, new_password) = login(keygate.port(), "a", "pa2");
    assert_eq!(new_password, "+OK\r\n");
    // A client logged in with the old password stays logged in.
    assert_eq!(old_login.cmd_str(&["SET", "k", "v"]), "+OK\r\n");
    assert_eq!(backend.cli(&["GET", "a:k"]), "v");
}

#[test]
fn an_invalid_config_is_rejected_whole() {
    let backend = RedisServer::start();
    let good = config_text(&backend, "", &service_a("a:", "", ""));
    let file = ConfigFile::new(&good);
    let keygate = Keygate::start_from_file(&file.path());
    keygate.wait_ready();
    let (mut client, _) = login(keygate.port(), "a", "pa");

    // A valid service change and an invalid TTL pair in one file.
    let bad = config_text(
        &backend,
        "",
        &service_a(
            "z:",
            "default_ttl = \"15m\"\nmax_ttl = \"30s\"",
            "[[service]]\nname = \"c\"\npassword = \"pc\"\nprefix = \"c:\"\n",
        ),
    );
    file.write(&bad);
    let (status, body) = post_reload(keygate.admin_port());
    assert!(status.contains("400"), "{status} {body}");
    assert!(body.contains("max_ttl") && body.contains("line"), "{body}");

    // Nothing of it applied.
    assert_eq!(client.cmd_str(&["SET", "k", "v"]), "+OK\r\n");
    assert_eq!(backend.cli(&["GET", "a:k"]), "v");
    let (_, c_login) = login(keygate.port(), "c", "pc");
    assert!(c_login.starts_with("-WRONGPASS"), "{c_login}");
    let metrics = http_get(keygate.admin_port(), "/metrics");
    assert!(
        metrics.contains("keygate_config_reload_failures_total 1"),
        "{metrics}"
    );
    let last = &health(keygate.admin_port())["last_reload"];
    assert_eq!(last["ok"], serde_json::json!(false), "{last}");
    assert!(
        last["error"]
            .as_str()
            .is_some_and(|e| e.contains("max_ttl")),
        "{last}"
    );
    assert!(last["at"].as_u64().is_some(), "{last}");

    // The file fixed: the next reload applies.
    file.write(&good);
    let (status, body) = post_reload(keygate.admin_port());
    assert!(status.contains("200"), "{status} {body}");
    assert_eq!(
        health(keygate.admin_port())["last_reload"]["ok"],
        serde_json::json!(true)
    );
}

#[test]
fn start_only_settings_are_reported_and_services_still_apply() {
    let backend = RedisServer::start();
    let file = ConfigFile::new(&config_text(&backend, "", &service_a("a:", "", "")));
    let keygate = Keygate::start_from_file(&file.path());
    keygate.wait_ready();
    let (mut client, _) = login(keygate.port(), "a", "pa");

    let moved = config_text(
        &backend,
        "command_timeout = \"2s\"",
        &service_a("a2:", "", ""),
    )
    .replace(&backend.addr(), "127.0.0.1:1")
    .replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"");
    file.write(&moved);
    let (status, body) = post_reload(keygate.admin_port());
    assert!(status.contains("200"), "{status} {body}");
    let report: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        report["requires_restart"],
        serde_json::json!(["proxy.listen", "backend.address", "backend.command_timeout"]),
        "{body}"
    );
    // The services applied; the backend did not change.
    assert_eq!(client.cmd_str(&["SET", "k", "v"]), "+OK\r\n");
    assert_eq!(backend.cli(&["GET", "a2:k"]), "v");
}

/// Waits (bounded) for `done`, naming `what` when it never happens.
fn wait_for(what: &str, done: impl FnMut() -> bool) {
    assert!(
        wait_until(START_TIMEOUT, done),
        "timed out waiting for {what}"
    );
}

/// [`config_text`] for the real binary, with an admin listener for `/health`.
fn binary_config(backend: &RedisServer, services: &str) -> String {
    config_text(backend, "", services)
        .replace("[proxy]\n", "[proxy]\nadmin_listen = \"127.0.0.1:0\"\n")
}

#[test]
fn sighup_reloads_the_real_binary_without_dropping_clients() {
    let backend = RedisServer::start();
    let binary = KeygateProcess::start(&binary_config(&backend, &service_a("a1:", "", "")), &[]);
    let (port, admin) = (binary.port(), binary.admin_port());
    wait_serving_as(port, "a", "pa");
    let (mut client, auth) = login(port, "a", "pa");
    assert_eq!(auth, "+OK\r\n");
    assert_eq!(client.cmd_str(&["SET", "k", "v"]), "+OK\r\n");
    assert_eq!(backend.cli(&["GET", "a1:k"]), "v");

    // An invalid file first: refused, logged with its line, counted.
    binary.write_config("[proxy]\nlisten = 1\n");
    binary.signal("HUP");
    wait_for("the failed reload in /health", || {
        health(admin)["last_reload"]["ok"] == serde_json::json!(false)
    });
    let logged = binary.log();
    assert!(
        logged.contains("config reload failed") && logged.contains("line"),
        "{logged}"
    );
    assert!(http_get(admin, "/metrics").contains("keygate_config_reload_failures_total 1"));
    assert_eq!(client.cmd_str(&["SET", "k", "v"]), "+OK\r\n");

    // Then a good one with a new prefix and a start-only change.
    let next = binary_config(&backend, &service_a("a2:", "", ""))
        .replace("connect_timeout = \"1s\"", "connect_timeout = \"2s\"");
    binary.write_config(&next);
    binary.signal("HUP");
    wait_for("the applied reload in /health", || {
        health(admin)["last_reload"]["ok"] == serde_json::json!(true)
    });
    assert_eq!(client.cmd_str(&["SET", "k", "v2"]), "+OK\r\n");
    assert_eq!(backend.cli(&["GET", "a2:k"]), "v2");
    let logged = binary.log();
    assert!(logged.contains("config reloaded"), "{logged}");
    assert!(
        logged.contains("require a restart") && logged.contains("backend.connect_timeout"),
        "{logged}"
    );
}

#[test]
fn an_open_transaction_finishes_under_the_policy_it_started_with() {
    let backend = RedisServer::start();
    let file = ConfigFile::new(&config_text(&backend, "", &service_a("a1:", "", "")));
    let keygate = Keygate::start_from_file(&file.path());
    keygate.wait_ready();
    let (mut client, _) = login(keygate.port(), "a", "pa");
    assert_eq!(client.cmd_str(&["MULTI"]), "+OK\r\n");
    assert_eq!(client.cmd_str(&["SET", "k", "v"]), "+QUEUED\r\n");
    file.write(&config_text(&backend, "", &service_a("a2:", "", "")));
    let (status, body) = post_reload(keygate.admin_port());
    assert!(status.contains("200"), "{status} {body}");
    assert_eq!(client.cmd_str(&["SET", "k2", "v"]), "+QUEUED\r\n");
    assert_eq!(client.cmd_str(&["EXEC"]), "*2\r\n+OK\r\n+OK\r\n");
    assert_eq!(backend.cli(&["EXISTS", "a1:k", "a1:k2"]), "2");
    assert_eq!(client.cmd_str(&["SET", "k3", "v"]), "+OK\r\n");
    assert_eq!(backend.cli(&["EXISTS", "a2:k3"]), "1");
}
