//! keygate's table of its clients: the one id space of CLIENT ID, HELLO,
//! CLIENT LIST/INFO/KILL/UNBLOCK.
//!
//! The ids are keygate's own (a backend connection carries many clients,
//! so Redis's ids would name the wrong thing). The table is a std `Mutex`
//! over a map, touched only when a client connects or disconnects, changes
//! its name or service, and by CLIENT LIST/KILL/UNBLOCK; the critical
//! sections never await. What changes per command (the last command, the
//! last activity, the connection's state flags) lives in atomics of the
//! client's [`ClientEntry`], written by its own task without a lock and
//! read by whoever lists the clients.
//!
//! Scope: a service that is not `admin` sees and acts on its own service's
//! clients only; an admin service sees every client of this keygate.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::session::Session;
use crate::command::keyword::is_keyword;
use crate::command::{self, CommandSpec};
use crate::protocol::encode;
use crate::protocol::request::Request;
use crate::protocol::Protocol;

/// Where a client connected from and to.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// The client's address (`addr=`).
    pub addr: String,
    /// keygate's address the client connected to (`laddr=`).
    pub laddr: String,
    /// The socket's descriptor (`fd=`), -1 when unknown.
    pub fd: i64,
    /// The client came in by the TLS listener.
    pub tls: bool,
}

impl Peer {
    /// The addresses of an accepted TCP connection.
    pub fn of(stream: &tokio::net::TcpStream) -> Peer {
        #[cfg(unix)]
        let fd = std::os::fd::AsRawFd::as_raw_fd(stream) as i64;
        #[cfg(not(unix))]
        let fd = -1;
        Peer {
            addr: stream
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            laddr: stream
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            fd,
            tls: false,
        }
    }
}

/// Connection-state flags shown in `flags=` (Redis's letters).
pub(super) mod flag {
    pub const MONITOR: u32 = 1 << 0;
    pub const PUBSUB: u32 = 1 << 1;
    pub const MULTI: u32 = 1 << 2;
    pub const BLOCKED: u32 = 1 << 3;
    pub const TRACKING: u32 = 1 << 4;
    pub const RESP3: u32 = 1 << 5;
}

/// What changes rarely: under the entry's own lock.
#[derive(Debug, Default)]
struct Identity {
    service: String,
    name: Option<Vec<u8>>,
}

/// One client as the table knows it.
#[derive(Debug)]
pub struct ClientEntry {
    id: u64,
    peer: Peer,
    created: Instant,
    // A std Mutex is right here: set on login/SETNAME, read by CLIENT LIST;
    // never held across an await.
    identity: Mutex<Identity>,
    /// The address of the last command's table spec (0: none yet).
    last_command: AtomicUsize,
    /// Milliseconds from `created` to the last activity.
    active_ms: AtomicU64,
    /// [`flag`] bits.
    flags: AtomicU32,
    /// Commands queued in MULTI, or -1.
    multi: AtomicI64,
    /// Redis's id of the client's dedicated connection, 0 when it has none.
    backend_id: AtomicI64,
    /// The database the client is in.
    db: AtomicU32,
    /// CLIENT KILL asked the client's task to close.
    killed: AtomicBool,
    kill: Notify,
}

impl ClientEntry {
    /// Where the client connected from and to.
    pub(super) fn peer(&self) -> &Peer {
        &self.peer
    }

    /// keygate's id of the client.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The client's last command (per request: one relaxed store).
    #[inline]
    pub(super) fn command(&self, spec: &'static CommandSpec) {
        let at = spec as *const CommandSpec as usize;
        self.last_command.store(at, Ordering::Relaxed);
    }

    /// The client was active at `at` (per read).
    #[inline]
    pub(super) fn active(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.created).as_millis() as u64;
        self.active_ms.store(ms, Ordering::Relaxed);
    }

    /// The connection state CLIENT LIST shows, published by the client's task.
    #[inline]
    pub(super) fn state(&self, flags: u32, multi: i64, backend_id: i64) {
        if self.flags.load(Ordering::Relaxed) != flags {
            self.flags.store(flags, Ordering::Relaxed);
        }
        if self.multi.load(Ordering::Relaxed) != multi {
            self.multi.store(multi, Ordering::Relaxed);
        }
        if self.backend_id.load(Ordering::Relaxed) != backend_id {
            self.backend_id.store(backend_id, Ordering::Relaxed);
        }
    }

    /// The client moved to database `db` (SELECT, HELLO, RESET).
    pub(super) fn database(&self, db: u32) {
        self.db.store(db, Ordering::Relaxed);
    }

    /// The session's service and name, after a login, RESET or SETNAME.
    pub(super) fn identify(&self, session: &Session) {
        if let Ok(mut identity) = self.identity.lock() {
            identity.service = session
                .service
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            identity.name.clone_from(&session.name);
        }
    }

    fn service(&self) -> String {
        self.identity
            .lock()
            .map(|i| i.service.clone())
            .unwrap_or_default()
    }

    /// Asks the client's task to close the connection.
    fn close(&self) {
        self.killed.store(true, Ordering::Release);
        self.kill.notify_one();
    }

    /// The client's line of CLIENT LIST, in Redis 7.0's format and order.
    fn line(&self, out: &mut String) {
        use std::fmt::Write;
        let db = self.db.load(Ordering::Relaxed);
        let now = Instant::now();
        let age = now.saturating_duration_since(self.created).as_secs();
        let active = self.active_ms.load(Ordering::Relaxed);
        let since = now.saturating_duration_since(self.created).as_millis() as u64;
        let idle = since.saturating_sub(active) / 1000;
        let bits = self.flags.load(Ordering::Relaxed);
        let mut flags = String::new();
        for (bit, letter) in [
            (flag::MONITOR, 'O'),
            (flag::PUBSUB, 'P'),
            (flag::MULTI, 'x'),
            (flag::BLOCKED, 'b'),
            (flag::TRACKING, 't'),
        ] {
            if bits & bit != 0 {
                flags.push(letter);
            }
        }
        if flags.is_empty() {
            flags.push('N');
        }
        let at = self.last_command.load(Ordering::Relaxed);
        let cmd = command::every_spec()
            .find(|s| *s as *const CommandSpec as usize == at)
            .map_or("NULL", |s| s.name);
        let (service, name) = match self.identity.lock() {
            Ok(i) => (
                i.service.clone(),
                i.name
                    .as_deref()
                    .map(|n| String::from_utf8_lossy(n).into_owned())
                    .unwrap_or_default(),
            ),
            Err(_) => Default::default(),
        };
        let _ = writeln!(
            out,
            "id={} addr={} laddr={} fd={} name={name} age={age} idle={idle} flags={flags} \
             db={db} sub=0 psub=0 ssub=0 multi={} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 \
             rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={cmd} user={service} \
             redir=-1 resp={}",
            self.id,
            self.peer.addr,
            self.peer.laddr,
            self.peer.fd,
            self.multi.load(Ordering::Relaxed),
            if bits & flag::RESP3 != 0 { 3 } else { 2 },
        );
    }
}

/// Completes when CLIENT KILL closed the client. Kept across the client
/// loop's turns: once the wait has registered the task's waker, a turn only
/// loads the flag (inline) instead of polling the wait again.
pub(super) struct KillSignal {
    entry: Arc<ClientEntry>,
    notified: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// `notified` was polled and holds the task's waker.
    registered: bool,
}

impl KillSignal {
    pub(super) fn new(entry: Arc<ClientEntry>) -> KillSignal {
        let waiter = entry.clone();
        KillSignal {
            entry,
            notified: Box::pin(async move { waiter.kill.notified().await }),
            registered: false,
        }
    }

    #[inline]
    pub(super) fn poll(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.entry.killed.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if self.registered {
            // The kill sets the flag before it notifies: the registered
            // waker brings the task back to see it.
            return Poll::Pending;
        }
        self.poll_wait(cx)
    }

    #[inline(never)]
    fn poll_wait(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        // `notify_one` keeps a permit when nobody waits yet, so a kill
        // between the load and this poll is not lost.
        let poll = self.notified.as_mut().poll(cx);
        self.registered = poll.is_pending();
        poll
    }
}

/// Every connected client of this keygate.
#[derive(Debug, Default)]
pub struct ClientTable {
    // A std Mutex is right here: connect, disconnect and CLIENT LIST/KILL
    // only, and the critical sections never await.
    clients: Mutex<HashMap<u64, Arc<ClientEntry>>>,
}

impl ClientTable {
    /// Adds a client; it stays until [`Self::remove`].
    pub(super) fn add(&self, id: u64, peer: Peer, db: u32) -> Arc<ClientEntry> {
        let entry = Arc::new(ClientEntry {
            id,
            peer,
            created: Instant::now(),
            identity: Mutex::new(Identity::default()),
            last_command: AtomicUsize::new(0),
            active_ms: AtomicU64::new(0),
            flags: AtomicU32::new(0),
            multi: AtomicI64::new(-1),
            backend_id: AtomicI64::new(0),
            db: AtomicU32::new(db),
            killed: AtomicBool::new(false),
            kill: Notify::new(),
        });
        if let Ok(mut clients) = self.clients.lock() {
            clients.insert(id, entry.clone());
        }
        entry
    }

    pub(super) fn remove(&self, id: u64) {
        if let Ok(mut clients) = self.clients.lock() {
            clients.remove(&id);
        }
    }

    /// The clients `session` may see, by id.
    /// How many of the clients `session` may see are in each database
    /// (`INFO keygate`), by database.
    pub(super) fn per_database(&self, session: &Session) -> std::collections::BTreeMap<u32, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for c in self.visible(session) {
            *counts.entry(c.db.load(Ordering::Relaxed)).or_insert(0) += 1;
        }
        counts
    }

    fn visible(&self, session: &Session) -> Vec<Arc<ClientEntry>> {
        let Some(service) = session.service.as_ref() else {
            return Vec::new();
        };
        let mut all: Vec<Arc<ClientEntry>> = match self.clients.lock() {
            Ok(clients) => clients.values().cloned().collect(),
            Err(_) => Vec::new(),
        };
        if !service.admin {
            all.retain(|c| c.service() == service.name);
        }
        all.sort_by_key(|c| c.id);
        all
    }
}

/// What the client loop does with a CLIENT subcommand answered from the table.
pub(super) enum TableAnswer {
    /// Send the reply.
    Reply(Bytes),
    /// Send the reply, then close this client (it killed itself).
    ReplyAndClose(Bytes),
    /// Send this request to the backend on a shared connection
    /// (CLIENT UNBLOCK of the target's dedicated connection).
    Forward(Request),
}

fn error(msg: &str) -> TableAnswer {
    let mut out = BytesMut::new();
    encode::error(&mut out, msg);
    TableAnswer::Reply(out.freeze())
}

fn text(lines: &str, protocol: Protocol) -> TableAnswer {
    let mut out = BytesMut::new();
    encode::verbatim(&mut out, b"txt", lines.as_bytes(), protocol);
    TableAnswer::Reply(out.freeze())
}

fn integer(n: i64) -> TableAnswer {
    let mut out = BytesMut::new();
    encode::integer(&mut out, n);
    TableAnswer::Reply(out.freeze())
}

const SYNTAX: &str = "ERR syntax error";

/// Client types as Redis names them (`getClientTypeByName`); keygate's
/// clients are never masters or replicas.
#[derive(PartialEq)]
enum ClientType {
    Normal,
    Pubsub,
    Replication,
}

fn client_type(name: &[u8]) -> Option<ClientType> {
    if is_keyword(name, b"normal") {
        Some(ClientType::Normal)
    } else if is_keyword(name, b"pubsub") {
        Some(ClientType::Pubsub)
    } else if ["slave", "replica", "master"]
        .iter()
        .any(|t| is_keyword(name, t.as_bytes()))
    {
        Some(ClientType::Replication)
    } else {
        None
    }
}

fn type_of(c: &ClientEntry) -> ClientType {
    if c.flags.load(Ordering::Relaxed) & flag::PUBSUB != 0 {
        ClientType::Pubsub
    } else {
        ClientType::Normal
    }
}

fn parse_i64(arg: &[u8]) -> Option<i64> {
    std::str::from_utf8(arg).ok()?.parse().ok()
}

/// CLIENT LIST, INFO, KILL and UNBLOCK from keygate's table; `None` for
/// other subcommands (and wrong arities, which the table's arity check
/// answers).
pub(super) fn answer(
    table: &ClientTable,
    session: &Session,
    me: &ClientEntry,
    req: &Request,
) -> Option<TableAnswer> {
    let sub = req.get(1)?;
    let argc = req.argc();
    let arg = |i: usize| req.get(i).unwrap_or_default();
    if sub.eq_ignore_ascii_case(b"info") && argc == 2 {
        let mut line = String::new();
        me.line(&mut line);
        return Some(text(&line, session.protocol));
    }
    if sub.eq_ignore_ascii_case(b"list") {
        let mut wanted_type = None;
        let mut ids = None;
        if argc == 4 && is_keyword(arg(2), b"type") {
            match client_type(arg(3)) {
                Some(t) => wanted_type = Some(t),
                None => {
                    return Some(error(&format!(
                        "ERR Unknown client type '{}'",
                        String::from_utf8_lossy(arg(3))
                    )))
                }
            }
        } else if argc > 3 && is_keyword(arg(2), b"id") {
            let mut list = Vec::new();
            for i in 3..argc {
                match parse_i64(arg(i)) {
                    Some(id) => list.push(id),
                    None => return Some(error("ERR Invalid client ID")),
                }
            }
            ids = Some(list);
        } else if argc != 2 {
            return Some(error(SYNTAX));
        }
        let visible = table.visible(session);
        let mut lines = String::new();
        match ids {
            // In the order asked, as Redis lists them.
            Some(ids) => {
                for id in ids {
                    if let Some(c) = visible.iter().find(|c| c.id as i64 == id) {
                        c.line(&mut lines);
                    }
                }
            }
            None => {
                for c in &visible {
                    if wanted_type.as_ref().is_none_or(|t| *t == type_of(c)) {
                        c.line(&mut lines);
                    }
                }
            }
        }
        return Some(text(&lines, session.protocol));
    }
    if sub.eq_ignore_ascii_case(b"kill") {
        return Some(kill(table, session, me, req));
    }
    if sub.eq_ignore_ascii_case(b"unblock") && (argc == 3 || argc == 4) {
        let error_mode = if argc == 4 {
            if is_keyword(arg(3), b"timeout") {
                false
            } else if is_keyword(arg(3), b"error") {
                true
            } else {
                return Some(error(
                    "ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR",
                ));
            }
        } else {
            false
        };
        let Some(id) = parse_i64(arg(2)) else {
            return Some(error("ERR value is not an integer or out of range"));
        };
        let target = table
            .visible(session)
            .into_iter()
            .find(|c| c.id as i64 == id);
        let backend = target.map_or(0, |c| c.backend_id.load(Ordering::Relaxed));
        let blocked = target_blocked(table, id);
        if backend <= 0 || !blocked {
            return Some(integer(0));
        }
        let mode = if error_mode { "ERROR" } else { "TIMEOUT" };
        let backend = backend.to_string();
        return Some(TableAnswer::Forward(Request::from_args(&[
            "CLIENT", "UNBLOCK", &backend, mode,
        ])));
    }
    None
}

/// Whether client `id` waits on a blocking command now.
fn target_blocked(table: &ClientTable, id: i64) -> bool {
    let Ok(clients) = table.clients.lock() else {
        return false;
    };
    u64::try_from(id)
        .ok()
        .and_then(|id| clients.get(&id))
        .is_some_and(|c| c.flags.load(Ordering::Relaxed) & flag::BLOCKED != 0)
}

/// CLIENT KILL, old style (`addr`) and new style (filters), as Redis 7.0
/// parses it (`networking.c`); USER is the service name.
fn kill(table: &ClientTable, session: &Session, me: &ClientEntry, req: &Request) -> TableAnswer {
    let argc = req.argc();
    let arg = |i: usize| req.get(i).unwrap_or_default();
    let mut addr: Option<&[u8]> = None;
    let mut laddr: Option<&[u8]> = None;
    let mut user: Option<String> = None;
    let mut wanted_type = None;
    let mut id = 0i64;
    let mut skipme = true;
    let old_style = argc == 3;
    if old_style {
        addr = Some(arg(2));
        skipme = false;
    } else if argc > 3 {
        let mut i = 2;
        while i < argc {
            let more = argc > i + 1;
            let opt = arg(i);
            let value = arg(i + 1);
            if is_keyword(opt, b"id") && more {
                match parse_i64(value) {
                    Some(n) if n >= 1 => id = n,
                    _ => return error("ERR client-id should be greater than 0"),
                }
            } else if is_keyword(opt, b"type") && more {
                match client_type(value) {
                    Some(t) => wanted_type = Some(t),
                    None => {
                        return error(&format!(
                            "ERR Unknown client type '{}'",
                            String::from_utf8_lossy(value)
                        ))
                    }
                }
            } else if is_keyword(opt, b"addr") && more {
                addr = Some(value);
            } else if is_keyword(opt, b"laddr") && more {
                laddr = Some(value);
            } else if is_keyword(opt, b"user") && more {
                let name = String::from_utf8_lossy(value).into_owned();
                let known = table.visible(session).iter().any(|c| c.service() == name)
                    || session.service.as_ref().is_some_and(|s| s.name == name);
                if !known {
                    return error(&format!("ERR No such user '{name}'"));
                }
                user = Some(name);
            } else if is_keyword(opt, b"skipme") && more {
                if is_keyword(value, b"yes") {
                    skipme = true;
                } else if is_keyword(value, b"no") {
                    skipme = false;
                } else {
                    return error(SYNTAX);
                }
            } else {
                return error(SYNTAX);
            }
            i += 2;
        }
    } else {
        return error(SYNTAX);
    }
    let mut killed = 0;
    let mut close_me = false;
    for c in table.visible(session) {
        if addr.is_some_and(|a| a != c.peer.addr.as_bytes()) {
            continue;
        }
        if laddr.is_some_and(|a| a != c.peer.laddr.as_bytes()) {
            continue;
        }
        if wanted_type.as_ref().is_some_and(|t| *t != type_of(&c)) {
            continue;
        }
        if id != 0 && c.id as i64 != id {
            continue;
        }
        if user.as_ref().is_some_and(|u| *u != c.service()) {
            continue;
        }
        let is_me = c.id == me.id;
        if is_me && skipme {
            continue;
        }
        if is_me {
            close_me = true;
        } else {
            c.close();
        }
        killed += 1;
    }
    let reply = if old_style {
        if killed == 0 {
            return error("ERR No such client");
        }
        Bytes::from_static(b"+OK\r\n")
    } else {
        let mut out = BytesMut::new();
        encode::integer(&mut out, killed);
        out.freeze()
    };
    if close_me {
        TableAnswer::ReplyAndClose(reply)
    } else {
        TableAnswer::Reply(reply)
    }
}
