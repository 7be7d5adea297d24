//! The transport's protocol decisions, without IO: what is in flight on a connection, which
//! ACK completes what, when a message has waited too long, what a closed connection fails.
//! Drivers (`sender.rs`) own one core per connection in one task, feed it what they read and
//! the time, and carry out what it says. No clock, no sockets, no tokio.

mod outbound;

pub(crate) use outbound::{Outbound, Outcome};

#[cfg(test)]
mod tests;
