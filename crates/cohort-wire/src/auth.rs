//! Cluster keys: HMAC-SHA256 tags on beacons and frames.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ConfigError;

type HmacSha256 = Hmac<Sha256>;

/// Length of an authentication tag (HMAC-SHA256), in bytes.
pub const TAG_LEN: usize = 32;

/// A shared secret that authenticates a cluster's beacons and frames.
///
/// At least [`ClusterKey::MIN_LEN`] bytes. `Debug` never prints the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey(Vec<u8>);

impl ClusterKey {
    /// Shortest accepted key, in bytes.
    pub const MIN_LEN: usize = 16;

    /// A key from its bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, ConfigError> {
        let bytes = bytes.into();
        if bytes.len() < Self::MIN_LEN {
            return Err(ConfigError::KeyTooShort {
                len: bytes.len(),
                min: Self::MIN_LEN,
            });
        }
        Ok(Self(bytes))
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        HmacSha256::new_from_slice(&self.0).expect("hmac accepts any key length")
    }

    /// The tag of `data` under this key.
    pub fn tag(&self, data: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = self.mac();
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// True when `tag` is the tag of `data`; compared in constant time.
    pub fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.mac();
        mac.update(data);
        mac.verify_slice(tag).is_ok()
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey({} bytes, redacted)", self.0.len())
    }
}

/// The keys a node accepts; it signs with the first. Rotation: add the new key second on every
/// node, then move it first, then remove the old one.
///
/// ```
/// use cohort_wire::{ClusterKey, KeyRing};
/// let old = ClusterKey::new(*b"old secret, 16+ bytes").unwrap();
/// let new = ClusterKey::new(*b"new secret, 16+ bytes").unwrap();
/// let signer = KeyRing::new(vec![old.clone()]).unwrap();
/// let rotating = KeyRing::new(vec![new, old]).unwrap();
/// let tag = signer.sign(b"beacon");
/// assert!(rotating.verify(b"beacon", &tag));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRing {
    keys: Vec<ClusterKey>,
}

impl KeyRing {
    /// Most keys in a ring (every verification may try each).
    pub const MAX_KEYS: usize = 8;

    /// A ring of one or more keys; the first signs.
    pub fn new(keys: Vec<ClusterKey>) -> Result<Self, ConfigError> {
        if keys.is_empty() {
            return Err(ConfigError::EmptyKeyRing);
        }
        if keys.len() > Self::MAX_KEYS {
            return Err(ConfigError::OutOfRange {
                field: "keys",
                value: keys.len() as u64,
                bound: "at most 8 keys",
            });
        }
        Ok(Self { keys })
    }

    /// The signing key.
    pub fn primary(&self) -> &ClusterKey {
        &self.keys[0]
    }

    /// The tag of `data` under the signing key.
    pub fn sign(&self, data: &[u8]) -> [u8; TAG_LEN] {
        self.primary().tag(data)
    }

    /// True when `tag` matches `data` under any key. Every key is tried, so the time taken
    /// does not reveal which key matched.
    pub fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        self.keys
            .iter()
            .fold(false, |ok, key| key.verify(data, tag) | ok)
    }
}
