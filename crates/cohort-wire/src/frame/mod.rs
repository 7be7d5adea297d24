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

use bytes::Bytes;

use crate::auth::Nonce;
use crate::{Member, MemberId, SendOptions, TAG_LEN};

mod decode;
mod encode;
mod header;

pub(crate) use decode::{Check, decode_frame, peek_data_header, peek_prefix};
pub(crate) use encode::{
    Sign, encode_data, encode_data_around, encode_frame, reseal, reseal_parts,
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
/// [`MAX_EXTENSIONS`](crate::MAX_EXTENSIONS) per header.
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
    /// Why, for the sender's error (cut to [`MAX_FAIL_REASON_LEN`](crate::MAX_FAIL_REASON_LEN) bytes on encode).
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
