//! The `keygate` binary's config handling: `--check` on the shipped configs
//! and on broken ones, refusing to start on a bad config, failing clearly on
//! an unbindable listener, and a clean exit on SIGTERM.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{free_port, keygate_bin, wait_until, ConfigFile, KeygateProcess};

/// Environment variables `conf/production.toml` reads passwords from.
const PRODUCTION_ENV: [&str; 2] = ["KEYGATE_BACKEND_PASSWORD", "KEYGATE_CATALOG_PASSWORD"];

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Runs `keygate --config path --check` with a clean environment for the
/// production secrets, plus `env`.
fn check(path: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(keygate_bin());
    command.arg("--config").arg(path).arg("--check");
    for var in PRODUCTION_ENV {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    command.output().expect("run keygate")
}

/// A valid config listening on the given loopback ports.
fn valid_config(listen: u16, admin: u16) -> String {
    format!(
        r#"[proxy]
listen = "127.0.0.1:{listen}"
admin_listen = "127.0.0.1:{admin}"

[backend]
address = "127.0.0.1:1"

[[service]]
name = "default"
prefix = ""
isolation = false

[[service]]
name = "demo"
password = "secret"
prefix = "demo:"
default_ttl = "15m"
max_ttl = "1h"
"#
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn local_config_checks_ok() {
    let path = repo_file("conf/local.toml");
    let out = check(&path, &[]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        format!("config OK: {}", path.display())
    );
}

#[test]
fn cluster_config_checks_ok() {
    let out = check(&repo_file("conf/cluster.toml"), &[]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
}

#[test]
fn check_names_the_braced_prefix_and_the_backend_kind_to_pick() {
    let config = valid_config(free_port(), free_port())
        .replace(
            "address = \"127.0.0.1:1\"",
            "address = \"127.0.0.1:1\"\ncluster = [\"127.0.0.1:7000\"]",
        )
        .replace("prefix = \"demo:\"", "prefix = \"{demo}:\"");
    let file = ConfigFile::new(&config);
    let out = check(&file.path(), &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("line 7: backend.cluster is set together with address; use exactly one of address (standalone), sentinels + master_name (Sentinel), cluster (Redis Cluster)"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "line 17: service[1].prefix (\"{demo}:\") of service \"demo\" contains '{' or '}'"
        ),
        "{stderr}"
    );
}

#[test]
fn production_config_checks_ok_with_its_secrets_set() {
    let path = repo_file("conf/production.toml");
    let env: Vec<(&str, &str)> = PRODUCTION_ENV.iter().map(|v| (*v, "s3cret")).collect();
    let out = check(&path, &env);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("config OK: "));
}

#[test]
fn production_config_fails_without_its_secrets() {
    let out = check(&repo_file("conf/production.toml"), &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("backend.password_env"), "{err}");
    assert!(err.contains("KEYGATE_BACKEND_PASSWORD"), "{err}");
    assert!(err.contains("line "), "{err}");
}

/// `--check` loads the TLS files a start would load: a missing certificate
/// fails the check (exit 2) naming the file, instead of passing it and
/// failing the deployment's start.
#[test]
fn check_loads_tls_files() {
    let config = ConfigFile::new(
        r#"[proxy]
listen = "127.0.0.1:6380"
listen_tls = "127.0.0.1:6381"

[proxy.tls]
cert = "/nonexistent/keygate/server.crt"
key = "/nonexistent/keygate/server.key"

[backend]
address = "127.0.0.1:6379"

[[service]]
name = "default"
prefix = ""
isolation = false
"#,
    );
    let out = check(&config.path(), &[]);
    assert_eq!(out.status.code(), Some(2), "stdout: {}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(err.contains("/nonexistent/keygate/server.crt"), "{err}");
}

/// Each broken config, the line at fault and what stderr must name.
#[test]
fn bad_configs_fail_check_naming_key_and_line() {
    let base = valid_config(6380, 9121);
    let cases: Vec<(String, usize, &str)> = vec![
        (
            base.replace("admin_listen", "admin_lissen"),
            3,
            "unknown key 'admin_lissen' in [proxy]",
        ),
        (
            base.replace("max_ttl = \"1h\"", "max_ttl = \"30s\""),
            18,
            "service[1].max_ttl (\"30s\") is below default_ttl (\"15m\")",
        ),
        (
            base.replace("127.0.0.1:6380", "not-an-address"),
            2,
            "proxy.listen",
        ),
        (
            base.replace("prefix = \"demo:\"", "prefix = \"\""),
            16,
            "service[1].prefix is empty",
        ),
        (
            base.replace(
                "address = \"127.0.0.1:1\"",
                "address = \"127.0.0.1:1\"\nconnections = 100",
            ),
            7,
            "backend.connections (100)",
        ),
        (
            base.replace("max_ttl = \"1h\"", "max_ttl = \"1 fortnight\""),
            18,
            "service[1].max_ttl",
        ),
        (base.replace("[backend]", "[backend"), 5, ""),
    ];
    for (config, line, needle) in cases {
        let file = ConfigFile::new(&config);
        let out = check(&file.path(), &[]);
        let err = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "config:\n{config}\nstderr: {err}"
        );
        assert!(
            err.contains(&format!("line {line}: ")) && err.contains(needle),
            "expected line {line} naming {needle:?}; stderr:\n{err}"
        );
        assert!(out.stdout.is_empty(), "nothing on stdout for a bad config");
    }
}

#[test]
fn missing_config_file_fails_check() {
    let out = check(Path::new("/nonexistent/keygate.toml"), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read /nonexistent/keygate.toml"));
}

#[test]
fn starting_with_a_bad_config_starts_nothing() {
    let (listen, admin) = (free_port(), free_port());
    let config = valid_config(listen, admin).replace("max_ttl = \"1h\"", "max_ttl = \"30s\"");
    let mut keygate = KeygateProcess::spawn(&config, &[]);
    let status = keygate
        .wait_for_exit(Duration::from_secs(10))
        .expect("keygate exits on a bad config");
    assert_eq!(status.code(), Some(2));
    let err = keygate.log();
    assert!(err.contains("line 18: service[1].max_ttl"), "{err}");
    assert!(!err.contains("keygate starting"), "{err}");
    for port in [listen, admin] {
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "nothing listens on {port}"
        );
    }
}

#[test]
fn unbindable_listener_fails_start_clearly() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let mut keygate = KeygateProcess::spawn(&valid_config(port, free_port()), &[]);
    let status = keygate
        .wait_for_exit(Duration::from_secs(10))
        .expect("keygate exits when it cannot bind");
    assert_eq!(status.code(), Some(1));
    let err = keygate.log();
    assert!(
        err.contains("cannot bind the client listener") && err.contains(&port.to_string()),
        "{err}"
    );
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let admin = free_port();
    let mut keygate = KeygateProcess::spawn(&valid_config(free_port(), admin), &[]);
    let up = wait_until(Duration::from_secs(10), || {
        assert!(keygate.exited().is_none(), "{}", keygate.log());
        TcpStream::connect(("127.0.0.1", admin)).is_ok()
    });
    assert!(up, "admin listener came up");
    keygate.signal("TERM");
    let status = keygate
        .wait_for_exit(Duration::from_secs(15))
        .expect("keygate exits after SIGTERM");
    let err = keygate.log();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.contains("keygate starting"), "{err}");
    assert!(
        err.contains("services=2") || err.contains("\"services\":2"),
        "{err}"
    );
    assert!(!err.contains("secret"), "no password in logs: {err}");
}
