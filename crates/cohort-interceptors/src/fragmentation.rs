//! `Fragmentation`: messages above `max_size` travel as several frames and are reassembled.
//!
//! Each fragment carries extension [`tags::FRAGMENT`]: the original message id (8 bytes),
//! the index (4), the count (4) and the total length (8). Fragments keep the message's
//! options, so each honours the ACK options; fragment 0 keeps the message id, the others get
//! fresh ids. Unlike Tribes, an unfragmented message carries nothing (no trailer byte), so a
//! receiver without this interceptor still reads it.
//!
//! Reassembly tolerates duplicates and any order. Partial messages are bounded in number
//! (`max_partials`) and bytes (`max_partial_bytes`): beyond, the oldest is dropped. A partial
//! message older than `expire` is dropped too. Dropping fails the fragments' ACKs (FAIL_ACK),
//! so a SYNC sender learns of it.

use crate::ConfigError;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use cohort_channel::{Acker, Cx, Inbound, Interceptor, Outbound, TagKind, tags};
use cohort_membership::MembershipEvent;
use cohort_wire::{Extension, MemberId};

use crate::util::{Counter, bad, be_u32, be_u64, take_ext};

/// Settings.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct FragmentationConfig {
    /// Largest payload sent as one frame. Default 102,400 bytes (Tribes' `maxSize`).
    pub max_size: usize,
    /// How long a partial message waits for its other fragments. Default 60,000 ms.
    #[cfg_attr(
        feature = "serde",
        serde(
            rename = "expire_ms",
            deserialize_with = "crate::util::ms::deserialize"
        )
    )]
    pub expire: Duration,
    /// Partial messages held at once. Default 1024.
    pub max_partials: usize,
    /// Bytes of partial messages held at once (and the largest message accepted). Default
    /// 256 MiB.
    pub max_partial_bytes: usize,
}

impl Default for FragmentationConfig {
    fn default() -> Self {
        Self {
            max_size: 102_400,
            expire: Duration::from_secs(60),
            max_partials: 1024,
            max_partial_bytes: 256 * 1024 * 1024,
        }
    }
}

impl FragmentationConfig {
    /// Checks every bound; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_size < 64 {
            return bad("max_size", "must be at least 64");
        }
        if self.expire < Duration::from_millis(1) {
            return bad("expire_ms", "must be at least 1");
        }
        if self.max_partials == 0 {
            return bad("max_partials", "must be at least 1");
        }
        if self.max_partial_bytes < self.max_size {
            return bad("max_partial_bytes", "must be at least max_size");
        }
        Ok(())
    }
}

/// Counters.
#[derive(Debug, Default)]
pub struct FragmentationStats {
    split: Counter,
    fragments_sent: Counter,
    reassembled: Counter,
    duplicates: Counter,
    expired: Counter,
    evicted: Counter,
    malformed: Counter,
}

impl FragmentationStats {
    /// Messages split.
    pub fn split(&self) -> u64 {
        self.split.get()
    }
    /// Fragments sent.
    pub fn fragments_sent(&self) -> u64 {
        self.fragments_sent.get()
    }
    /// Messages reassembled and passed up.
    pub fn reassembled(&self) -> u64 {
        self.reassembled.get()
    }
    /// Duplicate fragments ignored.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.get()
    }
    /// Partial messages dropped after `expire`.
    pub fn expired(&self) -> u64 {
        self.expired.get()
    }
    /// Partial messages dropped to stay within the bounds.
    pub fn evicted(&self) -> u64 {
        self.evicted.get()
    }
    /// Fragments with an impossible extension (dropped).
    pub fn malformed(&self) -> u64 {
        self.malformed.get()
    }
}

struct Partial {
    count: u32,
    total: u64,
    parts: Vec<Option<Bytes>>,
    filled: u32,
    bytes: usize,
    first: Option<Inbound>,
    ackers: Vec<Acker>,
    started: Instant,
}

impl Partial {
    fn fail(self, why: &str) {
        for a in self.ackers {
            a.fail(why.into());
        }
        if let Some(mut m) = self.first {
            if let Some(a) = m.ack.take() {
                a.fail(why.into());
            }
        }
    }
}

/// The interceptor. See the module docs.
pub struct Fragmentation {
    cfg: FragmentationConfig,
    partials: HashMap<(MemberId, u64), Partial>,
    /// Recently completed messages (bounded by `max_partials`): late duplicates of their
    /// fragments are ignored instead of starting a new partial message.
    completed: std::collections::VecDeque<(MemberId, u64)>,
    held_bytes: usize,
    stats: Arc<FragmentationStats>,
}

impl Fragmentation {
    /// A fragmenter with `cfg`.
    pub fn new(cfg: FragmentationConfig) -> Self {
        Self {
            cfg,
            partials: HashMap::new(),
            completed: std::collections::VecDeque::new(),
            held_bytes: 0,
            stats: Arc::default(),
        }
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<FragmentationStats> {
        self.stats.clone()
    }

    fn drop_partial(&mut self, key: (MemberId, u64), why: &str) {
        if let Some(p) = self.partials.remove(&key) {
            self.held_bytes -= p.bytes;
            p.fail(why);
        }
    }

    fn oldest(&self) -> Option<(MemberId, u64)> {
        self.partials
            .iter()
            .min_by_key(|(_, p)| p.started)
            .map(|(k, _)| *k)
    }
}

fn ext(orig: u64, index: u32, count: u32, total: u64) -> Extension {
    let mut v = BytesMut::with_capacity(24);
    v.put_u64(orig);
    v.put_u32(index);
    v.put_u32(count);
    v.put_u64(total);
    Extension {
        tag: tags::FRAGMENT,
        value: v.freeze(),
    }
}

impl Interceptor for Fragmentation {
    fn name(&self) -> &'static str {
        "fragmentation"
    }

    fn tags(&self) -> &'static [(u32, TagKind)] {
        &[(tags::FRAGMENT, TagKind::Transform)]
    }

    fn on_send(&mut self, msg: Outbound, cx: &mut Cx<'_>) {
        let len = msg.payload.len();
        if len <= self.cfg.max_size {
            cx.send_down(msg);
            return;
        }
        let count = len.div_ceil(self.cfg.max_size);
        let Ok(count32) = u32::try_from(count) else {
            cx.send_down(msg);
            return;
        };
        self.stats.split.inc();
        self.stats.fragments_sent.add(count as u64);
        for i in 0..count {
            let mut f = msg.clone();
            let start = i * self.cfg.max_size;
            f.payload = msg
                .payload
                .slice(start..(start + self.cfg.max_size).min(len));
            if i > 0 {
                f.msg_id = cx.next_msg_id();
            }
            #[allow(clippy::cast_possible_truncation)]
            f.extensions
                .push(ext(msg.msg_id, i as u32, count32, len as u64));
            cx.send_down(f);
        }
    }

    fn on_receive(&mut self, mut msg: Inbound, cx: &mut Cx<'_>) {
        let Some(v) = take_ext(&mut msg.extensions, tags::FRAGMENT) else {
            cx.deliver_up(msg);
            return;
        };
        let parsed = (
            be_u64(&v, 0),
            be_u32(&v, 8),
            be_u32(&v, 12),
            be_u64(&v, 16),
            v.len(),
        );
        let (Some(orig), Some(index), Some(count), Some(total), 24) = parsed else {
            self.stats.malformed.inc();
            return;
        };
        let len = msg.payload.len();
        let plausible = count >= 1
            && index < count
            && total <= self.cfg.max_partial_bytes as u64
            && (len as u64) <= total
            && u64::from(count) <= total.max(1)
            && self.held_bytes <= self.cfg.max_partial_bytes;
        if !plausible {
            self.stats.malformed.inc();
            if let Some(a) = msg.ack.take() {
                a.fail("malformed or oversized fragment".into());
            }
            return;
        }
        let key = (msg.from, orig);
        if self.completed.contains(&key) {
            self.stats.duplicates.inc();
            return;
        }
        if !self.partials.contains_key(&key) {
            while self.partials.len() >= self.cfg.max_partials {
                let Some(k) = self.oldest() else { break };
                self.stats.evicted.inc();
                self.drop_partial(k, "fragment reassembly evicted (too many partial messages)");
            }
            self.partials.insert(
                key,
                Partial {
                    count,
                    total,
                    parts: vec![None; count as usize],
                    filled: 0,
                    bytes: 0,
                    first: None,
                    ackers: Vec::new(),
                    started: cx.now(),
                },
            );
        }
        let Some(p) = self.partials.get_mut(&key) else {
            return;
        };
        if p.count != count || p.total != total {
            self.stats.malformed.inc();
            return;
        }
        let slot = &mut p.parts[index as usize];
        if slot.is_some() {
            self.stats.duplicates.inc();
            return; // its acker drops: ACK
        }
        *slot = Some(msg.payload.clone());
        p.filled += 1;
        p.bytes += len;
        self.held_bytes += len;
        if let Some(a) = msg.ack.take() {
            p.ackers.push(a);
        }
        // The delivered message takes fragment 0's header (any fragment's until it comes).
        if index == 0 || p.first.is_none() {
            msg.msg_id = orig;
            p.first = Some(msg);
        }
        // Over the byte bound: evict the oldest others until within.
        while self.held_bytes > self.cfg.max_partial_bytes {
            let Some(k) = self
                .partials
                .iter()
                .filter(|(k, _)| **k != key)
                .min_by_key(|(_, p)| p.started)
                .map(|(k, _)| *k)
            else {
                break;
            };
            self.stats.evicted.inc();
            self.drop_partial(k, "fragment reassembly evicted (byte bound)");
        }
        let Some(p) = self.partials.get(&key) else {
            return;
        };
        if p.filled < p.count {
            return;
        }
        let Some(p) = self.partials.remove(&key) else {
            return;
        };
        self.held_bytes -= p.bytes;
        if self.completed.len() >= self.cfg.max_partials {
            self.completed.pop_front();
        }
        self.completed.push_back(key);
        let mut whole = BytesMut::with_capacity(usize::try_from(p.total).unwrap_or(0));
        for part in p.parts.into_iter().flatten() {
            whole.extend_from_slice(&part);
        }
        let Some(mut up) = p.first else { return };
        up.payload = whole.freeze();
        let mut ackers = p.ackers;
        if let Some(a) = up.ack.take() {
            ackers.push(a);
        }
        if !ackers.is_empty() {
            up.ack = Some(Acker::new(move |r| {
                for a in ackers {
                    match &r {
                        Ok(()) => a.ack(),
                        Err(why) => a.fail(why.clone()),
                    }
                }
            }));
        }
        self.stats.reassembled.inc();
        cx.deliver_up(up);
    }

    fn on_member(&mut self, ev: MembershipEvent, cx: &mut Cx<'_>) {
        if let MembershipEvent::MemberDisappeared { member, .. } = &ev {
            let gone: Vec<_> = self
                .partials
                .keys()
                .filter(|k| k.0 == member.id)
                .copied()
                .collect();
            for k in gone {
                self.drop_partial(k, "sender left before the message was complete");
            }
        }
        cx.emit_member(ev);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.partials
            .values()
            .map(|p| p.started + self.cfg.expire)
            .min()
    }

    fn on_timeout(&mut self, now: Instant, _cx: &mut Cx<'_>) {
        let expire = self.cfg.expire;
        let old: Vec<_> = self
            .partials
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.started) >= expire)
            .map(|(k, _)| *k)
            .collect();
        for k in old {
            self.stats.expired.inc();
            tracing::warn!(
                msg_id = k.1,
                "fragment reassembly expired; partial message dropped"
            );
            self.drop_partial(k, "fragment reassembly expired");
        }
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::testing::*;
    use cohort_channel::SendOptions;
    use proptest::prelude::*;

    fn cfg() -> FragmentationConfig {
        FragmentationConfig {
            max_size: 100,
            ..Default::default()
        }
    }

    #[test]
    fn small_messages_pass_untouched_and_partials_expire_failing_their_acks() {
        let frag = Fragmentation::new(cfg());
        let stats = frag.stats();
        let mut tx = pipeline(vec![Box::new(frag)], 1);
        let now = Instant::now();
        tx.send(
            now,
            outbound(1, &[member(2)], SendOptions::USE_ACK, &[7; 100]),
        );
        let sent = drain(&mut tx).sent;
        assert_eq!(sent.len(), 1);
        assert!(sent[0].extensions.is_empty());
        tx.send(
            now,
            outbound(2, &[member(2)], SendOptions::USE_ACK, &[7; 250]),
        );
        let sent = drain(&mut tx).sent;
        assert_eq!(sent.len(), 3);
        assert_eq!(stats.split(), 1);

        let rxf = Fragmentation::new(cfg());
        let rstats = rxf.stats();
        let mut rx = pipeline(vec![Box::new(rxf)], 2);
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        for s in &sent[..2] {
            let mut m = arrive(s, &member(1));
            let f = failed.clone();
            m.ack = Some(Acker::new(move |r| f.lock().unwrap().push(r)));
            rx.receive(now, m);
        }
        assert!(drain(&mut rx).delivered.is_empty());
        rx.handle_timeout(now + Duration::from_secs(60));
        assert_eq!(rstats.expired(), 1);
        let failed = failed.lock().unwrap();
        assert_eq!(failed.len(), 2);
        assert!(failed.iter().all(|r| r.is_err()));
    }

    #[test]
    fn the_partial_table_is_bounded() {
        let rxf = Fragmentation::new(FragmentationConfig {
            max_partials: 2,
            ..cfg()
        });
        let stats = rxf.stats();
        let mut rx = pipeline(vec![Box::new(rxf)], 2);
        let mut tx = pipeline(vec![Box::new(Fragmentation::new(cfg()))], 1);
        let now = Instant::now();
        for id in 1..=5 {
            tx.send(
                now,
                outbound(id, &[member(2)], SendOptions::NONE, &[1; 300]),
            );
            let first = drain(&mut tx).sent.remove(0);
            rx.receive(now, arrive(&first, &member(1)));
        }
        assert_eq!(stats.evicted(), 3);
        // A lying header (count 0, or total beyond the bound) is malformed, not allocated.
        let mut bad = outbound(9, &[member(2)], SendOptions::NONE, b"x");
        bad.extensions.push(ext(9, 0, 0, 10));
        rx.receive(now, arrive(&bad, &member(1)));
        let mut huge = outbound(10, &[member(2)], SendOptions::NONE, b"x");
        huge.extensions.push(ext(10, 0, u32::MAX, u64::MAX));
        rx.receive(now, arrive(&huge, &member(1)));
        assert_eq!(stats.malformed(), 2);
    }

    proptest! {
        #[test]
        fn reassembles_whatever_the_order_and_duplicates(len in 1usize..1000, perm_seed in any::<u64>(), dup in 0usize..5) {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let mut tx = pipeline(vec![Box::new(Fragmentation::new(cfg()))], 1);
            let mut rx = pipeline(vec![Box::new(Fragmentation::new(cfg()))], 2);
            let now = Instant::now();
            tx.send(now, outbound(42, &[member(2)], SendOptions::NONE, &payload));
            let mut sent = drain(&mut tx).sent;
            // Deterministic shuffle from the seed, then duplicates.
            let n = sent.len();
            for i in (1..n).rev() {
                let j = (perm_seed.wrapping_mul(i as u64 + 1) % (i as u64 + 1)) as usize;
                sent.swap(i, j);
            }
            if n > 1 {
                for i in 0..dup.min(n) { let d = sent[i].clone(); sent.push(d); }
            }
            let mut got = Vec::new();
            for s in &sent {
                rx.receive(now, arrive(s, &member(1)));
                got.extend(drain(&mut rx).delivered);
            }
            prop_assert_eq!(got.len(), 1);
            prop_assert_eq!(&got[0].payload[..], &payload[..]);
            prop_assert_eq!(got[0].msg_id, 42);
            prop_assert!(got[0].extensions.is_empty());
        }
    }
}
