//! What applications plug into a channel: message listeners, cluster listeners, error handlers.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use cohort_wire::{Member, MemberId, SendOptions};

use crate::receipt::SendOutcome;

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
/// each message, in registration order, on the channel's delivery task: return promptly.
///
/// [`accept`]: ChannelListener::accept
pub trait ChannelListener: Send + Sync + 'static {
    /// Whether this listener wants `msg`. Default: every message.
    fn accept(&self, msg: &ChannelMessage) -> bool {
        let _ = msg;
        true
    }

    /// Handles `msg`; an error becomes FAIL_ACK for synchronized-ACK senders.
    fn message_received(&self, msg: &ChannelMessage) -> Result<(), ListenerError>;
}

/// Observes every message the channel sends and receives (Tribes' `ClusterListener`, seed
/// 003): for metrics, audits, debugging. Called on the owner task: keep it cheap.
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
