//! Outbound side: per-peer queues, lazily opened connections, coalesced writes, pipelined
//! ACK tracking.
//!
//! One task per connection slot ("lane") owns the write half; a second task per connection
//! reads ACK frames and completes the messages they name. Both share the connection's
//! [`InFlight`] table (one `std::sync::Mutex`, never held across an await).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cohort_net::Net;
use cohort_wire::{AckFrame, Frame, SendOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;

use crate::handshake::{self, ReadSeal, WriteSeal};
use crate::stats::Counters;
use crate::{Completion, Delivered, PeerState, SendError, Shared};

struct Outgoing {
    frame: Bytes,
    msg_id: u64,
    want_ack: bool,
    done: Completion,
}

/// The peers with outbound state, by receiver address.
#[derive(Default)]
pub(crate) struct Peers {
    map: Mutex<HashMap<SocketAddr, Arc<Peer>>>,
}

struct Peer {
    addr: SocketAddr,
    lanes: Vec<mpsc::UnboundedSender<Outgoing>>,
    next_lane: AtomicUsize,
    queued_bytes: Arc<AtomicUsize>,
    connected: Arc<AtomicUsize>,
    /// While set and in the future, sends fail fast.
    down_until: Arc<Mutex<Option<(Instant, Duration)>>>,
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
            backing_off: lock(&self.down_until).is_some_and(|(t, _)| t > Instant::now()),
        }
    }
}

pub(crate) fn send<N: Net>(
    shared: &Arc<Shared<N>>,
    addr: SocketAddr,
    frame: Bytes,
    msg_id: u64,
    options: SendOptions,
    done: Completion,
) {
    let peer = {
        let mut map = lock(&shared.peers.map);
        map.entry(addr)
            .or_insert_with(|| spawn_peer(shared, addr))
            .clone()
    };
    let fail = |e: SendError, done: Completion| {
        Counters::inc(&shared.counters.send_failures);
        done(Err(e));
    };
    if let Some((until, _)) = *lock(&peer.down_until) {
        let now = Instant::now();
        if until > now {
            return fail(
                SendError::PeerDown {
                    addr,
                    retry_in: until - now,
                },
                done,
            );
        }
    }
    let len = frame.len();
    let limit = shared.config.max_peer_queue_bytes;
    let queued = peer.queued_bytes.fetch_add(len, Relaxed);
    // ASYNCHRONOUS frames are exempt: their sender (the channel's ASYNCHRONOUS queue) already
    // bounds them, and refusing one here would drop a message the application saw accepted.
    let bounded_upstream = options.contains(SendOptions::ASYNCHRONOUS);
    if queued > 0 && queued + len > limit && !bounded_upstream {
        peer.queued_bytes.fetch_sub(len, Relaxed);
        Counters::inc(&shared.counters.queue_full);
        return fail(
            SendError::QueueFull {
                addr,
                queued,
                limit,
            },
            done,
        );
    }
    let lane = if peer.lanes.len() == 1 {
        0
    } else {
        peer.next_lane.fetch_add(1, Relaxed) % peer.lanes.len()
    };
    let out = Outgoing {
        frame,
        msg_id,
        want_ack: options.contains(SendOptions::USE_ACK),
        done,
    };
    if let Err(mpsc::error::SendError(out)) = peer.lanes[lane].send(out) {
        peer.queued_bytes.fetch_sub(len, Relaxed);
        fail(SendError::Stopped, out.done);
    }
}

fn spawn_peer<N: Net>(shared: &Arc<Shared<N>>, addr: SocketAddr) -> Arc<Peer> {
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let connected = Arc::new(AtomicUsize::new(0));
    let down_until = Arc::new(Mutex::new(None));
    let lanes = (0..shared.config.connections_per_peer.get())
        .map(|_| {
            let (tx, rx) = mpsc::unbounded_channel();
            let lane = Lane {
                shared: shared.clone(),
                addr,
                queued_bytes: queued_bytes.clone(),
                connected: connected.clone(),
                down_until: down_until.clone(),
                conn: None,
                buf: BytesMut::with_capacity(shared.config.write_batch_bytes.min(1 << 20)),
            };
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
        down_until,
    })
}

/// Messages written and awaiting their ACK on one connection.
struct InFlight {
    map: HashMap<u64, (Completion, OwnedSemaphorePermit, Instant)>,
    /// (deadline, id), in send order; the deadline is constant per connection, so this is
    /// sorted.
    deadlines: VecDeque<(Instant, u64)>,
    /// Set when the connection is gone; later registrations fail at once.
    closed: Option<String>,
}

impl InFlight {
    /// Marks the connection closed (the first reason stays) and fails every message in
    /// flight on it with `err`, counted. Completions run outside the lock.
    fn fail_all(table: &Mutex<InFlight>, err: &SendError, counters: &Counters) {
        let pending = {
            let mut table = lock(table);
            table.closed.get_or_insert_with(|| err.to_string());
            table.deadlines.clear();
            std::mem::take(&mut table.map)
        };
        for (_, (done, _permit, _)) in pending {
            Counters::inc(&counters.send_failures);
            done(Err(err.clone()));
        }
    }
}

struct Conn<S> {
    addr: SocketAddr,
    counters: Arc<Counters>,
    write: WriteHalf<S>,
    /// Seals each frame for this connection (keyed clusters).
    seal: WriteSeal,
    in_flight: Arc<Mutex<InFlight>>,
    permits: Arc<Semaphore>,
    opened: Instant,
    /// When frames were last written: the lane closes the connection itself after half the
    /// receiver's `idle_timeout` without traffic, before the receiver would.
    last_write: Instant,
    messages: u64,
    reader: tokio::task::AbortHandle,
}

impl<S> Drop for Conn<S> {
    fn drop(&mut self) {
        self.reader.abort();
        self.permits.close();
        let err = SendError::ConnectionLost {
            addr: self.addr,
            reason: "connection closed".into(),
        };
        InFlight::fail_all(&self.in_flight, &err, &self.counters);
    }
}

struct Lane<N: Net> {
    shared: Arc<Shared<N>>,
    addr: SocketAddr,
    queued_bytes: Arc<AtomicUsize>,
    connected: Arc<AtomicUsize>,
    down_until: Arc<Mutex<Option<(Instant, Duration)>>>,
    conn: Option<Conn<N::TcpStream>>,
    buf: BytesMut,
}

impl<N: Net> Lane<N> {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
        let mut stop = self.shared.stop_rx.clone();
        let mut batch: Vec<Outgoing> = Vec::new();
        let idle = self.shared.config.idle_timeout / 2;
        loop {
            let idle_at = self.conn.as_ref().map(|c| c.last_write + idle);
            let idle_due = async move {
                match idle_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let first = tokio::select! {
                biased;
                () = crate::stopped(&mut stop) => break,
                m = rx.recv() => match m { Some(m) => m, None => break },
                () = idle_due => {
                    self.close_if_idle();
                    continue;
                }
            };
            batch.push(first);
            let mut bytes = batch[0].frame.len();
            let mut acks = usize::from(batch[0].want_ack);
            let max_acks = self.shared.config.max_in_flight;
            while bytes < self.shared.config.write_batch_bytes && acks < max_acks {
                match rx.try_recv() {
                    Ok(m) => {
                        bytes += m.frame.len();
                        acks += usize::from(m.want_ack);
                        batch.push(m);
                    }
                    Err(_) => break,
                }
            }
            self.queued_bytes.fetch_sub(bytes, Relaxed);
            self.write_batch(&mut batch).await;
        }
        // Stopped or removed: fail what is still queued.
        self.conn = None;
        rx.close();
        while let Ok(m) = rx.try_recv() {
            self.queued_bytes.fetch_sub(m.frame.len(), Relaxed);
            Counters::inc(&self.shared.counters.send_failures);
            (m.done)(Err(SendError::Stopped));
        }
    }

    fn fail_all(&self, batch: &mut Vec<Outgoing>, err: &SendError) {
        for m in batch.drain(..) {
            Counters::inc(&self.shared.counters.send_failures);
            (m.done)(Err(err.clone()));
        }
    }

    async fn write_batch(&mut self, batch: &mut Vec<Outgoing>) {
        let shared = self.shared.clone();
        let cfg = &shared.config;
        let expired = self.conn.as_ref().is_some_and(|c| {
            lock(&c.in_flight).closed.is_some()
                || cfg.keep_alive_count.is_some_and(|n| c.messages >= n)
                || cfg.keep_alive_time.is_some_and(|t| c.opened.elapsed() >= t)
        });
        if expired {
            self.close();
        }
        if self.conn.is_none() {
            if let Err(e) = self.connect().await {
                self.fail_all(batch, &e);
                return;
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let written = Instant::now();
        let deadline = written + cfg.send_timeout;
        // Register the ACK-wanting messages before writing: an ACK can come back before the
        // write call returns.
        let acks = batch.iter().filter(|m| m.want_ack).count();
        let permits = if acks == 0 {
            None
        } else {
            let sem = conn.permits.clone();
            let n = u32::try_from(acks).unwrap_or(u32::MAX);
            match tokio::time::timeout_at(deadline, sem.acquire_many_owned(n)).await {
                Ok(Ok(p)) => Some(p),
                Ok(Err(_)) => {
                    let reason = lock(&conn.in_flight)
                        .closed
                        .clone()
                        .unwrap_or_else(|| "connection closed".into());
                    let err = SendError::ConnectionLost {
                        addr: self.addr,
                        reason,
                    };
                    self.fail_all(batch, &err);
                    self.close();
                    return;
                }
                Err(_) => {
                    Counters::inc(&self.shared.counters.ack_timeouts);
                    let err = SendError::Timeout {
                        addr: self.addr,
                        after: cfg.send_timeout,
                    };
                    self.fail_all(batch, &err);
                    self.close();
                    return;
                }
            }
        };
        self.buf.clear();
        let mut sent_only = Vec::new();
        let mut refused = Vec::new();
        let mut n_frames = 0u64;
        {
            let mut permits = permits;
            let mut table = lock(&conn.in_flight);
            if table.deadlines.len() > 2 * cfg.max_in_flight {
                // Completed entries stuck behind a slow head: compact (bounded memory).
                let InFlight { map, deadlines, .. } = &mut *table;
                deadlines.retain(|(_, id)| map.contains_key(id));
            }
            for m in batch.drain(..) {
                if let Err(e) = conn.seal.append(&shared.codec, &m.frame, &mut self.buf) {
                    refused.push((m.done, e));
                    continue;
                }
                n_frames += 1;
                if m.want_ack {
                    let permit = permits
                        .as_mut()
                        .and_then(|p| p.split(1))
                        .expect("one permit per ACK-wanting message");
                    table.deadlines.push_back((deadline, m.msg_id));
                    if let Some((old, ..)) = table.map.insert(m.msg_id, (m.done, permit, written)) {
                        // A reused id: the older send can no longer be matched.
                        old(Err(SendError::ConnectionLost {
                            addr: self.addr,
                            reason: "message id reused while in flight".into(),
                        }));
                    }
                } else {
                    sent_only.push(m.done);
                }
            }
        }
        for (done, e) in refused {
            Counters::inc(&self.shared.counters.send_failures);
            done(Err(SendError::BadFrame {
                addr: self.addr,
                reason: e.to_string(),
            }));
        }
        conn.messages += n_frames;
        conn.last_write = Instant::now();
        let written = tokio::time::timeout_at(deadline, conn.write.write_all(&self.buf)).await;
        let counters = &self.shared.counters;
        match written {
            Ok(Ok(())) => {
                Counters::inc(&counters.writes);
                Counters::add(&counters.frames_sent, n_frames);
                Counters::add(&counters.bytes_sent, self.buf.len() as u64);
                for done in sent_only {
                    done(Ok(Delivered::Sent));
                }
            }
            Ok(Err(e)) => {
                let err = SendError::ConnectionLost {
                    addr: self.addr,
                    reason: e.to_string(),
                };
                for done in sent_only {
                    Counters::inc(&counters.send_failures);
                    done(Err(err.clone()));
                }
                self.close_with(&err);
            }
            Err(_) => {
                Counters::inc(&counters.ack_timeouts);
                let err = SendError::Timeout {
                    addr: self.addr,
                    after: cfg.send_timeout,
                };
                for done in sent_only {
                    Counters::inc(&counters.send_failures);
                    done(Err(err.clone()));
                }
                self.close_with(&err);
            }
        }
        if self.buf.capacity() > 4 * cfg.write_batch_bytes {
            self.buf = BytesMut::with_capacity(cfg.write_batch_bytes.min(1 << 20));
        }
    }

    /// Closes the connection after `idle_timeout / 2` without writes, unless ACKs are still
    /// awaited on it (then looks again later).
    fn close_if_idle(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if lock(&conn.in_flight).map.is_empty() {
            tracing::debug!(peer = %self.addr, "closing an idle connection");
            self.close();
        } else {
            conn.last_write = Instant::now();
        }
    }

    fn close(&mut self) {
        let err = SendError::ConnectionLost {
            addr: self.addr,
            reason: "connection closed".into(),
        };
        self.close_with(&err);
    }

    /// Closes the connection, failing every message in flight on it with `err`.
    fn close_with(&mut self, err: &SendError) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        InFlight::fail_all(&conn.in_flight, err, &self.shared.counters);
        drop(conn);
    }

    async fn connect(&mut self) -> Result<(), SendError> {
        let shared = self.shared.clone();
        let cfg = &shared.config;
        let attempts = cfg.max_retry_attempts + 1;
        let mut last = String::new();
        let mut pause = Duration::from_millis(10);
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(cfg.reconnect_backoff.max(Duration::from_millis(10)));
            }
            let connecting = self.shared.net.connect_tcp(self.addr);
            match tokio::time::timeout(cfg.connect_timeout, connecting).await {
                Ok(Ok(stream)) => match self.open(stream).await {
                    Ok(()) => {
                        *lock(&self.down_until) = None;
                        Counters::inc(&self.shared.counters.connects);
                        return Ok(());
                    }
                    Err(e) => last = e.to_string(),
                },
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = format!("timed out after {:?}", cfg.connect_timeout),
            }
            Counters::inc(&self.shared.counters.connect_failures);
        }
        let mut down = lock(&self.down_until);
        let backoff = match *down {
            Some((_, b)) => (b * 2).min(cfg.max_reconnect_backoff),
            None => cfg.reconnect_backoff,
        };
        *down = Some((Instant::now() + backoff, backoff));
        tracing::debug!(peer = %self.addr, attempts, error = %last, "connect failed");
        Err(SendError::Connect {
            addr: self.addr,
            attempts,
            reason: last,
        })
    }

    /// Performs the handshake (docs/PROTOCOL.md §2.3) and starts the ACK reader.
    async fn open(&mut self, mut stream: N::TcpStream) -> std::io::Result<()> {
        let shared = &self.shared;
        let (seal, read_seal, leftover) = handshake::connect(
            &mut stream,
            &shared.codec,
            &shared.local,
            shared.config.connect_timeout,
        )
        .await?;
        let (read, write) = tokio::io::split(stream);
        let in_flight = Arc::new(Mutex::new(InFlight {
            map: HashMap::new(),
            deadlines: VecDeque::new(),
            closed: None,
        }));
        let permits = Arc::new(Semaphore::new(self.shared.config.max_in_flight));
        let reader = AckReader {
            shared: self.shared.clone(),
            addr: self.addr,
            in_flight: in_flight.clone(),
            permits: permits.clone(),
            connected: self.connected.clone(),
            seal: read_seal,
        };
        self.connected.fetch_add(1, Relaxed);
        Counters::inc(&self.shared.counters.connections_out);
        let reader = tokio::spawn(tracing::Instrument::instrument(
            reader.run(read, leftover),
            tracing::Span::current(),
        ))
        .abort_handle();
        self.conn = Some(Conn {
            addr: self.addr,
            counters: self.shared.counters.clone(),
            write,
            seal,
            in_flight,
            permits,
            opened: Instant::now(),
            last_write: Instant::now(),
            messages: 0,
            reader,
        });
        Ok(())
    }
}

struct AckReader<N: Net> {
    shared: Arc<Shared<N>>,
    addr: SocketAddr,
    in_flight: Arc<Mutex<InFlight>>,
    permits: Arc<Semaphore>,
    connected: Arc<AtomicUsize>,
    seal: ReadSeal,
}

impl<N: Net> Drop for AckReader<N> {
    fn drop(&mut self) {
        self.connected.fetch_sub(1, Relaxed);
        Counters::dec(&self.shared.counters.connections_out);
    }
}

impl<N: Net> AckReader<N> {
    async fn run(mut self, mut read: ReadHalf<N::TcpStream>, mut buf: BytesMut) {
        buf.reserve(8 * 1024);
        let send_timeout = self.shared.config.send_timeout;
        let reason = loop {
            let next_deadline = lock(&self.in_flight)
                .deadlines
                .front()
                .map_or(Instant::now() + send_timeout, |(d, _)| *d);
            tokio::select! {
                r = read.read_buf(&mut buf) => match r {
                    Ok(0) => break SendError::ConnectionLost { addr: self.addr, reason: "closed by peer".into() },
                    Ok(_) => {
                        if let Err(e) = self.drain(&mut buf) {
                            break e;
                        }
                    }
                    Err(e) => break SendError::ConnectionLost { addr: self.addr, reason: e.to_string() },
                },
                () = tokio::time::sleep_until(next_deadline) => {
                    if self.expire() {
                        break SendError::ConnectionLost {
                            addr: self.addr,
                            reason: format!("closed after an ACK timeout ({send_timeout:?})"),
                        };
                    }
                }
            }
        };
        self.permits.close();
        if let SendError::ConnectionLost { reason: why, .. } = &reason {
            self.shared.peer_event(crate::PeerEvent {
                addr: self.addr,
                member: None,
                direction: crate::Direction::Outbound,
                reason: why.clone(),
            });
        }
        InFlight::fail_all(&self.in_flight, &reason, &self.shared.counters);
    }

    /// Fails messages past their deadline; true when any did (the connection is then closed).
    fn expire(&self) -> bool {
        let now = Instant::now();
        let mut expired = Vec::new();
        {
            let mut table = lock(&self.in_flight);
            while let Some(&(deadline, id)) = table.deadlines.front() {
                if deadline > now {
                    break;
                }
                table.deadlines.pop_front();
                if let Some(entry) = table.map.remove(&id) {
                    expired.push(entry);
                }
            }
        }
        let any = !expired.is_empty();
        for (done, _permit, _) in expired {
            Counters::inc(&self.shared.counters.ack_timeouts);
            Counters::inc(&self.shared.counters.send_failures);
            done(Err(SendError::Timeout {
                addr: self.addr,
                after: self.shared.config.send_timeout,
            }));
        }
        any
    }

    fn drain(&mut self, buf: &mut BytesMut) -> Result<(), SendError> {
        loop {
            match self.seal.decode(&self.shared.codec, buf) {
                Ok(None) => return Ok(()),
                Ok(Some(Frame::Ack(ack))) => self.complete(&ack),
                Ok(Some(other)) => {
                    Counters::inc(&self.shared.counters.protocol_violations);
                    return Err(SendError::ConnectionLost {
                        addr: self.addr,
                        reason: format!(
                            "peer sent a {:?} frame on an outbound connection",
                            other.kind()
                        ),
                    });
                }
                Err(e) => {
                    self.shared.counters.malformed(e.kind_name());
                    return Err(SendError::ConnectionLost {
                        addr: self.addr,
                        reason: format!("malformed ACK stream: {e}"),
                    });
                }
            }
        }
    }

    fn complete(&self, ack: &AckFrame) {
        let counters = &self.shared.counters;
        Counters::inc(&counters.ack_frames_received);
        let mut done = Vec::new();
        let mut unknown = 0u64;
        {
            let mut table = lock(&self.in_flight);
            for range in &ack.acked {
                let span = range.last.saturating_sub(range.first);
                if span < table.map.len() as u64 {
                    for id in range.first..=range.last {
                        match table.map.remove(&id) {
                            Some((d, _, at)) => done.push((d, None, at)),
                            None => unknown += 1,
                        }
                    }
                } else {
                    // A huge range (or a bogus one) is matched against what is in flight, so
                    // its size costs nothing.
                    let ids: Vec<u64> = table
                        .map
                        .keys()
                        .copied()
                        .filter(|id| range.contains(*id))
                        .collect();
                    for id in ids {
                        if let Some((d, _, at)) = table.map.remove(&id) {
                            done.push((d, None, at));
                        }
                    }
                }
            }
            for fail in &ack.failed {
                match table.map.remove(&fail.msg_id) {
                    Some((d, _, at)) => done.push((d, Some(fail.reason.clone()), at)),
                    None => unknown += 1,
                }
            }
            // ACKs mostly come in send order: drop the deadlines of completed messages from
            // the front, so the queue stays as short as what is really in flight.
            while let Some(&(_, id)) = table.deadlines.front() {
                if table.map.contains_key(&id) {
                    break;
                }
                table.deadlines.pop_front();
            }
        }
        Counters::add(&counters.unknown_acks, unknown);
        let now = Instant::now();
        for (d, failure, written) in done {
            counters
                .ack_latency
                .observe(now.saturating_duration_since(written));
            match failure {
                None => {
                    Counters::inc(&counters.acked);
                    d(Ok(Delivered::Acked));
                }
                Some(reason) => {
                    Counters::inc(&counters.fail_acked);
                    Counters::inc(&counters.send_failures);
                    d(Err(SendError::FailAck {
                        addr: self.addr,
                        reason,
                    }));
                }
            }
        }
    }
}
