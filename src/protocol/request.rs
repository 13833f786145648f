//! The request scanner: client bytes in, [`Request`]s out.
//!
//! Invariants: a request is kept as its canonical RESP multibulk bytes plus
//! the offsets of each argument, so a key rewrite splices in only what
//! changes; "incomplete" is `Ok(None)`, never an error; scanning resumes where
//! the last call stopped instead of starting the frame again.
//!
//! The accepted grammar and the error for each malformed input follow Redis
//! 7.0's `processMultibulkBuffer` and `processInlineBuffer`, so a client sees
//! the same `Protocol error` through keygate as from Redis itself. Every
//! offset in a frame fits in a `u32`: the scanner refuses larger requests.

use std::cell::RefCell;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use smallvec::SmallVec;

use super::decimal::{decimal_len, parse_ll};
use super::ProtocolError;

/// Longest `*N` or `$N` header line Redis waits for (`PROTO_INLINE_MAX_SIZE`).
const MAX_HEADER_LINE: usize = 64 * 1024;

/// Most bytes reserved ahead of a bulk payload beyond what already arrived, so
/// a client announcing a huge bulk and sending nothing costs little memory.
const MAX_RESERVE_AHEAD: usize = 1024 * 1024;

/// Arguments kept inline, enough for the common short commands.
const INLINE_ARGS: usize = 5;

/// Argument spans, inline for the common short commands (no heap allocation).
type ArgSpans = SmallVec<[ArgSpan; INLINE_ARGS]>;

/// Limits that keep one client from making keygate buffer without bound.
#[derive(Debug, Clone, Copy)]
pub struct ScanLimits {
    /// Longest bulk argument accepted (Redis's `proto-max-bulk-len`, 512 MB).
    pub max_bulk_len: usize,
    /// Most arguments in one request (Redis allows 1024*1024).
    pub max_args: usize,
    /// Longest inline request line (Redis allows 64 KiB).
    pub max_inline_len: usize,
}

impl Default for ScanLimits {
    fn default() -> Self {
        ScanLimits {
            max_bulk_len: 512 * 1024 * 1024,
            max_args: 1024 * 1024,
            max_inline_len: 64 * 1024,
        }
    }
}

/// Where one argument sits inside [`Request::frame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgSpan {
    /// Offset of the argument's first byte.
    pub start: u32,
    /// Length of the argument in bytes.
    pub len: u32,
}

impl ArgSpan {
    /// Offset of the first byte of the argument.
    fn start(self) -> usize {
        self.start as usize
    }

    /// Offset just past the argument's payload (before its `\r\n`).
    fn end(self) -> usize {
        self.start as usize + self.len as usize
    }

    /// Offset of the `$` that starts this argument's header. Valid because
    /// scanned headers are canonical decimal (Redis's `string2ll` refuses
    /// signs and leading zeros) followed by exactly two line-end bytes.
    fn header_start(self) -> usize {
        self.start()
            .saturating_sub(3 + decimal_len(self.len as usize))
    }
}

/// A `u32` offset; saturates for frames beyond 4 GiB, which the scanner refuses.
fn offset32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Length of the `$len\r\n` header of a bulk of `len` bytes.
fn bulk_header_len(len: usize) -> usize {
    3 + decimal_len(len)
}

/// Appends `<prefix><n>\r\n`.
fn put_len_line(out: &mut BytesMut, prefix: u8, n: usize) {
    let mut digits = itoa::Buffer::new();
    out.put_u8(prefix);
    out.put_slice(digits.format(n).as_bytes());
    out.put_slice(b"\r\n");
}

/// Appends one bulk argument and records where its payload sits.
fn put_bulk_arg(out: &mut BytesMut, spans: &mut ArgSpans, arg: &[u8]) {
    put_len_line(out, b'$', arg.len());
    spans.push(ArgSpan {
        start: offset32(out.len()),
        len: offset32(arg.len()),
    });
    out.put_slice(arg);
    out.put_slice(b"\r\n");
}

/// Moves the spans in `range` `by` bytes further into the frame.
fn shift_spans(spans: &mut ArgSpans, range: std::ops::Range<usize>, by: usize) {
    if by == 0 {
        return;
    }
    for span in spans.get_mut(range).unwrap_or(&mut []) {
        span.start = offset32(span.start() + by);
    }
}

/// Size of each shared buffer small rewritten frames are carved from.
const FRAME_ARENA_CHUNK: usize = 16 * 1024;

/// Largest frame carved from the shared buffer; bigger ones get their own.
const FRAME_ARENA_MAX: usize = 1024;

thread_local! {
    /// This thread's buffer for small rewritten frames. Each frame is split
    /// off it, so a rewrite costs no allocation of its own and the frame's
    /// clones (queued for the backend writer) are reference-count bumps; a
    /// chunk is freed when the last frame carved from it is dropped.
    static FRAME_ARENA: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// A frame of `len` bytes written by `write` (which must write exactly
/// `len` bytes for the carving to stay exact; more only costs a copy).
fn build_frame(len: usize, write: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut write = Some(write);
    if len <= FRAME_ARENA_MAX {
        let carved = FRAME_ARENA
            .try_with(|arena| {
                let mut arena = arena.try_borrow_mut().ok()?;
                if arena.capacity() < len {
                    *arena = BytesMut::with_capacity(FRAME_ARENA_CHUNK);
                }
                (write.take()?)(&mut arena);
                Some(arena.split().freeze())
            })
            .ok()
            .flatten();
        if let Some(frame) = carved {
            return frame;
        }
    }
    let mut out = BytesMut::with_capacity(len);
    if let Some(write) = write {
        write(&mut out);
    }
    out.freeze()
}

/// Arguments encoded once as RESP bulk strings, to be appended to requests
/// by [`Request::append_encoded`] as one copy, with no number formatted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedArgs {
    bytes: Bytes,
    /// Where each argument sits in `bytes`.
    spans: ArgSpans,
}

impl EncodedArgs {
    /// Encodes `args`.
    pub fn new<A: AsRef<[u8]>>(args: &[A]) -> EncodedArgs {
        let len = args
            .iter()
            .map(|a| bulk_header_len(a.as_ref().len()) + a.as_ref().len() + 2)
            .sum();
        let mut spans = ArgSpans::with_capacity(args.len());
        let mut out = BytesMut::with_capacity(len);
        for arg in args {
            put_bulk_arg(&mut out, &mut spans, arg.as_ref());
        }
        EncodedArgs {
            bytes: out.freeze(),
            spans,
        }
    }
}

/// One client command: canonical multibulk bytes plus argument offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    frame: Bytes,
    args: ArgSpans,
}

impl Request {
    /// Builds a request from arguments, encoding it as a RESP multibulk.
    pub fn from_args<A: AsRef<[u8]>>(args: &[A]) -> Request {
        let total = bulk_header_len(args.len())
            + args
                .iter()
                .map(|a| bulk_header_len(a.as_ref().len()) + a.as_ref().len() + 2)
                .sum::<usize>();
        let mut spans = ArgSpans::with_capacity(args.len());
        let frame = build_frame(total, |out| {
            put_len_line(out, b'*', args.len());
            for arg in args {
                put_bulk_arg(out, &mut spans, arg.as_ref());
            }
        });
        Request { frame, args: spans }
    }

    /// The canonical RESP multibulk bytes, ready to write to a backend.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// The frame, taken without touching its reference count.
    pub fn into_frame(self) -> Bytes {
        self.frame
    }

    /// Number of arguments, the command name included.
    pub fn argc(&self) -> usize {
        self.args.len()
    }

    /// Argument `i` (0 is the command name), or `None` past the end.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let span = self.args.get(i)?;
        self.frame.get(span.start()..span.end())
    }

    /// Argument `i` as a slice of the frame (no copy), or `None` past the end.
    pub fn arg_bytes(&self, i: usize) -> Option<Bytes> {
        let span = self.args.get(i)?;
        (span.end() <= self.frame.len()).then(|| self.frame.slice(span.start()..span.end()))
    }

    /// All arguments in order.
    pub fn args(&self) -> impl Iterator<Item = &[u8]> + '_ {
        (0..self.args.len()).filter_map(move |i| self.get(i))
    }

    /// A new request with argument `i` replaced by `with` for each edit;
    /// `edits` are sorted by index. Unchanged bytes are copied once, in runs.
    ///
    /// Edits past the last argument, or out of order, are ignored.
    pub fn splice(&self, edits: &[(usize, &[u8])]) -> Request {
        self.rewrite(edits.iter().copied())
    }

    /// A new request with `prefix` put in front of each argument in `indexes`
    /// (sorted, no duplicates): the namespace rewrite's fast path.
    ///
    /// Indexes past the last argument, or out of order, are ignored.
    ///
    /// The new frame is written once, in runs: everything from one key's
    /// payload up to the next key's header is a single copy; the spans are
    /// the old ones shifted by how much the frame has grown so far.
    pub fn prefix_args(&self, indexes: &[usize], prefix: &[u8]) -> Request {
        if prefix.is_empty() || indexes.is_empty() {
            return self.clone();
        }
        if let [only] = indexes {
            return self.prefix_arg(*only, prefix);
        }
        let argc = self.args.len();
        let keys = || {
            let mut next_allowed = 0;
            indexes.iter().filter_map(move |&i| {
                if i < next_allowed || i >= argc {
                    return None;
                }
                next_allowed = i + 1;
                self.args.get(i).map(|span| (i, *span))
            })
        };
        let mut new_len = self.frame.len();
        for (_, span) in keys() {
            let old = span.len as usize;
            new_len += prefix.len() + bulk_header_len(old + prefix.len()) - bulk_header_len(old);
        }
        let mut spans = ArgSpans::from_slice(&self.args);
        let frame = build_frame(new_len, |out| {
            // Offset in the old frame up to which bytes are already in `out`.
            let mut copied = 0;
            // How far the bytes after `copied` move in the new frame.
            let mut shift = 0;
            // Spans before this index are already shifted.
            let mut shifted = 0;
            for (i, span) in keys() {
                out.put_slice(self.frame.get(copied..span.header_start()).unwrap_or(&[]));
                shift_spans(&mut spans, shifted..i, shift);
                let new_len = span.len as usize + prefix.len();
                put_len_line(out, b'$', new_len);
                if let Some(edited) = spans.get_mut(i) {
                    *edited = ArgSpan {
                        start: offset32(out.len()),
                        len: offset32(new_len),
                    };
                }
                out.put_slice(prefix);
                // The key's own bytes go out with the run that follows it.
                shift = out.len() - span.start();
                copied = span.start();
                shifted = i + 1;
            }
            out.put_slice(self.frame.get(copied..).unwrap_or(&[]));
            shift_spans(&mut spans, shifted..argc, shift);
        });
        Request { frame, args: spans }
    }

    /// A new request with `prefix` put in front of argument `i` alone (GET,
    /// SET, INCR, ...): [`Request::prefix_args`] for one key, written as the
    /// frame's head, the new `$len` line, the prefix and the frame's tail,
    /// with the later spans shifted by one fixed amount.
    ///
    /// An index past the last argument leaves the request as it is.
    pub fn prefix_arg(&self, i: usize, prefix: &[u8]) -> Request {
        let Some(span) = self.args.get(i).copied() else {
            return self.clone();
        };
        if prefix.is_empty() {
            return self.clone();
        }
        let key_len = span.len as usize + prefix.len();
        let key_start = span.header_start() + bulk_header_len(key_len);
        let new_len = self.prefixed_len(i, prefix);
        // Everything from the key's own bytes on moves by the same amount.
        let shift = (key_start + prefix.len()).saturating_sub(span.start());
        // A plain copy: `SmallVec::clone` goes element by element.
        let mut spans = ArgSpans::from_slice(&self.args);
        if let Some(edited) = spans.get_mut(i) {
            *edited = ArgSpan {
                start: offset32(key_start),
                len: offset32(key_len),
            };
        }
        shift_spans(&mut spans, i + 1..self.args.len(), shift);
        let frame = build_frame(new_len, |out| self.write_prefixed(i, prefix, out));
        Request { frame, args: spans }
    }

    /// The frame [`Request::prefix_arg`] would build, appended to `out`
    /// without building it: for a batch that gathers its frames in one
    /// buffer anyway, the one-key rewrite then costs no frame of its own.
    /// The caller reserves [`Request::prefixed_len`] bytes first (`out`
    /// grows as needed otherwise, one step at a time).
    pub fn write_prefixed(&self, i: usize, prefix: &[u8], out: &mut BytesMut) {
        match self.around_arg(i).filter(|_| !prefix.is_empty()) {
            Some((head, len, tail)) => {
                out.put_slice(head);
                put_len_line(out, b'$', len + prefix.len());
                out.put_slice(prefix);
                out.put_slice(tail);
            }
            None => out.extend_from_slice(&self.frame),
        }
    }

    /// [`Request::write_prefixed`] with the key's new `$len` line and the
    /// prefix given as one `header` (`$<len + prefix>\r\n<prefix>`, which
    /// the caller checked against the key's length), for a namespace that
    /// keeps those lines ready.
    pub fn write_with_key_header(&self, i: usize, header: &[u8], out: &mut BytesMut) {
        match self.around_arg(i) {
            Some((head, _, tail)) => {
                out.put_slice(head);
                out.put_slice(header);
                out.put_slice(tail);
            }
            None => out.extend_from_slice(&self.frame),
        }
    }

    /// The frame's bytes before argument `i`'s `$len` line, its length, and
    /// the bytes from its payload on.
    fn around_arg(&self, i: usize) -> Option<(&[u8], usize, &[u8])> {
        let span = self.args.get(i)?;
        let head = self.frame.get(..span.header_start())?;
        let tail = self.frame.get(span.start()..)?;
        Some((head, span.len as usize, tail))
    }

    /// The length of argument `i`, if there is one.
    pub fn arg_len(&self, i: usize) -> Option<usize> {
        self.args.get(i).map(|span| span.len as usize)
    }

    /// The length of the frame with `prefix` put in front of argument `i`.
    pub fn prefixed_len(&self, i: usize, prefix: &[u8]) -> usize {
        match self.args.get(i) {
            Some(span) if !prefix.is_empty() => {
                let old = span.len as usize;
                self.frame.len() + prefix.len() + bulk_header_len(old + prefix.len())
                    - bulk_header_len(old)
            }
            _ => self.frame.len(),
        }
    }

    /// A new request with `extra` arguments added at the end (a TTL option
    /// on a SET): only the `*N` header changes, the rest is one copy.
    pub fn append_args(&self, extra: &[&[u8]]) -> Request {
        self.append_encoded(&EncodedArgs::new(extra))
    }

    /// [`Request::append_args`] with arguments encoded beforehand, for
    /// arguments a policy adds to many requests (`PX <default>`).
    pub fn append_encoded(&self, extra: &EncodedArgs) -> Request {
        if extra.spans.is_empty() {
            return self.clone();
        }
        let argc = self.args.len();
        let new_argc = argc + extra.spans.len();
        let old_header = bulk_header_len(argc);
        let new_header = bulk_header_len(new_argc);
        let body = self.frame.get(old_header..).unwrap_or(&[]);
        let mut spans = ArgSpans::with_capacity(new_argc);
        spans.extend_from_slice(&self.args);
        // The header may only grow (9 arguments become 10 or more).
        shift_spans(&mut spans, 0..argc, new_header.saturating_sub(old_header));
        let base = offset32(new_header + body.len());
        spans.extend(extra.spans.iter().map(|span| ArgSpan {
            start: span.start.saturating_add(base),
            len: span.len,
        }));
        let frame = build_frame(new_header + body.len() + extra.bytes.len(), |out| {
            put_len_line(out, b'*', new_argc);
            out.put_slice(body);
            out.put_slice(&extra.bytes);
        });
        Request { frame, args: spans }
    }

    /// Applies `edits` (by ascending argument index) in one pass over the frame.
    fn rewrite<'a, I>(&self, edits: I) -> Request
    where
        I: Iterator<Item = (usize, &'a [u8])> + Clone,
    {
        let argc = self.args.len();
        let valid = |edits: I| {
            let mut next_allowed = 0;
            edits.filter(move |&(i, _)| {
                let ok = i >= next_allowed && i < argc;
                if ok {
                    next_allowed = i + 1;
                }
                ok
            })
        };

        // Exact size of the new frame, so the output is allocated once.
        let mut new_len = self.frame.len();
        for (i, with) in valid(edits.clone()) {
            let Some(span) = self.args.get(i) else {
                continue;
            };
            let old = span.len as usize;
            let new = with.len();
            new_len = new_len - bulk_header_len(old) - old + bulk_header_len(new) + new;
        }

        let mut out = BytesMut::with_capacity(new_len);
        let mut spans = ArgSpans::with_capacity(argc);
        // Offset in the old frame up to which bytes are already in `out`.
        let mut copied = 0;
        // Index of the next argument whose span is still to be recorded.
        let mut next_arg = 0;
        for (i, with) in valid(edits) {
            let Some(span) = self.args.get(i).copied() else {
                continue;
            };
            let header = span.header_start();
            // Unchanged arguments before this one keep their bytes; their
            // offsets shift by how much the output has grown or shrunk.
            for old in self.args.get(next_arg..i).unwrap_or(&[]) {
                let shifted = out.len() + old.start() - copied;
                spans.push(ArgSpan {
                    start: offset32(shifted),
                    len: old.len,
                });
            }
            out.put_slice(self.frame.get(copied..header).unwrap_or(&[]));
            put_len_line(&mut out, b'$', with.len());
            spans.push(ArgSpan {
                start: offset32(out.len()),
                len: offset32(with.len()),
            });
            out.put_slice(with);
            out.put_slice(b"\r\n");
            copied = (span.end() + 2).min(self.frame.len());
            next_arg = i + 1;
        }
        for old in self.args.get(next_arg..).unwrap_or(&[]) {
            let shifted = old.start() + out.len() - copied;
            spans.push(ArgSpan {
                start: offset32(shifted),
                len: old.len,
            });
        }
        out.put_slice(self.frame.get(copied..).unwrap_or(&[]));
        Request {
            frame: out.freeze(),
            args: spans,
        }
    }
}

/// Resumable scanner of client requests (multibulk and inline).
#[derive(Debug)]
pub struct RequestScanner {
    limits: ScanLimits,
    /// Arguments the multibulk in progress announced; 0 when none is in progress.
    expected: usize,
    /// Offset in the buffer where scanning of the multibulk resumes.
    pos: usize,
    /// Length of the bulk whose header was read but whose payload has not
    /// fully arrived; its payload starts at `pos`.
    bulk_len: Option<usize>,
    /// Spans of the arguments of the multibulk in progress found so far.
    args: ArgSpans,
    /// Offset up to which the current header or inline line was searched
    /// for its terminator without finding it, so a slow line is not rescanned.
    searched: usize,
}

/// What finding a line terminator produced.
enum Line {
    /// The terminator is at this offset.
    At(usize),
    /// Not there yet.
    Incomplete,
}

impl RequestScanner {
    /// A scanner enforcing `limits`.
    pub fn new(limits: ScanLimits) -> Self {
        RequestScanner {
            limits,
            expected: 0,
            pos: 0,
            bulk_len: None,
            args: ArgSpans::new(),
            searched: 0,
        }
    }

    /// Takes the next complete request off the front of `buf`, `Ok(None)` when
    /// more bytes are needed. Empty inline lines and `*0` are skipped, as Redis does.
    pub fn scan(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        let result = self.scan_inner(buf);
        if result.is_err() {
            self.reset();
        }
        result
    }

    /// Forgets any request in progress.
    fn reset(&mut self) {
        self.expected = 0;
        self.pos = 0;
        self.bulk_len = None;
        self.args.clear();
        self.searched = 0;
    }

    /// Finds `needle` at or after `from`, resuming the search where the last
    /// unsuccessful one stopped.
    fn find_byte(&mut self, buf: &[u8], from: usize, needle: u8) -> Line {
        let start = self.searched.max(from);
        match buf
            .get(start..)
            .and_then(|rest| rest.iter().position(|&b| b == needle))
        {
            Some(i) => {
                self.searched = 0;
                Line::At(start + i)
            }
            None => {
                self.searched = buf.len();
                Line::Incomplete
            }
        }
    }

    /// [`RequestScanner::scan`] without the reset on error.
    #[inline]
    fn scan_inner(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        if self.expected == 0 {
            if let Some((len, args)) = whole_small_request(buf, self.limits.max_bulk_len) {
                self.searched = 0;
                let frame = buf.split_to(len).freeze();
                return Ok(Some(Request { frame, args }));
            }
        }
        loop {
            if self.expected == 0 {
                match buf.first() {
                    None => return Ok(None),
                    Some(b'*') => {
                        if !self.start_multibulk(buf)? {
                            return Ok(None);
                        }
                        if self.expected == 0 {
                            continue; // `*0` or negative: skipped.
                        }
                    }
                    Some(_) => match self.scan_inline(buf)? {
                        InlineOutcome::Incomplete => return Ok(None),
                        InlineOutcome::Empty => continue,
                        InlineOutcome::Request(req) => return Ok(Some(req)),
                    },
                }
            }
            return self.continue_multibulk(buf);
        }
    }

    /// Reads the `*N` header at the buffer front. `Ok(false)` when incomplete;
    /// a non-positive count consumes the header and leaves `expected` at 0.
    fn start_multibulk(&mut self, buf: &mut BytesMut) -> Result<bool, ProtocolError> {
        if let Some((count, next)) = quick_header(buf, 0, b'*') {
            if count > 0 && count <= self.limits.max_args {
                self.searched = 0;
                self.expected = count;
                self.pos = next;
                self.args.clear();
                if count > self.args.inline_size() {
                    self.args.reserve(count.min(1024));
                }
                return Ok(true);
            }
        }
        let cr = match self.find_byte(buf, 0, b'\r') {
            Line::At(cr) => cr,
            Line::Incomplete => {
                if buf.len() > MAX_HEADER_LINE {
                    return Err(ProtocolError::InvalidMultibulkLength);
                }
                return Ok(false);
            }
        };
        if cr + 2 > buf.len() {
            self.searched = cr; // Wait for the byte after `\r`.
            return Ok(false);
        }
        let count = buf
            .get(1..cr)
            .and_then(parse_ll)
            .ok_or(ProtocolError::InvalidMultibulkLength)?;
        if count > 0 && count as u64 > self.limits.max_args as u64 {
            return Err(ProtocolError::InvalidMultibulkLength);
        }
        if count <= 0 {
            buf.advance(cr + 2);
            return Ok(true);
        }
        self.expected = count as usize;
        self.pos = cr + 2;
        self.args.clear();
        if self.expected > self.args.inline_size() {
            self.args.reserve(self.expected.min(1024));
        }
        Ok(true)
    }

    /// Scans bulk arguments from `pos` until the multibulk is complete.
    #[inline]
    fn continue_multibulk(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        let mut remaining = self.expected - self.args.len();
        while remaining > 0 {
            let len = match self.bulk_len.take() {
                Some(len) => len,
                None => match quick_header(buf, self.pos, b'$') {
                    Some((len, next)) if len <= self.limits.max_bulk_len => {
                        self.searched = 0;
                        self.pos = next;
                        len
                    }
                    _ => match self.read_bulk_header(buf)? {
                        Some(len) => len,
                        None => return Ok(None),
                    },
                },
            };
            let end = self.pos + len + 2;
            if end > u32::MAX as usize {
                return Err(ProtocolError::InvalidBulkLength);
            }
            if end > buf.len() {
                self.bulk_len = Some(len);
                reserve_for(buf, end);
                return Ok(None);
            }
            // Both fit: `end` was checked against `u32::MAX` above.
            self.args.push(ArgSpan {
                start: self.pos as u32,
                len: len as u32,
            });
            self.pos = end;
            remaining -= 1;
        }
        let frame = buf.split_to(self.pos).freeze();
        let args = std::mem::take(&mut self.args);
        self.expected = 0;
        self.pos = 0;
        let request = Request { frame, args };
        if has_canonical_line_ends(&request) {
            Ok(Some(request))
        } else {
            // Redis skips the two bytes after each `\r` of a header and
            // after each payload without looking at them, and so does the
            // scanner; the backend gets the canonical bytes, so it parses
            // exactly what keygate understood whatever those bytes were.
            let args: SmallVec<[&[u8]; 8]> = request.args().collect();
            Ok(Some(Request::from_args(&args)))
        }
    }

    /// Reads the `$len` header at `pos`, moving `pos` to the payload.
    fn read_bulk_header(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        let cr = match self.find_byte(buf, self.pos, b'\r') {
            Line::At(cr) => cr,
            Line::Incomplete => {
                if buf.len() - self.pos > MAX_HEADER_LINE {
                    return Err(ProtocolError::InvalidBulkLength);
                }
                return Ok(None);
            }
        };
        if cr + 2 > buf.len() {
            self.searched = cr;
            return Ok(None);
        }
        match buf.get(self.pos) {
            Some(b'$') => {}
            Some(&other) => return Err(ProtocolError::ExpectedBulk(other)),
            None => return Ok(None),
        }
        let len = buf
            .get(self.pos + 1..cr)
            .and_then(parse_ll)
            .ok_or(ProtocolError::InvalidBulkLength)?;
        if len < 0 || len as u64 > self.limits.max_bulk_len as u64 {
            return Err(ProtocolError::InvalidBulkLength);
        }
        self.pos = cr + 2;
        Ok(Some(len as usize))
    }

    /// Reads one inline command line at the buffer front.
    fn scan_inline(&mut self, buf: &mut BytesMut) -> Result<InlineOutcome, ProtocolError> {
        let newline = match self.find_byte(buf, 0, b'\n') {
            Line::At(nl) => nl,
            Line::Incomplete => {
                if buf.len() > self.limits.max_inline_len {
                    return Err(ProtocolError::TooBigInline);
                }
                return Ok(InlineOutcome::Incomplete);
            }
        };
        let line_end = if newline > 0 && buf.get(newline - 1) == Some(&b'\r') {
            newline - 1
        } else {
            newline
        };
        let args = split_args(buf.get(..line_end).unwrap_or(&[]))?;
        buf.advance(newline + 1);
        if args.is_empty() {
            return Ok(InlineOutcome::Empty);
        }
        Ok(InlineOutcome::Request(Request::from_args(&args)))
    }
}

/// The common request in one pass, without the resumable state: a whole,
/// canonical (`\r\n` everywhere) multibulk of a few arguments at the front
/// of `buf`, as client libraries send it. Returns its length and argument
/// spans; `None` (incomplete, unusual or invalid) leaves the request to the
/// general path, which also produces the errors.
#[inline]
fn whole_small_request(buf: &[u8], max_bulk_len: usize) -> Option<(usize, ArgSpans)> {
    let (count, mut at) = quick_header(buf, 0, b'*')?;
    if count == 0 || count > INLINE_ARGS || buf.get(at - 1) != Some(&b'\n') {
        return None;
    }
    let mut args = ArgSpans::new();
    for _ in 0..count {
        let (len, start) = quick_header(buf, at, b'$')?;
        if len > max_bulk_len || buf.get(start - 1) != Some(&b'\n') {
            return None;
        }
        let end = start.checked_add(len)?;
        if end + 2 > u32::MAX as usize || buf.get(end..end + 2)? != b"\r\n" {
            return None;
        }
        // Both fit: `end` was checked against `u32::MAX` above.
        args.push(ArgSpan {
            start: start as u32,
            len: len as u32,
        });
        at = end + 2;
    }
    Some((at, args))
}

/// The length and the arguments of the whole small canonical request at
/// the front of `buf` ([`whole_small_request`]'s view), without taking it:
/// for a look ahead, which only wants a hint. `None` for anything else,
/// complete or not.
pub(crate) fn peek_small_request(buf: &[u8]) -> Option<(usize, impl Iterator<Item = &[u8]>)> {
    let (len, spans) = whole_small_request(buf, usize::MAX)?;
    let args = spans
        .into_iter()
        .map(move |s| buf.get(s.start()..s.end()).unwrap_or_default());
    Some((len, args))
}

/// The common case of a header line in one pass: `type_byte`, a canonical
/// decimal of at most 18 digits, `\r` and one more byte present. Returns the
/// value and the offset after the line; `None` sends the caller to the
/// general path, which also produces the errors.
#[inline(always)]
fn quick_header(buf: &[u8], at: usize, type_byte: u8) -> Option<(usize, usize)> {
    match *buf.get(at..)? {
        [t, d @ b'0'..=b'9', b'\r', _, ..] if t == type_byte => {
            Some((usize::from(d - b'0'), at + 4))
        }
        [t, d1 @ b'1'..=b'9', d0 @ b'0'..=b'9', b'\r', _, ..] if t == type_byte => {
            Some((usize::from(d1 - b'0') * 10 + usize::from(d0 - b'0'), at + 5))
        }
        _ => quick_header_long(buf, at, type_byte),
    }
}

/// [`quick_header`] for numbers of three or more digits.
fn quick_header_long(buf: &[u8], at: usize, type_byte: u8) -> Option<(usize, usize)> {
    let rest = buf.get(at..)?;
    if rest.first() != Some(&type_byte) || rest.get(1) == Some(&b'0') {
        return None;
    }
    let mut value: u64 = 0;
    let mut i = 1;
    loop {
        match rest.get(i) {
            Some(&d) if d.is_ascii_digit() => {
                value = value * 10 + u64::from(d - b'0');
                i += 1;
                if i > 19 {
                    return None;
                }
            }
            Some(b'\r') if i > 1 && i + 1 < rest.len() => {
                return Some((usize::try_from(value).ok()?, at + i + 2));
            }
            _ => return None,
        }
    }
}

/// Whether every line end of a scanned multibulk is `\r\n`: the scanner
/// found each `\r` but, like Redis, skipped the byte after it unread, and
/// skipped the two bytes after each payload.
fn has_canonical_line_ends(req: &Request) -> bool {
    let frame = &req.frame[..];
    let newline_at = |at: Option<usize>| at.and_then(|i| frame.get(i)) == Some(&b'\n');
    req.args.iter().enumerate().all(|(i, span)| {
        // The count line ends just before the first argument's header.
        let count_line_ok = i > 0 || newline_at(span.header_start().checked_sub(1));
        count_line_ok
            && newline_at(span.start().checked_sub(1))
            && frame.get(span.end()..span.end() + 2) == Some(b"\r\n")
    })
}

/// Grows `buf` towards holding `end` bytes, by at most what already arrived
/// (or 1 MiB), so a large bulk needs few reallocations but an announced-only
/// one costs little.
fn reserve_for(buf: &mut BytesMut, end: usize) {
    let missing = end - buf.len();
    let want = missing.min(buf.len().max(MAX_RESERVE_AHEAD));
    if buf.capacity() - buf.len() < want {
        buf.reserve(want);
    }
}

/// What one inline line produced.
enum InlineOutcome {
    /// No complete line yet.
    Incomplete,
    /// A blank line, consumed and skipped.
    Empty,
    /// A command.
    Request(Request),
}

/// Splits an inline line into arguments exactly as Redis's `sdssplitargs`:
/// whitespace separates, `"..."` understands `\n \r \t \b \a \xHH` and `\\`
/// escapes, `'...'` understands only `\'`; a closing quote must be followed
/// by whitespace or the end. A NUL byte ends the line, as in C.
fn split_args(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let at = |i: usize| line.get(i).copied().unwrap_or(0);
    let mut args = Vec::new();
    let mut p = 0;
    loop {
        while matches!(at(p), b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r') {
            p += 1;
        }
        if at(p) == 0 {
            return Ok(args);
        }
        let mut current = Vec::new();
        let (mut in_double, mut in_single) = (false, false);
        loop {
            let c = at(p);
            if in_double {
                let hex = match (c, at(p + 1), hex_value(at(p + 2)), hex_value(at(p + 3))) {
                    (b'\\', b'x', Some(hi), Some(lo)) => Some(hi * 16 + lo),
                    _ => None,
                };
                if let Some(byte) = hex {
                    current.push(byte);
                    p += 3;
                } else if c == b'\\' && at(p + 1) != 0 {
                    p += 1;
                    current.push(match at(p) {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                } else if c == b'"' {
                    if !is_space_or_end(at(p + 1)) {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    p += 1;
                    break;
                } else if c == 0 {
                    return Err(ProtocolError::UnbalancedQuotes);
                } else {
                    current.push(c);
                }
            } else if in_single {
                if c == b'\\' && at(p + 1) == b'\'' {
                    p += 1;
                    current.push(b'\'');
                } else if c == b'\'' {
                    if !is_space_or_end(at(p + 1)) {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    p += 1;
                    break;
                } else if c == 0 {
                    return Err(ProtocolError::UnbalancedQuotes);
                } else {
                    current.push(c);
                }
            } else {
                match c {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => break,
                    b'"' => in_double = true,
                    b'\'' => in_single = true,
                    other => current.push(other),
                }
            }
            p += 1;
        }
        args.push(current);
    }
}

/// C's `isspace` or the terminating NUL.
fn is_space_or_end(c: u8) -> bool {
    matches!(c, 0 | b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Value of a hexadecimal digit.
fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scanner() -> RequestScanner {
        RequestScanner::new(ScanLimits::default())
    }

    fn args_of(req: &Request) -> Vec<Vec<u8>> {
        req.args().map(<[u8]>::to_vec).collect()
    }

    fn strings(args: &[&str]) -> Vec<Vec<u8>> {
        args.iter().map(|a| a.as_bytes().to_vec()).collect()
    }

    /// Scans everything in `input`, delivered in pieces of the given sizes.
    fn scan_chunked(
        input: &[u8],
        chunks: impl IntoIterator<Item = usize>,
    ) -> (Vec<Request>, Option<ProtocolError>) {
        let mut s = scanner();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut rest = input;
        let mut sizes = chunks.into_iter();
        while !rest.is_empty() {
            let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            loop {
                match s.scan(&mut buf) {
                    Ok(Some(req)) => out.push(req),
                    Ok(None) => break,
                    Err(e) => return (out, Some(e)),
                }
            }
        }
        (out, None)
    }

    fn scan_all(input: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let (reqs, err) = scan_chunked(input, std::iter::empty());
        match err {
            Some(e) => Err(e),
            None => Ok(reqs.iter().map(args_of).collect()),
        }
    }

    fn scan_err(input: &[u8]) -> ProtocolError {
        match scan_all(input) {
            Err(e) => e,
            Ok(r) => panic!("expected an error, got {r:?}"),
        }
    }

    #[test]
    fn peek_small_request_takes_only_whole_canonical_requests() {
        let peek = |buf: &[u8]| {
            peek_small_request(buf).map(|(len, args)| (len, args.map(<[u8]>::to_vec).collect()))
        };
        let get = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n";
        assert_eq!(peek(get), Some((get.len(), strings(&["GET", "key"]))));
        let two = [&get[..], b"*1\r\n$4\r\nPING\r\n"].concat();
        assert_eq!(peek(&two).map(|p| p.0), Some(get.len()));
        assert_eq!(
            peek(b"*1\r\n$4\r\nPING\r\n"),
            Some((14, strings(&["PING"])))
        );
        for bad in [
            &b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r"[..],
            b"*2\r\n$3\r\nGET\r\n$3\r\nke",
            b"GET key\r\n",
            b"*\r\n",
            b"*-1\r\n",
            b"*2\r\n$-1\r\n",
            b"*99999999999\r\n$1\r\na\r\n",
            b"*9999999999\r\n$1\r\na\r\n",
            b"*1\r\n$9999999999\r\na\r\n",
            b"*1\n$1\r\na\r\n",
            b"",
        ] {
            assert_eq!(peek(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn multibulk_request_keeps_bytes_and_spans() {
        let input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nva\r\nl\r\n";
        let mut buf = BytesMut::from(&input[..]);
        let req = scanner().scan(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        assert_eq!(req.frame().as_ref(), input);
        assert_eq!(args_of(&req), strings(&["SET", "k", "va\r\nl"]));
        assert_eq!(req.argc(), 3);
        assert_eq!(req.get(3), None);
        assert_eq!(req, Request::from_args(&["SET", "k", "va\r\nl"]));
    }

    /// Found by the `request_scanner` fuzz target: Redis skips the byte
    /// after a header's `\r` and the two after a payload unread, so the
    /// scanner accepts any bytes there, but the frame it forwards is canonical.
    #[test]
    fn line_ends_redis_skips_unread_are_made_canonical() {
        let input = b"*1\r)$5\r\xff\xff\xff\xff\xff\xff\xff\xff";
        let mut buf = BytesMut::from(&input[..]);
        let req = scanner().scan(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        assert_eq!(req, Request::from_args(&[b"\xff\xff\xff\xff\xff"]));
        assert_eq!(
            req.frame().as_ref(),
            b"*1\r\n$5\r\n\xff\xff\xff\xff\xff\r\n"
        );
        let (reqs, err) = scan_chunked(
            b"*2\r\n$3\rxGET\r\n$1\r\nkxx*1\r\n$4\r\nPING\r\n",
            [1, 5, 3],
        );
        assert_eq!(err, None);
        assert_eq!(
            reqs,
            vec![
                Request::from_args(&["GET", "k"]),
                Request::from_args(&["PING"])
            ]
        );
    }

    #[test]
    fn incomplete_is_none_and_leaves_buffer() {
        let mut s = scanner();
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r"[..]);
        assert_eq!(s.scan(&mut buf), Ok(None));
        assert_eq!(buf.len(), 16);
        buf.extend_from_slice(b"\nk\r\n*1\r\n$4\r\nPING\r\n");
        assert_eq!(
            args_of(&s.scan(&mut buf).unwrap().unwrap()),
            strings(&["GET", "k"])
        );
        assert_eq!(
            args_of(&s.scan(&mut buf).unwrap().unwrap()),
            strings(&["PING"])
        );
        assert_eq!(s.scan(&mut buf), Ok(None));
    }

    #[test]
    fn empty_requests_are_skipped() {
        let got = scan_all(b"*0\r\n*-1\r\n\r\n\n   \r\n*1\r\n$4\r\nPING\r\nPING\r\n").unwrap();
        assert_eq!(got, vec![strings(&["PING"]), strings(&["PING"])]);
    }

    #[test]
    fn inline_commands_become_multibulk() {
        let mut buf = BytesMut::from(&b"set  k \"v 1\"\r\nget k\n"[..]);
        let mut s = scanner();
        let req = s.scan(&mut buf).unwrap().unwrap();
        assert_eq!(
            req.frame().as_ref(),
            b"*3\r\n$3\r\nset\r\n$1\r\nk\r\n$3\r\nv 1\r\n"
        );
        assert_eq!(
            args_of(&s.scan(&mut buf).unwrap().unwrap()),
            strings(&["get", "k"])
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn inline_quoting_follows_sdssplitargs() {
        let cases: &[(&[u8], &[&[u8]])] = &[
            (b"a b\tc", &[b"a", b"b", b"c"]),
            (b"\"a\\n\\r\\t\\b\\a\\\\\\\"z\"", &[b"a\n\r\t\x08\x07\\\"z"]),
            (b"\"\\x41\\x4a\\xff\\xZZ\\q\"", &[b"AJ\xffxZZq"]),
            (b"'it\\'s' '\\n'", &[b"it's", b"\\n"]),
            (b"\"\" ''", &[b"", b""]),
            (b"ab\"c d\"", &[b"abc d"]),
            (b"a\x0bb", &[b"a\x0bb"]),
            (b"a \x00 b", &[b"a"]),
            (b"  lead  trail  ", &[b"lead", b"trail"]),
        ];
        for (line, want) in cases {
            let mut input = line.to_vec();
            input.extend_from_slice(b"\r\n");
            let want: Vec<Vec<u8>> = want.iter().map(|a| a.to_vec()).collect();
            assert_eq!(
                scan_all(&input).unwrap(),
                vec![want],
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn unbalanced_quotes_are_refused() {
        for line in [
            &b"\"abc\n"[..],
            b"'abc\n",
            b"\"a\"b\n",
            b"'a'b\n",
            b"\"a\\\"\n",
            b"\"a\x00\"\n",
        ] {
            let e = scan_err(line);
            assert_eq!(e, ProtocolError::UnbalancedQuotes);
            assert_eq!(e.to_string(), "unbalanced quotes in request");
        }
    }

    #[test]
    fn too_big_inline() {
        let mut s = scanner();
        let mut buf = BytesMut::from(&vec![b'a'; 64 * 1024][..]);
        assert_eq!(s.scan(&mut buf), Ok(None));
        buf.extend_from_slice(b"a");
        let e = s.scan(&mut buf).unwrap_err();
        assert_eq!(e, ProtocolError::TooBigInline);
        assert_eq!(e.to_string(), "too big inline request");
        // A long line that has its newline is accepted, as in Redis.
        let mut line = vec![b'a'; 100 * 1024];
        line.push(b'\n');
        assert_eq!(scan_all(&line).unwrap()[0][0].len(), 100 * 1024);
    }

    #[test]
    fn multibulk_errors_match_redis() {
        for input in [
            &b"*x\r\n"[..],
            b"*01\r\n",
            b"*+1\r\n",
            b"* 1\r\n",
            b"*1048577\r\n",
            b"*\r\n",
        ] {
            let e = scan_err(input);
            assert_eq!(e, ProtocolError::InvalidMultibulkLength, "{input:?}");
            assert_eq!(e.to_string(), "invalid multibulk length");
        }
        for input in [
            &b"*1\r\n$x\r\n"[..],
            b"*1\r\n$-1\r\n",
            b"*1\r\n$01\r\n",
            b"*1\r\n$\r\n",
            b"*1\r\n$536870913\r\n",
            b"*1\r\n$99999999999999999999\r\n",
        ] {
            let e = scan_err(input);
            assert_eq!(e, ProtocolError::InvalidBulkLength, "{input:?}");
            assert_eq!(e.to_string(), "invalid bulk length");
        }
        let e = scan_err(b"*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(e, ProtocolError::ExpectedBulk(b':'));
        assert_eq!(e.to_string(), "expected '$', got ':'");
        // The limits are the scanner's, not fixed.
        let mut s = RequestScanner::new(ScanLimits {
            max_bulk_len: 3,
            max_args: 2,
            max_inline_len: 8,
        });
        let mut buf = BytesMut::from(&b"*1\r\n$4\r\n"[..]);
        assert_eq!(s.scan(&mut buf), Err(ProtocolError::InvalidBulkLength));
        let mut buf = BytesMut::from(&b"*3\r\n"[..]);
        assert_eq!(s.scan(&mut buf), Err(ProtocolError::InvalidMultibulkLength));
        let mut buf = BytesMut::from(&b"aaaaaaaaa"[..]);
        assert_eq!(s.scan(&mut buf), Err(ProtocolError::TooBigInline));
    }

    #[test]
    fn header_lines_without_end_are_capped() {
        let mut s = scanner();
        let mut buf = BytesMut::from(&b"*1"[..]);
        buf.extend_from_slice(&vec![b'1'; 64 * 1024]);
        assert_eq!(s.scan(&mut buf), Err(ProtocolError::InvalidMultibulkLength));
        let mut s = scanner();
        let mut buf = BytesMut::from(&b"*1\r\n$1"[..]);
        buf.extend_from_slice(&vec![b'1'; 64 * 1024]);
        assert_eq!(s.scan(&mut buf), Err(ProtocolError::InvalidBulkLength));
    }

    #[test]
    fn huge_declared_bulk_reserves_little() {
        let mut s = scanner();
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nSET\r\n$536870912\r\n"[..]);
        assert_eq!(s.scan(&mut buf), Ok(None));
        assert!(buf.capacity() <= 2 * 1024 * 1024, "{}", buf.capacity());
        assert_eq!(s.scan(&mut buf), Ok(None));
    }

    #[test]
    fn big_bulk_grows_the_buffer_geometrically() {
        let len = 20 * 1024 * 1024;
        let mut s = scanner();
        let mut buf = BytesMut::from(format!("*1\r\n${len}\r\n").as_bytes());
        let mut capacities = vec![buf.capacity()];
        let chunk = vec![b'y'; 64 * 1024];
        let mut sent = 0;
        while sent < len {
            assert_eq!(s.scan(&mut buf), Ok(None));
            if capacities.last() != Some(&buf.capacity()) {
                capacities.push(buf.capacity());
            }
            buf.extend_from_slice(&chunk);
            sent += chunk.len();
        }
        buf.extend_from_slice(b"\r\n");
        assert_eq!(
            s.scan(&mut buf).unwrap().unwrap().get(0).map(<[u8]>::len),
            Some(len)
        );
        assert!(capacities.len() <= 10, "{capacities:?}");
    }

    #[test]
    fn big_bulk_arrives_in_pieces() {
        let value = vec![b'x'; 5 * 1024 * 1024 + 7];
        let input = Request::from_args(&[&b"SET"[..], b"k", &value])
            .frame()
            .clone();
        let (reqs, err) = scan_chunked(&input, std::iter::repeat(64 * 1024));
        assert_eq!(err, None);
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].get(2), Some(&value[..]));
        assert_eq!(reqs[0].frame(), &input);
    }

    /// A pipeline mixing every request form.
    fn mixed_pipeline() -> Vec<u8> {
        let mut input = Vec::new();
        input.extend_from_slice(b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nva\nue\r\n");
        input.extend_from_slice(b"PING\r\n\r\n*0\r\n");
        input.extend_from_slice(b"set 'a b' \"c\\x00d\"\n");
        input.extend_from_slice(b"*1\r\n$0\r\n\r\n");
        input.extend_from_slice(b"*-1\r\n*2\r\n$4\r\nMGET\r\n$12\r\n\r\n\r\n\r\n\r\n\r\n\r\n");
        input.extend_from_slice(b"  get   x  \r\n");
        input
    }

    #[test]
    fn every_split_gives_the_same_requests() {
        let input = mixed_pipeline();
        let whole = scan_all(&input).unwrap();
        assert_eq!(whole.len(), 6);
        assert_eq!(
            whole[2],
            vec![b"set".to_vec(), b"a b".to_vec(), b"c\0d".to_vec()]
        );
        let (one_by_one, err) = scan_chunked(&input, std::iter::repeat(1));
        assert_eq!(err, None);
        assert_eq!(one_by_one.iter().map(args_of).collect::<Vec<_>>(), whole);
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200 {
            let sizes: Vec<usize> = (0..input.len())
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (seed >> 33) as usize % 17 + 1
                })
                .collect();
            let (reqs, err) = scan_chunked(&input, sizes);
            assert_eq!(err, None);
            assert_eq!(reqs.iter().map(args_of).collect::<Vec<_>>(), whole);
        }
        for split in 0..=input.len() {
            let (reqs, err) = scan_chunked(&input, [split]);
            assert_eq!(err, None);
            assert_eq!(
                reqs.iter().map(args_of).collect::<Vec<_>>(),
                whole,
                "split {split}"
            );
        }
    }

    #[test]
    fn splice_replaces_args_and_fixes_headers() {
        let req = Request::from_args(&["SET", "key", "value", "EX", "10"]);
        let out = req.splice(&[(1, b"ns:key"), (4, b"100")]);
        assert_eq!(
            out,
            Request::from_args(&["SET", "ns:key", "value", "EX", "100"])
        );
        assert_eq!(req.splice(&[]), req);
        assert_eq!(
            req.splice(&[(0, b"")]),
            Request::from_args(&["", "key", "value", "EX", "10"])
        );
        // Out of range and out of order edits are ignored, not a panic.
        assert_eq!(
            req.splice(&[(3, b"PX"), (1, b"x"), (9, b"y")]),
            Request::from_args(&["SET", "key", "value", "PX", "10"])
        );
        let big = vec![7u8; 100_000];
        assert_eq!(req.splice(&[(2, &big)]).get(2), Some(&big[..]));
        let empty: [&[u8]; 0] = [];
        let none = Request::from_args(&empty);
        assert_eq!(none.frame().as_ref(), b"*0\r\n");
        assert_eq!(none.prefix_args(&[0], b"p"), none);
    }

    #[test]
    fn prefix_args_on_scanned_request() {
        let mut buf =
            BytesMut::from(&b"*4\r\n$4\r\nMSET\r\n$1\r\na\r\n$10\r\n0123456789\r\n$1\r\nb\r\n"[..]);
        let req = scanner().scan(&mut buf).unwrap().unwrap();
        let out = req.prefix_args(&[1, 3], b"svc:");
        assert_eq!(
            out,
            Request::from_args(&["MSET", "svc:a", "0123456789", "svc:b"])
        );
        // Prefixing a 9-byte arg changes its header width.
        let req = Request::from_args(&["GET", "123456789"]);
        assert_eq!(
            req.prefix_args(&[1], b"p"),
            Request::from_args(&["GET", "p123456789"])
        );
    }

    fn arb_args() -> impl Strategy<Value = Vec<Vec<u8>>> {
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..8)
    }

    fn resp2_args(bytes: &[u8]) -> Vec<Vec<u8>> {
        use redis_protocol::resp2::{decode::decode, types::OwnedFrame};
        match decode(bytes) {
            Ok(Some((OwnedFrame::Array(items), n))) if n == bytes.len() => items
                .into_iter()
                .map(|f| match f {
                    OwnedFrame::BulkString(b) => b,
                    other => panic!("unexpected {other:?}"),
                })
                .collect(),
            other => panic!("redis-protocol decoded {other:?}"),
        }
    }

    proptest! {
        #[test]
        fn scanner_agrees_with_redis_protocol(
            commands in prop::collection::vec(arb_args(), 1..6),
            chunks in prop::collection::vec(1usize..50, 0..40),
        ) {
            let mut input = Vec::new();
            for args in &commands {
                let req = Request::from_args(args);
                prop_assert_eq!(resp2_args(req.frame()), args.clone());
                input.extend_from_slice(req.frame());
            }
            let (reqs, err) = scan_chunked(&input, chunks);
            prop_assert_eq!(err, None);
            let got: Vec<_> = reqs.iter().map(args_of).collect();
            prop_assert_eq!(&got, &commands);
            for req in &reqs {
                prop_assert_eq!(resp2_args(req.frame()), args_of(req));
            }
        }

        #[test]
        fn prefix_args_equals_from_args(
            args in arb_args(),
            picks in prop::collection::vec(any::<bool>(), 8),
            prefix in prop::collection::vec(any::<u8>(), 0..12),
        ) {
            let req = Request::from_args(&args);
            let indexes: Vec<usize> = (0..args.len()).filter(|&i| picks[i]).collect();
            let want: Vec<Vec<u8>> = args
                .iter()
                .enumerate()
                .map(|(i, a)| if picks[i] { [&prefix[..], a].concat() } else { a.clone() })
                .collect();
            prop_assert_eq!(req.prefix_args(&indexes, &prefix), Request::from_args(&want));
            let edits: Vec<(usize, &[u8])> = indexes.iter().map(|&i| (i, &prefix[..])).collect();
            let replaced: Vec<Vec<u8>> = args
                .iter()
                .enumerate()
                .map(|(i, a)| if picks[i] { prefix.clone() } else { a.clone() })
                .collect();
            prop_assert_eq!(req.splice(&edits), Request::from_args(&replaced));
        }

        #[test]
        fn prefix_arg_equals_from_args(
            args in arb_args(),
            at in 0usize..9,
            prefix in prop::collection::vec(any::<u8>(), 0..12),
        ) {
            let req = Request::from_args(&args);
            let want: Vec<Vec<u8>> = args
                .iter()
                .enumerate()
                .map(|(i, a)| if i == at { [&prefix[..], a].concat() } else { a.clone() })
                .collect();
            let got = req.prefix_arg(at, &prefix);
            prop_assert_eq!(&got, &Request::from_args(&want));
            let spans_ok = (0..got.argc()).all(|i| got.get(i) == want.get(i).map(|w| &w[..]));
            prop_assert!(spans_ok);
            // Written into a buffer that already holds bytes, it is the same frame.
            let mut out = BytesMut::from(&b"before"[..]);
            req.write_prefixed(at, &prefix, &mut out);
            prop_assert_eq!(&out[6..], &got.frame()[..]);
            prop_assert_eq!(req.prefixed_len(at, &prefix), got.frame().len());
        }
    }
}
