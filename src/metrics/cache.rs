//! Cache hits and misses read from a reply, without allocating.
//!
//! Which commands count, and how (the command names are the command table's):
//!
//! | command | counts |
//! | --- | --- |
//! | `get`, `getex`, `getdel`, `hget`, `lindex`, `zscore` | one: nil is a miss, any value a hit |
//! | `mget`, `hmget`, `zmscore` | one per element: nil elements miss, others hit |
//! | `hgetall` | one: an empty map (or RESP2 array) is a miss, otherwise a hit |
//!
//! Nils are RESP2 `$-1` and `*-1` and RESP3 `_`. Error replies and any other
//! reply shape do not count (`None`), nor do other commands: membership tests
//! (`exists`, `sismember`, `hexists`) answer a question about a key rather
//! than fetch a cached value, and counting them would blur the hit ratio.
//!
//! The reply path decides a command's [`CacheRule`] once per run of equal
//! commands and, for the single-value commands, reads the outcome off the
//! frame's kind (which the connection's reader found) and its type byte,
//! without parsing the frame again; [`cache_outcome`] is the same count
//! from the name and bytes alone.

use crate::protocol::reply::ReplyKind;

/// How a command's replies count as cache hits and misses (the table above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheRule {
    /// Not counted.
    Ignored,
    /// One: nil is a miss, any value a hit.
    Single,
    /// One per array element.
    PerElement,
    /// One: an empty map or array is a miss.
    WholeHash,
}

impl CacheRule {
    /// The rule for a command by its table name.
    pub fn of(command: &str) -> CacheRule {
        match command {
            "get" | "getex" | "getdel" | "hget" | "lindex" | "zscore" => CacheRule::Single,
            "mget" | "hmget" | "zmscore" => CacheRule::PerElement,
            "hgetall" => CacheRule::WholeHash,
            _ => CacheRule::Ignored,
        }
    }

    /// The outcome of `frame`, one whole reply frame a scanner delimited,
    /// of kind `kind`: what [`cache_outcome`] says of it, with the
    /// single-value case read off the kind and type byte alone.
    #[inline]
    pub fn outcome(self, kind: ReplyKind, frame: &[u8]) -> Option<(u32, u32)> {
        match self {
            CacheRule::Ignored => None,
            CacheRule::Single => {
                let type_byte = *frame.first()?;
                match kind {
                    // A nil frame starts with its own type byte unless an
                    // attribute precedes it, which `scalar` does not count.
                    ReplyKind::Nil if matches!(type_byte, b'_' | b'$' | b'*') => Some((0, 1)),
                    ReplyKind::Value if is_scalar_type(type_byte) => Some((1, 0)),
                    _ => None,
                }
            }
            CacheRule::PerElement => per_element(frame),
            CacheRule::WholeHash => whole_hash(frame),
        }
    }
}

/// Whether a read command's reply counts as cache hits or misses, and how
/// many of each: `None` for commands that do not count.
pub fn cache_outcome(command: &'static str, reply: &[u8]) -> Option<(u32, u32)> {
    match CacheRule::of(command) {
        CacheRule::Single => {
            let (nil, _) = scalar(reply, 0)?;
            Some(if nil { (0, 1) } else { (1, 0) })
        }
        CacheRule::PerElement => per_element(reply),
        CacheRule::WholeHash => whole_hash(reply),
        CacheRule::Ignored => None,
    }
}

/// HGETALL: an empty map (or RESP2 array) misses, any other hits.
fn whole_hash(reply: &[u8]) -> Option<(u32, u32)> {
    let (kind, count, _) = header(reply, 0)?;
    match kind {
        b'*' | b'%' if count > 0 => Some((1, 0)),
        b'*' | b'%' => Some((0, 1)),
        _ => None,
    }
}

/// Whether `scalar` counts a value of this type byte (not an aggregate).
fn is_scalar_type(type_byte: u8) -> bool {
    matches!(type_byte, b'$' | b'=' | b'+' | b':' | b',' | b'(' | b'#')
}

/// Counts the elements of an array reply: nil misses, other scalars hit.
fn per_element(reply: &[u8]) -> Option<(u32, u32)> {
    let (kind, count, mut at) = header(reply, 0)?;
    if kind != b'*' {
        return None;
    }
    let (mut hits, mut misses) = (0u32, 0u32);
    for _ in 0..count {
        let (nil, next) = scalar(reply, at)?;
        if nil {
            misses = misses.saturating_add(1);
        } else {
            hits = hits.saturating_add(1);
        }
        at = next;
    }
    Some((hits, misses))
}

/// Reads one non-aggregate reply at `at`: whether it is nil, and where it ends.
/// `None` for errors, aggregates and malformed input.
fn scalar(reply: &[u8], at: usize) -> Option<(bool, usize)> {
    let kind = *reply.get(at)?;
    let (line, after) = line(reply, at + 1)?;
    match kind {
        b'_' => Some((true, after)),
        b'$' | b'=' => {
            let len = parse_len(line)?;
            if len < 0 {
                return Some((true, after));
            }
            let end = after
                .checked_add(usize::try_from(len).ok()?)?
                .checked_add(2)?;
            (end <= reply.len()).then_some((false, end))
        }
        b'*' if parse_len(line)? < 0 => Some((true, after)),
        b'+' | b':' | b',' | b'(' | b'#' => Some((false, after)),
        _ => None,
    }
}

/// Reads an aggregate header at `at`: its type byte, element count (0 for a
/// nil array) and where its first element starts.
fn header(reply: &[u8], at: usize) -> Option<(u8, u64, usize)> {
    let kind = *reply.get(at)?;
    if !matches!(kind, b'*' | b'%' | b'~') {
        return None;
    }
    let (line, after) = line(reply, at + 1)?;
    let n = parse_len(line)?;
    Some((kind, u64::try_from(n).unwrap_or(0), after))
}

/// The bytes from `start` to the next CRLF, and where the next line starts.
fn line(reply: &[u8], start: usize) -> Option<(&[u8], usize)> {
    let rest = reply.get(start..)?;
    let cr = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((rest.get(..cr)?, start + cr + 2))
}

/// A signed decimal length.
fn parse_len(digits: &[u8]) -> Option<i64> {
    let (negative, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + i64::from(d - b'0');
    }
    Some(if negative { -n } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_value_commands_resp2_and_resp3() {
        for cmd in ["get", "getex", "getdel", "hget", "lindex", "zscore"] {
            assert_eq!(cache_outcome(cmd, b"$3\r\nabc\r\n"), Some((1, 0)), "{cmd}");
            assert_eq!(cache_outcome(cmd, b"$0\r\n\r\n"), Some((1, 0)), "{cmd}");
            assert_eq!(
                cache_outcome(cmd, b"$-1\r\n"),
                Some((0, 1)),
                "{cmd} RESP2 nil"
            );
            assert_eq!(
                cache_outcome(cmd, b"_\r\n"),
                Some((0, 1)),
                "{cmd} RESP3 null"
            );
            assert_eq!(cache_outcome(cmd, b"-ERR wrong\r\n"), None, "{cmd} error");
        }
        // ZSCORE in RESP3 answers a double.
        assert_eq!(cache_outcome("zscore", b",1.5\r\n"), Some((1, 0)));
    }

    #[test]
    fn per_element_commands() {
        let resp2 = b"*3\r\n$1\r\na\r\n$-1\r\n$2\r\nbc\r\n";
        let resp3 = b"*3\r\n$1\r\na\r\n_\r\n$2\r\nbc\r\n";
        for cmd in ["mget", "hmget"] {
            assert_eq!(cache_outcome(cmd, resp2), Some((2, 1)), "{cmd}");
            assert_eq!(cache_outcome(cmd, resp3), Some((2, 1)), "{cmd}");
            assert_eq!(cache_outcome(cmd, b"*0\r\n"), Some((0, 0)));
        }
        assert_eq!(
            cache_outcome("zmscore", b"*2\r\n,2.5\r\n_\r\n"),
            Some((1, 1))
        );
        assert_eq!(
            cache_outcome("zmscore", b"*2\r\n$3\r\n2.5\r\n$-1\r\n"),
            Some((1, 1))
        );
        // Truncated frames do not count.
        assert_eq!(cache_outcome("mget", b"*2\r\n$1\r\na\r\n"), None);
        assert_eq!(cache_outcome("mget", b"*1\r\n$5\r\nab\r\n"), None);
    }

    #[test]
    fn hgetall_empty_is_a_miss() {
        assert_eq!(cache_outcome("hgetall", b"*0\r\n"), Some((0, 1)));
        assert_eq!(cache_outcome("hgetall", b"%0\r\n"), Some((0, 1)));
        assert_eq!(
            cache_outcome("hgetall", b"*2\r\n$1\r\nf\r\n$1\r\nv\r\n"),
            Some((1, 0))
        );
        assert_eq!(
            cache_outcome("hgetall", b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n"),
            Some((1, 0))
        );
    }

    /// The rule on a delimited frame agrees with [`cache_outcome`] on every
    /// reply shape the single-value commands can meet.
    #[test]
    fn rule_on_delimited_frames_matches_cache_outcome() {
        use crate::protocol::reply::{ReplyScanner, DEFAULT_MAX_DEPTH};
        let frames: &[&[u8]] = &[
            b"$3\r\nabc\r\n",
            b"$0\r\n\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"_\r\n",
            b"-ERR wrong\r\n",
            b"!3\r\nERR\r\n",
            b",1.5\r\n",
            b":7\r\n",
            b"+OK\r\n",
            b"#t\r\n",
            b"(123\r\n",
            b"=7\r\ntxt:abc\r\n",
            b"*2\r\n$1\r\na\r\n$-1\r\n",
            b"*0\r\n",
            b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n",
            b"%0\r\n",
            b"~1\r\n+a\r\n",
            b"|1\r\n+ttl\r\n:3\r\n$-1\r\n",
            b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n",
        ];
        let commands = [
            "get", "getex", "getdel", "hget", "lindex", "zscore", "mget", "hmget", "zmscore",
            "hgetall", "set", "exists",
        ];
        for &frame in frames {
            let found = ReplyScanner::new(DEFAULT_MAX_DEPTH)
                .next_frame(frame)
                .unwrap()
                .unwrap();
            assert_eq!(found.end, frame.len());
            for cmd in commands {
                assert_eq!(
                    CacheRule::of(cmd).outcome(found.kind, frame),
                    cache_outcome(cmd, frame),
                    "{cmd} {:?}",
                    String::from_utf8_lossy(frame)
                );
            }
        }
    }

    #[test]
    fn other_commands_do_not_count() {
        assert_eq!(cache_outcome("set", b"+OK\r\n"), None);
        assert_eq!(cache_outcome("exists", b":1\r\n"), None);
        assert_eq!(cache_outcome("sismember", b":0\r\n"), None);
    }
}
