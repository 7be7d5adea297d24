//! Helpers shared by the Cohort crates' tests, so that each is written once: ports that were
//! free a moment ago, waits on conditions with deadlines (never sleep-then-assert), listeners
//! that record what they saw, a loopback-only multicast configuration, and a child process that
//! is killed by its PID when the test ends, however it ends.
//!
//! It also holds the workspace's tidy checks (`tests/tidy.rs`): this crate is a default member,
//! so plain `cargo test` runs them.
//!
//! ```
//! use std::time::Duration;
//! use cohort_test_support::{free_udp_port, wait_for};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! assert_ne!(free_udp_port(), 0);
//! let start = std::time::Instant::now();
//! wait_for("a tenth of a second", Duration::from_secs(5), || {
//!     start.elapsed() >= Duration::from_millis(100)
//! })
//! .await;
//! # }
//! ```

use std::future::Future;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::process::Child;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cohort_channel::{ChannelListener, ChannelMessage, ListenerError};
use cohort_membership::{MembershipEvent, MembershipListener, MulticastConfig};
use cohort_wire::MemberId;

pub mod dns;

/// A UDP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral UDP port")
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral TCP port")
}

/// Polls `cond` every 5 ms until it holds; panics naming `what` once `deadline` has passed.
pub async fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `fut`'s output; panics if it takes longer than `deadline`.
pub async fn within<T>(deadline: Duration, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(deadline, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {deadline:?}"))
}

/// A multicast configuration private to one test: a group derived from a fresh port, on the
/// loopback interface with TTL 0, so that nothing can leave the host.
pub fn private_multicast() -> MulticastConfig {
    let port = free_udp_port();
    // The data path's port: free too, and never the beacon port.
    let data_port = std::iter::repeat_with(free_udp_port)
        .find(|p| *p != port)
        .expect("a second free port");
    MulticastConfig {
        group: Ipv4Addr::from(0xefff_0000 | u32::from(port)),
        port,
        interface: Ipv4Addr::LOCALHOST,
        ttl: 0,
        data_port: Some(data_port),
        ..MulticastConfig::default()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A channel listener that records (sender, payload) of every message.
#[derive(Debug, Default)]
pub struct Collect {
    got: Mutex<Vec<(MemberId, Vec<u8>)>>,
}

impl Collect {
    /// A new, shareable recorder.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// How many messages arrived.
    pub fn len(&self) -> usize {
        lock(&self.got).len()
    }

    /// True when none arrived.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every (sender, payload), in arrival order.
    pub fn messages(&self) -> Vec<(MemberId, Vec<u8>)> {
        lock(&self.got).clone()
    }

    /// Takes every (sender, payload) recorded so far, leaving none.
    pub fn take(&self) -> Vec<(MemberId, Vec<u8>)> {
        std::mem::take(&mut *lock(&self.got))
    }

    /// Every payload, in arrival order.
    pub fn payloads(&self) -> Vec<Vec<u8>> {
        lock(&self.got).iter().map(|(_, p)| p.clone()).collect()
    }
}

impl ChannelListener for Collect {
    fn message_received(&self, msg: &ChannelMessage) -> Result<(), ListenerError> {
        lock(&self.got).push((msg.from, msg.payload.to_vec()));
        Ok(())
    }
}

/// A membership listener that records every event with its arrival time.
#[derive(Debug, Default)]
pub struct Events {
    list: Mutex<Vec<(tokio::time::Instant, MembershipEvent)>>,
}

impl Events {
    /// A new, shareable recorder.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The first event matching `f`, with when it arrived.
    pub fn find(
        &self,
        f: impl Fn(&MembershipEvent) -> bool,
    ) -> Option<(tokio::time::Instant, MembershipEvent)> {
        lock(&self.list).iter().find(|(_, e)| f(e)).cloned()
    }

    /// Every event so far.
    pub fn all(&self) -> Vec<MembershipEvent> {
        lock(&self.list).iter().map(|(_, e)| e.clone()).collect()
    }
}

impl MembershipListener for Events {
    fn on_event(&self, ev: &MembershipEvent) {
        lock(&self.list).push((tokio::time::Instant::now(), ev.clone()));
    }
}

/// A child process that is killed (SIGKILL, by its PID) and reaped when dropped, so a failing
/// test never leaves it behind.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Replays a fuzz target's committed corpus in `cargo test`: every file in `dir` goes through
/// `target`, and there must be at least `seeds.len()` of them. With `COHORT_WRITE_CORPUS` set,
/// the seeds are written first (`seed-00`, `seed-01`, ...).
pub fn replay_corpus(dir: &std::path::Path, seeds: &[Vec<u8>], target: impl Fn(&[u8])) {
    if std::env::var_os("COHORT_WRITE_CORPUS").is_some() {
        std::fs::create_dir_all(dir).expect("create the corpus directory");
        for (i, seed) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), seed).expect("write a seed");
        }
    }
    let mut count = 0;
    for entry in std::fs::read_dir(dir).expect("the corpus directory") {
        let data = std::fs::read(entry.expect("a corpus entry").path()).expect("a corpus file");
        target(&data);
        count += 1;
    }
    assert!(
        count >= seeds.len(),
        "corpus missing in {} (COHORT_WRITE_CORPUS=1 writes the seeds)",
        dir.display()
    );
}
