//! Shared harness for integration tests: real `redis-server` processes on
//! free loopback ports, each in its own temp dir, killed when dropped.
//!
//! Invariants: servers bind 127.0.0.1 only, never a fixed port; nothing
//! is persisted (`--save ''`, `--appendonly no`); a server that does not
//! answer PING within [`START_TIMEOUT`] panics with its log, so a missing or
//! broken `redis-server` fails tests loudly instead of skipping them.
//!
//! The one way each test reaches a server: [`RedisServer`] (plain or
//! TLS-only), [`RedisSentinel`] and [`RedisCluster`] (`cluster.rs`) for
//! Redis; [`Keygate`] in-process, or [`KeygateProcess`] (`process.rs`) for the built binary; [`RawConn`] as
//! the RESP client (exact bytes, or a [`Reply`] from `reply.rs`),
//! [`redis_rs`] where a client library is the point; [`wait_until`] for
//! every wait.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod cluster;
mod process;
mod reply;
// Not every test file uses every part of the harness.
#[allow(unused_imports)]
pub use cluster::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use reply::*;

/// How long a freshly spawned server gets to answer PING.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Ports [`free_port`] hands out: below Linux's ephemeral range (32768
/// and up), and low enough that a cluster node's bus port (10000 above)
/// stays valid.
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A loopback port nobody listens on right now, never handed out before
/// in this process.
///
/// Not one the OS picks for `bind(0)`: the OS may hand the same port to a
/// test's own `bind(0)` or to an outgoing connection between this check
/// and the server's bind (seen in CI: "Address already in use"). Ports
/// below the ephemeral range are only ever taken here, from a start that
/// differs between processes, one after the other.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(PORTS.end - PORTS.start);
    if NEXT.load(Ordering::Relaxed) == u32::MAX {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let start = (std::process::id().wrapping_mul(7919) ^ nanos) % span;
        let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = PORTS.start + u16::try_from(offset).unwrap_or(0);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {PORTS:?}");
}

/// A `redis-server` child process owned by a test.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra_args: Vec<String>,
    /// Listens on a TLS port only (`--port 0 --tls-port PORT`).
    tls_only: bool,
}

impl RedisServer {
    /// Starts a server with the default test settings.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts a server with `extra_args` appended to its command line
    /// (e.g. `&["--requirepass", "secret"]`).
    pub fn start_with(extra_args: &[&str]) -> RedisServer {
        RedisServer::start_args(extra_args, false)
    }

    /// Starts a server that listens on a TLS port only, presenting
    /// `cert`/`key` and trusting `ca` for client certificates, which it
    /// requires when `auth_clients`. Readiness is a raw TCP connect, so a
    /// certificate keygate must refuse (expired) still starts.
    pub fn start_tls(cert: &str, key: &str, ca: &str, auth_clients: bool) -> RedisServer {
        let auth_clients = if auth_clients { "yes" } else { "no" };
        let args = [
            "--tls-cert-file",
            cert,
            "--tls-key-file",
            key,
            "--tls-ca-cert-file",
            ca,
            "--tls-auth-clients",
            auth_clients,
        ];
        RedisServer::start_args(&args, true)
    }

    fn start_args(extra_args: &[&str], tls_only: bool) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("keygate-redis-")
            .tempdir()
            .expect("create temp dir");
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            tls_only,
        };
        server.spawn();
        server
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis://127.0.0.1:PORT/`, for clients that take a URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The server's working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id of the running server, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs `redis-cli -p PORT args...` and returns its stdout, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        cli_at(self.port, args)
    }

    /// Kills the server (SIGKILL) and waits for it; the port and dir stay
    /// reserved for [`RedisServer::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, then starts it again on the same port
    /// and in the same dir.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Spawns the process and waits until it answers PING.
    fn spawn(&mut self) {
        let port = self.port.to_string();
        let ports: &[&str] = match self.tls_only {
            true => &["--port", "0", "--tls-port", &port],
            false => &["--port", &port],
        };
        let mut cmd = Command::new("redis-server");
        cmd.args(ports)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn redis-server (is it installed?): {e}"));
        self.child = Some(child);
        self.wait_for_ping();
    }

    fn wait_for_ping(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.answers_ping() {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                self.kill();
                panic!(
                    "redis-server on port {} did not answer PING (exit: {exited:?}); log:\n{log}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True when the server replies `+PONG` (or `-NOAUTH`, which also proves
    /// it is up) to an inline PING; a TLS-only server when it accepts.
    fn answers_ping(&self) -> bool {
        if self.tls_only {
            return TcpStream::connect(self.addr()).is_ok();
        }
        let Some(mut conn) = RawConn::try_connect(self.port) else {
            return false;
        };
        if !conn.try_send(b"PING\r\n") {
            return false;
        }
        match conn.next_reply(Duration::from_secs(1)) {
            NextReply::Frame(reply) => reply.starts_with(b"+PONG") || reply.starts_with(b"-NOAUTH"),
            _ => false,
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A redis-rs connection to `url` (`redis://127.0.0.1:PORT/...`), for tests
/// that exercise a client library or use it as an oracle.
pub fn redis_rs(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .and_then(|client| client.get_connection_with_timeout(START_TIMEOUT))
        .unwrap_or_else(|e| panic!("redis-rs cannot connect to {url}: {e}"))
}

/// Runs `redis-cli` against `port` with `args` and returns trimmed stdout.
pub fn cli_at(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A keygate proxy running in-process, on its own runtime and thread, in
/// front of a backend; stopped (SIGTERM-style graceful shutdown) on drop.
pub struct Keygate {
    port: u16,
    admin_port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A minimal config for a standalone backend with a passwordless,
/// non-isolated `default` service; `extra` is appended (more services, ...).
pub fn standalone_config(backend_addr: &str, extra: &str) -> String {
    format!(
        r#"
[proxy]
listen = "127.0.0.1:0"

[backend]
address = "{backend_addr}"
connect_timeout = "1s"
command_timeout = "5s"

{extra}
"#
    )
}

/// keygate in front of the master that the Sentinel at `sentinel` names
/// `master`, holding writes through a failover for up to 5 s, with `extra`
/// (services) after the backend.
pub fn sentinel_backend_config(sentinel: &str, master: &str, extra: &str) -> String {
    format!(
        r#"
[proxy]
listen = "127.0.0.1:0"

[backend]
sentinels = ["{sentinel}"]
master_name = "{master}"
connect_timeout = "1s"
command_timeout = "5s"
failover_wait = "5s"

{extra}
"#
    )
}

/// The TTL-governed services of tests/ttl.rs (and its cluster variant):
/// `default` with `legacy:`, a 60 s default and a 1 h maximum that clamps;
/// `strict` (password `strict-pw`) whose over-long TTLs are refused.
pub const TTL_SERVICES: &str = r#"
[[service]]
name = "default"
prefix = "legacy:"
default_ttl = "60s"
max_ttl = "1h"

[[service]]
name = "strict"
password = "strict-pw"
prefix = "strict:"
default_ttl = "30s"
max_ttl = "2m"
ttl_over_max = "reject"
max_value_bytes = 1024
max_clients = 2
"#;

/// The `default` service block most tests want.
pub const DEFAULT_SERVICE: &str = r#"
[[service]]
name = "default"
prefix = ""
isolation = false
"#;

impl Keygate {
    /// keygate in front of `backend` with the plain `default` service.
    pub fn start(backend: &RedisServer) -> Keygate {
        Keygate::start_with(&standalone_config(&backend.addr(), DEFAULT_SERVICE))
    }

    /// keygate with a full TOML config; `[proxy] listen` is replaced by a free port.
    pub fn start_with(toml_text: &str) -> Keygate {
        let config = keygate::config::Config::parse(toml_text).expect("valid test config");
        Keygate::start_config(config, None)
    }

    /// keygate started from a config FILE, so SIGHUP-style reloads (`POST
    /// /reload` on [`Keygate::admin_port`]) re-read it; `[proxy] listen` is
    /// replaced by a free port.
    pub fn start_from_file(path: &Path) -> Keygate {
        let config = keygate::config::Config::load(path).expect("valid test config file");
        Keygate::start_config(config, Some(path.to_path_buf()))
    }

    fn start_config(config: keygate::config::Config, reload_from: Option<PathBuf>) -> Keygate {
        let mut server = keygate::proxy::Proxy::new(config).expect("server");
        if let Some(path) = reload_from {
            server = server.reload_from(path);
        }
        Keygate::start_server(server)
    }

    /// Runs a built server on its own thread and runtime, with the admin
    /// listener beside it, both on free ports.
    fn start_server(server: keygate::proxy::Proxy) -> Keygate {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind admin");
                let ports = (
                    listener.local_addr().expect("addr").port(),
                    admin.local_addr().expect("addr").port(),
                );
                let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
                tokio::spawn(keygate::admin::serve(admin, server.state(), async move {
                    let _ = admin_stop_rx.await;
                }));
                port_tx.send(ports).expect("report port");
                let _ = server
                    .run(listener, async move {
                        let _ = stop_rx.await;
                    })
                    .await;
                let _ = admin_stop_tx.send(());
            });
        });
        let (port, admin_port) = port_rx
            .recv_timeout(START_TIMEOUT)
            .expect("keygate did not start");
        Keygate {
            port,
            admin_port,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The admin HTTP port.
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// `127.0.0.1:port` of the client listener.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis://127.0.0.1:port/` for client libraries.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Runs `redis-cli` through keygate.
    pub fn cli(&self, args: &[&str]) -> String {
        cli_at(self.port, args)
    }

    /// Waits (bounded) until `/health/ready` would be green, i.e. a backend
    /// connection is up.
    pub fn wait_ready(&self) {
        let ready = wait_until(START_TIMEOUT, || {
            http_get(self.admin_port, "/health/ready").starts_with("HTTP/1.1 200")
        });
        assert!(ready, "keygate never became ready");
    }
}

impl Drop for Keygate {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A plain HTTP/1.1 GET over a TcpStream; returns the whole response text.
pub fn http_get(port: u16, path: &str) -> String {
    http_request(port, "GET", path)
}

/// A plain HTTP/1.1 request with an empty body; returns the whole response text.
pub fn http_request(port: u16, method: &str, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).is_err() {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Sends raw bytes to `port` and reads until the peer closes or `wait`
/// passes; returns what came back.
pub fn raw_exchange(port: u16, bytes: &[u8], wait: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(wait)).expect("timeout");
    s.write_all(bytes).expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    out
}

/// A `redis-sentinel` child process owned by a test, monitoring one master
/// as `sentinel monitor <name> 127.0.0.1 <port> 1` with short timeouts;
/// killed when dropped.
pub struct RedisSentinel {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

/// Sentinel's `down-after-milliseconds` in tests.
pub const SENTINEL_DOWN_AFTER_MS: u64 = 1000;

impl RedisSentinel {
    /// Starts a Sentinel watching `master_port` under `master_name`.
    pub fn start(master_name: &str, master_port: u16) -> RedisSentinel {
        let dir = tempfile::Builder::new()
            .prefix("keygate-sentinel-")
            .tempdir()
            .expect("create temp dir");
        let port = free_port();
        let conf = format!(
            "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\nlogfile {dir}/sentinel.log\n\
             sentinel resolve-hostnames no\n\
             sentinel monitor {master_name} 127.0.0.1 {master_port} 1\n\
             sentinel down-after-milliseconds {master_name} {SENTINEL_DOWN_AFTER_MS}\n\
             sentinel failover-timeout {master_name} 10000\n\
             sentinel parallel-syncs {master_name} 1\n",
            dir = dir.path().display(),
        );
        std::fs::write(dir.path().join("sentinel.conf"), conf).expect("write sentinel.conf");
        let mut sentinel = RedisSentinel {
            child: None,
            port,
            dir,
        };
        sentinel.spawn();
        sentinel
    }

    /// The port the Sentinel listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli` against the Sentinel.
    pub fn cli(&self, args: &[&str]) -> String {
        cli_at(self.port, args)
    }

    /// The Sentinel's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default()
    }

    /// Kills the Sentinel (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-sentinel")
            .arg(self.dir.path().join("sentinel.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn redis-sentinel (is it installed?): {e}"));
        self.child = Some(child);
        if wait_until(START_TIMEOUT, || self.cli(&["PING"]) == "PONG") {
            return;
        }
        let log = self.log();
        self.kill();
        panic!(
            "redis-sentinel on port {} did not start; log:\n{log}",
            self.port
        );
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A master with one replica, link up.
pub fn master_and_replica() -> (RedisServer, RedisServer) {
    let master = RedisServer::start();
    let port = master.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    assert!(
        wait_until(Duration::from_secs(10), || info_field(
            &replica.cli(&["INFO", "replication"]),
            "master_link_status"
        )
        .as_deref()
            == Some("up")),
        "replica never linked"
    );
    (master, replica)
}

impl RedisServer {
    /// `calls=` of `cmdstat_<cmd>` in INFO commandstats (0 when absent).
    pub fn calls(&self, cmd: &str) -> u64 {
        let stats = self.cli(&["INFO", "commandstats"]);
        info_field(&stats, &format!("cmdstat_{cmd}"))
            .and_then(|v| {
                v.split(',')
                    .find_map(|kv| kv.strip_prefix("calls=").and_then(|n| n.parse().ok()))
            })
            .unwrap_or(0)
    }

    /// `PTTL key`, read on the server directly.
    pub fn pttl(&self, key: &str) -> i64 {
        self.cli(&["PTTL", key]).parse().expect("integer PTTL")
    }

    /// INFO clients' `blocked_clients`.
    pub fn blocked_clients(&self) -> u64 {
        info_field(&self.cli(&["INFO", "clients"]), "blocked_clients")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Waits (bounded) until exactly `n` clients are blocked (BLPOP, ...),
    /// and asserts it happened.
    pub fn wait_blocked(&self, n: u64) {
        let mut now = 0;
        let reached = wait_until(Duration::from_secs(10), || {
            now = self.blocked_clients();
            now == n
        });
        assert!(reached, "blocked_clients stayed {now}, want {n}");
    }
}

/// Resident memory of process `pid`, in KiB (0 when it cannot be read).
pub fn rss_kib_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until process `pid`'s resident memory has not moved for `quiet`
/// (sampled every 50 ms), at most `limit`; returns it. For memory figures
/// taken once a process has settled rather than after a guessed pause.
pub fn settled_rss_kib(pid: u32, quiet: Duration, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    let mut last = rss_kib_of(pid);
    let mut since = Instant::now();
    while Instant::now() < deadline && since.elapsed() < quiet {
        std::thread::sleep(Duration::from_millis(50));
        let now = rss_kib_of(pid);
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    last
}

/// Waits (bounded) until one of keygate's clients (its own CLIENT LIST,
/// as `service` sees it) last ran `command`: keygate has read that request.
pub fn wait_keygate_read(kg_port: u16, command: &str) {
    let list = || cli_at(kg_port, &["CLIENT", "LIST"]);
    let ran = |l: &str| l.contains(&format!(" cmd={command} "));
    assert!(
        wait_until(Duration::from_secs(10), || list().lines().any(ran)),
        "keygate never read a {command}: {}",
        list()
    );
}

/// A numeric knob from the environment (decimal or `0x` hex), `None` when
/// unset; a value that is not a number fails the test rather than being
/// ignored.
pub fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v} is not a number")))
}

/// The value of `key:value` in an INFO text.
pub fn info_field(info: &str, key: &str) -> Option<String> {
    info.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.trim().to_string())
    })
}

impl RedisSentinel {
    /// Waits until the Sentinel lists a replica of `master_name` as a good
    /// failover candidate (flags `slave`, link ok).
    pub fn wait_sees_good_replica(&self, master_name: &str) {
        let ok = wait_until(Duration::from_secs(15), || {
            let out = self.cli(&["SENTINEL", "REPLICAS", master_name]);
            let lines: Vec<&str> = out.lines().collect();
            let field = |k: &str| {
                lines
                    .iter()
                    .position(|l| *l == k)
                    .and_then(|i| lines.get(i + 1).copied())
            };
            field("flags") == Some("slave") && field("master-link-status") == Some("ok")
        });
        assert!(ok, "sentinel never saw a good replica:\n{}", self.log());
    }
}

/// The body of keygate's `/metrics` (Prometheus text).
pub fn scrape_metrics(admin_port: u16) -> String {
    let resp = http_get(admin_port, "/metrics");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    resp.split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

/// The value of the first sample line of metric `name` whose labels
/// include all of `labels`.
pub fn metric_sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The sum of every sample of metric `name` whose labels include all of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `check` every 50 ms until it returns true or `limit` passes;
/// returns whether it did.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts keygate like [`Keygate::start_with`] and also returns its
/// [`keygate::admin::ProxyState`] (readiness and `/health` detail).
pub fn start_keygate_observed(
    toml_text: &str,
) -> (Keygate, std::sync::Arc<keygate::admin::ProxyState>) {
    let config = keygate::config::Config::parse(toml_text).expect("valid test config");
    let server = keygate::proxy::Proxy::new(config).expect("server");
    let state = server.state();
    (Keygate::start_server(server), state)
}

/// A blocking RESP client over a raw socket, for tests that need exact bytes
/// or control over when requests are written and replies read.
pub struct RawConn {
    stream: TcpStream,
    buf: bytes::BytesMut,
    scanner: keygate::protocol::reply::ReplyScanner,
}

/// What [`RawConn::next_reply`] found.
#[derive(Debug)]
pub enum NextReply {
    /// One complete reply frame.
    Frame(Vec<u8>),
    /// Nothing complete arrived in time.
    TimedOut,
    /// The peer closed the connection (or it failed).
    Closed,
    /// The bytes are not RESP.
    Invalid(String),
}

/// How long a [`RawConn`] waits for one reply before the test fails.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// One command as a RESP multibulk.
pub fn resp_command<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        let a = a.as_ref();
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

impl RawConn {
    /// Connects to a loopback port.
    pub fn connect(port: u16) -> RawConn {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let _ = stream.set_nodelay(true);
        RawConn {
            stream,
            buf: bytes::BytesMut::new(),
            scanner: keygate::protocol::reply::ReplyScanner::new(128),
        }
    }

    /// The socket, for shutting it down or writing without reading.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Writes raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Sends one command and reads its reply.
    pub fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Vec<u8> {
        self.send(&resp_command(args));
        self.read_reply()
    }

    /// Sends one command and reads its reply as (lossy) text.
    pub fn cmd_str<A: AsRef<[u8]>>(&mut self, args: &[A]) -> String {
        String::from_utf8_lossy(&self.cmd(args)).into_owned()
    }

    /// Reads one complete reply frame, failing the test after [`REPLY_TIMEOUT`].
    pub fn read_reply(&mut self) -> Vec<u8> {
        self.try_read_reply(REPLY_TIMEOUT)
            .unwrap_or_else(|| panic!("no complete reply within {REPLY_TIMEOUT:?}"))
    }

    /// Reads one complete reply frame, or `None` if none arrives within
    /// `wait` or the peer closes.
    pub fn try_read_reply(&mut self, wait: Duration) -> Option<Vec<u8>> {
        match self.next_reply(wait) {
            NextReply::Frame(frame) => Some(frame),
            NextReply::Invalid(e) => panic!("invalid reply bytes: {e}"),
            NextReply::TimedOut | NextReply::Closed => None,
        }
    }

    /// Connects to a loopback port, or `None` when nothing accepts; writes
    /// give up after [`REPLY_TIMEOUT`] instead of blocking forever.
    pub fn try_connect(port: u16) -> Option<RawConn> {
        let stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(REPLY_TIMEOUT));
        Some(RawConn {
            stream,
            buf: bytes::BytesMut::new(),
            scanner: keygate::protocol::reply::ReplyScanner::new(128),
        })
    }

    /// Writes raw bytes; false when the peer is gone (or a write timed out).
    pub fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// Reads one complete reply frame within `wait`, telling a silent peer
    /// from a closed one and from bytes that are not RESP, without panicking.
    pub fn next_reply(&mut self, wait: Duration) -> NextReply {
        let deadline = Instant::now() + wait;
        loop {
            match self.scanner.scan(&mut self.buf) {
                Ok(Some((frame, _))) => return NextReply::Frame(frame.to_vec()),
                Ok(None) => {}
                Err(e) => return NextReply::Invalid(e.to_string()),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return NextReply::TimedOut;
            }
            self.stream.set_read_timeout(Some(left)).expect("timeout");
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return NextReply::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return NextReply::TimedOut
                }
                Err(_) => return NextReply::Closed,
            }
        }
    }

    /// True when the peer closes the connection within `wait` (data still
    /// arriving before the close is discarded).
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut chunk = [0u8; 65536];
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            if left.is_zero() {
                return false;
            }
            self.stream.set_read_timeout(Some(left)).expect("timeout");
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
    }
}

/// Waits (bounded) until keygate at `port` serves a backend command (EXISTS:
/// PING is answered locally); use instead of `wait_ready` where admin is not
/// needed.
pub fn wait_serving(port: u16) {
    assert!(
        wait_until(START_TIMEOUT, || serves(port, None)),
        "keygate on port {port} never served a backend command"
    );
}

/// [`wait_serving`] for a client logged in as `name` with `password`.
pub fn wait_serving_as(port: u16, name: &str, password: &str) {
    assert!(
        wait_until(START_TIMEOUT, || serves(port, Some((name, password)))),
        "keygate on port {port} never served a backend command to {name}"
    );
}

/// True when a new connection (logged in when `login` says so) gets an
/// integer reply to EXISTS.
fn serves(port: u16, login: Option<(&str, &str)>) -> bool {
    let Some(mut conn) = RawConn::try_connect(port) else {
        return false;
    };
    let mut ask = |args: &[&str]| match conn.try_send(&resp_command(args)) {
        true => match conn.next_reply(Duration::from_secs(1)) {
            NextReply::Frame(frame) => frame,
            _ => Vec::new(),
        },
        false => Vec::new(),
    };
    if let Some((name, password)) = login {
        if ask(&["AUTH", name, password]) != b"+OK\r\n" {
            return false;
        }
    }
    ask(&["EXISTS", "__keygate_probe"]).starts_with(b":")
}

// ---------------------------------------------------------------------------
// TLS: certificates made per test with rcgen, a TLS-only redis-server, and
// keygate serving a TLS listener beside its plain one.
// ---------------------------------------------------------------------------

/// PEM files for TLS tests, written to a temp dir: a CA, certificates it
/// signed (server for `localhost`/127.0.0.1, client, an expired server one),
/// and an unrelated second CA.
pub struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    /// Generates every certificate and key.
    pub fn generate() -> TestPki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let dir = tempfile::Builder::new()
            .prefix("keygate-pki-")
            .tempdir()
            .expect("create temp dir");
        let write = |name: &str, text: String| {
            std::fs::write(dir.path().join(name), text).expect("write pem");
        };
        let ca = |name: &str, file: &str| {
            let key = KeyPair::generate().expect("ca key");
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let cert = params.self_signed(&key).expect("self-sign ca");
            write(&format!("{file}.pem"), cert.pem());
            Issuer::new(params, key)
        };
        let issuer = ca("keygate test CA", "ca");
        let _other = ca("unrelated test CA", "other-ca");
        let leaf = |file: &str, purpose: ExtendedKeyUsagePurpose, expired: bool| {
            let key = KeyPair::generate().expect("leaf key");
            let mut params =
                CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                    .expect("leaf params");
            params.distinguished_name.push(DnType::CommonName, file);
            params.extended_key_usages = vec![purpose];
            if expired {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
            let cert = params.signed_by(&key, &issuer).expect("sign leaf");
            write(&format!("{file}.pem"), cert.pem());
            write(&format!("{file}.key"), key.serialize_pem());
        };
        leaf("server", ExtendedKeyUsagePurpose::ServerAuth, false);
        leaf("client", ExtendedKeyUsagePurpose::ClientAuth, false);
        leaf("expired", ExtendedKeyUsagePurpose::ServerAuth, true);
        TestPki { dir }
    }

    /// The path of `name` in the PKI dir, as a string for configs and command lines.
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// The CA's certificate.
    pub fn ca(&self) -> String {
        self.path("ca.pem")
    }

    /// The unrelated CA's certificate.
    pub fn other_ca(&self) -> String {
        self.path("other-ca.pem")
    }

    /// `(cert, key)` of the server certificate for localhost/127.0.0.1.
    pub fn server(&self) -> (String, String) {
        (self.path("server.pem"), self.path("server.key"))
    }

    /// `(cert, key)` of the client certificate.
    pub fn client(&self) -> (String, String) {
        (self.path("client.pem"), self.path("client.key"))
    }

    /// `(cert, key)` of a server certificate that expired in 2021.
    pub fn expired(&self) -> (String, String) {
        (self.path("expired.pem"), self.path("expired.key"))
    }
}

/// Runs `redis-cli --tls` against `port` with `tls_args` (`--cacert`,
/// `--cert`, `--key`) then `args`; returns trimmed stdout and stderr together.
pub fn tls_cli_at(port: u16, tls_args: &[&str], args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--tls"])
        .args(tls_args)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text.trim().to_string()
}

impl Keygate {
    /// keygate with a full TOML config that has `listen_tls` and
    /// `[proxy.tls]`; serves a plain and a TLS listener on free ports.
    /// Returns the proxy (its `port()` is the plain one) and the TLS port.
    pub fn start_with_tls(toml_text: &str) -> (Keygate, u16) {
        let config = keygate::config::Config::parse(toml_text).expect("valid test config");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
                let plain = bind().await.expect("bind");
                let tls = bind().await.expect("bind tls");
                let admin = bind().await.expect("bind admin");
                let port = |l: &tokio::net::TcpListener| l.local_addr().expect("addr").port();
                let ports = (port(&plain), port(&admin), port(&tls));
                let server = keygate::proxy::Proxy::new(config).expect("server");
                let state = server.state();
                let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
                tokio::spawn(keygate::admin::serve(admin, state, async move {
                    let _ = admin_stop_rx.await;
                }));
                port_tx.send(ports).expect("report port");
                let listeners = keygate::server::Listeners {
                    plain: Some(plain),
                    tls: Some(tls),
                };
                let _ = server
                    .run_listeners(listeners, async move {
                        let _ = stop_rx.await;
                    })
                    .await;
                let _ = admin_stop_tx.send(());
            });
        });
        let (port, admin_port, tls_port) = port_rx
            .recv_timeout(START_TIMEOUT)
            .expect("keygate did not start");
        let keygate = Keygate {
            port,
            admin_port,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        (keygate, tls_port)
    }
}

/// The ids of the backend's clients named `name` (CLIENT SETNAME), from
/// `CLIENT LIST` on `port`: keygate names its connections by role.
pub fn client_ids_named(port: u16, name: &str) -> Vec<String> {
    cli_at(port, &["CLIENT", "LIST"])
        .lines()
        .filter(|l| l.contains(&format!("name={name} ")))
        .filter_map(|l| {
            l.split(' ')
                .find_map(|kv| kv.strip_prefix("id="))
                .map(str::to_string)
        })
        .collect()
}

/// A service `app` (password `pw`, prefix `app:`) with the near cache on.
pub const NEAR_CACHE_SERVICE: &str = r#"
[[service]]
name = "app"
password = "pw"
prefix = "app:"

[service.near_cache]
enabled = true
max_bytes = 1048576
max_age = "10s"
"#;
