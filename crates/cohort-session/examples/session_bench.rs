//! State transfer of sessions to a joining member, in process over loopback sockets;
//! `cargo xtask bench --test session` runs it in release beside the HTTP figures.
//!
//! `cargo run --release -p cohort-session --example session_bench [-- --sessions N]`

// A benchmark program: its output is the RESULT lines.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use bytes::Bytes;
use cohort_channel::{ChannelHandle, GroupChannel, MembershipSetup};
use cohort_membership::{MembershipConfig, StaticPeer};
use cohort_session::{
    Changes, ManagerKind, Meta, SessionConfig, SessionData, SessionId, SessionManager,
};
use cohort_transport::TransportConfig;

async fn cluster(n: usize) -> Result<Vec<ChannelHandle>> {
    let ports: Vec<u16> = (0..n)
        .map(|_| {
            Ok(std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?
                .local_addr()?
                .port())
        })
        .collect::<Result<_>>()?;
    let mut out = Vec::new();
    for port in &ports {
        let peers = ports
            .iter()
            .filter(|p| *p != port)
            .map(|p| format!("127.0.0.1:{p}").parse::<StaticPeer>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        out.push(
            GroupChannel::builder()
                .transport(TransportConfig {
                    port: 0,
                    ..TransportConfig::default()
                })
                .membership(MembershipSetup {
                    config: MembershipConfig {
                        cluster: format!("session-bench-{}", ports[0]),
                        frequency: Duration::from_millis(100),
                        ..MembershipConfig::default()
                    },
                    multicast: None,
                    static_members: Some((SocketAddr::from((Ipv4Addr::LOCALHOST, *port)), peers)),
                    dns: None,
                })
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

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut sessions = 10_000u64;
    while let Some(a) = args.next() {
        if a == "--sessions" {
            sessions = args.next().and_then(|s| s.parse().ok()).unwrap_or(sessions);
        }
    }
    for kind in [ManagerKind::Delta, ManagerKind::Backup] {
        let ch = cluster(3).await?;
        let a = SessionManager::start(&ch[0], kind, SessionConfig::default()).await?;
        let b = SessionManager::start(&ch[1], kind, SessionConfig::default()).await?;
        let value = Bytes::from(format!("\"{}\"", "x".repeat(1022)));
        let now = a.now_ms();
        for i in 0..sessions {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&i.to_be_bytes());
            let attributes: BTreeMap<String, Bytes> = [("data".to_string(), value.clone())].into();
            let changes = Changes {
                set: attributes.clone(),
                ..Changes::default()
            };
            let data = SessionData {
                id: SessionId::from_bytes(id),
                meta: Meta {
                    created_ms: now,
                    last_access_ms: now,
                    max_inactive_ms: 1_800_000,
                },
                attributes,
            };
            a.commit(&data, &changes, true).await?;
        }
        let started = Instant::now();
        let c = SessionManager::start(&ch[2], kind, SessionConfig::default()).await?;
        let took = started.elapsed();
        let held = c.len().await?;
        println!(
            "RESULT impl=cohort test=session op=state_transfer manager={} sessions={sessions} size=1024 transfer_ms={:.1} held_by_joiner={held}",
            format!("{kind:?}").to_lowercase(),
            took.as_secs_f64() * 1e3
        );
        drop((a, b, c));
        for c in ch {
            c.stop().await;
        }
    }
    Ok(())
}
