//! `TcpPing`: a ping to every member every `interval` over the pooled connections. It keeps
//! idle connections open (so a killed peer's closing sockets are noticed at once) and feeds the
//! failure detector: a ping that cannot be delivered, or a connection that closes, becomes a
//! suspicion ([`cohort_channel::Suspicion`]) that the detector checks.
//!
//! A ping is a message with extension [`tags::PING`], no payload and no options (no ACK);
//! the receiving `TcpPing` consumes it, and a channel without one drops it at the top.

use crate::ConfigError;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort_channel::{Cx, Inbound, Interceptor, TagKind, tags};
use cohort_membership::MembershipEvent;
use cohort_wire::{Member, MemberKey, SendOptions};

use crate::util::{Counter, bad, has_ext, send_control};

/// Settings.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct TcpPingConfig {
    /// Period. Default 1000 ms (Tribes' `interval`).
    #[cfg_attr(
        feature = "serde",
        serde(
            rename = "interval_ms",
            deserialize_with = "crate::util::ms::deserialize"
        )
    )]
    pub interval: Duration,
    /// Ping a member as soon as it joins (opens the connection at once). Default true.
    pub ping_on_join: bool,
}

impl Default for TcpPingConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(1000),
            ping_on_join: true,
        }
    }
}

impl TcpPingConfig {
    /// Checks every bound; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interval < Duration::from_millis(10) {
            return bad("interval_ms", "must be at least 10");
        }
        Ok(())
    }
}

/// Counters.
#[derive(Debug, Default)]
pub struct PingStats {
    sent: Counter,
    received: Counter,
}

impl PingStats {
    /// Pings sent (one per member per round).
    pub fn sent(&self) -> u64 {
        self.sent.get()
    }

    /// Pings received and consumed.
    pub fn received(&self) -> u64 {
        self.received.get()
    }
}

/// The interceptor. See the module docs.
pub struct TcpPing {
    cfg: TcpPingConfig,
    members: BTreeMap<MemberKey, Member>,
    next: Option<Instant>,
    stats: Arc<PingStats>,
}

impl TcpPing {
    /// A pinger with `cfg`.
    pub fn new(cfg: TcpPingConfig) -> Self {
        Self {
            cfg,
            members: BTreeMap::new(),
            next: None,
            stats: Arc::default(),
        }
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<PingStats> {
        self.stats.clone()
    }

    fn ping(&self, to: Vec<Member>, cx: &mut Cx<'_>) {
        if to.is_empty() {
            return;
        }
        self.stats.sent.add(to.len() as u64);
        send_control(cx, to, SendOptions::NONE, tags::PING, Bytes::new());
    }
}

impl Interceptor for TcpPing {
    fn name(&self) -> &'static str {
        "tcp_ping"
    }

    fn tags(&self) -> &'static [(u32, TagKind)] {
        &[(tags::PING, TagKind::Control)]
    }

    fn on_start(&mut self, now: Instant, _cx: &mut Cx<'_>) {
        self.next = Some(now + self.cfg.interval);
    }

    fn on_receive(&mut self, msg: Inbound, cx: &mut Cx<'_>) {
        if has_ext(&msg.extensions, tags::PING) {
            self.stats.received.inc();
            msg.consume();
            return;
        }
        cx.deliver_up(msg);
    }

    fn on_member(&mut self, ev: MembershipEvent, cx: &mut Cx<'_>) {
        match &ev {
            MembershipEvent::MemberAdded(m) | MembershipEvent::MemberUpdated(m) => {
                let new = self.members.insert(m.key(), m.clone()).is_none();
                if new && self.cfg.ping_on_join {
                    self.ping(vec![m.clone()], cx);
                }
            }
            MembershipEvent::MemberDisappeared { member, .. } => {
                self.members.remove(&member.key());
            }
            _ => {}
        }
        cx.emit_member(ev);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.next
    }

    fn on_timeout(&mut self, now: Instant, cx: &mut Cx<'_>) {
        self.next = Some(now + self.cfg.interval);
        self.ping(self.members.values().cloned().collect(), cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn pings_every_member_each_interval_and_consumes_pings() {
        let ping = TcpPing::new(TcpPingConfig::default());
        let stats = ping.stats();
        let mut a = pipeline(vec![Box::new(ping)], 1);
        let mut b = pipeline(vec![Box::new(TcpPing::new(TcpPingConfig::default()))], 2);
        let t0 = Instant::now();
        a.start(t0);
        a.member(t0, MembershipEvent::MemberAdded(member(2)));
        a.member(t0, MembershipEvent::MemberAdded(member(3)));
        let joined = drain(&mut a);
        assert_eq!(joined.sent.len(), 2, "a ping per join");
        assert_eq!(joined.members.len(), 2, "events pass");
        assert_eq!(a.poll_timeout(), Some(t0 + Duration::from_secs(1)));
        a.handle_timeout(t0 + Duration::from_secs(1));
        let round = drain(&mut a).sent;
        assert_eq!(round.len(), 1);
        assert_eq!(round[0].destinations.len(), 2);
        assert_eq!(stats.sent(), 4);
        b.receive(t0, arrive(&round[0], &member(1)));
        assert!(drain(&mut b).delivered.is_empty(), "consumed");
        a.member(
            t0,
            MembershipEvent::MemberDisappeared {
                member: member(2),
                reason: cohort_membership::DisappearReason::Shutdown,
            },
        );
        drain(&mut a);
        a.handle_timeout(t0 + Duration::from_secs(2));
        assert_eq!(drain(&mut a).sent[0].destinations.len(), 1);
    }
}
