//! Differential sequence test: random pipelines sent through keygate (an
//! unprefixed admin service) and directly to a second redis-server must get
//! the same replies byte for byte, and a MONITOR client and a tracking
//! client watching each side must see the same thing.
//!
//! Each sequence uses fresh key names (`s<n>:...`), the same on both sides;
//! the two servers start empty, so equal commands in equal order give equal
//! replies. What is normalised, and only that: monitor lines lose their
//! `<time> [<db> <addr>]` head, and only lines naming the sequence's own keys
//! are compared (keygate's own commands, such as a dedicated connection's
//! handshake, and PING/ECHO that keygate answers itself, never name them).
//!
//! Bounded: `ORDERING_SEQUENCES` sequences (default 2500) or
//! `ORDERING_SECONDS` (default 45), whichever ends first. The seed is
//! printed; `ORDERING_SEED=<n>` replays a run. `scripts/fuzz ordering` runs
//! it for longer.
mod common;
use common::*;
use std::time::{Duration, Instant};

const ADMIN: &str = r#"
[[service]]
name = "default"
prefix = ""
isolation = false
admin = true
"#;

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

type Command = Vec<String>;

fn cmd(args: &[&str]) -> Command {
    args.iter().map(|s| s.to_string()).collect()
}

/// One plain command on the sequence's keys (`p` is the key prefix).
fn single(rng: &mut Rng, p: &str, in_tx: bool) -> Command {
    let (k, c, l, ch) = (
        format!("{p}k"),
        format!("{p}c"),
        format!("{p}l"),
        format!("{p}ch"),
    );
    let v = format!("v{}", rng.below(100));
    match rng.below(if in_tx { 11 } else { 16 }) {
        0 => cmd(&["SET", &k, &v]),
        1 => cmd(&["GET", &k]),
        2 => cmd(&["INCR", &c]),
        3 => cmd(&["DEL", &k]),
        4 => cmd(&["RPUSH", &l, &v]),
        5 => cmd(&["LPOP", &l]),
        6 => cmd(&["LLEN", &l]),
        7 => cmd(&["APPEND", &k, &v]),
        8 => cmd(&["EXISTS", &k, &c]),
        9 => cmd(&["PUBLISH", &ch, &v]),
        // Inside MULTI Redis runs it without blocking.
        10 => cmd(&["BLPOP", &l, "0.01"]),
        11 => cmd(&["PING"]),
        12 => cmd(&["ECHO", &v]),
        13 => cmd(&["EXEC"]),
        14 => cmd(&["DISCARD"]),
        _ => cmd(&["UNWATCH"]),
    }
}

/// A pipeline: units of one or more commands. A subscription, after which
/// the client stays on its dedicated connection, comes last.
fn sequence(rng: &mut Rng, p: &str) -> Vec<Command> {
    let mut out = Vec::new();
    let units = 1 + rng.below(6);
    for _ in 0..units {
        match rng.below(10) {
            0..=3 => out.push(single(rng, p, false)),
            4 => {
                out.push(cmd(&["MULTI"]));
                for _ in 0..1 + rng.below(3) {
                    out.push(single(rng, p, true));
                }
                out.push(cmd(&[if rng.below(4) == 0 { "DISCARD" } else { "EXEC" }]));
            }
            5 => {
                out.push(cmd(&["WATCH", &format!("{p}k")]));
                if rng.below(2) == 0 {
                    out.push(single(rng, p, true));
                }
                if rng.below(3) == 0 {
                    out.push(cmd(&["UNWATCH"]));
                } else {
                    out.push(cmd(&["MULTI"]));
                    out.push(single(rng, p, true));
                    out.push(cmd(&["EXEC"]));
                }
            }
            6 => {
                out.push(cmd(&["CLIENT", "REPLY", "OFF"]));
                out.push(single(rng, p, true));
                out.push(cmd(&["CLIENT", "REPLY", "ON"]));
            }
            7 => {
                out.push(cmd(&["CLIENT", "REPLY", "SKIP"]));
                out.push(single(rng, p, true));
            }
            8 => {
                // A blocking pop on a list that may or may not have an
                // element by then: either way the result is decided by the
                // commands before it.
                out.push(cmd(&["BLPOP", &format!("{p}l"), "0.01"]));
            }
            _ => out.push(single(rng, p, false)),
        }
    }
    if rng.below(8) == 0 {
        let ch = format!("{p}ch");
        out.push(cmd(&["SUBSCRIBE", &ch]));
        if rng.below(2) == 0 {
            out.push(cmd(&["PING"]));
        }
        out.push(cmd(&["UNSUBSCRIBE", &ch]));
    }
    out
}

/// One side: the sequence client's endpoint, a monitor and a tracker.
struct Side {
    port: u16,
    monitor: RawConn,
    tracker: RawConn,
}

impl Side {
    fn new(port: u16) -> Side {
        let mut monitor = RawConn::connect(port);
        assert_eq!(monitor.cmd_str(&["MONITOR"]), "+OK\r\n");
        let mut tracker = RawConn::connect(port);
        assert!(tracker.cmd_str(&["HELLO", "3"]).starts_with('%'));
        assert_eq!(tracker.cmd_str(&["CLIENT", "TRACKING", "on"]), "+OK\r\n");
        Side {
            port,
            monitor,
            tracker,
        }
    }

    /// Runs one sequence: what the client, the monitor and the tracker saw.
    fn run(
        &mut self,
        n: u64,
        p: &str,
        commands: &[Command],
    ) -> (Vec<String>, Vec<String>, Vec<String>) {
        // The tracker reads the sequence's keys, so writes invalidate them.
        for key in ["k", "c", "l"] {
            let reply = self.tracker.cmd_str(&["EXISTS", &format!("{p}{key}")]);
            assert_eq!(reply, ":0\r\n", "fresh key {p}{key}");
        }
        let mut c = RawConn::connect(self.port);
        let marker = format!("end-{n}");
        let mut bytes = Vec::new();
        for args in commands {
            bytes.extend(resp_command(args));
        }
        bytes.extend(resp_command(&["ECHO", &marker]));
        c.send(&bytes);
        let end = format!("${}\r\n{marker}\r\n", marker.len());
        let mut replies = Vec::new();
        loop {
            let reply = String::from_utf8_lossy(&c.read_reply()).into_owned();
            if reply == end {
                break;
            }
            replies.push(reply);
            assert!(replies.len() <= commands.len() + 4, "runaway replies");
        }
        // Monitor lines up to a marker command that names the sequence.
        let done = format!("{p}done");
        let mut marker_conn = RawConn::connect(self.port);
        assert_eq!(marker_conn.cmd_str(&["GET", &done]), "$-1\r\n");
        let mut monitored = Vec::new();
        loop {
            let line = String::from_utf8_lossy(&self.monitor.read_reply()).into_owned();
            let body = line.split_once("] ").map_or(line.as_str(), |(_, b)| b);
            if body.contains(&format!("\"{p}")) {
                if body.contains(&done) {
                    break;
                }
                monitored.push(body.to_string());
            }
        }
        // Invalidations come before the reply to the tracker's next read.
        self.tracker.send(&resp_command(&["GET", &done]));
        let mut invalidated = Vec::new();
        loop {
            let frame = String::from_utf8_lossy(&self.tracker.read_reply()).into_owned();
            if frame.starts_with('>') {
                invalidated.push(frame);
            } else {
                assert_eq!(frame, "_\r\n");
                break;
            }
        }
        (replies, monitored, invalidated)
    }
}

#[test]
fn random_pipelines_answer_as_redis_does() {
    // CI (CI=true) runs the same sequences every time, so a red run is
    // reproducible from its log; elsewhere each run draws anew.
    let seed = env_u64("ORDERING_SEED").unwrap_or_else(|| {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            return 0x5eed1;
        }
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1
    });
    let max = env_u64("ORDERING_SEQUENCES").unwrap_or(2500);
    let seconds = env_u64("ORDERING_SECONDS").unwrap_or(45);
    eprintln!("ordering differential: ORDERING_SEED={seed}");
    // Blocking timeouts are checked `hz` times a second: 500 keeps a
    // 10 ms BLPOP on an empty list short.
    let behind = RedisServer::start_with(&["--hz", "500"]);
    let direct = RedisServer::start_with(&["--hz", "500"]);
    let kg = Keygate::start_with(&standalone_config(&behind.addr(), ADMIN));
    wait_serving(kg.port());
    let mut through = Side::new(kg.port());
    let mut plain = Side::new(direct.port());
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut n = 0;
    while n < max && started.elapsed() < Duration::from_secs(seconds) {
        let p = format!("s{n}:");
        let commands = sequence(&mut rng, &p);
        let expected = plain.run(n, &p, &commands);
        let got = through.run(n, &p, &commands);
        assert_eq!(
            got, expected,
            "sequence {n} (ORDERING_SEED={seed}): {commands:?}\n(replies, monitor lines, invalidations)"
        );
        n += 1;
    }
    eprintln!(
        "ordering differential: {n} sequences in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(n >= 100, "only {n} sequences ran");
}
