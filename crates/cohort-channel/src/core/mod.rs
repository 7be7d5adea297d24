//! The sans-IO heart of the channel: the [`Interceptor`] trait and the [`Pipeline`] that runs
//! a configured stack of them.
//!
//! Index 0 is the top of the stack (next to the application), the last index the bottom (next
//! to the transport). Sends travel down (0 → n), received messages and membership events
//! travel up (n → 0). An interceptor sees a message only when the message's options contain
//! the interceptor's [`Interceptor::option_mask`] (Tribes' `okToProcess`); the pipeline applies
//! that check, not each interceptor.
//!
//! Dispatch uses an explicit work queue, never recursion: an interceptor called with one
//! message may emit none (holding it), one, or many (fragments). The queue is bounded
//! ([`Pipeline::new`]'s `max_work`); work beyond it is dropped and counted.
//!
//! Call order for a driver: feed inputs with `send`, `receive`, `member`, `handle_timeout`,
//! `heartbeat`; after each, drain [`Pipeline::poll_output`] until `None`; sleep until
//! [`Pipeline::poll_timeout`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use cohort_membership::MembershipEvent;
use cohort_wire::{Extension, Member, MemberId, SendOptions};

#[cfg(test)]
mod tests;

/// Opaque routing tag the driver attaches to an outbound message, so that deliveries of its
/// frames (fragments included) complete the right send receipt. Interceptors copy it onto
/// every frame they derive from a message, and use [`Ticket::NONE`] for messages of their own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ticket(pub u64);

impl Ticket {
    /// No receipt: the interceptor's own traffic (pings, control messages).
    pub const NONE: Self = Self(0);
}

/// A message on its way down to the transport.
#[derive(Clone, Debug)]
pub struct Outbound {
    /// Unique per sender; frames derived from one message get fresh ids from
    /// [`Cx::next_msg_id`].
    pub msg_id: u64,
    /// Destinations.
    pub destinations: Arc<[Member]>,
    /// Send options, interceptor bits included.
    pub options: SendOptions,
    /// Per-sender order sequence (0 when unordered).
    pub seq: u64,
    /// Header extensions (tags per docs/PROTOCOL.md §2.6).
    pub extensions: Vec<Extension>,
    /// The payload.
    pub payload: Bytes,
    /// The receipt this message completes.
    pub ticket: Ticket,
}

/// How a received message is acknowledged once consumed, for USE_ACK | SYNCHRONIZED_ACK.
///
/// [`Acker::ack`] sends the ACK, [`Acker::fail`] a FAIL_ACK. Dropping it without either sends
/// FAIL_ACK ("dropped before it was processed"): a SYNCHRONIZED_ACK sender is never told
/// "processed" for a message no listener or interceptor finished with. An interceptor that
/// consumes a message of its own (a ping, a notice) calls [`Inbound::consume`].
pub struct Acker(Option<AckFn>);

type AckFn = Box<dyn FnOnce(Result<(), String>) + Send>;

impl Acker {
    /// Wraps the function that sends the ACK (`Ok`) or FAIL_ACK (`Err(reason)`).
    pub fn new(f: impl FnOnce(Result<(), String>) + Send + 'static) -> Self {
        Self(Some(Box::new(f)))
    }

    /// Acknowledges now.
    pub fn ack(mut self) {
        if let Some(f) = self.0.take() {
            f(Ok(()));
        }
    }

    /// Sends FAIL_ACK with `reason`.
    pub fn fail(mut self, reason: String) {
        if let Some(f) = self.0.take() {
            f(Err(reason));
        }
    }
}

impl Drop for Acker {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(Err(if std::thread::panicking() {
                "processing panicked".into()
            } else {
                DROPPED_UNPROCESSED.into()
            }));
        }
    }
}

/// The FAIL_ACK reason of a message whose [`Acker`] was dropped without a verdict.
pub const DROPPED_UNPROCESSED: &str = "dropped before it was processed";
/// The FAIL_ACK reason of a message dropped because the pipeline's work queue was full.
pub const WORK_QUEUE_FULL: &str = "dropped: the receiver's pipeline work queue was full";

impl std::fmt::Debug for Acker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Acker")
    }
}

/// A message on its way up to the listeners.
#[derive(Debug)]
pub struct Inbound {
    /// Sender id.
    pub from: MemberId,
    /// The sender's member record when known (from its connection's hello, or the view).
    pub member: Option<Arc<Member>>,
    /// The sender's socket address.
    pub peer: std::net::SocketAddr,
    /// Sender's message id.
    pub msg_id: u64,
    /// Send options as sent.
    pub options: SendOptions,
    /// Sender's order sequence.
    pub seq: u64,
    /// Sender's wall clock when sent (informational).
    pub timestamp_ms: u64,
    /// Header extensions.
    pub extensions: Vec<Extension>,
    /// The payload.
    pub payload: Bytes,
    /// Present for USE_ACK | SYNCHRONIZED_ACK: completed once the listeners ran.
    pub ack: Option<Acker>,
}

impl Inbound {
    /// Consumed by an interceptor (a control message it handled): acknowledges it as
    /// processed. Dropping an `Inbound` instead sends FAIL_ACK when one was asked for.
    pub fn consume(self) {
        if let Some(ack) = self.ack {
            ack.ack();
        }
    }

    /// Dropped with `reason`: FAIL_ACK when one was asked for.
    pub fn reject(self, reason: impl Into<String>) {
        if let Some(ack) = self.ack {
            ack.fail(reason.into());
        }
    }
}

/// What the pipeline asks its driver to do.
#[derive(Debug)]
#[non_exhaustive]
pub enum Output {
    /// Encode and send this message.
    Transmit(Outbound),
    /// Hand this message to the listeners.
    Deliver(Inbound),
    /// Tell the application of this membership change (boxed, as are the other rare
    /// variants that carry a member: a `Member` is large, and every `Transmit` and `Deliver`
    /// would otherwise be moved at the size of the largest variant).
    Member(Box<MembershipEvent>),
    /// Probe `member` over a fresh TCP connection as `probe` says and report with
    /// [`Pipeline::probe_result`] (a failure detector's evidence gathering).
    Probe {
        /// Which interceptor asked.
        interceptor: usize,
        /// The member to probe.
        member: Box<Member>,
        /// What to test.
        probe: ProbeRequest,
    },
    /// Close the inbound connection whose remote end is this address (a throttle's
    /// "disconnect").
    Disconnect(std::net::SocketAddr),
    /// Report a member as failed to the membership service.
    MemberFailed {
        /// The member.
        member: Box<Member>,
        /// What was observed.
        detail: String,
    },
}

/// What a probe tests, beyond opening a TCP connection within `connect_timeout` (Tribes'
/// connect / send / read tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeRequest {
    /// How long the connect may take.
    pub connect_timeout: std::time::Duration,
    /// Write a hello and a probe frame (extension [`tags::PROBE`]).
    pub send_test: bool,
    /// Ask for an ACK of the probe frame and wait this long for it: the peer's process, not
    /// only its kernel, must answer.
    pub read_timeout: Option<std::time::Duration>,
}

/// Why a probe failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeError {
    /// The class of failure.
    pub kind: ProbeErrorKind,
    /// What was seen.
    pub detail: String,
}

/// Classes of probe failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProbeErrorKind {
    /// The connection was refused: nothing listens (the process is gone).
    Refused,
    /// The connection was reset or closed before the test finished.
    Reset,
    /// The connect, or the read test, did not complete in time.
    Timeout,
    /// Anything else (unreachable network, ...).
    Other,
}

impl ProbeErrorKind {
    /// True for refused and reset: conclusive at once.
    pub fn is_conclusive(self) -> bool {
        matches!(self, Self::Refused | Self::Reset)
    }
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

/// Why a member became suspect (fed to every interceptor's [`Interceptor::on_suspect`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Suspicion {
    /// A send to it failed with an IO error or timeout (not a FAIL_ACK).
    SendFailed(String),
    /// A connection this node opened to it was closed or reset by its side, or a new one was
    /// refused (strong evidence: peers do not close connections they did not open, unless
    /// they stop, and a running member's listener accepts).
    ConnectionLost(String),
    /// A connection it opened to this node closed (weak evidence: peers close their own
    /// connections, probes among them).
    InboundClosed(String),
}

impl std::fmt::Display for Suspicion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SendFailed(r) => write!(f, "send failed: {r}"),
            Self::ConnectionLost(r) => write!(f, "connection lost: {r}"),
            Self::InboundClosed(r) => write!(f, "its connection closed: {r}"),
        }
    }
}

/// Extension tags (docs/PROTOCOL.md §2.6) assigned to Cohort's interceptors, and which of
/// them mark control messages (never delivered to listeners).
pub mod tags {
    /// Order: per-destination sequence (8 bytes) and stream (1 byte).
    pub const ORDER: u32 = 1;
    /// Fragmentation: original message id (8), index (4), count (4), total length (8).
    pub const FRAGMENT: u32 = 2;
    /// Compression: algorithm (1 byte) and original length (8).
    pub const COMPRESSION: u32 = 3;
    /// Encryption: algorithm (1), key id (4), nonce (12).
    pub const ENCRYPTION: u32 = 4;
    /// Two-phase commit: the message waits for its commit (empty value).
    pub const TWO_PHASE: u32 = 5;
    /// Two-phase commit: control message committing the message id in its value (8 bytes).
    pub const TWO_PHASE_COMMIT: u32 = 6;
    /// TCP ping: control message (empty payload).
    pub const PING: u32 = 7;
    /// Failure detector probe: control message on a probe connection.
    pub const PROBE: u32 = 8;
    /// Static membership: control message, value 1 = announcement, 2 = answer, 0 = stopping.
    pub const STATIC_NOTICE: u32 = 9;
    /// Failure detector: control message, the sender is leaving (stopping gracefully).
    pub const LEAVING: u32 = 10;

    /// True for tags whose messages are consumed by interceptors; one that reaches the top of
    /// the stack (no interceptor there to consume it) is dropped, not delivered.
    pub fn is_control(tag: u32) -> bool {
        assigned_kind(tag) == Some(super::TagKind::Control)
    }

    /// The registry of the tags Cohort's interceptors own (docs/PROTOCOL.md §2.6), for a
    /// message whose tag no interceptor of this stack declares.
    pub fn assigned_kind(tag: u32) -> Option<super::TagKind> {
        use super::TagKind::{Control, Transform};
        match tag {
            TWO_PHASE_COMMIT | PING | PROBE | STATIC_NOTICE | LEAVING => Some(Control),
            FRAGMENT | COMPRESSION | ENCRYPTION => Some(Transform),
            _ => None,
        }
    }
}

/// Pipeline-wide facts handed to every [`Cx`].
#[derive(Clone, Debug)]
struct Env {
    local: Option<Member>,
    wall_ms: u64,
}

/// What every [`Cx`] writes to and reads from: the pending work, the outputs, the id counter
/// and the environment.
struct Lanes {
    queue: VecDeque<Work>,
    outputs: VecDeque<Output>,
    ids: Arc<AtomicU64>,
    env: Env,
}

/// The context an interceptor call gets: where its outputs go.
pub struct Cx<'a> {
    now: Instant,
    index: usize,
    lanes: &'a mut Lanes,
}

impl<'a> Cx<'a> {
    fn new(now: Instant, index: usize, lanes: &'a mut Lanes) -> Self {
        Self { now, index, lanes }
    }

    /// The time of the input being handled.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The wall clock (ms since the Unix epoch) as last given by the driver
    /// ([`Pipeline::set_wall_clock_ms`]); 0 if never.
    pub fn wall_clock_ms(&self) -> u64 {
        self.lanes.env.wall_ms
    }

    /// The local member, once the driver gave it ([`Pipeline::set_local`]).
    pub fn local(&self) -> Option<&Member> {
        self.lanes.env.local.as_ref()
    }

    /// Asks the driver to close the inbound connection from `peer`.
    pub fn disconnect(&mut self, peer: std::net::SocketAddr) {
        self.lanes.outputs.push_back(Output::Disconnect(peer));
    }

    /// Passes a message to the next interceptor down (or the transport).
    pub fn send_down(&mut self, msg: Outbound) {
        self.lanes.queue.push_back(Work::Send(self.index + 1, msg));
    }

    /// Passes a message to the next interceptor up (or the listeners).
    pub fn deliver_up(&mut self, msg: Inbound) {
        match self.index.checked_sub(1) {
            Some(i) => self.lanes.queue.push_back(Work::Receive(i, msg)),
            None => self.lanes.outputs.push_back(Output::Deliver(msg)),
        }
    }

    /// Passes a membership event up.
    pub fn emit_member(&mut self, ev: MembershipEvent) {
        match self.index.checked_sub(1) {
            Some(i) => self.lanes.queue.push_back(Work::Member(i, Box::new(ev))),
            None => self.lanes.outputs.push_back(Output::Member(Box::new(ev))),
        }
    }

    /// Asks the driver for a TCP probe of `member`; the answer comes to this interceptor's
    /// [`Interceptor::on_probe_result`].
    pub fn request_probe(&mut self, member: Member, probe: ProbeRequest) {
        self.lanes.outputs.push_back(Output::Probe {
            interceptor: self.index,
            member: Box::new(member),
            probe,
        });
    }

    /// Asks the driver to report `member` failed to membership.
    pub fn report_failed(&mut self, member: Member, detail: String) {
        self.lanes.outputs.push_back(Output::MemberFailed {
            member: Box::new(member),
            detail,
        });
    }

    /// A fresh message id for a frame this interceptor originates or derives.
    pub fn next_msg_id(&mut self) -> u64 {
        self.lanes.ids.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// One layer of the stack. Every method defaults to passing through.
///
/// Interceptors are synchronous and own their state; work needing IO is asked of the driver
/// through [`Cx`] (a probe), never done inline.
pub trait Interceptor: Send + 'static {
    /// Name, for logs and config.
    fn name(&self) -> &'static str;

    /// The extension tags this interceptor owns and what a message still carrying one at the
    /// top of the stack means ([`TagKind`]). The channel asks the pipeline, which asks the
    /// interceptors, before it delivers a message. Default: none.
    fn tags(&self) -> &'static [(u32, TagKind)] {
        &[]
    }

    /// Names of interceptors this one must sit above (nearer the application) when both are
    /// in a stack, with the reason: compression above encryption (encrypted bytes do not
    /// compress), for example. Checked by [`check_order`] however the stack was assembled.
    fn must_be_above(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }

    /// Messages whose options do not contain all of these bits bypass this interceptor.
    /// Default: none (sees everything).
    fn option_mask(&self) -> SendOptions {
        SendOptions::NONE
    }

    /// A message going down.
    fn on_send(&mut self, msg: Outbound, cx: &mut Cx<'_>) {
        cx.send_down(msg);
    }

    /// A message going up.
    fn on_receive(&mut self, msg: Inbound, cx: &mut Cx<'_>) {
        cx.deliver_up(msg);
    }

    /// A membership event going up.
    fn on_member(&mut self, ev: MembershipEvent, cx: &mut Cx<'_>) {
        cx.emit_member(ev);
    }

    /// Called when [`Interceptor::poll_timeout`]'s instant has come.
    fn on_timeout(&mut self, now: Instant, cx: &mut Cx<'_>) {
        let _ = (now, cx);
    }

    /// The next instant this interceptor wants [`Interceptor::on_timeout`].
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// The channel heartbeat (every `heartbeat_interval`, 5 s by default): expiry sweeps,
    /// pings, checks.
    fn on_heartbeat(&mut self, now: Instant, cx: &mut Cx<'_>) {
        let _ = (now, cx);
    }

    /// The result of a probe this interceptor requested: `Ok` if every requested test passed.
    fn on_probe_result(&mut self, member: Member, result: Result<(), ProbeError>, cx: &mut Cx<'_>) {
        let _ = (member, result, cx);
    }

    /// The channel starts: the local member is known ([`Cx::local`]). Static members, first
    /// pings.
    fn on_start(&mut self, now: Instant, cx: &mut Cx<'_>) {
        let _ = (now, cx);
    }

    /// The channel is stopping: last words (a static member's shutdown notice).
    fn on_stop(&mut self, now: Instant, cx: &mut Cx<'_>) {
        let _ = (now, cx);
    }

    /// Evidence against a member, from below the pipeline (a failed send, a lost connection).
    /// Given to every interceptor, top first.
    fn on_suspect(&mut self, member: &Member, why: &Suspicion, cx: &mut Cx<'_>) {
        let _ = (member, why, cx);
    }
}

/// A unit of pending dispatch.
#[derive(Debug)]
pub(crate) enum Work {
    Send(usize, Outbound),
    Receive(usize, Inbound),
    /// Boxed: see [`Output::Member`].
    Member(usize, Box<MembershipEvent>),
}

/// Counters of the pipeline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PipelineStats {
    /// Work items dropped because the work queue was full (received messages among them get
    /// FAIL_ACK when one was asked for).
    pub work_dropped: u64,
}

/// Checks the order rules the interceptors of `stack` (index 0 on top) declare
/// ([`Interceptor::must_be_above`]); the error names both and says why.
pub fn check_order(stack: &[Box<dyn Interceptor>]) -> Result<(), String> {
    for (p, upper) in stack.iter().enumerate() {
        for (below, why) in upper.must_be_above() {
            if let Some(q) = stack[..p].iter().position(|i| i.name() == *below) {
                return Err(format!(
                    "interceptor[{p}] ({}) must be above interceptor[{q}] ({below}): {why}",
                    upper.name()
                ));
            }
        }
    }
    Ok(())
}

/// What an extension tag still on a message at the top of the stack means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagKind {
    /// A control message that an interceptor consumes: with none to consume it here, it is
    /// dropped (and ACKed: it was received; there is nothing to process).
    Control,
    /// A transformation (fragment, compressed, encrypted) that an interceptor must undo: with
    /// none to undo it here the payload is not the application's, so it is dropped and
    /// FAIL_ACKed (the stacks differ).
    Transform,
}

/// An ordered stack of interceptors with a bounded work queue.
pub struct Pipeline {
    stack: Vec<Box<dyn Interceptor>>,
    lanes: Lanes,
    max_work: usize,
    stats: PipelineStats,
}

impl Pipeline {
    /// What `tag` means on a message at the top of the stack: as an interceptor of this stack
    /// declares it ([`Interceptor::tags`]), else as Cohort's tag registry assigns it (a peer
    /// may run an interceptor this stack lacks: its transformation must still not reach the
    /// listeners), else nothing (application tags, and annotations such as order's).
    pub fn tag_kind(&self, tag: u32) -> Option<TagKind> {
        self.stack
            .iter()
            .flat_map(|i| i.tags().iter())
            .find(|(t, _)| *t == tag)
            .map(|(_, kind)| *kind)
            .or_else(|| tags::assigned_kind(tag))
    }

    /// A pipeline over `stack` (index 0 on top). At most `max_work` work items are pending
    /// within one input's dispatch. `ids` is the sender's message id counter, shared with
    /// whoever assigns ids to application messages (ids are the counter's value plus one).
    pub fn new(stack: Vec<Box<dyn Interceptor>>, max_work: usize, ids: Arc<AtomicU64>) -> Self {
        Self {
            stack,
            lanes: Lanes {
                queue: VecDeque::new(),
                outputs: VecDeque::new(),
                ids,
                env: Env {
                    local: None,
                    wall_ms: 0,
                },
            },
            max_work: max_work.max(1),
            stats: PipelineStats::default(),
        }
    }

    /// Sets the local member interceptors see through [`Cx::local`].
    pub fn set_local(&mut self, local: Member) {
        self.lanes.env.local = Some(local);
    }

    /// Sets the wall clock interceptors see through [`Cx::wall_clock_ms`]; drivers call it
    /// before each input.
    pub fn set_wall_clock_ms(&mut self, ms: u64) {
        self.lanes.env.wall_ms = ms;
    }

    /// The channel starts: `on_start` to every interceptor, bottom first (so that a layer's
    /// first messages pass layers already started).
    pub fn start(&mut self, now: Instant) {
        for index in (0..self.stack.len()).rev() {
            self.call(now, index, |i, cx| i.on_start(now, cx));
        }
    }

    /// The channel stops: `on_stop` to every interceptor, top first.
    pub fn stop(&mut self, now: Instant) {
        for index in 0..self.stack.len() {
            self.call(now, index, |i, cx| i.on_stop(now, cx));
        }
    }

    /// Evidence against `member`, to every interceptor, top first.
    pub fn suspect(&mut self, now: Instant, member: &Member, why: &Suspicion) {
        for index in 0..self.stack.len() {
            self.call(now, index, |i, cx| i.on_suspect(member, why, cx));
        }
    }

    /// Interceptor names, top first.
    pub fn names(&self) -> Vec<&'static str> {
        self.stack.iter().map(|i| i.name()).collect()
    }

    /// Counters.
    pub fn stats(&self) -> PipelineStats {
        self.stats
    }

    /// A message from the application.
    pub fn send(&mut self, now: Instant, msg: Outbound) {
        self.lanes.queue.push_back(Work::Send(0, msg));
        self.run(now);
    }

    /// A message from the transport.
    pub fn receive(&mut self, now: Instant, msg: Inbound) {
        match self.stack.len().checked_sub(1) {
            Some(i) => self.lanes.queue.push_back(Work::Receive(i, msg)),
            None => self.lanes.outputs.push_back(Output::Deliver(msg)),
        }
        self.run(now);
    }

    /// A membership event.
    pub fn member(&mut self, now: Instant, ev: MembershipEvent) {
        match self.stack.len().checked_sub(1) {
            Some(i) => self.lanes.queue.push_back(Work::Member(i, Box::new(ev))),
            None => self.lanes.outputs.push_back(Output::Member(Box::new(ev))),
        }
        self.run(now);
    }

    /// Calls `on_timeout` of every interceptor whose deadline has come.
    pub fn handle_timeout(&mut self, now: Instant) {
        for index in 0..self.stack.len() {
            if self.stack[index].poll_timeout().is_some_and(|t| t <= now) {
                self.call(now, index, |i, cx| i.on_timeout(now, cx));
            }
        }
    }

    /// The channel heartbeat, to every interceptor, top first.
    pub fn heartbeat(&mut self, now: Instant) {
        for index in 0..self.stack.len() {
            self.call(now, index, |i, cx| i.on_heartbeat(now, cx));
        }
    }

    /// The result of a probe requested by interceptor `interceptor`.
    pub fn probe_result(
        &mut self,
        now: Instant,
        interceptor: usize,
        member: Member,
        result: Result<(), ProbeError>,
    ) {
        if interceptor < self.stack.len() {
            self.call(now, interceptor, |i, cx| {
                i.on_probe_result(member, result, cx);
            });
        }
    }

    /// The earliest deadline of any interceptor.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.stack.iter().filter_map(|i| i.poll_timeout()).min()
    }

    /// The next output, in the order produced.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.lanes.outputs.pop_front()
    }

    fn call(
        &mut self,
        now: Instant,
        index: usize,
        f: impl FnOnce(&mut dyn Interceptor, &mut Cx<'_>),
    ) {
        let mut cx = Cx::new(now, index, &mut self.lanes);
        f(self.stack[index].as_mut(), &mut cx);
        self.run(now);
    }

    fn run(&mut self, now: Instant) {
        while let Some(work) = self.lanes.queue.pop_front() {
            match work {
                Work::Send(i, msg) => {
                    // Skip interceptors whose mask the message does not carry.
                    let mut i = i;
                    while i < self.stack.len() && !msg.options.contains(self.stack[i].option_mask())
                    {
                        i += 1;
                    }
                    if i >= self.stack.len() {
                        self.lanes.outputs.push_back(Output::Transmit(msg));
                        continue;
                    }
                    let mut cx = Cx::new(now, i, &mut self.lanes);
                    self.stack[i].on_send(msg, &mut cx);
                }
                Work::Receive(i, msg) => {
                    let mut i = Some(i);
                    while let Some(j) = i {
                        if msg.options.contains(self.stack[j].option_mask()) {
                            break;
                        }
                        i = j.checked_sub(1);
                    }
                    let Some(i) = i else {
                        self.lanes.outputs.push_back(Output::Deliver(msg));
                        continue;
                    };
                    let mut cx = Cx::new(now, i, &mut self.lanes);
                    self.stack[i].on_receive(msg, &mut cx);
                }
                Work::Member(i, ev) => {
                    let mut cx = Cx::new(now, i, &mut self.lanes);
                    self.stack[i].on_member(*ev, &mut cx);
                }
            }
            if self.lanes.queue.len() > self.max_work {
                // Overflow policy: drop the newest work (a runaway interceptor), counted.
                let excess = self.lanes.queue.len() - self.max_work;
                for _ in 0..excess {
                    if let Some(Work::Receive(_, msg)) = self.lanes.queue.pop_back() {
                        msg.reject(WORK_QUEUE_FULL);
                    }
                }
                self.stats.work_dropped += excess as u64;
            }
        }
    }
}
