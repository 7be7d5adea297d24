//! Tests of the inbound core (virtual time from an arbitrary `Instant`).

use std::net::{IpAddr, Ipv4Addr};

use bytes::BytesMut;
use cohort_wire::{
    CohortCodec, DataFrame, DataHeader, Frame, FrameCodec, Hello, VersionRange, WireLimits,
};
use proptest::prelude::*;

use super::*;

const T: Timeouts = Timeouts {
    hello: Duration::from_secs(5),
    frame: Duration::from_secs(10),
    idle: Duration::from_secs(60),
};

fn member(n: u8) -> Member {
    let mut m = Member::new(
        MemberId::from_bytes([n; 16]),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        4000 + u16::from(n),
    );
    m.cluster = "c".into();
    m
}

fn prefix(frame: &Frame) -> FramePrefix {
    let codec = CohortCodec::new(WireLimits::default(), None).unwrap();
    let mut out = BytesMut::new();
    codec.encode_frame(frame, &mut out).unwrap();
    codec.peek_frame_prefix(&out).unwrap().unwrap()
}

fn hello_frame(n: u8) -> Frame {
    Frame::Hello(Box::new(Hello {
        member: member(n),
        nonce: None,
    }))
}

fn data_frame(n: u8) -> Frame {
    Frame::Data(DataFrame {
        header: DataHeader {
            msg_id: 1,
            sender: MemberId::from_bytes([n; 16]),
            ..DataHeader::default()
        },
        payload: bytes::Bytes::from_static(b"x"),
    })
}

#[test]
fn unkeyed_hello_then_data_from_its_member_only() {
    let t0 = Instant::now();
    let mut c = InboundConn::new(t0, false, T);
    assert!(
        c.check_prefix(&prefix(&data_frame(2))).is_err(),
        "data first"
    );
    assert!(c.check_sender(MemberId::from_bytes([2; 16])).is_err());
    c.check_prefix(&prefix(&hello_frame(2))).unwrap();
    c.handle_hello(&member(1), member(2), false).unwrap();
    assert_eq!(c.stage(), Stage::Bound);
    c.check_prefix(&prefix(&data_frame(2))).unwrap();
    c.check_sender(MemberId::from_bytes([2; 16])).unwrap();
    assert!(
        c.check_sender(MemberId::from_bytes([3; 16])).is_err(),
        "spoofed sender"
    );
    assert!(
        c.check_prefix(&prefix(&hello_frame(2))).is_err(),
        "second hello"
    );
    assert!(c.handle_hello(&member(1), member(2), false).is_err());
}

#[test]
fn keyed_binds_on_the_first_sealed_frame_and_needs_a_nonce() {
    let t0 = Instant::now();
    let mut c = InboundConn::new(t0, true, T);
    assert_eq!(
        c.check_prefix(&prefix(&hello_frame(2))),
        Err(Refusal::MissingAuth),
        "an unsigned hello in a keyed cluster"
    );
    assert!(c.handle_hello(&member(1), member(2), false).is_err());
    let mut c = InboundConn::new(t0, true, T);
    c.handle_hello(&member(1), member(2), true).unwrap();
    assert_eq!(c.stage(), Stage::AwaitSealed);
    assert_eq!(c.poll_timeout(), (t0 + T.hello, Deadline::Hello));
    assert!(c.frame_opened());
    assert!(!c.frame_opened());
    assert_eq!(c.stage(), Stage::Bound);
}

#[test]
fn hellos_of_other_clusters_and_versions_are_refused() {
    let t0 = Instant::now();
    let local = member(1);
    let mut other = member(2);
    other.cluster = "d".into();
    assert!(
        InboundConn::new(t0, false, T)
            .handle_hello(&local, other, false)
            .is_err()
    );
    let mut future = member(2);
    future.versions = VersionRange { min: 7, max: 9 };
    let r = InboundConn::new(t0, false, T).handle_hello(&local, future, false);
    assert!(matches!(r, Err(Refusal::Violation(t)) if t.contains("7..=9")));
    let mut strict = member(1);
    strict.same_app_version = true;
    strict.app_version = "2".into();
    let mut older = member(2);
    older.app_version = "1".into();
    assert!(
        InboundConn::new(t0, false, T)
            .handle_hello(&strict, older.clone(), false)
            .is_err()
    );
    older.app_version = "2".into();
    InboundConn::new(t0, false, T)
        .handle_hello(&strict, older, false)
        .unwrap();
}

#[test]
fn deadlines_follow_the_stage_and_the_buffer() {
    let t0 = Instant::now();
    let mut c = InboundConn::new(t0, false, T);
    assert_eq!(c.poll_timeout(), (t0 + T.hello, Deadline::Hello));
    assert_eq!(
        c.room(10, 100, 1000),
        90,
        "a hello's worth before the hello"
    );
    c.handle_hello(&member(1), member(2), false).unwrap();
    assert_eq!(c.room(10, 100, 1000), 990);
    let t1 = t0 + Duration::from_secs(1);
    c.on_read(t1);
    assert_eq!(c.poll_timeout(), (t1 + T.idle, Deadline::Idle));
    // Half a frame buffered: the frame timer runs from then, and restarts on progress.
    c.on_decoded(t1, 7, false);
    assert_eq!(c.poll_timeout(), (t1 + T.frame, Deadline::Frame));
    let t2 = t1 + Duration::from_secs(3);
    c.on_decoded(t2, 7, false);
    assert_eq!(
        c.poll_timeout(),
        (t1 + T.frame, Deadline::Frame),
        "no progress"
    );
    c.on_decoded(t2, 3, true);
    assert_eq!(c.poll_timeout(), (t2 + T.frame, Deadline::Frame));
    c.on_decoded(t2, 0, true);
    assert_eq!(c.poll_timeout(), (t1 + T.idle, Deadline::Idle));
}

#[derive(Clone, Debug)]
enum Step {
    Prefix(u8),
    Hello(u8, bool),
    Data(u8),
    Opened,
    Decoded(usize, bool),
    Advance(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..6).prop_map(Step::Prefix),
        (1u8..4, any::<bool>()).prop_map(|(n, k)| Step::Hello(n, k)),
        (1u8..4).prop_map(Step::Data),
        Just(Step::Opened),
        (0usize..100, any::<bool>()).prop_map(|(b, p)| Step::Decoded(b, p)),
        (0u64..20_000).prop_map(Step::Advance),
    ]
}

proptest! {
    /// Whatever a peer sends in whatever order: no data frame is accepted before a hello
    /// (and, keyed, before the connection is bound), none from another sender than the
    /// hello's, at most one hello is ever accepted, and the deadline never lies beyond
    /// the hello timeout until the connection is bound.
    #[test]
    fn no_data_before_an_authenticated_hello(keyed in any::<bool>(), steps in proptest::collection::vec(step(), 0..60)) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut c = InboundConn::new(t0, keyed, T);
        let local = member(9);
        let mut hellos = 0;
        for s in steps {
            match s {
                Step::Prefix(kind) => {
                    let f = match kind { 0 => hello_frame(2), _ => data_frame(2) };
                    let ok = c.check_prefix(&prefix(&f)).is_ok();
                    if c.hello().is_none() && kind != 0 { prop_assert!(!ok); }
                }
                Step::Hello(n, nonce) => {
                    if c.handle_hello(&local, member(n), nonce).is_ok() {
                        hellos += 1;
                        prop_assert!(!keyed || nonce);
                    }
                }
                Step::Data(n) => {
                    let accepted = c.stage() == Stage::Bound
                        && c.check_sender(MemberId::from_bytes([n; 16])).is_ok();
                    if accepted {
                        prop_assert_eq!(c.hello().map(|h| h.id), Some(MemberId::from_bytes([n; 16])));
                    }
                    if c.hello().is_none() {
                        prop_assert!(c.check_sender(MemberId::from_bytes([n; 16])).is_err());
                    }
                }
                Step::Opened => { let _ = c.frame_opened(); }
                Step::Decoded(b, p) => c.on_decoded(now, b, p),
                Step::Advance(ms) => { now += Duration::from_millis(ms); c.on_read(now); }
            }
            prop_assert!(hellos <= 1);
            if c.stage() != Stage::Bound {
                prop_assert_eq!(c.poll_timeout(), (t0 + T.hello, Deadline::Hello));
            }
            if keyed && c.stage() == Stage::Bound {
                prop_assert!(c.hello().is_some());
            }
        }
    }
}
