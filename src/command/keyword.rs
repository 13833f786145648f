//! How redis-server 7.0 recognises an option keyword in a request.
//!
//! Redis reads options with `strcasecmp(c->argv[i]->ptr, "store")`: the
//! argument is a C string to that comparison, so it ends at its first NUL
//! byte, and the comparison ignores ASCII case. To Redis, `"STORE\0x"` is
//! the option STORE. A proxy that compares whole binary arguments sees an
//! unknown word where Redis sees an option, and can be walked around.
//!
//! Invariant: every place in keygate that asks "is this argument the option
//! X" asks [`is_keyword`], so keygate reads a request's options exactly as
//! redis-server will. Command and subcommand names are not options: Redis
//! looks those up in a dictionary by their whole binary value.

/// The argument as C code sees it: up to (not including) its first NUL.
pub fn c_str(arg: &[u8]) -> &[u8] {
    match arg.iter().position(|&b| b == 0) {
        Some(nul) => arg.get(..nul).unwrap_or(arg),
        None => arg,
    }
}

/// Whether `arg` is the option `keyword` to Redis: `strcasecmp(arg, keyword)
/// == 0`, comparing up to the first NUL byte of `arg`, ignoring ASCII case.
/// `keyword` is one of keygate's constants and never holds a NUL.
pub fn is_keyword(arg: &[u8], keyword: &[u8]) -> bool {
    c_str(arg).eq_ignore_ascii_case(keyword)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_like_strcasecmp() {
        assert!(is_keyword(b"STORE", b"store"));
        assert!(is_keyword(b"store", b"STORE"));
        assert!(is_keyword(b"StOrE", b"store"));
        assert!(is_keyword(b"STORE\0", b"store"));
        assert!(is_keyword(b"STORE\0anything after", b"store"));
        assert!(!is_keyword(b"STORE ", b"store"));
        assert!(!is_keyword(b"STOR", b"store"));
        assert!(!is_keyword(b"STORES", b"store"));
        assert!(!is_keyword(b"ST\0ORE", b"store"));
        assert!(!is_keyword(b"\0STORE", b"store"));
        assert!(!is_keyword(b"", b"store"));
        // Only ASCII letters fold, as C's tolower does in the "C" locale.
        assert!(!is_keyword("É".as_bytes(), "é".as_bytes()));
    }

    #[test]
    fn c_str_stops_at_the_first_nul() {
        assert_eq!(c_str(b"abc"), b"abc");
        assert_eq!(c_str(b"a\0bc"), b"a");
        assert_eq!(c_str(b"\0"), b"");
        assert_eq!(c_str(b""), b"");
    }
}
