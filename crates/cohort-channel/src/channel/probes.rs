//! Failure detectors' probes: the frame the owner builds, and the transport operation that
//! carries it out.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use cohort_net::Net;
use cohort_wire::{CohortCodec, DataFrame, DataHeader, Frame, FrameCodec, Member, SendOptions};

use crate::core::{ProbeError, ProbeErrorKind, ProbeRequest, tags};

/// The probe frame for `probe` (USE_ACK with a read test), from `local`, encoded with `codec`;
/// `None` when the probe sends nothing, or (counted by the caller) when it cannot be encoded.
pub(super) fn probe_test(
    probe: &ProbeRequest,
    msg_id: u64,
    local: &Member,
    wall_clock_ms: u64,
    codec: &CohortCodec,
) -> Option<Result<cohort_transport::ProbeTest, cohort_wire::EncodeError>> {
    if !probe.send_test {
        return None;
    }
    let mut options = SendOptions::BYTE_MESSAGE;
    if probe.read_timeout.is_some() {
        options = options.union(SendOptions::USE_ACK);
    }
    let data = Frame::Data(DataFrame {
        header: DataHeader {
            msg_id,
            options,
            sender: local.id,
            timestamp_ms: wall_clock_ms,
            seq: 0,
            extensions: vec![cohort_wire::Extension {
                tag: tags::PROBE,
                value: Bytes::new(),
            }],
        },
        payload: Bytes::new(),
    });
    let mut buf = BytesMut::new();
    Some(
        codec
            .encode_frame(&data, &mut buf)
            .map(|()| cohort_transport::ProbeTest {
                frame: buf.freeze(),
                msg_id,
                read_timeout: probe.read_timeout,
            }),
    )
}

/// Runs a failure detector's probe through the transport (a fresh connection, the handshake,
/// optionally the probe frame and its ACK) and classifies the result.
pub(super) async fn run_probe<N: Net>(
    net: &N,
    codec: &CohortCodec,
    local: &Member,
    member: &Member,
    probe: ProbeRequest,
    test: Option<cohort_transport::ProbeTest>,
) -> Result<(), ProbeError> {
    use cohort_transport::ProbeStage;
    let addr = SocketAddr::new(member.addr, member.port);
    let failure =
        match cohort_transport::probe(net, codec, local, addr, probe.connect_timeout, test).await {
            Ok(()) => return Ok(()),
            Err(f) => f,
        };
    use std::io::ErrorKind as K;
    let kind = match failure.error.kind() {
        K::ConnectionRefused => ProbeErrorKind::Refused,
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
            ProbeErrorKind::Reset
        }
        K::TimedOut => ProbeErrorKind::Timeout,
        _ => ProbeErrorKind::Other,
    };
    let stage = match failure.stage {
        ProbeStage::Connect => "connect",
        ProbeStage::Send => "send test to",
        ProbeStage::Read => "read test",
    };
    Err(ProbeError {
        kind,
        detail: format!("{stage} {addr}: {}", failure.error),
    })
}
