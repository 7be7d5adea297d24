//! The codec traits and Cohort's own codec.
//!
//! [`FrameCodec`] and [`BeaconCodec`] are the encode / decode half of a wire format. The
//! drivers (transport, membership, channel) use [`CohortCodec`] itself: the handshake, the
//! per-connection seals and the prefix checks before buffering are Cohort's format, not the
//! traits'. A second wire format (a Tribes-compatible one, say) would need those drivers made
//! generic over a richer trait; until one exists, the traits are not a swap point.

use bytes::BytesMut;

use crate::frame::{Check, Sign};
use crate::{
    Beacon, ClusterKey, ConfigError, DataFrame, DataHeader, DecodeError, EncodeError, Frame,
    FramePrefix, KeyRing, MIN_PROTOCOL_VERSION, Nonce, Opener, PROTOCOL_VERSION, Role, Sealer,
    Session, WireLimits,
};

/// Encodes and decodes stream frames.
pub trait FrameCodec {
    /// Appends `frame` to `out`; on error `out` is unchanged.
    fn encode_frame(&self, frame: &Frame, out: &mut BytesMut) -> Result<(), EncodeError>;

    /// Takes one complete frame off the front of `buf`; `Ok(None)` when more bytes are needed.
    /// Never allocates on the word of a length field. After an error the stream cannot be
    /// resynchronised and should be closed.
    fn decode_frame(&self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError>;
}

/// Encodes and decodes membership beacons (one datagram each).
pub trait BeaconCodec {
    /// Appends `beacon` to `out`; on error `out` is unchanged.
    fn encode_beacon(&self, beacon: &Beacon, out: &mut BytesMut) -> Result<(), EncodeError>;

    /// Decodes one whole datagram.
    fn decode_beacon(&self, datagram: &[u8]) -> Result<Beacon, DecodeError>;
}

/// Cohort's native wire format (docs/PROTOCOL.md), with optional HMAC authentication.
///
/// Encodes with [`PROTOCOL_VERSION`] unless told otherwise ([`CohortCodec::with_version`]);
/// decodes every version from [`MIN_PROTOCOL_VERSION`] to [`PROTOCOL_VERSION`]. With a key ring
/// it signs everything it encodes and rejects everything unsigned or signed with another key.
///
/// ```
/// use bytes::{Bytes, BytesMut};
/// use cohort_wire::{
///     CohortCodec, DataFrame, DataHeader, Frame, FrameCodec, MemberId, SendOptions, WireLimits,
/// };
///
/// let codec = CohortCodec::new(WireLimits::default(), None).unwrap();
/// let frame = Frame::Data(DataFrame {
///     header: DataHeader {
///         msg_id: 1,
///         options: SendOptions::USE_ACK,
///         sender: MemberId::from_bytes([7; 16]),
///         ..DataHeader::default()
///     },
///     payload: Bytes::from_static(b"hello"),
/// });
/// let mut buf = BytesMut::new();
/// codec.encode_frame(&frame, &mut buf).unwrap();
/// codec.encode_frame(&frame, &mut buf).unwrap();
/// // A stream may hold several frames, or part of one.
/// let mut partial = buf.split_to(10);
/// assert_eq!(codec.decode_frame(&mut partial).unwrap(), None);
/// partial.unsplit(buf);
/// assert_eq!(codec.decode_frame(&mut partial).unwrap(), Some(frame.clone()));
/// assert_eq!(codec.decode_frame(&mut partial).unwrap(), Some(frame));
/// assert!(partial.is_empty());
/// ```
#[derive(Clone, Debug)]
pub struct CohortCodec {
    limits: WireLimits,
    keys: Option<KeyRing>,
    version: u8,
}

impl CohortCodec {
    /// A codec with these limits and, optionally, cluster keys.
    pub fn new(limits: WireLimits, keys: Option<KeyRing>) -> Result<Self, ConfigError> {
        limits.validate()?;
        Ok(Self {
            limits,
            keys,
            version: PROTOCOL_VERSION,
        })
    }

    /// The same codec, encoding with `version` (to talk to a peer whose newest version is
    /// older than ours).
    pub fn with_version(mut self, version: u8) -> Result<Self, ConfigError> {
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
            return Err(ConfigError::OutOfRange {
                field: "version",
                value: version.into(),
                bound: "a version this build speaks",
            });
        }
        self.version = version;
        Ok(self)
    }

    /// The limits.
    pub fn limits(&self) -> &WireLimits {
        &self.limits
    }

    /// True when the codec signs and checks tags.
    pub fn is_authenticated(&self) -> bool {
        self.keys.is_some()
    }

    /// The connector's session on a keyed connection (keyed with this codec's signing key),
    /// from the `nonce` its hello carried and the acceptor's `challenge`; `None` without keys.
    pub fn connector_session(&self, challenge: &Nonce, nonce: &Nonce) -> Option<Session> {
        let key = self.keys.as_ref()?.primary();
        Some(Session::new(key, Role::Connector, challenge, nonce))
    }

    /// Decodes like [`FrameCodec::decode_frame`] and also returns the key of the ring that
    /// verified the frame (`None` without keys): the acceptor derives the connection's
    /// [`Session`] from the key that verified the hello.
    pub fn decode_frame_verified(
        &self,
        buf: &mut BytesMut,
    ) -> Result<Option<(Frame, Option<ClusterKey>)>, DecodeError> {
        let decoded = crate::frame::decode_frame(
            buf,
            MIN_PROTOCOL_VERSION,
            PROTOCOL_VERSION,
            &self.limits,
            Check::Ring(self.keys.as_ref()),
        )?;
        Ok(decoded.map(|(frame, key)| (frame, key.cloned())))
    }

    /// True when this codec signs what it encodes (it has a key ring).
    pub fn is_keyed(&self) -> bool {
        self.keys.is_some()
    }

    /// Encodes a data frame, as [`FrameCodec::encode_frame`] does a [`Frame::Data`] (without
    /// building one), sealed for one connection when `sealer` is given. On error `out` is
    /// unchanged and the sealer has not advanced.
    pub fn encode_data(
        &self,
        frame: &DataFrame,
        sealer: Option<&mut Sealer>,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        let sign = match (sealer, &self.keys) {
            (Some(s), _) => Sign::Sealed(s),
            (None, Some(keys)) => Sign::Ring(keys),
            (None, None) => Sign::None,
        };
        crate::frame::encode_data(frame, self.version, &self.limits, sign, out)
    }

    /// Encodes an unsigned data frame around its payload, without copying the payload: the
    /// frame on the wire is what this appends to `out` (prefix and header), then
    /// `frame.payload`, then the returned CRC; byte for byte what
    /// [`CohortCodec::encode_data`] writes. `Ok(None)` when this codec signs its frames (a
    /// tag covers the payload: encode the frame whole). On error `out` is unchanged.
    ///
    /// ```
    /// use bytes::{Bytes, BytesMut};
    /// use cohort_wire::{CohortCodec, DataFrame, DataHeader, MemberId, SendOptions, WireLimits};
    ///
    /// let codec = CohortCodec::new(WireLimits::default(), None).unwrap();
    /// let frame = DataFrame {
    ///     header: DataHeader {
    ///         msg_id: 1,
    ///         options: SendOptions::NONE,
    ///         sender: MemberId::default(),
    ///         timestamp_ms: 0,
    ///         seq: 0,
    ///         extensions: Vec::new(),
    ///     },
    ///     payload: Bytes::from(vec![7u8; 64 * 1024]),
    /// };
    /// let mut head = BytesMut::new();
    /// let crc = codec.encode_data_around(&frame, &mut head).unwrap().unwrap();
    /// let mut whole = BytesMut::new();
    /// codec.encode_data(&frame, None, &mut whole).unwrap();
    /// assert_eq!([&head[..], &frame.payload[..], &crc[..]].concat(), &whole[..]);
    /// ```
    pub fn encode_data_around(
        &self,
        frame: &DataFrame,
        out: &mut BytesMut,
    ) -> Result<Option<[u8; 4]>, EncodeError> {
        if self.keys.is_some() {
            return Ok(None);
        }
        crate::frame::encode_data_around(frame, self.version, &self.limits, out).map(Some)
    }

    /// Encodes `frame` sealed for one connection (see [`Session`]); on error `out` is
    /// unchanged and the sealer has not advanced.
    pub fn encode_frame_sealed(
        &self,
        frame: &Frame,
        sealer: &mut Sealer,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        crate::frame::encode_frame(frame, self.version, &self.limits, Sign::Sealed(sealer), out)
    }

    /// Appends `encoded`, one whole frame this codec encoded with its keys, sealed for one
    /// connection: its tag is replaced by the connection tag and its CRC recomputed, so a frame
    /// encoded once can be sealed for each destination.
    pub fn reseal(
        &self,
        encoded: &[u8],
        sealer: &mut Sealer,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        crate::frame::reseal(
            encoded,
            MIN_PROTOCOL_VERSION,
            PROTOCOL_VERSION,
            &self.limits,
            sealer,
            out,
        )
    }

    /// [`CohortCodec::reseal`] without copying the body: the body (a slice of `encoded`) and
    /// the 36 bytes to write after it (connection tag and CRC). For large frames written with
    /// vectored writes.
    pub fn reseal_parts(
        &self,
        encoded: &bytes::Bytes,
        sealer: &mut Sealer,
    ) -> Result<(bytes::Bytes, [u8; crate::TAG_LEN + crate::CRC_LEN]), EncodeError> {
        crate::frame::reseal_parts(
            encoded,
            MIN_PROTOCOL_VERSION,
            PROTOCOL_VERSION,
            &self.limits,
            sealer,
        )
    }

    /// Decodes the next frame of a keyed connection after its hello: its tag must be the
    /// connection tag of the next frame in `opener`'s direction, else `BadAuth`.
    pub fn decode_frame_opened(
        &self,
        buf: &mut BytesMut,
        opener: &mut Opener,
    ) -> Result<Option<Frame>, DecodeError> {
        let decoded = crate::frame::decode_frame(
            buf,
            MIN_PROTOCOL_VERSION,
            PROTOCOL_VERSION,
            &self.limits,
            Check::Sealed(opener),
        )?;
        Ok(decoded.map(|(frame, _)| frame))
    }

    /// Reads and checks the prefix of the frame at the front of `buf` (magic, version, lengths
    /// against the limits) without consuming anything; `Ok(None)` until 16 bytes are there.
    /// A reader uses it to refuse a frame before buffering its body.
    pub fn peek_frame_prefix(&self, buf: &[u8]) -> Result<Option<FramePrefix>, DecodeError> {
        crate::frame::peek_prefix(buf, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, &self.limits)
    }

    /// Parses the header of the data frame at the front of `buf` once its prefix and header
    /// are there (`Ok(None)` before), so that a reader can check the sender before it buffers
    /// a large payload. Not authenticated: the tag follows the payload.
    pub fn peek_data_header(
        &self,
        buf: &[u8],
        prefix: &FramePrefix,
    ) -> Result<Option<DataHeader>, DecodeError> {
        crate::frame::peek_data_header(buf, prefix)
    }
}

impl FrameCodec for CohortCodec {
    fn encode_frame(&self, frame: &Frame, out: &mut BytesMut) -> Result<(), EncodeError> {
        let sign = match &self.keys {
            Some(keys) => Sign::Ring(keys),
            None => Sign::None,
        };
        crate::frame::encode_frame(frame, self.version, &self.limits, sign, out)
    }

    fn decode_frame(&self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        let decoded = crate::frame::decode_frame(
            buf,
            MIN_PROTOCOL_VERSION,
            PROTOCOL_VERSION,
            &self.limits,
            Check::Ring(self.keys.as_ref()),
        )?;
        Ok(decoded.map(|(frame, _)| frame))
    }
}

impl BeaconCodec for CohortCodec {
    fn encode_beacon(&self, beacon: &Beacon, out: &mut BytesMut) -> Result<(), EncodeError> {
        crate::beacon::encode_beacon(beacon, self.version, &self.limits, self.keys.as_ref(), out)
    }

    fn decode_beacon(&self, datagram: &[u8]) -> Result<Beacon, DecodeError> {
        crate::beacon::decode_beacon(
            datagram,
            MIN_PROTOCOL_VERSION,
            PROTOCOL_VERSION,
            &self.limits,
            self.keys.as_ref(),
        )
    }
}
