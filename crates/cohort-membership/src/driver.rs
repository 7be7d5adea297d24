//! The tokio driver: one task owns a [`MembershipCore`] and moves datagrams between it and the
//! sockets of a [`Net`]; a clonable [`MembershipHandle`] talks to it.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cohort_net::{Alarm, Net, UdpSocket};
use cohort_wire::{Member, MemberId, MemberKey, Services};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::config::{
    ConfigError, DnsConfig, LocalMemberConfig, MembershipConfig, MulticastConfig, StaticPeer,
};
use crate::core::{Destination, MembershipCore, Via};
use crate::view::{FailureEvidence, MembershipEvent, MembershipStats, MembershipView};

/// Capacity of the command queue from handles to the driver task (senders wait when full).
const COMMAND_QUEUE: usize = 64;
/// Largest datagram read.
const RECV_BUFFER: usize = 65_536;

/// Callbacks for those who prefer them to the event stream. Called on the driver task, in
/// order, after each change: they must return quickly and must not block.
pub trait MembershipListener: Send + Sync + 'static {
    /// Called for every event.
    fn on_event(&self, event: &MembershipEvent);
}

/// Why membership could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A socket could not be opened.
    #[error("cannot open the {what} socket on {addr}: {source}")]
    Socket {
        /// Which socket.
        what: &'static str,
        /// Where.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
}

enum Command {
    SetPayload(Bytes, oneshot::Sender<Result<(), ConfigError>>),
    ReportFailed(MemberKey, FailureEvidence),
    Shutdown(oneshot::Sender<()>),
    Abort(oneshot::Sender<()>),
}

/// Entry point: `Membership::builder(config)`.
pub struct Membership;

impl Membership {
    /// A builder with the core settings; multicast on Tribes' defaults unless changed.
    pub fn builder(config: MembershipConfig) -> MembershipBuilder {
        MembershipBuilder {
            config,
            multicast: Some(MulticastConfig::default()),
            static_peers: Vec::new(),
            static_bind: None,
            local: LocalMemberConfig::default(),
            services: Services::MBR_RX | Services::MBR_TX,
            listeners: Vec::new(),
            event_capacity: 1024,
            dns: None,
        }
    }
}

/// Assembles a membership service; [`MembershipBuilder::start`] runs it.
pub struct MembershipBuilder {
    config: MembershipConfig,
    multicast: Option<MulticastConfig>,
    static_peers: Vec<StaticPeer>,
    static_bind: Option<SocketAddr>,
    local: LocalMemberConfig,
    services: Services,
    listeners: Vec<Arc<dyn MembershipListener>>,
    event_capacity: usize,
    dns: Option<DnsConfig>,
}

impl MembershipBuilder {
    /// Multicast settings, or `None` to run without multicast (static peers only).
    #[must_use]
    pub fn multicast(mut self, multicast: Option<MulticastConfig>) -> Self {
        self.multicast = multicast;
        self
    }

    /// Static peers, beaconed by unicast from a socket bound to `bind`; can run beside
    /// multicast.
    #[must_use]
    pub fn static_peers(mut self, bind: SocketAddr, peers: Vec<StaticPeer>) -> Self {
        self.static_bind = Some(bind);
        self.static_peers = peers;
        self
    }

    /// DNS discovery: the resolved addresses are beaconed by unicast from the static socket,
    /// so [`MembershipBuilder::static_peers`] must give its bind address (with no peers if
    /// there are none). Needs the `dns` feature (on by default).
    #[must_use]
    pub fn dns(mut self, dns: Option<DnsConfig>) -> Self {
        self.dns = dns;
        self
    }

    /// The local member's description.
    #[must_use]
    pub fn local(mut self, local: LocalMemberConfig) -> Self {
        self.local = local;
        self
    }

    /// Which membership services run: `MBR_TX` sends beacons, `MBR_RX` receives them.
    /// Other bits are ignored. Default both.
    #[must_use]
    pub fn services(mut self, services: Services) -> Self {
        self.services = services;
        self
    }

    /// Adds a callback listener.
    #[must_use]
    pub fn listener(mut self, listener: Arc<dyn MembershipListener>) -> Self {
        self.listeners.push(listener);
        self
    }

    /// How many events the event stream buffers per subscriber before the slowest loses the
    /// oldest (it then sees `Lagged`). Default 1024.
    #[must_use]
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// Starts on real sockets ([`cohort_net::TokioNet`]) with the id drawn from the operating
    /// system's generator; [`MembershipBuilder::start_with`] takes another network or
    /// generator.
    pub async fn start(self) -> Result<MembershipHandle, StartError> {
        self.start_with(cohort_net::TokioNet, &mut rand_core::OsRng)
            .await
    }

    /// Opens the sockets, draws the local member id from `rng`, and spawns the driver task on
    /// the current tokio runtime.
    pub async fn start_with<N: Net>(
        self,
        net: N,
        rng: &mut impl rand_core::RngCore,
    ) -> Result<MembershipHandle, StartError> {
        if let Some(m) = &self.multicast {
            m.validate()?;
        }
        self.config.validate()?;
        if let Some(d) = &self.dns {
            d.validate()?;
            if self.static_bind.is_none() {
                return Err(ConfigError::Invalid {
                    field: "static_bind",
                    problem: "DNS discovery beacons from the static socket: give its address"
                        .into(),
                }
                .into());
            }
            if cfg!(not(feature = "dns")) {
                return Err(ConfigError::Invalid {
                    field: "dns",
                    problem: "cohort-membership was built without its `dns` feature".into(),
                }
                .into());
            }
        }
        if self.multicast.is_none() && self.static_peers.is_empty() && self.dns.is_none() {
            return Err(ConfigError::Invalid {
                field: "static_members",
                problem: "without multicast or DNS at least one static member is needed".into(),
            }
            .into());
        }
        let multicast_socket = match &self.multicast {
            Some(m) => {
                let opts = m.socket_options();
                let socket =
                    net.bind_multicast(&opts)
                        .await
                        .map_err(|source| StartError::Socket {
                            what: "multicast",
                            addr: SocketAddr::from((m.group, m.port)),
                            source,
                        })?;
                Some(socket)
            }
            None => None,
        };
        let static_socket = match self.static_bind {
            Some(addr) => Some(
                net.bind_udp(addr)
                    .await
                    .map_err(|source| StartError::Socket {
                        what: "static membership",
                        addr,
                        source,
                    })?,
            ),
            None => None,
        };
        let now = Instant::now();
        let wall = net.wall_clock_ms();
        let default_ip = self
            .multicast
            .as_ref()
            .map(|m| IpAddr::V4(m.interface))
            .or(self.static_bind.map(|a| a.ip()))
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let data_addr = self
            .local
            .data_addr
            .unwrap_or(SocketAddr::new(default_ip, 4000));
        let id = self.local.id.unwrap_or_else(|| MemberId::random(rng));
        let mut local = Member::new(id, data_addr.ip(), data_addr.port());
        local.cluster.clone_from(&self.config.cluster);
        local.host = net.host_name();
        local.name = self
            .local
            .name
            .clone()
            .unwrap_or_else(|| local.host.clone());
        local.udp_port = self.local.udp_port;
        local.domain = self.local.domain.clone();
        local.payload = self.local.payload.clone();
        local.app_version.clone_from(&self.local.app_version);
        local.start_time_ms = self.local.start_time_ms.unwrap_or(wall);
        let mut core = MembershipCore::new(
            self.config,
            local,
            multicast_socket.is_some(),
            self.static_peers,
            now.into_std(),
            wall,
        )?;
        core.start(now.into_std());
        let local_key = core.local().key();
        // The static socket's own address is never a peer (DNS lists every member, us too).
        let own_addrs = static_socket
            .as_ref()
            .and_then(|s| s.local_addr().ok())
            .into_iter()
            .collect();
        let (dns_rx, dns_task) = match self.dns {
            #[cfg(feature = "dns")]
            Some(cfg) => {
                let (tx, rx) = mpsc::channel(4);
                let task = tokio::spawn(crate::dns::run(cfg, tx));
                (Some(rx), Some(AbortOnDrop(task)))
            }
            _ => (None, None),
        };
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (view_tx, view_rx) = watch::channel(core.view());
        let (stats_tx, stats_rx) = watch::channel(core.stats().clone());
        // Created before the driver runs: the first `events()` caller misses nothing.
        let (event_tx, first_rx) = broadcast::channel(self.event_capacity);
        let driver = Driver {
            net,
            core,
            multicast: self.multicast,
            multicast_socket,
            static_socket,
            services: self.services,
            listeners: self.listeners,
            view_tx,
            stats_tx,
            event_tx: event_tx.clone(),
            socket_errors: 0,
            socket_reopens: 0,
            consecutive_errors: 0,
            reopen: None,
            multicast_pause: None,
            static_pause: None,
            data_dropped: 0,
            dns_rx,
            _dns_task: dns_task,
            own_addrs,
            dns_failures: 0,
        };
        tokio::spawn(driver.run(cmd_rx));
        Ok(MembershipHandle {
            cmd: cmd_tx,
            view: view_rx,
            stats: stats_rx,
            events: event_tx,
            first_events: Arc::new(std::sync::Mutex::new(Some(first_rx))),
            local: local_key,
        })
    }
}

/// A clonable front to a running membership service.
#[derive(Clone)]
pub struct MembershipHandle {
    cmd: mpsc::Sender<Command>,
    view: watch::Receiver<MembershipView>,
    stats: watch::Receiver<MembershipStats>,
    events: broadcast::Sender<MembershipEvent>,
    /// The receiver made at start, handed to the first `events()` caller.
    first_events: Arc<std::sync::Mutex<Option<broadcast::Receiver<MembershipEvent>>>>,
    local: MemberKey,
}

impl MembershipHandle {
    /// The local member's identity.
    pub fn local(&self) -> MemberKey {
        self.local
    }

    /// The current view.
    pub fn view(&self) -> MembershipView {
        self.view.borrow().clone()
    }

    /// A receiver of views, for `changed()` / `wait_for()`.
    pub fn watch(&self) -> watch::Receiver<MembershipView> {
        self.view.clone()
    }

    /// A stream of events (bounded; a slow subscriber sees `Lagged`). The first call returns
    /// every event since the service started (up to the event capacity), so that whoever owns
    /// the service (a channel) misses none of the first moments, refusals and DNS reports
    /// included; later calls see events from the moment of the call.
    pub fn events(&self) -> broadcast::Receiver<MembershipEvent> {
        let first = self
            .first_events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        first.unwrap_or_else(|| self.events.subscribe())
    }

    /// The counters as last published.
    pub fn stats(&self) -> MembershipStats {
        self.stats.borrow().clone()
    }

    /// Replaces the local payload; peers see it with the next beacon, sent at once.
    pub async fn set_payload(&self, payload: Bytes) -> Result<(), ConfigError> {
        let (tx, rx) = oneshot::channel();
        if self
            .cmd
            .send(Command::SetPayload(payload, tx))
            .await
            .is_err()
        {
            return Err(stopped());
        }
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Removes a member on a failure detector's evidence.
    pub async fn report_failed(&self, member: MemberKey, evidence: FailureEvidence) {
        let _ = self.cmd.send(Command::ReportFailed(member, evidence)).await;
    }

    /// Leaves gracefully: sends a shutdown beacon so that peers drop this member at once, then
    /// stops the driver. Returns once the beacon is sent. Dropping every handle does the same.
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Stops at once without a shutdown beacon, as a crashed process would: peers drop this
    /// member only when the drop time has passed. For tests, demonstrations and failover drills.
    pub async fn abort(&self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Command::Abort(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// True once the driver task has ended.
    pub fn is_stopped(&self) -> bool {
        self.cmd.is_closed()
    }
}

fn stopped() -> ConfigError {
    ConfigError::Invalid {
        field: "membership",
        problem: "the membership service has stopped".into(),
    }
}

/// Which socket a datagram or error came from.
#[derive(Clone, Copy, Debug)]
enum Which {
    Multicast,
    Static,
}

struct Driver<N: Net> {
    net: N,
    core: MembershipCore,
    multicast: Option<MulticastConfig>,
    multicast_socket: Option<N::UdpSocket>,
    static_socket: Option<N::UdpSocket>,
    services: Services,
    listeners: Vec<Arc<dyn MembershipListener>>,
    view_tx: watch::Sender<MembershipView>,
    stats_tx: watch::Sender<MembershipStats>,
    event_tx: broadcast::Sender<MembershipEvent>,
    socket_errors: u64,
    socket_reopens: u64,
    consecutive_errors: u32,
    /// Multicast socket recovery in progress: next attempt and attempts so far.
    reopen: Option<(Instant, u32)>,
    /// Receives on a socket are paused until then after an error (no busy loop).
    multicast_pause: Option<Instant>,
    static_pause: Option<Instant>,
    data_dropped: u64,
    /// Outcomes of the DNS discovery task, if it runs.
    #[cfg_attr(not(feature = "dns"), allow(dead_code))]
    dns_rx: Option<mpsc::Receiver<DnsOutcomeMsg>>,
    /// Ends the DNS task with the driver.
    _dns_task: Option<AbortOnDrop>,
    /// The static socket's own address(es): skipped among resolved ones.
    own_addrs: Vec<SocketAddr>,
    dns_failures: u64,
}

#[cfg(feature = "dns")]
type DnsOutcomeMsg = crate::dns::DnsOutcome;
#[cfg(not(feature = "dns"))]
type DnsOutcomeMsg = std::convert::Infallible;

/// Aborts a task when dropped.
struct AbortOnDrop(#[allow(dead_code)] tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn recv_dns(rx: Option<&mut mpsc::Receiver<DnsOutcomeMsg>>) -> Option<DnsOutcomeMsg> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_on<S: UdpSocket>(
    socket: Option<&S>,
    pause: Option<Instant>,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr)> {
    if let Some(until) = pause {
        tokio::time::sleep_until(until).await;
    }
    match socket {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

impl<N: Net> Driver<N> {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut mbuf = vec![0u8; RECV_BUFFER];
        let mut sbuf = vec![0u8; RECV_BUFFER];
        let receive = self.services.contains(Services::MBR_RX);
        // One timer each for the loop's life, moved when its deadline moves.
        let (mut deadline, mut reopen_at) = (Alarm::new(), Alarm::new());
        loop {
            self.flush().await;
            deadline.set(self.core.poll_timeout().map(Instant::from_std));
            reopen_at.set(self.reopen.map(|(t, _)| t));
            let msock = self.multicast_socket.as_ref().filter(|_| receive);
            let ssock = self.static_socket.as_ref().filter(|_| receive);
            tokio::select! {
                biased;
                cmd = commands.recv() => match cmd {
                    Some(Command::SetPayload(payload, reply)) => {
                        let _ = reply.send(self.core.set_payload(Instant::now().into_std(), payload));
                    }
                    Some(Command::ReportFailed(key, evidence)) => {
                        self.core.report_failed(Instant::now().into_std(), &key, evidence);
                    }
                    Some(Command::Shutdown(reply)) => {
                        self.leave().await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(Command::Abort(reply)) => {
                        tracing::warn!("membership aborted without a shutdown beacon");
                        let _ = reply.send(());
                        return;
                    }
                    None => {
                        self.leave().await;
                        return;
                    }
                },
                r = recv_on(msock, self.multicast_pause, &mut mbuf) => {
                    self.received(Which::Multicast, r, &mbuf);
                }
                r = recv_on(ssock, self.static_pause, &mut sbuf) => {
                    self.received(Which::Static, r, &sbuf);
                }
                outcome = recv_dns(self.dns_rx.as_mut()) => match outcome {
                    Some(o) => self.dns_outcome(o),
                    None => self.dns_rx = None,
                },
                () = deadline.ring() => self.core.handle_timeout(Instant::now().into_std()),
                () = reopen_at.ring() => self.try_reopen().await,
            }
        }
    }

    #[cfg(feature = "dns")]
    fn dns_outcome(&mut self, outcome: DnsOutcomeMsg) {
        use crate::dns::DnsOutcome;
        match outcome {
            DnsOutcome::Resolved(mut addrs) => {
                // Not ourselves, and only what the static socket can reach (its family).
                let family = self.own_addrs.first().map(SocketAddr::is_ipv4);
                addrs.retain(|a| !self.is_own(*a) && family.is_none_or(|v4| a.is_ipv4() == v4));
                if self.core.set_dns_peers(Instant::now().into_std(), &addrs) {
                    // As the core keeps them: static peers and the table's bound applied.
                    let mut addresses: Vec<SocketAddr> = self
                        .core
                        .peer_addrs()
                        .into_iter()
                        .filter(|(_, d)| *d == crate::view::Discovery::Dns)
                        .map(|(a, _)| a)
                        .collect();
                    addresses.sort();
                    tracing::info!(?addresses, "DNS discovery resolved a new set of addresses");
                    self.emit(MembershipEvent::DnsResolved { addresses });
                }
            }
            DnsOutcome::Failed {
                reason,
                attempt,
                retry_in,
            } => {
                self.dns_failures += 1;
                tracing::warn!(%reason, attempt, ?retry_in, "DNS discovery failed");
                self.emit(MembershipEvent::DnsFailed {
                    reason,
                    attempt,
                    retry_in,
                });
            }
        }
    }

    #[cfg(not(feature = "dns"))]
    fn dns_outcome(&mut self, outcome: DnsOutcomeMsg) {
        match outcome {}
    }

    /// True when `addr` is this member's own static socket (an unspecified bind address
    /// matches any address with its port on this host's loopback or the bind's family).
    #[cfg_attr(not(feature = "dns"), allow(dead_code))]
    fn is_own(&self, addr: SocketAddr) -> bool {
        self.own_addrs.iter().any(|own| {
            own.port() == addr.port()
                && (own.ip() == addr.ip()
                    || (own.ip().is_unspecified() && addr.ip().is_loopback())
                    || addr.ip() == self.core.local().addr)
        })
    }

    /// Hands an event that did not come from the core to listeners and subscribers.
    #[cfg_attr(not(feature = "dns"), allow(dead_code))]
    fn emit(&self, event: MembershipEvent) {
        for l in &self.listeners {
            l.on_event(&event);
        }
        let _ = self.event_tx.send(event);
    }

    async fn leave(&mut self) {
        self.core.shutdown(Instant::now().into_std());
        self.flush().await;
    }

    fn received(&mut self, which: Which, result: io::Result<(usize, SocketAddr)>, buf: &[u8]) {
        match result {
            Ok((n, from)) => {
                self.consecutive_errors = 0;
                match which {
                    Which::Multicast => self.multicast_pause = None,
                    Which::Static => self.static_pause = None,
                }
                let datagram = &buf[..n];
                if datagram.starts_with(&cohort_wire::FRAME_MAGIC) {
                    // Data is the transport's: its own socket on the data port reads it (by
                    // default the same port as the beacons). Left alone here, counted.
                    self.data_dropped += 1;
                    return;
                }
                let via = match which {
                    Which::Multicast => Via::Group,
                    Which::Static => Via::Unicast,
                };
                self.core
                    .handle_datagram_via(Instant::now().into_std(), from, via, datagram);
            }
            Err(err) => self.socket_error(which, &err),
        }
    }

    fn socket_error(&mut self, which: Which, err: &io::Error) {
        self.socket_errors += 1;
        self.consecutive_errors += 1;
        tracing::warn!(socket = ?which, error = %err, "membership socket error");
        let pause = self
            .multicast
            .as_ref()
            .map_or(Duration::from_millis(500), |m| m.recovery.error_pause);
        let until = Some(Instant::now() + pause);
        match which {
            Which::Multicast => self.multicast_pause = until,
            Which::Static => self.static_pause = until,
        }
        let Some(m) = &self.multicast else { return };
        if matches!(which, Which::Multicast)
            && m.recovery.enabled
            && self.consecutive_errors >= m.recovery.counter
            && self.reopen.is_none()
        {
            tracing::warn!("closing the multicast socket to reopen it");
            self.multicast_socket = None;
            self.reopen = Some((Instant::now(), 0));
        }
    }

    async fn try_reopen(&mut self) {
        let (Some(m), Some((_, attempts))) = (&self.multicast, self.reopen) else {
            self.reopen = None;
            return;
        };
        match self.net.bind_multicast(&m.socket_options()).await {
            Ok(socket) => {
                tracing::info!(attempts = attempts + 1, "multicast socket reopened");
                self.multicast_socket = Some(socket);
                self.socket_reopens += 1;
                self.consecutive_errors = 0;
                self.reopen = None;
            }
            Err(err) => {
                let attempts = attempts + 1;
                let pause: Duration = if attempts < m.recovery.counter {
                    m.recovery.sleep
                } else {
                    if attempts == m.recovery.counter {
                        tracing::error!(
                            attempts,
                            error = %err,
                            "multicast recovery failed; retrying every {:?}",
                            m.recovery.slow_sleep
                        );
                    }
                    m.recovery.slow_sleep
                };
                self.reopen = Some((Instant::now() + pause, attempts));
            }
        }
    }

    /// Sends every pending datagram and publishes every pending event and the view.
    async fn flush(&mut self) {
        let send = self.services.contains(Services::MBR_TX);
        while let Some(t) = self.core.poll_transmit() {
            if !send {
                continue;
            }
            let (socket, to, which) = match t.to {
                Destination::Group => {
                    let Some(m) = &self.multicast else { continue };
                    let to = SocketAddr::from((m.group, m.port));
                    (self.multicast_socket.as_ref(), to, Which::Multicast)
                }
                Destination::Peer(addr) => (self.static_socket.as_ref(), addr, Which::Static),
            };
            let Some(socket) = socket else { continue };
            if let Err(err) = socket.send_to(&t.bytes, to).await {
                self.socket_error(which, &err);
            }
        }
        while let Some(event) = self.core.poll_event() {
            for l in &self.listeners {
                l.on_event(&event);
            }
            // No subscriber is fine: the view still carries the state.
            let _ = self.event_tx.send(event);
        }
        // Building a view clones every member: only when it changed, not per datagram.
        if self.core.view_version() != self.view_tx.borrow().version {
            self.view_tx.send_replace(self.core.view());
        }
        let mut stats = self.core.stats().clone();
        stats.socket_errors = self.socket_errors;
        stats.socket_reopens = self.socket_reopens;
        stats.data_dropped = self.data_dropped;
        stats.dns_failures = self.dns_failures;
        self.stats_tx.send_if_modified(|s| {
            let differs = *s != stats;
            if differs {
                *s = stats;
            }
            differs
        });
    }
}
