//! An unkeyed cluster: a forged beacon naming a known member's id from another address is
//! another member to the membership core, and the channel must pass its events up as such (it
//! used to take them for repeats of the real member's, so the view changed its lead with no
//! event for the listeners).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use bytes::BytesMut;
use cohort_channel::MembershipSetup;
use cohort_membership::{MembershipConfig, MembershipEvent, StaticPeer};
use cohort_test_support::{Events, free_udp_port};
use cohort_wire::{Beacon, BeaconCodec, BeaconCommand, CohortCodec, Services, WireLimits};

use crate::support::*;

fn setup(cluster: &str, me: u16, peer: u16) -> MembershipSetup {
    MembershipSetup {
        config: MembershipConfig {
            cluster: cluster.into(),
            ..MembershipConfig::default()
        },
        multicast: None,
        static_members: Some((
            SocketAddr::from((Ipv4Addr::LOCALHOST, me)),
            vec![format!("127.0.0.1:{peer}").parse::<StaticPeer>().unwrap()],
        )),
        dns: None,
    }
}

#[tokio::test]
async fn a_forged_beacon_reusing_a_members_id_reaches_the_listeners() {
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let cluster = format!("forged-{pa}");
    let events = Events::new();
    let a = start(
        builder()
            .services(Services::DEFAULT)
            .membership(setup(&cluster, pa, pb))
            .membership_listener(events.clone()),
    )
    .await;
    let b = start(
        builder()
            .services(Services::DEFAULT)
            .membership(setup(&cluster, pb, pa)),
    )
    .await;
    wait_for("a sees b", Duration::from_secs(5), || {
        a.members().len() == 1
    })
    .await;

    // B's id, another port, the earliest start time: a new member, and the lead.
    let mut forged = b.local().clone();
    forged.port = forged.port.wrapping_add(1);
    forged.start_time_ms = 0;
    let beacon = Beacon {
        member: forged.clone(),
        command: BeaconCommand::Alive,
        seq: 1,
        sent_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            .try_into()
            .unwrap(),
    };
    let mut datagram = BytesMut::new();
    CohortCodec::new(WireLimits::default(), None)
        .unwrap()
        .encode_beacon(&beacon, &mut datagram)
        .unwrap();
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    socket
        .send_to(&datagram, (Ipv4Addr::LOCALHOST, pa))
        .unwrap();

    let key = forged.key();
    wait_for(
        "the forged member's events at the listener",
        Duration::from_secs(5),
        || {
            let added = events
                .find(|e| matches!(e, MembershipEvent::MemberAdded(m) if m.key() == key))
                .is_some();
            let lead = events
                .find(|e| {
                    matches!(e, MembershipEvent::LeadChanged { lead: Some(m), .. } if m.key() == key)
                })
                .is_some();
            added && lead
        },
    )
    .await;
    let _ = a.stop().await;
    let _ = b.stop().await;
}

/// Events carry the view they produced: the member an event adds is in its view, one it
/// removes is not.
#[tokio::test]
async fn events_carry_the_view_they_produced() {
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let cluster = format!("views-{pa}");
    let a = start(
        builder()
            .services(Services::DEFAULT)
            .membership(setup(&cluster, pa, pb)),
    )
    .await;
    let mut events = a.events();
    let b = start(
        builder()
            .services(Services::DEFAULT)
            .membership(setup(&cluster, pb, pa)),
    )
    .await;
    let b_key = b.local().key();
    let added = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let ev = events.recv().await.unwrap();
            if matches!(&ev.event, MembershipEvent::MemberAdded(m) if m.key() == b_key) {
                return ev;
            }
        }
    })
    .await
    .expect("b added");
    assert!(added.members.iter().any(|m| m.key() == b_key));
    b.stop().await;
    let gone = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let ev = events.recv().await.unwrap();
            if matches!(&ev.event, MembershipEvent::MemberDisappeared { member, .. } if member.key() == b_key) {
                return ev;
            }
        }
    })
    .await
    .expect("b gone");
    assert!(!gone.members.iter().any(|m| m.key() == b_key));
    a.stop().await;
}
