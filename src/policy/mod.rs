//! Per-service policy: which service a login maps to, its key namespace and
//! its TTL rules. Applied to each request after the command-table lookup and
//! before routing.

pub mod service;
