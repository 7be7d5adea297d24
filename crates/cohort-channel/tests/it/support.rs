use std::sync::Arc;

use cohort_channel::{ChannelBuilder, ChannelConfig, ChannelHandle, GroupChannel};
use cohort_net::TokioNet;
use cohort_transport::TransportConfig;
use cohort_wire::Services;

pub(crate) use cohort_test_support::{Collect, private_multicast, wait_for};

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
    b.start_with(TokioNet, &mut rand::thread_rng())
        .await
        .unwrap()
}

pub(crate) fn collector() -> Arc<Collect> {
    Collect::new()
}

/// Asserts that the first result of `o` is a FAIL_ACK whose reason contains `text`.
pub(crate) fn assert_fail_ack(o: &cohort_channel::SendOutcome, text: &str) {
    match o.results.first().map(|r| &r.result) {
        Some(Err(cohort_channel::SendError::FailAck { reason, .. })) => {
            assert!(reason.contains(text), "{reason}");
        }
        other => panic!("expected a FAIL_ACK with {text:?}, got {other:?}"),
    }
}
