//! The multicast data path: the transport's own socket on the group's data port (beside, not
//! inside, the membership service's beacon socket). MULTICAST messages go out as one datagram
//! each, with the plain tag when keyed (they have no connection to bind them to), and come in
//! through the same inbound queue as TCP and UDP frames. Best effort and never acknowledged,
//! as in Tribes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use bytes::{Bytes, BytesMut};
use cohort_net::{Net, UdpSocket};
use cohort_wire::{Frame, FrameCodec, MAX_DATAGRAM};
use tokio::sync::mpsc;

use crate::stats::Counters;
use crate::{Completion, Delivered, Received, SendError, Shared, Via};

struct McastOut {
    frame: Bytes,
    done: Completion,
}

/// The send queue: bounded in bytes by `max_peer_queue_bytes` (as a peer's); a send beyond it
/// fails at once with `QueueFull`.
pub(crate) struct McastPath {
    out: mpsc::UnboundedSender<McastOut>,
    queued: Arc<AtomicUsize>,
    group: SocketAddr,
}

pub(crate) fn start<N: Net>(shared: &Arc<Shared<N>>, socket: N::UdpSocket, group: SocketAddr) {
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let _ = shared.mcast.set(McastPath {
        out: out_tx,
        queued: queued.clone(),
        group,
    });
    tokio::spawn(run(shared.clone(), socket, group, out_rx, queued));
}

pub(crate) fn send<N: Net>(shared: &Arc<Shared<N>>, frame: Bytes, done: Completion) {
    let fail = |e: SendError, done: Completion| {
        Counters::inc(&shared.counters.send_failures);
        done.complete(Err(e));
    };
    let Some(path) = shared.mcast.get() else {
        return fail(SendError::NoMulticast, done);
    };
    if frame.len() > MAX_DATAGRAM {
        return fail(
            SendError::Udp {
                addr: path.group,
                reason: format!("a {}-byte frame does not fit in a datagram", frame.len()),
            },
            done,
        );
    }
    let len = frame.len();
    let limit = shared.config.max_peer_queue_bytes;
    if let Err(queued) = crate::udp::claim_queue_bytes(&path.queued, len, limit) {
        Counters::inc(&shared.counters.queue_full);
        return fail(
            SendError::QueueFull {
                addr: path.group,
                queued,
                limit,
            },
            done,
        );
    }
    if let Err(mpsc::error::SendError(out)) = path.out.send(McastOut { frame, done }) {
        path.queued.fetch_sub(len, Relaxed);
        fail(SendError::Stopped, out.done);
    }
}

async fn run<N: Net>(
    shared: Arc<Shared<N>>,
    socket: N::UdpSocket,
    group: SocketAddr,
    mut out_rx: mpsc::UnboundedReceiver<McastOut>,
    queued: Arc<AtomicUsize>,
) {
    let counters = shared.counters.clone();
    let mut stop = shared.stop_rx.clone();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let local = shared.local.id;
    loop {
        tokio::select! {
            biased;
            () = crate::stopped(&mut stop) => break,
            Some(out) = out_rx.recv() => {
                queued.fetch_sub(out.frame.len(), Relaxed);
                match socket.send_to(&out.frame, group).await {
                    Ok(_) => {
                        Counters::inc(&counters.multicast_sent);
                        Counters::add(&counters.bytes_sent, out.frame.len() as u64);
                        out.done.complete(Ok(Delivered::Sent));
                    }
                    Err(e) => {
                        Counters::inc(&counters.send_failures);
                        out.done.complete(Err(SendError::Udp { addr: group, reason: format!("multicast: {e}") }));
                    }
                }
            }
            r = socket.recv_from(&mut buf) => {
                let (n, from) = match r {
                    Ok(r) => r,
                    Err(e) => {
                        // Never a busy loop on a failing socket.
                        cohort_net::warn_limited!(shared.warn, "multicast_recv", error = %e, "multicast data socket error");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Beacons share the port by default: the membership service's, not ours.
                if buf[..n].starts_with(&cohort_wire::BEACON_MAGIC) {
                    continue;
                }
                Counters::add(&counters.bytes_received, n as u64);
                let mut data = BytesMut::from(&buf[..n]);
                let frame = match shared.codec.decode_frame(&mut data) {
                    Ok(Some(Frame::Data(f))) if data.is_empty() => f,
                    Ok(_) => { Counters::inc(&counters.datagrams_dropped); continue; }
                    Err(e) => {
                        counters.malformed(e.kind_name());
                        Counters::inc(&counters.datagrams_dropped);
                        continue;
                    }
                };
                // Our own datagrams come back (loopback is on for several nodes per host).
                if frame.header.sender == local {
                    continue;
                }
                Counters::inc(&counters.multicast_received);
                // Never acknowledged: a MULTICAST message has no connection to answer on.
                let received = Received { hello: None, peer: from, frame, ack: None, via: Via::Multicast, budget: None };
                if shared.inbound_tx.try_send(received).is_err() {
                    Counters::inc(&counters.datagrams_dropped);
                }
            }
        }
    }
    // Closed first: a send racing the stop fails at once instead of being left in the queue.
    out_rx.close();
    while let Ok(out) = out_rx.try_recv() {
        out.done.complete(Err(SendError::Stopped));
    }
}
