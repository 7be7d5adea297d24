//! Configured limits of the codecs.

use crate::ConfigError;

/// Longest member name, in bytes (a protocol constant).
pub const MAX_NAME_LEN: usize = 255;
/// Longest cluster name, in bytes (a protocol constant).
pub const MAX_CLUSTER_LEN: usize = 255;
/// Longest domain, in bytes (a protocol constant).
pub const MAX_DOMAIN_LEN: usize = 255;
/// Longest FAIL_ACK reason, in bytes (a protocol constant; longer reasons are cut on encode).
pub const MAX_FAIL_REASON_LEN: usize = 256;
/// Most extensions on one data header (a protocol constant).
pub const MAX_EXTENSIONS: usize = 32;
/// Largest UDP payload over IPv4; no beacon may exceed it.
pub const MAX_DATAGRAM: usize = 65_507;

/// Limits every decoder checks before it allocates, and every encoder before it writes.
///
/// Both ends of a connection should use the same limits; a frame above the receiver's limit is
/// rejected and the connection closed.
///
/// ```
/// use cohort_wire::WireLimits;
/// let limits = WireLimits { max_frame_payload: 1 << 20, ..WireLimits::default() };
/// limits.validate().unwrap();
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct WireLimits {
    /// Largest prost-encoded frame header, in bytes. Default 16 KiB.
    #[cfg_attr(feature = "serde", serde(deserialize_with = "crate::serde_ms::size"))]
    pub max_frame_header: u32,
    /// Largest frame payload, in bytes. Default 32 MiB (messages above the fragmentation size,
    /// 100 KiB by default, are split long before this).
    #[cfg_attr(feature = "serde", serde(deserialize_with = "crate::serde_ms::size"))]
    pub max_frame_payload: u32,
    /// Largest beacon datagram, in bytes. Default and maximum 65,507.
    #[cfg_attr(feature = "serde", serde(deserialize_with = "crate::serde_ms::size"))]
    pub max_beacon: usize,
    /// Largest member payload, in bytes. Default 4 KiB.
    #[cfg_attr(feature = "serde", serde(deserialize_with = "crate::serde_ms::size"))]
    pub max_member_payload: usize,
    /// Most ranges plus failures in one ACK frame. Default 4,096.
    pub max_ack_entries: usize,
}

impl WireLimits {
    /// The defaults (see each field).
    pub const DEFAULT: Self = Self {
        max_frame_header: 16 * 1024,
        max_frame_payload: 32 * 1024 * 1024,
        max_beacon: MAX_DATAGRAM,
        max_member_payload: 4 * 1024,
        max_ack_entries: 4096,
    };

    /// Checks the bounds: a header of at least 256 bytes, a beacon of at least 512 bytes and
    /// at most [`MAX_DATAGRAM`], a member payload that fits in a beacon, a frame payload of at
    /// most 1 GiB, and at least one ACK entry.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let check = |field, value: u64, ok: bool, bound| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::OutOfRange {
                    field,
                    value,
                    bound,
                })
            }
        };
        let header = u64::from(self.max_frame_header);
        check("max_frame_header", header, header >= 256, ">= 256")?;
        let payload = u64::from(self.max_frame_payload);
        check("max_frame_payload", payload, payload <= 1 << 30, "<= 1 GiB")?;
        let beacon = self.max_beacon as u64;
        check(
            "max_beacon",
            beacon,
            (512..=MAX_DATAGRAM).contains(&self.max_beacon),
            "512..=65507",
        )?;
        check(
            "max_member_payload",
            self.max_member_payload as u64,
            self.max_member_payload + 512 <= self.max_beacon,
            "<= max_beacon - 512",
        )?;
        check(
            "max_ack_entries",
            self.max_ack_entries as u64,
            (1..=1 << 20).contains(&self.max_ack_entries),
            "1..=1048576",
        )
    }
}

impl Default for WireLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}
