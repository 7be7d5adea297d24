//! The UDP data path: one socket (the configured `udp_port`) sends data frames as datagrams,
//! receives them, and carries their ACKs both ways. Best effort: a datagram lost is a message
//! lost unless USE_ACK is set, in which case the sender learns of it by timeout.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cohort_net::{Net, UdpSocket};
use cohort_wire::{Frame, FrameCodec, MAX_DATAGRAM, Member, SendOptions};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::handshake::WriteSeal;
use crate::receiver::encode_acks;
use crate::stats::Counters;
use crate::{AckMsg, AckSink, AckToken, Completion, Delivered, Received, SendError, Shared, Via};

/// ACKs waiting for the socket task; beyond, an ACK is dropped (as a datagram would be).
const UDP_ACK_QUEUE: usize = 8192;

struct UdpOut {
    to: SocketAddr,
    frame: Bytes,
    msg_id: u64,
    want_ack: bool,
    done: Completion,
}

/// Claims `len` bytes of a datagram send queue bounded by `limit` bytes (the first datagram
/// always fits); on refusal gives the claim back and returns the bytes queued before.
pub(crate) fn claim_queue_bytes(
    queued: &AtomicUsize,
    len: usize,
    limit: usize,
) -> Result<(), usize> {
    let before = queued.fetch_add(len, Relaxed);
    if before > 0 && before + len > limit {
        queued.fetch_sub(len, Relaxed);
        return Err(before);
    }
    Ok(())
}

/// The queue of datagrams to send: bounded in bytes by `max_peer_queue_bytes` (the same unit
/// and limit as a TCP peer's queue); a send beyond it fails at once with `QueueFull`.
pub(crate) struct UdpPath {
    out: mpsc::UnboundedSender<UdpOut>,
    queued: Arc<AtomicUsize>,
}

pub(crate) fn start<N: Net>(shared: &Arc<Shared<N>>, socket: N::UdpSocket) {
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let (ack_tx, ack_rx) = mpsc::channel(UDP_ACK_QUEUE);
    let queued = Arc::new(AtomicUsize::new(0));
    let _ = shared.udp.set(UdpPath {
        out: out_tx,
        queued: queued.clone(),
    });
    tokio::spawn(run(shared.clone(), socket, out_rx, queued, ack_tx, ack_rx));
}

pub(crate) fn send<N: Net>(
    shared: &Arc<Shared<N>>,
    to: &Member,
    frame: Bytes,
    msg_id: u64,
    options: SendOptions,
    done: Completion,
) {
    let addr = SocketAddr::new(to.addr, to.port);
    let fail = |e: SendError, done: Completion| {
        Counters::inc(&shared.counters.send_failures);
        done.complete(Err(e));
    };
    let Some(path) = shared.udp.get() else {
        return fail(
            SendError::NoUdp {
                addr,
                reason: "this node has no UDP data port (set transport.udp_port)",
            },
            done,
        );
    };
    let Some(port) = to.udp_port else {
        return fail(
            SendError::NoUdp {
                addr,
                reason: "the member advertises no UDP data port",
            },
            done,
        );
    };
    if frame.len() > MAX_DATAGRAM {
        return fail(
            SendError::Udp {
                addr,
                reason: format!("a {}-byte frame does not fit in a datagram", frame.len()),
            },
            done,
        );
    }
    let out = UdpOut {
        to: SocketAddr::new(to.addr, port),
        frame,
        msg_id,
        want_ack: options.contains(SendOptions::USE_ACK),
        done,
    };
    let len = out.frame.len();
    let limit = shared.config.max_peer_queue_bytes;
    if let Err(queued) = claim_queue_bytes(&path.queued, len, limit) {
        Counters::inc(&shared.counters.queue_full);
        return fail(
            SendError::QueueFull {
                addr,
                queued,
                limit,
            },
            out.done,
        );
    }
    if let Err(mpsc::error::SendError(out)) = path.out.send(out) {
        path.queued.fetch_sub(len, Relaxed);
        fail(SendError::Stopped, out.done);
    }
}

async fn run<N: Net>(
    shared: Arc<Shared<N>>,
    socket: N::UdpSocket,
    mut out_rx: mpsc::UnboundedReceiver<UdpOut>,
    queued: Arc<AtomicUsize>,
    ack_tx: mpsc::Sender<(SocketAddr, AckMsg)>,
    mut ack_rx: mpsc::Receiver<(SocketAddr, AckMsg)>,
) {
    let pending: Mutex<HashMap<u64, (Completion, Instant, SocketAddr)>> = Mutex::default();
    let lock = || pending.lock().unwrap_or_else(PoisonError::into_inner);
    let counters = shared.counters.clone();
    let timeout = shared.config.send_timeout;
    let mut stop = shared.stop_rx.clone();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut enc = BytesMut::new();
    let mut sweep = tokio::time::interval(Duration::from_millis(50).min(timeout));
    loop {
        tokio::select! {
            biased;
            () = crate::stopped(&mut stop) => break,
            Some(out) = out_rx.recv() => {
                queued.fetch_sub(out.frame.len(), Relaxed);
                if out.want_ack && lock().len() >= shared.config.max_in_flight {
                    Counters::inc(&counters.queue_full);
                    Counters::inc(&counters.send_failures);
                    out.done.complete(Err(SendError::InFlightFull { addr: out.to, limit: shared.config.max_in_flight }));
                    continue;
                }
                match socket.send_to(&out.frame, out.to).await {
                    Ok(_) => {
                        Counters::inc(&counters.frames_sent);
                        Counters::inc(&counters.writes);
                        Counters::add(&counters.bytes_sent, out.frame.len() as u64);
                        if out.want_ack {
                            lock().insert(out.msg_id, (out.done, Instant::now() + timeout, out.to));
                        } else {
                            out.done.complete(Ok(Delivered::Sent));
                        }
                    }
                    Err(e) => {
                        Counters::inc(&counters.send_failures);
                        out.done.complete(Err(SendError::Udp { addr: out.to, reason: e.to_string() }));
                    }
                }
            }
            Some((to, ack)) = ack_rx.recv() => {
                // One ACK per datagram: a single id always encodes as a single frame.
                enc.clear();
                if encode_acks(&shared, &mut WriteSeal::new(None), &mut vec![ack], shared.config.limits.max_ack_entries, &mut enc).is_ok() {
                    let _ = socket.send_to(&enc, to).await;
                }
            }
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                Counters::inc(&counters.datagrams_received);
                Counters::add(&counters.bytes_received, n as u64);
                let mut data = BytesMut::from(&buf[..n]);
                let frame = match shared.codec.decode_frame(&mut data) {
                    Ok(Some(f)) if data.is_empty() => f,
                    Ok(_) => { Counters::inc(&counters.datagrams_dropped); continue; }
                    Err(e) => {
                        counters.malformed(e.kind_name());
                        Counters::inc(&counters.datagrams_dropped);
                        continue;
                    }
                };
                match frame {
                    Frame::Data(data) => {
                        Counters::inc(&counters.frames_received);
                        let opts = data.header.options;
                        let msg_id = data.header.msg_id;
                        let mut ack = None;
                        if opts.contains(SendOptions::USE_ACK) {
                            let sink = AckSink::Udp(ack_tx.clone(), from);
                            if opts.contains(SendOptions::SYNCHRONIZED_ACK) {
                                ack = Some(AckToken { msg_id, sink, permit: None, done: false });
                            } else {
                                let _ = ack_tx.try_send((from, AckMsg::Ack(msg_id, None)));
                            }
                        }
                        let received = Received { hello: None, peer: from, frame: data, ack, via: Via::Udp, budget: None };
                        if let Err(e) = shared.inbound_tx.try_send(received) {
                            Counters::inc(&counters.datagrams_dropped);
                            // A dropped message must not be acknowledged as processed.
                            let (mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r)) = e;
                            if let Some(t) = r.ack { t.fail("receiver queue full"); }
                        }
                    }
                    Frame::Ack(ack) => {
                        Counters::inc(&counters.ack_frames_received);
                        let mut done = Vec::new();
                        {
                            let mut table = lock();
                            for range in &ack.acked {
                                let ids: Vec<u64> = table.keys().copied().filter(|id| range.contains(*id)).collect();
                                for id in ids {
                                    if let Some((d, _, _)) = table.remove(&id) { done.push((d, None)); }
                                }
                            }
                            for f in ack.failed {
                                if let Some((d, _, _)) = table.remove(&f.msg_id) { done.push((d, Some(f.reason))); }
                            }
                        }
                        for (d, failure) in done {
                            match failure {
                                None => { Counters::inc(&counters.acked); d.complete(Ok(Delivered::Acked)); }
                                Some(reason) => {
                                    Counters::inc(&counters.fail_acked);
                                    Counters::inc(&counters.send_failures);
                                    d.complete(Err(SendError::FailAck { addr: from, reason }));
                                }
                            }
                        }
                    }
                    Frame::Hello(_) | Frame::Challenge(_) => { Counters::inc(&counters.datagrams_dropped); }
                }
            }
            _ = sweep.tick() => {
                let now = Instant::now();
                let expired: Vec<_> = {
                    let mut table = lock();
                    let ids: Vec<u64> = table.iter().filter(|(_, (_, d, _))| *d <= now).map(|(id, _)| *id).collect();
                    ids.into_iter().filter_map(|id| table.remove(&id)).collect()
                };
                for (d, _, addr) in expired {
                    Counters::inc(&counters.ack_timeouts);
                    Counters::inc(&counters.send_failures);
                    d.complete(Err(SendError::Timeout { addr, after: timeout }));
                }
            }
        }
    }
    let rest: Vec<_> = lock().drain().collect();
    for (_, (d, _, _)) in rest {
        d.complete(Err(SendError::Stopped));
    }
    // What was queued and never sent fails too: every send completes once. Closed first, so
    // nothing is queued after the drain (a late send fails with `Stopped` itself).
    out_rx.close();
    while let Ok(out) = out_rx.try_recv() {
        queued.fetch_sub(out.frame.len(), Relaxed);
        Counters::inc(&counters.send_failures);
        out.done.complete(Err(SendError::Stopped));
    }
}
