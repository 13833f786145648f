//! Backend chaos under load: while clients keep sending, the backend is
//! killed (SIGKILL) and restarted, then paused (SIGSTOP) for longer than
//! `command_timeout` and resumed (SIGCONT). keygate must never leave a
//! request unanswered past its timeouts, and must serve again soon after the
//! backend is back.
//!
//! Only bounds are asserted (generous ones); the figures are printed.
mod common;
use common::*;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The configured `command_timeout`.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// The configured `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Slack on top of the timeouts for a loaded 2-core box.
const MARGIN: Duration = Duration::from_secs(2);
/// A reply later than this counts as a hang (the worker stops waiting).
const HANG: Duration = Duration::from_secs(10);
/// Load-generating clients.
const WORKERS: usize = 8;

/// What the workers saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    errors: AtomicU64,
    /// Connections keygate closed (e.g. a transaction lost its backend).
    closed: AtomicU64,
    /// The slowest reply, in µs.
    max_micros: AtomicU64,
    /// When each worker last got a successful reply.
    last_ok: Mutex<Vec<Option<Instant>>>,
    first_error: Mutex<Option<String>>,
}

/// One client: SET then GET in a loop, reconnecting when keygate closes it.
fn worker(id: usize, port: u16, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let key = format!("chaos:{id}");
    let set = resp_command(&["SET", &key, "v"]);
    let get = resp_command(&["GET", &key]);
    while !stop.load(Ordering::Relaxed) {
        let Some(mut conn) = RawConn::try_connect(port) else {
            // Paces reconnect attempts of this load generator.
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let req = if n % 2 == 0 { &set } else { &get };
            n += 1;
            let started = Instant::now();
            if !conn.try_send(req) {
                tally.closed.fetch_add(1, Ordering::Relaxed);
                break;
            }
            let reply = conn.next_reply(HANG);
            let took = started.elapsed();
            tally
                .max_micros
                .fetch_max(took.as_micros() as u64, Ordering::Relaxed);
            match reply {
                NextReply::Frame(r) if r.starts_with(b"-") => {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                    let mut first = tally.first_error.lock().expect("lock");
                    first.get_or_insert_with(|| String::from_utf8_lossy(&r).into_owned());
                    drop(first);
                    // Paces the load: no spinning on prompt errors while
                    // the backend is down.
                    std::thread::sleep(Duration::from_millis(20));
                }
                NextReply::Frame(_) => {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                    if let Some(slot) = tally.last_ok.lock().expect("lock").get_mut(id) {
                        *slot = Some(Instant::now());
                    }
                }
                NextReply::TimedOut | NextReply::Closed | NextReply::Invalid(_) => {
                    tally.closed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
}

/// Waits until every worker has had a successful reply after `since`;
/// returns how long that took from `since`.
fn wait_all_served(tally: &Tally, since: Instant, within: Duration) -> Duration {
    let all = || {
        tally
            .last_ok
            .lock()
            .expect("lock")
            .iter()
            .all(|t| t.is_some_and(|t| t > since))
    };
    let served = wait_until(within.saturating_sub(since.elapsed()), all);
    let took = since.elapsed();
    assert!(
        served,
        "not every client was served again within {within:?}"
    );
    took
}

/// Waits until the load has made `n` more requests of `kind` (ok or error
/// replies) than it had when called.
fn wait_for_more(counter: &AtomicU64, n: u64, within: Duration) -> bool {
    let start = counter.load(Ordering::Relaxed);
    wait_until(within, || counter.load(Ordering::Relaxed) >= start + n)
}

#[test]
fn backend_killed_paused_and_restarted_under_load() {
    let mut redis = RedisServer::start();
    let kg = Keygate::start_with(&format!(
        r#"
[proxy]
listen = "127.0.0.1:0"

[backend]
address = "{}"
connect_timeout = "{}ms"
command_timeout = "{}ms"
failover_wait = "1s"
{DEFAULT_SERVICE}
"#,
        redis.addr(),
        CONNECT_TIMEOUT.as_millis(),
        COMMAND_TIMEOUT.as_millis()
    ));
    wait_serving(kg.port());

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    *tally.last_ok.lock().expect("lock") = vec![None; WORKERS];
    let workers: Vec<_> = (0..WORKERS)
        .map(|i| {
            let (stop, tally, port) = (stop.clone(), tally.clone(), kg.port());
            std::thread::spawn(move || worker(i, port, stop, tally))
        })
        .collect();
    wait_all_served(&tally, Instant::now(), Duration::from_secs(5));

    // 1. SIGKILL under load, down until the clients have seen it, then
    // restart on the same port.
    assert!(wait_for_more(&tally.ok, 200, Duration::from_secs(10)));
    redis.kill();
    assert!(
        wait_for_more(&tally.errors, (WORKERS * 4) as u64, Duration::from_secs(10)),
        "the clients never saw the backend down"
    );
    redis.restart();
    let back = Instant::now();
    let recovered_after_kill = wait_all_served(&tally, back, Duration::from_secs(8));

    // 2. SIGSTOP for well over command_timeout, then SIGCONT.
    assert!(wait_for_more(&tally.ok, 200, Duration::from_secs(10)));
    let pid = redis.pid().expect("redis runs");
    signal(pid, "STOP");
    // The point of this step: the backend stays stopped for longer than
    // command_timeout, so keygate's stall detection has to answer for it.
    std::thread::sleep(COMMAND_TIMEOUT * 3);
    signal(pid, "CONT");
    let back = Instant::now();
    let recovered_after_pause = wait_all_served(&tally, back, Duration::from_secs(8));
    assert!(wait_for_more(&tally.ok, 200, Duration::from_secs(10)));

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("worker");
    }
    let max = Duration::from_micros(tally.max_micros.load(Ordering::Relaxed));
    println!(
        "chaos: {} ok, {} error replies, {} closed connections; slowest reply {max:?} \
         (command_timeout {COMMAND_TIMEOUT:?}); all clients served again {recovered_after_kill:?} \
         after restart, {recovered_after_pause:?} after SIGCONT; first error {:?}",
        tally.ok.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
        tally.closed.load(Ordering::Relaxed),
        tally.first_error.lock().expect("lock")
    );
    assert!(
        max < COMMAND_TIMEOUT + CONNECT_TIMEOUT + MARGIN,
        "a request waited {max:?} for its reply"
    );
    assert!(
        tally.errors.load(Ordering::Relaxed) > 0,
        "the chaos went unseen"
    );
}
