//! What a send's completion does besides recording its result: a failed send becomes a
//! suspicion of its destination.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use cohort_transport::Delivered;
use cohort_wire::Member;
use tokio::sync::mpsc;

use crate::core::Suspicion;

use super::handle::Command;
use super::stats::ChannelCounters;

/// The owner's command queue and counters, as failed sends' completions use them to feed a
/// failed send back to the pipeline as a suspicion (IO failures and timeouts only: a FAIL_ACK
/// or a full queue says nothing about the peer's health). One per channel, shared by every
/// completion.
pub(super) struct Suspecter {
    pub(super) cmd: mpsc::Sender<Command>,
    pub(super) counters: Arc<ChannelCounters>,
}

impl crate::receipt::SuspectOnFailure for Suspecter {
    fn check(&self, member: &Member, r: &Result<Delivered, cohort_transport::SendError>) {
        Suspecter::check(self, member, r);
    }
}

impl Suspecter {
    /// Raises a suspicion of `member` when `r` says its send failed on IO or a timeout.
    pub(super) fn check(
        &self,
        member: &Member,
        r: &Result<Delivered, cohort_transport::SendError>,
    ) {
        use cohort_transport::SendError as E;
        let Err(e) = r else { return };
        if !matches!(
            e,
            E::Connect { .. } | E::ConnectionLost { .. } | E::Timeout { .. }
        ) {
            return;
        }
        // Weak evidence, whatever the error: `ConnectionLost` also covers closes this node
        // makes itself (keep-alive recycling, a stop). A connection the far side broke is
        // reported by the transport as a peer event, which is strong evidence.
        let why = Suspicion::SendFailed(e.to_string());
        if self
            .cmd
            .try_send(Command::Suspect(Box::new(member.clone()), why))
            .is_err()
        {
            self.counters
                .suspicions_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member() -> Member {
        Member::new(
            cohort_wire::MemberId::from_bytes([3; 16]),
            std::net::Ipv4Addr::LOCALHOST.into(),
            4000,
        )
    }

    /// Which suspicion a failed send raises: a failed send (weak evidence) for a connection
    /// lost under it, a refused connect or a timeout; none at all for a FAIL_ACK (the peer
    /// answered). The strong evidence of a connection the peer broke comes from the
    /// transport's peer events.
    #[test]
    fn a_failed_send_is_weak_evidence_and_a_fail_ack_none() {
        use cohort_transport::SendError as E;
        let addr = "127.0.0.1:4000".parse().unwrap();
        let cases = [
            (
                E::ConnectionLost {
                    addr,
                    reason: "Connection reset by peer".into(),
                },
                Some("send failed"),
            ),
            (
                E::Connect {
                    addr,
                    attempts: 2,
                    reason: "Connection refused".into(),
                },
                Some("send failed"),
            ),
            (
                E::Timeout {
                    addr,
                    after: std::time::Duration::from_secs(3),
                },
                Some("send failed"),
            ),
            (
                E::FailAck {
                    addr,
                    reason: "no listener".into(),
                },
                None,
            ),
        ];
        for (err, want) in cases {
            let (tx, mut rx) = mpsc::channel(4);
            Suspecter {
                cmd: tx,
                counters: Arc::default(),
            }
            .check(&member(), &Err(err.clone()));
            let got = match rx.try_recv() {
                Ok(Command::Suspect(m, why)) => {
                    assert_eq!(*m, member());
                    Some(why.to_string())
                }
                Ok(_) => panic!("{err}: not a suspicion"),
                Err(_) => None,
            };
            match (want, got) {
                (None, None) => {}
                (Some(w), Some(g)) => assert!(g.starts_with(w), "{err}: {g}"),
                (w, g) => panic!("{err}: wanted {w:?}, got {g:?}"),
            }
        }
    }
}
