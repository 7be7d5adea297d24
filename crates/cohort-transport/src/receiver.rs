//! Inbound side: the accept loop, one reader task and one ACK writer task per connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::{BufMut, BytesMut};
use cohort_net::{Alarm, Net, TcpListener};
use cohort_wire::{
    AckFrame, FRAME_PREFIX_LEN, FailAck, Frame, FrameCodec, FramePrefix, MemberId, Nonce, Role,
    Sealer, SendOptions, Session,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::core::{InboundConn, Refusal, Timeouts};
use crate::delay_acks::DelayAcks;
use crate::handshake::{ReadSeal, WriteSeal, fresh_nonce};
use crate::read_buffers::ReadBuffer;
use crate::stats::Counters;
use crate::{AckMsg, AckSink, AckToken, InboundPermit, Received, Reservation, Shared, Via};

pub(crate) async fn accept_loop<N: Net>(shared: Arc<Shared<N>>, listener: N::TcpListener) {
    let mut stop = shared.stop_rx.clone();
    let mut next_conn = 0u64;
    loop {
        let accepted = tokio::select! {
            biased;
            () = crate::stopped(&mut stop) => return,
            a = listener.accept() => a,
        };
        let (stream, from) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: pause briefly rather than spin.
                cohort_net::warn_limited!(shared.warn, "accept_failed", error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let counters = &shared.counters;
        next_conn += 1;
        let (kill_tx, kill_rx) = oneshot::channel();
        if !admit(&shared, from, next_conn, kill_tx) {
            Counters::inc(&counters.connections_rejected);
            cohort_net::warn_limited!(shared.warn, "too_many_connections", peer = %from,
                max = shared.config.max_connections + shared.config.max_unauthenticated,
                "too many connections; closing");
            drop(stream);
            continue;
        }
        Counters::inc(&counters.connections_accepted);
        Counters::inc(&counters.connections_in);
        let span = tracing::debug_span!("peer", peer = %from, direction = "in");
        tokio::spawn(tracing::Instrument::instrument(
            serve(shared.clone(), stream, from, next_conn, kill_rx),
            span,
        ));
        // Let the new connection read its hello before the next accept can evict it.
        tokio::task::yield_now().await;
    }
}

/// Why a connection is closed from outside its task.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kill {
    /// [`crate::TransportHandle::close_inbound`].
    Requested,
    /// Evicted while waiting for its hello, to make room for a newer connection.
    Evicted,
}

/// An inbound connection as the transport tracks it.
pub(crate) struct InboundEntry {
    /// Which connection (a remote address can be reused).
    conn: u64,
    kill: oneshot::Sender<Kill>,
    /// Set until the connection is authenticated (its hello, and on a keyed connection its
    /// first sealed frame, arrived): when it was accepted.
    awaiting_hello: Option<(Instant, IpAddr)>,
    /// A keyed connection whose signed hello verified and whose first sealed frame is awaited:
    /// evicted only after every connection without a verified hello.
    verified: bool,
}

impl InboundEntry {
    pub(crate) fn close(self, why: Kill) {
        let _ = self.kill.send(why);
    }
}

fn table<N: Net>(
    shared: &Shared<N>,
) -> std::sync::MutexGuard<'_, std::collections::HashMap<SocketAddr, InboundEntry>> {
    shared
        .inbound
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Registers a new connection as awaiting its hello; false when it must be refused.
///
/// Connections without a hello have a pool of their own (`max_unauthenticated`, and
/// `max_unauthenticated_per_source` per IP address), apart from the members' connections
/// (`max_connections`, counted once the hello is in): they can never crowd out a member. When
/// the pool is full, its oldest connection without a verified hello is closed to make room (a
/// member's hello follows its connect at once, so only slow or silent connections are evicted);
/// keyed connections waiting for their first sealed frame go only when no such one is left.
fn admit<N: Net>(
    shared: &Shared<N>,
    from: SocketAddr,
    conn: u64,
    kill: oneshot::Sender<Kill>,
) -> bool {
    let cfg = &shared.config;
    // Evicted connections end a moment later; never hold more sockets than both pools.
    let hard = (cfg.max_connections + cfg.max_unauthenticated) as u64;
    if shared.counters.connections_in.load(Relaxed) >= hard {
        return false;
    }
    let now = Instant::now();
    let mut inbound = table(shared);
    for (cap, same_source) in [
        (cfg.max_unauthenticated_per_source, true),
        (cfg.max_unauthenticated, false),
    ] {
        let waiting = inbound.iter().filter_map(|(addr, e)| {
            let (since, ip) = e.awaiting_hello?;
            (!same_source || ip == from.ip()).then_some(((e.verified, since), *addr))
        });
        // The victim: unverified before verified, then the oldest.
        let (count, oldest) = waiting.fold((0usize, None), |(n, old), (rank, addr)| {
            let older = match old {
                Some((r, _)) if r <= rank => old,
                _ => Some((rank, addr)),
            };
            (n + 1, older)
        });
        if count >= cap {
            if let Some(entry) = oldest.and_then(|(_, addr)| inbound.remove(&addr)) {
                Counters::inc(&shared.counters.unauthenticated_evicted);
                entry.close(Kill::Evicted);
            }
        }
    }
    let entry = InboundEntry {
        conn,
        kill,
        awaiting_hello: Some((now, from.ip())),
        verified: false,
    };
    if let Some(old) = inbound.insert(from, entry) {
        // The same remote address again: the old connection is gone (or about to be).
        old.close(Kill::Requested);
    }
    true
}

/// Why an inbound connection was closed.
impl From<Refusal> for Close {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::MissingAuth => Self::Malformed(cohort_wire::DecodeError::MissingAuth),
            Refusal::Violation(what) => Self::Violation(what),
        }
    }
}

enum Close {
    Eof,
    Io(std::io::Error),
    Stopped,
    Timeout(&'static str),
    Malformed(cohort_wire::DecodeError),
    Violation(String),
    Upstream,
    /// Closed from outside the task.
    Killed(Kill),
    /// `max_connections` members' connections are open.
    Full,
}

async fn serve<N: Net>(
    shared: Arc<Shared<N>>,
    stream: N::TcpStream,
    from: SocketAddr,
    conn_id: u64,
    kill_rx: oneshot::Receiver<Kill>,
) {
    let stream = DelayAcks::<N>::new(stream, shared.config.delayed_acks);
    let (mut read, write) = tokio::io::split(stream);
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let (close_tx, close_rx) = oneshot::channel::<()>();
    // Keyed: the reader hands the challenge and the connection's sealer to the writer once
    // the hello verified (docs/PROTOCOL.md §2.3).
    let keyed = shared.codec.is_authenticated();
    let (seal_tx, seal_rx) = oneshot::channel();
    let writer = tokio::spawn(ack_writer(
        shared.clone(),
        write,
        ack_rx,
        close_rx,
        keyed.then_some(seal_rx),
    ));
    let timeouts = Timeouts {
        hello: shared.config.hello_timeout,
        frame: shared.config.frame_timeout,
        idle: shared.config.idle_timeout,
    };
    let mut conn = Inbound {
        shared: shared.clone(),
        from,
        conn_id,
        core: InboundConn::new(Instant::now().into_std(), keyed, timeouts),
        ack_tx,
        pending_acks: Arc::new(Semaphore::new(shared.config.max_pending_acks)),
        reserved: None,
        batch: None,
        large_hint: 0,
        seal_tx: Some(seal_tx),
        read_seal: ReadSeal::new(None),
    };
    let why = tokio::select! {
        why = conn.read_loop(&mut read) => why,
        Ok(kill) = kill_rx => Close::Killed(kill),
    };
    {
        let mut inbound = table(&shared);
        if inbound.get(&from).is_some_and(|e| e.conn == conn_id) {
            inbound.remove(&from);
        }
    }
    if let (Some(hello), Close::Eof | Close::Io(_)) = (conn.core.hello(), &why) {
        shared.peer_event(crate::PeerEvent {
            addr: SocketAddr::new(hello.addr, hello.port),
            member: Some(hello.id),
            direction: crate::Direction::Inbound,
            reason: match &why {
                Close::Io(e) => e.to_string(),
                _ => "closed by peer".into(),
            },
        });
    }
    let counters = &shared.counters;
    let warn = &shared.warn;
    match &why {
        Close::Eof | Close::Stopped | Close::Upstream => {}
        Close::Full => {
            cohort_net::warn_limited!(warn, "too_many_connections", peer = %from,
                max = shared.config.max_connections, "too many connections; closing");
        }
        Close::Killed(Kill::Requested) => {
            tracing::debug!(peer = %from, "connection closed on request");
        }
        Close::Killed(Kill::Evicted) => {
            cohort_net::warn_limited!(warn, "evicted", peer = %from,
                "connection without a hello closed to make room for a newer one");
        }
        Close::Io(e) => tracing::debug!(peer = %from, error = %e, "connection error"),
        Close::Timeout("hello") => {
            Counters::inc(&counters.hello_timeouts);
            cohort_net::warn_limited!(warn, "hello_timeout", peer = %from,
                "no hello in time; connection closed");
        }
        Close::Timeout("idle") => {
            Counters::inc(&counters.idle_closed);
            tracing::debug!(peer = %from, "idle connection closed");
        }
        Close::Timeout(what) => {
            Counters::inc(&counters.frame_timeouts);
            cohort_net::warn_limited!(warn, "frame_timeout", peer = %from, what,
                "connection too slow; closed");
        }
        Close::Malformed(e) => {
            counters.malformed(e.kind_name());
            cohort_net::warn_limited!(warn, "malformed", peer = %from, error = %e,
                "malformed frame; connection closed");
        }
        Close::Violation(what) => {
            Counters::inc(&counters.protocol_violations);
            cohort_net::warn_limited!(warn, "violation", peer = %from, what = %what,
                "protocol violation; connection closed");
        }
    }
    let abrupt = !matches!(why, Close::Eof);
    let had_hello = conn.core.hello().is_some();
    drop(conn);
    if abrupt {
        // Close now, even if ACK tokens are still held above.
        let _ = close_tx.send(());
        drop(read);
    } else {
        drop(close_tx);
    }
    let _ = writer.await;
    if had_hello {
        Counters::dec(&counters.connections_established);
    }
    Counters::dec(&counters.connections_in);
}

/// The largest [`Inbound::large_hint`], in read buffers (`rx_buf_size`): a connection that
/// received large frames keeps at most this many read buffers allocated while idle (frames of
/// up to twice the read buffer, 64 KiB payloads with the defaults, are read in place).
const LARGE_HINT_MAX: usize = 2;

struct Inbound<N: Net> {
    shared: Arc<Shared<N>>,
    from: SocketAddr,
    conn_id: u64,
    /// The protocol state: stage of the handshake, the hello's member, deadlines.
    core: InboundConn,
    ack_tx: mpsc::UnboundedSender<AckMsg>,
    pending_acks: Arc<Semaphore>,
    /// Budget reserved for the large frame at the front of the buffer.
    reserved: Option<InboundPermit>,
    /// The reservation the whole frames of the current read share, and its bytes not yet
    /// taken by one of them. Dropped once the read's frames are decoded.
    batch: Option<(Arc<Reservation>, u64)>,
    /// The size of the last frame when it was larger than the read buffer (at most
    /// [`LARGE_HINT_MAX`] read buffers), 0 after a smaller one or a larger one: a fresh read
    /// buffer is made that large, so that the next frame of a stream of large ones is read in
    /// place rather than copied whole into a buffer of its size once its prefix says how large
    /// it is.
    large_hint: usize,
    /// Hands the challenge and the connection's sealer to the ACK writer once the hello is in.
    seal_tx: Option<oneshot::Sender<(Nonce, Sealer)>>,
    /// Opens the frames after the hello.
    read_seal: ReadSeal,
}

impl<N: Net> Inbound<N> {
    /// The most a connection may buffer before its hello: one hello frame.
    fn hello_room(&self) -> usize {
        FRAME_PREFIX_LEN
            + self.shared.config.limits.max_frame_header as usize
            + cohort_wire::TAG_LEN
            + cohort_wire::CRC_LEN
    }

    /// Refuses a frame on its prefix, before its body is buffered (the core decides).
    fn check_prefix(&self, prefix: &FramePrefix) -> Result<(), Close> {
        self.core.check_prefix(prefix).map_err(Close::from)
    }

    /// Reserves `bytes` of the inbound budget; waits (reading paused) while it is spent.
    async fn reserve(&self, bytes: usize) -> Result<Arc<Reservation>, Close> {
        let shared = &self.shared;
        let n = u32::try_from(bytes).map_err(|_| Close::Violation("frame too large".into()))?;
        let permit = match shared.budget.clone().try_acquire_many_owned(n) {
            Ok(p) => p,
            Err(_) => {
                Counters::inc(&shared.counters.inbound_budget_waits);
                let mut stop = shared.stop_rx.clone();
                tokio::select! {
                    biased;
                    () = crate::stopped(&mut stop) => return Err(Close::Stopped),
                    p = shared.budget.clone().acquire_many_owned(n) => {
                        p.map_err(|_| Close::Stopped)?
                    }
                }
            }
        };
        Ok(Arc::new(Reservation::new(
            permit,
            u64::from(n),
            shared.counters.clone(),
        )))
    }

    /// The budget of the whole frame of `total` bytes at the front of `buf`. The first frame
    /// of a read reserves for every whole frame behind it in `buf` as well (at most a quarter
    /// of `max_inbound_bytes`, and at least this frame): one reservation per read, not one per
    /// frame. The frames after it take their share of it.
    async fn frame_budget(&mut self, buf: &[u8], total: usize) -> Result<InboundPermit, Close> {
        let bytes = total as u64;
        // Taken out first: a connection must hold no budget of its own while it waits for
        // more (the frames it already queued hold theirs until the layer above takes them).
        if let Some((share, left)) = self.batch.take() {
            if left >= bytes {
                self.batch = Some((share.clone(), left - bytes));
                return Ok(InboundPermit::of(share, bytes));
            }
        }
        let cap = (self.shared.config.max_inbound_bytes / 4).max(total);
        // The frames from the front of `buf` this reservation covers, in bytes.
        let mut want = total;
        while let Ok(Some(p)) = self.shared.codec.peek_frame_prefix(&buf[want..]) {
            let t = p.total_len();
            if want + t > buf.len().min(cap) {
                break;
            }
            want += t;
        }
        let share = self.reserve(want).await?;
        self.batch = Some((share.clone(), (want - total) as u64));
        Ok(InboundPermit::of(share, bytes))
    }

    /// Decodes every complete frame at the front of `buf`, setting `progressed` when a frame
    /// was decoded or a reservation made (the frame timer restarts). Returns how many bytes may
    /// be read next: a hello's worth before the hello, the rest of the read buffer for small frames,
    /// and, for a frame larger than the read buffer, its remainder once its header has been
    /// checked and its size reserved against the inbound budget.
    async fn decode_all(
        &mut self,
        buf: &mut BytesMut,
        progressed: &mut bool,
    ) -> Result<usize, Close> {
        let room = self.decode_frames(buf, progressed).await;
        // What a read's frames did not take goes back with the last of them.
        self.batch = None;
        room
    }

    async fn decode_frames(
        &mut self,
        buf: &mut BytesMut,
        progressed: &mut bool,
    ) -> Result<usize, Close> {
        let shared = self.shared.clone();
        let cfg = &shared.config;
        loop {
            let prefix = match self.shared.codec.peek_frame_prefix(buf) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => return Err(Close::Malformed(e)),
            };
            self.check_prefix(&prefix)?;
            let total = prefix.total_len();
            if buf.len() < total {
                if self.core.hello().is_none() || total <= cfg.rx_buf_size {
                    break;
                }
                if self.reserved.is_none() {
                    // A large frame: check who it claims to come from before buffering it.
                    let header = self
                        .shared
                        .codec
                        .peek_data_header(buf, &prefix)
                        .map_err(Close::Malformed)?;
                    let Some(header) = header else {
                        return Ok(prefix.header_end() - buf.len());
                    };
                    self.check_sender(header.sender)?;
                    // What the read's small frames left of their reservation is not held
                    // while this one waits for the budget.
                    self.batch = None;
                    let share = self.reserve(total).await?;
                    self.reserved = Some(InboundPermit::of(share, total as u64));
                    // Time spent waiting for the budget is not the peer's slowness.
                    *progressed = true;
                }
                return Ok(total - buf.len());
            }
            let budget = match self.reserved.take() {
                Some(p) => Some(p),
                None if self.core.hello().is_some() => Some(self.frame_budget(buf, total).await?),
                None => None,
            };
            let decoded = if self.core.hello().is_none() {
                // The hello is checked against the ring; the key that verified it keys the
                // connection.
                self.shared.codec.decode_frame_verified(buf).map(|f| {
                    f.map(|(frame, key)| {
                        if let (Frame::Hello(h), Some(key)) = (&frame, key) {
                            self.seal_with(&key, h);
                        }
                        frame
                    })
                })
            } else {
                self.read_seal.decode(&self.shared.codec, buf)
            };
            match decoded {
                Ok(Some(frame)) => {
                    *progressed = true;
                    self.large_hint =
                        if total > cfg.rx_buf_size && total <= LARGE_HINT_MAX * cfg.rx_buf_size {
                            total
                        } else {
                            0
                        };
                    if self.core.hello().is_some() && self.core.frame_opened() {
                        // The first frame opened under the connection key: authenticated.
                        self.bind();
                    }
                    self.handle(frame, budget).await?;
                }
                Ok(None) => break,
                Err(e) => return Err(Close::Malformed(e)),
            }
        }
        Ok(self
            .core
            .room(buf.len(), self.hello_room(), cfg.rx_buf_size))
    }

    async fn read_loop(&mut self, read: &mut tokio::io::ReadHalf<DelayAcks<N>>) -> Close {
        let shared = self.shared.clone();
        let cfg = &shared.config;
        let mut stop = self.shared.stop_rx.clone();
        // Kept across reads: no timer entry and no stop waiter made and dropped per read.
        let stopped = crate::stopped(&mut stop);
        tokio::pin!(stopped);
        let mut alarm = Alarm::new();
        let mut buf = BytesMut::new();
        let mut read_buffer = ReadBuffer::default();
        loop {
            let mut progressed = false;
            let room = match self.decode_all(&mut buf, &mut progressed).await {
                Ok(r) => r,
                Err(close) => return close,
            };
            self.core
                .on_decoded(Instant::now().into_std(), buf.len(), progressed);
            // Give back memory a large frame needed once.
            if buf.is_empty() && buf.capacity() > 4 * cfg.rx_buf_size {
                buf = BytesMut::new();
            }
            if room == 0 {
                return Close::Violation("no progress possible".into());
            }
            // Until authenticated (hello, and when keyed a sealed frame): the hello deadline.
            let (deadline, which) = self.core.poll_timeout();
            alarm.set(Some(Instant::from_std(deadline)));
            let what = which.name();
            if buf.is_empty() && buf.capacity() < self.large_hint {
                // Large frames in a row: the next is likely as large. Read its start into a
                // buffer that can hold all of it (nothing buffered: nothing copied).
                // From the spare pool too: a buffer freed and allocated per large frame was
                // fresh pages, faulted in by every read (docs/BENCHMARKS.md, ninth stop).
                shared.spare_buffers.reserve(
                    &mut read_buffer,
                    &mut buf,
                    self.large_hint,
                    self.large_hint,
                );
            }
            if room > cfg.rx_buf_size.saturating_sub(buf.len()) && buf.capacity() < buf.len() + room
            {
                // The rest of a frame larger than the read buffer (its size already reserved
                // against the inbound budget): one buffer of the frame's exact size, which the
                // allocator reuses from frame to frame, not doublings of the read buffer (fresh
                // pages, faulted in and unmapped, for every large message).
                let mut exact = BytesMut::with_capacity(buf.len() + room);
                exact.extend_from_slice(&buf);
                buf = exact;
                read_buffer.replaced_for_large();
            }
            // Grow with the bytes that arrive, a read buffer at a time, into a buffer whose
            // frames upstream has dropped where there is one.
            shared.spare_buffers.reserve(
                &mut read_buffer,
                &mut buf,
                room.min(cfg.rx_buf_size),
                cfg.rx_buf_size,
            );
            let mut limited = (&mut buf).limit(room);
            let n = tokio::select! {
                biased;
                () = &mut stopped => return Close::Stopped,
                r = read.read_buf(&mut limited) => match r {
                    Ok(0) => return Close::Eof,
                    Ok(n) => n,
                    Err(e) => return Close::Io(e),
                },
                () = alarm.ring() => return Close::Timeout(what),
            };
            self.core.on_read(Instant::now().into_std());
            Counters::add(&self.shared.counters.bytes_received, n as u64);
        }
    }

    fn check_sender(&self, sender: MemberId) -> Result<(), Close> {
        self.core.check_sender(sender).map_err(Close::from)
    }

    /// Keys the connection from a verified hello: a fresh challenge, and the session derived
    /// from it, the hello's nonce and the key that verified the hello. A hello without a nonce
    /// leaves the connection unkeyed; [`Self::handle`] then refuses it.
    fn seal_with(&mut self, key: &cohort_wire::ClusterKey, hello: &cohort_wire::Hello) {
        let Some(nonce) = hello.nonce else {
            return;
        };
        let challenge = fresh_nonce();
        let (sealer, opener) = Session::new(key, Role::Acceptor, &challenge, &nonce).split();
        self.read_seal = ReadSeal::new(Some(opener));
        if let Some(tx) = self.seal_tx.take() {
            let _ = tx.send((challenge, sealer));
        }
    }

    /// The connection is authenticated: it leaves the pool of connections without a hello.
    fn bind(&mut self) {
        if let Some(e) = table(&self.shared).get_mut(&self.from) {
            if e.conn == self.conn_id {
                e.awaiting_hello = None;
            }
        }
    }

    async fn handle(&mut self, frame: Frame, budget: Option<InboundPermit>) -> Result<(), Close> {
        match frame {
            Frame::Hello(hello) => {
                // A keyed hello with a nonce handed its challenge to the writer already.
                let with_nonce = self.seal_tx.is_none();
                let local = self.shared.local.clone();
                self.core
                    .check_hello(&local, &hello.member, with_nonce)
                    .map_err(Close::from)?;
                let counters = &self.shared.counters;
                let max = self.shared.config.max_connections as u64;
                if counters.connections_established.fetch_add(1, Relaxed) >= max {
                    Counters::dec(&counters.connections_established);
                    Counters::inc(&counters.connections_rejected);
                    return Err(Close::Full);
                }
                // Only now: a connection refused as Full never counted as established.
                self.core.accept_hello(hello.member);
                if let Some(m) = self.core.hello() {
                    tracing::debug!(peer = %self.from, member = %m.id.short(), "hello");
                }
                if self.core.stage() == crate::core::Stage::AwaitSealed {
                    if let Some(e) = table(&self.shared).get_mut(&self.from) {
                        if e.conn == self.conn_id {
                            e.verified = true;
                        }
                    }
                } else {
                    self.bind();
                }
                Ok(())
            }
            Frame::Ack(_) => Err(Close::Violation(
                "an ACK frame on an inbound connection".into(),
            )),
            Frame::Challenge(_) => Err(Close::Violation(
                "a challenge frame on an inbound connection".into(),
            )),
            Frame::Data(data) => {
                self.check_sender(data.header.sender)?;
                let Some(hello) = self.core.hello() else {
                    return Err(Close::Violation("data before hello".into()));
                };
                Counters::inc(&self.shared.counters.frames_received);
                let opts = data.header.options;
                let msg_id = data.header.msg_id;
                let mut ack = None;
                if opts.contains(SendOptions::USE_ACK) {
                    // Room is there in the common case: taken without building a waiter.
                    let permit = match self.pending_acks.clone().try_acquire_owned() {
                        Ok(p) => p,
                        Err(_) => self
                            .pending_acks
                            .clone()
                            .acquire_owned()
                            .await
                            .map_err(|_| Close::Upstream)?,
                    };
                    if opts.contains(SendOptions::SYNCHRONIZED_ACK) {
                        ack = Some(AckToken::new(
                            msg_id,
                            AckSink::Tcp(self.ack_tx.clone()),
                            Some(permit),
                        ));
                    } else {
                        // Receipt: acknowledge before anything above runs (Tribes' "ack async").
                        let _ = self.ack_tx.send(AckMsg::Ack(msg_id, Some(permit)));
                    }
                }
                let received = Received {
                    hello: Some(hello.clone()),
                    peer: self.from,
                    frame: data,
                    ack,
                    via: Via::Tcp,
                    budget,
                };
                // Room is there in the common case: queued without building a waiter.
                match self.shared.inbound_tx.try_send(received) {
                    Ok(()) => Ok(()),
                    Err(mpsc::error::TrySendError::Full(received)) => self
                        .shared
                        .inbound_tx
                        .send(received)
                        .await
                        .map_err(|_| Close::Upstream),
                    Err(mpsc::error::TrySendError::Closed(_)) => Err(Close::Upstream),
                }
            }
        }
    }
}

/// Writes the challenge once the hello is in (keyed clusters), then ACK frames: everything
/// queued since the last write goes out as one frame (split at `max_ack_entries`), sealed for
/// the connection when keyed.
async fn ack_writer<N: Net>(
    shared: Arc<Shared<N>>,
    mut write: WriteHalf<DelayAcks<N>>,
    mut rx: mpsc::UnboundedReceiver<AckMsg>,
    mut close: oneshot::Receiver<()>,
    keyed: Option<oneshot::Receiver<(Nonce, Sealer)>>,
) {
    let max = shared.config.limits.max_ack_entries;
    let mut out = BytesMut::new();
    let mut msgs = Vec::new();
    // The permits of the ACKs being written: they count against `max_pending_acks` until the
    // write is done (a peer that does not read its ACKs holds the room, not more memory).
    let mut held = Vec::new();
    let mut seal = WriteSeal::new(None);
    if let Some(seal_rx) = keyed {
        // No ACK can be owed before the hello, so nothing else is waiting meanwhile.
        let (challenge, sealer) = tokio::select! {
            biased;
            _ = &mut close => return,
            s = seal_rx => match s { Ok(s) => s, Err(_) => return },
        };
        if shared
            .codec
            .encode_frame(&Frame::Challenge(challenge), &mut out)
            .is_err()
            || write.write_all(&out).await.is_err()
        {
            return;
        }
        seal = WriteSeal::new(Some(sealer));
    }
    loop {
        let first = tokio::select! {
            biased;
            _ = &mut close => return,
            m = rx.recv() => match m { Some(m) => m, None => break },
        };
        msgs.push(first);
        while msgs.len() < 64 * 1024 {
            match rx.try_recv() {
                Ok(m) => msgs.push(m),
                Err(_) => break,
            }
        }
        held.extend(msgs.iter_mut().filter_map(AckMsg::take_permit));
        out.clear();
        if encode_acks(&shared, &mut seal, &mut msgs, max, &mut out).is_err() {
            return;
        }
        match write.write_all(&out).await {
            Ok(()) => held.clear(),
            Err(e) => {
                tracing::debug!(error = %e, "ACK write failed");
                return;
            }
        }
    }
    let _ = write.shutdown().await;
}

/// Encodes `msgs` as ACK frames into `out` and empties `msgs` (releasing the permits still
/// in them: the TCP writer takes them out first, to hold them until the write is done).
pub(crate) fn encode_acks<N: Net>(
    shared: &Shared<N>,
    seal: &mut WriteSeal,
    msgs: &mut Vec<AckMsg>,
    max_entries: usize,
    out: &mut BytesMut,
) -> Result<(), cohort_wire::EncodeError> {
    let mut ids = Vec::new();
    let mut failed = Vec::new();
    for m in msgs.drain(..) {
        match m {
            AckMsg::Ack(id, _) => ids.push(id),
            AckMsg::Fail(msg_id, reason, _) => failed.push(FailAck { msg_id, reason }),
        }
    }
    let mut frame = AckFrame::from_ids(ids);
    frame.failed = failed;
    let mut frames = 0;
    while !frame.acked.is_empty() || !frame.failed.is_empty() {
        let take_acked = frame.acked.len().min(max_entries);
        let take_failed = frame.failed.len().min(max_entries - take_acked);
        let part = AckFrame {
            acked: frame.acked.drain(..take_acked).collect(),
            failed: frame.failed.drain(..take_failed).collect(),
        };
        seal.encode(&shared.codec, &Frame::Ack(part), out)?;
        frames += 1;
    }
    Counters::add(&shared.counters.ack_frames_sent, frames);
    Ok(())
}
