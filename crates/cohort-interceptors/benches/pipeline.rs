//! One message through a full interceptor stack, sender pipeline then receiver pipeline (no
//! sockets): throughput, order, compression, encryption, fragmentation, ping and failure
//! detector. `cargo bench -p cohort-interceptors --bench pipeline`.

// criterion_group! generates undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use bytes::Bytes;
use cohort_channel::{ChannelConfig, Inbound, Outbound, Output, Pipeline, Ticket};
use cohort_interceptors::{InterceptorConfig, build_stack};
use cohort_membership::MembershipEvent;
use cohort_wire::{Member, MemberId, SendOptions};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn member(n: u8) -> Member {
    let mut m = Member::new(
        MemberId::from_bytes([n; 16]),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        4000 + u16::from(n),
    );
    m.start_time_ms = u64::from(n);
    m
}

fn stack() -> Vec<InterceptorConfig> {
    let key = "11".repeat(32);
    serde_json::from_value(serde_json::json!([
        {"type": "throughput"},
        {"type": "order"},
        {"type": "compression", "algorithm": "zstd", "min_size": 256},
        {"type": "encryption", "keys": [{"id": 1, "key": key}]},
        {"type": "fragmentation"},
        {"type": "tcp_ping"},
        {"type": "tcp_failure_detector"},
    ]))
    .expect("stack")
}

fn pipeline(local: u8, peer: &Member, now: Instant) -> Pipeline {
    let built = build_stack(
        &stack(),
        &mut ChannelConfig::default(),
        &mut rand::thread_rng(),
    )
    .expect("stack");
    let mut p = Pipeline::new(
        built.interceptors,
        1 << 16,
        Arc::new(AtomicU64::new(1000 * u64::from(local))),
    );
    p.set_local(member(local));
    p.set_wall_clock_ms(1_700_000_000_000);
    p.start(now);
    p.member(now, MembershipEvent::MemberAdded(peer.clone()));
    // The detector verifies a new member with a probe before passing it up.
    while let Some(o) = p.poll_output() {
        if let Output::Probe {
            interceptor,
            member,
            ..
        } = o
        {
            p.probe_result(now, interceptor, *member, Ok(()));
        }
    }
    while p.poll_output().is_some() {}
    p
}

fn arrive(out: &Outbound, from: &Member) -> Inbound {
    Inbound {
        from: from.id,
        member: Some(Arc::new(from.clone())),
        peer: SocketAddr::new(from.addr, 50_000),
        msg_id: out.msg_id,
        options: out.options,
        seq: out.seq,
        timestamp_ms: 0,
        extensions: out.extensions.clone(),
        payload: out.payload.clone(),
        ack: None,
    }
}

fn full_stack(c: &mut Criterion) {
    let now = Instant::now();
    let (a, b) = (member(1), member(2));
    let mut g = c.benchmark_group("pipeline");
    for size in [64usize, 1024, 65536] {
        let mut tx = pipeline(1, &b, now);
        let mut rx = pipeline(2, &a, now);
        // Compressible text-like payload, ordered (0x200) and acknowledged.
        let payload = Bytes::from(
            b"cohort pipeline benchmark "
                .iter()
                .copied()
                .cycle()
                .take(size)
                .collect::<Vec<u8>>(),
        );
        let options = SendOptions::USE_ACK | SendOptions::from_bits(0x200);
        let to: Arc<[Member]> = Arc::from(vec![b.clone()]);
        let mut id = 0u64;
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(
            format!("send + receive {size} B through 7 interceptors"),
            |bench| {
                bench.iter(|| {
                    id += 1;
                    tx.send(
                        now,
                        Outbound {
                            msg_id: id,
                            destinations: to.clone(),
                            options,
                            seq: 0,
                            extensions: Vec::new(),
                            payload: payload.clone(),
                            ticket: Ticket(id),
                        },
                    );
                    let mut delivered = 0;
                    while let Some(o) = tx.poll_output() {
                        if let Output::Transmit(m) = o {
                            rx.receive(now, arrive(&m, &a));
                        }
                    }
                    while let Some(o) = rx.poll_output() {
                        if let Output::Deliver(m) = o {
                            delivered += m.payload.len();
                        }
                    }
                    assert_eq!(delivered, size, "the message came through whole");
                    black_box(delivered);
                });
            },
        );
    }
    g.finish();
}

criterion_group!(benches, full_stack);
criterion_main!(benches);
