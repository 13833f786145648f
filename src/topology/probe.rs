//! Probing data nodes: `ROLE` confirms a master before it gets traffic;
//! `INFO replication` and `INFO persistence` tell whether a replica may
//! serve reads.
//!
//! A replica serves reads only when it says `role:slave` of the confirmed
//! master, its link is up, it is neither syncing nor loading, and the master
//! lists it `online` with an acknowledgement lag within `max_replica_lag`.

use std::collections::HashMap;
use std::time::Duration;

use super::control::{info_field, items, text, ControlConn};
use tokio::task::JoinSet;

use super::{ReplicaState, Topology};
use crate::backend::connect::ConnectOptions;
use crate::backend::BackendError;
use crate::protocol::reply::Value;

/// A replica as its master reports it (`slaveN:` line of INFO replication).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaAck {
    /// The replica's replication state as the master reports it.
    pub state: String,
    /// Replication offset the replica acknowledged.
    pub offset: u64,
    /// Seconds since the replica's last REPLCONF ACK.
    pub lag_seconds: u64,
}

/// What a confirmed master reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MasterReport {
    /// `master_repl_offset`.
    pub offset: u64,
    /// Its replicas by `ip:port`.
    pub replicas: HashMap<String, ReplicaAck>,
}

/// What a replica reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaReport {
    /// `role:` from INFO replication.
    pub role: String,
    /// `master_host:master_port`.
    pub master_addr: Option<String>,
    /// The replica's link to its master is up.
    pub link_up: bool,
    /// A full sync is in progress.
    pub syncing: bool,
    /// The dataset is being loaded.
    pub loading: bool,
    /// Replication offset of the node.
    pub offset: u64,
}

/// The role a node reports through `ROLE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// ROLE says master.
    Master,
    /// ROLE says slave (replica).
    Replica,
    /// Any other role (e.g. sentinel).
    Other(String),
}

/// Parses a `ROLE` reply.
pub fn parse_role(v: &Value) -> Option<Role> {
    let first = items(v)?.first().and_then(text)?;
    Some(match first.as_str() {
        "master" => Role::Master,
        "slave" | "replica" => Role::Replica,
        other => Role::Other(other.to_string()),
    })
}

/// Asks `opts.addr` for its role; `Ok(Some(report))` only when it is a master.
pub async fn probe_master(
    opts: &ConnectOptions,
    timeout: Duration,
) -> Result<Option<MasterReport>, BackendError> {
    let mut conn = ControlConn::open(opts, timeout).await?;
    let role = conn.call(&["ROLE"]).await?;
    if parse_role(&role) != Some(Role::Master) {
        return Ok(None);
    }
    let info = conn.call(&["INFO", "replication"]).await?;
    Ok(Some(parse_master_info(&text(&info).unwrap_or_default())))
}

/// Reads a master's `INFO replication`.
pub fn parse_master_info(info: &str) -> MasterReport {
    let mut report = MasterReport {
        offset: info_field(info, "master_repl_offset")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        replicas: HashMap::new(),
    };
    for line in info.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let numbered = key
            .strip_prefix("slave")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !numbered {
            continue;
        }
        let fields: HashMap<&str, &str> = value
            .trim()
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let (Some(ip), Some(port)) = (fields.get("ip"), fields.get("port")) else {
            continue;
        };
        report.replicas.insert(
            format!("{ip}:{port}"),
            ReplicaAck {
                state: fields.get("state").unwrap_or(&"").to_string(),
                offset: fields
                    .get("offset")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                lag_seconds: fields.get("lag").and_then(|v| v.parse().ok()).unwrap_or(0),
            },
        );
    }
    report
}

/// Asks a replica its role (`ROLE` must say replica) and about its
/// replication link and loading state.
pub async fn probe_replica(
    opts: &ConnectOptions,
    timeout: Duration,
) -> Result<ReplicaReport, BackendError> {
    let mut conn = ControlConn::open(opts, timeout).await?;
    let role = conn.call(&["ROLE"]).await?;
    let info = conn.call(&["INFO", "replication", "persistence"]).await?;
    let mut report = parse_replica_info(&text(&info).unwrap_or_default());
    match parse_role(&role) {
        Some(Role::Replica) => {}
        Some(Role::Master) => report.role = "master".into(),
        Some(Role::Other(other)) => report.role = other,
        None => report.role = "unknown".into(),
    }
    Ok(report)
}

/// Reads a replica's `INFO replication persistence`.
pub fn parse_replica_info(info: &str) -> ReplicaReport {
    let master_addr = match (
        info_field(info, "master_host"),
        info_field(info, "master_port"),
    ) {
        (Some(h), Some(p)) => Some(format!("{h}:{p}")),
        _ => None,
    };
    ReplicaReport {
        role: info_field(info, "role").unwrap_or("").to_string(),
        master_addr,
        link_up: info_field(info, "master_link_status") == Some("up"),
        syncing: info_field(info, "master_sync_in_progress") == Some("1"),
        loading: info_field(info, "loading") == Some("1")
            || info_field(info, "async_loading") == Some("1"),
        offset: info_field(info, "slave_repl_offset")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    }
}

/// Probes `replicas` at once (each with whether Sentinel or the cluster
/// flags it down: it is not asked then) and judges each against
/// `master_addr` and its report; by address, the master itself left out.
pub async fn judge_replicas(
    topology: &Topology,
    replicas: &[(String, bool)],
    master_addr: Option<&str>,
    master: Option<&MasterReport>,
    timeout: Duration,
    max_lag: Duration,
) -> Vec<ReplicaState> {
    let mut probes = JoinSet::new();
    for (addr, down) in replicas {
        if Some(addr.as_str()) == master_addr {
            continue;
        }
        let opts = topology.probe_options(addr);
        let addr = addr.clone();
        let down = *down;
        probes.spawn(async move {
            let report = if down {
                None
            } else {
                Some(probe_replica(&opts, timeout).await)
            };
            (addr, report)
        });
    }
    let mut states = Vec::new();
    while let Some(done) = probes.join_next().await {
        let Ok((addr, report)) = done else { continue };
        let state = match &report {
            None => ReplicaState {
                addr: addr.clone(),
                state: "down".into(),
                lag_seconds: None,
                lag_bytes: None,
            },
            Some(r) => judge_replica(&addr, r.as_ref(), master_addr, master, max_lag),
        };
        states.push(state);
    }
    states.sort_by(|a, b| a.addr.cmp(&b.addr));
    states
}

/// Decides whether a probed replica may serve reads.
pub fn judge_replica(
    addr: &str,
    report: Result<&ReplicaReport, &BackendError>,
    master_addr: Option<&str>,
    master: Option<&MasterReport>,
    max_lag: Duration,
) -> ReplicaState {
    let mut state = ReplicaState {
        addr: addr.to_string(),
        state: String::new(),
        lag_seconds: None,
        lag_bytes: None,
    };
    let ack = master.and_then(|m| m.replicas.get(addr));
    if let (Some(m), Ok(r)) = (master, report) {
        state.lag_bytes = Some(m.offset.saturating_sub(r.offset));
    }
    state.lag_seconds = ack.map(|a| a.lag_seconds);
    state.state = match report {
        Err(_) => "down",
        Ok(r) if r.role != "slave" => "not-replica",
        Ok(r) if r.loading => "loading",
        Ok(r) if r.syncing => "syncing",
        Ok(r) if !r.link_up => "link-down",
        Ok(r) if master_addr.is_none() || r.master_addr.as_deref() != master_addr => "wrong-master",
        Ok(_) => match ack {
            Some(a) if a.state == "online" && a.lag_seconds <= max_lag.as_secs() => "online",
            Some(a) if a.state != "online" => "syncing",
            Some(_) => "lagging",
            None => "wrong-master",
        },
    }
    .to_string();
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASTER_INFO: &str = "# Replication\r\nrole:master\r\nconnected_slaves:1\r\nslave0:ip=127.0.0.1,port=7001,state=online,offset=500,lag=1\r\nmaster_repl_offset:600\r\n";

    #[test]
    fn master_info_lists_replicas() {
        let m = parse_master_info(MASTER_INFO);
        assert_eq!(m.offset, 600);
        let ack = &m.replicas["127.0.0.1:7001"];
        assert_eq!(
            (ack.state.as_str(), ack.offset, ack.lag_seconds),
            ("online", 500, 1)
        );
    }

    #[test]
    fn replica_judged_on_link_load_and_lag() {
        let m = parse_master_info(MASTER_INFO);
        let info = "role:slave\r\nmaster_host:127.0.0.1\r\nmaster_port:7000\r\nmaster_link_status:up\r\nmaster_sync_in_progress:0\r\nslave_repl_offset:590\r\nloading:0\r\n";
        let r = parse_replica_info(info);
        let master = Some("127.0.0.1:7000");
        let ok = judge_replica(
            "127.0.0.1:7001",
            Ok(&r),
            master,
            Some(&m),
            Duration::from_secs(10),
        );
        assert_eq!(ok.state, "online");
        assert_eq!(ok.lag_bytes, Some(10));
        let lagging = judge_replica("127.0.0.1:7001", Ok(&r), master, Some(&m), Duration::ZERO);
        assert_eq!(lagging.state, "lagging");
        let loading = ReplicaReport {
            loading: true,
            ..r.clone()
        };
        let s = judge_replica(
            "127.0.0.1:7001",
            Ok(&loading),
            master,
            Some(&m),
            Duration::from_secs(10),
        );
        assert_eq!(s.state, "loading");
        let elsewhere = judge_replica(
            "127.0.0.1:7001",
            Ok(&r),
            Some("127.0.0.1:9"),
            Some(&m),
            Duration::from_secs(10),
        );
        assert_eq!(elsewhere.state, "wrong-master");
    }

    #[test]
    fn role_reply_is_parsed() {
        let v = Value::Array(vec![Value::Bulk("master".into()), Value::Integer(0)]);
        assert_eq!(parse_role(&v), Some(Role::Master));
        assert_eq!(parse_role(&Value::Nil), None);
    }
}
