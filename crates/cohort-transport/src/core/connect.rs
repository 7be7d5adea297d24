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
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn back_off_doubles_to_its_cap_and_a_connect_ends_it() {
        let t0 = Instant::now();
        let (base, max) = (Duration::from_millis(100), Duration::from_millis(350));
        let mut b = Backoff::default();
        assert_eq!(b.accepting(t0), Ok(()));
        assert_eq!(b.round_failed(t0, base, max), base);
        assert_eq!(b.accepting(t0), Err(base));
        assert_eq!(
            b.accepting(t0 + Duration::from_millis(40)),
            Err(Duration::from_millis(60))
        );
        assert_eq!(b.accepting(t0 + base), Ok(()), "passed: sends go again");
        let backoffs: Vec<_> = (0..3).map(|_| b.round_failed(t0, base, max)).collect();
        assert_eq!(
            backoffs,
            [Duration::from_millis(200), max, max],
            "doubled, then capped"
        );
        b.connected();
        assert_eq!(b.accepting(t0), Ok(()));
        assert_eq!(b.round_failed(t0, base, max), base, "from the base again");
    }

    #[test]
    fn a_round_pauses_from_the_minimum_doubling_to_its_cap() {
        let cap = Duration::from_millis(50);
        let mut last = None;
        let pauses: Vec<_> = (0..4)
            .map(|_| {
                let p = retry_pause(last, cap);
                last = Some(p);
                p.as_millis()
            })
            .collect();
        assert_eq!(pauses, [10, 20, 40, 50]);
        assert_eq!(
            retry_pause(Some(MIN_RETRY_PAUSE), Duration::ZERO),
            MIN_RETRY_PAUSE
        );
    }

    #[test]
    fn a_write_stops_once_its_bytes_are_spent_or_acks_have_no_room() {
        let mut b = WriteBatch::new(300, 1);
        let taken: Vec<bool> = [(100, false), (100, true), (100, false), (1, false)]
            .iter()
            .map(|&(len, ack)| b.take(len, ack))
            .collect();
        assert_eq!(taken, [true, true, true, false], "300 bytes: spent");
        let mut b = WriteBatch::new(300, 1);
        assert!(b.take(10, true));
        assert!(!b.take(10, true), "no room for a second ACK");
        let mut b = WriteBatch::new(300, 0);
        assert!(b.take(1000, true), "the first frame always goes");
    }

    proptest! {
        /// Whatever the queue holds: a batch takes a prefix of it, at least one frame, no more
        /// ACK-wanting frames than the room (unless the first alone), and stops only when the
        /// byte budget is spent or the next ACK-wanting frame would not fit.
        #[test]
        fn a_write_takes_a_bounded_prefix(
            frames in proptest::collection::vec((1usize..64, any::<bool>()), 1..100),
            max_bytes in 1usize..1024,
            ack_room in 0usize..10,
        ) {
            let mut batch = WriteBatch::new(max_bytes, ack_room);
            let taken = frames.iter().take_while(|(len, ack)| batch.take(*len, *ack)).count();
            prop_assert!(taken >= 1);
            let prefix = &frames[..taken];
            let bytes: usize = prefix.iter().map(|(l, _)| l).sum();
            let acks = prefix.iter().filter(|(_, a)| *a).count();
            prop_assert_eq!(batch.bytes(), bytes);
            if taken > 1 {
                prop_assert!(acks <= ack_room);
                let before_last: usize = prefix[..taken - 1].iter().map(|(l, _)| l).sum();
                prop_assert!(before_last < max_bytes);
            }
            if let Some((_, next_ack)) = frames.get(taken) {
                prop_assert!(bytes >= max_bytes || acks + usize::from(*next_ack) > ack_room);
            }
        }
    }
}
