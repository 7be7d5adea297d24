//! Member identity and the member record.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

/// The 16 random bytes that, with the address and port, identify a member.
///
/// A restarted process draws a new id, so a restart is a new member. Randomness is passed in
/// ([`MemberId::random`]) so that simulations stay deterministic.
///
/// ```
/// use cohort_wire::MemberId;
/// let id = MemberId::from_bytes([0xab; 16]);
/// assert_eq!(id.to_string(), "abababababababababababababababab");
/// assert_eq!(id.to_string().parse::<MemberId>().unwrap(), id);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MemberId([u8; 16]);

impl MemberId {
    /// Length in bytes.
    pub const LEN: usize = 16;

    /// An id from its bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// A fresh id drawn from `rng` (use a cryptographic RNG in production, a seeded one in
    /// simulation).
    pub fn random(rng: &mut impl rand_core::RngCore) -> Self {
        let mut bytes = [0u8; 16];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// The bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The id from a slice of exactly 16 bytes.
    pub fn from_slice(slice: &[u8]) -> Option<Self> {
        <[u8; 16]>::try_from(slice).ok().map(Self)
    }

    /// The first 8 hex digits, for compact logs and tables.
    pub fn short(&self) -> String {
        self.to_string()[..8].to_owned()
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemberId({self})")
    }
}

/// Error from parsing a [`MemberId`] from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a member id is 32 hex digits")]
pub struct MemberIdParseError;

impl std::str::FromStr for MemberId {
    type Err = MemberIdParseError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.len() != 32 || !text.is_ascii() {
            return Err(MemberIdParseError);
        }
        let mut bytes = [0u8; 16];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| MemberIdParseError)?;
        }
        Ok(Self(bytes))
    }
}

/// The protocol versions a member speaks, inclusive.
///
/// Two members talk the highest version both speak ([`VersionRange::common`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct VersionRange {
    /// Oldest version spoken.
    pub min: u8,
    /// Newest version spoken.
    pub max: u8,
}

impl VersionRange {
    /// What this build speaks.
    pub const CURRENT: Self = Self {
        min: crate::MIN_PROTOCOL_VERSION,
        max: crate::PROTOCOL_VERSION,
    };

    /// The newest version both ranges contain, if any.
    pub fn common(self, other: Self) -> Option<u8> {
        let max = self.max.min(other.max);
        (max >= self.min.max(other.min)).then_some(max)
    }

    /// True when `version` is in the range.
    pub fn contains(self, version: u8) -> bool {
        (self.min..=self.max).contains(&version)
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", self.min, self.max)
    }
}

/// What a connection between two members may use, decided by the protocol version they
/// negotiated ([`Features::negotiate`]): the newest version both speak.
///
/// Version 1 is the first; each later version adds a field here, set from the version, and the
/// code that uses the feature asks this struct, never the version number. A pair without a
/// common version does not talk at all.
///
/// ```
/// use cohort_wire::{Features, VersionRange};
/// let old = VersionRange { min: 1, max: 1 };
/// let f = Features::negotiate(VersionRange::CURRENT, old).unwrap();
/// assert_eq!(f.version, 1);
/// assert!(Features::negotiate(old, VersionRange { min: 2, max: 3 }).is_none());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub struct Features {
    /// The negotiated version: frames on the connection carry it.
    pub version: u8,
    /// Frames after the handshake carry connection tags (PROTOCOL.md §2.3). Version 1.
    pub bound_connections: bool,
    /// ACK frames carry ranges and FAIL_ACK reasons (PROTOCOL.md §2.2). Version 1.
    pub ack_ranges: bool,
}

impl Features {
    /// The features of `version`, if this build speaks it.
    pub fn of(version: u8) -> Option<Self> {
        VersionRange::CURRENT.contains(version).then_some(Self {
            version,
            bound_connections: version >= 1,
            ack_ranges: version >= 1,
        })
    }

    /// The features two members with these ranges use: those of the newest version both
    /// speak, if any (and if this build speaks it).
    pub fn negotiate(local: VersionRange, remote: VersionRange) -> Option<Self> {
        local.common(remote).and_then(Self::of)
    }
}

impl Default for VersionRange {
    fn default() -> Self {
        Self::CURRENT
    }
}

/// A member's identity: address, TCP port and id. Two records with equal keys are the same
/// member, whatever their payload, domain or start time say.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct MemberKey {
    /// IP address of the member's data receiver.
    pub addr: IpAddr,
    /// TCP port of the member's data receiver.
    pub port: u16,
    /// The member's random id.
    pub id: MemberId,
}

impl fmt::Display for MemberKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{}",
            self.id.short(),
            SocketAddr::new(self.addr, self.port)
        )
    }
}

/// A cluster member as carried in beacons and hello frames.
///
/// Identity is [`MemberKey`] (address, port, id); the other fields describe the member.
/// Text and byte fields are bounded ([`crate::MAX_NAME_LEN`], [`crate::MAX_CLUSTER_LEN`],
/// [`crate::MAX_DOMAIN_LEN`], and [`crate::WireLimits::max_member_payload`] for the payload).
///
/// ```
/// use std::net::{IpAddr, Ipv4Addr};
/// use cohort_wire::{Member, MemberId};
/// let m = Member::new(MemberId::from_bytes([1; 16]), IpAddr::V4(Ipv4Addr::LOCALHOST), 4000);
/// assert_eq!(m.key().port, 4000);
/// assert_eq!(m.data_addr().to_string(), "127.0.0.1:4000");
/// ```
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Member {
    /// Random id, fresh per process start.
    pub id: MemberId,
    /// IP address of the data receiver.
    pub addr: IpAddr,
    /// TCP port of the data receiver.
    pub port: u16,
    /// UDP port for the UDP send option, if the member listens on one.
    pub udp_port: Option<u16>,
    /// Cluster name; members of other clusters are ignored.
    pub cluster: String,
    /// Domain (Tribes' `domain`): an opaque byte string for grouping members.
    pub domain: Bytes,
    /// Human-readable node name, by default the host name.
    pub name: String,
    /// The host name of the machine the member runs on (empty when unknown), for operators.
    pub host: String,
    /// When the member's membership service started, in ms since the Unix epoch. The lead is
    /// the member with the smallest value (ties broken by id).
    pub start_time_ms: u64,
    /// Protocol versions spoken.
    pub versions: VersionRange,
    /// The application's version (free text, at most [`crate::MAX_NAME_LEN`] bytes; empty when
    /// not given). Compared only when a member asks for the same version
    /// ([`Member::same_app_version`]).
    pub app_version: String,
    /// The member refuses members whose `app_version` differs from its own (its
    /// `version_policy` is `same`). Carried so that both sides of a pair reach the same
    /// decision: a member that would accept anyone still refuses one that refuses it.
    pub same_app_version: bool,
    /// Application payload, bounded by [`crate::WireLimits::max_member_payload`].
    pub payload: Bytes,
}

impl Member {
    /// A member with empty cluster, domain, name and payload, start time 0, no UDP port.
    pub fn new(id: MemberId, addr: IpAddr, port: u16) -> Self {
        Self {
            id,
            addr,
            port,
            udp_port: None,
            cluster: String::new(),
            domain: Bytes::new(),
            name: String::new(),
            host: String::new(),
            start_time_ms: 0,
            versions: VersionRange::CURRENT,
            app_version: String::new(),
            same_app_version: false,
            payload: Bytes::new(),
        }
    }

    /// The identity of this member.
    pub fn key(&self) -> MemberKey {
        MemberKey {
            addr: self.addr,
            port: self.port,
            id: self.id,
        }
    }

    /// Address of the member's TCP data receiver.
    pub fn data_addr(&self) -> SocketAddr {
        SocketAddr::new(self.addr, self.port)
    }

    /// The key by which members are ordered oldest first: start time, then id. The lead is the
    /// member with the smallest key, on every node alike.
    pub fn seniority(&self) -> (u64, MemberId) {
        (self.start_time_ms, self.id)
    }
}
