//! Multi-key commands split by slot on a cluster backend: MGET, MSET, DEL,
//! UNLINK, EXISTS and TOUCH with keys in several slots become one command
//! per slot (never one per key), each going with the rest of its node's
//! part of the client's batch, and their replies are merged back into the
//! one reply the client asked for.
//!
//! Invariants: a key keeps its place (MGET's array is in the client's key
//! order); the parts' integers are summed (DEL, UNLINK, EXISTS, TOUCH);
//! MSET answers `+OK` only when every part did; a failed part puts its
//! error in its place (MGET: at each of its keys; the others: as the
//! reply). MSET and DEL lose their atomicity across slots, as the README
//! says.

use bytes::{Bytes, BytesMut};

use super::Connection;
use crate::command::keys::key_positions_inline;
use crate::command::CommandSpec;
use crate::protocol::reply::ReplyScanner;
use crate::protocol::request::Request;
use crate::topology::slot::key_slot;

/// How a split command's replies become one.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Merge {
    /// MGET: each part's array elements go back to these key indices.
    Elements { keys: usize, places: Vec<Vec<u32>> },
    /// DEL, UNLINK, EXISTS, TOUCH: the integers summed.
    Sum,
    /// MSET: `+OK` when every part said so.
    AllOk,
}

/// A command split by slot: one request per slot (with its slot), and its
/// merge.
#[derive(Debug)]
pub(super) struct Split {
    pub(super) parts: Vec<(u16, Request)>,
    pub(super) merge: Merge,
}

impl Connection {
    /// `req` (keys already final) split into one request per slot, when
    /// it is a command that may be split; `None` otherwise.
    pub(super) fn split_by_slot(&self, spec: &'static CommandSpec, req: &Request) -> Option<Split> {
        let (merge, pairs) = match spec.name {
            "mget" => (
                Merge::Elements {
                    keys: 0,
                    places: Vec::new(),
                },
                false,
            ),
            "mset" => (Merge::AllOk, true),
            "del" | "unlink" | "exists" | "touch" => (Merge::Sum, false),
            _ => return None,
        };
        let positions = key_positions_inline(spec, req).ok()?;
        // Slots in the order their first key comes, with their key positions.
        let mut slots: Vec<(u16, Vec<usize>)> = Vec::new();
        for &at in &positions {
            let slot = key_slot(req.get(at)?);
            match slots.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, ats)) => ats.push(at),
                None => slots.push((slot, vec![at])),
            }
        }
        let name = req.get(0)?;
        let mut parts = Vec::with_capacity(slots.len());
        let mut places = Vec::new();
        for (slot, ats) in &slots {
            let mut args: Vec<&[u8]> = Vec::with_capacity(1 + ats.len() * 2);
            args.push(name);
            for &at in ats {
                args.push(req.get(at)?);
                if pairs {
                    args.push(req.get(at + 1)?);
                }
            }
            if matches!(merge, Merge::Elements { .. }) {
                let index = |at: &usize| {
                    positions
                        .iter()
                        .position(|p| p == at)
                        .and_then(|i| u32::try_from(i).ok())
                };
                places.push(ats.iter().filter_map(index).collect());
            }
            parts.push((*slot, Request::from_args(&args)));
        }
        let merge = match merge {
            Merge::Elements { .. } => Merge::Elements {
                keys: positions.len(),
                places,
            },
            other => other,
        };
        Some(Split { parts, merge })
    }
}

/// The one reply of a split command, from its parts' reply frames (in the
/// order of its parts).
pub(super) fn merge(merge: &Merge, frames: &[&[u8]]) -> Bytes {
    let mut out = BytesMut::new();
    match merge {
        Merge::Sum => {
            let mut sum: i64 = 0;
            for frame in frames {
                match integer(frame) {
                    Some(n) => sum = sum.saturating_add(n),
                    None => return Bytes::copy_from_slice(frame),
                }
            }
            out.extend_from_slice(format!(":{sum}\r\n").as_bytes());
        }
        Merge::AllOk => {
            if let Some(failed) = frames.iter().find(|f| !f.starts_with(b"+OK\r\n")) {
                return Bytes::copy_from_slice(failed);
            }
            out.extend_from_slice(b"+OK\r\n");
        }
        Merge::Elements { keys, places } => {
            let mut slots: Vec<&[u8]> = vec![b"$-1\r\n"; *keys];
            for (frame, places) in frames.iter().zip(places) {
                match elements(frame, places.len()) {
                    Some(elements) => {
                        for (element, &place) in elements.into_iter().zip(places) {
                            if let Some(slot) = slots.get_mut(place as usize) {
                                *slot = element;
                            }
                        }
                    }
                    None => {
                        for &place in places {
                            if let Some(slot) = slots.get_mut(place as usize) {
                                *slot = frame;
                            }
                        }
                    }
                }
            }
            out.extend_from_slice(format!("*{keys}\r\n").as_bytes());
            for element in slots {
                out.extend_from_slice(element);
            }
        }
    }
    out.freeze()
}

/// An integer reply's value.
fn integer(frame: &[u8]) -> Option<i64> {
    let digits = frame.strip_prefix(b":")?.strip_suffix(b"\r\n")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// An array reply's `count` elements, each a whole frame; `None` when the
/// frame is not such an array (an error).
fn elements(frame: &[u8], count: usize) -> Option<Vec<&[u8]>> {
    let header_end = frame.windows(2).position(|w| w == b"\r\n")?;
    let header = frame.get(..header_end)?.strip_prefix(b"*")?;
    let n: usize = std::str::from_utf8(header).ok()?.parse().ok()?;
    if n != count {
        return None;
    }
    let mut rest = frame.get(header_end + 2..)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let end = ReplyScanner::new(crate::protocol::reply::DEFAULT_MAX_DEPTH)
            .next_frame(rest)
            .ok()??
            .end;
        out.push(rest.get(..end)?);
        rest = rest.get(end..)?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_oks_merge_or_keep_the_first_error() {
        assert_eq!(&merge(&Merge::Sum, &[b":2\r\n", b":3\r\n"])[..], b":5\r\n");
        assert_eq!(
            &merge(&Merge::Sum, &[b":2\r\n", b"-ERR x\r\n"])[..],
            b"-ERR x\r\n"
        );
        assert_eq!(
            &merge(&Merge::AllOk, &[b"+OK\r\n", b"+OK\r\n"])[..],
            b"+OK\r\n"
        );
        assert_eq!(
            &merge(&Merge::AllOk, &[b"+OK\r\n", b"-OOM no\r\n"])[..],
            b"-OOM no\r\n"
        );
    }

    #[test]
    fn elements_go_back_to_their_keys() {
        let m = Merge::Elements {
            keys: 4,
            places: vec![vec![0, 2], vec![1], vec![3]],
        };
        let merged = merge(
            &m,
            &[
                b"*2\r\n$1\r\na\r\n$-1\r\n",
                b"*1\r\n$1\r\nb\r\n",
                b"-TRYAGAIN x\r\n",
            ],
        );
        assert_eq!(
            &merged[..],
            b"*4\r\n$1\r\na\r\n$1\r\nb\r\n$-1\r\n-TRYAGAIN x\r\n"
        );
    }
}
