use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use cohort_channel::{ChannelHandle, GroupChannel, MembershipSetup};
use cohort_membership::{MembershipConfig, StaticPeer};
use cohort_net::TokioNet;
use cohort_transport::TransportConfig;
use cohort_wire::Services;

pub(crate) use cohort_test_support::{free_udp_port, wait_for};

/// `n` channels in this process that see each other through static membership on loopback.
pub(crate) async fn cluster(n: usize) -> Vec<ChannelHandle> {
    let ports: Vec<u16> = (0..n).map(|_| free_udp_port()).collect();
    let name = format!("maps-{}", ports[0]);
    let mut out = Vec::new();
    for port in &ports {
        let peers: Vec<u16> = ports.iter().copied().filter(|p| p != port).collect();
        out.push(node(&name, *port, &peers).await);
    }
    wait_for(
        "every channel sees every other",
        Duration::from_secs(10),
        || out.iter().all(|c| c.members().len() == n - 1),
    )
    .await;
    out
}

/// One more channel in the cluster of `name` whose members listen on `peers`.
pub(crate) async fn node(name: &str, port: u16, peers: &[u16]) -> ChannelHandle {
    let setup = MembershipSetup {
        config: MembershipConfig {
            cluster: name.into(),
            frequency: Duration::from_millis(100),
            drop_time: Duration::from_millis(1500),
            ..MembershipConfig::default()
        },
        multicast: None,
        static_members: Some((
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            peers
                .iter()
                .map(|p| format!("127.0.0.1:{p}").parse::<StaticPeer>().unwrap())
                .collect(),
        )),
        dns: None,
    };
    GroupChannel::builder()
        .transport(TransportConfig {
            port: 0,
            ..TransportConfig::default()
        })
        .services(Services::DEFAULT)
        .membership(setup)
        .start_with(TokioNet, &mut rand::thread_rng())
        .await
        .unwrap()
}
