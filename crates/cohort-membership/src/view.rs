//! What membership reports: events, views, reasons and counters.

use std::time::Duration;

use cohort_wire::{Member, MemberKey};

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
}

impl DisappearReason {
    /// `"shutdown"`, `"expired"` or `"failed"`, as in the node's event lines.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Shutdown => "shutdown",
            Self::Expired { .. } => "expired",
            Self::Failed(_) => "failed",
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
    /// Socket errors seen by the driver (receive and send).
    pub socket_errors: u64,
    /// Times the driver closed and reopened its multicast socket.
    pub socket_reopens: u64,
    /// Data datagrams on the multicast socket dropped (no sink, or its queue full).
    pub data_dropped: u64,
}
