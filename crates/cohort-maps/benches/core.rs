//! The map core alone (no sockets): local puts, applying a burst of remote records, building
//! a state-transfer chunk, and a digest exchange's answer. `cargo bench -p cohort-maps --bench
//! core`.

// criterion_group! generates undocumented functions.
#![allow(missing_docs)]

use bytes::Bytes;
use cohort_maps::MapConfig;
use cohort_maps::core::{Kind, MapCore};
use cohort_maps::msg::Msg;
use cohort_wire::MemberId;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const NOW: u64 = 1_700_000_000_000;

fn core(id: u8) -> MapCore {
    let mut c = MapCore::new(
        MapConfig::default(),
        Kind::Replicated,
        MemberId::from_bytes([id; 16]),
        1,
    );
    c.handle_member_up(NOW, MemberId::from_bytes([id ^ 0xff; 16]));
    while c.poll_transmit().is_some() {}
    c
}

fn filled(n: u64, size: usize) -> MapCore {
    let mut c = core(1);
    for i in 0..n {
        c.put(
            NOW,
            Bytes::from(format!("key-{i:08}")),
            Bytes::from(vec![1u8; size]),
        )
        .unwrap();
    }
    c
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("map_core");
    g.throughput(Throughput::Elements(1));
    let value = Bytes::from(vec![1u8; 100]);
    g.bench_function("put_100B", |b| {
        let mut m = core(1);
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            m.put(
                NOW,
                Bytes::from(format!("key-{}", i % 100_000)),
                value.clone(),
            )
            .unwrap()
        });
    });
    let writes: Vec<_> = {
        let mut w = core(2);
        (0..1000u64)
            .map(|i| {
                w.put(NOW, Bytes::from(format!("key-{i}")), value.clone())
                    .unwrap()
                    .record
            })
            .collect()
    };
    g.throughput(Throughput::Elements(1000));
    g.bench_function("apply_1000_remote_records", |b| {
        b.iter_batched(
            || (core(1), writes.clone()),
            |(mut m, records)| m.apply(NOW, records),
            BatchSize::SmallInput,
        );
    });
    let big = filled(10_000, 1024);
    let to = MemberId::from_bytes([9; 16]);
    g.throughput(Throughput::Bytes(10_000 * 1024));
    g.bench_function("state_transfer_chunks_10000x1KiB", |b| {
        b.iter(|| {
            let mut after: Option<Bytes> = None;
            let mut n = 0;
            loop {
                let (records, next) = big.chunk(after.as_deref(), 256 << 10, to);
                n += records.len();
                // Encoded as it would travel.
                let _ = Msg::StateChunk {
                    records,
                    next: next.clone(),
                }
                .encode();
                match next {
                    Some(k) => after = Some(k),
                    None => break n,
                }
            }
        });
    });
    g.throughput(Throughput::Elements(1));
    let digest = Msg::Digest {
        buckets: core(3).digests().to_vec(),
    };
    g.bench_function("answer_digest_of_10000_entries", |b| {
        let mut m = filled(10_000, 100);
        b.iter(|| m.handle_message(NOW, to, digest.clone()));
    });
    g.finish();
}

criterion_group!(map, benches);
criterion_main!(map);
