//! Frame codec: encoding and decoding data frames (64 B to 64 KiB), an ACK batch, and a signed
//! data frame. `cargo bench -p cohort-wire --bench codec`.

// criterion_group! generates undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use cohort_wire::{
    AckFrame, ClusterKey, CohortCodec, DataFrame, DataHeader, Frame, FrameCodec, KeyRing, MemberId,
    SendOptions, WireLimits,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn data(size: usize) -> Frame {
    Frame::Data(DataFrame {
        header: DataHeader {
            msg_id: 42,
            options: SendOptions::USE_ACK,
            sender: MemberId::from_bytes([7; 16]),
            timestamp_ms: 1_700_000_000_000,
            seq: 9,
            extensions: Vec::new(),
        },
        payload: Bytes::from(vec![0xA5; size]),
    })
}

fn codecs(c: &mut Criterion) {
    let plain = CohortCodec::new(WireLimits::default(), None).expect("codec");
    let key = ClusterKey::new(b"a benchmark cluster key".to_vec()).expect("key");
    let signed = CohortCodec::new(
        WireLimits::default(),
        Some(KeyRing::new(vec![key]).expect("ring")),
    )
    .expect("codec");
    let mut g = c.benchmark_group("frame");
    for size in [64usize, 1024, 65536] {
        let frame = data(size);
        let mut encoded = BytesMut::new();
        plain.encode_frame(&frame, &mut encoded).expect("encode");
        g.throughput(Throughput::Bytes(encoded.len() as u64));
        g.bench_function(format!("encode data {size} B"), |b| {
            let mut out = BytesMut::with_capacity(encoded.len());
            b.iter(|| {
                out.clear();
                plain
                    .encode_frame(black_box(&frame), &mut out)
                    .expect("encode");
            });
        });
        g.bench_function(format!("decode data {size} B"), |b| {
            b.iter(|| {
                let mut buf = encoded.clone();
                black_box(plain.decode_frame(&mut buf).expect("decode"));
            });
        });
    }
    let frame = data(1024);
    let mut encoded = BytesMut::new();
    signed.encode_frame(&frame, &mut encoded).expect("encode");
    g.throughput(Throughput::Bytes(encoded.len() as u64));
    g.bench_function("encode + decode signed data 1024 B", |b| {
        let mut out = BytesMut::with_capacity(encoded.len());
        b.iter(|| {
            out.clear();
            signed
                .encode_frame(black_box(&frame), &mut out)
                .expect("encode");
            black_box(signed.decode_frame(&mut out).expect("decode"));
        });
    });
    // A keyed connection: the frame encoded once is re-tagged for the connection (what a sender
    // lane adds per destination), and opened under the connection key (what a receiver does
    // instead of the plain check).
    let session_key = ClusterKey::new(b"a benchmark cluster key".to_vec()).expect("key");
    for size in [1024usize, 65536] {
        let frame = data(size);
        let mut once = BytesMut::new();
        signed.encode_frame(&frame, &mut once).expect("encode");
        g.throughput(Throughput::Bytes(once.len() as u64));
        g.bench_function(format!("reseal signed data {size} B"), |b| {
            let (mut sealer, _) = signed
                .connector_session(&[1; 16], &[2; 16])
                .expect("keyed")
                .split();
            let mut out = BytesMut::with_capacity(once.len());
            b.iter(|| {
                out.clear();
                signed
                    .reseal(black_box(&once), &mut sealer, &mut out)
                    .expect("reseal");
            });
        });
        g.bench_function(format!("reseal + open signed data {size} B"), |b| {
            let (mut sealer, _) = signed
                .connector_session(&[1; 16], &[2; 16])
                .expect("keyed")
                .split();
            let (_, mut opener) = cohort_wire::Session::new(
                &session_key,
                cohort_wire::Role::Acceptor,
                &[1; 16],
                &[2; 16],
            )
            .split();
            let mut out = BytesMut::with_capacity(once.len());
            b.iter(|| {
                out.clear();
                signed
                    .reseal(black_box(&once), &mut sealer, &mut out)
                    .expect("reseal");
                black_box(
                    signed
                        .decode_frame_opened(&mut out, &mut opener)
                        .expect("open"),
                );
            });
        });
        g.bench_function(format!("decode signed data {size} B (plain tag)"), |b| {
            b.iter(|| {
                let mut buf = once.clone();
                black_box(signed.decode_frame(&mut buf).expect("decode"));
            });
        });
    }
    // A pipelined batch: 4096 ids with a few gaps, as ranges.
    let ids: Vec<u64> = (0..4200).filter(|i| i % 1000 != 999).collect();
    let ack = Frame::Ack(AckFrame::from_ids(ids));
    let mut encoded = BytesMut::new();
    plain.encode_frame(&ack, &mut encoded).expect("encode");
    g.throughput(Throughput::Elements(4196));
    g.bench_function("encode + decode ACK of 4196 ids", |b| {
        let mut out = BytesMut::with_capacity(encoded.len());
        b.iter(|| {
            out.clear();
            plain
                .encode_frame(black_box(&ack), &mut out)
                .expect("encode");
            black_box(plain.decode_frame(&mut out).expect("decode"));
        });
    });
    g.finish();
}

criterion_group!(benches, codecs);
criterion_main!(benches);
