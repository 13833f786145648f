//! Scripted redis-cli sessions through keygate.
mod common;
use common::*;

use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn ping_set_get_info_command_docs() {
    let redis = RedisServer::start();
    let kg = Keygate::start(&redis);
    wait_serving(kg.port());
    assert_eq!(kg.cli(&["PING"]), "PONG");
    assert_eq!(kg.cli(&["SET", "cli:k", "hello world"]), "OK");
    assert_eq!(kg.cli(&["GET", "cli:k"]), "hello world");
    let info = kg.cli(&["INFO"]);
    assert!(info.contains("# Server"), "INFO lacks # Server:\n{info}");
    assert!(info.contains("# Proxy"), "INFO lacks # Proxy:\n{info}");
    let docs = kg.cli(&["COMMAND", "DOCS", "get"]);
    assert!(docs.contains("summary"), "COMMAND DOCS get:\n{docs}");
    assert!(
        docs.contains("Get the value of a key"),
        "COMMAND DOCS get:\n{docs}"
    );
}

#[test]
fn pipe_mass_insert() {
    let redis = RedisServer::start();
    let kg = Keygate::start(&redis);
    wait_serving(kg.port());
    let mut input = Vec::new();
    for i in 0..10_000 {
        input.extend_from_slice(&resp_command(&[
            "SET".to_string(),
            format!("mass:{i}"),
            format!("value-{i}"),
        ]));
    }
    let mut child = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &kg.port().to_string(), "--pipe"])
        .args(["--pipe-timeout", "20"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-cli --pipe");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait");
    let _ = writer.join();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "redis-cli --pipe failed: {text}");
    assert!(
        text.contains("errors: 0, replies: 10000"),
        "unexpected --pipe summary: {text}"
    );
    assert_eq!(redis.cli(&["DBSIZE"]), "10000");
    assert_eq!(redis.cli(&["GET", "mass:9999"]), "value-9999");
}

#[test]
fn resp3_session_with_dash_3() {
    let redis = RedisServer::start();
    let kg = Keygate::start(&redis);
    wait_serving(kg.port());
    assert_eq!(kg.cli(&["-3", "SET", "r3", "v"]), "OK");
    assert_eq!(kg.cli(&["-3", "GET", "r3"]), "v");
    assert_eq!(kg.cli(&["HSET", "r3h", "f1", "a", "f2", "b"]), "2");
    // Without a tty redis-cli prints a RESP3 map as "key value" lines and a
    // RESP2 array as one element per line.
    assert_eq!(kg.cli(&["-3", "HGETALL", "r3h"]), "f1 a\nf2 b");
    assert_eq!(redis.cli(&["-3", "HGETALL", "r3h"]), "f1 a\nf2 b");
    assert_eq!(kg.cli(&["HGETALL", "r3h"]), "f1\na\nf2\nb");
    let hello = kg.cli(&["-3", "HELLO", "3"]);
    assert!(hello.contains("proto 3"), "{hello}");
}
