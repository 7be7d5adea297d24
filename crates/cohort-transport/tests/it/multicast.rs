//! The multicast data path: the transport's own socket on the group's data port.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use cohort_net::TokioNet;
use cohort_transport::{Delivered, SendError, Transport, Via};
use cohort_wire::{Member, MemberId, SendOptions};
use tokio::sync::oneshot;

use crate::support::*;

async fn mcast_node(id: u8, opts: &cohort_net::MulticastOptions) -> Node {
    let mut bound = Transport::bind(config(), TokioNet, true).await.unwrap();
    bound.bind_multicast(opts).await.unwrap();
    let addr = bound.local_addr().unwrap();
    let member = Member::new(MemberId::from_bytes([id; 16]), addr.ip(), addr.port());
    let (handle, inbound) = bound.start(member.clone(), codec());
    Node {
        member,
        handle,
        inbound,
    }
}

fn multicast(
    node: &Node,
    msg_id: u64,
    payload: &[u8],
) -> oneshot::Receiver<Result<Delivered, SendError>> {
    let (tx, rx) = oneshot::channel();
    let frame = frame_with(
        node.handle.codec(),
        &node.member,
        msg_id,
        SendOptions::MULTICAST,
        payload,
    );
    node.handle.send_multicast(
        frame,
        cohort_transport::Completion::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx
}

#[tokio::test]
async fn a_datagram_to_the_group_reaches_the_others_and_garbage_is_counted() {
    let m = cohort_test_support::private_multicast();
    if !m.loops_back(Duration::from_secs(1)) {
        eprintln!("skipped: multicast does not loop back on this host");
        return;
    }
    let opts = m.data_options();
    let a = mcast_node(1, &opts).await;
    let mut b = mcast_node(2, &opts).await;
    assert!(a.handle.has_multicast());
    let r = multicast(&a, 1, b"to the group").await.unwrap();
    assert_eq!(r.unwrap(), Delivered::Sent);
    let got = within(Duration::from_secs(5), b.inbound.recv())
        .await
        .unwrap();
    assert_eq!(got.via, Via::Multicast);
    assert_eq!(got.frame.payload.as_ref(), b"to the group");
    assert!(got.ack.is_none(), "multicast is never acknowledged");
    assert_eq!(b.handle.stats().multicast_received, 1);
    assert_eq!(a.handle.stats().multicast_sent, 1);
    // a's own datagram came back to a (loopback) and was skipped.
    assert_eq!(a.handle.stats().multicast_received, 0);

    // Garbage and truncated frames on the data port: counted, dropped, nothing delivered.
    let group = SocketAddr::from((opts.group, opts.port));
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let _ = s.set_multicast_ttl_v4(0);
    let good = frame_with(&codec(), &a.member, 9, SendOptions::MULTICAST, b"x");
    for bad in [&b"garbage"[..], &good[..good.len() - 3], &[0u8; 2000][..]] {
        s.send_to(bad, group).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while b.handle.stats().datagrams_dropped < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            b.handle.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(b.inbound.try_recv().is_err());
}

#[tokio::test]
async fn without_a_multicast_path_a_multicast_send_fails_at_once() {
    let a = node(1, config()).await;
    assert!(!a.handle.has_multicast());
    let r = multicast(&a, 1, b"x").await.unwrap();
    assert!(matches!(r, Err(SendError::NoMulticast)), "{r:?}");
}

/// The default: the data path shares the beacon port (as builds that sent data through the
/// membership socket did), and skips the beacons it sees there without counting them.
#[tokio::test]
async fn on_the_beacon_port_beacons_are_skipped_and_data_flows() {
    let mut m = cohort_test_support::private_multicast();
    m.data_port = None;
    if !m.loops_back(Duration::from_secs(1)) {
        eprintln!("skipped: multicast does not loop back on this host");
        return;
    }
    let opts = m.data_options();
    assert_eq!(opts.port, m.port, "shares the beacon port by default");
    let a = mcast_node(1, &opts).await;
    let mut b = mcast_node(2, &opts).await;
    let group = SocketAddr::from((opts.group, opts.port));
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut beacon = cohort_wire::BEACON_MAGIC.to_vec();
    beacon.extend_from_slice(&[0u8; 40]);
    s.send_to(&beacon, group).unwrap();
    let r = multicast(&a, 1, b"data").await.unwrap();
    assert_eq!(r.unwrap(), Delivered::Sent);
    let got = within(Duration::from_secs(5), b.inbound.recv())
        .await
        .unwrap();
    assert_eq!(got.frame.payload.as_ref(), b"data");
    assert_eq!(
        b.handle.stats().datagrams_dropped,
        0,
        "beacons are not ours to count"
    );
}
