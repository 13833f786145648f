//! The reply-byte budget of one client (`[proxy] max_pending_reply_bytes`).
//!
//! keygate cannot know how big a reply will be before it arrives, and replies
//! to commands already sent arrive whether or not the client reads them. So
//! the budget bounds what is *sent*: it estimates the reply size from the
//! replies this client has been written so far, and allows more requests only
//! while the commands in flight times that estimate stay under the cap.
//!
//! Invariants: before any reply is seen the estimate is [`INITIAL_REPLY_BYTES`]
//! (a deep first pipeline must not run unchecked); it rises at once to a
//! larger reply and falls as a mean weighted by the commands observed (it
//! errs towards holding less); a client with fewer than
//! [`ALWAYS_ALLOWED`] commands in flight may always send more, so a client
//! whose earlier replies were huge still makes progress one step at a time.

/// Commands in flight a client may always have, whatever the estimate.
pub const ALWAYS_ALLOWED: usize = 16;

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

    /// Whether a client with `in_flight` commands may send another.
    pub fn allows(&self, in_flight: usize) -> bool {
        in_flight < ALWAYS_ALLOWED || in_flight.saturating_mul(self.reply_bytes) < self.cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_any_reply_a_deep_pipeline_is_limited() {
        let budget = ReplyBudget::new(16 << 20);
        assert!(budget.allows(255));
        assert!(!budget.allows(256));
    }

    #[test]
    fn many_small_replies_lift_the_limit_at_once() {
        let mut budget = ReplyBudget::new(16 << 20);
        budget.observe(5 * 500, 500);
        assert!(budget.allows(4000));
    }

    #[test]
    fn large_replies_limit_what_is_in_flight() {
        let mut budget = ReplyBudget::new(1 << 20);
        budget.observe(64 * 1024 * 4, 4);
        assert!(budget.allows(15));
        assert!(!budget.allows(16));
        assert!(!budget.allows(1000));
    }

    #[test]
    fn the_estimate_rises_at_once_and_falls_with_evidence() {
        let mut budget = ReplyBudget::new(1 << 20);
        budget.observe(10 * 1000, 1000);
        assert!(budget.allows(1000));
        budget.observe(1 << 16, 1);
        assert!(!budget.allows(32));
        budget.observe(10, 1);
        assert!(
            !budget.allows(32),
            "one small reply does not undo a large one"
        );
        for _ in 0..10 {
            budget.observe(10 * 100, 100);
        }
        assert!(budget.allows(1000));
    }

    #[test]
    fn a_few_commands_are_always_allowed() {
        let mut budget = ReplyBudget::new(65536);
        budget.observe(1 << 30, 1);
        assert!(budget.allows(ALWAYS_ALLOWED - 1));
    }
}
