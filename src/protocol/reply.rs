//! The reply scanner: delimits backend replies (RESP2 and RESP3) without
//! copying them, and a small tree form for the few replies keygate rewrites.
//!
//! [`Replies`] carries a run of frames with the ends a scanner already
//! found, so whoever receives them splits them without scanning again.
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
use std::time::Instant;

use super::decimal::parse_ll;
use super::encode;
use super::{Protocol, ProtocolError};

/// Nesting cap of [`Value::parse`]: far deeper than any Redis reply, shallow
/// enough that dropping a parsed tree cannot exhaust the stack.
pub const DEFAULT_MAX_DEPTH: usize = 128;

/// Open levels a scanner keeps room for between frames; a deeper frame's
/// stack is freed once the frame ends.
const RETAINED_DEPTH: usize = 64;

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

/// Whether an error reply `frame` is a Redis Cluster node's redirect or
/// refusal (`-MOVED`, `-ASK`, `-TRYAGAIN`, `-CLUSTERDOWN`): settled by
/// whoever sent the request, never the key's own reply.
pub fn is_cluster_redirect(frame: &[u8]) -> bool {
    [&b"-MOVED "[..], b"-ASK ", b"-TRYAGAIN", b"-CLUSTERDOWN"]
        .iter()
        .any(|p| frame.starts_with(p))
}

impl ReplyKind {
    /// The kind of `frame`, a whole reply frame already delimited by a
    /// scanner: read off its first line without scanning it again.
    pub fn of_frame(frame: &[u8]) -> ReplyKind {
        let Some((&type_byte, rest)) = frame.split_first() else {
            return ReplyKind::Value;
        };
        let line = rest
            .iter()
            .position(|&b| b == b'\r')
            .and_then(|end| rest.get(..end))
            .unwrap_or(rest);
        kind_of(type_byte, line)
    }
}

/// A complete frame found in a buffer: `buf[..end]` from the scan start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameEnd {
    /// Offset just past the frame, relative to the buffer's front.
    pub end: usize,
    /// What the frame is.
    pub kind: ReplyKind,
}

/// Where each frame of a contiguous run of replies ends, in order: inline
/// for one or two frames (a lone command, a command and its follow-up), so
/// that case allocates nothing.
pub type FrameEnds = smallvec::SmallVec<[FrameEnd; 2]>;

/// Contiguous reply frames, with the boundaries of each when whoever read
/// them already scanned them (the multiplexed reader does), so the receiver
/// need not scan again. Without boundaries (`ends` empty) the receiver scans.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replies {
    /// The frames, back to back.
    pub bytes: Bytes,
    /// Each frame's end in `bytes` and its kind; empty when not delimited.
    pub ends: FrameEnds,
    /// When the write that carried the requests started, if whoever read
    /// the frames knows it (the multiplexed reader does): the backend time
    /// runs from here to the replies' arrival at their client.
    pub written_at: Option<Instant>,
}

impl From<Bytes> for Replies {
    /// Frames whose boundaries are unknown (the receiver scans them).
    fn from(bytes: Bytes) -> Replies {
        Replies {
            bytes,
            ends: FrameEnds::new(),
            written_at: None,
        }
    }
}

impl Replies {
    /// The frames one by one, with their kinds: read off the recorded
    /// boundaries, or scanned when there are none.
    pub fn frames(&self, max_depth: usize) -> Frames<'_> {
        let source = if self.ends.is_empty() {
            FrameSource::Scanned(ReplyScanner::new(max_depth))
        } else {
            FrameSource::Delimited(self.ends.iter())
        };
        Frames {
            bytes: &self.bytes,
            start: 0,
            source,
        }
    }

    /// The kind of the first frame, from its boundary when recorded.
    pub fn first_kind(&self) -> ReplyKind {
        match self.ends.first() {
            Some(end) => end.kind,
            None => ReplyKind::of_frame(&self.bytes),
        }
    }
}

/// Iterator over the frames of [`Replies`]; ends early (`None`) at a frame
/// that is incomplete or malformed, which the caller treats as a miscount.
#[derive(Debug)]
pub struct Frames<'a> {
    bytes: &'a [u8],
    /// Where the next frame starts in `bytes`.
    start: usize,
    source: FrameSource<'a>,
}

/// Where [`Frames`] learns each frame's end.
#[derive(Debug)]
enum FrameSource<'a> {
    /// Boundaries recorded by the reader.
    Delimited(std::slice::Iter<'a, FrameEnd>),
    /// No boundaries: scan.
    Scanned(ReplyScanner),
}

impl<'a> Iterator for Frames<'a> {
    type Item = (&'a [u8], ReplyKind);

    fn next(&mut self) -> Option<(&'a [u8], ReplyKind)> {
        let (end, kind) = match &mut self.source {
            FrameSource::Delimited(ends) => {
                let found = ends.next()?;
                (found.end, found.kind)
            }
            FrameSource::Scanned(scanner) => {
                // Frames stay in place: offsets are from the run's start.
                let found = scanner.next_frame(self.bytes).ok()??;
                (found.end, found.kind)
            }
        };
        let frame = self.bytes.get(self.start..end)?;
        self.start = end;
        Some((frame, kind))
    }
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

/// A whole non-aggregate frame at the start of `buf` (a line, or a blob
/// with its payload and CRLF all there), with its end relative to `buf`;
/// `None` for aggregates, incomplete frames and anything malformed, which
/// the general scanner then handles (and reports).
fn simple_frame(buf: &[u8]) -> Option<FrameEnd> {
    let (&type_byte, rest) = buf.split_first()?;
    let cr = rest.iter().position(|&b| b == b'\r')?;
    let line = rest.get(..cr)?;
    let after = cr + 3; // type byte, line, CRLF
    if buf.get(after - 1) != Some(&b'\n') {
        return None;
    }
    let end = match shape_of(type_byte).ok()? {
        Shape::Line => after,
        Shape::Blob => match parse_ll(line)? {
            -1 if type_byte == b'$' => after,
            len => {
                let payload_end = after.checked_add(usize::try_from(len).ok()?)?;
                if buf.get(payload_end..payload_end.checked_add(2)?)? != b"\r\n" {
                    return None;
                }
                payload_end + 2
            }
        },
        Shape::Aggregate(_) | Shape::Attribute => return None,
    };
    Some(FrameEnd {
        end,
        kind: kind_of(type_byte, line),
    })
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

    /// [`ReplyScanner::next_frame`] without the reset on error.
    fn next_frame_inner(&mut self, buf: &[u8]) -> Result<Option<FrameEnd>, ProtocolError> {
        if self.at_frame_start() {
            if let Some(frame) = buf.get(self.pos..).and_then(simple_frame) {
                // The common reply (a status, an integer, a bulk string) is
                // found whole in one step; anything else, or anything odd,
                // takes the general path below, which also reports errors.
                self.pos += frame.end;
                return Ok(Some(FrameEnd {
                    end: self.pos,
                    kind: frame.kind,
                }));
            }
        }
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
                if self.stack.capacity() > RETAINED_DEPTH {
                    // A deep frame (a script's reply) grew the stack: a
                    // connection's scanner lives long, so give it back.
                    self.stack = Vec::new();
                }
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

    /// Between frames: nothing open, nothing half-read.
    fn at_frame_start(&self) -> bool {
        self.stack.is_empty()
            && self.pending_crlf.is_none()
            && !self.frame_done
            && !self.top_attribute
            && self.searched == 0
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// All frames in `input` delivered in pieces of the given sizes, as
    /// (frame bytes, kind), using `next_frame` + `consume` on batches.
    fn frames_chunked(
        input: &[u8],
        chunks: impl IntoIterator<Item = usize>,
    ) -> Result<Vec<(Vec<u8>, ReplyKind)>, ProtocolError> {
        frames_chunked_with(input, DEFAULT_MAX_DEPTH, chunks)
    }

    /// [`frames_chunked`] with a given nesting cap.
    fn frames_chunked_with(
        input: &[u8],
        max_depth: usize,
        chunks: impl IntoIterator<Item = usize>,
    ) -> Result<Vec<(Vec<u8>, ReplyKind)>, ProtocolError> {
        let mut scanner = ReplyScanner::new(max_depth);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut rest = input;
        let mut sizes = chunks.into_iter();
        while !rest.is_empty() {
            let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            let mut taken = 0;
            while let Some(found) = scanner.next_frame(&buf)? {
                out.push((buf[taken..found.end].to_vec(), found.kind));
                taken = found.end;
            }
            let _ = buf.split_to(taken);
            scanner.consume(taken);
        }
        Ok(out)
    }

    fn scan_one(input: &[u8]) -> Result<Option<(Bytes, ReplyKind)>, ProtocolError> {
        ReplyScanner::new(DEFAULT_MAX_DEPTH).scan(&mut BytesMut::from(input))
    }

    #[test]
    fn every_type_is_delimited_with_its_kind() {
        let cases: &[(&[u8], ReplyKind)] = &[
            (b"+OK\r\n", ReplyKind::Value),
            (b"-ERR no\r\n", ReplyKind::Error),
            (b":12\r\n", ReplyKind::Value),
            (b"$3\r\na\r\n\r\n", ReplyKind::Value),
            (b"$0\r\n\r\n", ReplyKind::Value),
            (b"$-1\r\n", ReplyKind::Nil),
            (b"*-1\r\n", ReplyKind::Nil),
            (b"*0\r\n", ReplyKind::Value),
            (b"*2\r\n:1\r\n*1\r\n$1\r\nx\r\n", ReplyKind::Value),
            (b"%1\r\n+k\r\n*2\r\n:1\r\n:2\r\n", ReplyKind::Value),
            (b"~2\r\n+a\r\n+b\r\n", ReplyKind::Value),
            (
                b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n",
                ReplyKind::Push,
            ),
            (b"_\r\n", ReplyKind::Nil),
            (b",3.14\r\n", ReplyKind::Value),
            (b"#t\r\n", ReplyKind::Value),
            (b"(12345678901234567890\r\n", ReplyKind::Value),
            (b"!5\r\nERR x\r\n", ReplyKind::Error),
            (b"=7\r\ntxt:abc\r\n", ReplyKind::Value),
            (b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n", ReplyKind::Value),
            (b"|1\r\n+a\r\n+b\r\n|0\r\n-ERR x\r\n", ReplyKind::Error),
            (b"*2\r\n|1\r\n+a\r\n+b\r\n:1\r\n:2\r\n", ReplyKind::Value),
        ];
        for &(frame, kind) in cases {
            let mut input = frame.to_vec();
            input.extend_from_slice(b"+NEXT\r\n");
            let got = frames_chunked(&input, std::iter::empty()).unwrap();
            assert_eq!(
                got,
                vec![
                    (frame.to_vec(), kind),
                    (b"+NEXT\r\n".to_vec(), ReplyKind::Value)
                ],
                "{:?}",
                String::from_utf8_lossy(frame)
            );
            let one_by_one = frames_chunked(&input, std::iter::repeat(1)).unwrap();
            assert_eq!(one_by_one, got);
        }
    }

    #[test]
    fn next_frame_reports_several_before_consume() {
        let input = b"+A\r\n$2\r\nbb\r\n:3\r\n+partial";
        let mut scanner = ReplyScanner::new(8);
        let ends: Vec<_> = std::iter::from_fn(|| scanner.next_frame(input).unwrap()).collect();
        assert_eq!(
            ends.iter().map(|f| f.end).collect::<Vec<_>>(),
            vec![4, 12, 16]
        );
        let mut buf = BytesMut::from(&input[..]);
        let _ = buf.split_to(16);
        scanner.consume(16);
        buf.extend_from_slice(b"\r\n");
        assert_eq!(
            scanner.scan(&mut buf).unwrap(),
            Some((Bytes::from_static(b"+partial\r\n"), ReplyKind::Value))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn replies_split_by_recorded_ends_or_by_scanning_alike() {
        let run = b"+A\r\n*2\r\n:1\r\n$-1\r\n_\r\n-ERR x\r\n";
        let mut ends = FrameEnds::new();
        let mut scanner = ReplyScanner::new(8);
        while let Some(found) = scanner.next_frame(run).unwrap() {
            ends.push(found);
        }
        let delimited = Replies {
            bytes: Bytes::from_static(run),
            ends,
            written_at: None,
        };
        let scanned = Replies::from(Bytes::from_static(run));
        let expected: Vec<(&[u8], ReplyKind)> = vec![
            (b"+A\r\n", ReplyKind::Value),
            (b"*2\r\n:1\r\n$-1\r\n", ReplyKind::Value),
            (b"_\r\n", ReplyKind::Nil),
            (b"-ERR x\r\n", ReplyKind::Error),
        ];
        assert_eq!(delimited.frames(8).collect::<Vec<_>>(), expected);
        assert_eq!(scanned.frames(8).collect::<Vec<_>>(), expected);
        assert_eq!(delimited.first_kind(), ReplyKind::Value);
        assert_eq!(
            Replies::from(Bytes::from_static(b"$-1\r\n")).first_kind(),
            ReplyKind::Nil
        );
        // An incomplete tail ends the iteration rather than yield a partial frame.
        let cut = Replies::from(Bytes::from_static(b"+A\r\n$5\r\nab"));
        assert_eq!(cut.frames(8).count(), 1);
    }

    #[test]
    fn malformed_replies_are_errors() {
        let e = scan_one(b"?x\r\n").unwrap_err();
        assert_eq!(e, ProtocolError::InvalidReplyType(b'?'));
        assert_eq!(e.to_string(), "invalid reply type byte '?'");
        for bad in [
            &b"$x\r\n"[..],
            b"*-2\r\n",
            b"%-1\r\n",
            b"!-1\r\n",
            b"$3\r\nabcde\r\n",
            b"+a\rb\n",
        ] {
            let e = scan_one(bad).unwrap_err();
            assert!(
                matches!(e, ProtocolError::InvalidReply(_)),
                "{bad:?}: {e:?}"
            );
            assert!(e.to_string().starts_with("invalid reply: "));
        }
        assert_eq!(scan_one(b"$5\r\nab"), Ok(None));
    }

    #[test]
    fn deep_nesting_is_refused_quickly() {
        let input = b"*1\r\n".repeat(100_000);
        let mut scanner = ReplyScanner::new(DEFAULT_MAX_DEPTH);
        let e = scanner.next_frame(&input).unwrap_err();
        assert_eq!(e, ProtocolError::TooDeep(DEFAULT_MAX_DEPTH));
        assert_eq!(e.to_string(), "nesting deeper than 128 levels");
        assert_eq!(
            Value::parse(&input),
            Err(ProtocolError::TooDeep(DEFAULT_MAX_DEPTH))
        );
        // Exactly at the cap is fine.
        let mut ok = b"*1\r\n".repeat(DEFAULT_MAX_DEPTH);
        ok.extend_from_slice(b":1\r\n");
        assert_eq!(scan_one(&ok).unwrap().map(|f| f.0.len()), Some(ok.len()));
        assert!(Value::parse(&ok).is_ok());
        // Attributes count towards the depth.
        let attrs = b"|1\r\n".repeat(100_000);
        assert!(matches!(
            ReplyScanner::new(4).next_frame(&attrs),
            Err(ProtocolError::TooDeep(4))
        ));
    }

    /// A backend scanner (no cap) reads a script's reply as deep as Redis
    /// makes it, in small reads, with the frame after it intact, and no
    /// recursion: a million levels would overflow any call stack.
    #[test]
    fn backend_replies_are_read_at_any_depth() {
        let depth = 1_000_000;
        let mut input = b"*1\r\n".repeat(depth);
        input.extend_from_slice(b":1\r\n+OK\r\n");
        let frames = frames_chunked_with(&input, usize::MAX, [4096; 2000]).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].0.len(), depth * 4 + 4);
        assert_eq!(frames[1].0, b"+OK\r\n");
        // Same in one read, and the deep stack is given back afterwards.
        let mut scanner = ReplyScanner::new(usize::MAX);
        let found = scanner.next_frame(&input).unwrap().unwrap();
        assert_eq!(found.end, depth * 4 + 4);
        assert!(scanner.stack.capacity() <= RETAINED_DEPTH);
    }

    #[test]
    fn big_bulk_in_small_reads() {
        let payload = vec![b'z'; 50 * 1024 * 1024];
        let mut input = format!("${}\r\n", payload.len()).into_bytes();
        input.extend_from_slice(&payload);
        input.extend_from_slice(b"\r\n:1\r\n");
        let mut scanner = ReplyScanner::new(8);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for chunk in input.chunks(64 * 1024) {
            buf.extend_from_slice(chunk);
            while let Some(frame) = scanner.scan(&mut buf).unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].0.len(), input.len() - 4);
        assert_eq!(frames[1].0.as_ref(), b":1\r\n");
    }

    #[test]
    fn parse_and_encode() {
        let frame = b"*7\r\n+OK\r\n:-5\r\n$-1\r\n%1\r\n$1\r\nk\r\n~1\r\n#f\r\n,1.5\r\n=7\r\ntxt:abc\r\n|1\r\n+a\r\n+b\r\n(9\r\n";
        let value = Value::parse(frame).unwrap();
        assert_eq!(
            value,
            Value::Array(vec![
                Value::Simple(Bytes::from_static(b"OK")),
                Value::Integer(-5),
                Value::Nil,
                Value::Map(vec![(
                    Value::Bulk(Bytes::from_static(b"k")),
                    Value::Set(vec![Value::Boolean(false)])
                )]),
                Value::Double(Bytes::from_static(b"1.5")),
                Value::Verbatim(Bytes::from_static(b"txt"), Bytes::from_static(b"abc")),
                Value::BigNumber(Bytes::from_static(b"9")),
            ])
        );
        let mut out = BytesMut::new();
        value.encode(&mut out);
        assert_eq!(Value::parse(&out).unwrap(), value);
        let mut resp2 = BytesMut::new();
        value.encode_for(&mut resp2, Protocol::Resp2);
        assert_eq!(
            resp2.as_ref(),
            &b"*7\r\n+OK\r\n:-5\r\n$-1\r\n*2\r\n$1\r\nk\r\n*1\r\n:0\r\n$3\r\n1.5\r\n$3\r\nabc\r\n$1\r\n9\r\n"[..]
        );
        let mut resp3 = BytesMut::new();
        Value::Array(vec![Value::Nil]).encode_for(&mut resp3, Protocol::Resp3);
        assert_eq!(resp3.as_ref(), b"*1\r\n_\r\n");
        assert_eq!(
            Value::parse(b"!3\r\nERR\r\n"),
            Ok(Value::Error(Bytes::from_static(b"ERR")))
        );
        assert!(Value::parse(b"+OK\r\n+extra\r\n").is_err());
        assert!(Value::parse(b"*2\r\n:1\r\n").is_err());
        assert!(Value::parse(b"=3\r\ntxt\r\n").is_err());
        assert!(Value::parse(b":x\r\n").is_err());
    }

    fn line_text() -> impl Strategy<Value = Bytes> {
        "[a-zA-Z0-9 :._-]{0,12}".prop_map(Bytes::from)
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let binary = prop::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from);
        let leaf = prop_oneof![
            line_text().prop_map(Value::Simple),
            line_text().prop_map(Value::Error),
            any::<i64>().prop_map(Value::Integer),
            binary.clone().prop_map(Value::Bulk),
            Just(Value::Nil),
            any::<f64>().prop_map(|x| Value::Double(Bytes::from(x.to_string()))),
            any::<bool>().prop_map(Value::Boolean),
            "-?[1-9][0-9]{0,30}".prop_map(|s| Value::BigNumber(Bytes::from(s))),
            ("[a-z]{3}", binary).prop_map(|(f, t)| Value::Verbatim(Bytes::from(f), t)),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            let items = prop::collection::vec(inner.clone(), 0..6);
            prop_oneof![
                items.clone().prop_map(Value::Array),
                items.clone().prop_map(Value::Set),
                items.prop_map(Value::Push),
                prop::collection::vec((inner.clone(), inner), 0..4).prop_map(Value::Map),
            ]
        })
    }

    fn kind_of_value(value: &Value) -> ReplyKind {
        match value {
            Value::Error(_) => ReplyKind::Error,
            Value::Nil => ReplyKind::Nil,
            Value::Push(_) => ReplyKind::Push,
            _ => ReplyKind::Value,
        }
    }

    /// A nest of `depth` aggregates of mixed types, each holding the next
    /// one and `extra` scalars, around `leaf`.
    fn nested(depth: usize, types: &[u8], extra: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for level in 0..depth {
            let t = types[level % types.len()];
            let (count, pairs) = match t {
                b'%' => ((extra + 2) / 2, true),
                _ => (extra + 1, false),
            };
            out.extend_from_slice(format!("{}{}\r\n", t as char, count).as_bytes());
            let scalars = if pairs { count * 2 - 1 } else { count - 1 };
            for _ in 0..scalars {
                out.extend_from_slice(b":7\r\n");
            }
        }
        out.extend_from_slice(b"$4\r\nleaf\r\n");
        out
    }

    proptest! {
        /// Deep frames of any aggregate mix are delimited exactly, whatever
        /// the read sizes, by a scanner without a cap.
        #[test]
        fn deep_frames_are_delimited_in_any_reads(
            depth in 65usize..3000,
            types in prop::collection::vec(prop::sample::select(vec![b'*', b'~', b'%', b'>']), 1..4),
            extra in 0usize..3,
            chunks in prop::collection::vec(1usize..5000, 0..40),
        ) {
            let frame = nested(depth, &types, extra);
            let mut input = frame.clone();
            input.extend_from_slice(b"+OK\r\n");
            let frames = frames_chunked_with(&input, usize::MAX, chunks).unwrap();
            prop_assert_eq!(frames.len(), 2);
            prop_assert_eq!(&frames[0].0, &frame);
            prop_assert_eq!(&frames[1].0[..], &b"+OK\r\n"[..]);
        }

        #[test]
        fn encoded_values_are_delimited_and_round_trip(
            values in prop::collection::vec(arb_value(), 1..5),
            chunks in prop::collection::vec(1usize..40, 0..30),
        ) {
            let mut input = BytesMut::new();
            let mut expected = Vec::new();
            for value in &values {
                let start = input.len();
                value.encode(&mut input);
                expected.push((input[start..].to_vec(), kind_of_value(value)));
                prop_assert_eq!(&Value::parse(&input[start..]).unwrap(), value);
            }
            prop_assert_eq!(&frames_chunked(&input, chunks).unwrap(), &expected);
            // RESP2 downgrades are still single frames RESP2 can read.
            for value in &values {
                let mut resp2 = BytesMut::new();
                value.encode_for(&mut resp2, Protocol::Resp2);
                let decoded = redis_protocol::resp2::decode::decode(&resp2).unwrap();
                prop_assert_eq!(decoded.map(|(_, n)| n), Some(resp2.len()));
            }
        }
    }
}
