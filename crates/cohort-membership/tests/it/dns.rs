//! DNS discovery against a real DNS server on loopback (`cohort_test_support::dns`), with
//! records added and removed while the members run.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cohort_membership::{
    Discovery, DnsConfig, DnsRecord, LocalMemberConfig, Membership, MembershipConfig,
    MembershipEvent, MembershipHandle, MembershipListener,
};
use cohort_net::TokioNet;
use cohort_test_support::dns::DnsServer;
use cohort_test_support::wait_for;
use rand::SeedableRng;

use crate::support::{free_udp_port, wait_view};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[derive(Default)]
struct Events(Mutex<Vec<MembershipEvent>>);

impl MembershipListener for Events {
    fn on_event(&self, event: &MembershipEvent) {
        self.0.lock().unwrap().push(event.clone());
    }
}

impl Events {
    fn resolved(&self) -> Vec<Vec<SocketAddr>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                MembershipEvent::DnsResolved { addresses } => Some(addresses.clone()),
                _ => None,
            })
            .collect()
    }

    fn failures(&self) -> Vec<(String, u32, Duration)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                MembershipEvent::DnsFailed {
                    reason,
                    attempt,
                    retry_in,
                } => Some((reason.clone(), *attempt, *retry_in)),
                _ => None,
            })
            .collect()
    }
}

fn quick(dns: DnsConfig) -> DnsConfig {
    DnsConfig {
        refresh: Duration::from_millis(300),
        min_refresh: Duration::from_millis(100),
        retry: Duration::from_millis(50),
        timeout: Duration::from_millis(500),
        ..dns
    }
}

fn fast() -> MembershipConfig {
    MembershipConfig {
        frequency: Duration::from_millis(100),
        drop_time: Duration::from_millis(1000),
        ..MembershipConfig::default()
    }
}

async fn start(port: u16, n: u16, dns: DnsConfig, events: Arc<Events>) -> MembershipHandle {
    Membership::builder(fast())
        .multicast(None)
        .static_peers(SocketAddr::new(LOCAL, port), vec![])
        .dns(Some(dns))
        .listener(events)
        .local(LocalMemberConfig {
            name: Some(format!("node-{n}")),
            data_addr: Some(SocketAddr::new(LOCAL, 4000 + n)),
            ..LocalMemberConfig::default()
        })
        .start_with(TokioNet, &mut rand::rngs::StdRng::from_entropy())
        .await
        .expect("start")
}

#[tokio::test]
async fn srv_records_added_and_removed_while_the_members_run() {
    let server = DnsServer::start(1);
    let name = "_cohort._udp.test.internal";
    let (pa, pb, pc) = (free_udp_port(), free_udp_port(), free_udp_port());
    for host in ["a.test.internal", "b.test.internal", "c.test.internal"] {
        server.set_addrs(host, &[LOCAL]);
    }
    server.set_srv(name, &[(pa, "a.test.internal"), (pb, "b.test.internal")]);
    let dns = quick(DnsConfig {
        record: DnsRecord::Srv,
        resolver: Some(server.addr()),
        ..DnsConfig::new(name)
    });
    let (ea, eb, ec) = (Arc::default(), Arc::default(), Arc::default());
    let a = start(pa, 1, dns.clone(), Arc::clone(&ea)).await;
    let b = start(pb, 2, dns.clone(), eb).await;
    let view = wait_view(&a, Duration::from_secs(5), "a sees b", |v| v.len() == 2).await;
    wait_view(&b, Duration::from_secs(5), "b sees a", |v| v.len() == 2).await;
    let other = view.members.iter().find(|m| !m.local).unwrap();
    assert_eq!(other.discovered, Discovery::Dns);
    assert_eq!(
        ea.resolved().last().unwrap(),
        &vec![SocketAddr::new(LOCAL, pb)]
    );

    // A record added while the cluster runs: c joins everyone.
    server.set_srv(
        name,
        &[
            (pa, "a.test.internal"),
            (pb, "b.test.internal"),
            (pc, "c.test.internal"),
        ],
    );
    let c = start(pc, 3, dns.clone(), ec).await;
    for (h, who) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        wait_view(
            h,
            Duration::from_secs(5),
            &format!("{who} sees three"),
            |v| v.len() == 3,
        )
        .await;
    }
    let mut abc = vec![SocketAddr::new(LOCAL, pb), SocketAddr::new(LOCAL, pc)];
    abc.sort(); // as resolved
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while ea.resolved().last() != Some(&abc) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a never resolved {abc:?}: {:?}",
            ea.resolved()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // c's record removed: a stops listing it (the event shows the new set); c leaves and
    // stays gone.
    server.set_srv(name, &[(pa, "a.test.internal"), (pb, "b.test.internal")]);
    wait_for("a resolves two again", Duration::from_secs(5), || {
        ea.resolved().last() == Some(&vec![SocketAddr::new(LOCAL, pb)]) && ea.resolved().len() >= 3
    })
    .await;
    c.stop().await;
    wait_view(&a, Duration::from_secs(5), "c gone", |v| v.len() == 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.view().len(), 2, "c does not come back");
    assert!(server.queries() > 3);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn nxdomain_at_boot_is_retried_with_backoff_and_reported_then_a_records_join() {
    let server = DnsServer::start(0);
    let name = "members.test.internal";
    let (pa, pb) = (free_udp_port(), free_udp_port());
    // A records carry one port for every member: here b's, so a finds b, and b (which
    // resolves to itself only) finds a through a's beacons.
    let dns = quick(DnsConfig {
        port: Some(pb),
        resolver: Some(server.addr()),
        ..DnsConfig::new(name)
    });
    let (ea, eb) = (Arc::new(Events::default()), Arc::default());
    let a = start(pa, 1, dns.clone(), Arc::clone(&ea)).await;
    wait_for("three failures", Duration::from_secs(5), || {
        ea.failures().len() >= 3
    })
    .await;
    let failures = ea.failures();
    assert!(failures[0].0.contains(name), "{failures:?}");
    assert_eq!(failures[0].1, 1);
    assert!(failures[1].2 > failures[0].2, "backoff grows: {failures:?}");
    assert_eq!(a.view().len(), 1);
    assert!(a.stats().dns_failures >= 3);

    server.set_addrs(name, &[LOCAL]);
    let b = start(pb, 2, dns, eb).await;
    let view = wait_view(&a, Duration::from_secs(5), "a sees b", |v| v.len() == 2).await;
    assert_eq!(
        view.members.iter().find(|m| !m.local).unwrap().discovered,
        Discovery::Dns
    );
    let view = wait_view(&b, Duration::from_secs(5), "b sees a", |v| v.len() == 2).await;
    assert_eq!(
        view.members.iter().find(|m| !m.local).unwrap().discovered,
        Discovery::Unicast,
        "b resolves only itself (skipped) and learns a from a's beacons"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_dead_resolver_is_not_fatal() {
    let dead = SocketAddr::new(LOCAL, free_udp_port());
    let events = Arc::new(Events::default());
    let dns = quick(DnsConfig {
        port: Some(45_999),
        resolver: Some(dead),
        ..DnsConfig::new("nobody.test.internal")
    });
    let a = start(free_udp_port(), 1, dns, Arc::clone(&events)).await;
    wait_for("two failures", Duration::from_secs(10), || {
        events.failures().len() >= 2
    })
    .await;
    assert!(!a.is_stopped());
    a.stop().await;
}
