use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort_membership::{
    DisappearReason, LocalMemberConfig, Membership, MembershipConfig, MembershipEvent,
    MembershipHandle, MulticastConfig, StaticPeer,
};
use cohort_net::TokioNet;
use rand::SeedableRng;

use crate::support::{free_udp_port, private_multicast, wait_view};

async fn start(
    multicast: Option<MulticastConfig>,
    statics: Option<(SocketAddr, Vec<StaticPeer>)>,
    n: u16,
) -> MembershipHandle {
    let mut builder = Membership::builder(MembershipConfig::default())
        .multicast(multicast)
        .local(LocalMemberConfig {
            name: Some(format!("node-{n}")),
            data_addr: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 4000 + n))),
            ..LocalMemberConfig::default()
        });
    if let Some((bind, peers)) = statics {
        builder = builder.static_peers(bind, peers);
    }
    let mut rng = rand::rngs::StdRng::from_entropy();
    builder
        .start_with(TokioNet, &mut rng)
        .await
        .expect("membership starts")
}

#[tokio::test]
async fn three_multicast_services_converge_elect_one_lead_and_see_a_leave_at_once() {
    let m = private_multicast();
    if !m.loops_back(Duration::from_secs(1)) {
        eprintln!("SKIPPED: this kernel does not route multicast over loopback");
        return;
    }
    let mut nodes = Vec::new();
    for n in 1..=3 {
        if n > 1 {
            // Distinct start times (ms resolution), so the expected lead order is the start order;
            // within one millisecond the smaller id would win the tie.
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        nodes.push(start(Some(m.clone()), None, n).await);
    }
    let last_start = Instant::now();
    for node in &nodes {
        wait_view(node, Duration::from_secs(5), "3 members", |v| v.len() == 3).await;
    }
    let converged = last_start.elapsed();
    // Joins are answered at once; the target is 250 ms (checked in virtual time by
    // cohort-sim). On a loaded machine the bound here is looser, yet below the 3 s drop time.
    #[allow(clippy::print_stderr)]
    {
        eprintln!("three members converged in {converged:?}");
    }
    assert!(converged < Duration::from_secs(1), "took {converged:?}");
    let lead = nodes[0].view().lead;
    assert_eq!(
        lead,
        Some(nodes[0].local()),
        "the first started is the oldest"
    );
    for node in &nodes {
        assert_eq!(node.view().lead, lead);
    }

    // A graceful leave is seen at once, with reason shutdown, and the lead moves.
    let mut events = nodes[1].events();
    let leaving = nodes.remove(0);
    let leaving_id = leaving.local().id;
    let left_at = Instant::now();
    leaving.stop().await;
    // Well before the 3 s drop time: by the leave notice, not by expiry.
    for node in &nodes {
        wait_view(node, Duration::from_secs(2), "the leave", |v| v.len() == 2).await;
    }
    assert!(left_at.elapsed() < Duration::from_secs(2));
    let reason = loop {
        match events.recv().await.expect("event stream") {
            MembershipEvent::MemberDisappeared { member, reason } if member.id == leaving_id => {
                break reason;
            }
            _ => continue,
        }
    };
    assert_eq!(reason, DisappearReason::Shutdown);
    let new_lead = nodes[0].view().lead;
    assert_eq!(new_lead, Some(nodes[0].local()));
    assert_eq!(
        nodes[1].view().lead,
        new_lead,
        "views disagree:\n{:#?}\n{:#?}",
        nodes[0].view(),
        nodes[1].view()
    );

    // Payloads propagate at run time.
    nodes[1]
        .set_payload(Bytes::from_static(b"role=batch"))
        .await
        .unwrap();
    let id = nodes[1].local().id;
    wait_view(&nodes[0], Duration::from_secs(2), "the new payload", |v| {
        v.members
            .iter()
            .any(|m| m.member.id == id && m.member.payload == "role=batch")
    })
    .await;
    for node in nodes {
        node.stop().await;
    }
}

/// Records event names, for the listener test.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<&'static str>>);

impl cohort_membership::MembershipListener for Recorder {
    fn on_event(&self, event: &MembershipEvent) {
        let name = match event {
            MembershipEvent::MemberAdded(_) => "added",
            MembershipEvent::MemberDisappeared { .. } => "disappeared",
            MembershipEvent::LeadChanged { .. } => "lead",
            _ => "other",
        };
        self.0.lock().unwrap().push(name);
    }
}

#[tokio::test]
async fn static_members_find_each_other_without_multicast() {
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let a_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, pa));
    let b_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, pb));
    let secret = "a per-node secret";
    let peer = |addr: SocketAddr| -> StaticPeer {
        format!("{}:{secret}:{}", addr.ip(), addr.port())
            .parse()
            .unwrap()
    };
    let recorder = std::sync::Arc::new(Recorder::default());
    let a = Membership::builder(MembershipConfig::default())
        .multicast(None)
        .static_peers(a_addr, vec![peer(b_addr)])
        .listener(recorder.clone())
        .start_with(TokioNet, &mut rand::rngs::StdRng::from_entropy())
        .await
        .unwrap();
    // A later start time (ms resolution) makes b the younger member, whatever the ids.
    tokio::time::sleep(Duration::from_millis(3)).await;
    let b = start(None, Some((b_addr, vec![peer(a_addr)])), 2).await;
    wait_view(&a, Duration::from_secs(3), "b", |v| v.len() == 2).await;
    wait_view(&b, Duration::from_secs(3), "a", |v| v.len() == 2).await;
    b.stop().await;
    wait_view(&a, Duration::from_secs(1), "b's leave", |v| v.len() == 1).await;
    a.stop().await;
    assert!(a.stats().beacons_accepted > 0);
    // The listener saw every change, in order: a leads alone, b joins (and, being younger,
    // leaves the lead with a), b leaves.
    assert_eq!(
        *recorder.0.lock().unwrap(),
        ["lead", "added", "disappeared"],
        "listener events"
    );
}

#[tokio::test]
async fn a_receive_only_node_sees_the_cluster_but_is_not_seen() {
    let m = private_multicast();
    if !m.loops_back(Duration::from_secs(1)) {
        eprintln!("SKIPPED: this kernel does not route multicast over loopback");
        return;
    }
    let full = start(Some(m.clone()), None, 1).await;
    let listener = Membership::builder(MembershipConfig::default())
        .multicast(Some(m))
        .services(cohort_wire::Services::MBR_RX)
        .start_with(TokioNet, &mut rand::rngs::StdRng::from_entropy())
        .await
        .unwrap();
    wait_view(&listener, Duration::from_secs(3), "the full node", |v| {
        v.len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        full.view().len(),
        1,
        "a node without MBR_TX must not be seen"
    );
    listener.stop().await;
    full.stop().await;
}
