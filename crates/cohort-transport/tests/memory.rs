//! Memory under attack: connections that declare huge frames cost the receiver a small fixed
//! amount before they authenticate, and a bounded amount (`max_inbound_bytes`) after. Runs in
//! its own test binary because it measures every allocation of the process.

#![allow(clippy::print_stderr, clippy::cast_possible_truncation)] // figures for the reader; small constants

use std::alloc::System;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cohort_net::TokioNet;
use cohort_transport::{Transport, TransportConfig, TransportHandle};
use cohort_wire::{
    ClusterKey, CohortCodec, DataFrame, DataHeader, FRAME_MAGIC, Frame, FrameCodec, KeyRing,
    Member, MemberId, PROTOCOL_VERSION, SendOptions, WireLimits,
};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const MIB: usize = 1 << 20;
const ATTACKERS: usize = 24;
/// What the attackers stream (static, so that their own buffers are not counted).
static ZEROS: [u8; 256 * 1024] = [0; 256 * 1024];

/// Bytes allocated and not yet freed, now (stats_alloc counts growth by realloc in
/// `bytes_allocated` and shrinking in `bytes_deallocated`).
fn live() -> isize {
    let s = GLOBAL.stats();
    s.bytes_allocated as isize - s.bytes_deallocated as isize
}

/// Samples `live()` until told to stop; returns the highest value seen above `base`.
fn sampler(stop: Arc<AtomicBool>, base: isize) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut peak = 0isize;
        while !stop.load(Ordering::Relaxed) {
            peak = peak.max(live() - base);
            std::thread::sleep(Duration::from_micros(200));
        }
        usize::try_from(peak).unwrap_or(0)
    })
}

fn keyed() -> CohortCodec {
    let ring = KeyRing::new(vec![ClusterKey::new(vec![7u8; 32]).unwrap()]).unwrap();
    CohortCodec::new(WireLimits::default(), Some(ring)).unwrap()
}

fn plain() -> CohortCodec {
    CohortCodec::new(WireLimits::default(), None).unwrap()
}

async fn receiver(
    config: TransportConfig,
    codec: CohortCodec,
) -> (TransportHandle<TokioNet>, SocketAddr) {
    let bound = Transport::bind(config, TokioNet, true).await.unwrap();
    let addr = bound.local_addr().unwrap();
    let member = Member::new(MemberId::from_bytes([9; 16]), addr.ip(), addr.port());
    let (handle, mut inbound) = bound.start(member, codec);
    // Consume whatever arrives, as a channel would.
    tokio::spawn(async move { while inbound.recv().await.is_some() {} });
    (handle, addr)
}

/// A data frame prefix declaring a 32 MiB payload, with a valid header from `sender`.
fn big_frame_start(codec: &CohortCodec, sender: MemberId) -> Vec<u8> {
    let frame = Frame::Data(DataFrame {
        header: DataHeader {
            msg_id: 1,
            options: SendOptions::NONE,
            sender,
            ..DataHeader::default()
        },
        payload: Bytes::new(),
    });
    let mut out = BytesMut::new();
    codec.encode_frame(&frame, &mut out).unwrap();
    let header_len = u32::from_be_bytes([out[8], out[9], out[10], out[11]]) as usize;
    let mut start = out[..16 + header_len].to_vec();
    start[12..16].copy_from_slice(&(32 * MIB as u32 - 64).to_be_bytes());
    start
}

/// Connects, sends `preamble`, then streams zeros until `limit` bytes or the receiver closes.
/// Returns the bytes written.
async fn attack(addr: SocketAddr, preamble: Vec<u8>, limit: usize, written: Arc<AtomicUsize>) {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return;
    };
    if s.write_all(&preamble).await.is_err() {
        return;
    }
    let mut sent = 0;
    while sent < limit {
        match tokio::time::timeout(Duration::from_secs(2), s.write_all(&ZEROS)).await {
            Ok(Ok(())) => sent += ZEROS.len(),
            _ => break,
        }
    }
    written.fetch_add(sent, Ordering::Relaxed);
}

async fn run_attack(addr: SocketAddr, preamble: &[u8], limit: usize) -> (usize, usize) {
    tokio::time::sleep(Duration::from_millis(50)).await;
    let base = live();
    let stop = Arc::new(AtomicBool::new(false));
    let peak = sampler(stop.clone(), base);
    let written = Arc::new(AtomicUsize::new(0));
    let attacks: Vec<_> = (0..ATTACKERS)
        .map(|_| tokio::spawn(attack(addr, preamble.to_vec(), limit, written.clone())))
        .collect();
    for a in attacks {
        let _ = a.await;
    }
    stop.store(true, Ordering::Relaxed);
    (peak.join().unwrap(), written.load(Ordering::Relaxed))
}

/// Both attacks, one after the other (a test alone in the process, so that only its own
/// allocations are counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_under_frame_prefix_attacks() {
    unauthenticated_connections_cost_a_small_fixed_amount().await;
    authenticated_connections_are_bounded_by_the_inbound_budget().await;
}

async fn unauthenticated_connections_cost_a_small_fixed_amount() {
    let config = TransportConfig {
        port: 0,
        ..TransportConfig::default()
    };
    let codec = keyed();
    let (handle, addr) = receiver(config, codec).await;
    // No hello (it cannot be signed without the key): a data prefix declaring 32 MiB.
    let mut preamble = FRAME_MAGIC.to_vec();
    preamble.extend_from_slice(&[PROTOCOL_VERSION, 1, 1, 0]);
    preamble.extend_from_slice(&64u32.to_be_bytes());
    preamble.extend_from_slice(&(32 * MIB as u32).to_be_bytes());
    let (peak, written) = run_attack(addr, &preamble, 8 * MIB).await;
    eprintln!(
        "keyed, {ATTACKERS} connections with 32 MiB prefixes: peak {} KiB allocated, {} KiB \
         written by the attackers",
        peak / 1024,
        written / 1024
    );
    assert!(
        peak < 2 * MIB,
        "{peak} bytes allocated for unauthenticated connections"
    );
    let stats = handle.stats();
    assert!(stats.protocol_violations + stats.malformed_total() >= ATTACKERS as u64 / 2);
    handle.stop();
}

async fn authenticated_connections_are_bounded_by_the_inbound_budget() {
    let budget = 40 * MIB;
    let config = TransportConfig {
        port: 0,
        max_inbound_bytes: budget,
        frame_timeout: Duration::from_secs(1),
        ..TransportConfig::default()
    };
    let codec = plain();
    let (handle, addr) = receiver(config, codec.clone()).await;
    // Without a key an attacker can say hello; then a valid header declaring 32 MiB.
    let attacker = Member::new(MemberId::from_bytes([3; 16]), addr.ip(), 1);
    let mut preamble = BytesMut::new();
    codec
        .encode_frame(
            &Frame::Hello(Box::new(cohort_wire::Hello::new(attacker.clone()))),
            &mut preamble,
        )
        .unwrap();
    preamble.extend_from_slice(&big_frame_start(&codec, attacker.id));
    let (peak, written) = run_attack(addr, &preamble, 16 * MIB).await;
    eprintln!(
        "unkeyed, {ATTACKERS} hello'd connections each streaming 16 MiB of a 32 MiB frame: peak \
         {} MiB allocated (budget {} MiB), {} MiB written",
        peak / MIB,
        budget / MIB,
        written / MIB
    );
    // The budget, plus a read buffer per connection, plus slack for the runtime.
    let bound = budget + ATTACKERS * 64 * 1024 + 8 * MIB;
    assert!(peak < bound, "{peak} bytes allocated, bound {bound}");
    assert!(handle.stats().inbound_budget_waits > 0, "reading paused");
    handle.stop();
}
