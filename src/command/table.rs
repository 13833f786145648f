//! Generated from Redis 7.0.15's command reference; do not edit by hand.

use super::CommandSpec;

/// Every top-level command, sorted by name.
pub static COMMANDS: &[CommandSpec] = &[];
