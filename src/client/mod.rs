//! The client side: one task per client connection.
