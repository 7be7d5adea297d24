//! Inbound side: the accept loop, one reader task and one ACK writer task per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::BytesMut;
use cohort_net::{Net, TcpListener};
use cohort_wire::{AckFrame, FailAck, Frame, FrameCodec, Member, SendOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::stats::Counters;
use crate::{AckMsg, AckSink, AckToken, Received, Shared, Via};

pub(crate) async fn accept_loop<N: Net>(shared: Arc<Shared<N>>, listener: N::TcpListener) {
    let mut stop = shared.stop_rx.clone();
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
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let counters = &shared.counters;
        if counters.connections_in.load(Relaxed) >= shared.config.max_connections as u64 {
            Counters::inc(&counters.connections_rejected);
            tracing::warn!(peer = %from, max = shared.config.max_connections, "too many connections; closing");
            drop(stream);
            continue;
        }
        Counters::inc(&counters.connections_accepted);
        Counters::inc(&counters.connections_in);
        tokio::spawn(serve(shared.clone(), stream, from));
    }
}

/// Why an inbound connection was closed.
enum Close {
    Eof,
    Io(std::io::Error),
    Stopped,
    Timeout(&'static str),
    Malformed(cohort_wire::DecodeError),
    Violation(String),
    Upstream,
    /// Closed by [`crate::TransportHandle::close_inbound`].
    Requested,
}

async fn serve<N: Net>(shared: Arc<Shared<N>>, stream: N::TcpStream, from: SocketAddr) {
    let (mut read, write) = tokio::io::split(stream);
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let (close_tx, close_rx) = oneshot::channel::<()>();
    let writer = tokio::spawn(ack_writer(shared.clone(), write, ack_rx, close_rx));
    let mut conn = Inbound {
        shared: shared.clone(),
        from,
        hello: None,
        ack_tx,
        pending_acks: Arc::new(Semaphore::new(shared.config.max_pending_acks)),
    };
    let (kill_tx, kill_rx) = oneshot::channel::<()>();
    shared
        .inbound
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(from, kill_tx);
    let why = tokio::select! {
        why = conn.read_loop(&mut read) => why,
        Ok(()) = kill_rx => Close::Requested,
    };
    shared
        .inbound
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(&from);
    if let (Some(hello), Close::Eof | Close::Io(_)) = (&conn.hello, &why) {
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
    match &why {
        Close::Eof | Close::Stopped | Close::Upstream => {}
        Close::Requested => tracing::debug!(peer = %from, "connection closed on request"),
        Close::Io(e) => tracing::debug!(peer = %from, error = %e, "connection error"),
        Close::Timeout(what) => {
            Counters::inc(&counters.frame_timeouts);
            tracing::warn!(peer = %from, what, "connection too slow; closed");
        }
        Close::Malformed(e) => {
            counters.malformed(e.kind_name());
            tracing::warn!(peer = %from, error = %e, "malformed frame; connection closed");
        }
        Close::Violation(what) => {
            Counters::inc(&counters.protocol_violations);
            tracing::warn!(peer = %from, what = %what, "protocol violation; connection closed");
        }
    }
    let abrupt = !matches!(why, Close::Eof);
    drop(conn);
    if abrupt {
        // Close now, even if ACK tokens are still held above.
        let _ = close_tx.send(());
        drop(read);
    } else {
        drop(close_tx);
    }
    let _ = writer.await;
    Counters::dec(&counters.connections_in);
}

struct Inbound<N: Net> {
    shared: Arc<Shared<N>>,
    from: SocketAddr,
    hello: Option<Arc<Member>>,
    ack_tx: mpsc::UnboundedSender<AckMsg>,
    pending_acks: Arc<Semaphore>,
}

impl<N: Net> Inbound<N> {
    async fn read_loop(&mut self, read: &mut tokio::io::ReadHalf<N::TcpStream>) -> Close {
        let shared = self.shared.clone();
        let cfg = &shared.config;
        let mut stop = self.shared.stop_rx.clone();
        let mut buf = BytesMut::with_capacity(cfg.rx_buf_size);
        // When the hello or the frame at the front of `buf` began arriving.
        let mut started = Some(Instant::now());
        loop {
            if buf.capacity() - buf.len() < cfg.rx_buf_size / 4 {
                buf.reserve(cfg.rx_buf_size);
            }
            let deadline = started.map(|t| t + cfg.frame_timeout);
            let read_some = async {
                match deadline {
                    Some(d) => tokio::time::timeout_at(d, read.read_buf(&mut buf))
                        .await
                        .ok(),
                    None => Some(read.read_buf(&mut buf).await),
                }
            };
            let n = tokio::select! {
                biased;
                () = crate::stopped(&mut stop) => return Close::Stopped,
                r = read_some => match r {
                    None if self.hello.is_none() => return Close::Timeout("hello"),
                    None => return Close::Timeout("frame"),
                    Some(Ok(0)) => return Close::Eof,
                    Some(Ok(n)) => n,
                    Some(Err(e)) => return Close::Io(e),
                },
            };
            Counters::add(&self.shared.counters.bytes_received, n as u64);
            let mut decoded = false;
            loop {
                match self.shared.codec.decode_frame(&mut buf) {
                    Ok(None) => break,
                    Ok(Some(frame)) => {
                        decoded = true;
                        if let Err(close) = self.handle(frame).await {
                            return close;
                        }
                    }
                    Err(e) => return Close::Malformed(e),
                }
            }
            if buf.is_empty() {
                started = None;
            } else if decoded || started.is_none() {
                started = Some(Instant::now());
            }
            // Give back memory a large frame needed once.
            if buf.is_empty() && buf.capacity() > 4 * cfg.rx_buf_size {
                buf = BytesMut::with_capacity(cfg.rx_buf_size);
            }
        }
    }

    async fn handle(&mut self, frame: Frame) -> Result<(), Close> {
        match frame {
            Frame::Hello(member) => {
                if self.hello.is_some() {
                    return Err(Close::Violation("a second hello".into()));
                }
                if member.cluster != self.shared.local.cluster {
                    return Err(Close::Violation(format!(
                        "hello from cluster {:?}, this is {:?}",
                        member.cluster, self.shared.local.cluster
                    )));
                }
                tracing::debug!(peer = %self.from, member = %member.id.short(), "hello");
                self.hello = Some(Arc::new(*member));
                Ok(())
            }
            Frame::Ack(_) => Err(Close::Violation(
                "an ACK frame on an inbound connection".into(),
            )),
            Frame::Data(data) => {
                let Some(hello) = &self.hello else {
                    return Err(Close::Violation("data before hello".into()));
                };
                if data.header.sender != hello.id {
                    return Err(Close::Violation(format!(
                        "data from {} on {}'s connection",
                        data.header.sender.short(),
                        hello.id.short()
                    )));
                }
                Counters::inc(&self.shared.counters.frames_received);
                let opts = data.header.options;
                let msg_id = data.header.msg_id;
                let mut ack = None;
                if opts.contains(SendOptions::USE_ACK) {
                    let permit = self
                        .pending_acks
                        .clone()
                        .acquire_owned()
                        .await
                        .map_err(|_| Close::Upstream)?;
                    if opts.contains(SendOptions::SYNCHRONIZED_ACK) {
                        ack = Some(AckToken {
                            msg_id,
                            sink: AckSink::Tcp(self.ack_tx.clone()),
                            permit: Some(permit),
                            done: false,
                        });
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
                };
                self.shared
                    .inbound_tx
                    .send(received)
                    .await
                    .map_err(|_| Close::Upstream)
            }
        }
    }
}

/// Writes ACK frames: everything queued since the last write goes out as one frame (split at
/// `max_ack_entries`).
async fn ack_writer<N: Net>(
    shared: Arc<Shared<N>>,
    mut write: WriteHalf<N::TcpStream>,
    mut rx: mpsc::UnboundedReceiver<AckMsg>,
    mut close: oneshot::Receiver<()>,
) {
    let max = shared.config.limits.max_ack_entries;
    let mut out = BytesMut::new();
    let mut msgs = Vec::new();
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
        out.clear();
        if encode_acks(&shared, &mut msgs, max, &mut out).is_err() {
            return;
        }
        match write.write_all(&out).await {
            Ok(()) => {}
            Err(e) => {
                tracing::debug!(error = %e, "ACK write failed");
                return;
            }
        }
    }
    let _ = write.shutdown().await;
}

/// Encodes `msgs` as ACK frames into `out` and empties `msgs` (releasing their permits).
pub(crate) fn encode_acks<N: Net>(
    shared: &Shared<N>,
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
        shared.codec.encode_frame(&Frame::Ack(part), out)?;
        frames += 1;
    }
    Counters::add(&shared.counters.ack_frames_sent, frames);
    Ok(())
}
