use std::net::{Ipv4Addr, SocketAddr};

use bytes::{Bytes, BytesMut};
use cohort_net::TokioNet;
use cohort_transport::{
    Delivered, Received, SendError, Transport, TransportConfig, TransportHandle,
};
use cohort_wire::{
    ClusterKey, CohortCodec, DataFrame, DataHeader, Frame, FrameCodec, KeyRing, Member, MemberId,
    SendOptions, WireLimits,
};
use tokio::sync::{mpsc, oneshot};

pub(crate) fn config() -> TransportConfig {
    TransportConfig {
        port: 0,
        ..TransportConfig::default()
    }
}

pub(crate) fn codec() -> CohortCodec {
    CohortCodec::new(WireLimits::default(), None).unwrap()
}

pub(crate) struct Node {
    pub(crate) member: Member,
    pub(crate) handle: TransportHandle<TokioNet>,
    pub(crate) inbound: mpsc::Receiver<Received>,
}

pub(crate) async fn node(id: u8, config: TransportConfig) -> Node {
    node_with(id, config, codec()).await
}

pub(crate) fn keyed_codec() -> CohortCodec {
    let ring = KeyRing::new(vec![ClusterKey::new(vec![7u8; 32]).unwrap()]).unwrap();
    CohortCodec::new(WireLimits::default(), Some(ring)).unwrap()
}

pub(crate) async fn node_with(id: u8, config: TransportConfig, codec: CohortCodec) -> Node {
    let bound = Transport::bind(config, TokioNet, true).await.unwrap();
    let addr = bound.local_addr().unwrap();
    let mut member = Member::new(MemberId::from_bytes([id; 16]), addr.ip(), addr.port());
    member.udp_port = bound.udp_port();
    let (handle, inbound) = bound.start(member.clone(), codec);
    Node {
        member,
        handle,
        inbound,
    }
}

/// An encoded hello frame from `who` (what a hand-driven peer writes first).
pub(crate) fn hello_from(who: &Member) -> BytesMut {
    let mut out = BytesMut::new();
    codec()
        .encode_frame(
            &Frame::Hello(Box::new(cohort_wire::Hello::new(who.clone()))),
            &mut out,
        )
        .unwrap();
    out
}

pub(crate) fn frame_with(
    codec: &CohortCodec,
    from: &Member,
    msg_id: u64,
    options: SendOptions,
    payload: &[u8],
) -> Bytes {
    let frame = Frame::Data(DataFrame {
        header: DataHeader {
            msg_id,
            options,
            sender: from.id,
            ..DataHeader::default()
        },
        payload: Bytes::copy_from_slice(payload),
    });
    let mut out = BytesMut::new();
    codec.encode_frame(&frame, &mut out).unwrap();
    out.freeze()
}

pub(crate) fn send(
    from: &Node,
    to: &Member,
    msg_id: u64,
    options: SendOptions,
    payload: &[u8],
) -> oneshot::Receiver<Result<Delivered, SendError>> {
    let (tx, rx) = oneshot::channel();
    from.handle.send(
        to,
        frame_with(from.handle.codec(), &from.member, msg_id, options, payload),
        msg_id,
        options,
        cohort_transport::Completion::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx
}

pub(crate) use cohort_test_support::within;

#[allow(dead_code)]
pub(crate) fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}
