//! Error types of the codecs.

use crate::FrameKind;

/// Why a frame, beacon or member record was rejected.
///
/// Each malformed-input class has its own variant, so that drivers can count them apart. A
/// decoder that returns an error has consumed nothing it should not have: the stream decoder
/// leaves its buffer untouched on error, and the connection should be closed (a stream has no
/// way to resynchronise).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The first four bytes are not the expected magic.
    #[error("bad magic {found:02x?} (expected {expected:02x?})")]
    BadMagic {
        /// The bytes found.
        found: [u8; 4],
        /// The magic of this kind of record.
        expected: [u8; 4],
    },
    /// The protocol version is outside what this build speaks.
    #[error("unsupported protocol version {version} (this build speaks {min}..={max})")]
    UnsupportedVersion {
        /// The version in the record.
        version: u8,
        /// Oldest version this build decodes.
        min: u8,
        /// Newest version this build decodes.
        max: u8,
    },
    /// A length field exceeds the configured maximum; checked before anything is allocated.
    #[error("{what} length {len} exceeds the maximum {max}")]
    TooLarge {
        /// Which length (`"frame header"`, `"frame payload"`, `"beacon"`, ...).
        what: &'static str,
        /// The length announced or found.
        len: u64,
        /// The configured maximum.
        max: u64,
    },
    /// A datagram ends before the record it announces.
    #[error("truncated {what}: need {needed} bytes, have {available}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes the record needs.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// A datagram carries bytes after its record.
    #[error("{extra} trailing bytes after the {what}")]
    TrailingBytes {
        /// What was read.
        what: &'static str,
        /// Bytes left over.
        extra: usize,
    },
    /// The CRC32 does not match the bytes.
    #[error("crc mismatch: computed {computed:#010x}, carried {carried:#010x}")]
    CrcMismatch {
        /// CRC computed over the received bytes.
        computed: u32,
        /// CRC carried in the record.
        carried: u32,
    },
    /// The record needs an authentication tag (a key ring is configured) but has none.
    #[error("missing authentication tag")]
    MissingAuth,
    /// The authentication tag matches none of the configured keys.
    #[error("authentication tag matches no configured key")]
    BadAuth,
    /// The record is authenticated but this decoder has no key to check it with.
    #[error("record is authenticated but no cluster key is configured")]
    NoKey,
    /// The frame kind byte is not one this version knows.
    #[error("unknown frame kind {kind}")]
    UnknownFrameKind {
        /// The kind byte.
        kind: u8,
    },
    /// The prost-encoded header or body is malformed, or a field is out of range.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being decoded (`"data header"`, `"member"`, ...).
        what: &'static str,
        /// What is wrong with it.
        reason: MalformedReason,
    },
}

/// The reason inside [`DecodeError::Malformed`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MalformedReason {
    /// protobuf decoding failed.
    #[error("protobuf: {0}")]
    Protobuf(String),
    /// A required field is missing.
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// A field's value is out of range.
    #[error("field `{field}` out of range: {detail}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A field exceeds its limit.
    #[error("field `{field}` has {len} elements or bytes, limit {max}")]
    FieldTooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload of a frame of this kind must be empty.
    #[error("{kind:?} frame with a non-empty payload")]
    UnexpectedPayload {
        /// The frame kind.
        kind: FrameKind,
    },
}

impl DecodeError {
    /// A short stable name for counting and metrics (`"bad_magic"`, `"crc"`, ...).
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::BadMagic { .. } => "bad_magic",
            Self::UnsupportedVersion { .. } => "unsupported_version",
            Self::TooLarge { .. } => "too_large",
            Self::Truncated { .. } => "truncated",
            Self::TrailingBytes { .. } => "trailing_bytes",
            Self::CrcMismatch { .. } => "crc",
            Self::MissingAuth => "missing_auth",
            Self::BadAuth => "bad_auth",
            Self::NoKey => "no_key",
            Self::UnknownFrameKind { .. } => "unknown_kind",
            Self::Malformed { .. } => "malformed",
        }
    }
}

/// Why a value could not be encoded. The output buffer is left as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded record would exceed a configured maximum; the peer would reject it.
    #[error("{what} length {len} exceeds the maximum {max}")]
    TooLarge {
        /// Which length.
        what: &'static str,
        /// The length it would have.
        len: u64,
        /// The maximum.
        max: u64,
    },
    /// A field violates a protocol limit (e.g. a cluster name over 255 bytes).
    #[error("field `{field}` has {len} bytes or elements, limit {max}")]
    FieldTooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An ACK range has `first > last`.
    #[error("ack range {first}..={last} is empty")]
    EmptyAckRange {
        /// First id.
        first: u64,
        /// Last id.
        last: u64,
    },
    /// Bytes given to be sealed for a connection are not one whole frame signed with the
    /// cluster key.
    #[error("{len} bytes are not one signed frame; cannot seal them for a connection")]
    NotSealable {
        /// How many bytes were given.
        len: u64,
    },
}

/// A configuration value violates its bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A field is outside its allowed range.
    #[error("`{field}` = {value} is out of range: {bound}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The bound it violates.
        bound: &'static str,
    },
    /// A cluster key is too short.
    #[error("cluster key has {len} bytes, at least {min} are required")]
    KeyTooShort {
        /// Its length.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// A key ring needs at least one key.
    #[error("key ring is empty")]
    EmptyKeyRing,
}
