//! SYNCHRONIZED_ACK semantics, FAIL_ACK, and receivers that die or hang.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort_channel::{ChannelListener, ChannelMessage, Delivered, ListenerError, SendError};
use cohort_transport::TransportConfig;
use cohort_wire::SendOptions;

use crate::support::*;

const SYNC_ACK: SendOptions = SendOptions::USE_ACK.union(SendOptions::SYNCHRONIZED_ACK);

/// Takes 100 ms (3 s for "fail slowly"), then records that it ran; fails payloads that
/// start with "fail".
#[derive(Default)]
struct Slow {
    ran: AtomicBool,
}

impl ChannelListener for Slow {
    fn message_received(&self, msg: &ChannelMessage) -> Result<(), ListenerError> {
        let takes = if &msg.payload[..] == b"fail slowly" {
            Duration::from_secs(3)
        } else {
            Duration::from_millis(100)
        };
        std::thread::sleep(takes);
        self.ran.store(true, Ordering::SeqCst);
        if msg.payload.starts_with(b"fail") {
            return Err("the listener refused it".into());
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_ack_returns_after_the_listener_ran_and_fail_ack_when_it_failed() {
    let slow = Arc::new(Slow::default());
    let b = start(builder().listener(slow.clone())).await;
    let a = start(builder()).await;
    let to = [b.local().clone()];

    let o = a
        .send(&to, Bytes::from_static(b"ok"), SYNC_ACK)
        .await
        .unwrap()
        .await;
    assert!(
        slow.ran.load(Ordering::SeqCst),
        "the ACK came after the listener ran"
    );
    assert_eq!(o.results[0].result, Ok(Delivered::Acked));

    slow.ran.store(false, Ordering::SeqCst);
    let o = a
        .send(&to, Bytes::from_static(b"fail"), SYNC_ACK)
        .await
        .unwrap()
        .await;
    assert!(slow.ran.load(Ordering::SeqCst));
    match &o.results[0].result {
        Err(e @ SendError::FailAck { reason, .. }) => {
            assert!(reason.contains("refused"), "{reason}");
            assert!(e.peer_is_alive());
        }
        other => panic!("expected FAIL_ACK, got {other:?}"),
    }

    // USE_ACK alone acknowledges on receipt: it does not wait for the 3 s listener, and a
    // listener failure is not reported.
    slow.ran.store(false, Ordering::SeqCst);
    let o = a
        .send(
            &to,
            Bytes::from_static(b"fail slowly"),
            SendOptions::USE_ACK,
        )
        .await
        .unwrap()
        .await;
    assert_eq!(o.results[0].result, Ok(Delivered::Acked));
    assert!(
        !slow.ran.load(Ordering::SeqCst),
        "acknowledged before processing"
    );
    a.stop().await;
    b.stop().await;
}

/// Never returns until released (a hung application), at most 20 s; the third field says a
/// message reached it.
#[derive(Default)]
struct Stuck(std::sync::Mutex<bool>, std::sync::Condvar, AtomicBool);

impl Stuck {
    fn release(&self) {
        *self.0.lock().unwrap() = true;
        self.1.notify_all();
    }
}

impl ChannelListener for Stuck {
    fn message_received(&self, _: &ChannelMessage) -> Result<(), ListenerError> {
        self.2.store(true, Ordering::SeqCst);
        let released = self.0.lock().unwrap();
        let _ = self
            .1
            .wait_timeout_while(released, Duration::from_secs(20), |r| !*r)
            .unwrap();
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_receiver_fails_pending_acked_sends_quickly() {
    let release = Arc::new(Stuck::default());
    let b = start(builder().listener(release.clone())).await;
    // A send timeout far beyond the bound below: the sends fail by the lost connection.
    let a = start(builder().transport(TransportConfig {
        send_timeout: Duration::from_secs(30),
        ..transport()
    }))
    .await;
    let to = [b.local().clone()];
    let mut receipts = Vec::new();
    for i in 0..50u8 {
        receipts.push(a.send(&to, Bytes::from(vec![i]), SYNC_ACK).await.unwrap());
    }
    // Let the messages reach the receiver, then kill it: its sockets close.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !release.2.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "no message reached the receiver");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed = Instant::now();
    let stop = tokio::spawn({
        let b = b.clone();
        async move { b.stop().await }
    });
    for r in receipts {
        let o = r.await;
        match &o.results[0].result {
            Err(SendError::ConnectionLost { .. }) => {}
            other => panic!("expected a lost connection, got {other:?}"),
        }
    }
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "failed after {took:?}, not within the timeout"
    );
    release.release();
    stop.await.unwrap();
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_receiver_fails_acked_sends_at_the_send_timeout() {
    let release = Arc::new(Stuck::default());
    let b = start(builder().listener(release.clone())).await;
    let timeout = Duration::from_millis(500);
    let a = start(builder().transport(TransportConfig {
        send_timeout: timeout,
        ..transport()
    }))
    .await;
    let to = [b.local().clone()];
    let sent = Instant::now();
    let r1 = a
        .send(&to, Bytes::from_static(b"1"), SYNC_ACK)
        .await
        .unwrap();
    let r2 = a
        .send(&to, Bytes::from_static(b"2"), SYNC_ACK)
        .await
        .unwrap();
    for r in [r1, r2] {
        let o = r.await;
        assert!(
            matches!(
                o.results[0].result,
                Err(SendError::Timeout { .. } | SendError::ConnectionLost { .. })
            ),
            "{o:?}"
        );
    }
    let took = sent.elapsed();
    assert!(took >= timeout && took < timeout * 10, "{took:?}");
    assert!(a.stats().transport.ack_timeouts >= 1);
    release.release();
    a.stop().await;
    b.stop().await;
}

/// A transport whose backoff after a failed connect is long enough that a second send
/// surely falls in it, however slow the runner.
fn backing_off() -> TransportConfig {
    TransportConfig {
        connect_timeout: Duration::from_millis(300),
        reconnect_backoff: Duration::from_secs(30),
        max_reconnect_backoff: Duration::from_secs(30),
        ..transport()
    }
}

/// A member like `like` (another id) at a port nobody listens on.
fn dead_member(like: &cohort_wire::Member) -> cohort_wire::Member {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut m = like.clone();
    m.id = cohort_wire::MemberId::from_bytes([9; 16]);
    m.port = l.local_addr().unwrap().port();
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_member_does_not_block_the_others() {
    let sink = collector();
    let b = start(builder().listener(sink.clone())).await;
    let a = start(builder().transport(backing_off())).await;
    let dead = dead_member(b.local());
    let o = a
        .send(
            &[dead.clone(), b.local().clone()],
            Bytes::from_static(b"x"),
            SendOptions::USE_ACK,
        )
        .await
        .unwrap()
        .await;
    let by = |id| {
        o.results
            .iter()
            .find(|r| r.member == id)
            .unwrap()
            .result
            .clone()
    };
    assert_eq!(by(b.local().id), Ok(Delivered::Acked));
    assert!(
        matches!(by(dead.id), Err(SendError::Connect { attempts: 2, .. })),
        "{o:?}"
    );
    // During the reconnect backoff, sends to the dead member fail at once.
    let o = a
        .send(&[dead], Bytes::from_static(b"y"), SendOptions::USE_ACK)
        .await
        .unwrap()
        .await;
    assert!(
        matches!(o.results[0].result, Err(SendError::PeerDown { .. })),
        "{o:?}"
    );
    a.stop().await;
    b.stop().await;
}

/// A batch to a live and a dead member: the receipt holds a result for every message and
/// destination, each under its own member (the frames' completions report to the batch's
/// state by destination index), for ACKed sends and, through the error handler, for
/// ASYNCHRONOUS ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_reports_every_message_for_every_destination() {
    struct Outcomes(std::sync::Mutex<Vec<cohort_channel::SendOutcome>>);
    impl cohort_channel::ErrorHandler for Outcomes {
        fn handle_error(&self, outcome: &cohort_channel::SendOutcome) {
            self.0.lock().unwrap().push(outcome.clone());
        }
    }
    let sink = collector();
    let b = start(builder().listener(sink.clone())).await;
    let handler = Arc::new(Outcomes(std::sync::Mutex::default()));
    let a = start(
        builder()
            .transport(backing_off())
            .error_handler(handler.clone()),
    )
    .await;
    let dead = dead_member(b.local());
    let to = [dead.clone(), b.local().clone()];
    let batch = || -> Vec<Bytes> { (0..50u8).map(|i| Bytes::from(vec![i])).collect() };
    let count = |o: &cohort_channel::SendOutcome, id, ok: bool| {
        o.results
            .iter()
            .filter(|r| r.member == id && r.result.is_ok() == ok)
            .count()
    };
    let o = a
        .send_many(&to, batch(), SendOptions::USE_ACK)
        .await
        .unwrap()
        .await;
    assert_eq!(o.results.len(), 100, "{o:?}");
    assert_eq!(count(&o, b.local().id, true), 50, "{o:?}");
    assert_eq!(count(&o, dead.id, false), 50, "{o:?}");
    a.send_many(&to, batch(), SendOptions::ASYNCHRONOUS)
        .await
        .unwrap();
    wait_for("the batch's outcome", Duration::from_secs(10), || {
        !handler.0.lock().unwrap().is_empty()
    })
    .await;
    let o = handler.0.lock().unwrap()[0].clone();
    assert_eq!(o.results.len(), 100, "{o:?}");
    assert_eq!(count(&o, b.local().id, true), 50, "{o:?}");
    assert_eq!(count(&o, dead.id, false), 50, "{o:?}");
    wait_for("both batches", Duration::from_secs(10), || {
        sink.len() == 100
    })
    .await;
    a.stop().await;
    b.stop().await;
}

/// Panics on payloads that say "panic"; counts what it handled.
#[derive(Default)]
struct Panicky {
    handled: std::sync::atomic::AtomicUsize,
}

impl ChannelListener for Panicky {
    fn message_received(&self, msg: &ChannelMessage) -> Result<(), ListenerError> {
        assert!(&msg.payload[..] != b"panic", "told to panic");
        self.handled.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_listener_is_a_failed_one_and_delivery_carries_on() {
    let panicky = Arc::new(Panicky::default());
    let b = start(
        builder()
            .config(cohort_channel::ChannelConfig {
                // A small queue: permits lost to a panic would stall it within a few messages.
                delivery_queue: 4,
                ..cohort_channel::ChannelConfig::default()
            })
            .listener(panicky.clone()),
    )
    .await;
    let a = start(builder()).await;
    let to = [b.local().clone()];
    for round in 0..10 {
        let o = a
            .send(&to, Bytes::from_static(b"panic"), SYNC_ACK)
            .await
            .unwrap()
            .await;
        assert_fail_ack(&o, "panicked");
        let o = a
            .send(&to, Bytes::from_static(b"ok"), SYNC_ACK)
            .await
            .unwrap()
            .await;
        assert_eq!(o.results[0].result, Ok(Delivered::Acked), "round {round}");
    }
    assert_eq!(panicky.handled.load(Ordering::SeqCst), 10);
    assert_eq!(b.stats().listener_errors, 10);
    a.stop().await;
    b.stop().await;
}
