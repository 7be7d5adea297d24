//! Tasks the channel starts outside its owner task: RPC replies that had to wait for room in
//! the queue, asynchronous RPC handlers' answers, and the "no RPC channel" answers. (The
//! owner's own tasks, probes and a leave's wait, are in the owner's `JoinSet`.)
//!
//! One set for the channel, at most [`MAX_TASKS`] at a time: past it the work is refused and
//! counted (`ChannelStats::tasks_refused`); for a reply that means the caller sees none and
//! times out, as if the network had lost it, where an unbounded set would have let a peer
//! that sends requests and never reads the answers grow this node's memory. Finished tasks are
//! reaped at the next start; [`Tasks::stop`] (the channel's last stop) aborts the rest and
//! refuses new ones.

use std::future::Future;
use std::sync::{Mutex, PoisonError};

use tokio::task::JoinSet;

/// Most tasks of one channel running at once (beyond: refused and counted).
pub(crate) const MAX_TASKS: usize = 4096;

/// Why a task was not started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// [`MAX_TASKS`] are running.
    Full,
    /// The channel stopped.
    Stopped,
}

/// The channel's tasks (see the module's docs).
pub(crate) struct Tasks {
    limit: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    set: JoinSet<()>,
    stopped: bool,
}

impl Default for Tasks {
    fn default() -> Self {
        Self::with_limit(MAX_TASKS)
    }
}

impl Tasks {
    pub(crate) fn with_limit(limit: usize) -> Self {
        Self {
            limit,
            inner: Mutex::new(Inner {
                set: JoinSet::new(),
                stopped: false,
            }),
        }
    }

    /// Starts `task` on `rt`, unless the channel stopped or the set is full.
    pub(crate) fn spawn(
        &self,
        rt: &tokio::runtime::Handle,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Refused> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.stopped {
            return Err(Refused::Stopped);
        }
        while inner.set.try_join_next().is_some() {}
        if inner.set.len() >= self.limit {
            return Err(Refused::Full);
        }
        inner.set.spawn_on(task, rt);
        Ok(())
    }

    /// Aborts every task and refuses new ones.
    pub(crate) fn stop(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.stopped = true;
        inner.set.abort_all();
    }

    /// Tasks started and not yet reaped (finished ones go at the next start).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set
            .len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Dropped with its task: says so on `tx`.
    struct Guard(std::sync::mpsc::Sender<()>);

    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }

    #[tokio::test]
    async fn the_set_is_bounded_reaps_what_ended_and_stop_aborts_the_rest() {
        let rt = tokio::runtime::Handle::current();
        let tasks = Tasks::with_limit(3);
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..3 {
            let guard = Guard(tx.clone());
            tasks
                .spawn(&rt, async move {
                    let _guard = guard;
                    std::future::pending::<()>().await;
                })
                .unwrap();
        }
        assert_eq!(tasks.spawn(&rt, async {}), Err(Refused::Full));
        assert_eq!(tasks.len(), 3);
        tasks.stop();
        for _ in 0..3 {
            tokio::task::yield_now().await;
            rx.recv_timeout(Duration::from_secs(10))
                .expect("an aborted task drops its future");
        }
        assert_eq!(tasks.spawn(&rt, async {}), Err(Refused::Stopped));
    }

    #[tokio::test]
    async fn finished_tasks_make_room() {
        let rt = tokio::runtime::Handle::current();
        let tasks = Tasks::with_limit(2);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..10 {
            let tx = tx.clone();
            tasks
                .spawn(&rt, async move {
                    let _ = tx.send(());
                })
                .unwrap();
            // Wait for it to end: the next start reaps it.
            tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap();
            tokio::task::yield_now().await;
        }
    }
}
