//! A lane: one task per connection slot, owning its connection, its backlog and its write
//! buffer (see the module above for the whole picture).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use cohort_net::{Alarm, Net};
use cohort_wire::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Entry, Outgoing, lock};
use crate::core::{Backoff, Completed, Outbound, Outcome, WriteBatch, retry_pause};
use crate::handshake::{self, ReadSeal, WriteSeal};
use crate::stats::{Counters, LatencyBatch};
use crate::{Completion, Delivered, OutFrame, SendError, Shared};

/// Frames at least this large are written from their own bytes (vectored writes) instead of
/// being copied into the write buffer.
const VECTORED_MIN: usize = 16 * 1024;

/// What one batch may copy into the write buffer: `write_batch_bytes` (at most 1 MiB), plus
/// the frame that crosses it (frames of `VECTORED_MIN` or more are not copied).
fn batch_room(cfg: &crate::TransportConfig) -> usize {
    cfg.write_batch_bytes.min(1 << 20) + VECTORED_MIN + 1024
}

/// Most buffers handed to one vectored write (well under the kernel's `IOV_MAX`).
const MAX_IO_SLICES: usize = 64;

/// One open connection and everything about it; owned by its lane's task.
struct Conn<S> {
    read: ReadHalf<S>,
    write: WriteHalf<S>,
    seal: WriteSeal,
    read_seal: ReadSeal,
    read_buf: BytesMut,
    core: Outbound<Completion>,
    opened: Instant,
    /// When frames were last written: the lane closes the connection itself after half the
    /// receiver's `idle_timeout` without traffic, before the receiver would.
    last_write: Instant,
    messages: u64,
}

pub(super) struct Lane<N: Net> {
    shared: Arc<Shared<N>>,
    addr: SocketAddr,
    queued_bytes: Arc<AtomicUsize>,
    connected: Arc<AtomicUsize>,
    backoff: Arc<Mutex<Backoff>>,
    conn: Option<Conn<N::TcpStream>>,
    buf: BytesMut,
    /// Completions taken from the core, run outside its borrow; kept for its room (at most
    /// `max_in_flight` entries).
    completed: Vec<Completed<Completion>>,
}

/// Frames taken off the queue and not yet written, in order, kept as the entries that brought
/// them: a run's frames move once, into a batch, not first into a queue of frames. Every run
/// it holds has a frame left (an exhausted one is removed at once).
#[derive(Default)]
struct Backlog {
    entries: VecDeque<Run>,
}

/// A queue entry in the backlog: what is left of it.
enum Run {
    One(Option<Outgoing>),
    Many(std::vec::IntoIter<Outgoing>),
}

impl Run {
    fn front(&self) -> Option<&Outgoing> {
        match self {
            Self::One(m) => m.as_ref(),
            Self::Many(v) => v.as_slice().first(),
        }
    }

    fn take(&mut self) -> Option<Outgoing> {
        match self {
            Self::One(m) => m.take(),
            Self::Many(v) => v.next(),
        }
    }
}

impl Backlog {
    /// Appends a queue entry's frames, in order.
    fn push(&mut self, entry: Entry) {
        let run = match entry {
            Entry::One(m) => Run::One(Some(m)),
            Entry::Many(v) => Run::Many(v.into_iter()),
        };
        if run.front().is_some() {
            self.entries.push_back(run);
        }
    }

    fn is_empty(&self) -> bool {
        self.front().is_none()
    }

    /// The next frame.
    fn front(&self) -> Option<&Outgoing> {
        self.entries.front().and_then(Run::front)
    }

    /// Takes the next frame.
    fn pop_front(&mut self) -> Option<Outgoing> {
        loop {
            let run = self.entries.front_mut()?;
            if let Some(m) = run.take() {
                if run.front().is_none() {
                    self.entries.pop_front();
                }
                return Some(m);
            }
            self.entries.pop_front();
        }
    }
}

/// What woke a lane.
enum Wake {
    Stop,
    Message(Option<Entry>),
    /// Frames of an earlier run wait in the backlog and the in-flight table has room.
    Backlog,
    Read(std::io::Result<usize>),
    Deadline,
    Idle,
}

/// Reads from the connection, if there is one; never completes otherwise.
async fn read_some<S: tokio::io::AsyncRead>(
    conn: Option<(&mut ReadHalf<S>, &mut BytesMut)>,
) -> std::io::Result<usize> {
    match conn {
        Some((read, buf)) => {
            buf.reserve(8 * 1024);
            read.read_buf(buf).await
        }
        None => std::future::pending().await,
    }
}

impl<N: Net> Lane<N> {
    /// A lane for `addr`, sharing its peer's queue count, connection count and back-off.
    pub(super) fn new(
        shared: Arc<Shared<N>>,
        addr: SocketAddr,
        queued_bytes: Arc<AtomicUsize>,
        connected: Arc<AtomicUsize>,
        backoff: Arc<Mutex<Backoff>>,
    ) -> Self {
        let buf = BytesMut::with_capacity(batch_room(&shared.config));
        Self {
            shared,
            addr,
            queued_bytes,
            connected,
            backoff,
            conn: None,
            buf,
            completed: Vec::new(),
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Entry>) {
        let mut stop = self.shared.stop_rx.clone();
        let mut batch: Vec<Outgoing> = Vec::new();
        // Frames taken off the queue in a run ([`Entry::Many`]) and not yet written: a batch
        // takes from here first. Still counted in `queued_bytes`.
        let mut backlog = Backlog::default();
        let idle = self.shared.config.idle_timeout / 2;
        // Kept across passes: no timer entry and no stop waiter made and dropped per pass.
        let (mut deadline_alarm, mut idle_alarm) = (Alarm::new(), Alarm::new());
        let stopped = crate::stopped(&mut stop);
        tokio::pin!(stopped);
        loop {
            // A full in-flight table takes nothing more from the queue until ACKs come.
            let room = self
                .conn
                .as_ref()
                .map_or(self.shared.config.max_in_flight, |c| c.core.room());
            deadline_alarm.set(
                self.conn
                    .as_ref()
                    .and_then(|c| c.core.poll_timeout())
                    .map(Instant::from_std),
            );
            idle_alarm.set(self.conn.as_ref().map(|c| c.last_write + idle));
            let reading = self.conn.as_mut().map(|c| (&mut c.read, &mut c.read_buf));
            let waiting = !backlog.is_empty();
            let wake = tokio::select! {
                biased;
                () = &mut stopped => Wake::Stop,
                r = read_some(reading) => Wake::Read(r),
                () = deadline_alarm.ring() => Wake::Deadline,
                () = std::future::ready(()), if room > 0 && waiting => Wake::Backlog,
                m = rx.recv(), if room > 0 && !waiting => Wake::Message(m),
                () = idle_alarm.ring() => Wake::Idle,
            };
            match wake {
                Wake::Stop | Wake::Message(None) => break,
                Wake::Read(r) => {
                    if let Err(reason) = self.on_read(r) {
                        self.close_lost(&reason, true);
                    }
                }
                Wake::Deadline => self.on_deadline(),
                Wake::Idle => self.close_if_idle(),
                Wake::Message(Some(entry)) => {
                    backlog.push(entry);
                    self.take_batch(room, &mut backlog, &mut rx, &mut batch);
                    self.write_batch(&mut batch).await;
                }
                Wake::Backlog => {
                    self.take_batch(room, &mut backlog, &mut rx, &mut batch);
                    self.write_batch(&mut batch).await;
                }
            }
        }
        // Stopped or removed: fail what is in flight and what is still queued.
        self.close_lost("transport stopped", false);
        rx.close();
        while let Ok(entry) = rx.try_recv() {
            backlog.push(entry);
        }
        while let Some(m) = backlog.pop_front() {
            self.queued_bytes.fetch_sub(m.len, Relaxed);
            Counters::inc(&self.shared.counters.send_failures);
            m.done.complete(Err(SendError::Stopped));
        }
    }

    /// Fills `batch` from the backlog, then the queue, up to `write_batch_bytes` and `room`
    /// ACK-wanting frames (the in-flight table's room); what it takes leaves the queue's
    /// byte count.
    fn take_batch(
        &self,
        room: usize,
        backlog: &mut Backlog,
        rx: &mut mpsc::UnboundedReceiver<Entry>,
        batch: &mut Vec<Outgoing>,
    ) {
        // At least one frame per batch; then until either bound is reached (the core decides).
        let mut taking = WriteBatch::new(self.shared.config.write_batch_bytes, room);
        loop {
            if backlog.is_empty() {
                match rx.try_recv() {
                    Ok(entry) => backlog.push(entry),
                    Err(_) => break,
                }
            }
            let Some(front) = backlog.front() else { break };
            if !taking.take(front.len, front.want_ack) {
                break;
            }
            let Some(m) = backlog.pop_front() else { break };
            batch.push(m);
        }
        self.queued_bytes.fetch_sub(taking.bytes(), Relaxed);
    }

    fn fail_all(&self, batch: &mut Vec<Outgoing>, err: &SendError) {
        for m in batch.drain(..) {
            Counters::inc(&self.shared.counters.send_failures);
            m.done.complete(Err(err.clone()));
        }
    }

    /// Runs the completions the core has decided, outside any borrow of the connection.
    fn complete(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let counters = &self.shared.counters;
        let mut done = std::mem::take(&mut self.completed);
        // ACKs and their latencies are counted together, once per call, and before any
        // completion runs (one that panics loses no count).
        let mut latencies = LatencyBatch::default();
        let mut acked = 0;
        while let Some(c) = conn.core.poll_completed() {
            if let Some(latency) = c.latency {
                latencies.observe(latency);
            }
            acked += u64::from(matches!(c.outcome, Outcome::Acked));
            done.push(c);
        }
        latencies.add_to(&counters.ack_latency);
        Counters::add(&counters.acked, acked);
        for c in done.drain(..) {
            let result = super::settle(
                c.outcome,
                self.addr,
                self.shared.config.send_timeout,
                counters,
                |addr, reason| SendError::ConnectionLost { addr, reason },
            );
            c.token.complete(result);
        }
        self.completed = done;
    }

    /// Bytes read from the connection: decodes the ACK frames and hands them to the core.
    /// An error is the reason to close the connection.
    fn on_read(&mut self, read: std::io::Result<usize>) -> Result<(), String> {
        match read {
            Ok(0) => return Err("closed by peer".into()),
            Err(e) => return Err(e.to_string()),
            Ok(_) => {}
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let counters = &self.shared.counters;
        let now = Instant::now().into_std();
        let result = loop {
            match conn
                .read_seal
                .decode(&self.shared.codec, &mut conn.read_buf)
            {
                Ok(None) => break Ok(()),
                Ok(Some(Frame::Ack(ack))) => {
                    Counters::inc(&counters.ack_frames_received);
                    let unknown = conn.core.unknown_acks();
                    conn.core.on_ack(now, &ack);
                    Counters::add(&counters.unknown_acks, conn.core.unknown_acks() - unknown);
                }
                Ok(Some(other)) => {
                    Counters::inc(&counters.protocol_violations);
                    break Err(format!(
                        "peer sent a {:?} frame on an outbound connection",
                        other.kind()
                    ));
                }
                Err(e) => {
                    counters.malformed(e.kind_name());
                    break Err(format!("malformed ACK stream: {e}"));
                }
            }
        };
        self.complete();
        result
    }

    /// The core's timer: messages past their deadline fail, and the connection closes.
    fn on_deadline(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let expired = conn.core.on_timeout(Instant::now().into_std());
        self.complete();
        if expired {
            let reason = format!(
                "closed after an ACK timeout ({:?})",
                self.shared.config.send_timeout
            );
            self.close_lost(&reason, true);
        }
    }

    /// Closes the connection, failing everything in flight on it with `reason`; with
    /// `report`, tells the layer above (evidence for a failure detector).
    fn close_lost(&mut self, reason: &str, report: bool) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        conn.core.close(reason);
        self.conn = Some(conn);
        self.complete();
        self.conn = None;
        self.connected.fetch_sub(1, Relaxed);
        Counters::dec(&self.shared.counters.connections_out);
        if report {
            self.shared.peer_event(crate::PeerEvent {
                addr: self.addr,
                member: None,
                direction: crate::Direction::Outbound,
                reason: reason.to_owned(),
            });
        }
    }

    async fn write_batch(&mut self, batch: &mut Vec<Outgoing>) {
        let shared = self.shared.clone();
        let cfg = &shared.config;
        let expired = self.conn.as_ref().is_some_and(|c| {
            c.core.is_closed()
                || cfg.keep_alive_count.is_some_and(|n| c.messages >= n)
                || cfg.keep_alive_time.is_some_and(|t| c.opened.elapsed() >= t)
        });
        if expired {
            self.close_lost("connection closed", false);
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
        let now = Instant::now();
        let deadline = now + cfg.send_timeout;
        self.buf.clear();
        // Room for the whole batch from here on, taken while the buffer is empty: the last
        // batch's bytes were written and dropped, so this only moves the (empty) buffer back
        // to the start of its allocation. Without it, a batch that outgrew what was left
        // after the last one moved everything encoded so far (half a batch on average).
        self.buf.reserve(batch_room(cfg));
        // Small frames are copied into one buffer; large ones are written from their own
        // bytes (vectored writes), so a big payload is never copied on its way out.
        let mut parts: VecDeque<Bytes> = VecDeque::new();
        let mut total = 0usize;
        let mut sent_only = Vec::new();
        let mut refused = Vec::new();
        let mut n_frames = 0u64;
        // Register the ACK-wanting messages before writing: an ACK can come back before the
        // write returns.
        for m in batch.drain(..) {
            let added = match &m.frame {
                OutFrame::Encoded(frame) if frame.len() < VECTORED_MIN => {
                    conn.seal.append(&shared.codec, frame, &mut self.buf)
                }
                OutFrame::Encoded(frame) => {
                    conn.seal
                        .parts(&shared.codec, frame)
                        .map(|(body, trailer)| {
                            if !self.buf.is_empty() {
                                let small = self.buf.split().freeze();
                                total += small.len();
                                parts.push_back(small);
                            }
                            total += body.len();
                            parts.push_back(body);
                            if let Some(t) = trailer {
                                total += t.len();
                                parts.push_back(t);
                            }
                        })
                }
                // Encoded here, straight into the write buffer (one copy of the payload),
                // or for a large unsealed one around its payload, which is written from its
                // own bytes (no copy at all).
                OutFrame::Data(d) if d.payload.len() < VECTORED_MIN || conn.seal.is_sealed() => {
                    conn.seal.encode_data(&shared.codec, d, &mut self.buf)
                }
                OutFrame::Data(d) => match shared.codec.encode_data_around(d, &mut self.buf) {
                    Ok(Some(crc)) => {
                        // The head joins the small frames before it; the CRC starts the next
                        // run of small frames.
                        let head = self.buf.split().freeze();
                        total += head.len() + d.payload.len();
                        parts.push_back(head);
                        parts.push_back(d.payload.clone());
                        self.buf.extend_from_slice(&crc);
                        Ok(())
                    }
                    Ok(None) => conn.seal.encode_data(&shared.codec, d, &mut self.buf),
                    Err(e) => Err(e),
                },
            };
            if let Err(e) = added {
                refused.push((m.done, e));
                continue;
            }
            n_frames += 1;
            if m.want_ack {
                conn.core.register(now.into_std(), m.msg_id, m.done);
            } else {
                sent_only.push(m.done);
            }
        }
        for (done, e) in refused {
            Counters::inc(&shared.counters.send_failures);
            done.complete(Err(SendError::BadFrame {
                addr: self.addr,
                reason: e.to_string(),
            }));
        }
        if !self.buf.is_empty() {
            let small = self.buf.split().freeze();
            total += small.len();
            parts.push_back(small);
        }
        conn.messages += n_frames;
        conn.last_write = now;
        // Write, reading ACKs meanwhile.
        let mut off = 0;
        // Set when a write failed because the far side reset or closed the connection.
        let mut reset_by_peer = false;
        let failure: Option<SendError> = loop {
            let Some(front) = parts.front() else {
                break None;
            };
            if off == front.len() {
                parts.pop_front();
                off = 0;
                continue;
            }
            let Some(conn) = self.conn.as_mut() else {
                break Some(SendError::ConnectionLost {
                    addr: self.addr,
                    reason: "connection closed".into(),
                });
            };
            let Conn {
                read,
                write,
                read_buf,
                ..
            } = conn;
            read_buf.reserve(8 * 1024);
            let slices: Vec<std::io::IoSlice<'_>> = parts
                .iter()
                .take(MAX_IO_SLICES)
                .enumerate()
                .map(|(i, b)| std::io::IoSlice::new(if i == 0 { &b[off..] } else { &b[..] }))
                .collect();
            tokio::select! {
                biased;
                w = write.write_vectored(&slices) => match w {
                    Ok(0) => break Some(SendError::ConnectionLost {
                        addr: self.addr,
                        reason: "the connection accepts no more bytes".into(),
                    }),
                    Ok(mut n) => {
                        // Advance over what was written, part by part.
                        while n > 0 {
                            let Some(front) = parts.front() else { break };
                            let left = front.len() - off;
                            if n >= left {
                                n -= left;
                                parts.pop_front();
                                off = 0;
                            } else {
                                off += n;
                                n = 0;
                            }
                        }
                    }
                    Err(e) => {
                        reset_by_peer = matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionReset
                                | std::io::ErrorKind::BrokenPipe
                                | std::io::ErrorKind::ConnectionAborted
                        );
                        break Some(SendError::ConnectionLost {
                            addr: self.addr,
                            reason: e.to_string(),
                        });
                    }
                },
                r = read.read_buf(read_buf) => {
                    if let Err(reason) = self.on_read(r) {
                        self.close_lost(&reason, true);
                        break Some(SendError::ConnectionLost { addr: self.addr, reason });
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    break Some(SendError::Timeout { addr: self.addr, after: cfg.send_timeout });
                }
            }
        };
        let counters = &self.shared.counters;
        match failure {
            None => {
                Counters::inc(&counters.writes);
                Counters::add(&counters.frames_sent, n_frames);
                Counters::add(&counters.bytes_sent, total as u64);
                for done in sent_only {
                    done.complete(Ok(Delivered::Sent));
                }
            }
            Some(err) => {
                if matches!(err, SendError::Timeout { .. }) {
                    Counters::inc(&counters.ack_timeouts);
                }
                for done in sent_only {
                    Counters::inc(&counters.send_failures);
                    done.complete(Err(err.clone()));
                }
                // A write the socket refused because the far side reset or closed it is
                // reported, as a read of its end is (strong evidence for a failure detector).
                // Other write errors (a network fault) and a write that timed out are not:
                // the peer may be alive, or only slow.
                let reason = match &err {
                    SendError::ConnectionLost { reason, .. } => reason.clone(),
                    other => other.to_string(),
                };
                self.close_lost(&reason, reset_by_peer);
            }
        }
        // A large frame encoded into the buffer (sealed) grew it: give that memory back.
        if self.buf.capacity() > 2 * batch_room(cfg) {
            self.buf = BytesMut::with_capacity(batch_room(cfg));
        }
    }

    /// Closes the connection after `idle_timeout / 2` without writes, unless ACKs are still
    /// awaited on it (then looks again later).
    fn close_if_idle(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if conn.core.is_empty() {
            tracing::debug!(peer = %self.addr, "closing an idle connection");
            self.close_lost("connection closed", false);
        } else {
            conn.last_write = Instant::now();
        }
    }

    async fn connect(&mut self) -> Result<(), SendError> {
        let shared = self.shared.clone();
        let cfg = &shared.config;
        let attempts = cfg.max_retry_attempts + 1;
        let mut last = String::new();
        // Every attempt refused: nothing listens where the peer said it would.
        let mut refused = true;
        let mut pause = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                let p = retry_pause(pause, cfg.reconnect_backoff);
                pause = Some(p);
                tokio::time::sleep(p).await;
            }
            let connecting = self.shared.net.connect_tcp(self.addr);
            match tokio::time::timeout(cfg.connect_timeout, connecting).await {
                Ok(Ok(stream)) => match self.open(stream).await {
                    Ok(()) => {
                        lock(&self.backoff).connected();
                        Counters::inc(&self.shared.counters.connects);
                        return Ok(());
                    }
                    Err(e) => {
                        refused = false;
                        last = e.to_string();
                    }
                },
                Ok(Err(e)) => {
                    refused &= e.kind() == std::io::ErrorKind::ConnectionRefused;
                    last = e.to_string();
                }
                Err(_) => {
                    refused = false;
                    last = format!("timed out after {:?}", cfg.connect_timeout);
                }
            }
            Counters::inc(&self.shared.counters.connect_failures);
        }
        let backoff = lock(&self.backoff).round_failed(
            Instant::now().into_std(),
            cfg.reconnect_backoff,
            cfg.max_reconnect_backoff,
        );
        tracing::debug!(peer = %self.addr, attempts, error = %last, ?backoff, "connect failed");
        if refused {
            // Reported as the far side closing: a process that died took its listener with it
            // (strong evidence for a failure detector, as a reset connection is). At most once
            // per connect round: sends in the backoff that follows fail without connecting.
            self.shared.peer_event(crate::PeerEvent {
                addr: self.addr,
                member: None,
                direction: crate::Direction::Outbound,
                reason: format!("connect refused: {last}"),
            });
        }
        Err(SendError::Connect {
            addr: self.addr,
            attempts,
            reason: last,
        })
    }

    /// Performs the handshake (docs/PROTOCOL.md §2.3).
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
        self.connected.fetch_add(1, Relaxed);
        Counters::inc(&self.shared.counters.connections_out);
        let now = Instant::now();
        self.conn = Some(Conn {
            read,
            write,
            seal,
            read_seal,
            read_buf: leftover,
            core: Outbound::new(shared.config.max_in_flight, shared.config.send_timeout),
            opened: now,
            last_write: now,
            messages: 0,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(msg_id: u64) -> Outgoing {
        Outgoing {
            frame: OutFrame::Encoded(Bytes::from_static(b"x")),
            len: 1,
            msg_id,
            want_ack: false,
            done: Completion::new(|_| {}),
        }
    }

    /// Runs of every shape (one frame, many, none) come out in the order they went in, and an
    /// empty run never hides the frames behind it.
    #[test]
    fn the_backlog_keeps_order_across_runs() {
        let mut b = Backlog::default();
        assert!(b.is_empty());
        b.push(Entry::Many(Vec::new()));
        assert!(b.is_empty());
        b.push(Entry::One(frame(1)));
        b.push(Entry::Many(vec![frame(2), frame(3)]));
        b.push(Entry::Many(Vec::new()));
        b.push(Entry::Many(vec![frame(4)]));
        assert_eq!(b.front().map(|m| m.msg_id), Some(1));
        let mut got = Vec::new();
        while let Some(m) = b.pop_front() {
            got.push(m.msg_id);
            // More arrives while the backlog is drained.
            if m.msg_id == 2 {
                b.push(Entry::One(frame(5)));
            }
        }
        assert_eq!(got, [1, 2, 3, 4, 5]);
        assert!(b.is_empty());
        assert!(b.entries.is_empty(), "exhausted runs are removed");
    }
}
