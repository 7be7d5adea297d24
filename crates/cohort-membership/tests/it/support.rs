//! Helpers: free ports, a loopback multicast probe, waiting on views with deadlines.

use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use cohort_membership::{MembershipHandle, MembershipView, MulticastConfig};

/// A UDP port that was free a moment ago (bound to port 0, then released).
pub(crate) fn free_udp_port() -> u16 {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A multicast configuration private to one test: a group derived from a fresh port, pinned to
/// the loopback interface with TTL 0 so that nothing can leave the host.
pub(crate) fn private_multicast() -> MulticastConfig {
    let port = free_udp_port();
    MulticastConfig {
        group: Ipv4Addr::from(0xefff_0000 | u32::from(port)),
        port,
        interface: Ipv4Addr::LOCALHOST,
        ttl: 0,
        ..MulticastConfig::default()
    }
}

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
