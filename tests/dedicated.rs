//! Dedicated connections (MULTI/WATCH, blocking, pub/sub) are returned clean
//! or closed, and running out of them is a prompt error, not a hang.
mod common;
use common::*;

use std::time::{Duration, Instant};

/// keygate allowing only `max` dedicated connections.
fn setup(max: u32) -> (RedisServer, Keygate) {
    let redis = RedisServer::start();
    let config = standalone_config(&redis.addr(), DEFAULT_SERVICE).replace(
        "command_timeout = \"5s\"",
        &format!("command_timeout = \"5s\"\ndedicated_max = {max}"),
    );
    let kg = Keygate::start_with(&config);
    wait_serving(kg.port());
    (redis, kg)
}

#[test]
fn watch_left_by_a_disconnected_client_does_not_reach_the_next() {
    let (_redis, kg) = setup(1);
    {
        let mut a = RawConn::connect(kg.port());
        assert_eq!(a.cmd_str(&["WATCH", "dc:k"]), "+OK\r\n");
    }
    // The disconnected client's dedicated connection is given back (clean)
    // or closed.
    let held = || {
        metric_sample(
            &scrape_metrics(kg.admin_port()),
            "keygate_dedicated_connections",
            &[("service", "default")],
        )
    };
    assert!(
        wait_until(Duration::from_secs(5), || held() == Some(0.0)),
        "the dedicated connection is still held: {:?}",
        held()
    );
    let mut writer = RawConn::connect(kg.port());
    assert_eq!(writer.cmd_str(&["SET", "dc:k", "changed"]), "+OK\r\n");
    let mut b = RawConn::connect(kg.port());
    assert_eq!(b.cmd_str(&["MULTI"]), "+OK\r\n");
    assert_eq!(b.cmd_str(&["SET", "dc:j", "1"]), "+QUEUED\r\n");
    assert_eq!(b.cmd_str(&["EXEC"]), "*1\r\n+OK\r\n");
}

#[test]
fn one_dedicated_connection_serves_clients_in_turn() {
    let (_redis, kg) = setup(1);
    let mut a = RawConn::connect(kg.port());
    let mut b = RawConn::connect(kg.port());
    for round in 0..3 {
        assert_eq!(a.cmd_str(&["MULTI"]), "+OK\r\n");
        assert_eq!(a.cmd_str(&["INCR", "dc:n"]), "+QUEUED\r\n");
        assert_eq!(
            a.cmd_str(&["EXEC"]),
            format!("*1\r\n:{}\r\n", 2 * round + 1)
        );
        assert_eq!(b.cmd_str(&["BLPOP", "dc:empty", "0.1"]), "*-1\r\n");
        assert_eq!(b.cmd_str(&["WATCH", "dc:n"]), "+OK\r\n");
        assert_eq!(b.cmd_str(&["UNWATCH"]), "+OK\r\n");
        assert_eq!(b.cmd_str(&["MULTI"]), "+OK\r\n");
        assert_eq!(b.cmd_str(&["INCR", "dc:n"]), "+QUEUED\r\n");
        assert_eq!(
            b.cmd_str(&["EXEC"]),
            format!("*1\r\n:{}\r\n", 2 * round + 2)
        );
    }
}

#[test]
fn exhausted_pool_is_a_prompt_error_and_others_keep_working() {
    // Two services each allowed the whole pool, so it can run out.
    let redis = RedisServer::start();
    let services = format!(
        "{DEFAULT_SERVICE}max_dedicated = 2\n\n[[service]]\nname = \"other\"\npassword = \"pw\"\nprefix = \"\"\nisolation = false\nmax_dedicated = 2\n"
    );
    let config = standalone_config(&redis.addr(), &services).replace(
        "command_timeout = \"5s\"",
        "command_timeout = \"5s\"\ndedicated_max = 2",
    );
    let kg = Keygate::start_with(&config);
    wait_serving(kg.port());
    let mut holders: Vec<RawConn> = (0..2)
        .map(|_| {
            let mut c = RawConn::connect(kg.port());
            c.send(&resp_command(&["BLPOP", "dc:wait", "0"]));
            c
        })
        .collect();
    redis.wait_blocked(2);
    let mut third = RawConn::connect(kg.port());
    assert_eq!(third.cmd_str(&["AUTH", "other", "pw"]), "+OK\r\n");
    let started = Instant::now();
    let reply = third.cmd_str(&["BLPOP", "dc:wait", "0"]);
    println!("third BLPOP after {:?}: {reply:?}", started.elapsed());
    assert!(
        reply.starts_with("-ERR keygate: no dedicated backend connection"),
        "{reply}"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(third.cmd_str(&["SET", "dc:x", "1"]), "+OK\r\n");
    // Waking the holders frees their connections for the next one.
    assert_eq!(third.cmd_str(&["RPUSH", "dc:wait", "1", "2"]), ":2\r\n");
    for h in &mut holders {
        assert!(String::from_utf8_lossy(&h.read_reply()).starts_with("*2\r\n"));
    }
    assert_eq!(third.cmd_str(&["BLPOP", "dc:wait", "0.1"]), "*-1\r\n");
}

#[test]
fn blocking_command_inside_multi_does_not_block() {
    let (redis, kg) = setup(4);
    let script: &[&[&str]] = &[
        &["MULTI"],
        &["BLPOP", "dc:nothing", "0"],
        &["SET", "dc:m", "1"],
        &["EXEC"],
    ];
    for port in [kg.port(), redis.port()] {
        let mut c = RawConn::connect(port);
        let replies: Vec<String> = script.iter().map(|cmd| c.cmd_str(cmd)).collect();
        assert_eq!(
            replies[3], "*2\r\n*-1\r\n+OK\r\n",
            "port {port}: {replies:?}"
        );
    }
}

/// Two services sharing `dedicated_max = 6`: `hog` gets the default fair
/// share (6 / 2 = 3), `calm` sets `max_dedicated = 3` itself.
fn two_services(extra_backend: &str) -> (RedisServer, Keygate) {
    let redis = RedisServer::start();
    let services = r#"
[[service]]
name = "hog"
password = "hog-pw"
prefix = "hog:"

[[service]]
name = "calm"
password = "calm-pw"
prefix = "calm:"
max_dedicated = 3
"#;
    let config = standalone_config(&redis.addr(), services).replace(
        "command_timeout = \"5s\"",
        &format!("command_timeout = \"5s\"\ndedicated_max = 6\n{extra_backend}"),
    );
    let kg = Keygate::start_with(&config);
    (redis, kg)
}

fn login(kg: &Keygate, service: &str) -> RawConn {
    RawConn::login(kg.port(), service, &format!("{service}-pw"))
}

/// The value of the `/metrics` sample `line_start` (name and labels).
fn metric(kg: &Keygate, line_start: &str) -> Option<f64> {
    let text = http_get(kg.admin_port(), "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
}

#[test]
fn one_service_cannot_take_the_dedicated_connections_of_the_others() {
    let (_redis, kg) = two_services("");
    kg.wait_ready();
    // hog holds its share in open transactions, then asks for more.
    let mut held: Vec<RawConn> = (0..3)
        .map(|_| {
            let mut c = login(&kg, "hog");
            assert_eq!(c.cmd_str(&["MULTI"]), "+OK\r\n");
            c
        })
        .collect();
    let mut more = login(&kg, "hog");
    for cmd in [&["MULTI"][..], &["BLPOP", "q", "0"], &["SUBSCRIBE", "ch"]] {
        assert_eq!(
            more.cmd_str(cmd),
            "-ERR keygate: service 'hog' holds its max_dedicated of 3 dedicated connections\r\n",
            "{cmd:?}"
        );
    }
    assert_eq!(more.cmd_str(&["SET", "k", "v"]), "+OK\r\n");
    // calm's transactions, blocking commands and pub/sub still work.
    let mut tx = login(&kg, "calm");
    assert_eq!(tx.cmd_str(&["MULTI"]), "+OK\r\n");
    assert_eq!(tx.cmd_str(&["INCR", "n"]), "+QUEUED\r\n");
    assert_eq!(tx.cmd_str(&["EXEC"]), "*1\r\n:1\r\n");
    let mut blocked = login(&kg, "calm");
    blocked.send(&resp_command(&["BLPOP", "q", "0"]));
    let mut sub = login(&kg, "calm");
    assert_eq!(
        sub.cmd_str(&["SUBSCRIBE", "ch"]),
        "*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
    );
    assert_eq!(tx.cmd_str(&["RPUSH", "q", "x"]), ":1\r\n");
    assert_eq!(blocked.read_reply(), b"*2\r\n$1\r\nq\r\n$1\r\nx\r\n");
    assert_eq!(tx.cmd_str(&["PUBLISH", "ch", "hi"]), ":1\r\n");
    assert_eq!(
        sub.read_reply(),
        b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"
    );
    let refused = r#"keygate_dedicated_refusals_total{service="hog"}"#;
    assert!(wait_until(Duration::from_secs(5), || metric(&kg, refused) == Some(3.0)));
    let hog_held = r#"keygate_dedicated_connections{service="hog"}"#;
    assert_eq!(metric(&kg, hog_held), Some(3.0));
    // A transaction that ends gives its connection back to the service.
    assert_eq!(held[0].cmd_str(&["DISCARD"]), "+OK\r\n");
    assert!(wait_until(Duration::from_secs(5), || metric(&kg, hog_held)
        == Some(2.0)));
    assert_eq!(more.cmd_str(&["MULTI"]), "+OK\r\n");
    assert_eq!(more.cmd_str(&["EXEC"]), "*0\r\n");
    drop(held);
}

/// Clients of the backend (CLIENT LIST lines) whose flags include `flag`.
fn backend_clients_with_flag(redis: &RedisServer, flag: char) -> usize {
    redis
        .cli(&["CLIENT", "LIST"])
        .lines()
        .filter(|l| {
            l.split(' ')
                .find_map(|f| f.strip_prefix("flags="))
                .is_some_and(|flags| flags.contains(flag))
        })
        .count()
}

#[test]
fn an_idle_transaction_is_closed_and_a_subscriber_is_not() {
    let (redis, kg) = two_services("dedicated_idle_timeout = \"1s\"");
    kg.wait_ready();
    // Started first, so they have been idle at least as long as the
    // transaction once it is closed.
    let mut sub = login(&kg, "calm");
    sub.cmd(&["SUBSCRIBE", "ch"]);
    let mut blocked = login(&kg, "calm");
    blocked.send(&resp_command(&["BLPOP", "q", "0"]));
    let mut idle_tx = login(&kg, "hog");
    assert_eq!(idle_tx.cmd_str(&["MULTI"]), "+OK\r\n");
    assert_eq!(idle_tx.cmd_str(&["SET", "k", "v"]), "+QUEUED\r\n");
    let mut idle_watch = login(&kg, "hog");
    assert_eq!(idle_watch.cmd_str(&["WATCH", "k"]), "+OK\r\n");
    assert!(wait_until(Duration::from_secs(5), || {
        backend_clients_with_flag(&redis, 'x') == 1
    }));
    assert!(idle_tx.closed_within(Duration::from_secs(10)));
    assert!(idle_watch.closed_within(Duration::from_secs(10)));
    let closed = r#"keygate_dedicated_idle_closed_total{service="hog"}"#;
    assert!(wait_until(Duration::from_secs(5), || metric(&kg, closed) == Some(2.0)));
    // Its backend connection is closed, not pooled with the transaction open.
    assert!(wait_until(Duration::from_secs(5), || {
        backend_clients_with_flag(&redis, 'x') == 0
    }));
    assert_eq!(redis.cli(&["EXISTS", "hog:k"]), "0");
    assert_eq!(
        metric(&kg, r#"keygate_dedicated_connections{service="hog"}"#),
        Some(0.0)
    );
    // The subscriber and the blocked client were left alone.
    let mut other = login(&kg, "calm");
    assert_eq!(other.cmd_str(&["PUBLISH", "ch", "still"]), ":1\r\n");
    assert_eq!(
        sub.read_reply(),
        b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nstill\r\n"
    );
    assert_eq!(other.cmd_str(&["RPUSH", "q", "x"]), ":1\r\n");
    assert_eq!(blocked.read_reply(), b"*2\r\n$1\r\nq\r\n$1\r\nx\r\n");
    assert_eq!(
        metric(
            &kg,
            r#"keygate_dedicated_idle_closed_total{service="calm"}"#
        ),
        Some(0.0)
    );
}
