//! Cohort's wire types and codecs.
//!
//! This crate alone knows byte layouts. It holds the identity types ([`MemberId`],
//! [`Member`], [`MemberKey`]), the option bits ([`SendOptions`], [`Services`], with Apache
//! Tribes' values), and the codecs for stream frames ([`Frame`]: data, ACK batches, hellos)
//! and membership beacons ([`Beacon`]). It does no IO, reads no clock and draws no randomness
//! of its own.
//!
//! Invariants:
//! - every length read from the wire is checked against [`WireLimits`] before it is acted
//!   on, and the decoders never allocate on the word of a length field;
//! - malformed input yields a [`DecodeError`] naming its class, never a panic;
//! - with a [`KeyRing`], everything encoded is signed (HMAC-SHA256) and everything unsigned or
//!   signed with an unknown key is rejected; tags are compared in constant time.
//!
//! The byte-level specification is `docs/PROTOCOL.md`; golden vectors in `tests/golden/` keep
//! the two in agreement.
//!
//! ```
//! use std::net::{IpAddr, Ipv4Addr};
//! use cohort_wire::{
//!     Beacon, BeaconCodec, BeaconCommand, ClusterKey, CohortCodec, DecodeError, KeyRing,
//!     Member, MemberId, WireLimits,
//! };
//!
//! let key = KeyRing::new(vec![ClusterKey::new(*b"a cluster secret!").unwrap()]).unwrap();
//! let codec = CohortCodec::new(WireLimits::default(), Some(key)).unwrap();
//! let mut member = Member::new(MemberId::from_bytes([1; 16]), IpAddr::V4(Ipv4Addr::LOCALHOST), 4000);
//! member.cluster = "prod".into();
//! let beacon = Beacon { member, command: BeaconCommand::Alive, seq: 1, sent_at_ms: 0 };
//!
//! let mut datagram = bytes::BytesMut::new();
//! codec.encode_beacon(&beacon, &mut datagram).unwrap();
//! assert_eq!(codec.decode_beacon(&datagram).unwrap(), beacon);
//!
//! // A node without the key cannot read it, and a flipped bit is caught.
//! let keyless = CohortCodec::new(WireLimits::default(), None).unwrap();
//! assert_eq!(keyless.decode_beacon(&datagram), Err(DecodeError::NoKey));
//! datagram[20] ^= 1;
//! assert!(matches!(codec.decode_beacon(&datagram), Err(DecodeError::CrcMismatch { .. })));
//! ```

mod auth;
mod beacon;
mod codec;
mod error;
mod frame;
mod limits;
mod member;
mod options;
mod proto;

#[doc(hidden)]
pub mod fuzz;
#[cfg(feature = "serde")]
pub mod serde_ms;
pub mod units;

#[cfg(test)]
mod tests;

pub use auth::{ClusterKey, KeyRing, NONCE_LEN, Nonce, Opener, Role, Sealer, Session, TAG_LEN};
pub use beacon::{BEACON_MAGIC, BEACON_PREFIX_LEN, Beacon, BeaconCommand};
pub use codec::{BeaconCodec, CohortCodec, FrameCodec};
pub use error::{ConfigError, DecodeError, EncodeError, MalformedReason};
pub use frame::{
    AckFrame, AckRange, CRC_LEN, DataFrame, DataHeader, Extension, FLAG_AUTHENTICATED, FRAME_MAGIC,
    FRAME_PREFIX_LEN, FailAck, Frame, FrameKind, FramePrefix, Hello,
};
pub use limits::{
    MAX_CLUSTER_LEN, MAX_DATAGRAM, MAX_DOMAIN_LEN, MAX_EXTENSIONS, MAX_FAIL_REASON_LEN,
    MAX_NAME_LEN, WireLimits,
};
pub use member::{Features, Member, MemberId, MemberIdParseError, MemberKey, VersionRange};
pub use options::{OptionsParseError, SendOptions, Services};

/// The protocol version this build encodes.
pub const PROTOCOL_VERSION: u8 = 1;
/// The oldest protocol version this build decodes. The rule (docs/PROTOCOL.md §5): version N
/// decodes N and N-1, and encodes for a peer with the newest version both speak.
pub const MIN_PROTOCOL_VERSION: u8 = 1;
