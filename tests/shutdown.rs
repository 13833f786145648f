//! Graceful shutdown: requests in flight are answered before clients are
//! closed, and the proxy stops accepting.
mod common;
use common::*;

use std::time::{Duration, Instant};

#[test]
fn shutdown_answers_in_flight_requests_then_closes() {
    let redis = RedisServer::start();
    let kg = Keygate::start(&redis);
    wait_serving(kg.port());
    let port = kg.port();
    let mut blocked = RawConn::connect(port);
    let mut piped = RawConn::connect(port);
    // A blocking command that ends on its own after 1 s...
    blocked.send(&resp_command(&["BLPOP", "sd:q", "1"]));
    // ...and a pipeline in flight on the shared connections.
    let mut bytes = Vec::new();
    for i in 0..2000 {
        bytes.extend(resp_command(&[
            "INCR".to_string(),
            format!("sd:{}", i % 10),
        ]));
    }
    piped.send(&bytes);
    // keygate has read the whole pipeline (Redis ran every INCR) and the
    // BLPOP is blocked on Redis: their replies are what shutdown must deliver.
    assert!(
        wait_until(Duration::from_secs(10), || redis.calls("incr") == 2000),
        "the pipeline never reached Redis: {} INCRs",
        redis.calls("incr")
    );
    redis.wait_blocked(1);
    let started = Instant::now();
    let stopper = std::thread::spawn(move || drop(kg));
    for n in 0..2000 {
        let reply = piped
            .try_read_reply(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("pipeline reply {n} lost in shutdown"));
        assert_eq!(reply.first(), Some(&b':'));
    }
    assert_eq!(
        String::from_utf8_lossy(&blocked.read_reply()),
        "*-1\r\n",
        "the blocked request was not answered"
    );
    assert!(blocked.closed_within(Duration::from_secs(3)));
    assert!(piped.closed_within(Duration::from_secs(3)));
    stopper.join().expect("keygate stopped");
    let took = started.elapsed();
    println!("graceful shutdown took {took:?}");
    assert!(took < Duration::from_secs(8), "shutdown waited {took:?}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    assert_eq!(redis.cli(&["GET", "sd:0"]), "200");
}
