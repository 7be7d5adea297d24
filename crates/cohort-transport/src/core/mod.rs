//! The transport's protocol decisions, without IO:
//! - outbound (`outbound.rs`): what is in flight on a connection, which ACK completes what,
//!   when a message has waited too long, what a closed connection fails;
//! - inbound (`inbound.rs`): a connection's handshake stage (hello, keyed binding), which
//!   frames it may send, who it is, which deadline runs;
//! - connecting and batching (`connect.rs`): a peer's back-off after failed connects, the
//!   pauses between a round's attempts, how much of the queue one write takes.
//!
//! Drivers (`sender/lane.rs`, `receiver.rs`) own one core per connection in one task, feed
//! it what they read and the time, and carry out what it says. No clock, no sockets, no
//! tokio.

mod connect;
mod inbound;
mod outbound;

pub(crate) use connect::{Backoff, WriteBatch, retry_pause};
pub(crate) use inbound::{InboundConn, Refusal, Stage, Timeouts};
pub(crate) use outbound::{Completed, Outbound, Outcome};

#[cfg(test)]
mod tests;
