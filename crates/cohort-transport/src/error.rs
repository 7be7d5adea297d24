//! Errors and outcomes of sends, and start-up errors.

use std::net::SocketAddr;
use std::time::Duration;

/// How one destination's delivery completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivered {
    /// Written to the connection (or datagram socket); no ACK was asked for. Tribes calls this
    /// the "IO-based guarantee".
    Sent,
    /// The peer acknowledged it: on receipt (USE_ACK) or after its listeners ran
    /// (USE_ACK | SYNCHRONIZED_ACK).
    Acked,
}

/// Why a send to one destination failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No connection could be opened within the attempts allowed.
    #[error("connect to {addr} failed after {attempts} attempt(s): {reason}")]
    Connect {
        /// The peer.
        addr: SocketAddr,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        reason: String,
    },
    /// The peer failed to connect recently; sends fail at once until the backoff ends.
    #[error("{addr} is backing off after failed connects; retry in {retry_in:?}")]
    PeerDown {
        /// The peer.
        addr: SocketAddr,
        /// Time left in the backoff.
        retry_in: Duration,
    },
    /// The peer's queue (or the UDP socket's) holds `max_peer_queue_bytes` already; both
    /// figures are bytes.
    #[error("queue to {addr} is full ({queued} bytes queued, limit {limit})")]
    QueueFull {
        /// The peer.
        addr: SocketAddr,
        /// Bytes queued.
        queued: usize,
        /// The limit.
        limit: usize,
    },
    /// The connection broke after the message was handed to it and before its ACK came; the
    /// peer may or may not have it (a resend could deliver twice, so none is attempted).
    #[error("connection to {addr} lost before the ACK: {reason}")]
    ConnectionLost {
        /// The peer.
        addr: SocketAddr,
        /// What broke it.
        reason: String,
    },
    /// No ACK (or the write did not complete) within `send_timeout`.
    #[error("no ACK from {addr} within {after:?}")]
    Timeout {
        /// The peer.
        addr: SocketAddr,
        /// The timeout.
        after: Duration,
    },
    /// The peer received the message but its processing failed (FAIL_ACK).
    #[error("{addr} failed to process the message: {reason}")]
    FailAck {
        /// The peer.
        addr: SocketAddr,
        /// The reason it gave.
        reason: String,
    },
    /// The destination has no UDP data port, or this node has no UDP socket.
    #[error("no UDP path to {addr}: {reason}")]
    NoUdp {
        /// The peer.
        addr: SocketAddr,
        /// What is missing.
        reason: &'static str,
    },
    /// A MULTICAST send on a transport without a multicast data path.
    #[error("this node has no multicast data path (membership runs without multicast)")]
    NoMulticast,
    /// A datagram could not be sent.
    #[error("UDP send to {addr} failed: {reason}")]
    Udp {
        /// The peer.
        addr: SocketAddr,
        /// The error.
        reason: String,
    },
    /// The bytes handed to the transport are not one frame it can seal for a keyed
    /// connection (a frame encoded with another key, or several frames at once).
    #[error("cannot send to {addr}: {reason}")]
    BadFrame {
        /// The peer.
        addr: SocketAddr,
        /// What is wrong.
        reason: String,
    },
    /// `max_in_flight` messages already wait for their ACK on the UDP path.
    #[error("{limit} messages to {addr} and others already wait for their ACK over UDP")]
    InFlightFull {
        /// The peer.
        addr: SocketAddr,
        /// The limit (`max_in_flight`).
        limit: usize,
    },
    /// The sending side is stopped.
    #[error("transport stopped")]
    Stopped,
}

impl SendError {
    /// A short class name for counters and event lines.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::PeerDown { .. } => "peer_down",
            Self::QueueFull { .. } => "queue_full",
            Self::ConnectionLost { .. } => "connection_lost",
            Self::Timeout { .. } => "timeout",
            Self::FailAck { .. } => "fail_ack",
            Self::NoUdp { .. } => "no_udp",
            Self::NoMulticast => "no_multicast",
            Self::Udp { .. } => "udp",
            Self::BadFrame { .. } => "bad_frame",
            Self::InFlightFull { .. } => "in_flight_full",
            Self::Stopped => "stopped",
        }
    }

    /// True when the peer answered (FAIL_ACK): it is alive, it only failed to process. Failure
    /// detectors must not count this against it (as Tribes' TcpFailureDetector does not).
    pub fn peer_is_alive(&self) -> bool {
        matches!(self, Self::FailAck { .. })
    }
}

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
    /// No port in the auto-bind range could be bound.
    #[error("cannot bind a TCP receiver on {addr} (tried {tried} ports from {first}): {source}")]
    Bind {
        /// The address.
        addr: std::net::IpAddr,
        /// First port tried.
        first: u16,
        /// Ports tried.
        tried: u16,
        /// The last error.
        source: std::io::Error,
    },
    /// The UDP port could not be bound.
    #[error("cannot bind the UDP data port {addr}: {source}")]
    BindUdp {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The multicast data socket could not be opened.
    #[error("cannot open the multicast data socket on {group}: {source}")]
    BindMulticast {
        /// The group and data port.
        group: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}
