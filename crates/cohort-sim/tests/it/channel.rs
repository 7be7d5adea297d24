//! The real channel and transport over turmoil's TCP, through a partition and its repair.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cohort_channel::{
    ChannelListener, ChannelMessage, Delivered, GroupChannel, ListenerError, SendOptions, Services,
};
use cohort_sim::{TurmoilNet, run_seeded};
use cohort_transport::TransportConfig;
use cohort_wire::{Member, MemberId};
use rand::SeedableRng;

#[derive(Default)]
struct Collect(Mutex<Vec<u32>>);

impl ChannelListener for Collect {
    fn message_received(&self, msg: &ChannelMessage) -> Result<(), ListenerError> {
        let n = u32::from_be_bytes(msg.payload[..4].try_into()?);
        self.0.lock().unwrap().push(n);
        Ok(())
    }
}

const NO_MEMBERSHIP: Services = Services::from_bits_truncate(3);

fn transport(host: &str) -> TransportConfig {
    TransportConfig {
        // turmoil binds the unspecified address only; the host's IP is what peers dial.
        bind: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        port: 4000 + u16::from(host == "a"),
        send_timeout: Duration::from_millis(1000),
        connect_timeout: Duration::from_millis(500),
        ..TransportConfig::default()
    }
}

fn scenario(seed: u64) -> Result<(), String> {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .tick_duration(Duration::from_millis(1))
        .simulation_duration(Duration::from_secs(120))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(10))
        .build();
    let got = Arc::new(Collect::default());
    let sink = got.clone();
    sim.host("b", move || {
        let sink = sink.clone();
        async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let _b = GroupChannel::builder()
                .transport(transport("b"))
                .services(NO_MEMBERSHIP)
                .listener(sink)
                .start_with(TurmoilNet::new("b"), &mut rng)
                .await?;
            std::future::pending::<()>().await;
            Ok(())
        }
    });
    let acked = Arc::new(Mutex::new(Vec::new()));
    let acked_in = acked.clone();
    sim.client("a", async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed + 1);
        let a = GroupChannel::builder()
            .transport(transport("a"))
            .services(NO_MEMBERSHIP)
            .start_with(TurmoilNet::new("a"), &mut rng)
            .await?;
        let b_ip = turmoil::lookup("b");
        let b = Member::new(MemberId::from_bytes([2; 16]), b_ip, 4000);
        let to = [b];
        let mut n = 0u32;
        let send = |n: u32| {
            let a = a.clone();
            let to = to.clone();
            async move {
                let r = a
                    .send(
                        &to,
                        Bytes::from(n.to_be_bytes().to_vec()),
                        SendOptions::USE_ACK,
                    )
                    .await
                    .expect("admitted");
                r.await.results[0].result.clone()
            }
        };
        // Wait for b's receiver to come up (hosts start in any order).
        let up = tokio::time::Instant::now();
        while send(n).await != Ok(Delivered::Acked) {
            n += 1;
            assert!(up.elapsed() < Duration::from_secs(10), "b never came up");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        acked_in.lock().unwrap().push(n);
        n += 1;
        // Before: everything is acknowledged.
        for _ in 0..50 {
            assert_eq!(send(n).await, Ok(Delivered::Acked));
            acked_in.lock().unwrap().push(n);
            n += 1;
        }
        // During the partition: sends fail within the send timeout (plus connect time);
        // none hangs.
        turmoil::partition("a", "b");
        let started = tokio::time::Instant::now();
        for _ in 0..5 {
            let r = send(n).await;
            assert!(r.is_err(), "sent through a partition: {r:?}");
            n += 1;
        }
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "failures took {took:?}");
        // After the repair: sends succeed again once the backoff lets a reconnect through.
        turmoil::repair("a", "b");
        let repaired = tokio::time::Instant::now();
        loop {
            let r = send(n).await;
            if r == Ok(Delivered::Acked) {
                acked_in.lock().unwrap().push(n);
                n += 1;
                break;
            }
            n += 1;
            assert!(
                repaired.elapsed() < Duration::from_secs(15),
                "no recovery: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for _ in 0..50 {
            assert_eq!(send(n).await, Ok(Delivered::Acked));
            acked_in.lock().unwrap().push(n);
            n += 1;
        }
        a.stop().await;
        Ok(())
    });
    sim.run().map_err(|e| format!("{e}"))?;
    let acked = acked.lock().unwrap().clone();
    // USE_ACK is acknowledged on receipt, before the listener runs on b's delivery thread (a
    // real thread, outside simulated time): give it real time to catch up.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline
        && !acked.iter().all(|n| got.0.lock().unwrap().contains(n))
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    // Every acknowledged message arrived exactly once, in order.
    let got = got.0.lock().unwrap().clone();
    if acked.len() < 102 {
        return Err(format!(
            "only {} messages acknowledged (seed {seed})",
            acked.len()
        ));
    }

    for n in &acked {
        let count = got.iter().filter(|g| *g == n).count();
        if count != 1 {
            return Err(format!("message {n} arrived {count} times (seed {seed})"));
        }
    }
    if got.windows(2).any(|w| w[0] >= w[1]) {
        return Err(format!("out of order: {got:?}"));
    }
    Ok(())
}

#[test]
fn channel_survives_a_partition_and_recovers_after_repair() {
    run_seeded(
        "channel_survives_a_partition_and_recovers_after_repair",
        scenario,
    );
}
