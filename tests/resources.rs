//! What one client can take from the others through replies and requests
//! that are legal but extreme (issue 13, holes 4, 12 and 13): a script reply
//! nested deeper than any ordinary reply, a key that the namespace prefix
//! pushes past the backend's bulk limit, writes whose produced value is
//! larger than any of their arguments. Each runs against a real Redis, with
//! one shared backend connection, and checks that the other clients on that
//! connection never notice.
mod common;
use common::*;

/// A config with one multiplexed connection (so every client shares it)
/// and the services `extra` names.
fn one_connection(redis: &RedisServer, extra: &str) -> String {
    standalone_config(&redis.addr(), extra).replace(
        "command_timeout = \"5s\"",
        "command_timeout = \"5s\"\nconnections = 1",
    )
}

/// A trusted scripting service and an ordinary one, both isolated.
const SCRIPTS_AND_OTHER: &str = r#"
[[service]]
name = "scripts"
password = "s"
prefix = "s:"
allow_scripts = true

[[service]]
name = "other"
password = "o"
prefix = "o:"
"#;

/// A script that returns a table nested `ARGV[1]` levels around `1`.
const NEST: &str = "local t = {1} for i = 1, tonumber(ARGV[1]) do t = {t} end return t";

/// Hole 13: a script reply nested far deeper than 64 levels comes through
/// byte for byte, and the shared connection it came on keeps serving
/// another service's client (no reconnect, no error).
#[test]
fn deep_script_reply_passes_whole_and_the_shared_connection_survives() {
    let redis = RedisServer::start();
    let kg = Keygate::start_with(&one_connection(&redis, SCRIPTS_AND_OTHER));
    kg.wait_ready();
    let mut direct = RawConn::connect(redis.port());
    let mut scripts = RawConn::connect(kg.port());
    assert_eq!(scripts.cmd_str(&["AUTH", "scripts", "s"]), "+OK\r\n");
    let mut other = RawConn::connect(kg.port());
    assert_eq!(other.cmd_str(&["AUTH", "other", "o"]), "+OK\r\n");
    assert_eq!(other.cmd_str(&["SET", "canary", "alive"]), "+OK\r\n");
    let shared = connection_that_ran(&redis, "set");
    for depth in ["100", "1000", "5000"] {
        let want = read_deep(&mut direct, depth);
        assert!(
            want.len() > 4 * 100,
            "{depth}: Redis made {} bytes",
            want.len()
        );
        // The other client's request rides the same connection right behind.
        scripts.send(&resp_command(&["EVAL", NEST, "0", depth]));
        other.send(&resp_command(&["GET", "canary"]));
        let got = read_deep(&mut scripts, "");
        assert_eq!(got.len(), want.len(), "depth {depth}");
        assert!(got == want, "depth {depth}: the reply differs from Redis's");
        assert_eq!(other.read_reply(), b"$5\r\nalive\r\n");
        // Inside a transaction too (the EXEC reply is taken apart element by element).
        assert_eq!(scripts.cmd_str(&["MULTI"]), "+OK\r\n");
        assert_eq!(scripts.cmd_str(&["EVAL", NEST, "0", depth]), "+QUEUED\r\n");
        assert_eq!(scripts.cmd_str(&["SET", "k", "v"]), "+QUEUED\r\n");
        scripts.send(&resp_command(&["EXEC"]));
        let exec = read_deep(&mut scripts, "");
        let mut want_exec = b"*2\r\n".to_vec();
        want_exec.extend_from_slice(&want);
        want_exec.extend_from_slice(b"+OK\r\n");
        assert!(exec == want_exec, "depth {depth}: EXEC reply differs");
    }
    assert_eq!(other.cmd_str(&["GET", "canary"]), "$5\r\nalive\r\n");
    // The shared connection was never dropped and dialed again.
    assert_eq!(connection_that_ran(&redis, "get"), shared);
}

/// One reply of any depth, read whole off `conn` (after sending EVAL of
/// [`NEST`] with `depth` levels when `depth` is not empty). RawConn's own
/// scanner caps nesting, so this one reads without a cap.
fn read_deep(conn: &mut RawConn, depth: &str) -> Vec<u8> {
    use std::io::Read;
    if !depth.is_empty() {
        conn.send(&resp_command(&["EVAL", NEST, "0", depth]));
    }
    let mut scanner = keygate::protocol::reply::ReplyScanner::new(usize::MAX);
    let mut buf = Vec::new();
    let stream = conn.stream();
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .expect("timeout");
    loop {
        if let Some(found) = scanner.next_frame(&buf).expect("a valid reply") {
            assert_eq!(found.end, buf.len(), "one reply, nothing after it");
            return buf;
        }
        let mut chunk = [0u8; 65536];
        let n = stream.read(&mut chunk).expect("a reply within the timeout");
        assert!(n > 0, "closed before the reply was whole");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The id of the one backend connection whose last command was `cmd`.
fn connection_that_ran(redis: &RedisServer, cmd: &str) -> String {
    let list = redis.cli(&["CLIENT", "LIST"]);
    let ids: Vec<&str> = list
        .lines()
        .filter(|l| l.contains(&format!(" cmd={cmd} ")))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert_eq!(ids.len(), 1, "{list}");
    ids[0].to_string()
}

/// Hole 12: a key (or channel, or pattern) at exactly `proto_max_bulk_len`
/// passes the request scanner, and the namespace prefix makes it longer
/// than Redis accepts. keygate refuses that one request with a clear error;
/// the shared connection it would have broken keeps serving the other
/// services, and an argument that still fits with its prefix goes through.
#[test]
fn a_key_the_prefix_pushes_past_the_bulk_limit_is_refused_alone() {
    const LIMIT: usize = 1024 * 1024; // the least Redis accepts
    let redis = RedisServer::start_with(&["--proto-max-bulk-len", "1mb"]);
    let config = one_connection(&redis, SCRIPTS_AND_OTHER).replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:0\"\nproto_max_bulk_len = {LIMIT}"),
    );
    let kg = Keygate::start_with(&config);
    kg.wait_ready();
    let mut other = RawConn::connect(kg.port());
    assert_eq!(other.cmd_str(&["AUTH", "other", "o"]), "+OK\r\n");
    assert_eq!(other.cmd_str(&["SET", "canary", "alive"]), "+OK\r\n");
    let shared = connection_that_ran(&redis, "set");
    let mut client = RawConn::connect(kg.port());
    assert_eq!(client.cmd_str(&["AUTH", "other", "o"]), "+OK\r\n");
    let at_limit = vec![b'k'; LIMIT];
    let refusals: [Vec<&[u8]>; 5] = [
        vec![b"SET", &at_limit, b"v"],
        vec![b"GET", &at_limit],
        vec![b"MSET", b"a", b"1", &at_limit, b"2"],
        vec![b"KEYS", &at_limit],
        vec![b"PUBLISH", &at_limit, b"m"],
    ];
    for request in &refusals {
        // Pipelined with another client's request on the same connection.
        client.send(&resp_command(request));
        other.send(&resp_command(&["GET", "canary"]));
        let refused = String::from_utf8_lossy(&client.read_reply()).into_owned();
        assert!(
            refused.starts_with("-ERR keygate: an argument of 1048578 bytes")
                && refused.contains("proto_max_bulk_len (1048576)"),
            "{}: {refused}",
            String::from_utf8_lossy(request[0])
        );
        assert_eq!(other.read_reply(), b"$5\r\nalive\r\n");
    }
    // With its prefix ("o:") this key is exactly at the limit: it passes.
    let fits = vec![b'k'; LIMIT - 2];
    assert_eq!(client.cmd_str(&[&b"SET"[..], &fits, b"v"]), "+OK\r\n");
    assert_eq!(client.cmd_str(&[&b"STRLEN"[..], &fits]), ":1\r\n");
    // The shared connection was never dropped.
    assert_eq!(other.cmd_str(&["GET", "canary"]), "$5\r\nalive\r\n");
    assert_eq!(connection_that_ran(&redis, "get"), shared);
}

/// Hole 4: `max_value_bytes` bounds a string by the size a write makes it.
/// SETRANGE, SETBIT and BITFIELD are judged by the offset they write at;
/// APPEND by the length already stored plus its argument, checked and done
/// in one atomic step on the backend. Writes that stay within the limit
/// still go through, with Redis's own replies and errors.
#[test]
fn writes_are_held_to_max_value_bytes_by_the_size_they_produce() {
    const LIMITED: &str = r#"
[[service]]
name = "small"
password = "p"
prefix = "m:"
max_value_bytes = 1024
"#;
    let redis = RedisServer::start();
    let kg = Keygate::start_with(&one_connection(&redis, LIMITED));
    kg.wait_ready();
    let mut c = RawConn::connect(kg.port());
    assert_eq!(c.cmd_str(&["AUTH", "small", "p"]), "+OK\r\n");
    let refused = |reply: String| {
        assert!(
            reply.starts_with("-ERR keygate: the value would grow")
                && reply.contains("max_value_bytes of 1024"),
            "{reply}"
        );
    };
    refused(c.cmd_str(&["SETRANGE", "r", "1020", "abcde"]));
    refused(c.cmd_str(&["SETRANGE", "r", "99999999999", "a"]));
    assert_eq!(c.cmd_str(&["SETRANGE", "r", "1019", "abcde"]), ":1024\r\n");
    assert_eq!(c.cmd_str(&["SETRANGE", "r", "5000", ""]), ":1024\r\n");
    refused(c.cmd_str(&["SETBIT", "b", "8192", "1"]));
    assert_eq!(c.cmd_str(&["SETBIT", "b", "8191", "1"]), ":0\r\n");
    refused(c.cmd_str(&["BITFIELD", "f", "SET", "u8", "8185", "1"]));
    refused(c.cmd_str(&[
        "BITFIELD", "f", "GET", "u8", "0", "INCRBY", "i16", "#512", "1",
    ]));
    refused(c.cmd_str(&[
        "BITFIELD", "f", "OVERFLOW", "SAT", "set\0", "u8", "#1024", "1",
    ]));
    assert_eq!(
        c.cmd_str(&["BITFIELD", "f", "SET", "u8", "#1023", "7", "GET", "u8", "99999"]),
        "*2\r\n:0\r\n:0\r\n"
    );
    assert_eq!(
        c.cmd_str(&["BITFIELD", "f", "SET", "u65", "0", "1"]),
        "-ERR Invalid bitfield type. Use something like i16 u8. Note that u64 is not supported but i64 is.\r\n"
    );
    // APPEND: the stored length counts.
    let base = vec![b'a'; 1000];
    assert_eq!(c.cmd_str(&[&b"SET"[..], b"s", &base]), "+OK\r\n");
    assert_eq!(
        c.cmd_str(&["APPEND", "s", "bbbbbbbbbbbbbbbbbbbbbbbb"]),
        ":1024\r\n"
    );
    refused(c.cmd_str(&["APPEND", "s", "c"]));
    assert_eq!(c.cmd_str(&["APPEND", "new", "xyz"]), ":3\r\n");
    assert_eq!(c.cmd_str(&["RPUSH", "l", "x"]), ":1\r\n");
    assert_eq!(
        c.cmd_str(&["APPEND", "l", "x"]),
        "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
    );
    // Inside a transaction as well.
    assert_eq!(c.cmd_str(&["MULTI"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["APPEND", "s", "c"]), "+QUEUED\r\n");
    assert_eq!(c.cmd_str(&["APPEND", "new", "d"]), "+QUEUED\r\n");
    let exec = c.cmd_str(&["EXEC"]);
    assert!(
        exec.starts_with("*2\r\n-ERR keygate: the value would grow"),
        "{exec}"
    );
    assert!(exec.ends_with(":4\r\n"), "{exec}");
    // On the backend: nothing past the limit was ever written.
    for key in ["m:r", "m:b", "m:f", "m:s"] {
        assert_eq!(redis.cli(&["STRLEN", key]).trim(), "1024", "{key}");
    }
    assert_eq!(redis.cli(&["GET", "m:new"]).trim(), "xyzd");
}
