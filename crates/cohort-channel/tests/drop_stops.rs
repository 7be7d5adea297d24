//! Dropping every `ChannelHandle` without `stop()` stops the channel: its task, its delivery
//! thread and its sockets are gone. Its own test binary, so that no other test's threads or
//! file descriptors are counted.

// A skipped test says why on stderr.
#![allow(clippy::print_stderr)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort_channel::{ChannelConfig, GroupChannel};
use cohort_net::TokioNet;
use cohort_transport::TransportConfig;
use cohort_wire::{SendOptions, Services};

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map_or(0, Iterator::count)
}

fn threads() -> usize {
    count("/proc/self/task")
}

fn fds() -> usize {
    count("/proc/self/fd")
}

async fn start() -> cohort_channel::ChannelHandle {
    GroupChannel::builder()
        .transport(TransportConfig {
            port: 0,
            ..TransportConfig::default()
        })
        .services(Services::from_bits_truncate(3))
        .config(ChannelConfig::default())
        .start_with(TokioNet, &mut rand::thread_rng())
        .await
        .unwrap()
}

#[test]
fn dropping_every_handle_stops_the_channel() {
    if !std::path::Path::new("/proc/self/task").exists() {
        eprintln!("skipped: no /proc on this system");
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Idle blocking-pool threads would otherwise linger for 10 s.
        .thread_keep_alive(Duration::from_millis(50))
        .build()
        .unwrap();
    rt.block_on(async {
        // Warm up whatever the runtime creates lazily (its blocking pool, timers).
        tokio::time::sleep(Duration::from_millis(10)).await;
        let (t0, f0) = (threads(), fds());
        let a = start().await;
        let b = start().await;
        let o = a
            .send(
                &[b.local().clone()],
                Bytes::from_static(b"x"),
                SendOptions::USE_ACK,
            )
            .await
            .unwrap()
            .await;
        assert!(o.is_ok(), "{o:?}");
        assert!(threads() >= t0 + 2, "two delivery threads run");
        assert!(fds() >= f0 + 4, "listeners and a connection are open");
        let cloned = a.clone();
        drop((a, b));
        assert!(
            cloned.services().contains(Services::SND_TX),
            "a clone keeps the channel running"
        );
        drop(cloned);
        let deadline = Instant::now() + Duration::from_secs(10);
        while (threads(), fds()) != (t0, f0) {
            assert!(
                Instant::now() < deadline,
                "still running after every handle was dropped: threads {} (was {t0}), fds {} \
                 (was {f0})",
                threads(),
                fds()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}
