//! What membership reports: events, views, reasons and counters.

use std::time::Duration;

use cohort_wire::{Member, MemberKey, VersionRange};

/// Evidence that a member failed, as gathered by a failure detector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureEvidence {
    /// What was observed, e.g. `"connect 127.0.0.1:4001: connection refused"`.
    pub detail: String,
}

/// Why a member left the view.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisappearReason {
    /// It said so with a shutdown beacon (graceful leave).
    Shutdown,
    /// It was silent for at least the drop time.
    Expired {
        /// How long it had been silent.
        silent_for: Duration,
    },
    /// A failure detector confirmed it failed.
    Failed(FailureEvidence),
    /// Its beacons no longer pass the version checks (see [`Refusal`]).
    Refused(Refusal),
}

/// Why a member was refused: it is never added to the view, and both sides of the pair
/// reach the same decision (the checks are symmetric).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The protocol version ranges do not overlap: the pair has no language in common.
    Protocol {
        /// What this member speaks.
        local: VersionRange,
        /// What the other member speaks.
        remote: VersionRange,
    },
    /// One side's `version_policy` is `same` and the application versions differ.
    AppVersion {
        /// This member's application version.
        local: String,
        /// The other member's.
        remote: String,
    },
}

impl Refusal {
    /// `"protocol"` or `"app_version"`, as in the node's event lines.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Protocol { .. } => "protocol",
            Self::AppVersion { .. } => "app_version",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Protocol { local, remote } => write!(
                f,
                "no common protocol version: this member speaks {local}, the other {remote}"
            ),
            Self::AppVersion { local, remote } => write!(
                f,
                "application versions differ under version_policy \"same\": this member runs {local:?}, the other {remote:?}"
            ),
        }
    }
}

/// How a member was first heard of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Discovery {
    /// The local member itself.
    Local,
    /// A beacon to the multicast group.
    Multicast,
    /// A beacon from a configured static peer.
    Static,
    /// A beacon from an address DNS discovery resolved.
    Dns,
    /// A unicast beacon from an address this member does not list (the other member lists
    /// this one).
    Unicast,
}

impl Discovery {
    /// `"local"`, `"multicast"`, `"static"`, `"dns"` or `"unicast"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Multicast => "multicast",
            Self::Static => "static",
            Self::Dns => "dns",
            Self::Unicast => "unicast",
        }
    }
}

impl DisappearReason {
    /// `"shutdown"`, `"expired"` or `"failed"`, as in the node's event lines.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Shutdown => "shutdown",
            Self::Expired { .. } => "expired",
            Self::Failed(_) => "failed",
            Self::Refused(_) => "refused",
        }
    }
}

/// A change in membership.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MembershipEvent {
    /// A new member was heard from.
    MemberAdded(Member),
    /// A known member's payload, name, domain, UDP port, versions or start time changed (a
    /// changed start time may move the lead: `LeadChanged` follows).
    MemberUpdated(Member),
    /// A member left the view.
    MemberDisappeared {
        /// The member as last known.
        member: Member,
        /// Why.
        reason: DisappearReason,
    },
    /// The lead (the oldest member, ties by id) changed.
    LeadChanged {
        /// The new lead, `None` only before start.
        lead: Option<Member>,
        /// True when the local member is now the lead.
        local_is_lead: bool,
    },
    /// A member was refused (reported once per member; its beacons are counted in
    /// [`MembershipStats::refused`] after that).
    MemberRefused {
        /// The member as its beacon described it.
        member: Member,
        /// Why.
        reason: Refusal,
    },
    /// DNS discovery resolved a set of addresses different from the last one.
    DnsResolved {
        /// The addresses beaconed from now on (the local member's own excluded).
        addresses: Vec<std::net::SocketAddr>,
    },
    /// DNS discovery failed; the driver retries after `retry_in` (the backoff doubles up to
    /// the refresh interval). The addresses last resolved stay in use.
    DnsFailed {
        /// What went wrong (NXDOMAIN, timeout, no records, ...).
        reason: String,
        /// Consecutive failures so far.
        attempt: u32,
        /// When the next attempt is made.
        retry_in: Duration,
    },
}

/// One member in a view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewMember {
    /// The member.
    pub member: Member,
    /// True for the local member.
    pub local: bool,
    /// True for the lead.
    pub lead: bool,
    /// How the member was first heard of.
    pub discovered: Discovery,
    /// The protocol version this member and the local one speak (the newest both speak).
    pub protocol: u8,
}

/// A snapshot of membership as one node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipView {
    /// Counts up with every change.
    pub version: u64,
    /// The local member.
    pub local: MemberKey,
    /// The lead, if started.
    pub lead: Option<MemberKey>,
    /// Every member, the local one included, oldest first.
    pub members: Vec<ViewMember>,
}

impl MembershipView {
    /// True when the view holds a member with this id.
    pub fn contains(&self, id: &cohort_wire::MemberId) -> bool {
        self.members.iter().any(|m| m.member.id == *id)
    }

    /// Number of members, the local one included.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True when the view has no member (never, once built: the local member is in it).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The lead member.
    pub fn lead_member(&self) -> Option<&Member> {
        self.members.iter().find(|m| m.lead).map(|m| &m.member)
    }
}

/// Counters of what membership saw and dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MembershipStats {
    /// Datagrams handed to the core.
    pub datagrams_received: u64,
    /// Beacons accepted.
    pub beacons_accepted: u64,
    /// Beacons sent (each may go to several destinations).
    pub beacons_sent: u64,
    /// Datagrams that did not decode.
    pub malformed: u64,
    /// Beacons without a valid tag, or signed when we have no key, or naming a static peer
    /// that has its own secret without being signed with it.
    pub unauthenticated: u64,
    /// Beacons of another cluster.
    pub foreign_cluster: u64,
    /// Beacons whose sequence was not above the last accepted (replays, reordering). Without
    /// a key, a sequence refuses lower ones for one beacon period only.
    pub replayed: u64,
    /// Authenticated beacons whose send time was too far from ours.
    pub stale: u64,
    /// Beacons from a static peer's address with another id than configured.
    pub wrong_static_id: u64,
    /// Our own beacons looped back.
    pub own_beacons: u64,
    /// New members dropped because the table was full.
    pub table_full: u64,
    /// Events dropped because the application did not take them.
    pub events_dropped: u64,
    /// Beacons of members refused by the version checks (see [`Refusal`]).
    pub refused: u64,
    /// DNS resolutions that failed (each is retried with backoff).
    pub dns_failures: u64,
    /// Socket errors seen by the driver (receive and send).
    pub socket_errors: u64,
    /// Times the driver closed and reopened its multicast socket.
    pub socket_reopens: u64,
    /// Data frames seen on a beacon socket and left to the transport's multicast data path
    /// (which shares the beacon port unless `data_port` differs).
    pub data_dropped: u64,
}
