//! Deterministic simulation of Cohort under turmoil.
//!
//! [`TurmoilNet`] implements [`cohort_net::Net`] over turmoil's simulated UDP (multicast
//! included) and virtual clock, so the real drivers run unchanged inside `cargo test`, with
//! partitions, crashes and restarts, in virtual time. [`Cluster`] wraps a `turmoil::Sim` with
//! membership nodes and the predicates tests wait on; [`seeds`] and [`run_seeded`] make every
//! run replayable: a failing seed is printed with the command that replays it.
//!
//! ```
//! use std::time::Duration;
//! use cohort_sim::{Cluster, NodeSpec};
//!
//! let mut cluster = Cluster::new(7);
//! for name in ["n1", "n2", "n3"] {
//!     cluster.add(NodeSpec::new(name));
//! }
//! let took = cluster
//!     .run_until(Duration::from_secs(2), |c| c.all_see(&["n1", "n2", "n3"]))
//!     .expect("three nodes converge");
//! assert!(took < Duration::from_secs(1));
//! ```

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cohort_membership::{
    LocalMemberConfig, Membership, MembershipConfig, MembershipEvent, MembershipView,
};
use cohort_net::{MulticastOptions, Net, TcpListener, UdpSocket};
use rand::SeedableRng;

/// The wall clock of every simulation starts here (2023-11-14), so runs are reproducible.
pub const SIM_EPOCH_MS: u64 = 1_700_000_000_000;

/// turmoil's networking and virtual clock behind [`Net`].
#[derive(Clone, Debug)]
pub struct TurmoilNet {
    host: String,
}

impl TurmoilNet {
    /// The net of the host named `host`.
    pub fn new(host: impl Into<String>) -> Self {
        Self { host: host.into() }
    }
}

/// A simulated UDP socket.
pub struct SimUdp(turmoil::net::UdpSocket);

impl UdpSocket for SimUdp {
    fn send_to<'a>(
        &'a self,
        buf: &'a [u8],
        to: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        self.0.send_to(buf, to)
    }

    fn recv_from<'a>(
        &'a self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send + 'a {
        self.0.recv_from(buf)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// A simulated TCP listener.
pub struct SimTcpListener(turmoil::net::TcpListener);

impl TcpListener for SimTcpListener {
    type Stream = turmoil::net::TcpStream;

    async fn accept(&self) -> io::Result<(Self::Stream, SocketAddr)> {
        self.0.accept().await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl Net for TurmoilNet {
    type UdpSocket = SimUdp;
    type TcpListener = SimTcpListener;
    type TcpStream = turmoil::net::TcpStream;

    async fn bind_tcp(&self, addr: SocketAddr) -> io::Result<SimTcpListener> {
        turmoil::net::TcpListener::bind(addr)
            .await
            .map(SimTcpListener)
    }

    async fn connect_tcp(&self, addr: SocketAddr) -> io::Result<turmoil::net::TcpStream> {
        turmoil::net::TcpStream::connect(addr).await
    }

    async fn bind_udp(&self, addr: SocketAddr) -> io::Result<SimUdp> {
        turmoil::net::UdpSocket::bind(addr).await.map(SimUdp)
    }

    async fn bind_multicast(&self, opts: &MulticastOptions) -> io::Result<SimUdp> {
        let socket = turmoil::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, opts.port)).await?;
        // turmoil supports only the unspecified interface (or 127.0.0.1) for joins.
        socket.join_multicast_v4(opts.group, Ipv4Addr::UNSPECIFIED)?;
        socket.set_multicast_loop_v4(opts.loopback)?;
        Ok(SimUdp(socket))
    }

    fn wall_clock_ms(&self) -> u64 {
        let elapsed = turmoil::sim_elapsed().unwrap_or_default();
        SIM_EPOCH_MS + u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
    }

    fn host_name(&self) -> String {
        self.host.clone()
    }
}

/// What a test asks of one node.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Host name (`n1`, ...).
    pub name: String,
    /// Membership settings.
    pub config: MembershipConfig,
}

impl NodeSpec {
    /// A node on defaults.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            config: MembershipConfig::default(),
        }
    }
}

/// What the simulated nodes publish for the test to read.
#[derive(Default)]
struct Shared {
    views: BTreeMap<String, MembershipView>,
    /// Every event, in order, per node: `"member_added n2"`.
    trace: Vec<String>,
    /// Nodes asked to leave gracefully.
    leave: Vec<String>,
}

/// A simulated cluster of membership nodes.
pub struct Cluster {
    sim: turmoil::Sim<'static>,
    shared: Arc<Mutex<Shared>>,
    seed: u64,
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    // A panicking host is reported by turmoil itself; the state is still readable.
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Cluster {
    /// A cluster with this seed: turmoil's RNG (latencies, ordering) and every node's id RNG
    /// derive from it.
    pub fn new(seed: u64) -> Self {
        let sim = turmoil::Builder::new()
            .rng_seed(seed)
            .tick_duration(Duration::from_millis(1))
            .simulation_duration(Duration::from_secs(3600))
            .min_message_latency(Duration::from_millis(1))
            .max_message_latency(Duration::from_millis(20))
            .build();
        Self {
            sim,
            shared: Arc::default(),
            seed,
        }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Adds a host running a membership node; it starts on the next step. A host that is
    /// bounced restarts with a fresh member id, as a restarted process does.
    pub fn add(&mut self, spec: NodeSpec) {
        let shared = Arc::clone(&self.shared);
        let seed = self.seed;
        let restarts = Arc::new(Mutex::new(0u64));
        let name = spec.name.clone();
        self.sim.host(name.as_str(), move || {
            let shared = Arc::clone(&shared);
            let spec = spec.clone();
            let restarts = Arc::clone(&restarts);
            async move {
                let incarnation = {
                    let mut r = restarts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    *r += 1;
                    *r
                };
                let ip = turmoil::lookup(spec.name.as_str());
                let net = TurmoilNet::new(spec.name.clone());
                let mut rng = rand::rngs::StdRng::seed_from_u64(
                    seed ^ name_hash(&spec.name) ^ incarnation.rotate_left(32),
                );
                let handle = Membership::builder(spec.config.clone())
                    .local(LocalMemberConfig {
                        name: Some(spec.name.clone()),
                        data_addr: Some(SocketAddr::new(ip, 4000)),
                        ..LocalMemberConfig::default()
                    })
                    .start_with(net, &mut rng)
                    .await
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error>)?;
                let mut views = handle.watch();
                let mut events = handle.events();
                loop {
                    let leave = {
                        let mut s = lock(&shared);
                        s.views.insert(spec.name.clone(), views.borrow().clone());
                        s.leave.contains(&spec.name)
                    };
                    if leave {
                        handle.stop().await;
                        lock(&shared).views.remove(&spec.name);
                        return Ok(());
                    }
                    tokio::select! {
                        biased;
                        event = events.recv() => {
                            if let Ok(event) = event {
                                lock(&shared).trace.push(format!("{} {}", spec.name, describe(&event)));
                            }
                        }
                        changed = views.changed() => if changed.is_err() { return Ok(()) },
                        () = tokio::time::sleep(Duration::from_millis(5)) => {}
                    }
                }
            }
        });
    }

    /// Runs the simulation until `pred` holds, or fails after `limit` of virtual time. Returns
    /// the virtual time it took.
    pub fn run_until(
        &mut self,
        limit: Duration,
        mut pred: impl FnMut(&Cluster) -> bool,
    ) -> Result<Duration, String> {
        let start = self.sim.elapsed();
        loop {
            if pred(self) {
                return Ok(self.sim.elapsed() - start);
            }
            if self.sim.elapsed() - start > limit {
                return Err(format!(
                    "condition not met within {limit:?} of virtual time (seed {}); views:\n{}",
                    self.seed,
                    self.describe_views()
                ));
            }
            self.sim
                .step()
                .map_err(|e| format!("simulation failed (seed {}): {e}", self.seed))?;
        }
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) -> Result<(), String> {
        let end = self.sim.elapsed() + d;
        while self.sim.elapsed() < end {
            self.sim
                .step()
                .map_err(|e| format!("simulation failed (seed {}): {e}", self.seed))?;
        }
        Ok(())
    }

    /// The names `node` sees, itself included, sorted.
    pub fn seen_by(&self, node: &str) -> Vec<String> {
        let s = lock(&self.shared);
        let mut names: Vec<String> = s
            .views
            .get(node)
            .map(|v| v.members.iter().map(|m| m.member.name.clone()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// True when each of `nodes` sees exactly `nodes`.
    pub fn all_see(&self, nodes: &[&str]) -> bool {
        let mut want: Vec<String> = nodes.iter().map(|s| (*s).to_owned()).collect();
        want.sort();
        nodes.iter().all(|n| self.seen_by(n) == want)
    }

    /// The lead's name as `node` sees it.
    pub fn lead_of(&self, node: &str) -> Option<String> {
        lock(&self.shared)
            .views
            .get(node)
            .and_then(|v| v.lead_member().map(|m| m.name.clone()))
    }

    /// Crashes a host (no shutdown beacon) and forgets its published view.
    pub fn crash(&mut self, node: &str) {
        self.sim.crash(node);
        lock(&self.shared).views.remove(node);
    }

    /// Restarts a crashed host (a new process: a new member id).
    pub fn bounce(&mut self, node: &str) {
        self.sim.bounce(node);
    }

    /// Asks a node to leave gracefully.
    pub fn leave(&mut self, node: &str) {
        lock(&self.shared).leave.push(node.into());
    }

    /// Cuts every link between the two groups of hosts.
    pub fn partition(&mut self, a: &[&str], b: &[&str]) {
        for x in a {
            for y in b {
                self.sim.partition(*x, *y);
            }
        }
    }

    /// Restores every link between the two groups.
    pub fn repair(&mut self, a: &[&str], b: &[&str]) {
        for x in a {
            for y in b {
                self.sim.repair(*x, *y);
            }
        }
    }

    /// Every event every node reported, in order: the run's trace, for determinism checks.
    pub fn trace(&self) -> Vec<String> {
        lock(&self.shared).trace.clone()
    }

    /// Every node's last published view, one line each (for failure messages).
    pub fn describe_views(&self) -> String {
        let s = lock(&self.shared);
        s.views
            .iter()
            .map(|(n, v)| {
                let names: Vec<&str> = v.members.iter().map(|m| m.member.name.as_str()).collect();
                let lead = v.lead_member().map_or("-", |m| m.name.as_str());
                format!("  {n}: {names:?} lead={lead}\n")
            })
            .collect()
    }

    /// The IP turmoil gave a host.
    pub fn ip(&self, node: &str) -> IpAddr {
        self.sim.lookup(node)
    }
}

fn name_hash(name: &str) -> u64 {
    // FNV-1a: stable across runs and platforms, unlike the std hasher.
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn describe(event: &MembershipEvent) -> String {
    match event {
        MembershipEvent::MemberAdded(m) => format!("member_added {}", m.name),
        MembershipEvent::MemberUpdated(m) => format!("member_updated {}", m.name),
        MembershipEvent::MemberDisappeared { member, reason } => {
            format!("member_disappeared {} {}", member.name, reason.name())
        }
        MembershipEvent::LeadChanged { lead, .. } => format!(
            "lead_changed {}",
            lead.as_ref().map_or("-", |m| m.name.as_str())
        ),
        other => format!("{other:?}"),
    }
}

/// The seeds to run: `COHORT_SIM_SEED` (one), else `COHORT_SIM_SEEDS` (that many, from 1),
/// else the fixed set `cargo test` uses.
pub fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("COHORT_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    if let Some(n) = std::env::var("COHORT_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        return (1..=n).collect();
    }
    vec![1, 2, 3]
}

/// Runs `scenario` for every seed of [`seeds`]; on failure, panics with the seed and the
/// command that replays it.
pub fn run_seeded(test: &str, scenario: impl Fn(u64) -> Result<(), String>) {
    for seed in seeds() {
        if let Err(err) = scenario(seed) {
            panic!(
                "{err}\nreplay: COHORT_SIM_SEED={seed} cargo test -p cohort-sim --test it {test}"
            );
        }
    }
}
