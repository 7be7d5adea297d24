//! `tower_service::Service` for sends (feature `tower`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::admission::{Reservation, Room};
use crate::channel::{ChannelError, ChannelHandle};
use crate::receipt::SendReceipt;
use bytes::Bytes;
use cohort_wire::{Member, SendOptions};

/// A send, as a tower request.
#[derive(Clone, Debug)]
pub struct SendRequest {
    /// Destinations.
    pub destinations: Vec<Member>,
    /// Payload.
    pub payload: Bytes,
    /// Options.
    pub options: SendOptions,
}

/// A [`ChannelHandle`] as a `tower_service::Service`: `poll_ready` waits for room in the
/// ASYNCHRONOUS queue (message count) and reserves it; the next `call` uses that place, so a
/// ready service's ASYNCHRONOUS send never waits for queue room (only for its bytes). Tower's
/// rate-limit, timeout and load-shed layers see the channel's backpressure.
pub struct ChannelService {
    handle: ChannelHandle,
    /// The wait for a place, while `poll_ready` is pending.
    waiting: Option<Pin<Box<dyn Future<Output = Reservation> + Send + Sync>>>,
    permit: Option<Reservation>,
}

impl ChannelHandle {
    /// This handle as a tower service.
    pub fn into_service(self) -> ChannelService {
        ChannelService {
            handle: self,
            waiting: None,
            permit: None,
        }
    }
}

impl tower_service::Service<SendRequest> for ChannelService {
    type Response = SendReceipt;
    type Error = ChannelError;
    type Future = Pin<Box<dyn Future<Output = Result<SendReceipt, ChannelError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ChannelError>> {
        if self.permit.is_some() {
            return Poll::Ready(Ok(()));
        }
        let handle = &self.handle;
        let waiting = self.waiting.get_or_insert_with(|| {
            // Not queued: a future that may sit unpolled must not hold the queue's turn.
            Box::pin(Reservation::take_when_idle(
                handle.admission(),
                Room::new(1, 0),
            ))
        });
        match waiting.as_mut().poll(cx) {
            Poll::Ready(p) => {
                self.waiting = None;
                self.permit = Some(p);
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: SendRequest) -> Self::Future {
        // The place poll_ready reserved goes with the message (and back, if it is not
        // ASYNCHRONOUS).
        let reserved = self.permit.take();
        let handle = self.handle.clone();
        Box::pin(async move {
            handle
                .send_reserved(&req.destinations, req.payload, req.options, reserved)
                .await
        })
    }
}
