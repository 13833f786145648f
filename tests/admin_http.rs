//! The admin HTTP listener, in process: every route over a real socket, with
//! plain HTTP/1.1 requests (no HTTP client crate).

use std::sync::atomic::Ordering;
use std::time::Duration;

use keygate::config::Config;
use keygate::proxy::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const CONFIG: &str = r#"
[proxy]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[backend]
address = "127.0.0.1:1"
"#;

/// A response split into status code, lower-cased headers and body.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `GET path` with `Connection: close` and reads the whole response.
async fn get(addr: std::net::SocketAddr, path: &str) -> Response {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("response within 10s")
        .expect("read response");
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("header/body separator");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Response {
        status,
        headers,
        body: body.to_owned(),
    }
}

#[tokio::test]
async fn admin_routes_answer_and_shut_down() {
    let config = Config::parse(CONFIG).expect("valid config");
    let server = Proxy::new(config).expect("server");
    let state = server.state();

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(keygate::admin::serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));

    let live = get(addr, "/health/live").await;
    assert_eq!(live.status, 200);
    assert_eq!(live.body, "ok");

    let not_ready = get(addr, "/health/ready").await;
    assert_eq!(not_ready.status, 503);
    assert_eq!(not_ready.body, "not ready");

    let health = get(addr, "/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.header("content-type"), Some("application/json"));
    let detail: serde_json::Value = serde_json::from_str(&health.body).expect("JSON body");
    assert_eq!(detail["ready"], serde_json::Value::Bool(false));

    state.health.ready.store(true, Ordering::Relaxed);
    let ready = get(addr, "/health/ready").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body, "ready");
    let health = get(addr, "/health").await;
    let detail: serde_json::Value = serde_json::from_str(&health.body).expect("JSON body");
    assert_eq!(detail["ready"], serde_json::Value::Bool(true));

    let metrics = get(addr, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert_eq!(
        metrics.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    // The body is the registry's rendering (uptime moves between two renderings).
    assert!(
        metrics
            .body
            .contains("# TYPE keygate_commands_total counter"),
        "{}",
        metrics.body
    );
    assert!(metrics.body.contains("keygate_ready 1"), "{}", metrics.body);

    let missing = get(addr, "/nope").await;
    assert_eq!(missing.status, 404);

    stop.send(()).expect("serve still running");
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("serve returns after shutdown")
        .expect("serve task")
        .expect("serve result");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener closed after shutdown"
    );
}
