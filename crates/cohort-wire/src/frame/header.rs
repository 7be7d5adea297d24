//! The data header as this crate's encoder writes it, read without prost.
//!
//! Every data frame's header is decoded once per receiver, so it is worth reading the common
//! shape by hand: the fields in tag order, each at most once, the sender 16 bytes long, no
//! extensions. Anything else (extensions, repeated or reordered fields, unknown fields, a
//! varint prost would refuse) is left to prost, which decides exactly as before. The fast
//! path only ever accepts input that prost decodes to the same values (a property test
//! checks it against prost, for valid and mutated headers).

use crate::{DataHeader, MemberId, SendOptions};

/// Field keys (tag << 3 | wire type) of the fields read here.
const MSG_ID: u8 = 1 << 3;
const OPTIONS: u8 = 2 << 3;
const SENDER: u8 = (3 << 3) | 2;
const TIMESTAMP: u8 = 4 << 3;
const SEQ: u8 = 5 << 3;

/// Reads a varint at `*at`, moving past it; `None` when it is cut short or longer than
/// prost accepts (more than ten bytes, or a tenth byte above 1).
fn varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..10 {
        let b = *buf.get(*at + i)?;
        if i == 9 && b > 1 {
            return None;
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            *at += i + 1;
            return Some(value);
        }
    }
    None
}

/// The header, when it has the common shape; `None` sends it to prost.
pub(super) fn decode_common(buf: &[u8]) -> Option<DataHeader> {
    let mut h = DataHeader::default();
    let mut sender = None;
    let mut at = 0;
    // The last key read: keys must come in increasing order, each once.
    let mut last = 0u8;
    while at < buf.len() {
        let key = buf[at];
        if key <= last || key & 0x80 != 0 {
            return None;
        }
        last = key;
        at += 1;
        match key {
            MSG_ID => h.msg_id = varint(buf, &mut at)?,
            // A uint32 field: prost keeps the low 32 bits of the varint.
            OPTIONS => {
                let v = varint(buf, &mut at)?.to_le_bytes();
                h.options = SendOptions::from_bits(u32::from_le_bytes([v[0], v[1], v[2], v[3]]));
            }
            SENDER => {
                if buf.get(at) != Some(&16) {
                    return None;
                }
                let id = buf.get(at + 1..at + 17)?;
                sender = MemberId::from_slice(id);
                at += 17;
            }
            TIMESTAMP => h.timestamp_ms = varint(buf, &mut at)?,
            SEQ => h.seq = varint(buf, &mut at)?,
            _ => return None,
        }
    }
    h.sender = sender?;
    Some(h)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;
    use prost::Message as _;

    use super::*;
    use crate::proto::{DataHeaderPb, ExtensionPb};

    /// What prost makes of `buf`, as the slow path converts it (`None` when prost refuses it
    /// or the sender is not 16 bytes).
    fn by_prost(buf: &[u8]) -> Option<DataHeader> {
        let pb = DataHeaderPb::decode(buf).ok()?;
        Some(DataHeader {
            msg_id: pb.msg_id,
            options: SendOptions::from_bits(pb.options),
            sender: MemberId::from_slice(&pb.sender)?,
            timestamp_ms: pb.timestamp_ms,
            seq: pb.seq,
            extensions: pb
                .extensions
                .into_iter()
                .map(|e| crate::Extension {
                    tag: e.tag,
                    value: e.value,
                })
                .collect(),
        })
    }

    fn number() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            Just(u64::MAX),
            (0u32..64).prop_map(|b| 1u64 << b),
            any::<u64>(),
        ]
    }

    fn header() -> impl Strategy<Value = Vec<u8>> {
        (
            number(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 15..=17),
            number(),
            number(),
            proptest::collection::vec(any::<u8>(), 0..3),
        )
            .prop_map(|(msg_id, options, sender, timestamp_ms, seq, ext)| {
                DataHeaderPb {
                    msg_id,
                    options,
                    sender,
                    timestamp_ms,
                    seq,
                    extensions: ext
                        .into_iter()
                        .map(|t| ExtensionPb {
                            tag: u32::from(t),
                            value: Bytes::from_static(b"x"),
                        })
                        .collect(),
                }
                .encode_to_vec()
            })
    }

    proptest! {
        /// Whenever the fast path reads a header, prost reads the same values from it; and
        /// it reads every header of the common shape (no extensions, a 16-byte sender).
        #[test]
        fn the_fast_path_agrees_with_prost(buf in header()) {
            let fast = decode_common(&buf);
            let slow = by_prost(&buf);
            if let Some(f) = &fast {
                prop_assert_eq!(Some(f), slow.as_ref());
            }
            if let Some(s) = &slow {
                if s.extensions.is_empty() {
                    prop_assert!(fast.is_some(), "the common shape goes the fast way");
                }
            }
        }

        /// The same for damaged headers: a byte changed, a byte inserted, the end cut off,
        /// or bytes appended: the fast path either declines or agrees with prost.
        #[test]
        fn the_fast_path_never_accepts_what_prost_reads_otherwise(
            buf in header(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            how in 0u8..4,
        ) {
            let mut buf = buf;
            let i = at.index(buf.len().max(1));
            match how {
                0 if !buf.is_empty() => buf[i] = byte,
                1 => buf.insert(i.min(buf.len()), byte),
                2 => buf.truncate(i),
                _ => buf.extend_from_slice(&[byte, byte >> 1]),
            }
            if let Some(f) = decode_common(&buf) {
                prop_assert_eq!(Some(f), by_prost(&buf));
            }
        }
    }

    /// Non-minimal varints and explicit zeros are read as prost reads them; an eleven-byte
    /// varint or a tenth byte above 1 is left to prost (which refuses it).
    #[test]
    fn edge_varints() {
        let sender = [3u8; 16];
        let mut buf = vec![MSG_ID, 0x80, 0x00, OPTIONS, 0x00, SENDER, 16];
        buf.extend_from_slice(&sender);
        let h = decode_common(&buf).unwrap();
        assert_eq!(Some(h), by_prost(&buf));
        let mut long = vec![MSG_ID];
        long.extend_from_slice(&[0xff; 9]);
        long.push(0x02);
        long.extend_from_slice(&[SENDER, 16]);
        long.extend_from_slice(&sender);
        assert_eq!(decode_common(&long), None);
        assert_eq!(by_prost(&long), None);
    }
}
