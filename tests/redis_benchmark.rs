//! redis-benchmark's whole default test list through keygate, unpipelined
//! and pipelined, must finish with zero errors.
mod common;
use common::*;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The tests redis-benchmark 7.0 runs when given no `-t`.
const DEFAULT_TESTS: &[&str] = &[
    "PING_INLINE",
    "PING_MBULK",
    "SET",
    "GET",
    "INCR",
    "LPUSH",
    "RPUSH",
    "LPOP",
    "RPOP",
    "SADD",
    "HSET",
    "SPOP",
    "ZADD",
    "ZPOPMIN",
    "LRANGE_100",
    "LRANGE_300",
    "LRANGE_500",
    "LRANGE_600",
    "MSET",
];

/// Runs redis-benchmark (which since 7.0 exits non-zero at the first error
/// reply, so success means zero errors) with a hard deadline; returns (success, stdout, stderr).
fn run_benchmark(port: u16, pipeline: u32) -> (bool, String, String) {
    let mut child = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-q", "-n", "2000", "-c", "10", "-P", &pipeline.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run redis-benchmark");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    (status.is_some_and(|s| s.success()), out, err)
}

fn assert_clean_run(pipeline: u32) {
    let redis = RedisServer::start();
    let kg = Keygate::start(&redis);
    wait_serving(kg.port());
    let (ok, out, err) = run_benchmark(kg.port(), pipeline);
    println!("redis-benchmark -P {pipeline}:\n{out}\nstderr:\n{err}");
    assert!(
        ok,
        "redis-benchmark -P {pipeline} failed or hung:\n{out}\n{err}"
    );
    assert!(
        !err.contains("rror") && !out.contains("rror from server") && !out.contains("ERR"),
        "errors from redis-benchmark -P {pipeline}:\n{out}\n{err}"
    );
    // -q overwrites progress with '\r'; the final figure is the last piece.
    let finals: Vec<&str> = out
        .lines()
        .filter_map(|l| l.rsplit('\r').next())
        .map(str::trim_start)
        .filter(|l| l.contains("requests per second"))
        .collect();
    for test in DEFAULT_TESTS {
        // "LRANGE_100 (first 100 elements): ...", "MSET (10 keys): ...".
        let named = |l: &&str| {
            l.strip_prefix(test)
                .is_some_and(|rest| rest.starts_with(':') || rest.starts_with(" ("))
        };
        assert!(
            finals.iter().any(named),
            "no result line for {test} at -P {pipeline}:\n{out}"
        );
    }
}

#[test]
fn default_tests_unpipelined() {
    assert_clean_run(1);
}

#[test]
fn default_tests_pipelined_16() {
    assert_clean_run(16);
}
