//! Commands keygate answers itself: connection state (PING, ECHO, HELLO,
//! AUTH, CLIENT, RESET, QUIT, ACL WHOAMI; SELECT is in `database`),
//! introspection a client asks at start (COMMAND COUNT/GETKEYS, CONFIG GET
//! for services that are not `admin`), and keygate's INFO section.
//!
//! None of these touches a backend, so they work while Redis is down.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::session::{ReplyMode, Session};
use super::Context;
use crate::command::glob::{self, Case};
use crate::command::keyword::{c_str, is_keyword};
use crate::command::{self, keys, CommandSpec};
use crate::hotkeys;
use crate::policy::service::{Login, Service};
use crate::protocol::decimal;
use crate::protocol::encode;
use crate::protocol::request::Request;
use crate::protocol::Protocol;
use crate::topology::slot::prefixed_key_slot;

/// The Redis version keygate reports in HELLO; its behaviour is 7.0's.
pub const REDIS_VERSION: &str = "7.0.15";

/// What the client loop does after a local answer.
#[derive(Debug, PartialEq)]
pub enum LocalAnswer {
    /// Send the reply.
    Reply(Bytes),
    /// Send the reply and close the connection (QUIT).
    ReplyAndClose(Bytes),
    /// Send the reply after dropping the dedicated connection and state (RESET).
    ReplyAfterReset(Bytes),
}

fn err(msg: &str) -> LocalAnswer {
    let mut out = BytesMut::new();
    encode::error(&mut out, msg);
    LocalAnswer::Reply(out.freeze())
}

fn ok() -> LocalAnswer {
    simple("OK")
}

fn simple(s: &str) -> LocalAnswer {
    let mut out = BytesMut::new();
    encode::simple(&mut out, s);
    LocalAnswer::Reply(out.freeze())
}

fn build(f: impl FnOnce(&mut BytesMut)) -> LocalAnswer {
    let mut out = BytesMut::new();
    f(&mut out);
    LocalAnswer::Reply(out.freeze())
}

/// CLIENT subcommands keygate answers; the rest are refused by policy.
/// SETINFO and NO-TOUCH are newer than Redis 7.0 and so not in the table,
/// but clients send them at connect.
pub fn answer_client(session: &mut Session, req: &Request) -> Option<LocalAnswer> {
    let sub = req.get(1)?;
    let sub = std::str::from_utf8(sub).ok()?.to_ascii_lowercase();
    let argc = req.argc();
    let arity_err = || {
        err(&format!(
            "ERR wrong number of arguments for 'client|{sub}' command"
        ))
    };
    let on_off =
        |v: Option<&[u8]>| v.is_some_and(|v| is_keyword(v, b"on") || is_keyword(v, b"off"));
    Some(match sub.as_str() {
        "id" => {
            if argc != 2 {
                return Some(arity_err());
            }
            build(|o| encode::integer(o, session.id as i64))
        }
        "getname" => {
            if argc != 2 {
                return Some(arity_err());
            }
            match &session.name {
                Some(n) => build(|o| encode::bulk(o, n)),
                None => build(|o| encode::nil(o, session.protocol)),
            }
        }
        "setname" => {
            let Some(name) = req.get(2).filter(|_| argc == 3) else {
                return Some(arity_err());
            };
            if name.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
                return Some(err(
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                ));
            }
            session.name = (!name.is_empty()).then(|| name.to_vec());
            ok()
        }
        "setinfo" => {
            if argc != 4 {
                return Some(arity_err());
            }
            let attr = req.get(2).unwrap_or_default();
            if is_keyword(attr, b"lib-name") || is_keyword(attr, b"lib-ver") {
                ok()
            } else {
                err(&format!(
                    "ERR Unrecognized option '{}'",
                    String::from_utf8_lossy(attr)
                ))
            }
        }
        "no-evict" | "no-touch" => {
            if argc != 3 {
                return Some(arity_err());
            }
            if on_off(req.get(2)) {
                ok()
            } else {
                err("ERR syntax error")
            }
        }
        "reply" => {
            if argc != 3 {
                return Some(arity_err());
            }
            let mode = req.get(2).unwrap_or_default();
            if is_keyword(mode, b"on") {
                session.reply_mode = ReplyMode::On;
                ok()
            } else if is_keyword(mode, b"off") {
                session.reply_mode = ReplyMode::Off;
                ok()
            } else if is_keyword(mode, b"skip") {
                session.reply_mode = ReplyMode::SkipNext;
                ok()
            } else {
                err("ERR syntax error")
            }
        }
        _ => return None,
    })
}

/// Answers a command keygate handles itself, or `None` to pass it on.
pub fn answer(
    ctx: &Context,
    session: &mut Session,
    spec: &'static CommandSpec,
    req: &Request,
) -> Option<LocalAnswer> {
    Some(match spec.name {
        // PING's arity is -1, but `pingCommand` takes at most one message.
        "ping" if req.argc() > 2 => err("ERR wrong number of arguments for 'ping' command"),
        "ping" => match req.get(1) {
            Some(msg) => build(|o| encode::bulk(o, msg)),
            None => simple("PONG"),
        },
        "echo" => build(|o| encode::bulk(o, req.get(1).unwrap_or_default())),
        "quit" => LocalAnswer::ReplyAndClose(Bytes::from_static(b"+OK\r\n")),
        "reset" => {
            session.protocol = Protocol::Resp2;
            session.service = ctx.services.default_service();
            session.token_expiry = None;
            session.name = None;
            session.reply_mode = ReplyMode::On;
            session.tx = Default::default();
            session.queued.clear();
            LocalAnswer::ReplyAfterReset(Bytes::from_static(b"+RESET\r\n"))
        }
        "auth" => {
            let (user, pass) = match req.argc() {
                2 => (None, req.get(1).unwrap_or_default()),
                3 => (req.get(1), req.get(2).unwrap_or_default()),
                _ => return Some(err("ERR syntax error")),
            };
            match login(ctx, user, pass) {
                Ok(login) => {
                    session.log_in(login.service, login.expires);
                    ok()
                }
                Err(e) => err(&e),
            }
        }
        "hello" => hello(ctx, session, req),
        // Without cluster emulation keygate is no cluster node: Redis's
        // own answer (with it, `cluster_emulation` answers first).
        "readonly" | "readwrite" | "asking" => {
            err("ERR This instance has cluster support disabled")
        }
        // The slot of the key as the cluster stores it: with the prefix.
        "cluster|keyslot" if ctx.router.cluster().is_some() && session.service.is_some() => {
            let prefix = session.namespace().map(|ns| ns.prefix_bytes());
            let slot =
                prefixed_key_slot(prefix.unwrap_or_default(), req.get(2).unwrap_or_default());
            build(|o| encode::integer(o, i64::from(slot)))
        }
        "acl|whoami" => LocalAnswer::Reply(acl_whoami(session)),
        "command|count" => build(|o| encode::integer(o, command::all().len() as i64)),
        "command|getkeys" => getkeys(req),
        // An admin service is trusted with the server: it reads Redis's
        // own configuration, whole.
        "config|get" if !session.service.as_ref().is_some_and(|s| s.admin) => {
            config_get(ctx, session.protocol, req)
        }
        _ => return None,
    })
}

/// ACL WHOAMI: keygate's login is the service, so its name is the user
/// (the backend's own user is keygate's, not the client's).
pub fn acl_whoami(session: &Session) -> Bytes {
    let name = session.service.as_ref().map_or("", |s| s.name.as_str());
    let mut out = BytesMut::new();
    encode::bulk(&mut out, name.as_bytes());
    out.freeze()
}

/// Maps AUTH's arguments to a service, counting failures by reason.
fn login(ctx: &Context, user: Option<&[u8]>, pass: &[u8]) -> Result<Login, String> {
    // `AUTH default <password>` is the plain `AUTH <password>` of Redis 6+ clients.
    let user = user.filter(|u| *u != b"default");
    ctx.services.login(user, pass).map_err(|e| {
        ctx.auth_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ctx.metrics.auth_failure(e.reason());
        e.to_string()
    })
}

/// HELLO [protover [AUTH user pass] [SETNAME name]].
fn hello(ctx: &Context, session: &mut Session, req: &Request) -> LocalAnswer {
    let mut protocol = session.protocol;
    let mut i = 1;
    if let Some(v) = req.get(1) {
        match v {
            b"2" => protocol = Protocol::Resp2,
            b"3" => protocol = Protocol::Resp3,
            _ => {
                let n = std::str::from_utf8(v)
                    .ok()
                    .and_then(|v| v.parse::<i64>().ok());
                return match n {
                    Some(_) => err("NOPROTO unsupported protocol version"),
                    None => err("ERR Protocol version is not an integer or out of range"),
                };
            }
        }
        i = 2;
    }
    let mut auth = None;
    let mut name = None;
    while i < req.argc() {
        let opt = req.get(i).unwrap_or_default();
        let more = req.argc() - i - 1;
        if is_keyword(opt, b"AUTH") && more >= 2 {
            auth = Some((
                req.get(i + 1).unwrap_or_default(),
                req.get(i + 2).unwrap_or_default(),
            ));
            i += 3;
        } else if is_keyword(opt, b"SETNAME") && more >= 1 {
            name = req.get(i + 1);
            i += 2;
        } else {
            return err(&format!(
                "ERR Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(c_str(opt))
            ));
        }
    }
    if let Some((user, pass)) = auth {
        match login(ctx, Some(user), pass) {
            Ok(login) => session.log_in(login.service, login.expires),
            Err(e) => return err(&e),
        }
    } else if session.service.is_none() {
        return err("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
    }
    if let Some(name) = name {
        if name.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
            return err("ERR Client names cannot contain spaces, newlines or special characters.");
        }
        session.name = (!name.is_empty()).then(|| name.to_vec());
    }
    session.protocol = protocol;
    build(|o| {
        encode::map_header(o, 7, protocol);
        encode::bulk(o, b"server");
        encode::bulk(o, b"redis");
        encode::bulk(o, b"version");
        encode::bulk(o, REDIS_VERSION.as_bytes());
        encode::bulk(o, b"proto");
        encode::integer(o, if protocol == Protocol::Resp3 { 3 } else { 2 });
        encode::bulk(o, b"id");
        encode::integer(o, session.id as i64);
        encode::bulk(o, b"mode");
        // A cluster-mode client is told what cluster emulation answers.
        encode::bulk(
            o,
            if ctx.config.proxy.cluster_emulation {
                b"cluster"
            } else {
                b"standalone"
            },
        );
        encode::bulk(o, b"role");
        encode::bulk(o, b"master");
        encode::bulk(o, b"modules");
        encode::array_header(o, 0);
    })
}

/// COMMAND GETKEYS from keygate's own table, the same answer the namespace
/// rewrite relies on, with Redis's errors in Redis's order
/// (`getKeysSubcommandImpl`, server.c): unknown command, no key arguments,
/// wrong arity, then keys that cannot be found (an empty list for a
/// command whose keys are optional).
fn getkeys(req: &Request) -> LocalAnswer {
    let args: Vec<&[u8]> = req.args().skip(2).collect();
    let inner = Request::from_args(&args);
    let spec =
        command::find(inner.get(0).unwrap_or_default()).and_then(|base| match inner.get(1) {
            Some(sub) if base.is_container() => base.subcommand(sub),
            _ => Some(base),
        });
    let Some(spec) = spec else {
        return err("ERR Invalid command specified");
    };
    if !keys::has_keys(spec) {
        return err("ERR The command has no key arguments");
    }
    if !spec.arity_ok(inner.argc()) {
        return err("ERR Invalid number of arguments specified for command");
    }
    let positions = keys::key_positions(spec, &inner).unwrap_or_default();
    if positions.is_empty() {
        if spec.flags.contains(command::Flags::NO_MANDATORY_KEYS) {
            return build(|o| encode::array_header(o, 0));
        }
        return err("ERR Invalid arguments specified for command");
    }
    build(|o| {
        encode::array_header(o, positions.len());
        for &p in &positions {
            encode::bulk(o, inner.get(p).unwrap_or_default());
        }
    })
}

/// CONFIG GET for the parameters clients and redis-benchmark ask at start.
fn config_get(ctx: &Context, protocol: Protocol, req: &Request) -> LocalAnswer {
    let p = &ctx.config.proxy;
    let params: [(&str, String); 7] = [
        ("appendonly", "no".into()),
        ("save", String::new()),
        ("databases", ctx.config.backend.databases.to_string()),
        ("maxclients", p.max_clients.to_string()),
        (
            "timeout",
            p.idle_timeout.map_or(0, |t| t.as_secs()).to_string(),
        ),
        ("proto-max-bulk-len", p.proto_max_bulk_len.to_string()),
        (
            "cluster-enabled",
            if p.cluster_emulation { "yes" } else { "no" }.into(),
        ),
    ];
    let patterns: Vec<&[u8]> = req.args().skip(2).collect();
    let hits: Vec<&(&str, String)> = params
        .iter()
        .filter(|(name, _)| {
            patterns
                .iter()
                .any(|pat| glob::matches(pat, name.as_bytes(), Case::Insensitive))
        })
        .collect();
    build(|o| {
        encode::map_header(o, hits.len(), protocol);
        for (name, value) in hits {
            encode::bulk(o, name.as_bytes());
            encode::bulk(o, value.as_bytes());
        }
    })
}

/// keygate's `# Proxy` INFO section. Services that are not `admin` see
/// only their own service's figures.
pub fn proxy_info(ctx: &Context, session: &Session) -> String {
    let master = ctx.router.master();
    let service = session.service.as_ref();
    let admin = service.is_some_and(|s| s.admin);
    let filter = if admin {
        None
    } else {
        Some(service.map_or("-", |s| s.name.as_str()))
    };
    let mut text = format!(
        "\r\n# Proxy\r\nkeygate_version:{}\r\nuptime_in_seconds:{}\r\nservice:{}\r\n",
        env!("CARGO_PKG_VERSION"),
        ctx.state.started.elapsed().as_secs(),
        service.map_or("", |s| s.name.as_str()),
    );
    if admin {
        text.push_str(&format!(
            "connected_clients:{}\r\nbackend_master:{}\r\nbackend_connections:{}\r\nauth_failures:{}\r\n",
            ctx.clients.load(std::sync::atomic::Ordering::Relaxed),
            master.as_ref().map_or("none", |m| m.addr()),
            master.as_ref().map_or(0, |m| m.health().connected()),
            ctx.auth_failures.load(std::sync::atomic::Ordering::Relaxed),
        ));
    }
    text.push_str(&ctx.metrics.info_section(filter));
    text.push_str(&super::database::info_lines(ctx, session));
    text
}

/// `KEYGATE LATENCY [service] [command]` and `KEYGATE SLOWLOG`: keygate's
/// own admin command for redis-cli users. A service that is not `admin`
/// sees only its own figures.
pub fn answer_keygate(ctx: &Context, session: &Session, req: &Request) -> LocalAnswer {
    let Some(service) = session.service.as_ref() else {
        return err("NOAUTH Authentication required.");
    };
    let sub = req
        .get(1)
        .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase());
    let text_arg = |i: usize| req.get(i).map(|a| String::from_utf8_lossy(a).into_owned());
    let own = (!service.admin).then(|| service.name.clone());
    match sub.as_deref() {
        // Fault injection for tests/panic_isolation.rs: compiled only with
        // the `fault-injection` feature, which release builds never enable.
        #[cfg(feature = "fault-injection")]
        Some("debug-panic") => panic!("KEYGATE DEBUG-PANIC: injected fault"),
        Some("latency") if req.argc() <= 4 => {
            let wanted = text_arg(2);
            if let (Some(own), Some(w)) = (&own, &wanted) {
                if w != own {
                    return err(
                        "NOPERM keygate: only admin services may see other services' latency",
                    );
                }
            }
            let service_filter = wanted.or(own);
            let command = text_arg(3).map(|c| c.to_ascii_lowercase());
            let table = ctx
                .metrics
                .latency_table(service_filter.as_deref(), command.as_deref());
            build(|o| encode::bulk(o, table.as_bytes()))
        }
        Some("slowlog") if req.argc() == 2 => {
            let entries = ctx.metrics.slowlog();
            let mut text = String::new();
            for e in entries {
                let line = serde_json::to_string(&e).unwrap_or_default();
                if own
                    .as_deref()
                    .is_none_or(|o| line.contains(&format!("\"service\":\"{o}\"")))
                {
                    text.push_str(&line);
                    text.push('\n');
                }
            }
            build(|o| encode::bulk(o, text.as_bytes()))
        }
        Some("hotkeys") => hot_keys(ctx, service, req),
        Some("help") => build(|o| {
            let lines = [
                "KEYGATE LATENCY [service] [command] -- p50/p90/p99/p99.9/max over the recent window",
                "KEYGATE SLOWLOG -- commands slower than slowlog_threshold (no argument values)",
                "KEYGATE HOTKEYS [service] [COUNT n] [BY reads|bytes] -- the most-read keys: [key, reads, bytes] (estimates from a sample of reads)",
            ];
            encode::array_header(o, lines.len());
            for l in lines {
                encode::simple(o, l);
            }
        }),
        _ => err(
            "ERR unknown subcommand or wrong number of arguments for 'keygate'. Try KEYGATE HELP.",
        ),
    }
}

/// `KEYGATE HOTKEYS [service] [COUNT n] [BY reads|bytes]`: a service's
/// most-read keys as `[key, reads, bytes]`, highest first, keys as its
/// clients name them. Without a name, the caller's own service; a service
/// that is not `admin` may name only itself.
fn hot_keys(ctx: &Context, service: &Arc<Service>, req: &Request) -> LocalAnswer {
    let mut at = 2;
    let named = req
        .get(at)
        .filter(|a| !is_keyword(a, b"count") && !is_keyword(a, b"by"));
    if named.is_some() {
        at += 1;
    }
    let (mut count, mut rank) = (hotkeys::DEFAULT_COUNT, hotkeys::Rank::Reads);
    while let Some(option) = req.get(at) {
        let Some(value) = req.get(at + 1) else {
            return err("ERR syntax error");
        };
        if is_keyword(option, b"count") {
            match decimal::parse_ll(value) {
                Some(n) if n > 0 => count = usize::try_from(n).unwrap_or(usize::MAX),
                _ => return err("ERR value is out of range, must be positive"),
            }
        } else if is_keyword(option, b"by") && is_keyword(value, b"reads") {
            rank = hotkeys::Rank::Reads;
        } else if is_keyword(option, b"by") && is_keyword(value, b"bytes") {
            rank = hotkeys::Rank::Bytes;
        } else {
            return err("ERR syntax error");
        }
        at += 2;
    }
    let services = ctx.services.current();
    let target = match named {
        None => service.clone(),
        Some(name) if name == service.name.as_bytes() => service.clone(),
        Some(_) if !service.admin => {
            return err("NOPERM keygate: only admin services may see other services' hot keys")
        }
        Some(name) => match services.get(&String::from_utf8_lossy(name)) {
            Some(found) => found.clone(),
            None => return err("ERR keygate: no such service"),
        },
    };
    let top = target
        .hot_keys
        .as_ref()
        .map(|h| h.top(rank, count))
        .unwrap_or_default();
    build(|o| {
        encode::array_header(o, top.len());
        for hot in &top {
            encode::array_header(o, 3);
            encode::bulk(o, &hot.key);
            encode::integer(o, i64::try_from(hot.reads).unwrap_or(i64::MAX));
            encode::integer(o, i64::try_from(hot.bytes).unwrap_or(i64::MAX));
        }
    })
}
