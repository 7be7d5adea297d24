//! In-process channel throughput: two `GroupChannel`s in one process on loopback TCP (no
//! membership), 10,000 messages of 1 KiB per iteration, in each send mode; the receiver's
//! listener counts them. `cargo bench -p cohort-channel --bench channel`.

// criterion_group! generates undocumented functions.
#![allow(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cohort_channel::{ChannelListener, ChannelMessage, GroupChannel, ListenerError};
use cohort_net::TokioNet;
use cohort_transport::TransportConfig;
use cohort_wire::{SendOptions, Services};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const BATCH: u64 = 10_000;

struct Count {
    seen: AtomicU64,
    notify: tokio::sync::Notify,
}

impl ChannelListener for Count {
    fn message_received(&self, _msg: &ChannelMessage) -> Result<(), ListenerError> {
        if (self.seen.fetch_add(1, Ordering::Relaxed) + 1) % BATCH == 0 {
            self.notify.notify_one();
        }
        Ok(())
    }
}

fn channel(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let count = Arc::new(Count {
        seen: AtomicU64::new(0),
        notify: tokio::sync::Notify::new(),
    });
    let transport = || TransportConfig {
        port: 0,
        ..TransportConfig::default()
    };
    let (tx, rx) = rt.block_on(async {
        let rx = GroupChannel::builder()
            .transport(transport())
            .services(Services::SND_RX | Services::SND_TX)
            .listener(count.clone())
            .start_with(TokioNet, &mut rand::thread_rng())
            .await
            .expect("receiver");
        let tx = GroupChannel::builder()
            .transport(transport())
            .services(Services::SND_RX | Services::SND_TX)
            .start_with(TokioNet, &mut rand::thread_rng())
            .await
            .expect("sender");
        (tx, rx)
    });
    let to = [rx.local().clone()];
    let payload = Bytes::from(vec![0x5A; 1024]);
    let mut g = c.benchmark_group("channel");
    g.throughput(Throughput::Elements(BATCH));
    g.measurement_time(Duration::from_secs(5));
    g.sample_size(10);
    for (name, options) in [
        ("async", SendOptions::ASYNCHRONOUS),
        ("ack", SendOptions::USE_ACK),
        (
            "syncack",
            SendOptions::USE_ACK | SendOptions::SYNCHRONIZED_ACK,
        ),
    ] {
        g.bench_function(format!("{name} 10k x 1 KiB"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let target = count.seen.load(Ordering::Relaxed) / BATCH * BATCH + BATCH;
                    let mut receipts = Vec::with_capacity(4096);
                    for _ in 0..BATCH {
                        receipts.push(tx.send(&to, payload.clone(), options).await.expect("send"));
                        if receipts.len() == 4096 {
                            for r in receipts.drain(..) {
                                assert!(r.await.is_ok());
                            }
                        }
                    }
                    for r in receipts {
                        assert!(r.await.is_ok());
                    }
                    while count.seen.load(Ordering::Relaxed) < target {
                        count.notify.notified().await;
                    }
                });
            });
        });
    }
    g.finish();
    rt.block_on(async {
        tx.stop().await;
        rx.stop().await;
    });
}

criterion_group!(benches, channel);
criterion_main!(benches);
