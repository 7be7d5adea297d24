//! The delivery thread: listeners run here (they may block, as Tribes' do), never on the
//! owner task.

use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use cohort_wire::SendOptions;
use tokio::sync::mpsc;

use crate::core::Acker;
use crate::listener::ChannelMessage;

use super::handle::ChannelHandle;

/// The FAIL_ACK reason of a message no listener accepted.
pub(crate) const NO_LISTENER: &str = "no listener accepted the message";

pub(super) struct Delivery {
    pub(super) msg: ChannelMessage,
    pub(super) ack: Option<Acker>,
}

/// The delivery thread: listeners run here, off the runtime (they are synchronous and may
/// block, as Tribes' listeners may), in arrival order. A listener that panics counts as a
/// failed one (FAIL_ACK); the thread carries on.
#[allow(clippy::needless_pass_by_value)]
pub(super) fn deliver(
    handle: &ChannelHandle,
    rt: &tokio::runtime::Handle,
    mut rx: mpsc::Receiver<Delivery>,
) {
    let shared = handle.shared.clone();
    while let Some(Delivery { msg, ack }) = rx.blocking_recv() {
        for l in shared.cluster_listeners.iter() {
            l.message_received(&msg);
        }
        // RPC envelopes go to the RPC channels only; everything else to the listeners.
        let rpc = crate::rpc::is_envelope(&msg.payload);
        let listeners = if rpc {
            &shared.rpc_listeners
        } else {
            &shared.listeners
        }
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
        let mut accepted = false;
        let mut failure = None;
        for l in &listeners {
            if !l.accept(&msg) {
                continue;
            }
            accepted = true;
            if let Err(e) = l.message_received(&msg) {
                shared
                    .counters
                    .listener_errors
                    .fetch_add(1, Ordering::Relaxed);
                failure.get_or_insert_with(|| e.to_string());
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
                    rt.spawn(async move {
                        let _ = handle
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
}
