//! Writers for the replies keygate makes itself, shaped for RESP2 or RESP3.
//!
//! Invariants: every writer appends exactly one well-formed RESP item (or
//! aggregate header) and never allocates beyond growing `out`; line types
//! never carry a raw `\r` or `\n`, which would desynchronise the client.

use std::fmt::Write as _;

use bytes::{BufMut, BytesMut};

use super::Protocol;

/// Appends `<prefix><n>\r\n` with an allocation-free decimal.
pub fn len_line(out: &mut BytesMut, prefix: u8, n: usize) {
    let mut digits = itoa::Buffer::new();
    let text = digits.format(n).as_bytes();
    out.reserve(text.len() + 3);
    out.put_u8(prefix);
    out.put_slice(text);
    out.put_slice(b"\r\n");
}

/// Appends `<prefix><text>\r\n`, turning any `\r` or `\n` in `text` into a
/// space as Redis does for error strings.
fn line(out: &mut BytesMut, prefix: u8, text: &[u8]) {
    out.reserve(text.len() + 3);
    out.put_u8(prefix);
    if text.iter().any(|&b| b == b'\r' || b == b'\n') {
        out.extend(
            text.iter()
                .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
    } else {
        out.put_slice(text);
    }
    out.put_slice(b"\r\n");
}

/// `+OK`-style status reply.
pub fn simple(out: &mut BytesMut, s: &str) {
    simple_bytes(out, s.as_bytes());
}

/// `+...` status reply from raw bytes.
pub fn simple_bytes(out: &mut BytesMut, s: &[u8]) {
    line(out, b'+', s);
}

/// `-ERR ...` error reply; `msg` carries its own code (`ERR`, `NOPERM`, ...).
pub fn error(out: &mut BytesMut, msg: &str) {
    error_bytes(out, msg.as_bytes());
}

/// `-...` error reply from raw bytes.
pub fn error_bytes(out: &mut BytesMut, msg: &[u8]) {
    line(out, b'-', msg);
}

/// `:n` integer reply.
pub fn integer(out: &mut BytesMut, n: i64) {
    let mut digits = itoa::Buffer::new();
    let text = digits.format(n).as_bytes();
    out.reserve(text.len() + 3);
    out.put_u8(b':');
    out.put_slice(text);
    out.put_slice(b"\r\n");
}

/// `$len\r\n...\r\n` bulk string reply.
pub fn bulk(out: &mut BytesMut, b: &[u8]) {
    len_line(out, b'$', b.len());
    out.reserve(b.len() + 2);
    out.put_slice(b);
    out.put_slice(b"\r\n");
}

/// Nil: `$-1` in RESP2, `_` in RESP3.
pub fn nil(out: &mut BytesMut, proto: Protocol) {
    out.put_slice(match proto {
        Protocol::Resp2 => b"$-1\r\n",
        Protocol::Resp3 => b"_\r\n",
    });
}

/// Null array: `*-1` in RESP2, `_` in RESP3.
pub fn nil_array(out: &mut BytesMut, proto: Protocol) {
    out.put_slice(match proto {
        Protocol::Resp2 => b"*-1\r\n",
        Protocol::Resp3 => b"_\r\n",
    });
}

/// Array header for `n` elements.
pub fn array_header(out: &mut BytesMut, n: usize) {
    len_line(out, b'*', n);
}

/// Map header for `n` pairs: `%n` in RESP3, `*2n` in RESP2.
pub fn map_header(out: &mut BytesMut, n: usize, proto: Protocol) {
    match proto {
        Protocol::Resp2 => len_line(out, b'*', n.saturating_mul(2)),
        Protocol::Resp3 => len_line(out, b'%', n),
    }
}

/// Set header for `n` elements: `~n` in RESP3, `*n` in RESP2.
pub fn set_header(out: &mut BytesMut, n: usize, proto: Protocol) {
    match proto {
        Protocol::Resp2 => len_line(out, b'*', n),
        Protocol::Resp3 => len_line(out, b'~', n),
    }
}

/// Push header for `n` elements: `>n` in RESP3, `*n` in RESP2 (how pub/sub
/// messages look to a RESP2 client).
pub fn push_header(out: &mut BytesMut, n: usize, proto: Protocol) {
    match proto {
        Protocol::Resp2 => len_line(out, b'*', n),
        Protocol::Resp3 => len_line(out, b'>', n),
    }
}

/// Boolean: `#t`/`#f` in RESP3, `:1`/`:0` in RESP2.
pub fn boolean(out: &mut BytesMut, b: bool, proto: Protocol) {
    out.put_slice(match (proto, b) {
        (Protocol::Resp2, true) => b":1\r\n",
        (Protocol::Resp2, false) => b":0\r\n",
        (Protocol::Resp3, true) => b"#t\r\n",
        (Protocol::Resp3, false) => b"#f\r\n",
    });
}

/// Double: `,x` in RESP3, a bulk string in RESP2; infinities are `inf` and
/// `-inf`, NaN is `nan`, as Redis writes them.
pub fn double(out: &mut BytesMut, x: f64, proto: Protocol) {
    let mut text = DoubleText::default();
    if x.is_nan() {
        text.push(b"nan");
    } else if x.is_infinite() {
        text.push(if x > 0.0 { &b"inf"[..] } else { &b"-inf"[..] });
    } else {
        // `{}` is the shortest text that round-trips; it never fails here.
        let _ = write!(text, "{x}");
    }
    double_text(out, text.as_bytes(), proto);
}

/// Double already formatted as text (as kept by [`super::reply::Value::Double`]).
pub fn double_text(out: &mut BytesMut, text: &[u8], proto: Protocol) {
    match proto {
        Protocol::Resp2 => bulk(out, text),
        Protocol::Resp3 => line(out, b',', text),
    }
}

/// Big number: `(n` in RESP3, a bulk string in RESP2.
pub fn big_number(out: &mut BytesMut, digits: &[u8], proto: Protocol) {
    match proto {
        Protocol::Resp2 => bulk(out, digits),
        Protocol::Resp3 => line(out, b'(', digits),
    }
}

/// Verbatim string: `=len\r\nfmt:text` in RESP3 (`format` is three bytes such
/// as `txt`), the plain text as a bulk string in RESP2.
pub fn verbatim(out: &mut BytesMut, format: &[u8], text: &[u8], proto: Protocol) {
    match proto {
        Protocol::Resp2 => bulk(out, text),
        Protocol::Resp3 => {
            len_line(out, b'=', format.len() + 1 + text.len());
            out.reserve(format.len() + text.len() + 3);
            out.put_slice(format);
            out.put_u8(b':');
            out.put_slice(text);
            out.put_slice(b"\r\n");
        }
    }
}

/// Stack buffer for a formatted double (Rust's shortest form is under 32
/// bytes except for extreme exponents, which fall back to a longer path).
struct DoubleText {
    bytes: [u8; 400],
    len: usize,
}

impl Default for DoubleText {
    fn default() -> Self {
        DoubleText {
            bytes: [0; 400],
            len: 0,
        }
    }
}

impl DoubleText {
    /// Appends bytes, dropping what does not fit (never happens for `f64`).
    fn push(&mut self, s: &[u8]) {
        let room = self.bytes.len() - self.len;
        let n = s.len().min(room);
        if let Some(dst) = self.bytes.get_mut(self.len..self.len + n) {
            dst.copy_from_slice(s.get(..n).unwrap_or(&[]));
            self.len += n;
        }
    }

    /// The text so far.
    fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&[])
    }
}

impl std::fmt::Write for DoubleText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
        let mut out = BytesMut::new();
        f(&mut out);
        out.to_vec()
    }

    #[test]
    fn writers_produce_resp() {
        assert_eq!(written(|o| simple(o, "OK")), b"+OK\r\n");
        assert_eq!(written(|o| error(o, "ERR a\r\nb")), b"-ERR a  b\r\n");
        assert_eq!(written(|o| integer(o, -42)), b":-42\r\n");
        assert_eq!(
            written(|o| integer(o, i64::MIN)),
            b":-9223372036854775808\r\n"
        );
        assert_eq!(written(|o| bulk(o, b"a\r\nb")), b"$4\r\na\r\nb\r\n");
        assert_eq!(written(|o| bulk(o, b"")), b"$0\r\n\r\n");
        assert_eq!(written(|o| nil(o, Protocol::Resp2)), b"$-1\r\n");
        assert_eq!(written(|o| nil(o, Protocol::Resp3)), b"_\r\n");
        assert_eq!(written(|o| nil_array(o, Protocol::Resp2)), b"*-1\r\n");
        assert_eq!(written(|o| array_header(o, 3)), b"*3\r\n");
        assert_eq!(written(|o| map_header(o, 2, Protocol::Resp2)), b"*4\r\n");
        assert_eq!(written(|o| map_header(o, 2, Protocol::Resp3)), b"%2\r\n");
        assert_eq!(written(|o| set_header(o, 2, Protocol::Resp3)), b"~2\r\n");
        assert_eq!(written(|o| set_header(o, 2, Protocol::Resp2)), b"*2\r\n");
        assert_eq!(written(|o| push_header(o, 3, Protocol::Resp3)), b">3\r\n");
        assert_eq!(written(|o| push_header(o, 3, Protocol::Resp2)), b"*3\r\n");
        assert_eq!(written(|o| boolean(o, true, Protocol::Resp3)), b"#t\r\n");
        assert_eq!(written(|o| boolean(o, false, Protocol::Resp2)), b":0\r\n");
        assert_eq!(written(|o| double(o, 1.5, Protocol::Resp3)), b",1.5\r\n");
        assert_eq!(
            written(|o| double(o, 1.5, Protocol::Resp2)),
            b"$3\r\n1.5\r\n"
        );
        assert_eq!(
            written(|o| double(o, f64::NEG_INFINITY, Protocol::Resp3)),
            b",-inf\r\n"
        );
        assert_eq!(
            written(|o| double(o, f64::NAN, Protocol::Resp3)),
            b",nan\r\n"
        );
        assert_eq!(
            written(|o| big_number(o, b"123", Protocol::Resp3)),
            b"(123\r\n"
        );
        assert_eq!(
            written(|o| verbatim(o, b"txt", b"hi", Protocol::Resp3)),
            b"=6\r\ntxt:hi\r\n"
        );
        assert_eq!(
            written(|o| verbatim(o, b"txt", b"hi", Protocol::Resp2)),
            b"$2\r\nhi\r\n"
        );
    }

    #[test]
    fn extreme_doubles_round_trip() {
        for x in [f64::MAX, f64::MIN_POSITIVE, 1e-300, -0.0, 5e-324] {
            let out = written(|o| double(o, x, Protocol::Resp3));
            let text = std::str::from_utf8(&out[1..out.len() - 2]).unwrap();
            assert_eq!(text.parse::<f64>().unwrap(), x);
        }
    }
}
