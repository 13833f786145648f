//! The request scanner: client bytes in, [`Request`]s out.
//!
//! Invariants: a request is kept as its canonical RESP multibulk bytes plus
//! the offsets of each argument, so a key rewrite splices in only what
//! changes; "incomplete" is `Ok(None)`, never an error; scanning resumes where
//! the last call stopped instead of starting the frame again.

use bytes::{Bytes, BytesMut};

use super::ProtocolError;

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

/// One client command: canonical multibulk bytes plus argument offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    frame: Bytes,
    args: Vec<ArgSpan>,
}

impl Request {
    /// Builds a request from arguments, encoding it as a RESP multibulk.
    pub fn from_args<A: AsRef<[u8]>>(args: &[A]) -> Request {
        // TEMPORARY stand-in from the `table` branch so its tests can run;
        // replaced by the real implementation at merge time.
        let mut frame = Vec::new();
        let mut spans = Vec::with_capacity(args.len());
        frame.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            let a = a.as_ref();
            frame.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            spans.push(ArgSpan {
                start: frame.len() as u32,
                len: a.len() as u32,
            });
            frame.extend_from_slice(a);
            frame.extend_from_slice(b"\r\n");
        }
        Request {
            frame: Bytes::from(frame),
            args: spans,
        }
    }

    /// The canonical RESP multibulk bytes, ready to write to a backend.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// Number of arguments, the command name included.
    pub fn argc(&self) -> usize {
        self.args.len()
    }

    /// Argument `i` (0 is the command name), or `None` past the end.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let span = self.args.get(i)?;
        self.frame
            .get(span.start as usize..(span.start + span.len) as usize)
    }

    /// All arguments in order.
    pub fn args(&self) -> impl Iterator<Item = &[u8]> + '_ {
        (0..self.args.len()).filter_map(move |i| self.get(i))
    }

    /// A new request with argument `i` replaced by `with` for each edit;
    /// `edits` are sorted by index. Unchanged bytes are copied once, in runs.
    pub fn splice(&self, edits: &[(usize, &[u8])]) -> Request {
        let _ = edits;
        todo!()
    }

    /// A new request with `prefix` put in front of each argument in `indexes`
    /// (sorted, no duplicates): the namespace rewrite's fast path.
    pub fn prefix_args(&self, indexes: &[usize], prefix: &[u8]) -> Request {
        let _ = (indexes, prefix);
        todo!()
    }
}

/// Resumable scanner of client requests (multibulk and inline).
#[derive(Debug)]
pub struct RequestScanner {
    limits: ScanLimits,
}

impl RequestScanner {
    /// A scanner enforcing `limits`.
    pub fn new(limits: ScanLimits) -> Self {
        RequestScanner { limits }
    }

    /// Takes the next complete request off the front of `buf`, `Ok(None)` when
    /// more bytes are needed. Empty inline lines and `*0` are skipped, as Redis does.
    pub fn scan(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        let _ = (buf, self.limits);
        todo!()
    }
}
