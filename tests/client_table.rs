//! One client id: the id CLIENT ID returns is the one CLIENT LIST, CLIENT
//! INFO, CLIENT KILL and CLIENT UNBLOCK use, answered from keygate's own
//! table of clients. A service that is not admin sees only its own clients.
mod common;
use common::*;
use std::time::Duration;

const SERVICES: &str = r#"
[[service]]
name = "default"
prefix = ""
isolation = false
admin = true

[[service]]
name = "cart"
password = "cart-pw"
prefix = "cart:"

[[service]]
name = "billing"
password = "bill-pw"
prefix = "billing:"
"#;

fn setup() -> (RedisServer, Keygate) {
    let redis = RedisServer::start();
    let kg = Keygate::start_with(&standalone_config(&redis.addr(), SERVICES));
    wait_serving(kg.port());
    (redis, kg)
}

fn id_of(c: &mut RawConn) -> u64 {
    let reply = c.cmd_str(&["CLIENT", "ID"]);
    reply
        .trim_start_matches(':')
        .trim_end()
        .parse()
        .unwrap_or_else(|_| panic!("CLIENT ID: {reply}"))
}

/// The lines of a CLIENT LIST/INFO bulk reply.
fn lines(c: &mut RawConn, args: &[&str]) -> Vec<String> {
    let reply = String::from_utf8_lossy(&c.cmd(args)).into_owned();
    assert!(reply.starts_with('$'), "{args:?}: {reply}");
    let body = reply.split_once("\r\n").map_or("", |(_, b)| b);
    body.trim_end_matches("\r\n")
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

#[test]
fn client_id_is_the_id_in_client_list_and_info() {
    let (_redis, kg) = setup();
    let mut a = RawConn::connect(kg.port());
    let mut b = RawConn::connect(kg.port());
    assert_eq!(a.cmd_str(&["CLIENT", "SETNAME", "alpha"]), "+OK\r\n");
    assert_eq!(a.cmd_str(&["GET", "x"]), "$-1\r\n");
    let (ida, idb) = (id_of(&mut a), id_of(&mut b));
    let info = lines(&mut a, &["CLIENT", "INFO"]);
    assert_eq!(info.len(), 1);
    assert_eq!(field(&info[0], "id"), ida.to_string());
    assert_eq!(field(&info[0], "name"), "alpha");
    assert_eq!(field(&info[0], "cmd"), "client|info");
    assert_eq!(field(&info[0], "user"), "default");
    assert_eq!(field(&info[0], "flags"), "N");
    // Every field of Redis 7.0's line, in its order.
    let names: Vec<&str> = info[0]
        .split(' ')
        .map(|kv| kv.split_once('=').map_or(kv, |(k, _)| k))
        .collect();
    assert_eq!(
        names.join(" "),
        "id addr laddr fd name age idle flags db sub psub ssub multi qbuf qbuf-free argv-mem \
         multi-mem rbs rbp obl oll omem tot-mem events cmd user redir resp"
    );
    let list = lines(&mut b, &["CLIENT", "LIST"]);
    let ids: Vec<String> = list.iter().map(|l| field(l, "id").to_string()).collect();
    assert!(ids.contains(&ida.to_string()), "{list:?}");
    assert!(ids.contains(&idb.to_string()), "{list:?}");
    let only_a = lines(&mut b, &["CLIENT", "LIST", "ID", &ida.to_string()]);
    assert_eq!(only_a.len(), 1);
    assert_eq!(field(&only_a[0], "addr"), field(&info[0], "addr"));
    // HELLO says the same id.
    let hello = String::from_utf8_lossy(&b.cmd(&["HELLO", "2"])).into_owned();
    assert!(
        hello.contains(&format!("$2\r\nid\r\n:{idb}\r\n")),
        "{hello}"
    );
}

#[test]
fn a_service_sees_and_kills_only_its_own_clients() {
    let (_redis, kg) = setup();
    let mut cart = RawConn::connect(kg.port());
    assert_eq!(cart.cmd_str(&["AUTH", "cart", "cart-pw"]), "+OK\r\n");
    let mut cart2 = RawConn::connect(kg.port());
    assert_eq!(cart2.cmd_str(&["AUTH", "cart", "cart-pw"]), "+OK\r\n");
    let mut billing = RawConn::connect(kg.port());
    assert_eq!(billing.cmd_str(&["AUTH", "billing", "bill-pw"]), "+OK\r\n");
    let (cart2_id, billing_id) = (id_of(&mut cart2), id_of(&mut billing));
    let seen = lines(&mut cart, &["CLIENT", "LIST"]);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|l| field(l, "user") == "cart"));
    // Another service's client is not there to kill.
    let kill_billing = ["CLIENT", "KILL", "ID", &billing_id.to_string()];
    assert_eq!(cart.cmd_str(&kill_billing), ":0\r\n");
    assert_eq!(billing.cmd_str(&["PING"]), "+PONG\r\n");
    assert_eq!(
        cart.cmd_str(&["CLIENT", "KILL", "ID", &cart2_id.to_string()]),
        ":1\r\n"
    );
    assert!(cart2.closed_within(Duration::from_secs(5)));
    // The admin service sees everybody and kills by id too.
    let mut admin = RawConn::connect(kg.port());
    let all = lines(&mut admin, &["CLIENT", "LIST"]);
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(admin.cmd_str(&kill_billing), ":1\r\n");
    assert!(billing.closed_within(Duration::from_secs(5)));
    // USER is the service name; SKIPME spares the caller by default.
    assert_eq!(cart.cmd_str(&["CLIENT", "KILL", "USER", "cart"]), ":0\r\n");
    assert_eq!(
        cart.cmd_str(&["CLIENT", "KILL", "USER", "nobody"]),
        "-ERR No such user 'nobody'\r\n"
    );
    assert_eq!(
        cart.cmd_str(&["CLIENT", "KILL", "ID", "0"]),
        "-ERR client-id should be greater than 0\r\n"
    );
    // The old form names an address and may kill the caller itself.
    let info = lines(&mut cart, &["CLIENT", "INFO"]);
    let addr = field(&info[0], "addr").to_string();
    assert_eq!(cart.cmd_str(&["CLIENT", "KILL", &addr]), "+OK\r\n");
    assert!(cart.closed_within(Duration::from_secs(5)));
    assert_eq!(
        admin.cmd_str(&["CLIENT", "KILL", "127.0.0.1:1"]),
        "-ERR No such client\r\n"
    );
}

#[test]
fn client_unblock_unblocks_a_blpop_client() {
    let (_redis, kg) = setup();
    for (mode, expected) in [("TIMEOUT", "*-1\r\n"), ("ERROR", "-UNBLOCKED")] {
        let mut blocked = RawConn::connect(kg.port());
        let id = id_of(&mut blocked).to_string();
        blocked.send(&resp_command(&["BLPOP", "unblock:list", "0"]));
        let mut other = RawConn::connect(kg.port());
        // Wait until keygate has sent the BLPOP (the client shows `b`).
        assert!(wait_until(Duration::from_secs(5), || {
            let list = lines(&mut other, &["CLIENT", "LIST", "ID", &id]);
            list.first()
                .is_some_and(|l| field(l, "flags").contains('b'))
        }));
        assert!(wait_until(Duration::from_secs(5), || {
            other.cmd_str(&["CLIENT", "UNBLOCK", &id, mode]) == ":1\r\n"
        }));
        let reply = String::from_utf8_lossy(&blocked.read_reply()).into_owned();
        assert!(reply.starts_with(expected), "{mode}: {reply}");
        assert_eq!(blocked.cmd_str(&["PING"]), "+PONG\r\n");
        assert_eq!(other.cmd_str(&["CLIENT", "UNBLOCK", &id]), ":0\r\n");
    }
    let mut c = RawConn::connect(kg.port());
    assert_eq!(
        c.cmd_str(&["CLIENT", "UNBLOCK", "1", "LATER"]),
        "-ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR\r\n"
    );
}
