//! What the layer above hands the transport to send: data frames ([`OutData`], [`DataSend`])
//! and what runs when each completes ([`Completion`]).

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use cohort_net::WarnLimiter;

use cohort_wire::{DataFrame, SendOptions};

#[cfg(doc)]
use crate::TransportHandle;
use crate::{Delivered, SendError};

/// Called once per destination when its delivery completes, from a transport task. Keep it
/// short: it must not block.
///
/// Either a closure of its own ([`Completion::new`]), or one of many completions that report
/// to the same object ([`Completion::shared`]): a receipt that collects the results of its
/// frames to every destination. A shared completion costs no allocation per frame.
///
/// Runs exactly once: a completion dropped without being run (a task that ended before
/// completing it) runs with [`SendError::Stopped`] as it goes. A completion that panics is
/// caught where it runs (a rate-limited warning says so): the transport's task, and the
/// other sends it carries, go on.
pub struct Completion(Option<CompletionFn>);

enum CompletionFn {
    Once(Box<dyn FnOnce(Result<Delivered, SendError>) + Send>),
    Shared(Arc<dyn Completions>, usize),
}

/// What [`Completion::shared`] completions report to: told which of its frames (by the index
/// the completion was made with) completed, and how.
pub trait Completions: Send + Sync + 'static {
    /// The frame made with `index` completed with `result`.
    fn complete(&self, index: usize, result: Result<Delivered, SendError>);
}

impl Completion {
    /// A completion that runs `f`.
    pub fn new(f: impl FnOnce(Result<Delivered, SendError>) + Send + 'static) -> Self {
        Self(Some(CompletionFn::Once(Box::new(f))))
    }

    /// A completion that reports to `to` as its frame `index`.
    pub fn shared(to: Arc<dyn Completions>, index: usize) -> Self {
        Self(Some(CompletionFn::Shared(to, index)))
    }

    /// Runs the completion with the frame's result.
    pub fn complete(mut self, result: Result<Delivered, SendError>) {
        if let Some(f) = self.0.take() {
            f.run(result);
        }
    }
}

impl CompletionFn {
    #[inline]
    fn run(self, result: Result<Delivered, SendError>) {
        // The caller's code, on a transport task. Unwinding through the task would drop the
        // completions it has yet to run (reporting `Stopped` for sends that were ACKed), and
        // their closures would then run during the unwinding, where a second panic aborts.
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match self {
            Self::Once(f) => f(result),
            Self::Shared(to, index) => to.complete(index, result),
        }));
        if ran.is_err() {
            warn_panicked();
        }
    }
}

/// Says, at most once per [`cohort_net::WARN_INTERVAL`] for the process, that completions
/// panicked (a completion knows no transport whose counters it could use).
#[cold]
fn warn_panicked() {
    static WARN: OnceLock<WarnLimiter> = OnceLock::new();
    let warn = WARN.get_or_init(|| WarnLimiter::new(cohort_net::WARN_INTERVAL));
    if let Some(suppressed) = warn.allow("completion_panicked", Instant::now()) {
        tracing::warn!(
            suppressed,
            "a send's completion panicked; caught, the transport goes on"
        );
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f.run(Err(SendError::Stopped));
        }
    }
}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Some(CompletionFn::Once(_)) => "Completion::Once",
            Some(CompletionFn::Shared(..)) => "Completion::Shared",
            None => "Completion (run)",
        })
    }
}

/// A data frame handed to the transport ([`TransportHandle::send_data`], [`DataSend`]),
/// encoded by the connection that writes it: one send's own (no allocation), or shared by the
/// sends of one message to several destinations.
#[derive(Clone, Debug)]
pub enum OutData {
    /// One destination's frame.
    Own(DataFrame),
    /// A frame several destinations' sends share.
    Shared(Arc<DataFrame>),
}

impl std::ops::Deref for OutData {
    type Target = DataFrame;

    fn deref(&self) -> &DataFrame {
        match self {
            Self::Own(f) => f,
            Self::Shared(f) => f,
        }
    }
}

impl From<DataFrame> for OutData {
    fn from(f: DataFrame) -> Self {
        Self::Own(f)
    }
}

impl From<Arc<DataFrame>> for OutData {
    fn from(f: Arc<DataFrame>) -> Self {
        Self::Shared(f)
    }
}

/// One frame of [`TransportHandle::send_data_many`]: what [`TransportHandle::send_data`]
/// takes, but the destination.
pub struct DataSend {
    /// The frame, encoded by the connection that writes it.
    pub frame: OutData,
    /// Its message id (what the peer's ACK names).
    pub msg_id: u64,
    /// Its send options.
    pub options: SendOptions,
    /// Runs once, when the frame completes or fails.
    pub done: Completion,
}

impl std::fmt::Debug for DataSend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataSend")
            .field("msg_id", &self.msg_id)
            .field("options", &self.options)
            .field("payload_len", &self.frame.payload.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A completion runs exactly once: when completed (and not again as it goes), or, dropped
    /// unrun, with `Stopped`.
    #[test]
    fn a_completion_runs_once_and_a_dropped_one_says_stopped() {
        let runs = Arc::new(Mutex::new(Vec::new()));
        let made = |runs: &Arc<Mutex<Vec<_>>>| {
            let runs = runs.clone();
            Completion::new(move |r| runs.lock().unwrap().push(r))
        };
        made(&runs).complete(Ok(Delivered::Acked));
        drop(made(&runs));
        assert_eq!(
            *runs.lock().unwrap(),
            [Ok(Delivered::Acked), Err(SendError::Stopped)]
        );
    }

    /// A completion that panics is caught where it runs: completed, dropped unrun, or dropped
    /// while something else unwinds (where a second panic would abort the process).
    #[test]
    fn a_completion_that_panics_is_caught_however_it_runs() {
        Completion::new(|_| panic!("completed")).complete(Ok(Delivered::Sent));
        drop(Completion::new(|_| panic!("dropped")));
        let unwound = std::panic::catch_unwind(|| {
            let _pending = Completion::new(|_| panic!("dropped while unwinding"));
            panic!("the task's own panic");
        });
        assert!(unwound.is_err(), "only the task's own panic unwinds");
    }
}
