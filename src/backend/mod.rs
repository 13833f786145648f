//! The backend side: connections to Redis nodes.
