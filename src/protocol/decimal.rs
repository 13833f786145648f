//! Decimal fields of RESP headers, parsed and measured exactly as Redis does.
//!
//! Invariant: [`parse_ll`] accepts what Redis's `string2ll` accepts and
//! nothing else, so a header Redis would refuse is refused here too, and an
//! accepted length has exactly [`decimal_len`] digits on the wire.

/// Parses a decimal exactly as Redis's `string2ll`: optional `-`, no `+`, no
/// leading zeros, no `-0`, no spaces, fits an `i64` (`i64::MIN` included).
/// Used for RESP headers and for the numeric arguments keygate reads
/// (numkeys, TTLs).
pub fn parse_ll(s: &[u8]) -> Option<i64> {
    let (negative, digits) = match s {
        [] => return None,
        [b'0'] => return Some(0),
        [b'-', digits @ ..] => (true, digits),
        digits => (false, digits),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut value: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let d = i64::from(d - b'0');
        value = if negative {
            value.checked_mul(10)?.checked_sub(d)?
        } else {
            value.checked_mul(10)?.checked_add(d)?
        };
    }
    Some(value)
}

/// Number of decimal digits of `n`.
pub(crate) fn decimal_len(mut n: usize) -> usize {
    let mut digits = 1;
    while n >= 10 {
        n /= 10;
        digits += 1;
    }
    digits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_ll_matches_string2ll() {
        assert_eq!(parse_ll(b"0"), Some(0));
        assert_eq!(parse_ll(b"123"), Some(123));
        assert_eq!(parse_ll(b"-1"), Some(-1));
        assert_eq!(parse_ll(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_ll(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"-0",
            b"00",
            b"01",
            b"+1",
            b" 1",
            b"1 ",
            b"1a",
            b"9223372036854775808",
        ] {
            assert_eq!(parse_ll(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn decimal_len_counts_digits() {
        assert_eq!(decimal_len(0), 1);
        assert_eq!(decimal_len(9), 1);
        assert_eq!(decimal_len(10), 2);
        assert_eq!(decimal_len(usize::MAX), usize::MAX.to_string().len());
    }
}
