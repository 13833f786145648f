//! Redis Cluster key slots: which of the 16384 slots a key hashes to.
//!
//! The same function as Redis 7.0's `keyHashSlot` (cluster.c) over the
//! CRC16 of crc16.c (XMODEM: polynomial 0x1021, initial value 0, no
//! reflection): the key's hash tag is what lies between its first `{` and
//! the first `}` after it, when that is not empty; otherwise the whole key
//! is hashed.
//!
//! keygate puts a service's prefix in front of the key, outside its tag. A
//! prefix holds no `{` or `}` on a cluster backend (`--check` refuses one),
//! so the key's first `{` is the prefixed key's first `{`: a tagged key
//! keeps its slot under every prefix, and an untagged one hashes with its
//! prefix. [`prefixed_key_slot`] computes that without building the
//! prefixed key.

/// Slots in a Redis Cluster.
pub const SLOTS: usize = 16384;

/// CRC16-XMODEM tables: `CRC16_TABLES[0]` is crc16.c's `crc16tab` (one
/// byte at a time); `CRC16_TABLES[k][x]` is the CRC of byte `x` followed by
/// `k` zero bytes, so four bytes take four independent look-ups (the CRC
/// is linear: the bytes' contributions XOR together).
static CRC16_TABLES: [[u16; 256]; 4] = crc16_tables();

const fn crc16_tables() -> [[u16; 256]; 4] {
    let mut tables = [[0u16; 256]; 4];
    let mut byte = 0;
    while byte < 256 {
        let mut crc = (byte as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        tables[0][byte] = crc;
        byte += 1;
    }
    let mut k = 1;
    while k < 4 {
        let mut byte = 0;
        while byte < 256 {
            // One zero byte more: a plain table step with input 0.
            let crc = tables[k - 1][byte];
            tables[k][byte] = (crc << 8) ^ tables[0][(crc >> 8) as usize];
            byte += 1;
        }
        k += 1;
    }
    tables
}

/// Continues a CRC16-XMODEM from `crc` over `bytes`.
fn crc16_update(crc: u16, bytes: &[u8]) -> u16 {
    crc16_scan(crc, bytes).0
}

/// Continues a CRC16-XMODEM from `crc` over `bytes`, and says whether any
/// of them is `{` (a key's slot needs a second look only then): four bytes
/// per step (keys are mostly longer than that), then the rest one at a time.
fn crc16_scan(crc: u16, bytes: &[u8]) -> (u16, bool) {
    const ONES: u32 = 0x0101_0101;
    let [t0, t1, t2, t3] = &CRC16_TABLES;
    let (mut crc, mut brace, mut rest) = (crc, false, bytes);
    while let [a, b, c, d, tail @ ..] = rest {
        // A zero byte in `word ^ "{{{{"` is a `{` in the four.
        let word = u32::from_ne_bytes([*a, *b, *c, *d]) ^ (ONES * u32::from(b'{'));
        brace |= word.wrapping_sub(ONES) & !word & (ONES << 7) != 0;
        let [hi, lo] = crc.to_be_bytes();
        crc = t3[usize::from(hi ^ a)]
            ^ t2[usize::from(lo ^ b)]
            ^ t1[usize::from(*c)]
            ^ t0[usize::from(*d)];
        rest = tail;
    }
    for &b in rest {
        brace |= b == b'{';
        crc = (crc << 8) ^ t0[usize::from(((crc >> 8) as u8) ^ b)];
    }
    (crc, brace)
}

/// CRC16-XMODEM of `bytes`, as Redis's `crc16()`.
pub fn crc16(bytes: &[u8]) -> u16 {
    crc16_update(0, bytes)
}

/// The hash tag of `key` as Redis reads it: the bytes between the first
/// `{` and the first `}` after it, if there are any; `None` when the whole
/// key is hashed (no `{`, no `}` after it, or `{}`).
pub fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let rest = key.get(open + 1..)?;
    let close = rest.iter().position(|&b| b == b'}')?;
    let tag = rest.get(..close)?;
    (!tag.is_empty()).then_some(tag)
}

/// The slot of `key`, as `CLUSTER KEYSLOT key` answers.
pub fn key_slot(key: &[u8]) -> u16 {
    prefixed_key_slot(b"", key)
}

/// The slot of `prefix` followed by `key`, where `prefix` holds no `{` or
/// `}` (a cluster backend's service prefix): `key_slot` of the
/// concatenation, computed without building it.
pub fn prefixed_key_slot(prefix: &[u8], key: &[u8]) -> u16 {
    debug_assert!(!prefix.contains(&b'{') && !prefix.contains(&b'}'));
    // Most keys have no `{`: hashed whole in one pass, which notices one.
    let (crc, brace) = crc16_scan(crc16(prefix), key);
    let tag = if brace { hash_tag(key) } else { None };
    let crc = tag.map_or(crc, crc16);
    crc & 0x3FFF
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_is_xmodem() {
        // The standard check value of CRC-16/XMODEM.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(crc16(b""), 0);
    }

    /// The four-bytes-a-step CRC is the one-byte-a-step one, at every
    /// length (whole steps and every remainder) and starting value.
    #[test]
    fn crc16_steps_agree() {
        fn bytewise(crc: u16, bytes: &[u8]) -> u16 {
            bytes.iter().fold(crc, |crc, &b| {
                let index = usize::from(((crc >> 8) as u8) ^ b);
                (crc << 8) ^ CRC16_TABLES[0][index]
            })
        }
        let bytes: Vec<u8> = (0u32..67).map(|i| (i * 37 + 11) as u8).collect();
        for len in 0..bytes.len() {
            for start in [0u16, 1, 0x8000, 0xFFFF, 0x31C3] {
                let slice = &bytes[..len];
                let want = (bytewise(start, slice), slice.contains(&b'{'));
                assert_eq!(crc16_scan(start, slice), want, "len {len}");
            }
        }
        // A `{` at every place among its neighbours (`z`, one below it),
        // and a byte that differs from it in the top bit only.
        for len in 1..12 {
            for at in 0..len {
                let mut key = vec![b'z'; len];
                key[at] = b'{';
                assert!(crc16_scan(0, &key).1, "{{ at {at} of {len}");
                key[at] = 0xFB;
                assert!(!crc16_scan(0, &key).1, "0xFB at {at} of {len}");
            }
        }
    }

    #[test]
    fn slots_match_redis_answers() {
        // CLUSTER KEYSLOT answers from Redis 7.0.15.
        for (key, slot) in [
            (&b"foo"[..], 12182),
            (b"bar", 5061),
            (b"hello", 866),
            (b"", 0),
            (b"{user1000}.following", 3443),
            (b"{user1000}.followers", 3443),
            (b"user1000", 3443),
        ] {
            assert_eq!(key_slot(key), slot, "{:?}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn hash_tags_follow_key_hash_slot() {
        assert_eq!(hash_tag(b"{user1}:a"), Some(&b"user1"[..]));
        assert_eq!(hash_tag(b"a{b}c{d}"), Some(&b"b"[..]));
        // The first '}' after the first '{', so the tag may hold a '{'.
        assert_eq!(hash_tag(b"{{a}}"), Some(&b"{a"[..]));
        assert_eq!(hash_tag(b"x{}{y}"), None, "empty tag: whole key");
        assert_eq!(hash_tag(b"}{"), None);
        assert_eq!(hash_tag(b"{unclosed"), None);
        assert_eq!(hash_tag(b"plain"), None);
        assert_eq!(key_slot(b"x{}{y}"), crc16(b"x{}{y}") & 0x3FFF);
        assert_eq!(key_slot(b"a{b}c"), key_slot(b"b"));
    }

    #[test]
    fn a_prefix_goes_in_front_outside_the_tag() {
        for key in [
            &b"{user1}:a"[..],
            b"{user1}:b",
            b"plain",
            b"{}",
            b"}{",
            b"{unclosed",
            b"\x00\xff{\x01}",
        ] {
            let mut whole = b"svc:".to_vec();
            whole.extend_from_slice(key);
            assert_eq!(prefixed_key_slot(b"svc:", key), key_slot(&whole));
        }
        // Tagged keys keep their slot under every prefix.
        assert_eq!(
            prefixed_key_slot(b"a:", b"{user1}:x"),
            prefixed_key_slot(b"b:", b"{user1}:y")
        );
    }

    #[test]
    fn every_slot_is_in_range() {
        for i in 0u32..10_000 {
            assert!(usize::from(key_slot(&i.to_le_bytes())) < SLOTS);
        }
    }
}
