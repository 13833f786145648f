//! Accepting clients and shutting down.
