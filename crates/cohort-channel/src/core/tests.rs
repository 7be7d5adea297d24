use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use bytes::Bytes;
use cohort_wire::{MemberId, SendOptions};

use super::*;

/// Records what it sees and tags payloads on the way down.
struct Tag {
    name: &'static str,
    mask: SendOptions,
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Interceptor for Tag {
    fn name(&self) -> &'static str {
        self.name
    }
    fn option_mask(&self) -> SendOptions {
        self.mask
    }
    fn on_send(&mut self, mut msg: Outbound, cx: &mut Cx<'_>) {
        self.log.lock().unwrap().push(format!("{} down", self.name));
        let mut p = msg.payload.to_vec();
        p.extend_from_slice(self.name.as_bytes());
        msg.payload = p.into();
        cx.send_down(msg);
    }
    fn on_receive(&mut self, msg: Inbound, cx: &mut Cx<'_>) {
        self.log.lock().unwrap().push(format!("{} up", self.name));
        cx.deliver_up(msg);
    }
}

/// Splits every message in two going down; swallows odd-numbered ones going up.
struct Split;

impl Interceptor for Split {
    fn name(&self) -> &'static str {
        "split"
    }
    fn on_send(&mut self, msg: Outbound, cx: &mut Cx<'_>) {
        let mid = msg.payload.len() / 2;
        let mut a = msg.clone();
        a.payload = msg.payload.slice(..mid);
        let mut b = msg;
        b.msg_id = cx.next_msg_id();
        b.payload = b.payload.slice(mid..);
        cx.send_down(a);
        cx.send_down(b);
    }
    fn on_receive(&mut self, msg: Inbound, cx: &mut Cx<'_>) {
        if msg.msg_id % 2 == 0 {
            cx.deliver_up(msg);
        }
    }
}

fn out(payload: &'static [u8], options: SendOptions) -> Outbound {
    Outbound {
        msg_id: 1,
        destinations: Arc::from(Vec::new()),
        options,
        seq: 0,
        extensions: Vec::new(),
        payload: Bytes::from_static(payload),
        ticket: Ticket(9),
    }
}

fn inbound(msg_id: u64, options: SendOptions) -> Inbound {
    Inbound {
        from: MemberId::from_bytes([1; 16]),
        member: None,
        peer: std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
        msg_id,
        options,
        seq: 0,
        timestamp_ms: 0,
        extensions: Vec::new(),
        payload: Bytes::new(),
        ack: None,
    }
}

fn tag(
    name: &'static str,
    mask: SendOptions,
    log: &Arc<std::sync::Mutex<Vec<String>>>,
) -> Box<dyn Interceptor> {
    Box::new(Tag {
        name,
        mask,
        log: log.clone(),
    })
}

#[test]
fn sends_go_down_in_order_and_receives_come_up_in_reverse() {
    let log = Arc::default();
    let mut p = Pipeline::new(
        vec![
            tag("a", SendOptions::NONE, &log),
            tag("b", SendOptions::NONE, &log),
        ],
        16,
        Arc::new(AtomicU64::new(0)),
    );
    let now = Instant::now();
    p.send(now, out(b"x", SendOptions::NONE));
    let Some(Output::Transmit(m)) = p.poll_output() else {
        panic!("transmit")
    };
    assert_eq!(&m.payload[..], b"xab");
    assert_eq!(m.ticket, Ticket(9));
    p.receive(now, inbound(2, SendOptions::NONE));
    assert!(matches!(p.poll_output(), Some(Output::Deliver(_))));
    assert!(p.poll_output().is_none());
    assert_eq!(*log.lock().unwrap(), ["a down", "b down", "b up", "a up"]);
}

#[test]
fn option_mask_skips_interceptors_both_ways() {
    let log = Arc::default();
    let mut p = Pipeline::new(
        vec![
            tag("a", SendOptions::NONE, &log),
            tag("gz", SendOptions::from_bits(0x100), &log),
        ],
        16,
        Arc::new(AtomicU64::new(0)),
    );
    let now = Instant::now();
    p.send(now, out(b"x", SendOptions::USE_ACK));
    let Some(Output::Transmit(m)) = p.poll_output() else {
        panic!("transmit")
    };
    assert_eq!(&m.payload[..], b"xa", "gz skipped: its bit is not set");
    p.send(now, out(b"x", SendOptions::from_bits(0x102)));
    let Some(Output::Transmit(m)) = p.poll_output() else {
        panic!("transmit")
    };
    assert_eq!(&m.payload[..], b"xagz");
    p.receive(now, inbound(2, SendOptions::NONE));
    assert!(matches!(p.poll_output(), Some(Output::Deliver(_))));
    assert_eq!(
        *log.lock().unwrap(),
        ["a down", "a down", "gz down", "a up"]
    );
}

#[test]
fn one_input_may_yield_many_or_no_outputs() {
    let ids = Arc::new(AtomicU64::new(100));
    let mut p = Pipeline::new(vec![Box::new(Split)], 16, ids);
    let now = Instant::now();
    p.send(now, out(b"abcd", SendOptions::NONE));
    let mut sent = Vec::new();
    while let Some(Output::Transmit(m)) = p.poll_output() {
        sent.push((m.msg_id, m.payload, m.ticket));
    }
    assert_eq!(
        sent,
        [
            (1, Bytes::from_static(b"ab"), Ticket(9)),
            (101, Bytes::from_static(b"cd"), Ticket(9))
        ]
    );
    p.receive(now, inbound(3, SendOptions::NONE));
    assert!(p.poll_output().is_none(), "held or dropped");
    p.receive(now, inbound(4, SendOptions::NONE));
    assert!(matches!(p.poll_output(), Some(Output::Deliver(m)) if m.msg_id == 4));
}

/// Fans every message out a thousandfold.
struct Storm;

impl Interceptor for Storm {
    fn name(&self) -> &'static str {
        "storm"
    }
    fn on_send(&mut self, msg: Outbound, cx: &mut Cx<'_>) {
        for _ in 0..1000 {
            cx.send_down(msg.clone());
        }
    }
}

#[test]
fn the_work_queue_is_bounded() {
    let mut p = Pipeline::new(
        vec![Box::new(Storm), Box::new(Storm)],
        64,
        Arc::new(AtomicU64::new(0)),
    );
    p.send(Instant::now(), out(b"x", SendOptions::NONE));
    let mut n = 0;
    while p.poll_output().is_some() {
        n += 1;
    }
    assert!(n <= 64 * 1000, "{n} outputs");
    assert!(p.stats().work_dropped > 0);
}

#[test]
fn an_acker_dropped_without_a_verdict_fails() {
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    drop(Acker::new(move |r| g.lock().unwrap().push(r)));
    let g = got.clone();
    Acker::new(move |r| g.lock().unwrap().push(r)).fail("boom".into());
    let g = got.clone();
    Acker::new(move |r| g.lock().unwrap().push(r)).ack();
    let mut consumed = inbound(1, SendOptions::USE_ACK | SendOptions::SYNCHRONIZED_ACK);
    let g = got.clone();
    consumed.ack = Some(Acker::new(move |r| g.lock().unwrap().push(r)));
    consumed.consume();
    assert_eq!(
        *got.lock().unwrap(),
        [
            Err(DROPPED_UNPROCESSED.to_string()),
            Err("boom".to_string()),
            Ok(()),
            Ok(())
        ]
    );
}

/// Fans every received message out a thousandfold, each copy with an acker of its own.
struct ReceiveStorm(Arc<std::sync::Mutex<Vec<Result<(), String>>>>);

impl Interceptor for ReceiveStorm {
    fn name(&self) -> &'static str {
        "receive_storm"
    }
    fn on_receive(&mut self, msg: Inbound, cx: &mut Cx<'_>) {
        for i in 0..1000 {
            let got = self.0.clone();
            let mut copy = inbound(i, msg.options);
            copy.ack = Some(Acker::new(move |r| got.lock().unwrap().push(r)));
            cx.deliver_up(copy);
        }
        msg.consume();
    }
}

#[test]
fn received_work_dropped_on_overflow_is_fail_acked() {
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut p = Pipeline::new(
        vec![Box::new(Storm), Box::new(ReceiveStorm(got.clone()))],
        64,
        Arc::new(AtomicU64::new(0)),
    );
    p.receive(Instant::now(), inbound(1, SendOptions::USE_ACK));
    let mut delivered = 0;
    while let Some(out) = p.poll_output() {
        if let Output::Deliver(m) = out {
            delivered += 1;
            m.consume();
        }
    }
    let got = got.lock().unwrap();
    let failed = got
        .iter()
        .filter(|r| matches!(r, Err(e) if e == WORK_QUEUE_FULL))
        .count();
    assert_eq!(got.len(), 1000, "every copy got a verdict");
    assert_eq!(failed as u64, p.stats().work_dropped);
    assert_eq!(delivered + failed, 1000);
    assert!(failed > 0);
}

/// An interceptor of an application's own that owns a transforming tag.
struct Scrambler;

impl Interceptor for Scrambler {
    fn name(&self) -> &'static str {
        "scrambler"
    }

    fn tags(&self) -> &'static [(u32, TagKind)] {
        &[(100, TagKind::Transform), (101, TagKind::Control)]
    }
}

#[test]
fn the_pipeline_asks_its_interceptors_what_a_tag_means() {
    let p = Pipeline::new(vec![Box::new(Scrambler)], 16, Arc::new(AtomicU64::new(0)));
    assert_eq!(p.tag_kind(100), Some(TagKind::Transform));
    assert_eq!(p.tag_kind(101), Some(TagKind::Control));
    // Cohort's own tags are known from the registry even when this stack lacks their
    // interceptor (a peer's compression must not reach these listeners).
    assert_eq!(p.tag_kind(tags::COMPRESSION), Some(TagKind::Transform));
    assert_eq!(p.tag_kind(tags::PING), Some(TagKind::Control));
    // Annotations and unknown application tags are delivered.
    assert_eq!(p.tag_kind(tags::ORDER), None);
    assert_eq!(p.tag_kind(200), None);
    let empty = Pipeline::new(Vec::new(), 16, Arc::new(AtomicU64::new(0)));
    assert_eq!(empty.tag_kind(100), None);
}

/// Every message moves through the pipeline's queues as a `Work` item and an `Output`: an
/// enum is as large as its largest variant, so a rare variant carrying a `Member` (216 bytes)
/// would make every send and delivery move that much. Those variants are boxed.
#[test]
fn work_items_and_outputs_are_no_larger_than_a_message() {
    use std::mem::size_of;
    let message = size_of::<Inbound>().max(size_of::<Outbound>());
    assert!(
        size_of::<Output>() <= message + 8,
        "Output: {}",
        size_of::<Output>()
    );
    assert!(
        size_of::<super::Work>() <= message + 8,
        "Work: {}",
        size_of::<super::Work>()
    );
}
