//! The near cache's coherence test (issue 17): readers through keygate,
//! writers through keygate and directly on Redis, for 30 s, with faults
//! injected along the way (the invalidation connection killed, the data
//! connections killed, the master paused with SIGSTOP, FLUSHALL, a
//! Sentinel failover, a tiny `tracking-table-max-keys`). Every value a
//! reader got is checked against the history of writes to its key:
//! - writes through keygate: no read older than the last one acknowledged
//!   before the read was sent (0 violations);
//! - writes directly on Redis (the direct writers' keys, and FLUSHALL,
//!   sent to Redis directly, for every key): the staleness (how long after
//!   the newer write's acknowledgement the read was sent) is printed as a
//!   distribution and bounded.
//!
//! Run with `--nocapture` to see the figures.
mod common;

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use common::*;

const MASTER: &str = "mymaster";
/// Keys `k0..k7` are written through keygate, `k8..k15` directly.
const KEYS: usize = 16;
const THROUGH_KEYGATE: usize = 8;
const READERS: usize = 3;
const RUN: Duration = Duration::from_secs(30);
/// Bound on a direct write's staleness: the invalidation's trip to keygate
/// on a loaded two-core machine.
const DIRECT_STALENESS_LIMIT: Duration = Duration::from_secs(1);

/// One change of a key: a write (its version) or FLUSHALL (`nil`),
/// acknowledged at `acked` (since t0).
#[derive(Debug, Clone, Copy)]
struct Event {
    version: u64,
    nil: bool,
    acked: Duration,
}

/// One read through keygate: sent at `sent` (since t0), got `version`
/// (`None`: nil).
#[derive(Debug, Clone, Copy)]
struct Read {
    key: usize,
    sent: Duration,
    got: Option<u64>,
}

struct Shared {
    t0: Instant,
    stop: AtomicBool,
    /// Writers hold it for each write; FLUSHALL and the failover take it
    /// whole, so no write is in flight across them.
    writes: RwLock<()>,
    version: AtomicU64,
    master_port: AtomicU16,
    history: Mutex<Vec<Vec<Event>>>,
}

impl Shared {
    fn record(&self, key: usize, version: u64, nil: bool) {
        let acked = self.t0.elapsed();
        let mut history = self.history.lock().unwrap();
        history[key].push(Event {
            version,
            nil,
            acked,
        });
    }
}

fn keygate_conn(port: u16) -> Option<RawConn> {
    let mut c = RawConn::try_connect(port)?;
    c.try_send(&resp_command(&["AUTH", "app", "pw"]))
        .then_some(())?;
    (c.try_read_reply(Duration::from_secs(5))? == b"+OK\r\n").then_some(c)
}

/// One command; `None` on an error reply, a timeout or a closed connection.
fn exchange(conn: &mut Option<RawConn>, port: u16, args: &[&str], auth: bool) -> Option<Vec<u8>> {
    if conn.is_none() {
        *conn = if auth {
            keygate_conn(port)
        } else {
            RawConn::try_connect(port)
        };
    }
    let c = conn.as_mut()?;
    let reply = c
        .try_send(&resp_command(args))
        .then(|| c.try_read_reply(Duration::from_secs(8)))
        .flatten();
    match reply {
        Some(r) if !r.starts_with(b"-") => Some(r),
        Some(_) => None,
        None => {
            *conn = None;
            None
        }
    }
}

fn parse_value(reply: &[u8]) -> Option<Option<u64>> {
    if reply == b"$-1\r\n" {
        return Some(None);
    }
    let text = std::str::from_utf8(reply).ok()?;
    let body = text.split("\r\n").nth(1)?;
    body.strip_prefix('v')?.parse().ok().map(Some)
}

fn writer(shared: Arc<Shared>, kg_port: u16, direct: bool) {
    let mut conn = None;
    let mut conn_port = 0;
    let mut i = 0usize;
    while !shared.stop.load(Ordering::Relaxed) {
        let key = if direct {
            THROUGH_KEYGATE + i % (KEYS - THROUGH_KEYGATE)
        } else {
            i % THROUGH_KEYGATE
        };
        i += 1;
        let guard = shared.writes.read().unwrap();
        let version = shared.version.fetch_add(1, Ordering::SeqCst);
        let value = format!("v{version}");
        let (port, name) = if direct {
            (
                shared.master_port.load(Ordering::SeqCst),
                format!("app:k{key}"),
            )
        } else {
            (kg_port, format!("k{key}"))
        };
        if port != conn_port {
            conn = None;
            conn_port = port;
        }
        // A write that fails may or may not have run: retried until it is
        // acknowledged, so the key's history stays exact.
        loop {
            if exchange(&mut conn, port, &["SET", &name, &value], !direct).is_some() {
                shared.record(key, version, false);
                break;
            }
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(guard);
        // Paced, so that reads in between find the keys cached.
        std::thread::sleep(Duration::from_millis(3));
    }
}

fn reader(shared: Arc<Shared>, kg_port: u16, seed: u64) -> Vec<Read> {
    let mut conn = None;
    let mut reads = Vec::new();
    let mut x = seed | 1;
    while !shared.stop.load(Ordering::Relaxed) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let key = (x % KEYS as u64) as usize;
        let sent = shared.t0.elapsed();
        if let Some(reply) = exchange(&mut conn, kg_port, &["GET", &format!("k{key}")], true) {
            let got = parse_value(&reply).unwrap_or_else(|| {
                panic!("unexpected GET reply {}", String::from_utf8_lossy(&reply))
            });
            reads.push(Read { key, sent, got });
        }
    }
    reads
}

fn kill_named(port: u16, name: &str) {
    for id in client_ids_named(port, name) {
        cli_at(port, &["CLIENT", "KILL", "ID", &id]);
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

fn master_addr(state: &keygate::admin::ProxyState) -> Option<String> {
    state.health_json()["backend"]["master"]["address"]
        .as_str()
        .map(str::to_string)
}

#[test]
fn reads_are_never_older_than_acknowledged_writes_under_faults() {
    let (master, replica) = master_and_replica();
    let sentinel = RedisSentinel::start(MASTER, master.port());
    sentinel.wait_sees_good_replica(MASTER);
    let config = sentinel_backend_config(&sentinel.addr(), MASTER, NEAR_CACHE_SERVICE);
    let (kg, state) = start_keygate_observed(&config);
    assert!(
        wait_until(Duration::from_secs(20), || master_addr(&state).as_deref()
            == Some(&master.addr())
            && state.is_ready()),
        "no master"
    );
    assert!(
        wait_until(Duration::from_secs(10), || !client_ids_named(
            master.port(),
            "keygate-invalidation"
        )
        .is_empty()),
        "no invalidation connection"
    );
    for key in 0..KEYS {
        master.cli(&["SET", &format!("app:k{key}"), "v0"]);
    }
    let shared = Arc::new(Shared {
        t0: Instant::now(),
        stop: AtomicBool::new(false),
        writes: RwLock::new(()),
        version: AtomicU64::new(1),
        master_port: AtomicU16::new(master.port()),
        history: Mutex::new(
            (0..KEYS)
                .map(|_| {
                    vec![Event {
                        version: 0,
                        nil: false,
                        acked: Duration::ZERO,
                    }]
                })
                .collect(),
        ),
    });
    let port = kg.port();
    let writers: Vec<_> = [false, true]
        .into_iter()
        .map(|direct| {
            let shared = shared.clone();
            std::thread::spawn(move || writer(shared, port, direct))
        })
        .collect();
    let readers: Vec<_> = (0..READERS)
        .map(|i| {
            let shared = shared.clone();
            std::thread::spawn(move || reader(shared, port, 0x9E37_79B9 * (i as u64 + 1)))
        })
        .collect();

    let at = |secs: u64| {
        let when = Duration::from_secs(secs);
        let now = shared.t0.elapsed();
        if when > now {
            // Pacing the fault schedule; correctness never waits on it.
            std::thread::sleep(when - now);
        }
    };
    let mut faults = Vec::new();
    at(3);
    kill_named(master.port(), "keygate-invalidation");
    faults.push("invalidation connection killed");
    at(6);
    kill_named(master.port(), "keygate-mux");
    faults.push("data connections killed");
    at(9);
    let pid = master.pid().expect("master pid");
    signal(pid, "STOP");
    std::thread::sleep(Duration::from_millis(300));
    signal(pid, "CONT");
    faults.push("master paused 300 ms (SIGSTOP)");
    at(12);
    {
        let _quiet = shared.writes.write().unwrap();
        let version = shared.version.fetch_add(1, Ordering::SeqCst);
        assert_eq!(master.cli(&["FLUSHALL"]), "OK");
        for key in 0..KEYS {
            shared.record(key, version, true);
        }
    }
    faults.push("FLUSHALL");
    at(15);
    {
        let _quiet = shared.writes.write().unwrap();
        // Every acknowledged write reaches the replica before it is promoted.
        master.cli(&["WAIT", "1", "5000"]);
        let ok = wait_until(Duration::from_secs(10), || {
            sentinel.cli(&["SENTINEL", "FAILOVER", MASTER]) == "OK"
        });
        assert!(ok, "SENTINEL FAILOVER refused:\n{}", sentinel.log());
        assert!(
            wait_until(Duration::from_secs(20), || master_addr(&state).as_deref()
                == Some(&replica.addr())
                && state.is_ready()),
            "keygate did not follow the failover"
        );
        shared.master_port.store(replica.port(), Ordering::SeqCst);
    }
    faults.push("Sentinel failover");
    at(20);
    replica.cli(&["CONFIG", "SET", "tracking-table-max-keys", "4"]);
    faults.push("tracking-table-max-keys 4 (5 s)");
    at(25);
    replica.cli(&["CONFIG", "SET", "tracking-table-max-keys", "0"]);
    at(RUN.as_secs());
    shared.stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().expect("writer");
    }
    let reads: Vec<Read> = readers
        .into_iter()
        .flat_map(|r| r.join().expect("reader"))
        .collect();

    let history = shared.history.lock().unwrap().clone();
    let mut violations = Vec::new();
    let mut staleness = Vec::new();
    for read in &reads {
        let events = &history[read.key];
        let got = match read.got {
            Some(v) => v,
            // A nil is the FLUSHALL's (every key had a value before it).
            None => match events.iter().find(|e| e.nil) {
                Some(flush) => flush.version,
                None => {
                    violations.push(format!("{read:?}: nil, but the key was never flushed"));
                    continue;
                }
            },
        };
        // The first change newer than what the read got, acknowledged
        // before it was sent: among writes through keygate (none may be
        // missed) and among direct ones (seen once their invalidation
        // reaches keygate). FLUSHALL is sent to Redis directly, so it is a
        // direct write whichever key it empties.
        let newer = |through_keygate: bool| {
            events.iter().find(|e| {
                let direct = e.nil || read.key >= THROUGH_KEYGATE;
                direct != through_keygate && e.version > got && e.acked < read.sent
            })
        };
        if let Some(e) = newer(true) {
            violations.push(format!("{read:?}: older than {e:?}"));
        } else {
            staleness.push(newer(false).map_or(Duration::ZERO, |e| read.sent - e.acked));
        }
    }
    staleness.sort();
    let text = scrape_metrics(kg.admin_port());
    let hits = metric_sum(
        &text,
        "keygate_near_cache_hits_total",
        &[("service", "app")],
    );
    let misses = metric_sum(
        &text,
        "keygate_near_cache_misses_total",
        &[("service", "app")],
    );
    let stale_reads = staleness.iter().filter(|d| !d.is_zero()).count();
    println!(
        "near cache coherence: {} reads ({} of keys written directly), {} writes, faults: {}",
        reads.len(),
        reads.iter().filter(|r| r.key >= THROUGH_KEYGATE).count(),
        shared.version.load(Ordering::SeqCst),
        faults.join(", ")
    );
    println!(
        "near cache: {hits} hits, {misses} misses; violations (keygate writes): {}",
        violations.len()
    );
    println!(
        "direct-write staleness (every read, FLUSHALL included): {stale_reads} reads saw an older value; p50 {:?}, p99 {:?}, max {:?}",
        quantile(&staleness, 0.5),
        quantile(&staleness, 0.99),
        staleness.last().copied().unwrap_or_default()
    );
    assert!(
        violations.is_empty(),
        "{} stale reads of keygate writes, first: {:?}",
        violations.len(),
        violations.iter().take(5).collect::<Vec<_>>()
    );
    assert!(hits > 0.0, "the near cache was never used");
    assert!(
        staleness.last().copied().unwrap_or_default() < DIRECT_STALENESS_LIMIT,
        "a direct write stayed hidden too long"
    );
}
