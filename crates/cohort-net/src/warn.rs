//! Rate-limited warnings: a flood of bad input gives one log line per kind per interval, with
//! the count of what was suppressed, not one line per packet.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often one kind of warning may be written, by default.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);
/// Most distinct kinds tracked; kinds are a fixed set of `&'static str` per component, so this
/// only guards against a caller's mistake.
const MAX_KINDS: usize = 256;

/// Decides which warnings are written. The caller passes the time (no clock is read here).
///
/// ```
/// use std::time::{Duration, Instant};
/// use cohort_net::WarnLimiter;
/// let limiter = WarnLimiter::new(Duration::from_secs(10));
/// let t = Instant::now();
/// assert_eq!(limiter.allow("malformed", t), Some(0)); // written
/// assert_eq!(limiter.allow("malformed", t), None); // suppressed
/// assert_eq!(limiter.allow("malformed", t), None);
/// // The next line after the interval says how many were suppressed.
/// assert_eq!(limiter.allow("malformed", t + Duration::from_secs(10)), Some(2));
/// ```
#[derive(Debug)]
pub struct WarnLimiter {
    interval: Duration,
    /// Per kind: when a line was last written, and how many were suppressed since.
    kinds: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl Default for WarnLimiter {
    fn default() -> Self {
        Self::new(WARN_INTERVAL)
    }
}

impl WarnLimiter {
    /// At most one line per kind per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            kinds: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(suppressed)` when a line of `kind` may be written now (`suppressed` lines of that
    /// kind were held back since the last one); `None` when this one is to be suppressed.
    pub fn allow(&self, kind: &'static str, now: Instant) -> Option<u64> {
        let mut kinds = self
            .kinds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((last, suppressed)) = kinds.get_mut(kind) {
            if now.saturating_duration_since(*last) < self.interval {
                *suppressed += 1;
                return None;
            }
            let n = std::mem::take(suppressed);
            *last = now;
            return Some(n);
        }
        if kinds.len() >= MAX_KINDS {
            return None;
        }
        kinds.insert(kind, (now, 0));
        Some(0)
    }
}

/// Writes a `tracing::warn!` through a [`WarnLimiter`]: `warn_limited!(limiter, "kind",
/// field = value, ...; "message")`. Suppressed lines are counted, and the next line of that
/// kind carries `suppressed = N`.
#[macro_export]
macro_rules! warn_limited {
    ($limiter:expr, $kind:expr, $($fields:tt)*) => {
        if let Some(suppressed) = $limiter.allow($kind, ::std::time::Instant::now()) {
            ::tracing::warn!(kind = $kind, suppressed, $($fields)*);
        }
    };
}
