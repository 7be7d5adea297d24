//! Received frames as the pipeline's input.

use std::net::SocketAddr;
use std::sync::Arc;

use cohort_transport::Received;
use cohort_wire::{DataFrame, Member};

use crate::core::{Acker, Inbound};

pub(super) fn to_inbound(r: Received) -> Inbound {
    let ack = r.ack.map(|token| {
        Acker::new(move |result| match result {
            Ok(()) => token.ack(),
            Err(reason) => token.fail(&reason),
        })
    });
    frame_to_inbound(r.frame, r.hello, r.peer, ack)
}

fn frame_to_inbound(
    data: DataFrame,
    member: Option<Arc<Member>>,
    peer: SocketAddr,
    ack: Option<Acker>,
) -> Inbound {
    Inbound {
        from: data.header.sender,
        member,
        peer,
        msg_id: data.header.msg_id,
        options: data.header.options,
        seq: data.header.seq,
        timestamp_ms: data.header.timestamp_ms,
        extensions: data.header.extensions,
        payload: data.payload,
        ack,
    }
}
