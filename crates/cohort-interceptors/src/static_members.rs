//! `StaticMembership`: members from configuration joined into the channel's view, with or
//! without a membership service (Tribes' `StaticMembershipInterceptor`).
//!
//! A member configured with its id joins the view at start. One configured by address only
//! joins when it introduces itself: every `announce_interval`, this node sends an announcement
//! (extension [`tags::STATIC_NOTICE`], value 1) to each static member it has not heard from,
//! and answers every announcement (value 2; answers are not answered); the notice's connection names the full member
//! record. On stop it sends "stopping" (value 0), so peers drop it at once. A notice from a
//! known address with a new id is a restart: the old member is reported failed, the new one
//! added. Membership events about static members are absorbed (this list is authoritative);
//! place a `tcp_failure_detector` above to drop static members that die.

use crate::ConfigError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort_channel::{Cx, Inbound, Interceptor, SendOptions, TagKind, tags};
use cohort_membership::{DisappearReason, FailureEvidence, MembershipEvent};
use cohort_wire::{Member, MemberId};

use crate::util::{Counter, bad, send_control, take_ext};

/// One static member.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(deny_unknown_fields)
)]
pub struct StaticMemberConfig {
    /// Its data receiver, `ip:port`.
    pub address: String,
    /// Its id (32 hex digits), if fixed; otherwise learned from its notice.
    pub id: Option<String>,
}

/// Settings.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct StaticMembershipConfig {
    /// The members.
    pub members: Vec<StaticMemberConfig>,
    /// How often members not yet heard from are sent a notice. Default 1000 ms.
    #[cfg_attr(
        feature = "serde",
        serde(
            rename = "announce_interval_ms",
            deserialize_with = "crate::util::ms::deserialize"
        )
    )]
    pub announce_interval: Duration,
}

impl Default for StaticMembershipConfig {
    fn default() -> Self {
        Self {
            members: Vec::new(),
            announce_interval: Duration::from_millis(1000),
        }
    }
}

/// The most static members accepted.
pub const MAX_STATIC_MEMBERS: usize = 1024;

impl StaticMembershipConfig {
    fn parsed(&self) -> Result<Vec<(SocketAddr, Option<MemberId>)>, ConfigError> {
        let mut out = Vec::new();
        for (i, m) in self.members.iter().enumerate() {
            let addr: SocketAddr = m.address.parse().map_err(|_| ConfigError {
                key: format!("members[{i}].address"),
                reason: format!("{:?} is not ip:port", m.address),
            })?;
            if addr.port() == 0 {
                return bad(&format!("members[{i}].address"), "port 0");
            }
            let id = match &m.id {
                Some(t) => Some(t.parse().map_err(|e| ConfigError {
                    key: format!("members[{i}].id"),
                    reason: format!("{e}"),
                })?),
                None => None,
            };
            if out.iter().any(|(a, _)| *a == addr) {
                return bad(
                    &format!("members[{i}].address"),
                    format!("{addr} appears twice"),
                );
            }
            out.push((addr, id));
        }
        Ok(out)
    }

    /// Checks every bound; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.members.is_empty() {
            return bad("members", "at least one member is required");
        }
        if self.members.len() > MAX_STATIC_MEMBERS {
            return bad("members", format!("at most {MAX_STATIC_MEMBERS}"));
        }
        if self.announce_interval < Duration::from_millis(10) {
            return bad("announce_interval_ms", "must be at least 10");
        }
        self.parsed().map(|_| ())
    }
}

/// Counters.
#[derive(Debug, Default)]
pub struct StaticStats {
    notices_sent: Counter,
    notices_received: Counter,
    unknown_notices: Counter,
}

impl StaticStats {
    /// Notices sent.
    pub fn notices_sent(&self) -> u64 {
        self.notices_sent.get()
    }
    /// Notices received from configured members.
    pub fn notices_received(&self) -> u64 {
        self.notices_received.get()
    }
    /// Notices from addresses not configured (ignored).
    pub fn unknown_notices(&self) -> u64 {
        self.unknown_notices.get()
    }
}

const STOPPING: u8 = 0;
const ANNOUNCE: u8 = 1;
const ANSWER: u8 = 2;

#[derive(Clone, Copy)]
enum Notice {
    Announce,
    Answer,
    Stopping,
}

struct Entry {
    addr: SocketAddr,
    id: Option<MemberId>,
    known: Option<Member>,
    heard: bool,
}

impl Entry {
    fn target(&self) -> Member {
        self.known.clone().unwrap_or_else(|| {
            Member::new(
                self.id.unwrap_or(MemberId::from_bytes([0; 16])),
                self.addr.ip(),
                self.addr.port(),
            )
        })
    }
}

/// The interceptor. See the module docs.
pub struct StaticMembership {
    entries: Vec<Entry>,
    interval: Duration,
    next: Option<Instant>,
    stats: Arc<StaticStats>,
}

impl StaticMembership {
    /// From `cfg` (validate first; invalid entries are skipped).
    pub fn new(cfg: &StaticMembershipConfig) -> Self {
        Self {
            entries: cfg
                .parsed()
                .unwrap_or_default()
                .into_iter()
                .map(|(addr, id)| Entry {
                    addr,
                    id,
                    known: None,
                    heard: false,
                })
                .collect(),
            interval: cfg.announce_interval,
            next: None,
            stats: Arc::default(),
        }
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<StaticStats> {
        self.stats.clone()
    }

    fn notice(&self, to: Vec<Member>, kind: Notice, cx: &mut Cx<'_>) {
        if to.is_empty() {
            return;
        }
        self.stats.notices_sent.add(to.len() as u64);
        let value = Bytes::from_static(match kind {
            Notice::Announce => &[ANNOUNCE],
            Notice::Answer => &[ANSWER],
            Notice::Stopping => &[STOPPING],
        });
        send_control(cx, to, SendOptions::NONE, tags::STATIC_NOTICE, value);
    }

    fn is_static(&self, m: &Member) -> bool {
        self.entries.iter().any(|e| e.addr == m.data_addr())
    }
}

impl Interceptor for StaticMembership {
    fn name(&self) -> &'static str {
        "static_membership"
    }

    fn tags(&self) -> &'static [(u32, TagKind)] {
        &[(tags::STATIC_NOTICE, TagKind::Control)]
    }

    fn on_start(&mut self, now: Instant, cx: &mut Cx<'_>) {
        let local = cx.local().map(Member::data_addr);
        self.entries.retain(|e| Some(e.addr) != local);
        for e in &mut self.entries {
            if let Some(id) = e.id {
                let m = Member::new(id, e.addr.ip(), e.addr.port());
                e.known = Some(m.clone());
                cx.emit_member(MembershipEvent::MemberAdded(m));
            }
        }
        let all = self.entries.iter().map(Entry::target).collect();
        self.notice(all, Notice::Announce, cx);
        self.next = Some(now + self.interval);
    }

    fn on_stop(&mut self, _now: Instant, cx: &mut Cx<'_>) {
        let heard = self
            .entries
            .iter()
            .filter(|e| e.known.is_some())
            .map(Entry::target)
            .collect();
        self.notice(heard, Notice::Stopping, cx);
        self.next = None;
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.next
    }

    fn on_timeout(&mut self, now: Instant, cx: &mut Cx<'_>) {
        let silent = self
            .entries
            .iter()
            .filter(|e| !e.heard)
            .map(Entry::target)
            .collect();
        self.notice(silent, Notice::Announce, cx);
        self.next = Some(now + self.interval);
    }

    fn on_receive(&mut self, mut msg: Inbound, cx: &mut Cx<'_>) {
        let Some(v) = take_ext(&mut msg.extensions, tags::STATIC_NOTICE) else {
            cx.deliver_up(msg);
            return;
        };
        let Some(sender) = msg.member.as_deref().cloned() else {
            self.stats.unknown_notices.inc();
            return;
        };
        let Some(i) = self
            .entries
            .iter()
            .position(|e| e.addr == sender.data_addr())
        else {
            self.stats.unknown_notices.inc();
            return;
        };
        self.stats.notices_received.inc();
        let started = matches!(v.first(), Some(&ANNOUNCE | &ANSWER));
        let e = &mut self.entries[i];
        if started {
            e.heard = true;
            match e.known.replace(sender.clone()) {
                Some(old) if old.id == sender.id => {}
                Some(old) => {
                    cx.emit_member(MembershipEvent::MemberDisappeared {
                        member: old,
                        reason: DisappearReason::Failed(FailureEvidence {
                            detail: "restarted: a notice came from its address with a new id"
                                .into(),
                        }),
                    });
                    cx.emit_member(MembershipEvent::MemberAdded(sender.clone()));
                }
                None => cx.emit_member(MembershipEvent::MemberAdded(sender.clone())),
            }
            // Answer every announcement (not answers): the sender announces only until it hears
            // from us, and an earlier answer may have been lost (its port was not open yet).
            if v.first() == Some(&ANNOUNCE) {
                self.notice(vec![sender], Notice::Answer, cx);
            }
        } else {
            e.heard = false;
            if let Some(old) = e.known.take() {
                cx.emit_member(MembershipEvent::MemberDisappeared {
                    member: old,
                    reason: DisappearReason::Shutdown,
                });
            }
        }
        msg.consume();
    }

    fn on_member(&mut self, ev: MembershipEvent, cx: &mut Cx<'_>) {
        let about = match &ev {
            MembershipEvent::MemberAdded(m) | MembershipEvent::MemberUpdated(m) => Some(m),
            MembershipEvent::MemberDisappeared { member, .. } => Some(member),
            _ => None,
        };
        if about.is_some_and(|m| self.is_static(m)) {
            return;
        }
        cx.emit_member(ev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use cohort_wire::Extension;

    fn cfg(members: &[&Member], with_id: bool) -> StaticMembershipConfig {
        StaticMembershipConfig {
            members: members
                .iter()
                .map(|m| StaticMemberConfig {
                    address: m.data_addr().to_string(),
                    id: with_id.then(|| m.id.to_string()),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn members_join_by_notice_leave_by_notice_and_restarts_are_seen() {
        let (a, b) = (member(1), member(2));
        let mut pa = pipeline(
            vec![Box::new(StaticMembership::new(&cfg(&[&a, &b], false)))],
            1,
        );
        let mut pb = pipeline(
            vec![Box::new(StaticMembership::new(&cfg(&[&a, &b], false)))],
            2,
        );
        let now = Instant::now();
        pa.start(now);
        let d = drain(&mut pa);
        assert!(d.members.is_empty(), "no ids: nothing until they speak");
        assert_eq!(d.sent.len(), 1, "itself is skipped; one notice to b");
        pb.receive(now, arrive(&d.sent[0], &a));
        let d = drain(&mut pb);
        assert_eq!(d.members, vec![MembershipEvent::MemberAdded(a.clone())]);
        assert_eq!(d.sent.len(), 1, "answered");
        pa.receive(now, arrive(&d.sent[0], &b));
        let d = drain(&mut pa);
        assert_eq!(d.members, vec![MembershipEvent::MemberAdded(b.clone())]);
        assert!(d.sent.is_empty(), "answers are not answered");
        // Heard: no more announcements.
        pa.handle_timeout(now + Duration::from_secs(1));
        assert!(drain(&mut pa).sent.is_empty());
        // b restarts with a new id.
        let mut b2 = b.clone();
        b2.id = MemberId::from_bytes([9; 16]);
        let mut notice = outbound(1, &[a], SendOptions::NONE, b"");
        notice.extensions.push(Extension {
            tag: tags::STATIC_NOTICE,
            value: Bytes::from_static(&[1]),
        });
        pa.receive(now, arrive(&notice, &b2));
        let d = drain(&mut pa);
        assert_eq!(d.members.len(), 2);
        assert!(
            matches!(&d.members[0], MembershipEvent::MemberDisappeared { member, .. } if *member == b)
        );
        // b2 stops.
        pb.stop(now);
        let bye = drain(&mut pb).sent;
        assert_eq!(bye.len(), 1);
        pa.receive(now, arrive(&bye[0], &b2));
        let d = drain(&mut pa);
        assert!(matches!(
            &d.members[0],
            MembershipEvent::MemberDisappeared {
                reason: DisappearReason::Shutdown,
                ..
            }
        ));
    }

    #[test]
    fn members_with_ids_join_at_start_and_membership_events_about_them_are_absorbed() {
        let (a, b, c) = (member(1), member(2), member(3));
        let mut pa = pipeline(vec![Box::new(StaticMembership::new(&cfg(&[&b], true)))], 1);
        let now = Instant::now();
        pa.start(now);
        let d = drain(&mut pa);
        assert!(matches!(&d.members[..], [MembershipEvent::MemberAdded(m)] if m.key() == b.key()));
        pa.member(now, MembershipEvent::MemberAdded(b));
        pa.member(now, MembershipEvent::MemberAdded(c.clone()));
        assert_eq!(
            drain(&mut pa).members,
            vec![MembershipEvent::MemberAdded(c)]
        );
        let _ = a;
        assert!(cfg(&[], false).validate().is_err());
        assert!(
            StaticMembershipConfig {
                members: vec![StaticMemberConfig {
                    address: "nope".into(),
                    id: None
                }],
                ..Default::default()
            }
            .validate()
            .is_err()
        );
    }
}
