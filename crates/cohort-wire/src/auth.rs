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
        self.verify_which(data, tag).is_some()
    }

    /// The key `tag` matches `data` under, if any. Every key is tried.
    pub fn verify_which(&self, data: &[u8], tag: &[u8]) -> Option<&ClusterKey> {
        self.keys.iter().fold(None, |found, key| {
            let ok = key.verify(data, tag);
            found.or(ok.then_some(key))
        })
    }
}

/// Length of a connection nonce, in bytes.
pub const NONCE_LEN: usize = 16;

/// A connection nonce: 16 random bytes, fresh for every connection.
pub type Nonce = [u8; NONCE_LEN];

/// Which end of a connection a [`Session`] belongs to. The two directions are sealed apart, so
/// a frame cannot be reflected back to its sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The side that connected and sent the hello.
    Connector,
    /// The side that accepted and sent the challenge.
    Acceptor,
}

impl Role {
    fn byte(self) -> u8 {
        match self {
            Self::Connector => b'c',
            Self::Acceptor => b'a',
        }
    }

    fn other(self) -> Self {
        match self {
            Self::Connector => Self::Acceptor,
            Self::Acceptor => Self::Connector,
        }
    }
}

/// The key of one authenticated connection: derived from the cluster key that verified its
/// hello and the two nonces of its handshake (the connector's nonce, sent in its hello, and the
/// acceptor's challenge, sent in answer). Every frame after the hello carries a tag under this key that also covers the
/// frame's position on the connection (an implicit sequence number per direction), so a frame
/// captured on one connection is refused on any other, and a frame replayed, dropped or
/// reordered within its connection is refused too.
///
/// Split it into its two halves with [`Session::split`]: the [`Sealer`] for the frames this end
/// writes, the [`Opener`] for the frames it reads.
#[derive(Clone)]
pub struct Session {
    inner: ClusterKey,
    outer: [u8; 32],
    role: Role,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Session({:?}, redacted)", self.role)
    }
}

impl Session {
    /// The session of `role` on a connection whose handshake exchanged `challenge` (from the
    /// acceptor) and `nonce` (from the connector), under `key` (the connector's signing key;
    /// for the acceptor, the key that verified the hello).
    pub fn new(key: &ClusterKey, role: Role, challenge: &Nonce, nonce: &Nonce) -> Self {
        let mut mac = key.mac();
        mac.update(b"cohort connection key v1");
        mac.update(challenge);
        mac.update(nonce);
        Self {
            inner: key.clone(),
            outer: mac.finalize().into_bytes().into(),
            role,
        }
    }

    /// The two halves: what this end writes, what it reads.
    pub fn split(self) -> (Sealer, Opener) {
        let sealer = Sealer {
            inner: self.inner.clone(),
            outer: self.outer,
            direction: self.role.byte(),
            seq: 0,
        };
        let opener = Opener {
            inner: self.inner,
            outer: self.outer,
            direction: self.role.other().byte(),
            seq: 0,
        };
        (sealer, opener)
    }
}

fn outer_tag(outer: &[u8; 32], direction: u8, seq: u64, inner_tag: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(outer).expect("hmac accepts any key length");
    mac.update(&[direction]);
    mac.update(&seq.to_be_bytes());
    mac.update(inner_tag);
    mac
}

/// Seals the frames one end of a connection writes (see [`Session`]).
pub struct Sealer {
    inner: ClusterKey,
    outer: [u8; 32],
    direction: u8,
    seq: u64,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealer(seq {}, redacted)", self.seq)
    }
}

impl Sealer {
    /// The cluster key whose tags this sealer wraps.
    pub fn cluster_key(&self) -> &ClusterKey {
        &self.inner
    }

    /// The connection tag of the next frame, given the cluster-key tag of its body; advances
    /// the sequence.
    pub(crate) fn next_tag(&mut self, inner_tag: &[u8]) -> [u8; TAG_LEN] {
        let tag = outer_tag(&self.outer, self.direction, self.seq, inner_tag);
        self.seq = self.seq.wrapping_add(1);
        tag.finalize().into_bytes().into()
    }

    /// How many frames this sealer has sealed.
    pub fn sealed(&self) -> u64 {
        self.seq
    }
}

/// Checks the frames one end of a connection reads (see [`Session`]).
pub struct Opener {
    inner: ClusterKey,
    outer: [u8; 32],
    direction: u8,
    seq: u64,
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Opener(seq {}, redacted)", self.seq)
    }
}

impl Opener {
    /// True when `tag` is the connection tag of the next frame, whose body is `body`; advances
    /// the sequence only then. Compared in constant time.
    pub(crate) fn open(&mut self, body: &[u8], tag: &[u8]) -> bool {
        let inner = self.inner.tag(body);
        let ok = outer_tag(&self.outer, self.direction, self.seq, &inner)
            .verify_slice(tag)
            .is_ok();
        if ok {
            self.seq = self.seq.wrapping_add(1);
        }
        ok
    }

    /// How many frames this opener has accepted.
    pub fn opened(&self) -> u64 {
        self.seq
    }
}
