//! Stream frames: data messages, ACK / FAIL_ACK batches and connection hellos.
//!
//! Layout (all integers big-endian; docs/PROTOCOL.md §2 has every byte):
//!
//! ```text
//! 0      4  magic "COHF"
//! 4      1  protocol version
//! 5      1  kind (1 data, 2 ack, 3 hello, 4 challenge)
//! 6      1  flags (0x01 authenticated)
//! 7      1  reserved, sent as 0, ignored
//! 8      4  header length H (<= max_frame_header)
//! 12     4  payload length P (<= max_frame_payload)
//! 16     H  prost-encoded header of the kind
//! 16+H   P  payload
//! ..    32  HMAC-SHA256 tag (only when flag 0x01): over bytes 0..16+H+P under the cluster key
//!           for challenges and hellos; under the connection key, over the direction, the
//!           frame's sequence on its connection and that cluster-key tag, for every later frame
//!           of a keyed connection (docs/PROTOCOL.md §2.5)
//! ..     4  CRC32 (IEEE) over every byte before it
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message as _;

use crate::auth::{NONCE_LEN, Nonce, Opener, Sealer};
use crate::error::MalformedReason;
use crate::proto::{self, AckPb, AckRangePb, ChallengePb, DataHeaderPb, FailAckPb, HelloPb};
use crate::{
    ClusterKey, DecodeError, EncodeError, KeyRing, MAX_EXTENSIONS, MAX_FAIL_REASON_LEN, Member,
    MemberId, SendOptions, TAG_LEN, WireLimits,
};

/// Magic of a stream frame: ASCII `COHF`.
pub const FRAME_MAGIC: [u8; 4] = *b"COHF";
/// Length of the fixed frame prefix.
pub const FRAME_PREFIX_LEN: usize = 16;
/// Length of the CRC trailer.
pub const CRC_LEN: usize = 4;
/// Flag bit: the frame carries an HMAC-SHA256 tag before its CRC.
pub const FLAG_AUTHENTICATED: u8 = 0x01;

/// The kind byte of a frame.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum FrameKind {
    /// An application or control message.
    Data = 1,
    /// A batch of ACKs and FAIL_ACKs.
    Ack = 2,
    /// The connecting side's first frame: who is connecting.
    Hello = 3,
    /// The accepting side's answer to a keyed hello: a fresh nonce.
    Challenge = 4,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Data),
            2 => Some(Self::Ack),
            3 => Some(Self::Hello),
            4 => Some(Self::Challenge),
            _ => None,
        }
    }
}

/// An extension field of a data header: a tag owned by one interceptor and its bytes
/// (fragment numbers, order sequence, compression marker, ...). At most
/// [`MAX_EXTENSIONS`] per header.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Extension {
    /// Which interceptor owns it (see docs/PROTOCOL.md for assigned tags).
    pub tag: u32,
    /// Its bytes.
    pub value: Bytes,
}

/// The header of a data frame.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct DataHeader {
    /// Message id, unique per sender (the sender counts up); `(sender, msg_id)` identifies a
    /// message cluster-wide, and ACKs name it.
    pub msg_id: u64,
    /// Send options, including interceptor bits.
    pub options: SendOptions,
    /// The sending member's id.
    pub sender: MemberId,
    /// Sender's wall clock when sent, ms since the Unix epoch (informational only).
    pub timestamp_ms: u64,
    /// Per-sender sequence number for ordering, 0 when unordered.
    pub seq: u64,
    /// Interceptor extensions.
    pub extensions: Vec<Extension>,
}

impl DataHeader {
    /// The value of the first extension with `tag`.
    pub fn extension(&self, tag: u32) -> Option<&Bytes> {
        self.extensions
            .iter()
            .find(|e| e.tag == tag)
            .map(|e| &e.value)
    }
}

/// A data frame: header and payload.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DataFrame {
    /// The header.
    pub header: DataHeader,
    /// The payload (zero-copy slice of the received buffer).
    pub payload: Bytes,
}

/// An inclusive range of acknowledged message ids.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AckRange {
    /// First id acknowledged.
    pub first: u64,
    /// Last id acknowledged (`>= first`).
    pub last: u64,
}

impl AckRange {
    /// A range of one id.
    pub fn single(id: u64) -> Self {
        Self {
            first: id,
            last: id,
        }
    }

    /// True when `id` is in the range.
    pub fn contains(&self, id: u64) -> bool {
        (self.first..=self.last).contains(&id)
    }
}

/// A message whose processing failed at the receiver (Tribes' FAIL_ACK).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct FailAck {
    /// The failed message.
    pub msg_id: u64,
    /// Why, for the sender's error (cut to [`MAX_FAIL_REASON_LEN`] bytes on encode).
    pub reason: String,
}

/// A batch of ACKs and FAIL_ACKs for messages received on one connection.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct AckFrame {
    /// Ids processed successfully (or received, for plain USE_ACK), as ranges.
    pub acked: Vec<AckRange>,
    /// Ids whose processing failed.
    pub failed: Vec<FailAck>,
}

impl AckFrame {
    /// Builds a frame from acknowledged ids in any order, merging runs into ranges.
    pub fn from_ids(mut ids: Vec<u64>) -> Self {
        ids.sort_unstable();
        ids.dedup();
        let mut acked: Vec<AckRange> = Vec::new();
        for id in ids {
            match acked.last_mut() {
                Some(r) if r.last.checked_add(1) == Some(id) => r.last = id,
                _ => acked.push(AckRange::single(id)),
            }
        }
        Self {
            acked,
            failed: Vec::new(),
        }
    }

    /// Every acknowledged id, in range order.
    pub fn acked_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.acked.iter().flat_map(|r| r.first..=r.last)
    }
}

/// The connecting side's first frame: who it is and, on a keyed connection, the connector's
/// nonce (with the acceptor's challenge it keys the connection, see [`crate::Session`]).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Hello {
    /// The connecting member.
    pub member: Member,
    /// The connector's nonce (keyed connections).
    pub nonce: Option<Nonce>,
}

impl Hello {
    /// A hello without nonces, as an unkeyed connection sends.
    pub fn new(member: Member) -> Self {
        Self {
            member,
            nonce: None,
        }
    }
}

/// A frame of any kind.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Frame {
    /// A message.
    Data(DataFrame),
    /// ACKs and FAIL_ACKs.
    Ack(AckFrame),
    /// A connection hello naming the connecting member.
    Hello(Box<Hello>),
    /// The accepting side's answer to a keyed hello: a fresh nonce.
    Challenge(Nonce),
}

impl Frame {
    /// The kind byte.
    pub fn kind(&self) -> FrameKind {
        match self {
            Self::Data(_) => FrameKind::Data,
            Self::Ack(_) => FrameKind::Ack,
            Self::Hello(_) => FrameKind::Hello,
            Self::Challenge(_) => FrameKind::Challenge,
        }
    }
}

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
/// out), without the allocations building one would take (the sender id's `Vec`, the
/// extensions' `Vec`): the sender writes one per frame. Decoding still goes through
/// `DataHeaderPb`.
struct DataHeaderOut<'a>(&'a DataHeader);

/// Protocol buffers' wire types used here.
const WIRE_VARINT: u64 = 0;
const WIRE_LEN: u64 = 2;

fn varint_len(v: u64) -> usize {
    // 7 bits a byte; 0 takes one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(mut v: u64, out: &mut BytesMut) {
    while v >= 0x80 {
        out.put_u8((v.to_le_bytes()[0] & 0x7f) | 0x80);
        v >>= 7;
    }
    // Below 0x80 here: the low byte is all of it.
    out.put_u8(v.to_le_bytes()[0]);
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

    fn encode_raw(&self, out: &mut BytesMut) {
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
        out.put_slice(id);
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
                out.put_slice(&e.value);
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

/// The prost header of a frame about to be encoded.
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
    let header_len = header.encoded_len();
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
    let tag_len = if signed { TAG_LEN } else { 0 };
    let start = out.len();
    out.reserve(FRAME_PREFIX_LEN + header_len + payload_len + tag_len + CRC_LEN);
    out.put_slice(&FRAME_MAGIC);
    out.put_u8(version);
    out.put_u8(kind as u8);
    out.put_u8(if signed { FLAG_AUTHENTICATED } else { 0 });
    out.put_u8(0);
    out.put_u32(header_len32);
    out.put_u32(payload_len32);
    header.encode_raw(out);
    debug_assert_eq!(out.len() - start, FRAME_PREFIX_LEN + header_len);
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

/// What the fixed 16-byte prefix of a frame declares, checked against the limits: enough for a
/// reader to decide whether the frame is acceptable before it buffers the frame's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FramePrefix {
    /// The kind byte as sent (not yet checked against the known kinds).
    pub kind: u8,
    /// The flag byte.
    pub flags: u8,
    /// Length of the prost header.
    pub header_len: u32,
    /// Length of the payload.
    pub payload_len: u32,
}

impl FramePrefix {
    /// The kind, if known.
    pub fn frame_kind(&self) -> Option<FrameKind> {
        FrameKind::from_byte(self.kind)
    }

    /// True when the frame carries an HMAC tag.
    pub fn is_authenticated(&self) -> bool {
        self.flags & FLAG_AUTHENTICATED != 0
    }

    /// Offset of the end of the header (prefix included).
    pub fn header_end(&self) -> usize {
        FRAME_PREFIX_LEN + self.header_len as usize
    }

    /// The whole frame's length: prefix, header, payload, tag, CRC.
    pub fn total_len(&self) -> usize {
        let tag = if self.is_authenticated() { TAG_LEN } else { 0 };
        self.header_end() + self.payload_len as usize + tag + CRC_LEN
    }
}

/// Reads and checks the prefix at the front of `buf` (magic, version, both lengths against
/// `limits`); `Ok(None)` until 16 bytes are there. Consumes nothing.
pub(crate) fn peek_prefix(
    buf: &[u8],
    min_version: u8,
    max_version: u8,
    limits: &WireLimits,
) -> Result<Option<FramePrefix>, DecodeError> {
    // Check what is there as early as possible: a wrong magic is reported after 4 bytes.
    let magic_len = buf.len().min(4);
    if buf[..magic_len] != FRAME_MAGIC[..magic_len] {
        let mut found = [0u8; 4];
        found[..magic_len].copy_from_slice(&buf[..magic_len]);
        return Err(DecodeError::BadMagic {
            found,
            expected: FRAME_MAGIC,
        });
    }
    if buf.len() >= 5 {
        let version = buf[4];
        if !(min_version..=max_version).contains(&version) {
            return Err(DecodeError::UnsupportedVersion {
                version,
                min: min_version,
                max: max_version,
            });
        }
    }
    if buf.len() < FRAME_PREFIX_LEN {
        return Ok(None);
    }
    let mut prefix = &buf[5..FRAME_PREFIX_LEN];
    let kind = prefix.get_u8();
    let flags = prefix.get_u8();
    let _reserved = prefix.get_u8();
    let header_len = prefix.get_u32();
    let payload_len = prefix.get_u32();
    if header_len > limits.max_frame_header {
        return Err(DecodeError::TooLarge {
            what: "frame header",
            len: header_len.into(),
            max: limits.max_frame_header.into(),
        });
    }
    if payload_len > limits.max_frame_payload {
        return Err(DecodeError::TooLarge {
            what: "frame payload",
            len: payload_len.into(),
            max: limits.max_frame_payload.into(),
        });
    }
    Ok(Some(FramePrefix {
        kind,
        flags,
        header_len,
        payload_len,
    }))
}

/// Parses the header of a data frame whose prefix and header are at the front of `buf`
/// (before its payload has arrived): lets a reader check the sender before it buffers a large
/// payload. Nothing is authenticated yet: the tag and CRC come after the payload.
pub(crate) fn peek_data_header(
    buf: &[u8],
    prefix: &FramePrefix,
) -> Result<Option<DataHeader>, DecodeError> {
    if buf.len() < prefix.header_end() {
        return Ok(None);
    }
    let header = Bytes::copy_from_slice(&buf[FRAME_PREFIX_LEN..prefix.header_end()]);
    data_header(header).map(Some)
}

/// How a decoded frame's tag is checked.
pub(crate) enum Check<'a> {
    /// Against any key of a ring (or, without a ring, the frame must be unsigned).
    Ring(Option<&'a KeyRing>),
    /// Against a connection's opener.
    Sealed(&'a mut Opener),
}

/// Streaming decode: takes one complete frame off the front of `buf`, `Ok(None)` when more
/// bytes are needed. Returns the ring key that verified it, if checked against a ring. On error
/// the stream is unusable and should be closed: errors found in the fixed prefix, CRC or tag
/// leave `buf` unchanged; a malformed header consumes its frame.
pub(crate) fn decode_frame<'k>(
    buf: &mut BytesMut,
    min_version: u8,
    max_version: u8,
    limits: &WireLimits,
    check: Check<'k>,
) -> Result<Option<(Frame, Option<&'k ClusterKey>)>, DecodeError> {
    let Some(prefix) = peek_prefix(buf, min_version, max_version, limits)? else {
        return Ok(None);
    };
    let (kind_byte, header_len, payload_len) = (prefix.kind, prefix.header_len, prefix.payload_len);
    let authenticated = prefix.is_authenticated();
    let tag_len = if authenticated { TAG_LEN } else { 0 };
    let body_end = FRAME_PREFIX_LEN + header_len as usize + payload_len as usize;
    let total = body_end + tag_len + CRC_LEN;
    if buf.len() < total {
        // The decoder never allocates on a peer's word: the reader grows `buf` as bytes arrive.
        return Ok(None);
    }
    let carried = u32::from_be_bytes([
        buf[total - 4],
        buf[total - 3],
        buf[total - 2],
        buf[total - 1],
    ]);
    let computed = crc32fast::hash(&buf[..total - CRC_LEN]);
    if computed != carried {
        return Err(DecodeError::CrcMismatch { computed, carried });
    }
    let (body, tag) = (&buf[..body_end], &buf[body_end..body_end + tag_len]);
    let verified_by = match (check, authenticated) {
        (Check::Ring(Some(keys)), true) => {
            Some(keys.verify_which(body, tag).ok_or(DecodeError::BadAuth)?)
        }
        (Check::Sealed(opener), true) => {
            if !opener.open(body, tag) {
                return Err(DecodeError::BadAuth);
            }
            None
        }
        (Check::Ring(Some(_)) | Check::Sealed(_), false) => return Err(DecodeError::MissingAuth),
        (Check::Ring(None), true) => return Err(DecodeError::NoKey),
        (Check::Ring(None), false) => None,
    };
    let kind =
        FrameKind::from_byte(kind_byte).ok_or(DecodeError::UnknownFrameKind { kind: kind_byte })?;
    // The frame is complete and intact: take it off the buffer and parse it without copying.
    let bytes = buf.split_to(total).freeze();
    let header = bytes.slice(FRAME_PREFIX_LEN..FRAME_PREFIX_LEN + header_len as usize);
    let payload = bytes.slice(FRAME_PREFIX_LEN + header_len as usize..body_end);
    parse_body(kind, header, payload, limits).map(|f| Some((f, verified_by)))
}

fn data_header(header: Bytes) -> Result<DataHeader, DecodeError> {
    const WHAT: &str = "data header";
    let pb = DataHeaderPb::decode(header).map_err(|e| proto::prost_error(WHAT, &e))?;
    proto::check_len(WHAT, "extensions", pb.extensions.len(), MAX_EXTENSIONS)?;
    let sender = MemberId::from_slice(&pb.sender).ok_or_else(|| {
        let detail = format!("{} bytes, need 16", pb.sender.len());
        proto::out_of_range(WHAT, "sender", detail)
    })?;
    Ok(DataHeader {
        msg_id: pb.msg_id,
        options: SendOptions::from_bits(pb.options),
        sender,
        timestamp_ms: pb.timestamp_ms,
        seq: pb.seq,
        extensions: pb
            .extensions
            .into_iter()
            .map(|e| Extension {
                tag: e.tag,
                value: e.value,
            })
            .collect(),
    })
}

fn parse_body(
    kind: FrameKind,
    header: Bytes,
    payload: Bytes,
    limits: &WireLimits,
) -> Result<Frame, DecodeError> {
    if kind != FrameKind::Data && !payload.is_empty() {
        let what = match kind {
            FrameKind::Ack => "ack frame",
            FrameKind::Challenge => "challenge frame",
            _ => "hello frame",
        };
        return Err(proto::malformed(
            what,
            MalformedReason::UnexpectedPayload { kind },
        ));
    }
    match kind {
        FrameKind::Data => Ok(Frame::Data(DataFrame {
            header: data_header(header)?,
            payload,
        })),
        FrameKind::Ack => {
            const WHAT: &str = "ack frame";
            let pb = AckPb::decode(header).map_err(|e| proto::prost_error(WHAT, &e))?;
            let entries = pb.acked.len() + pb.failed.len();
            proto::check_len(WHAT, "ack entries", entries, limits.max_ack_entries)?;
            let mut acked = Vec::with_capacity(pb.acked.len());
            for r in pb.acked {
                if r.first > r.last {
                    let detail = format!("first {} > last {}", r.first, r.last);
                    return Err(proto::out_of_range(WHAT, "acked", detail));
                }
                acked.push(AckRange {
                    first: r.first,
                    last: r.last,
                });
            }
            for f in &pb.failed {
                proto::check_len(WHAT, "reason", f.reason.len(), MAX_FAIL_REASON_LEN)?;
            }
            let failed = pb
                .failed
                .into_iter()
                .map(|f| FailAck {
                    msg_id: f.msg_id,
                    reason: f.reason,
                })
                .collect();
            Ok(Frame::Ack(AckFrame { acked, failed }))
        }
        FrameKind::Hello => {
            const WHAT: &str = "hello frame";
            let pb = HelloPb::decode(header).map_err(|e| proto::prost_error(WHAT, &e))?;
            let member = pb
                .member
                .ok_or_else(|| proto::malformed(WHAT, MalformedReason::MissingField("member")))?;
            Ok(Frame::Hello(Box::new(Hello {
                member: proto::member_from_pb(member, limits)?,
                nonce: nonce_field(WHAT, "nonce", &pb.nonce)?,
            })))
        }
        FrameKind::Challenge => {
            const WHAT: &str = "challenge frame";
            let pb = ChallengePb::decode(header).map_err(|e| proto::prost_error(WHAT, &e))?;
            nonce_field(WHAT, "nonce", &pb.nonce)?
                .map(Frame::Challenge)
                .ok_or_else(|| proto::malformed(WHAT, MalformedReason::MissingField("nonce")))
        }
    }
}

/// A nonce field: empty (absent) or exactly [`NONCE_LEN`] bytes.
fn nonce_field(
    what: &'static str,
    field: &'static str,
    bytes: &[u8],
) -> Result<Option<Nonce>, DecodeError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let nonce = Nonce::try_from(bytes).map_err(|_| {
        let detail = format!("{} bytes, need {NONCE_LEN}", bytes.len());
        proto::out_of_range(what, field, detail)
    })?;
    Ok(Some(nonce))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::proto::ExtensionPb;

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
        }
    }
}
