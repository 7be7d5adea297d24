//! Membership beacons: one UDP datagram per heartbeat.
//!
//! Layout (big-endian; docs/PROTOCOL.md §3 has every byte):
//!
//! ```text
//! 0      4  magic "COHB"
//! 4      1  protocol version
//! 5      1  flags (0x01 authenticated)
//! 6      2  body length B
//! 8      B  prost-encoded beacon body (member, command, seq, sent_at_ms)
//! 8+B   32  HMAC-SHA256 tag over bytes 0..8+B (only when flag 0x01)
//! ..     4  CRC32 (IEEE) over every byte before it
//! ```

use bytes::{BufMut, BytesMut};
use prost::Message as _;

use crate::error::MalformedReason;
use crate::proto::{self, BeaconPb};
use crate::{DecodeError, EncodeError, KeyRing, Member, TAG_LEN, WireLimits};

/// Magic of a beacon: ASCII `COHB`.
pub const BEACON_MAGIC: [u8; 4] = *b"COHB";
/// Length of the fixed beacon prefix.
pub const BEACON_PREFIX_LEN: usize = 8;

/// What a beacon says about its member.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum BeaconCommand {
    /// "I am alive" (an ordinary heartbeat).
    Alive,
    /// "I am leaving": receivers drop the member at once (Tribes' `BABY-ALEX`).
    Shutdown,
    /// "I have just started": receivers answer with a beacon of their own at once, so a new
    /// node learns the cluster in far less than a beacon period.
    Join,
}

impl BeaconCommand {
    fn to_wire(self) -> u32 {
        match self {
            Self::Alive => 0,
            Self::Shutdown => 1,
            Self::Join => 2,
        }
    }

    fn from_wire(value: u32) -> Option<Self> {
        match value {
            0 => Some(Self::Alive),
            1 => Some(Self::Shutdown),
            2 => Some(Self::Join),
            _ => None,
        }
    }
}

/// A membership heartbeat.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Beacon {
    /// The member announcing itself.
    pub member: Member,
    /// What it says.
    pub command: BeaconCommand,
    /// Counts up with every beacon the member sends; with authentication on, receivers reject a
    /// beacon whose `seq` is not above the last they accepted from the member (replay).
    pub seq: u64,
    /// Sender's wall clock, ms since the Unix epoch.
    pub sent_at_ms: u64,
}

pub(crate) fn encode_beacon(
    beacon: &Beacon,
    version: u8,
    limits: &WireLimits,
    keys: Option<&KeyRing>,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    proto::validate_member(&beacon.member, limits)?;
    let pb = BeaconPb {
        member: Some(proto::member_to_pb(&beacon.member)),
        command: beacon.command.to_wire(),
        seq: beacon.seq,
        sent_at_ms: beacon.sent_at_ms,
    };
    let body_len = pb.encoded_len();
    let tag_len = if keys.is_some() { TAG_LEN } else { 0 };
    let total = BEACON_PREFIX_LEN + body_len + tag_len + crate::frame::CRC_LEN;
    if total > limits.max_beacon {
        return Err(EncodeError::TooLarge {
            what: "beacon",
            len: total as u64,
            max: limits.max_beacon as u64,
        });
    }
    // `total <= max_beacon <= 65507`, so the body length fits in 16 bits.
    let body_len16 = u16::try_from(body_len).map_err(|_| EncodeError::TooLarge {
        what: "beacon body",
        len: body_len as u64,
        max: u16::MAX.into(),
    })?;
    let start = out.len();
    out.reserve(total);
    out.put_slice(&BEACON_MAGIC);
    out.put_u8(version);
    out.put_u8(if keys.is_some() {
        crate::frame::FLAG_AUTHENTICATED
    } else {
        0
    });
    out.put_u16(body_len16);
    pb.encode_raw(out);
    if let Some(keys) = keys {
        let tag = keys.sign(&out[start..]);
        out.put_slice(&tag);
    }
    let crc = crc32fast::hash(&out[start..]);
    out.put_u32(crc);
    debug_assert_eq!(out.len() - start, total);
    Ok(())
}

pub(crate) fn decode_beacon(
    datagram: &[u8],
    min_version: u8,
    max_version: u8,
    limits: &WireLimits,
    keys: Option<&KeyRing>,
) -> Result<Beacon, DecodeError> {
    const WHAT: &str = "beacon";
    if datagram.len() > limits.max_beacon {
        return Err(DecodeError::TooLarge {
            what: WHAT,
            len: datagram.len() as u64,
            max: limits.max_beacon as u64,
        });
    }
    // A short datagram that starts like a beacon is truncated; anything else is not a beacon.
    let magic_len = datagram.len().min(4);
    if datagram[..magic_len] != BEACON_MAGIC[..magic_len] {
        let mut found = [0u8; 4];
        found[..magic_len].copy_from_slice(&datagram[..magic_len]);
        return Err(DecodeError::BadMagic {
            found,
            expected: BEACON_MAGIC,
        });
    }
    if datagram.len() < BEACON_PREFIX_LEN {
        return Err(DecodeError::Truncated {
            what: WHAT,
            needed: BEACON_PREFIX_LEN,
            available: datagram.len(),
        });
    }
    let version = datagram[4];
    if !(min_version..=max_version).contains(&version) {
        return Err(DecodeError::UnsupportedVersion {
            version,
            min: min_version,
            max: max_version,
        });
    }
    let flags = datagram[5];
    let body_len = usize::from(u16::from_be_bytes([datagram[6], datagram[7]]));
    let authenticated = flags & crate::frame::FLAG_AUTHENTICATED != 0;
    let tag_len = if authenticated { TAG_LEN } else { 0 };
    let body_end = BEACON_PREFIX_LEN + body_len;
    let total = body_end + tag_len + crate::frame::CRC_LEN;
    if total > limits.max_beacon {
        return Err(DecodeError::TooLarge {
            what: WHAT,
            len: total as u64,
            max: limits.max_beacon as u64,
        });
    }
    if datagram.len() < total {
        return Err(DecodeError::Truncated {
            what: WHAT,
            needed: total,
            available: datagram.len(),
        });
    }
    if datagram.len() > total {
        return Err(DecodeError::TrailingBytes {
            what: WHAT,
            extra: datagram.len() - total,
        });
    }
    let carried = u32::from_be_bytes([
        datagram[total - 4],
        datagram[total - 3],
        datagram[total - 2],
        datagram[total - 1],
    ]);
    let computed = crc32fast::hash(&datagram[..total - crate::frame::CRC_LEN]);
    if computed != carried {
        return Err(DecodeError::CrcMismatch { computed, carried });
    }
    match (keys, authenticated) {
        (Some(keys), true) => {
            if !keys.verify(
                &datagram[..body_end],
                &datagram[body_end..body_end + TAG_LEN],
            ) {
                return Err(DecodeError::BadAuth);
            }
        }
        (Some(_), false) => return Err(DecodeError::MissingAuth),
        (None, true) => return Err(DecodeError::NoKey),
        (None, false) => {}
    }
    let pb = BeaconPb::decode(&datagram[BEACON_PREFIX_LEN..body_end])
        .map_err(|e| proto::prost_error(WHAT, &e))?;
    let command = BeaconCommand::from_wire(pb.command).ok_or_else(|| {
        proto::out_of_range(WHAT, "command", format!("unknown command {}", pb.command))
    })?;
    let member = pb
        .member
        .ok_or_else(|| proto::malformed(WHAT, MalformedReason::MissingField("member")))?;
    Ok(Beacon {
        member: proto::member_from_pb(member, limits)?,
        command,
        seq: pb.seq,
        sent_at_ms: pb.sent_at_ms,
    })
}
