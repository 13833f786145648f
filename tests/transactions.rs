//! MULTI/EXEC, WATCH, DISCARD through keygate, as Redis answers them.
mod common;
use common::*;

fn setup() -> (RedisServer, Keygate) {
    let redis = RedisServer::start();
    let kg = Keygate::start(&redis);
    wait_serving(kg.port());
    (redis, kg)
}

#[test]
fn multi_exec_runs_queued_commands() {
    let (_redis, kg) = setup();
    let mut c = RawConn::connect(kg.port());
    assert_eq!(c.cmd_str(&["MULTI"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["SET", "tx:a", "1"]), "+QUEUED\r\n");
    assert_eq!(c.cmd_str(&["INCR", "tx:a"]), "+QUEUED\r\n");
    assert_eq!(c.cmd_str(&["PING"]), "+QUEUED\r\n");
    assert_eq!(c.cmd_str(&["EXEC"]), "*3\r\n+OK\r\n:2\r\n+PONG\r\n");
    assert_eq!(c.cmd_str(&["GET", "tx:a"]), "$1\r\n2\r\n");
}

#[test]
fn multi_exec_pipelined_in_one_write() {
    let (_redis, kg) = setup();
    let mut c = RawConn::connect(kg.port());
    let mut bytes = resp_command(&["SET", "tx:p", "0"]);
    bytes.extend(resp_command(&["MULTI"]));
    bytes.extend(resp_command(&["INCR", "tx:p"]));
    bytes.extend(resp_command(&["INCR", "tx:p"]));
    bytes.extend(resp_command(&["EXEC"]));
    bytes.extend(resp_command(&["GET", "tx:p"]));
    c.send(&bytes);
    let replies: Vec<String> = (0..6)
        .map(|_| String::from_utf8_lossy(&c.read_reply()).into_owned())
        .collect();
    assert_eq!(
        replies,
        [
            "+OK\r\n",
            "+OK\r\n",
            "+QUEUED\r\n",
            "+QUEUED\r\n",
            "*2\r\n:1\r\n:2\r\n",
            "$1\r\n2\r\n"
        ]
    );
}

#[test]
fn watch_with_conflicting_writer_aborts_exec() {
    let (_redis, kg) = setup();
    let mut c = RawConn::connect(kg.port());
    let mut other = RawConn::connect(kg.port());
    assert_eq!(c.cmd_str(&["SET", "tx:w", "0"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["WATCH", "tx:w"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["GET", "tx:w"]), "$1\r\n0\r\n");
    assert_eq!(other.cmd_str(&["SET", "tx:w", "other"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["MULTI"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["SET", "tx:w", "mine"]), "+QUEUED\r\n");
    assert_eq!(c.cmd_str(&["EXEC"]), "*-1\r\n");
    assert_eq!(c.cmd_str(&["GET", "tx:w"]), "$5\r\nother\r\n");
    // Without a conflict the same sequence commits.
    assert_eq!(c.cmd_str(&["WATCH", "tx:w"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["MULTI"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["SET", "tx:w", "mine"]), "+QUEUED\r\n");
    assert_eq!(c.cmd_str(&["EXEC"]), "*1\r\n+OK\r\n");
    assert_eq!(other.cmd_str(&["GET", "tx:w"]), "$4\r\nmine\r\n");
}

#[test]
fn discard_drops_queued_commands() {
    let (_redis, kg) = setup();
    let mut c = RawConn::connect(kg.port());
    assert_eq!(c.cmd_str(&["MULTI"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["SET", "tx:d", "1"]), "+QUEUED\r\n");
    assert_eq!(c.cmd_str(&["DISCARD"]), "+OK\r\n");
    assert_eq!(c.cmd_str(&["GET", "tx:d"]), "$-1\r\n");
    assert_eq!(c.cmd_str(&["DISCARD"]), "-ERR DISCARD without MULTI\r\n");
}

#[test]
fn exec_without_multi_and_nested_multi() {
    let (redis, kg) = setup();
    for port in [kg.port(), redis.port()] {
        let mut c = RawConn::connect(port);
        assert_eq!(c.cmd_str(&["EXEC"]), "-ERR EXEC without MULTI\r\n");
        assert_eq!(c.cmd_str(&["MULTI"]), "+OK\r\n");
        assert_eq!(
            c.cmd_str(&["MULTI"]),
            "-ERR MULTI calls can not be nested\r\n"
        );
        assert_eq!(c.cmd_str(&["EXEC"]), "*0\r\n");
    }
}

/// The same session through keygate and directly gives the same bytes.
fn session_replies(port: u16, script: &[&[&str]]) -> Vec<String> {
    let mut c = RawConn::connect(port);
    script.iter().map(|cmd| c.cmd_str(cmd)).collect()
}

#[test]
fn unknown_command_or_wrong_arity_inside_multi_aborts_exec() {
    let (redis, kg) = setup();
    let scripts: [&[&[&str]]; 2] = [
        &[
            &["MULTI"],
            &["SET", "tx:u", "1"],
            &["NOSUCHCOMMAND", "x"],
            &["EXEC"],
            &["GET", "tx:u"],
        ],
        &[
            &["MULTI"],
            &["SET", "tx:v", "1"],
            &["GET"],
            &["EXEC"],
            &["GET", "tx:v"],
        ],
    ];
    for script in scripts {
        let via_keygate = session_replies(kg.port(), script);
        let direct = session_replies(redis.port(), script);
        assert_eq!(via_keygate, direct);
        assert_eq!(
            via_keygate[3],
            "-EXECABORT Transaction discarded because of previous errors.\r\n"
        );
        assert_eq!(via_keygate[4], "$-1\r\n");
    }
}

#[test]
fn runtime_error_inside_exec_is_per_command() {
    let (redis, kg) = setup();
    let script: &[&[&str]] = &[
        &["SET", "tx:s", "text"],
        &["MULTI"],
        &["INCR", "tx:s"],
        &["SET", "tx:t", "1"],
        &["EXEC"],
    ];
    let via_keygate = session_replies(kg.port(), script);
    redis.cli(&["DEL", "tx:s", "tx:t"]);
    let direct = session_replies(redis.port(), script);
    assert_eq!(via_keygate, direct);
}

/// RESET inside MULTI runs at once and discards the transaction (and the
/// WATCH), as on Redis; keygate refused it (Redis's unit/other, "RESET
/// clears and discards MULTI state"). Compared with redis-server, one
/// command at a time and pipelined.
#[test]
fn reset_inside_multi_discards_the_transaction_as_redis_does() {
    let (redis, kg) = setup();
    let script: [&[&str]; 7] = [
        &["WATCH", "tx:w"],
        &["MULTI"],
        &["SET", "tx:r", "1"],
        &["RESET"],
        &["EXEC"],
        &["GET", "tx:r"],
        &["SET", "tx:r", "2"],
    ];
    let run = |port: u16, pipelined: bool| -> Vec<String> {
        let mut c = RawConn::connect(port);
        if pipelined {
            c.send(
                &script
                    .iter()
                    .flat_map(|a| resp_command(a))
                    .collect::<Vec<u8>>(),
            );
            (0..script.len())
                .map(|_| String::from_utf8_lossy(&c.read_reply()).into_owned())
                .collect()
        } else {
            script.iter().map(|a| c.cmd_str(a)).collect()
        }
    };
    for pipelined in [false, true] {
        let direct = run(redis.port(), pipelined);
        assert_eq!(direct[3], "+RESET\r\n");
        let mut cleanup = RawConn::connect(redis.port());
        cleanup.cmd_str(&["DEL", "tx:r"]);
        assert_eq!(run(kg.port(), pipelined), direct, "pipelined: {pipelined}");
        cleanup.cmd_str(&["DEL", "tx:r"]);
    }
}
