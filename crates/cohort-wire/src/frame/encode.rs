//! Encoding frames: the prefix, the headers (the data header without prost's allocations),
//! signing and resealing.

use bytes::{BufMut, BytesMut};
use prost::Message as _;

use super::*;
use crate::auth::Sealer;
use crate::proto::{self, AckPb, AckRangePb, ChallengePb, FailAckPb, HelloPb};
use crate::{EncodeError, KeyRing, MAX_EXTENSIONS, MAX_FAIL_REASON_LEN, TAG_LEN, WireLimits};

fn too_large(what: &'static str, len: usize, max: u64) -> EncodeError {
    EncodeError::TooLarge {
        what,
        len: len as u64,
        max,
    }
}

/// The data header to encode, checked.
fn header_out_data(h: &DataHeader) -> Result<DataHeaderOut<'_>, EncodeError> {
    if h.extensions.len() > MAX_EXTENSIONS {
        return Err(EncodeError::FieldTooLong {
            field: "extensions",
            len: h.extensions.len(),
            max: MAX_EXTENSIONS,
        });
    }
    Ok(DataHeaderOut(h))
}

/// A data header encoded straight from its [`DataHeader`], byte for byte as prost encodes the
/// same fields in a `DataHeaderPb` (fields in tag order; zero numbers and empty bytes left
/// out), without the allocations building one would take (the sender id's `Vec`, and the
/// extensions' when there are any): the sender writes one per frame. Decoding still goes through
/// `DataHeaderPb`.
struct DataHeaderOut<'a>(&'a DataHeader);

/// Protocol buffers' wire types used here.
const WIRE_VARINT: u64 = 0;
const WIRE_LEN: u64 = 2;

fn varint_len(v: u64) -> usize {
    // 7 bits a byte; 0 takes one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(mut v: u64, out: &mut impl Put) {
    while v >= 0x80 {
        out.byte((v.to_le_bytes()[0] & 0x7f) | 0x80);
        v >>= 7;
    }
    // Below 0x80 here: the low byte is all of it.
    out.byte(v.to_le_bytes()[0]);
}

/// Where a frame's prefix and header are written: the output itself, or [`HeadBuf`].
trait Put {
    fn bytes(&mut self, b: &[u8]);
    fn byte(&mut self, b: u8);
}

impl Put for BytesMut {
    fn bytes(&mut self, b: &[u8]) {
        self.put_slice(b);
    }
    fn byte(&mut self, b: u8) {
        self.put_u8(b);
    }
}

/// Room for the prefix and a data header without extensions (at most 16 + 57 bytes).
const HEAD_ROOM: usize = 96;

/// A data frame's prefix and header (without extensions) are written here, on the stack,
/// and copied into the output in one piece: one reservation and one copy instead of a
/// couple of dozen small writes, each checking the output's capacity. Used only when what it
/// will hold is known to fit.
struct HeadBuf {
    buf: [u8; HEAD_ROOM],
    len: usize,
}

impl HeadBuf {
    fn new() -> Self {
        Self {
            buf: [0; HEAD_ROOM],
            len: 0,
        }
    }

    fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Put for HeadBuf {
    fn bytes(&mut self, b: &[u8]) {
        self.buf[self.len..self.len + b.len()].copy_from_slice(b);
        self.len += b.len();
    }
    fn byte(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }
}

fn key(tag: u64, wire: u64) -> u64 {
    (tag << 3) | wire
}

impl DataHeaderOut<'_> {
    /// The numeric fields that are not zero, as (tag, value).
    fn numbers(&self) -> [(u64, u64); 4] {
        let h = self.0;
        [
            (1, h.msg_id),
            (2, u64::from(h.options.bits())),
            (4, h.timestamp_ms),
            (5, h.seq),
        ]
    }

    fn extension_len(e: &Extension) -> usize {
        let tag = if e.tag == 0 {
            0
        } else {
            1 + varint_len(u64::from(e.tag))
        };
        let value = if e.value.is_empty() {
            0
        } else {
            1 + varint_len(e.value.len() as u64) + e.value.len()
        };
        tag + value
    }

    fn encoded_len(&self) -> usize {
        let id = self.0.sender.as_bytes();
        let mut n = 0;
        for (tag, v) in self.numbers() {
            if v != 0 {
                n += varint_len(key(tag, WIRE_VARINT)) + varint_len(v);
            }
        }
        // Tag 3, the sender: 16 bytes, never empty.
        n += 1 + varint_len(id.len() as u64) + id.len();
        for e in &self.0.extensions {
            let len = Self::extension_len(e);
            n += 1 + varint_len(len as u64) + len;
        }
        n
    }

    fn encode_raw(&self, out: &mut impl Put) {
        let id = self.0.sender.as_bytes();
        let [msg_id, options, timestamp, seq] = self.numbers();
        for (tag, v) in [msg_id, options] {
            if v != 0 {
                put_varint(key(tag, WIRE_VARINT), out);
                put_varint(v, out);
            }
        }
        put_varint(key(3, WIRE_LEN), out);
        put_varint(id.len() as u64, out);
        out.bytes(id);
        for (tag, v) in [timestamp, seq] {
            if v != 0 {
                put_varint(key(tag, WIRE_VARINT), out);
                put_varint(v, out);
            }
        }
        for e in &self.0.extensions {
            put_varint(key(6, WIRE_LEN), out);
            put_varint(Self::extension_len(e) as u64, out);
            if e.tag != 0 {
                put_varint(key(1, WIRE_VARINT), out);
                put_varint(u64::from(e.tag), out);
            }
            if !e.value.is_empty() {
                put_varint(key(2, WIRE_LEN), out);
                put_varint(e.value.len() as u64, out);
                out.bytes(&e.value);
            }
        }
    }
}

fn header_pb_ack(a: &AckFrame, limits: &WireLimits) -> Result<AckPb, EncodeError> {
    let entries = a.acked.len() + a.failed.len();
    if entries > limits.max_ack_entries {
        return Err(EncodeError::FieldTooLong {
            field: "ack entries",
            len: entries,
            max: limits.max_ack_entries,
        });
    }
    let mut acked = Vec::with_capacity(a.acked.len());
    for r in &a.acked {
        if r.first > r.last {
            return Err(EncodeError::EmptyAckRange {
                first: r.first,
                last: r.last,
            });
        }
        acked.push(AckRangePb {
            first: r.first,
            last: r.last,
        });
    }
    let failed = a
        .failed
        .iter()
        .map(|f| FailAckPb {
            msg_id: f.msg_id,
            reason: truncate_utf8(&f.reason, MAX_FAIL_REASON_LEN).to_owned(),
        })
        .collect();
    Ok(AckPb { acked, failed })
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// How an encoded frame is authenticated.
pub(crate) enum Sign<'a> {
    /// Not at all (no key configured).
    None,
    /// With the signing key of a ring.
    Ring(&'a KeyRing),
    /// With a connection's sealer.
    Sealed(&'a mut Sealer),
}

impl Sign<'_> {
    fn tag(&mut self, body: &[u8]) -> Option<[u8; TAG_LEN]> {
        match self {
            Self::None => None,
            Self::Ring(keys) => Some(keys.sign(body)),
            Self::Sealed(sealer) => {
                let inner = sealer.cluster_key().tag(body);
                Some(sealer.next_tag(&inner))
            }
        }
    }
}

/// The header of a frame about to be encoded: prost messages, and the data header written by
/// hand.
enum Header<'a> {
    Data(DataHeaderOut<'a>),
    Ack(AckPb),
    Hello(Box<HelloPb>),
    Challenge(ChallengePb),
}

impl Header<'_> {
    fn encoded_len(&self) -> usize {
        match self {
            Self::Data(h) => h.encoded_len(),
            Self::Ack(h) => h.encoded_len(),
            Self::Hello(h) => h.encoded_len(),
            Self::Challenge(h) => h.encoded_len(),
        }
    }

    fn encode_raw(&self, out: &mut BytesMut) {
        match self {
            Self::Data(h) => h.encode_raw(out),
            Self::Ack(h) => h.encode_raw(out),
            Self::Hello(h) => h.encode_raw(out),
            Self::Challenge(h) => h.encode_raw(out),
        }
    }
}

/// Encodes `frame` at the end of `out`. On error `out` is unchanged.
pub(crate) fn encode_frame(
    frame: &Frame,
    version: u8,
    limits: &WireLimits,
    sign: Sign<'_>,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    // Build the prost header first: nothing is written to `out` until everything is checked.
    let (header, payload): (Header<'_>, &[u8]) = match frame {
        Frame::Data(d) => return encode_data(d, version, limits, sign, out),
        Frame::Ack(a) => (Header::Ack(header_pb_ack(a, limits)?), &[]),
        Frame::Hello(h) => {
            proto::validate_member(&h.member, limits)?;
            let pb = HelloPb {
                member: Some(proto::member_to_pb(&h.member)),
                nonce: h.nonce.map(|n| n.to_vec()).unwrap_or_default(),
            };
            (Header::Hello(Box::new(pb)), &[])
        }
        Frame::Challenge(nonce) => (
            Header::Challenge(ChallengePb {
                nonce: nonce.to_vec(),
            }),
            &[],
        ),
    };
    encode_with(frame.kind(), &header, payload, version, limits, sign, out)
}

/// Encodes a data frame at the end of `out` (as [`encode_frame`] with a [`Frame::Data`],
/// without building one). On error `out` is unchanged.
pub(crate) fn encode_data(
    frame: &DataFrame,
    version: u8,
    limits: &WireLimits,
    sign: Sign<'_>,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let header = Header::Data(header_out_data(&frame.header)?);
    encode_with(
        FrameKind::Data,
        &header,
        &frame.payload,
        version,
        limits,
        sign,
        out,
    )
}

/// Encodes an unsigned data frame around its payload, which is not copied: appends the
/// prefix and the header to `out` and returns the CRC that follows the payload on the wire.
/// The frame is `out`'s new bytes, then the payload, then the CRC (big-endian), byte for
/// byte what [`encode_data`] writes unsigned. On error `out` is unchanged.
pub(crate) fn encode_data_around(
    frame: &DataFrame,
    version: u8,
    limits: &WireLimits,
    out: &mut BytesMut,
) -> Result<[u8; CRC_LEN], EncodeError> {
    let header = Header::Data(header_out_data(&frame.header)?);
    let start = out.len();
    write_head(
        FrameKind::Data,
        &header,
        frame.payload.len(),
        version,
        limits,
        false,
        out,
    )?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[start..]);
    crc.update(&frame.payload);
    Ok(crc.finalize().to_be_bytes())
}

/// A frame's prefix, once its lengths are checked against `limits` (header first, then
/// payload).
fn frame_prefix(
    kind: FrameKind,
    version: u8,
    signed: bool,
    header_len: usize,
    payload_len: usize,
    limits: &WireLimits,
) -> Result<[u8; FRAME_PREFIX_LEN], EncodeError> {
    if header_len > limits.max_frame_header as usize {
        return Err(too_large(
            "frame header",
            header_len,
            limits.max_frame_header.into(),
        ));
    }
    if payload_len > limits.max_frame_payload as usize {
        return Err(too_large(
            "frame payload",
            payload_len,
            limits.max_frame_payload.into(),
        ));
    }
    // Both lengths were checked against u32 limits above.
    let (header_len32, payload_len32) = (
        u32::try_from(header_len).map_err(|_| too_large("frame header", header_len, 0))?,
        u32::try_from(payload_len).map_err(|_| too_large("frame payload", payload_len, 0))?,
    );
    let mut prefix = [0u8; FRAME_PREFIX_LEN];
    prefix[..4].copy_from_slice(&FRAME_MAGIC);
    prefix[4..8].copy_from_slice(&[
        version,
        kind as u8,
        if signed { FLAG_AUTHENTICATED } else { 0 },
        0,
    ]);
    prefix[8..12].copy_from_slice(&header_len32.to_be_bytes());
    prefix[12..16].copy_from_slice(&payload_len32.to_be_bytes());
    Ok(prefix)
}

/// Checks the lengths and writes the prefix and the header.
fn write_head(
    kind: FrameKind,
    header: &Header<'_>,
    payload_len: usize,
    version: u8,
    limits: &WireLimits,
    signed: bool,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    if let Header::Data(h) = header {
        if h.0.extensions.is_empty() {
            return write_data_head(kind, h, payload_len, version, limits, signed, out);
        }
    }
    let header_len = header.encoded_len();
    let prefix = frame_prefix(kind, version, signed, header_len, payload_len, limits)?;
    let tag_len = if signed { TAG_LEN } else { 0 };
    let start = out.len();
    out.reserve(FRAME_PREFIX_LEN + header_len + payload_len + tag_len + CRC_LEN);
    match header {
        Header::Data(h) if FRAME_PREFIX_LEN + header_len <= HEAD_ROOM => {
            let mut head = HeadBuf::new();
            head.bytes(&prefix);
            h.encode_raw(&mut head);
            out.put_slice(head.as_slice());
        }
        _ => {
            out.put_slice(&prefix);
            header.encode_raw(out);
        }
    }
    debug_assert_eq!(out.len() - start, FRAME_PREFIX_LEN + header_len);
    Ok(())
}

/// [`write_head`] for a data header without extensions (every frame the channel sends
/// without an interceptor's tag): the header is written once, straight after the prefix's
/// place in a [`HeadBuf`], its length taken from what was written (not computed first), and the
/// prefix filled in before the whole head is copied out. The same bytes, and the same checks
/// in the same order, as the general path.
fn write_data_head(
    kind: FrameKind,
    h: &DataHeaderOut<'_>,
    payload_len: usize,
    version: u8,
    limits: &WireLimits,
    signed: bool,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let mut head = HeadBuf::new();
    head.len = FRAME_PREFIX_LEN;
    // Without extensions at most 57 bytes: it fits.
    h.encode_raw(&mut head);
    let header_len = head.len - FRAME_PREFIX_LEN;
    let prefix = frame_prefix(kind, version, signed, header_len, payload_len, limits)?;
    head.buf[..FRAME_PREFIX_LEN].copy_from_slice(&prefix);
    let tag_len = if signed { TAG_LEN } else { 0 };
    out.reserve(head.len + payload_len + tag_len + CRC_LEN);
    out.put_slice(head.as_slice());
    Ok(())
}

fn encode_with(
    kind: FrameKind,
    header: &Header<'_>,
    payload: &[u8],
    version: u8,
    limits: &WireLimits,
    mut sign: Sign<'_>,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let signed = !matches!(sign, Sign::None);
    let start = out.len();
    write_head(kind, header, payload.len(), version, limits, signed, out)?;
    out.put_slice(payload);
    if let Some(tag) = sign.tag(&out[start..]) {
        out.put_slice(&tag);
    }
    let crc = crc32fast::hash(&out[start..]);
    out.put_u32(crc);
    Ok(())
}

/// Where the body of `encoded` ends, when it is exactly one frame signed with the cluster key
/// (what a connection's seal replaces follows it: the tag and the CRC).
fn sealable_body_end(
    encoded: &[u8],
    min_version: u8,
    max_version: u8,
    limits: &WireLimits,
) -> Result<usize, EncodeError> {
    let not_one_frame = || EncodeError::NotSealable {
        len: encoded.len() as u64,
    };
    let prefix = peek_prefix(encoded, min_version, max_version, limits)
        .ok()
        .flatten()
        .ok_or_else(not_one_frame)?;
    if !prefix.is_authenticated() || prefix.total_len() != encoded.len() {
        return Err(not_one_frame());
    }
    Ok(encoded.len() - TAG_LEN - CRC_LEN)
}

/// Appends `encoded` (one whole frame signed with the cluster key) to `out`, its tag replaced by
/// `sealer`'s connection tag and its CRC recomputed. On error `out` is unchanged.
pub(crate) fn reseal(
    encoded: &[u8],
    min_version: u8,
    max_version: u8,
    limits: &WireLimits,
    sealer: &mut Sealer,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let body_end = sealable_body_end(encoded, min_version, max_version, limits)?;
    let tag = sealer.next_tag(&encoded[body_end..body_end + TAG_LEN]);
    let start = out.len();
    out.reserve(encoded.len());
    out.put_slice(&encoded[..body_end]);
    out.put_slice(&tag);
    let crc = crc32fast::hash(&out[start..]);
    out.put_u32(crc);
    Ok(())
}

/// Seals `encoded` for a connection without copying its body: returns the body (a slice of
/// `encoded`) and the 36 bytes that follow it on the wire (the connection tag and the CRC).
pub(crate) fn reseal_parts(
    encoded: &Bytes,
    min_version: u8,
    max_version: u8,
    limits: &WireLimits,
    sealer: &mut Sealer,
) -> Result<(Bytes, [u8; TAG_LEN + CRC_LEN]), EncodeError> {
    let body_end = sealable_body_end(encoded, min_version, max_version, limits)?;
    let tag = sealer.next_tag(&encoded[body_end..body_end + TAG_LEN]);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&encoded[..body_end]);
    crc.update(&tag);
    let mut trailer = [0u8; TAG_LEN + CRC_LEN];
    trailer[..TAG_LEN].copy_from_slice(&tag);
    trailer[TAG_LEN..].copy_from_slice(&crc.finalize().to_be_bytes());
    Ok((encoded.slice(..body_end), trailer))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::proto::{DataHeaderPb, ExtensionPb};

    /// What prost writes for the same header (the encoding before `DataHeaderOut`).
    fn prost_bytes(h: &DataHeader) -> Vec<u8> {
        DataHeaderPb {
            msg_id: h.msg_id,
            options: h.options.bits(),
            sender: h.sender.as_bytes().to_vec(),
            timestamp_ms: h.timestamp_ms,
            seq: h.seq,
            extensions: h
                .extensions
                .iter()
                .map(|e| ExtensionPb {
                    tag: e.tag,
                    value: e.value.clone(),
                })
                .collect(),
        }
        .encode_to_vec()
    }

    /// Numbers near the varint length steps, zero (left out) and the extremes.
    fn number() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            Just(u64::MAX),
            (0u32..64).prop_map(|b| 1u64 << b),
            (1u32..64).prop_map(|b| (1u64 << b) - 1),
            any::<u64>(),
        ]
    }

    /// Over `max_frame_header` or `max_frame_payload`: refused, and nothing written, with and
    /// without extensions (the two ways a data frame's head is written).
    #[test]
    fn a_data_frame_over_a_limit_is_refused_and_nothing_written() {
        for extensions in [
            vec![],
            vec![Extension {
                tag: 9,
                value: Bytes::from_static(b"x"),
            }],
        ] {
            let frame = DataFrame {
                header: DataHeader {
                    msg_id: 1,
                    options: SendOptions::USE_ACK,
                    sender: MemberId::from_bytes([7; 16]),
                    timestamp_ms: 1_700_000_000_000,
                    seq: 1,
                    extensions,
                },
                payload: Bytes::from_static(&[0u8; 100]),
            };
            let header_len = DataHeaderOut(&frame.header).encoded_len();
            let cases = [
                (header_len - 1, 100, "frame header"),
                (header_len, 99, "frame payload"),
            ];
            for (max_header, max_payload, what_over) in cases {
                let limits = WireLimits {
                    max_frame_header: u32::try_from(max_header).unwrap(),
                    max_frame_payload: max_payload,
                    ..WireLimits::default()
                };
                let mut out = BytesMut::from(&b"before"[..]);
                let err = encode_data(&frame, 1, &limits, Sign::None, &mut out).unwrap_err();
                assert!(
                    matches!(err, EncodeError::TooLarge { what, .. } if what == what_over),
                    "{err:?}"
                );
                assert_eq!(&out[..], b"before");
                let err = encode_data_around(&frame, 1, &limits, &mut out).unwrap_err();
                assert!(matches!(err, EncodeError::TooLarge { what, .. } if what == what_over));
                assert_eq!(&out[..], b"before");
            }
            // At the limits exactly: written.
            let limits = WireLimits {
                max_frame_header: u32::try_from(header_len).unwrap(),
                max_frame_payload: 100,
                ..WireLimits::default()
            };
            let mut out = BytesMut::new();
            encode_data(&frame, 1, &limits, Sign::None, &mut out).unwrap();
            assert_eq!(out.len(), FRAME_PREFIX_LEN + header_len + 100 + CRC_LEN);
        }
    }

    proptest! {
        #[test]
        fn the_data_header_encodes_byte_for_byte_as_prost_does(
            msg_id in number(),
            options in prop_oneof![Just(0u32), any::<u32>()],
            sender in any::<[u8; 16]>(),
            timestamp_ms in number(),
            seq in number(),
            extensions in proptest::collection::vec(
                (prop_oneof![Just(0u32), any::<u32>()], proptest::collection::vec(any::<u8>(), 0..200)),
                0..=MAX_EXTENSIONS,
            ),
        ) {
            let h = DataHeader {
                msg_id,
                options: SendOptions::from_bits(options),
                sender: MemberId::from_bytes(sender),
                timestamp_ms,
                seq,
                extensions: extensions
                    .into_iter()
                    .map(|(tag, value)| Extension { tag, value: Bytes::from(value) })
                    .collect(),
            };
            let out = DataHeaderOut(&h);
            let mut ours = BytesMut::new();
            out.encode_raw(&mut ours);
            let want = prost_bytes(&h);
            prop_assert_eq!(&ours[..], &want[..]);
            prop_assert_eq!(out.encoded_len(), want.len());
            // The same through the stack buffer, when it fits there.
            if want.len() <= HEAD_ROOM {
                let mut head = HeadBuf::new();
                out.encode_raw(&mut head);
                prop_assert_eq!(head.as_slice(), &want[..]);
            }
        }

        /// A whole data frame, whichever way its head was written (on the stack when the
        /// header is small, into the output when extensions make it large): the prefix, the
        /// header as prost encodes it, the payload and the CRC of all that, after whatever
        /// the output already held.
        #[test]
        fn a_data_frame_is_its_prefix_header_payload_and_crc(
            msg_id in number(),
            seq in number(),
            ext_len in prop_oneof![Just(None), (0usize..200).prop_map(Some)],
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            before in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let h = DataHeader {
                msg_id,
                options: SendOptions::USE_ACK,
                sender: MemberId::from_bytes([7; 16]),
                timestamp_ms: 1_700_000_000_000,
                seq,
                extensions: ext_len
                    .map(|n| Extension { tag: 9, value: Bytes::from(vec![1u8; n]) })
                    .into_iter()
                    .collect(),
            };
            let header = prost_bytes(&h);
            let frame = DataFrame { header: h, payload: Bytes::from(payload.clone()) };
            let mut out = BytesMut::from(&before[..]);
            encode_data(&frame, 1, &WireLimits::default(), Sign::None, &mut out).unwrap();
            let mut want = Vec::new();
            want.extend_from_slice(&FRAME_MAGIC);
            want.extend_from_slice(&[1, FrameKind::Data as u8, 0, 0]);
            want.extend_from_slice(&u32::try_from(header.len()).unwrap().to_be_bytes());
            want.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
            want.extend_from_slice(&header);
            want.extend_from_slice(&payload);
            let crc = crc32fast::hash(&want);
            want.extend_from_slice(&crc.to_be_bytes());
            prop_assert_eq!(&out[..before.len()], &before[..]);
            prop_assert_eq!(&out[before.len()..], &want[..]);
        }
    }
}
