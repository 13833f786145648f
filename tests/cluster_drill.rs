//! The cluster drill: while clients through keygate run INCR on their own
//! counters and SET/GET with unique values, `redis-cli --cluster reshard`
//! moves 1,000 slots between masters, a master is failed over with
//! `CLUSTER FAILOVER` on its replica, and another is killed with SIGKILL.
//! Clients never see MOVED or ASK, no INCR reply goes backwards, no
//! acknowledged SET reads back otherwise, and every counter ends at its
//! acknowledged increments plus at most the increments whose outcome is
//! unknown (they errored while their master was dead, before the promotion).
//!
//! Bounded: the clients stop when the drill ends or at [`DRILL_LIMIT`];
//! every step waits for state with a deadline.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    backend_health, cli_at, cluster_config, info_field, Keygate, RedisCluster, DEFAULT_SERVICE,
};
use keygate::topology::slot::key_slot;

/// Client threads, each with its own counter and keys.
const CLIENTS: usize = 6;
/// Keys each client rewrites round-robin with unique values.
const KEYS_PER_CLIENT: usize = 40;
/// Slots the reshard moves.
const RESHARD_SLOTS: u32 = 1000;
/// The longest any step of the drill may wait for the cluster.
const STEP_LIMIT: Duration = Duration::from_secs(30);
/// The clients stop by themselves after this, whatever the drill does.
const DRILL_LIMIT: Duration = Duration::from_secs(120);
/// How long one client waits for one reply.
const REPLY_LIMIT: Duration = Duration::from_secs(10);

/// The drill's phases, in order; clients file their errors under the one
/// in force when the reply arrived.
const PHASES: [&str; 5] = ["warm-up", "reshard", "failover", "killed", "after"];

/// What one client saw.
#[derive(Debug, Default, Clone)]
struct Tally {
    /// Completed rounds (INCR, SET, GET; some may have errored).
    rounds: u64,
    /// INCRs answered with a number.
    incr_acked: u64,
    /// INCRs answered with an error or no reply: applied or not.
    incr_unknown: u64,
    /// The last INCR reply.
    last_incr: i64,
    /// SETs answered `OK`, GETs checked against them.
    sets_acked: u64,
    gets_checked: u64,
    /// Replies that were MOVED or ASK (must stay 0).
    redirects_seen: u64,
    /// Errors by drill phase and their first word.
    errors: HashMap<(&'static str, String), u64>,
    /// The first error text seen in each phase.
    first_errors: HashMap<&'static str, String>,
    /// Broken guarantees, with what was seen.
    violations: Vec<String>,
}

/// A connection to keygate with reply timeouts, made again after an I/O error.
struct Client {
    url: String,
    conn: Option<redis::Connection>,
}

impl Client {
    fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        if self.conn.is_none() {
            let client = redis::Client::open(self.url.as_str())?;
            let conn = client.get_connection_with_timeout(REPLY_LIMIT)?;
            conn.set_read_timeout(Some(REPLY_LIMIT))?;
            conn.set_write_timeout(Some(REPLY_LIMIT))?;
            self.conn = Some(conn);
        }
        let conn = self.conn.as_mut().expect("connected");
        let result = cmd.query(conn);
        if result
            .as_ref()
            .is_err_and(|e| e.is_io_error() || e.is_timeout())
        {
            self.conn = None;
        }
        result
    }
}

impl Tally {
    /// Counts an error reply; MOVED and ASK are violations on their own.
    fn error(&mut self, what: &str, e: &redis::RedisError, phase: &'static str) {
        let code = e
            .code()
            .unwrap_or(if e.is_io_error() { "io" } else { "other" });
        self.first_errors
            .entry(phase)
            .or_insert_with(|| format!("{what}: {e}"));
        if matches!(code, "MOVED" | "ASK") {
            self.redirects_seen += 1;
            self.violations
                .push(format!("{what}: a redirect reached the client: {e}"));
        }
        *self.errors.entry((phase, code.to_string())).or_default() += 1;
    }
}

/// A replication offset from `INFO replication` on the node at `port`
/// (`master_repl_offset` on a master, `slave_repl_offset` on a replica).
fn repl_offset(port: u16, field: &str) -> Option<u64> {
    info_field(&cli_at(port, &["INFO", "replication"]), field)?
        .parse()
        .ok()
}

/// One client's loop: INCR its counter, SET a key to a unique value, GET it.
fn client(
    port: u16,
    id: usize,
    counter: String,
    keys: Vec<String>,
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicUsize>,
    tally: Arc<Mutex<Tally>>,
) {
    let mut c = Client {
        url: format!("redis://127.0.0.1:{port}"),
        conn: None,
    };
    // Per key: the value last acknowledged, or None after a SET whose
    // outcome is unknown (either value may read back then).
    let mut values: Vec<Option<String>> = vec![None; keys.len()];
    let started = Instant::now();
    let mut round: u64 = 0;
    while !stop.load(Ordering::Relaxed) && started.elapsed() < DRILL_LIMIT {
        round += 1;
        let incr = c.query::<i64>(redis::cmd("INCR").arg(&counter));
        let k = (round as usize) % keys.len();
        let key = &keys[k];
        let value = format!("{id}-{round}");
        let set = c.query::<String>(redis::cmd("SET").arg(key).arg(&value));
        let get = c.query::<Option<String>>(redis::cmd("GET").arg(key));
        let now = PHASES[phase.load(Ordering::Relaxed).min(PHASES.len() - 1)];
        let mut t = tally.lock().unwrap();
        t.rounds += 1;
        match incr {
            Ok(n) => {
                // Never backwards, never past what may have been applied.
                let ceiling = t.incr_acked as i64 + t.incr_unknown as i64 + 1;
                if n <= t.last_incr || n > ceiling {
                    let msg = format!(
                        "{counter}: INCR answered {n} after {} (acked {}, unknown {})",
                        t.last_incr, t.incr_acked, t.incr_unknown
                    );
                    t.violations.push(msg);
                }
                t.incr_acked += 1;
                t.last_incr = n;
            }
            Err(e) => {
                t.incr_unknown += 1;
                t.error("INCR", &e, now);
            }
        }
        match set {
            Ok(_) => {
                t.sets_acked += 1;
                values[k] = Some(value);
            }
            Err(e) => {
                t.error("SET", &e, now);
                values[k] = None;
            }
        }
        match get {
            Ok(read) => {
                if let Some(expected) = &values[k] {
                    t.gets_checked += 1;
                    if read.as_ref() != Some(expected) {
                        let msg =
                            format!("{key}: GET {read:?} after SET {expected} was acknowledged");
                        t.violations.push(msg);
                    }
                }
            }
            Err(e) => t.error("GET", &e, now),
        }
    }
}

/// A key named after `base` whose slot is in `slots` (a hash tag is searched).
fn key_in(base: &str, slots: &std::ops::Range<u16>) -> String {
    (0..)
        .map(|n| format!("{{{base}.{n}}}"))
        .find(|k| slots.contains(&key_slot(k.as_bytes())))
        .expect("a key in the range")
}

/// The lowest slot `port`'s node serves as master.
fn lowest_slot(port: u16) -> u16 {
    let myself = cli_at(port, &["CLUSTER", "NODES"]);
    myself
        .lines()
        .find(|l| l.contains("myself"))
        .and_then(|l| l.split(' ').nth(8))
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.parse().ok())
        .expect("the node serves slots")
}

/// The masters in keygate's slot map (`/health` shards that serve slots).
fn keygate_masters(kg: &Keygate) -> Vec<String> {
    let backend = backend_health(kg);
    backend["shards"]
        .as_array()
        .map(|shards| {
            shards
                .iter()
                .filter(|s| s["slots"].as_array().is_some_and(|r| !r.is_empty()))
                .filter_map(|s| s["master"]["address"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Every client's tallies summed.
fn rounds(tallies: &[Arc<Mutex<Tally>>]) -> Vec<u64> {
    tallies.iter().map(|t| t.lock().unwrap().rounds).collect()
}

/// Waits until every client has done `more` rounds past now.
fn wait_progress(tallies: &[Arc<Mutex<Tally>>], more: u64, step: &str) {
    let target: Vec<u64> = rounds(tallies).iter().map(|r| r + more).collect();
    let moved_on = common::wait_until(STEP_LIMIT, || {
        rounds(tallies).iter().zip(&target).all(|(r, t)| r >= t)
    });
    assert!(moved_on, "clients stalled ({step}): {:?}", rounds(tallies));
}

/// The node id, port and flags of every node in `CLUSTER NODES` on `port`.
fn cluster_nodes(port: u16) -> Vec<(String, u16, String, String)> {
    cli_at(port, &["CLUSTER", "NODES"])
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let port = f.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
            Some((
                f[0].to_string(),
                port,
                f.get(2)?.to_string(),
                f.get(3)?.to_string(),
            ))
        })
        .collect()
}

/// The replica of the master `master_id`, seen from `port`.
fn replica_of(port: u16, master_id: &str) -> u16 {
    cluster_nodes(port)
        .into_iter()
        .find(|(_, _, flags, of)| flags.contains("slave") && of == master_id)
        .map(|(_, p, _, _)| p)
        .expect("a replica")
}

/// Every live node (by port) says `cluster_state:ok` and sees `port` as a master.
fn settled(live: &[u16], master: u16) -> bool {
    live.iter().all(|&p| {
        cli_at(p, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
            && cluster_nodes(p).iter().any(|(_, np, flags, _)| {
                *np == master && flags.contains("master") && !flags.contains("fail")
            })
    })
}

#[test]
fn reshard_failover_and_kill_under_load() {
    let drill_start = Instant::now();
    let mut cluster = RedisCluster::start();
    let kg = Keygate::start_with(&cluster_config(&cluster, DEFAULT_SERVICE));
    kg.wait_ready();
    let mut live: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
    let masters: Vec<(u16, String)> = cluster
        .masters()
        .iter()
        .map(|m| (m.port(), m.cli(&["CLUSTER", "MYID"])))
        .collect();
    let [(from_port, from_id), (to_port, to_id), (failover_port, failover_id)] =
        <[(u16, String); 3]>::try_from(masters).expect("three masters");

    // Even clients keep their counter and keys in the slots the reshard
    // moves (redis-cli takes a source's slots from its lowest), odd ones
    // anywhere.
    let first = lowest_slot(from_port);
    let moving = first..first + RESHARD_SLOTS as u16 / 2;
    let names: Vec<(String, Vec<String>)> = (0..CLIENTS)
        .map(|id| {
            let name = |what: String| {
                if id % 2 == 0 {
                    key_in(&what, &moving)
                } else {
                    what
                }
            };
            let keys = (0..KEYS_PER_CLIENT)
                .map(|k| name(format!("drill:{id}:k{k}")))
                .collect();
            (name(format!("drill:ctr:{id}")), keys)
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let phase = Arc::new(AtomicUsize::new(0));
    let tallies: Vec<Arc<Mutex<Tally>>> = (0..CLIENTS)
        .map(|_| Arc::new(Mutex::new(Tally::default())))
        .collect();
    let threads: Vec<_> = tallies
        .iter()
        .zip(names.clone())
        .enumerate()
        .map(|(id, (tally, (counter, keys)))| {
            let (stop, phase, tally) = (stop.clone(), phase.clone(), tally.clone());
            let port = kg.port();
            std::thread::spawn(move || client(port, id, counter, keys, stop, phase, tally))
        })
        .collect();
    wait_progress(&tallies, 50, "warm-up");

    // 1. Reshard: 1,000 slots from one master to another, under load.
    phase.store(1, Ordering::Relaxed);
    let reshard_start = Instant::now();
    let out = Command::new("redis-cli")
        .args(["--cluster", "reshard", &format!("127.0.0.1:{from_port}")])
        .args(["--cluster-from", &from_id, "--cluster-to", &to_id])
        .args([
            "--cluster-slots",
            &RESHARD_SLOTS.to_string(),
            "--cluster-yes",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli --cluster reshard");
    assert!(
        out.status.success(),
        "reshard failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let moved = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("Moving slot") && l.contains(" to "))
        .count();
    assert!(moved >= RESHARD_SLOTS as usize, "moved {moved} slots");
    let reshard_took = reshard_start.elapsed();
    // The even clients' keys did move.
    let moved_keys = names
        .iter()
        .step_by(2)
        .filter(|(counter, _)| cluster.slot_owner(key_slot(counter.as_bytes())).1 == to_port)
        .count();
    assert_eq!(
        moved_keys,
        CLIENTS.div_ceil(2),
        "counters moved by the reshard"
    );
    wait_progress(&tallies, 20, "after the reshard");

    // 2. A manual failover: the replica takes over its master's slots.
    phase.store(2, Ordering::Relaxed);
    let replica = replica_of(failover_port, &failover_id);
    assert_eq!(cli_at(replica, &["CLUSTER", "FAILOVER"]), "OK");
    assert!(
        common::wait_until(STEP_LIMIT, || settled(&live, replica)
            && keygate_masters(&kg).contains(&format!("127.0.0.1:{replica}"))),
        "the failover did not settle: {:#}",
        backend_health(&kg)
    );
    wait_progress(&tallies, 20, "after the failover");

    // 3. SIGKILL a master: its replica is promoted after the node timeout.
    let victim = to_port;
    let heir = replica_of(from_port, &to_id);
    // Redis promotes only a replica that was in sync when its master went
    // (one still loading its first full sync never asks for votes): wait
    // for that state before the kill.
    assert!(
        common::wait_until(STEP_LIMIT, || {
            let info = cli_at(heir, &["INFO", "replication"]);
            info.contains("master_link_status:up")
                && cli_at(heir, &["INFO", "persistence"]).contains("loading:0")
        }),
        "the replica {heir} never came in sync with its master"
    );
    // Redis replicates asynchronously: a write acknowledged just before
    // the kill may not have reached the heir, and Redis itself then loses
    // it, whatever sits in front. The victim holds writes (CLIENT PAUSE
    // WRITE, which replication ignores) until the heir has everything it
    // acknowledged; the writes it holds die with it, unacknowledged.
    let pause_ms = STEP_LIMIT.as_millis().to_string();
    assert_eq!(
        cli_at(victim, &["CLIENT", "PAUSE", &pause_ms, "WRITE"]),
        "OK"
    );
    assert!(
        common::wait_until(STEP_LIMIT, || {
            let sent = repl_offset(victim, "master_repl_offset");
            sent.is_some() && sent == repl_offset(heir, "slave_repl_offset")
        }),
        "the replica {heir} never caught up with its paused master"
    );
    phase.store(3, Ordering::Relaxed);
    cluster.kill_node(victim);
    live.retain(|&p| p != victim);
    let kill_start = Instant::now();
    assert!(
        common::wait_until(STEP_LIMIT, || settled(&live, heir)
            && keygate_masters(&kg).contains(&format!("127.0.0.1:{heir}"))),
        "the killed master's replica was not promoted: {:#}",
        backend_health(&kg)
    );
    let promotion_took = kill_start.elapsed();
    phase.store(4, Ordering::Relaxed);
    wait_progress(&tallies, 50, "after the kill");

    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("client thread");
    }

    // Every counter: its acknowledged increments, plus at most the unknown ones.
    let mut reader = Client {
        url: format!("redis://127.0.0.1:{}", kg.port()),
        conn: None,
    };
    let mut total = Tally::default();
    // Increments that errored but were applied after all.
    let mut applied_unknown = 0;
    for (id, tally) in tallies.iter().enumerate() {
        let t = tally.lock().unwrap().clone();
        let value: i64 = reader
            .query(redis::cmd("GET").arg(&names[id].0))
            .expect("read a counter");
        let (acked, unknown) = (t.incr_acked as i64, t.incr_unknown as i64);
        assert!(
            value >= acked && value <= acked + unknown && value >= t.last_incr,
            "counter {id} is {value}: acked {acked}, unknown {unknown}, last reply {}",
            t.last_incr
        );
        println!(
            "client {id}: rounds {}, INCR acked {acked}, unknown {unknown}, counter {value}, errors {:?}, first {:?}",
            t.rounds, t.errors, t.first_errors
        );
        applied_unknown += value - acked;
        total.rounds += t.rounds;
        total.incr_acked += t.incr_acked;
        total.incr_unknown += t.incr_unknown;
        total.sets_acked += t.sets_acked;
        total.gets_checked += t.gets_checked;
        total.redirects_seen += t.redirects_seen;
        total.violations.extend(t.violations);
        for ((phase, code), n) in &t.errors {
            *total.errors.entry((phase, code.clone())).or_default() += n;
        }
    }
    println!(
        "drill: {:?} in all, reshard of {moved} slots {reshard_took:?}, promotion after SIGKILL {promotion_took:?}; \
         rounds {}, INCR acked {} unknown {} (applied {}), SET acked {}, GET checked {}, MOVED/ASK seen {}; keygate redirects {}",
        drill_start.elapsed(),
        total.rounds,
        total.incr_acked,
        total.incr_unknown,
        applied_unknown,
        total.sets_acked,
        total.gets_checked,
        total.redirects_seen,
        backend_health(&kg)["redirects"]
    );
    println!("errors by phase: {:?}", total.errors);
    assert_eq!(total.redirects_seen, 0);
    // Only the dead master's slots may fail, and only until the promotion.
    let elsewhere: Vec<_> = total
        .errors
        .iter()
        .filter(|((phase, _), _)| !matches!(*phase, "killed" | "after"))
        .collect();
    assert!(
        elsewhere.is_empty(),
        "errors while no master was down: {elsewhere:?}"
    );
    assert!(
        total.violations.is_empty(),
        "{} violations, first: {:?}",
        total.violations.len(),
        total.violations.first()
    );
}
