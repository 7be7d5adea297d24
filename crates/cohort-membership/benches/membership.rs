//! Criterion benches for membership (see the module docs below).
#![allow(missing_docs)]
//! Criterion benches: beacon encode + authenticate + decode, and the core handling a round of
//! beacons from 1,000 members.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cohort_membership::MembershipConfig;
use cohort_membership::core::MembershipCore;
use cohort_wire::{
    Beacon, BeaconCodec, BeaconCommand, ClusterKey, CohortCodec, KeyRing, Member, MemberId,
    WireLimits,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const WALL0: u64 = 1_700_000_000_000;

fn member(n: u32) -> Member {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    let ip = IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | (n & 0xffff)));
    let mut m = Member::new(MemberId::from_bytes(id), ip, 4000);
    m.cluster = "cohort".into();
    m.name = format!("node-{n}");
    m.start_time_ms = WALL0 + u64::from(n);
    m.payload = Bytes::from_static(b"role=web,zone=a");
    m
}

fn keys() -> KeyRing {
    KeyRing::new(vec![ClusterKey::new(*b"benchmark cluster key").unwrap()]).unwrap()
}

fn codec_bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("beacon");
    group.throughput(Throughput::Elements(1));
    for (name, keys) in [("plain", None), ("hmac", Some(keys()))] {
        let codec = CohortCodec::new(WireLimits::default(), keys).unwrap();
        let beacon = Beacon {
            member: member(7),
            command: BeaconCommand::Alive,
            seq: 42,
            sent_at_ms: WALL0,
        };
        let mut buf = BytesMut::with_capacity(256);
        group.bench_function(format!("encode_decode_{name}"), |b| {
            b.iter(|| {
                buf.clear();
                codec.encode_beacon(black_box(&beacon), &mut buf).unwrap();
                black_box(codec.decode_beacon(&buf).unwrap());
            });
        });
    }
    group.finish();
}

fn core_bench(c: &mut Criterion) {
    const MEMBERS: u32 = 1000;
    let keyed = MembershipConfig {
        keys: Some(keys()),
        ..MembershipConfig::default()
    };
    let codec = CohortCodec::new(WireLimits::default(), Some(keys())).unwrap();
    let datagrams: Vec<(SocketAddr, Bytes)> = (1..=MEMBERS)
        .map(|n| {
            let mut out = BytesMut::new();
            let b = Beacon {
                member: member(n),
                command: BeaconCommand::Alive,
                seq: 1,
                sent_at_ms: WALL0,
            };
            codec.encode_beacon(&b, &mut out).unwrap();
            (SocketAddr::from(([127, 0, 0, 1], 45564)), out.freeze())
        })
        .collect();
    let mut group = c.benchmark_group("core");
    group.throughput(Throughput::Elements(u64::from(MEMBERS)));
    group.bench_function("beacon_round_from_1000_members", |b| {
        let t0 = Instant::now();
        let mut core =
            MembershipCore::new(keyed.clone(), member(0), true, vec![], t0, WALL0).unwrap();
        core.start(t0);
        let mut round: u64 = 0;
        // Each iteration is one beacon period: every member's next beacon arrives (sequence
        // numbers go up, so none is a replay), then the timers run.
        b.iter_batched(
            || {
                round += 1;
                let batch = datagrams
                    .iter()
                    .enumerate()
                    .map(|(i, (from, _))| {
                        let mut out = BytesMut::new();
                        let b = Beacon {
                            member: member(u32::try_from(i).unwrap() + 1),
                            command: BeaconCommand::Alive,
                            seq: round,
                            sent_at_ms: WALL0,
                        };
                        codec.encode_beacon(&b, &mut out).unwrap();
                        (*from, out.freeze())
                    })
                    .collect::<Vec<_>>();
                (round, batch)
            },
            |(round, batch)| {
                let now = t0 + Duration::from_millis(round);
                for (from, bytes) in &batch {
                    core.handle_datagram(now, *from, bytes);
                }
                core.handle_timeout(now);
                while core.poll_transmit().is_some() {}
                while core.poll_event().is_some() {}
                assert_eq!(core.len(), MEMBERS as usize);
            },
            criterion::BatchSize::LargeInput,
        );
    });
    group.finish();
}

criterion_group!(benches, codec_bench, core_bench);
criterion_main!(benches);
