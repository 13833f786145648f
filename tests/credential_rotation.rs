//! Rotating backend credentials (issue 18): `[backend] password_file` is
//! re-read while keygate runs, and every backend connection logs in again
//! in band, so a password rotated every 2 s under load fails no request,
//! closes no backend connection and drops no client.
mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// How long the rotations run, and how often the password changes.
const RUN: Duration = Duration::from_secs(60);
const EVERY: Duration = Duration::from_secs(2);

fn rotations(kg: &Keygate) -> f64 {
    metric_sample(
        &scrape_metrics(kg.admin_port()),
        "keygate_backend_credential_rotations_total",
        &[],
    )
    .unwrap_or(0.0)
}

fn connections_received(admin: &mut RawConn) -> u64 {
    let info = admin.cmd_str(&["INFO", "stats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("total_connections_received")
}

/// Calls of AUTH the backend has run.
fn auth_calls(admin: &mut RawConn) -> u64 {
    let info = admin.cmd_str(&["INFO", "commandstats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_auth:calls="))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_password_rotated_every_two_seconds_under_load_fails_nothing() {
    let redis = RedisServer::start_with(&["--requirepass", "pw-0"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("backend-password");
    std::fs::write(&file, "pw-0\n").expect("write password file");
    let config = standalone_config(&redis.addr(), DEFAULT_SERVICE).replace(
        "[backend]\n",
        &format!("[backend]\npassword_file = \"{}\"\n", file.display()),
    );
    let kg = Keygate::start_with(&config);
    kg.wait_ready();
    let mut admin = RawConn::connect(redis.port());
    assert_eq!(admin.cmd_str(&["AUTH", "pw-0"]), "+OK\r\n");

    // Load: plain commands on the shared connections, and transactions,
    // which lease dedicated connections (checked out again and again).
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (stop, failures, served) = (stop.clone(), failures.clone(), served.clone());
            let port = kg.port();
            std::thread::spawn(move || {
                let mut conn = RawConn::connect(port);
                let key = format!("rot:{w}");
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let ok = if w == 0 && i % 10 == 0 {
                        conn.cmd_str(&["MULTI"]) == "+OK\r\n"
                            && conn.cmd_str(&["INCR", &key]) == "+QUEUED\r\n"
                            && conn.cmd_str(&["EXEC"]).starts_with("*1\r\n:")
                    } else {
                        conn.cmd_str(&["SET", &key, &i.to_string()]) == "+OK\r\n"
                            && conn.cmd_str(&["GET", &key])
                                == format!("${}\r\n{i}\r\n", i.to_string().len())
                    };
                    if ok {
                        served.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    // Let every connection exist before counting what Redis accepts.
    assert!(wait_until(Duration::from_secs(10), || served
        .load(Ordering::Relaxed)
        > 100));
    let accepted_before = connections_received(&mut admin);
    let auths_before = auth_calls(&mut admin);
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < RUN {
        let round = Instant::now();
        n += 1;
        let (old, new) = (format!("pw-{}", n - 1), format!("pw-{n}"));
        // The new password works, and keygate is told, before the old one
        // goes; the rotation is seen by keygate before it is removed.
        let seen = rotations(&kg);
        assert_eq!(
            admin.cmd_str(&["ACL", "SETUSER", "default", &format!(">{new}")]),
            "+OK\r\n"
        );
        std::fs::write(&file, format!("{new}\n")).expect("rewrite password file");
        assert!(
            wait_until(Duration::from_secs(10), || rotations(&kg) > seen),
            "keygate never read the new password"
        );
        assert_eq!(
            admin.cmd_str(&["ACL", "SETUSER", "default", &format!("<{old}")]),
            "+OK\r\n"
        );
        // Paces the rotation (the every 2 s).
        std::thread::sleep(EVERY.saturating_sub(round.elapsed()));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("load thread");
    }
    let accepted = connections_received(&mut admin) - accepted_before;
    let auths = auth_calls(&mut admin) - auths_before;
    println!(
        "{n} rotations in {:?}: {} commands served, {} failed, {accepted} backend connections accepted, {auths} AUTHs",
        start.elapsed(),
        served.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed)
    );
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    // The busy shared connection logged in again after every rotation.
    assert!(auths >= n, "{auths} AUTHs for {n} rotations");
    // The pool's dedicated connections were logged in again, not redialed
    // (the one the MULTI load holds may be dialed once).
    assert!(accepted <= 1, "{accepted} backend connections were dialed");
    // A client that connects now works with the newest password.
    let mut fresh = RawConn::connect(kg.port());
    assert_eq!(fresh.cmd_str(&["SET", "rot:new", "1"]), "+OK\r\n");
    // An empty file keeps the last good password and is counted.
    std::fs::write(&file, "").expect("empty the file");
    assert!(wait_until(Duration::from_secs(10), || {
        metric_sample(
            &scrape_metrics(kg.admin_port()),
            "keygate_backend_credential_errors_total",
            &[],
        ) == Some(1.0)
    }));
    assert_eq!(fresh.cmd_str(&["GET", "rot:new"]), "$1\r\n1\r\n");
}
