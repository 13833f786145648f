//! Fuzz target: arbitrary client bytes, delivered in arbitrary chunks, into
//! `RequestScanner::scan`.
//!
//! Invariants checked: the scanner never panics; a multibulk request's
//! frame is exactly the bytes the scanner consumed for it and equals the
//! canonical encoding of its arguments (what the backend will parse is what
//! keygate understood); an error consumes nothing it should not.
#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use keygate::protocol::request::{Request, RequestScanner, ScanLimits};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    /// Small limits exercise the limit errors; `false` uses Redis's defaults.
    small_limits: bool,
    /// Sizes of the pieces the bytes arrive in (cycled).
    chunks: Vec<u8>,
    bytes: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let limits = if input.small_limits {
        ScanLimits {
            max_bulk_len: 16,
            max_args: 4,
            max_inline_len: 32,
        }
    } else {
        ScanLimits::default()
    };
    let mut scanner = RequestScanner::new(limits);
    let mut buf = BytesMut::new();
    let mut rest = &input.bytes[..];
    let mut sizes = input.chunks.iter().cycle();
    while !rest.is_empty() {
        let n = sizes
            .next()
            .map_or(rest.len(), |&s| usize::from(s))
            .clamp(1, rest.len());
        let (piece, tail) = rest.split_at(n);
        buf.extend_from_slice(piece);
        rest = tail;
        loop {
            let before = buf.clone();
            match scanner.scan(&mut buf) {
                Ok(Some(req)) => {
                    let consumed = &before[..before.len() - buf.len()];
                    let args: Vec<&[u8]> = req.args().collect();
                    assert_eq!(args.len(), req.argc());
                    let canonical = Request::from_args(&args);
                    assert_eq!(req.frame(), canonical.frame(), "frame is canonical");
                    assert_eq!(req, canonical, "spans match the canonical encoding");
                    // A multibulk's frame is the bytes consumed for it (skipped
                    // empty requests may come first), up to the line-end bytes
                    // Redis skips unread; an inline line was re-encoded, and
                    // its line does not start with `*`.
                    assert!(
                        matches_ignoring_line_ends(consumed, req.frame(), &args)
                            || !last_line(consumed).starts_with(b"*"),
                        "multibulk frame differs from the consumed bytes"
                    );
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});

/// Whether `consumed` ends with `frame` (the canonical multibulk of `args`),
/// ignoring the byte after each header's `\r` and the two bytes after each
/// payload: Redis skips them without looking, and so does the scanner.
fn matches_ignoring_line_ends(consumed: &[u8], frame: &[u8], args: &[&[u8]]) -> bool {
    let Some(tail) = consumed
        .len()
        .checked_sub(frame.len())
        .map(|at| &consumed[at..])
    else {
        return false;
    };
    let mut skip = vec![false; frame.len()];
    let mut pos = format!("*{}\r\n", args.len()).len();
    skip[pos - 1] = true;
    for arg in args {
        pos += format!("${}\r\n", arg.len()).len();
        skip[pos - 1] = true;
        pos += arg.len();
        skip[pos] = true;
        skip[pos + 1] = true;
        pos += 2;
    }
    tail.iter()
        .zip(frame)
        .zip(&skip)
        .all(|((a, b), &skipped)| skipped || a == b)
}

/// The last line of `consumed` (which ends with `\n`), its terminator
/// included, after any skipped `*0`/`*-N` headers at its start (Redis, and
/// the scanner, skip the byte after their `\r` unread, so it need not be `\n`).
fn last_line(consumed: &[u8]) -> &[u8] {
    let body = consumed.strip_suffix(b"\n").unwrap_or(consumed);
    let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut line = &consumed[start..];
    while line.first() == Some(&b'*') {
        let Some(cr) = line.iter().position(|&b| b == b'\r') else {
            break;
        };
        let count = std::str::from_utf8(&line[1..cr])
            .ok()
            .and_then(|t| t.parse::<i64>().ok());
        match count {
            Some(n) if n <= 0 && cr + 2 <= line.len() => line = &line[cr + 2..],
            _ => break,
        }
    }
    line
}
