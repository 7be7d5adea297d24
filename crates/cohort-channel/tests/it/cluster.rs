//! A channel with multicast membership: the MULTICAST option, cluster listeners, the error
//! handler, the heartbeat reaching interceptors, membership events through the pipeline.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cohort_channel::{
    ChannelConfig, ChannelMessage, ClusterListener, Cx, ErrorHandler, Interceptor, MembershipSetup,
    SendOutcome,
};
use cohort_membership::MembershipConfig;
use cohort_wire::{Member, SendOptions, Services};

use crate::support::*;

#[derive(Default)]
struct Seen {
    sent: AtomicUsize,
    received: AtomicUsize,
    errors: AtomicUsize,
    heartbeats: AtomicUsize,
    added: AtomicUsize,
}

impl cohort_membership::MembershipListener for Observe {
    fn on_event(&self, event: &cohort_membership::MembershipEvent) {
        if matches!(event, cohort_membership::MembershipEvent::MemberAdded(_)) {
            self.0.added.fetch_add(1, Ordering::SeqCst);
        }
    }
}

struct Observe(Arc<Seen>);

impl ClusterListener for Observe {
    fn message_sent(&self, _: &[Member], _: &Bytes, _: SendOptions) {
        self.0.sent.fetch_add(1, Ordering::SeqCst);
    }
    fn message_received(&self, _: &ChannelMessage) {
        self.0.received.fetch_add(1, Ordering::SeqCst);
    }
}

impl ErrorHandler for Observe {
    fn handle_error(&self, outcome: &SendOutcome) {
        assert!(!outcome.is_ok());
        self.0.errors.fetch_add(1, Ordering::SeqCst);
    }
}

struct Beat(Arc<Seen>);

impl Interceptor for Beat {
    fn name(&self) -> &'static str {
        "beat"
    }
    fn on_heartbeat(&mut self, _now: std::time::Instant, _cx: &mut Cx<'_>) {
        self.0.heartbeats.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multicast_option_listeners_error_handler_and_heartbeat() {
    let mcast = private_multicast();
    if !mcast.loops_back(Duration::from_millis(500)) {
        eprintln!("skipped: this host does not route multicast over loopback");
        return;
    }
    let setup = MembershipSetup {
        config: MembershipConfig {
            cluster: format!("chan-{}", mcast.port),
            ..MembershipConfig::default()
        },
        multicast: Some(mcast),
        static_members: None,
        dns: None,
    };
    let seen = Arc::new(Seen::default());
    let sink = collector();
    let quick = ChannelConfig {
        heartbeat_interval: Duration::from_millis(50),
        ..ChannelConfig::default()
    };
    let b = start(
        builder()
            .services(Services::DEFAULT)
            .membership(setup.clone())
            .listener(sink.clone())
            .cluster_listener(Arc::new(Observe(seen.clone()))),
    )
    .await;
    let a = start(
        builder()
            .services(Services::DEFAULT)
            .membership(setup)
            .config(quick)
            .interceptor(Box::new(Beat(seen.clone())))
            .cluster_listener(Arc::new(Observe(seen.clone())))
            .membership_listener(Arc::new(Observe(seen.clone())))
            .error_handler(Arc::new(Observe(seen.clone()))),
    )
    .await;
    wait_for("a sees b", Duration::from_secs(5), || {
        a.members().len() == 1
    })
    .await;
    assert_eq!(a.members()[0].id, b.local().id);
    // The membership event came up through the pipeline to the listener.
    wait_for(
        "member_added seen by the listener",
        Duration::from_secs(5),
        || seen.added.load(Ordering::SeqCst) >= 1,
    )
    .await;

    // MULTICAST: one datagram to the group, received by b, not by a itself.
    let o = a
        .send_all(Bytes::from_static(b"to the group"), SendOptions::MULTICAST)
        .await
        .unwrap()
        .await;
    assert!(o.is_ok(), "{o:?}");
    wait_for("the multicast message", Duration::from_secs(5), || {
        sink.len() == 1
    })
    .await;
    assert_eq!(sink.messages()[0].1, b"to the group");
    assert_eq!(a.stats().transport.frames_sent, 0, "not over TCP");
    // On the transport's own multicast path, not the membership's beacon socket.
    assert_eq!(a.stats().transport.multicast_sent, 1);
    assert_eq!(b.stats().transport.multicast_received, 1);

    // An ASYNCHRONOUS send to a member that is gone ends in the error handler.
    let mut ghost = b.local().clone();
    ghost.id = cohort_wire::MemberId::from_bytes([7; 16]);
    ghost.port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = a
        .send(
            &[ghost],
            Bytes::from_static(b"x"),
            SendOptions::ASYNCHRONOUS,
        )
        .await
        .unwrap();
    assert!(r.await.queued);
    wait_for("the error handler", Duration::from_secs(10), || {
        seen.errors.load(Ordering::SeqCst) == 1
    })
    .await;

    // Cluster listeners saw both sends (on a) and the receipt (on b); the heartbeat ran.
    assert_eq!(seen.sent.load(Ordering::SeqCst), 2);
    assert_eq!(seen.received.load(Ordering::SeqCst), 1);
    wait_for("heartbeats", Duration::from_secs(5), || {
        seen.heartbeats.load(Ordering::SeqCst) >= 2
    })
    .await;
    a.stop().await;
    b.stop().await;
}
