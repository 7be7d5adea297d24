#![allow(clippy::cast_possible_truncation)] // test inputs are small
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, Bytes, BytesMut};

use crate::*;

fn member() -> Member {
    let mut m = Member::new(
        MemberId::from_bytes([3; 16]),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
        4000,
    );
    m.cluster = "test".into();
    m.name = "n1".into();
    m.start_time_ms = 1_700_000_000_000;
    m
}

fn data(payload: &'static [u8]) -> Frame {
    Frame::Data(DataFrame {
        header: DataHeader {
            msg_id: 9,
            options: SendOptions::USE_ACK | SendOptions::SYNCHRONIZED_ACK,
            sender: MemberId::from_bytes([1; 16]),
            timestamp_ms: 5,
            seq: 2,
            extensions: vec![Extension {
                tag: 4,
                value: Bytes::from_static(b"ext"),
            }],
        },
        payload: Bytes::from_static(payload),
    })
}

fn keys(secret: &[u8]) -> KeyRing {
    KeyRing::new(vec![ClusterKey::new(secret).unwrap()]).unwrap()
}

fn codec() -> CohortCodec {
    CohortCodec::new(WireLimits::default(), None).unwrap()
}

fn encode(codec: &CohortCodec, frame: &Frame) -> BytesMut {
    let mut buf = BytesMut::new();
    codec.encode_frame(frame, &mut buf).unwrap();
    buf
}

/// Recomputes the CRC of an unauthenticated frame or beacon after a test edited it.
fn fix_crc(buf: &mut BytesMut) {
    let n = buf.len() - CRC_LEN;
    let crc = crc32fast::hash(&buf[..n]);
    buf[n..].copy_from_slice(&crc.to_be_bytes());
}

/// A frame whose prefix announces `header` and `payload` but whose CRC is correct.
fn raw_frame(kind: u8, header: &[u8], payload: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_slice(&FRAME_MAGIC);
    buf.put_u8(PROTOCOL_VERSION);
    buf.put_u8(kind);
    buf.put_u8(0);
    buf.put_u8(0);
    buf.put_u32(header.len() as u32);
    buf.put_u32(payload.len() as u32);
    buf.put_slice(header);
    buf.put_slice(payload);
    buf.put_u32(0);
    fix_crc(&mut buf);
    buf
}

fn decode_err(codec: &CohortCodec, mut buf: BytesMut) -> DecodeError {
    codec.decode_frame(&mut buf).unwrap_err()
}

#[test]
fn frame_round_trip_all_kinds() {
    let codec = codec();
    let frames = [
        data(b"payload"),
        data(b""),
        Frame::Ack(AckFrame {
            acked: vec![AckRange { first: 1, last: 10 }],
            failed: vec![FailAck {
                msg_id: 11,
                reason: "listener failed".into(),
            }],
        }),
        Frame::Hello(Box::new(crate::Hello::new(member()))),
    ];
    for frame in frames {
        let mut buf = encode(&codec, &frame);
        assert_eq!(codec.decode_frame(&mut buf).unwrap(), Some(frame));
        assert!(buf.is_empty());
    }
}

#[test]
fn stream_decoder_handles_partial_reads_and_several_frames_per_read() {
    let codec = codec();
    let a = data(b"first");
    let b = data(b"second, longer");
    let mut wire = encode(&codec, &a);
    wire.unsplit(encode(&codec, &b));
    // Feed one byte at a time: nothing is decoded early, each frame appears exactly once.
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for byte in wire.iter() {
        buf.put_u8(*byte);
        while let Some(f) = codec.decode_frame(&mut buf).unwrap() {
            got.push(f);
        }
    }
    assert_eq!(got, vec![a.clone(), b.clone()]);
    // All at once.
    let mut buf = wire.clone();
    assert_eq!(codec.decode_frame(&mut buf).unwrap(), Some(a));
    assert_eq!(codec.decode_frame(&mut buf).unwrap(), Some(b));
    assert_eq!(codec.decode_frame(&mut buf).unwrap(), None);
}

#[test]
fn bad_magic_is_reported_from_the_first_byte() {
    let codec = codec();
    let err = decode_err(&codec, BytesMut::from(&b"F"[..]));
    assert!(matches!(
        err,
        DecodeError::BadMagic {
            found: [b'F', 0, 0, 0],
            ..
        }
    ));
    // Tribes' frame start is not ours.
    let err = decode_err(&codec, BytesMut::from(&b"FLT2002\0\0\0\x03"[..]));
    assert_eq!(err.kind_name(), "bad_magic");
}

#[test]
fn unsupported_version_is_rejected() {
    let codec = codec();
    let mut buf = encode(&codec, &data(b"x"));
    buf[4] = PROTOCOL_VERSION + 1;
    assert_eq!(
        decode_err(&codec, buf),
        DecodeError::UnsupportedVersion {
            version: PROTOCOL_VERSION + 1,
            min: MIN_PROTOCOL_VERSION,
            max: PROTOCOL_VERSION
        }
    );
}

#[test]
fn oversized_lengths_are_rejected_from_the_prefix_alone() {
    let limits = WireLimits {
        max_frame_payload: 1024,
        ..WireLimits::default()
    };
    let codec = CohortCodec::new(limits, None).unwrap();
    // Only the 16-byte prefix: the error comes before any payload could be buffered.
    let mut prefix = raw_frame(1, &[], &[0; 2048]);
    prefix.truncate(FRAME_PREFIX_LEN);
    let cap = prefix.capacity();
    let err = codec.decode_frame(&mut prefix).unwrap_err();
    assert_eq!(
        err,
        DecodeError::TooLarge {
            what: "frame payload",
            len: 2048,
            max: 1024
        }
    );
    assert_eq!(
        prefix.capacity(),
        cap,
        "decoder reserved memory on a peer's word"
    );

    let mut prefix = raw_frame(1, &[0; 17_000], &[]);
    prefix.truncate(FRAME_PREFIX_LEN);
    assert!(matches!(
        codec.decode_frame(&mut prefix),
        Err(DecodeError::TooLarge {
            what: "frame header",
            ..
        })
    ));
}

#[test]
fn encoder_refuses_what_the_peer_would_reject() {
    let limits = WireLimits {
        max_frame_payload: 4,
        ..WireLimits::default()
    };
    let codec = CohortCodec::new(limits, None).unwrap();
    let mut out = BytesMut::new();
    let err = codec.encode_frame(&data(b"12345"), &mut out).unwrap_err();
    assert!(matches!(err, EncodeError::TooLarge { .. }));
    assert!(
        out.is_empty(),
        "a failed encode must leave the buffer unchanged"
    );
    let mut m = member();
    m.name = "x".repeat(MAX_NAME_LEN + 1);
    let err = codec
        .encode_frame(&Frame::Hello(Box::new(crate::Hello::new(m))), &mut out)
        .unwrap_err();
    assert!(matches!(
        err,
        EncodeError::FieldTooLong { field: "name", .. }
    ));
    let bad_range = Frame::Ack(AckFrame {
        acked: vec![AckRange { first: 5, last: 4 }],
        failed: vec![],
    });
    assert!(matches!(
        codec.encode_frame(&bad_range, &mut out),
        Err(EncodeError::EmptyAckRange { .. })
    ));
    assert!(out.is_empty());
}

#[test]
fn crc_mismatch_is_detected() {
    let codec = codec();
    let mut buf = encode(&codec, &data(b"payload"));
    let n = buf.len();
    buf[n - 6] ^= 0x40; // a payload byte
    assert!(matches!(
        decode_err(&codec, buf),
        DecodeError::CrcMismatch { .. }
    ));
}

#[test]
fn malformed_headers_are_rejected() {
    let codec = codec();
    // Not protobuf at all (a field with wire type 7).
    let err = decode_err(&codec, raw_frame(1, &[0x0f, 0xff], b""));
    assert!(matches!(
        err,
        DecodeError::Malformed {
            what: "data header",
            reason: MalformedReason::Protobuf(_)
        }
    ));
    // A sender id of 3 bytes (field 3, length 3).
    let err = decode_err(&codec, raw_frame(1, &[0x1a, 3, 1, 2, 3], b""));
    assert!(matches!(
        err,
        DecodeError::Malformed {
            reason: MalformedReason::OutOfRange {
                field: "sender",
                ..
            },
            ..
        }
    ));
    // An ACK frame with a payload.
    let err = decode_err(&codec, raw_frame(2, &[], b"x"));
    assert!(matches!(
        err,
        DecodeError::Malformed {
            reason: MalformedReason::UnexpectedPayload {
                kind: FrameKind::Ack
            },
            ..
        }
    ));
    // A hello without a member.
    let err = decode_err(&codec, raw_frame(3, &[], b""));
    assert!(matches!(
        err,
        DecodeError::Malformed {
            reason: MalformedReason::MissingField("member"),
            ..
        }
    ));
    // An ACK range with first > last: field 1 { first: 5, last: 4 }.
    let err = decode_err(&codec, raw_frame(2, &[0x0a, 4, 0x08, 5, 0x10, 4], b""));
    assert!(matches!(
        err,
        DecodeError::Malformed {
            reason: MalformedReason::OutOfRange { field: "acked", .. },
            ..
        }
    ));
}

#[test]
fn unknown_frame_kind_is_rejected() {
    let codec = codec();
    assert_eq!(
        decode_err(&codec, raw_frame(9, &[], b"")),
        DecodeError::UnknownFrameKind { kind: 9 }
    );
}

#[test]
fn ack_entries_above_the_limit_are_rejected() {
    let limits = WireLimits {
        max_ack_entries: 2,
        ..WireLimits::default()
    };
    let small = CohortCodec::new(limits, None).unwrap();
    let frame = Frame::Ack(AckFrame {
        acked: vec![
            AckRange::single(1),
            AckRange::single(3),
            AckRange::single(5),
        ],
        failed: vec![],
    });
    let buf = encode(&codec(), &frame);
    assert!(matches!(
        decode_err(&small, buf),
        DecodeError::Malformed {
            reason: MalformedReason::FieldTooLong {
                field: "ack entries",
                ..
            },
            ..
        }
    ));
}

#[test]
fn authentication_classes() {
    let signer = CohortCodec::new(WireLimits::default(), Some(keys(b"0123456789abcdef"))).unwrap();
    let other = CohortCodec::new(WireLimits::default(), Some(keys(b"fedcba9876543210"))).unwrap();
    let plain = codec();
    let signed = encode(&signer, &data(b"x"));
    let unsigned = encode(&plain, &data(b"x"));
    assert_eq!(
        signer.decode_frame(&mut signed.clone()).unwrap(),
        Some(data(b"x"))
    );
    assert_eq!(decode_err(&other, signed.clone()), DecodeError::BadAuth);
    assert_eq!(decode_err(&plain, signed.clone()), DecodeError::NoKey);
    assert_eq!(decode_err(&signer, unsigned), DecodeError::MissingAuth);
    // A forged frame with a recomputed CRC but the old tag.
    let mut forged = signed;
    let payload_at = forged.len() - CRC_LEN - TAG_LEN - 1;
    forged[payload_at] ^= 1;
    fix_crc(&mut forged);
    assert_eq!(decode_err(&signer, forged), DecodeError::BadAuth);
}

#[test]
fn key_rotation_accepts_any_ring_key_and_signs_with_the_first() {
    let old = ClusterKey::new(*b"old key 0123456789").unwrap();
    let new = ClusterKey::new(*b"new key 0123456789").unwrap();
    let before = CohortCodec::new(
        WireLimits::default(),
        Some(KeyRing::new(vec![old.clone()]).unwrap()),
    )
    .unwrap();
    let during = CohortCodec::new(
        WireLimits::default(),
        Some(KeyRing::new(vec![new.clone(), old]).unwrap()),
    )
    .unwrap();
    let after = CohortCodec::new(
        WireLimits::default(),
        Some(KeyRing::new(vec![new]).unwrap()),
    )
    .unwrap();
    let from_old = encode(&before, &data(b"x"));
    let mut from_during = encode(&during, &data(b"x"));
    assert!(during.decode_frame(&mut from_old.clone()).is_ok());
    assert!(after.decode_frame(&mut from_during).is_ok());
    assert_eq!(decode_err(&after, from_old), DecodeError::BadAuth);
    assert!(ClusterKey::new(*b"short").is_err());
    assert!(KeyRing::new(vec![]).is_err());
}

fn beacon(command: BeaconCommand) -> Beacon {
    Beacon {
        member: member(),
        command,
        seq: 42,
        sent_at_ms: 1_700_000_000_500,
    }
}

#[test]
fn beacon_round_trip_and_classes() {
    let codec = codec();
    for command in [
        BeaconCommand::Alive,
        BeaconCommand::Shutdown,
        BeaconCommand::Join,
    ] {
        let mut out = BytesMut::new();
        codec.encode_beacon(&beacon(command), &mut out).unwrap();
        assert_eq!(codec.decode_beacon(&out), Ok(beacon(command)));
    }
    let mut good = BytesMut::new();
    codec
        .encode_beacon(&beacon(BeaconCommand::Alive), &mut good)
        .unwrap();

    assert_eq!(
        codec.decode_beacon(&good[..3]).unwrap_err().kind_name(),
        "truncated"
    );
    assert_eq!(
        codec
            .decode_beacon(b"TRIBES-B\x01\0")
            .unwrap_err()
            .kind_name(),
        "bad_magic"
    );
    assert_eq!(
        codec
            .decode_beacon(&good[..good.len() - 1])
            .unwrap_err()
            .kind_name(),
        "truncated"
    );
    let mut long = good.clone();
    long.put_u8(0);
    assert_eq!(
        codec.decode_beacon(&long).unwrap_err().kind_name(),
        "trailing_bytes"
    );
    let mut flipped = good.clone();
    flipped[12] ^= 0xff;
    assert_eq!(
        codec.decode_beacon(&flipped).unwrap_err().kind_name(),
        "crc"
    );
    let mut version = good.clone();
    version[4] = 0;
    assert_eq!(
        codec.decode_beacon(&version).unwrap_err().kind_name(),
        "unsupported_version"
    );
    let huge = vec![0u8; MAX_DATAGRAM + 1];
    assert_eq!(
        codec.decode_beacon(&huge).unwrap_err().kind_name(),
        "too_large"
    );
    // Unknown command 7 with a correct CRC.
    let mut unknown = good.clone();
    let body = &mut unknown[BEACON_PREFIX_LEN..];
    let pos = body.windows(2).position(|w| w == [0x10, 0x00]);
    assert!(
        pos.is_none(),
        "command 0 is the protobuf default and is not encoded"
    );
    unknown.truncate(unknown.len() - CRC_LEN);
    let body_len = u16::from_be_bytes([unknown[6], unknown[7]]) + 2;
    unknown[6..8].copy_from_slice(&body_len.to_be_bytes());
    unknown.put_slice(&[0x10, 0x07, 0, 0, 0, 0]);
    fix_crc(&mut unknown);
    assert!(matches!(
        codec.decode_beacon(&unknown),
        Err(DecodeError::Malformed {
            reason: MalformedReason::OutOfRange {
                field: "command",
                ..
            },
            ..
        })
    ));
}

#[test]
fn authenticated_beacons_reject_forged_shutdowns() {
    let cluster = CohortCodec::new(WireLimits::default(), Some(keys(b"cluster secret 0"))).unwrap();
    let attacker =
        CohortCodec::new(WireLimits::default(), Some(keys(b"attacker secret!"))).unwrap();
    let mut forged = BytesMut::new();
    attacker
        .encode_beacon(&beacon(BeaconCommand::Shutdown), &mut forged)
        .unwrap();
    assert_eq!(cluster.decode_beacon(&forged), Err(DecodeError::BadAuth));
    let mut unsigned = BytesMut::new();
    codec()
        .encode_beacon(&beacon(BeaconCommand::Shutdown), &mut unsigned)
        .unwrap();
    assert_eq!(
        cluster.decode_beacon(&unsigned),
        Err(DecodeError::MissingAuth)
    );
}

#[test]
fn member_fields_are_validated_on_decode() {
    let codec = codec();
    let mut m = member();
    m.addr = IpAddr::V6(Ipv6Addr::LOCALHOST);
    m.udp_port = Some(4001);
    m.payload = Bytes::from(vec![7; 100]);
    m.domain = Bytes::from_static(b"\x01\x02");
    let frame = Frame::Hello(Box::new(crate::Hello::new(m)));
    assert_eq!(
        codec.decode_frame(&mut encode(&codec, &frame)).unwrap(),
        Some(frame)
    );
    // A payload above a stricter receiver's limit.
    let mut big = member();
    big.payload = Bytes::from(vec![0; 2000]);
    let strict = CohortCodec::new(
        WireLimits {
            max_member_payload: 1000,
            ..WireLimits::default()
        },
        None,
    )
    .unwrap();
    let err = decode_err(
        &strict,
        encode(&codec, &Frame::Hello(Box::new(crate::Hello::new(big)))),
    );
    assert!(matches!(
        err,
        DecodeError::Malformed {
            reason: MalformedReason::FieldTooLong {
                field: "payload",
                ..
            },
            ..
        }
    ));
}

#[test]
fn limits_are_validated() {
    assert!(WireLimits::default().validate().is_ok());
    let bad = WireLimits {
        max_beacon: 70_000,
        ..WireLimits::default()
    };
    assert!(matches!(
        bad.validate(),
        Err(ConfigError::OutOfRange {
            field: "max_beacon",
            ..
        })
    ));
    let bad = WireLimits {
        max_member_payload: 65_000,
        ..WireLimits::default()
    };
    assert!(CohortCodec::new(bad, None).is_err());
}

#[test]
fn send_options_keep_tribes_values_and_parse_names() {
    assert_eq!(SendOptions::BYTE_MESSAGE.bits(), 0x01);
    assert_eq!(SendOptions::USE_ACK.bits(), 0x02);
    assert_eq!(SendOptions::SYNCHRONIZED_ACK.bits(), 0x04);
    assert_eq!(SendOptions::ASYNCHRONOUS.bits(), 0x08);
    assert_eq!(SendOptions::SECURE.bits(), 0x10);
    assert_eq!(SendOptions::UDP.bits(), 0x20);
    assert_eq!(SendOptions::MULTICAST.bits(), 0x40);
    assert_eq!(SendOptions::DEFAULT, SendOptions::USE_ACK);
    let table: [(&str, u32); 6] = [
        ("use_ack,sync", 6),
        (" async , use_ack ", 10),
        ("8", 8),
        ("0x102", 0x102),
        ("byte", 1),
        ("none", 0),
    ];
    for (text, bits) in table {
        assert_eq!(text.parse::<SendOptions>().unwrap().bits(), bits, "{text}");
    }
    assert!(matches!(
        "use_ack,Sync".parse::<SendOptions>(),
        Err(OptionsParseError::UnknownName { .. })
    ));
    assert_eq!("".parse::<SendOptions>(), Err(OptionsParseError::Empty));
    assert_eq!(
        SendOptions::from_bits(0x10a).to_string(),
        "use_ack|asynchronous|0x100"
    );
    assert!(SendOptions::from_bits(6).is_sync_ack());
    assert!(!SendOptions::SYNCHRONIZED_ACK.is_sync_ack());
}

#[test]
fn services_start_and_stop_in_tribes_order() {
    let all: Vec<u8> = Services::DEFAULT
        .start_order()
        .map(Services::bits)
        .collect();
    assert_eq!(all, [1, 2, 4, 8]);
    let stop: Vec<u8> = Services::DEFAULT.stop_order().map(Services::bits).collect();
    assert_eq!(stop, [8, 4, 2, 1]);
    assert_eq!(
        "3".parse::<Services>().unwrap(),
        Services::SND_RX | Services::SND_TX
    );
    assert_eq!("snd_rx,mbr_tx".parse::<Services>().unwrap().bits(), 9);
    assert!("bogus".parse::<Services>().is_err());
}

#[test]
fn ack_ids_merge_into_ranges() {
    let ack = AckFrame::from_ids(vec![5, 1, 2, 3, 3, 7, u64::MAX]);
    assert_eq!(
        ack.acked,
        vec![
            AckRange { first: 1, last: 3 },
            AckRange::single(5),
            AckRange::single(7),
            AckRange::single(u64::MAX)
        ]
    );
    assert_eq!(ack.acked_ids().count(), 6);
}

#[test]
fn versions_negotiate_the_newest_common() {
    let a = VersionRange { min: 1, max: 3 };
    let b = VersionRange { min: 2, max: 5 };
    assert_eq!(a.common(b), Some(3));
    assert_eq!(a.common(VersionRange { min: 4, max: 4 }), None);
    assert!(codec().with_version(PROTOCOL_VERSION + 1).is_err());
}

#[test]
fn member_ids_print_and_parse() {
    let id = MemberId::from_bytes([0x0f; 16]);
    assert_eq!(id.to_string().parse::<MemberId>(), Ok(id));
    assert!("xyz".parse::<MemberId>().is_err());
    assert!(
        "zz0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f"
            .parse::<MemberId>()
            .is_err()
    );
    assert_eq!(id.short(), "0f0f0f0f");
    // Seniority orders by start time, then id.
    let mut older = member();
    older.start_time_ms -= 1;
    assert!(older.seniority() < member().seniority());
}
