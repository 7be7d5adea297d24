//! Transport settings.

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroUsize;
use std::time::Duration;

use cohort_wire::WireLimits;

/// A setting out of range, named by its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The value of `key` is out of range.
    #[error("transport.{key}: {reason}")]
    Invalid {
        /// The setting, as spelled in the node's TOML file.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The wire limits are inconsistent.
    #[error("transport.limits: {0}")]
    Limits(#[from] cohort_wire::ConfigError),
}

/// Settings of the receiver and the senders. Defaults follow Tribes' `NioReceiver` and
/// `PooledParallelSender` where one exists (see each field).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportConfig {
    /// Address the receiver binds and advertises. Default 127.0.0.1 (Tribes' `auto` picks the
    /// host's address; Cohort does not expose a cluster port beyond loopback unless told to).
    pub bind: IpAddr,
    /// First port tried. Default 4000 (Tribes). 0 lets the OS choose.
    pub port: u16,
    /// How many ports from `port` up are tried: 4000, 4001, ... (Tribes' `autoBind`, 100).
    pub auto_bind: u16,
    /// UDP data port: `None` (Tribes' -1) for no UDP receiver, `Some(0)` for any free port.
    pub udp_port: Option<u16>,
    /// Limit on establishing one connection. Default 3000 ms (Tribes' `timeout`).
    pub connect_timeout: Duration,
    /// Whole-send deadline: a message not written and (if asked) acknowledged by then fails.
    /// Default 3000 ms (Tribes' `timeout`).
    pub send_timeout: Duration,
    /// Further connection attempts after the first fails, within one send. Default 1 (Tribes'
    /// `maxRetryAttempts`, so at most two attempts).
    pub max_retry_attempts: u32,
    /// After a send round failed to connect, new sends to that peer fail at once for this long,
    /// doubling with each failed round up to `max_reconnect_backoff`. Default 100 ms.
    pub reconnect_backoff: Duration,
    /// Upper bound of the reconnect backoff. Default 5 s.
    pub max_reconnect_backoff: Duration,
    /// TCP connections per peer. Messages are spread round robin over them; with more than
    /// one, per-sender order holds only per connection. Default 1 (pipelining gives one
    /// connection the throughput Tribes needs 25 pooled connections for).
    pub connections_per_peer: NonZeroUsize,
    /// Close and reopen a connection after this many messages (Tribes' `keepAliveCount`,
    /// unlimited by default).
    pub keep_alive_count: Option<u64>,
    /// Close and reopen a connection older than this (Tribes' `keepAliveTime`, unlimited).
    pub keep_alive_time: Option<Duration>,
    /// Messages written but not yet acknowledged, per connection. When reached, the writer
    /// waits for ACKs (backpressure). Default 16,384.
    pub max_in_flight: usize,
    /// Bytes queued for one peer and not yet written. A send beyond it fails at once for that
    /// peer with [`crate::SendError::QueueFull`]. Default 64 MiB (Tribes' `maxQueueSize`).
    /// Frames with the ASYNCHRONOUS option are counted but never refused: the channel's
    /// ASYNCHRONOUS queue bounds them (a refusal would lose a message already accepted).
    pub max_peer_queue_bytes: usize,
    /// Up to this many bytes of queued frames are coalesced into one write. Default 256 KiB.
    pub write_batch_bytes: usize,
    /// Read buffer chunk per connection (Tribes' `rxBufSize`, 64 KiB). The buffer grows to one
    /// whole frame at most, bounded by `limits.max_frame_payload`.
    pub rx_buf_size: usize,
    /// Inbound connections at once; more are closed on accept and counted. Default 1024.
    pub max_connections: usize,
    /// A connection must complete its hello, and every frame once begun, within this time, or
    /// it is closed and counted (slow-loris defence). Default 10 s.
    pub frame_timeout: Duration,
    /// ACK-requiring messages received on one connection and not yet acknowledged; when
    /// reached the connection is not read until ACKs drain. Default 16,384.
    pub max_pending_acks: usize,
    /// Received messages queued for the layer above; when full, connections are not read
    /// (backpressure to the senders). Default 8,192.
    pub inbound_queue: usize,
    /// Wire limits; both ends should agree.
    pub limits: WireLimits,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 4000,
            auto_bind: 100,
            udp_port: None,
            connect_timeout: Duration::from_millis(3000),
            send_timeout: Duration::from_millis(3000),
            max_retry_attempts: 1,
            reconnect_backoff: Duration::from_millis(100),
            max_reconnect_backoff: Duration::from_secs(5),
            connections_per_peer: NonZeroUsize::MIN,
            keep_alive_count: None,
            keep_alive_time: None,
            max_in_flight: 16_384,
            max_peer_queue_bytes: 64 * 1024 * 1024,
            write_batch_bytes: 256 * 1024,
            rx_buf_size: 64 * 1024,
            max_connections: 1024,
            frame_timeout: Duration::from_secs(10),
            max_pending_acks: 16_384,
            inbound_queue: 8192,
            limits: WireLimits::DEFAULT,
        }
    }
}

impl TransportConfig {
    /// Checks every bound; the error names the offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn check(key: &'static str, ok: bool, reason: &str) -> Result<(), ConfigError> {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    key,
                    reason: reason.into(),
                })
            }
        }
        let ms = Duration::from_millis(1);
        check("auto_bind", self.auto_bind >= 1, "must be at least 1")?;
        check(
            "connect_timeout",
            self.connect_timeout >= ms,
            "must be at least 1 ms",
        )?;
        check(
            "send_timeout",
            self.send_timeout >= ms,
            "must be at least 1 ms",
        )?;
        check(
            "max_retry_attempts",
            self.max_retry_attempts <= 100,
            "must be at most 100",
        )?;
        check(
            "reconnect_backoff",
            self.reconnect_backoff <= self.max_reconnect_backoff,
            "must not exceed max_reconnect_backoff",
        )?;
        check(
            "connections_per_peer",
            self.connections_per_peer.get() <= 64,
            "must be at most 64",
        )?;
        check(
            "keep_alive_count",
            self.keep_alive_count != Some(0),
            "must be at least 1 (omit it for unlimited)",
        )?;
        check(
            "max_in_flight",
            (1..=1 << 20).contains(&self.max_in_flight),
            "must be between 1 and 1048576",
        )?;
        check(
            "max_peer_queue_bytes",
            self.max_peer_queue_bytes >= 1024,
            "must be at least 1024",
        )?;
        check(
            "write_batch_bytes",
            (1024..=64 << 20).contains(&self.write_batch_bytes),
            "must be between 1 KiB and 64 MiB",
        )?;
        check(
            "rx_buf_size",
            (512..=64 << 20).contains(&self.rx_buf_size),
            "must be between 512 B and 64 MiB",
        )?;
        check(
            "max_connections",
            self.max_connections >= 1,
            "must be at least 1",
        )?;
        check(
            "frame_timeout",
            self.frame_timeout >= ms,
            "must be at least 1 ms",
        )?;
        check(
            "max_pending_acks",
            (1..=1 << 20).contains(&self.max_pending_acks),
            "must be between 1 and 1048576",
        )?;
        check(
            "inbound_queue",
            self.inbound_queue >= 1,
            "must be at least 1",
        )?;
        self.limits.validate()?;
        Ok(())
    }
}
