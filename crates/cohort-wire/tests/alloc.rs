//! Bounded allocation: decoding any input allocates at most a small multiple of the input's
//! length, whatever its length fields claim. Runs alone in its own test binary because it
//! counts every allocation of the process.

#![allow(clippy::cast_possible_truncation, clippy::print_stderr)] // small test inputs; a report

use bytes::{BufMut, BytesMut};
use cohort_wire::{
    BeaconCodec, CohortCodec, FRAME_MAGIC, FrameCodec, PROTOCOL_VERSION, WireLimits,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated (including growth by realloc) while `f` runs.
fn allocated_during(f: impl FnOnce()) -> usize {
    let region = Region::new(GLOBAL);
    f();
    let stats = region.change();
    stats.bytes_allocated + usize::try_from(stats.bytes_reallocated.max(0)).unwrap_or(0)
}

/// The documented bound: prost materialises repeated fields before their count is checked, so
/// a header may cost up to ~64 times its length (the header itself is capped at 16 KiB).
fn bound(input_len: usize) -> usize {
    64 * input_len + 64 * 1024
}

fn input(rng: &mut StdRng) -> Vec<u8> {
    let len = rng.gen_range(0..4096);
    let mut data: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
    match rng.gen_range(0..3) {
        // Arbitrary bytes.
        0 => {}
        // A valid prefix whose lengths claim up to 4 GiB.
        1 => {
            let mut prefix = BytesMut::new();
            prefix.put_slice(&FRAME_MAGIC);
            prefix.put_u8(PROTOCOL_VERSION);
            prefix.put_u8(rng.gen_range(1..=3));
            prefix.put_u8(0);
            prefix.put_u8(0);
            prefix.put_u32(rng.r#gen());
            prefix.put_u32(rng.r#gen());
            data.splice(0..0, prefix);
        }
        // A header full of minimal repeated entries (the worst case for prost).
        _ => {
            let entries = data.len() / 2;
            let mut frame = BytesMut::new();
            frame.put_slice(&FRAME_MAGIC);
            frame.put_u8(PROTOCOL_VERSION);
            frame.put_u8(rng.gen_range(1..=2));
            frame.put_u8(0);
            frame.put_u8(0);
            frame.put_u32((entries * 2) as u32);
            frame.put_u32(0);
            for _ in 0..entries {
                frame.put_slice(&[0x0a, 0x00]);
            }
            let crc = crc32fast::hash(&frame);
            frame.put_u32(crc);
            data = frame.to_vec();
        }
    }
    data
}

#[test]
fn decoders_allocate_in_proportion_to_their_input() {
    let codec = CohortCodec::new(WireLimits::default(), None).unwrap();
    let mut rng = StdRng::seed_from_u64(0xC0_4027);
    let mut worst = 0.0f64;
    for _ in 0..3000 {
        let data = input(&mut rng);
        let mut buf = BytesMut::from(&data[..]);
        let used = allocated_during(|| {
            while let Ok(Some(_)) = codec.decode_frame(&mut buf) {}
            let _ = codec.decode_beacon(&data);
        });
        assert!(
            used <= bound(data.len()),
            "decoding {} bytes allocated {used} bytes: {:02x?}",
            data.len(),
            &data[..data.len().min(32)]
        );
        worst = worst.max(used as f64 / (data.len().max(1)) as f64);
    }
    eprintln!("worst allocation ratio: {worst:.1} bytes per input byte");
}
