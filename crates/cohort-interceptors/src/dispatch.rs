//! `MessageDispatch`: the ASYNCHRONOUS queue's limits and full policy.
//!
//! The queue itself lives at the channel's send call ([`cohort_channel::ChannelHandle::send`]),
//! because only there can it make the caller wait (a synchronous interceptor cannot block, and
//! Tribes' fallback of sending synchronously when full breaks the order and the caller's
//! budget). This entry sets the queue's bounds and policy on the [`ChannelConfig`] when the
//! stack is built ([`MessageDispatchConfig::apply`]), and in the stack it counts what passes
//! asynchronously. Per-destination order is kept: queued messages enter the pipeline in
//! admission order and each peer's connection writes them in that order.

use crate::ConfigError;
use std::sync::Arc;

use cohort_channel::{AsyncFullPolicy, ChannelConfig, Cx, Interceptor, Outbound, SendOptions};

use crate::util::{Counter, bad};

/// What a send does when the queue is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum FullPolicy {
    /// Wait for room (backpressure). The default.
    #[default]
    Block,
    /// Fail at once (`ChannelError::QueueFull`).
    Reject,
}

/// Settings.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct MessageDispatchConfig {
    /// Bytes queued at most. Default 64 MiB (Tribes' `maxQueueSize`).
    pub max_queue_bytes: usize,
    /// Messages queued at most. Default 65,536.
    pub max_queue_messages: usize,
    /// When full. Default block.
    pub policy: FullPolicy,
}

impl Default for MessageDispatchConfig {
    fn default() -> Self {
        Self {
            max_queue_bytes: 64 * 1024 * 1024,
            max_queue_messages: 65_536,
            policy: FullPolicy::Block,
        }
    }
}

impl MessageDispatchConfig {
    /// Checks every bound; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_queue_bytes < 1024 || self.max_queue_bytes > u32::MAX as usize {
            return bad("max_queue_bytes", "must be between 1024 and 4294967295");
        }
        if self.max_queue_messages == 0 || self.max_queue_messages > 1 << 24 {
            return bad("max_queue_messages", "must be between 1 and 16777216");
        }
        Ok(())
    }

    /// Sets the channel's ASYNCHRONOUS queue to these limits and policy.
    pub fn apply(&self, channel: &mut ChannelConfig) {
        channel.async_queue_bytes = self.max_queue_bytes;
        channel.async_queue_messages = self.max_queue_messages;
        channel.async_full_policy = match self.policy {
            FullPolicy::Block => AsyncFullPolicy::Block,
            FullPolicy::Reject => AsyncFullPolicy::Reject,
        };
    }
}

/// Counters.
#[derive(Debug, Default)]
pub struct DispatchStats {
    messages: Counter,
    bytes: Counter,
}

impl DispatchStats {
    /// ASYNCHRONOUS messages that passed.
    pub fn messages(&self) -> u64 {
        self.messages.get()
    }

    /// Their payload bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes.get()
    }
}

/// The interceptor: sees only ASYNCHRONOUS messages, counts them.
#[derive(Debug, Default)]
pub struct MessageDispatch {
    stats: Arc<DispatchStats>,
}

impl MessageDispatch {
    /// A counter of asynchronous traffic.
    pub fn new() -> Self {
        Self::default()
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<DispatchStats> {
        self.stats.clone()
    }
}

impl Interceptor for MessageDispatch {
    fn name(&self) -> &'static str {
        "message_dispatch"
    }

    fn option_mask(&self) -> SendOptions {
        SendOptions::ASYNCHRONOUS
    }

    fn on_send(&mut self, msg: Outbound, cx: &mut Cx<'_>) {
        self.stats.messages.inc();
        self.stats.bytes.add(msg.payload.len() as u64);
        cx.send_down(msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn applies_limits_and_counts_only_async_messages() {
        let mut ch = ChannelConfig::default();
        let cfg = MessageDispatchConfig {
            max_queue_bytes: 4096,
            max_queue_messages: 3,
            policy: FullPolicy::Reject,
        };
        cfg.validate().unwrap();
        cfg.apply(&mut ch);
        assert_eq!((ch.async_queue_bytes, ch.async_queue_messages), (4096, 3));
        assert_eq!(ch.async_full_policy, AsyncFullPolicy::Reject);
        let d = MessageDispatch::new();
        let stats = d.stats();
        let mut p = pipeline(vec![Box::new(d)], 1);
        let now = std::time::Instant::now();
        p.send(
            now,
            outbound(1, &[member(2)], SendOptions::ASYNCHRONOUS, b"abc"),
        );
        p.send(
            now,
            outbound(2, &[member(2)], SendOptions::USE_ACK, b"abcd"),
        );
        assert_eq!(drain(&mut p).sent.len(), 2);
        assert_eq!((stats.messages(), stats.bytes()), (1, 3));
        assert!(
            MessageDispatchConfig {
                max_queue_messages: 0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
    }
}
