//! The reply scanner: delimits backend replies (RESP2 and RESP3) without
//! copying them, and a small tree form for the few replies keygate rewrites.
//!
//! Invariants: scanning resumes where it stopped, so a large reply arriving
//! in many reads is scanned once; nesting is capped; a push frame (`>`) is
//! reported as such so it is never matched to a request.
//!
//! The scanner's state is a stack of remaining element counts and a cursor.
//! A bulk payload is skipped by its declared length: the cursor jumps past
//! it even before it arrived, and nothing is looked at until the buffer
//! reaches the cursor. An attribute (`|`) belongs to the value after it: a
//! nested one counts as that value's slot plus its own pairs, a top-level one
//! makes the frame end after the following value.

use bytes::{Bytes, BytesMut};

use super::decimal::parse_ll;
use super::encode;
use super::{Protocol, ProtocolError};

/// Nesting cap of [`Value::parse`]: far deeper than any Redis reply, shallow
/// enough that dropping a parsed tree cannot exhaust the stack.
pub const DEFAULT_MAX_DEPTH: usize = 128;

/// The type of a complete top-level reply frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// `-` or `!`: an error reply.
    Error,
    /// `$-1`, `*-1` or `_`: a nil.
    Nil,
    /// `>`: an out-of-band push (pub/sub, tracking).
    Push,
    /// Anything else.
    Value,
}

/// A complete frame found in a buffer: `buf[..end]` from the scan start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameEnd {
    /// Offset just past the frame, relative to the buffer's front.
    pub end: usize,
    /// What the frame is.
    pub kind: ReplyKind,
}

/// How a type byte's header is followed.
enum Shape {
    /// The line is the whole item.
    Line,
    /// The line is a length; a payload and `\r\n` follow.
    Blob,
    /// The line is a count of elements, multiplied by this factor.
    Aggregate(usize),
    /// An attribute: pairs, then the value they describe.
    Attribute,
}

/// The shape of an item by its type byte.
fn shape_of(type_byte: u8) -> Result<Shape, ProtocolError> {
    match type_byte {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Ok(Shape::Line),
        b'$' | b'!' | b'=' => Ok(Shape::Blob),
        b'*' | b'~' | b'>' => Ok(Shape::Aggregate(1)),
        b'%' => Ok(Shape::Aggregate(2)),
        b'|' => Ok(Shape::Attribute),
        other => Err(ProtocolError::InvalidReplyType(other)),
    }
}

/// The kind of a top-level frame from its first (non-attribute) header.
fn kind_of(type_byte: u8, line: &[u8]) -> ReplyKind {
    match type_byte {
        b'-' | b'!' => ReplyKind::Error,
        b'_' => ReplyKind::Nil,
        b'$' | b'*' if line == b"-1" => ReplyKind::Nil,
        b'>' => ReplyKind::Push,
        _ => ReplyKind::Value,
    }
}

/// The length or count in a header line; `-1` is `None` (a RESP2 null).
fn header_len(line: &[u8]) -> Result<Option<usize>, ProtocolError> {
    match parse_ll(line) {
        Some(-1) => Ok(None),
        Some(n) if n >= 0 => usize::try_from(n)
            .map(Some)
            .map_err(|_| ProtocolError::InvalidReply("length too large")),
        _ => Err(ProtocolError::InvalidReply("invalid length")),
    }
}

/// A null (`-1`) length is only valid for `$` and `*`.
fn null_allowed(type_byte: u8) -> Result<(), ProtocolError> {
    match type_byte {
        b'$' | b'*' => Ok(()),
        _ => Err(ProtocolError::InvalidReply("invalid length")),
    }
}

/// Resumable scanner of reply frames.
#[derive(Debug)]
pub struct ReplyScanner {
    max_depth: usize,
    /// Elements still expected by each open aggregate, innermost last.
    stack: Vec<usize>,
    /// Offset of the next unscanned byte; past the buffer's end while a
    /// bulk payload is still arriving.
    pos: usize,
    /// Where the `\r\n` after the last bulk payload must be, checked once it arrived.
    pending_crlf: Option<usize>,
    /// Kind of the frame in progress, once its first value header is read.
    kind: ReplyKind,
    /// A top-level attribute is open or just ended: its value is still to come.
    top_attribute: bool,
    /// The frame in progress is complete once `pos` is in the buffer.
    frame_done: bool,
    /// Offset up to which the current line was searched for `\r\n` in vain.
    searched: usize,
}

impl ReplyScanner {
    /// A scanner that refuses nesting deeper than `max_depth`.
    pub fn new(max_depth: usize) -> Self {
        ReplyScanner {
            max_depth,
            stack: Vec::new(),
            pos: 0,
            pending_crlf: None,
            kind: ReplyKind::Value,
            top_attribute: false,
            frame_done: false,
            searched: 0,
        }
    }

    /// Finds the end of the next frame in `buf`, which starts where the
    /// previous frame (already reported, not yet consumed) ended. Several
    /// frames can be found before the caller takes them off with [`ReplyScanner::consume`].
    pub fn next_frame(&mut self, buf: &[u8]) -> Result<Option<FrameEnd>, ProtocolError> {
        let result = self.next_frame_inner(buf);
        if result.is_err() {
            self.stack.clear();
            self.pending_crlf = None;
            self.top_attribute = false;
            self.frame_done = false;
            self.searched = 0;
        }
        result
    }

    fn next_frame_inner(&mut self, buf: &[u8]) -> Result<Option<FrameEnd>, ProtocolError> {
        loop {
            if self.pos > buf.len() {
                return Ok(None);
            }
            if let Some(at) = self.pending_crlf.take() {
                if buf.get(at..at + 2) != Some(b"\r\n") {
                    return Err(ProtocolError::InvalidReply(
                        "bulk string not followed by CRLF",
                    ));
                }
            }
            if self.frame_done {
                self.frame_done = false;
                let kind = std::mem::replace(&mut self.kind, ReplyKind::Value);
                return Ok(Some(FrameEnd {
                    end: self.pos,
                    kind,
                }));
            }
            let Some(&type_byte) = buf.get(self.pos) else {
                return Ok(None);
            };
            let shape = shape_of(type_byte)?;
            let line_start = self.pos + 1;
            let search_from = self.searched.max(line_start);
            let Some(cr) = buf
                .get(search_from..)
                .and_then(|rest| rest.iter().position(|&b| b == b'\r'))
                .map(|i| search_from + i)
            else {
                self.searched = buf.len();
                return Ok(None);
            };
            match buf.get(cr + 1) {
                None => {
                    self.searched = cr;
                    return Ok(None);
                }
                Some(b'\n') => self.searched = 0,
                Some(_) => return Err(ProtocolError::InvalidReply("line not terminated by CRLF")),
            }
            let line = buf.get(line_start..cr).unwrap_or(&[]);
            let next = cr + 2;
            if self.stack.is_empty() && !matches!(shape, Shape::Attribute) {
                self.kind = kind_of(type_byte, line);
            }
            match shape {
                Shape::Line => {
                    self.pos = next;
                    self.complete_item();
                }
                Shape::Blob => match header_len(line)? {
                    None => {
                        null_allowed(type_byte)?;
                        self.pos = next;
                        self.complete_item();
                    }
                    Some(len) => {
                        let payload_end = next
                            .checked_add(len)
                            .filter(|end| end.checked_add(2).is_some())
                            .ok_or(ProtocolError::InvalidReply("length too large"))?;
                        self.pending_crlf = Some(payload_end);
                        self.pos = payload_end + 2;
                        self.complete_item();
                    }
                },
                Shape::Aggregate(factor) => match header_len(line)? {
                    None => {
                        null_allowed(type_byte)?;
                        self.pos = next;
                        self.complete_item();
                    }
                    Some(n) => {
                        let count = n
                            .checked_mul(factor)
                            .ok_or(ProtocolError::InvalidReply("length too large"))?;
                        self.pos = next;
                        self.open(count)?;
                    }
                },
                Shape::Attribute => {
                    let pairs = header_len(line)?
                        .ok_or(ProtocolError::InvalidReply("invalid length"))?
                        .checked_mul(2)
                        .ok_or(ProtocolError::InvalidReply("length too large"))?;
                    self.pos = next;
                    if self.stack.is_empty() {
                        self.top_attribute = true;
                        self.open(pairs)?;
                    } else {
                        // The attribute and the value it describes fill one slot.
                        let slot = pairs
                            .checked_add(1)
                            .ok_or(ProtocolError::InvalidReply("length too large"))?;
                        self.open(slot)?;
                    }
                }
            }
        }
    }

    /// Opens an aggregate of `count` elements (an empty one is complete).
    fn open(&mut self, count: usize) -> Result<(), ProtocolError> {
        if count == 0 {
            self.complete_item();
            return Ok(());
        }
        if self.stack.len() >= self.max_depth {
            return Err(ProtocolError::TooDeep(self.max_depth));
        }
        self.stack.push(count);
        Ok(())
    }

    /// Records that one item ended, closing every aggregate it filled.
    fn complete_item(&mut self) {
        loop {
            match self.stack.last_mut() {
                None => {
                    if self.top_attribute {
                        self.top_attribute = false;
                    } else {
                        self.frame_done = true;
                    }
                    return;
                }
                Some(remaining) => {
                    *remaining -= 1;
                    if *remaining > 0 {
                        return;
                    }
                    self.stack.pop();
                }
            }
        }
    }

    /// Tells the scanner that the caller removed `n` bytes (whole reported
    /// frames) from the front of the buffer.
    pub fn consume(&mut self, n: usize) {
        self.pos = self.pos.saturating_sub(n);
        self.searched = self.searched.saturating_sub(n);
        self.pending_crlf = self.pending_crlf.map(|at| at.saturating_sub(n));
    }

    /// Takes one complete frame off the front of `buf` (which must not hold
    /// frames already reported by [`ReplyScanner::next_frame`]).
    pub fn scan(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<(Bytes, ReplyKind)>, ProtocolError> {
        let Some(found) = self.next_frame(buf)? else {
            return Ok(None);
        };
        let frame = buf.split_to(found.end).freeze();
        self.consume(found.end);
        Ok(Some((frame, found.kind)))
    }
}

/// A parsed reply, for the low-volume replies keygate rewrites or reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `+` status.
    Simple(Bytes),
    /// `-` or `!` error.
    Error(Bytes),
    /// `:` integer.
    Integer(i64),
    /// `$` bulk string.
    Bulk(Bytes),
    /// `$-1`, `*-1` or `_`.
    Nil,
    /// `*` array.
    Array(Vec<Value>),
    /// `%` map (RESP3).
    Map(Vec<(Value, Value)>),
    /// `~` set (RESP3).
    Set(Vec<Value>),
    /// `>` push (RESP3).
    Push(Vec<Value>),
    /// `,` double (RESP3), kept as text.
    Double(Bytes),
    /// `#` boolean (RESP3).
    Boolean(bool),
    /// `(` big number (RESP3), kept as text.
    BigNumber(Bytes),
    /// `=` verbatim string (RESP3): format and text.
    Verbatim(Bytes, Bytes),
}

/// An aggregate being filled while parsing.
struct Open {
    type_byte: u8,
    remaining: usize,
    items: Vec<Value>,
}

impl Open {
    /// The finished value; `None` for an attribute, which is dropped.
    fn finish(self) -> Option<Value> {
        match self.type_byte {
            b'*' => Some(Value::Array(self.items)),
            b'~' => Some(Value::Set(self.items)),
            b'>' => Some(Value::Push(self.items)),
            b'%' => {
                let mut pairs = Vec::with_capacity(self.items.len() / 2);
                let mut items = self.items.into_iter();
                while let (Some(k), Some(v)) = (items.next(), items.next()) {
                    pairs.push((k, v));
                }
                Some(Value::Map(pairs))
            }
            _ => None,
        }
    }
}

/// Error for a frame that ends early.
const INCOMPLETE: ProtocolError = ProtocolError::InvalidReply("incomplete frame");

impl Value {
    /// Parses one complete frame (as delimited by [`ReplyScanner`]).
    /// Attributes are dropped; nesting is capped at [`DEFAULT_MAX_DEPTH`].
    pub fn parse(frame: &[u8]) -> Result<Value, ProtocolError> {
        Value::parse_with_max_depth(frame, DEFAULT_MAX_DEPTH)
    }

    /// [`Value::parse`] with an explicit nesting cap.
    pub fn parse_with_max_depth(frame: &[u8], max_depth: usize) -> Result<Value, ProtocolError> {
        let mut pos = 0;
        let mut stack: Vec<Open> = Vec::new();
        loop {
            let &type_byte = frame.get(pos).ok_or(INCOMPLETE)?;
            let shape = shape_of(type_byte)?;
            let line_start = pos + 1;
            let cr = frame
                .get(line_start..)
                .and_then(|rest| rest.iter().position(|&b| b == b'\r'))
                .map(|i| line_start + i)
                .ok_or(INCOMPLETE)?;
            if frame.get(cr + 1) != Some(&b'\n') {
                return Err(ProtocolError::InvalidReply("line not terminated by CRLF"));
            }
            let line = frame.get(line_start..cr).unwrap_or(&[]);
            pos = cr + 2;
            let copy = Bytes::copy_from_slice;
            let mut item = match shape {
                Shape::Line => Some(match type_byte {
                    b'+' => Value::Simple(copy(line)),
                    b'-' => Value::Error(copy(line)),
                    b':' => Value::Integer(
                        parse_ll(line).ok_or(ProtocolError::InvalidReply("invalid integer"))?,
                    ),
                    b'_' => Value::Nil,
                    b',' => Value::Double(copy(line)),
                    b'#' => match line {
                        b"t" => Value::Boolean(true),
                        b"f" => Value::Boolean(false),
                        _ => return Err(ProtocolError::InvalidReply("invalid boolean")),
                    },
                    _ => Value::BigNumber(copy(line)),
                }),
                Shape::Blob => match header_len(line)? {
                    None => {
                        null_allowed(type_byte)?;
                        Some(Value::Nil)
                    }
                    Some(len) => {
                        let end = pos.checked_add(len).ok_or(INCOMPLETE)?;
                        let payload = frame.get(pos..end).ok_or(INCOMPLETE)?;
                        if frame.get(end..end + 2) != Some(b"\r\n") {
                            return Err(ProtocolError::InvalidReply(
                                "bulk string not followed by CRLF",
                            ));
                        }
                        pos = end + 2;
                        Some(match type_byte {
                            b'$' => Value::Bulk(copy(payload)),
                            b'!' => Value::Error(copy(payload)),
                            _ => match (payload.get(..3), payload.get(3), payload.get(4..)) {
                                (Some(format), Some(b':'), Some(text)) => {
                                    Value::Verbatim(copy(format), copy(text))
                                }
                                _ => {
                                    return Err(ProtocolError::InvalidReply(
                                        "invalid verbatim string",
                                    ))
                                }
                            },
                        })
                    }
                },
                Shape::Aggregate(factor) => match header_len(line)? {
                    None => {
                        null_allowed(type_byte)?;
                        Some(Value::Nil)
                    }
                    Some(n) => {
                        let count = n
                            .checked_mul(factor)
                            .ok_or(ProtocolError::InvalidReply("length too large"))?;
                        open_aggregate(&mut stack, type_byte, count, max_depth)?
                    }
                },
                Shape::Attribute => {
                    let count = header_len(line)?
                        .ok_or(ProtocolError::InvalidReply("invalid length"))?
                        .checked_mul(2)
                        .ok_or(ProtocolError::InvalidReply("length too large"))?;
                    open_aggregate(&mut stack, type_byte, count, max_depth)?;
                    None
                }
            };
            // Hand each finished item to its parent, finishing parents in turn.
            while let Some(value) = item.take() {
                let Some(parent) = stack.last_mut() else {
                    if pos != frame.len() {
                        return Err(ProtocolError::InvalidReply("trailing bytes after frame"));
                    }
                    return Ok(value);
                };
                parent.items.push(value);
                parent.remaining -= 1;
                if parent.remaining == 0 {
                    item = stack.pop().and_then(Open::finish);
                }
            }
        }
    }

    /// Appends this value's RESP encoding to `out`, keeping its own types.
    /// `Nil` is written as `$-1`, which RESP2 and RESP3 clients both read.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Value::Simple(s) => encode::simple_bytes(out, s),
            Value::Error(e) => encode::error_bytes(out, e),
            Value::Integer(n) => encode::integer(out, *n),
            Value::Bulk(b) => encode::bulk(out, b),
            Value::Nil => encode::nil(out, Protocol::Resp2),
            Value::Array(items) => {
                encode::array_header(out, items.len());
                items.iter().for_each(|v| v.encode(out));
            }
            Value::Map(pairs) => {
                encode::map_header(out, pairs.len(), Protocol::Resp3);
                for (k, v) in pairs {
                    k.encode(out);
                    v.encode(out);
                }
            }
            Value::Set(items) => {
                encode::set_header(out, items.len(), Protocol::Resp3);
                items.iter().for_each(|v| v.encode(out));
            }
            Value::Push(items) => {
                encode::push_header(out, items.len(), Protocol::Resp3);
                items.iter().for_each(|v| v.encode(out));
            }
            Value::Double(d) => encode::double_text(out, d, Protocol::Resp3),
            Value::Boolean(b) => encode::boolean(out, *b, Protocol::Resp3),
            Value::BigNumber(n) => encode::big_number(out, n, Protocol::Resp3),
            Value::Verbatim(format, text) => encode::verbatim(out, format, text, Protocol::Resp3),
        }
    }

    /// Appends this value shaped for a client speaking `proto`: RESP3 types
    /// become their RESP2 equivalents (maps flatten to arrays, doubles and
    /// big numbers to bulk strings, booleans to integers) for a RESP2 client.
    pub fn encode_for(&self, out: &mut BytesMut, proto: Protocol) {
        if proto == Protocol::Resp3 {
            return match self {
                Value::Nil => encode::nil(out, proto),
                Value::Array(items) => {
                    encode::array_header(out, items.len());
                    items.iter().for_each(|v| v.encode_for(out, proto));
                }
                Value::Map(pairs) => {
                    encode::map_header(out, pairs.len(), proto);
                    for (k, v) in pairs {
                        k.encode_for(out, proto);
                        v.encode_for(out, proto);
                    }
                }
                Value::Set(items) | Value::Push(items) => {
                    let header = if matches!(self, Value::Set(_)) {
                        encode::set_header
                    } else {
                        encode::push_header
                    };
                    header(out, items.len(), proto);
                    items.iter().for_each(|v| v.encode_for(out, proto));
                }
                other => other.encode(out),
            };
        }
        match self {
            Value::Array(items) | Value::Set(items) | Value::Push(items) => {
                encode::array_header(out, items.len());
                items.iter().for_each(|v| v.encode_for(out, proto));
            }
            Value::Map(pairs) => {
                encode::map_header(out, pairs.len(), proto);
                for (k, v) in pairs {
                    k.encode_for(out, proto);
                    v.encode_for(out, proto);
                }
            }
            Value::Double(d) => encode::double_text(out, d, proto),
            Value::Boolean(b) => encode::boolean(out, *b, proto),
            Value::BigNumber(n) => encode::big_number(out, n, proto),
            Value::Verbatim(format, text) => encode::verbatim(out, format, text, proto),
            other => other.encode(out),
        }
    }
}

/// Opens an aggregate while parsing; an empty one is returned finished.
fn open_aggregate(
    stack: &mut Vec<Open>,
    type_byte: u8,
    count: usize,
    max_depth: usize,
) -> Result<Option<Value>, ProtocolError> {
    let open = Open {
        type_byte,
        remaining: count,
        items: Vec::new(),
    };
    if count == 0 {
        return Ok(open.finish());
    }
    if stack.len() >= max_depth {
        return Err(ProtocolError::TooDeep(max_depth));
    }
    stack.push(Open {
        items: Vec::with_capacity(count.min(1024)),
        ..open
    });
    Ok(None)
}
