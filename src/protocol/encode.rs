//! Writers for the replies keygate makes itself, shaped for RESP2 or RESP3.

use bytes::BytesMut;

use super::Protocol;

/// `+OK`-style status reply.
pub fn simple(out: &mut BytesMut, s: &str) {
    let _ = (out, s);
    todo!()
}

/// `-ERR ...` error reply; `msg` carries its own code (`ERR`, `NOPERM`, ...).
pub fn error(out: &mut BytesMut, msg: &str) {
    let _ = (out, msg);
    todo!()
}

/// `:n` integer reply.
pub fn integer(out: &mut BytesMut, n: i64) {
    let _ = (out, n);
    todo!()
}

/// `$len\r\n...\r\n` bulk string reply.
pub fn bulk(out: &mut BytesMut, b: &[u8]) {
    let _ = (out, b);
    todo!()
}

/// Nil: `$-1` in RESP2, `_` in RESP3.
pub fn nil(out: &mut BytesMut, proto: Protocol) {
    let _ = (out, proto);
    todo!()
}

/// Array header for `n` elements.
pub fn array_header(out: &mut BytesMut, n: usize) {
    let _ = (out, n);
    todo!()
}

/// Map header for `n` pairs: `%n` in RESP3, `*2n` in RESP2.
pub fn map_header(out: &mut BytesMut, n: usize, proto: Protocol) {
    let _ = (out, n, proto);
    todo!()
}
