//! How keys and values become bytes.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::CodecError;

/// Encodes and decodes values of `T`. Keys must encode deterministically (equal keys, equal
/// bytes): entries are found and ordered by their encoded key.
pub trait Codec<T>: Send + Sync + 'static {
    /// `value` as bytes.
    fn encode(&self, value: &T) -> Result<Bytes, CodecError>;
    /// The value of `bytes`.
    fn decode(&self, bytes: &[u8]) -> Result<T, CodecError>;
}

/// serde in postcard's compact binary format (varint integers, no field names): small on the
/// wire and fast, for any `Serialize + DeserializeOwned` type. The default codec.
///
/// ```
/// use cohort_maps::{Codec, Postcard};
/// let bytes = Postcard.encode(&("id".to_string(), 7u32)).unwrap();
/// assert_eq!(bytes.len(), 4, "a length, two bytes, a varint");
/// let back: (String, u32) = Postcard.decode(&bytes).unwrap();
/// assert_eq!(back, ("id".to_string(), 7));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Postcard;

impl<T: Serialize + DeserializeOwned> Codec<T> for Postcard {
    fn encode(&self, value: &T) -> Result<Bytes, CodecError> {
        postcard::to_stdvec(value)
            .map(Bytes::from)
            .map_err(|e| CodecError(e.to_string()))
    }

    fn decode(&self, bytes: &[u8]) -> Result<T, CodecError> {
        postcard::from_bytes(bytes).map_err(|e| CodecError(e.to_string()))
    }
}

/// Bytes as they are (for callers that encode themselves).
#[derive(Clone, Copy, Debug, Default)]
pub struct Raw;

impl Codec<Bytes> for Raw {
    fn encode(&self, value: &Bytes) -> Result<Bytes, CodecError> {
        Ok(value.clone())
    }

    fn decode(&self, bytes: &[u8]) -> Result<Bytes, CodecError> {
        Ok(Bytes::copy_from_slice(bytes))
    }
}
