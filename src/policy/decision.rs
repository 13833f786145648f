//! One policy decision per request: [`decide`] takes the service, what it
//! needs of the client's session ([`SessionView`]), the command's table
//! entry and the scanned request, and returns a typed [`Decision`]: forward
//! (the request as rewritten, where the namespace's prefix still goes, the
//! follow-ups that ride behind it and the reply plan), run a keyspace
//! procedure (planned here, run by the client side, which owns the
//! connections), or refuse (a [`Refusal`], whose text the client gets and
//! whose kind the metrics read).
//!
//! The stages, in order: access ([`super::access`]), connection state
//! keygate never shares ([`crate::command::state`]), databases
//! ([`super::database`]), CLIENT TRACKING ([`super::tracking`]), the
//! namespace's isolation ([`super::namespace`]), TTL governance and value
//! limits ([`super::governance`]), and the backend's argument length.
//!
//! Invariants: nothing here does I/O or reads the clock beyond what TTL
//! governance needs; a request a stage cannot fully govern is refused,
//! never forwarded ungoverned; the common case (no namespace, or a one-key
//! command whose prefix the writer puts in, and no TTL change) builds no
//! new request and allocates nothing.

use std::sync::Arc;

use super::access;
use super::governance;
use super::keyspace::Procedure;
use super::namespace::{Namespace, Rewritten};
use super::reply::ReplyPlan;
use super::service::Service;
use super::ttl::TtlRefusal;
use super::{database, tracking};
use crate::command::state::{self, Treatment};
use crate::command::{CommandSpec, ReplyKeys};
use crate::protocol::request::Request;
use crate::protocol::Protocol;

/// What the policy needs of the client's session, filled by the client.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionView {
    /// Inside MULTI.
    pub(crate) in_multi: bool,
    /// The database the request runs in (inside MULTI, the one a queued
    /// SELECT switches to at EXEC).
    pub(crate) database: u32,
    /// The backend's `databases`.
    pub(crate) databases: u32,
    /// The protocol the client speaks, for stripping its replies.
    pub(crate) protocol: Protocol,
    /// The longest argument the backend accepts (`proto_max_bulk_len`).
    pub(crate) max_bulk_len: usize,
}

/// What the policy decided for one request.
#[derive(Debug)]
pub(crate) enum Decision {
    /// Send it to the backend.
    Forward(Forward),
    /// A keyspace-wide command of a namespaced service: keygate answers it
    /// with a procedure over the namespace's keys.
    Procedure(Planned),
    /// Answer with this error.
    Refuse(Refusal),
}

/// A request to forward (rewritten in place by [`decide`]: the common
/// case moves nothing), with what goes with it.
#[derive(Debug)]
pub(crate) struct Forward {
    /// The argument the namespace's prefix is still to be put in front of,
    /// by whoever writes the request out (the one-key shortcut).
    pub(crate) prefix_at: Option<usize>,
    /// Requests that ride right behind it on the same connection, their
    /// replies dropped (TTL follow-ups, SELECTs around them).
    pub(crate) follow_ups: Vec<Request>,
    /// How its reply is rewritten on the way back.
    pub(crate) plan: ReplyPlan,
    /// How the command treats connection state (`None`: it changes none).
    pub(crate) treatment: Option<Treatment>,
    /// MOVE's or COPY's destination when another database than the
    /// client's: its follow-ups need the client's own connection.
    pub(crate) destination: Option<u32>,
    /// TTL governance clamped a TTL to `max_ttl`.
    pub(crate) ttl_clamped: bool,
}

/// A keyspace procedure planned for a namespaced service.
#[derive(Debug)]
pub(crate) struct Planned {
    pub(crate) namespace: Arc<Namespace>,
    pub(crate) procedure: Procedure,
}

/// Why the policy refused a request. Its text (`Display`) is what the
/// client gets, Redis's own where Redis has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// The service may not run the command, or nobody may.
    #[error(transparent)]
    Access(access::Refusal),
    /// A command keygate answers itself, sent inside MULTI, where it would
    /// run on the transaction's connection.
    #[error("ERR keygate: '{command}' cannot be used inside MULTI")]
    InsideMulti { command: &'static str },
    /// A database the service may not use.
    #[error("NOPERM keygate: service '{service}' may not use database {db}")]
    Database { service: String, db: u32 },
    /// A keyspace channel of a service limited to some databases that
    /// names none of them.
    #[error("NOPERM keygate: service '{service}' may use only some databases; a keyspace channel must name one of them")]
    KeyspaceChannel { service: String },
    /// MOVE's or COPY's database argument, refused with Redis's text.
    #[error("{0}")]
    DatabaseArgument(&'static str),
    /// CLIENT TRACKING ... REDIRECT.
    #[error("ERR keygate: CLIENT TRACKING REDIRECT is not supported; use RESP3 (HELLO 3) to receive invalidations as push messages")]
    TrackingRedirect,
    /// The namespace cannot confine the request.
    #[error(transparent)]
    Isolation(access::Refusal),
    /// A keyspace procedure inside MULTI: it cannot run in the transaction.
    #[error(
        "NOPERM keygate: '{command}' cannot run inside MULTI for namespaced service '{service}'"
    )]
    ProcedureInMulti {
        command: &'static str,
        service: String,
    },
    /// An argument of a write over `max_value_bytes`.
    #[error("ERR keygate: value of {len} bytes is over service '{service}''s max_value_bytes of {limit}")]
    ValueOverLimit {
        len: usize,
        service: String,
        limit: usize,
    },
    /// A write at an offset that grows a string over `max_value_bytes`.
    #[error("ERR keygate: the value would grow to {size} bytes, over service '{service}''s max_value_bytes of {limit}")]
    ValueWouldGrow {
        size: u64,
        service: String,
        limit: usize,
    },
    /// Arguments Redis refuses when it runs the command: Redis's text.
    #[error("{0}")]
    Arguments(&'static str),
    /// TTL governance: over `max_ttl`, or options Redis would refuse.
    #[error(transparent)]
    Ttl(TtlRefusal),
    /// An argument the namespace's prefix makes longer than the backend
    /// accepts: Redis would close the (shared) connection for it.
    #[error("ERR keygate: an argument of {longest} bytes with the namespace prefix is over proto_max_bulk_len ({limit})")]
    OverBulkLimit { longest: usize, limit: usize },
}

impl Refusal {
    /// The client's own mistake rather than the service's policy (for the
    /// error's kind in the metrics).
    pub(crate) fn is_clients_mistake(&self) -> bool {
        matches!(
            self,
            Refusal::InsideMulti { .. } | Refusal::OverBulkLimit { .. }
        )
    }

    /// Redis gives this error only when it runs the command: inside MULTI
    /// it belongs in EXEC's reply rather than doom the transaction.
    pub(crate) fn at_run(&self) -> bool {
        match self {
            Refusal::Isolation(access::Refusal::Unlocatable(_)) | Refusal::Arguments(_) => true,
            Refusal::Ttl(refusal) => !refusal.is_over_max(),
            _ => false,
        }
    }

    /// Refused by the namespace's isolation.
    pub(crate) fn is_isolation(&self) -> bool {
        matches!(
            self,
            Refusal::Isolation(_) | Refusal::ProcedureInMulti { .. }
        )
    }

    /// Refused for a TTL over the service's `max_ttl`.
    pub(crate) fn is_over_max_ttl(&self) -> bool {
        matches!(self, Refusal::Ttl(refusal) if refusal.is_over_max())
    }
}

/// The value of a stage's `Result`, or the refusal returned as the
/// decision (`?` would wrap the whole decision in a `Result` and copy it
/// out again, on every request).
macro_rules! or_refuse {
    ($stage:expr) => {
        match $stage {
            Ok(value) => value,
            Err(refusal) => return Decision::Refuse(refusal.into()),
        }
    };
}

/// Decides what happens to `req`, a command of `spec` sent by a client of
/// `service` whose session is `session`, and rewrites it in place for
/// [`Decision::Forward`]; `plan` is the reply plan the client gave it
/// (keygate's INFO section, ACL WHOAMI's answer, or none).
/// Inlined into its one caller: the decision is then built in place.
#[inline]
pub(crate) fn decide(
    service: &Service,
    session: &SessionView,
    spec: &'static CommandSpec,
    req: &mut Request,
    plan: ReplyPlan,
) -> Decision {
    or_refuse!(access::check(service, spec).map_err(Refusal::Access));
    // Connection state is never shared (command::state): what reaches
    // here is forwarded, so a command keygate answers itself got here
    // only inside MULTI, where it would run on the transaction's
    // connection at EXEC.
    let treatment = state::treatment(spec);
    match treatment {
        Some(Treatment::Refused) => {
            return Decision::Refuse(Refusal::Access(access::Refusal::Forbidden {
                command: spec.name,
                reason: state::refusal_reason(spec).unwrap_or_default(),
            }))
        }
        Some(Treatment::Local) => {
            return Decision::Refuse(Refusal::InsideMulti { command: spec.name })
        }
        Some(Treatment::Dedicated | Treatment::Database) | None => {}
    }
    // MOVE and COPY ... DB: a destination among the service's databases.
    let destination = if matches!(spec.name, "move" | "copy") {
        or_refuse!(database::destination(
            service,
            spec.name,
            req,
            session.database,
            session.databases,
        ))
    } else {
        None
    };
    or_refuse!(database::check_channels(service, spec, req));
    // A client's tracking state is its own: allowed for every service,
    // confined here rather than by the namespace rewrite.
    let own_tracking = matches!(
        spec.name,
        "client|tracking" | "client|caching" | "client|getredir" | "client|trackinginfo"
    );
    // The common case (no namespace, no TTL change) moves nothing.
    let mut plan = plan;
    // The argument the writer puts the namespace's prefix in front of.
    let mut prefix_at = None;
    if spec.name == "client|tracking" {
        if let Some(confined) =
            or_refuse!(tracking::confine_request(service.namespace.as_deref(), req))
        {
            *req = confined;
        }
    }
    let isolated = if own_tracking {
        Ok(None)
    } else {
        isolate(service, session, spec, req, &mut plan)
    };
    // Matched as it is: taking the `Ok` out first would copy it.
    match isolated {
        Ok(None) => {}
        Ok(Some(Isolated::Forward(confined, confined_plan))) => {
            *req = confined;
            plan = confined_plan;
        }
        Ok(Some(Isolated::PrefixKey(at))) => match service.namespace.as_ref() {
            Some(ns) if !governance::governs_before_prefix(service) => {
                *req = req.prefix_arg(at, ns.prefix_bytes())
            }
            _ => prefix_at = Some(at),
        },
        Ok(Some(Isolated::Procedure(planned))) => return Decision::Procedure(planned),
        Err(refusal) => return Decision::Refuse(refusal),
    }
    let mut follow_ups = Vec::new();
    let mut ttl_clamped = false;
    let mut governed = governance::govern(service, spec, req);
    if let (Some(at), Ok(Some(g))) = (prefix_at, &mut governed) {
        // Governed as the client sent it; the prefix is written with the
        // request. Should the policy ever move the key, confine first.
        let prefix = service.namespace.as_ref().map(|ns| ns.prefix_bytes());
        let prefix = prefix.unwrap_or_default();
        if !governance::confine_follow_ups(req, at, &g.request, &mut g.follow_ups, prefix) {
            *req = req.prefix_arg(at, prefix);
            prefix_at = None;
            governed = governance::govern(service, spec, req);
        }
    }
    match governed {
        Ok(None) => {}
        Ok(Some(g)) => {
            *req = g.request;
            follow_ups = g.follow_ups;
            ttl_clamped = g.clamped;
        }
        Err(refusal) => return Decision::Refuse(refusal),
    }
    if let Some(dst) = destination {
        // The TTL follow-ups run in the destination database, on the
        // client's own connection.
        if spec.name == "move" {
            if let Some((at, ns)) = prefix_at.take().zip(service.namespace.as_ref()) {
                *req = req.prefix_arg(at, ns.prefix_bytes());
            }
            follow_ups = database::move_follow_up(service, req.get(1).unwrap_or_default());
        }
        follow_ups = database::bracket(follow_ups, dst, session.database);
    }
    let prefix_len = prefix_at
        .and(service.namespace.as_ref())
        .map_or(0, |ns| ns.prefix_bytes().len());
    or_refuse!(over_bulk_limit(
        req,
        prefix_at,
        prefix_len,
        session.max_bulk_len
    ));
    Decision::Forward(Forward {
        prefix_at,
        follow_ups,
        plan,
        treatment,
        destination,
        ttl_clamped,
    })
}

/// Where isolation sends a request of a namespaced service.
enum Isolated {
    /// To the backend as this request, its reply rewritten by this plan.
    Forward(Request, ReplyPlan),
    /// To the backend with the namespace's prefix put in front of this one
    /// argument (GET, SET, ...) by whoever writes the request out, the
    /// reply plan set in place: the common case builds no new request.
    PrefixKey(usize),
    /// A keyspace-wide command, run by keygate as a procedure.
    Procedure(Planned),
}

/// Confines `req` to `service`'s namespace: `None` when the service has no
/// namespace (the request goes as it is), where it goes otherwise, or the
/// refusal.
///
/// The namespace is the session's service *at the time of the request*,
/// so a pipeline that AUTHs between services confines each command to the
/// service current at that point.
fn isolate(
    service: &Service,
    session: &SessionView,
    spec: &'static CommandSpec,
    req: &Request,
    plan: &mut ReplyPlan,
) -> Result<Option<Isolated>, Refusal> {
    let Some(ns) = &service.namespace else {
        return Ok(None);
    };
    if let Some(at) = ns.single_key(spec, req) {
        if spec.reply_keys != ReplyKeys::None {
            *plan = confined_plan(spec.reply_keys, ns, plan, session);
        }
        return Ok(Some(Isolated::PrefixKey(at)));
    }
    let isolated = match ns.rewrite(spec, req, service) {
        // Keys that cannot be located: Redis's own error for the
        // command's arguments, which Redis answers when it runs it.
        Err(refusal) => return Err(Refusal::Isolation(refusal)),
        Ok(Rewritten::Procedure(_)) if session.in_multi => {
            return Err(Refusal::ProcedureInMulti {
                command: spec.name,
                service: service.name.clone(),
            })
        }
        Ok(Rewritten::Procedure(procedure)) => Isolated::Procedure(Planned {
            namespace: ns.clone(),
            procedure,
        }),
        Ok(Rewritten::Forward {
            request,
            reply_keys,
        }) => {
            let plan = if spec.name == "info" {
                ReplyPlan::ScopedInfo(match std::mem::replace(plan, ReplyPlan::Forward) {
                    ReplyPlan::AppendProxyInfo(section) => Some(section),
                    _ => None,
                })
            } else {
                confined_plan(reply_keys, ns, plan, session)
            };
            Isolated::Forward(request, plan)
        }
    };
    Ok(Some(isolated))
}

/// The plan for a confined request's reply: the prefix comes off the key
/// names it carries, if any; otherwise the plan stays as it was.
fn confined_plan(
    reply_keys: ReplyKeys,
    ns: &Arc<Namespace>,
    plan: &mut ReplyPlan,
    session: &SessionView,
) -> ReplyPlan {
    if reply_keys != ReplyKeys::None {
        ReplyPlan::StripKeys {
            namespace: ns.clone(),
            reply_keys,
            protocol: session.protocol,
        }
    } else {
        std::mem::replace(plan, ReplyPlan::Forward)
    }
}

/// Refuses a request that the namespace's rewrite (a prefixed key,
/// channel or pattern) made longer than the backend accepts: Redis would
/// answer it with a protocol error and close the connection, a shared one
/// with every other client's requests on it. The client's own arguments
/// are within `proto_max_bulk_len` already (the request scanner saw to
/// it), so only a rewritten frame longer than that needs a look at each
/// argument; `prefix_len` is the prefix still to be written at `prefix_at`.
fn over_bulk_limit(
    req: &Request,
    prefix_at: Option<usize>,
    prefix_len: usize,
    limit: usize,
) -> Result<(), Refusal> {
    if req.frame().len() + prefix_len <= limit {
        return Ok(());
    }
    let longest = (0..req.argc())
        .filter_map(|i| {
            let added = if prefix_at == Some(i) { prefix_len } else { 0 };
            req.arg_len(i).map(|len| len + added)
        })
        .max();
    match longest {
        Some(longest) if longest > limit => Err(Refusal::OverBulkLimit { longest, limit }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(lines: &str) -> Service {
        let cfg = crate::config::Config::parse(&format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n[backend]\naddress = \"127.0.0.1:1\"\n[[service]]\nname = \"billing\"\npassword = \"x\"\n{lines}\n"
        ))
        .expect("config");
        Service::from_config(0, &cfg.services[0])
    }

    fn view(in_multi: bool) -> SessionView {
        SessionView {
            in_multi,
            database: 0,
            databases: 16,
            protocol: Protocol::Resp2,
            max_bulk_len: 512 * 1024 * 1024,
        }
    }

    fn decided(service: &Service, in_multi: bool, args: &[&str]) -> Decision {
        let mut req = Request::from_args(args);
        let spec = crate::command::lookup(&req).expect("a command");
        decide(service, &view(in_multi), spec, &mut req, ReplyPlan::Forward)
    }

    fn refusal(decision: Decision) -> Refusal {
        match decision {
            Decision::Refuse(refusal) => refusal,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn the_common_case_goes_as_it_came() {
        let plain = service("prefix = \"\"\nisolation = false");
        let Decision::Forward(f) = decided(&plain, false, &["GET", "k"]) else {
            panic!("not forwarded");
        };
        assert_eq!((f.prefix_at, f.follow_ups.len()), (None, 0));
        assert_eq!(f.plan, ReplyPlan::Forward);
        // A one-key command of a namespaced service: the writer prefixes.
        let ns = service("prefix = \"billing:\"");
        let Decision::Forward(f) = decided(&ns, false, &["GET", "k"]) else {
            panic!("not forwarded");
        };
        assert_eq!(f.prefix_at, Some(1));
    }

    #[test]
    fn keyspace_commands_are_planned_as_procedures_outside_multi_only() {
        let ns = service("prefix = \"billing:\"");
        assert!(matches!(
            decided(&ns, false, &["DBSIZE"]),
            Decision::Procedure(_)
        ));
        let refused = refusal(decided(&ns, true, &["DBSIZE"]));
        assert_eq!(
            refused.to_string(),
            "NOPERM keygate: 'dbsize' cannot run inside MULTI for namespaced service 'billing'"
        );
        assert!(refused.is_isolation() && !refused.at_run());
    }

    #[test]
    fn refusals_keep_their_text_and_kind() {
        let ns = service("prefix = \"billing:\"\nmax_ttl = \"1h\"\nttl_over_max = \"reject\"\nmax_value_bytes = 16");
        let cases: &[(&[&str], &str, bool, bool)] = &[
            (
                &["SET", "k", "vvvvvvvvvvvvvvvvv"],
                "ERR keygate: value of 17 bytes is over service 'billing''s max_value_bytes of 16",
                false,
                false,
            ),
            (
                &["SETRANGE", "k", "20", "v"],
                "ERR keygate: the value would grow to 21 bytes, over service 'billing''s max_value_bytes of 16",
                false,
                false,
            ),
            (
                &["BITFIELD", "k", "bogus"],
                "ERR syntax error",
                true,
                false,
            ),
            (
                &["EXPIRE", "k", "7200"],
                "ERR keygate: TTL of 7200000 ms is over this service's max_ttl of 3600000 ms",
                false,
                false,
            ),
            (
                &["MOVE", "k", "99"],
                "ERR DB index is out of range",
                false,
                false,
            ),
            (
                &["CLIENT", "TRACKING", "on", "REDIRECT", "7"],
                "ERR keygate: CLIENT TRACKING REDIRECT is not supported; use RESP3 (HELLO 3) to receive invalidations as push messages",
                false,
                false,
            ),
            (
                &["SYNC"],
                "NOPERM keygate does not allow 'sync': it is for replicas",
                false,
                false,
            ),
        ];
        for (args, text, at_run, clients) in cases {
            let refused = refusal(decided(&ns, false, args));
            assert_eq!(refused.to_string(), *text, "{args:?}");
            assert_eq!(refused.at_run(), *at_run, "{args:?}");
            assert_eq!(refused.is_clients_mistake(), *clients, "{args:?}");
        }
        assert!(refusal(decided(&ns, false, &["EXPIRE", "k", "7200"])).is_over_max_ttl());
    }

    #[test]
    fn a_prefix_past_the_bulk_limit_is_refused() {
        let ns = service("prefix = \"billing:\"");
        let mut req = Request::from_args(&["GET", "kkkk"]);
        let spec = crate::command::lookup(&req).expect("GET");
        let tight = SessionView {
            max_bulk_len: 8,
            ..view(false)
        };
        let refused = refusal(decide(&ns, &tight, spec, &mut req, ReplyPlan::Forward));
        assert_eq!(
            refused.to_string(),
            "ERR keygate: an argument of 12 bytes with the namespace prefix is over proto_max_bulk_len (8)"
        );
        assert!(refused.is_clients_mistake());
    }
}
