//! [`Alarm`]: an optional deadline that a driver's loop sets again on every pass.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// An optional deadline for a `select!` loop, kept for the loop's whole life.
///
/// A `tokio::time::sleep_until` made afresh on each pass is a timer entry registered when the
/// pass waits and removed when it ends, both under the timer's lock. An `Alarm` holds one
/// entry and moves it only when the instant changes; a later instant (an idle deadline pushed
/// back by each read or write) is an atomic store, no lock.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use cohort_net::Alarm;
///
/// let mut alarm = Alarm::new();
/// alarm.set(Some(tokio::time::Instant::now() + Duration::from_millis(5)));
/// tokio::select! {
///     () = alarm.ring(), if alarm.is_set() => {}
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct Alarm {
    sleep: Pin<Box<Sleep>>,
    at: Option<Instant>,
}

impl Default for Alarm {
    fn default() -> Self {
        Self::new()
    }
}

impl Alarm {
    /// An alarm that is not set.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime with its time driver enabled, as `tokio::time::sleep` does.
    pub fn new() -> Self {
        // Not registered with the timer until first polled, so the instant is not used.
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        Self {
            sleep: Box::pin(tokio::time::sleep_until(far)),
            at: None,
        }
    }

    /// Sets the deadline (`None`: none). Nothing changes when it is the same instant.
    pub fn set(&mut self, at: Option<Instant>) {
        if at == self.at {
            return;
        }
        if let Some(t) = at {
            self.sleep.as_mut().reset(t);
        }
        self.at = at;
    }

    /// The deadline, if set.
    pub fn at(&self) -> Option<Instant> {
        self.at
    }

    /// True when a deadline is set: guard [`Alarm::ring`] with it in a `select!`.
    pub fn is_set(&self) -> bool {
        self.at.is_some()
    }

    /// Completes when the deadline passes (never while none is set). Polled again after it
    /// completed, it completes again at once until the deadline is set anew.
    pub fn ring(&mut self) -> Ring<'_> {
        Ring(self)
    }
}

/// The future of [`Alarm::ring`].
#[derive(Debug)]
pub struct Ring<'a>(&'a mut Alarm);

impl Future for Ring<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let alarm = &mut *self.get_mut().0;
        if alarm.at.is_none() {
            return Poll::Pending;
        }
        alarm.sleep.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rings_at_its_latest_deadline_and_never_when_unset() {
        let start = Instant::now();
        let mut alarm = Alarm::new();
        // Unset: a select with a short sleep beside it takes the sleep.
        let rang = tokio::select! {
            () = alarm.ring() => true,
            () = tokio::time::sleep(Duration::from_millis(50)) => false,
        };
        assert!(!rang);
        alarm.set(Some(start + Duration::from_millis(100)));
        // Pushed back before it rang: it rings at the later instant.
        alarm.set(Some(start + Duration::from_millis(300)));
        alarm.ring().await;
        assert_eq!(Instant::now() - start, Duration::from_millis(300));
        // Brought forward after ringing: rings at the new, earlier-than-before instant.
        alarm.set(Some(Instant::now() + Duration::from_millis(10)));
        alarm.ring().await;
        assert_eq!(Instant::now() - start, Duration::from_millis(310));
        alarm.set(None);
        assert!(!alarm.is_set());
        assert_eq!(alarm.at(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_than_the_registered_one_is_kept() {
        let start = Instant::now();
        let mut alarm = Alarm::new();
        alarm.set(Some(start + Duration::from_secs(60)));
        // Set (and registered with the timer) at 60 s, polled once without completing.
        let early = tokio::select! {
            () = alarm.ring() => true,
            () = tokio::time::sleep(Duration::from_millis(1)) => false,
        };
        assert!(!early);
        alarm.set(Some(start + Duration::from_millis(20)));
        alarm.ring().await;
        assert_eq!(Instant::now() - start, Duration::from_millis(20));
    }
}
