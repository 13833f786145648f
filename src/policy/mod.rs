//! Per-service policy, applied to each request after the command-table
//! lookup and before routing, through one call: [`decision::decide`] takes
//! the service, what it needs of the session and the scanned request and
//! returns a typed decision (forward with a reply plan, a keyspace
//! procedure to run, or a refusal). Its stages: which commands a service
//! may run ([`access`]), the databases it may use ([`database`]), CLIENT
//! TRACKING ([`tracking`]), the namespace that confines its keys
//! ([`namespace`], [`confinement`], [`keyspace`], run one at a time per
//! service by [`procedure_gate`]), and how long its keys live and how large
//! its values grow ([`governance`], [`ttl`]). On the way back, [`reply`]
//! rewrites each reply by the plan the decision made. Which service a login
//! maps to is [`service`], kept swappable by reload in [`registry`]; a
//! signed-token login is checked by [`token`].
//!
//! `policy` knows nothing of the client side. It does no I/O of its own but
//! one: a keyspace procedure's steps ([`keyspace::run`]) await replies on
//! connections the client side leases and hands it.

pub mod access;
pub mod confinement;
pub(crate) mod database;
pub(crate) mod decision;
pub(crate) mod governance;
pub mod keyspace;
pub mod namespace;
pub mod procedure_gate;
pub mod registry;
pub mod reply;
pub mod service;
pub mod token;
pub(crate) mod tracking;
pub mod ttl;
