//! One outbound connection's in-flight table.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;
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
#[derive(Debug)]
pub(crate) struct Outbound<C> {
    /// By message id (ids are this member's own, so a fast hash is safe).
    map: FxHashMap<u64, (C, Instant)>,
    /// (deadline, id), in registration order; deadlines grow with it (one timeout for all).
    deadlines: VecDeque<(Instant, u64)>,
    done: VecDeque<Completed<C>>,
    closed: Option<String>,
    max_in_flight: usize,
    send_timeout: Duration,
    /// ACK entries that named nothing in flight.
    unknown_acks: u64,
}

impl<C> Outbound<C> {
    /// An empty table holding at most `max_in_flight` messages, each for `send_timeout`.
    pub(crate) fn new(max_in_flight: usize, send_timeout: Duration) -> Self {
        Self {
            map: FxHashMap::default(),
            deadlines: VecDeque::new(),
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
        self.max_in_flight.saturating_sub(self.map.len())
    }

    /// Messages waiting for their ACK.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing waits for an ACK.
    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// True once [`Outbound::close`] was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// ACK entries so far that named nothing in flight (late, duplicate or bogus).
    pub(crate) fn unknown_acks(&self) -> u64 {
        self.unknown_acks
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
        if let Some((old, _)) = self.map.insert(msg_id, (token, now)) {
            self.done.push_back(Completed {
                token: old,
                outcome: Outcome::Lost("message id reused while in flight".into()),
                latency: None,
            });
        }
        self.deadlines.push_back((now + self.send_timeout, msg_id));
    }

    fn finish(&mut self, now: Instant, id: u64, outcome: Outcome) -> bool {
        match self.map.remove(&id) {
            Some((token, at)) => {
                self.done.push_back(Completed {
                    token,
                    outcome,
                    latency: Some(now.saturating_duration_since(at)),
                });
                true
            }
            None => false,
        }
    }

    /// An ACK frame read at `now`.
    pub(crate) fn on_ack(&mut self, now: Instant, ack: &AckFrame) {
        for range in &ack.acked {
            let span = range.last.saturating_sub(range.first);
            if span < self.map.len() as u64 {
                for id in range.first..=range.last {
                    if !self.finish(now, id, Outcome::Acked) {
                        self.unknown_acks += 1;
                    }
                }
            } else {
                // A huge range (or a bogus one) is matched against what is in flight, so its
                // size costs nothing.
                let ids: Vec<u64> = self
                    .map
                    .keys()
                    .copied()
                    .filter(|id| range.contains(*id))
                    .collect();
                for id in ids {
                    self.finish(now, id, Outcome::Acked);
                }
            }
        }
        for fail in &ack.failed {
            if !self.finish(now, fail.msg_id, Outcome::FailAck(fail.reason.clone())) {
                self.unknown_acks += 1;
            }
        }
        self.compact();
    }

    /// Drops deadlines of completed messages from the front, and compacts the queue when
    /// completed entries pile up behind a slow head (bounded memory).
    fn compact(&mut self) {
        while let Some(&(_, id)) = self.deadlines.front() {
            if self.map.contains_key(&id) {
                break;
            }
            self.deadlines.pop_front();
        }
        if self.deadlines.len() > 2 * self.max_in_flight {
            let map = &self.map;
            self.deadlines.retain(|(_, id)| map.contains_key(id));
        }
    }

    /// Expires messages whose deadline is at or before `now`; true when any did (the driver
    /// then closes the connection: a peer that does not answer in time is not trusted with
    /// more).
    pub(crate) fn on_timeout(&mut self, now: Instant) -> bool {
        let mut any = false;
        while let Some(&(deadline, id)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            any |= self.finish(now, id, Outcome::Timeout);
        }
        self.compact();
        any
    }

    /// When [`Outbound::on_timeout`] should next be called.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines
            .iter()
            .find(|(_, id)| self.map.contains_key(id))
            .map(|(d, _)| *d)
    }

    /// The connection is gone: everything in flight, and everything registered later, is lost
    /// with `reason` (the first reason given stays).
    pub(crate) fn close(&mut self, reason: &str) {
        let reason = self.closed.get_or_insert_with(|| reason.to_owned()).clone();
        self.deadlines.clear();
        for (_, (token, _)) in self.map.drain() {
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
