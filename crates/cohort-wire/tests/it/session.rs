//! Connection binding: frames sealed for one keyed connection are refused on any other, and
//! out of their place on their own.

use std::net::{IpAddr, Ipv4Addr};

use bytes::{Bytes, BytesMut};
use cohort_wire::{
    AckFrame, ClusterKey, CohortCodec, DataFrame, DataHeader, DecodeError, Frame, FrameCodec,
    KeyRing, Member, MemberId, Opener, Role, Sealer, SendOptions, Session, WireLimits,
};

fn key(b: &[u8; 20]) -> ClusterKey {
    ClusterKey::new(*b).unwrap()
}

fn codec(keys: &[ClusterKey]) -> CohortCodec {
    CohortCodec::new(
        WireLimits::default(),
        Some(KeyRing::new(keys.to_vec()).unwrap()),
    )
    .unwrap()
}

fn data(id: u64) -> Frame {
    Frame::Data(DataFrame {
        header: DataHeader {
            msg_id: id,
            options: SendOptions::USE_ACK,
            sender: MemberId::from_bytes([1; 16]),
            ..DataHeader::default()
        },
        payload: Bytes::from(vec![u8::try_from(id % 256).unwrap(); 100]),
    })
}

/// A connected pair of sessions: (connector's sealer, acceptor's opener, acceptor's sealer,
/// connector's opener).
fn pair(
    c: &CohortCodec,
    acceptor_key: &ClusterKey,
    challenge: u8,
) -> (Sealer, Opener, Sealer, Opener) {
    let (ch, n) = ([challenge; 16], [challenge.wrapping_add(100); 16]);
    let (c_seal, c_open) = c.connector_session(&ch, &n).unwrap().split();
    let (a_seal, a_open) = Session::new(acceptor_key, Role::Acceptor, &ch, &n).split();
    (c_seal, a_open, a_seal, c_open)
}

/// Encoded once with the cluster key, then sealed per connection, as a lane does.
fn sealed(c: &CohortCodec, frame: &Frame, sealer: &mut Sealer) -> BytesMut {
    let mut once = BytesMut::new();
    c.encode_frame(frame, &mut once).unwrap();
    let mut out = BytesMut::new();
    c.reseal(&once, sealer, &mut out).unwrap();
    out
}

#[test]
fn sealed_frames_flow_both_ways_in_order() {
    let k = key(b"a cluster secret!!!!");
    let c = codec(std::slice::from_ref(&k));
    let (mut c_seal, mut a_open, mut a_seal, mut c_open) = pair(&c, &k, 1);
    let mut wire = BytesMut::new();
    for id in 1..=5 {
        wire.extend_from_slice(&sealed(&c, &data(id), &mut c_seal));
    }
    for id in 1..=5 {
        assert_eq!(
            c.decode_frame_opened(&mut wire, &mut a_open).unwrap(),
            Some(data(id))
        );
    }
    assert_eq!(a_open.opened(), 5);
    // The acceptor's ACK frames, sealed directly, open on the connector's side.
    let ack = Frame::Ack(AckFrame::from_ids(vec![1, 2, 3]));
    let mut back = BytesMut::new();
    c.encode_frame_sealed(&ack, &mut a_seal, &mut back).unwrap();
    assert_eq!(
        c.decode_frame_opened(&mut back, &mut c_open).unwrap(),
        Some(ack)
    );
}

#[test]
fn a_frame_captured_on_one_connection_is_refused_on_another() {
    let k = key(b"a cluster secret!!!!");
    let c = codec(std::slice::from_ref(&k));
    let (mut c_seal, ..) = pair(&c, &k, 1);
    let (_, mut other_open, ..) = pair(&c, &k, 2);
    let mut captured = sealed(&c, &data(1), &mut c_seal);
    assert_eq!(
        c.decode_frame_opened(&mut captured, &mut other_open),
        Err(DecodeError::BadAuth)
    );
    // Nor does the plain cluster-key check accept a sealed frame.
    let mut captured = sealed(&c, &data(1), &mut pair(&c, &k, 3).0);
    assert_eq!(c.decode_frame(&mut captured), Err(DecodeError::BadAuth));
}

#[test]
fn replayed_reordered_or_reflected_frames_are_refused() {
    let k = key(b"a cluster secret!!!!");
    let c = codec(std::slice::from_ref(&k));
    let (mut c_seal, mut a_open, mut a_seal, mut c_open) = pair(&c, &k, 1);
    let first = sealed(&c, &data(1), &mut c_seal);
    let second = sealed(&c, &data(2), &mut c_seal);
    // Reordered: the second frame where the first is expected.
    assert_eq!(
        c.decode_frame_opened(&mut second.clone(), &mut a_open),
        Err(DecodeError::BadAuth)
    );
    // In order it opens; the same frame again (a replay on its own connection) does not.
    assert!(
        c.decode_frame_opened(&mut first.clone(), &mut a_open)
            .unwrap()
            .is_some()
    );
    assert_eq!(
        c.decode_frame_opened(&mut first.clone(), &mut a_open),
        Err(DecodeError::BadAuth)
    );
    let mut second = second;
    assert!(
        c.decode_frame_opened(&mut second, &mut a_open)
            .unwrap()
            .is_some()
    );
    // Reflected: the connector's own frame sent back to it.
    let _ = &mut a_seal;
    let mut first = first;
    assert_eq!(
        c.decode_frame_opened(&mut first, &mut c_open),
        Err(DecodeError::BadAuth)
    );
}

#[test]
fn rotation_the_acceptor_binds_to_the_key_that_verified_the_hello() {
    let (old, new) = (key(b"the old secret!!!!!!"), key(b"the new secret!!!!!!"));
    let connector = codec(std::slice::from_ref(&old));
    let acceptor = codec(&[new, old]);
    let mut member = Member::new(
        MemberId::from_bytes([1; 16]),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        1,
    );
    member.cluster = "c".into();
    let hello = Frame::Hello(Box::new(cohort_wire::Hello {
        member,
        nonce: Some([8; 16]),
    }));
    let mut buf = BytesMut::new();
    connector.encode_frame(&hello, &mut buf).unwrap();
    let (got, verified_by) = acceptor.decode_frame_verified(&mut buf).unwrap().unwrap();
    assert_eq!(got, hello);
    let verified_by = verified_by.unwrap();
    let (mut c_seal, _) = connector
        .connector_session(&[7; 16], &[8; 16])
        .unwrap()
        .split();
    let (_, mut a_open) = Session::new(&verified_by, Role::Acceptor, &[7; 16], &[8; 16]).split();
    let mut wire = sealed(&connector, &data(9), &mut c_seal);
    assert_eq!(
        acceptor
            .decode_frame_opened(&mut wire, &mut a_open)
            .unwrap(),
        Some(data(9))
    );
}

#[test]
fn only_one_whole_signed_frame_can_be_resealed() {
    let k = key(b"a cluster secret!!!!");
    let c = codec(std::slice::from_ref(&k));
    let (mut s, ..) = pair(&c, &k, 1);
    let mut two = BytesMut::new();
    c.encode_frame(&data(1), &mut two).unwrap();
    c.encode_frame(&data(2), &mut two).unwrap();
    let mut out = BytesMut::new();
    assert!(c.reseal(&two, &mut s, &mut out).is_err());
    assert!(c.reseal(&two[..10], &mut s, &mut out).is_err());
    let plain = CohortCodec::new(WireLimits::default(), None).unwrap();
    let mut unsigned = BytesMut::new();
    plain.encode_frame(&data(1), &mut unsigned).unwrap();
    assert!(c.reseal(&unsigned, &mut s, &mut out).is_err());
    assert!(out.is_empty());
    assert_eq!(s.sealed(), 0);
}
