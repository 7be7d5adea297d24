//! Cluster membership for Cohort: who is in the cluster, who is the lead, who left and why.
//!
//! Members announce themselves with beacons, over UDP multicast (Tribes' `McastService`) or by
//! unicast to a static list, or both. A member silent for the drop time disappears; a member
//! that leaves says so and disappears at once. The **lead** is the member with the earliest
//! membership start time (ties broken by id), the same on every node. With a cluster key,
//! beacons are authenticated, so nodes without the key, replayed beacons and forged shutdowns
//! change nothing.
//!
//! Peers are found by multicast, a static list, DNS (`A`/`AAAA` or `SRV` records resolved
//! again and again, feature `dns`, on by default), or any mix; each member in a view says how
//! it was discovered. Members announce their protocol version range and application version:
//! a pair with no common protocol version, or with different application versions while either
//! asks for the same ([`VersionPolicy::Same`]), is refused on both sides and reported.
//!
//! The protocol lives in [`core::MembershipCore`], a sans-IO state machine; [`Membership`]
//! drives it in one tokio task over a [`cohort_net::Net`], and hands out a [`MembershipHandle`]
//! with a watchable [`MembershipView`] and an event stream.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use std::net::{IpAddr, Ipv4Addr};
//! use cohort_membership::core::{Destination, MembershipCore};
//! use cohort_membership::{MembershipConfig, MembershipEvent};
//! use cohort_wire::{Member, MemberId};
//!
//! // Two cores wired back to back: no sockets, no clock.
//! let t0 = Instant::now();
//! let member = |n: u8| {
//!     let mut m = Member::new(MemberId::from_bytes([n; 16]), IpAddr::V4(Ipv4Addr::LOCALHOST), 4000 + u16::from(n));
//!     m.start_time_ms = 1_000 + u64::from(n);
//!     m
//! };
//! let new = |n| MembershipCore::new(MembershipConfig::default(), member(n), true, vec![], t0, 0).unwrap();
//! let (mut a, mut b) = (new(1), new(2));
//! a.start(t0);
//! b.start(t0);
//! let from = "127.0.0.1:45564".parse().unwrap();
//! while let Some(t) = a.poll_transmit() {
//!     assert_eq!(t.to, Destination::Group);
//!     b.handle_datagram(t0, from, &t.bytes);
//! }
//! assert!(matches!(b.poll_event(), Some(MembershipEvent::LeadChanged { .. })));
//! assert!(matches!(b.poll_event(), Some(MembershipEvent::MemberAdded(m)) if m.port == 4001));
//! // b now sees a, which started earlier, as the lead.
//! assert_eq!(b.view().lead, Some(member(1).key()));
//! ```

pub mod config;
pub mod core;
#[cfg(feature = "dns")]
mod dns;
mod driver;
mod view;

pub use config::{
    ConfigError, DnsConfig, DnsRecord, LocalMemberConfig, MAX_DNS_ADDRESSES, MembershipConfig,
    MulticastConfig, RecoveryConfig, StaticPeer, VersionPolicy,
};
pub use driver::{Membership, MembershipBuilder, MembershipHandle, MembershipListener, StartError};
pub use view::{
    DisappearReason, Discovery, FailureEvidence, MembershipEvent, MembershipStats, MembershipView,
    Refusal, ViewMember,
};
