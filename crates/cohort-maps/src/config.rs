//! A map's settings, with their limits and overflow policies.

use std::time::Duration;

/// How a map behaves and what it may hold. `MapConfig::default()` suits maps of up to a few
/// hundred thousand entries of up to a few KiB.
///
/// Every limit has a policy: a local write past `max_entries`, `max_bytes` or `max_value_bytes`
/// fails with [`crate::MapError::Refused`] naming the limit (the caller learns it;
/// nothing is dropped silently). A remote write past them is refused, counted
/// (`stats.rejected`) and, for a SYNC_ACK writer, answered with the reason, so the writer's
/// `put` fails naming this member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapConfig {
    /// Largest number of live entries (tombstones and proxies not counted). Default 1,000,000.
    pub max_entries: usize,
    /// Largest encoded value, in bytes. Default 1 MiB.
    pub max_value_bytes: usize,
    /// Largest encoded key, in bytes. Default 4 KiB.
    pub max_key_bytes: usize,
    /// Largest sum of encoded keys and values held, in bytes. Default 256 MiB.
    pub max_bytes: usize,
    /// Largest state-transfer or repair chunk, in bytes (at least one entry is always sent).
    /// Default 256 KiB.
    pub max_chunk_bytes: usize,
    /// How long a removal's tombstone is kept (measured from the removal's clock). A member
    /// cut off for longer than this and holding the removed entry can bring it back. Default
    /// 10 minutes.
    pub tombstone_ttl: Duration,
    /// Most tombstones kept; past it the oldest is forgotten early (the same risk as an
    /// expired one). Default 1,000,000.
    pub max_tombstones: usize,
    /// How often a member compares digests with one random other member. Default 5 s.
    pub anti_entropy_interval: Duration,
    /// Deadline of each request (hello, fetch, chunk, digest, SYNC_ACK update). Default 5 s.
    pub rpc_timeout: Duration,
    /// Deadline of the whole state transfer when the map starts. Default 60 s.
    pub state_transfer_timeout: Duration,
    /// How long a starting map waits for the channel's first member (a node just started
    /// may not have heard a beacon yet) before it concludes that it is alone and has no state
    /// to fetch. Only with membership, and only while no member is seen. Default 3 s (Tribes'
    /// default drop time).
    pub join_wait: Duration,
    /// Refuse remote versions whose clock is more than this ahead of ours (a peer with a
    /// wrong clock, or a forged version, must not win every conflict for ever). Default 60 s.
    pub max_clock_skew: Duration,
    /// Backups per entry in a lazy map (ignored by a replicated map). Default 1, at most 16.
    pub backup_count: usize,
    /// Messages waiting for the map's task; the channel's delivery thread waits for room
    /// beyond it (backpressure to the senders). Default 4096.
    pub inbound_queue: usize,
    /// Events buffered per subscriber; a slower subscriber is told how many it missed.
    /// Default 1024.
    pub event_buffer: usize,
    /// Requests the map's own task may have in flight (anti-entropy, hole fills, placement
    /// changes); past it, periodic work is skipped for a period and counted. Default 64.
    pub max_background_requests: usize,
}

impl Default for MapConfig {
    fn default() -> Self {
        Self {
            max_entries: 1_000_000,
            max_value_bytes: 1 << 20,
            max_key_bytes: 4096,
            max_bytes: 256 << 20,
            max_chunk_bytes: 256 << 10,
            tombstone_ttl: Duration::from_secs(600),
            max_tombstones: 1_000_000,
            anti_entropy_interval: Duration::from_secs(5),
            rpc_timeout: Duration::from_secs(5),
            state_transfer_timeout: Duration::from_secs(60),
            join_wait: Duration::from_secs(3),
            max_clock_skew: Duration::from_secs(60),
            backup_count: 1,
            inbound_queue: 4096,
            event_buffer: 1024,
            max_background_requests: 64,
        }
    }
}

/// A setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("map config `{key}`: {reason}")]
pub struct ConfigError {
    /// The setting.
    pub key: &'static str,
    /// Why.
    pub reason: String,
}

impl MapConfig {
    /// Checks every setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key, reason: &str| {
            Err(ConfigError {
                key,
                reason: reason.into(),
            })
        };
        let positive: [(&'static str, usize); 7] = [
            ("max_entries", self.max_entries),
            ("max_value_bytes", self.max_value_bytes),
            ("max_key_bytes", self.max_key_bytes),
            ("max_chunk_bytes", self.max_chunk_bytes),
            ("inbound_queue", self.inbound_queue),
            ("event_buffer", self.event_buffer),
            ("max_background_requests", self.max_background_requests),
        ];
        for (key, v) in positive {
            if v == 0 {
                return err(key, "must be at least 1");
            }
        }
        if self.max_bytes < self.max_value_bytes + self.max_key_bytes {
            return err("max_bytes", "must hold at least one largest key and value");
        }
        if self.max_chunk_bytes > u32::MAX as usize {
            return err("max_chunk_bytes", "must fit in 32 bits");
        }
        if self.backup_count > crate::msg::MAX_BACKUPS {
            return err("backup_count", "at most 16");
        }
        for (key, d) in [
            ("anti_entropy_interval", self.anti_entropy_interval),
            ("rpc_timeout", self.rpc_timeout),
            ("state_transfer_timeout", self.state_transfer_timeout),
            ("tombstone_ttl", self.tombstone_ttl),
        ] {
            if d.is_zero() {
                return err(key, "must be above zero");
            }
        }
        Ok(())
    }
}
