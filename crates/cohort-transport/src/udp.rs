//! The UDP data path: one socket (the configured `udp_port`) sends data frames as datagrams,
//! receives them, and carries their ACKs both ways. Best effort: a datagram lost is a message
//! lost unless USE_ACK is set, in which case the sender learns of it by timeout.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cohort_net::{Net, UdpSocket};
use cohort_wire::{Frame, FrameCodec, MAX_DATAGRAM, Member, SendOptions};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::core::{Outbound, Outcome};
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

/// The queue of datagrams to send: bounded in bytes by `max_peer_queue_bytes` (the same unit,
/// limit and ASYNCHRONOUS exemption as a TCP peer's queue, for the one socket's queue to
/// every destination); a send beyond it fails at once with `QueueFull`.
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
    // As on TCP, ASYNCHRONOUS frames are exempt: the channel's ASYNCHRONOUS queue already
    // bounds them, and refusing one here would drop a message the application saw accepted.
    let bounded_upstream = options.contains(SendOptions::ASYNCHRONOUS);
    let claimed = if bounded_upstream {
        path.queued.fetch_add(len, Relaxed);
        Ok(())
    } else {
        claim_queue_bytes(&path.queued, len, limit)
    };
    if let Err(queued) = claimed {
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

/// The datagrams waiting for their ACK: one sans-IO [`Outbound`] core per destination, so an
/// ACK completes only what was sent to the address it comes from (and the same message id
/// sent to several members is several entries). At most `max_in_flight` in all; a
/// destination's core goes once nothing of it is in flight.
struct InFlight {
    by_dest: HashMap<SocketAddr, Outbound<Completion>>,
    /// Registered and not yet completed, over every destination.
    total: usize,
    max: usize,
    timeout: Duration,
    /// Set by [`InFlight::close`]: what completes is `Stopped`.
    stopped: bool,
}

impl InFlight {
    fn new(max: usize, timeout: Duration) -> Self {
        Self {
            by_dest: HashMap::new(),
            total: 0,
            max: max.max(1),
            timeout,
            stopped: false,
        }
    }

    fn is_full(&self) -> bool {
        self.total >= self.max
    }

    fn register(&mut self, now: std::time::Instant, to: SocketAddr, msg_id: u64, done: Completion) {
        self.total += 1;
        let (max, timeout) = (self.max, self.timeout);
        self.by_dest
            .entry(to)
            .or_insert_with(|| Outbound::new(max, timeout))
            .register(now, msg_id, done);
    }

    fn on_ack(
        &mut self,
        now: std::time::Instant,
        from: SocketAddr,
        ack: &cohort_wire::AckFrame,
        counters: &Counters,
    ) {
        match self.by_dest.get_mut(&from) {
            Some(core) => {
                let before = core.unknown_acks();
                core.on_ack(now, ack);
                Counters::add(&counters.unknown_acks, core.unknown_acks() - before);
            }
            None => {
                let entries = ack.acked.len() + ack.failed.len();
                Counters::add(&counters.unknown_acks, entries as u64);
            }
        }
    }

    fn on_timeout(&mut self, now: std::time::Instant) {
        for core in self.by_dest.values_mut() {
            core.on_timeout(now);
        }
    }

    /// Everything in flight fails with `Stopped`.
    fn close(&mut self) {
        self.stopped = true;
        for core in self.by_dest.values_mut() {
            core.close("stopped");
        }
    }

    /// Runs the completions every core decided, and drops the cores with nothing in flight.
    fn complete(&mut self, counters: &Counters) {
        let (timeout, stopped) = (self.timeout, self.stopped);
        let mut done = 0;
        self.by_dest.retain(|addr, core| {
            done += run_completed(*addr, core, timeout, stopped, counters);
            !core.is_empty()
        });
        self.total -= done;
    }

    /// [`InFlight::complete`] for one destination's core (the only one a registration or an
    /// ACK from `addr` touched): no walk over every destination per datagram.
    fn complete_at(&mut self, addr: SocketAddr, counters: &Counters) {
        let Some(core) = self.by_dest.get_mut(&addr) else {
            return;
        };
        self.total -= run_completed(addr, core, self.timeout, self.stopped, counters);
        if core.is_empty() {
            self.by_dest.remove(&addr);
        }
    }
}

/// Runs what `core` (the datagrams sent to `addr`) has completed; returns how many.
fn run_completed(
    addr: SocketAddr,
    core: &mut Outbound<Completion>,
    timeout: Duration,
    stopped: bool,
    counters: &Counters,
) -> usize {
    let mut n = 0;
    while let Some(c) = core.poll_completed() {
        n += 1;
        let result = if stopped {
            Counters::inc(&counters.send_failures);
            Err(SendError::Stopped)
        } else {
            if c.outcome == Outcome::Acked {
                Counters::inc(&counters.acked);
            }
            crate::sender::settle(c.outcome, addr, timeout, counters, |addr, reason| {
                SendError::Udp { addr, reason }
            })
        };
        c.token.complete(result);
    }
    n
}

async fn run<N: Net>(
    shared: Arc<Shared<N>>,
    socket: N::UdpSocket,
    mut out_rx: mpsc::UnboundedReceiver<UdpOut>,
    queued: Arc<AtomicUsize>,
    ack_tx: mpsc::Sender<(SocketAddr, AckMsg)>,
    mut ack_rx: mpsc::Receiver<(SocketAddr, AckMsg)>,
) {
    let counters = shared.counters.clone();
    let timeout = shared.config.send_timeout;
    let mut in_flight = InFlight::new(shared.config.max_in_flight, timeout);
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
                if out.want_ack && in_flight.is_full() {
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
                            in_flight.register(Instant::now().into_std(), out.to, out.msg_id, out.done);
                            in_flight.complete_at(out.to, &counters);
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
                        // One token for an ACKed datagram. USE_ACK alone is acknowledged on
                        // receipt, which is once it is queued for the layer above; with
                        // SYNCHRONIZED_ACK the token goes up with the message.
                        let token = opts.contains(SendOptions::USE_ACK).then(|| {
                            AckToken::new(msg_id, AckSink::Udp(ack_tx.clone(), from, counters.clone()), None)
                        });
                        let (ack, on_receipt) = if opts.contains(SendOptions::SYNCHRONIZED_ACK) { (token, None) } else { (None, token) };
                        let received = Received { hello: None, peer: from, frame: data, ack, via: Via::Udp, budget: None };
                        match shared.inbound_tx.try_send(received) {
                            Ok(()) => { if let Some(t) = on_receipt { t.ack(); } }
                            Err(e) => {
                                Counters::inc(&counters.datagrams_dropped);
                                // A dropped message is not acknowledged: its sender hears at once.
                                for t in e.into_inner().ack.into_iter().chain(on_receipt) { t.fail("receiver queue full"); }
                            }
                        }
                    }
                    Frame::Ack(ack) => {
                        Counters::inc(&counters.ack_frames_received);
                        // Only what was sent to `from` (an ACK from elsewhere names nothing).
                        in_flight.on_ack(Instant::now().into_std(), from, &ack, &counters);
                        in_flight.complete_at(from, &counters);
                    }
                    Frame::Hello(_) | Frame::Challenge(_) => { Counters::inc(&counters.datagrams_dropped); }
                }
            }
            _ = sweep.tick() => {
                in_flight.on_timeout(Instant::now().into_std());
                in_flight.complete(&counters);
            }
        }
    }
    in_flight.close();
    in_flight.complete(&counters);
    // What was queued and never sent fails too: every send completes once. Closed first, so
    // nothing is queued after the drain (a late send fails with `Stopped` itself).
    out_rx.close();
    while let Ok(out) = out_rx.try_recv() {
        queued.fetch_sub(out.frame.len(), Relaxed);
        Counters::inc(&counters.send_failures);
        out.done.complete(Err(SendError::Stopped));
    }
}
