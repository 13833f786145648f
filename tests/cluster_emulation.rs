//! Cluster emulation (`[proxy] cluster_emulation = true`): keygate answers
//! as a one-node Redis Cluster owning every slot at its own address, so
//! cluster-mode clients (redis-cli `-c`, redis-py `RedisCluster`, ioredis
//! `Cluster`) talk to keygate alone, whatever backend is behind it.
//! `scripts/test` installs redis-py (pip) and ioredis (`npm ci` in
//! tests/node) when they are missing.

mod common;

use std::process::Command;

use common::*;

/// Turns cluster emulation on in a harness config.
fn emulating(config: &str) -> String {
    config.replacen(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n",
        "[proxy]\nlisten = \"127.0.0.1:0\"\ncluster_emulation = true\n",
        1,
    )
}

/// Runs a client-library script with keygate's port; panics with its
/// output unless it exits 0.
fn run_script(program: &str, script: &str, port: u16) {
    let path = format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(program)
        .arg(&path)
        .arg(port.to_string())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program} {path} (scripts/test installs it): {e}"));
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every client that insists on cluster mode, against `kg`.
fn cluster_clients(kg: &Keygate) {
    let port = kg.port().to_string();
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-c", "-p", &port])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    for i in 0..20 {
        assert_eq!(cli(&["SET", &format!("cli:{i}"), &i.to_string()]), "OK");
    }
    for i in 0..20 {
        assert_eq!(cli(&["GET", &format!("cli:{i}")]), i.to_string());
    }
    assert!(cli(&["CLUSTER", "INFO"]).starts_with("cluster_state:ok"));
    run_script("python3", "python/redis_py_cluster.py", kg.port());
    run_script("node", "node/ioredis_cluster.js", kg.port());
}

#[test]
fn answers_as_a_one_node_cluster_at_its_own_address() {
    let redis = RedisServer::start();
    let kg = Keygate::start_with(&emulating(&standalone_config(
        &redis.addr(),
        DEFAULT_SERVICE,
    )));
    kg.wait_ready();
    let mut conn = RawConn::connect(kg.port());
    let id = conn.call(&["CLUSTER", "MYID"]).text();
    assert_eq!(id.len(), 40, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    let slots = conn.cmd_str(&["CLUSTER", "SLOTS"]);
    assert_eq!(
        slots,
        format!(
            "*1\r\n*3\r\n:0\r\n:16383\r\n*4\r\n$9\r\n127.0.0.1\r\n:{}\r\n$40\r\n{id}\r\n*0\r\n",
            kg.port()
        )
    );
    let nodes = conn.call(&["CLUSTER", "NODES"]).text();
    assert_eq!(
        nodes,
        format!(
            "{id} 127.0.0.1:{}@0 myself,master - 0 0 0 connected 0-16383\n",
            kg.port()
        )
    );
    for flag in ["READONLY", "READWRITE", "ASKING"] {
        assert_eq!(conn.cmd_str(&[flag]), "+OK\r\n");
    }
    // RESP3: maps where Redis sends maps, a verbatim string for NODES/INFO.
    conn.cmd(&["HELLO", "3"]);
    let shards = conn.cmd_str(&["CLUSTER", "SHARDS"]);
    assert!(
        shards.starts_with(
            "*1\r\n%2\r\n$5\r\nslots\r\n*2\r\n:0\r\n:16383\r\n$5\r\nnodes\r\n*1\r\n%7\r\n"
        ),
        "{shards}"
    );
    assert!(shards.contains(&format!("$4\r\nport\r\n:{}\r\n", kg.port())));
    let info = conn.cmd_str(&["CLUSTER", "INFO"]);
    assert!(info.starts_with('=') && info.contains("txt:cluster_state:ok\r\n"));
    assert_eq!(
        conn.cmd_str(&["CONFIG", "GET", "cluster-enabled"]),
        "%1\r\n$15\r\ncluster-enabled\r\n$3\r\nyes\r\n"
    );
}

#[test]
fn without_emulation_cluster_commands_stay_refused() {
    let redis = RedisServer::start();
    let kg = Keygate::start(&redis);
    kg.wait_ready();
    let mut conn = RawConn::connect(kg.port());
    assert_eq!(
        conn.cmd_str(&["READONLY"]),
        "-ERR This instance has cluster support disabled\r\n"
    );
    let slots = conn.cmd_str(&["CLUSTER", "SLOTS"]);
    assert!(slots.starts_with("-"), "{slots}");
}

#[test]
fn announce_names_the_address_clients_reach() {
    let redis = RedisServer::start();
    let config = emulating(&standalone_config(&redis.addr(), DEFAULT_SERVICE)).replacen(
        "cluster_emulation = true\n",
        "cluster_emulation = true\nannounce = \"keygate.internal:7000\"\n",
        1,
    );
    let kg = Keygate::start_with(&config);
    let mut conn = RawConn::connect(kg.port());
    let slots = conn.cmd_str(&["CLUSTER", "SLOTS"]);
    assert!(
        slots.contains("$16\r\nkeygate.internal\r\n:7000\r\n"),
        "{slots}"
    );
}

#[test]
fn cluster_clients_through_a_standalone_backend() {
    let redis = RedisServer::start();
    let kg = Keygate::start_with(&emulating(&standalone_config(
        &redis.addr(),
        DEFAULT_SERVICE,
    )));
    kg.wait_ready();
    cluster_clients(&kg);
    assert_eq!(redis.cli(&["GET", "cli:7"]), "7");
}

#[test]
fn cluster_clients_through_a_cluster_backend() {
    let cluster = RedisCluster::start();
    let kg = Keygate::start_with(&emulating(&cluster_config(&cluster, DEFAULT_SERVICE)));
    kg.wait_ready();
    cluster_clients(&kg);
    // keygate routed the writes to the cluster's own masters.
    assert_eq!(
        cli_at(cluster.nodes()[0].port(), &["-c", "GET", "cli:7"]),
        "7"
    );
}

#[test]
fn a_tls_listener_is_announced_as_a_tls_cluster_does() {
    let pki = TestPki::generate();
    let redis = RedisServer::start();
    let (cert, key) = pki.server();
    let config = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nlisten_tls = \"127.0.0.1:1\"\ncluster_emulation = true\n\
         [proxy.tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n\
         [backend]\naddress = \"{}\"\n{DEFAULT_SERVICE}",
        redis.addr()
    );
    let (kg, tls_port) = Keygate::start_with_tls(&config);
    wait_serving(kg.port());
    let ca = pki.ca();
    let tls = ["--cacert", ca.as_str()];
    // SLOTS and NODES: the port of the listener the client came in by.
    let over_tls = tls_cli_at(tls_port, &tls, &["CLUSTER", "SLOTS"]);
    let plain = cli_at(kg.port(), &["CLUSTER", "SLOTS"]);
    let port_line = |text: &str| text.lines().nth(3).map(str::to_string);
    assert_eq!(
        port_line(&over_tls),
        Some(tls_port.to_string()),
        "{over_tls}"
    );
    assert_eq!(port_line(&plain), Some(kg.port().to_string()), "{plain}");
    let nodes = tls_cli_at(tls_port, &tls, &["CLUSTER", "NODES"]);
    assert!(
        nodes.contains(&format!(" 127.0.0.1:{tls_port}@0 ")),
        "{nodes}"
    );
    // SHARDS: both, as `port` and `tls-port`.
    let shards = cli_at(kg.port(), &["CLUSTER", "SHARDS"]);
    assert!(
        shards.contains(&format!("port\n{}\ntls-port\n{tls_port}\n", kg.port())),
        "{shards}"
    );
    assert_eq!(tls_cli_at(tls_port, &tls, &["SET", "k", "v"]), "OK");
}
