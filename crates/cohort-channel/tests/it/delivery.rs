//! Where listeners run: on the delivery thread, or on the channel's own task when every
//! listener says it never blocks (`ChannelListener::may_block`), and never out of order when
//! delivery moves between the two.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cohort_channel::{ChannelListener, ChannelMessage, ListenerError};
use cohort_wire::SendOptions;

use crate::support::*;

const SYNC_ACK: SendOptions = SendOptions::USE_ACK.union(SendOptions::SYNCHRONIZED_ACK);

/// Records each message's number and whether it ran on the delivery thread; says it may
/// block as `blocking` says (the test changes it); takes `pause` per message; panics on a
/// payload of "panic".
struct Where {
    blocking: AtomicBool,
    pause: Duration,
    seen: Mutex<Vec<(u32, bool)>>,
}

impl Where {
    fn new(blocking: bool, pause: Duration) -> Arc<Self> {
        Arc::new(Self {
            blocking: AtomicBool::new(blocking),
            pause,
            seen: Mutex::new(Vec::new()),
        })
    }

    fn seen(&self) -> Vec<(u32, bool)> {
        self.seen.lock().unwrap().clone()
    }
}

impl ChannelListener for Where {
    fn message_received(&self, msg: &ChannelMessage) -> Result<(), ListenerError> {
        if &msg.payload[..] == b"panic" {
            panic!("asked to");
        }
        let n = u32::from_be_bytes(msg.payload[..4].try_into()?);
        let on_thread = std::thread::current().name() == Some("cohort-delivery");
        if !self.pause.is_zero() {
            // A listener at work, not a wait for a condition.
            std::thread::sleep(self.pause);
        }
        self.seen.lock().unwrap().push((n, on_thread));
        Ok(())
    }

    fn may_block(&self) -> bool {
        self.blocking.load(Ordering::SeqCst)
    }
}

fn numbered(range: std::ops::Range<u32>) -> Vec<Bytes> {
    range
        .map(|i| Bytes::copy_from_slice(&i.to_be_bytes()))
        .collect()
}

/// Starts `b` and a sender, sends two SYNC_ACK batches of 50 to `b`, and checks that all of
/// them reached `listener`, each on the delivery thread.
async fn assert_delivered_on_the_thread(b: cohort_channel::ChannelBuilder, listener: &Where) {
    let b = start(b).await;
    let a = start(builder()).await;
    for round in 0..2u32 {
        let o = a
            .send_many(
                &[b.local().clone()],
                numbered(round * 50..round * 50 + 50),
                SYNC_ACK,
            )
            .await
            .unwrap()
            .await;
        assert!(o.is_ok(), "{o:?}");
    }
    let seen = listener.seen();
    assert_eq!(seen.len(), 100);
    assert!(seen.iter().all(|s| s.1), "all on the delivery thread");
    assert_eq!(b.stats().delivered_inline, 0);
    a.stop().await;
    b.stop().await;
}

/// Every listener says it never blocks: the listeners run on the channel's task, a
/// SYNCHRONIZED_ACK still waits for them, and a panic is still a FAIL_ACK after which
/// delivery goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_that_never_block_run_on_the_channel_task() {
    let listener = Where::new(false, Duration::ZERO);
    let b = start(builder().listener(listener.clone())).await;
    let a = start(builder()).await;
    let to = [b.local().clone()];
    let o = a
        .send_many(&to, numbered(0..200), SYNC_ACK)
        .await
        .unwrap()
        .await;
    assert!(o.is_ok(), "{o:?}");
    // SYNCHRONIZED_ACK: every listener ran before the outcome.
    let seen = listener.seen();
    assert_eq!(
        seen.iter().map(|s| s.0).collect::<Vec<_>>(),
        (0..200).collect::<Vec<_>>()
    );
    assert!(seen.iter().all(|s| !s.1), "none on the delivery thread");
    let o = a
        .send(&to, Bytes::from_static(b"panic"), SYNC_ACK)
        .await
        .unwrap()
        .await;
    assert_fail_ack(&o, "panicked");
    let o = a
        .send_many(&to, numbered(200..210), SYNC_ACK)
        .await
        .unwrap()
        .await;
    assert!(o.is_ok(), "delivery goes on after a panic: {o:?}");
    let stats = b.stats();
    assert_eq!(stats.delivered, 211);
    assert_eq!(stats.delivered_inline, 211);
    assert_eq!(stats.listener_errors, 1);
    a.stop().await;
    b.stop().await;
}

/// One listener that may block (the default) keeps every listener on the delivery thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_listener_that_may_block_keeps_delivery_on_the_thread() {
    let listener = Where::new(false, Duration::ZERO);
    let b = builder().listener(listener.clone()).listener(collector());
    assert_delivered_on_the_thread(b, &listener).await;
}

/// Delivery moves from the thread to the channel's task only once the thread has delivered
/// everything handed to it: messages that arrive while it still works go to it as well, and
/// nothing overtakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_leaves_the_thread_only_once_it_is_idle_and_keeps_order() {
    let listener = Where::new(true, Duration::from_millis(2));
    let b = start(builder().listener(listener.clone())).await;
    let a = start(builder()).await;
    let to = [b.local().clone()];
    a.send_many(&to, numbered(0..300), SendOptions::ASYNCHRONOUS)
        .await
        .unwrap();
    // The thread has started on the first batch (about 600 ms of work): the listener now
    // says it never blocks, and more messages arrive while the thread still works.
    wait_for("the first message", Duration::from_secs(10), || {
        !listener.seen().is_empty()
    })
    .await;
    listener.blocking.store(false, Ordering::SeqCst);
    a.send_many(&to, numbered(300..600), SendOptions::ASYNCHRONOUS)
        .await
        .unwrap();
    wait_for("600 messages", Duration::from_secs(20), || {
        listener.seen().len() == 600
    })
    .await;
    // The thread gives its room back just after its last listener call: one message at a
    // time until one is delivered on the channel's task.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut next = 600;
    loop {
        a.send_many(&to, numbered(next..next + 1), SendOptions::ASYNCHRONOUS)
            .await
            .unwrap();
        next += 1;
        wait_for("the probe", Duration::from_secs(20), || {
            listener.seen().len() == next as usize
        })
        .await;
        if listener.seen().last().is_some_and(|s| !s.1) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "delivery stayed on the thread"
        );
    }
    // From then on, delivery is on the channel's task.
    a.send_many(&to, numbered(next..next + 100), SendOptions::ASYNCHRONOUS)
        .await
        .unwrap();
    let end = next + 100;
    wait_for("every message", Duration::from_secs(20), || {
        listener.seen().len() == end as usize
    })
    .await;
    let seen = listener.seen();
    assert_eq!(
        seen.iter().map(|s| s.0).collect::<Vec<_>>(),
        (0..end).collect::<Vec<_>>(),
        "in order across the move"
    );
    assert!(
        seen[..300].iter().all(|s| s.1),
        "the first batch on the thread"
    );
    assert!(
        seen[next as usize..].iter().all(|s| !s.1),
        "the last batch on the task"
    );
    let inline = b.stats().delivered_inline;
    assert!(inline >= 101, "{inline}");
    a.stop().await;
    b.stop().await;
}

/// A cluster listener is never asked whether it blocks: a channel with one delivers on its
/// thread, whatever its channel listeners say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_listener_keeps_delivery_on_the_thread() {
    struct Audit;
    impl cohort_channel::ClusterListener for Audit {}
    let listener = Where::new(false, Duration::ZERO);
    let b = builder()
        .listener(listener.clone())
        .cluster_listener(Arc::new(Audit));
    assert_delivered_on_the_thread(b, &listener).await;
}

/// A listener whose `may_block` panics is taken to block: the channel's task survives, and
/// delivery goes on, on the thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_may_block_that_panics_is_taken_to_block() {
    struct Odd(Arc<Where>);
    impl ChannelListener for Odd {
        fn message_received(&self, msg: &ChannelMessage) -> Result<(), ListenerError> {
            self.0.message_received(msg)
        }
        fn may_block(&self) -> bool {
            panic!("cannot say")
        }
    }
    let listener = Where::new(false, Duration::ZERO);
    let b = builder().listener(Arc::new(Odd(listener.clone())));
    assert_delivered_on_the_thread(b, &listener).await;
}
