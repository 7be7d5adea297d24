//! The unicast peers (static and resolved by DNS) and the version checks that decide who may
//! join: the parts of the membership core that say whom it beacons and whom it refuses.

use std::net::SocketAddr;
use std::time::Instant;

use cohort_wire::{BeaconCommand, CohortCodec, KeyRing, Member, MemberKey};

use super::{MembershipCore, REFUSAL_REPORT_INTERVAL};
use crate::config::{ConfigError, MembershipConfig, StaticPeer};
use crate::view::{DisappearReason, Discovery, MembershipEvent, Refusal};

pub(super) struct PeerCodec {
    pub(super) peer: StaticPeer,
    /// `Static` for configured peers, `Dns` for resolved ones.
    pub(super) origin: Discovery,
    pub(super) codec: CohortCodec,
    /// The member a beacon verified with the peer's own secret last named: its id and data
    /// address are known to belong to the peer.
    pub(super) known: Option<MemberKey>,
}

impl PeerCodec {
    /// True when the peer has a secret of its own and `member` names it: by the id configured
    /// for it, by its configured address, or by the id or data address its secret vouched for.
    /// Such a beacon counts only when that secret verified it, whatever its source address.
    pub(super) fn protects(&self, member: &Member) -> bool {
        self.peer.secret.is_some()
            && (self.peer.id == Some(member.id)
                || self.peer.addr == member.data_addr()
                || self.known.is_some_and(|k| {
                    k.id == member.id || (k.addr == member.addr && k.port == member.port)
                }))
    }
}

pub(super) fn peer_codec(
    cfg: &MembershipConfig,
    peer: StaticPeer,
    origin: Discovery,
) -> Result<PeerCodec, ConfigError> {
    let keys = match &peer.secret {
        Some(secret) => Some(KeyRing::new(vec![secret.clone()])?),
        None => cfg.keys.clone(),
    };
    let codec = CohortCodec::new(cfg.limits, keys)?;
    Ok(PeerCodec {
        peer,
        origin,
        codec,
        known: None,
    })
}

impl MembershipCore {
    /// Replaces the peers DNS discovery resolved with `addrs` (the static peers stay). An
    /// address that is a static peer, or appears twice, is skipped; new peers get a join
    /// beacon at once. Returns true when the set changed. At most `max_members` are kept.
    pub fn set_dns_peers(&mut self, now: Instant, addrs: &[SocketAddr]) -> bool {
        let mut wanted: Vec<SocketAddr> = Vec::new();
        for a in addrs {
            let is_static = self
                .peers
                .iter()
                .any(|p| p.origin == Discovery::Static && p.peer.addr == *a);
            if !is_static && !wanted.contains(a) && wanted.len() < self.cfg.max_members.get() {
                wanted.push(*a);
            }
        }
        let before = self.peers.len();
        self.peers
            .retain(|p| p.origin != Discovery::Dns || wanted.contains(&p.peer.addr));
        let mut changed = self.peers.len() != before;
        let mut added = false;
        for a in wanted {
            if self.peers.iter().any(|p| p.peer.addr == a) {
                continue;
            }
            match peer_codec(&self.cfg, StaticPeer::new(a), Discovery::Dns) {
                Ok(p) => {
                    self.peers.push(p);
                    added = true;
                }
                Err(err) => tracing::error!(error = %err, "cannot build a codec for a DNS peer"),
            }
        }
        changed |= added;
        if added && self.started && !self.stopped {
            // New addresses hear of us at once and answer at once.
            self.send_beacon(now, BeaconCommand::Join);
        }
        changed
    }

    /// The addresses beaconed by unicast: static peers first, then those DNS resolved.
    pub fn peer_addrs(&self) -> Vec<(SocketAddr, Discovery)> {
        self.peers.iter().map(|p| (p.peer.addr, p.origin)).collect()
    }

    /// Why `member` may not join, if it may not: no common protocol version, or different
    /// application versions while either side asks for the same. Symmetric, so that both
    /// sides of a pair decide alike.
    pub fn refusal(&self, member: &Member) -> Option<Refusal> {
        if self.local.versions.common(member.versions).is_none() {
            return Some(Refusal::Protocol {
                local: self.local.versions,
                remote: member.versions,
            });
        }
        if (self.local.same_app_version || member.same_app_version)
            && self.local.app_version != member.app_version
        {
            return Some(Refusal::AppVersion {
                local: self.local.app_version.clone(),
                remote: member.app_version.clone(),
            });
        }
        None
    }

    pub(super) fn refuse(&mut self, now: Instant, member: Member, reason: Refusal) {
        self.stats.refused += 1;
        let key = member.key();
        if self.table.contains_key(&key) {
            self.remove(now, &key, DisappearReason::Refused(reason.clone()));
        }
        // Reported once per member, again after REFUSAL_REPORT_INTERVAL if it keeps trying.
        if self
            .refused
            .get(&key)
            .is_some_and(|at| now < *at + REFUSAL_REPORT_INTERVAL)
        {
            return;
        }
        if self.refused.len() >= self.cfg.max_members.get() {
            let oldest = self
                .refused
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.refused.remove(&k);
            }
        }
        self.refused.insert(key, now);
        tracing::warn!(member = %key, %reason, "member refused");
        self.push_event(MembershipEvent::MemberRefused { member, reason });
    }
}
