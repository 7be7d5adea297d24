//! `TwoPhaseCommit`: a message that asks for it (option bit `option_flag`, default 0x400) is
//! delivered only once its commit arrives. The sender sends the message (extension
//! [`tags::TWO_PHASE`]) and then a small commit message (extension
//! [`tags::TWO_PHASE_COMMIT`] naming the message id) to the same members. The receiver holds
//! the message until the commit; one not committed within `expire` is dropped (FAIL_ACK if
//! asked), and a commit that arrives first is remembered for the same time. A departing
//! sender's uncommitted messages are dropped. Both tables are bounded (`max_pending`, oldest
//! dropped first).

use crate::ConfigError;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort_channel::{Cx, Inbound, Interceptor, Outbound, SendOptions, TagKind, tags};
use cohort_membership::MembershipEvent;
use cohort_wire::{Extension, MemberId};

use crate::util::{Counter, bad, be_u64, check_flag, has_ext, take_ext};

/// Settings.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct TwoPhaseCommitConfig {
    /// The option bit that asks for two-phase delivery. Default 0x400.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::util::bits::deserialize")
    )]
    pub option_flag: SendOptions,
    /// How long a message waits for its commit. Default 60,000 ms (Tribes' `expire`).
    #[cfg_attr(
        feature = "serde",
        serde(
            rename = "expire_ms",
            deserialize_with = "crate::util::ms::deserialize"
        )
    )]
    pub expire: Duration,
    /// Messages (and early commits) held at once. Default 4096.
    pub max_pending: usize,
}

impl Default for TwoPhaseCommitConfig {
    fn default() -> Self {
        Self {
            option_flag: SendOptions::from_bits(0x400),
            expire: Duration::from_secs(60),
            max_pending: 4096,
        }
    }
}

impl TwoPhaseCommitConfig {
    /// Checks every bound; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_flag("option_flag", self.option_flag)?;
        if self.expire < Duration::from_millis(1) {
            return bad("expire_ms", "must be at least 1");
        }
        if self.max_pending == 0 {
            return bad("max_pending", "must be at least 1");
        }
        Ok(())
    }
}

/// Counters.
#[derive(Debug, Default)]
pub struct TwoPhaseStats {
    committed: Counter,
    expired: Counter,
    early_commits: Counter,
    evicted: Counter,
}

impl TwoPhaseStats {
    /// Messages delivered on their commit.
    pub fn committed(&self) -> u64 {
        self.committed.get()
    }
    /// Messages dropped uncommitted (expired or the sender left).
    pub fn expired(&self) -> u64 {
        self.expired.get()
    }
    /// Commits that arrived before their message.
    pub fn early_commits(&self) -> u64 {
        self.early_commits.get()
    }
    /// Entries dropped to stay within `max_pending`.
    pub fn evicted(&self) -> u64 {
        self.evicted.get()
    }
}

/// The interceptor. See the module docs.
pub struct TwoPhaseCommit {
    cfg: TwoPhaseCommitConfig,
    pending: HashMap<(MemberId, u64), (Inbound, Instant)>,
    early: HashMap<(MemberId, u64), Instant>,
    stats: Arc<TwoPhaseStats>,
}

impl TwoPhaseCommit {
    /// With `cfg`.
    pub fn new(cfg: TwoPhaseCommitConfig) -> Self {
        Self {
            cfg,
            pending: HashMap::new(),
            early: HashMap::new(),
            stats: Arc::default(),
        }
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<TwoPhaseStats> {
        self.stats.clone()
    }

    fn expire_one(stats: &TwoPhaseStats, msg: Inbound, why: &str) {
        stats.expired.inc();
        tracing::warn!(msg_id = msg.msg_id, from = %msg.from.short(), why, "uncommitted message dropped");
        if let Some(a) = msg.ack {
            a.fail(format!("not committed: {why}"));
        }
    }
}

impl Interceptor for TwoPhaseCommit {
    fn name(&self) -> &'static str {
        "two_phase_commit"
    }

    fn tags(&self) -> &'static [(u32, TagKind)] {
        &[(tags::TWO_PHASE_COMMIT, TagKind::Control)]
    }

    fn option_mask(&self) -> SendOptions {
        self.cfg.option_flag
    }

    fn on_send(&mut self, mut msg: Outbound, cx: &mut Cx<'_>) {
        let mut commit = msg.clone();
        msg.extensions.push(Extension {
            tag: tags::TWO_PHASE,
            value: Bytes::new(),
        });
        commit.msg_id = cx.next_msg_id();
        commit.payload = Bytes::new();
        commit.extensions = vec![Extension {
            tag: tags::TWO_PHASE_COMMIT,
            value: Bytes::copy_from_slice(&msg.msg_id.to_be_bytes()),
        }];
        cx.send_down(msg);
        cx.send_down(commit);
    }

    fn on_receive(&mut self, mut msg: Inbound, cx: &mut Cx<'_>) {
        let now = cx.now();
        if let Some(v) = take_ext(&mut msg.extensions, tags::TWO_PHASE_COMMIT) {
            let Some(id) = be_u64(&v, 0) else { return };
            let key = (msg.from, id);
            if let Some((held, _)) = self.pending.remove(&key) {
                self.stats.committed.inc();
                cx.deliver_up(held);
            } else {
                self.stats.early_commits.inc();
                if self.early.len() >= self.cfg.max_pending {
                    if let Some(k) = self.early.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k) {
                        self.early.remove(&k);
                        self.stats.evicted.inc();
                    }
                }
                self.early.insert(key, now);
            }
            msg.consume(); // the commit itself is processed
            return;
        }
        if !has_ext(&msg.extensions, tags::TWO_PHASE) {
            cx.deliver_up(msg); // the sender has no two-phase commit: deliver as it is
            return;
        }
        take_ext(&mut msg.extensions, tags::TWO_PHASE);
        let key = (msg.from, msg.msg_id);
        if self.early.remove(&key).is_some() {
            self.stats.committed.inc();
            cx.deliver_up(msg);
            return;
        }
        if self.pending.len() >= self.cfg.max_pending {
            if let Some(k) = self
                .pending
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| *k)
            {
                if let Some((old, _)) = self.pending.remove(&k) {
                    self.stats.evicted.inc();
                    Self::expire_one(&self.stats, old, "evicted (too many pending)");
                }
            }
        }
        self.pending.insert(key, (msg, now));
    }

    fn on_member(&mut self, ev: MembershipEvent, cx: &mut Cx<'_>) {
        if let MembershipEvent::MemberDisappeared { member, .. } = &ev {
            let gone: Vec<_> = self
                .pending
                .keys()
                .filter(|k| k.0 == member.id)
                .copied()
                .collect();
            for k in gone {
                if let Some((m, _)) = self.pending.remove(&k) {
                    Self::expire_one(&self.stats, m, "the sender left");
                }
            }
            self.early.retain(|k, _| k.0 != member.id);
        }
        cx.emit_member(ev);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|(_, t)| *t)
            .chain(self.early.values().copied())
            .min()
            .map(|t| t + self.cfg.expire)
    }

    fn on_timeout(&mut self, now: Instant, _cx: &mut Cx<'_>) {
        let expire = self.cfg.expire;
        let old = |t: &Instant| now.saturating_duration_since(*t) >= expire;
        let gone: Vec<_> = self
            .pending
            .iter()
            .filter(|(_, (_, t))| old(t))
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            if let Some((m, _)) = self.pending.remove(&k) {
                Self::expire_one(&self.stats, m, "no commit within expire");
            }
        }
        self.early.retain(|_, t| !old(t));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    const TPC: SendOptions = SendOptions::from_bits(0x400);

    #[test]
    fn delivered_on_commit_in_either_order_and_expired_without() {
        let mut tx = pipeline(vec![Box::new(TwoPhaseCommit::new(Default::default()))], 1);
        let t = TwoPhaseCommit::new(Default::default());
        let stats = t.stats();
        let mut rx = pipeline(vec![Box::new(t)], 2);
        let now = Instant::now();
        tx.send(now, outbound(1, &[member(2)], TPC, b"one"));
        let sent = drain(&mut tx).sent;
        assert_eq!(sent.len(), 2);
        rx.receive(now, arrive(&sent[0], &member(1)));
        assert!(drain(&mut rx).delivered.is_empty(), "held until the commit");
        rx.receive(now, arrive(&sent[1], &member(1)));
        let got = drain(&mut rx).delivered;
        assert_eq!(&got[0].payload[..], b"one");
        assert!(got[0].extensions.is_empty());
        // Commit first.
        tx.send(now, outbound(2, &[member(2)], TPC, b"two"));
        let sent = drain(&mut tx).sent;
        rx.receive(now, arrive(&sent[1], &member(1)));
        rx.receive(now, arrive(&sent[0], &member(1)));
        assert_eq!(drain(&mut rx).delivered.len(), 1);
        // Never committed.
        tx.send(now, outbound(3, &[member(2)], TPC, b"three"));
        let sent = drain(&mut tx).sent;
        rx.receive(now, arrive(&sent[0], &member(1)));
        rx.handle_timeout(now + Duration::from_secs(60));
        assert!(drain(&mut rx).delivered.is_empty());
        assert_eq!(
            (stats.committed(), stats.early_commits(), stats.expired()),
            (2, 1, 1)
        );
    }
}
