//! A slow receiver pushes back on ASYNCHRONOUS senders; memory stays bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cohort_channel::{ChannelConfig, ChannelListener, ChannelMessage, ListenerError};
use cohort_transport::TransportConfig;
use cohort_wire::SendOptions;

use crate::support::*;

/// 20 ms per message until released.
#[derive(Default)]
struct Slow {
    fast: AtomicBool,
    seen: AtomicUsize,
    last: AtomicUsize,
    disorder: AtomicBool,
}

impl ChannelListener for Slow {
    fn message_received(&self, msg: &ChannelMessage) -> Result<(), ListenerError> {
        if !self.fast.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let n = usize::try_from(u32::from_be_bytes(msg.payload[..4].try_into().unwrap())).unwrap();
        if n != self.seen.load(Ordering::SeqCst) {
            self.disorder.store(true, Ordering::SeqCst);
        }
        self.last.store(n, Ordering::SeqCst);
        self.seen.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_makes_async_sends_wait_with_bounded_memory() {
    const N: usize = 3000;
    const SIZE: usize = 4096;
    let slow = Arc::new(Slow::default());
    let small_buffers = TransportConfig {
        inbound_queue: 8,
        rx_buf_size: 4096,
        ..transport()
    };
    let b = start(
        builder()
            .transport(small_buffers.clone())
            .config(ChannelConfig {
                delivery_queue: 8,
                ..ChannelConfig::default()
            })
            .listener(slow.clone()),
    )
    .await;
    let queue = ChannelConfig {
        async_queue_messages: 100,
        async_queue_bytes: 256 * 1024,
        ..ChannelConfig::default()
    };
    let a = start(builder().transport(small_buffers).config(queue.clone())).await;
    let to = [b.local().clone()];
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = tokio::spawn({
        let (a, sent) = (a.clone(), sent.clone());
        async move {
            for i in 0..N {
                let mut p = vec![0u8; SIZE];
                p[..4].copy_from_slice(&u32::try_from(i).unwrap().to_be_bytes());
                let r = a
                    .send(&to, Bytes::from(p), SendOptions::ASYNCHRONOUS)
                    .await
                    .unwrap();
                assert!(r.await.queued);
                sent.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    // The sender stalls well short of N while the receiver crawls.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stalled_at = sent.load(Ordering::SeqCst);
    assert!(stalled_at < N, "the sender was never held back");
    let stats = a.stats();
    assert!(
        stats.async_queued <= queue.async_queue_messages,
        "{stats:?}"
    );
    assert!(
        stats.async_queued_bytes <= queue.async_queue_bytes,
        "{stats:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still = sent.load(Ordering::SeqCst);
    assert!(
        still - stalled_at < 100,
        "the sender keeps pace with the receiver, not beyond"
    );
    // Release the receiver: everything arrives, in order.
    slow.fast.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(60), sender)
        .await
        .unwrap()
        .unwrap();
    wait_for("every message", Duration::from_secs(60), || {
        slow.seen.load(Ordering::SeqCst) == N
    })
    .await;
    assert!(
        !slow.disorder.load(Ordering::SeqCst),
        "per-sender order kept"
    );
    a.stop().await;
    b.stop().await;
}

/// An ASYNCHRONOUS queue takes messages larger than all of it: each waits for the queue to
/// empty, then takes the whole budget. Large and small messages arrive whole, in the order
/// sent: with a 1 MiB queue (every large message larger than all of it), and with the default
/// queue (past 1 MiB queued the sends yield as they go).
#[tokio::test]
async fn async_messages_larger_than_the_whole_queue_pass_in_order() {
    const MIB: usize = 1024 * 1024;
    for queue in [MIB, ChannelConfig::default().async_queue_bytes] {
        let got = collector();
        let b = start(builder().listener(got.clone())).await;
        let a = start(builder().config(ChannelConfig {
            async_queue_bytes: queue,
            ..ChannelConfig::default()
        }))
        .await;
        let to = [b.local().clone()];
        let sizes = [3 * MIB, 16, MIB + 1, 64 * 1024, 2 * MIB, 8];
        for (i, &size) in sizes.iter().enumerate() {
            let payload = vec![u8::try_from(i).unwrap(); size];
            let send = a.send(&to, Bytes::from(payload), SendOptions::ASYNCHRONOUS);
            let r = tokio::time::timeout(Duration::from_secs(10), send)
                .await
                .expect("admitted once the queue emptied")
                .unwrap();
            assert!(r.await.queued);
        }
        wait_for("every message", Duration::from_secs(30), || {
            got.len() == sizes.len()
        })
        .await;
        for (i, (p, &size)) in got.payloads().iter().zip(&sizes).enumerate() {
            assert_eq!(p.len(), size, "queue {queue}: message {i} whole");
            assert!(
                p.iter().all(|&x| usize::from(x) == i),
                "queue {queue}: message {i} in order"
            );
        }
        assert_eq!(a.stats().transport.send_failures, 0);
        a.stop().await;
        b.stop().await;
    }
}

/// While more than 1 MiB is queued, ASYNCHRONOUS sends let the runtime's other tasks run
/// (once per 64 KiB sent; on a one-thread runtime: the channel's task and the connections,
/// which then write what is queued while it is in cache); below that they return without a
/// yield. One thread: nothing else may run unless the send yields.
#[tokio::test(flavor = "current_thread")]
async fn a_send_into_a_deep_async_queue_yields_to_the_runtime() {
    let b = start(builder().listener(collector())).await;
    let a = start(builder()).await;
    let to = [b.local().clone()];
    let ran = Arc::new(AtomicBool::new(false));
    let mark = || {
        let ran = ran.clone();
        ran.store(false, Ordering::SeqCst);
        tokio::spawn(async move { ran.store(true, Ordering::SeqCst) })
    };
    // A batch below the mark: nothing else runs before `send_many` returns (its admission and
    // its command go through without waiting).
    let task = mark();
    let small: Vec<Bytes> = (0..4).map(|_| Bytes::from(vec![0u8; 1024])).collect();
    let r = a
        .send_many(&to, small, SendOptions::ASYNCHRONOUS)
        .await
        .unwrap();
    assert!(!ran.load(Ordering::SeqCst), "no yield below 1 MiB queued");
    task.await.unwrap();
    r.await;
    // A batch of 2 MiB: queued beyond the mark when the send returns, so it yielded first.
    let task = mark();
    let big: Vec<Bytes> = (0..32).map(|_| Bytes::from(vec![0u8; 64 * 1024])).collect();
    let r = a
        .send_many(&to, big, SendOptions::ASYNCHRONOUS)
        .await
        .unwrap();
    assert!(ran.load(Ordering::SeqCst), "the send yielded");
    task.await.unwrap();
    r.await;
    a.stop().await;
    b.stop().await;
}
