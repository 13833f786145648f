//! A client that pipelines a flood of large replies and reads nothing must
//! not make keygate buffer without bound, nor slow other clients down.
mod common;
use common::*;

use std::io::Write;
use std::time::{Duration, Instant};

/// Resident memory of this process (keygate runs in-process), in KiB.
fn rss_kib() -> u64 {
    rss_kib_of(std::process::id())
}

#[test]
fn slow_reader_memory_stays_bounded_and_others_are_served() {
    let redis = RedisServer::start();
    let kg = Keygate::start(&redis);
    wait_serving(kg.port());
    let mut setup = RawConn::connect(kg.port());
    let big = vec![b'b'; 10 * 1024];
    assert_eq!(
        String::from_utf8_lossy(&setup.cmd(&[&b"SET"[..], b"big", &big])),
        "+OK\r\n"
    );

    const REQUESTS: usize = 200_000;
    let one = resp_command(&["GET", "big"]);
    let mut flood = Vec::with_capacity(one.len() * REQUESTS);
    for _ in 0..REQUESTS {
        flood.extend_from_slice(&one);
    }
    let before = rss_kib();

    let mut slow = RawConn::connect(kg.port());
    let mut slow_writer = slow.stream().try_clone().expect("clone");
    // keygate stops reading once it has enough outstanding, so the write
    // blocks; it runs on its own thread and ends when the socket closes.
    let writer = std::thread::spawn(move || {
        let _ = slow_writer.write_all(&flood);
    });

    let mut other = RawConn::connect(kg.port());
    let mut peak = before;
    let mut worst_ping = Duration::ZERO;
    let mut worst_get = Duration::ZERO;
    let watch_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < watch_until {
        let t = Instant::now();
        assert_eq!(other.cmd_str(&["PING"]), "+PONG\r\n");
        worst_ping = worst_ping.max(t.elapsed());
        let t = Instant::now();
        assert_eq!(other.cmd_str(&["STRLEN", "big"]), ":10240\r\n");
        worst_get = worst_get.max(t.elapsed());
        peak = peak.max(rss_kib());
        // Paces the other client's probes over the watch span.
        std::thread::sleep(Duration::from_millis(100));
    }
    let growth_mib = peak.saturating_sub(before) / 1024;
    println!(
        "slow reader: RSS before {} MiB, peak {} MiB, growth {growth_mib} MiB; \
         worst PING {worst_ping:?}, worst STRLEN {worst_get:?}",
        before / 1024,
        peak / 1024
    );
    assert!(
        worst_ping < Duration::from_secs(2) && worst_get < Duration::from_secs(2),
        "another client was starved: PING {worst_ping:?}, STRLEN {worst_get:?}"
    );
    assert!(
        growth_mib < 200,
        "keygate buffered {growth_mib} MiB for a client that does not read"
    );

    // Reading now drains the replies in order; read a few to prove the
    // connection is alive, then drop it.
    for _ in 0..10 {
        let reply = slow.read_reply();
        assert_eq!(
            reply.len(),
            10 * 1024 + 2 + "$10240\r\n".len(),
            "{:?}",
            String::from_utf8_lossy(&reply[..reply.len().min(200)])
        );
        assert_eq!(reply.len(), 10 * 1024 + 2 + "$10240\r\n".len());
    }
    let _ = slow.stream().shutdown(std::net::Shutdown::Both);
    drop(slow);
    let _ = writer.join();
    assert_eq!(other.cmd_str(&["PING"]), "+PONG\r\n");
}
