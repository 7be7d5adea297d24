//! One outbound connection's in-flight table.

use std::collections::VecDeque;

use std::time::{Duration, Instant};

use cohort_wire::AckFrame;

/// How a message in flight ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// ACKed.
    Acked,
    /// FAIL_ACKed with this reason.
    FailAck(String),
    /// No ACK within the send timeout.
    Timeout,
    /// The connection closed first (the reason), or the id was reused.
    Lost(String),
}

/// A message whose fate is known: its token, the outcome, and (for an answer from the peer)
/// the time from its registration to the answer.
#[derive(Debug)]
pub(crate) struct Completed<C> {
    pub(crate) token: C,
    pub(crate) outcome: Outcome,
    pub(crate) latency: Option<Duration>,
}

/// The messages written on one connection and waiting for their ACK.
///
/// Invariant: every token registered comes out of [`Outbound::poll_completed`] exactly once,
/// with one outcome.
///
/// The table is a queue in id order. A connection's ids arrive in increasing order (the
/// channel numbers its messages, and a connection writes them in its queue's order), so a
/// registration is a push at the back, an ACK of the oldest messages pops them from the
/// front, and any id is found by binary search: no hashing, and memory walked in order. An id
/// out of order (a caller of the transport's own) is inserted in its place. A completed
/// message leaves a hole where it was, dropped once it reaches the front, or all at once
/// when holes outnumber the messages in flight (bounded memory behind a slow head). An ACK
/// frame's ranges are walked in id order with one cursor, so a frame visits each slot at
/// most once, however many ranges it names.
#[derive(Debug)]
pub(crate) struct Outbound<C> {
    /// By id, ascending; `token` is `None` once the message completed (a hole).
    slots: VecDeque<Slot<C>>,
    /// Slots whose token is still there.
    live: usize,
    /// (deadline, id, registration), in registration order; deadlines grow with it (one
    /// timeout for all). The registration number tells a reused id's deadline from its
    /// predecessor's.
    deadlines: VecDeque<(Instant, u64, u64)>,
    /// Registrations so far.
    registered: u64,
    done: VecDeque<Completed<C>>,
    closed: Option<String>,
    max_in_flight: usize,
    send_timeout: Duration,
    /// ACK entries that named nothing in flight.
    unknown_acks: u64,
}

/// One message in flight, or the hole it left.
#[derive(Debug)]
struct Slot<C> {
    id: u64,
    /// Which registration it is (see `deadlines`).
    seq: u64,
    /// When it was registered (its answer's latency is measured from here).
    at: Instant,
    token: Option<C>,
}

impl<C> Outbound<C> {
    /// An empty table holding at most `max_in_flight` messages, each for `send_timeout`.
    pub(crate) fn new(max_in_flight: usize, send_timeout: Duration) -> Self {
        Self {
            slots: VecDeque::new(),
            live: 0,
            deadlines: VecDeque::new(),
            registered: 0,
            done: VecDeque::new(),
            closed: None,
            max_in_flight: max_in_flight.max(1),
            send_timeout,
            unknown_acks: 0,
        }
    }

    /// How many more messages may be registered now.
    pub(crate) fn room(&self) -> usize {
        if self.closed.is_some() {
            return 0;
        }
        self.max_in_flight.saturating_sub(self.live)
    }

    /// Messages waiting for their ACK.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Slots kept, holes included.
    #[cfg(test)]
    pub(crate) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// True when nothing waits for an ACK.
    pub(crate) fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// True once [`Outbound::close`] was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// ACK entries so far that named nothing in flight (late, duplicate or bogus).
    pub(crate) fn unknown_acks(&self) -> u64 {
        self.unknown_acks
    }

    /// Where `id` is, or would go.
    fn find(&self, id: u64) -> Result<usize, usize> {
        // The common case first: the next id after the newest.
        match self.slots.back() {
            None => Err(0),
            Some(last) if last.id < id => Err(self.slots.len()),
            _ => self.slots.binary_search_by_key(&id, |s| s.id),
        }
    }

    /// A message written at `now` that waits for its ACK. On a closed table it completes at
    /// once as lost; an id already in flight completes the older message as lost.
    pub(crate) fn register(&mut self, now: Instant, msg_id: u64, token: C) {
        if let Some(reason) = &self.closed {
            let outcome = Outcome::Lost(reason.clone());
            self.done.push_back(Completed {
                token,
                outcome,
                latency: None,
            });
            return;
        }
        self.registered += 1;
        let seq = self.registered;
        match self.find(msg_id) {
            Ok(i) => {
                let slot = &mut self.slots[i];
                slot.at = now;
                slot.seq = seq;
                match slot.token.replace(token) {
                    Some(old) => self.done.push_back(Completed {
                        token: old,
                        outcome: Outcome::Lost("message id reused while in flight".into()),
                        latency: None,
                    }),
                    None => self.live += 1,
                }
            }
            Err(i) => {
                let slot = Slot {
                    id: msg_id,
                    seq,
                    at: now,
                    token: Some(token),
                };
                if i == self.slots.len() {
                    self.slots.push_back(slot);
                } else {
                    self.slots.insert(i, slot);
                }
                self.live += 1;
            }
        }
        self.deadlines
            .push_back((now + self.send_timeout, msg_id, seq));
    }

    /// Completes the message in slot `i`, if it is still in flight.
    fn finish_at(&mut self, now: Instant, i: usize, outcome: Outcome) -> bool {
        let slot = &mut self.slots[i];
        let Some(token) = slot.token.take() else {
            return false;
        };
        self.live -= 1;
        self.done.push_back(Completed {
            token,
            outcome,
            latency: Some(now.saturating_duration_since(slot.at)),
        });
        true
    }

    fn finish(&mut self, now: Instant, id: u64, outcome: Outcome) -> bool {
        match self.find(id) {
            Ok(i) => self.finish_at(now, i, outcome),
            Err(_) => false,
        }
    }

    /// An ACK frame read at `now`.
    pub(crate) fn on_ack(&mut self, now: Instant, ack: &AckFrame) {
        let mut ranges: Vec<(u64, u64)> = ack.acked.iter().map(|r| (r.first, r.last)).collect();
        // A peer's ranges come sorted and apart; any others are put so (at most
        // `max_ack_entries` of them, bounded by the decoder).
        if ranges.windows(2).any(|w| w[0].1 >= w[1].0) {
            ranges.sort_unstable();
        }
        // One cursor for the whole frame: a slot is visited at most once.
        let mut i = 0;
        for (first, last) in ranges {
            if self.slots.get(i).is_some_and(|s| s.id < first) {
                // Past the slots before the range (a binary search; never backwards, so
                // overlapping ranges visit nothing twice).
                i = i.max(self.slots.partition_point(|s| s.id < first));
            }
            let mut matched = 0u64;
            while i < self.slots.len() && self.slots[i].id <= last {
                if self.finish_at(now, i, Outcome::Acked) {
                    matched += 1;
                }
                i += 1;
            }
            // Ids the range names that were not in flight (a range larger than the table is
            // not counted id by id).
            let span = last.saturating_sub(first).saturating_add(1);
            if span <= self.max_in_flight as u64 {
                self.unknown_acks += span.saturating_sub(matched);
            }
        }
        for fail in &ack.failed {
            if !self.finish(now, fail.msg_id, Outcome::FailAck(fail.reason.clone())) {
                self.unknown_acks += 1;
            }
        }
        self.compact();
    }

    /// Drops holes and dead deadlines from the front, and sweeps all holes out when they
    /// outnumber what is in flight (bounded memory behind a slow head; amortized, as each
    /// sweep removes more holes than it leaves slots).
    fn compact(&mut self) {
        while self.slots.front().is_some_and(|s| s.token.is_none()) {
            self.slots.pop_front();
        }
        while let Some(&(_, id, seq)) = self.deadlines.front() {
            if self.is_live(id, seq) {
                break;
            }
            self.deadlines.pop_front();
        }
        if self.slots.len() - self.live > self.live.max(64) {
            self.slots.retain(|s| s.token.is_some());
        }
        if self.deadlines.len() - self.live > self.live.max(64) {
            let slots = &self.slots;
            self.deadlines
                .retain(|&(_, id, seq)| in_flight(slots, id, seq));
        }
    }

    /// Whether registration `seq` of `id` is still in flight.
    fn is_live(&self, id: u64, seq: u64) -> bool {
        in_flight(&self.slots, id, seq)
    }

    /// Expires messages whose deadline is at or before `now`; true when any did (the driver
    /// then closes the connection: a peer that does not answer in time is not trusted with
    /// more).
    pub(crate) fn on_timeout(&mut self, now: Instant) -> bool {
        let mut any = false;
        while let Some(&(deadline, id, seq)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if self.is_live(id, seq) {
                any |= self.finish(now, id, Outcome::Timeout);
            }
        }
        self.compact();
        any
    }

    /// When [`Outbound::on_timeout`] should next be called.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines
            .iter()
            .find(|&&(_, id, seq)| self.is_live(id, seq))
            .map(|&(d, _, _)| d)
    }

    /// The connection is gone: everything in flight, and everything registered later, is lost
    /// with `reason` (the first reason given stays).
    pub(crate) fn close(&mut self, reason: &str) {
        let reason = self.closed.get_or_insert_with(|| reason.to_owned()).clone();
        self.deadlines.clear();
        self.live = 0;
        for token in self.slots.drain(..).filter_map(|s| s.token) {
            self.done.push_back(Completed {
                token,
                outcome: Outcome::Lost(reason.clone()),
                latency: None,
            });
        }
    }

    /// The next message whose fate is known.
    pub(crate) fn poll_completed(&mut self) -> Option<Completed<C>> {
        self.done.pop_front()
    }
}

/// Whether registration `seq` of `id` is still in flight in `slots` (sorted by id). The oldest
/// slot is looked at first: an id below it is gone, and the oldest is usually the one asked
/// for (one comparison).
fn in_flight<C>(slots: &VecDeque<Slot<C>>, id: u64, seq: u64) -> bool {
    let live = |s: &Slot<C>| s.seq == seq && s.token.is_some();
    match slots.front() {
        None => false,
        Some(first) if id < first.id => false,
        Some(first) if id == first.id => live(first),
        Some(_) => slots
            .binary_search_by_key(&id, |s| s.id)
            .is_ok_and(|i| live(&slots[i])),
    }
}
