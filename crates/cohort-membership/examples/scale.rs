//! Scale simulation: N membership cores (default 1,000) on an in-memory multicast network in
//! virtual time, started over one second. Reports how long after the last start every node
//! sees every other, and the beacon bytes each node sends and receives per second in steady
//! state. Delivery takes 1 to 5 ms (seeded), and every datagram is decoded by every receiver,
//! HMAC included when `--keyed` is given.
//!
//! Run with `cargo run --release -p cohort-membership --example scale -- [N] [--keyed]`.
#![allow(
    clippy::print_stdout,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss
)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort_membership::MembershipConfig;
use cohort_membership::core::MembershipCore;
use cohort_wire::{ClusterKey, KeyRing, Member, MemberId};
use rand::{Rng, SeedableRng, rngs::StdRng};

const WALL0: u64 = 1_700_000_000_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(1000);
    let keyed = args.iter().any(|a| a == "--keyed");
    let cfg = MembershipConfig {
        keys: keyed.then(|| {
            KeyRing::new(vec![ClusterKey::new(*b"scale test cluster key").unwrap()]).unwrap()
        }),
        max_members: std::num::NonZeroUsize::new(n + 16).unwrap(),
        max_pending_events: std::num::NonZeroUsize::new(4 * n + 16).unwrap(),
        ..MembershipConfig::default()
    };
    let mut rng = StdRng::seed_from_u64(1000);
    let t0 = Instant::now();
    let ms = |d: u64| t0 + Duration::from_millis(d);
    // Start times spread over the first second.
    let starts: Vec<u64> = (0..n).map(|i| (i as u64 * 1000) / n as u64).collect();
    let mut cores: Vec<Option<MembershipCore>> = (0..n).map(|_| None).collect();
    // In-flight datagrams: (arrival ms, seq, from, bytes).
    let mut flight: BinaryHeap<Reverse<(u64, u64, usize, Bytes)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let (mut sent_bytes, mut recv_bytes) = (vec![0u64; n], vec![0u64; n]);
    let steady_from = 3_000u64;
    let end = 8_000u64;
    let mut converged_at = None;
    let wall_start = Instant::now();
    for now_ms in 0..=end {
        let now = ms(now_ms);
        for (i, start) in starts.iter().enumerate() {
            if *start == now_ms {
                let mut m = Member::new(
                    MemberId::random(&mut rng),
                    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i as u32)),
                    4000,
                );
                m.cluster = "cohort".into();
                m.name = format!("n{i}");
                m.start_time_ms = WALL0 + now_ms;
                let mut core =
                    MembershipCore::new(cfg.clone(), m, true, vec![], now, WALL0 + now_ms)
                        .expect("valid config");
                core.start(now);
                cores[i] = Some(core);
            }
        }
        while flight.peek().is_some_and(|Reverse((t, ..))| *t <= now_ms) {
            let Reverse((_, _, from, bytes)) = flight.pop().unwrap();
            let addr = SocketAddr::from((Ipv4Addr::from(0x0a00_0000 + from as u32), 45564));
            for (i, core) in cores.iter_mut().enumerate() {
                if let Some(core) = core {
                    core.handle_datagram(now, addr, &bytes);
                    if now_ms >= steady_from && i != from {
                        recv_bytes[i] += bytes.len() as u64;
                    }
                }
            }
        }
        for (i, slot) in cores.iter_mut().enumerate() {
            let Some(core) = slot else { continue };
            if core.poll_timeout().is_some_and(|t| t <= now) {
                core.handle_timeout(now);
            }
            while let Some(t) = core.poll_transmit() {
                if now_ms >= steady_from {
                    sent_bytes[i] += t.bytes.len() as u64;
                }
                seq += 1;
                flight.push(Reverse((now_ms + rng.gen_range(1..=5), seq, i, t.bytes)));
            }
            while core.poll_event().is_some() {}
        }
        if converged_at.is_none()
            && now_ms >= 999
            && cores
                .iter()
                .all(|c| c.as_ref().is_some_and(|c| c.len() == n - 1))
        {
            converged_at = Some(now_ms);
        }
    }
    let steady_secs = (end - steady_from) as f64 / 1000.0;
    let avg = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len() as f64 / steady_secs;
    let last_start = *starts.last().unwrap();
    println!(
        "members={n} keyed={keyed} last_start_ms={last_start} converged_ms={} \
         converged_after_last_start_ms={} sent_bytes_per_node_per_s={:.0} \
         received_bytes_per_node_per_s={:.0} wall_s={:.1}",
        converged_at.map_or("never".into(), |t| t.to_string()),
        converged_at.map_or("never".into(), |t| (t - last_start).to_string()),
        avg(&sent_bytes),
        avg(&recv_bytes),
        wall_start.elapsed().as_secs_f64()
    );
}
