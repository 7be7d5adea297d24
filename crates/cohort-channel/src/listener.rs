//! What applications plug into a channel: message listeners and cluster listeners (the error
//! handler, which learns how sends ended, is with the receipts in `receipt.rs`).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use cohort_wire::{Member, MemberId, SendOptions};

/// A received message, as listeners see it.
#[derive(Clone, Debug)]
pub struct ChannelMessage {
    /// Sender id.
    pub from: MemberId,
    /// The sender's member record when known.
    pub member: Option<Arc<Member>>,
    /// The sender's socket address.
    pub peer: SocketAddr,
    /// Sender's message id.
    pub msg_id: u64,
    /// Options as sent.
    pub options: SendOptions,
    /// Sender's wall clock when sent.
    pub timestamp_ms: u64,
    /// The payload.
    pub payload: Bytes,
}

/// The error a listener returns; under USE_ACK | SYNCHRONIZED_ACK the sender gets FAIL_ACK
/// with its text.
pub type ListenerError = Box<dyn std::error::Error + Send + Sync>;

/// Receives messages (Tribes' `ChannelListener`). Every listener whose [`accept`] is true gets
/// each message, in registration order: return promptly.
///
/// Where it runs: on the channel's delivery thread, a thread of its own, so that a listener
/// may block (wait on a lock, a file, a `blocking_recv`) without stalling the runtime. When
/// every listener of the channel says it never blocks ([`may_block`] false), the channel
/// runs them on its own task instead, as Tribes runs its listeners on the thread that read
/// the frame: no hand-over to another thread, no thread woken per batch (a quarter of a
/// receiving process's CPU at 1 KiB messages, docs/BENCHMARKS.md).
///
/// [`accept`]: ChannelListener::accept
/// [`may_block`]: ChannelListener::may_block
pub trait ChannelListener: Send + Sync + 'static {
    /// Whether this listener wants `msg`. Default: every message.
    fn accept(&self, msg: &ChannelMessage) -> bool {
        let _ = msg;
        true
    }

    /// Handles `msg`; an error becomes FAIL_ACK for synchronized-ACK senders.
    fn message_received(&self, msg: &ChannelMessage) -> Result<(), ListenerError>;

    /// Whether [`accept`] or [`message_received`] may block the thread it runs on: wait for
    /// a lock another thread holds long, for IO, for a channel, or call a `blocking_*`
    /// function or `block_on`. Default true: the listener runs on the delivery thread.
    ///
    /// Say false only for a listener that does bounded work without waiting: counts,
    /// updates a map under a short lock, hands the message to a non-blocking queue
    /// (`try_send`, an unbounded sender). When every listener (and every RPC channel's) says
    /// false, and the channel has no [`ClusterListener`], messages are delivered on the
    /// channel's task, which reads the transport and
    /// sends; a listener that blocks there stalls the channel, and on a one-thread runtime
    /// everything else. A listener added later that may block moves delivery back to the
    /// delivery thread, in order.
    ///
    /// [`accept`]: ChannelListener::accept
    /// [`message_received`]: ChannelListener::message_received
    fn may_block(&self) -> bool {
        true
    }
}

/// Observes every message the channel sends and receives (Tribes' `ClusterListener`, seed
/// 003): for metrics, audits, debugging. `message_sent` runs on the sending task,
/// `message_received` on the delivery thread just before the channel listeners: keep both
/// cheap. A channel with a cluster listener always delivers on its delivery thread.
pub trait ClusterListener: Send + Sync + 'static {
    /// A message left through the channel (after the application handed it over).
    fn message_sent(&self, to: &[Member], payload: &Bytes, options: SendOptions) {
        let _ = (to, payload, options);
    }

    /// A message arrived (before the channel listeners).
    fn message_received(&self, msg: &ChannelMessage) {
        let _ = msg;
    }
}
