//! Acknowledgement truth: a SYNCHRONIZED_ACK sender is never told "processed" for a message no
//! listener saw, and an outcome with no results says why.

use std::time::Duration;

use bytes::Bytes;
use cohort_channel::{Cx, Interceptor, Outbound};
use cohort_wire::SendOptions;

use crate::support::*;

const SYNC_ACK: SendOptions = SendOptions::USE_ACK.union(SendOptions::SYNCHRONIZED_ACK);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_ack_to_a_node_without_listeners_is_fail_acked() {
    let b = start(builder()).await;
    let a = start(builder()).await;
    let o = a
        .send(&[b.local().clone()], Bytes::from_static(b"x"), SYNC_ACK)
        .await
        .unwrap()
        .await;
    assert!(!o.is_ok(), "{o:?}");
    assert_fail_ack(&o, "no listener");
    assert_eq!(b.stats().no_listener, 1);
    a.stop().await;
    b.stop().await;
}

/// Drops every application message on its way down.
struct BlackHole;

impl Interceptor for BlackHole {
    fn name(&self) -> &'static str {
        "black_hole"
    }
    fn on_send(&mut self, _msg: Outbound, _cx: &mut Cx<'_>) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_without_results_is_not_ok() {
    let sink = collector();
    let b = start(builder().listener(sink.clone())).await;
    let a = start(builder().interceptor(Box::new(BlackHole))).await;
    let o = tokio::time::timeout(
        Duration::from_secs(5),
        a.send(&[b.local().clone()], Bytes::from_static(b"x"), SYNC_ACK)
            .await
            .unwrap(),
    )
    .await
    .expect("the receipt resolves");
    assert!(o.results.is_empty());
    assert!(o.lost.is_some(), "{o:?}");
    assert!(!o.is_ok(), "no result is not success");
    assert_eq!(sink.len(), 0);
    a.stop().await;
    b.stop().await;
}
