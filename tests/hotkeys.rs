//! Hot keys (issue 17): `KEYGATE HOTKEYS` and the admin listener's
//! `/hotkeys` rank a service's reads by count and by bytes, show keys as its
//! clients name them, and show a service only its own keys (admin services
//! and the admin listener see every service's).
//!
//! One read in eight on a connection is sampled, the first included, and
//! counts eight: each key here is read in runs of eight on one connection,
//! so the figures are exact.
mod common;

use common::*;

const SERVICES: &str = r#"
[[service]]
name = "a"
prefix = "a:"
password = "apw"
near_cache = { enabled = true }

[[service]]
name = "b"
prefix = "b:"
password = "bpw"
near_cache = { enabled = true }

[[service]]
name = "root"
prefix = ""
isolation = false
password = "rootpw"
admin = true
near_cache = { enabled = true }
"#;

/// `runs` runs of eight identical reads, pipelined.
fn read_runs(conn: &mut RawConn, args: &[&str], runs: usize) {
    for _ in 0..runs * 8 {
        conn.send_cmd(args);
    }
    for _ in 0..runs * 8 {
        let reply = conn.read_value();
        assert!(!matches!(reply, Reply::Error(_)), "{args:?}: {reply:?}");
    }
}

fn row(key: &str, reads: i64, bytes: i64) -> Reply {
    Reply::Array(vec![
        Reply::Bulk(key.into()),
        Reply::Int(reads),
        Reply::Int(bytes),
    ])
}

fn body_json(response: &str) -> serde_json::Value {
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"))
}

fn keys_of(listing: &serde_json::Value) -> Vec<String> {
    listing
        .as_array()
        .unwrap_or_else(|| panic!("not a listing: {listing}"))
        .iter()
        .map(|e| e["key"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn hot_keys_rank_a_services_reads_and_bytes_and_stay_its_own() {
    let redis = RedisServer::start();
    let kg = Keygate::start_with(&standalone_config(&redis.addr(), SERVICES));
    kg.wait_ready();

    let mut a = RawConn::login(kg.port(), "a", "apw");
    let hot = "h".repeat(100);
    let big = "B".repeat(5000);
    for (k, v) in [("hot", hot.as_str()), ("warm", "0123456789"), ("big", &big)] {
        assert_eq!(a.call(&["SET", k, v]), Reply::Status("OK".into()));
    }
    assert_eq!(a.call(&["HSET", "h", "f", "12345"]), Reply::Int(1));
    read_runs(&mut a, &["GET", "hot"], 10);
    read_runs(&mut a, &["GET", "warm"], 5);
    read_runs(&mut a, &["GET", "big"], 2);
    read_runs(&mut a, &["HGET", "h", "f"], 1);
    read_runs(&mut a, &["MGET", "warm", "missing"], 1);

    // By reads, keys without the service's prefix.
    let top = a.call(&["KEYGATE", "HOTKEYS"]).items();
    assert_eq!(
        top[..3],
        [
            row("hot", 80, 8000),
            row("warm", 48, 480),
            row("big", 16, 80_000)
        ]
    );
    assert!(top.contains(&row("h", 8, 40)), "{top:?}");
    assert!(top.contains(&row("missing", 8, 0)), "{top:?}");
    assert_eq!(
        a.call(&["keygate", "hotkeys", "a", "count", "2"]).items(),
        [row("hot", 80, 8000), row("warm", 48, 480)]
    );
    // By bytes.
    assert_eq!(
        a.call(&["KEYGATE", "HOTKEYS", "COUNT", "1", "BY", "bytes"])
            .items(),
        [row("big", 16, 80_000)]
    );
    assert!(matches!(
        a.call(&["KEYGATE", "HOTKEYS", "COUNT", "0"]),
        Reply::Error(_)
    ));
    assert!(matches!(
        a.call(&["KEYGATE", "HOTKEYS", "BY"]),
        Reply::Error(_)
    ));

    // Service b sees its own keys only, and may not ask for a's.
    let mut b = RawConn::login(kg.port(), "b", "bpw");
    assert_eq!(b.call(&["KEYGATE", "HOTKEYS"]), Reply::Array(vec![]));
    assert!(b.call(&["KEYGATE", "HOTKEYS", "a"]).is_noperm());
    read_runs(&mut b, &["GET", "mine"], 1);
    assert_eq!(b.call(&["KEYGATE", "HOTKEYS"]).items(), [row("mine", 8, 0)]);

    // An admin service may name any service.
    let mut root = RawConn::login(kg.port(), "root", "rootpw");
    assert_eq!(
        root.call(&["KEYGATE", "HOTKEYS", "a", "COUNT", "1"])
            .items(),
        [row("hot", 80, 8000)]
    );
    assert!(matches!(
        root.call(&["KEYGATE", "HOTKEYS", "nosuch"]),
        Reply::Error(_)
    ));

    // The admin listener sees every service, each with its own keys.
    let all = body_json(&http_get(kg.admin_port(), "/hotkeys"));
    let services = &all["services"];
    assert_eq!(
        keys_of(&services["a"]["by_reads"])[..3],
        ["hot", "warm", "big"]
    );
    assert_eq!(keys_of(&services["a"]["by_bytes"])[0], "big");
    assert_eq!(keys_of(&services["b"]["by_reads"]), ["mine"]);
    assert_eq!(keys_of(&services["root"]["by_reads"]), Vec::<String>::new());
    let one = body_json(&http_get(kg.admin_port(), "/hotkeys?service=a&count=1"));
    assert_eq!(one["services"].as_object().map(|m| m.len()), Some(1));
    assert_eq!(one["services"]["a"]["by_reads"][0]["reads"], 80);
    assert_eq!(one["services"]["a"]["by_reads"][0]["bytes"], 8000);
    assert_eq!(keys_of(&one["services"]["a"]["by_reads"]), ["hot"]);
    assert!(http_get(kg.admin_port(), "/hotkeys?service=nosuch").starts_with("HTTP/1.1 404"));
    assert!(http_get(kg.admin_port(), "/hotkeys?count=x").starts_with("HTTP/1.1 400"));
}
