//! Beacons from an attacker without the key (or without a static peer's own secret): what one
//! forged packet can and cannot do, and the lead after a changed start time.

use super::*;

#[test]
fn a_static_peers_secret_is_enforced_by_the_member_a_beacon_names() {
    let t0 = Instant::now();
    let secret = ClusterKey::new(*b"per-node secret!").unwrap();
    let ring = KeyRing::new(vec![secret.clone()]).unwrap();
    // Peer 2 has its own secret and no pinned id; peer 3 has both.
    let peers = vec![
        StaticPeer {
            addr: addr(2),
            id: None,
            secret: Some(secret.clone()),
        },
        StaticPeer {
            addr: addr(3),
            id: Some(member(3).id),
            secret: Some(secret),
        },
    ];
    let mut core = started(MembershipConfig::default(), true, peers, t0);
    while core.poll_transmit().is_some() {}
    let beacon = |m: Member, command, seq| Beacon {
        member: m,
        command,
        seq,
        sent_at_ms: WALL0,
    };
    // Peer 2's own beacon, signed with its secret: its id and data address are now known.
    let signed = encode(
        &beacon(member(2), BeaconCommand::Alive, 1),
        Some(ring.clone()),
    );
    core.handle_datagram(t0, addr(2), &signed);
    assert_eq!(core.len(), 1);
    // Unsigned beacons from another port that name a protected peer are refused and counted:
    // a shutdown naming peer 2,
    let other = addr(9);
    let shutdown = beacon(member(2), BeaconCommand::Shutdown, 2);
    core.handle_datagram(t0, other, &encode(&shutdown, None));
    // a member with peer 2's id elsewhere,
    let mut same_id = member(2);
    same_id.port = 4999;
    // a new id at peer 2's data address,
    let mut same_addr = member(8);
    same_addr.port = member(2).port;
    // a new id at peer 2's configured address,
    let mut configured_addr = member(7);
    configured_addr.port = addr(2).port();
    // and peer 3's pinned id, before peer 3 was ever heard.
    for fake in [same_id, same_addr, configured_addr, member(3)] {
        let alive = beacon(fake, BeaconCommand::Alive, 1);
        core.handle_datagram(t0, other, &encode(&alive, None));
    }
    assert_eq!(core.len(), 1);
    assert!(core.view().contains(&member(2).id));
    assert_eq!(core.stats().unauthenticated, 5);
    // A member that names no protected peer is accepted from that port.
    core.handle_datagram(
        t0,
        other,
        &encode(&beacon(member(9), BeaconCommand::Alive, 1), None),
    );
    assert_eq!(core.len(), 2);
    // Peer 2's own signed shutdown removes it.
    core.handle_datagram(t0, addr(2), &encode(&shutdown, Some(ring)));
    assert!(!core.view().contains(&member(2).id));

    // With cluster keys, a beacon signed with the cluster key naming a peer with its own
    // secret is refused too.
    let cluster = keys(b"the cluster key!");
    let cfg = MembershipConfig {
        keys: Some(cluster.clone()),
        ..MembershipConfig::default()
    };
    let peer = StaticPeer {
        addr: addr(2),
        id: Some(member(2).id),
        secret: Some(ClusterKey::new(*b"per-node secret!").unwrap()),
    };
    let mut core = started(cfg, true, vec![peer], t0);
    let alive = beacon(member(2), BeaconCommand::Alive, 1);
    core.handle_datagram(t0, other, &encode(&alive, Some(cluster)));
    assert!(core.is_empty());
    assert_eq!(core.stats().unauthenticated, 1);
}

#[test]
fn without_a_key_one_forged_beacon_keeps_no_member_out_beyond_the_drop_time() {
    for forged in [BeaconCommand::Shutdown, BeaconCommand::Alive] {
        let (mut core, t0) = single_core(MembershipConfig::default());
        let frequency = core.config().frequency;
        let drop_time = core.config().drop_time;
        let beacon = |command, seq, payload: &'static [u8]| {
            let mut m = member(2);
            m.payload = Bytes::from_static(payload);
            Beacon {
                member: m,
                command,
                seq,
                sent_at_ms: WALL0,
            }
        };
        core.handle_datagram(
            t0,
            addr(2),
            &encode(&beacon(BeaconCommand::Alive, 1, b""), None),
        );
        // One forged beacon from anywhere, with the highest sequence (and another payload).
        let forged_at = t0 + Duration::from_millis(100);
        let forgery = beacon(forged, u64::MAX, b"forged");
        core.handle_datagram(forged_at, addr(9), &encode(&forgery, None));
        let mut events = Vec::new();
        while let Some(e) = core.poll_event() {
            events.push(e);
        }
        // The member goes on beaconing once per period: from the drop time after the forgery
        // on, it is in the view, whatever the forgery said, and every change of the view comes
        // with an event.
        let mut now = t0;
        let mut version = core.view_version();
        for seq in 2..=20 {
            now += frequency;
            while let Some(t) = core.poll_timeout().filter(|t| *t <= now) {
                core.handle_timeout(t);
            }
            core.handle_datagram(
                now,
                addr(2),
                &encode(&beacon(BeaconCommand::Alive, seq, b""), None),
            );
            while core.poll_transmit().is_some() {}
            let before = events.len();
            while let Some(e) = core.poll_event() {
                events.push(e);
            }
            if core.view_version() != version {
                assert!(events.len() > before, "{forged:?}: a silent view change");
                version = core.view_version();
            }
            if now >= forged_at + drop_time {
                assert!(
                    core.view().contains(&member(2).id),
                    "{forged:?}: out {:?} after the forgery; {events:?}",
                    now - forged_at
                );
            }
        }
        // Only the real beacon right after the forgery was refused.
        assert_eq!(core.stats().replayed, 1, "{forged:?}");
        let view = core.view();
        let m = view.members.iter().find(|m| m.member.id == member(2).id);
        assert!(m.is_some_and(|m| m.member.payload.is_empty()), "{view:?}");
        // A forged alive never made the view drop the member.
        let disappeared = events
            .iter()
            .filter(|e| matches!(e, MembershipEvent::MemberDisappeared { .. }))
            .count();
        assert_eq!(
            disappeared,
            usize::from(forged == BeaconCommand::Shutdown),
            "{forged:?}: {events:?}"
        );
    }
}

#[test]
fn with_a_key_replays_stay_refused_beyond_one_period() {
    let key = keys(b"the cluster key!");
    let cfg = MembershipConfig {
        keys: Some(key.clone()),
        ..MembershipConfig::default()
    };
    let (mut core, t0) = single_core(cfg);
    // Replays carry their original send time, within the clock skew here.
    let signed = |command, seq| {
        let b = Beacon {
            member: member(2),
            command,
            seq,
            sent_at_ms: WALL0,
        };
        encode(&b, Some(key.clone()))
    };
    core.handle_datagram(t0, addr(2), &signed(BeaconCommand::Alive, 5));
    let later = t0 + Duration::from_secs(2);
    core.handle_datagram(later, addr(2), &signed(BeaconCommand::Alive, 4));
    assert_eq!(core.stats().replayed, 1);
    assert_eq!(core.len(), 1);
    // After a genuine shutdown, replays stay refused far beyond the drop time.
    core.handle_datagram(later, addr(2), &signed(BeaconCommand::Shutdown, 6));
    assert!(core.is_empty());
    let much_later = t0 + Duration::from_secs(20);
    core.handle_datagram(much_later, addr(2), &signed(BeaconCommand::Alive, 5));
    assert!(core.is_empty());
    assert_eq!(core.stats().replayed, 2);
}

#[test]
fn a_changed_start_time_recomputes_the_lead() {
    let (mut core, t0) = single_core(MembershipConfig::default());
    let alive = |start_time_ms, payload: &'static [u8], seq| {
        let mut m = member(2);
        m.start_time_ms = start_time_ms;
        m.payload = Bytes::from_static(payload);
        let b = Beacon {
            member: m,
            command: BeaconCommand::Alive,
            seq,
            sent_at_ms: WALL0,
        };
        encode(&b, None)
    };
    core.handle_datagram(t0, addr(2), &alive(WALL0 + 2, b"", 1));
    while core.poll_event().is_some() {}
    assert_eq!(core.view().lead, Some(member(1).key()));
    // Member 2's record now says it started before the local member (its payload changed
    // too): the view re-sorts, and the lead follows.
    core.handle_datagram(t0, addr(2), &alive(WALL0, b"x", 2));
    let events: Vec<_> = std::iter::from_fn(|| core.poll_event()).collect();
    assert!(
        matches!(
            &events[..],
            [
                MembershipEvent::MemberUpdated(m),
                MembershipEvent::LeadChanged { lead: Some(l), local_is_lead: false },
            ] if m.start_time_ms == WALL0 && l.key() == member(2).key()
        ),
        "{events:?}"
    );
    let view = core.view();
    assert_eq!(view.lead, Some(member(2).key()));
    assert!(view.members[0].lead && view.members[0].member.id == member(2).id);
    // A start time alone changes the record, and the lead goes back.
    core.handle_datagram(t0, addr(2), &alive(WALL0 + 5, b"x", 3));
    let events: Vec<_> = std::iter::from_fn(|| core.poll_event()).collect();
    assert!(
        matches!(
            &events[..],
            [
                MembershipEvent::MemberUpdated(m),
                MembershipEvent::LeadChanged { local_is_lead: true, .. },
            ] if m.start_time_ms == WALL0 + 5
        ),
        "{events:?}"
    );
    assert_eq!(core.view().lead, Some(member(1).key()));
}
