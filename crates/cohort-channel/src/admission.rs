//! Admission to the bounded ASYNCHRONOUS queue: room in messages and in bytes, taken and
//! given back together.
//!
//! Every ASYNCHRONOUS send takes room here and gives it back once each of its deliveries has
//! completed. Two tokio semaphores did this before (one per bound): a send paid two
//! acquisitions, two reference counts and, on release, two locks of their waiter lists,
//! about 460 instructions of the 6,100 a 1 KiB send costs (docs/BENCHMARKS.md, issue 13's
//! ninth stop). Here the room left in both units is one atomic word: a send takes it with
//! one compare-and-swap, and a completion gives it back with one add and one load.
//!
//! Senders that find no room wait their turn in arrival order (tokio's mutex is fair), and
//! while any waits, a sender that finds room does not take it past them: a large send is not
//! starved by small ones (tokio's semaphore was fair in the same way). Room is never handed
//! to a waiter: the waiter whose turn it is takes it itself, so a cancelled wait leaks
//! nothing.
//!
//! Two waits keep out of that queue, for the tower service, whose `poll_ready` reserves a
//! place before its `call` sends:
//! - the rest of a reserved send ([`Admission::admit_reserved`]): its place already counts, so
//!   it must not wait behind a queued sender that may need that very place. It waits apart,
//!   but counts as waiting, so senders that find room do not take it past it either;
//! - `poll_ready`'s own wait ([`Admission::admit_when_idle`]): a future that may sit unpolled
//!   must hold no turn and keep nobody waiting, so it takes room only while nobody queues.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};

use tokio::sync::{Mutex, Notify};

/// Bytes sit in the low 32 bits of a packed [`Room`], messages above them.
const BYTES_BITS: u32 = 32;
const BYTES_MASK: u64 = (1 << BYTES_BITS) - 1;

/// The most messages and bytes a queue may hold: the fields of a packed [`Room`] (the
/// channel's config checks its bounds against these).
pub(crate) const MAX_MESSAGES: u32 = 1 << 24;
/// See [`MAX_MESSAGES`].
pub(crate) const MAX_BYTES: u32 = u32::MAX;

/// An amount of queue room: messages and bytes, packed in one word.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Room(u64);

impl Room {
    /// No room.
    pub(crate) const ZERO: Self = Self(0);

    /// `messages` (at most [`MAX_MESSAGES`]) and `bytes`.
    pub(crate) fn new(messages: u32, bytes: u32) -> Self {
        debug_assert!(messages <= MAX_MESSAGES);
        Self((u64::from(messages.min(MAX_MESSAGES)) << BYTES_BITS) | u64::from(bytes))
    }

    pub(crate) fn messages(self) -> u32 {
        (self.0 >> BYTES_BITS) as u32
    }

    pub(crate) fn bytes(self) -> u32 {
        (self.0 & BYTES_MASK) as u32
    }

    /// Whether `self` holds at least `want` in both units.
    fn covers(self, want: Self) -> bool {
        self.messages() >= want.messages() && self.bytes() >= want.bytes()
    }

    fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl From<Room> for u64 {
    fn from(r: Room) -> u64 {
        r.0
    }
}

impl From<u64> for Room {
    /// A room packed by `u64::from`.
    fn from(v: u64) -> Room {
        Room(v)
    }
}

/// The bounded ASYNCHRONOUS queue's room (see the module's docs).
pub(crate) struct Admission {
    /// Room left, packed as a [`Room`]. Never more than `capacity` in either unit, so adding
    /// room given back never carries from the bytes into the messages.
    free: AtomicU64,
    capacity: Room,
    /// Senders waiting for room, or for their turn to wait.
    waiting: AtomicUsize,
    /// Waits that take room only while nobody waits ([`Admission::admit_when_idle`]).
    idle_waiting: AtomicUsize,
    /// Waiting senders' turns, in arrival order.
    turn: Mutex<()>,
    /// Room was given back while someone waited.
    released: Notify,
}

/// Counts a sender as waiting for as long as it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, SeqCst);
        Self(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

impl Admission {
    /// An empty queue that holds at most `capacity`.
    pub(crate) fn new(capacity: Room) -> Self {
        Self {
            free: AtomicU64::new(capacity.0),
            capacity,
            waiting: AtomicUsize::new(0),
            idle_waiting: AtomicUsize::new(0),
            turn: Mutex::new(()),
            released: Notify::new(),
        }
    }

    /// Takes `want` if it is there now, unless senders are waiting (that would jump their
    /// queue). `want` must fit in the capacity, or it is never there.
    pub(crate) fn try_admit(&self, want: Room) -> bool {
        self.waiting.load(SeqCst) == 0 && self.take(want)
    }

    /// Takes `want`, waiting for it (behind the senders that waited first) when it is not
    /// there. `want` must fit in the capacity, or this waits forever. Cancel-safe: dropped
    /// while waiting, it has taken nothing.
    pub(crate) async fn admit(&self, want: Room) {
        if self.try_admit(want) {
            return;
        }
        let _waiting = Waiting::new(&self.waiting);
        let _turn = self.turn.lock().await;
        self.wait_for(want, || true).await;
    }

    /// The rest of a send whose place was reserved: takes `want`, waiting for it when it is
    /// not there, apart from the queue (see the module's docs). Cancel-safe, as
    /// [`Admission::admit`].
    pub(crate) async fn admit_reserved(&self, want: Room) {
        if self.take(want) {
            return;
        }
        let _waiting = Waiting::new(&self.waiting);
        self.wait_for(want, || true).await;
    }

    /// The rest of a reserved send, now or never (the `Reject` policy): it may take room past
    /// waiting senders, as [`Admission::admit_reserved`] does.
    pub(crate) fn try_admit_reserved(&self, want: Room) -> bool {
        self.take(want)
    }

    /// Takes `want` once it is there while nobody waits for room; until then it waits, holding
    /// nothing and keeping nobody waiting (see the module's docs). Cancel-safe.
    #[cfg(any(feature = "tower", test))]
    pub(crate) async fn admit_when_idle(&self, want: Room) {
        if self.try_admit(want) {
            return;
        }
        let _waiting = Waiting::new(&self.idle_waiting);
        self.wait_for(want, || self.waiting.load(SeqCst) == 0).await;
    }

    /// Waits for a release until `may` allows taking `want` and it is there, then takes it.
    async fn wait_for(&self, want: Room, may: impl Fn() -> bool) {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            // Registered before looking: room given back after the look wakes this.
            released.as_mut().enable();
            if may() && self.take(want) {
                return;
            }
            released.await;
        }
    }

    /// Gives `room` back (taken before by this queue's `admit` or `try_admit`).
    pub(crate) fn release(&self, room: Room) {
        if room.is_zero() {
            return;
        }
        let before = Room(self.free.fetch_add(room.0, SeqCst));
        debug_assert!(
            Room(before.0 + room.0).messages() <= self.capacity.messages()
                && u64::from(before.bytes()) + u64::from(room.bytes())
                    <= u64::from(self.capacity.bytes()),
            "more room given back than was taken"
        );
        // After the add: a waiter that counted itself before these loads registered for the
        // wake-up before it looked, so it sees the room or is woken. Every registered waiter
        // is woken (the queue's turn holder, reserved sends, idle waits); each looks again.
        if self.waiting.load(SeqCst) > 0 || self.idle_waiting.load(SeqCst) > 0 {
            self.released.notify_waiters();
        }
    }

    /// What the queue holds now: messages and bytes taken and not given back.
    pub(crate) fn queued(&self) -> Room {
        let free = Room(self.free.load(SeqCst));
        Room::new(
            self.capacity.messages() - free.messages(),
            self.capacity.bytes() - free.bytes(),
        )
    }

    /// The most it holds.
    pub(crate) fn capacity(&self) -> Room {
        self.capacity
    }

    /// Takes `want` if both units are there.
    fn take(&self, want: Room) -> bool {
        let mut cur = self.free.load(SeqCst);
        loop {
            if !Room(cur).covers(want) {
                return false;
            }
            // Both fields are at least want's: no borrow crosses from one to the other.
            match self
                .free
                .compare_exchange_weak(cur, cur - want.0, SeqCst, SeqCst)
            {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }
}

/// Room taken ahead of a send (by the tower service's `poll_ready`), given back when dropped
/// unless a send took it over ([`Reservation::into_room`]).
pub(crate) struct Reservation {
    admission: Arc<Admission>,
    room: Room,
}

impl Reservation {
    /// Waits for `want` as [`Admission::admit_when_idle`] does, and holds it.
    #[cfg(feature = "tower")]
    pub(crate) async fn take_when_idle(admission: Arc<Admission>, want: Room) -> Self {
        admission.admit_when_idle(want).await;
        Self {
            admission,
            room: want,
        }
    }

    /// Waits for `want` (as [`Admission::admit`]) and holds it.
    pub(crate) async fn take(admission: Arc<Admission>, want: Room) -> Self {
        admission.admit(want).await;
        Self {
            admission,
            room: want,
        }
    }

    /// The room, now the caller's to give back.
    pub(crate) fn into_room(mut self) -> Room {
        std::mem::take(&mut self.room)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.admission.release(self.room);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn queue(messages: u32, bytes: u32) -> Arc<Admission> {
        Arc::new(Admission::new(Room::new(messages, bytes)))
    }

    #[test]
    fn room_is_taken_in_both_units_and_given_back() {
        let q = queue(3, 100);
        assert!(q.try_admit(Room::new(2, 60)));
        assert!(!q.try_admit(Room::new(1, 41)), "41 bytes of 40 left");
        assert!(!q.try_admit(Room::new(2, 1)), "2 messages of 1 left");
        assert!(q.try_admit(Room::new(1, 40)));
        assert_eq!(q.queued(), Room::new(3, 100));
        q.release(Room::new(2, 60));
        assert_eq!(q.queued(), Room::new(1, 40));
        q.release(Room::new(1, 40));
        assert_eq!(q.queued(), Room::ZERO);
    }

    proptest::proptest! {
        /// Any mix of admissions and releases: the queue holds exactly what was taken and not
        /// given back, never more than its capacity in either unit, and admits exactly when
        /// both units have room.
        #[test]
        fn the_queue_holds_what_was_taken(
            cap in (1u32..64, 1u32..4096),
            ops in proptest::collection::vec((proptest::bool::ANY, 0u32..70, 0u32..5000, 0usize..64), 1..200),
        ) {
            let q = Admission::new(Room::new(cap.0, cap.1));
            let mut held: Vec<Room> = Vec::new();
            for (admit, m, b, pick) in ops {
                if admit || held.is_empty() {
                    let want = Room::new(m, b);
                    let (qm, qb) = held.iter().fold((0, 0), |(x, y), r| (x + r.messages(), y + r.bytes()));
                    let fits = qm + m <= cap.0 && qb + b <= cap.1;
                    proptest::prop_assert_eq!(q.try_admit(want), fits);
                    if fits {
                        held.push(want);
                    }
                } else {
                    q.release(held.swap_remove(pick % held.len()));
                }
                let (qm, qb) = held.iter().fold((0, 0), |(x, y), r| (x + r.messages(), y + r.bytes()));
                proptest::prop_assert_eq!(q.queued(), Room::new(qm, qb));
            }
        }
    }

    #[test]
    fn the_largest_bounds_pack_without_carrying() {
        let q = queue(MAX_MESSAGES, MAX_BYTES);
        let all = Room::new(MAX_MESSAGES, MAX_BYTES);
        assert!(q.try_admit(all));
        assert!(!q.try_admit(Room::new(0, 1)));
        assert!(!q.try_admit(Room::new(1, 0)));
        q.release(Room::new(0, MAX_BYTES));
        assert_eq!(q.queued(), Room::new(MAX_MESSAGES, 0));
        q.release(Room::new(MAX_MESSAGES, 0));
        assert_eq!(q.queued(), Room::ZERO);
    }

    #[tokio::test]
    async fn waiters_are_served_in_arrival_order_and_none_is_jumped() {
        let q = queue(4, 1 << 20);
        assert!(q.try_admit(Room::new(4, 0)));
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // A large request first, then small ones: the large one is not starved.
        for (i, n) in [(0, 3), (1, 1), (2, 1)] {
            let (q2, order) = (q.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                q2.admit(Room::new(n, 0)).await;
                order.lock().unwrap().push(i);
            }));
            // Each has queued before the next starts.
            tokio::time::timeout(Duration::from_secs(5), async {
                while q.waiting.load(SeqCst) < i + 1 {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .expect("the waiter queues");
        }
        // Room appears, but a sender arriving now must not take it past the waiters.
        q.release(Room::new(1, 0));
        assert!(!q.try_admit(Room::new(1, 0)));
        q.release(Room::new(3, 0));
        for t in tasks.drain(..1) {
            tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .expect("the large waiter is served")
                .unwrap();
        }
        q.release(Room::new(3, 0));
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .expect("every waiter is served")
                .unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
        assert_eq!(q.queued(), Room::new(2, 0));
    }

    #[tokio::test]
    async fn a_reserved_send_is_not_held_behind_the_queue_and_holds_back_the_fast_path() {
        let q = queue(4, 1000);
        // A reserved place's worth is out, and a queued sender wants every place: only that
        // reserved place could satisfy it.
        assert!(q.try_admit(Room::new(1, 0)));
        let all = tokio::spawn({
            let q = q.clone();
            async move { q.admit(Room::new(4, 0)).await }
        });
        tokio::time::timeout(Duration::from_secs(5), async {
            while q.waiting.load(SeqCst) == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the sender queues");
        // The reserved send's bytes: past the queue, at once and by waiting.
        assert!(!q.try_admit(Room::new(0, 100)));
        assert!(q.try_admit_reserved(Room::new(0, 100)));
        tokio::time::timeout(Duration::from_secs(5), q.admit_reserved(Room::new(0, 900)))
            .await
            .expect("bytes are there: a reserved send does not queue behind the sender");
        // The send completes: its place and bytes come back, and the queued sender is served.
        q.release(Room::new(1, 1000));
        tokio::time::timeout(Duration::from_secs(5), all)
            .await
            .expect("the queued sender is served")
            .unwrap();
        assert_eq!(q.queued(), Room::new(4, 0));
        // A reserved send waiting for bytes counts as waiting: a sender that finds room does
        // not take it past it.
        q.release(Room::new(4, 0));
        assert!(q.try_admit(Room::new(0, 1000)));
        let mut reserved = Box::pin(q.admit_reserved(Room::new(0, 600)));
        assert!(poll_once(reserved.as_mut()).await.is_pending());
        q.release(Room::new(0, 500));
        assert!(
            !q.try_admit(Room::new(0, 100)),
            "the reserved send waits for these"
        );
        q.release(Room::new(0, 500));
        tokio::time::timeout(Duration::from_secs(5), reserved)
            .await
            .expect("the reserved send gets its bytes");
    }

    #[tokio::test]
    async fn an_idle_wait_keeps_nobody_waiting_and_passes_nobody() {
        let q = queue(2, 1000);
        assert!(q.try_admit(Room::new(2, 0)));
        // A wait that is never polled again keeps nobody waiting.
        let mut stale = Box::pin(q.admit_when_idle(Room::new(1, 0)));
        assert!(poll_once(stale.as_mut()).await.is_pending());
        q.release(Room::new(1, 0));
        assert!(
            q.try_admit(Room::new(1, 0)),
            "room is taken past a stale idle wait"
        );
        drop(stale);
        assert_eq!(q.idle_waiting.load(SeqCst), 0);
        // An idle wait does not take room a queued sender waits for.
        let queued = tokio::spawn({
            let q = q.clone();
            async move { q.admit(Room::new(2, 0)).await }
        });
        tokio::time::timeout(Duration::from_secs(5), async {
            while q.waiting.load(SeqCst) == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the sender queues");
        let mut idle = Box::pin(q.admit_when_idle(Room::new(1, 0)));
        assert!(poll_once(idle.as_mut()).await.is_pending());
        q.release(Room::new(1, 0));
        assert!(
            poll_once(idle.as_mut()).await.is_pending(),
            "the queued sender comes first"
        );
        q.release(Room::new(1, 0));
        tokio::time::timeout(Duration::from_secs(5), queued)
            .await
            .expect("the queued sender is served")
            .unwrap();
        q.release(Room::new(1, 0));
        tokio::time::timeout(Duration::from_secs(5), idle)
            .await
            .expect("the idle wait is served once nobody queues");
    }

    /// Polls `f` once.
    async fn poll_once<F: std::future::Future + Unpin>(mut f: F) -> std::task::Poll<F::Output> {
        std::future::poll_fn(|cx| std::task::Poll::Ready(std::pin::Pin::new(&mut f).poll(cx))).await
    }

    #[tokio::test]
    async fn a_cancelled_wait_takes_nothing_and_a_dropped_reservation_gives_back() {
        let q = queue(1, 1 << 20);
        let held = Reservation::take(q.clone(), Room::new(1, 0)).await;
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.admit(Room::new(1, 0)).await }
        });
        tokio::time::timeout(Duration::from_secs(5), async {
            while q.waiting.load(SeqCst) == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the waiter queues");
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        assert_eq!(q.waiting.load(SeqCst), 0);
        drop(held);
        assert_eq!(q.queued(), Room::ZERO);
        // Taken over by a send, a reservation gives nothing back when dropped.
        let r = Reservation::take(q.clone(), Room::new(1, 0)).await;
        let room = r.into_room();
        assert_eq!(q.queued(), Room::new(1, 0));
        q.release(room);
        assert_eq!(q.queued(), Room::ZERO);
    }
}
