//! The failure detector and ping through real channels.

use std::time::Duration;

use cohort_interceptors::InterceptorConfig;
use cohort_interceptors::failure_detector::TcpFailureDetectorConfig;
use cohort_interceptors::ping::TcpPingConfig;
use cohort_interceptors::static_members::{StaticMemberConfig, StaticMembershipConfig};
use cohort_membership::{DisappearReason, MembershipEvent};
use cohort_wire::MemberId;
use tokio::io::AsyncReadExt;

use crate::support::*;

fn ping(ms: u64) -> InterceptorConfig {
    InterceptorConfig::TcpPing(TcpPingConfig {
        interval: Duration::from_millis(ms),
        ..Default::default()
    })
}

fn detector() -> InterceptorConfig {
    InterceptorConfig::TcpFailureDetector(TcpFailureDetectorConfig::default())
}

/// A peer whose process dies: its listener and connections close at once, as the kernel does
/// for a SIGKILLed process. The detector hears the connection close, probes, is refused, and
/// reports the failure with the evidence, in milliseconds (no beacon timeout involved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_is_failed_with_evidence_within_milliseconds() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b_port = listener.local_addr().unwrap().port();
    let b_id = MemberId::from_bytes([7; 16]);
    // The fake peer: accepts and reads everything until "killed".
    let peer = tokio::spawn(async move {
        // Dropping a JoinSet aborts its tasks: the connections close with the listener.
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            conns.spawn(async move {
                let mut buf = vec![0u8; 65536];
                while s.read(&mut buf).await.map(|n| n > 0).unwrap_or(false) {}
            });
        }
    });
    let stack = [
        ping(100),
        detector(),
        InterceptorConfig::StaticMembership(StaticMembershipConfig {
            members: vec![StaticMemberConfig {
                address: format!("127.0.0.1:{b_port}"),
                id: Some(b_id.to_string()),
            }],
            announce_interval: Duration::from_millis(50),
        }),
    ];
    let a = node(free_port(), &stack).await;
    wait_for("the peer in view", Duration::from_secs(5), || {
        a.ch.members().iter().any(|m| m.id == b_id)
    })
    .await;
    wait_for("a pooled connection", Duration::from_secs(5), || {
        a.ch.members()
            .iter()
            .any(|m| m.id == b_id && a.ch.is_connected(m))
    })
    .await;
    // Kill: aborting the accept task drops the listener and every connection.
    let killed = tokio::time::Instant::now();
    peer.abort();
    let failed = |e: &MembershipEvent| matches!(e, MembershipEvent::MemberDisappeared { member, reason: DisappearReason::Failed(_) } if member.id == b_id);
    wait_for("the failure", Duration::from_secs(5), || {
        a.events.find(failed).is_some()
    })
    .await;
    let (at, ev) = a.events.find(failed).unwrap();
    let MembershipEvent::MemberDisappeared {
        reason: DisappearReason::Failed(evidence),
        ..
    } = ev
    else {
        unreachable!()
    };
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "detected in {:?}: {}",
            at.duration_since(killed),
            evidence.detail
        );
    }
    assert!(
        evidence.detail.contains("refused") || evidence.detail.contains("reset"),
        "{}",
        evidence.detail
    );
    assert!(!a.ch.members().iter().any(|m| m.id == b_id));
    let stats = a.handles.failure_detector.as_ref().unwrap().snapshot();
    assert_eq!(stats.confirmed, 1);
    a.ch.stop().await;
}

/// Two live members ping each other; nothing is failed; a graceful stop is reported as a
/// shutdown (the leaving notice beats the closing sockets), not as a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_peers_stay_and_a_graceful_stop_is_a_shutdown() {
    let (pa, pb) = (free_port(), free_port());
    let stack = |other: u16| [ping(50), detector(), static_entry(&[other])];
    let a = node(pa, &stack(pb)).await;
    let b = node(pb, &stack(pa)).await;
    wait_for("both views", Duration::from_secs(5), || {
        a.ch.members().len() == 1 && b.ch.members().len() == 1
    })
    .await;
    let b_id = b.ch.local().id;
    let pings = b.handles.ping.clone().unwrap();
    wait_for("pings arriving", Duration::from_secs(5), || {
        pings.received() >= 5
    })
    .await;
    assert!(
        a.events
            .find(|e| matches!(e, MembershipEvent::MemberDisappeared { .. }))
            .is_none()
    );
    b.ch.stop().await;
    let gone = |e: &MembershipEvent| matches!(e, MembershipEvent::MemberDisappeared { member, .. } if member.id == b_id);
    wait_for("b gone", Duration::from_secs(5), || {
        a.events.find(gone).is_some()
    })
    .await;
    let (_, ev) = a.events.find(gone).unwrap();
    assert!(
        matches!(
            ev,
            MembershipEvent::MemberDisappeared {
                reason: DisappearReason::Shutdown,
                ..
            }
        ),
        "{ev:?}"
    );
    assert_eq!(
        a.handles
            .failure_detector
            .as_ref()
            .unwrap()
            .snapshot()
            .confirmed,
        0
    );
    a.ch.stop().await;
}
