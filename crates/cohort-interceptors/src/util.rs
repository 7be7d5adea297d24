//! Small helpers shared by the interceptors: extension access, big-endian fields, stats cells,
//! config parsing helpers.

use crate::ConfigError;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use cohort_channel::{Cx, Outbound, Ticket};
use cohort_wire::{Extension, Member, SendOptions};

/// Removes every extension with `tag` and returns the first one's value, if any (a repeated
/// tag is not honoured twice).
pub(crate) fn take_ext(exts: &mut Vec<Extension>, tag: u32) -> Option<Bytes> {
    let i = exts.iter().position(|e| e.tag == tag)?;
    let first = exts.remove(i).value;
    exts.retain(|e| e.tag != tag);
    Some(first)
}

/// Sends an interceptor's own control message (no payload, one extension, no receipt) down
/// the stack to `to`.
pub(crate) fn send_control(
    cx: &mut Cx<'_>,
    to: Vec<Member>,
    options: SendOptions,
    tag: u32,
    value: Bytes,
) {
    if to.is_empty() {
        return;
    }
    let msg_id = cx.next_msg_id();
    cx.send_down(Outbound {
        msg_id,
        destinations: to.into(),
        options,
        seq: 0,
        extensions: vec![Extension { tag, value }],
        payload: Bytes::new(),
        ticket: Ticket::NONE,
    });
}

/// True if an extension with `tag` is present.
pub(crate) fn has_ext(exts: &[Extension], tag: u32) -> bool {
    exts.iter().any(|e| e.tag == tag)
}

/// Reads a big-endian u64 at `at`.
pub(crate) fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Reads a big-endian u32 at `at`.
pub(crate) fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// A monotonic counter readable from any thread.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Durations as integer milliseconds in config files (`expire_ms = 3000`).
#[cfg(feature = "serde")]
pub(crate) mod ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }

    /// `Option<Duration>`: a negative number means "never" (Tribes' convention).
    pub(crate) mod opt {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer};

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Duration>, D::Error> {
            let v = i64::deserialize(d)?;
            Ok(u64::try_from(v).ok().map(Duration::from_millis))
        }
    }
}

/// Option bits as an integer or a name list in config files.
#[cfg(feature = "serde")]
pub(crate) mod bits {
    use cohort_wire::SendOptions;
    use serde::{Deserialize, Deserializer};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SendOptions, D::Error> {
        Ok(SendOptions::from_bits(u32::deserialize(d)?))
    }
}

/// A config check failure: the key and what is wrong.
pub(crate) fn bad<T>(key: &str, reason: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError {
        key: key.to_owned(),
        reason: reason.into(),
    })
}

/// Checks that `flag` is a single interceptor bit (0x80 and up).
pub(crate) fn check_flag(key: &str, flag: cohort_wire::SendOptions) -> Result<(), ConfigError> {
    let b = flag.bits();
    if b.count_ones() != 1 || b < cohort_wire::SendOptions::FIRST_INTERCEPTOR_BIT {
        return bad(
            key,
            format!("{b:#x} must be a single bit from 0x80 up (lower bits are the channel's)"),
        );
    }
    Ok(())
}
