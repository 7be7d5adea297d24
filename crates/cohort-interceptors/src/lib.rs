//! Cohort's interceptors: one module per interceptor, each a sans-IO [`Interceptor`] with its
//! own config struct (Tribes' defaults where Tribes has one), stats, and tests on the pipeline.
//!
//! | module | `type` in `[[interceptor]]` | what it does |
//! |---|---|---|
//! | [`failure_detector`] | `tcp_failure_detector` | confirms failures over TCP; a killed process is failed in milliseconds |
//! | [`ping`] | `tcp_ping` | keeps connections open and feeds the detector |
//! | [`dispatch`] | `message_dispatch` | the ASYNCHRONOUS queue's bounds and full policy |
//! | [`order`] | `order` | per-sender FIFO for messages that ask for it |
//! | [`fragmentation`] | `fragmentation` | splits and reassembles large messages |
//! | [`compression`] | `compression` | gzip or zstd |
//! | [`encryption`] | `encryption` | AEAD with authenticated header, replay window, key ring |
//! | [`domain`] | `domain_filter` | only the same domain passes |
//! | [`static_members`] | `static_membership` | members from configuration |
//! | [`throughput`] | `throughput` | message and byte rates |
//! | [`coordinator`] | `coordinator` | agreed coordinator, view ids, singleton duties |
//! | [`throttle`] | `throttle` | per-connection limits, Tigase-style spec |
//! | [`two_phase`] | `two_phase_commit` | delivery on commit |
//!
//! [`build_stack`] turns a list of [`InterceptorConfig`] into interceptors, refusing stacks
//! that cannot work. Extension tags and option bits are listed in docs/PROTOCOL.md §2.6.
//!
//! ```
//! use std::sync::{Arc, atomic::AtomicU64};
//! use std::time::Instant;
//! use bytes::Bytes;
//! use cohort_channel::{ChannelConfig, Outbound, Output, Pipeline, SendOptions, Ticket};
//! use cohort_interceptors::{InterceptorConfig, build_stack, fragmentation::FragmentationConfig};
//! use cohort_wire::{Member, MemberId};
//!
//! let stack = [InterceptorConfig::Fragmentation(FragmentationConfig { max_size: 1000, ..Default::default() })];
//! let mut channel = ChannelConfig::default();
//! let built = build_stack(&stack, &mut channel, &mut rand::rngs::OsRng).unwrap();
//! let mut pipeline = Pipeline::new(built.interceptors, 1024, Arc::new(AtomicU64::new(0)));
//! let to = Member::new(MemberId::from_bytes([2; 16]), "127.0.0.1".parse().unwrap(), 4001);
//! pipeline.send(Instant::now(), Outbound {
//!     msg_id: 1, destinations: Arc::from([to]), options: SendOptions::USE_ACK, seq: 0,
//!     extensions: Vec::new(), payload: Bytes::from(vec![0u8; 2500]), ticket: Ticket(1),
//! });
//! let mut frames = 0;
//! while let Some(out) = pipeline.poll_output() {
//!     if let Output::Transmit(_) = out { frames += 1; }
//! }
//! assert_eq!(frames, 3);
//! assert!(cohort_interceptors::validate_stack(&[
//!     InterceptorConfig::TcpFailureDetector(Default::default()),
//!     InterceptorConfig::TcpFailureDetector(Default::default()),
//! ]).is_err());
//! ```

pub mod compression;
pub mod coordinator;
pub mod dispatch;
pub mod domain;
pub mod encryption;
pub mod failure_detector;
pub mod fragmentation;
pub mod order;
pub mod ping;
mod stack;
pub mod static_members;
pub mod throttle;
pub mod throughput;
pub mod two_phase;
mod util;

#[cfg(test)]
mod testing;

pub use cohort_channel::Interceptor;
pub use stack::{
    BuiltStack, InterceptorConfig, StackError, StackExt, StackHandles, build_stack, default_stack,
    validate_stack,
};

/// An interceptor configuration value out of its bounds: which key, and why. Every
/// `*Config::validate` and constructor returns it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    /// The key, as in the node's `[[interceptor]]` table (`keys[0].key`, `max_size`, ...).
    pub key: String,
    /// What is wrong.
    pub reason: String,
}
