//! The reply-byte budget of one client (`[proxy] max_pending_reply_bytes`).
//!
//! Two measures decide whether keygate takes more requests from a client.
//! What is *held*: the reply bytes that arrived for it and are not yet
//! written to it, counted as they arrive (`backend::meter`); at the cap,
//! keygate stops reading from the client until it catches up. What is *in
//! flight*: keygate cannot know how big a reply will be before it arrives,
//! and replies to commands already sent arrive whether or not the client
//! reads them, so it also estimates the reply size from the replies this
//! client has had so far, and sends more only while the bytes held plus the
//! commands in flight times that estimate stay under the cap.
//!
//! Invariants: nothing more is taken while the bytes held reach the cap;
//! before any reply is seen the estimate is [`INITIAL_REPLY_BYTES`] (a deep
//! first pipeline must not run unchecked); it rises at once to a larger
//! reply and falls as a mean weighted by the commands observed (it errs
//! towards holding less); a client with nothing in flight and less than the
//! cap held may always send one more, so a client whose replies are huge
//! still makes progress one step at a time. The estimate cannot stop the
//! replies to a first deep pipeline of huge values: the hard limit
//! (`max_pending_reply_bytes_hard`) does, by closing the client.

/// Commands in flight a client may always have, whatever the estimate,
/// while less than the cap is held.
pub const ALWAYS_ALLOWED: usize = 1;

/// The reply size assumed before any reply was seen.
pub const INITIAL_REPLY_BYTES: usize = 64 * 1024;
/// Weight, in commands, of the current estimate against new observations.
const PRIOR_WEIGHT: usize = 8;

/// How many reply bytes one client may have outstanding, estimated.
#[derive(Debug)]
pub struct ReplyBudget {
    /// `max_pending_reply_bytes`.
    cap: usize,
    /// Estimated bytes per reply.
    reply_bytes: usize,
}

impl ReplyBudget {
    /// A budget of `cap` bytes, before any reply was seen.
    pub fn new(cap: usize) -> ReplyBudget {
        ReplyBudget {
            cap,
            reply_bytes: INITIAL_REPLY_BYTES,
        }
    }

    /// `commands` replies totalling `bytes` were written to the client.
    pub fn observe(&mut self, bytes: usize, commands: usize) {
        if commands == 0 {
            return;
        }
        let sample = bytes / commands;
        self.reply_bytes = if sample >= self.reply_bytes {
            sample
        } else {
            self.reply_bytes
                .saturating_mul(PRIOR_WEIGHT)
                .saturating_add(bytes)
                / (PRIOR_WEIGHT + commands)
        };
    }

    /// Whether a client with `in_flight` commands and `held` reply bytes
    /// held may send another.
    pub fn allows(&self, in_flight: usize, held: usize) -> bool {
        held < self.cap
            && (in_flight < ALWAYS_ALLOWED
                || held.saturating_add(in_flight.saturating_mul(self.reply_bytes)) < self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_any_reply_a_deep_pipeline_is_limited() {
        let budget = ReplyBudget::new(16 << 20);
        assert!(budget.allows(255, 0));
        assert!(!budget.allows(256, 0));
    }

    #[test]
    fn many_small_replies_lift_the_limit_at_once() {
        let mut budget = ReplyBudget::new(16 << 20);
        budget.observe(5 * 500, 500);
        assert!(budget.allows(4000, 0));
    }

    #[test]
    fn large_replies_limit_what_is_in_flight() {
        let mut budget = ReplyBudget::new(1 << 20);
        budget.observe(64 * 1024 * 4, 4);
        assert!(budget.allows(15, 0));
        assert!(!budget.allows(16, 0));
        assert!(!budget.allows(1000, 0));
    }

    #[test]
    fn the_estimate_rises_at_once_and_falls_with_evidence() {
        let mut budget = ReplyBudget::new(1 << 20);
        budget.observe(10 * 1000, 1000);
        assert!(budget.allows(1000, 0));
        budget.observe(1 << 16, 1);
        assert!(!budget.allows(32, 0));
        budget.observe(10, 1);
        assert!(
            !budget.allows(32, 0),
            "one small reply does not undo a large one"
        );
        for _ in 0..10 {
            budget.observe(10 * 100, 100);
        }
        assert!(budget.allows(1000, 0));
    }

    #[test]
    fn one_command_is_always_allowed_while_under_the_cap() {
        let mut budget = ReplyBudget::new(65536);
        budget.observe(1 << 30, 1);
        assert!(budget.allows(0, 0));
        assert!(!budget.allows(1, 0));
        assert!(budget.allows(0, 65535));
        assert!(!budget.allows(0, 65536), "at the cap, nothing more");
    }

    #[test]
    fn bytes_held_count_against_what_may_be_sent() {
        let mut budget = ReplyBudget::new(1 << 20);
        budget.observe(1000 * 1000, 1000);
        assert!(budget.allows(500, 0));
        assert!(!budget.allows(500, 600_000));
        assert!(!budget.allows(0, 1 << 20));
    }
}
