//! Outbound side: per-peer queues, lazily opened connections, coalesced writes, pipelined
//! ACK tracking.
//!
//! One task per connection slot ("lane") owns everything about its connection: the socket's
//! two halves, the handshake's seals, and the in-flight table ([`crate::core::Outbound`], the
//! sans-IO core that decides what an ACK, a timeout or a close completes). The task waits on
//! its queue, the socket and the core's timer at once, and reads ACKs while it writes, so a
//! peer's ACK stream never stalls behind a large write. Nothing about a connection is shared
//! between tasks.
//!
//! Queues: each lane's queue is bounded in bytes by `max_peer_queue_bytes` per peer (frames
//! with the ASYNCHRONOUS option are counted but admitted: the channel's ASYNCHRONOUS queue
//! bounds them); a lane takes no more from its queue than its in-flight table has room for
//! (`max_in_flight`), so a slow peer's backlog waits in the queue, counted, and then refused.
//!
//! - this module: the per-peer front (`send`, `send_many`: admission against the peer's
//!   queue bound, back-off, which lane) and the lanes' queue entries;
//! - `lane`: a lane's task (its connection, backlog, batches, writes and ACK reading).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cohort_net::Net;
use cohort_wire::SendOptions;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::core::{Backoff, Outcome};
use crate::stats::Counters;
use crate::{Completion, DataSend, Delivered, OutFrame, PeerState, SendError, Shared};

mod lane;

use lane::Lane;

struct Outgoing {
    frame: OutFrame,
    /// `frame.len()`, computed once: the queue's byte count adds and takes it back.
    len: usize,
    msg_id: u64,
    want_ack: bool,
    done: Completion,
}

/// An entry in a lane's queue: one frame, or a run of frames to the same peer handed over at
/// once ([`send_many`]), written in order.
enum Entry {
    One(Outgoing),
    Many(Vec<Outgoing>),
}

impl Entry {
    fn len(&self) -> usize {
        match self {
            Self::One(m) => m.len,
            Self::Many(v) => v.iter().map(|m| m.len).sum(),
        }
    }
}

/// The peers with outbound state, by receiver address.
#[derive(Default)]
pub(crate) struct Peers {
    map: Mutex<rustc_hash::FxHashMap<SocketAddr, Arc<Peer>>>,
}

struct Peer {
    addr: SocketAddr,
    lanes: Vec<mpsc::UnboundedSender<Entry>>,
    next_lane: AtomicUsize,
    queued_bytes: Arc<AtomicUsize>,
    connected: Arc<AtomicUsize>,
    /// The peer's back-off after failed connects (sends fail fast while it runs): decided
    /// by the core's [`Backoff`], written by the lane whose connect round failed or
    /// succeeded, read by senders. The one piece of protocol state a peer's lanes share.
    backoff: Arc<Mutex<Backoff>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Peers {
    pub(crate) fn state(&self, addr: SocketAddr) -> Option<PeerState> {
        lock(&self.map).get(&addr).map(|p| p.state())
    }

    pub(crate) fn all(&self) -> Vec<PeerState> {
        let mut v: Vec<_> = lock(&self.map).values().map(|p| p.state()).collect();
        v.sort_by_key(|p| p.addr);
        v
    }

    /// Dropping a peer drops its lane senders: each lane task fails what is queued and closes
    /// its connection.
    pub(crate) fn remove(&self, addr: SocketAddr) {
        lock(&self.map).remove(&addr);
    }

    pub(crate) fn retain(&self, keep: &dyn Fn(SocketAddr) -> bool) {
        lock(&self.map).retain(|addr, _| keep(*addr));
    }

    pub(crate) fn clear(&self) {
        lock(&self.map).clear();
    }
}

impl Peer {
    fn state(&self) -> PeerState {
        PeerState {
            addr: self.addr,
            connected: self.connected.load(Relaxed),
            queued_bytes: self.queued_bytes.load(Relaxed),
            backing_off: lock(&self.backoff)
                .accepting(Instant::now().into_std())
                .is_err(),
        }
    }
}

pub(crate) fn send<N: Net>(
    shared: &Arc<Shared<N>>,
    addr: SocketAddr,
    frame: OutFrame,
    msg_id: u64,
    options: SendOptions,
    done: Completion,
) {
    let peer = peer(shared, addr);
    if let Err(retry_in) = peer.accepting() {
        return fail(shared, SendError::PeerDown { addr, retry_in }, done);
    }
    let Some(out) = admit(shared, &peer, frame, msg_id, options, done) else {
        return;
    };
    peer.enqueue(shared, Entry::One(out));
}

/// [`send`] for a run of data frames to one peer: one look-up, one queue entry.
pub(crate) fn send_many<N: Net>(shared: &Arc<Shared<N>>, addr: SocketAddr, frames: Vec<DataSend>) {
    if frames.is_empty() {
        return;
    }
    let peer = peer(shared, addr);
    if let Err(retry_in) = peer.accepting() {
        for f in frames {
            fail(shared, SendError::PeerDown { addr, retry_in }, f.done);
        }
        return;
    }
    // Made at its size: collected in place, the run would be reallocated (an `Outgoing` is
    // larger than a `DataSend`) and copied whole.
    let mut admitted: Vec<Outgoing> = Vec::with_capacity(frames.len());
    for f in frames {
        let out = admit(
            shared,
            &peer,
            OutFrame::Data(f.frame),
            f.msg_id,
            f.options,
            f.done,
        );
        admitted.extend(out);
    }
    match admitted.len() {
        0 => {}
        1 => {
            let one = admitted.into_iter().next().map(Entry::One);
            if let Some(entry) = one {
                peer.enqueue(shared, entry);
            }
        }
        _ => peer.enqueue(shared, Entry::Many(admitted)),
    }
}

/// What an in-flight message's outcome means to its sender, on TCP and UDP alike, with the
/// failures counted (`Acked` is not: callers count ACKs in bulk). `lost` is the error of a
/// message its path lost (a closed connection, a reused id).
pub(crate) fn settle(
    outcome: Outcome,
    addr: SocketAddr,
    timeout: Duration,
    counters: &Counters,
    lost: impl FnOnce(SocketAddr, String) -> SendError,
) -> Result<Delivered, SendError> {
    let error = match outcome {
        Outcome::Acked => return Ok(Delivered::Acked),
        Outcome::FailAck(reason) => {
            Counters::inc(&counters.fail_acked);
            SendError::FailAck { addr, reason }
        }
        Outcome::Timeout => {
            Counters::inc(&counters.ack_timeouts);
            SendError::Timeout {
                addr,
                after: timeout,
            }
        }
        Outcome::Lost(reason) => lost(addr, reason),
    };
    Counters::inc(&counters.send_failures);
    Err(error)
}

fn fail<N: Net>(shared: &Shared<N>, e: SendError, done: Completion) {
    Counters::inc(&shared.counters.send_failures);
    done.complete(Err(e));
}

/// The peer's outbound state, made on first use.
fn peer<N: Net>(shared: &Arc<Shared<N>>, addr: SocketAddr) -> Arc<Peer> {
    let mut map = lock(&shared.peers.map);
    map.entry(addr)
        .or_insert_with(|| spawn_peer(shared, addr))
        .clone()
}

/// Counts a frame into the peer's queue, or fails it when the queue is full.
fn admit<N: Net>(
    shared: &Shared<N>,
    peer: &Peer,
    frame: OutFrame,
    msg_id: u64,
    options: SendOptions,
    done: Completion,
) -> Option<Outgoing> {
    let len = frame.len();
    let limit = shared.config.max_peer_queue_bytes;
    let queued = peer.queued_bytes.fetch_add(len, Relaxed);
    // ASYNCHRONOUS frames are exempt: their sender (the channel's ASYNCHRONOUS queue) already
    // bounds them, and refusing one here would drop a message the application saw accepted.
    let bounded_upstream = options.contains(SendOptions::ASYNCHRONOUS);
    if queued > 0 && queued + len > limit && !bounded_upstream {
        peer.queued_bytes.fetch_sub(len, Relaxed);
        Counters::inc(&shared.counters.queue_full);
        let addr = peer.addr;
        fail(
            shared,
            SendError::QueueFull {
                addr,
                queued,
                limit,
            },
            done,
        );
        return None;
    }
    Some(Outgoing {
        frame,
        len,
        msg_id,
        want_ack: options.contains(SendOptions::USE_ACK),
        done,
    })
}

impl Peer {
    /// `Err(retry in)` while the peer is backing off after failed connects: sends fail fast.
    fn accepting(&self) -> Result<(), Duration> {
        lock(&self.backoff).accepting(Instant::now().into_std())
    }

    /// Hands an admitted entry to a lane (round robin when there are several); fails it
    /// when the lane is gone.
    fn enqueue<N: Net>(&self, shared: &Shared<N>, entry: Entry) {
        let lane = if self.lanes.len() == 1 {
            0
        } else {
            self.next_lane.fetch_add(1, Relaxed) % self.lanes.len()
        };
        if let Err(mpsc::error::SendError(entry)) = self.lanes[lane].send(entry) {
            self.queued_bytes.fetch_sub(entry.len(), Relaxed);
            let outs = match entry {
                Entry::One(m) => vec![m],
                Entry::Many(v) => v,
            };
            for m in outs {
                fail(shared, SendError::Stopped, m.done);
            }
        }
    }
}

fn spawn_peer<N: Net>(shared: &Arc<Shared<N>>, addr: SocketAddr) -> Arc<Peer> {
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let connected = Arc::new(AtomicUsize::new(0));
    let backoff = Arc::new(Mutex::new(Backoff::default()));
    let lanes = (0..shared.config.connections_per_peer.get())
        .map(|_| {
            let (tx, rx) = mpsc::unbounded_channel::<Entry>();
            let lane = Lane::new(
                shared.clone(),
                addr,
                queued_bytes.clone(),
                connected.clone(),
                backoff.clone(),
            );
            let span = tracing::debug_span!("peer", peer = %addr, direction = "out");
            tokio::spawn(tracing::Instrument::instrument(lane.run(rx), span));
            tx
        })
        .collect();
    Arc::new(Peer {
        addr,
        lanes,
        next_lane: AtomicUsize::new(0),
        queued_bytes,
        connected,
        backoff,
    })
}
