//! Counters a transport keeps, and the snapshot it hands out.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// A snapshot of the transport's counters (monotonic unless noted).
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct TransportStats {
            $($(#[$doc])* pub $name: u64,)*
            /// Frames rejected by the decoder, by error class (`bad_magic`, `too_large`, ...).
            pub malformed: BTreeMap<&'static str, u64>,
            /// Time from a frame's write to its ACK or FAIL_ACK, over TCP.
            pub ack_latency: LatencyHistogram,
        }

        #[derive(Default)]
        pub(crate) struct Counters {
            $(pub(crate) $name: AtomicU64,)*
            malformed: Mutex<BTreeMap<&'static str, u64>>,
            pub(crate) ack_latency: Latency,
        }

        impl Counters {
            pub(crate) fn snapshot(&self) -> TransportStats {
                TransportStats {
                    $($name: self.$name.load(Relaxed),)*
                    malformed: self
                        .malformed
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clone(),
                    ack_latency: self.ack_latency.snapshot(),
                }
            }
        }
    };
}

counters! {
    /// Inbound connections accepted.
    connections_accepted,
    /// Inbound connections closed because `max_connections` members' connections were open
    /// (at their hello), or both pools were full (on accept).
    connections_rejected,
    /// Inbound connections open now (a gauge), with or without a hello.
    connections_in,
    /// Inbound connections open now that completed their hello (a gauge; at most
    /// `max_connections`).
    connections_established,
    /// Outbound connections open now (a gauge).
    connections_out,
    /// Outbound connections established.
    connects,
    /// Outbound connection attempts that failed or timed out.
    connect_failures,
    /// Data frames received (TCP and UDP).
    frames_received,
    /// Payload and frame bytes received.
    bytes_received,
    /// Data frames written.
    frames_sent,
    /// Bytes written (data frames).
    bytes_sent,
    /// Write system calls (coalescing shows as frames_sent / writes).
    writes,
    /// ACK frames sent.
    ack_frames_sent,
    /// ACK frames received.
    ack_frames_received,
    /// Messages acknowledged by peers.
    acked,
    /// FAIL_ACKs received.
    fail_acked,
    /// Sends that failed (any cause, per destination).
    send_failures,
    /// Sends refused because the peer's queue was full.
    queue_full,
    /// Sends whose ACK did not come within `send_timeout`.
    ack_timeouts,
    /// Connections closed because a hello or a frame took longer than `frame_timeout`.
    frame_timeouts,
    /// Connections closed for breaking the protocol (data before hello, spoofed sender,
    /// foreign cluster, an unexpected frame kind).
    protocol_violations,
    /// ACK entries naming no message in flight (late or bogus), ignored.
    unknown_acks,
    /// Datagrams received on the UDP data port.
    datagrams_received,
    /// Datagrams dropped (malformed, foreign, or the inbound queue full), and UDP ACKs not
    /// sent because the socket task's ACK queue (`UDP_ACK_QUEUE`) was full.
    datagrams_dropped,
    /// Datagrams sent to the multicast group (the MULTICAST option's data path).
    multicast_sent,
    /// Data frames received from the multicast group (our own looped-back ones excluded).
    multicast_received,
    /// Connection events dropped because the peer-event queue was full.
    peer_events_dropped,
    /// Inbound connections closed on request ([`crate::TransportHandle::close_inbound`]).
    inbound_closed_on_request,
    /// Connections without a hello yet closed to make room for a newer one
    /// (`max_unauthenticated` or `max_unauthenticated_per_source` reached).
    unauthenticated_evicted,
    /// Connections closed because no hello came within `hello_timeout`.
    hello_timeouts,
    /// Keyed connections closed because their hello, though signed with the cluster key, did
    /// not answer the connection's challenge (a recorded hello replayed).
    hello_replays,
    /// Connections closed after `idle_timeout` without a byte.
    idle_closed,
    /// Bytes of received frames held against `max_inbound_bytes` now (a gauge): frames being
    /// read beyond the read buffer, and frames queued for the layer above (the frames of one
    /// read are released together, when the last of them is taken).
    inbound_bytes,
    /// Times a connection paused reading because `max_inbound_bytes` was spent.
    inbound_budget_waits,
}

impl Counters {
    pub(crate) fn malformed(&self, kind: &'static str) {
        *self
            .malformed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(kind)
            .or_default() += 1;
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn dec(counter: &AtomicU64) {
        counter.fetch_sub(1, Relaxed);
    }

    pub(crate) fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Relaxed);
    }
}

impl TransportStats {
    /// All malformed frames, whatever their class.
    pub fn malformed_total(&self) -> u64 {
        self.malformed.values().sum()
    }
}

/// Upper bounds of the ACK latency buckets, in microseconds (the last bucket is unbounded).
pub const ACK_LATENCY_BOUNDS_US: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 5_000_000,
];

/// A latency histogram: how many observations fell at or below each bound.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Count per bucket of [`ACK_LATENCY_BOUNDS_US`] (not cumulative); the extra last entry
    /// counts what was above the last bound.
    pub counts: Vec<u64>,
    /// Sum of all observations, in microseconds.
    pub sum_us: u64,
}

impl LatencyHistogram {
    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

#[derive(Default)]
pub(crate) struct Latency {
    counts: [AtomicU64; ACK_LATENCY_BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

/// The bucket of `d`, and `d` in microseconds.
fn bucket(d: std::time::Duration) -> (usize, u64) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    (ACK_LATENCY_BOUNDS_US.partition_point(|b| *b < us), us)
}

/// Latencies observed by one task and added to a [`Latency`] together: one atomic add per
/// bucket touched, not two per observation (a lane completes the messages of an ACK frame
/// at once).
#[derive(Default)]
pub(crate) struct LatencyBatch {
    counts: [u64; ACK_LATENCY_BOUNDS_US.len() + 1],
    sum_us: u64,
}

impl LatencyBatch {
    pub(crate) fn observe(&mut self, d: std::time::Duration) {
        let (i, us) = bucket(d);
        self.counts[i] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// Adds what was observed to `to`, and starts over.
    pub(crate) fn add_to(&mut self, to: &Latency) {
        for (c, n) in to.counts.iter().zip(&mut self.counts) {
            if *n > 0 {
                c.fetch_add(std::mem::take(n), Relaxed);
            }
        }
        if self.sum_us > 0 {
            to.sum_us
                .fetch_add(std::mem::take(&mut self.sum_us), Relaxed);
        }
    }
}

impl Latency {
    fn snapshot(&self) -> LatencyHistogram {
        LatencyHistogram {
            counts: self.counts.iter().map(|c| c.load(Relaxed)).collect(),
            sum_us: self.sum_us.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_latency_batch_adds_each_observation_once() {
        let l = Latency::default();
        let mut b = LatencyBatch::default();
        for us in [50, 99, 300, 7_000_000] {
            b.observe(Duration::from_micros(us));
        }
        b.add_to(&l);
        // Added once: a second add has nothing left to add.
        b.add_to(&l);
        b.observe(Duration::from_micros(60));
        b.add_to(&l);
        let h = l.snapshot();
        assert_eq!(h.count(), 5);
        assert_eq!(h.counts[0], 3, "three at or below 100 µs");
        assert_eq!(h.counts[2], 1, "one at or below 500 µs");
        assert_eq!(
            h.counts[ACK_LATENCY_BOUNDS_US.len()],
            1,
            "one above the last bound"
        );
        assert_eq!(h.sum_us, 50 + 99 + 300 + 7_000_000 + 60);
    }
}
