//! The delivery thread: listeners run here (they may block, as Tribes' do), not on the owner
//! task; unless every listener says it never blocks (`ChannelListener::may_block`), and then
//! the owner task runs them itself.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use cohort_wire::SendOptions;
use tokio::sync::{Semaphore, mpsc};

use crate::core::Acker;
use crate::listener::{ChannelListener, ChannelMessage};

use super::handle::{ChannelHandle, HandleShared};

/// The FAIL_ACK reason of a message no listener accepted.
pub(crate) const NO_LISTENER: &str = "no listener accepted the message";

pub(super) struct Delivery {
    pub(super) msg: ChannelMessage,
    pub(super) ack: Option<Acker>,
}

/// Most messages handed to the delivery thread at once. A batch is handed over when the
/// owner has nothing more to give out of one input, or when it holds this many.
pub(super) const DELIVERY_BATCH: usize = 256;

/// The owner's end of the delivery queue. Messages go over in batches (one wake-up of the
/// delivery thread per batch, not per message: on a VM a thread wake-up costs more than
/// delivering a small message); the bound is in messages, `ChannelConfig::delivery_queue`:
/// a message takes a permit of `room` when handed over and gives it back once its listeners
/// ran. When the queue is full the owner waits, and the transport stops being read
/// (backpressure to the senders).
pub(super) struct DeliveryQueue {
    tx: mpsc::UnboundedSender<Vec<Delivery>>,
    room: Arc<Semaphore>,
    pending: Vec<Delivery>,
    /// The largest batch: never more than the queue's bound.
    batch: usize,
    /// The queue's bound: all of `room` is free when the delivery thread holds nothing.
    capacity: usize,
    /// What delivering on the owner task needs (set once the channel's handle exists).
    inline: Option<Inline>,
}

/// The channel and runtime the listeners see when they run on the owner task.
pub(super) struct Inline {
    pub(super) handle: ChannelHandle,
    pub(super) rt: tokio::runtime::Handle,
}

/// The delivery thread's end.
pub(super) struct DeliveryRx {
    rx: mpsc::UnboundedReceiver<Vec<Delivery>>,
    room: Arc<Semaphore>,
}

/// A delivery queue bounded at `capacity` messages (at least 1).
pub(super) fn delivery_queue(capacity: usize) -> (DeliveryQueue, DeliveryRx) {
    let capacity = capacity.max(1);
    let (tx, rx) = mpsc::unbounded_channel();
    let room = Arc::new(Semaphore::new(capacity));
    let queue = DeliveryQueue {
        tx,
        room: room.clone(),
        pending: Vec::new(),
        batch: DELIVERY_BATCH.min(capacity),
        capacity,
        inline: None,
    };
    (queue, DeliveryRx { rx, room })
}

impl DeliveryQueue {
    /// Queues a message; hands the batch over when it is full (waiting for room). Returns
    /// whether it had to wait.
    pub(super) async fn push(&mut self, d: Delivery) -> bool {
        self.pending.push(d);
        if self.pending.len() >= self.batch {
            return self.flush().await;
        }
        false
    }

    /// Lets [`Self::flush`] run listeners that never block on the owner task.
    pub(super) fn set_inline(&mut self, inline: Inline) {
        self.inline = Some(inline);
    }

    /// Hands what is queued to the delivery thread, waiting for room when the queue is full;
    /// or runs its listeners here (see [`Self::deliver_inline`]). Returns whether it waited.
    pub(super) async fn flush(&mut self) -> bool {
        if self.pending.is_empty() || self.deliver_inline() {
            return false;
        }
        let n = u32::try_from(self.pending.len()).unwrap_or(u32::MAX);
        let (permit, waited) = match self.room.try_acquire_many(n) {
            Ok(p) => (Some(p), false),
            Err(_) => (self.room.acquire_many(n).await.ok(), true),
        };
        // The delivery thread gives the permits back, message by message batch.
        if let Some(p) = permit {
            p.forget();
        }
        let batch = std::mem::take(&mut self.pending);
        // Closed: the delivery thread is gone (the channel is stopping); nothing to deliver to.
        let _ = self.tx.send(batch);
        waited
    }
}

impl DeliveryQueue {
    /// Runs the queued messages' listeners on this (the owner's) task, when every listener
    /// says it never blocks ([`ChannelListener::may_block`]) and the delivery thread holds
    /// nothing: a message delivered here never overtakes one handed to the thread. Returns
    /// whether it did.
    fn deliver_inline(&mut self) -> bool {
        let Some(inline) = &self.inline else {
            return false;
        };
        if self.room.available_permits() != self.capacity {
            return false;
        }
        let shared = &inline.handle.shared;
        // Cluster listeners are not asked: any of them keeps delivery on the thread.
        if !shared.cluster_listeners.is_empty() {
            return false;
        }
        let (listeners, rpc_listeners) = listener_lists(shared);
        // A listener that panics here is taken to block (this is the owner task).
        let may_block = |l: &Arc<dyn ChannelListener>| {
            catch_unwind(AssertUnwindSafe(|| l.may_block())).unwrap_or(true)
        };
        if listeners.iter().chain(&rpc_listeners).any(may_block) {
            return false;
        }
        shared
            .counters
            .delivered_inline
            .fetch_add(self.pending.len() as u64, Ordering::Relaxed);
        deliver_batch(
            shared,
            &inline.rt,
            &listeners,
            &rpc_listeners,
            self.pending.drain(..),
        );
        true
    }
}

type Listeners = Vec<Arc<dyn ChannelListener>>;

/// The channel's listeners and its RPC channels' listeners, as they are now (copies: a
/// listener may add another while it runs).
fn listener_lists(shared: &HandleShared) -> (Listeners, Listeners) {
    let read =
        |l: &std::sync::RwLock<Listeners>| l.read().unwrap_or_else(PoisonError::into_inner).clone();
    (read(&shared.listeners), read(&shared.rpc_listeners))
}

/// Delivers `batch` in order: RPC envelopes to the RPC channels' listeners only, everything
/// else to the listeners.
fn deliver_batch(
    shared: &Arc<HandleShared>,
    rt: &tokio::runtime::Handle,
    listeners: &[Arc<dyn ChannelListener>],
    rpc_listeners: &[Arc<dyn ChannelListener>],
    batch: impl Iterator<Item = Delivery>,
) {
    for Delivery { msg, ack } in batch {
        let to = if crate::rpc::is_envelope(&msg.payload) {
            rpc_listeners
        } else {
            listeners
        };
        deliver_one(shared, rt, to, &msg, ack);
    }
}

/// The delivery thread: listeners run here, off the runtime (they are synchronous and may
/// block, as Tribes' listeners may), in arrival order. A listener that panics counts as a
/// failed one (FAIL_ACK); the thread carries on. The listener lists are read once per batch.
#[allow(clippy::needless_pass_by_value)]
pub(super) fn deliver(handle: &ChannelHandle, rt: &tokio::runtime::Handle, mut queue: DeliveryRx) {
    let shared = handle.shared.clone();
    while let Some(batch) = queue.rx.blocking_recv() {
        let n = batch.len();
        let (listeners, rpc_listeners) = listener_lists(&shared);
        deliver_batch(&shared, rt, &listeners, &rpc_listeners, batch.into_iter());
        queue.room.add_permits(n);
    }
}

/// The FAIL_ACK reason of a listener that panicked.
fn panicked(payload: &(dyn std::any::Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a non-text panic");
    format!("a listener panicked: {what}")
}

fn deliver_one(
    shared: &Arc<HandleShared>,
    rt: &tokio::runtime::Handle,
    listeners: &[Arc<dyn ChannelListener>],
    msg: &ChannelMessage,
    ack: Option<Acker>,
) {
    let failed = |failure: &mut Option<String>, why: String| {
        shared
            .counters
            .listener_errors
            .fetch_add(1, Ordering::Relaxed);
        failure.get_or_insert(why);
    };
    let mut accepted = false;
    let mut failure = None;
    // A listener that panics is a failed listener: the panic is caught here, so the thread,
    // the other listeners and the queue's accounting carry on.
    for l in shared.cluster_listeners.iter() {
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| l.message_received(msg))) {
            failed(&mut failure, panicked(p.as_ref()));
        }
    }
    for l in listeners {
        match catch_unwind(AssertUnwindSafe(|| l.accept(msg))) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(p) => {
                failed(&mut failure, panicked(p.as_ref()));
                continue;
            }
        }
        accepted = true;
        match catch_unwind(AssertUnwindSafe(|| l.message_received(msg))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed(&mut failure, e.to_string()),
            Err(p) => failed(&mut failure, panicked(p.as_ref())),
        }
    }
    shared.counters.delivered.fetch_add(1, Ordering::Relaxed);
    if !accepted {
        shared.counters.no_listener.fetch_add(1, Ordering::Relaxed);
        // A SYNCHRONIZED_ACK promises that a listener processed it: none did.
        failure.get_or_insert_with(|| NO_LISTENER.to_owned());
        if let Some(reply) = crate::rpc::no_channel_reply(&msg.payload) {
            let handle = ChannelHandle {
                shared: shared.clone(),
                _life: None,
            };
            if let Some(to) = msg.member.clone() {
                // One of the channel's tasks: bounded (beyond, the answer is dropped and the
                // caller times out) and ended by the channel's stop.
                let sender = handle.internal();
                handle.spawn_task(rt, async move {
                    let _ = sender
                        .send(&[(*to).clone()], reply, SendOptions::ASYNCHRONOUS)
                        .await;
                });
            }
        }
    }
    if let Some(ack) = ack {
        match failure {
            Some(reason) => ack.fail(reason),
            None => ack.ack(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use bytes::Bytes;
    use cohort_wire::{MemberId, SendOptions};

    use super::{Delivery, delivery_queue};
    use crate::listener::ChannelMessage;

    fn delivery(n: u64) -> Delivery {
        Delivery {
            msg: ChannelMessage {
                from: MemberId::default(),
                member: None,
                peer: std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
                msg_id: n,
                options: SendOptions::NONE,
                timestamp_ms: 0,
                payload: Bytes::new(),
            },
            ack: None,
        }
    }

    fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[tokio::test]
    async fn batches_go_over_whole_and_the_bound_is_in_messages() {
        let (mut queue, mut rx) = delivery_queue(4);
        // Below the batch size nothing is handed over until the flush.
        for n in 0..3 {
            queue.push(delivery(n)).await;
        }
        assert!(rx.rx.try_recv().is_err());
        queue.flush().await;
        let first = rx.rx.try_recv().expect("one batch");
        assert_eq!(
            first.iter().map(|d| d.msg.msg_id).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        // One message of room is left: two more wait for the delivery thread.
        queue.push(delivery(3)).await;
        queue.push(delivery(4)).await;
        {
            let mut flush = pin!(queue.flush());
            assert!(
                poll_once(flush.as_mut()).is_pending(),
                "the bound is 4 messages"
            );
            // The delivery thread ran the first batch's listeners: its room comes back.
            rx.room.add_permits(first.len());
            assert!(poll_once(flush.as_mut()).is_ready());
        }
        let second = rx.rx.try_recv().expect("the second batch");
        assert_eq!(
            second.iter().map(|d| d.msg.msg_id).collect::<Vec<_>>(),
            [3, 4]
        );
        assert_eq!(rx.room.available_permits(), 2);
    }

    #[tokio::test]
    async fn a_full_batch_is_handed_over_without_a_flush() {
        let (mut queue, mut rx) = delivery_queue(2);
        queue.push(delivery(0)).await;
        queue.push(delivery(1)).await;
        // The batch never exceeds the bound (2 here, not DELIVERY_BATCH).
        assert_eq!(rx.rx.try_recv().expect("a batch").len(), 2);
    }
}
