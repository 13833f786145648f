//! No secret reaches keygate's logs, metrics or slow log: service passwords
//! (right or wrong) sent with AUTH and the backend password from config.
//!
//! Logs are captured at TRACE level from the in-process keygate (the
//! library's own `tracing` events; the binary adds only its subscriber).
mod common;
use common::*;

use std::io::Write;
use std::sync::{Arc, Mutex};

/// Passwords carrying a marker that must never show up anywhere.
const SERVICE_PASSWORD: &str = "svc-pass-MARKER-7f3a";
const WRONG_PASSWORD: &str = "wrong-pass-MARKER-91c2";
const BACKEND_PASSWORD: &str = "backend-pass-MARKER-5e0d";
const MARKER: &str = "MARKER";

/// A `tracing` writer appending to a shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut out) = self.0.lock() {
            out.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().map(|b| b.clone()).unwrap_or_default()).into_owned()
    }
}

#[test]
fn passwords_never_reach_logs_metrics_or_slowlog() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let redis = RedisServer::start_with(&["--requirepass", BACKEND_PASSWORD]);
    let config = format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
slowlog_threshold = "0s"

[backend]
address = "{addr}"
password = "{BACKEND_PASSWORD}"
connect_timeout = "1s"
command_timeout = "5s"

[[service]]
name = "billing"
prefix = "billing:"
password = "{SERVICE_PASSWORD}"
"#,
        addr = redis.addr()
    );
    let kg = Keygate::start_with(&config);
    kg.wait_ready();

    let mut c = RawConn::connect(kg.port());
    // Wrong passwords, both AUTH forms and HELLO's AUTH.
    assert!(c.cmd_str(&["AUTH", WRONG_PASSWORD]).starts_with("-"));
    assert!(c
        .cmd_str(&["AUTH", "billing", WRONG_PASSWORD])
        .starts_with("-WRONGPASS"));
    assert!(c
        .cmd_str(&["HELLO", "2", "AUTH", "billing", WRONG_PASSWORD])
        .starts_with("-WRONGPASS"));
    // The right one, then real traffic so the backend connection is used.
    assert_eq!(c.cmd_str(&["AUTH", "billing", SERVICE_PASSWORD]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["SET", "k", "v"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["GET", "k"]), "$1\r\nv\r\n");
    let keygate_slowlog = c.cmd_str(&["KEYGATE", "SLOWLOG"]);

    let metrics = http_get(kg.admin_port(), "/metrics");
    let slowlog = http_get(kg.admin_port(), "/slowlog");
    let health = http_get(kg.admin_port(), "/health");
    assert!(metrics.contains("keygate_"), "metrics served: {metrics}");
    drop(c);
    drop(kg);

    let logs = capture.text();
    assert!(!logs.is_empty(), "TRACE logging captured nothing");
    for (what, text) in [
        ("logs", &logs),
        ("/metrics", &metrics),
        ("/slowlog", &slowlog),
        ("/health", &health),
        ("KEYGATE SLOWLOG", &keygate_slowlog),
    ] {
        assert!(!text.contains(MARKER), "a password reached {what}:\n{text}");
    }
}
