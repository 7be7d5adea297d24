use std::time::Duration;

use cohort_transport::{Delivered, SendError, TransportConfig};
use cohort_wire::SendOptions;

use crate::support::*;

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn ack_on_receipt() {
    let mut b = node(2, config()).await;
    let a = node(1, config()).await;
    let done = send(&a, &b.member, 1, SendOptions::USE_ACK, b"hello");
    let got = within(T, b.inbound.recv()).await.unwrap();
    assert_eq!(&got.frame.payload[..], b"hello");
    assert_eq!(got.hello.as_ref().unwrap().id, a.member.id);
    assert!(
        got.ack.is_none(),
        "USE_ACK alone is acknowledged on receipt"
    );
    assert_eq!(within(T, done).await.unwrap(), Ok(Delivered::Acked));
}

#[tokio::test]
async fn sync_ack_waits_for_the_token_and_fail_ack_carries_the_reason() {
    let mut b = node(2, config()).await;
    let a = node(1, config()).await;
    let sync = SendOptions::USE_ACK | SendOptions::SYNCHRONIZED_ACK;
    let mut done1 = send(&a, &b.member, 1, sync, b"one");
    let done2 = send(&a, &b.member, 2, sync, b"two");
    let first = within(T, b.inbound.recv()).await.unwrap();
    let token = first.ack.expect("a token for a synchronized ACK");
    // Not acknowledged until the token is completed.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut done1)
            .await
            .is_err()
    );
    token.ack();
    assert_eq!(within(T, done1).await.unwrap(), Ok(Delivered::Acked));
    let second = within(T, b.inbound.recv()).await.unwrap();
    second.ack.unwrap().fail("no such session");
    match within(T, done2).await.unwrap() {
        Err(SendError::FailAck { reason, .. }) => assert_eq!(reason, "no such session"),
        other => panic!("{other:?}"),
    }
    assert_eq!(a.handle.stats().fail_acked, 1);
}

#[tokio::test]
async fn udp_data_and_acks() {
    let udp = || cohort_transport::TransportConfig {
        udp_port: Some(0),
        ..config()
    };
    let mut b = node(2, udp()).await;
    let a = node(1, udp()).await;
    assert!(b.member.udp_port.is_some());
    let opts = SendOptions::UDP | SendOptions::USE_ACK;
    let done = send(&a, &b.member, 7, opts, b"by datagram");
    let got = within(T, b.inbound.recv()).await.unwrap();
    assert_eq!(got.via, cohort_transport::Via::Udp);
    assert_eq!(&got.frame.payload[..], b"by datagram");
    assert_eq!(within(T, done).await.unwrap(), Ok(Delivered::Acked));
    // A member without a UDP port cannot be reached that way: a clear error, at once.
    let c = node(3, config()).await;
    let done = send(&a, &c.member, 8, opts, b"x");
    assert!(matches!(
        within(T, done).await.unwrap(),
        Err(SendError::NoUdp { .. })
    ));
    assert_eq!(a.handle.stats().connections_out, 0, "no TCP was used");
}

/// A UDP ACK completes only what was sent to the address it comes from: an ACK forged by
/// another socket names nothing (counted as unknown), and the send still waits for its own
/// destination's answer. And one message id sent to two members by datagram is two sends
/// in flight, each completed by its own member's ACK.
#[tokio::test]
async fn udp_acks_complete_only_what_went_to_their_sender() {
    use cohort_wire::{AckFrame, AckRange, Frame, FrameCodec};
    let udp = || TransportConfig {
        udp_port: Some(0),
        ..config()
    };
    let a = node(1, udp()).await;
    let a_udp = loopback(a.member.udp_port.unwrap());
    // The destination: a bare socket that reads and answers by hand.
    let dest = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut to = cohort_wire::Member::new(
        cohort_wire::MemberId::from_bytes([9; 16]),
        std::net::Ipv4Addr::LOCALHOST.into(),
        1,
    );
    to.udp_port = Some(dest.local_addr().unwrap().port());
    let opts = SendOptions::UDP | SendOptions::USE_ACK;
    let mut done = send(&a, &to, 42, opts, b"to dest");
    let mut buf = vec![0u8; 65536];
    let (n, from) = within(T, dest.recv_from(&mut buf)).await.unwrap();
    assert!(n > 0);
    assert_eq!(from, a_udp);
    let ack = |ids: AckRange| {
        let mut out = bytes::BytesMut::new();
        codec()
            .encode_frame(
                &Frame::Ack(AckFrame {
                    acked: vec![ids],
                    failed: vec![],
                }),
                &mut out,
            )
            .unwrap();
        out
    };
    // Another socket ACKs every id: nothing completes.
    let forger = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    forger
        .send_to(
            &ack(AckRange {
                first: 0,
                last: u64::MAX,
            }),
            a_udp,
        )
        .await
        .unwrap();
    within(T, async {
        while a.handle.stats().unknown_acks == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut done)
            .await
            .is_err(),
        "a forged ACK completed the send"
    );
    // The destination's own ACK does.
    dest.send_to(&ack(AckRange::single(42)), a_udp)
        .await
        .unwrap();
    assert_eq!(within(T, done).await.unwrap(), Ok(Delivered::Acked));

    // One id, two members: both ACKed, neither lost.
    let mut b = node(2, udp()).await;
    let mut c = node(3, udp()).await;
    let to_b = send(&a, &b.member, 7, opts, b"same id");
    let to_c = send(&a, &c.member, 7, opts, b"same id");
    within(T, b.inbound.recv()).await.unwrap();
    within(T, c.inbound.recv()).await.unwrap();
    assert_eq!(within(T, to_b).await.unwrap(), Ok(Delivered::Acked));
    assert_eq!(within(T, to_c).await.unwrap(), Ok(Delivered::Acked));
}

/// The UDP queue is bounded in bytes, like a TCP peer's: sends beyond `max_peer_queue_bytes`
/// fail at once with `QueueFull` naming bytes.
#[tokio::test]
async fn the_udp_queue_is_bounded_in_bytes() {
    let udp = |limit| cohort_transport::TransportConfig {
        udp_port: Some(0),
        max_peer_queue_bytes: limit,
        ..config()
    };
    let b = node(2, udp(64 << 20)).await;
    let a = node(1, udp(4096)).await;
    // No await between the sends: the socket task takes nothing meanwhile.
    let results: Vec<_> = (0..10)
        .map(|i| send(&a, &b.member, 100 + i, SendOptions::UDP, &[7u8; 1000]))
        .collect();
    let mut full = 0;
    for r in results {
        match within(T, r).await.unwrap() {
            Ok(_) => {}
            Err(SendError::QueueFull { queued, limit, .. }) => {
                assert_eq!(limit, 4096);
                assert!(queued > 3000 && queued <= 4096, "bytes: {queued}");
                full += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(full >= 5, "{full} refused");
    assert_eq!(a.handle.stats().queue_full, full);
    // ASYNCHRONOUS datagrams are exempt, as on TCP: the channel's queue bounds them.
    let results: Vec<_> = (0..10)
        .map(|i| {
            let opts = SendOptions::UDP | SendOptions::ASYNCHRONOUS;
            send(&a, &b.member, 200 + i, opts, &[7u8; 1000])
        })
        .collect();
    for r in results {
        assert_eq!(within(T, r).await.unwrap(), Ok(Delivered::Sent));
    }
    assert_eq!(a.handle.stats().queue_full, full, "none refused");
}

/// Datagrams still queued when the transport stops complete with `Stopped`: none is dropped
/// without an outcome.
#[tokio::test(flavor = "current_thread")]
async fn stop_fails_the_datagrams_still_queued() {
    let udp = || TransportConfig {
        udp_port: Some(0),
        ..config()
    };
    let b = node(2, udp()).await;
    let a = node(1, udp()).await;
    // No await between the sends and the stop: the socket task takes nothing meanwhile.
    let results: Vec<_> = (0..10)
        .map(|i| send(&a, &b.member, 100 + i, SendOptions::UDP, b"queued"))
        .collect();
    a.handle.stop();
    for r in results {
        assert_eq!(within(T, r).await.unwrap(), Err(SendError::Stopped));
    }
    assert_eq!(a.handle.stats().send_failures, 10);
}

#[tokio::test]
async fn stop_fails_queued_sends_and_refuses_new_ones() {
    let b = node(2, config()).await;
    let a = node(1, config()).await;
    a.handle.stop();
    let done = send(&a, &b.member, 1, SendOptions::USE_ACK, b"late");
    assert_eq!(within(T, done).await.unwrap(), Err(SendError::Stopped));
}

/// A burst larger than `max_peer_queue_bytes`, queued before the writer runs (a one-thread
/// runtime): plain frames beyond the limit fail with `QueueFull`; ASYNCHRONOUS frames are
/// bounded upstream (the channel's queue) and all arrive.
#[tokio::test(flavor = "current_thread")]
async fn asynchronous_frames_are_never_refused_by_the_peer_queue_limit() {
    let small = || TransportConfig {
        max_peer_queue_bytes: 4096,
        ..config()
    };
    let mut b = node(2, small()).await;
    let a = node(1, small()).await;
    let payload = [7u8; 1000];
    // No await between the sends: nothing is written until the burst is queued.
    let plain: Vec<_> = (1..=20)
        .map(|i| send(&a, &b.member, i, SendOptions::NONE, &payload))
        .collect();
    let mut refused = 0;
    for done in plain {
        if matches!(
            within(T, done).await.unwrap(),
            Err(SendError::QueueFull { .. })
        ) {
            refused += 1;
        }
    }
    assert!(refused > 0, "the limit applies to plain frames");
    for _ in 0..20 - refused {
        within(T, b.inbound.recv()).await.unwrap();
    }
    let asynchronous: Vec<_> = (100..200)
        .map(|i| send(&a, &b.member, i, SendOptions::ASYNCHRONOUS, &payload))
        .collect();
    for done in asynchronous {
        assert_eq!(within(T, done).await.unwrap(), Ok(Delivered::Sent));
    }
    for _ in 100..200 {
        within(T, b.inbound.recv()).await.unwrap();
    }
}

/// A hello refused because `max_connections` members are connected leaves the count right:
/// once the member leaves, the next one gets in (a refused hello once counted twice down, and
/// the count wrapped so that every later hello was refused).
#[tokio::test]
async fn a_hello_refused_at_max_connections_leaves_the_count_right() {
    let config = TransportConfig {
        max_connections: 1,
        ..super::support::config()
    };
    let mut b = node(2, config).await;
    let a = node(1, super::support::config()).await;
    let r = send(&a, &b.member, 1, SendOptions::USE_ACK, b"first")
        .await
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
    let _ = within(Duration::from_secs(5), b.inbound.recv()).await;
    // A second member while the first is connected: refused.
    let c = node(3, super::support::config()).await;
    let r = send(&c, &b.member, 1, SendOptions::USE_ACK, b"second")
        .await
        .unwrap();
    assert!(r.is_err(), "{r:?}");
    assert!(b.handle.stats().connections_rejected >= 1);
    // The first leaves; a third member gets in.
    a.handle.stop();
    c.handle.stop();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while b.handle.stats().connections_in > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            b.handle.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let d = node(4, super::support::config()).await;
    let r = send(&d, &b.member, 1, SendOptions::USE_ACK, b"third")
        .await
        .unwrap();
    assert!(
        r.is_ok(),
        "the count went wrong: {r:?} {:?}",
        b.handle.stats()
    );
}

/// `size` bytes that differ from frame to frame.
fn pattern(size: usize, msg_id: u64) -> Vec<u8> {
    let salt = msg_id.to_le_bytes()[0];
    (0..size).map(|n| n.to_le_bytes()[0] ^ salt).collect()
}

/// Frames the connection encodes (`send_data`): small ones into the write buffer, large ones
/// around their payload (unkeyed: written from the payload's own bytes; keyed: sealed),
/// interleaved with pre-encoded ones, arrive whole and in order, and each completes.
#[tokio::test]
async fn data_frames_encoded_by_the_connection_arrive_whole_and_in_order() {
    for keyed in [false, true] {
        let codec = if keyed { keyed_codec() } else { codec() };
        let mut b = node_with(2, config(), codec.clone()).await;
        let a = node_with(1, config(), codec).await;
        // Sizes either side of the vectored threshold (16 KiB), and the largest frames.
        let sizes = [
            0usize,
            10,
            1024,
            16 * 1024 - 1,
            16 * 1024,
            100_000,
            64,
            1 << 20,
            3,
        ];
        let mut dones = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let msg_id = u64::try_from(i).unwrap() + 1;
            let payload = pattern(size, msg_id);
            let options = SendOptions::USE_ACK;
            if i % 3 == 2 {
                // A pre-encoded one between them.
                dones.push(send(&a, &b.member, msg_id, options, &payload));
                continue;
            }
            let frame = cohort_wire::DataFrame {
                header: cohort_wire::DataHeader {
                    msg_id,
                    options,
                    sender: a.member.id,
                    extensions: vec![cohort_wire::Extension {
                        tag: 9,
                        value: bytes::Bytes::from_static(b"ext"),
                    }],
                    ..cohort_wire::DataHeader::default()
                },
                payload: bytes::Bytes::from(payload),
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            a.handle.send_data(
                &b.member,
                std::sync::Arc::new(frame),
                msg_id,
                options,
                cohort_transport::Completion::new(move |r| {
                    let _ = tx.send(r);
                }),
            );
            dones.push(rx);
        }
        for (i, &size) in sizes.iter().enumerate() {
            let got = within(T, b.inbound.recv()).await.unwrap();
            let msg_id = u64::try_from(i).unwrap() + 1;
            assert_eq!(got.frame.header.msg_id, msg_id, "keyed={keyed}: in order");
            let want = pattern(size, msg_id);
            assert!(
                got.frame.payload[..] == want[..],
                "keyed={keyed}: frame {i} whole"
            );
            if i % 3 != 2 {
                assert_eq!(got.frame.header.extensions.len(), 1);
            }
        }
        for done in dones {
            assert_eq!(within(T, done).await.unwrap(), Ok(Delivered::Acked));
        }
    }
}

/// The read loop sizes a fresh read buffer for the next frame after a large one (so a stream
/// of large frames is read in place, not copied whole once each prefix is parsed): frames of
/// sizes either side of a small read buffer, in runs and mixed (large after large of the same
/// size, a larger one, one beyond the hint's cap, small ones between), arrive whole and in
/// order.
#[tokio::test]
async fn frames_either_side_of_the_read_buffer_arrive_whole_in_any_order_of_sizes() {
    let rx = 4096;
    let cfg = TransportConfig {
        rx_buf_size: rx,
        ..config()
    };
    let mut b = node_with(2, cfg.clone(), codec()).await;
    let a = node_with(1, cfg, codec()).await;
    let kinds = [
        10,
        rx - 200,
        rx,
        rx + 100,
        2 * rx,
        2 * rx,
        3 * rx + 7,
        4 * rx + 1000,
        20 * rx,
    ];
    // A fixed walk through the kinds with runs of the same size.
    let mut sizes = Vec::new();
    let mut x: u64 = 7;
    while sizes.len() < 300 {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let kind = kinds[usize::try_from(x >> 33).unwrap() % kinds.len()];
        let run = 1 + usize::try_from((x >> 20) % 4).unwrap();
        sizes.extend(std::iter::repeat_n(kind, run));
    }
    let mut dones = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let msg_id = u64::try_from(i).unwrap() + 1;
        let options = if i % 2 == 0 {
            SendOptions::USE_ACK
        } else {
            SendOptions::ASYNCHRONOUS
        };
        dones.push(send(&a, &b.member, msg_id, options, &pattern(size, msg_id)));
    }
    for (i, &size) in sizes.iter().enumerate() {
        let got = within(T, b.inbound.recv()).await.unwrap();
        let msg_id = u64::try_from(i).unwrap() + 1;
        assert_eq!(got.frame.header.msg_id, msg_id, "in order");
        assert!(
            got.frame.payload[..] == pattern(size, msg_id)[..],
            "frame {i} ({size} bytes) whole"
        );
    }
    for (i, done) in dones.into_iter().enumerate() {
        let want = if i % 2 == 0 {
            Delivered::Acked
        } else {
            Delivered::Sent
        };
        assert_eq!(within(T, done).await.unwrap(), Ok(want));
    }
}

/// A peer whose listener is gone (a killed process): every connect is refused, the send fails,
/// and the transport reports it as a peer event on the outbound side (strong evidence for a
/// failure detector), once per connect round, not per send.
#[tokio::test]
async fn a_refused_connect_is_reported_as_a_peer_event() {
    use cohort_transport::{Direction, Transport};
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let gone = cohort_wire::Member::new(
        cohort_wire::MemberId::from_bytes([9; 16]),
        std::net::Ipv4Addr::LOCALHOST.into(),
        port,
    );
    // A backoff long enough that the second send surely falls in it, however slow the runner.
    let cfg = TransportConfig {
        reconnect_backoff: Duration::from_secs(30),
        max_reconnect_backoff: Duration::from_secs(30),
        ..config()
    };
    let mut bound = Transport::bind(cfg, cohort_net::TokioNet, true)
        .await
        .unwrap();
    let mut events = bound.peer_events();
    let addr = bound.local_addr().unwrap();
    let me = cohort_wire::Member::new(
        cohort_wire::MemberId::from_bytes([1; 16]),
        addr.ip(),
        addr.port(),
    );
    let (handle, _inbound) = bound.start(me.clone(), codec());
    let a = Node {
        member: me,
        handle,
        inbound: _inbound,
    };
    let done = send(&a, &gone, 1, SendOptions::USE_ACK, b"hello");
    let r = within(T, done).await.unwrap();
    assert!(matches!(r, Err(SendError::Connect { .. })), "{r:?}");
    let ev = within(T, events.recv()).await.unwrap();
    assert_eq!(ev.addr, gone.data_addr());
    assert_eq!(ev.direction, Direction::Outbound);
    assert!(ev.reason.starts_with("connect refused"), "{}", ev.reason);
    // A send during the backoff that follows fails at once, without a connect round (so
    // without another event).
    let r = within(T, send(&a, &gone, 2, SendOptions::USE_ACK, b"again"))
        .await
        .unwrap();
    assert!(matches!(r, Err(SendError::PeerDown { .. })), "{r:?}");
}

/// A completion is the caller's code, run on a transport task: one that panics is caught
/// there, and the connection, the completions run with it and the sends after it go on as if
/// nothing happened (over TCP, ACKed and not, and over UDP).
#[tokio::test]
async fn a_completion_that_panics_harms_no_other_send() {
    let udp = || TransportConfig {
        udp_port: Some(0),
        ..config()
    };
    let mut b = node(2, udp()).await;
    let a = node(1, udp()).await;
    for (round, opts) in [
        SendOptions::USE_ACK,
        SendOptions::ASYNCHRONOUS,
        SendOptions::UDP | SendOptions::USE_ACK,
    ]
    .into_iter()
    .enumerate()
    {
        let base = 100 * round as u64;
        let frame = |id| frame_with(a.handle.codec(), &a.member, id, opts, b"boom");
        a.handle.send(
            &b.member,
            frame(base),
            base,
            opts,
            cohort_transport::Completion::new(|_| panic!("a caller's bug")),
        );
        let rest: Vec<_> = (1..=5)
            .map(|i| send(&a, &b.member, base + i, opts, b"ok"))
            .collect();
        for r in rest {
            let r = within(T, r).await.unwrap();
            assert!(r.is_ok(), "round {round}: {r:?}");
        }
        for _ in 0..6 {
            within(T, b.inbound.recv()).await.unwrap();
        }
    }
}

/// A USE_ACK datagram is acknowledged on receipt, which is once it is queued for the layer
/// above: one that finds the queue full is dropped, counted, and answered with FAIL_ACK, never
/// acknowledged as received.
#[tokio::test(flavor = "current_thread")]
async fn a_datagram_dropped_on_a_full_queue_is_not_acknowledged() {
    let b = node(
        2,
        TransportConfig {
            udp_port: Some(0),
            inbound_queue: 1,
            ..config()
        },
    )
    .await;
    let a = node(
        1,
        TransportConfig {
            udp_port: Some(0),
            ..config()
        },
    )
    .await;
    let opts = SendOptions::UDP | SendOptions::USE_ACK;
    // Nothing reads `b.inbound`: the first datagram fills its queue.
    let results: Vec<_> = (1..=3)
        .map(|i| send(&a, &b.member, i, opts, b"x"))
        .collect();
    let mut outcomes = Vec::new();
    for r in results {
        outcomes.push(within(T, r).await.unwrap());
    }
    assert_eq!(outcomes[0], Ok(Delivered::Acked));
    for o in &outcomes[1..] {
        assert!(
            matches!(o, Err(SendError::FailAck { reason, .. }) if reason.contains("queue full")),
            "{o:?}"
        );
    }
    assert_eq!(b.handle.stats().datagrams_dropped, 2);
    drop(b.inbound);
}
