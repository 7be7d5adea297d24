//! `DomainFilter`: only messages and members of the same domain pass (Tribes'
//! `DomainFilterInterceptor`). A member's domain is the opaque `domain` bytes of its record; a
//! message's is its sender's (from the connection's hello, or the view). Messages whose sender
//! is unknown are dropped too. This is grouping, not security: use `encryption` for that.

use crate::ConfigError;
use std::sync::Arc;

use bytes::Bytes;
use cohort_channel::{Cx, Inbound, Interceptor};
use cohort_membership::MembershipEvent;

use crate::util::{Counter, bad};

/// Settings.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct DomainFilterConfig {
    /// The domain: text (UTF-8 bytes) or Tribes' byte list `{1,2,3}`. Default empty.
    pub domain: String,
    /// Log one warning per this many refused messages. Default 100 (Tribes' `logInterval`).
    pub log_interval: u64,
}

impl Default for DomainFilterConfig {
    fn default() -> Self {
        Self {
            domain: String::new(),
            log_interval: 100,
        }
    }
}

impl DomainFilterConfig {
    /// The domain's bytes.
    pub fn bytes(&self) -> Result<Bytes, String> {
        let d = self.domain.trim();
        if let Some(list) = d.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
            let mut out = Vec::new();
            for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let b: i16 = part
                    .parse()
                    .map_err(|_| format!("domain: {part:?} is not a byte"))?;
                // Tribes' byte lists are Java bytes: -128..=127 and 0..=255 both mean a byte.
                let byte = u8::try_from(b).or_else(|_| i8::try_from(b).map(|v| v.to_ne_bytes()[0]));
                out.push(byte.map_err(|_| format!("domain: {part} is out of byte range"))?);
            }
            return Ok(Bytes::from(out));
        }
        Ok(Bytes::from(self.domain.clone().into_bytes()))
    }

    /// Checks every bound; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.bytes().map_err(|e| ConfigError {
            key: "domain".into(),
            reason: e.trim_start_matches("domain: ").to_owned(),
        })?;
        if self.log_interval == 0 {
            return bad("log_interval", "must be at least 1");
        }
        Ok(())
    }
}

/// Counters.
#[derive(Debug, Default)]
pub struct DomainStats {
    messages_refused: Counter,
    members_refused: Counter,
}

impl DomainStats {
    /// Messages from other domains (or unknown senders) dropped.
    pub fn messages_refused(&self) -> u64 {
        self.messages_refused.get()
    }
    /// Membership events about other domains' members dropped.
    pub fn members_refused(&self) -> u64 {
        self.members_refused.get()
    }
}

/// The interceptor.
pub struct DomainFilter {
    domain: Bytes,
    log_interval: u64,
    stats: Arc<DomainStats>,
}

impl DomainFilter {
    /// A filter for `cfg`'s domain (validate first; an invalid list becomes empty).
    pub fn new(cfg: &DomainFilterConfig) -> Self {
        Self {
            domain: cfg.bytes().unwrap_or_default(),
            log_interval: cfg.log_interval.max(1),
            stats: Arc::default(),
        }
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<DomainStats> {
        self.stats.clone()
    }
}

impl Default for DomainFilter {
    fn default() -> Self {
        Self::new(&DomainFilterConfig {
            log_interval: 100,
            ..Default::default()
        })
    }
}

impl Interceptor for DomainFilter {
    fn name(&self) -> &'static str {
        "domain_filter"
    }

    fn on_receive(&mut self, msg: Inbound, cx: &mut Cx<'_>) {
        if msg.member.as_ref().is_some_and(|m| m.domain == self.domain) {
            cx.deliver_up(msg);
            return;
        }
        self.stats.messages_refused.inc();
        let n = self.stats.messages_refused();
        if n % self.log_interval == 1 || self.log_interval == 1 {
            tracing::warn!(from = %msg.from.short(), refused = n, "message from another domain refused");
        }
        if let Some(a) = msg.ack {
            a.fail("sender is in another domain".into());
        }
    }

    fn on_member(&mut self, ev: MembershipEvent, cx: &mut Cx<'_>) {
        let member = match &ev {
            MembershipEvent::MemberAdded(m) | MembershipEvent::MemberUpdated(m) => Some(m),
            MembershipEvent::MemberDisappeared { member, .. } => Some(member),
            _ => None,
        };
        if member.is_some_and(|m| m.domain != self.domain) {
            self.stats.members_refused.inc();
            return;
        }
        cx.emit_member(ev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use cohort_channel::SendOptions;
    use std::time::Instant;

    #[test]
    fn other_domains_are_refused_both_ways() {
        let cfg = DomainFilterConfig {
            domain: "{1,2,-1}".into(),
            log_interval: 100,
        };
        assert_eq!(&cfg.bytes().unwrap()[..], &[1, 2, 255]);
        let f = DomainFilter::new(&cfg);
        let stats = f.stats();
        let mut p = pipeline(vec![Box::new(f)], 1);
        let now = Instant::now();
        let mut same = member(2);
        same.domain = Bytes::from_static(&[1, 2, 255]);
        let other = member(3);
        p.member(now, MembershipEvent::MemberAdded(same.clone()));
        p.member(now, MembershipEvent::MemberAdded(other.clone()));
        let m = outbound(1, &[member(1)], SendOptions::NONE, b"x");
        p.receive(now, arrive(&m, &same));
        p.receive(now, arrive(&m, &other));
        let mut unknown = arrive(&m, &other);
        unknown.member = None;
        p.receive(now, unknown);
        let d = drain(&mut p);
        assert_eq!(d.members, vec![MembershipEvent::MemberAdded(same)]);
        assert_eq!(d.delivered.len(), 1);
        assert_eq!((stats.messages_refused(), stats.members_refused()), (2, 1));
        assert!(
            DomainFilterConfig {
                domain: "{1,300}".into(),
                log_interval: 1
            }
            .validate()
            .is_err()
        );
    }
}
