//! Helpers: free ports, a loopback multicast probe, waiting on views with deadlines.

use std::time::Duration;

use cohort_membership::{MembershipHandle, MembershipView};

pub(crate) use cohort_test_support::{free_udp_port, private_multicast};

/// Waits until `pred` holds for the handle's view, failing with `what` after `deadline`.
pub(crate) async fn wait_view(
    handle: &MembershipHandle,
    deadline: Duration,
    what: &str,
    pred: impl FnMut(&MembershipView) -> bool,
) -> MembershipView {
    let mut rx = handle.watch();
    match tokio::time::timeout(deadline, rx.wait_for(pred)).await {
        Ok(Ok(view)) => view.clone(),
        Ok(Err(_)) => panic!("membership stopped while waiting for {what}"),
        Err(_) => panic!(
            "timed out after {deadline:?} waiting for {what}; view: {:#?}",
            handle.view()
        ),
    }
}
