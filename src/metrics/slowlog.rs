//! The slow log: the most recent commands slower than
//! `[proxy] slowlog_threshold`, in a ring of at most `slowlog_max_len`.
//!
//! Invariant: an entry holds the service, the command name from the command
//! table, the role, the duration and the time, never an argument value: the
//! recorder is never given arguments, so none can leak into the log.

use std::collections::VecDeque;

use serde::Serialize;

use super::Role;

/// A slow command as the recorder saw it (service as its label slot).
#[derive(Debug, Clone)]
pub struct SlowSample {
    /// Label slot of the service.
    pub service: usize,
    /// Command name from the command table.
    pub command: &'static str,
    /// Which node served it.
    pub role: Role,
    /// Time from reading the request to writing the reply.
    pub micros: u64,
    /// Wall-clock time the command completed, milliseconds since the Unix epoch.
    pub unix_ms: u64,
}

/// One slow log entry as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlowlogEntry {
    /// Increasing entry number, as in Redis's SLOWLOG.
    pub id: u64,
    /// Completion time, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Service name (`-` when not logged in).
    pub service: String,
    /// Command name, lower-case as in the command table.
    pub command: &'static str,
    /// `master`, `replica` or `proxy`.
    pub role: &'static str,
    /// Duration in microseconds.
    pub duration_us: u64,
}

/// The bounded ring of slow commands.
#[derive(Debug)]
pub struct SlowLog {
    entries: VecDeque<(u64, SlowSample)>,
    max_len: usize,
    next_id: u64,
}

impl SlowLog {
    /// An empty log keeping at most `max_len` entries.
    pub fn new(max_len: usize) -> SlowLog {
        SlowLog {
            entries: VecDeque::new(),
            max_len,
            next_id: 0,
        }
    }

    /// Appends a slow command, dropping the oldest past `max_len`.
    pub fn push(&mut self, sample: SlowSample) {
        if self.max_len == 0 {
            return;
        }
        while self.entries.len() >= self.max_len {
            self.entries.pop_front();
        }
        self.entries.push_back((self.next_id, sample));
        self.next_id += 1;
    }

    /// Entries newest first, with service names resolved by `service_name`.
    pub fn entries<'a>(&self, service_name: impl Fn(usize) -> &'a str) -> Vec<SlowlogEntry> {
        self.entries
            .iter()
            .rev()
            .map(|(id, s)| SlowlogEntry {
                id: *id,
                timestamp_ms: s.unix_ms,
                service: service_name(s.service).to_string(),
                command: s.command,
                role: s.role.label(),
                duration_us: s.micros,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_newest_first() {
        let mut log = SlowLog::new(3);
        for i in 0..5u64 {
            log.push(SlowSample {
                service: 0,
                command: "get",
                role: Role::Master,
                micros: 10_000 + i,
                unix_ms: i,
            });
        }
        let e = log.entries(|_| "cart");
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].id, 4);
        assert_eq!(e[2].id, 2);
        assert_eq!(e[0].duration_us, 10_004);
        assert_eq!(e[0].service, "cart");
        assert_eq!(e[0].role, "master");
    }
}
