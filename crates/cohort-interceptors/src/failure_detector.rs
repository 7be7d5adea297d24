//! `TcpFailureDetector`: confirms a suspected failure over TCP before the application hears
//! of it (as Tribes' `TcpFailureDetector` does: a member that stops sending heartbeats may
//! only be slow, so a TCP connect, and optionally a message and its ACK, decide), and turns a
//! killed process's closed
//! sockets into a verdict within milliseconds.
//!
//! Inputs and what they lead to:
//!
//! | input | action |
//! |---|---|
//! | membership: member added, unknown here | probe; alive: pass the add up; dead: retry on heartbeats |
//! | membership: member added, suspected | suspicion cleared, nothing passed up |
//! | membership: shutdown | trusted: removed, passed up, no probe |
//! | membership: expired (no beacons) | probe **with the read test**; dead: failed; alive: kept (false positive counted) |
//! | our connection to it closed or reset, or every connect to it refused | probe **with the read test** |
//! | a send to it failed / its inbound connection closed | probe (at most once per `recheck_interval`) |
//! | heartbeat | re-probe suspects; forget those older than `remove_suspects_timeout` |
//! | a peer's leaving notice | removed as shut down, no probe |
//! | this channel stops | a leaving notice (extension `LEAVING`, USE_ACK) to every member |
//!
//! A probe is an output the driver performs ([`cohort_channel::Output::Probe`]): a fresh TCP
//! connection within `connect_timeout`, then (send test) a hello and a probe frame, then (read
//! test) the frame's ACK within `read_test_timeout`. Refused or reset connections fail at once.
//! A verdict of failure removes the member, passes `MemberDisappeared { reason: Failed }` up
//! with the evidence, and reports it to membership.
//!
//! Why a lost connection is probed with the read test: a killed process's kernel closes its
//! sockets one by one, so the connection we had can report "closed by peer" while its
//! listening socket still accepts; a connect-and-write probe then passes and the verdict waits
//! for the next evidence (seen as 2 s failovers in `cargo xtask scenario lead-failover`). The
//! ACK of the probe frame never comes: the half-accepted connection is reset.
//!
//! Why expiry always uses the read test: a stopped (SIGSTOP) or frozen process still has a
//! kernel that accepts connections and buffers writes, so Tribes' default connect + send test
//! keeps it forever (§5.8). Only the process itself can send the ACK. A merely CPU-starved
//! process answers within the read timeout and stays.

use crate::ConfigError;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cohort_channel::{
    Cx, Inbound, Interceptor, ProbeError, ProbeRequest, Suspicion, TagKind, tags,
};
use cohort_membership::{DisappearReason, FailureEvidence, MembershipEvent};
use cohort_wire::{Member, MemberKey};

use crate::util::{Counter, bad, has_ext, send_control};

/// Settings (Tribes' names and defaults, plus bounds).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct TcpFailureDetectorConfig {
    /// How long a probe's connect (and its write) may take. Default 1000 ms.
    #[cfg_attr(
        feature = "serde",
        serde(
            rename = "connect_timeout_ms",
            deserialize_with = "crate::util::ms::deserialize"
        )
    )]
    pub connect_timeout: Duration,
    /// Write a probe frame after connecting. Default true.
    pub perform_send_test: bool,
    /// Wait for the probe frame's ACK on every probe (expiry probes always do). Default false.
    pub perform_read_test: bool,
    /// How long the read test waits. Default 5000 ms.
    #[cfg_attr(
        feature = "serde",
        serde(
            rename = "read_test_timeout_ms",
            deserialize_with = "crate::util::ms::deserialize"
        )
    )]
    pub read_test_timeout: Duration,
    /// How long a member that survived a probe stays on the suspect list (re-probed on each
    /// heartbeat); `None` (a negative number in files) = forever. Default 300 s.
    #[cfg_attr(
        feature = "serde",
        serde(
            rename = "remove_suspects_timeout_ms",
            deserialize_with = "crate::util::ms::opt::deserialize"
        )
    )]
    pub remove_suspects_timeout: Option<Duration>,
    /// Weak evidence (a failed send, a closed inbound connection) against a member verified
    /// alive less than this long ago is ignored: bounds probe traffic. A lost outbound
    /// connection is always checked. Default 1000 ms.
    #[cfg_attr(
        feature = "serde",
        serde(
            rename = "recheck_interval_ms",
            deserialize_with = "crate::util::ms::deserialize"
        )
    )]
    pub recheck_interval: Duration,
    /// Probes in flight at once; further evidence waits for the next heartbeat. Default 256.
    pub max_probes: usize,
    /// Members tracked (view, suspects); beyond, adds are refused and counted. Default 4096.
    pub max_members: usize,
}

impl Default for TcpFailureDetectorConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_millis(1000),
            perform_send_test: true,
            perform_read_test: false,
            read_test_timeout: Duration::from_millis(5000),
            remove_suspects_timeout: Some(Duration::from_secs(300)),
            recheck_interval: Duration::from_millis(1000),
            max_probes: 256,
            max_members: 4096,
        }
    }
}

impl TcpFailureDetectorConfig {
    /// Checks every bound; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.connect_timeout < Duration::from_millis(1) {
            return bad("connect_timeout_ms", "must be at least 1");
        }
        if self.read_test_timeout < Duration::from_millis(1) {
            return bad("read_test_timeout_ms", "must be at least 1");
        }
        if self.max_probes == 0 {
            return bad("max_probes", "must be at least 1");
        }
        if self.max_members == 0 {
            return bad("max_members", "must be at least 1");
        }
        Ok(())
    }
}

/// Counters of a detector, shared with whoever holds [`TcpFailureDetector::stats`].
#[derive(Debug, Default)]
pub struct FailureDetectorStats {
    probes: Counter,
    confirmed: Counter,
    false_positives: Counter,
    cleared: Counter,
    evidence_ignored: Counter,
    refused_adds: Counter,
    probes_swallowed: Counter,
}

/// A snapshot of [`FailureDetectorStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailureDetectorSnapshot {
    /// Probes requested.
    pub probes: u64,
    /// Failures confirmed and reported.
    pub confirmed: u64,
    /// Members membership dropped (expired) that a probe showed alive: kept.
    pub false_positives: u64,
    /// Other suspicions (failed sends, lost connections) a probe cleared.
    pub cleared: u64,
    /// Evidence ignored: the member was verified recently, or too many probes were running.
    pub evidence_ignored: u64,
    /// Members not tracked because the table was full.
    pub refused_adds: u64,
    /// Probe frames from other detectors consumed here.
    pub probes_swallowed: u64,
}

impl FailureDetectorStats {
    /// The current values.
    pub fn snapshot(&self) -> FailureDetectorSnapshot {
        FailureDetectorSnapshot {
            probes: self.probes.get(),
            confirmed: self.confirmed.get(),
            false_positives: self.false_positives.get(),
            cleared: self.cleared.get(),
            evidence_ignored: self.evidence_ignored.get(),
            refused_adds: self.refused_adds.get(),
            probes_swallowed: self.probes_swallowed.get(),
        }
    }
}

/// Why a probe runs.
#[derive(Debug)]
enum Purpose {
    /// Membership added it; pass the add up if alive.
    Add,
    /// Evidence against it; `expired` when membership already dropped it; `read_test` when
    /// only the process itself can clear it (expiry, a lost connection).
    Confirm {
        evidence: String,
        expired: bool,
        read_test: bool,
    },
}

/// The interceptor. See the module docs.
pub struct TcpFailureDetector {
    cfg: TcpFailureDetectorConfig,
    /// Members passed up and not yet removed.
    members: HashMap<MemberKey, Member>,
    /// Members membership dropped that a probe showed alive: when first suspected.
    suspects: HashMap<MemberKey, Instant>,
    /// Members membership added whose probe failed: re-probed on heartbeats.
    add_suspects: HashMap<MemberKey, Member>,
    /// One probe in flight per member.
    pending: HashMap<MemberKey, Purpose>,
    /// When each member last passed a probe.
    verified: HashMap<MemberKey, Instant>,
    stats: Arc<FailureDetectorStats>,
}

impl TcpFailureDetector {
    /// A detector with `cfg` (validate it first).
    pub fn new(cfg: TcpFailureDetectorConfig) -> Self {
        Self {
            cfg,
            members: HashMap::new(),
            suspects: HashMap::new(),
            add_suspects: HashMap::new(),
            pending: HashMap::new(),
            verified: HashMap::new(),
            stats: Arc::default(),
        }
    }

    /// Its counters (shared; read any time).
    pub fn stats(&self) -> Arc<FailureDetectorStats> {
        self.stats.clone()
    }

    fn probe(&mut self, member: &Member, purpose: Purpose, cx: &mut Cx<'_>) {
        let key = member.key();
        if self.pending.contains_key(&key) {
            return;
        }
        if self.pending.len() >= self.cfg.max_probes {
            self.stats.evidence_ignored.inc();
            return;
        }
        let read = self.cfg.perform_read_test
            || matches!(
                purpose,
                Purpose::Confirm {
                    read_test: true,
                    ..
                }
            );
        let request = ProbeRequest {
            connect_timeout: self.cfg.connect_timeout,
            send_test: self.cfg.perform_send_test || read,
            read_timeout: read.then_some(self.cfg.read_test_timeout),
        };
        self.pending.insert(key, purpose);
        self.stats.probes.inc();
        cx.request_probe(member.clone(), request);
    }

    fn fail(&mut self, member: Member, detail: String, cx: &mut Cx<'_>) {
        let key = member.key();
        self.suspects.remove(&key);
        self.verified.remove(&key);
        if self.members.remove(&key).is_none() {
            return;
        }
        self.stats.confirmed.inc();
        tracing::info!(member = %key, evidence = %detail, "failure confirmed");
        cx.report_failed(member.clone(), detail.clone());
        cx.emit_member(MembershipEvent::MemberDisappeared {
            member,
            reason: DisappearReason::Failed(FailureEvidence { detail }),
        });
    }
}

impl Interceptor for TcpFailureDetector {
    fn name(&self) -> &'static str {
        "tcp_failure_detector"
    }

    fn tags(&self) -> &'static [(u32, TagKind)] {
        &[
            (tags::PROBE, TagKind::Control),
            (tags::LEAVING, TagKind::Control),
        ]
    }

    fn on_receive(&mut self, msg: Inbound, cx: &mut Cx<'_>) {
        if has_ext(&msg.extensions, tags::PROBE) {
            // Consumed; the transport already ACKed USE_ACK.
            self.stats.probes_swallowed.inc();
            msg.consume();
            return;
        }
        if has_ext(&msg.extensions, tags::LEAVING) {
            // A peer stopping gracefully: drop it now, before its closing sockets look like a
            // crash.
            let key = self
                .members
                .iter()
                .find(|(k, _)| k.id == msg.from)
                .map(|(k, _)| *k);
            if let Some(member) = key.and_then(|k| self.members.remove(&k)) {
                self.suspects.remove(&member.key());
                self.verified.remove(&member.key());
                self.pending.remove(&member.key());
                cx.emit_member(MembershipEvent::MemberDisappeared {
                    member,
                    reason: DisappearReason::Shutdown,
                });
            }
            msg.consume();
            return;
        }
        cx.deliver_up(msg);
    }

    fn on_stop(&mut self, _now: Instant, cx: &mut Cx<'_>) {
        // Tell every member this is a graceful leave (acknowledged, so it is queued on their
        // side before this node's sockets close).
        let to: Vec<Member> = self.members.values().cloned().collect();
        let ack = cohort_wire::SendOptions::USE_ACK;
        send_control(cx, to, ack, tags::LEAVING, bytes::Bytes::new());
    }

    fn on_member(&mut self, ev: MembershipEvent, cx: &mut Cx<'_>) {
        match ev {
            MembershipEvent::MemberAdded(m) => {
                let key = m.key();
                if self.suspects.remove(&key).is_some() || self.members.contains_key(&key) {
                    // Suspected but never removed upward: back, nothing to tell.
                    self.members.insert(key, m);
                    return;
                }
                if self.members.len() + self.add_suspects.len() >= self.cfg.max_members {
                    self.stats.refused_adds.inc();
                    return;
                }
                self.add_suspects.insert(key, m.clone());
                self.probe(&m, Purpose::Add, cx);
            }
            MembershipEvent::MemberUpdated(m) => {
                if let Some(known) = self.members.get_mut(&m.key()) {
                    *known = m.clone();
                    cx.emit_member(MembershipEvent::MemberUpdated(m));
                }
            }
            MembershipEvent::MemberDisappeared { member, reason } => {
                let key = member.key();
                self.add_suspects.remove(&key);
                match reason {
                    DisappearReason::Expired { silent_for } => {
                        if self.members.contains_key(&key) {
                            let evidence = format!("no beacon for {} ms", silent_for.as_millis());
                            self.probe(
                                &member,
                                Purpose::Confirm {
                                    evidence,
                                    expired: true,
                                    read_test: true,
                                },
                                cx,
                            );
                        }
                    }
                    reason => {
                        // Shutdown: trusted. Failed: a verdict (ours, echoed by membership,
                        // or another detector's): pass it up once.
                        self.suspects.remove(&key);
                        self.verified.remove(&key);
                        if self.members.remove(&key).is_some() {
                            cx.emit_member(MembershipEvent::MemberDisappeared { member, reason });
                        }
                    }
                }
            }
            other => cx.emit_member(other),
        }
    }

    fn on_suspect(&mut self, member: &Member, why: &Suspicion, cx: &mut Cx<'_>) {
        let key = member.key();
        let Some(known) = self.members.get(&key).cloned() else {
            return;
        };
        // A connection we opened, closed by the peer, is always checked; weaker evidence
        // against a member verified moments ago is not (probe connections closing would
        // otherwise make two detectors probe each other back and forth).
        let strong = matches!(why, Suspicion::ConnectionLost(_));
        if !strong
            && self
                .verified
                .get(&key)
                .is_some_and(|t| cx.now().saturating_duration_since(*t) < self.cfg.recheck_interval)
        {
            self.stats.evidence_ignored.inc();
            tracing::debug!(member = %key, evidence = %why, "evidence ignored: verified alive moments ago");
            return;
        }
        let evidence = why.to_string();
        self.probe(
            &known,
            Purpose::Confirm {
                evidence,
                expired: false,
                // A dying process closes its connections before its listening socket: a
                // connect-and-write probe in between succeeds. Its ACK never comes.
                read_test: strong,
            },
            cx,
        );
    }

    fn on_probe_result(&mut self, member: Member, result: Result<(), ProbeError>, cx: &mut Cx<'_>) {
        let key = member.key();
        let Some(purpose) = self.pending.remove(&key) else {
            return;
        };
        match (purpose, result) {
            (Purpose::Add, Ok(())) => {
                self.verified.insert(key, cx.now());
                if let Some(m) = self.add_suspects.remove(&key) {
                    self.members.insert(key, m.clone());
                    cx.emit_member(MembershipEvent::MemberAdded(m));
                }
            }
            (Purpose::Add, Err(e)) => {
                tracing::debug!(member = %key, error = %e, "new member does not answer; retried on heartbeats");
            }
            (
                Purpose::Confirm {
                    expired, evidence, ..
                },
                Ok(()),
            ) => {
                self.verified.insert(key, cx.now());
                tracing::debug!(member = %key, %evidence, "suspicion cleared: the probe passed");
                if expired {
                    self.stats.false_positives.inc();
                    self.suspects.entry(key).or_insert(cx.now());
                    tracing::info!(member = %key, "membership dropped it but it answers; kept as a suspect");
                } else {
                    self.stats.cleared.inc();
                }
            }
            (Purpose::Confirm { evidence, .. }, Err(e)) => {
                let member = self.members.get(&key).cloned().unwrap_or(member);
                self.fail(member, format!("{evidence}; probe: {e}"), cx);
            }
        }
    }

    fn on_heartbeat(&mut self, now: Instant, cx: &mut Cx<'_>) {
        if let Some(limit) = self.cfg.remove_suspects_timeout {
            self.suspects
                .retain(|_, since| now.saturating_duration_since(*since) < limit);
        }
        let suspects: Vec<Member> = self
            .suspects
            .keys()
            .filter_map(|k| self.members.get(k).cloned())
            .collect();
        for m in suspects {
            let evidence = "suspect re-check".to_owned();
            self.probe(
                &m,
                Purpose::Confirm {
                    evidence,
                    expired: true,
                    read_test: true,
                },
                cx,
            );
        }
        let adds: Vec<Member> = self.add_suspects.values().cloned().collect();
        for m in adds {
            self.probe(&m, Purpose::Add, cx);
        }
        // Forget verification times of members no longer tracked.
        let members = &self.members;
        self.verified.retain(|k, _| members.contains_key(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use cohort_channel::ProbeErrorKind;

    fn refused() -> ProbeError {
        ProbeError {
            kind: ProbeErrorKind::Refused,
            detail: "connect: connection refused".into(),
        }
    }

    fn setup() -> (cohort_channel::Pipeline, Member, Instant) {
        let mut p = pipeline(
            vec![Box::new(TcpFailureDetector::new(Default::default()))],
            1,
        );
        let now = Instant::now();
        let b = member(2);
        p.member(now, MembershipEvent::MemberAdded(b.clone()));
        let d = drain(&mut p);
        assert!(d.members.is_empty(), "an add waits for its probe");
        assert_eq!(d.probes.len(), 1);
        assert_eq!(d.probes[0].2.read_timeout, None, "adds use connect + send");
        p.probe_result(now, 0, b.clone(), Ok(()));
        let d = drain(&mut p);
        assert_eq!(d.members, vec![MembershipEvent::MemberAdded(b.clone())]);
        (p, b, now)
    }

    #[test]
    fn a_lost_connection_with_a_refused_probe_is_a_failure_with_evidence() {
        let (mut p, b, now) = setup();
        let later = now + Duration::from_secs(2);
        p.suspect(
            later,
            &b,
            &Suspicion::ConnectionLost("closed by peer".into()),
        );
        let d = drain(&mut p);
        assert_eq!(d.probes.len(), 1);
        assert!(
            d.probes[0].2.read_timeout.is_some(),
            "a lost connection is probed with the read test (a dying process still accepts)"
        );
        p.probe_result(later, 0, b.clone(), Err(refused()));
        let d = drain(&mut p);
        assert_eq!(d.failed.len(), 1);
        let [
            MembershipEvent::MemberDisappeared {
                member,
                reason: DisappearReason::Failed(ev),
            },
        ] = &d.members[..]
        else {
            panic!("{:?}", d.members)
        };
        assert_eq!(member, &b);
        assert!(
            ev.detail.contains("closed by peer") && ev.detail.contains("refused"),
            "{}",
            ev.detail
        );
        // Membership echoes the verdict: not passed up twice.
        p.member(
            later,
            MembershipEvent::MemberDisappeared {
                member: b,
                reason: DisappearReason::Failed(ev.clone()),
            },
        );
        assert!(drain(&mut p).members.is_empty());
    }

    #[test]
    fn an_expired_member_that_answers_stays_and_its_return_is_silent() {
        let (mut p, b, now) = setup();
        p.member(
            now,
            MembershipEvent::MemberDisappeared {
                member: b.clone(),
                reason: DisappearReason::Expired {
                    silent_for: Duration::from_secs(3),
                },
            },
        );
        let d = drain(&mut p);
        assert!(d.members.is_empty());
        assert!(
            d.probes[0].2.read_timeout.is_some(),
            "expiry uses the read test"
        );
        p.probe_result(now, 0, b.clone(), Ok(()));
        let d = drain(&mut p);
        assert!(d.members.is_empty() && d.failed.is_empty());
        // Beacons return: no duplicate add.
        p.member(now, MembershipEvent::MemberAdded(b));
        let d = drain(&mut p);
        assert!(d.members.is_empty() && d.probes.is_empty());
    }

    #[test]
    fn shutdown_passes_without_a_probe_and_evidence_is_rate_limited() {
        let (mut p, b, now) = setup();
        // Verified at `now`: evidence within recheck_interval is ignored.
        p.suspect(now, &b, &Suspicion::SendFailed("timeout".into()));
        assert!(drain(&mut p).probes.is_empty());
        p.member(
            now,
            MembershipEvent::MemberDisappeared {
                member: b.clone(),
                reason: DisappearReason::Shutdown,
            },
        );
        let d = drain(&mut p);
        assert!(d.probes.is_empty());
        assert_eq!(d.members.len(), 1);
        // Unknown members' evidence is ignored.
        p.suspect(
            now + Duration::from_secs(5),
            &b,
            &Suspicion::SendFailed("x".into()),
        );
        assert!(drain(&mut p).probes.is_empty());
    }

    #[test]
    fn probe_frames_are_swallowed_and_dead_adds_are_retried_on_heartbeats() {
        let mut p = pipeline(
            vec![Box::new(TcpFailureDetector::new(Default::default()))],
            1,
        );
        let now = Instant::now();
        let c = member(3);
        let mut probe = outbound(5, &[member(1)], cohort_wire::SendOptions::BYTE_MESSAGE, b"");
        probe.extensions.push(cohort_wire::Extension {
            tag: tags::PROBE,
            value: bytes::Bytes::new(),
        });
        p.receive(now, arrive(&probe, &c));
        assert!(drain(&mut p).delivered.is_empty());
        p.member(now, MembershipEvent::MemberAdded(c.clone()));
        drain(&mut p);
        p.probe_result(now, 0, c.clone(), Err(refused()));
        assert!(drain(&mut p).members.is_empty());
        p.heartbeat(now + Duration::from_secs(5));
        let d = drain(&mut p);
        assert_eq!(d.probes.len(), 1);
        p.probe_result(now, 0, c.clone(), Ok(()));
        assert_eq!(drain(&mut p).members, vec![MembershipEvent::MemberAdded(c)]);
    }
}
