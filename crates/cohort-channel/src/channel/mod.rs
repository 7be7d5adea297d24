//! `GroupChannel`: assembles transport, membership and pipeline, and runs them.
//!
//! - `config`: [`ChannelConfig`], [`ChannelError`], [`MembershipSetup`];
//! - `builder`: [`GroupChannel`], [`ChannelBuilder`] (starts the owner task);
//! - `handle`: [`ChannelHandle`], the application's side;
//! - `owner`: the owner task, sole holder of the pipeline;
//! - `completion`: a failed send becomes a suspicion of its destination;
//! - `inbound`: received frames as the pipeline's input;
//! - `pending`: a drain's data frames grouped by destination, handed to the transport
//!   together;
//! - `delivery`: the delivery thread where listeners run (or the owner task, while there is
//!   no cluster listener and every channel and RPC listener says it never blocks);
//! - `probes`: failure detectors' probes, carried out by the transport;
//! - `stats`: [`ChannelStats`] and the per-mode counters;
//! - `tasks`: the tasks the channel starts outside its owner (RPC replies that wait for room,
//!   asynchronous handlers' answers, "no RPC channel" answers), bounded, and aborted by the
//!   last stop.

mod builder;
mod completion;
mod config;
mod delivery;
mod handle;
mod inbound;
mod owner;
mod pending;
mod probes;
mod stats;
mod tasks;

pub use builder::{ChannelBuilder, CustomTransport, GroupChannel};
pub use config::{AsyncFullPolicy, ChannelConfig, ChannelError, MembershipSetup};
pub(crate) use handle::Claimed;
pub use handle::{ChannelHandle, MAX_BATCH, ViewEvent};
pub use stats::{ChannelStats, Mode, ModeStats};
