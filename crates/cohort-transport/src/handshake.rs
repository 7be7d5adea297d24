//! The connection handshake (docs/PROTOCOL.md §2.3) and the per-connection framing it sets up.
//!
//! The connector sends its hello at once. Without a key that is all, and frames carry no tags.
//! With a key the hello carries the connector's nonce, the acceptor answers with a challenge
//! nonce, and every later frame, both ways, is sealed for the connection
//! ([`cohort_wire::Session`]): a frame captured on one connection is refused on any other.

use std::io;
use std::time::Duration;

use bytes::{BufMut as _, BytesMut};
use cohort_wire::{
    CohortCodec, DataFrame, DecodeError, EncodeError, Frame, FrameCodec, Hello, Member, NONCE_LEN,
    Nonce, Opener, Sealer,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The most bytes a connector reads while it waits for the challenge: one challenge frame with
/// room to spare. Anything longer is not a challenge.
const CHALLENGE_ROOM: usize = 256;

/// A fresh nonce from the operating system's generator.
pub(crate) fn fresh_nonce() -> Nonce {
    rand::random::<[u8; NONCE_LEN]>()
}

/// The sealing half of a connection: writes frames plain (unkeyed) or sealed (keyed).
pub(crate) struct WriteSeal(Option<Sealer>);

impl WriteSeal {
    pub(crate) fn new(sealer: Option<Sealer>) -> Self {
        Self(sealer)
    }

    /// Encodes `frame` for this connection.
    pub(crate) fn encode(
        &mut self,
        codec: &CohortCodec,
        frame: &Frame,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        match &mut self.0 {
            Some(s) => codec.encode_frame_sealed(frame, s, out),
            None => codec.encode_frame(frame, out),
        }
    }

    /// Encodes a data frame for this connection (sealed when keyed), payload included.
    pub(crate) fn encode_data(
        &mut self,
        codec: &CohortCodec,
        frame: &DataFrame,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        codec.encode_data(frame, self.0.as_mut(), out)
    }

    /// True when frames on this connection are sealed (keyed cluster).
    pub(crate) fn is_sealed(&self) -> bool {
        self.0.is_some()
    }

    /// Appends `encoded` (a frame encoded once by the layer above) for this connection.
    pub(crate) fn append(
        &mut self,
        codec: &CohortCodec,
        encoded: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        match &mut self.0 {
            Some(s) => codec.reseal(encoded, s, out),
            None => {
                out.extend_from_slice(encoded);
                Ok(())
            }
        }
    }
}

impl WriteSeal {
    /// `encoded` for this connection as parts to write in order, without copying its bytes
    /// (a large frame): the frame itself (unkeyed), or its body and a 36-byte trailer (keyed).
    pub(crate) fn parts(
        &mut self,
        codec: &CohortCodec,
        encoded: &bytes::Bytes,
    ) -> Result<(bytes::Bytes, Option<bytes::Bytes>), EncodeError> {
        match &mut self.0 {
            Some(s) => {
                let (body, trailer) = codec.reseal_parts(encoded, s)?;
                Ok((body, Some(bytes::Bytes::copy_from_slice(&trailer))))
            }
            None => Ok((encoded.clone(), None)),
        }
    }
}

/// The opening half of a connection: decodes frames plain (unkeyed) or sealed (keyed).
pub(crate) struct ReadSeal(Option<Opener>);

impl ReadSeal {
    pub(crate) fn new(opener: Option<Opener>) -> Self {
        Self(opener)
    }

    pub(crate) fn decode(
        &mut self,
        codec: &CohortCodec,
        buf: &mut BytesMut,
    ) -> Result<Option<Frame>, DecodeError> {
        match &mut self.0 {
            Some(o) => codec.decode_frame_opened(buf, o),
            None => codec.decode_frame(buf),
        }
    }
}

/// Why a connector's handshake failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("no challenge within {0:?} (is the peer configured with a cluster key?)")]
    Timeout(Duration),
    #[error("bad challenge: {0}")]
    Malformed(DecodeError),
    #[error("expected a challenge, got a {0:?} frame")]
    Unexpected(cohort_wire::FrameKind),
    #[error("cannot encode the hello: {0}")]
    Encode(EncodeError),
}

impl From<HandshakeError> for io::Error {
    fn from(e: HandshakeError) -> Self {
        match e {
            HandshakeError::Io(e) => e,
            HandshakeError::Timeout(_) => io::Error::new(io::ErrorKind::TimedOut, e.to_string()),
            other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
        }
    }
}

/// The connector's side: writes the hello (with a fresh nonce when keyed), then, when keyed,
/// reads the acceptor's challenge. Returns the connection's two halves and whatever was read
/// past the challenge (nothing, from a correct peer). `timeout` bounds the wait for the
/// challenge.
pub(crate) async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    codec: &CohortCodec,
    local: &Member,
    timeout: Duration,
) -> Result<(WriteSeal, ReadSeal, BytesMut), HandshakeError> {
    let mut hello = Hello::new(local.clone());
    let nonce = codec.is_authenticated().then(fresh_nonce);
    hello.nonce = nonce;
    let mut out = BytesMut::new();
    codec
        .encode_frame(&Frame::Hello(Box::new(hello)), &mut out)
        .map_err(HandshakeError::Encode)?;
    stream.write_all(&out).await?;
    let mut buf = BytesMut::new();
    let Some(nonce) = nonce else {
        return Ok((WriteSeal::new(None), ReadSeal::new(None), buf));
    };
    let challenge = tokio::time::timeout(timeout, read_challenge(stream, codec, &mut buf))
        .await
        .map_err(|_| HandshakeError::Timeout(timeout))??;
    let (sealer, opener) = codec
        .connector_session(&challenge, &nonce)
        .expect("keyed codec")
        .split();
    Ok((
        WriteSeal::new(Some(sealer)),
        ReadSeal::new(Some(opener)),
        buf,
    ))
}

async fn read_challenge<S: AsyncRead + Unpin>(
    stream: &mut S,
    codec: &CohortCodec,
    buf: &mut BytesMut,
) -> Result<Nonce, HandshakeError> {
    loop {
        match codec.decode_frame(buf) {
            Ok(Some(Frame::Challenge(nonce))) => return Ok(nonce),
            Ok(Some(other)) => return Err(HandshakeError::Unexpected(other.kind())),
            Ok(None) => {}
            Err(e) => return Err(HandshakeError::Malformed(e)),
        }
        if buf.len() >= CHALLENGE_ROOM {
            return Err(HandshakeError::Malformed(DecodeError::TooLarge {
                what: "challenge frame",
                len: buf.len() as u64,
                max: CHALLENGE_ROOM as u64,
            }));
        }
        let room = CHALLENGE_ROOM - buf.len();
        let mut limited = (&mut *buf).limit(room);
        if stream.read_buf(&mut limited).await? == 0 {
            return Err(HandshakeError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed by the peer before its challenge (does it hold the same cluster key?)",
            )));
        }
    }
}
