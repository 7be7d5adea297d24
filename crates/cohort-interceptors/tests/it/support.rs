use std::sync::{Arc, Mutex};
use std::time::Duration;

use cohort_channel::{
    ChannelConfig, ChannelHandle, ChannelListener, ChannelMessage, GroupChannel, ListenerError,
};
use cohort_interceptors::static_members::{StaticMemberConfig, StaticMembershipConfig};
use cohort_interceptors::{InterceptorConfig, StackHandles, build_stack};
use cohort_membership::MembershipEvent;
use cohort_membership::MembershipListener;
use cohort_net::TokioNet;
use cohort_transport::TransportConfig;
use cohort_wire::{MemberId, Services};

pub(crate) const NO_MEMBERSHIP: Services = Services::from_bits_truncate(3);

/// A port free now (bound and released: a small race, acceptable on loopback).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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
    let got = Arc::new(Collect::default());
    let events = Arc::new(Events::default());
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
    let ch = b.start(TokioNet, &mut rand::thread_rng()).await.unwrap();
    Node {
        ch,
        handles: built.handles,
        got,
        events,
    }
}

/// Records (sender, payload) of every message.
#[derive(Default)]
pub(crate) struct Collect {
    pub(crate) got: Mutex<Vec<(MemberId, Vec<u8>)>>,
}

impl ChannelListener for Collect {
    fn message_received(&self, msg: &ChannelMessage) -> Result<(), ListenerError> {
        self.got
            .lock()
            .unwrap()
            .push((msg.from, msg.payload.to_vec()));
        Ok(())
    }
}

impl Collect {
    pub(crate) fn len(&self) -> usize {
        self.got.lock().unwrap().len()
    }
    pub(crate) fn payloads(&self) -> Vec<Vec<u8>> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, p)| p.clone())
            .collect()
    }
}

/// Records membership events (after the interceptors) with their arrival time.
#[derive(Default)]
pub(crate) struct Events {
    pub(crate) list: Mutex<Vec<(tokio::time::Instant, MembershipEvent)>>,
}

impl MembershipListener for Events {
    fn on_event(&self, ev: &MembershipEvent) {
        self.list
            .lock()
            .unwrap()
            .push((tokio::time::Instant::now(), ev.clone()));
    }
}

impl Events {
    pub(crate) fn find(
        &self,
        f: impl Fn(&MembershipEvent) -> bool,
    ) -> Option<(tokio::time::Instant, MembershipEvent)> {
        self.list
            .lock()
            .unwrap()
            .iter()
            .find(|(_, e)| f(e))
            .cloned()
    }
}

/// Polls `cond` every few ms until it holds or `deadline` passes.
pub(crate) async fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
