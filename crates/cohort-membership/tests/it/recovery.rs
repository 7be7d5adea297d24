//! Driver behaviour that needs a misbehaving network: a fake `Net` whose multicast socket
//! fails on every receive, in paused tokio time.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cohort_membership::{Membership, MembershipConfig, MulticastConfig, RecoveryConfig};
use cohort_net::{MulticastOptions, Net, UdpSocket};
use rand::SeedableRng;

/// A socket whose receives always fail and whose sends succeed.
struct BrokenSocket;

impl UdpSocket for BrokenSocket {
    async fn send_to(&self, buf: &[u8], _to: SocketAddr) -> io::Result<usize> {
        Ok(buf.len())
    }

    async fn recv_from(&self, _buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        Err(io::Error::other("interface went away"))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::from(([127, 0, 0, 1], 45564)))
    }
}

/// Counts multicast binds; binds after the first fail `fail_reopens` times.
#[derive(Clone)]
struct BrokenNet {
    binds: Arc<AtomicU32>,
    fail_reopens: u32,
}

impl Net for BrokenNet {
    type UdpSocket = BrokenSocket;
    // Membership uses no TCP; these are the real types, never called here.
    type TcpListener = tokio::net::TcpListener;
    type TcpStream = tokio::net::TcpStream;

    async fn bind_tcp(&self, _addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
        Err(io::Error::other("no TCP in this test"))
    }

    async fn connect_tcp(&self, _addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
        Err(io::Error::other("no TCP in this test"))
    }

    async fn bind_udp(&self, _addr: SocketAddr) -> io::Result<BrokenSocket> {
        Ok(BrokenSocket)
    }

    async fn bind_multicast(&self, _opts: &MulticastOptions) -> io::Result<BrokenSocket> {
        let n = self.binds.fetch_add(1, Ordering::SeqCst);
        if n >= 1 && n <= self.fail_reopens {
            return Err(io::Error::other("no such device"));
        }
        Ok(BrokenSocket)
    }

    fn wall_clock_ms(&self) -> u64 {
        1_700_000_000_000
    }

    fn host_name(&self) -> String {
        "broken".into()
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_socket_is_reopened_and_failed_reopens_are_retried_without_spinning() {
    let net = BrokenNet {
        binds: Arc::new(AtomicU32::new(0)),
        fail_reopens: 3,
    };
    let multicast = MulticastConfig {
        recovery: RecoveryConfig {
            counter: 5,
            sleep: Duration::from_millis(100),
            error_pause: Duration::from_millis(10),
            ..RecoveryConfig::default()
        },
        ..MulticastConfig::default()
    };
    let handle = Membership::builder(MembershipConfig::default())
        .multicast(Some(multicast))
        .start_with(net.clone(), &mut rand::rngs::StdRng::seed_from_u64(1))
        .await
        .unwrap();
    // 5 errors 10 ms apart, then 3 failed reopens 100 ms apart, then a good one (~350 ms),
    // then, the socket still failing, another cycle.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stats = handle.stats();
    assert!(stats.socket_reopens >= 1, "{stats:?}");
    // Receives pause after each error: no busy loop on a socket that keeps failing.
    assert!((5..=40).contains(&stats.socket_errors), "{stats:?}");
    // Bounded attempts: one initial bind, three failures, then a success per recovery cycle.
    let binds = net.binds.load(Ordering::SeqCst);
    assert!((5..=8).contains(&binds), "{binds} binds");
    handle.stop().await;
}

#[tokio::test(start_paused = true)]
async fn after_counter_failed_reopens_the_driver_slows_down_instead_of_giving_up() {
    let net = BrokenNet {
        binds: Arc::new(AtomicU32::new(0)),
        fail_reopens: u32::MAX,
    };
    let multicast = MulticastConfig {
        recovery: RecoveryConfig {
            counter: 3,
            sleep: Duration::from_millis(100),
            slow_sleep: Duration::from_secs(10),
            error_pause: Duration::from_millis(10),
            ..RecoveryConfig::default()
        },
        ..MulticastConfig::default()
    };
    let handle = Membership::builder(MembershipConfig::default())
        .multicast(Some(multicast))
        .start_with(net.clone(), &mut rand::rngs::StdRng::seed_from_u64(2))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // 1 initial + 3 fast attempts.
    assert_eq!(net.binds.load(Ordering::SeqCst), 4);
    tokio::time::sleep(Duration::from_secs(25)).await;
    // Then one every 10 s: still trying, not spinning.
    assert_eq!(net.binds.load(Ordering::SeqCst), 6);
    assert!(!handle.is_stopped());
    handle.stop().await;
}
