//! The session model: ids, times, attributes, and what a request changed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A session id: 128 random bits, written as 32 hex digits.
///
/// ```
/// use cohort_session::SessionId;
/// let id = SessionId::from_bytes([0xab; 16]);
/// assert_eq!(id.to_string().parse::<SessionId>().unwrap(), id);
/// assert!("not-hex".parse::<SessionId>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId([u8; 16]);

impl SessionId {
    /// An id from its bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// A fresh id from the operating system's generator.
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
        Self(b)
    }

    /// The bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// Not a session id (32 hex digits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a session id is 32 hex digits")]
pub struct BadSessionId;

impl std::str::FromStr for SessionId {
    type Err = BadSessionId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.is_ascii() {
            return Err(BadSessionId);
        }
        let mut out = [0u8; 16];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| BadSessionId)?;
        }
        Ok(Self(out))
    }
}

/// When a session was made and last used, and how long it may idle (Tomcat's
/// `maxInactiveInterval`), all in wall-clock milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Creation time.
    pub created_ms: u64,
    /// Last access (a request that used the session), on whichever member.
    pub last_access_ms: u64,
    /// Longest idle time before the session expires.
    pub max_inactive_ms: u64,
}

impl Meta {
    /// When the session expires unless used again.
    pub fn expires_at_ms(&self) -> u64 {
        self.last_access_ms.saturating_add(self.max_inactive_ms)
    }

    /// True once `now_ms` is past the expiry.
    pub fn expired(&self, now_ms: u64) -> bool {
        now_ms > self.expires_at_ms()
    }
}

/// A session as a manager stores it: its times and its attributes (JSON values, by name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionData {
    /// The id.
    pub id: SessionId,
    /// Times.
    pub meta: Meta,
    /// Attributes, each serialised as JSON.
    pub attributes: BTreeMap<String, Bytes>,
}

/// What one request did to a session: the delta a manager replicates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Attributes set (added or replaced), with their new JSON.
    pub set: BTreeMap<String, Bytes>,
    /// Attributes removed.
    pub removed: BTreeSet<String>,
}

impl Changes {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.removed.is_empty()
    }

    /// Applies the changes to `attributes`.
    pub fn apply(&self, attributes: &mut BTreeMap<String, Bytes>) {
        for name in &self.removed {
            attributes.remove(name);
        }
        for (k, v) in &self.set {
            attributes.insert(k.clone(), v.clone());
        }
    }

    /// The bytes the change carries (names and values).
    pub fn size(&self) -> usize {
        self.set
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
            + self.removed.iter().map(String::len).sum::<usize>()
    }
}
