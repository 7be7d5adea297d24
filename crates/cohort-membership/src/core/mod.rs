//! The sans-IO membership core: member table, beacons in and out, expiry, lead.
//!
//! It does no IO, reads no clock and spawns nothing. The driver calls, in this order:
//!
//! 1. [`MembershipCore::start`] once;
//! 2. [`MembershipCore::handle_datagram`] for every datagram, [`MembershipCore::handle_timeout`]
//!    when [`MembershipCore::poll_timeout`] is reached, and the commands
//!    ([`MembershipCore::set_payload`], [`MembershipCore::report_failed`],
//!    [`MembershipCore::shutdown`]) when the application asks;
//! 3. after each of those, drains [`MembershipCore::poll_transmit`] and
//!    [`MembershipCore::poll_event`] until they return `None`, then re-reads `poll_timeout`.
//!
//! Time is a monotonic [`Instant`] passed in; wall-clock values (the start time advertised in
//! beacons, beacon send times) are derived from the wall time given to [`MembershipCore::new`].

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cohort_wire::{
    Beacon, BeaconCodec, BeaconCommand, CohortCodec, DecodeError, Member, MemberKey,
};

use crate::config::{ConfigError, MembershipConfig, StaticPeer, VersionPolicy};
use crate::view::{
    DisappearReason, Discovery, FailureEvidence, MembershipEvent, MembershipStats, MembershipView,
    ViewMember,
};

mod peers;
#[cfg(test)]
mod tests;

use peers::{PeerCodec, peer_codec};

/// Where a beacon goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// The multicast group (the driver knows its address).
    Group,
    /// One static peer.
    Peer(SocketAddr),
}

/// How long a refused member is not reported again (its beacons are still counted).
pub const REFUSAL_REPORT_INTERVAL: Duration = Duration::from_secs(300);

/// Which socket a datagram came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The multicast group's socket.
    Group,
    /// The unicast (static) socket.
    Unicast,
}

/// A datagram for the driver to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub to: Destination,
    /// The encoded beacon.
    pub bytes: Bytes,
}

#[derive(Debug)]
struct Entry {
    member: Member,
    last_heard: Instant,
    last_seq: u64,
    discovered: Discovery,
    /// Where its last unicast beacon came from, when that is no listed peer: beacons go back
    /// there while it is in the table, so that a member that lists us (or that DNS listed
    /// and no longer does) and one that does not still see each other.
    reply_to: Option<SocketAddr>,
}

/// A removed member's last accepted beacon sequence, kept to reject replays.
#[derive(Debug)]
struct Tombstone {
    last_seq: u64,
    /// When the member was removed; the tombstone refuses beacons for
    /// `MembershipCore::tombstone_time` from then.
    removed_at: Instant,
}

/// The membership state machine. See the module documentation for the call order.
pub struct MembershipCore {
    cfg: MembershipConfig,
    /// Cluster codec (cluster keys, if any).
    codec: CohortCodec,
    /// Static peers, each with the codec for its own secret (or the cluster keys).
    peers: Vec<PeerCodec>,
    multicast: bool,
    local: Member,
    /// Monotonic instant and wall-clock ms that correspond to each other.
    epoch: (Instant, u64),
    seq: u64,
    table: BTreeMap<MemberKey, Entry>,
    tombstones: BTreeMap<MemberKey, Tombstone>,
    lead: Option<MemberKey>,
    started: bool,
    stopped: bool,
    next_beacon: Option<Instant>,
    /// An immediate beacon is wanted (join answer, payload change), not before this instant.
    answer_at: Option<Instant>,
    last_answer: Option<Instant>,
    next_expiry: Option<Instant>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<MembershipEvent>,
    stats: MembershipStats,
    view_version: u64,
    /// Members refused by the version checks and when they were first reported: each is
    /// reported once. Bounded by `max_members` (the oldest is forgotten).
    refused: BTreeMap<MemberKey, Instant>,
}

impl MembershipCore {
    /// A core for `local`, which must carry the cluster name of `cfg` (it is set if empty) and
    /// the start time the caller chose (ms since the Unix epoch). `now` and `now_wall_ms` are
    /// the same moment on the monotonic and the wall clock. `multicast` says whether beacons go
    /// to the group; `peers` are static peers that receive beacons by unicast.
    pub fn new(
        cfg: MembershipConfig,
        mut local: Member,
        multicast: bool,
        peers: Vec<StaticPeer>,
        now: Instant,
        now_wall_ms: u64,
    ) -> Result<Self, ConfigError> {
        cfg.validate()?;
        if local.cluster.is_empty() {
            local.cluster.clone_from(&cfg.cluster);
        }
        if local.cluster != cfg.cluster {
            return Err(ConfigError::Invalid {
                field: "cluster",
                problem: "the local member's cluster differs from the configuration's".into(),
            });
        }
        local.same_app_version = cfg.version_policy == VersionPolicy::Same;
        if local.app_version.len() > cohort_wire::MAX_NAME_LEN {
            return Err(ConfigError::Invalid {
                field: "app_version",
                problem: "longer than 255 bytes".into(),
            });
        }
        let codec = CohortCodec::new(cfg.limits, cfg.keys.clone())?;
        let mut peer_codecs = Vec::with_capacity(peers.len());
        for peer in peers {
            peer_codecs.push(peer_codec(&cfg, peer, Discovery::Static)?);
        }
        Ok(Self {
            codec,
            peers: peer_codecs,
            multicast,
            local,
            epoch: (now, now_wall_ms),
            seq: 0,
            table: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            lead: None,
            started: false,
            stopped: false,
            next_beacon: None,
            answer_at: None,
            last_answer: None,
            next_expiry: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: MembershipStats::default(),
            view_version: 0,
            refused: BTreeMap::new(),
            cfg,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MembershipConfig {
        &self.cfg
    }

    /// The local member as advertised.
    pub fn local(&self) -> &Member {
        &self.local
    }

    /// Counters.
    pub fn stats(&self) -> &MembershipStats {
        &self.stats
    }

    fn wall_ms(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.epoch.0);
        self.epoch.1 + u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
    }

    /// Starts beaconing: a join beacon goes out at once, so that peers answer at once.
    pub fn start(&mut self, now: Instant) {
        if self.started {
            return;
        }
        self.started = true;
        self.send_beacon(now, BeaconCommand::Join);
        self.next_beacon = Some(now + self.cfg.frequency);
        self.update_lead();
    }

    /// Sends a shutdown beacon, so that peers drop this member at once, and stops beaconing.
    /// Idempotent.
    pub fn shutdown(&mut self, now: Instant) {
        if !self.started || self.stopped {
            return;
        }
        self.send_beacon(now, BeaconCommand::Shutdown);
        self.stopped = true;
        self.next_beacon = None;
        self.answer_at = None;
    }

    /// Replaces the local payload; it propagates with an immediate beacon (rate-limited by
    /// `min_answer_interval`). Fails, changing nothing, when the payload is over the limit.
    pub fn set_payload(&mut self, now: Instant, payload: Bytes) -> Result<(), ConfigError> {
        if payload.len() > self.cfg.limits.max_member_payload {
            return Err(ConfigError::Invalid {
                field: "payload",
                problem: format!(
                    "{} bytes, limit {}",
                    payload.len(),
                    self.cfg.limits.max_member_payload
                ),
            });
        }
        self.local.payload = payload;
        self.view_version += 1;
        self.want_answer(now);
        Ok(())
    }

    /// Removes a member on outside evidence of failure (a failure detector's confirmed probe).
    /// Returns false when the member was not in the table.
    pub fn report_failed(
        &mut self,
        now: Instant,
        key: &MemberKey,
        evidence: FailureEvidence,
    ) -> bool {
        self.remove(now, key, DisappearReason::Failed(evidence))
    }

    /// Handles one received datagram, from the multicast socket when this core beacons to the
    /// group and from the unicast one otherwise (see [`MembershipCore::handle_datagram_via`]).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        let via = if self.multicast {
            Via::Group
        } else {
            Via::Unicast
        };
        self.handle_datagram_via(now, from, via, datagram);
    }

    /// Handles one datagram received on the socket `via`. Anything malformed, foreign,
    /// unauthenticated, stale or replayed is counted and dropped; a member refused by the
    /// version checks is reported once and counted.
    pub fn handle_datagram_via(
        &mut self,
        now: Instant,
        from: SocketAddr,
        via: Via,
        datagram: &[u8],
    ) {
        if !self.started || self.stopped {
            return;
        }
        self.stats.datagrams_received += 1;
        // A datagram from a static peer's address is verified with that peer's codec.
        let source = self.peers.iter().position(|p| p.peer.addr == from);
        let codec = source.map_or(&self.codec, |i| &self.peers[i].codec);
        // Only a beacon verified with a key (the cluster's or the peer's own) carries the
        // sender's own sequence and send time.
        let authenticated = codec.is_authenticated();
        let beacon = match codec.decode_beacon(datagram) {
            Ok(beacon) => beacon,
            Err(err) => {
                self.count_decode_error(&err);
                return;
            }
        };
        let pinned = source.and_then(|i| self.peers[i].peer.id);
        if pinned.is_some_and(|id| id != beacon.member.id) {
            self.stats.wrong_static_id += 1;
            return;
        }
        let key = beacon.member.key();
        if beacon.member.id == self.local.id {
            // Our own beacon looped back, or another process claims our id.
            self.stats.own_beacons += 1;
            return;
        }
        if beacon.member.cluster != self.cfg.cluster {
            self.stats.foreign_cluster += 1;
            return;
        }
        // The member a beacon names, not the address it came from, decides whose secret it
        // needs: one naming a static peer with its own secret counts only when that secret
        // verified it, i.e. when it came through that peer's codec.
        if self
            .peers
            .iter()
            .enumerate()
            .any(|(i, p)| Some(i) != source && p.protects(&beacon.member))
        {
            self.stats.unauthenticated += 1;
            tracing::debug!(
                member = %key,
                "dropped a beacon naming a static peer without its secret"
            );
            return;
        }
        if authenticated {
            let skew = self.wall_ms(now).abs_diff(beacon.sent_at_ms);
            if u128::from(skew) > self.cfg.max_clock_skew.as_millis() {
                self.stats.stale += 1;
                return;
            }
        }
        // An authenticated sequence is the member's own: a beacon not above the last accepted
        // is a replay for as long as the member is in the table, and for the tombstone's
        // horizon after. Without a key anyone can send any sequence, so a remembered sequence
        // only refuses beacons within one beacon period of being set (copies over multicast and
        // static paths, reordering): one forged beacon with a high sequence cannot keep the
        // member's real beacons out for longer (the drop time is at least two periods).
        let last_seq = match self.table.get(&key) {
            Some(e) => {
                (authenticated || now < e.last_heard + self.cfg.frequency).then_some(e.last_seq)
            }
            None => self
                .tombstones
                .get(&key)
                .filter(|t| now < t.removed_at + self.tombstone_time(authenticated))
                .map(|t| t.last_seq),
        };
        if last_seq.is_some_and(|last| beacon.seq <= last) {
            self.stats.replayed += 1;
            return;
        }
        self.stats.beacons_accepted += 1;
        if let Some(i) = source
            && self.peers[i].peer.secret.is_some()
        {
            self.peers[i].known = Some(key);
        }
        match beacon.command {
            BeaconCommand::Shutdown => {
                self.tombstones.insert(
                    key,
                    Tombstone {
                        last_seq: beacon.seq,
                        removed_at: now,
                    },
                );
                if let Some(entry) = self.table.get_mut(&key) {
                    entry.last_seq = beacon.seq;
                }
                self.remove(now, &key, DisappearReason::Shutdown);
            }
            // A newer peer may send commands we do not know: treat them as alive.
            _ => {
                if let Some(reason) = self.refusal(&beacon.member) {
                    self.refuse(now, beacon.member, reason);
                    return;
                }
                if beacon.command == BeaconCommand::Join {
                    self.want_answer(now);
                }
                let discovered = match (source, via) {
                    (Some(i), _) => self.peers[i].origin,
                    (None, Via::Group) => Discovery::Multicast,
                    (None, Via::Unicast) => Discovery::Unicast,
                };
                let reply_to = (source.is_none() && via == Via::Unicast).then_some(from);
                self.alive(now, beacon, discovered, reply_to);
            }
        }
    }

    /// How long a tombstone refuses beacons not above its sequence. An authenticated replay
    /// passes the clock-skew check for `max_clock_skew`, so such beacons are refused for that
    /// plus the drop time; an unauthenticated sequence proves nothing (and `max_clock_skew` is
    /// ignored without keys), so those are refused for one beacon period only.
    fn tombstone_time(&self, authenticated: bool) -> Duration {
        if authenticated {
            self.cfg.max_clock_skew + self.cfg.drop_time
        } else {
            self.cfg.frequency
        }
    }

    fn count_decode_error(&mut self, err: &DecodeError) {
        match err {
            DecodeError::MissingAuth | DecodeError::BadAuth | DecodeError::NoKey => {
                self.stats.unauthenticated += 1;
            }
            _ => self.stats.malformed += 1,
        }
        tracing::debug!(error = %err, "dropped datagram");
    }

    fn alive(
        &mut self,
        now: Instant,
        beacon: Beacon,
        discovered: Discovery,
        reply_to: Option<SocketAddr>,
    ) {
        let key = beacon.member.key();
        if let Some(entry) = self.table.get_mut(&key) {
            entry.last_heard = now;
            entry.last_seq = beacon.seq;
            if reply_to.is_some() {
                entry.reply_to = reply_to;
            }
            // "It contacted us" gives way to a source that lists it (DNS found it later).
            if entry.discovered == Discovery::Unicast
                && matches!(discovered, Discovery::Static | Discovery::Dns)
            {
                entry.discovered = discovered;
                self.view_version += 1;
            }
            // The start time orders the view and decides the lead.
            let reordered = entry.member.start_time_ms != beacon.member.start_time_ms;
            let changed = reordered
                || entry.member.payload != beacon.member.payload
                || entry.member.name != beacon.member.name
                || entry.member.domain != beacon.member.domain
                || entry.member.udp_port != beacon.member.udp_port
                || entry.member.versions != beacon.member.versions
                || entry.member.app_version != beacon.member.app_version;
            if changed {
                entry.member = beacon.member.clone();
                self.view_version += 1;
                self.push_event(MembershipEvent::MemberUpdated(beacon.member));
                if reordered {
                    self.update_lead();
                }
            }
            return;
        }
        if self.table.len() >= self.cfg.max_members.get() {
            self.stats.table_full += 1;
            return;
        }
        self.tombstones.remove(&key);
        let member = beacon.member;
        tracing::info!(member = %key, name = %member.name, "member added");
        self.table.insert(
            key,
            Entry {
                member: member.clone(),
                last_heard: now,
                last_seq: beacon.seq,
                discovered,
                reply_to,
            },
        );
        let deadline = now + self.cfg.drop_time;
        self.next_expiry = Some(self.next_expiry.map_or(deadline, |d| d.min(deadline)));
        self.view_version += 1;
        self.push_event(MembershipEvent::MemberAdded(member));
        self.update_lead();
    }

    fn remove(&mut self, now: Instant, key: &MemberKey, reason: DisappearReason) -> bool {
        let Some(entry) = self.table.remove(key) else {
            return false;
        };
        self.tombstones
            .entry(*key)
            .and_modify(|t| t.last_seq = t.last_seq.max(entry.last_seq))
            .or_insert(Tombstone {
                last_seq: entry.last_seq,
                removed_at: now,
            });
        self.bound_tombstones();
        tracing::info!(member = %key, reason = reason.name(), "member disappeared");
        self.view_version += 1;
        self.push_event(MembershipEvent::MemberDisappeared {
            member: entry.member,
            reason,
        });
        self.update_lead();
        true
    }

    fn bound_tombstones(&mut self) {
        // Bounded like the table: drop the tombstones that expire first.
        while self.tombstones.len() > self.cfg.max_members.get() {
            let oldest = self
                .tombstones
                .iter()
                .min_by_key(|(_, t)| t.removed_at)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.tombstones.remove(&k);
            }
        }
    }

    fn expire_tombstones(&mut self, now: Instant) {
        // The longest horizon any beacon may need.
        let horizon = self.tombstone_time(true);
        self.tombstones.retain(|_, t| now < t.removed_at + horizon);
    }

    fn push_event(&mut self, event: MembershipEvent) {
        if self.events.len() >= self.cfg.max_pending_events.get() {
            self.events.pop_front();
            self.stats.events_dropped += 1;
        }
        self.events.push_back(event);
    }

    fn update_lead(&mut self) {
        let local = self
            .started
            .then(|| (self.local.seniority(), self.local.key()));
        let lead = self
            .table
            .values()
            .map(|e| (e.member.seniority(), e.member.key()))
            .chain(local)
            .min()
            .map(|(_, key)| key);
        if lead != self.lead {
            self.lead = lead;
            self.view_version += 1;
            let member = lead.and_then(|k| self.member(&k).cloned());
            let local_is_lead = lead == Some(self.local.key());
            tracing::info!(lead = ?lead, local_is_lead, "lead changed");
            self.push_event(MembershipEvent::LeadChanged {
                lead: member,
                local_is_lead,
            });
        }
    }

    fn member(&self, key: &MemberKey) -> Option<&Member> {
        if *key == self.local.key() {
            Some(&self.local)
        } else {
            self.table.get(key).map(|e| &e.member)
        }
    }

    fn want_answer(&mut self, now: Instant) {
        if !self.started || self.stopped {
            return;
        }
        let earliest = self
            .last_answer
            .map_or(now, |t| (t + self.cfg.min_answer_interval).max(now));
        self.answer_at = Some(self.answer_at.map_or(earliest, |a| a.min(earliest)));
    }

    fn send_beacon(&mut self, now: Instant, command: BeaconCommand) {
        self.seq += 1;
        let wall = self.wall_ms(now);
        let beacon = Beacon {
            member: self.local.clone(),
            command,
            seq: self.seq,
            sent_at_ms: wall,
        };
        if self.multicast {
            let mut out = BytesMut::new();
            match self.codec.encode_beacon(&beacon, &mut out) {
                Ok(()) => self.transmits.push_back(Transmit {
                    to: Destination::Group,
                    bytes: out.freeze(),
                }),
                Err(err) => tracing::error!(error = %err, "cannot encode the local beacon"),
            }
        }
        for peer in &self.peers {
            let mut out = BytesMut::new();
            match peer.codec.encode_beacon(&beacon, &mut out) {
                Ok(()) => self.transmits.push_back(Transmit {
                    to: Destination::Peer(peer.peer.addr),
                    bytes: out.freeze(),
                }),
                Err(err) => tracing::error!(error = %err, "cannot encode the local beacon"),
            }
        }
        // Members that beaconed us from an address we do not list get beacons back (at most
        // one per member in the table: bounded by `max_members`).
        let mut replied: std::collections::BTreeSet<SocketAddr> =
            self.peers.iter().map(|p| p.peer.addr).collect();
        for entry in self.table.values() {
            let Some(to) = entry.reply_to else { continue };
            if !replied.insert(to) {
                continue;
            }
            let mut out = BytesMut::new();
            match self.codec.encode_beacon(&beacon, &mut out) {
                Ok(()) => self.transmits.push_back(Transmit {
                    to: Destination::Peer(to),
                    bytes: out.freeze(),
                }),
                Err(err) => tracing::error!(error = %err, "cannot encode the local beacon"),
            }
        }
        self.stats.beacons_sent += 1;
    }

    /// Runs what is due at `now`: the periodic beacon, an immediate answer, member expiry.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.started || self.stopped {
            return;
        }
        if self.answer_at.is_some_and(|t| t <= now) {
            self.answer_at = None;
            self.last_answer = Some(now);
            self.send_beacon(now, BeaconCommand::Alive);
            // The answer counts as this period's beacon.
            self.next_beacon = Some(now + self.cfg.frequency);
        }
        if self.next_beacon.is_some_and(|t| t <= now) {
            self.send_beacon(now, BeaconCommand::Alive);
            self.next_beacon = Some(now + self.cfg.frequency);
            // Once per period, off the per-datagram path.
            self.expire_tombstones(now);
        }
        if self.next_expiry.is_some_and(|t| t <= now) {
            self.expire(now);
        }
    }

    fn expire(&mut self, now: Instant) {
        let drop_time = self.cfg.drop_time;
        let expired: Vec<(MemberKey, Duration)> = self
            .table
            .iter()
            .filter_map(|(k, e)| {
                let silent = now.saturating_duration_since(e.last_heard);
                (silent >= drop_time).then_some((*k, silent))
            })
            .collect();
        for (key, silent_for) in expired {
            self.remove(now, &key, DisappearReason::Expired { silent_for });
        }
        self.next_expiry = self.table.values().map(|e| e.last_heard + drop_time).min();
    }

    /// The next instant at which [`MembershipCore::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.next_beacon, self.answer_at, self.next_expiry]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<MembershipEvent> {
        self.events.pop_front()
    }

    /// Counts up with every change to what [`MembershipCore::view`] would return, so that a
    /// driver can skip building a view that has not changed.
    pub fn view_version(&self) -> u64 {
        self.view_version
    }

    /// A snapshot: every member including the local one, oldest first, lead marked.
    pub fn view(&self) -> MembershipView {
        let local_key = self.local.key();
        let mut members: Vec<ViewMember> = self
            .table
            .values()
            .map(|e| (&e.member, e.discovered))
            .chain(std::iter::once((&self.local, Discovery::Local)))
            .map(|(m, discovered)| ViewMember {
                member: m.clone(),
                local: m.key() == local_key,
                lead: Some(m.key()) == self.lead,
                discovered,
                protocol: self
                    .local
                    .versions
                    .common(m.versions)
                    .unwrap_or(self.local.versions.max),
            })
            .collect();
        members.sort_by_key(|v| v.member.seniority());
        MembershipView {
            version: self.view_version,
            local: local_key,
            lead: self.lead,
            members,
        }
    }

    /// Number of remote members in the table.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when no remote member is known.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}
