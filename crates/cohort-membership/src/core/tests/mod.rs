use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cohort_wire::{
    Beacon, BeaconCodec, BeaconCommand, ClusterKey, CohortCodec, KeyRing, Member, MemberId,
    WireLimits,
};
use proptest::prelude::*;

use super::{Destination, MembershipCore};
use crate::config::{MembershipConfig, StaticPeer};
use crate::view::{DisappearReason, FailureEvidence, MembershipEvent};

mod discovery;
mod hostile;

const WALL0: u64 = 1_700_000_000_000;

fn member(n: u8) -> Member {
    let mut m = Member::new(
        MemberId::from_bytes([n; 16]),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        4000 + u16::from(n),
    );
    m.cluster = "cohort".into();
    m.name = format!("n{n}");
    m.start_time_ms = WALL0 + u64::from(n);
    m
}

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 45_000 + u16::from(n)))
}

fn keys(secret: &[u8]) -> KeyRing {
    KeyRing::new(vec![ClusterKey::new(secret).unwrap()]).unwrap()
}

/// An in-memory multicast network of cores under virtual time. Datagrams are delivered at
/// once to every running node except those cut off.
struct Net {
    t0: Instant,
    now: Instant,
    nodes: BTreeMap<u8, MembershipCore>,
    events: BTreeMap<u8, Vec<MembershipEvent>>,
    /// Nodes whose datagrams are neither sent nor received (a crash or a partition).
    cut: BTreeSet<u8>,
}

impl Net {
    fn new() -> Self {
        let t0 = Instant::now();
        Self {
            t0,
            now: t0,
            nodes: BTreeMap::new(),
            events: BTreeMap::new(),
            cut: BTreeSet::new(),
        }
    }

    fn wall(&self) -> u64 {
        WALL0 + u64::try_from((self.now - self.t0).as_millis()).unwrap()
    }

    fn add(&mut self, n: u8, cfg: MembershipConfig) {
        self.add_with(n, cfg, |_| {});
    }

    /// Adds node `n` with its member record changed by `f` first.
    fn add_with(&mut self, n: u8, cfg: MembershipConfig, f: impl FnOnce(&mut Member)) {
        let mut m = member(n);
        f(&mut m);
        m.start_time_ms = self.wall();
        m.cluster.clone_from(&cfg.cluster);
        let mut core = MembershipCore::new(cfg, m, true, vec![], self.now, self.wall()).unwrap();
        core.start(self.now);
        self.nodes.insert(n, core);
        self.pump();
    }

    /// Delivers every pending datagram and collects events until quiet.
    fn pump(&mut self) {
        loop {
            let mut sent = Vec::new();
            for (n, core) in &mut self.nodes {
                while let Some(t) = core.poll_transmit() {
                    assert_eq!(t.to, Destination::Group);
                    if !self.cut.contains(n) {
                        sent.push((*n, t.bytes));
                    }
                }
                let events = self.events.entry(*n).or_default();
                while let Some(e) = core.poll_event() {
                    events.push(e);
                }
            }
            if sent.is_empty() {
                return;
            }
            for (from, bytes) in sent {
                for (n, core) in &mut self.nodes {
                    if !self.cut.contains(n) {
                        core.handle_datagram(self.now, addr(from), &bytes);
                    }
                }
            }
        }
    }

    /// Advances virtual time to `until`, firing every timer on the way in order.
    fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        loop {
            let next = self
                .nodes
                .values()
                .filter_map(MembershipCore::poll_timeout)
                .min()
                .filter(|t| *t <= until);
            let Some(t) = next else { break };
            self.now = t.max(self.now);
            for core in self.nodes.values_mut() {
                if core.poll_timeout().is_some_and(|d| d <= self.now) {
                    core.handle_timeout(self.now);
                }
            }
            self.pump();
        }
        self.now = until;
    }

    fn sees(&self, n: u8) -> BTreeSet<u8> {
        self.nodes[&n]
            .view()
            .members
            .iter()
            .map(|m| m.member.id.as_bytes()[0])
            .collect()
    }

    fn lead(&self, n: u8) -> Option<u8> {
        self.nodes[&n].view().lead.map(|k| k.id.as_bytes()[0])
    }

    fn take_events(&mut self, n: u8) -> Vec<MembershipEvent> {
        std::mem::take(self.events.entry(n).or_default())
    }
}

fn set(ids: &[u8]) -> BTreeSet<u8> {
    ids.iter().copied().collect()
}

#[test]
fn three_nodes_see_each_other_at_once_after_the_last_start() {
    let mut net = Net::new();
    net.add(1, MembershipConfig::default());
    net.advance(Duration::from_millis(700));
    net.add(2, MembershipConfig::default());
    net.advance(Duration::from_millis(30));
    net.add(3, MembershipConfig::default());
    // Join beacons are answered within min_answer_interval (20 ms), far under a beacon period.
    net.advance(Duration::from_millis(25));
    for n in 1..=3 {
        assert_eq!(net.sees(n), set(&[1, 2, 3]), "node {n}");
        assert_eq!(net.lead(n), Some(1), "node {n}");
    }
}

#[test]
fn a_silent_member_expires_after_the_drop_time() {
    let mut net = Net::new();
    for n in 1..=3 {
        net.add(n, MembershipConfig::default());
    }
    net.advance(Duration::from_secs(2));
    for n in 1..=3 {
        net.take_events(n);
    }
    net.cut.insert(3);
    let cut_at = net.now;
    // Not yet gone before drop time minus a beacon period.
    net.advance(Duration::from_millis(2400));
    assert_eq!(net.sees(1), set(&[1, 2, 3]));
    // Gone within drop time + one frequency.
    net.advance(Duration::from_millis(1100));
    assert_eq!(net.sees(1), set(&[1, 2]));
    assert_eq!(net.sees(2), set(&[1, 2]));
    let events = net.take_events(1);
    let Some(MembershipEvent::MemberDisappeared {
        member,
        reason: DisappearReason::Expired { silent_for },
    }) = events.first()
    else {
        panic!("expected an expiry, got {events:?}");
    };
    assert_eq!(member.id.as_bytes()[0], 3);
    assert!(*silent_for >= Duration::from_millis(3000));
    assert!(net.now - cut_at <= Duration::from_millis(3500));
    // It comes back when heard from again (a healed partition).
    net.cut.remove(&3);
    net.advance(Duration::from_millis(600));
    assert_eq!(net.sees(1), set(&[1, 2, 3]));
}

#[test]
fn a_shutdown_beacon_removes_at_once_and_moves_the_lead() {
    let mut net = Net::new();
    for n in 1..=3 {
        net.add(n, MembershipConfig::default());
        net.advance(Duration::from_millis(100));
    }
    assert_eq!(net.lead(3), Some(1));
    for n in 1..=3 {
        net.take_events(n);
    }
    let now = net.now;
    net.nodes.get_mut(&1).unwrap().shutdown(now);
    net.pump();
    net.nodes.remove(&1);
    for n in 2..=3 {
        assert_eq!(net.sees(n), set(&[2, 3]), "node {n}");
        assert_eq!(net.lead(n), Some(2), "node {n}");
        let events = net.take_events(n);
        assert!(matches!(
            &events[0],
            MembershipEvent::MemberDisappeared {
                reason: DisappearReason::Shutdown,
                ..
            }
        ));
        assert!(matches!(
            &events[1],
            MembershipEvent::LeadChanged { lead: Some(m), local_is_lead } if m.id.as_bytes()[0] == 2 && *local_is_lead == (n == 2)
        ));
    }
}

#[test]
fn lead_fails_over_to_the_next_oldest_on_every_node() {
    let mut net = Net::new();
    for n in [4, 2, 7, 5] {
        net.add(n, MembershipConfig::default());
        net.advance(Duration::from_millis(50));
    }
    for n in [4, 2, 7, 5] {
        assert_eq!(net.lead(n), Some(4));
    }
    net.cut.insert(4);
    net.advance(Duration::from_millis(3600));
    for n in [2, 7, 5] {
        assert_eq!(net.lead(n), Some(2), "node {n}");
        assert!(
            net.nodes[&n]
                .view()
                .members
                .iter()
                .filter(|m| m.lead)
                .count()
                == 1
        );
    }
}

#[test]
fn foreign_clusters_and_keys_are_ignored_and_counted() {
    let keyed = MembershipConfig {
        keys: Some(keys(b"the cluster key!")),
        ..MembershipConfig::default()
    };
    let mut net = Net::new();
    net.add(1, keyed.clone());
    net.add(2, keyed);
    net.add(
        3,
        MembershipConfig {
            keys: Some(keys(b"another key !!!!")),
            ..MembershipConfig::default()
        },
    );
    net.add(4, MembershipConfig::default());
    net.add(
        5,
        MembershipConfig {
            cluster: "other".into(),
            keys: Some(keys(b"the cluster key!")),
            ..MembershipConfig::default()
        },
    );
    net.advance(Duration::from_secs(2));
    assert_eq!(net.sees(1), set(&[1, 2]));
    assert_eq!(net.sees(2), set(&[1, 2]));
    let stats = net.nodes[&1].stats();
    assert!(stats.unauthenticated > 0, "{stats:?}");
    assert!(stats.foreign_cluster > 0, "{stats:?}");
    // The keyless node sees nobody of the keyed cluster either.
    assert_eq!(net.sees(4), set(&[4]));
}

fn encode(beacon: &Beacon, keys: Option<KeyRing>) -> BytesMut {
    let codec = CohortCodec::new(WireLimits::default(), keys).unwrap();
    let mut out = BytesMut::new();
    codec.encode_beacon(beacon, &mut out).unwrap();
    out
}

fn single_core(cfg: MembershipConfig) -> (MembershipCore, Instant) {
    let t0 = Instant::now();
    let mut core = started(cfg, true, vec![], t0);
    while core.poll_transmit().is_some() {}
    (core, t0)
}

/// Member 1's core with `peers`, started at `t0` (its first beacons still queued).
fn started(
    cfg: MembershipConfig,
    multicast: bool,
    peers: Vec<StaticPeer>,
    t0: Instant,
) -> MembershipCore {
    let mut core = MembershipCore::new(cfg, member(1), multicast, peers, t0, WALL0).unwrap();
    core.start(t0);
    core
}

#[test]
fn forged_and_replayed_beacons_change_nothing() {
    let key = keys(b"the cluster key!");
    let cfg = MembershipConfig {
        keys: Some(key.clone()),
        ..MembershipConfig::default()
    };
    let (mut core, t0) = single_core(cfg);
    let alive = |seq| Beacon {
        member: member(2),
        command: BeaconCommand::Alive,
        seq,
        sent_at_ms: WALL0,
    };
    core.handle_datagram(t0, addr(2), &encode(&alive(5), Some(key.clone())));
    assert_eq!(core.len(), 1);
    // A forged shutdown (anyone's key but ours, or none) changes nothing.
    let shutdown = Beacon {
        command: BeaconCommand::Shutdown,
        ..alive(6)
    };
    core.handle_datagram(
        t0,
        addr(2),
        &encode(&shutdown, Some(keys(b"attacker key 123"))),
    );
    core.handle_datagram(t0, addr(2), &encode(&shutdown, None));
    assert_eq!(core.len(), 1);
    assert_eq!(core.stats().unauthenticated, 2);
    // A replay of an older genuine beacon is rejected.
    core.handle_datagram(t0, addr(2), &encode(&alive(5), Some(key.clone())));
    core.handle_datagram(t0, addr(2), &encode(&alive(3), Some(key.clone())));
    assert_eq!(core.stats().replayed, 2);
    // A genuine shutdown removes it; replaying its old alive beacons does not bring it back.
    core.handle_datagram(t0, addr(2), &encode(&shutdown, Some(key.clone())));
    assert!(core.is_empty());
    core.handle_datagram(t0, addr(2), &encode(&alive(5), Some(key.clone())));
    core.handle_datagram(t0, addr(2), &encode(&shutdown, Some(key.clone())));
    assert!(core.is_empty());
    assert_eq!(core.stats().replayed, 4);
    // A recorded beacon replayed long after, beyond the clock skew, is stale.
    let later = t0 + Duration::from_secs(120);
    core.handle_datagram(later, addr(2), &encode(&alive(100), Some(key)));
    assert!(core.is_empty());
    assert_eq!(core.stats().stale, 1);
}

#[test]
fn the_table_is_bounded() {
    let cfg = MembershipConfig {
        max_members: std::num::NonZeroUsize::new(2).unwrap(),
        ..MembershipConfig::default()
    };
    let (mut core, t0) = single_core(cfg);
    for n in 2..=5 {
        let b = Beacon {
            member: member(n),
            command: BeaconCommand::Alive,
            seq: 1,
            sent_at_ms: WALL0,
        };
        core.handle_datagram(t0, addr(n), &encode(&b, None));
    }
    assert_eq!(core.len(), 2);
    assert_eq!(core.stats().table_full, 2);
}

#[test]
fn payload_changes_propagate_with_an_immediate_beacon() {
    let mut net = Net::new();
    net.add(1, MembershipConfig::default());
    net.add(2, MembershipConfig::default());
    net.advance(Duration::from_millis(100));
    net.take_events(2);
    let now = net.now;
    net.nodes
        .get_mut(&1)
        .unwrap()
        .set_payload(now, Bytes::from_static(b"role=web"))
        .unwrap();
    net.advance(Duration::from_millis(25));
    let events = net.take_events(2);
    assert!(
        matches!(&events[..], [MembershipEvent::MemberUpdated(m)] if m.payload == "role=web"),
        "{events:?}"
    );
    let too_big = Bytes::from(vec![0; 5000]);
    assert!(
        net.nodes
            .get_mut(&1)
            .unwrap()
            .set_payload(now, too_big)
            .is_err()
    );
}

#[test]
fn reported_failures_carry_their_evidence() {
    let mut net = Net::new();
    net.add(1, MembershipConfig::default());
    net.add(2, MembershipConfig::default());
    net.take_events(1);
    let now = net.now;
    let key = member(2).key();
    let evidence = FailureEvidence {
        detail: "connection refused".into(),
    };
    assert!(
        net.nodes
            .get_mut(&1)
            .unwrap()
            .report_failed(now, &key, evidence.clone())
    );
    net.pump();
    assert!(matches!(
        &net.take_events(1)[0],
        MembershipEvent::MemberDisappeared { reason: DisappearReason::Failed(e), .. } if *e == evidence
    ));
}

#[test]
fn static_peers_with_their_own_secret() {
    let t0 = Instant::now();
    let secret = ClusterKey::new(*b"per-node secret!").unwrap();
    let peer = StaticPeer {
        addr: addr(2),
        id: Some(member(2).id),
        secret: Some(secret.clone()),
    };
    let mut core = started(MembershipConfig::default(), false, vec![peer], t0);
    let t = core.poll_transmit().unwrap();
    assert_eq!(t.to, Destination::Peer(addr(2)));
    // The beacon to the peer is signed with its secret.
    let ring = KeyRing::new(vec![secret]).unwrap();
    let codec = CohortCodec::new(WireLimits::default(), Some(ring.clone())).unwrap();
    assert!(codec.decode_beacon(&t.bytes).is_ok());
    let b = |n, seq| Beacon {
        member: member(n),
        command: BeaconCommand::Alive,
        seq,
        sent_at_ms: WALL0,
    };
    // Unsigned, or from the peer's address with another id: dropped.
    core.handle_datagram(t0, addr(2), &encode(&b(2, 1), None));
    core.handle_datagram(t0, addr(2), &encode(&b(3, 1), Some(ring.clone())));
    assert!(core.is_empty());
    assert_eq!(core.stats().wrong_static_id, 1);
    core.handle_datagram(t0, addr(2), &encode(&b(2, 2), Some(ring)));
    assert_eq!(core.len(), 1);
    // A core with no source at all is allowed (DNS may bring peers later); the builder
    // refuses a service with neither multicast, static peers nor DNS.
    assert!(
        MembershipCore::new(
            MembershipConfig::default(),
            member(1),
            false,
            vec![],
            t0,
            WALL0
        )
        .is_ok()
    );
}

#[test]
fn static_peers_and_multicast_run_together() {
    let t0 = Instant::now();
    let peers = vec![StaticPeer::new(addr(2)), StaticPeer::new(addr(3))];
    let mut core = started(MembershipConfig::default(), true, peers, t0);
    let mut to = Vec::new();
    while let Some(t) = core.poll_transmit() {
        to.push(t.to);
    }
    assert_eq!(
        to,
        [
            Destination::Group,
            Destination::Peer(addr(2)),
            Destination::Peer(addr(3))
        ]
    );
    // A beacon from a static peer and one from the group are both accepted.
    let b = |n| Beacon {
        member: member(n),
        command: BeaconCommand::Alive,
        seq: 1,
        sent_at_ms: WALL0,
    };
    core.handle_datagram(t0, addr(2), &encode(&b(2), None));
    core.handle_datagram(t0, addr(9), &encode(&b(9), None));
    assert_eq!(core.len(), 2);
}

#[test]
fn config_is_validated() {
    let bad = MembershipConfig {
        drop_time: Duration::from_millis(600),
        ..MembershipConfig::default()
    };
    assert!(bad.validate().is_err());
    assert!("127.0.0.1:45601".parse::<StaticPeer>().is_ok());
    let p: StaticPeer = "10.0.0.2:a-secret-of-16-bytes:45601@000102030405060708090a0b0c0d0e0f"
        .parse()
        .unwrap();
    assert!(p.secret.is_some() && p.id.is_some());
    assert!("host-name:45601".parse::<StaticPeer>().is_err());
    assert!("10.0.0.2:short:45601".parse::<StaticPeer>().is_err());
}

#[derive(Clone, Debug)]
enum Op {
    Alive(u8),
    Shutdown(u8),
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (2u8..=5).prop_map(Op::Alive),
        1 => (2u8..=5).prop_map(Op::Shutdown),
        3 => (1u16..2000).prop_map(Op::Advance),
    ]
}

proptest! {
    /// The core's view always equals a simple reference model: a member is present when its
    /// last beacon is younger than the drop time and it has not shut down since; the lead is
    /// the oldest present member (the local one included).
    #[test]
    fn the_view_matches_a_reference_model(ops in proptest::collection::vec(op(), 1..80)) {
        let (mut core, t0) = single_core(MembershipConfig::default());
        let drop_time = core.config().drop_time;
        let mut now = t0;
        let mut seq: BTreeMap<u8, u64> = BTreeMap::new();
        let mut model: BTreeMap<u8, Instant> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Alive(n) | Op::Shutdown(n) => {
                    let s = seq.entry(n).or_insert(0);
                    *s += 1;
                    let command = if matches!(op, Op::Alive(_)) {
                        BeaconCommand::Alive
                    } else {
                        BeaconCommand::Shutdown
                    };
                    let wall = WALL0 + u64::try_from((now - t0).as_millis()).unwrap();
                    let b = Beacon { member: member(n), command, seq: *s, sent_at_ms: wall };
                    core.handle_datagram(now, addr(n), &encode(&b, None));
                    if command == BeaconCommand::Alive {
                        model.insert(n, now);
                    } else {
                        model.remove(&n);
                    }
                }
                Op::Advance(ms) => {
                    let until = now + Duration::from_millis(u64::from(ms));
                    while let Some(t) = core.poll_timeout().filter(|t| *t <= until) {
                        now = t.max(now);
                        core.handle_timeout(now);
                    }
                    now = until;
                    model.retain(|_, last| now.duration_since(*last) < drop_time);
                }
            }
            while core.poll_transmit().is_some() {}
            while core.poll_event().is_some() {}
            let view = core.view();
            let seen: BTreeSet<u8> = view.members.iter().map(|m| m.member.id.as_bytes()[0]).collect();
            let mut expected: BTreeSet<u8> = model.keys().copied().collect();
            expected.insert(1);
            prop_assert_eq!(&seen, &expected);
            // member(n) starts at WALL0 + n: the smallest present id is the oldest.
            let lead = view.lead.map(|k| k.id.as_bytes()[0]);
            prop_assert_eq!(lead, expected.iter().next().copied());
            prop_assert_eq!(view.members.iter().filter(|m| m.lead).count(), 1);
        }
    }
}
