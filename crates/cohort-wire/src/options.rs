//! Send options and service flags, with Tribes' bit values.

use std::fmt;

/// Send options: bit flags carried in every data frame's header.
///
/// The low seven bits keep Apache Tribes' values (`Channel.SEND_OPTIONS_*`); bits from
/// [`SendOptions::FIRST_INTERCEPTOR_BIT`] (0x80) upward belong to interceptors, which claim
/// them through their option mask.
///
/// ```
/// use cohort_wire::SendOptions;
/// let sync = SendOptions::USE_ACK | SendOptions::SYNCHRONIZED_ACK;
/// assert_eq!(sync.bits(), 6);
/// assert!(sync.contains(SendOptions::USE_ACK));
/// assert!(!sync.contains(SendOptions::ASYNCHRONOUS));
/// assert_eq!("use_ack,sync".parse::<SendOptions>().unwrap(), sync);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct SendOptions(u32);

impl SendOptions {
    /// No option set.
    pub const NONE: Self = Self(0);
    /// The payload is raw bytes (always true in Cohort; kept for Tribes' numbering).
    pub const BYTE_MESSAGE: Self = Self(0x01);
    /// The receiver acknowledges on receipt, before any listener runs.
    pub const USE_ACK: Self = Self(0x02);
    /// With [`USE_ACK`](Self::USE_ACK): acknowledge after the listeners returned, FAIL_ACK if
    /// one failed. Without `USE_ACK` it has no effect.
    pub const SYNCHRONIZED_ACK: Self = Self(0x04);
    /// Return once the message is queued; per-sender order is kept.
    pub const ASYNCHRONOUS: Self = Self(0x08);
    /// Encrypt and authenticate the message (the encryption interceptor's bit).
    pub const SECURE: Self = Self(0x10);
    /// Send as a UDP datagram to each member's UDP port.
    pub const UDP: Self = Self(0x20);
    /// Send over the membership's multicast socket (best effort, no ACK).
    pub const MULTICAST: Self = Self(0x40);
    /// The lowest bit that interceptors may claim.
    pub const FIRST_INTERCEPTOR_BIT: u32 = 0x80;
    /// Tribes' `SEND_OPTIONS_DEFAULT`: `USE_ACK`.
    pub const DEFAULT: Self = Self::USE_ACK;

    /// The names accepted by [`FromStr`](std::str::FromStr), with their bits (Tribes' names).
    pub const NAMES: [(&'static str, SendOptions); 11] = [
        ("byte_message", Self::BYTE_MESSAGE),
        ("byte", Self::BYTE_MESSAGE),
        ("use_ack", Self::USE_ACK),
        ("synchronized_ack", Self::SYNCHRONIZED_ACK),
        ("sync", Self::SYNCHRONIZED_ACK),
        ("asynchronous", Self::ASYNCHRONOUS),
        ("async", Self::ASYNCHRONOUS),
        ("secure", Self::SECURE),
        ("udp", Self::UDP),
        ("multicast", Self::MULTICAST),
        ("none", Self::NONE),
    ];

    /// Options from raw bits; every bit pattern is valid.
    pub const fn from_bits(bits: u32) -> Self {
        Self(bits)
    }

    /// The raw bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// True when every bit of `other` is set in `self` (an empty `other` is always contained).
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// True when `self` and `other` share at least one bit.
    pub const fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    /// The bits of both.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// `self` without the bits of `other`.
    #[must_use]
    pub const fn difference(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// True when the receiver must acknowledge only after its listeners ran.
    pub const fn is_sync_ack(self) -> bool {
        self.contains(Self::USE_ACK.union(Self::SYNCHRONIZED_ACK))
    }
}

impl std::ops::BitOr for SendOptions {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

impl std::ops::BitOrAssign for SendOptions {
    fn bitor_assign(&mut self, rhs: Self) {
        *self = self.union(rhs);
    }
}

impl fmt::Debug for SendOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SendOptions({:#x} {self})", self.0)
    }
}

impl fmt::Display for SendOptions {
    /// Canonical names joined by `|`, then any remaining bits in hex (`use_ack|0x100`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const CANONICAL: [(&str, SendOptions); 7] = [
            ("byte_message", SendOptions::BYTE_MESSAGE),
            ("use_ack", SendOptions::USE_ACK),
            ("synchronized_ack", SendOptions::SYNCHRONIZED_ACK),
            ("asynchronous", SendOptions::ASYNCHRONOUS),
            ("secure", SendOptions::SECURE),
            ("udp", SendOptions::UDP),
            ("multicast", SendOptions::MULTICAST),
        ];
        if self.0 == 0 {
            return f.write_str("none");
        }
        let mut rest = *self;
        let mut first = true;
        for (name, bit) in CANONICAL {
            if rest.contains(bit) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
                rest = rest.difference(bit);
            }
        }
        if rest.0 != 0 {
            if !first {
                f.write_str("|")?;
            }
            write!(f, "{:#x}", rest.0)?;
        }
        Ok(())
    }
}

/// Error from parsing [`SendOptions`] or [`Services`] text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionsParseError {
    /// A name in the comma-separated list is not known.
    #[error("unknown flag name `{name}` (expected a number or one of: {expected})")]
    UnknownName {
        /// The offending name.
        name: String,
        /// The accepted names, comma separated.
        expected: &'static str,
    },
    /// The text was empty.
    #[error("empty flag list")]
    Empty,
}

fn parse_number(text: &str) -> Option<u32> {
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16).ok()
    } else {
        text.parse().ok()
    }
}

impl std::str::FromStr for SendOptions {
    type Err = OptionsParseError;

    /// Accepts a number (`6`, `0x6`) or a comma-separated list of Tribes' names
    /// (`use_ack,sync`), names case-sensitive, whitespace around commas allowed.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.is_empty() {
            return Err(OptionsParseError::Empty);
        }
        if let Some(bits) = parse_number(text) {
            return Ok(Self(bits));
        }
        let mut opts = Self::NONE;
        for name in text.split(',').map(str::trim) {
            let bit = Self::NAMES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, b)| *b)
                .ok_or_else(|| OptionsParseError::UnknownName {
                    name: name.to_owned(),
                    expected: "byte_message, byte, use_ack, synchronized_ack, sync, \
                               asynchronous, async, secure, udp, multicast, none",
                })?;
            opts |= bit;
        }
        Ok(opts)
    }
}

/// Which parts of a channel to start or stop (Tribes' `Channel.*_SEQ` flags).
///
/// Start order is `SND_RX`, `SND_TX`, `MBR_RX`, `MBR_TX` (the broadcaster must advertise the
/// bound receiver port); stop order is the reverse.
///
/// ```
/// use cohort_wire::Services;
/// let no_multicast = Services::SND_RX | Services::SND_TX;
/// assert_eq!(no_multicast.bits(), 3);
/// assert!(Services::DEFAULT.contains(no_multicast));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Services(u8);

impl Services {
    /// Nothing.
    pub const NONE: Self = Self(0);
    /// The data receiver (listening socket).
    pub const SND_RX: Self = Self(1);
    /// The data sender.
    pub const SND_TX: Self = Self(2);
    /// The membership receiver (beacons in).
    pub const MBR_RX: Self = Self(4);
    /// The membership broadcaster (beacons out).
    pub const MBR_TX: Self = Self(8);
    /// All four.
    pub const DEFAULT: Self = Self(15);

    /// From raw bits; bits above 0x0f are dropped.
    pub const fn from_bits_truncate(bits: u8) -> Self {
        Self(bits & 0x0f)
    }

    /// The raw bits.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// True when every bit of `other` is set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// True when no bit is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The bits of both.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// `self` without the bits of `other`.
    #[must_use]
    pub const fn difference(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// The bits set in both.
    #[must_use]
    pub const fn intersection(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    /// True when any bit of `other` is set in `self`.
    pub const fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    /// The individual services in start order.
    pub fn start_order(self) -> impl Iterator<Item = Services> {
        [Self::SND_RX, Self::SND_TX, Self::MBR_RX, Self::MBR_TX]
            .into_iter()
            .filter(move |s| self.contains(*s))
    }

    /// The individual services in stop order.
    pub fn stop_order(self) -> impl Iterator<Item = Services> {
        [Self::MBR_TX, Self::MBR_RX, Self::SND_TX, Self::SND_RX]
            .into_iter()
            .filter(move |s| self.contains(*s))
    }
}

impl Default for Services {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl std::ops::BitOr for Services {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

impl fmt::Debug for Services {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (Self::SND_RX, "SND_RX"),
            (Self::SND_TX, "SND_TX"),
            (Self::MBR_RX, "MBR_RX"),
            (Self::MBR_TX, "MBR_TX"),
        ]
        .into_iter()
        .filter(|(s, _)| self.contains(*s))
        .map(|(_, n)| n)
        .collect();
        write!(f, "Services({}: {})", self.0, names.join("|"))
    }
}

impl std::str::FromStr for Services {
    type Err = OptionsParseError;

    /// Accepts a number (`3`) or names (`snd_rx,snd_tx`, `default`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.is_empty() {
            return Err(OptionsParseError::Empty);
        }
        if let Some(bits) = parse_number(text) {
            return Ok(Self::from_bits_truncate(
                u8::try_from(bits).unwrap_or(u8::MAX),
            ));
        }
        let mut services = Self::NONE;
        for name in text.split(',').map(str::trim) {
            services = services.union(match name.to_ascii_lowercase().as_str() {
                "snd_rx" => Self::SND_RX,
                "snd_tx" => Self::SND_TX,
                "mbr_rx" => Self::MBR_RX,
                "mbr_tx" => Self::MBR_TX,
                "default" | "all" => Self::DEFAULT,
                _ => {
                    return Err(OptionsParseError::UnknownName {
                        name: name.to_owned(),
                        expected: "snd_rx, snd_tx, mbr_rx, mbr_tx, default",
                    });
                }
            });
        }
        Ok(services)
    }
}
