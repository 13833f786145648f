//! Routing: which backend node and which kind of connection a request uses.
