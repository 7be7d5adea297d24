//! The traits behind which a channel's transport and membership service can be swapped.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;
use cohort_membership::{
    FailureEvidence, MembershipEvent, MembershipHandle, MembershipStats, MembershipView,
};
use cohort_net::Net;
use cohort_transport::{Completion, DataSend, OutData, TransportHandle, TransportStats};
use cohort_wire::{CohortCodec, Member, MemberKey, SendOptions};
use tokio::sync::broadcast;

/// A boxed future, for object-safe async methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a channel needs of a transport. Implemented by [`TransportHandle`]; a replacement
/// also hands the channel a queue of [`cohort_transport::Received`] messages.
pub trait ChannelTransport: Send + Sync + 'static {
    /// Sends a pre-encoded frame; `done` runs once, when it completes or fails.
    fn send(&self, to: &Member, frame: Bytes, msg_id: u64, options: SendOptions, done: Completion);
    /// Sends a data frame the transport encodes (the channel uses it when its codec signs
    /// nothing: the frame is then encoded by the connection that writes it, not on the
    /// channel's task). Default: encoded here with `codec`, then [`Self::send`].
    fn send_data(
        &self,
        to: &Member,
        frame: OutData,
        codec: &CohortCodec,
        msg_id: u64,
        options: SendOptions,
        done: Completion,
    ) {
        let mut buf = bytes::BytesMut::new();
        match codec.encode_data(&frame, None, &mut buf) {
            Ok(()) => self.send(to, buf.freeze(), msg_id, options, done),
            Err(e) => done.complete(Err(cohort_transport::SendError::BadFrame {
                addr: SocketAddr::new(to.addr, to.port),
                reason: e.to_string(),
            })),
        }
    }
    /// [`Self::send_data`] for several frames to one destination, in order (the channel
    /// hands over the frames of one pass to each destination at once). Default: one
    /// `send_data` each.
    fn send_data_many(&self, to: &Member, frames: Vec<DataSend>, codec: &CohortCodec) {
        for f in frames {
            self.send_data(to, f.frame, codec, f.msg_id, f.options, f.done);
        }
    }
    /// True while at least one outbound connection to `addr` is established.
    fn is_connected(&self, addr: SocketAddr) -> bool;
    /// Closes connections to `addr` (the member left).
    fn disconnect(&self, addr: SocketAddr);
    /// Closes connections to peers not kept.
    fn retain(&self, keep: &dyn Fn(SocketAddr) -> bool);
    /// Closes the inbound connection whose remote end is `from`; true if there was one.
    /// Default: not supported (false).
    fn close_inbound(&self, from: SocketAddr) -> bool {
        let _ = from;
        false
    }
    /// Counters.
    fn stats(&self) -> TransportStats;
    /// Stops sending and receiving.
    fn stop(&self);
    /// Sends a pre-encoded frame to the multicast group (the MULTICAST option); `done` runs
    /// once. Default: no multicast path (`SendError::NoMulticast`).
    fn send_multicast(&self, frame: Bytes, done: Completion) {
        let _ = frame;
        done.complete(Err(cohort_transport::SendError::NoMulticast));
    }
}

impl<N: Net> ChannelTransport for TransportHandle<N> {
    fn send(&self, to: &Member, frame: Bytes, msg_id: u64, options: SendOptions, done: Completion) {
        TransportHandle::send(self, to, frame, msg_id, options, done);
    }

    fn send_data(
        &self,
        to: &Member,
        frame: OutData,
        _codec: &CohortCodec,
        msg_id: u64,
        options: SendOptions,
        done: Completion,
    ) {
        TransportHandle::send_data(self, to, frame, msg_id, options, done);
    }

    fn send_data_many(&self, to: &Member, frames: Vec<DataSend>, _codec: &CohortCodec) {
        TransportHandle::send_data_many(self, to, frames);
    }

    fn is_connected(&self, addr: SocketAddr) -> bool {
        self.peer(addr).is_some_and(|p| p.connected > 0)
    }

    fn disconnect(&self, addr: SocketAddr) {
        TransportHandle::disconnect(self, addr);
    }

    fn retain(&self, keep: &dyn Fn(SocketAddr) -> bool) {
        self.retain_peers(keep);
    }

    fn close_inbound(&self, from: SocketAddr) -> bool {
        TransportHandle::close_inbound(self, from)
    }

    fn stats(&self) -> TransportStats {
        TransportHandle::stats(self)
    }

    fn stop(&self) {
        TransportHandle::stop(self);
    }

    fn send_multicast(&self, frame: Bytes, done: Completion) {
        TransportHandle::send_multicast(self, frame, done);
    }
}

/// What a channel needs of a membership service. Implemented by [`MembershipHandle`].
pub trait ChannelMembership: Send + Sync + 'static {
    /// The current view.
    fn view(&self) -> MembershipView;
    /// A stream of changes.
    fn events(&self) -> broadcast::Receiver<MembershipEvent>;
    /// Leaves gracefully.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
    /// A failure detector's verdict.
    fn report_failed(&self, member: MemberKey, detail: String) -> BoxFuture<'_, ()>;
    /// The driver's counters (zeros for an implementation that keeps none).
    fn stats(&self) -> MembershipStats {
        MembershipStats::default()
    }
}

impl ChannelMembership for MembershipHandle {
    fn view(&self) -> MembershipView {
        MembershipHandle::view(self)
    }

    fn events(&self) -> broadcast::Receiver<MembershipEvent> {
        MembershipHandle::events(self)
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(MembershipHandle::stop(self))
    }

    fn report_failed(&self, member: MemberKey, detail: String) -> BoxFuture<'_, ()> {
        Box::pin(MembershipHandle::report_failed(
            self,
            member,
            FailureEvidence { detail },
        ))
    }

    fn stats(&self) -> MembershipStats {
        MembershipHandle::stats(self)
    }
}
