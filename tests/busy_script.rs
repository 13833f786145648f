//! SCRIPT KILL and FUNCTION KILL reach a busy script: keygate sends them on
//! a connection of their own, since on the shared connection the script
//! runs on they would wait behind it (issue 14: most of Redis's own
//! scripting, functions and multi units failed on this). Compared with
//! redis-server answering directly.
mod common;

use std::time::Duration;

use common::*;

const SERVICES: &str = r#"
[[service]]
name = "app"
prefix = "app:"
password = "apppw"
allow_scripts = true

[[service]]
name = "ops"
prefix = "ops:"
password = "opspw"
admin = true
allow_scripts = true
"#;

/// A script that never ends by itself.
const SPIN: &str = "while true do end";

fn setup() -> (RedisServer, Keygate) {
    // Redis serves other clients (and takes a KILL) once a script has run
    // this long.
    let redis = RedisServer::start_with(&["--busy-reply-threshold", "100"]);
    // One shared connection: every client's script and KILL meet on it.
    let config = standalone_config(&redis.addr(), SERVICES)
        .replace("[backend]\n", "[backend]\nconnections = 1\n");
    assert!(config.contains("connections = 1"));
    let kg = Keygate::start_with(&config);
    kg.wait_ready();
    (redis, kg)
}

fn login(kg: &Keygate, service: &str) -> RawConn {
    RawConn::login(kg.port(), service, &format!("{service}pw"))
}

/// Waits until Redis answers other clients with `-BUSY`.
fn wait_busy(redis: &RedisServer) {
    let mut direct = RawConn::connect(redis.port());
    assert!(
        wait_until(Duration::from_secs(10), || direct
            .cmd_str(&["PING"])
            .starts_with("-BUSY")),
        "the script never got busy"
    );
}

/// Starts `spin` on `spinner` (nothing when empty: it runs already), waits
/// until Redis is busy, sends `kill` from `killer`, which must answer +OK,
/// and returns the error the spinner then gets.
fn kill_while_busy(
    redis: &RedisServer,
    spinner: &mut RawConn,
    spin: &[&str],
    killer: &mut RawConn,
    kill: &[&str],
) -> String {
    if !spin.is_empty() {
        spinner.send(&resp_command(spin));
    }
    wait_busy(redis);
    killer.send(&resp_command(kill));
    assert_eq!(
        reply_str(killer.try_read_reply(Duration::from_secs(3))),
        "+OK\r\n"
    );
    let killed = reply_str(spinner.try_read_reply(Duration::from_secs(3)));
    assert!(killed.starts_with('-'), "{killed}");
    killed
}

fn reply_str(reply: Option<Vec<u8>>) -> String {
    String::from_utf8_lossy(&reply.expect("a reply in time")).into_owned()
}

#[test]
fn script_kill_stops_another_clients_busy_script_on_the_shared_connection() {
    let (redis, kg) = setup();
    let mut direct = RawConn::connect(redis.port());
    let notbusy = direct.cmd_str(&["SCRIPT", "KILL"]);
    assert!(notbusy.starts_with("-NOTBUSY"), "{notbusy}");
    let mut killer = login(&kg, "app");
    assert_eq!(killer.cmd_str(&["SCRIPT", "KILL"]), notbusy);

    let mut spinner = login(&kg, "app");
    let killed = kill_while_busy(
        &redis,
        &mut spinner,
        &["EVAL", SPIN, "0"],
        &mut killer,
        &["SCRIPT", "KILL"],
    );
    assert!(killed.contains("Script killed"), "{killed}");
    // The shared connection serves again, for both.
    assert_eq!(spinner.cmd_str(&["SET", "k", "v"]), "+OK\r\n");
    assert_eq!(killer.cmd_str(&["GET", "k"]), "$1\r\nv\r\n");
}

#[test]
fn function_kill_stops_a_busy_function() {
    let (redis, kg) = setup();
    let mut ops = login(&kg, "ops");
    let library =
        "#!lua name=spinlib\nredis.register_function('spin', function() while true do end end)";
    assert_eq!(
        ops.cmd_str(&["FUNCTION", "LOAD", library]),
        "$7\r\nspinlib\r\n"
    );
    let mut direct = RawConn::connect(redis.port());
    let notbusy = direct.cmd_str(&["FUNCTION", "KILL"]);
    assert!(notbusy.starts_with("-NOTBUSY"), "{notbusy}");
    assert_eq!(ops.cmd_str(&["FUNCTION", "KILL"]), notbusy);

    let mut spinner = login(&kg, "app");
    spinner.send(&resp_command(&["FCALL", "spin", "0"]));
    wait_busy(&redis);
    // FUNCTION STATS, which Redis also answers while busy, names it.
    ops.send(&resp_command(&["FUNCTION", "STATS"]));
    let stats = reply_str(ops.try_read_reply(Duration::from_secs(3)));
    assert!(
        stats.starts_with("*4\r\n$14\r\nrunning_script\r\n*6\r\n") && stats.contains("spin"),
        "{stats}"
    );
    let killed = kill_while_busy(&redis, &mut spinner, &[], &mut ops, &["FUNCTION", "KILL"]);
    assert!(killed.contains("killed"), "{killed}");
    assert_eq!(spinner.cmd_str(&["PING"]), "+PONG\r\n");
}

#[test]
fn a_kill_after_the_clients_own_script_waits_for_it_as_on_redis() {
    let (redis, kg) = setup();
    let script = "redis.call('set', KEYS[1], 'x') return 1";
    let pipeline = [
        resp_command(&["EVAL", script, "1", "k"]),
        resp_command(&["SCRIPT", "KILL"]),
    ]
    .concat();
    let mut direct = RawConn::connect(redis.port());
    direct.send(&pipeline);
    let expected = [direct.read_reply(), direct.read_reply()];
    let mut app = login(&kg, "app");
    app.send(&pipeline);
    assert_eq!([app.read_reply(), app.read_reply()], expected);
    assert_eq!(direct.cmd_str(&["GET", "app:k"]), "$1\r\nx\r\n");
}

/// A PING from another client while a script holds Redis gets Redis's own
/// answer, `-BUSY` (keygate answers PING itself otherwise), as the same
/// PING sent directly does; once the script is killed, PONG again.
#[test]
fn ping_while_a_script_is_busy_gets_redis_busy_error() {
    let (redis, kg) = setup();
    let mut spinner = login(&kg, "app");
    let mut other = login(&kg, "app");
    assert_eq!(other.cmd_str(&["PING"]), "+PONG\r\n");
    spinner.send(&resp_command(&["EVAL", SPIN, "0"]));
    wait_busy(&redis);
    let mut direct = RawConn::connect(redis.port());
    let expected = direct.cmd_str(&["PING"]);
    assert!(expected.starts_with("-BUSY"), "{expected}");
    // keygate learns the script is busy from the master's silence: wait for
    // that state, then the reply must be Redis's, byte for byte.
    assert!(
        wait_until(Duration::from_secs(10), || other.cmd_str(&["PING"])
            == expected),
        "PING through keygate never got Redis's -BUSY"
    );
    assert_eq!(other.cmd_str(&["PING", "hello"]), expected);
    let mut killer = login(&kg, "app");
    let killed = kill_while_busy(&redis, &mut spinner, &[], &mut killer, &["SCRIPT", "KILL"]);
    assert!(killed.contains("Script killed"), "{killed}");
    assert_eq!(other.cmd_str(&["PING"]), "+PONG\r\n");
    assert_eq!(other.cmd_str(&["PING", "hello"]), "$5\r\nhello\r\n");
}
