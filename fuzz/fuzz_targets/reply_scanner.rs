//! Fuzz target: arbitrary backend bytes, in arbitrary chunks, into
//! `ReplyScanner::next_frame`/`consume`/`scan`, and every frame into
//! `Value::parse`.
//!
//! Invariants checked: nothing panics; a reported frame ends within the
//! buffer; `next_frame` + `consume` and `scan` find the same frames; a
//! parsed value re-encodes (both encoders, both protocols) to bytes that
//! scan as exactly one frame and parse again.
#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use keygate::protocol::reply::{ReplyScanner, Value, DEFAULT_MAX_DEPTH};
use keygate::protocol::Protocol;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    /// Nesting cap (small values exercise the cap).
    depth: u8,
    /// Sizes of the pieces the bytes arrive in (cycled).
    chunks: Vec<u8>,
    /// Consume found frames only every this many frames (0 is every frame).
    consume_every: u8,
    bytes: Vec<u8>,
}

/// Checks that `encoded` is exactly one frame for a fresh scanner and parses.
fn assert_one_frame(encoded: &[u8]) {
    let mut scanner = ReplyScanner::new(DEFAULT_MAX_DEPTH);
    let found = scanner
        .next_frame(encoded)
        .expect("re-encoded value scans")
        .expect("re-encoded value is complete");
    assert_eq!(found.end, encoded.len(), "re-encoded value is one frame");
    Value::parse(encoded).expect("re-encoded value parses");
}

fn check_value(frame: &[u8]) {
    let Ok(value) = Value::parse(frame) else {
        return;
    };
    let mut out = BytesMut::new();
    value.encode(&mut out);
    assert_one_frame(&out);
    for proto in [Protocol::Resp2, Protocol::Resp3] {
        let mut out = BytesMut::new();
        value.encode_for(&mut out, proto);
        assert_one_frame(&out);
    }
}

fuzz_target!(|input: Input| {
    let depth = usize::from(input.depth % 8) + 1;
    let depth = if input.depth >= 128 {
        DEFAULT_MAX_DEPTH
    } else {
        depth
    };
    check_value(&input.bytes);

    // next_frame + consume, consuming in batches.
    let mut scanner = ReplyScanner::new(depth);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut pending = Vec::new();
    let mut failed = false;
    let mut rest = &input.bytes[..];
    let mut sizes = input.chunks.iter().cycle();
    'feed: while !rest.is_empty() {
        let n = sizes
            .next()
            .map_or(rest.len(), |&s| usize::from(s))
            .clamp(1, rest.len());
        let (piece, tail) = rest.split_at(n);
        buf.extend_from_slice(piece);
        rest = tail;
        loop {
            match scanner.next_frame(&buf) {
                Ok(Some(found)) => {
                    assert!(found.end <= buf.len(), "frame ends within the buffer");
                    let start = pending.last().copied().unwrap_or(0);
                    assert!(found.end > start, "a frame is not empty");
                    pending.push(found.end);
                    if pending.len() > usize::from(input.consume_every) {
                        let taken = buf.split_to(found.end);
                        scanner.consume(found.end);
                        let mut from = 0;
                        for end in pending.drain(..) {
                            frames.push(taken[from..end].to_vec());
                            from = end;
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break 'feed;
                }
            }
        }
    }
    if !failed {
        let mut from = 0;
        for end in pending.drain(..) {
            frames.push(buf[from..end].to_vec());
            from = end;
        }
    }

    // scan over the same bytes in one piece finds the same frames.
    let mut scanner = ReplyScanner::new(depth);
    let mut whole = BytesMut::from(&input.bytes[..]);
    let mut scanned = Vec::new();
    let mut scan_failed = false;
    loop {
        match scanner.scan(&mut whole) {
            Ok(Some((frame, _kind))) => scanned.push(frame.to_vec()),
            Ok(None) => break,
            Err(_) => {
                scan_failed = true;
                break;
            }
        }
    }
    assert_eq!(failed, scan_failed, "chunking does not change the outcome");
    if !failed {
        assert_eq!(frames, scanned, "chunking does not change the frames");
    } else {
        assert!(scanned.starts_with(&frames), "frames before an error agree");
    }
    for frame in &scanned {
        check_value(frame);
    }
});
