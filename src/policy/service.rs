//! A service: the policy a client gets after AUTH (or without it, `default`).

/// The runtime form of one `[[service]]`.
#[derive(Debug, Clone)]
pub struct Service {
    /// The service's name from config.
    pub name: String,
}
