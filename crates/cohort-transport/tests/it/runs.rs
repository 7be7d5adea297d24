//! `send_data_many`: runs of data frames to one peer, handed over as one queue entry.

use std::time::Duration;

use cohort_transport::{DataSend, Delivered, SendError, TransportConfig};
use cohort_wire::{DataFrame, DataHeader, Member, SendOptions};
use tokio::sync::oneshot;

use crate::support::*;

const T: Duration = Duration::from_secs(10);

type Done = oneshot::Receiver<Result<Delivered, SendError>>;

/// A frame of `size` bytes whose payload starts with its id.
fn data(from: &Member, msg_id: u64, options: SendOptions, size: usize) -> (DataSend, Done) {
    let mut payload = vec![0u8; size.max(8)];
    payload[..8].copy_from_slice(&msg_id.to_be_bytes());
    let frame = DataFrame {
        header: DataHeader {
            msg_id,
            options,
            sender: from.id,
            ..DataHeader::default()
        },
        payload: payload.into(),
    };
    let (tx, rx) = oneshot::channel();
    let send = DataSend {
        frame: frame.into(),
        msg_id,
        options,
        done: cohort_transport::Completion::new(move |r| {
            let _ = tx.send(r);
        }),
    };
    (send, rx)
}

fn run(
    from: &Member,
    ids: std::ops::Range<u64>,
    options: SendOptions,
) -> (Vec<DataSend>, Vec<Done>) {
    ids.map(|id| data(from, id, options, 100)).unzip()
}

/// Runs far longer than the in-flight table (the rest waits in the lane's backlog until ACKs
/// make room), single sends and pre-encoded frames between them: every frame arrives once,
/// in send order, and is ACKed.
#[tokio::test]
async fn runs_longer_than_the_in_flight_table_arrive_in_order_and_are_acked() {
    let cfg = TransportConfig {
        max_in_flight: 8,
        ..config()
    };
    let mut b = node(2, config()).await;
    let a = node(1, cfg).await;
    let ack = SendOptions::USE_ACK;
    let mut dones = Vec::new();
    let (frames, d) = run(&a.member, 1..51, ack);
    a.handle.send_data_many(&b.member, frames);
    dones.extend(d);
    dones.push(send(&a, &b.member, 51, ack, &51u64.to_be_bytes()));
    let (frames, d) = run(&a.member, 52..60, SendOptions::NONE);
    a.handle.send_data_many(&b.member, frames);
    dones.extend(d);
    let (one, d) = data(&a.member, 60, ack, 20_000);
    a.handle.send_data_many(&b.member, vec![one]);
    dones.push(d);
    let (frames, d) = run(&a.member, 61..101, ack);
    a.handle.send_data_many(&b.member, frames);
    dones.extend(d);
    for want in 1..101u64 {
        let got = within(T, b.inbound.recv()).await.unwrap();
        assert_eq!(got.frame.header.msg_id, want, "in send order");
        assert_eq!(got.frame.payload[..8], want.to_be_bytes());
    }
    for (i, done) in dones.into_iter().enumerate() {
        let r = within(T, done).await.unwrap();
        let unacked = (52..60).contains(&(i + 1));
        let want = if unacked {
            Delivered::Sent
        } else {
            Delivered::Acked
        };
        assert_eq!(r, Ok(want), "frame {}", i + 1);
    }
    assert_eq!(a.handle.stats().send_failures, 0);
    let addr = std::net::SocketAddr::new(b.member.addr, b.member.port);
    let peer = a.handle.peer(addr).expect("a peer");
    assert_eq!(peer.queued_bytes, 0, "every queued byte counted out");
}

/// The peer's byte bound holds inside a run: frames admitted while the queue has room go,
/// the rest fail one by one with `QueueFull` (ASYNCHRONOUS ones are bounded upstream and all
/// go); a UDP frame in a run takes the datagram path.
#[tokio::test(flavor = "current_thread")]
async fn a_run_is_bounded_frame_by_frame_and_udp_frames_leave_it() {
    let cfg = TransportConfig {
        max_peer_queue_bytes: 2000,
        udp_port: Some(0),
        ..config()
    };
    let udp = TransportConfig {
        udp_port: Some(0),
        ..config()
    };
    let mut b = node(2, udp).await;
    let a = node(1, cfg).await;
    // 1 KiB frames: about one fits beside another in 2000 bytes.
    let (frames, dones): (Vec<_>, Vec<_>) = (1..=6)
        .map(|id| data(&a.member, id, SendOptions::USE_ACK, 1024))
        .unzip();
    a.handle.send_data_many(&b.member, frames);
    let mut ok = Vec::new();
    for (i, done) in dones.into_iter().enumerate() {
        match within(T, done).await.unwrap() {
            Ok(Delivered::Acked) => ok.push(i as u64 + 1),
            Err(SendError::QueueFull { limit, .. }) => assert_eq!(limit, 2000),
            other => panic!("frame {}: {other:?}", i + 1),
        }
    }
    assert!(!ok.is_empty() && ok.len() < 6, "admitted: {ok:?}");
    assert_eq!(a.handle.stats().queue_full, 6 - ok.len() as u64);
    for want in &ok {
        let got = within(T, b.inbound.recv()).await.unwrap();
        assert_eq!(got.frame.header.msg_id, *want);
    }
    // ASYNCHRONOUS: all of them, and a UDP frame among them arrives too.
    let asy = SendOptions::ASYNCHRONOUS;
    let mut items = Vec::new();
    let mut dones = Vec::new();
    for id in 11..=16 {
        let options = if id == 13 {
            asy | SendOptions::UDP
        } else {
            asy
        };
        let (s, d) = data(&a.member, id, options, if id == 13 { 100 } else { 1024 });
        items.push(s);
        dones.push(d);
    }
    a.handle.send_data_many(&b.member, items);
    for done in dones {
        let r = within(T, done).await.unwrap();
        assert!(r.is_ok(), "{r:?}");
    }
    let mut got: Vec<u64> = Vec::new();
    for _ in 11..=16 {
        got.push(
            within(T, b.inbound.recv())
                .await
                .unwrap()
                .frame
                .header
                .msg_id,
        );
    }
    let tcp: Vec<u64> = got.iter().copied().filter(|id| *id != 13).collect();
    assert_eq!(tcp, vec![11, 12, 14, 15, 16], "TCP frames in order");
    assert!(got.contains(&13), "the UDP frame arrived: {got:?}");
}

/// Once stopped, every frame of a run fails with `Stopped`.
#[tokio::test]
async fn a_run_after_stop_fails_whole() {
    let b = node(2, config()).await;
    let a = node(1, config()).await;
    a.handle.stop();
    let (frames, dones) = run(&a.member, 1..5, SendOptions::USE_ACK);
    a.handle.send_data_many(&b.member, frames);
    for done in dones {
        assert_eq!(within(T, done).await.unwrap(), Err(SendError::Stopped));
    }
}

/// Node `a` (in-flight table of `max_in_flight`) sends `b` the run `ids` with synchronized
/// ACKs; `b` takes the first `max_in_flight` frames, checks their order, and holds their ACK
/// tokens.
async fn held_run(
    max_in_flight: usize,
    ids: std::ops::Range<u64>,
) -> (
    Node,
    Node,
    Vec<Done>,
    std::collections::VecDeque<cohort_transport::AckToken>,
) {
    let cfg = TransportConfig {
        max_in_flight,
        ..config()
    };
    let mut b = node(2, config()).await;
    let a = node(1, cfg).await;
    let sync = SendOptions::USE_ACK | SendOptions::SYNCHRONIZED_ACK;
    let first = ids.start;
    let (frames, dones) = run(&a.member, ids, sync);
    a.handle.send_data_many(&b.member, frames);
    let mut held = std::collections::VecDeque::new();
    for want in first..first + max_in_flight as u64 {
        let got = within(T, b.inbound.recv()).await.unwrap();
        assert_eq!(got.frame.header.msg_id, want);
        held.push_back(got.ack.expect("a token"));
    }
    (a, b, dones, held)
}

/// A run never puts more frames awaiting an ACK on the connection than the in-flight table
/// holds: with `max_in_flight` 4 and synchronized ACKs the receiver holds back, only four of
/// a run of ten arrive; each ACK lets one more through.
#[tokio::test]
async fn a_run_waits_for_room_in_the_in_flight_table() {
    let (_a, mut b, dones, mut held) = held_run(4, 1..11).await;
    // The fifth waits for room (nothing else could hold it back on loopback).
    let early = tokio::time::timeout(Duration::from_millis(300), b.inbound.recv()).await;
    assert!(early.is_err(), "a fifth frame came before any ACK");
    for want in 5..=10u64 {
        held.pop_front().unwrap().ack();
        let got = within(T, b.inbound.recv()).await.unwrap();
        assert_eq!(got.frame.header.msg_id, want);
        held.push_back(got.ack.expect("a token"));
    }
    for token in held {
        token.ack();
    }
    for done in dones {
        assert_eq!(within(T, done).await.unwrap(), Ok(Delivered::Acked));
    }
}

/// A transport stopped while a run waits in the lane's backlog (the in-flight table is full,
/// the receiver holds its synchronized ACKs): the frames in flight fail as lost with the
/// connection, the ones still in the backlog fail with `Stopped`, each once.
#[tokio::test]
async fn stopping_fails_a_waiting_backlog_frame_by_frame() {
    let (a, _b, dones, held) = held_run(2, 1..8).await;
    a.handle.stop();
    for (i, done) in dones.into_iter().enumerate() {
        match within(T, done).await.unwrap() {
            Err(SendError::ConnectionLost { .. }) if i < 2 => {}
            Err(SendError::Stopped) if i >= 2 => {}
            other => panic!("frame {}: {other:?}", i + 1),
        }
    }
    drop(held);
}
