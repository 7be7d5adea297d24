//! Property tests: every message round-trips, streams split anywhere decode the same, and
//! arbitrary or mutated bytes give `Ok` or an error, never a panic.

use std::net::IpAddr;

use bytes::{Bytes, BytesMut};
use cohort_wire::*;
use proptest::prelude::*;

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[a-zA-Z0-9 _.é-]{{0,{max}}}"))
        .unwrap()
        .prop_filter("byte length", move |s| s.len() <= max)
}

fn member_id() -> impl Strategy<Value = MemberId> {
    any::<[u8; 16]>().prop_map(MemberId::from_bytes)
}

prop_compose! {
    fn member()(
        id in member_id(),
        addr in any::<IpAddr>(),
        port in 1u16..,
        udp_port in proptest::option::of(1u16..),
        cluster in text(40),
        domain in bytes(MAX_DOMAIN_LEN),
        name in text(MAX_NAME_LEN),
        host in text(64),
        start_time_ms in any::<u64>(),
        (min, max) in (0u8..=255, 0u8..=255).prop_map(|(a, b)| (a.min(b), a.max(b))),
        payload in bytes(512),
        app_version in text(32),
        same_app_version in any::<bool>(),
    ) -> Member {
        Member {
            id, addr, port, udp_port, cluster, domain, name, host, start_time_ms,
            versions: VersionRange { min, max }, app_version, same_app_version, payload,
        }
    }
}

fn data_frame() -> impl Strategy<Value = Frame> {
    let ext = (any::<u32>(), bytes(16)).prop_map(|(tag, value)| Extension { tag, value });
    (
        any::<u64>(),
        any::<u32>(),
        member_id(),
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(ext, 0..=MAX_EXTENSIONS),
        bytes(4096),
    )
        .prop_map(
            |(msg_id, opts, sender, timestamp_ms, seq, extensions, payload)| {
                Frame::Data(DataFrame {
                    header: DataHeader {
                        msg_id,
                        options: SendOptions::from_bits(opts),
                        sender,
                        timestamp_ms,
                        seq,
                        extensions,
                    },
                    payload,
                })
            },
        )
}

fn ack_frame() -> impl Strategy<Value = Frame> {
    let range = (any::<u64>(), any::<u64>()).prop_map(|(a, b)| AckRange {
        first: a.min(b),
        last: a.max(b),
    });
    let fail = (any::<u64>(), text(MAX_FAIL_REASON_LEN))
        .prop_map(|(msg_id, reason)| FailAck { msg_id, reason });
    (
        proptest::collection::vec(range, 0..64),
        proptest::collection::vec(fail, 0..8),
    )
        .prop_map(|(acked, failed)| Frame::Ack(AckFrame { acked, failed }))
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        data_frame(),
        ack_frame(),
        member().prop_map(|m| Frame::Hello(Box::new(cohort_wire::Hello::new(m)))),
        (member(), any::<[u8; 16]>()).prop_map(|(member, n)| {
            Frame::Hello(Box::new(cohort_wire::Hello {
                member,
                nonce: Some(n),
            }))
        }),
        any::<[u8; 16]>().prop_map(Frame::Challenge),
    ]
}

fn beacon() -> impl Strategy<Value = Beacon> {
    (
        member(),
        prop_oneof![
            Just(BeaconCommand::Alive),
            Just(BeaconCommand::Shutdown),
            Just(BeaconCommand::Join)
        ],
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(member, command, seq, sent_at_ms)| Beacon {
            member,
            command,
            seq,
            sent_at_ms,
        })
}

fn codec(authenticated: bool) -> CohortCodec {
    let keys = authenticated
        .then(|| KeyRing::new(vec![ClusterKey::new(*b"property test key").unwrap()]).unwrap());
    CohortCodec::new(WireLimits::default(), keys).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn data_frames_encoded_directly_or_around_their_payload_match_encode_frame(
        f in data_frame(),
        auth in any::<bool>(),
    ) {
        let codec = codec(auth);
        let Frame::Data(d) = &f else { unreachable!() };
        let mut whole = BytesMut::new();
        codec.encode_frame(&f, &mut whole).unwrap();
        let mut direct = BytesMut::new();
        codec.encode_data(d, None, &mut direct).unwrap();
        prop_assert_eq!(&direct, &whole);
        let mut head = BytesMut::new();
        match codec.encode_data_around(d, &mut head).unwrap() {
            Some(crc) => {
                prop_assert!(!auth);
                let joined = [&head[..], &d.payload[..], &crc[..]].concat();
                prop_assert_eq!(&joined[..], &whole[..]);
            }
            // A signed frame is only ever encoded whole.
            None => prop_assert!(auth && head.is_empty()),
        }
    }

    #[test]
    fn frames_round_trip(f in frame(), auth in any::<bool>()) {
        let codec = codec(auth);
        let mut buf = BytesMut::new();
        codec.encode_frame(&f, &mut buf).unwrap();
        prop_assert_eq!(codec.decode_frame(&mut buf).unwrap(), Some(f));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn beacons_round_trip(b in beacon(), auth in any::<bool>()) {
        let codec = codec(auth);
        let mut buf = BytesMut::new();
        codec.encode_beacon(&b, &mut buf).unwrap();
        prop_assert!(buf.len() <= MAX_DATAGRAM);
        prop_assert_eq!(codec.decode_beacon(&buf), Ok(b));
    }

    #[test]
    fn streams_split_anywhere_decode_the_same(
        frames in proptest::collection::vec(frame(), 1..6),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let codec = codec(false);
        let mut wire = BytesMut::new();
        for f in &frames {
            codec.encode_frame(f, &mut wire).unwrap();
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        cuts.push(wire.len());
        cuts.sort_unstable();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut at = 0;
        for cut in cuts {
            buf.extend_from_slice(&wire[at..cut]);
            at = cut;
            while let Some(f) = codec.decode_frame(&mut buf).unwrap() {
                got.push(f);
            }
        }
        prop_assert_eq!(got, frames);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        cohort_wire::fuzz::frame_stream(&data);
        cohort_wire::fuzz::beacon(&data);
    }

    #[test]
    fn mutated_frames_never_panic(
        f in frame(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut buf = BytesMut::new();
        codec(false).encode_frame(&f, &mut buf).unwrap();
        for (at, byte) in flips {
            let i = at.index(buf.len());
            buf[i] = byte;
        }
        let mut input = vec![5u8];
        input.extend_from_slice(&buf);
        cohort_wire::fuzz::frame_stream(&input);
    }

    #[test]
    fn mutated_beacons_never_panic(
        b in beacon(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut buf = BytesMut::new();
        codec(false).encode_beacon(&b, &mut buf).unwrap();
        for (at, byte) in flips {
            let i = at.index(buf.len());
            buf[i] = byte;
        }
        cohort_wire::fuzz::beacon(&buf);
    }
}
