//! Send receipts: what a send promised, and how it ended per member.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use cohort_transport::{Delivered, SendError};
use cohort_wire::{Member, MemberId};
use smallvec::SmallVec;

use crate::admission::{Admission, Room};

/// Learns how asynchronous sends ended (Tribes' `ErrorHandler`): the caller of an
/// ASYNCHRONOUS send got its receipt when the message was queued.
pub trait ErrorHandler: Send + Sync + 'static {
    /// At least one destination failed.
    fn handle_error(&self, outcome: &SendOutcome);

    /// Every destination succeeded. Default: nothing.
    fn handle_completion(&self, outcome: &SendOutcome) {
        let _ = outcome;
    }
}

/// How one destination's delivery ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberResult {
    /// The destination.
    pub member: MemberId,
    /// Its receiver address.
    pub addr: SocketAddr,
    /// The outcome.
    pub result: Result<Delivered, SendError>,
}

/// The per-destination results of a send ([`SendOutcome::results`]): a slice of
/// [`MemberResult`] (it dereferences to `[MemberResult]`). A send to one member keeps its one
/// result in place, without an allocation of its own: an ACKed send to one member allocates
/// its state and nothing else.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberResults(SmallVec<[MemberResult; 1]>);

impl MemberResults {
    /// No results.
    pub fn new() -> Self {
        Self::default()
    }

    /// The results as a `Vec` (allocates when they were held in place).
    pub fn into_vec(self) -> Vec<MemberResult> {
        self.0.into_vec()
    }

    fn push(&mut self, r: MemberResult) {
        self.0.push(r);
    }

    fn reserve_exact(&mut self, n: usize) {
        self.0.reserve_exact(n);
    }
}

impl std::ops::Deref for MemberResults {
    type Target = [MemberResult];

    fn deref(&self) -> &[MemberResult] {
        &self.0
    }
}

impl std::ops::DerefMut for MemberResults {
    fn deref_mut(&mut self) -> &mut [MemberResult] {
        &mut self.0
    }
}

impl From<Vec<MemberResult>> for MemberResults {
    fn from(v: Vec<MemberResult>) -> Self {
        Self(SmallVec::from_vec(v))
    }
}

impl FromIterator<MemberResult> for MemberResults {
    fn from_iter<I: IntoIterator<Item = MemberResult>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl IntoIterator for MemberResults {
    type Item = MemberResult;
    type IntoIter = MemberResultsIntoIter;

    fn into_iter(self) -> Self::IntoIter {
        MemberResultsIntoIter(self.0.into_iter())
    }
}

/// [`MemberResults`] by value, in order (no allocation of its own).
#[derive(Debug)]
pub struct MemberResultsIntoIter(smallvec::IntoIter<[MemberResult; 1]>);

impl Iterator for MemberResultsIntoIter {
    type Item = MemberResult;

    fn next(&mut self) -> Option<MemberResult> {
        self.0.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl ExactSizeIterator for MemberResultsIntoIter {}

impl<'a> IntoIterator for &'a MemberResults {
    type Item = &'a MemberResult;
    type IntoIter = std::slice::Iter<'a, MemberResult>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// How a send ended, per destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendOutcome {
    /// The message id.
    pub msg_id: u64,
    /// True when this outcome only says the message was queued (ASYNCHRONOUS): per-member
    /// results then go to the channel's [`ErrorHandler`].
    pub queued: bool,
    /// One entry per destination and frame (several when an interceptor split the message).
    /// Empty for a queued ASYNCHRONOUS outcome (no results expected here), and when `lost`
    /// says why none arrived.
    pub results: MemberResults,
    /// Set when results were expected and none arrived: no frame of the message left the
    /// pipeline (an interceptor dropped it), or the channel stopped before it dispatched the
    /// message. A destination whose delivery the channel's stop cut short has its own
    /// result, `SendError::Stopped`.
    pub lost: Option<String>,
}

/// Why an outcome has no results though the send had destinations.
pub(crate) const LOST_IN_PIPELINE: &str = "no frame of the message left the pipeline";
pub(crate) const LOST_STOPPED: &str = "the channel stopped before the send completed";

impl SendOutcome {
    /// True when every destination succeeded and the outcome is not [`SendOutcome::lost`].
    /// A queued ASYNCHRONOUS outcome is ok (its results go to the error handler).
    pub fn is_ok(&self) -> bool {
        self.lost.is_none() && self.results.iter().all(|r| r.result.is_ok())
    }

    /// The failed destinations.
    pub fn failures(&self) -> impl Iterator<Item = &MemberResult> {
        self.results.iter().filter(|r| r.result.is_err())
    }
}

impl std::fmt::Display for SendOutcome {
    /// `message 7: 1 of 3 destinations failed: 127.0.0.1:4001: no ACK within 3s`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(lost) = &self.lost {
            return write!(f, "message {}: {lost}", self.msg_id);
        }
        if self.queued {
            return write!(f, "message {}: queued", self.msg_id);
        }
        let failed: Vec<&MemberResult> = self.failures().collect();
        if failed.is_empty() {
            return write!(
                f,
                "message {}: {} destinations ok",
                self.msg_id,
                self.results.len()
            );
        }
        write!(
            f,
            "message {}: {} of {} destinations failed",
            self.msg_id,
            failed.len(),
            self.results.len()
        )?;
        for (i, r) in failed.iter().take(3).enumerate() {
            let sep = if i == 0 { ": " } else { "; " };
            if let Err(e) = &r.result {
                write!(f, "{sep}{}: {e}", r.addr)?;
            }
        }
        Ok(())
    }
}

/// Resolves as the send options promise: when queued (ASYNCHRONOUS), when written (no ACK),
/// when acknowledged (USE_ACK) or when processed (USE_ACK | SYNCHRONIZED_ACK). Never hangs:
/// every destination completes or fails within the transport's `send_timeout` (plus connect
/// time).
#[derive(Debug)]
pub struct SendReceipt {
    msg_id: u64,
    state: ReceiptState,
}

enum ReceiptState {
    /// An ASYNCHRONOUS send's: its outcome says it was queued (built when polled, so the
    /// receipt stays small: it holds no outcome).
    Queued,
    /// The outcome was returned.
    Done,
    /// The send's own state: its outcome is left there, and this receipt woken (no channel
    /// of its own: one allocation less per send).
    Waiting(Arc<SendState>),
}

impl std::fmt::Debug for ReceiptState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Queued => f.write_str("Queued"),
            Self::Done => f.write_str("Done"),
            Self::Waiting(s) => f.debug_tuple("Waiting").field(&s.msg_id).finish(),
        }
    }
}

impl SendReceipt {
    /// A receipt ready at once: the ASYNCHRONOUS send `msg_id` was queued.
    pub(crate) fn queued(msg_id: u64) -> Self {
        Self {
            msg_id,
            state: ReceiptState::Queued,
        }
    }

    /// A receipt for the outcome `state` will reach (a state made with `waiting`).
    pub(crate) fn waiting(state: Arc<SendState>) -> Self {
        Self {
            msg_id: state.msg_id,
            state: ReceiptState::Waiting(state),
        }
    }

    /// The message id.
    pub fn msg_id(&self) -> u64 {
        self.msg_id
    }
}

impl std::future::Future for SendReceipt {
    type Output = SendOutcome;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<SendOutcome> {
        let msg_id = self.msg_id;
        match &mut self.state {
            ReceiptState::Queued => {
                self.state = ReceiptState::Done;
                std::task::Poll::Ready(SendOutcome {
                    msg_id,
                    queued: true,
                    results: MemberResults::new(),
                    lost: None,
                })
            }
            ReceiptState::Done => std::task::Poll::Ready(SendOutcome {
                msg_id,
                queued: false,
                results: MemberResults::new(),
                lost: Some("the receipt was polled after it completed".into()),
            }),
            ReceiptState::Waiting(state) => {
                let mut c = state.collected();
                match c.finished {
                    Some(lost) => {
                        let results = std::mem::take(&mut c.results);
                        drop(c);
                        self.state = ReceiptState::Done;
                        std::task::Poll::Ready(SendOutcome {
                            msg_id,
                            queued: false,
                            results,
                            lost: lost.map(str::to_owned),
                        })
                    }
                    None => {
                        if !c.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                            c.waker = Some(cx.waker().clone());
                        }
                        std::task::Poll::Pending
                    }
                }
            }
        }
    }
}

/// Where a failed send raises a suspicion of its destination (the channel's `Suspecter`; a
/// trait here so that this module imports nothing from the channel's).
pub(crate) trait SuspectOnFailure: Send + Sync {
    /// Raises a suspicion of `member` when `r` says its send failed on IO or a timeout.
    fn check(&self, member: &Member, r: &Result<Delivered, SendError>);
}

/// What every send's state reports to: the same for all of a channel's sends, so a send
/// clones one reference, not three.
pub(crate) struct SendContext {
    /// Where failed sends raise suspicions.
    pub(crate) suspecter: Arc<dyn SuspectOnFailure>,
    /// The ASYNCHRONOUS queue, given back its room once a send has completed.
    pub(crate) admission: Arc<Admission>,
    /// Gets the outcomes of ASYNCHRONOUS sends.
    pub(crate) error_handler: Option<Arc<dyn ErrorHandler>>,
    /// Limits the warnings of a panicking error handler.
    pub(crate) warn: cohort_net::WarnLimiter,
}

/// Collects per-destination results of one application message (all its frames), or of a
/// batch's messages. The transport's completions report to it directly
/// ([`cohort_transport::Completion::shared`], by index into `destinations`): no closure is
/// allocated per frame.
pub(crate) struct SendState {
    pub(crate) msg_id: u64,
    /// The destinations as the application gave them: a completion's index points here.
    destinations: Arc<[Member]>,
    ctx: Arc<SendContext>,
    /// Deliveries outstanding, plus one held by the driver until dispatch is over (its
    /// [`Hold`]).
    remaining: AtomicUsize,
    /// Set when the driver's hold was dropped without being released (the channel's task
    /// ended first): an outcome without results then says the channel stopped.
    abandoned: AtomicBool,
    /// Whether the outcome goes to the error handler (ASYNCHRONOUS sends, when there is one).
    to_handler: bool,
    /// Whether anyone reads the results (a waiting receipt or an error handler): an
    /// ASYNCHRONOUS send without an error handler keeps none (no allocation, no lock).
    keep_results: bool,
    /// The results so far, and where the outcome goes: one lock for both.
    collected: Mutex<Collected>,
    /// ASYNCHRONOUS room (a packed [`Room`]) taken for this send, given back (and zeroed)
    /// when every delivery has completed, or when the state is dropped before that.
    admitted: AtomicU64,
}

/// What a [`SendState`] gathers under its lock.
struct Collected {
    results: MemberResults,
    /// Whether a receipt waits for the outcome.
    receipt: bool,
    /// Set once every delivery is over, for the receipt to build the outcome from `results`:
    /// why there are none, if there are none.
    finished: Option<Option<&'static str>>,
    /// The receipt's task, woken when the outcome is left here.
    waker: Option<std::task::Waker>,
}

impl SendState {
    /// A send's state and the driver's hold on it: with `receipt`, a
    /// [`SendReceipt::waiting`] gets the outcome; an ASYNCHRONOUS one holds the room it was
    /// `admitted` and reports to the error handler.
    pub(crate) fn new(
        msg_id: u64,
        destinations: Arc<[Member]>,
        ctx: &Arc<SendContext>,
        receipt: bool,
        admitted: Option<Room>,
    ) -> (Arc<Self>, Hold) {
        let to_handler = admitted.is_some() && ctx.error_handler.is_some();
        let state = Arc::new(Self {
            msg_id,
            destinations,
            ctx: ctx.clone(),
            remaining: AtomicUsize::new(1),
            abandoned: AtomicBool::new(false),
            to_handler,
            keep_results: receipt || to_handler,
            collected: Mutex::new(Collected {
                results: MemberResults::new(),
                receipt,
                finished: None,
                waker: None,
            }),
            admitted: AtomicU64::new(admitted.unwrap_or_default().into()),
        });
        let hold = Hold(Some(state.clone()));
        (state, hold)
    }

    /// `n` more deliveries will report. Room for their results is made now, exactly: the
    /// first result would otherwise allocate room for four, a size the allocator serves more
    /// slowly than one result's.
    pub(crate) fn expect(&self, n: usize) {
        self.remaining.fetch_add(n, Ordering::AcqRel);
        if self.keep_results {
            self.collected().results.reserve_exact(n);
        }
    }

    pub(crate) fn record(
        &self,
        member: MemberId,
        addr: SocketAddr,
        result: Result<Delivered, SendError>,
    ) {
        if self.keep_results {
            self.collected().results.push(MemberResult {
                member,
                addr,
                result,
            });
        }
        self.done_one();
    }

    /// The destinations the send was made to: completions made with
    /// [`cohort_transport::Completion::shared`] for this state index into them.
    pub(crate) fn destinations(&self) -> &Arc<[Member]> {
        &self.destinations
    }

    fn collected(&self) -> std::sync::MutexGuard<'_, Collected> {
        self.collected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives the ASYNCHRONOUS room back, once.
    fn release_admission(&self) {
        let room = Room::from(self.admitted.swap(0, Ordering::AcqRel));
        self.ctx.admission.release(room);
    }

    /// One delivery (or the driver's hold) is over.
    pub(crate) fn done_one(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        if !self.keep_results {
            // Nobody reads an outcome: only the admission is given back.
            self.release_admission();
            return;
        }
        let lost = |empty: bool| {
            empty.then_some(if self.abandoned.load(Ordering::Acquire) {
                LOST_STOPPED
            } else {
                LOST_IN_PIPELINE
            })
        };
        self.release_admission();
        let reported = self.to_handler && !self.abandoned.load(Ordering::Acquire);
        if let Some(h) = self.ctx.error_handler.as_ref().filter(|_| reported) {
            let results = std::mem::take(&mut self.collected().results);
            let outcome = SendOutcome {
                msg_id: self.msg_id,
                queued: false,
                lost: lost(results.is_empty()).map(str::to_owned),
                results,
            };
            // The handler's bug must not unwind through a transport task (and drop the
            // completions it has yet to run).
            let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if outcome.is_ok() {
                    h.handle_completion(&outcome);
                } else {
                    h.handle_error(&outcome);
                }
            }));
            if handled.is_err() {
                let now = std::time::Instant::now();
                if let Some(suppressed) = self.ctx.warn.allow("error_handler_panicked", now) {
                    tracing::warn!(
                        msg_id = self.msg_id,
                        suppressed,
                        "an error handler panicked"
                    );
                }
            }
            return;
        }
        // A waiting receipt builds the outcome from what is left here.
        let waker = {
            let mut c = self.collected();
            if !c.receipt {
                return;
            }
            c.finished = Some(lost(c.results.is_empty()));
            c.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The driver's hold on a [`SendState`] (one of its `remaining`): given back by
/// [`Hold::release`] once the send is dispatched. Dropped without that (the send never
/// reached the channel's task: it failed with `ChannelError::Stopped`, or its caller gave up
/// waiting for room in the command queue; or the task ended first), it is given back all the
/// same: a waiting receipt resolves with the channel stopped, and the error handler hears
/// nothing (as before receipts waited on their state).
pub(crate) struct Hold(Option<Arc<SendState>>);

impl Hold {
    /// The state held.
    pub(crate) fn state(&self) -> &Arc<SendState> {
        match &self.0 {
            Some(s) => s,
            None => unreachable!("a hold is emptied only as it goes"),
        }
    }

    /// Dispatch is over: the hold ends.
    pub(crate) fn release(mut self) {
        if let Some(s) = self.0.take() {
            s.done_one();
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.abandoned.store(true, Ordering::Release);
            s.done_one();
        }
    }
}

impl cohort_transport::Completions for SendState {
    /// The frame to `destinations[index]` completed: a suspicion when it failed on IO, and
    /// its result recorded.
    fn complete(&self, index: usize, result: Result<Delivered, SendError>) {
        debug_assert!(
            index < self.destinations.len(),
            "a completion made for destination {index} of {}",
            self.destinations.len()
        );
        let Some(dest) = self.destinations.get(index) else {
            // Never made so; counted all the same, or the receipt would wait forever.
            self.done_one();
            return;
        };
        self.ctx.suspecter.check(dest, &result);
        self.record(dest.id, SocketAddr::new(dest.addr, dest.port), result);
    }
}

impl Drop for SendState {
    /// A state dropped before its deliveries completed (the channel stopped) gives its room
    /// back all the same.
    fn drop(&mut self) {
        self.release_admission();
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    use cohort_transport::{Completion, Completions};

    use super::*;

    struct NoSuspicion;

    impl SuspectOnFailure for NoSuspicion {
        fn check(&self, _: &Member, _: &Result<Delivered, SendError>) {}
    }

    fn ctx() -> Arc<SendContext> {
        Arc::new(SendContext {
            suspecter: Arc::new(NoSuspicion),
            admission: Arc::new(Admission::new(Room::new(16, 1 << 20))),
            error_handler: None,
            warn: cohort_net::WarnLimiter::new(cohort_net::WARN_INTERVAL),
        })
    }

    fn to() -> Arc<[Member]> {
        let m = Member::new(
            MemberId::from_bytes([1; 16]),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            4000,
        );
        vec![m].into()
    }

    async fn outcome(receipt: SendReceipt) -> SendOutcome {
        tokio::time::timeout(Duration::from_secs(10), receipt)
            .await
            .expect("the receipt resolved")
    }

    /// The receipt waits on its send's state and resolves once, whichever way the send ends:
    /// its deliveries' results; none left the pipeline; the channel's task ended first (the
    /// hold dropped, not released); a delivery's completion dropped unrun (`Stopped`).
    #[tokio::test]
    async fn a_waiting_receipt_always_resolves_with_what_happened() {
        let ctx = ctx();
        let (state, hold) = SendState::new(1, to(), &ctx, true, None);
        let receipt = SendReceipt::waiting(state.clone());
        state.expect(1);
        hold.release();
        let done = Completion::shared(state.clone(), 0);
        drop(state);
        let waiting = tokio::spawn(outcome(receipt));
        tokio::task::yield_now().await;
        done.complete(Ok(Delivered::Acked));
        let o = waiting.await.unwrap();
        assert!(
            o.is_ok() && o.results.len() == 1 && o.lost.is_none(),
            "{o:?}"
        );

        let (state, hold) = SendState::new(2, to(), &ctx, true, None);
        let receipt = SendReceipt::waiting(state);
        hold.release();
        assert_eq!(
            outcome(receipt).await.lost.as_deref(),
            Some(LOST_IN_PIPELINE)
        );

        let (state, hold) = SendState::new(3, to(), &ctx, true, None);
        let receipt = SendReceipt::waiting(state);
        drop(hold);
        assert_eq!(outcome(receipt).await.lost.as_deref(), Some(LOST_STOPPED));

        let (state, hold) = SendState::new(4, to(), &ctx, true, None);
        let receipt = SendReceipt::waiting(state.clone());
        state.expect(1);
        let done = Completion::shared(state, 0);
        hold.release();
        drop(done);
        let o = outcome(receipt).await;
        assert_eq!(o.results.len(), 1);
        assert_eq!(o.results[0].result, Err(SendError::Stopped));
    }

    /// One destination's result is held in place (no allocation of its own); more spill to
    /// the heap, and all of them read as a slice, in the order recorded.
    #[tokio::test]
    async fn one_result_is_held_in_place_and_more_read_as_a_slice() {
        let ctx = ctx();
        let (state, hold) = SendState::new(1, to(), &ctx, true, None);
        let receipt = SendReceipt::waiting(state.clone());
        state.expect(1);
        hold.release();
        Completion::shared(state, 0).complete(Ok(Delivered::Acked));
        let o = outcome(receipt).await;
        assert!(!o.results.0.spilled(), "one result is not on the heap");
        assert_eq!(o.results.len(), 1);

        let dests: Arc<[Member]> = (0..3u8)
            .map(|i| {
                Member::new(
                    MemberId::from_bytes([i; 16]),
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    4000 + u16::from(i),
                )
            })
            .collect::<Vec<_>>()
            .into();
        let (state, hold) = SendState::new(2, dests, &ctx, true, None);
        let receipt = SendReceipt::waiting(state.clone());
        state.expect(3);
        hold.release();
        for i in [2, 0, 1] {
            Completion::shared(state.clone(), i).complete(Ok(Delivered::Acked));
        }
        drop(state);
        let o = outcome(receipt).await;
        let ports: Vec<u16> = o.results.iter().map(|r| r.addr.port()).collect();
        assert_eq!(ports, [4002, 4000, 4001]);
        let back: MemberResults = o.results.clone().into_vec().into();
        assert_eq!(back, o.results);
        assert_eq!((&o.results).into_iter().count(), 3);
        assert_eq!(o.results.into_iter().count(), 3);
    }

    /// An ASYNCHRONOUS send's receipt is ready at once and says "queued"; polled again, it
    /// says it already completed.
    #[tokio::test]
    async fn a_queued_receipt_says_queued_once() {
        let mut receipt = SendReceipt::queued(9);
        assert_eq!(receipt.msg_id(), 9);
        let o = (&mut receipt).await;
        assert!(
            o.queued && o.is_ok() && o.results.is_empty() && o.lost.is_none(),
            "{o:?}"
        );
        let again = receipt.await;
        assert!(!again.queued && again.lost.is_some(), "{again:?}");
    }

    /// The error handler hears of ASYNCHRONOUS sends that were dispatched, not of one whose
    /// hold was dropped (the application saw it fail, or never saw it accepted); a handler
    /// that panics is caught, and the room goes back all the same.
    #[test]
    fn the_error_handler_hears_of_dispatched_sends_and_may_panic() {
        struct Panicky(std::sync::atomic::AtomicUsize);
        impl ErrorHandler for Panicky {
            fn handle_error(&self, _: &SendOutcome) {
                self.0.fetch_add(1, Ordering::SeqCst);
                panic!("a handler's bug");
            }
        }
        let handler = Arc::new(Panicky(std::sync::atomic::AtomicUsize::new(0)));
        let ctx = Arc::new(SendContext {
            error_handler: Some(handler.clone()),
            ..Arc::try_unwrap(ctx()).ok().unwrap()
        });
        let room = Room::new(1, 100);
        assert!(ctx.admission.try_admit(room));
        let (_, hold) = SendState::new(6, to(), &ctx, false, Some(room));
        drop(hold);
        assert_eq!(
            handler.0.load(Ordering::SeqCst),
            0,
            "not dispatched: not reported"
        );
        assert_eq!(ctx.admission.queued(), Room::ZERO);

        assert!(ctx.admission.try_admit(room));
        let (state, hold) = SendState::new(7, to(), &ctx, false, Some(room));
        state.expect(1);
        hold.release();
        state.complete(0, Err(SendError::Stopped));
        assert_eq!(
            handler.0.load(Ordering::SeqCst),
            1,
            "reported, and the panic caught"
        );
        assert_eq!(ctx.admission.queued(), Room::ZERO);
    }

    /// An ASYNCHRONOUS send's room goes back once every delivery is over, and a state no
    /// receipt waits on keeps no outcome.
    #[test]
    fn an_asynchronous_send_gives_its_room_back_when_done() {
        let ctx = ctx();
        let room = Room::new(1, 100);
        assert!(ctx.admission.try_admit(room));
        let (state, hold) = SendState::new(5, to(), &ctx, false, Some(room));
        state.expect(1);
        hold.release();
        assert_eq!(ctx.admission.queued(), room);
        state.complete(0, Ok(Delivered::Sent));
        assert_eq!(ctx.admission.queued(), Room::ZERO);
        assert!(state.collected().finished.is_none());
    }
}
