//! A failure detector's probe: one fresh connection, the handshake, optionally one frame and
//! its ACK. The transport owns the IO; the layer above chooses the frame and reads the result.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cohort_net::Net;
use cohort_wire::{CohortCodec, Frame, Member};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::handshake;

/// What a probe does after connecting.
#[derive(Clone, Debug)]
pub struct ProbeTest {
    /// One data frame, encoded by the layer above (with its keys, if any); sealed for the
    /// probe's connection when keyed.
    pub frame: Bytes,
    /// Its message id.
    pub msg_id: u64,
    /// When set, wait this long for an ACK or FAIL_ACK naming `msg_id` (either proves the
    /// peer is alive and reading); when not, the probe ends once the frame is written.
    pub read_timeout: Option<Duration>,
}

/// The step of a probe that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeStage {
    /// Opening the connection.
    Connect,
    /// The handshake or writing the test frame.
    Send,
    /// Waiting for the ACK.
    Read,
}

/// Why a probe failed: the step and the IO error (`TimedOut` when a step ran out of time,
/// `UnexpectedEof` when the peer closed without answering, `InvalidData` when it answered
/// something that is not an ACK).
#[derive(Debug, thiserror::Error)]
#[error("{stage:?} {addr}: {error}")]
pub struct ProbeFailure {
    /// The step.
    pub stage: ProbeStage,
    /// The peer probed.
    pub addr: SocketAddr,
    /// What went wrong.
    pub error: io::Error,
}

/// Probes `addr`: connects within `connect_timeout`; with a test, performs the handshake as
/// `local` (docs/PROTOCOL.md §2.3), writes the test frame and, if asked, waits for its ACK.
/// The connection is closed afterwards.
pub async fn probe<N: Net>(
    net: &N,
    codec: &CohortCodec,
    local: &Member,
    addr: SocketAddr,
    connect_timeout: Duration,
    test: Option<ProbeTest>,
) -> Result<(), ProbeFailure> {
    let fail = |stage, error| ProbeFailure { stage, addr, error };
    let timed_out = |what: &str, after: Duration| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what}: no answer within {after:?}"),
        )
    };
    let mut stream = match tokio::time::timeout(connect_timeout, net.connect_tcp(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(fail(ProbeStage::Connect, e)),
        Err(_) => {
            return Err(fail(
                ProbeStage::Connect,
                timed_out("connect", connect_timeout),
            ));
        }
    };
    let Some(test) = test else {
        return Ok(());
    };
    let send = async {
        let (mut seal, read_seal, leftover) =
            handshake::connect(&mut stream, codec, local, connect_timeout).await?;
        let mut out = BytesMut::new();
        seal.append(codec, &test.frame, &mut out)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        stream.write_all(&out).await?;
        stream.flush().await?;
        Ok::<_, io::Error>((read_seal, leftover))
    };
    let (mut read_seal, mut buf) = match tokio::time::timeout(connect_timeout, send).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(fail(ProbeStage::Send, e)),
        Err(_) => {
            return Err(fail(
                ProbeStage::Send,
                timed_out("send test", connect_timeout),
            ));
        }
    };
    let Some(read_timeout) = test.read_timeout else {
        let _ = stream.shutdown().await;
        return Ok(());
    };
    let wait_ack = async {
        loop {
            match read_seal.decode(codec, &mut buf) {
                Ok(Some(Frame::Ack(ack))) => {
                    let named = ack.acked.iter().any(|r| r.contains(test.msg_id))
                        || ack.failed.iter().any(|f| f.msg_id == test.msg_id);
                    if named {
                        return Ok(());
                    }
                    continue;
                }
                Ok(Some(other)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("answered with a {:?} frame", other.kind()),
                    ));
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("malformed answer: {e}"),
                    ));
                }
            }
            if buf.len() > 64 * 1024 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "answer larger than an ACK frame",
                ));
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed without an answer",
                ));
            }
        }
    };
    match tokio::time::timeout(read_timeout, wait_ack).await {
        Ok(Ok(())) => {
            let _ = stream.shutdown().await;
            Ok(())
        }
        Ok(Err(e)) => Err(fail(ProbeStage::Read, e)),
        Err(_) => Err(fail(ProbeStage::Read, timed_out("read test", read_timeout))),
    }
}
