//! Wire protocol: framing of client requests and backend replies.
//!
//! Framing is separate from meaning: the scanners only find where a frame
//! ends and keep it as raw bytes, so forwarding never re-encodes a value.

pub mod decimal;
pub mod encode;
pub mod reply;
pub mod request;

/// The RESP version a client negotiated with HELLO; replies are shaped for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// RESP2, what every client speaks before HELLO 3.
    #[default]
    Resp2,
    /// RESP3, after HELLO 3.
    Resp3,
}

/// Bytes that are not valid RESP; the text follows Redis's `Protocol error: ` wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// `*` header that is not a number or is out of range.
    #[error("invalid multibulk length")]
    InvalidMultibulkLength,
    /// `$` header that is not a number or exceeds `proto_max_bulk_len`.
    #[error("invalid bulk length")]
    InvalidBulkLength,
    /// An element of a request array that is not a bulk string.
    #[error("expected '$', got '{}'", char::from(*.0))]
    ExpectedBulk(u8),
    /// An inline request longer than the inline limit.
    #[error("too big inline request")]
    TooBigInline,
    /// An inline request with an unterminated quote.
    #[error("unbalanced quotes in request")]
    UnbalancedQuotes,
    /// A reply type byte keygate does not know.
    #[error("invalid reply type byte '{}'", char::from(*.0))]
    InvalidReplyType(u8),
    /// A reply header or line that is malformed.
    #[error("invalid reply: {0}")]
    InvalidReply(&'static str),
    /// Nesting deeper than the configured cap.
    #[error("nesting deeper than {0} levels")]
    TooDeep(usize),
}
