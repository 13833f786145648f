//! Per-service policy, applied to each request after the command-table
//! lookup and before routing: which service a login maps to ([`service`]),
//! which commands it may run ([`access`]), and how long its keys live ([`ttl`]).

pub mod access;
pub mod service;
pub mod ttl;
