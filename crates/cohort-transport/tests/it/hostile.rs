//! Hostile peers on loopback: connections that never say hello, never stop being idle, or
//! flood garbage, cost members nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cohort_transport::TransportConfig;
use cohort_wire::{Member, MemberId, SendOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Opens connections that never send a byte, reopening each as soon as it is closed.
fn silent_flood(addr: SocketAddr, tasks: usize, stop: &Arc<AtomicBool>) -> Arc<AtomicU64> {
    let opened = Arc::new(AtomicU64::new(0));
    for _ in 0..tasks {
        let (stop, opened) = (stop.clone(), opened.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = TcpStream::connect(addr).await else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                opened.fetch_add(1, Ordering::Relaxed);
                let mut b = [0u8; 16];
                // Held until the node closes it (or the test ends).
                let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await;
            }
        });
    }
    opened
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_never_crowd_out_a_member() {
    let config = TransportConfig {
        // Fewer than the flood: before the pools were split, silent connections filled them.
        max_connections: 32,
        max_unauthenticated: 16,
        ..config()
    };
    let b = node_with(2, config.clone(), keyed_codec()).await;
    let sender_config = TransportConfig {
        // Reconnect often, so that connects race the flood.
        keep_alive_count: Some(5),
        ..config
    };
    let mut a = node_with(1, sender_config, keyed_codec()).await;
    let addr = b.member.data_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let opened = silent_flood(addr, 64, &stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut b = b;
    let (mut ok, mut failed) = (0, Vec::new());
    let until = Instant::now() + Duration::from_secs(2);
    let mut id = 0;
    let mut slowest = Duration::ZERO;
    // For 2 s, and at least 60 sends however slow the runner.
    while Instant::now() < until || id < 60 {
        id += 1;
        let r = send(&a, &b.member, id, SendOptions::USE_ACK, b"hi");
        let started = Instant::now();
        let result = within(Duration::from_secs(10), r).await.unwrap();
        slowest = slowest.max(started.elapsed());
        match result {
            Ok(_) => ok += 1,
            Err(e) => failed.push(e),
        }
        while b.inbound.try_recv().is_ok() {}
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let stats = b.handle.stats();
    assert!(
        opened.load(Ordering::Relaxed) > 64,
        "the flood reopened connections"
    );
    assert!(stats.unauthenticated_evicted > 0, "{stats:?}");
    assert!(
        failed.is_empty(),
        "{ok} delivered, {} failed: {:?}; {stats:?}",
        failed.len(),
        failed.first()
    );
    // A member that got through only after waiting out the flood was crowded out too.
    assert!(slowest < Duration::from_secs(2), "slowest send {slowest:?}");
    a.handle.stop();
    b.handle.stop();
    let _ = a.inbound.try_recv();
}

#[tokio::test]
async fn a_hello_is_due_within_hello_timeout_and_idle_connections_close() {
    let b = node(
        2,
        TransportConfig {
            hello_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_secs(1),
            ..config()
        },
    )
    .await;
    let addr = b.member.data_addr();
    // Silent: closed after the hello timeout.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 16];
    assert_eq!(
        within(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap_or(0),
        0
    );
    assert!(t.elapsed() < Duration::from_secs(2));
    // A hello, then silence: closed after the idle timeout (without a key anyone can say hello).
    let mut s = TcpStream::connect(addr).await.unwrap();
    let hello = hello_from(&Member::new(MemberId::from_bytes([5; 16]), addr.ip(), 1));
    s.write_all(&hello).await.unwrap();
    let t = Instant::now();
    assert_eq!(
        within(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap_or(0),
        0
    );
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    let stats = b.handle.stats();
    assert_eq!(
        (stats.hello_timeouts, stats.idle_closed),
        (1, 1),
        "{stats:?}"
    );
    b.handle.stop();
}

#[tokio::test]
async fn a_hello_with_a_payload_or_data_first_is_refused_on_its_prefix() {
    let b = node(2, config()).await;
    let addr = b.member.data_addr();
    for kind in [1u8, 3] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut prefix = cohort_wire::FRAME_MAGIC.to_vec();
        prefix.extend_from_slice(&[cohort_wire::PROTOCOL_VERSION, kind, 0, 0]);
        prefix.extend_from_slice(&16u32.to_be_bytes());
        prefix.extend_from_slice(&(1u32 << 20).to_be_bytes());
        s.write_all(&prefix).await.unwrap();
        let mut buf = [0u8; 16];
        let t = Instant::now();
        assert_eq!(
            within(Duration::from_secs(5), s.read(&mut buf))
                .await
                .unwrap_or(0),
            0
        );
        assert!(t.elapsed() < Duration::from_secs(1), "closed on the prefix");
    }
    assert_eq!(b.handle.stats().protocol_violations, 2);
    b.handle.stop();
}

/// Counts the lines a subscriber writes.
#[derive(Clone, Default)]
struct Lines(Arc<AtomicU64>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.iter().filter(|b| **b == b'\n').count() as u64;
        self.0.fetch_add(n, Ordering::Relaxed);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_garbage_flood_gives_one_warning_per_kind_not_one_per_connection() {
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(move || writer.clone())
        .finish();
    // Current-thread runtime: every task logs on this thread, under this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);
    let b = node(2, config()).await;
    let addr = b.member.data_addr();
    for _ in 0..500 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 16];
        let _ = within(Duration::from_secs(5), s.read(&mut buf)).await;
    }
    let stats = b.handle.stats();
    assert_eq!(stats.malformed.get("bad_magic"), Some(&500), "{stats:?}");
    let written = lines.0.load(Ordering::Relaxed);
    assert!(
        written <= 2,
        "{written} warning lines for 500 garbage connections"
    );
    b.handle.stop();
}

/// A connection paused on a spent inbound budget is not "too slow": the time it waits for the
/// layer above to release memory does not count against `frame_timeout`. A hand-driven peer
/// sends the rest of its second frame only after the budget came back.
#[tokio::test]
async fn waiting_for_the_inbound_budget_is_not_a_frame_timeout() {
    let frame_timeout = Duration::from_secs(1);
    let config = TransportConfig {
        rx_buf_size: 4 * 1024,
        // Room for one 64 KiB frame at a time.
        max_inbound_bytes: 100 * 1024,
        frame_timeout,
        limits: cohort_wire::WireLimits {
            max_frame_payload: 80 * 1024,
            ..cohort_wire::WireLimits::default()
        },
        ..config()
    };
    let mut b = node(2, config).await;
    let who = Member::new(MemberId::from_bytes([5; 16]), b.member.addr, 1);
    let mut bytes = hello_from(&who);
    let payload = vec![7u8; 64 * 1024];
    bytes.extend_from_slice(&frame_with(
        &codec(),
        &who,
        1,
        SendOptions::USE_ACK,
        &payload,
    ));
    let second = frame_with(&codec(), &who, 2, SendOptions::USE_ACK, &payload);
    let (head, rest) = second.split_at(1024);
    let mut s = TcpStream::connect(b.member.data_addr()).await.unwrap();
    s.write_all(&bytes).await.unwrap();
    // Hold the first frame (and its budget); then the second frame's head: its reader waits
    // for the budget.
    let held = within(Duration::from_secs(5), b.inbound.recv())
        .await
        .unwrap();
    // The frame's first bytes start its timer; its header, a moment later, makes the reader
    // reserve its size.
    s.write_all(&head[..8]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(&head[8..]).await.unwrap();
    let start = Instant::now();
    while b.handle.stats().inbound_budget_waits == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the second frame never waited"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(frame_timeout * 3).await;
    drop(held);
    // The rest comes well within one frame_timeout of the budget's return.
    tokio::time::sleep(frame_timeout / 3).await;
    s.write_all(rest).await.unwrap();
    let got = within(Duration::from_secs(5), b.inbound.recv())
        .await
        .unwrap();
    assert_eq!(got.frame.header.msg_id, 2);
    let stats = b.handle.stats();
    assert_eq!(stats.frame_timeouts, 0, "{stats:?}");
}

/// The whole frames of one read share one reservation of the inbound budget: it covers all of
/// them from the first, and goes back only when the last of them is dropped.
#[tokio::test]
async fn the_frames_of_one_read_share_one_budget_reservation() {
    let mut b = node(2, config()).await;
    let who = Member::new(MemberId::from_bytes([6; 16]), b.member.addr, 1);
    let mut bytes = hello_from(&who);
    let frames: Vec<_> = (1..=3)
        .map(|id: u8| frame_with(&codec(), &who, u64::from(id), SendOptions::NONE, &[id; 100]))
        .collect();
    let sizes: Vec<u64> = frames.iter().map(|f| f.len() as u64).collect();
    for f in &frames {
        bytes.extend_from_slice(f);
    }
    // Hello and frames in one write: one read on loopback.
    let mut s = TcpStream::connect(b.member.data_addr()).await.unwrap();
    s.write_all(&bytes).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(
            within(Duration::from_secs(5), b.inbound.recv())
                .await
                .unwrap(),
        );
    }
    let all: u64 = sizes.iter().sum();
    for (r, size) in got.iter().zip(&sizes) {
        let budget = r.budget.as_ref().expect("a TCP frame has a budget");
        assert_eq!(budget.bytes(), *size);
        assert_eq!(budget.reserved(), all, "one reservation for the read");
    }
    assert_eq!(b.handle.stats().inbound_bytes, all);
    let last = got.pop().unwrap();
    drop(got);
    assert_eq!(
        b.handle.stats().inbound_bytes,
        all,
        "the last frame holds it"
    );
    drop(last);
    // The receiver let go of its own share when the read's frames were decoded.
    let start = Instant::now();
    while b.handle.stats().inbound_bytes != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "not released with the last frame"
        );
        tokio::task::yield_now().await;
    }
}

/// A connection holds none of its read's reservation while it waits for a large frame's: with
/// a budget of exactly one largest frame, small frames read together with the head of a large
/// one are given back when the layer above takes them, and the large frame then gets the whole
/// budget (kept, the small frames' reservation would wait for itself forever).
#[tokio::test]
async fn a_large_frame_waits_for_the_budget_without_holding_its_reads_small_frames() {
    let limits = cohort_wire::WireLimits {
        max_frame_payload: 80 * 1024,
        ..cohort_wire::WireLimits::default()
    };
    let largest = cohort_wire::FRAME_PREFIX_LEN
        + limits.max_frame_header as usize
        + limits.max_frame_payload as usize
        + cohort_wire::TAG_LEN
        + cohort_wire::CRC_LEN;
    let config = TransportConfig {
        max_inbound_bytes: largest,
        limits,
        ..config()
    };
    let mut b = node(2, config).await;
    let who = Member::new(MemberId::from_bytes([7; 16]), b.member.addr, 1);
    let mut bytes = hello_from(&who);
    // Two small frames (20 KiB each: the read after the hello's holds both whole, 40 KiB,
    // more than the budget's slack over one large frame, about 16 KiB of unused header room)
    // and a large one (more than the 64 KiB read buffer), in one write.
    for id in 1..=2 {
        bytes.extend_from_slice(&frame_with(
            &codec(),
            &who,
            id,
            SendOptions::NONE,
            &[1; 20 * 1024],
        ));
    }
    bytes.extend_from_slice(&frame_with(
        &codec(),
        &who,
        3,
        SendOptions::NONE,
        &[3; 80 * 1024],
    ));
    let mut s = TcpStream::connect(b.member.data_addr()).await.unwrap();
    s.write_all(&bytes).await.unwrap();
    for id in 1..=3 {
        let r = within(Duration::from_secs(5), b.inbound.recv())
            .await
            .unwrap();
        assert_eq!(r.frame.header.msg_id, id);
        // Taken by the layer above: its budget goes back.
        drop(r);
    }
}
