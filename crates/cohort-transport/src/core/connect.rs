//! Reconnecting and batching decisions for the sender, without IO:
//! - [`Backoff`]: a peer's back-off after a connect round fails (sends fail fast until it has
//!   passed; each failed round doubles it, up to a maximum; a connect ends it);
//! - [`retry_pause`]: the pause between the attempts of one connect round;
//! - [`WriteBatch`]: how many queued frames one write takes (a byte budget, and no more
//!   ACK-wanting frames than the in-flight table has room for).

use std::time::{Duration, Instant};

/// The shortest pause between two connect attempts of a round.
pub(crate) const MIN_RETRY_PAUSE: Duration = Duration::from_millis(10);

/// A peer's reconnect back-off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Backoff {
    /// Until when sends fail fast, and the back-off that set it.
    down: Option<(Instant, Duration)>,
}

impl Backoff {
    /// `Err(retry in)` while backing off at `now`.
    pub(crate) fn accepting(&self, now: Instant) -> Result<(), Duration> {
        match self.down {
            Some((until, _)) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// A connection opened: the back-off ends, and the next failure starts from `base` again.
    pub(crate) fn connected(&mut self) {
        self.down = None;
    }

    /// A connect round failed at `now`: sends fail fast for `base` after the first failed
    /// round, twice the last back-off after each further one, never more than `max`.
    /// Returns the back-off chosen.
    pub(crate) fn round_failed(&mut self, now: Instant, base: Duration, max: Duration) -> Duration {
        let backoff = match self.down {
            Some((_, last)) => last.saturating_mul(2).min(max),
            None => base.min(max),
        };
        self.down = Some((now + backoff, backoff));
        backoff
    }
}

/// The pause before a round's next attempt: `MIN_RETRY_PAUSE` before the second, then twice
/// the last, never more than `cap` (nor less than `MIN_RETRY_PAUSE`).
pub(crate) fn retry_pause(last: Option<Duration>, cap: Duration) -> Duration {
    let cap = cap.max(MIN_RETRY_PAUSE);
    match last {
        None => MIN_RETRY_PAUSE,
        Some(p) => p.saturating_mul(2).min(cap),
    }
}

/// One write's share of the queue: at least one frame, then frames while fewer than
/// `max_bytes` were taken and the ACK-wanting ones fit in `ack_room`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WriteBatch {
    max_bytes: usize,
    ack_room: usize,
    bytes: usize,
    acks: usize,
    frames: usize,
}

impl WriteBatch {
    pub(crate) fn new(max_bytes: usize, ack_room: usize) -> Self {
        Self {
            max_bytes,
            ack_room,
            bytes: 0,
            acks: 0,
            frames: 0,
        }
    }

    /// Takes the next frame (`len` bytes, wanting an ACK or not) if it belongs in this
    /// write; false ends the batch.
    pub(crate) fn take(&mut self, len: usize, want_ack: bool) -> bool {
        let full =
            self.bytes >= self.max_bytes || self.acks + usize::from(want_ack) > self.ack_room;
        if self.frames > 0 && full {
            return false;
        }
        self.bytes += len;
        self.acks += usize::from(want_ack);
        self.frames += 1;
        true
    }

    /// Bytes taken so far.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests;
