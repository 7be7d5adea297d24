//! Versions: a hybrid logical clock stamp and the writer's id, totally ordered.

use cohort_wire::MemberId;
use serde::{Deserialize, Serialize};

/// Bits of a clock reading that count events within one millisecond.
pub(crate) const LOGICAL_BITS: u32 = 16;

/// The version of a write: a hybrid logical clock reading (`ms << 16 | counter`) and the
/// writer's member id. Versions compare by clock, then by id, so every member orders two
/// concurrent writes to one key the same way, whatever order they arrive in.
///
/// ```
/// use cohort_maps::Version;
/// use cohort_wire::MemberId;
/// let a = Version::new(5 << 16, MemberId::from_bytes([1; 16]));
/// let b = Version::new(5 << 16, MemberId::from_bytes([2; 16]));
/// assert!(a < b, "same clock: the larger id wins");
/// assert!(Version::new(6 << 16, MemberId::from_bytes([0; 16])) > b);
/// ```
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Version {
    /// Hybrid logical clock: wall-clock milliseconds in the high bits, a counter in the low 16.
    pub hlc: u64,
    /// The writer.
    pub node: [u8; 16],
}

impl Version {
    /// A version.
    pub fn new(hlc: u64, node: MemberId) -> Self {
        Self {
            hlc,
            node: *node.as_bytes(),
        }
    }

    /// The writer's id.
    pub fn node(&self) -> MemberId {
        MemberId::from_bytes(self.node)
    }

    /// The wall-clock milliseconds of the clock reading.
    pub fn millis(&self) -> u64 {
        self.hlc >> LOGICAL_BITS
    }
}

/// A hybrid logical clock: never goes backwards, stays close to the wall clock, and moves past
/// every clock reading it observes (bounded by the caller: readings too far in the future are
/// refused before they are observed).
#[derive(Clone, Copy, Debug, Default)]
pub struct Hlc {
    last: u64,
}

impl Hlc {
    /// A reading for a local event at wall-clock `now_ms`.
    pub fn tick(&mut self, now_ms: u64) -> u64 {
        let physical = now_ms << LOGICAL_BITS;
        self.last = physical.max(self.last.saturating_add(1));
        self.last
    }

    /// Moves past a reading seen in a message.
    pub fn observe(&mut self, hlc: u64) {
        self.last = self.last.max(hlc);
    }
}
