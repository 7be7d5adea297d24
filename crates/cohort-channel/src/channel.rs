//! `GroupChannel`: assembles transport, membership and pipeline, and runs them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cohort_membership::{
    LocalMemberConfig, Membership, MembershipConfig, MembershipEvent, MembershipListener,
    MembershipView, MulticastConfig, StaticPeer,
};
use cohort_net::Net;
use cohort_transport::{Delivered, Received, Transport, TransportConfig, TransportStats};
use cohort_wire::{
    CohortCodec, DataFrame, DataHeader, Frame, FrameCodec, KeyRing, Member, MemberId, MemberKey,
    SendOptions, Services,
};
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot};
use tokio::time::Instant;

use crate::core::{
    Acker, Inbound, Interceptor, Outbound, Output, Pipeline, ProbeError, ProbeErrorKind,
    ProbeRequest, Suspicion, Ticket, tags,
};
use crate::listener::{ChannelListener, ChannelMessage, ClusterListener, ErrorHandler};
use crate::receipt::{SendOutcome, SendReceipt, SendState};
use crate::seams::{ChannelMembership, ChannelTransport};

/// Channel settings (the `[channel]` table of the node's file).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct ChannelConfig {
    /// Period of the heartbeat that reaches every interceptor and closes connections to
    /// departed members. Default 5 s (Tribes' `heartbeatSleeptime`).
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "cohort_wire::serde_ms::duration")
    )]
    pub heartbeat_interval: Duration,
    /// Bytes of ASYNCHRONOUS messages queued and not yet completed; a send beyond it waits
    /// (backpressure). Default 64 MiB (Tribes' `maxQueueSize`). A message larger than the
    /// whole budget waits for the queue to empty, then takes all of it.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "cohort_wire::serde_ms::size")
    )]
    pub async_queue_bytes: usize,
    /// ASYNCHRONOUS messages queued and not yet completed; a send beyond it waits. Default
    /// 65,536.
    pub async_queue_messages: usize,
    /// Commands from handles to the channel task (sends wait when full). Default 1024.
    pub command_queue: usize,
    /// Received messages waiting for the listeners; when full, the transport stops reading
    /// (backpressure to the senders). Default 8192.
    pub delivery_queue: usize,
    /// Pipeline work items per input (see `Pipeline`); beyond, work is dropped and counted.
    /// Default 65,536.
    pub max_pipeline_work: usize,
    /// Refuse to start when two interceptors' option masks overlap (Tribes' `optionCheck`).
    /// Default false.
    pub option_check: bool,
    /// On `stop`, how long queued ASYNCHRONOUS messages get to complete. Default 5 s.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "cohort_wire::serde_ms::duration")
    )]
    pub drain_timeout: Duration,
    /// What an ASYNCHRONOUS send does when the queue is full. Default
    /// [`AsyncFullPolicy::Block`].
    pub async_full_policy: AsyncFullPolicy,
}

/// What an ASYNCHRONOUS send does when the queue is full (Tribes' `alwaysSend` sent
/// synchronously instead; that loses the order and the caller's budget, so it is not offered).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum AsyncFullPolicy {
    /// Wait for room (backpressure).
    #[default]
    Block,
    /// Fail at once with [`ChannelError::QueueFull`].
    Reject,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(5),
            async_queue_bytes: 64 * 1024 * 1024,
            async_queue_messages: 65_536,
            command_queue: 1024,
            delivery_queue: 8192,
            max_pipeline_work: 65_536,
            option_check: false,
            drain_timeout: Duration::from_secs(5),
            async_full_policy: AsyncFullPolicy::Block,
        }
    }
}

/// Why a channel could not start, or a send was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// A setting is out of range; the message names it.
    #[error("channel.{key}: {reason}")]
    Config {
        /// The key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Two interceptors claim overlapping option bits (with `option_check`).
    #[error("interceptors {a} and {b} have overlapping option masks ({mask:#x})")]
    OptionOverlap {
        /// First interceptor.
        a: &'static str,
        /// Second interceptor.
        b: &'static str,
        /// The overlap.
        mask: u32,
    },
    /// The transport could not start.
    #[error(transparent)]
    Transport(#[from] cohort_transport::StartError),
    /// Membership could not start.
    #[error(transparent)]
    Membership(#[from] cohort_membership::StartError),
    /// The wire settings are invalid.
    #[error(transparent)]
    Wire(#[from] cohort_wire::ConfigError),
    /// A send named no destination.
    #[error("no destinations")]
    NoDestinations,
    /// The payload exceeds the largest frame.
    #[error("payload of {len} bytes exceeds max_frame_payload {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: u32,
    },
    /// The sending side (SND_TX) is not running.
    #[error("the channel is not started for sending (SND_TX)")]
    NotStarted,
    /// The channel was stopped.
    #[error("the channel is stopped")]
    Stopped,
    /// The ASYNCHRONOUS queue is full and the policy is [`AsyncFullPolicy::Reject`].
    #[error("the asynchronous queue is full ({messages} messages, {bytes} bytes queued)")]
    QueueFull {
        /// Messages queued.
        messages: usize,
        /// Bytes queued.
        bytes: usize,
    },
}

impl ChannelConfig {
    /// Checks every bound.
    pub fn validate(&self) -> Result<(), ChannelError> {
        let bad = |key, reason: &str| {
            Err(ChannelError::Config {
                key,
                reason: reason.into(),
            })
        };
        if self.heartbeat_interval < Duration::from_millis(10) {
            return bad("heartbeat_interval", "must be at least 10 ms");
        }
        if self.async_queue_bytes < 1024 || self.async_queue_bytes > (u32::MAX as usize) {
            return bad("async_queue_bytes", "must be between 1 KiB and 4 GiB");
        }
        if self.async_queue_messages == 0 || self.async_queue_messages > (1 << 24) {
            return bad("async_queue_messages", "must be between 1 and 16777216");
        }
        if self.heartbeat_interval > Duration::from_secs(3600) {
            return bad("heartbeat_interval", "must be at most 1 hour");
        }
        if self.drain_timeout > Duration::from_secs(3600) {
            return bad("drain_timeout", "must be at most 1 hour");
        }
        // Queues are allocated by tokio, which panics on absurd capacities: bound them.
        const MAX_QUEUE: usize = 1 << 20;
        for (key, value) in [
            ("command_queue", self.command_queue),
            ("delivery_queue", self.delivery_queue),
            ("max_pipeline_work", self.max_pipeline_work),
        ] {
            if !(1..=MAX_QUEUE).contains(&value) {
                return bad(key, "must be between 1 and 1048576");
            }
        }
        Ok(())
    }
}

/// Membership settings for a channel's own membership service.
#[derive(Clone, Debug, Default)]
pub struct MembershipSetup {
    /// Core settings.
    pub config: MembershipConfig,
    /// Multicast, if any (default: on, Tribes' defaults).
    pub multicast: Option<MulticastConfig>,
    /// Static membership: the UDP address to bind and the peers.
    pub static_members: Option<(SocketAddr, Vec<StaticPeer>)>,
}

/// Entry point: `GroupChannel::builder()`.
pub struct GroupChannel;

impl GroupChannel {
    /// A builder on defaults: transport from port 4000, multicast membership, no interceptors,
    /// all services.
    pub fn builder() -> ChannelBuilder {
        ChannelBuilder {
            config: ChannelConfig::default(),
            transport: TransportConfig::default(),
            membership: MembershipSetup {
                multicast: Some(MulticastConfig::default()),
                ..MembershipSetup::default()
            },
            local: LocalMemberConfig::default(),
            keys: None,
            services: Services::DEFAULT,
            interceptors: Vec::new(),
            listeners: Vec::new(),
            cluster_listeners: Vec::new(),
            membership_listeners: Vec::new(),
            error_handler: None,
            custom_transport: None,
            custom_membership: None,
        }
    }
}

/// A replacement transport: the handle and its queue of received messages.
pub type CustomTransport = (Arc<dyn ChannelTransport>, mpsc::Receiver<Received>, Member);

/// Builds and starts a channel.
pub struct ChannelBuilder {
    config: ChannelConfig,
    transport: TransportConfig,
    membership: MembershipSetup,
    local: LocalMemberConfig,
    keys: Option<KeyRing>,
    services: Services,
    interceptors: Vec<Box<dyn Interceptor>>,
    listeners: Vec<Arc<dyn ChannelListener>>,
    cluster_listeners: Vec<Arc<dyn ClusterListener>>,
    membership_listeners: Vec<Arc<dyn MembershipListener>>,
    error_handler: Option<Arc<dyn ErrorHandler>>,
    custom_transport: Option<CustomTransport>,
    custom_membership: Option<Arc<dyn ChannelMembership>>,
}

impl ChannelBuilder {
    /// Channel settings.
    #[must_use]
    pub fn config(mut self, config: ChannelConfig) -> Self {
        self.config = config;
        self
    }

    /// Transport settings.
    #[must_use]
    pub fn transport(mut self, config: TransportConfig) -> Self {
        self.transport = config;
        self
    }

    /// Membership settings.
    #[must_use]
    pub fn membership(mut self, setup: MembershipSetup) -> Self {
        self.membership = setup;
        self
    }

    /// The local member's name, domain and payload (its id, addresses and start time are the
    /// channel's).
    #[must_use]
    pub fn local(mut self, local: LocalMemberConfig) -> Self {
        self.local = local;
        self
    }

    /// Authenticates every frame and beacon with this key ring.
    #[must_use]
    pub fn keys(mut self, keys: KeyRing) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Which services to start (Tribes' start flags; 3 = without membership).
    #[must_use]
    pub fn services(mut self, services: Services) -> Self {
        self.services = services;
        self
    }

    /// Adds an interceptor below those added before (the first added is on top).
    #[must_use]
    pub fn interceptor(mut self, interceptor: Box<dyn Interceptor>) -> Self {
        self.interceptors.push(interceptor);
        self
    }

    /// Adds a message listener.
    #[must_use]
    pub fn listener(mut self, listener: Arc<dyn ChannelListener>) -> Self {
        self.listeners.push(listener);
        self
    }

    /// Adds a cluster listener (sees every message sent and received).
    #[must_use]
    pub fn cluster_listener(mut self, listener: Arc<dyn ClusterListener>) -> Self {
        self.cluster_listeners.push(listener);
        self
    }

    /// Adds a membership listener (events after the interceptors, e.g. a domain filter).
    #[must_use]
    pub fn membership_listener(mut self, listener: Arc<dyn MembershipListener>) -> Self {
        self.membership_listeners.push(listener);
        self
    }

    /// Sets the handler of ASYNCHRONOUS send outcomes.
    #[must_use]
    pub fn error_handler(mut self, handler: Arc<dyn ErrorHandler>) -> Self {
        self.error_handler = Some(handler);
        self
    }

    /// Replaces the TCP transport (the transport's local member becomes the channel's).
    #[must_use]
    pub fn custom_transport(mut self, transport: CustomTransport) -> Self {
        self.custom_transport = Some(transport);
        self
    }

    /// Replaces the membership service.
    #[must_use]
    pub fn custom_membership(mut self, membership: Arc<dyn ChannelMembership>) -> Self {
        self.custom_membership = Some(membership);
        self
    }

    /// Starts the services in Tribes' order (receiver, sender, membership receive, membership
    /// broadcast) and spawns the channel task on the current tokio runtime.
    pub async fn start<N: Net>(
        self,
        net: N,
        rng: &mut impl rand_core::RngCore,
    ) -> Result<ChannelHandle, ChannelError> {
        self.config.validate()?;
        if self.config.option_check {
            for (i, a) in self.interceptors.iter().enumerate() {
                for b in &self.interceptors[i + 1..] {
                    let overlap = a.option_mask().bits() & b.option_mask().bits();
                    if overlap != 0 {
                        return Err(ChannelError::OptionOverlap {
                            a: a.name(),
                            b: b.name(),
                            mask: overlap,
                        });
                    }
                }
            }
        }
        let codec = CohortCodec::new(self.transport.limits, self.keys.clone())?;
        let services = self.services;
        let mut peer_rx = None;
        let (transport, inbound_rx, local): (Arc<dyn ChannelTransport>, _, Member) =
            match self.custom_transport {
                Some(t) => t,
                None => {
                    let mut bound = Transport::bind(
                        self.transport.clone(),
                        net.clone(),
                        services.contains(Services::SND_RX),
                    )
                    .await?;
                    let addr = bound.local_addr().unwrap_or(SocketAddr::new(
                        self.transport.bind,
                        self.transport.port.max(1),
                    ));
                    let mut local = Member::new(MemberId::random(rng), addr.ip(), addr.port());
                    local.udp_port = bound.udp_port();
                    local.cluster.clone_from(&self.membership.config.cluster);
                    local.host = net.host_name();
                    local.name = self
                        .local
                        .name
                        .clone()
                        .unwrap_or_else(|| local.host.clone());
                    local.domain = self.local.domain.clone();
                    local.payload = self.local.payload.clone();
                    local.start_time_ms = net.wall_clock_ms();
                    peer_rx = Some(bound.peer_events());
                    let (handle, inbound) = bound.start(local.clone(), codec.clone());
                    (Arc::new(handle), inbound, local)
                }
            };
        let (mcast_tx, mcast_rx) = mpsc::channel(cohort_membership::DATA_SINK_QUEUE);
        let membership: Option<Arc<dyn ChannelMembership>> = match self.custom_membership {
            Some(m) => Some(m),
            None if services.contains(Services::MBR_RX) || services.contains(Services::MBR_TX) => {
                let mut builder = Membership::builder(self.membership.config.clone())
                    .multicast(self.membership.multicast.clone())
                    .local(LocalMemberConfig {
                        id: Some(local.id),
                        start_time_ms: Some(local.start_time_ms),
                        name: Some(local.name.clone()),
                        data_addr: Some(SocketAddr::new(local.addr, local.port)),
                        udp_port: local.udp_port,
                        domain: local.domain.clone(),
                        payload: local.payload.clone(),
                    })
                    .services(services.intersection(Services::MBR_RX | Services::MBR_TX))
                    .data_sink(mcast_tx);
                if let Some((bind, peers)) = self.membership.static_members.clone() {
                    builder = builder.static_peers(bind, peers);
                }
                Some(Arc::new(builder.start(net.clone(), rng).await?))
            }
            None => None,
        };
        let ids = Arc::new(AtomicU64::new(0));
        let mut pipeline = Pipeline::new(
            self.interceptors,
            self.config.max_pipeline_work,
            ids.clone(),
        );
        pipeline.set_local(local.clone());
        let view = Arc::new(RwLock::new(Vec::new()));
        let (cmd_tx, cmd_rx) = mpsc::channel(self.config.command_queue);
        let (delivery_tx, delivery_rx) = mpsc::channel(self.config.delivery_queue);
        let (member_tx, _) = broadcast::channel(1024);
        let listeners = Arc::new(RwLock::new(self.listeners));
        let cluster_listeners: Arc<[Arc<dyn ClusterListener>]> = self.cluster_listeners.into();
        let counters = Arc::new(ChannelCounters::default());
        let shared = Arc::new(HandleShared {
            cmd: cmd_tx,
            ids,
            async_count: Arc::new(Semaphore::new(self.config.async_queue_messages)),
            async_bytes: Arc::new(Semaphore::new(self.config.async_queue_bytes)),
            config: self.config.clone(),
            max_payload: self.transport.limits.max_frame_payload,
            local: local.clone(),
            membership: membership.clone(),
            transport: transport.clone(),
            view: view.clone(),
            listeners: listeners.clone(),
            cluster_listeners: cluster_listeners.clone(),
            member_tx: member_tx.clone(),
            error_handler: self.error_handler,
            running: Mutex::new(services),
            counters: counters.clone(),
        });
        let rt = tokio::runtime::Handle::current();
        let handle = ChannelHandle {
            _life: Some(Arc::new(Life {
                shared: shared.clone(),
                rt: rt.clone(),
            })),
            shared,
        };
        let delivering = handle.internal();
        std::thread::Builder::new()
            .name("cohort-delivery".into())
            .spawn(move || deliver(&delivering, &rt, delivery_rx))
            .map_err(|e| ChannelError::Config {
                key: "delivery",
                reason: format!("cannot spawn the delivery thread: {e}"),
            })?;
        let owner = Owner {
            net,
            pipeline,
            codec,
            local,
            transport,
            membership,
            tickets: HashMap::new(),
            delivery_tx,
            member_tx,
            membership_listeners: self.membership_listeners,
            cmd_self: handle.shared.cmd.clone(),
            enc: BytesMut::new(),
            heartbeat: self.config.heartbeat_interval,
            counters,
            view,
            leaving: None,
            ids: handle.shared.ids.clone(),
        };
        tokio::spawn(owner.run(cmd_rx, inbound_rx, mcast_rx, peer_rx));
        Ok(handle)
    }
}

#[derive(Default)]
struct ChannelCounters {
    sent: AtomicU64,
    received: AtomicU64,
    delivered: AtomicU64,
    listener_errors: AtomicU64,
    encode_failures: AtomicU64,
    no_listener: AtomicU64,
    multicast_malformed: AtomicU64,
    membership_lagged: AtomicU64,
    control_dropped: AtomicU64,
    untransformed_dropped: AtomicU64,
    suspicions_dropped: AtomicU64,
    by_mode: [ModeCounters; 4],
}

#[derive(Default)]
struct ModeCounters {
    sent: AtomicU64,
    sent_bytes: AtomicU64,
    received: AtomicU64,
    received_bytes: AtomicU64,
}

/// The delivery mode of a message, as operators count them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// ASYNCHRONOUS: queued, completed when written.
    Async,
    /// USE_ACK | SYNCHRONIZED_ACK: acknowledged after the receiver's listeners ran.
    SyncAck,
    /// USE_ACK: acknowledged on receipt.
    Ack,
    /// Neither: completed when written.
    Plain,
}

impl Mode {
    /// Every mode, in the order of [`ChannelStats::by_mode`].
    pub const ALL: [Mode; 4] = [Mode::Async, Mode::SyncAck, Mode::Ack, Mode::Plain];

    /// The mode of a message sent with `options`.
    pub fn of(options: SendOptions) -> Self {
        if options.contains(SendOptions::ASYNCHRONOUS) {
            Self::Async
        } else if options.contains(SendOptions::USE_ACK.union(SendOptions::SYNCHRONIZED_ACK)) {
            Self::SyncAck
        } else if options.contains(SendOptions::USE_ACK) {
            Self::Ack
        } else {
            Self::Plain
        }
    }

    /// A stable label: `async`, `sync_ack`, `ack`, `plain`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Async => "async",
            Self::SyncAck => "sync_ack",
            Self::Ack => "ack",
            Self::Plain => "plain",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Messages and payload bytes of one [`Mode`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModeStats {
    /// Application messages sent (accepted by `send`).
    pub sent: u64,
    /// Their payload bytes.
    pub sent_bytes: u64,
    /// Messages received from the transport or multicast.
    pub received: u64,
    /// Their payload bytes.
    pub received_bytes: u64,
}

impl ChannelCounters {
    fn count(&self, options: SendOptions, len: usize, sent: bool) {
        let m = &self.by_mode[Mode::of(options).index()];
        let (n, bytes) = if sent {
            (&m.sent, &m.sent_bytes)
        } else {
            (&m.received, &m.received_bytes)
        };
        n.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(len as u64, Ordering::Relaxed);
    }
}

/// Counters of a channel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelStats {
    /// Application messages accepted by `send`.
    pub sent: u64,
    /// Messages received from the transport (and multicast).
    pub received: u64,
    /// Messages handed to listeners.
    pub delivered: u64,
    /// Listener calls that returned an error.
    pub listener_errors: u64,
    /// Messages no listener accepted.
    pub no_listener: u64,
    /// Frames that could not be encoded (an interceptor grew one past the limits).
    pub encode_failures: u64,
    /// Multicast data datagrams that did not decode.
    pub multicast_malformed: u64,
    /// Times the membership event stream lagged (events were missed; the view is current).
    pub membership_lagged: u64,
    /// Control messages (pings, probes, notices) that reached the top of the stack with no
    /// interceptor to consume them: dropped.
    pub control_dropped: u64,
    /// Messages still carrying a transformation no interceptor here undid (fragment,
    /// compression, encryption): the sender's stack differs; dropped, FAIL_ACK if asked.
    pub untransformed_dropped: u64,
    /// Suspicions (failed sends, lost connections) dropped because the command queue was full.
    pub suspicions_dropped: u64,
    /// ASYNCHRONOUS messages queued now.
    pub async_queued: usize,
    /// Bytes of ASYNCHRONOUS messages queued now.
    pub async_queued_bytes: usize,
    /// Messages and bytes by mode, in the order of [`Mode::ALL`].
    pub by_mode: [ModeStats; 4],
    /// The transport's counters.
    pub transport: TransportStats,
}

enum Command {
    Send(Outbound, Arc<SendState>),
    ProbeResult(usize, Member, Result<(), ProbeError>),
    Suspect(Member, Suspicion),
    Leave(oneshot::Sender<()>),
    Stop(oneshot::Sender<()>),
}

struct HandleShared {
    cmd: mpsc::Sender<Command>,
    ids: Arc<AtomicU64>,
    async_count: Arc<Semaphore>,
    async_bytes: Arc<Semaphore>,
    config: ChannelConfig,
    max_payload: u32,
    local: Member,
    membership: Option<Arc<dyn ChannelMembership>>,
    transport: Arc<dyn ChannelTransport>,
    view: Arc<RwLock<Vec<Member>>>,
    listeners: Arc<RwLock<Vec<Arc<dyn ChannelListener>>>>,
    cluster_listeners: Arc<[Arc<dyn ClusterListener>]>,
    member_tx: broadcast::Sender<MembershipEvent>,
    error_handler: Option<Arc<dyn ErrorHandler>>,
    running: Mutex<Services>,
    counters: Arc<ChannelCounters>,
}

/// A clonable front to a running channel. When the last handle the application holds is
/// dropped, the channel stops as [`ChannelHandle::stop`]`(Services::DEFAULT)` would (in a task
/// on the runtime it was started on): its task, delivery thread and sockets do not outlive it.
#[derive(Clone)]
pub struct ChannelHandle {
    shared: Arc<HandleShared>,
    /// `None` in the channel's own copies (the delivery thread's), which must not keep it
    /// running.
    _life: Option<Arc<Life>>,
}

/// Held by every application handle; the last one dropped stops the channel.
struct Life {
    shared: Arc<HandleShared>,
    rt: tokio::runtime::Handle,
}

impl Drop for Life {
    fn drop(&mut self) {
        if self.shared.running().is_empty() {
            return;
        }
        let handle = ChannelHandle {
            shared: self.shared.clone(),
            _life: None,
        };
        tracing::debug!("every channel handle dropped; stopping the channel");
        // On a runtime shutting down the task is dropped, and the channel's tasks with it.
        drop(
            self.rt
                .spawn(async move { handle.stop(Services::DEFAULT).await }),
        );
    }
}

impl ChannelHandle {
    /// A copy for the channel's own use, which does not keep the channel running.
    fn internal(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            _life: None,
        }
    }

    /// Sends `payload` to `destinations` with `options`. Waits only for admission: with
    /// ASYNCHRONOUS, until the bounded queue has room (backpressure); otherwise until the
    /// channel task takes the message. The receipt resolves as the options promise.
    pub async fn send(
        &self,
        destinations: &[Member],
        payload: Bytes,
        options: SendOptions,
    ) -> Result<SendReceipt, ChannelError> {
        let s = &self.shared;
        if destinations.is_empty() {
            return Err(ChannelError::NoDestinations);
        }
        if payload.len() > s.max_payload as usize {
            return Err(ChannelError::TooLarge {
                len: payload.len(),
                max: s.max_payload,
            });
        }
        if !s.running().contains(Services::SND_TX) {
            return Err(ChannelError::NotStarted);
        }
        let msg_id = s.ids.fetch_add(1, Ordering::Relaxed) + 1;
        let len = payload.len();
        for l in s.cluster_listeners.iter() {
            l.message_sent(destinations, &payload, options);
        }
        let (state, receipt) = if options.contains(SendOptions::ASYNCHRONOUS) {
            let (count, bytes) = self.async_admit(payload.len()).await?;
            let state = SendState::new(msg_id, None, Some((count, bytes)), s.error_handler.clone());
            let receipt = SendReceipt::ready(SendOutcome {
                msg_id,
                queued: true,
                results: Vec::new(),
                lost: None,
            });
            (state, receipt)
        } else {
            let (tx, rx) = oneshot::channel();
            (
                SendState::new(msg_id, Some(tx), None, None),
                SendReceipt::waiting(msg_id, rx),
            )
        };
        let out = Outbound {
            msg_id,
            destinations: destinations.into(),
            options,
            seq: 0,
            extensions: Vec::new(),
            payload,
            ticket: Ticket(msg_id),
        };
        s.cmd
            .send(Command::Send(out, state))
            .await
            .map_err(|_| ChannelError::Stopped)?;
        s.counters.sent.fetch_add(1, Ordering::Relaxed);
        s.counters.count(options, len, true);
        Ok(receipt)
    }

    /// Takes room in the ASYNCHRONOUS queue for one message of `len` bytes, as the policy says.
    async fn async_admit(
        &self,
        len: usize,
    ) -> Result<
        (
            tokio::sync::OwnedSemaphorePermit,
            Option<tokio::sync::OwnedSemaphorePermit>,
        ),
        ChannelError,
    > {
        let s = &self.shared;
        let want = u32::try_from(len.min(s.config.async_queue_bytes)).unwrap_or(u32::MAX);
        if s.config.async_full_policy == AsyncFullPolicy::Reject {
            let full = || {
                let st = self.stats();
                ChannelError::QueueFull {
                    messages: st.async_queued,
                    bytes: st.async_queued_bytes,
                }
            };
            let count = s
                .async_count
                .clone()
                .try_acquire_owned()
                .map_err(|e| match e {
                    tokio::sync::TryAcquireError::Closed => ChannelError::Stopped,
                    tokio::sync::TryAcquireError::NoPermits => full(),
                })?;
            let bytes =
                if want == 0 {
                    None
                } else {
                    Some(s.async_bytes.clone().try_acquire_many_owned(want).map_err(
                        |e| match e {
                            tokio::sync::TryAcquireError::Closed => ChannelError::Stopped,
                            tokio::sync::TryAcquireError::NoPermits => full(),
                        },
                    )?)
                };
            return Ok((count, bytes));
        }
        let count = s
            .async_count
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ChannelError::Stopped)?;
        let bytes = if want == 0 {
            None
        } else {
            Some(
                s.async_bytes
                    .clone()
                    .acquire_many_owned(want)
                    .await
                    .map_err(|_| ChannelError::Stopped)?,
            )
        };
        Ok((count, bytes))
    }

    /// Sends to every member in the current view except the local one. Fails with
    /// [`ChannelError::NoDestinations`] when alone.
    pub async fn send_all(
        &self,
        payload: Bytes,
        options: SendOptions,
    ) -> Result<SendReceipt, ChannelError> {
        let members = self.members();
        self.send(&members, payload, options).await
    }

    /// The members in view after the interceptors (a failure detector may keep a member
    /// membership dropped; static members join it), the local one excluded, in the order they
    /// joined.
    pub fn members(&self) -> Vec<Member> {
        self.shared
            .view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The membership view (`None` when the channel runs without membership).
    pub fn view(&self) -> Option<MembershipView> {
        self.shared.membership.as_ref().map(|m| m.view())
    }

    /// The membership driver's counters (`None` when the channel runs without membership).
    pub fn membership_stats(&self) -> Option<cohort_membership::MembershipStats> {
        self.shared.membership.as_ref().map(|m| m.stats())
    }

    /// Membership events after the interceptors, from the moment of this call (read
    /// [`ChannelHandle::view`] for the state before it; a membership listener given to the
    /// builder sees every event from the start).
    pub fn member_events(&self) -> broadcast::Receiver<MembershipEvent> {
        self.shared.member_tx.subscribe()
    }

    /// The local member.
    pub fn local(&self) -> &Member {
        &self.shared.local
    }

    /// Adds a message listener while running.
    pub fn add_listener(&self, listener: Arc<dyn ChannelListener>) {
        self.shared
            .listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(listener);
    }

    /// True while an outbound connection to `member` is established.
    pub fn is_connected(&self, member: &Member) -> bool {
        self.shared
            .transport
            .is_connected(SocketAddr::new(member.addr, member.port))
    }

    /// The services running.
    pub fn services(&self) -> Services {
        self.shared.running()
    }

    /// Counters.
    pub fn stats(&self) -> ChannelStats {
        let c = &self.shared.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ChannelStats {
            sent: l(&c.sent),
            received: l(&c.received),
            delivered: l(&c.delivered),
            listener_errors: l(&c.listener_errors),
            no_listener: l(&c.no_listener),
            encode_failures: l(&c.encode_failures),
            multicast_malformed: l(&c.multicast_malformed),
            membership_lagged: l(&c.membership_lagged),
            control_dropped: l(&c.control_dropped),
            untransformed_dropped: l(&c.untransformed_dropped),
            suspicions_dropped: l(&c.suspicions_dropped),
            async_queued: self.shared.config.async_queue_messages
                - self.shared.async_count.available_permits(),
            async_queued_bytes: self.shared.config.async_queue_bytes
                - self.shared.async_bytes.available_permits(),
            by_mode: Mode::ALL.map(|m| {
                let c = &c.by_mode[m.index()];
                ModeStats {
                    sent: l(&c.sent),
                    sent_bytes: l(&c.sent_bytes),
                    received: l(&c.received),
                    received_bytes: l(&c.received_bytes),
                }
            }),
            transport: self.shared.transport.stats(),
        }
    }

    /// Stops services in Tribes' stop order: with MBR_TX or MBR_RX, membership leaves
    /// gracefully (a shutdown beacon: peers drop this member at once); with SND_TX, queued
    /// ASYNCHRONOUS messages get `drain_timeout` to complete, then sends are refused; with
    /// SND_RX or SND_TX the transport closes (its two halves stop together). `stop(DEFAULT)`
    /// ends the channel.
    pub async fn stop(&self, services: Services) {
        let s = &self.shared;
        let stopping = services.intersection(s.running());
        if stopping.contains(Services::SND_TX) {
            // Interceptors' last words (a static member's notice) while sending still works.
            let (tx, rx) = oneshot::channel();
            if s.cmd.send(Command::Leave(tx)).await.is_ok() {
                let _ = rx.await;
            }
        }
        if stopping.intersects(Services::MBR_RX | Services::MBR_TX) {
            if let Some(m) = &s.membership {
                m.shutdown().await;
            }
        }
        if stopping.contains(Services::SND_TX) {
            let all = u32::try_from(s.config.async_queue_messages).unwrap_or(u32::MAX);
            let _ =
                tokio::time::timeout(s.config.drain_timeout, s.async_count.acquire_many(all)).await;
        }
        {
            let mut running = s.running.lock().unwrap_or_else(PoisonError::into_inner);
            *running = running.difference(stopping);
        }
        if stopping.intersects(Services::SND_RX | Services::SND_TX) {
            s.transport.stop();
        }
        if s.running().is_empty() || services.contains(Services::DEFAULT) {
            let (tx, rx) = oneshot::channel();
            if s.cmd.send(Command::Stop(tx)).await.is_ok() {
                let _ = rx.await;
            }
        }
    }

    #[cfg(feature = "tower")]
    pub(crate) fn async_permits(&self) -> Arc<Semaphore> {
        self.shared.async_count.clone()
    }
}

impl HandleShared {
    fn running(&self) -> Services {
        *self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The FAIL_ACK reason of a message no listener accepted.
pub(crate) const NO_LISTENER: &str = "no listener accepted the message";

struct Delivery {
    msg: ChannelMessage,
    ack: Option<Acker>,
}

/// The delivery thread: listeners run here, off the runtime (they are synchronous and may
/// block, as Tribes' listeners may), in arrival order. A listener that panics counts as a
/// failed one (FAIL_ACK); the thread carries on.
#[allow(clippy::needless_pass_by_value)]
fn deliver(handle: &ChannelHandle, rt: &tokio::runtime::Handle, mut rx: mpsc::Receiver<Delivery>) {
    let shared = handle.shared.clone();
    while let Some(Delivery { msg, ack }) = rx.blocking_recv() {
        for l in shared.cluster_listeners.iter() {
            l.message_received(&msg);
        }
        let listeners = shared
            .listeners
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut accepted = false;
        let mut failure = None;
        for l in &listeners {
            if !l.accept(&msg) {
                continue;
            }
            accepted = true;
            if let Err(e) = l.message_received(&msg) {
                shared
                    .counters
                    .listener_errors
                    .fetch_add(1, Ordering::Relaxed);
                failure.get_or_insert_with(|| e.to_string());
            }
        }
        shared.counters.delivered.fetch_add(1, Ordering::Relaxed);
        if !accepted {
            shared.counters.no_listener.fetch_add(1, Ordering::Relaxed);
            // A SYNCHRONIZED_ACK promises that a listener processed it: none did.
            failure.get_or_insert_with(|| NO_LISTENER.to_owned());
            if let Some(reply) = crate::rpc::no_channel_reply(&msg.payload) {
                let handle = ChannelHandle {
                    shared: shared.clone(),
                    _life: None,
                };
                if let Some(to) = msg.member.clone() {
                    rt.spawn(async move {
                        let _ = handle
                            .send(&[(*to).clone()], reply, SendOptions::ASYNCHRONOUS)
                            .await;
                    });
                }
            }
        }
        if let Some(ack) = ack {
            match failure {
                Some(reason) => ack.fail(reason),
                None => ack.ack(),
            }
        }
    }
}

struct Owner<N: Net> {
    net: N,
    pipeline: Pipeline,
    codec: CohortCodec,
    local: Member,
    transport: Arc<dyn ChannelTransport>,
    membership: Option<Arc<dyn ChannelMembership>>,
    tickets: HashMap<Ticket, Arc<SendState>>,
    delivery_tx: mpsc::Sender<Delivery>,
    member_tx: broadcast::Sender<MembershipEvent>,
    membership_listeners: Vec<Arc<dyn MembershipListener>>,
    cmd_self: mpsc::Sender<Command>,
    enc: BytesMut,
    heartbeat: Duration,
    counters: Arc<ChannelCounters>,
    /// The members as the top of the pipeline reported them.
    view: Arc<RwLock<Vec<Member>>>,
    /// While leaving: completions of the interceptors' last messages.
    leaving: Option<Vec<oneshot::Receiver<()>>>,
    ids: Arc<AtomicU64>,
}

/// How long `stop` waits for the interceptors' last messages to be delivered.
const LEAVE_TIMEOUT: Duration = Duration::from_millis(500);

async fn peer_event(
    rx: &mut Option<mpsc::Receiver<cohort_transport::PeerEvent>>,
) -> Option<cohort_transport::PeerEvent> {
    match rx {
        Some(r) => match r.recv().await {
            Some(ev) => Some(ev),
            None => {
                *rx = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

async fn member_event(
    rx: &mut Option<broadcast::Receiver<MembershipEvent>>,
) -> Result<MembershipEvent, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl<N: Net> Owner<N> {
    async fn run(
        mut self,
        mut cmd_rx: mpsc::Receiver<Command>,
        mut inbound_rx: mpsc::Receiver<Received>,
        mut mcast_rx: mpsc::Receiver<(Bytes, SocketAddr)>,
        mut peer_rx: Option<mpsc::Receiver<cohort_transport::PeerEvent>>,
    ) {
        let now = self.now();
        self.pipeline.start(now);
        self.drain().await;
        // Subscribe first, then read the view: nothing falls in between (duplicates are
        // filtered below).
        let mut events = self.membership.as_ref().map(|m| m.events());
        // Keyed as the membership core keys members, (address, port, id): a beacon naming a
        // known id from another address is another member, and its events must not be taken
        // for repeats.
        let mut last_lead: Option<Option<MemberKey>> = None;
        let mut seen: std::collections::HashSet<MemberKey> = std::collections::HashSet::new();
        // Members already in view when the channel started.
        if let Some(m) = self.membership.clone() {
            let now = self.now();
            let view = m.view();
            let lead = view.lead_member().cloned();
            let local_is_lead = view.lead.as_ref() == Some(&view.local);
            for vm in view.members.into_iter().filter(|vm| !vm.local) {
                seen.insert(vm.member.key());
                self.pipeline
                    .member(now, MembershipEvent::MemberAdded(vm.member));
            }
            if lead.is_some() {
                last_lead = Some(lead.as_ref().map(Member::key));
                self.pipeline.member(
                    now,
                    MembershipEvent::LeadChanged {
                        lead,
                        local_is_lead,
                    },
                );
            }
            self.drain().await;
        }
        let mut next_heartbeat = Instant::now() + self.heartbeat;
        loop {
            let wake = self
                .pipeline
                .poll_timeout()
                .map_or(next_heartbeat, |t| Instant::from_std(t).min(next_heartbeat));
            tokio::select! {
                cmd = cmd_rx.recv() => match cmd {
                    Some(Command::Send(out, state)) => {
                        let ticket = out.ticket;
                        self.tickets.insert(ticket, state);
                        let now = self.now();
                        self.pipeline.send(now, out);
                        self.drain().await;
                        if let Some(state) = self.tickets.remove(&ticket) {
                            state.done_one();
                        }
                    }
                    Some(Command::ProbeResult(i, member, result)) => {
                        let now = self.now();
                        self.pipeline.probe_result(now, i, member, result);
                    }
                    Some(Command::Suspect(member, why)) => {
                        let now = self.now();
                        self.pipeline.suspect(now, &member, &why);
                    }
                    Some(Command::Leave(reply)) => {
                        let now = self.now();
                        self.leaving = Some(Vec::new());
                        self.pipeline.stop(now);
                        self.drain().await;
                        let waits = self.leaving.take().unwrap_or_default();
                        tokio::spawn(async move {
                            let all = async { for w in waits { let _ = w.await; } };
                            let _ = tokio::time::timeout(LEAVE_TIMEOUT, all).await;
                            let _ = reply.send(());
                        });
                    }
                    Some(Command::Stop(reply)) => {
                        let _ = reply.send(());
                        return;
                    }
                    None => return,
                },
                Some(r) = inbound_rx.recv() => self.on_received(r),
                Some(ev) = peer_event(&mut peer_rx) => {
                    // What the peer sent before its connection closed comes first (a leaving
                    // notice must beat the suspicion its closing sockets raise).
                    for _ in 0..inbound_rx.max_capacity() {
                        let Ok(r) = inbound_rx.try_recv() else { break };
                        self.on_received(r);
                    }
                    self.drain().await;
                    let member = self.member_at(ev.addr, ev.member);
                    if let Some(member) = member {
                        let now = self.now();
                        let why = match ev.direction {
                            cohort_transport::Direction::Outbound => Suspicion::ConnectionLost(ev.reason),
                            cohort_transport::Direction::Inbound => Suspicion::InboundClosed(ev.reason),
                        };
                        self.pipeline.suspect(now, &member, &why);
                    }
                }
                Some((datagram, from)) = mcast_rx.recv() => {
                    let mut buf = BytesMut::from(&datagram[..]);
                    match self.codec.decode_frame(&mut buf) {
                        Ok(Some(Frame::Data(data))) if buf.is_empty() && data.header.sender != self.local.id => {
                            self.counters.received.fetch_add(1, Ordering::Relaxed);
                            self.counters.count(data.header.options, data.payload.len(), false);
                            let member = self.membership.as_ref().and_then(|m| {
                                m.view().members.into_iter().find(|vm| vm.member.id == data.header.sender).map(|vm| Arc::new(vm.member))
                            });
                            let inbound = frame_to_inbound(data, member, from, None);
                            let now = self.now();
                        self.pipeline.receive(now, inbound);
                        }
                        Ok(Some(Frame::Data(_))) => {} // our own, looped back
                        _ => { self.counters.multicast_malformed.fetch_add(1, Ordering::Relaxed); }
                    }
                }
                ev = member_event(&mut events) => match ev {
                    Ok(ev) => {
                        // The view read at start may already hold what the stream repeats.
                        let repeat = match &ev {
                            MembershipEvent::LeadChanged { lead, .. } => {
                                let key = lead.as_ref().map(Member::key);
                                last_lead.replace(key) == Some(key)
                            }
                            MembershipEvent::MemberAdded(m) => !seen.insert(m.key()),
                            MembershipEvent::MemberDisappeared { member, .. } => {
                                seen.remove(&member.key());
                                false
                            }
                            _ => false,
                        };
                        if !repeat {
                            let now = self.now();
                        self.pipeline.member(now, ev);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.counters.membership_lagged.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(broadcast::error::RecvError::Closed) => events = None,
                },
                () = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    self.pipeline.handle_timeout(now.into_std());
                    if now >= next_heartbeat {
                        next_heartbeat = now + self.heartbeat;
                        self.pipeline.heartbeat(now.into_std());
                        if self.membership.is_some() {
                            let view = self.view.read().unwrap_or_else(PoisonError::into_inner).clone();
                            self.transport.retain(&|addr| {
                                view.iter().any(|m| SocketAddr::new(m.addr, m.port) == addr)
                            });
                        }
                    }
                }
            }
            self.drain().await;
        }
    }

    async fn drain(&mut self) {
        while let Some(output) = self.pipeline.poll_output() {
            match output {
                Output::Transmit(out) => self.transmit(out),
                Output::Deliver(mut msg) => {
                    if let Some(tag) = msg.extensions.iter().map(|e| e.tag).find(|t| {
                        tags::is_control(*t)
                            || matches!(*t, tags::FRAGMENT | tags::COMPRESSION | tags::ENCRYPTION)
                    }) {
                        let counter = if tags::is_control(tag) {
                            &self.counters.control_dropped
                        } else {
                            &self.counters.untransformed_dropped
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(
                            msg_id = msg.msg_id,
                            tag,
                            "message with an extension no interceptor handled; dropped"
                        );
                        if let Some(ack) = msg.ack.take() {
                            if tags::is_control(tag) {
                                ack.ack();
                            } else {
                                ack.fail(format!(
                                    "no interceptor for extension {tag} on the receiver"
                                ));
                            }
                        }
                        continue;
                    }
                    let ack = msg.ack;
                    let delivery = Delivery {
                        msg: ChannelMessage {
                            from: msg.from,
                            member: msg.member,
                            peer: msg.peer,
                            msg_id: msg.msg_id,
                            options: msg.options,
                            timestamp_ms: msg.timestamp_ms,
                            payload: msg.payload,
                        },
                        ack,
                    };
                    if let Err(e) = self.delivery_tx.try_send(delivery) {
                        // Full: wait (the transport stops being read meanwhile).
                        let (mpsc::error::TrySendError::Full(d)
                        | mpsc::error::TrySendError::Closed(d)) = e;
                        let _ = self.delivery_tx.send(d).await;
                    }
                }
                Output::Member(ev) => {
                    {
                        let mut view = self.view.write().unwrap_or_else(PoisonError::into_inner);
                        match &ev {
                            MembershipEvent::MemberAdded(m)
                                if !view.iter().any(|v| v.key() == m.key()) =>
                            {
                                view.push(m.clone());
                            }
                            MembershipEvent::MemberUpdated(m) => {
                                if let Some(v) = view.iter_mut().find(|v| v.key() == m.key()) {
                                    *v = m.clone();
                                }
                            }
                            MembershipEvent::MemberDisappeared { member, .. } => {
                                view.retain(|v| v.key() != member.key());
                            }
                            _ => {}
                        }
                    }
                    if let MembershipEvent::MemberDisappeared { member, .. } = &ev {
                        self.transport
                            .disconnect(SocketAddr::new(member.addr, member.port));
                    }
                    for l in &self.membership_listeners {
                        l.on_event(&ev);
                    }
                    let _ = self.member_tx.send(ev);
                }
                Output::Probe {
                    interceptor,
                    member,
                    probe,
                } => {
                    let net = self.net.clone();
                    let cmd = self.cmd_self.clone();
                    let test = self.probe_test(probe);
                    let (codec, local) = (self.codec.clone(), self.local.clone());
                    tokio::spawn(async move {
                        let result = run_probe(&net, &codec, &local, &member, probe, test).await;
                        let _ = cmd
                            .send(Command::ProbeResult(interceptor, member, result))
                            .await;
                    });
                }
                Output::Disconnect(peer) => {
                    let closed = self.transport.close_inbound(peer);
                    tracing::debug!(%peer, closed, "inbound connection closed on an interceptor's request");
                }
                Output::MemberFailed { member, detail } => {
                    if let Some(m) = self.membership.clone() {
                        tokio::spawn(async move { m.report_failed(member.key(), detail).await });
                    }
                }
            }
        }
    }

    fn on_received(&mut self, r: Received) {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        self.counters
            .count(r.frame.header.options, r.frame.payload.len(), false);
        let inbound = to_inbound(r);
        let now = self.now();
        self.pipeline.receive(now, inbound);
    }

    /// The wall-clock-stamped instant for the next pipeline input.
    fn now(&mut self) -> std::time::Instant {
        self.pipeline.set_wall_clock_ms(self.net.wall_clock_ms());
        Instant::now().into_std()
    }

    /// The member in the pipeline's view at `addr` (and with `id`, when known).
    fn member_at(&self, addr: SocketAddr, id: Option<MemberId>) -> Option<Member> {
        self.view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|m| SocketAddr::new(m.addr, m.port) == addr && id.is_none_or(|id| id == m.id))
            .cloned()
    }

    /// The probe frame (USE_ACK with a read test), encoded for a probe connection.
    fn probe_test(&mut self, probe: ProbeRequest) -> Option<cohort_transport::ProbeTest> {
        if !probe.send_test {
            return None;
        }
        let mut options = SendOptions::BYTE_MESSAGE;
        if probe.read_timeout.is_some() {
            options = options.union(SendOptions::USE_ACK);
        }
        let msg_id = self.ids.fetch_add(1, Ordering::Relaxed) + 1;
        let data = Frame::Data(DataFrame {
            header: DataHeader {
                msg_id,
                options,
                sender: self.local.id,
                timestamp_ms: self.net.wall_clock_ms(),
                seq: 0,
                extensions: vec![cohort_wire::Extension {
                    tag: tags::PROBE,
                    value: Bytes::new(),
                }],
            },
            payload: Bytes::new(),
        });
        let mut buf = BytesMut::new();
        if self.codec.encode_frame(&data, &mut buf).is_err() {
            self.counters
                .encode_failures
                .fetch_add(1, Ordering::Relaxed);
        }
        Some(cohort_transport::ProbeTest {
            frame: buf.freeze(),
            msg_id,
            read_timeout: probe.read_timeout,
        })
    }

    fn transmit(&mut self, out: Outbound) {
        let state = self.tickets.get(&out.ticket).cloned();
        let frame = Frame::Data(DataFrame {
            header: DataHeader {
                msg_id: out.msg_id,
                options: out.options,
                sender: self.local.id,
                timestamp_ms: self.net.wall_clock_ms(),
                seq: out.seq,
                extensions: out.extensions,
            },
            payload: out.payload,
        });
        if let Err(e) = self.codec.encode_frame(&frame, &mut self.enc) {
            self.counters
                .encode_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(msg_id = out.msg_id, error = %e, "cannot encode a frame; dropped");
            return;
        }
        let bytes = self.enc.split().freeze();
        if out.options.contains(SendOptions::MULTICAST) {
            let Some(m) = self.membership.clone() else {
                tracing::warn!(
                    msg_id = out.msg_id,
                    "MULTICAST send without membership; dropped"
                );
                return;
            };
            if let Some(state) = &state {
                state.expect(out.destinations.len());
            }
            let dests = out.destinations;
            tokio::spawn(async move {
                let r = m.broadcast(bytes).await;
                if let Some(state) = state {
                    for d in dests.iter() {
                        let result = match &r {
                            Ok(()) => Ok(Delivered::Sent),
                            Err(e) => Err(cohort_transport::SendError::Udp {
                                addr: SocketAddr::new(d.addr, d.port),
                                reason: format!("multicast: {e}"),
                            }),
                        };
                        state.record(d.id, SocketAddr::new(d.addr, d.port), result);
                    }
                }
            });
            return;
        }
        if let Some(state) = &state {
            state.expect(out.destinations.len());
        }
        for dest in out.destinations.iter() {
            let watch = self.leaving.as_mut().map(|w| {
                let (tx, rx) = oneshot::channel::<()>();
                w.push(rx);
                tx
            });
            let suspect = SuspectOnFailure {
                cmd: self.cmd_self.clone(),
                member: dest.clone(),
                counters: self.counters.clone(),
            };
            let done: cohort_transport::Completion = match &state {
                Some(state) => {
                    let state = state.clone();
                    let (id, addr) = (dest.id, SocketAddr::new(dest.addr, dest.port));
                    Box::new(move |r| {
                        suspect.check(&r);
                        state.record(id, addr, r);
                        drop(watch);
                    })
                }
                None => Box::new(move |r| {
                    suspect.check(&r);
                    drop(watch);
                }),
            };
            self.transport
                .send(dest, bytes.clone(), out.msg_id, out.options, done);
        }
    }
}

/// Feeds a failed send back to the pipeline as a suspicion (IO failures and timeouts only: a
/// FAIL_ACK or a full queue says nothing about the peer's health).
struct SuspectOnFailure {
    cmd: mpsc::Sender<Command>,
    member: Member,
    counters: Arc<ChannelCounters>,
}

impl SuspectOnFailure {
    fn check(self, r: &Result<Delivered, cohort_transport::SendError>) {
        use cohort_transport::SendError as E;
        let Err(e) = r else { return };
        if !matches!(
            e,
            E::Connect { .. } | E::ConnectionLost { .. } | E::Timeout { .. }
        ) {
            return;
        }
        let why = Suspicion::SendFailed(e.to_string());
        if self
            .cmd
            .try_send(Command::Suspect(self.member, why))
            .is_err()
        {
            self.counters
                .suspicions_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Runs a failure detector's probe through the transport (a fresh connection, the handshake,
/// optionally the probe frame and its ACK) and classifies the result.
async fn run_probe<N: Net>(
    net: &N,
    codec: &CohortCodec,
    local: &Member,
    member: &Member,
    probe: ProbeRequest,
    test: Option<cohort_transport::ProbeTest>,
) -> Result<(), ProbeError> {
    use cohort_transport::ProbeStage;
    let addr = SocketAddr::new(member.addr, member.port);
    let failure =
        match cohort_transport::probe(net, codec, local, addr, probe.connect_timeout, test).await {
            Ok(()) => return Ok(()),
            Err(f) => f,
        };
    use std::io::ErrorKind as K;
    let kind = match failure.error.kind() {
        K::ConnectionRefused => ProbeErrorKind::Refused,
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
            ProbeErrorKind::Reset
        }
        K::TimedOut => ProbeErrorKind::Timeout,
        _ => ProbeErrorKind::Other,
    };
    let stage = match failure.stage {
        ProbeStage::Connect => "connect",
        ProbeStage::Send => "send test to",
        ProbeStage::Read => "read test",
    };
    Err(ProbeError {
        kind,
        detail: format!("{stage} {addr}: {}", failure.error),
    })
}

fn to_inbound(r: Received) -> Inbound {
    let ack = r.ack.map(|token| {
        Acker::new(move |result| match result {
            Ok(()) => token.ack(),
            Err(reason) => token.fail(&reason),
        })
    });
    frame_to_inbound(r.frame, r.hello, r.peer, ack)
}

fn frame_to_inbound(
    data: DataFrame,
    member: Option<Arc<Member>>,
    peer: SocketAddr,
    ack: Option<Acker>,
) -> Inbound {
    Inbound {
        from: data.header.sender,
        member,
        peer,
        msg_id: data.header.msg_id,
        options: data.header.options,
        seq: data.header.seq,
        timestamp_ms: data.header.timestamp_ms,
        extensions: data.header.extensions,
        payload: data.payload,
        ack,
    }
}
