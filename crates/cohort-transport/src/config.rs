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
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
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
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "cohort_wire::serde_ms::duration")
    )]
    pub connect_timeout: Duration,
    /// Whole-send deadline: a message not written and (if asked) acknowledged by then fails.
    /// Default 3000 ms (Tribes' `timeout`).
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "cohort_wire::serde_ms::duration")
    )]
    pub send_timeout: Duration,
    /// Further connection attempts after the first fails, within one send. Default 1 (Tribes'
    /// `maxRetryAttempts`, so at most two attempts).
    pub max_retry_attempts: u32,
    /// After a send round failed to connect, new sends to that peer fail at once for this long,
    /// doubling with each failed round up to `max_reconnect_backoff`. Default 100 ms.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "cohort_wire::serde_ms::duration")
    )]
    pub reconnect_backoff: Duration,
    /// Upper bound of the reconnect backoff. Default 5 s.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "cohort_wire::serde_ms::duration")
    )]
    pub max_reconnect_backoff: Duration,
    /// TCP connections per peer. Messages are spread round robin over them; with more than
    /// one, per-sender order holds only per connection. Default 1 (pipelining gives one
    /// connection the throughput Tribes needs 25 pooled connections for).
    pub connections_per_peer: NonZeroUsize,
    /// Close and reopen a connection after this many messages (Tribes' `keepAliveCount`,
    /// unlimited by default).
    pub keep_alive_count: Option<u64>,
    /// Close and reopen a connection older than this (Tribes' `keepAliveTime`, unlimited).
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "cohort_wire::serde_ms::option_duration")
    )]
    pub keep_alive_time: Option<Duration>,
    /// Messages written but not yet acknowledged, per connection. When reached, the writer
    /// waits for ACKs (backpressure). Default 16,384.
    pub max_in_flight: usize,
    /// Bytes queued for one peer and not yet written. A send beyond it fails at once for that
    /// peer with [`crate::SendError::QueueFull`]. Default 64 MiB (Tribes' `maxQueueSize`).
    /// Frames with the ASYNCHRONOUS option are counted but never refused: the channel's
    /// ASYNCHRONOUS queue bounds them (a refusal would lose a message already accepted).
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "cohort_wire::serde_ms::size")
    )]
    pub max_peer_queue_bytes: usize,
    /// Up to this many bytes of queued frames are coalesced into one write. Default 256 KiB.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "cohort_wire::serde_ms::size")
    )]
    pub write_batch_bytes: usize,
    /// Read buffer chunk per connection (Tribes' `rxBufSize`, 64 KiB). The buffer grows to one
    /// whole frame at most, bounded by `limits.max_frame_payload`.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "cohort_wire::serde_ms::size")
    )]
    pub rx_buf_size: usize,
    /// Members' inbound connections at once (counted once their hello is in); more are closed
    /// at their hello and counted. Default 1024.
    pub max_connections: usize,
    /// Every frame, once begun, must arrive whole within this time, or the connection is
    /// closed and counted (slow-loris defence). Default 10 s.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "cohort_wire::serde_ms::duration")
    )]
    pub frame_timeout: Duration,
    /// A new connection must deliver its hello (authenticated, when a key is set) within this
    /// time. Until then it may send at most one hello's worth of bytes. Default 2 s.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "cohort_wire::serde_ms::duration")
    )]
    pub hello_timeout: Duration,
    /// A connection with nothing received for this long is closed (senders close their own
    /// pooled connections after half of it, so an in-use connection is never cut). Default
    /// 120 s.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "cohort_wire::serde_ms::duration")
    )]
    pub idle_timeout: Duration,
    /// Connections at once that have not completed their hello: a pool apart from
    /// `max_connections`, so that they never crowd out members. When full, its oldest
    /// connection is closed to make room (a member's hello comes within milliseconds, so slow
    /// or silent connections are the ones evicted). Default 256.
    pub max_unauthenticated: usize,
    /// The same, per source IP address: a single-address flood only ever evicts its own
    /// connections. Default 64.
    pub max_unauthenticated_per_source: usize,
    /// Memory for received frames across all connections: frames beyond the read buffer
    /// (`rx_buf_size`) are only read once their size is reserved here; the whole frames of one
    /// read are reserved together, and hold their sizes until the layer above has taken the
    /// last of them. When spent, connections pause reading (backpressure; nothing is dropped);
    /// a connection waiting for it holds no reservation of its own. Must hold at least one
    /// largest frame.
    /// Each connection's read buffer comes on top: `rx_buf_size`, or up to twice that after
    /// frames larger than it (so that the next is read in place); and the transport keeps at
    /// most 16 more read buffers, the ones connections replaced, to read into again once
    /// their frames are dropped. Default 256 MiB.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "cohort_wire::serde_ms::size")
    )]
    pub max_inbound_bytes: usize,
    /// ACK-requiring messages received on one connection and not yet acknowledged; when
    /// reached the connection is not read until ACKs drain. Default 16,384.
    pub max_pending_acks: usize,
    /// Received messages queued for the layer above; when full, connections are not read
    /// (backpressure to the senders), and UDP and multicast datagrams are dropped (counted in
    /// `datagrams_dropped`). Default 8,192. A smaller queue keeps the hand-over in the CPU's
    /// caches (a TCP sink of 1 KiB batches measured up to a tenth faster with 256), but a
    /// TCP burst then fills it often enough to drop the datagrams that arrive meanwhile:
    /// docs/BENCHMARKS.md, issue 13's eleventh stop.
    pub inbound_queue: usize,
    /// Delay the TCP acknowledgements of inbound connections (Linux `TCP_QUICKACK` off after
    /// each read), so that they ride on Cohort's ACK frames or on the kernel's delayed ACK
    /// instead of each going out as a segment of its own. Default true; an RPC round trip on
    /// loopback is about a tenth shorter with it. No effect elsewhere than Linux.
    pub delayed_acks: bool,
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
            hello_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(120),
            max_unauthenticated: 256,
            max_unauthenticated_per_source: 64,
            max_inbound_bytes: 256 * 1024 * 1024,
            max_pending_acks: 16_384,
            inbound_queue: 8192,
            delayed_acks: true,
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
            (1024..=64 << 30).contains(&self.max_peer_queue_bytes),
            "must be between 1 KiB and 64 GiB",
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
            (1..=1 << 20).contains(&self.max_connections),
            "must be between 1 and 1048576",
        )?;
        let day = Duration::from_secs(86_400);
        let zero = Duration::ZERO;
        for (key, value, min, max) in [
            ("connect_timeout", self.connect_timeout, ms, day),
            ("send_timeout", self.send_timeout, ms, day),
            ("reconnect_backoff", self.reconnect_backoff, zero, day),
            (
                "max_reconnect_backoff",
                self.max_reconnect_backoff,
                zero,
                day,
            ),
            ("frame_timeout", self.frame_timeout, ms, day),
            (
                "hello_timeout",
                self.hello_timeout,
                ms,
                Duration::from_secs(600),
            ),
            (
                "idle_timeout",
                self.idle_timeout,
                Duration::from_secs(1),
                7 * day,
            ),
        ] {
            check(key, value >= min, &format!("must be at least {min:?}"))?;
            check(
                key,
                value <= max,
                &format!("must be at most {} s", max.as_secs()),
            )?;
        }
        if let Some(t) = self.keep_alive_time {
            check(
                "keep_alive_time",
                t >= ms && t <= 7 * day,
                "must be between 1 ms and 7 days",
            )?;
        }
        check(
            "max_unauthenticated",
            (1..=65_536).contains(&self.max_unauthenticated),
            "must be between 1 and 65536",
        )?;
        check(
            "max_unauthenticated_per_source",
            (1..=65_536).contains(&self.max_unauthenticated_per_source),
            "must be between 1 and 65536",
        )?;
        let largest = cohort_wire::FRAME_PREFIX_LEN
            + self.limits.max_frame_header as usize
            + self.limits.max_frame_payload as usize
            + cohort_wire::TAG_LEN
            + cohort_wire::CRC_LEN;
        check(
            "max_inbound_bytes",
            self.max_inbound_bytes >= largest && self.max_inbound_bytes <= 64 << 30,
            &format!(
                "must hold at least one largest frame ({largest} bytes: limits.max_frame_payload \
                 plus headers) and at most 64 GiB"
            ),
        )?;
        check(
            "max_pending_acks",
            (1..=1 << 20).contains(&self.max_pending_acks),
            "must be between 1 and 1048576",
        )?;
        check(
            "inbound_queue",
            (1..=1 << 20).contains(&self.inbound_queue),
            "must be between 1 and 1048576",
        )?;
        self.limits.validate()?;
        Ok(())
    }
}
