//! Acknowledgements a receiver owes: what goes to a connection's ACK writer or the UDP
//! socket task ([`AckMsg`], [`AckSink`]), and the token the layer above completes for a
//! USE_ACK | SYNCHRONIZED_ACK message ([`AckToken`]).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, mpsc};

use crate::stats::Counters;

/// An ACK to write. The permit (if any) is held, and so counts against `max_pending_acks`,
/// until the ACK frame is written.
#[allow(dead_code)]
pub(crate) enum AckMsg {
    Ack(u64, Option<OwnedSemaphorePermit>),
    Fail(u64, String, Option<OwnedSemaphorePermit>),
}

impl AckMsg {
    /// The permit, for the writer to hold until the ACK is written.
    pub(crate) fn take_permit(&mut self) -> Option<OwnedSemaphorePermit> {
        match self {
            Self::Ack(_, p) | Self::Fail(_, _, p) => p.take(),
        }
    }
}

/// The pending acknowledgement of a USE_ACK | SYNCHRONIZED_ACK message.
///
/// [`AckToken::ack`] sends the ACK, [`AckToken::fail`] a FAIL_ACK with a reason. Dropping the
/// token without either sends FAIL_ACK ("dropped before it was processed"): the sender is
/// never told a message was processed when nothing said so.
#[derive(Debug)]
pub struct AckToken {
    msg_id: u64,
    sink: AckSink,
    permit: Option<OwnedSemaphorePermit>,
    done: bool,
}

#[derive(Clone)]
pub(crate) enum AckSink {
    Tcp(mpsc::UnboundedSender<AckMsg>),
    /// The UDP socket task's ACK queue, the address to answer, and where a dropped ACK is
    /// counted.
    Udp(
        mpsc::Sender<(SocketAddr, AckMsg)>,
        SocketAddr,
        Arc<Counters>,
    ),
}

impl std::fmt::Debug for AckSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(_) => f.write_str("AckSink::Tcp"),
            Self::Udp(_, to, _) => write!(f, "AckSink::Udp({to})"),
        }
    }
}

impl std::fmt::Debug for AckMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ack(id, _) => write!(f, "Ack({id})"),
            Self::Fail(id, r, _) => write!(f, "Fail({id}, {r})"),
        }
    }
}

impl AckToken {
    /// The answer owed for `msg_id`, sent through `sink`; `permit` (if any) counts against
    /// `max_pending_acks` until the answer is written.
    pub(crate) fn new(msg_id: u64, sink: AckSink, permit: Option<OwnedSemaphorePermit>) -> Self {
        Self {
            msg_id,
            sink,
            permit,
            done: false,
        }
    }

    /// The message id being acknowledged.
    pub fn msg_id(&self) -> u64 {
        self.msg_id
    }

    /// Acknowledges: processing succeeded.
    pub fn ack(mut self) {
        self.finish(None);
    }

    /// Sends FAIL_ACK with `reason` (truncated to 256 bytes).
    pub fn fail(mut self, reason: &str) {
        self.finish(Some(reason));
    }

    fn finish(&mut self, failure: Option<&str>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let permit = self.permit.take();
        let msg = match failure {
            None => AckMsg::Ack(self.msg_id, permit),
            Some(reason) => AckMsg::Fail(self.msg_id, truncate(reason), permit),
        };
        self.sink.send(msg);
    }
}

impl AckSink {
    /// Hands `msg` to the connection's ACK writer or the UDP socket task. The UDP ACK queue
    /// is bounded: a full queue drops the ACK, as UDP would, and counts it.
    pub(crate) fn send(&self, msg: AckMsg) {
        match self {
            Self::Tcp(tx) => {
                let _ = tx.send(msg);
            }
            Self::Udp(tx, to, counters) => {
                if tx.try_send((*to, msg)).is_err() {
                    Counters::inc(&counters.datagrams_dropped);
                }
            }
        }
    }
}

impl Drop for AckToken {
    fn drop(&mut self) {
        self.finish(Some("dropped before it was processed"));
    }
}

fn truncate(reason: &str) -> String {
    let mut end = reason.len().min(cohort_wire::MAX_FAIL_REASON_LEN);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn token(msg_id: u64, sink: AckSink) -> AckToken {
        AckToken::new(msg_id, sink, None)
    }

    #[tokio::test]
    async fn a_udp_ack_that_finds_its_queue_full_is_dropped_and_counted() {
        let counters = Arc::new(Counters::default());
        let (tx, mut rx) = mpsc::channel(1);
        let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let sink = AckSink::Udp(tx, to, counters.clone());
        token(1, sink.clone()).ack();
        token(2, sink.clone()).fail("no");
        // Dropped unprocessed: a FAIL_ACK, which finds the queue as full.
        drop(token(3, sink));
        assert_eq!(counters.datagrams_dropped.load(Ordering::Relaxed), 2);
        let (addr, first) = rx.recv().await.unwrap();
        assert_eq!(addr, to);
        assert!(matches!(first, AckMsg::Ack(1, None)), "{first:?}");
        assert!(rx.try_recv().is_err(), "nothing else was queued");
    }

    #[tokio::test]
    async fn a_token_sends_one_answer_however_it_ends() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        token(7, AckSink::Tcp(tx.clone())).fail("listener failed");
        drop(token(8, AckSink::Tcp(tx)));
        let got: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|m| format!("{m:?}"))
            .collect();
        assert_eq!(
            got,
            [
                "Fail(7, listener failed)",
                "Fail(8, dropped before it was processed)"
            ]
        );
    }
}
