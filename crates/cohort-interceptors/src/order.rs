//! `Order`: per-sender FIFO delivery for messages that ask for it (option bit `option_flag`,
//! default 0x200), whatever path they took (several connections, UDP, reconnects).
//!
//! Sending: each destination gets its own sequence (1, 2, ...), carried in extension
//! [`tags::ORDER`] (8-byte sequence, 1-byte stream); a message to N members becomes N frames.
//! MULTICAST messages use one per-sender multicast stream instead.
//!
//! Receiving: per (sender, stream), messages are delivered in sequence. One that arrives early
//! waits in a reorder buffer, at most `max_queue` per sender, at most `expire` long (a timer,
//! not the next arrival as in Tribes). Then the gap is given up: counted, logged, and the held
//! messages delivered (`forward_expired`, the default) or dropped (FAIL_ACK when asked). A late
//! message (below the next expected number) is delivered at once, as Tribes does. A departing
//! member's held messages are delivered and its counters reset.

use crate::ConfigError;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use cohort_channel::{Cx, Inbound, Interceptor, Outbound, tags};
use cohort_membership::MembershipEvent;
use cohort_wire::{Extension, MemberId, SendOptions};

use crate::util::{Counter, bad, be_u64, check_flag, take_ext};

/// Settings.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct OrderConfig {
    /// The option bit that asks for order. Default 0x200.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::util::bits::deserialize")
    )]
    pub option_flag: SendOptions,
    /// How long a message waits for a missing predecessor. Default 3000 ms (Tribes' `expire`).
    #[cfg_attr(
        feature = "serde",
        serde(
            rename = "expire_ms",
            deserialize_with = "crate::util::ms::deserialize"
        )
    )]
    pub expire: Duration,
    /// After a gap expires, deliver the held messages (true) or drop them. Default true.
    pub forward_expired: bool,
    /// Messages held per sender stream; a full buffer gives up the gap at once. Default 1024
    /// (Tribes: unbounded).
    pub max_queue: usize,
    /// Sender streams tracked; beyond, the stream idle longest is flushed and forgotten.
    /// Default 4096.
    pub max_senders: usize,
}

impl Default for OrderConfig {
    fn default() -> Self {
        Self {
            option_flag: SendOptions::from_bits(0x200),
            expire: Duration::from_millis(3000),
            forward_expired: true,
            max_queue: 1024,
            max_senders: 4096,
        }
    }
}

impl OrderConfig {
    /// Checks every bound; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_flag("option_flag", self.option_flag)?;
        if self.expire < Duration::from_millis(1) {
            return bad("expire_ms", "must be at least 1");
        }
        if self.max_queue == 0 {
            return bad("max_queue", "must be at least 1");
        }
        if self.max_senders == 0 {
            return bad("max_senders", "must be at least 1");
        }
        Ok(())
    }
}

/// Counters.
#[derive(Debug, Default)]
pub struct OrderStats {
    held: Counter,
    gaps: Counter,
    missing: Counter,
    late: Counter,
    dropped: Counter,
    malformed: Counter,
}

impl OrderStats {
    /// Messages that waited for a predecessor.
    pub fn held(&self) -> u64 {
        self.held.get()
    }
    /// Gaps given up (expired or buffer full).
    pub fn gaps(&self) -> u64 {
        self.gaps.get()
    }
    /// Sequence numbers never seen across those gaps.
    pub fn missing(&self) -> u64 {
        self.missing.get()
    }
    /// Messages that came after their successors had been delivered.
    pub fn late(&self) -> u64 {
        self.late.get()
    }
    /// Held messages dropped (gap expired without `forward_expired`).
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }
    /// Messages with a malformed order extension (dropped).
    pub fn malformed(&self) -> u64 {
        self.malformed.get()
    }
}

const UNICAST: u8 = 0;
const MULTICAST: u8 = 1;

struct Stream {
    expected: u64,
    held: BTreeMap<u64, (Inbound, Instant)>,
    last_seen: Instant,
}

/// The interceptor. See the module docs.
pub struct Order {
    cfg: OrderConfig,
    out: HashMap<MemberId, u64>,
    out_multicast: u64,
    streams: HashMap<(MemberId, u8), Stream>,
    stats: Arc<OrderStats>,
}

impl Order {
    /// An orderer with `cfg`.
    pub fn new(cfg: OrderConfig) -> Self {
        Self {
            cfg,
            out: HashMap::new(),
            out_multicast: 0,
            streams: HashMap::new(),
            stats: Arc::default(),
        }
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<OrderStats> {
        self.stats.clone()
    }

    fn tagged(mut msg: Outbound, seq: u64, stream: u8) -> Outbound {
        let mut v = BytesMut::with_capacity(9);
        v.put_u64(seq);
        v.put_u8(stream);
        msg.extensions.push(Extension {
            tag: tags::ORDER,
            value: v.freeze(),
        });
        msg
    }

    /// Delivers the consecutive run at the front of `stream`.
    fn release(stream: &mut Stream, cx: &mut Cx<'_>) {
        while let Some(entry) = stream.held.first_entry() {
            if *entry.key() != stream.expected {
                break;
            }
            let (msg, _) = entry.remove();
            stream.expected += 1;
            cx.deliver_up(msg);
        }
    }

    /// Gives up the gap before the first held message.
    fn skip_gap(
        cfg: &OrderConfig,
        stats: &OrderStats,
        from: MemberId,
        stream: &mut Stream,
        cx: &mut Cx<'_>,
    ) {
        let Some(entry) = stream.held.first_entry() else {
            return;
        };
        let next = *entry.key();
        stats.gaps.inc();
        stats.missing.add(next - stream.expected);
        tracing::warn!(member = %from.short(), missing = next - stream.expected, "order gap given up");
        let (msg, _) = entry.remove();
        stream.expected = next + 1;
        if cfg.forward_expired {
            cx.deliver_up(msg);
        } else {
            stats.dropped.inc();
            if let Some(ack) = msg.ack {
                ack.fail("dropped: its predecessor never arrived".into());
            }
        }
        Self::release(stream, cx);
    }

    fn flush(stream: Stream, cx: &mut Cx<'_>) {
        for (_, (msg, _)) in stream.held {
            cx.deliver_up(msg);
        }
    }
}

impl Interceptor for Order {
    fn name(&self) -> &'static str {
        "order"
    }

    fn must_be_above(&self) -> &'static [(&'static str, &'static str)] {
        &[(
            "fragmentation",
            "fragments are reassembled before they are ordered",
        )]
    }

    fn option_mask(&self) -> SendOptions {
        self.cfg.option_flag
    }

    fn on_send(&mut self, msg: Outbound, cx: &mut Cx<'_>) {
        if msg.options.contains(SendOptions::MULTICAST) {
            self.out_multicast += 1;
            let seq = self.out_multicast;
            cx.send_down(Self::tagged(msg, seq, MULTICAST));
            return;
        }
        let dests = msg.destinations.clone();
        for (i, dest) in dests.iter().enumerate() {
            let seq = self.out.entry(dest.id).or_insert(0);
            *seq += 1;
            let mut one = msg.clone();
            one.destinations = Arc::from([dest.clone()]);
            if i > 0 {
                one.msg_id = cx.next_msg_id();
            }
            cx.send_down(Self::tagged(one, *seq, UNICAST));
        }
    }

    fn on_receive(&mut self, mut msg: Inbound, cx: &mut Cx<'_>) {
        let Some(v) = take_ext(&mut msg.extensions, tags::ORDER) else {
            // Asked for order but carries no number: the sender has no Order; pass.
            cx.deliver_up(msg);
            return;
        };
        let (Some(seq), Some(&kind), 9) = (be_u64(&v, 0), v.get(8), v.len()) else {
            self.stats.malformed.inc();
            return;
        };
        if seq == 0 || kind > MULTICAST {
            self.stats.malformed.inc();
            return;
        }
        let now = cx.now();
        let key = (msg.from, kind);
        if !self.streams.contains_key(&key) && self.streams.len() >= self.cfg.max_senders {
            let oldest = self
                .streams
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| *k);
            if let Some(s) = oldest.and_then(|k| self.streams.remove(&k)) {
                Self::flush(s, cx);
            }
        }
        let stream = self.streams.entry(key).or_insert_with(|| Stream {
            // Unicast streams start at 1; a multicast stream is joined wherever it is.
            expected: if kind == MULTICAST { seq } else { 1 },
            held: BTreeMap::new(),
            last_seen: now,
        });
        stream.last_seen = now;
        if seq < stream.expected {
            self.stats.late.inc();
            cx.deliver_up(msg);
            return;
        }
        if seq == stream.expected {
            stream.expected += 1;
            cx.deliver_up(msg);
            Self::release(stream, cx);
            return;
        }
        if stream.held.contains_key(&seq) {
            return; // duplicate
        }
        self.stats.held.inc();
        stream.held.insert(seq, (msg, now));
        if stream.held.len() > self.cfg.max_queue {
            Self::skip_gap(&self.cfg, &self.stats, key.0, stream, cx);
        }
    }

    fn on_member(&mut self, ev: MembershipEvent, cx: &mut Cx<'_>) {
        if let MembershipEvent::MemberDisappeared { member, .. } = &ev {
            self.out.remove(&member.id);
            for kind in [UNICAST, MULTICAST] {
                if let Some(s) = self.streams.remove(&(member.id, kind)) {
                    Self::flush(s, cx);
                }
            }
        }
        cx.emit_member(ev);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.streams
            .values()
            .filter_map(|s| s.held.values().map(|(_, t)| *t).min())
            .min()
            .map(|t| t + self.cfg.expire)
    }

    fn on_timeout(&mut self, now: Instant, cx: &mut Cx<'_>) {
        let expire = self.cfg.expire;
        for (key, stream) in &mut self.streams {
            while stream
                .held
                .values()
                .map(|(_, t)| *t)
                .min()
                .is_some_and(|t| now.saturating_duration_since(t) >= expire)
            {
                Self::skip_gap(&self.cfg, &self.stats, key.0, stream, cx);
            }
        }
    }
}

/// The sequence carried by an ordered frame, for tests and tools.
pub fn sequence_of(extensions: &[Extension]) -> Option<u64> {
    extensions
        .iter()
        .find(|e| e.tag == tags::ORDER)
        .and_then(|e| be_u64(&e.value, 0))
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::testing::*;
    use proptest::prelude::*;

    const ORDERED: SendOptions = SendOptions::from_bits(0x200);

    fn frames(n: usize) -> Vec<Outbound> {
        let mut tx = pipeline(vec![Box::new(Order::new(OrderConfig::default()))], 1);
        let now = Instant::now();
        for i in 0..n {
            tx.send(
                now,
                outbound(i as u64 + 1, &[member(2)], ORDERED, &[i as u8]),
            );
        }
        drain(&mut tx).sent
    }

    #[test]
    fn multi_destination_messages_get_a_sequence_per_destination() {
        let mut tx = pipeline(vec![Box::new(Order::new(OrderConfig::default()))], 1);
        let now = Instant::now();
        tx.send(now, outbound(1, &[member(2), member(3)], ORDERED, b"a"));
        tx.send(now, outbound(2, &[member(3)], ORDERED, b"b"));
        tx.send(
            now,
            outbound(3, &[member(3)], SendOptions::USE_ACK, b"unordered"),
        );
        let sent = drain(&mut tx).sent;
        let seqs: Vec<_> = sent
            .iter()
            .map(|m| (m.destinations[0].id, sequence_of(&m.extensions)))
            .collect();
        assert_eq!(
            seqs,
            vec![
                (member(2).id, Some(1)),
                (member(3).id, Some(1)),
                (member(3).id, Some(2)),
                (member(3).id, None)
            ]
        );
        assert_ne!(sent[0].msg_id, sent[1].msg_id, "each frame has its own id");
    }

    #[test]
    fn a_gap_expires_by_timer_and_is_counted() {
        let order = Order::new(OrderConfig::default());
        let stats = order.stats();
        let mut rx = pipeline(vec![Box::new(order)], 2);
        let f = frames(3);
        let t0 = Instant::now();
        rx.receive(t0, arrive(&f[2], &member(1)));
        assert!(drain(&mut rx).delivered.is_empty());
        assert_eq!(rx.poll_timeout(), Some(t0 + Duration::from_secs(3)));
        rx.handle_timeout(t0 + Duration::from_secs(3));
        let got = drain(&mut rx).delivered;
        assert_eq!(got.len(), 1);
        assert!(got[0].extensions.is_empty(), "the extension is stripped");
        assert_eq!((stats.gaps(), stats.missing()), (1, 2));
        rx.receive(t0, arrive(&f[0], &member(1)));
        assert_eq!(drain(&mut rx).delivered.len(), 1, "late: delivered at once");
        assert_eq!(stats.late(), 1);
    }

    proptest! {
        #[test]
        fn any_arrival_order_is_delivered_in_send_order(perm in Just((0..40usize).collect::<Vec<_>>()).prop_shuffle(), dups in proptest::collection::vec(0..40usize, 0..10)) {
            let f = frames(40);
            let mut rx = pipeline(vec![Box::new(Order::new(OrderConfig::default()))], 2);
            let now = Instant::now();
            let mut got = Vec::new();
            for i in perm.iter().chain(dups.iter()) {
                rx.receive(now, arrive(&f[*i], &member(1)));
                got.extend(drain(&mut rx).delivered.into_iter().map(|m| m.payload[0]));
            }
            let mut firsts = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for g in got { if seen.insert(g) { firsts.push(g); } }
            prop_assert_eq!(firsts, (0..40u8).collect::<Vec<_>>());
        }
    }
}
