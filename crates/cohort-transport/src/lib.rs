//! Cohort's data transport: how messages travel between members.
//!
//! - **Receiver**: a TCP listener on a configured port or the first free one from 4000 (as
//!   Tribes' `autoBind`), plus an optional UDP data port. Every connection begins with a hello
//!   frame naming the connecting member; then data frames follow. Malformed, oversized or
//!   never-ending frames close that connection and are counted; the others carry on.
//! - **Senders**: one small pool of connections per peer ([`TransportConfig::connections_per_peer`]),
//!   opened lazily with a connect timeout, retries and a reconnect backoff. A send to N members is
//!   N independent enqueues, so a slow or dead member never blocks the others, and each
//!   destination completes on its own ([`Completion`]).
//! - **Pipelined ACKs**: many messages are in flight on one connection; the receiver answers
//!   with ACK frames naming id ranges, batched per read. USE_ACK is acknowledged on receipt;
//!   USE_ACK | SYNCHRONIZED_ACK when the layer above completes the [`AckToken`] (FAIL_ACK if
//!   it reports a failure). Writes are coalesced: queued frames go out in one write of up to
//!   `write_batch_bytes`.
//!
//! Data frames come either encoded by the layer above ([`TransportHandle::send`]: encoded once
//! for all destinations, as keyed and multicast frames are) or as header and payload
//! ([`TransportHandle::send_data`], [`TransportHandle::send_data_many`]), which each
//! connection's lane encodes straight into its write buffer, or around a large payload that
//! it then writes in place. Of a received frame the transport reads only what it must (kind,
//! message id, options, sender).
//!
//! ```
//! use std::net::SocketAddr;
//! use bytes::{Bytes, BytesMut};
//! use cohort_net::TokioNet;
//! use cohort_transport::{Completion, Delivered, Transport, TransportConfig};
//! use cohort_wire::*;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! let config = TransportConfig { port: 0, ..TransportConfig::default() };
//! let codec = CohortCodec::new(WireLimits::default(), None)?;
//! let member = |id: u8, addr: SocketAddr| Member::new(MemberId::from_bytes([id; 16]), addr.ip(), addr.port());
//! let rx = Transport::bind(config.clone(), TokioNet, true).await?;
//! let b_member = member(2, rx.local_addr().unwrap());
//! let (_b, mut inbound) = rx.start(b_member.clone(), codec.clone());
//! let tx = Transport::bind(config, TokioNet, true).await?;
//! let a_member = member(1, tx.local_addr().unwrap());
//! let (a, _) = tx.start(a_member, codec.clone());
//!
//! let frame = Frame::Data(DataFrame {
//!     header: DataHeader { msg_id: 1, options: SendOptions::USE_ACK, sender: MemberId::from_bytes([1; 16]), ..Default::default() },
//!     payload: Bytes::from_static(b"hi"),
//! });
//! let mut bytes = BytesMut::new();
//! codec.encode_frame(&frame, &mut bytes)?;
//! let (done_tx, done_rx) = tokio::sync::oneshot::channel();
//! a.send(&b_member, bytes.freeze(), 1, SendOptions::USE_ACK, Completion::new(move |r| { let _ = done_tx.send(r); }));
//! let got = inbound.recv().await.unwrap();
//! assert_eq!(&got.frame.payload[..], b"hi");
//! assert_eq!(done_rx.await?, Ok(Delivered::Acked));
//! # Ok(())
//! # }
//! ```

mod ack;
mod config;
mod core;
mod delay_acks;
mod error;
mod handshake;
mod mcast;
mod outgoing;
mod probe;
mod read_buffers;
mod receiver;
mod sender;
mod stats;
mod udp;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use cohort_net::{Net, TcpListener};
use cohort_wire::{CohortCodec, DataFrame, Member, MemberId, SendOptions};
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};

pub use ack::AckToken;
pub(crate) use ack::{AckMsg, AckSink};
pub use config::{ConfigError, TransportConfig};
pub use error::{Delivered, SendError, StartError};
pub use outgoing::{Completion, Completions, DataSend, OutData};
pub use probe::{ProbeFailure, ProbeStage, ProbeTest, probe};
pub use stats::{ACK_LATENCY_BOUNDS_US, LatencyHistogram, TransportStats};

use stats::Counters;

/// Capacity of the queue returned by [`BoundTransport::peer_events`]; events beyond it are
/// dropped and counted (`peer_events_dropped`).
pub const PEER_EVENT_QUEUE: usize = 1024;

/// A connection to or from a peer ended from the far side, or every attempt to connect to it
/// was refused: evidence for a failure detector (a killed process's sockets close at once,
/// its listener with them), not proof (a peer may close idle connections).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerEvent {
    /// The peer's receiver address (from its hello for inbound connections).
    pub addr: SocketAddr,
    /// The peer's id, when known.
    pub member: Option<MemberId>,
    /// Which connection.
    pub direction: Direction,
    /// What was seen: "closed by peer", the IO error, the ACK timeout, or "connect refused".
    pub reason: String,
}

/// Which side opened a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// This node connected to the peer (a sender connection).
    Outbound,
    /// The peer connected to this node (a receiver connection).
    Inbound,
}

/// How a message arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// A TCP connection.
    Tcp,
    /// A UDP datagram to the data port.
    Udp,
    /// A datagram to the multicast group.
    Multicast,
}

/// A received data frame, for the layer above.
#[derive(Debug)]
pub struct Received {
    /// The sender as its connection's hello described it (`None` for datagrams, which carry
    /// only the sender id, in `frame.header.sender`).
    pub hello: Option<Arc<Member>>,
    /// The remote socket address.
    pub peer: SocketAddr,
    /// The frame.
    pub frame: DataFrame,
    /// For USE_ACK | SYNCHRONIZED_ACK: complete it when processing is done.
    pub ack: Option<AckToken>,
    /// The path it came by.
    pub via: Via,
    /// The frame's share of the transport's `max_inbound_bytes` (`None` for datagrams and for
    /// frames from a custom transport). The frames of one read share one reservation, released
    /// when the last of them is dropped.
    pub budget: Option<InboundPermit>,
}

/// A frame on its way to a connection: encoded by the layer above, or a data frame the
/// connection encodes ([`TransportHandle::send_data`]).
#[derive(Clone, Debug)]
pub(crate) enum OutFrame {
    Encoded(Bytes),
    Data(OutData),
}

/// What a data frame's encoding adds to its payload, at most, for the queue's byte count
/// (prefix, header without extensions, tag, CRC).
const DATA_OVERHEAD: usize = 128;

impl OutFrame {
    /// Its size in a peer's queue: exact when encoded, the payload and extensions with room
    /// for the header when not (the same figure every time it is asked).
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Encoded(b) => b.len(),
            Self::Data(d) => {
                let ext: usize = d.header.extensions.iter().map(|e| e.value.len() + 8).sum();
                d.payload.len() + ext + DATA_OVERHEAD
            }
        }
    }
}

/// A received frame's reservation against [`TransportConfig::max_inbound_bytes`]. The frames
/// decoded from one read share one reservation, taken for all of them at once; it is released
/// when the last of them is dropped.
pub struct InboundPermit {
    share: Arc<Reservation>,
    bytes: u64,
}

/// Bytes reserved against the inbound budget, released on drop.
pub(crate) struct Reservation {
    _permit: OwnedSemaphorePermit,
    bytes: u64,
    counters: Arc<Counters>,
}

impl Reservation {
    pub(crate) fn new(permit: OwnedSemaphorePermit, bytes: u64, counters: Arc<Counters>) -> Self {
        Counters::add(&counters.inbound_bytes, bytes);
        Self {
            _permit: permit,
            bytes,
            counters,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        Counters::sub(&self.counters.inbound_bytes, self.bytes);
    }
}

impl std::fmt::Debug for InboundPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InboundPermit({} bytes)", self.bytes)
    }
}

impl InboundPermit {
    /// `bytes` of a reservation.
    pub(crate) fn of(share: Arc<Reservation>, bytes: u64) -> Self {
        Self { share, bytes }
    }

    /// The frame's bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The bytes of the reservation this frame shares (its own, and those of the frames read
    /// with it).
    pub fn reserved(&self) -> u64 {
        self.share.bytes
    }
}

impl Received {
    /// The sender's id.
    pub fn sender(&self) -> MemberId {
        self.frame.header.sender
    }
}

/// Entry point: binds the receiver, then starts the transport.
pub struct Transport;

impl Transport {
    /// Validates `config` and, when `receive` is true, binds the TCP receiver (auto-binding
    /// from `config.port`) and the UDP data port if configured. Nothing runs until
    /// [`BoundTransport::start`].
    pub async fn bind<N: Net>(
        config: TransportConfig,
        net: N,
        receive: bool,
    ) -> Result<BoundTransport<N>, StartError> {
        config.validate()?;
        let mut listener = None;
        let mut udp = None;
        if receive {
            let tries = if config.port == 0 {
                1
            } else {
                config.auto_bind
            };
            listener = Some(
                cohort_net::bind_tcp_auto(&net, config.bind, config.port, config.auto_bind)
                    .await
                    .map_err(|source| StartError::Bind {
                        addr: config.bind,
                        first: config.port,
                        tried: tries,
                        source,
                    })?,
            );
            if let Some(port) = config.udp_port {
                let addr = SocketAddr::new(config.bind, port);
                udp = Some(
                    net.bind_udp(addr)
                        .await
                        .map_err(|source| StartError::BindUdp { addr, source })?,
                );
            }
        }
        Ok(BoundTransport {
            config,
            net,
            listener,
            udp,
            mcast: None,
            events: None,
        })
    }
}

/// A transport whose receiver sockets are bound but not yet serving.
pub struct BoundTransport<N: Net> {
    config: TransportConfig,
    net: N,
    listener: Option<N::TcpListener>,
    udp: Option<N::UdpSocket>,
    mcast: Option<(N::UdpSocket, SocketAddr)>,
    events: Option<mpsc::Sender<PeerEvent>>,
}

impl<N: Net> BoundTransport<N> {
    /// Opens the multicast data path: a socket of the transport's own on the group at `opts`'
    /// port (the membership service's beacon socket is another), for MULTICAST sends
    /// ([`TransportHandle::send_multicast`]) and receives. Call before
    /// [`BoundTransport::start`].
    pub async fn bind_multicast(
        &mut self,
        opts: &cohort_net::MulticastOptions,
    ) -> Result<(), StartError> {
        let group = SocketAddr::from((opts.group, opts.port));
        let socket = self
            .net
            .bind_multicast(opts)
            .await
            .map_err(|source| StartError::BindMulticast { group, source })?;
        self.mcast = Some((socket, group));
        Ok(())
    }

    /// The receiver's address, to advertise in the local member (`None` without a receiver).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The UDP data port, if bound.
    pub fn udp_port(&self) -> Option<u16> {
        use cohort_net::UdpSocket;
        self.udp
            .as_ref()
            .and_then(|u| u.local_addr().ok())
            .map(|a| a.port())
    }

    /// Asks for connection events ([`PeerEvent`]): connections closed or reset by the far
    /// side. Bounded by [`PEER_EVENT_QUEUE`]; call before [`BoundTransport::start`].
    pub fn peer_events(&mut self) -> mpsc::Receiver<PeerEvent> {
        let (tx, rx) = mpsc::channel(PEER_EVENT_QUEUE);
        self.events = Some(tx);
        rx
    }

    /// Starts serving: spawns the accept loop (and the UDP loop) on the current tokio runtime.
    /// `local` is sent in the hello of every connection this node opens. Received frames come
    /// out of the returned queue (bounded by `inbound_queue`: when it is full, connections are
    /// not read, which pushes back on the senders).
    pub fn start(
        self,
        local: Member,
        codec: CohortCodec,
    ) -> (TransportHandle<N>, mpsc::Receiver<Received>) {
        let (inbound_tx, inbound_rx) = mpsc::channel(self.config.inbound_queue);
        let budget = Arc::new(tokio::sync::Semaphore::new(self.config.max_inbound_bytes));
        let (stop_tx, _) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            config: self.config,
            net: self.net,
            codec,
            local: Arc::new(local),
            counters,
            inbound_tx,
            stop_rx: stop_tx.subscribe(),
            stop_tx,
            peers: sender::Peers::default(),
            udp: std::sync::OnceLock::new(),
            mcast: std::sync::OnceLock::new(),
            events: self.events,
            inbound: std::sync::Mutex::new(std::collections::HashMap::new()),
            budget,
            warn: cohort_net::WarnLimiter::default(),
            spare_buffers: read_buffers::SpareBuffers::default(),
        });
        if let Some(listener) = self.listener {
            tokio::spawn(receiver::accept_loop(shared.clone(), listener));
        }
        if let Some(socket) = self.udp {
            udp::start(&shared, socket);
        }
        if let Some((socket, group)) = self.mcast {
            mcast::start(&shared, socket, group);
        }
        (TransportHandle { shared }, inbound_rx)
    }
}

pub(crate) struct Shared<N: Net> {
    config: TransportConfig,
    net: N,
    codec: CohortCodec,
    local: Arc<Member>,
    counters: Arc<Counters>,
    inbound_tx: mpsc::Sender<Received>,
    stop_tx: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
    peers: sender::Peers,
    udp: std::sync::OnceLock<udp::UdpPath>,
    mcast: std::sync::OnceLock<mcast::McastPath>,
    events: Option<mpsc::Sender<PeerEvent>>,
    /// Inbound connections by remote address.
    inbound: std::sync::Mutex<std::collections::HashMap<SocketAddr, receiver::InboundEntry>>,
    /// `max_inbound_bytes`, as permits of one byte.
    budget: Arc<tokio::sync::Semaphore>,
    /// One warning line per kind per interval.
    warn: cohort_net::WarnLimiter,
    /// Read buffers connections replaced, read into again once their frames are dropped.
    spare_buffers: read_buffers::SpareBuffers,
}

impl<N: Net> Shared<N> {
    /// Reports a connection closed by the far side, unless the transport is stopping.
    pub(crate) fn peer_event(&self, event: PeerEvent) {
        if *self.stop_rx.borrow() {
            return;
        }
        if let Some(tx) = &self.events {
            if tx.try_send(event).is_err() {
                Counters::inc(&self.counters.peer_events_dropped);
            }
        }
    }
}

/// State of the outbound connections to one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerState {
    /// The peer's receiver address.
    pub addr: SocketAddr,
    /// Connections open now.
    pub connected: usize,
    /// Bytes queued, not yet written.
    pub queued_bytes: usize,
    /// True while sends to it fail fast after failed connects.
    pub backing_off: bool,
}

/// A clonable front to a running transport.
pub struct TransportHandle<N: Net> {
    shared: Arc<Shared<N>>,
}

impl<N: Net> Clone for TransportHandle<N> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<N: Net> TransportHandle<N> {
    /// Sends a pre-encoded data frame to the multicast group (the data path opened by
    /// [`BoundTransport::bind_multicast`]): one datagram, best effort, never acknowledged.
    /// `done` runs once the datagram is written (`Delivered::Sent`) or could not be: no
    /// multicast path (`NoMulticast`), too large for a datagram, or the queue full.
    pub fn send_multicast(&self, frame: Bytes, done: Completion) {
        mcast::send(&self.shared, frame, done);
    }

    /// True when the transport has a multicast data path.
    pub fn has_multicast(&self) -> bool {
        self.shared.mcast.get().is_some()
    }

    /// Sends a pre-encoded frame (`frame`, whose id is `msg_id`) to `to`, over TCP, or as a
    /// datagram with [`SendOptions::UDP`]. Returns at once; `done` runs when the delivery
    /// completes: written, or acknowledged when `options` holds USE_ACK, or failed. Must be
    /// called within a tokio runtime.
    pub fn send(
        &self,
        to: &Member,
        frame: Bytes,
        msg_id: u64,
        options: SendOptions,
        done: Completion,
    ) {
        self.dispatch(to, OutFrame::Encoded(frame), msg_id, options, done);
    }

    /// Sends a data frame that this transport encodes, as [`Self::send`] sends an encoded
    /// one. Over TCP the connection encodes it into its write buffer (sealed when keyed), and
    /// a large unsealed one around its payload, which is then written from its own bytes:
    /// the frame is encoded off the caller's task and its payload is copied at most once (a
    /// payload of 16 KiB or more, not at all). Shared between destinations, it is encoded
    /// once per connection. A frame that cannot be encoded completes with
    /// [`SendError::BadFrame`].
    pub fn send_data(
        &self,
        to: &Member,
        frame: impl Into<OutData>,
        msg_id: u64,
        options: SendOptions,
        done: Completion,
    ) {
        self.dispatch(to, OutFrame::Data(frame.into()), msg_id, options, done);
    }

    /// [`Self::send_data`] for several frames to one destination, in order: one look-up of
    /// the peer and one entry in its connection's queue for all of them (a batch of sends to
    /// one member costs one queue operation, not one per frame). Each frame still completes
    /// on its own, through its own `done`; frames refused at once (stopped, peer backing off,
    /// queue full) fail one by one, as with `send_data`.
    pub fn send_data_many(&self, to: &Member, frames: Vec<DataSend>) {
        if frames.is_empty() {
            return;
        }
        if *self.shared.stop_rx.borrow() {
            for f in frames {
                Counters::inc(&self.shared.counters.send_failures);
                f.done.complete(Err(SendError::Stopped));
            }
            return;
        }
        if !frames.iter().any(|f| f.options.contains(SendOptions::UDP)) {
            // All TCP (the usual case): handed over as they are.
            sender::send_many(&self.shared, to.socket_addr(), frames);
            return;
        }
        // UDP frames (rare in a batch) take the datagram path one by one, in their place:
        // the run of TCP frames before one is handed over first.
        let mut run = Vec::with_capacity(frames.len());
        for f in frames {
            if f.options.contains(SendOptions::UDP) {
                sender::send_many(&self.shared, to.socket_addr(), std::mem::take(&mut run));
                self.dispatch(to, OutFrame::Data(f.frame), f.msg_id, f.options, f.done);
            } else {
                run.push(f);
            }
        }
        sender::send_many(&self.shared, to.socket_addr(), run);
    }

    /// Both sends: refused once stopped, then a datagram (encoded here: UDP takes whole
    /// frames) or a TCP lane.
    fn dispatch(
        &self,
        to: &Member,
        frame: OutFrame,
        msg_id: u64,
        options: SendOptions,
        done: Completion,
    ) {
        let fail = |e: SendError, done: Completion| {
            Counters::inc(&self.shared.counters.send_failures);
            done.complete(Err(e));
        };
        if *self.shared.stop_rx.borrow() {
            return fail(SendError::Stopped, done);
        }
        if !options.contains(SendOptions::UDP) {
            return sender::send(&self.shared, to.socket_addr(), frame, msg_id, options, done);
        }
        let bytes = match frame {
            OutFrame::Encoded(bytes) => bytes,
            OutFrame::Data(d) => {
                let mut buf = bytes::BytesMut::new();
                if let Err(e) = self.shared.codec.encode_data(&d, None, &mut buf) {
                    let addr = to.socket_addr();
                    let reason = e.to_string();
                    return fail(SendError::BadFrame { addr, reason }, done);
                }
                buf.freeze()
            }
        };
        udp::send(&self.shared, to, bytes, msg_id, options, done);
    }

    /// The local member this transport introduces itself as.
    pub fn local(&self) -> &Member {
        &self.shared.local
    }

    /// Counters.
    pub fn stats(&self) -> TransportStats {
        self.shared.counters.snapshot()
    }

    /// The outbound state towards `addr`, if any send was ever made to it.
    pub fn peer(&self, addr: SocketAddr) -> Option<PeerState> {
        self.shared.peers.state(addr)
    }

    /// Every peer with outbound state.
    pub fn peers(&self) -> Vec<PeerState> {
        self.shared.peers.all()
    }

    /// Closes the connections to `addr` and fails what is queued for it (the member left).
    pub fn disconnect(&self, addr: SocketAddr) {
        self.shared.peers.remove(addr);
    }

    /// Closes the inbound connection whose remote end is `from` (as in
    /// [`Received::peer`]); true if there was one. A throttle's "disconnect".
    pub fn close_inbound(&self, from: SocketAddr) -> bool {
        let entry = self
            .shared
            .inbound
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&from);
        match entry {
            Some(e) => {
                Counters::inc(&self.shared.counters.inbound_closed_on_request);
                e.close(receiver::Kill::Requested);
                true
            }
            None => false,
        }
    }

    /// Closes idle connections to peers not in `keep` (the heartbeat's keep-alive pass).
    pub fn retain_peers(&self, keep: &dyn Fn(SocketAddr) -> bool) {
        self.shared.peers.retain(keep);
    }

    /// Stops everything: the receiver stops accepting and closes its connections, queued
    /// sends fail with [`SendError::Stopped`], outbound connections close.
    pub fn stop(&self) {
        let _ = self.shared.stop_tx.send(true);
        self.shared.peers.clear();
    }

    /// The codec frames are expected in.
    pub fn codec(&self) -> &CohortCodec {
        &self.shared.codec
    }
}

/// Resolves once the transport is stopped (the watch guard is dropped inside, so callers'
/// futures stay `Send`).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

trait MemberAddr {
    fn socket_addr(&self) -> SocketAddr;
}

impl MemberAddr for Member {
    fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.addr, self.port)
    }
}
