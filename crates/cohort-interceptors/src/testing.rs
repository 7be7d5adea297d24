//! Test helpers: members, a pipeline over one interceptor, and "the wire" between two.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use bytes::Bytes;
use cohort_channel::{Inbound, Interceptor, Outbound, Output, Pipeline, Ticket};
use cohort_wire::{Member, MemberId, SendOptions};

pub(crate) fn member(n: u8) -> Member {
    let mut m = Member::new(
        MemberId::from_bytes([n; 16]),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        4000 + u16::from(n),
    );
    m.start_time_ms = u64::from(n);
    m
}

pub(crate) fn pipeline(stack: Vec<Box<dyn Interceptor>>, local: u8) -> Pipeline {
    let mut p = Pipeline::new(
        stack,
        1 << 16,
        Arc::new(AtomicU64::new(1000 * u64::from(local))),
    );
    p.set_local(member(local));
    p.set_wall_clock_ms(1_700_000_000_000);
    p
}

pub(crate) fn outbound(
    msg_id: u64,
    to: &[Member],
    options: SendOptions,
    payload: &[u8],
) -> Outbound {
    Outbound {
        msg_id,
        destinations: to.into(),
        options,
        seq: 0,
        extensions: Vec::new(),
        payload: Bytes::copy_from_slice(payload),
        ticket: Ticket(msg_id),
    }
}

/// What a transmitted message looks like when it arrives from `from`.
pub(crate) fn arrive(out: &Outbound, from: &Member) -> Inbound {
    Inbound {
        from: from.id,
        member: Some(Arc::new(from.clone())),
        peer: SocketAddr::new(from.addr, 50_000),
        msg_id: out.msg_id,
        options: out.options,
        seq: out.seq,
        timestamp_ms: 0,
        extensions: out.extensions.clone(),
        payload: out.payload.clone(),
        ack: None,
    }
}

#[derive(Default, Debug)]
pub(crate) struct Drained {
    pub(crate) sent: Vec<Outbound>,
    pub(crate) delivered: Vec<Inbound>,
    pub(crate) members: Vec<cohort_membership::MembershipEvent>,
    pub(crate) probes: Vec<(usize, Member, cohort_channel::ProbeRequest)>,
    pub(crate) failed: Vec<(Member, String)>,
    pub(crate) disconnects: Vec<SocketAddr>,
}

pub(crate) fn drain(p: &mut Pipeline) -> Drained {
    let mut d = Drained::default();
    while let Some(o) = p.poll_output() {
        match o {
            Output::Transmit(m) => d.sent.push(m),
            Output::Deliver(m) => d.delivered.push(m),
            Output::Member(ev) => d.members.push(*ev),
            Output::Probe {
                interceptor,
                member,
                probe,
            } => d.probes.push((interceptor, *member, probe)),
            Output::MemberFailed { member, detail } => d.failed.push((*member, detail)),
            Output::Disconnect(a) => d.disconnects.push(a),
            _ => {}
        }
    }
    d
}

/// Sends through `tx`, carries every frame to `rx` as from `from`, returns what `rx` delivers.
pub(crate) fn through(
    tx: &mut Pipeline,
    rx: &mut Pipeline,
    from: &Member,
    now: Instant,
    msg: Outbound,
) -> Vec<Inbound> {
    tx.send(now, msg);
    let sent = drain(tx).sent;
    for s in &sent {
        rx.receive(now, arrive(s, from));
    }
    drain(rx).delivered
}
