//! Per-service policy, applied to each request after the command-table
//! lookup and before routing: which service a login maps to ([`service`], kept
//! swappable by reload in [`registry`]),
//! which commands it may run ([`access`]), the namespace that confines its
//! keys ([`namespace`], [`confinement`], [`keyspace`], run one at a time
//! per service by [`procedure_gate`]) and how long its keys live ([`ttl`]).

pub mod access;
pub mod confinement;
pub mod keyspace;
pub mod namespace;
pub mod procedure_gate;
pub mod registry;
pub mod reply;
pub mod service;
pub mod ttl;
