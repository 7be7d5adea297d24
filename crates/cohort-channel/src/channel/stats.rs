//! Counters of a channel, by mode.

use std::sync::atomic::{AtomicU64, Ordering};

use cohort_transport::TransportStats;
use cohort_wire::SendOptions;

#[derive(Default)]
pub(super) struct ChannelCounters {
    pub(super) sent: AtomicU64,
    pub(super) received: AtomicU64,
    pub(super) delivered: AtomicU64,
    pub(super) delivered_inline: AtomicU64,
    pub(super) listener_errors: AtomicU64,
    pub(super) encode_failures: AtomicU64,
    pub(super) no_listener: AtomicU64,
    pub(super) unknown_sender_dropped: AtomicU64,
    pub(super) membership_lagged: AtomicU64,
    pub(super) control_dropped: AtomicU64,
    pub(super) untransformed_dropped: AtomicU64,
    pub(super) suspicions_dropped: AtomicU64,
    pub(super) tasks_refused: AtomicU64,
    pub(super) by_mode: [ModeCounters; 4],
}

#[derive(Default)]
pub(super) struct ModeCounters {
    pub(super) sent: AtomicU64,
    pub(super) sent_bytes: AtomicU64,
    pub(super) received: AtomicU64,
    pub(super) received_bytes: AtomicU64,
}

/// The delivery mode of a message, as operators count them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// ASYNCHRONOUS: queued, completed when written.
    Async,
    /// USE_ACK | SYNCHRONIZED_ACK: acknowledged after the receiver's listeners ran.
    SyncAck,
    /// USE_ACK: acknowledged on receipt.
    Ack,
    /// Neither: completed when written.
    Plain,
}

impl Mode {
    /// Every mode, in the order of [`ChannelStats::by_mode`].
    pub const ALL: [Mode; 4] = [Mode::Async, Mode::SyncAck, Mode::Ack, Mode::Plain];

    /// The mode of a message sent with `options`.
    pub fn of(options: SendOptions) -> Self {
        if options.contains(SendOptions::ASYNCHRONOUS) {
            Self::Async
        } else if options.contains(SendOptions::USE_ACK.union(SendOptions::SYNCHRONIZED_ACK)) {
            Self::SyncAck
        } else if options.contains(SendOptions::USE_ACK) {
            Self::Ack
        } else {
            Self::Plain
        }
    }

    /// A stable label: `async`, `sync_ack`, `ack`, `plain`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Async => "async",
            Self::SyncAck => "sync_ack",
            Self::Ack => "ack",
            Self::Plain => "plain",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// Messages and payload bytes of one [`Mode`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModeStats {
    /// Application messages sent (accepted by `send`).
    pub sent: u64,
    /// Their payload bytes.
    pub sent_bytes: u64,
    /// Messages received from the transport or multicast.
    pub received: u64,
    /// Their payload bytes.
    pub received_bytes: u64,
}

impl ChannelCounters {
    pub(super) fn count(&self, options: SendOptions, len: usize, sent: bool) {
        let m = &self.by_mode[Mode::of(options).index()];
        let (n, bytes) = if sent {
            (&m.sent, &m.sent_bytes)
        } else {
            (&m.received, &m.received_bytes)
        };
        n.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(len as u64, Ordering::Relaxed);
    }
}

/// Counters of a channel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelStats {
    /// Application messages accepted by `send`.
    pub sent: u64,
    /// Messages received from the transport (and multicast).
    pub received: u64,
    /// Messages handed to listeners.
    pub delivered: u64,
    /// Of those, the ones whose listeners ran on the channel's task, not the delivery thread
    /// (every listener said it never blocks: `ChannelListener::may_block`).
    pub delivered_inline: u64,
    /// Listener calls that returned an error.
    pub listener_errors: u64,
    /// Messages no listener accepted.
    pub no_listener: u64,
    /// Frames that could not be encoded (an interceptor grew one past the limits).
    pub encode_failures: u64,
    /// Datagrams (UDP, multicast) from a sender not in view, dropped.
    pub unknown_sender_dropped: u64,
    /// Times the membership event stream lagged (events were missed; the view is current).
    pub membership_lagged: u64,
    /// Control messages (pings, probes, notices) that reached the top of the stack with no
    /// interceptor to consume them: dropped.
    pub control_dropped: u64,
    /// Messages still carrying a transformation no interceptor here undid (fragment,
    /// compression, encryption): the sender's stack differs; dropped, FAIL_ACK if asked.
    pub untransformed_dropped: u64,
    /// Suspicions (failed sends, lost connections) dropped because the command queue was full.
    pub suspicions_dropped: u64,
    /// RPC replies and answers not started because the channel already ran its most tasks
    /// (4,096): dropped, so their callers time out (a peer that sends requests and never
    /// reads the replies cannot grow this node's memory).
    pub tasks_refused: u64,
    /// ASYNCHRONOUS messages queued now.
    pub async_queued: usize,
    /// Bytes of ASYNCHRONOUS messages queued now.
    pub async_queued_bytes: usize,
    /// Messages and bytes by mode, in the order of [`Mode::ALL`].
    pub by_mode: [ModeStats; 4],
    /// The transport's counters.
    pub transport: TransportStats,
}
