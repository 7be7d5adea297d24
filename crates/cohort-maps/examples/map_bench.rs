//! Map benchmarks on real loopback sockets, channels in one process; `cargo xtask bench
//! --test map` runs it in release and prints its RESULT lines beside plain TCP's.
//!
//! For 2 and 3 members, 100 B and 10 KiB values: ASYNC puts/s at the writer, the time until
//! every member holds every entry and the rate that makes (`applied_per_s`), beside the
//! channel's own ASYNC msgs/s for the same payload and members measured just before (`ratio`
//! is applied over channel); pipelined SYNC_ACK puts/s; the latency of a
//! lazy map's `get` on a member holding only a proxy; the state transfer of 10,000 × 1 KiB to
//! a joining member.
//!
//! `cargo run --release -p cohort-maps --example map_bench [-- --quick]`

// A benchmark program: its output is the RESULT lines.
#![allow(clippy::print_stdout)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use cohort_channel::{
    ChannelHandle, ChannelListener, ChannelMessage, GroupChannel, ListenerError, MembershipSetup,
    SendOptions,
};
use cohort_maps::{LazyReplicatedMap, MapConfig, Raw, ReplicatedMap, WriteMode};
use cohort_membership::{MembershipConfig, StaticPeer};
use cohort_transport::TransportConfig;

type Map = ReplicatedMap<Bytes, Bytes, Raw>;

fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

async fn cluster(n: usize) -> Result<Vec<ChannelHandle>> {
    let ports: Vec<u16> = (0..n).map(|_| free_udp_port()).collect::<Result<_>>()?;
    let mut out = Vec::new();
    for port in &ports {
        let peers: Vec<StaticPeer> = ports
            .iter()
            .filter(|p| *p != port)
            .map(|p| format!("127.0.0.1:{p}").parse())
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let setup = MembershipSetup {
            config: MembershipConfig {
                cluster: format!("map-bench-{}", ports[0]),
                frequency: Duration::from_millis(100),
                ..MembershipConfig::default()
            },
            multicast: None,
            static_members: Some((SocketAddr::from((Ipv4Addr::LOCALHOST, *port)), peers)),
            dns: None,
        };
        out.push(
            GroupChannel::builder()
                .transport(TransportConfig {
                    port: 0,
                    ..TransportConfig::default()
                })
                .membership(setup)
                .start()
                .await?,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !out.iter().all(|c| c.members().len() == n - 1) {
        ensure!(
            Instant::now() < deadline,
            "the channels never saw each other"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(out)
}

#[derive(Default)]
struct Count(AtomicU64);

impl ChannelListener for Count {
    fn message_received(&self, _: &ChannelMessage) -> Result<(), ListenerError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

async fn wait(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !done().await {
        ensure!(
            Instant::now() < deadline,
            "{what}: not done within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// The channel's own ASYNC msgs/s from the first member to the others, counted at receipt.
async fn channel_async(ch: &[ChannelHandle], size: usize, count: u64) -> Result<f64> {
    let counters: Vec<Arc<Count>> = ch[1..].iter().map(|_| Arc::new(Count::default())).collect();
    for (c, k) in ch[1..].iter().zip(&counters) {
        c.add_listener(k.clone());
    }
    let to: Vec<_> = ch[1..].iter().map(|c| c.local().clone()).collect();
    let payload = Bytes::from(vec![7u8; size]);
    let start = Instant::now();
    for _ in 0..count {
        ch[0]
            .send(&to, payload.clone(), SendOptions::ASYNCHRONOUS)
            .await?;
    }
    wait("channel messages", Duration::from_secs(120), async || {
        counters
            .iter()
            .all(|k| k.0.load(Ordering::Relaxed) >= count)
    })
    .await?;
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

fn key(i: u64) -> Bytes {
    Bytes::from(format!("key-{i:08}"))
}

async fn maps(ch: &[ChannelHandle], name: &str) -> Result<Vec<Map>> {
    let mut out = Vec::new();
    for c in ch {
        out.push(Map::builder(c, name).start().await?);
    }
    Ok(out)
}

async fn replicated(ch: &[ChannelHandle], size: usize, count: u64, run: &mut u32) -> Result<()> {
    let n = ch.len();
    let channel = channel_async(ch, size, count).await?;
    *run += 1;
    let m = maps(ch, &format!("async-{run}")).await?;
    let value = Bytes::from(vec![1u8; size]);
    let start = Instant::now();
    for i in 0..count {
        m[0].put(key(i), value.clone()).await?;
    }
    let writer = start.elapsed();
    for map in &m {
        wait(
            "every entry visible",
            Duration::from_secs(120),
            async || map.len().await.is_ok_and(|l| l as u64 >= count),
        )
        .await?;
    }
    let visible = start.elapsed();
    let puts = count as f64 / writer.as_secs_f64();
    // End to end: every entry held by every member. The writer's own rate only measures the
    // queue in front of the map's task.
    let applied = count as f64 / visible.as_secs_f64();
    println!(
        "RESULT impl=cohort test=map map=replicated members={n} size={size} mode=async count={count} puts_per_s={puts:.0} visible_ms={:.1} applied_per_s={applied:.0} channel_msgs_per_s={channel:.0} ratio={:.2}",
        visible.as_secs_f64() * 1e3,
        applied / channel
    );
    for map in &m {
        map.stop().await;
    }
    // SYNC_ACK: many writers at once, each put waiting for every member to apply it.
    *run += 1;
    let m = maps(ch, &format!("sync-{run}")).await?;
    let writers = 64u64;
    let per = (count / 4 / writers).max(1);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let map = m[0].clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                map.put_with(key(w * per + i), value.clone(), WriteMode::SyncAck)
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let took = start.elapsed();
    println!(
        "RESULT impl=cohort test=map map=replicated members={n} size={size} mode=syncack in_flight={writers} count={} puts_per_s={:.0}",
        writers * per,
        (writers * per) as f64 / took.as_secs_f64()
    );
    for map in &m {
        map.stop().await;
    }
    Ok(())
}

/// A lazy map's ASYNC puts: every member learns of every key (holders the value, the others
/// a proxy).
async fn lazy_puts(ch: &[ChannelHandle], size: usize, count: u64, run: &mut u32) -> Result<()> {
    *run += 1;
    let mut m = Vec::new();
    for c in ch {
        m.push(
            LazyReplicatedMap::<Bytes, Bytes, Raw>::builder(c, format!("lazy-{run}"))
                .start()
                .await?,
        );
    }
    let value = Bytes::from(vec![1u8; size]);
    let start = Instant::now();
    for i in 0..count {
        m[0].put(key(i), value.clone()).await?;
    }
    let writer = start.elapsed();
    for map in &m {
        wait("every key known", Duration::from_secs(120), async || {
            map.len().await.is_ok_and(|l| l as u64 >= count)
        })
        .await?;
    }
    let visible = start.elapsed();
    println!(
        "RESULT impl=cohort test=map map=lazy members={} size={size} mode=async count={count} puts_per_s={:.0} visible_ms={:.1} applied_per_s={:.0}",
        ch.len(),
        count as f64 / writer.as_secs_f64(),
        visible.as_secs_f64() * 1e3,
        count as f64 / visible.as_secs_f64()
    );
    for map in &m {
        map.stop().await;
    }
    Ok(())
}

/// Latency of `get` on a member that holds only a proxy (it fetches, then takes the entry
/// over).
async fn proxy_get(ch: &[ChannelHandle], count: u64) -> Result<()> {
    let mut m = Vec::new();
    for c in ch {
        m.push(
            LazyReplicatedMap::<Bytes, Bytes, Raw>::builder(c, "lazy")
                .start()
                .await?,
        );
    }
    let value = Bytes::from(vec![3u8; 100]);
    for i in 0..count {
        m[0].put_with(key(i), value.clone(), WriteMode::SyncAck)
            .await?;
    }
    let reader = m.last().context("members")?;
    let held: std::collections::BTreeSet<Bytes> = reader
        .entries()
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let mut us = Vec::new();
    for i in 0..count {
        let k = key(i);
        if held.contains(&k) {
            continue;
        }
        let t = Instant::now();
        let got = reader.get(&k).await?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
        ensure!(got.as_ref() == Some(&value), "wrong value for {k:?}");
    }
    ensure!(
        !us.is_empty(),
        "the reader held every entry: no proxy read to time"
    );
    us.sort_by(f64::total_cmp);
    // Percentiles in thousandths.
    let pct = |p: usize| us[(us.len() - 1) * p / 1000];
    println!(
        "RESULT impl=cohort test=map map=lazy members={} size=100 op=proxy_get count={} p50_us={:.0} p99_us={:.0} max_us={:.0}",
        ch.len(),
        us.len(),
        pct(500),
        pct(990),
        us.last().copied().unwrap_or(0.0)
    );
    for map in &m {
        map.stop().await;
    }
    Ok(())
}

/// A third member joins a map of 10,000 × 1 KiB held by two.
async fn transfer(ch: &[ChannelHandle], entries: u64) -> Result<()> {
    let a = Map::builder(&ch[0], "transfer").start().await?;
    let b = Map::builder(&ch[1], "transfer").start().await?;
    let value = Bytes::from(vec![9u8; 1024]);
    for i in 0..entries {
        a.put(key(i), value.clone()).await?;
    }
    wait("b holds the map", Duration::from_secs(60), async || {
        b.len().await.is_ok_and(|l| l as u64 >= entries)
    })
    .await?;
    let start = Instant::now();
    let c = Map::builder(&ch[2], "transfer")
        .config(MapConfig::default())
        .start()
        .await?;
    let took = start.elapsed();
    let got = c.len().await? as u64;
    ensure!(got == entries, "transferred {got} of {entries}");
    println!(
        "RESULT impl=cohort test=map map=replicated members=3 size=1024 op=state_transfer entries={entries} transfer_ms={:.1}",
        took.as_secs_f64() * 1e3
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let mut run = 0;
    for n in [2, 3] {
        let ch = cluster(n).await?;
        for size in [100usize, 10 * 1024] {
            let count = match (size, quick) {
                (100, false) => 200_000,
                (_, false) => 20_000,
                (100, true) => 20_000,
                _ => 2_000,
            };
            replicated(&ch, size, count, &mut run).await?;
            lazy_puts(&ch, size, count, &mut run).await?;
        }
        if n == 3 {
            proxy_get(&ch, if quick { 500 } else { 5_000 }).await?;
            transfer(&ch, 10_000).await?;
        }
        for c in ch {
            c.stop().await;
        }
    }
    Ok(())
}
