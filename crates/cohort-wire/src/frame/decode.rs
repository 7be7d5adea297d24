//! Decoding frames: the prefix first (what a reader checks before it buffers a body), then
//! the whole frame, checked.

use bytes::{Buf, BytesMut};
use prost::Message as _;

use super::*;
use crate::auth::{NONCE_LEN, Opener};
use crate::error::MalformedReason;
use crate::proto::{self, AckPb, ChallengePb, DataHeaderPb, HelloPb};
use crate::{
    ClusterKey, DecodeError, KeyRing, MAX_EXTENSIONS, MAX_FAIL_REASON_LEN, TAG_LEN, WireLimits,
};

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
    if let Some(h) = super::header::decode_common(&header) {
        return Ok(h);
    }
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
