//! Channel settings, errors, and the membership set-up.

use std::net::SocketAddr;
use std::time::Duration;

use cohort_membership::{MembershipConfig, MulticastConfig, StaticPeer};

/// Channel settings (the `[channel]` table of the node's file).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct ChannelConfig {
    /// Period of the heartbeat that reaches every interceptor and closes connections to
    /// departed members. Default 5 s (Tribes' `heartbeatSleeptime`).
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "cohort_wire::serde_ms::duration")
    )]
    pub heartbeat_interval: Duration,
    /// Bytes of ASYNCHRONOUS messages queued and not yet completed; a send beyond it waits
    /// (backpressure). Default 64 MiB (Tribes' `maxQueueSize`). A message larger than the
    /// whole budget waits for the queue to empty, then takes all of it. While more than 1 MiB
    /// is queued, ASYNCHRONOUS sends yield to the runtime once per 64 KiB sent: on a one-thread
    /// runtime (the node's default) the channel's task and its connections then write what is
    /// queued while it is still in the CPU's caches. A queue that cannot drain (a stalled
    /// member) still fills to this bound; a bound of 1 MiB or less never paces. A sender of
    /// batches (`send_many`) that outruns its peers keeps the queue full, and each payload is
    /// written this many bytes after it was made, out of the caches: for it a few MiB is
    /// faster (2 MiB: about a tenth, in docs/BENCHMARKS.md).
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "cohort_wire::serde_ms::size")
    )]
    pub async_queue_bytes: usize,
    /// ASYNCHRONOUS messages queued and not yet completed; a send beyond it waits. Default
    /// 65,536.
    pub async_queue_messages: usize,
    /// Commands from handles to the channel task (sends wait when full). Default 1024.
    pub command_queue: usize,
    /// Received messages waiting for the listeners; when full, the transport stops reading
    /// (backpressure to the senders). Default 8192.
    pub delivery_queue: usize,
    /// Pipeline work items per input (see `Pipeline`); beyond, work is dropped and counted.
    /// Default 65,536.
    pub max_pipeline_work: usize,
    /// Refuse to start when two interceptors' option masks overlap (Tribes' `optionCheck`).
    /// Default false.
    pub option_check: bool,
    /// On `stop`, how long queued ASYNCHRONOUS messages get to complete. Default 5 s.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "cohort_wire::serde_ms::duration")
    )]
    pub drain_timeout: Duration,
    /// What an ASYNCHRONOUS send does when the queue is full. Default
    /// [`AsyncFullPolicy::Block`].
    pub async_full_policy: AsyncFullPolicy,
}

/// What an ASYNCHRONOUS send does when the queue is full (Tribes' `alwaysSend` sent
/// synchronously instead; that loses the order and the caller's budget, so it is not offered).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum AsyncFullPolicy {
    /// Wait for room (backpressure).
    #[default]
    Block,
    /// Fail at once with [`ChannelError::QueueFull`].
    Reject,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(5),
            async_queue_bytes: 64 * 1024 * 1024,
            async_queue_messages: 65_536,
            command_queue: 1024,
            delivery_queue: 8192,
            max_pipeline_work: 65_536,
            option_check: false,
            drain_timeout: Duration::from_secs(5),
            async_full_policy: AsyncFullPolicy::Block,
        }
    }
}

/// Why a channel could not start, or a send was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// A setting is out of range; the message names it.
    #[error("channel.{key}: {reason}")]
    Config {
        /// The key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Two interceptors claim overlapping option bits (with `option_check`).
    #[error("interceptors {a} and {b} have overlapping option masks ({mask:#x})")]
    OptionOverlap {
        /// First interceptor.
        a: &'static str,
        /// Second interceptor.
        b: &'static str,
        /// The overlap.
        mask: u32,
    },
    /// The transport could not start.
    #[error(transparent)]
    Transport(#[from] cohort_transport::StartError),
    /// Membership could not start.
    #[error(transparent)]
    Membership(#[from] cohort_membership::StartError),
    /// The wire settings are invalid.
    #[error(transparent)]
    Wire(#[from] cohort_wire::ConfigError),
    /// A send named no destination.
    #[error("no destinations")]
    NoDestinations,
    /// The payload exceeds the largest frame.
    #[error("payload of {len} bytes exceeds max_frame_payload {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: u32,
    },
    /// The sending side (SND_TX) is not running.
    #[error("the channel is not started for sending (SND_TX)")]
    NotStarted,
    /// The channel was stopped.
    #[error("the channel is stopped")]
    Stopped,
    /// The ASYNCHRONOUS queue is full and the policy is [`AsyncFullPolicy::Reject`].
    #[error("the asynchronous queue is full ({messages} messages, {bytes} bytes queued)")]
    QueueFull {
        /// Messages queued.
        messages: usize,
        /// Bytes queued.
        bytes: usize,
    },
    /// [`crate::ChannelHandle::send_wait`]: the message went out, and some destination failed
    /// (or it never left the pipeline); the outcome says which and why.
    #[error("{0}")]
    Delivery(Box<crate::SendOutcome>),
    /// A batch for [`crate::ChannelHandle::send_many`] is empty or larger than allowed.
    #[error("a batch of {len} messages; 1 to {max} are accepted")]
    BatchSize {
        /// Messages in the batch.
        len: usize,
        /// The most accepted (`MAX_BATCH`, and for ASYNCHRONOUS `async_queue_messages`).
        max: usize,
    },
}

impl ChannelConfig {
    /// Checks every bound.
    pub fn validate(&self) -> Result<(), ChannelError> {
        let bad = |key, reason: &str| {
            Err(ChannelError::Config {
                key,
                reason: reason.into(),
            })
        };
        if self.heartbeat_interval < Duration::from_millis(10) {
            return bad("heartbeat_interval", "must be at least 10 ms");
        }
        if self.async_queue_bytes < 1024 || self.async_queue_bytes > (u32::MAX as usize) {
            return bad("async_queue_bytes", "must be between 1 KiB and 4 GiB");
        }
        if self.async_queue_messages == 0 || self.async_queue_messages > (1 << 24) {
            return bad("async_queue_messages", "must be between 1 and 16777216");
        }
        if self.heartbeat_interval > Duration::from_secs(3600) {
            return bad("heartbeat_interval", "must be at most 1 hour");
        }
        if self.drain_timeout > Duration::from_secs(3600) {
            return bad("drain_timeout", "must be at most 1 hour");
        }
        // Queues are allocated by tokio, which panics on absurd capacities: bound them.
        const MAX_QUEUE: usize = 1 << 20;
        for (key, value) in [
            ("command_queue", self.command_queue),
            ("delivery_queue", self.delivery_queue),
            ("max_pipeline_work", self.max_pipeline_work),
        ] {
            if !(1..=MAX_QUEUE).contains(&value) {
                return bad(key, "must be between 1 and 1048576");
            }
        }
        Ok(())
    }
}

/// Membership settings for a channel's own membership service.
#[derive(Clone, Debug, Default)]
pub struct MembershipSetup {
    /// Core settings.
    pub config: MembershipConfig,
    /// Multicast, if any (default: on, Tribes' defaults).
    pub multicast: Option<MulticastConfig>,
    /// Static membership: the UDP address to bind and the peers.
    pub static_members: Option<(SocketAddr, Vec<StaticPeer>)>,
    /// DNS discovery (needs `static_members` for its bind address, with or without peers).
    pub dns: Option<cohort_membership::DnsConfig>,
}
