use std::sync::Arc;
use std::time::Duration;

use cohort_channel::{ChannelConfig, ChannelHandle, GroupChannel};
use cohort_interceptors::static_members::{StaticMemberConfig, StaticMembershipConfig};
use cohort_interceptors::{InterceptorConfig, StackHandles, build_stack};
use cohort_net::TokioNet;
use cohort_transport::TransportConfig;
use cohort_wire::Services;

pub(crate) use cohort_test_support::{Collect, Events, free_tcp_port as free_port, wait_for};

pub(crate) const NO_MEMBERSHIP: Services = Services::from_bits_truncate(3);

pub(crate) fn static_entry(ports: &[u16]) -> InterceptorConfig {
    InterceptorConfig::StaticMembership(StaticMembershipConfig {
        members: ports
            .iter()
            .map(|p| StaticMemberConfig {
                address: format!("127.0.0.1:{p}"),
                id: None,
            })
            .collect(),
        announce_interval: Duration::from_millis(50),
    })
}

pub(crate) struct Node {
    pub(crate) ch: ChannelHandle,
    pub(crate) handles: StackHandles,
    pub(crate) got: Arc<Collect>,
    pub(crate) events: Arc<Events>,
}

/// Starts a channel without a membership service on `port` with `stack`.
pub(crate) async fn node(port: u16, stack: &[InterceptorConfig]) -> Node {
    node_with(port, stack, |c| c).await
}

pub(crate) async fn node_with(
    port: u16,
    stack: &[InterceptorConfig],
    config: impl FnOnce(ChannelConfig) -> ChannelConfig,
) -> Node {
    let mut channel = config(ChannelConfig::default());
    let built = build_stack(stack, &mut channel, &mut rand::thread_rng()).unwrap();
    let got = Collect::new();
    let events = Events::new();
    let mut b = GroupChannel::builder()
        .transport(TransportConfig {
            port,
            auto_bind: 1,
            ..TransportConfig::default()
        })
        .services(NO_MEMBERSHIP)
        .config(channel)
        .listener(got.clone())
        .membership_listener(events.clone());
    for i in built.interceptors {
        b = b.interceptor(i);
    }
    let ch = b
        .start_with(TokioNet, &mut rand::thread_rng())
        .await
        .unwrap();
    Node {
        ch,
        handles: built.handles,
        got,
        events,
    }
}
