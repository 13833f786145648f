//! keygate in front of a Redis Cluster: the slot function against the
//! cluster's own answers, on the local six-node cluster of
//! `tests/common/cluster.rs`.

mod common;

use common::{resp_command, RawConn, RedisCluster, Reply};
use keygate::topology::slot::{key_slot, prefixed_key_slot};

/// Keys compared against `CLUSTER KEYSLOT`, each also with every prefix.
const BASE_KEYS: usize = 25_000;
/// Service prefixes put in front of every key (no braces, as `--check`
/// demands on a cluster backend).
const PREFIXES: [&[u8]; 3] = [b"svc:", b"tenant-42/", b"\x00\xfe:"];
/// Commands written before their replies are read.
const PIPELINE: usize = 1_000;

/// Keys that probe `keyHashSlot`'s edges, then pseudo-random keys drawn
/// mostly from braces, a few letters and arbitrary bytes.
fn generated_keys() -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = [
        &b""[..],
        b"{}",
        b"{{a}}",
        b"}{",
        b"{",
        b"}",
        b"{a",
        b"a{",
        b"a}b{c",
        b"{}{a}",
        b"{a}{b}",
        b"x{y}z",
        b"{user1}:a",
        b"{user1}:b",
        b"\x00{\xff}\x00",
        b"\xff\xfe\xfd",
    ]
    .iter()
    .map(|k| k.to_vec())
    .collect();
    // xorshift64: the same keys on every run.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    const ALPHABET: &[u8] = b"{}{}{}ab:\x00";
    while keys.len() < BASE_KEYS {
        let len = (next() % 24) as usize;
        let key = (0..len)
            .map(|_| {
                let r = next();
                if r % 4 == 0 {
                    (r >> 8) as u8
                } else {
                    ALPHABET[(r >> 8) as usize % ALPHABET.len()]
                }
            })
            .collect();
        keys.push(key);
    }
    keys
}

#[test]
fn slot_function_agrees_with_cluster_keyslot() {
    let cluster = RedisCluster::start();
    let mut conn = RawConn::connect(cluster.nodes()[0].port());
    let mut cases: Vec<(Vec<u8>, u16)> = Vec::new();
    for key in generated_keys() {
        cases.push((key.clone(), key_slot(&key)));
        for prefix in PREFIXES {
            let mut whole = prefix.to_vec();
            whole.extend_from_slice(&key);
            cases.push((whole, prefixed_key_slot(prefix, &key)));
        }
    }
    assert_eq!(cases.len(), 100_000);
    let mut differences = Vec::new();
    for chunk in cases.chunks(PIPELINE) {
        let mut batch = Vec::new();
        for (key, _) in chunk {
            batch.extend_from_slice(&resp_command(&[&b"CLUSTER"[..], b"KEYSLOT", key]));
        }
        conn.send(&batch);
        for (key, ours) in chunk {
            let theirs = Reply::parse(&conn.read_reply());
            if theirs != Reply::Int(i64::from(*ours)) {
                differences.push((key.clone(), *ours, theirs));
            }
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} keys differ, first: {:?}",
        differences.len(),
        cases.len(),
        differences.first()
    );
}
