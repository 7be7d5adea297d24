//! Version checks (refusal on both sides, reported once) and discovery sources (static, DNS,
//! multicast), on cores under virtual time.

use std::net::SocketAddr;
use std::time::Duration;

use cohort_wire::VersionRange;

use super::*;
use crate::config::VersionPolicy;
use crate::core::Via;
use crate::view::{Discovery, Refusal};

fn refusals(events: &[MembershipEvent]) -> Vec<(u8, Refusal)> {
    events
        .iter()
        .filter_map(|e| match e {
            MembershipEvent::MemberRefused { member, reason } => {
                Some((member.id.as_bytes()[0], reason.clone()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn members_without_a_common_protocol_version_refuse_each_other_once() {
    let mut net = Net::new();
    net.add(1, MembershipConfig::default());
    // A future build that speaks only versions 2 and 3.
    net.add_with(2, MembershipConfig::default(), |m| {
        m.versions = VersionRange { min: 2, max: 3 };
    });
    net.add(3, MembershipConfig::default());
    net.advance(Duration::from_secs(3));
    assert_eq!(net.sees(1), set(&[1, 3]));
    assert_eq!(net.sees(3), set(&[1, 3]));
    // Node 2's core also speaks 1 (its local range is what the test set), and refuses both.
    assert_eq!(net.sees(2), set(&[2]));
    let r1 = refusals(&net.take_events(1));
    assert_eq!(
        r1,
        vec![(
            2,
            Refusal::Protocol {
                local: VersionRange { min: 1, max: 1 },
                remote: VersionRange { min: 2, max: 3 },
            }
        )],
        "reported once, however many beacons came"
    );
    assert!(net.nodes[&1].stats().refused >= 5);
    let r2 = refusals(&net.take_events(2));
    assert_eq!(r2.len(), 2, "node 2 refuses 1 and 3: {r2:?}");
    let text = r1[0].1.to_string();
    assert!(text.contains("1..=1") && text.contains("2..=3"), "{text}");
}

#[test]
fn same_policy_refuses_other_app_versions_on_both_sides() {
    let same = MembershipConfig {
        version_policy: VersionPolicy::Same,
        ..MembershipConfig::default()
    };
    let mut net = Net::new();
    net.add_with(1, same.clone(), |m| m.app_version = "2.0".into());
    net.add_with(2, same, |m| m.app_version = "2.0".into());
    // Node 3 accepts anyone but runs 1.9: node 1 and 2 refuse it, and because they say they
    // want the same version, node 3 refuses them too (no half-join).
    net.add_with(3, MembershipConfig::default(), |m| {
        m.app_version = "1.9".into();
    });
    // Node 4 runs 1.9 too and accepts anyone: 3 and 4 see each other.
    net.add_with(4, MembershipConfig::default(), |m| {
        m.app_version = "1.9".into();
    });
    net.advance(Duration::from_secs(2));
    assert_eq!(net.sees(1), set(&[1, 2]));
    assert_eq!(net.sees(2), set(&[1, 2]));
    assert_eq!(net.sees(3), set(&[3, 4]));
    assert_eq!(net.sees(4), set(&[3, 4]));
    let r3 = refusals(&net.take_events(3));
    assert_eq!(r3.len(), 2, "{r3:?}");
    assert!(matches!(
        &r3[0].1,
        Refusal::AppVersion { local, remote } if local == "1.9" && remote == "2.0"
    ));
    // Under the default policy, different application versions mix (a rolling upgrade).
    let mut net = Net::new();
    net.add_with(1, MembershipConfig::default(), |m| {
        m.app_version = "1".into();
    });
    net.add_with(2, MembershipConfig::default(), |m| {
        m.app_version = "2".into();
    });
    net.advance(Duration::from_secs(1));
    assert_eq!(net.sees(1), set(&[1, 2]));
    assert!(refusals(&net.take_events(1)).is_empty());
}

#[test]
fn the_view_says_how_each_member_was_found_and_which_version_it_speaks() {
    let mut net = Net::new();
    net.add(1, MembershipConfig::default());
    net.add(2, MembershipConfig::default());
    net.advance(Duration::from_secs(1));
    let view = net.nodes[&1].view();
    for vm in &view.members {
        let want = if vm.local {
            Discovery::Local
        } else {
            Discovery::Multicast
        };
        assert_eq!(vm.discovered, want);
        assert_eq!(vm.protocol, cohort_wire::PROTOCOL_VERSION);
    }
}

/// Two cores on unicast only: `a` lists `b` statically or learns it from DNS.
fn unicast_pair(static_b: bool) -> (MembershipCore, MembershipCore, Instant) {
    let t0 = Instant::now();
    let peers = |n: u8| vec![StaticPeer::new(addr(n))];
    let mut a = MembershipCore::new(
        MembershipConfig::default(),
        member(1),
        false,
        if static_b { peers(2) } else { vec![] },
        t0,
        WALL0,
    )
    .unwrap();
    let mut b = MembershipCore::new(
        MembershipConfig::default(),
        member(2),
        false,
        peers(1),
        t0,
        WALL0,
    )
    .unwrap();
    a.start(t0);
    b.start(t0);
    (a, b, t0)
}

fn deliver(
    from: &mut MembershipCore,
    from_addr: SocketAddr,
    to: &mut MembershipCore,
    to_addr: SocketAddr,
    now: Instant,
) -> usize {
    let mut n = 0;
    while let Some(t) = from.poll_transmit() {
        if t.to == Destination::Peer(to_addr) {
            to.handle_datagram_via(now, from_addr, Via::Unicast, &t.bytes);
            n += 1;
        }
    }
    n
}

#[test]
fn dns_peers_are_beaconed_and_marked_and_replaced_as_the_answer_changes() {
    let (mut a, mut b, t0) = unicast_pair(false);
    // Without peers, a beacons nobody.
    assert_eq!(deliver(&mut a, addr(1), &mut b, addr(2), t0), 0);
    let t1 = t0 + Duration::from_millis(100);
    // The answer names b twice and a static-less address; a join goes out at once.
    assert!(a.set_dns_peers(t1, &[addr(2), addr(2), addr(9)]));
    assert!(
        !a.set_dns_peers(t1, &[addr(9), addr(2)]),
        "same set: no change"
    );
    assert_eq!(
        a.peer_addrs(),
        vec![(addr(2), Discovery::Dns), (addr(9), Discovery::Dns)]
    );
    assert!(deliver(&mut a, addr(1), &mut b, addr(2), t1) >= 1);
    // b lists a statically; a learns b from b's answer, which comes from a DNS address.
    b.handle_timeout(t1 + Duration::from_millis(20));
    deliver(&mut b, addr(2), &mut a, addr(1), t1);
    let seen_by_b = b.view();
    let va = seen_by_b.members.iter().find(|m| !m.local).unwrap();
    assert_eq!(va.discovered, Discovery::Static);
    let seen_by_a = a.view();
    let vb = seen_by_a.members.iter().find(|m| !m.local).unwrap();
    assert_eq!(vb.discovered, Discovery::Dns);
    // A record removed: a stops beaconing it.
    assert!(a.set_dns_peers(t1, &[addr(9)]));
    assert_eq!(a.peer_addrs(), vec![(addr(9), Discovery::Dns)]);
}

#[test]
fn a_dns_address_that_is_a_static_peer_stays_static_and_the_set_is_bounded() {
    let (mut a, _b, t0) = unicast_pair(true);
    assert!(!a.set_dns_peers(t0, &[addr(2)]), "already static");
    assert_eq!(a.peer_addrs(), vec![(addr(2), Discovery::Static)]);
    let many: Vec<SocketAddr> = (0..5000u16)
        .map(|p| SocketAddr::from(([127, 0, 0, 1], 10_000 + p)))
        .collect();
    assert!(a.set_dns_peers(t0, &many));
    assert_eq!(
        a.peer_addrs().len(),
        1 + MembershipConfig::default().max_members.get()
    );
}

#[test]
fn a_unicast_beacon_from_an_unlisted_address_is_marked_unicast() {
    let (mut a, mut b, t0) = unicast_pair(false);
    // b beacons a (a does not list b).
    deliver(&mut b, addr(2), &mut a, addr(1), t0);
    let v = a.view();
    let vb = v.members.iter().find(|m| !m.local).unwrap();
    assert_eq!(vb.discovered, Discovery::Unicast);
    // a beacons b back at the address b's beacons came from, so b keeps seeing a.
    while a.poll_transmit().is_some() {}
    a.handle_timeout(t0 + Duration::from_millis(600));
    let mut back = 0;
    while let Some(t) = a.poll_transmit() {
        if t.to == Destination::Peer(addr(2)) {
            back += 1;
        }
    }
    assert_eq!(back, 1);
}
