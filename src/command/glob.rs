//! Redis's glob patterns (`stringmatchlen` in util.c): `*`, `?`, `[...]`
//! with ranges and `^`, and `\` escapes. CONFIG GET matches names without
//! case; pub/sub patterns match channels with it.

/// Whether letters match regardless of case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// `SAVE` matches `save` (CONFIG GET).
    Insensitive,
    /// Byte for byte (PSUBSCRIBE).
    Sensitive,
}

/// Whether `text` matches `pattern`.
///
/// Iterative, backtracking only to the last `*`: time is O(pattern × text)
/// and the stack is constant, whatever the client's pattern (a recursive
/// matcher overflowed the stack on a pattern of many `*` and took
/// exponential time on `*a*a*a...`).
pub fn matches(pattern: &[u8], text: &[u8], case: Case) -> bool {
    let (mut p, mut t) = (0, 0);
    // Pattern position after the last `*`, and the text position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    loop {
        if pattern.get(p) == Some(&b'*') {
            p += 1;
            star = Some((p, t));
            continue;
        }
        match text.get(t) {
            Some(&c) => {
                if let Some(next) = step(pattern, p, c, case) {
                    p = next;
                    t += 1;
                    continue;
                }
            }
            None if p >= pattern.len() => return true,
            None => {}
        }
        // Mismatch: let the last `*` swallow one more byte, if it can.
        match star {
            Some((after_star, tried)) if tried < text.len() => {
                star = Some((after_star, tried + 1));
                p = after_star;
                t = tried + 1;
            }
            _ => return false,
        }
    }
}

/// Matches text byte `c` against the single-byte pattern item at `p` (not
/// `*`); the position after the item when it matches.
fn step(pattern: &[u8], p: usize, c: u8, case: Case) -> Option<usize> {
    let rest = pattern.get(p + 1..).unwrap_or_default();
    match *pattern.get(p)? {
        b'?' => Some(p + 1),
        b'[' => {
            let close = rest.iter().position(|&b| b == b']')?;
            let class = rest.get(..close).unwrap_or_default();
            let (negate, class) = match class.split_first() {
                Some((b'^', c)) => (true, c),
                _ => (false, class),
            };
            let fold = |b: u8| match case {
                Case::Insensitive => b.to_ascii_lowercase(),
                Case::Sensitive => b,
            };
            let c = fold(c);
            let mut hit = false;
            let mut k = 0;
            while k < class.len() {
                let lo = fold(class.get(k).copied().unwrap_or_default());
                if class.get(k + 1) == Some(&b'-') && k + 2 < class.len() {
                    let hi = fold(class.get(k + 2).copied().unwrap_or_default());
                    hit |= (lo..=hi).contains(&c);
                    k += 3;
                } else {
                    hit |= lo == c;
                    k += 1;
                }
            }
            (hit != negate).then_some(p + 2 + close)
        }
        b'\\' if !rest.is_empty() => (rest.first() == Some(&c)).then_some(p + 2),
        lit => match case {
            Case::Insensitive => lit.eq_ignore_ascii_case(&c),
            Case::Sensitive => lit == c,
        }
        .then_some(p + 1),
    }
}

/// Whether some text that starts with `start` could match `pattern`: what
/// the pattern requires of its first bytes does not contradict `start`.
/// Errs towards yes (a `*` is taken to absorb whatever follows), never no
/// for a pattern that can match such a text.
pub fn may_match_text_starting_with(pattern: &[u8], start: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    loop {
        let Some(&c) = start.get(t) else {
            return true;
        };
        match pattern.get(p) {
            None => return false,
            Some(b'*') => return true,
            Some(_) => match step(pattern, p, c, Case::Sensitive) {
                Some(next) => {
                    p = next;
                    t += 1;
                }
                None => return false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the audit: the recursive matcher overflowed the stack (a
    /// process abort) on many `*` and took exponential time on `*a*a...`.
    #[test]
    fn glob_patterns_from_the_network_cannot_exhaust_stack_or_time() {
        let stars = vec![b'*'; 1_000_000];
        assert!(matches(&stars, b"proto-max-bulk-len", Case::Insensitive));
        let mut nasty = b"*a".repeat(10_000);
        nasty.push(b'z');
        assert!(!matches(
            &nasty,
            b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            Case::Insensitive
        ));
    }

    #[test]
    fn glob_matches_config_names() {
        assert!(matches(b"*", b"save", Case::Insensitive));
        assert!(matches(b"SAVE", b"save", Case::Insensitive));
        assert!(matches(b"app*", b"appendonly", Case::Insensitive));
        assert!(matches(b"s?ve", b"save", Case::Insensitive));
        assert!(matches(b"[rs]ave", b"save", Case::Insensitive));
        assert!(!matches(b"[^s]ave", b"save", Case::Insensitive));
        assert!(!matches(b"sav", b"save", Case::Insensitive));
        assert!(matches(b"*ave", b"save", Case::Insensitive));
        assert!(matches(b"s*e*", b"save", Case::Insensitive));
        assert!(matches(b"*-*-*", b"proto-max-bulk-len", Case::Insensitive));
        assert!(!matches(b"*-*-x", b"proto-max-bulk-len", Case::Insensitive));
        assert!(matches(b"\\s*", b"save", Case::Insensitive));
        assert!(!matches(b"[s", b"save", Case::Insensitive));
        assert!(matches(b"", b"", Case::Insensitive));
        assert!(matches(b"*", b"", Case::Insensitive));
    }

    #[test]
    fn pubsub_patterns_match_with_case() {
        assert!(matches(b"news.*", b"news.art", Case::Sensitive));
        assert!(!matches(b"NEWS.*", b"news.art", Case::Sensitive));
        assert!(!matches(b"[A-Z]x", b"ax", Case::Sensitive));
        assert!(matches(b"[a-z]x", b"ax", Case::Sensitive));
    }

    #[test]
    fn which_patterns_may_match_notification_channels() {
        let start = b"__keyspace@";
        for yes in [
            &b"*"[..],
            b"_*",
            b"?_key*",
            b"[_]_k*",
            b"__keyspace@0__:*",
            b"__k*",
        ] {
            assert!(may_match_text_starting_with(yes, start), "{yes:?}");
        }
        for no in [&b"a*"[..], b"news.*", b"__keyevent@*", b"[a]*", b"__k"] {
            assert!(!may_match_text_starting_with(no, start), "{no:?}");
        }
    }
}
