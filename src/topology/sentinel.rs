//! Talking to Sentinels: asking one for the master and replicas of a name,
//! and following one's event stream.
//!
//! Events are only hints: every one of them makes the monitor re-resolve and
//! re-confirm roles with `ROLE`, except that failover-start events begin the
//! write hold at once and `+switch-master` withdraws the old master at once.

use std::time::Duration;

use tokio::sync::mpsc;

use super::control::{items, text, ControlConn};
use crate::backend::connect::ConnectOptions;
use crate::backend::BackendError;
use crate::protocol::reply::Value;

/// Channels keygate subscribes to on every Sentinel.
pub const CHANNELS: &[&str] = &[
    "+switch-master",
    "+sdown",
    "-sdown",
    "+odown",
    "-odown",
    "+slave",
    "+replica",
    "+reboot",
    "+try-failover",
    "+failover-state-select-slave",
    "+selected-slave",
    "+failover-state-send-slaveof-noone",
    "+failover-state-wait-promotion",
    "+promoted-slave",
    "+failover-end",
];

/// Pattern for the failover-abort events (`-failover-abort-not-elected`, ...).
pub const ABORT_PATTERN: &str = "-failover-abort-*";

/// A replica as one Sentinel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedReplica {
    /// `ip:port`.
    pub addr: String,
    /// Sentinel thinks it is down or disconnected.
    pub down: bool,
}

/// One Sentinel's view of a master name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelView {
    /// `ip:port` of the master, if the Sentinel knows the name.
    pub master: Option<String>,
    /// The replicas the Sentinel lists.
    pub replicas: Vec<ListedReplica>,
}

/// Asks one Sentinel for the master and replicas of `name`.
pub async fn ask(
    opts: &ConnectOptions,
    name: &str,
    timeout: Duration,
) -> Result<SentinelView, BackendError> {
    let mut conn = ControlConn::open(opts, timeout).await?;
    let master = conn
        .call(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", name])
        .await?;
    let master = items(&master).and_then(|a| match a {
        [ip, port] => Some(format!("{}:{}", text(ip)?, text(port)?)),
        _ => None,
    });
    let listed = conn.call(&["SENTINEL", "REPLICAS", name]).await?;
    let replicas = items(&listed)
        .unwrap_or_default()
        .iter()
        .filter_map(parse_listed_replica)
        .collect();
    Ok(SentinelView { master, replicas })
}

/// One entry of `SENTINEL REPLICAS`: a flat key/value array (or a RESP3 map).
fn parse_listed_replica(entry: &Value) -> Option<ListedReplica> {
    let pairs: Vec<(String, String)> = match entry {
        Value::Map(m) => m
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
            .collect(),
        other => items(other)?
            .chunks(2)
            .filter_map(|kv| match kv {
                [k, v] => Some((text(k)?, text(v)?)),
                _ => None,
            })
            .collect(),
    };
    let field = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let flags = field("flags").unwrap_or("");
    let down = flags
        .split(',')
        .any(|f| matches!(f, "s_down" | "o_down" | "disconnected"));
    Some(ListedReplica {
        addr: format!("{}:{}", field("ip")?, field("port")?),
        down,
    })
}

/// What a Sentinel event means for keygate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A failover for our master started: hold new writes.
    FailoverStart,
    /// The failover was aborted: release held writes to the old master.
    FailoverAbort,
    /// The master moved; `new` is `ip:port`.
    SwitchMaster { new: String },
    /// A replica went subjectively down: stop reading from it now.
    ReplicaDown { addr: String },
    /// Something changed; re-resolve.
    Changed,
}

/// An event from one Sentinel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Address of the Sentinel that announced the event.
    pub sentinel: String,
    /// What happened.
    pub kind: EventKind,
}

/// Interprets one event; `None` when it is about another master or a Sentinel.
pub fn parse_event(channel: &str, payload: &str, master_name: &str) -> Option<EventKind> {
    let words: Vec<&str> = payload.split_whitespace().collect();
    if channel == "+switch-master" {
        return match words.as_slice() {
            [name, _, _, ip, port, ..] if *name == master_name => Some(EventKind::SwitchMaster {
                new: format!("{ip}:{port}"),
            }),
            _ => None,
        };
    }
    // `master <name> <ip> <port> ...` or
    // `<type> <name> <ip> <port> @ <master-name> <master-ip> <master-port>`.
    let (instance_type, about) = match words.as_slice() {
        ["master", name, ..] => ("master", *name),
        [kind, _, _, _, "@", name, ..] => (*kind, *name),
        _ => return None,
    };
    if about != master_name || instance_type == "sentinel" {
        return None;
    }
    let kind = match channel {
        "+try-failover"
        | "+failover-state-select-slave"
        | "+selected-slave"
        | "+failover-state-send-slaveof-noone"
        | "+failover-state-wait-promotion"
        | "+promoted-slave" => EventKind::FailoverStart,
        c if c.starts_with("-failover-abort") => EventKind::FailoverAbort,
        "+sdown" if instance_type == "slave" || instance_type == "replica" => {
            match words.as_slice() {
                [_, _, ip, port, ..] => EventKind::ReplicaDown {
                    addr: format!("{ip}:{port}"),
                },
                _ => EventKind::Changed,
            }
        }
        _ => EventKind::Changed,
    };
    Some(kind)
}

/// Follows one Sentinel's events until `events` is closed, reconnecting
/// with capped backoff.
pub async fn follow(
    opts: ConnectOptions,
    master_name: String,
    timeout: Duration,
    events: mpsc::Sender<Event>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = follow_once(&opts, &master_name, timeout, &events).await;
        if events.is_closed() {
            return;
        }
        if let Err(e) = result {
            tracing::debug!(sentinel = %opts.addr, error = %e, "sentinel subscription lost");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
        // A fresh subscription may have missed events: have the monitor re-resolve.
        let _ = events
            .send(Event {
                sentinel: opts.addr.clone(),
                kind: EventKind::Changed,
            })
            .await;
    }
}

async fn follow_once(
    opts: &ConnectOptions,
    master_name: &str,
    timeout: Duration,
    events: &mpsc::Sender<Event>,
) -> Result<(), BackendError> {
    let mut conn = ControlConn::open(opts, timeout).await?;
    let mut subscribe = vec!["SUBSCRIBE"];
    subscribe.extend_from_slice(CHANNELS);
    conn.send(&subscribe).await?;
    conn.send(&["PSUBSCRIBE", ABORT_PATTERN]).await?;
    loop {
        let msg = conn.read_value().await?;
        let Some(parts) = items(&msg) else {
            continue;
        };
        let (channel, payload) = match parts {
            [kind, channel, payload] if text(kind).as_deref() == Some("message") => {
                (text(channel), text(payload))
            }
            [kind, _, channel, payload] if text(kind).as_deref() == Some("pmessage") => {
                (text(channel), text(payload))
            }
            _ => continue,
        };
        let (Some(channel), Some(payload)) = (channel, payload) else {
            continue;
        };
        tracing::debug!(sentinel = %opts.addr, %channel, %payload, "sentinel event");
        if let Some(kind) = parse_event(&channel, &payload, master_name) {
            let event = Event {
                sentinel: opts.addr.clone(),
                kind,
            };
            if events.send(event).await.is_err() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_filtered_by_master_name() {
        assert_eq!(
            parse_event(
                "+switch-master",
                "mymaster 127.0.0.1 7000 127.0.0.1 7001",
                "mymaster"
            ),
            Some(EventKind::SwitchMaster {
                new: "127.0.0.1:7001".into()
            })
        );
        assert_eq!(
            parse_event(
                "+switch-master",
                "other 127.0.0.1 7000 127.0.0.1 7001",
                "mymaster"
            ),
            None
        );
        assert_eq!(
            parse_event(
                "+try-failover",
                "master mymaster 127.0.0.1 7000",
                "mymaster"
            ),
            Some(EventKind::FailoverStart)
        );
        assert_eq!(
            parse_event(
                "+selected-slave",
                "slave 127.0.0.1:7001 127.0.0.1 7001 @ mymaster 127.0.0.1 7000",
                "mymaster"
            ),
            Some(EventKind::FailoverStart)
        );
        assert_eq!(
            parse_event(
                "-failover-abort-not-elected",
                "master mymaster 127.0.0.1 7000",
                "mymaster"
            ),
            Some(EventKind::FailoverAbort)
        );
        assert_eq!(
            parse_event(
                "+sdown",
                "slave 127.0.0.1:7001 127.0.0.1 7001 @ mymaster 127.0.0.1 7000",
                "mymaster"
            ),
            Some(EventKind::ReplicaDown {
                addr: "127.0.0.1:7001".into()
            })
        );
        assert_eq!(
            parse_event(
                "+sdown",
                "sentinel 0123 127.0.0.1 26380 @ mymaster 127.0.0.1 7000",
                "mymaster"
            ),
            None
        );
    }

    #[test]
    fn listed_replicas_read_flags() {
        let entry = Value::Array(
            [
                "name",
                "127.0.0.1:7001",
                "ip",
                "127.0.0.1",
                "port",
                "7001",
                "flags",
                "s_down,slave",
            ]
            .iter()
            .map(|s| Value::Bulk(bytes::Bytes::from(s.to_string())))
            .collect(),
        );
        assert_eq!(
            parse_listed_replica(&entry),
            Some(ListedReplica {
                addr: "127.0.0.1:7001".into(),
                down: true
            })
        );
    }
}
