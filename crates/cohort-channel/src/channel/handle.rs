//! `ChannelHandle`: what applications hold; it talks to the owner task through a bounded
//! command queue.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use bytes::Bytes;
use cohort_membership::MembershipView;

use cohort_wire::{Member, SendOptions, Services};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::admission::{Admission, Reservation, Room};
use crate::core::{Outbound, ProbeError, Suspicion, Ticket};
use crate::listener::{ChannelListener, ChannelMessage, ClusterListener};
use crate::receipt::{Hold, SendContext, SendOutcome, SendReceipt, SendState};
use crate::seams::{ChannelMembership, ChannelTransport};

use super::config::{AsyncFullPolicy, ChannelConfig, ChannelError};
use super::stats::{ChannelCounters, ChannelStats, Mode, ModeStats};

/// What handles ask of the owner task.
///
/// The rare variants box their `Member` (216 bytes): every send moves a `Command` through the
/// owner's queue, and an enum is as large as its largest variant (256 bytes with the member
/// inline, 112 boxed: a send's own fields).
pub(super) enum Command {
    Send(Outbound, Hold),
    SendBatch(Vec<Outbound>, Hold),
    ProbeResult(usize, Box<Member>, Result<(), ProbeError>),
    Suspect(Box<Member>, Suspicion),
    Leave(oneshot::Sender<()>),
    Stop(oneshot::Sender<()>),
}

pub(super) struct HandleShared {
    pub(super) cmd: mpsc::Sender<Command>,
    pub(super) ids: Arc<AtomicU64>,
    /// The bounded ASYNCHRONOUS queue (also in `send_ctx`, which gives room back).
    pub(super) admission: Arc<Admission>,
    /// ASYNCHRONOUS bytes sent into a deep queue since a send last yielded (see
    /// [`ChannelHandle::pace`]).
    pub(super) paced: AtomicUsize,
    pub(super) config: ChannelConfig,
    pub(super) max_payload: u32,
    pub(super) local: Member,
    pub(super) membership: Option<Arc<dyn ChannelMembership>>,
    pub(super) transport: Arc<dyn ChannelTransport>,
    pub(super) view: Arc<RwLock<Vec<Member>>>,
    pub(super) listeners: Arc<RwLock<Vec<Arc<dyn ChannelListener>>>>,
    /// The RPC channels' listeners: RPC envelopes go to these only.
    pub(super) rpc_listeners: Arc<RwLock<Vec<Arc<dyn ChannelListener>>>>,
    pub(super) cluster_listeners: Arc<[Arc<dyn ClusterListener>]>,
    pub(super) member_tx: broadcast::Sender<ViewEvent>,
    pub(super) running: Mutex<Services>,
    pub(super) counters: Arc<ChannelCounters>,
    /// What every send's state reports to: suspicions, queue room, the error handler.
    pub(super) send_ctx: Arc<SendContext>,
    /// Hooks the owner task asks before it hands a message to the delivery thread.
    pub(super) claims: Arc<RwLock<Arc<[Claim]>>>,
    /// The last send's destinations, shared by the next send to the same members.
    pub(super) last_destinations: Mutex<Option<Arc<[Member]>>>,
    /// Tasks started outside the owner (RPC replies and answers): bounded, aborted by the
    /// last stop.
    pub(super) tasks: super::tasks::Tasks,
}

impl HandleShared {
    /// ASYNCHRONOUS bytes admitted and not yet completed.
    fn async_queued_bytes(&self) -> usize {
        self.admission.queued().bytes() as usize
    }

    /// `to` as a shared slice: the last send's when it went to the same members (most sends
    /// do), so a send neither allocates nor copies a member; otherwise a new one, kept for
    /// the next send. One slice is kept.
    fn destinations(&self, to: &[Member]) -> Arc<[Member]> {
        let mut last = self
            .last_destinations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(l) = last.as_ref() {
            if l.len() == to.len() && l.iter().zip(to).all(|(a, b)| same_member(a, b)) {
                return l.clone();
            }
        }
        let fresh: Arc<[Member]> = to.into();
        *last = Some(fresh.clone());
        fresh
    }
}

/// `a == b`, field by field, without comparing empty strings through `memcmp` (on some CPUs
/// a zero-length `memcmp` of two empty strings, whose pointers are dangling, costs as much
/// as allocating the member anew: docs/BENCHMARKS.md, issue 13's fourth stop).
fn same_member(a: &Member, b: &Member) -> bool {
    fn same(a: &[u8], b: &[u8]) -> bool {
        a.len() == b.len() && (a.is_empty() || a == b)
    }
    // Destructured, so a new field cannot be forgotten here.
    let Member {
        id,
        addr,
        port,
        udp_port,
        cluster,
        domain,
        name,
        host,
        start_time_ms,
        versions,
        app_version,
        same_app_version,
        payload,
    } = a;
    *id == b.id
        && *addr == b.addr
        && *port == b.port
        && *udp_port == b.udp_port
        && *start_time_ms == b.start_time_ms
        && *versions == b.versions
        && *same_app_version == b.same_app_version
        && same(cluster.as_bytes(), b.cluster.as_bytes())
        && same(domain, &b.domain)
        && same(name.as_bytes(), b.name.as_bytes())
        && same(host.as_bytes(), b.host.as_bytes())
        && same(app_version.as_bytes(), b.app_version.as_bytes())
        && same(payload, &b.payload)
}

/// What a [`Claim`] says of a message.
pub(crate) enum Claimed {
    /// Handled on the owner task; no listener sees it.
    Yes,
    /// Not this hook's; the next hook, then the listeners, get it.
    No,
    /// The hook's owner is gone: remove the hook.
    Gone,
}

/// A hook on the owner task that may take a message before the listeners (the RPC channel's
/// replies: completing a waiting call needs no listener thread). It must be quick and never
/// block: it runs on the task that moves every message.
pub(crate) type Claim = Arc<dyn Fn(&ChannelMessage) -> Claimed + Send + Sync>;

/// A membership event after the interceptors, with the members in view once it applied (the
/// local one excluded), so a subscriber never pairs an event with an older or newer view.
#[derive(Clone, Debug)]
pub struct ViewEvent {
    /// The event.
    pub event: cohort_membership::MembershipEvent,
    /// The view it produced.
    pub members: std::sync::Arc<[cohort_wire::Member]>,
}

/// Most messages in one [`ChannelHandle::send_many`] batch.
pub const MAX_BATCH: usize = 4096;

/// A clonable front to a running channel. When the last handle the application holds is
/// dropped, the channel stops as [`ChannelHandle::stop`] would (in a task
/// on the runtime it was started on): its task, delivery thread and sockets do not outlive it.
#[derive(Clone)]
pub struct ChannelHandle {
    pub(super) shared: Arc<HandleShared>,
    /// `None` in the channel's own copies (the delivery thread's, the owner task's for inline
    /// delivery), which must not keep it running.
    pub(super) _life: Option<Arc<Life>>,
}

/// ASYNCHRONOUS bytes queued beyond which sends yield ([`ChannelHandle::pace`]): about what a
/// core's L2 cache holds.
const ASYNC_PACE_BYTES: usize = 1 << 20;

/// Beyond [`ASYNC_PACE_BYTES`], sends yield once per this many bytes sent: a sender of 1 KiB
/// messages pays a task switch per 64 of them, not per message; one of 64 KiB messages or of
/// batches yields after each send.
const ASYNC_PACE_EVERY: usize = 64 << 10;

/// Held by every application handle; the last one dropped stops the channel.
pub(super) struct Life {
    pub(super) shared: Arc<HandleShared>,
    pub(super) rt: tokio::runtime::Handle,
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
        drop(self.rt.spawn(async move { handle.stop().await }));
    }
}

impl ChannelHandle {
    /// A copy for the channel's own use, which does not keep the channel running.
    pub(super) fn internal(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            _life: None,
        }
    }

    /// Sends `payload` to `destinations` with `options`. Waits only for admission: with
    /// ASYNCHRONOUS, until the bounded queue has room (backpressure); otherwise until the
    /// channel task takes the message. The receipt resolves as the options promise.
    ///
    /// For throughput, pipeline: send on, and await receipts a few MiB behind the newest
    /// send. Thousands of receipts outstanding cost more than they gain: by the time an ACK
    /// completes a message, its state has left the CPU's caches (docs/BENCHMARKS.md).
    ///
    /// Cancelling: dropping this future before admission sends nothing. An ASYNCHRONOUS send
    /// into a deep queue may yield once more after its message was queued (see
    /// `ChannelConfig::async_queue_bytes`); dropped there, the message still goes out.
    pub async fn send(
        &self,
        destinations: &[Member],
        payload: Bytes,
        options: SendOptions,
    ) -> Result<SendReceipt, ChannelError> {
        self.send_reserved(destinations, payload, options, None)
            .await
    }

    /// Sends and waits for the outcome, in one await: `Ok` when every destination succeeded
    /// (acknowledged when the options ask for it, written otherwise, queued for
    /// ASYNCHRONOUS), [`ChannelError::Delivery`] with the outcome when any failed.
    /// [`ChannelHandle::send`] is the two-step form, for pipelining many sends.
    ///
    /// ```no_run
    /// # async fn demo(ch: cohort_channel::ChannelHandle) -> Result<(), cohort_channel::ChannelError> {
    /// use cohort_channel::SendOptions;
    /// let outcome = ch.send_wait(&ch.members(), "hello".into(), SendOptions::USE_ACK).await?;
    /// println!("{outcome}");
    /// # Ok(()) }
    /// ```
    pub async fn send_wait(
        &self,
        destinations: &[Member],
        payload: Bytes,
        options: SendOptions,
    ) -> Result<SendOutcome, ChannelError> {
        let outcome = self.send(destinations, payload, options).await?.await;
        if outcome.is_ok() {
            Ok(outcome)
        } else {
            Err(ChannelError::Delivery(Box::new(outcome)))
        }
    }

    /// [`ChannelHandle::send`] with a place in the ASYNCHRONOUS queue already taken (the tower
    /// service takes it in `poll_ready`); a non-ASYNCHRONOUS send gives it back.
    pub(crate) async fn send_reserved(
        &self,
        destinations: &[Member],
        payload: Bytes,
        options: SendOptions,
        reserved: Option<Reservation>,
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
        let destinations = s.destinations(destinations);
        let (hold, receipt) = self
            .tracking(msg_id, &destinations, options, (1, payload.len()), reserved)
            .await?;
        let out = Outbound {
            msg_id,
            destinations,
            options,
            seq: 0,
            extensions: Vec::new(),
            payload,
            ticket: Ticket(msg_id),
        };
        self.command(Command::Send(out, hold)).await?;
        s.counters.sent.fetch_add(1, Ordering::Relaxed);
        s.counters.count(options, len, true);
        self.pace(options, len).await;
        Ok(receipt)
    }

    /// The state that collects a send's results and the receipt the caller gets: for
    /// ASYNCHRONOUS, room for `n` messages of `total` bytes is admitted first and the receipt
    /// is ready at once (results go to the error handler); otherwise the receipt waits.
    async fn tracking(
        &self,
        msg_id: u64,
        destinations: &Arc<[Member]>,
        options: SendOptions,
        (n, total): (usize, usize),
        reserved: Option<Reservation>,
    ) -> Result<(Hold, SendReceipt), ChannelError> {
        let ctx = &self.shared.send_ctx;
        if options.contains(SendOptions::ASYNCHRONOUS) {
            let room = self.admit(n, total, reserved).await?;
            let (_, hold) = SendState::new(msg_id, destinations.clone(), ctx, false, Some(room));
            return Ok((hold, SendReceipt::queued(msg_id)));
        }
        let (state, hold) = SendState::new(msg_id, destinations.clone(), ctx, true, None);
        Ok((hold, SendReceipt::waiting(state)))
    }

    /// Sends every payload of `payloads`, in order, to `destinations` with `options`, as one
    /// batch: one admission (for ASYNCHRONOUS, room for the whole batch), one command to the
    /// channel task, and one receipt whose outcome holds a result per message and destination
    /// (its `msg_id` is the first message's; the others follow it). For many small messages
    /// this is much cheaper than a `send` each. At most [`MAX_BATCH`] payloads (and, with
    /// ASYNCHRONOUS, at most `async_queue_messages`). Cancelling is as for
    /// [`ChannelHandle::send`].
    ///
    /// ```no_run
    /// # async fn demo(ch: cohort_channel::ChannelHandle) -> Result<(), cohort_channel::ChannelError> {
    /// use bytes::Bytes;
    /// use cohort_channel::SendOptions;
    /// let members = ch.members();
    /// let batch: Vec<Bytes> = (0..100u32).map(|i| Bytes::from(i.to_be_bytes().to_vec())).collect();
    /// let outcome = ch.send_many(&members, batch, SendOptions::USE_ACK).await?.await;
    /// assert!(outcome.is_ok());
    /// # Ok(()) }
    /// ```
    pub async fn send_many(
        &self,
        destinations: &[Member],
        payloads: Vec<Bytes>,
        options: SendOptions,
    ) -> Result<SendReceipt, ChannelError> {
        let s = &self.shared;
        if destinations.is_empty() {
            return Err(ChannelError::NoDestinations);
        }
        let asynchronous = options.contains(SendOptions::ASYNCHRONOUS);
        let max = if asynchronous {
            MAX_BATCH.min(s.config.async_queue_messages)
        } else {
            MAX_BATCH
        };
        if payloads.is_empty() || payloads.len() > max {
            return Err(ChannelError::BatchSize {
                len: payloads.len(),
                max,
            });
        }
        if let Some(p) = payloads.iter().find(|p| p.len() > s.max_payload as usize) {
            return Err(ChannelError::TooLarge {
                len: p.len(),
                max: s.max_payload,
            });
        }
        if !s.running().contains(Services::SND_TX) {
            return Err(ChannelError::NotStarted);
        }
        let n = payloads.len();
        let first = s.ids.fetch_add(n as u64, Ordering::Relaxed) + 1;
        let total: usize = payloads.iter().map(Bytes::len).sum();
        for p in &payloads {
            for l in s.cluster_listeners.iter() {
                l.message_sent(destinations, p, options);
            }
        }
        let destinations = s.destinations(destinations);
        let (hold, receipt) = self
            .tracking(first, &destinations, options, (n, total), None)
            .await?;
        let outs: Vec<Outbound> = payloads
            .into_iter()
            .enumerate()
            .map(|(i, payload)| {
                let msg_id = first + i as u64;
                s.counters.count(options, payload.len(), true);
                Outbound {
                    msg_id,
                    destinations: destinations.clone(),
                    options,
                    seq: 0,
                    extensions: Vec::new(),
                    payload,
                    // One receipt for the batch: one ticket, the first message's.
                    ticket: Ticket(first),
                }
            })
            .collect();
        self.command(Command::SendBatch(outs, hold)).await?;
        s.counters.sent.fetch_add(n as u64, Ordering::Relaxed);
        self.pace(options, total).await;
        Ok(receipt)
    }

    /// Hands a send to the owner task. Room is there in the common case: queued without
    /// building a waiter (free room exists only while no sender waits, so this jumps no
    /// queue); otherwise waits for it.
    async fn command(&self, cmd: Command) -> Result<(), ChannelError> {
        match self.shared.cmd.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(cmd)) => self
                .shared
                .cmd
                .send(cmd)
                .await
                .map_err(|_| ChannelError::Stopped),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ChannelError::Stopped),
        }
    }

    /// After an ASYNCHRONOUS send of `len` bytes, while more than [`ASYNC_PACE_BYTES`] are
    /// queued: a yield to the runtime once per [`ASYNC_PACE_EVERY`] bytes sent, so the
    /// channel's task and the connections write what is queued before this sender queues
    /// more. Without it a sender on the same thread runs ahead until the queue is full
    /// (`async_queue_bytes`), and every payload has left the CPU's caches by the time a
    /// connection encodes it. A queue that cannot drain (a stalled member) still fills to its
    /// bound: the yield never waits.
    async fn pace(&self, options: SendOptions, len: usize) {
        let s = &self.shared;
        if !options.contains(SendOptions::ASYNCHRONOUS)
            || s.async_queued_bytes() <= ASYNC_PACE_BYTES
        {
            return;
        }
        if s.paced.fetch_add(len, Ordering::Relaxed) + len >= ASYNC_PACE_EVERY {
            s.paced.store(0, Ordering::Relaxed);
            tokio::task::yield_now().await;
        }
    }

    /// Takes room in the ASYNCHRONOUS queue for `n` messages of `total` bytes at once, as the
    /// policy says: waits for it (`Block`), or fails at once when it is not there (`Reject`).
    /// A place already `reserved` (by the tower service's `poll_ready`) stands for the first
    /// message's. A payload larger than the queue takes all of its bytes.
    async fn admit(
        &self,
        n: usize,
        total: usize,
        reserved: Option<Reservation>,
    ) -> Result<Room, ChannelError> {
        let s = &self.shared;
        let q = &s.admission;
        let bytes = u32::try_from(total)
            .unwrap_or(u32::MAX)
            .min(q.capacity().bytes());
        // The messages that still need a place (a reserved one stands for the first); `n` is
        // at most the queue's message bound (checked by the callers).
        let extra = n.saturating_sub(usize::from(reserved.is_some()));
        let want = Room::new(u32::try_from(extra).unwrap_or(u32::MAX), bytes);
        // A send with a reserved place does not queue for the rest: a queued sender may be
        // waiting for that very place.
        let reserved_place = reserved.is_some();
        if s.config.async_full_policy == AsyncFullPolicy::Reject {
            let admitted = if reserved_place {
                q.try_admit_reserved(want)
            } else {
                q.try_admit(want)
            };
            if !admitted {
                let st = self.stats();
                return Err(ChannelError::QueueFull {
                    messages: st.async_queued,
                    bytes: st.async_queued_bytes,
                });
            }
        } else if reserved_place {
            q.admit_reserved(want).await;
        } else {
            q.admit(want).await;
        }
        let reserved = reserved.map_or(Room::ZERO, Reservation::into_room);
        Ok(Room::new(
            want.messages() + reserved.messages(),
            want.bytes() + reserved.bytes(),
        ))
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

    /// True when this node is the lead of its view (always, without membership).
    pub fn is_lead(&self) -> bool {
        self.view()
            .is_none_or(|v| v.lead.as_ref() == Some(&v.local))
    }

    /// The membership driver's counters (`None` when the channel runs without membership).
    pub fn membership_stats(&self) -> Option<cohort_membership::MembershipStats> {
        self.shared.membership.as_ref().map(|m| m.stats())
    }

    /// Membership events after the interceptors, each with the view it produced, from the
    /// moment of this call (read [`ChannelHandle::members`] for the state before it; a
    /// membership listener given to the builder sees every event from the start).
    ///
    /// A node that just started sees itself as the lead until it hears of older members:
    /// with multicast a joining node's beacon is answered at once, so that takes a round trip
    /// (milliseconds on a LAN); with static members, up to one beacon `frequency`. Wait for
    /// the `MemberAdded` events you expect (or a `frequency`) before acting on the lead.
    pub fn events(&self) -> broadcast::Receiver<ViewEvent> {
        self.shared.member_tx.subscribe()
    }

    /// The local member.
    pub fn local(&self) -> &Member {
        &self.shared.local
    }

    /// Starts `task` on `rt` as one of the channel's tasks (see `tasks.rs`); when
    /// [`super::tasks::MAX_TASKS`] run already (counted in `tasks_refused`) or the channel
    /// stopped, the task is dropped unpolled.
    pub(crate) fn spawn_task(
        &self,
        rt: &tokio::runtime::Handle,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        if self.shared.tasks.spawn(rt, task) == Err(super::tasks::Refused::Full) {
            self.shared
                .counters
                .tasks_refused
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Installs a hook the owner task asks before the delivery thread (see [`Claim`]).
    pub(crate) fn add_claim(&self, claim: Claim) {
        let mut claims = self
            .shared
            .claims
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut grown = claims.to_vec();
        grown.push(claim);
        *claims = grown.into();
    }

    /// Adds an RPC channel's listener: RPC envelopes go to these, and only to these.
    pub(crate) fn add_rpc_listener(&self, listener: Arc<dyn ChannelListener>) {
        self.shared
            .rpc_listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(listener);
    }

    /// Adds a message listener while running. It never sees RPC traffic (an [`crate::RpcChannel`]
    /// takes that).
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
            delivered_inline: l(&c.delivered_inline),
            listener_errors: l(&c.listener_errors),
            no_listener: l(&c.no_listener),
            encode_failures: l(&c.encode_failures),
            unknown_sender_dropped: l(&c.unknown_sender_dropped),
            membership_lagged: l(&c.membership_lagged),
            control_dropped: l(&c.control_dropped),
            untransformed_dropped: l(&c.untransformed_dropped),
            suspicions_dropped: l(&c.suspicions_dropped),
            tasks_refused: l(&c.tasks_refused),
            async_queued: self.shared.admission.queued().messages() as usize,
            async_queued_bytes: self.shared.async_queued_bytes(),
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

    /// Stops the channel: membership leaves gracefully (a shutdown beacon: peers drop this
    /// member at once), queued ASYNCHRONOUS messages get `drain_timeout` to complete, and the
    /// transport closes. The same word as [`cohort_membership::MembershipHandle::stop`].
    pub async fn stop(&self) {
        self.stop_services(Services::DEFAULT).await;
    }

    /// Stops some services in Tribes' stop order: with MBR_TX or MBR_RX, membership leaves
    /// gracefully; with SND_TX, queued ASYNCHRONOUS messages get `drain_timeout` to complete,
    /// then sends are refused; with SND_RX or SND_TX the transport closes (its two halves stop
    /// together). `stop_services(DEFAULT)` is [`ChannelHandle::stop`].
    pub async fn stop_services(&self, services: Services) {
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
            // Queued messages complete (or the time is up): all of the queue's room, taken
            // and given back at once.
            let all = Room::new(s.admission.capacity().messages(), 0);
            let drained = Reservation::take(s.admission.clone(), all);
            let _ = tokio::time::timeout(s.config.drain_timeout, drained).await;
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
            // The owner has ended: what the channel started outside it ends too.
            s.tasks.stop();
        }
    }

    #[cfg(feature = "tower")]
    pub(crate) fn admission(&self) -> Arc<Admission> {
        self.shared.admission.clone()
    }
}

impl HandleShared {
    pub(super) fn running(&self) -> Services {
        *self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Member {
        let mut m = Member::new(
            cohort_wire::MemberId::from_bytes([4; 16]),
            std::net::Ipv4Addr::LOCALHOST.into(),
            4000,
        );
        m.udp_port = Some(4001);
        m.cluster = "c".into();
        m.domain = Bytes::from_static(b"d");
        m.name = "n".into();
        m.host = "h".into();
        m.start_time_ms = 5;
        m.app_version = "1.0".into();
        m.same_app_version = true;
        m.payload = Bytes::from_static(b"p");
        m
    }

    /// `same_member` is `==`: true for equal members, empty fields or not, and false when
    /// any one field differs (so a send never goes out with another member's record).
    #[test]
    fn same_member_is_equality_field_by_field() {
        let empty = Member::new(
            cohort_wire::MemberId::from_bytes([4; 16]),
            std::net::Ipv4Addr::LOCALHOST.into(),
            4000,
        );
        assert!(same_member(&empty, &empty.clone()));
        assert!(same_member(&full(), &full()));
        let changes: Vec<fn(&mut Member)> = vec![
            |m| m.id = cohort_wire::MemberId::from_bytes([5; 16]),
            |m| m.addr = std::net::Ipv4Addr::new(127, 0, 0, 2).into(),
            |m| m.port = 4002,
            |m| m.udp_port = None,
            |m| m.cluster = "x".into(),
            |m| m.domain = Bytes::new(),
            |m| m.name = "nn".into(),
            |m| m.host = String::new(),
            |m| m.start_time_ms = 6,
            |m| m.versions.max = m.versions.max.wrapping_add(1),
            |m| m.app_version = "1.1".into(),
            |m| m.same_app_version = false,
            |m| m.payload = Bytes::from_static(b"q"),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut other = full();
            change(&mut other);
            assert_ne!(other, full(), "change {i} changes something");
            assert!(!same_member(&full(), &other), "change {i}");
            assert!(!same_member(&other, &full()), "change {i}, reversed");
        }
    }
}
