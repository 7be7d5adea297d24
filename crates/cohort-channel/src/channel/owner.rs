//! The owner task: the only holder of the pipeline; turns transport, multicast and
//! membership input into pipeline input and carries out the pipeline's outputs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::BytesMut;
use cohort_membership::{MembershipEvent, MembershipListener};
use cohort_net::{Alarm, Net};
use cohort_transport::{DataSend, OutData, Received};
use cohort_wire::{
    CohortCodec, DataFrame, DataHeader, Frame, FrameCodec, Member, MemberId, MemberKey, SendOptions,
};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

use crate::core::{Outbound, Output, Pipeline, Suspicion, TagKind, Ticket};
use crate::listener::ChannelMessage;
use crate::receipt::{Hold, SendState};
use crate::seams::{ChannelMembership, ChannelTransport};

use super::completion::Suspecter;
use super::delivery::{Delivery, DeliveryQueue};
use super::handle::{Claim, Claimed, Command, ViewEvent};
use super::inbound::to_inbound;
use super::pending::PendingSends;
use super::probes::{probe_test, run_probe};
use super::stats::ChannelCounters;

pub(super) struct Owner<N: Net> {
    pub(super) net: N,
    pub(super) pipeline: Pipeline,
    pub(super) codec: CohortCodec,
    pub(super) local: Member,
    pub(super) transport: Arc<dyn ChannelTransport>,
    pub(super) membership: Option<Arc<dyn ChannelMembership>>,
    /// By ticket (the channel's own message ids, so a fast hash is safe).
    pub(super) tickets: rustc_hash::FxHashMap<Ticket, Arc<SendState>>,
    pub(super) delivery: DeliveryQueue,
    pub(super) member_tx: broadcast::Sender<ViewEvent>,
    pub(super) membership_listeners: Vec<Arc<dyn MembershipListener>>,
    pub(super) cmd_self: mpsc::Sender<Command>,
    /// What failed sends' completions raise suspicions through (`cmd_self` and `counters`).
    pub(super) suspecter: Arc<Suspecter>,
    pub(super) enc: BytesMut,
    pub(super) heartbeat: Duration,
    pub(super) counters: Arc<ChannelCounters>,
    /// The members as the top of the pipeline reported them.
    pub(super) view: Arc<RwLock<Vec<Member>>>,
    /// While leaving: completions of the interceptors' last messages.
    pub(super) leaving: Option<Vec<oneshot::Receiver<()>>>,
    pub(super) ids: Arc<AtomicU64>,
    /// Every task the owner starts (probes, leave waits, failure reports, multicast sends):
    /// aborted when the owner ends, by `stop()` or when the last handle is dropped.
    pub(super) tasks: tokio::task::JoinSet<()>,
    /// Hooks asked before the delivery thread (RPC replies).
    pub(super) claims: Arc<RwLock<Arc<[Claim]>>>,
    /// Tickets of the send commands in the current pass, and their receipts.
    pub(super) staged: Vec<Ticket>,
    pub(super) staged_states: Vec<Hold>,
    /// The wall clock (ms) as read at the start of the current drain: frames are stamped
    /// with it.
    pub(super) wall_ms: u64,
    /// Data frames of the current drain, by destination, not yet handed to the transport.
    pub(super) pending: PendingSends,
}

/// The owner takes no more send commands from its queue in one pass once it staged this
/// many messages (a larger `send_many` batch still goes down whole).
const SEND_BATCH: usize = 64;

/// Most received frames the owner takes from the transport in one pass.
const INBOUND_BATCH: usize = 64;

/// How long `stop` waits for the interceptors' last messages to be delivered.
pub(super) const LEAVE_TIMEOUT: Duration = Duration::from_millis(500);

pub(super) async fn peer_event(
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

pub(super) async fn member_event(
    rx: &mut Option<broadcast::Receiver<MembershipEvent>>,
) -> Result<MembershipEvent, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl<N: Net> Owner<N> {
    pub(super) async fn run(
        mut self,
        mut cmd_rx: mpsc::Receiver<Command>,
        mut inbound_rx: mpsc::Receiver<Received>,
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
        // One timer, moved when the deadline moves (not a new one per pass).
        let mut timer = Alarm::new();
        loop {
            // Reap finished tasks: the set holds only what still runs.
            while self.tasks.try_join_next().is_some() {}
            timer.set(Some(
                self.pipeline
                    .poll_timeout()
                    .map_or(next_heartbeat, |t| Instant::from_std(t).min(next_heartbeat)),
            ));
            tokio::select! {
                // Order matters: commands (a stop ends the loop at once), then view changes before
                // the data of members they add, then connection events, then data, then timers.
                biased;
                cmd = cmd_rx.recv() => {
                    let Some(mut cmd) = cmd else { return };
                    // Sends already queued go down the stack in one pass (until SEND_BATCH
                    // messages): one drain, and the transport coalesces their frames.
                    let mut staged = 0;
                    let now = self.now();
                    let rest = loop {
                        match self.stage_command(now, cmd) {
                            std::ops::ControlFlow::Continue(n) => staged += n,
                            std::ops::ControlFlow::Break(other) => break Some(other),
                        }
                        // A pass stays short, so the lanes write while the owner works.
                        if staged >= SEND_BATCH {
                            break None;
                        }
                        match cmd_rx.try_recv() {
                            Ok(next) => cmd = next,
                            Err(_) => break None,
                        }
                    };
                    if staged > 0 {
                        self.drain().await;
                        self.complete_staged();
                    }
                    if let Some(cmd) = rest {
                        if self.on_command(cmd).await.is_break() {
                            return;
                        }
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
                Some(ev) = peer_event(&mut peer_rx) => {
                    // What the peer sent before its connection closed comes first (a leaving
                    // notice must beat the suspicion its closing sockets raise).
                    let now = self.now();
                    for _ in 0..inbound_rx.max_capacity() {
                        let Ok(r) = inbound_rx.try_recv() else { break };
                        self.on_received(now, r);
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
                Some(r) = inbound_rx.recv() => {
                    // One reading of the clocks for the pass (the frames were all read by now).
                    let now = self.now();
                    self.on_received(now, r);
                    // What is already queued, in the same pass (one drain, one hand-over to
                    // the delivery thread), unless a view change waits: it goes first.
                    for _ in 1..INBOUND_BATCH {
                        if events.as_ref().is_some_and(|e| !e.is_empty()) {
                            break;
                        }
                        let Ok(r) = inbound_rx.try_recv() else { break };
                        self.on_received(now, r);
                    }
                }
                () = timer.ring() => {
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

    /// Puts one send command's messages into the pipeline; [`Self::complete_staged`] ends
    /// the command once the outputs are carried out.
    fn stage(
        &mut self,
        now: std::time::Instant,
        outs: impl IntoIterator<Item = Outbound>,
        hold: Hold,
    ) {
        let state = hold.state();
        // A batch's messages share one ticket (they complete one receipt): entered once.
        let mut last = None;
        for out in outs {
            if last != Some(out.ticket) {
                last = Some(out.ticket);
                self.tickets.insert(out.ticket, state.clone());
                self.staged.push(out.ticket);
            }
            self.pipeline.send(now, out);
        }
        self.staged_states.push(hold);
    }

    /// The staged commands' outputs are carried out: later outputs of their messages (an
    /// interceptor that holds one) no longer report to their receipts, and each command's
    /// hold on its receipt ends.
    fn complete_staged(&mut self) {
        for t in self.staged.drain(..) {
            self.tickets.remove(&t);
        }
        for hold in self.staged_states.drain(..) {
            hold.release();
        }
    }

    /// Stages a send command's messages and says how many (an empty batch counts one);
    /// any other command is given back.
    fn stage_command(
        &mut self,
        now: std::time::Instant,
        cmd: Command,
    ) -> std::ops::ControlFlow<Command, usize> {
        match cmd {
            Command::Send(out, hold) => {
                self.stage(now, [out], hold);
                std::ops::ControlFlow::Continue(1)
            }
            Command::SendBatch(outs, hold) => {
                let n = outs.len().max(1);
                self.stage(now, outs, hold);
                std::ops::ControlFlow::Continue(n)
            }
            other => std::ops::ControlFlow::Break(other),
        }
    }

    /// A command the pass did not stage. `Break` ends the owner.
    async fn on_command(&mut self, cmd: Command) -> std::ops::ControlFlow<()> {
        let now = self.now();
        let std::ops::ControlFlow::Break(cmd) = self.stage_command(now, cmd) else {
            self.drain().await;
            self.complete_staged();
            return std::ops::ControlFlow::Continue(());
        };
        match cmd {
            // Staged above.
            Command::Send(..) | Command::SendBatch(..) => {}
            Command::ProbeResult(i, member, result) => {
                self.pipeline.probe_result(now, i, *member, result);
            }
            Command::Suspect(member, why) => {
                self.pipeline.suspect(now, &member, &why);
            }
            Command::Leave(reply) => {
                self.leaving = Some(Vec::new());
                self.pipeline.stop(now);
                self.drain().await;
                let waits = self.leaving.take().unwrap_or_default();
                self.tasks.spawn(async move {
                    let all = async {
                        for w in waits {
                            let _ = w.await;
                        }
                    };
                    let _ = tokio::time::timeout(LEAVE_TIMEOUT, all).await;
                    let _ = reply.send(());
                });
            }
            Command::Stop(reply) => {
                let _ = reply.send(());
                return std::ops::ControlFlow::Break(());
            }
        }
        std::ops::ControlFlow::Continue(())
    }

    pub(super) async fn drain(&mut self) {
        // Frames carried out in this drain are stamped with one reading of the clock.
        self.wall_ms = self.net.wall_clock_ms();
        let mut claims: Option<Arc<[Claim]>> = None;
        while let Some(output) = self.pipeline.poll_output() {
            if !matches!(output, Output::Transmit(_)) {
                // Sends collected so far leave before anything else is done (a member's
                // removal, a wait for the delivery queue): order, and no frame held back.
                self.flush_pending();
            }
            match output {
                Output::Transmit(out) => self.transmit(out),
                Output::Deliver(mut msg) => {
                    let pipeline = &self.pipeline;
                    let held = msg
                        .extensions
                        .iter()
                        .find_map(|e| pipeline.tag_kind(e.tag).map(|kind| (e.tag, kind)));
                    if let Some((tag, kind)) = held {
                        let control = kind == TagKind::Control;
                        let counter = if control {
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
                            if control {
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
                    let message = ChannelMessage {
                        from: msg.from,
                        member: msg.member,
                        peer: msg.peer,
                        msg_id: msg.msg_id,
                        options: msg.options,
                        timestamp_ms: msg.timestamp_ms,
                        payload: msg.payload,
                    };
                    // The hooks as they were when the pass first needed them: one read of the
                    // shared list per pass, not per message.
                    let hooks = claims.get_or_insert_with(|| {
                        self.claims
                            .read()
                            .unwrap_or_else(PoisonError::into_inner)
                            .clone()
                    });
                    if self.claim(hooks, &message) {
                        self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                        if let Some(ack) = ack {
                            ack.ack();
                        }
                        continue;
                    }
                    // Full: wait (the transport stops being read meanwhile). Hooks added
                    // during a wait are read again for the next message.
                    if self.delivery.push(Delivery { msg: message, ack }).await {
                        claims = None;
                    }
                }
                Output::Member(ev) => {
                    let ev = *ev;
                    let members: Arc<[Member]> = {
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
                        view.as_slice().into()
                    };
                    if let MembershipEvent::MemberDisappeared { member, .. } = &ev {
                        self.transport
                            .disconnect(SocketAddr::new(member.addr, member.port));
                    }
                    for l in &self.membership_listeners {
                        l.on_event(&ev);
                    }
                    let _ = self.member_tx.send(ViewEvent { event: ev, members });
                }
                Output::Probe {
                    interceptor,
                    member,
                    probe,
                } => {
                    let net = self.net.clone();
                    let cmd = self.cmd_self.clone();
                    let msg_id = self.ids.fetch_add(1, Ordering::Relaxed) + 1;
                    let wall = self.net.wall_clock_ms();
                    let test = match probe_test(&probe, msg_id, &self.local, wall, &self.codec) {
                        Some(Ok(t)) => Some(t),
                        Some(Err(_)) => {
                            self.counters
                                .encode_failures
                                .fetch_add(1, Ordering::Relaxed);
                            None
                        }
                        None => None,
                    };
                    let (codec, local) = (self.codec.clone(), self.local.clone());
                    self.tasks.spawn(async move {
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
                        self.tasks
                            .spawn(async move { m.report_failed(member.key(), detail).await });
                    }
                }
            }
        }
        self.flush_pending();
        // One hand-over to the delivery thread for everything this input produced.
        self.delivery.flush().await;
    }

    /// Hands the frames collected in this drain to the transport, one call per destination.
    fn flush_pending(&mut self) {
        for mut g in self.pending.take() {
            let frames = std::mem::take(&mut g.frames);
            self.transport
                .send_data_many(g.destination(), frames, &self.codec);
        }
    }

    /// Asks the claim hooks; true when one took the message. Hooks whose owner is gone are
    /// removed. The hooks run on a snapshot of the list, with no lock held: a hook (an RPC
    /// handler's first poll) may itself add one.
    fn claim(&self, claims: &mut Arc<[Claim]>, msg: &ChannelMessage) -> bool {
        if claims.is_empty() {
            return false;
        }
        let mut gone: Vec<&Claim> = Vec::new();
        for c in claims.iter() {
            match c(msg) {
                Claimed::Yes => return true,
                Claimed::No => {}
                Claimed::Gone => gone.push(c),
            }
        }
        if !gone.is_empty() {
            let mut now = self.claims.write().unwrap_or_else(PoisonError::into_inner);
            let kept: Vec<Claim> = now
                .iter()
                .filter(|c| !gone.iter().any(|g| Arc::ptr_eq(g, c)))
                .cloned()
                .collect();
            *now = kept.into();
            // The pass's own copy loses them too.
            *claims = now.clone();
        }
        false
    }

    /// A received frame into the pipeline, at `now` (from [`Self::now`], read once per pass).
    pub(super) fn on_received(&mut self, now: std::time::Instant, mut r: Received) {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        self.counters
            .count(r.frame.header.options, r.frame.payload.len(), false);
        // Datagrams (UDP, multicast) carry no hello: the sender is the header's id, in view.
        // With a membership service, a sender not in view (unknown, or refused by the version
        // checks) is dropped and counted, as TCP refuses its hello.
        if r.hello.is_none() {
            let sender = r.frame.header.sender;
            r.hello = self
                .view
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .find(|m| m.id == sender)
                .map(|m| Arc::new(m.clone()));
            if r.hello.is_none() && self.membership.is_some() {
                self.counters
                    .unknown_sender_dropped
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(ack) = r.ack {
                    ack.fail("sender not in this member's view");
                }
                return;
            }
        }
        let inbound = to_inbound(r);
        self.pipeline.receive(now, inbound);
    }

    /// The wall-clock-stamped instant for the next pipeline input.
    pub(super) fn now(&mut self) -> std::time::Instant {
        self.pipeline.set_wall_clock_ms(self.net.wall_clock_ms());
        Instant::now().into_std()
    }

    /// The member in the pipeline's view at `addr` (and with `id`, when known).
    pub(super) fn member_at(&self, addr: SocketAddr, id: Option<MemberId>) -> Option<Member> {
        self.view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|m| SocketAddr::new(m.addr, m.port) == addr && id.is_none_or(|id| id == m.id))
            .cloned()
    }

    pub(super) fn transmit(&mut self, out: Outbound) {
        let state = self.tickets.get(&out.ticket).cloned();
        let data = DataFrame {
            header: DataHeader {
                msg_id: out.msg_id,
                options: out.options,
                sender: self.local.id,
                timestamp_ms: self.wall_ms,
                seq: out.seq,
                extensions: out.extensions,
            },
            payload: out.payload,
        };
        if !self.codec.is_keyed() && !out.options.contains(SendOptions::MULTICAST) {
            // Encoded by each connection that writes it (off this task, straight into its
            // write buffer, a large payload not at all). A keyed codec signs the frame once
            // here instead, and each connection reseals that signature cheaply.
            if let Some(state) = &state {
                state.expect(out.destinations.len());
            }
            // One destination (the usual case) owns its frame; several share one.
            let mut own = Some(data);
            let shared = if out.destinations.len() > 1 {
                own.take().map(Arc::new)
            } else {
                None
            };
            for index in 0..out.destinations.len() {
                let done = self.completion(state.as_ref(), &out.destinations, index);
                let frame = match (&shared, own.take()) {
                    (Some(f), _) => OutData::Shared(f.clone()),
                    (None, Some(f)) => OutData::Own(f),
                    (None, None) => unreachable!("one destination, one frame"),
                };
                let send = DataSend {
                    frame,
                    msg_id: out.msg_id,
                    options: out.options,
                    done,
                };
                self.pending.push(&out.destinations, index, send);
            }
            return;
        }
        // Frames already collected for the transport go first (order per destination).
        self.flush_pending();
        let frame = Frame::Data(data);
        if let Err(e) = self.codec.encode_frame(&frame, &mut self.enc) {
            self.counters
                .encode_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(msg_id = out.msg_id, error = %e, "cannot encode a frame; dropped");
            return;
        }
        let bytes = self.enc.split().freeze();
        if out.options.contains(SendOptions::MULTICAST) {
            // One datagram to the group on the transport's multicast path; each destination
            // in view gets the datagram's result.
            if let Some(state) = &state {
                state.expect(out.destinations.len());
            }
            let dests = out.destinations;
            self.transport.send_multicast(
                bytes,
                cohort_transport::Completion::new(
                    move |r: Result<_, cohort_transport::SendError>| {
                        if let Some(state) = state {
                            for d in dests.iter() {
                                let result = match &r {
                                    Ok(delivered) => Ok(*delivered),
                                    Err(e) => Err(cohort_transport::SendError::Udp {
                                        addr: SocketAddr::new(d.addr, d.port),
                                        reason: e.to_string(),
                                    }),
                                };
                                state.record(d.id, SocketAddr::new(d.addr, d.port), result);
                            }
                        }
                    },
                ),
            );
            return;
        }
        if let Some(state) = &state {
            state.expect(out.destinations.len());
        }
        for (index, dest) in out.destinations.iter().enumerate() {
            let done = self.completion(state.as_ref(), &out.destinations, index);
            self.transport
                .send(dest, bytes.clone(), out.msg_id, out.options, done);
        }
    }

    /// What runs when the send to `destinations[index]` completes: the receipt's record, a
    /// suspicion on an IO failure, and the end of a leave's wait.
    fn completion(
        &mut self,
        state: Option<&Arc<SendState>>,
        destinations: &Arc<[Member]>,
        index: usize,
    ) -> cohort_transport::Completion {
        let watch = self.leaving.as_mut().map(|w| {
            let (tx, rx) = oneshot::channel::<()>();
            w.push(rx);
            tx
        });
        if let (Some(state), None) = (state, &watch) {
            if Arc::ptr_eq(state.destinations(), destinations) {
                // The usual case: the frame reports to its send's state, by index.
                return cohort_transport::Completion::shared(state.clone(), index);
            }
        }
        // An interceptor's message, or the destinations an interceptor changed, or a leave
        // waiting for this frame: a closure of its own.
        let suspecter = self.suspecter.clone();
        let members = destinations.clone();
        let state = state.cloned();
        cohort_transport::Completion::new(move |r| {
            let dest = &members[index];
            suspecter.check(dest, &r);
            if let Some(state) = state {
                state.record(dest.id, SocketAddr::new(dest.addr, dest.port), r);
            }
            drop(watch);
        })
    }
}
