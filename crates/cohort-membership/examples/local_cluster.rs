//! A local three-node cluster on defaults: multicast 228.0.0.4:45564 on the loopback
//! interface, a beacon every 500 ms, drop after 3000 ms. It prints every membership event and
//! the view each node converges to, changes a payload, lets one node leave gracefully and one
//! go silent (it is then dropped after the drop time), and exits.
//!
//! Where the host does not route multicast over loopback it says so and falls back to static
//! membership on loopback ports.
//!
//! Run with `cargo run -p cohort-membership --example local_cluster`.
#![allow(clippy::print_stdout)]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort_membership::{
    LocalMemberConfig, Membership, MembershipConfig, MembershipEvent, MembershipHandle,
    MembershipView, MulticastConfig, StaticPeer,
};
use cohort_net::TokioNet;

fn free_port() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn print_view(name: &str, view: &MembershipView) {
    println!("{name} sees {} members (oldest first):", view.len());
    for m in &view.members {
        println!(
            "    {}  {:<8} {:<21} start={} {}{}",
            m.member.id,
            m.member.name,
            m.member.data_addr(),
            m.member.start_time_ms,
            if m.lead { "LEAD " } else { "" },
            if m.local { "local" } else { "" },
        );
    }
}

fn describe(event: &MembershipEvent) -> String {
    match event {
        MembershipEvent::MemberAdded(m) => format!("member_added {} ({})", m.name, m.data_addr()),
        MembershipEvent::MemberUpdated(m) => format!(
            "member_updated {} payload={:?}",
            m.name,
            String::from_utf8_lossy(&m.payload)
        ),
        MembershipEvent::MemberDisappeared { member, reason } => {
            format!(
                "member_disappeared {} reason={}",
                member.name,
                reason.name()
            )
        }
        MembershipEvent::LeadChanged {
            lead,
            local_is_lead,
        } => format!(
            "lead_changed {} (local: {local_is_lead})",
            lead.as_ref().map_or("-", |m| m.name.as_str())
        ),
        _ => format!("{event:?}"),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let multicast = MulticastConfig::default();
    let use_multicast = multicast.loops_back(Duration::from_millis(500));
    let static_addrs: Vec<SocketAddr> = if use_multicast {
        println!(
            "membership: multicast {}:{} on {}",
            multicast.group, multicast.port, multicast.interface
        );
        Vec::new()
    } else {
        println!(
            "membership: this host does not route multicast over loopback; \
             falling back to static membership on loopback"
        );
        (0..3)
            .map(|_| free_port().map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p))))
            .collect::<anyhow::Result<_>>()?
    };

    let mut nodes: Vec<(String, MembershipHandle)> = Vec::new();
    let started = Instant::now();
    for i in 0..3u16 {
        let name = format!("node-{}", i + 1);
        let mut builder =
            Membership::builder(MembershipConfig::default()).local(LocalMemberConfig {
                name: Some(name.clone()),
                data_addr: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 4000 + i))),
                ..LocalMemberConfig::default()
            });
        if use_multicast {
            builder = builder.multicast(Some(multicast.clone()));
        } else {
            let me = static_addrs[usize::from(i)];
            let peers = static_addrs
                .iter()
                .filter(|a| **a != me)
                .map(|a| StaticPeer::new(*a))
                .collect();
            builder = builder.multicast(None).static_peers(me, peers);
        }
        let handle = builder.start_with(TokioNet, &mut rand::rngs::OsRng).await?;
        let mut events = handle.events();
        let tag = name.clone();
        tokio::spawn(async move {
            while let Ok(event) = events.recv().await {
                println!("[{tag}] {}", describe(&event));
            }
        });
        nodes.push((name, handle));
        // Distinct start times make the lead obvious.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    for (_, handle) in &nodes {
        let mut rx = handle.watch();
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|v| v.len() == 3)).await??;
    }
    println!(
        "all 3 nodes see each other {:?} after the first start",
        started.elapsed()
    );
    print_view(&nodes[2].0, &nodes[2].1.view());

    nodes[1]
        .1
        .set_payload(Bytes::from_static(b"role=batch"))
        .await?;
    tokio::time::sleep(Duration::from_millis(100)).await;

    println!("node-1 (the lead) leaves gracefully");
    let (_, lead) = nodes.remove(0);
    lead.stop().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    print_view(&nodes[1].0, &nodes[1].1.view());

    println!("node-2 crashes (no shutdown beacon); node-3 drops it after the drop time");
    let (_, silent) = nodes.remove(0);
    let silent_key = silent.local();
    // As a crashed process would: no shutdown beacon, the others notice only by its silence.
    silent.abort().await;
    let silent_at = Instant::now();
    let mut rx = nodes[0].1.watch();
    tokio::time::timeout(
        Duration::from_secs(5),
        rx.wait_for(|v| !v.contains(&silent_key.id)),
    )
    .await??;
    println!("dropped after {:?}", silent_at.elapsed());
    print_view(&nodes[0].0, &nodes[0].1.view());
    for (_, handle) in nodes {
        handle.stop().await;
    }
    Ok(())
}
