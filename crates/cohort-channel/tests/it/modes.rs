//! 100,000 messages in each mode: no loss, no duplicate, per-sender order.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use cohort_wire::SendOptions;

use crate::support::*;

const COUNT: u64 = 100_000;
const SIZE: usize = 128;

async fn run(options: SendOptions) {
    let sink = collector();
    let b = start(builder().listener(sink.clone())).await;
    let a = start(builder()).await;
    let to = [b.local().clone()];
    let mut receipts = Vec::new();
    for i in 0..COUNT {
        let mut p = BytesMut::with_capacity(SIZE);
        p.put_u64(i);
        p.resize(SIZE, 0xAB);
        let r = a.send(&to, p.freeze(), options).await.unwrap();
        receipts.push(r);
        // Keep the number of pending receipts reasonable without serialising the pipeline.
        if receipts.len() >= 10_000 {
            for r in receipts.drain(..) {
                let o = r.await;
                assert!(o.is_ok(), "{o:?}");
            }
        }
    }
    for r in receipts {
        let o = r.await;
        assert!(o.is_ok(), "{o:?}");
    }
    wait_for("every message", Duration::from_secs(60), || {
        sink.len() as u64 >= COUNT
    })
    .await;
    let got = sink.take();
    assert_eq!(got.len() as u64, COUNT, "no duplicates");
    for (i, (from, payload)) in got.iter().enumerate() {
        assert_eq!(*from, a.local().id);
        let n = u64::from_be_bytes(payload[..8].try_into().unwrap());
        assert_eq!(n, i as u64, "per-sender order");
        assert_eq!(payload.len(), SIZE);
    }
    let stats = a.stats().transport;
    assert_eq!(stats.send_failures, 0);
    // Coalescing: far fewer writes than frames.
    assert!(stats.writes < stats.frames_sent, "{stats:?}");
    if options.contains(SendOptions::USE_ACK) {
        assert_eq!(stats.acked, COUNT);
        assert!(
            stats.ack_frames_received < COUNT,
            "ACKs are batched: {stats:?}"
        );
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_delivers_everything_in_order() {
    run(SendOptions::ASYNCHRONOUS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_mode_delivers_everything_in_order() {
    run(SendOptions::USE_ACK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_ack_mode_delivers_everything_in_order() {
    run(SendOptions::USE_ACK | SendOptions::SYNCHRONIZED_ACK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_bytes_arrive_intact() {
    let sink = collector();
    let b = start(builder().listener(sink.clone())).await;
    let a = start(builder()).await;
    let big = Bytes::from(
        (0..300_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let o = a
        .send(&[b.local().clone()], big.clone(), SendOptions::USE_ACK)
        .await
        .unwrap()
        .await;
    assert!(o.is_ok(), "{o:?}");
    wait_for("the message", Duration::from_secs(10), || sink.len() == 1).await;
    assert_eq!(sink.messages()[0].1, big.to_vec());
}

#[cfg(feature = "tower")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tower_service_sends() {
    use tower_service::Service;
    let sink = collector();
    let b = start(builder().listener(sink.clone())).await;
    let a = start(builder()).await;
    let mut svc = a.clone().into_service();
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    let receipt = svc
        .call(cohort_channel::SendRequest {
            destinations: vec![b.local().clone()],
            payload: Bytes::from_static(b"via tower"),
            options: SendOptions::USE_ACK,
        })
        .await
        .unwrap();
    assert!(receipt.await.is_ok());
    wait_for("the message", Duration::from_secs(5), || sink.len() == 1).await;
    a.stop().await;
    b.stop().await;
}

/// `poll_ready` reserves the place in the ASYNCHRONOUS queue that the `call` uses: with a
/// queue of one message, a direct send made after `call` returned its future (and before the
/// future runs) finds the queue full, and the call still goes out. (When `call` gave the place
/// back and took a new one, the direct send won it and the call failed.)
#[cfg(feature = "tower")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_ready_reserves_the_place_call_uses() {
    use tower_service::Service;
    let sink = collector();
    let b = start(builder().listener(sink.clone())).await;
    let a = start(builder().config(cohort_channel::ChannelConfig {
        async_queue_messages: 1,
        async_full_policy: cohort_channel::AsyncFullPolicy::Reject,
        ..cohort_channel::ChannelConfig::default()
    }))
    .await;
    let mut svc = a.clone().into_service();
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    let call = svc.call(cohort_channel::SendRequest {
        destinations: vec![b.local().clone()],
        payload: Bytes::from_static(b"reserved"),
        options: SendOptions::ASYNCHRONOUS,
    });
    let direct = a
        .send(
            &[b.local().clone()],
            Bytes::from_static(b"direct"),
            SendOptions::ASYNCHRONOUS,
        )
        .await;
    assert!(
        matches!(direct, Err(cohort_channel::ChannelError::QueueFull { .. })),
        "the place was reserved: {direct:?}"
    );
    call.await.unwrap();
    wait_for("the message", Duration::from_secs(5), || sink.len() == 1).await;
    assert_eq!(sink.messages()[0].1, b"reserved");
    a.stop().await;
    b.stop().await;
}

/// A reserved place is not waited behind: a batch that needs every place of the queue waits
/// for the reserved one, and the tower call that holds it goes out (it once waited behind the
/// batch for its bytes, and neither moved).
#[cfg(feature = "tower")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserved_place_is_not_waited_behind() {
    use tower_service::Service;
    let sink = collector();
    let b = start(builder().listener(sink.clone())).await;
    let a = start(builder().config(cohort_channel::ChannelConfig {
        async_queue_messages: 4,
        ..cohort_channel::ChannelConfig::default()
    }))
    .await;
    let mut svc = a.clone().into_service();
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    let to = vec![b.local().clone()];
    let payloads = (0..4).map(|i| Bytes::from(vec![i; 8])).collect();
    let mut batch = Box::pin(a.send_many(&to, payloads, SendOptions::ASYNCHRONOUS));
    // Polled once: the batch has queued for the place the service holds.
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(batch.as_mut().poll(cx))).await;
    assert!(first.is_pending(), "the batch waits for the reserved place");
    tokio::time::timeout(
        Duration::from_secs(5),
        svc.call(cohort_channel::SendRequest {
            destinations: to.clone(),
            payload: Bytes::from_static(b"reserved"),
            options: SendOptions::ASYNCHRONOUS,
        }),
    )
    .await
    .expect("the reserved call goes out")
    .unwrap();
    tokio::time::timeout(Duration::from_secs(5), batch)
        .await
        .expect("the batch goes out once the reserved message has")
        .unwrap();
    wait_for("every message", Duration::from_secs(5), || sink.len() == 5).await;
    a.stop().await;
    b.stop().await;
}

/// A batch: one receipt for every message and destination, delivered in order, in every mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_many_delivers_a_batch_in_order_with_one_receipt() {
    let sink = collector();
    let b = start(builder().listener(sink.clone())).await;
    let a = start(builder()).await;
    let to = [b.local().clone()];
    let batch = |from: u32| -> Vec<Bytes> {
        (from..from + 500)
            .map(|i| Bytes::from(i.to_be_bytes().to_vec()))
            .collect()
    };
    let outcome = a
        .send_many(&to, batch(0), SendOptions::USE_ACK)
        .await
        .unwrap()
        .await;
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(outcome.results.len(), 500);
    let outcome = a
        .send_many(&to, batch(500), SendOptions::ASYNCHRONOUS)
        .await
        .unwrap()
        .await;
    assert!(outcome.queued);
    let outcome = a
        .send_many(
            &to,
            batch(1000),
            SendOptions::USE_ACK | SendOptions::SYNCHRONIZED_ACK,
        )
        .await
        .unwrap()
        .await;
    assert!(outcome.is_ok(), "{outcome:?}");
    wait_for("all 1500", Duration::from_secs(20), || sink.len() == 1500).await;
    let got: Vec<u32> = sink
        .payloads()
        .iter()
        .map(|p| u32::from_be_bytes(p[..4].try_into().unwrap()))
        .collect();
    assert_eq!(got, (0..1500).collect::<Vec<_>>(), "in order, once each");
    assert!(matches!(
        a.send_many(&to, Vec::new(), SendOptions::USE_ACK).await,
        Err(cohort_channel::ChannelError::BatchSize { len: 0, .. })
    ));
    let huge = vec![Bytes::from_static(b"x"); cohort_channel::MAX_BATCH + 1];
    assert!(matches!(
        a.send_many(&to, huge, SendOptions::USE_ACK).await,
        Err(cohort_channel::ChannelError::BatchSize { .. })
    ));
    a.stop().await;
    b.stop().await;
}
