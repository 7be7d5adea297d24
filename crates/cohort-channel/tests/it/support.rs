use std::sync::{Arc, Mutex};
use std::time::Duration;

use cohort_channel::{
    ChannelBuilder, ChannelConfig, ChannelHandle, ChannelListener, ChannelMessage, GroupChannel,
    ListenerError,
};
use cohort_net::TokioNet;
use cohort_transport::TransportConfig;
use cohort_wire::{MemberId, Services};

pub(crate) const NO_MEMBERSHIP: Services = Services::from_bits_truncate(3);

pub(crate) fn transport() -> TransportConfig {
    TransportConfig {
        port: 0,
        ..TransportConfig::default()
    }
}

/// A builder for a channel without membership on an ephemeral port.
pub(crate) fn builder() -> ChannelBuilder {
    GroupChannel::builder()
        .transport(transport())
        .services(NO_MEMBERSHIP)
        .config(ChannelConfig::default())
}

pub(crate) async fn start(b: ChannelBuilder) -> ChannelHandle {
    b.start(TokioNet, &mut rand::thread_rng()).await.unwrap()
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
}

/// Polls `cond` every few ms until it holds or `deadline` passes.
pub(crate) async fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(crate) fn collector() -> Arc<Collect> {
    Arc::new(Collect::default())
}
