//! `GroupChannel::builder()`: assembles transport, membership and pipeline, and starts the
//! owner task.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, RwLock};

use bytes::BytesMut;
use cohort_membership::{LocalMemberConfig, Membership, MembershipListener, MulticastConfig};
use cohort_net::Net;
use cohort_transport::{Received, Transport, TransportConfig};
use cohort_wire::{CohortCodec, KeyRing, Member, MemberId, Services};
use tokio::sync::{broadcast, mpsc};

use crate::admission::{Admission, MAX_BYTES, MAX_MESSAGES, Room};
use crate::core::{Interceptor, Pipeline};
use crate::listener::{ChannelListener, ClusterListener};
use crate::receipt::ErrorHandler;
use crate::receipt::SendContext;
use crate::seams::{ChannelMembership, ChannelTransport};

use super::config::{ChannelConfig, ChannelError, MembershipSetup};
use super::delivery::{deliver, delivery_queue};
use super::handle::{ChannelHandle, HandleShared, Life};
use super::owner::Owner;
use super::stats::ChannelCounters;

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

    /// The channel settings so far, to adjust in place (an interceptor stack's
    /// `message_dispatch` entry sets the ASYNCHRONOUS queue policy this way).
    pub fn config_mut(&mut self) -> &mut ChannelConfig {
        &mut self.config
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

    /// Starts the channel on real sockets ([`cohort_net::TokioNet`]) with ids drawn from the
    /// operating system's generator: [`ChannelBuilder::start_with`] for everything else (a
    /// simulated network, a seeded generator).
    ///
    /// A channel started this way has no interceptor unless given some: no failure detector
    /// (members leave by shutdown or drop time only), unlike the `cohort` node, whose default
    /// stack is `tcp_ping` and `tcp_failure_detector` (`cohort_interceptors::default_stack`).
    pub async fn start(self) -> Result<ChannelHandle, ChannelError> {
        self.start_with(cohort_net::TokioNet, &mut rand_core::OsRng)
            .await
    }

    /// Starts the services in Tribes' order (receiver, sender, membership receive, membership
    /// broadcast) and spawns the channel task on the current tokio runtime, with `net` for
    /// sockets and `rng` for the member id.
    pub async fn start_with<N: Net>(
        self,
        net: N,
        rng: &mut impl rand_core::RngCore,
    ) -> Result<ChannelHandle, ChannelError> {
        self.config.validate()?;
        crate::core::check_order(&self.interceptors).map_err(|reason| ChannelError::Config {
            key: "interceptors",
            reason,
        })?;

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
                    // An address given to advertise wins over the bound one (a receiver
                    // bound to 0.0.0.0 is reached through a routable address).
                    let addr = self.local.data_addr.unwrap_or(addr);
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
                    local.app_version.clone_from(&self.local.app_version);
                    local.same_app_version = self.membership.config.version_policy
                        == cohort_membership::VersionPolicy::Same;
                    local.start_time_ms = net.wall_clock_ms();
                    peer_rx = Some(bound.peer_events());
                    // MULTICAST messages have a path of their own in the transport, on the
                    // group's data port (the membership service keeps its socket for beacons).
                    if let Some(m) = &self.membership.multicast
                        && services.intersects(Services::SND_TX | Services::SND_RX)
                    {
                        bound.bind_multicast(&m.data_options()).await?;
                    }
                    let (handle, inbound) = bound.start(local.clone(), codec.clone());
                    (Arc::new(handle), inbound, local)
                }
            };
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
                        app_version: local.app_version.clone(),
                    })
                    .services(services.intersection(Services::MBR_RX | Services::MBR_TX));
                if let Some((bind, peers)) = self.membership.static_members.clone() {
                    builder = builder.static_peers(bind, peers);
                }
                builder = builder.dns(self.membership.dns.clone());
                Some(Arc::new(builder.start_with(net.clone(), rng).await?))
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
        let (mut delivery, delivery_rx) = delivery_queue(self.config.delivery_queue);
        let (member_tx, _) = broadcast::channel(1024);
        let listeners = Arc::new(RwLock::new(self.listeners));
        let cluster_listeners: Arc<[Arc<dyn ClusterListener>]> = self.cluster_listeners.into();
        let counters = Arc::new(ChannelCounters::default());
        let claims: Arc<RwLock<Arc<[super::handle::Claim]>>> =
            Arc::new(RwLock::new(Arc::from(Vec::new())));
        let suspecter = Arc::new(super::completion::Suspecter {
            cmd: cmd_tx.clone(),
            counters: counters.clone(),
        });
        // Both bounds fit a packed room: the config's validation checks them.
        let admission = Arc::new(Admission::new(Room::new(
            u32::try_from(self.config.async_queue_messages).unwrap_or(MAX_MESSAGES),
            u32::try_from(self.config.async_queue_bytes).unwrap_or(MAX_BYTES),
        )));
        let shared = Arc::new(HandleShared {
            tasks: super::tasks::Tasks::default(),
            send_ctx: Arc::new(SendContext {
                suspecter: suspecter.clone(),
                admission: admission.clone(),
                error_handler: self.error_handler,
                warn: cohort_net::WarnLimiter::new(cohort_net::WARN_INTERVAL),
            }),
            cmd: cmd_tx,
            ids,
            admission,
            paced: AtomicUsize::new(0),
            config: self.config.clone(),
            max_payload: self.transport.limits.max_frame_payload,
            local: local.clone(),
            membership: membership.clone(),
            transport: transport.clone(),
            view: view.clone(),
            listeners: listeners.clone(),
            rpc_listeners: Arc::new(RwLock::new(Vec::new())),
            cluster_listeners: cluster_listeners.clone(),
            member_tx: member_tx.clone(),
            running: Mutex::new(services),
            counters: counters.clone(),
            claims: claims.clone(),
            last_destinations: std::sync::Mutex::new(None),
        });
        let rt = tokio::runtime::Handle::current();
        let handle = ChannelHandle {
            _life: Some(Arc::new(Life {
                shared: shared.clone(),
                rt: rt.clone(),
            })),
            shared,
        };
        delivery.set_inline(super::delivery::Inline {
            handle: handle.internal(),
            rt: rt.clone(),
        });
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
            tickets: rustc_hash::FxHashMap::default(),
            delivery,
            member_tx,
            membership_listeners: self.membership_listeners,
            cmd_self: handle.shared.cmd.clone(),
            suspecter,
            enc: BytesMut::new(),
            heartbeat: self.config.heartbeat_interval,
            counters,
            view,
            leaving: None,
            ids: handle.shared.ids.clone(),
            tasks: tokio::task::JoinSet::new(),
            claims,
            staged: Vec::new(),
            staged_states: Vec::new(),
            wall_ms: 0,
            pending: super::pending::PendingSends::default(),
        };
        tokio::spawn(owner.run(cmd_rx, inbound_rx, peer_rx));
        Ok(handle)
    }
}
