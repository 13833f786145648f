//! A real client library (redis-rs) through keygate, RESP2 and RESP3, and
//! the raw HELLO 3 exchange those libraries rely on.
mod common;
use common::*;

use redis::{Commands, Value};

fn setup() -> (RedisServer, Keygate) {
    let redis = RedisServer::start();
    let kg = Keygate::start(&redis);
    wait_serving(kg.port());
    (redis, kg)
}

fn exercise(con: &mut redis::Connection, tag: &str) {
    let key = format!("rs:{tag}:k");
    let _: () = con.set(&key, "value").expect("SET");
    let got: String = con.get(&key).expect("GET");
    assert_eq!(got, "value");
    let missing: Option<String> = con.get(format!("rs:{tag}:missing")).expect("GET nil");
    assert_eq!(missing, None);
    let hash = format!("rs:{tag}:h");
    let _: () = con
        .hset_multiple(&hash, &[("f1", "a"), ("f2", "b")])
        .expect("HSET");
    let map: std::collections::HashMap<String, String> = con.hgetall(&hash).expect("HGETALL");
    assert_eq!(map.len(), 2);
    assert_eq!(map["f2"], "b");
    let (a, b, n): (String, Option<String>, i64) = redis::pipe()
        .set(&key, "p1")
        .ignore()
        .get(&key)
        .get(format!("rs:{tag}:nope"))
        .incr(format!("rs:{tag}:n"), 5)
        .query(con)
        .expect("pipeline");
    assert_eq!((a.as_str(), b, n), ("p1", None, 5));
    let (x, y): (i64, i64) = redis::pipe()
        .atomic()
        .incr(format!("rs:{tag}:n"), 1)
        .incr(format!("rs:{tag}:n"), 1)
        .query(con)
        .expect("MULTI pipeline");
    assert_eq!((x, y), (6, 7));
}

#[test]
fn redis_rs_resp2() {
    let (_redis, kg) = setup();
    let mut con = redis_rs(&kg.url());
    exercise(&mut con, "resp2");
    let raw: Value = redis::cmd("HGETALL")
        .arg("rs:resp2:h")
        .query(&mut con)
        .expect("raw");
    assert!(matches!(raw, Value::Array(_)), "RESP2 HGETALL: {raw:?}");
}

#[test]
fn redis_rs_resp3() {
    let (_redis, kg) = setup();
    let mut con = redis_rs(&format!("{}?protocol=resp3", kg.url()));
    exercise(&mut con, "resp3");
    let raw: Value = redis::cmd("HGETALL")
        .arg("rs:resp3:h")
        .query(&mut con)
        .expect("raw");
    assert!(
        matches!(raw, Value::Map(_)),
        "RESP3 HGETALL is not a map: {raw:?}"
    );
    let nil: Value = redis::cmd("GET")
        .arg("rs:resp3:none")
        .query(&mut con)
        .expect("nil");
    assert_eq!(nil, Value::Nil);
}

#[test]
fn redis_rs_async_resp3_many_tasks() {
    let (_redis, kg) = setup();
    let url = format!("{}?protocol=resp3", kg.url());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let client = redis::Client::open(url).expect("client");
        let con = client
            .get_multiplexed_async_connection()
            .await
            .expect("async connect");
        let mut tasks = Vec::new();
        for t in 0..8 {
            let mut con = con.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..100 {
                    let key = format!("rs:async:{t}:{i}");
                    let _: () = redis::AsyncCommands::set(&mut con, &key, i)
                        .await
                        .expect("set");
                    let v: i64 = redis::AsyncCommands::get(&mut con, &key)
                        .await
                        .expect("get");
                    assert_eq!(v, i);
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
    });
}

#[test]
fn raw_hello_3_reply_is_a_resp3_map() {
    let (_redis, kg) = setup();
    let mut c = RawConn::connect(kg.port());
    let reply = c.cmd_str(&["HELLO", "3"]);
    assert!(
        reply.starts_with("%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n"),
        "{reply:?}"
    );
    assert!(reply.contains("$5\r\nproto\r\n:3\r\n"), "{reply:?}");
    assert!(reply.ends_with("$7\r\nmodules\r\n*0\r\n"), "{reply:?}");
    // Replies now come in RESP3 shapes from the backend.
    assert_eq!(c.cmd_str(&["HSET", "h3", "f", "v"]), ":1\r\n");
    assert_eq!(
        c.cmd_str(&["HGETALL", "h3"]),
        "%1\r\n$1\r\nf\r\n$1\r\nv\r\n"
    );
    assert_eq!(c.cmd_str(&["GET", "nothing"]), "_\r\n");
    // And back to RESP2.
    let hello2 = c.cmd_str(&["HELLO", "2"]);
    assert!(hello2.starts_with("*14\r\n"), "{hello2:?}");
    assert_eq!(c.cmd_str(&["GET", "nothing"]), "$-1\r\n");
}
