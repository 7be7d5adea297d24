//! `Coordinator`: an agreed coordinator, the lead (the oldest member: smallest start time, ties
//! by id, the rule membership uses), installed with a view id once the view has been quiet
//! for `settle` (Tribes' `SimpleCoordinator` waits the same way, but blocking the membership
//! thread; here it is a timer). Every node whose view holds the same members computes the same
//! coordinator and the same view id (a hash of the sorted member ids), without messages.
//!
//! [`CoordinatorHandle`] publishes each installed view and runs singleton duties (seed 001: a
//! scheduled job, an upgrade script, e-mail sending): [`CoordinatorHandle::run_singleton`] runs
//! a task only while this node is the coordinator and cancels it when the coordinator moves.
//! Until the first view is installed no node is coordinator, so a node starting alone waits
//! `settle` before taking singleton duties, time for the others to be heard.

use crate::ConfigError;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use cohort_channel::{Cx, Interceptor};
use cohort_membership::MembershipEvent;
use cohort_wire::{Member, MemberKey};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::util::bad;

/// Settings.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct CoordinatorConfig {
    /// Quiet time before a changed view is installed. Default 2500 ms (Tribes: 10 checks of
    /// 250 ms).
    #[cfg_attr(
        feature = "serde",
        serde(
            rename = "settle_ms",
            deserialize_with = "crate::util::ms::deserialize"
        )
    )]
    pub settle: Duration,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            settle: Duration::from_millis(2500),
        }
    }
}

impl CoordinatorConfig {
    /// Checks every bound; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.settle > Duration::from_secs(600) {
            return bad("settle_ms", "must be at most 600000");
        }
        Ok(())
    }
}

/// An installed view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoordinatorView {
    /// Hash of the sorted member ids: equal on every node with the same members.
    pub view_id: u64,
    /// Members, oldest first (the local one included).
    pub members: Vec<Member>,
    /// The coordinator (the first of `members`).
    pub coordinator: Member,
    /// True when the local member is the coordinator.
    pub local_is_coordinator: bool,
    /// Views installed so far on this node (1 for the first).
    pub installed: u64,
}

/// The view id of a member set: FNV-1a over the sorted ids.
pub fn view_id(members: &[Member]) -> u64 {
    let mut ids: Vec<_> = members.iter().map(|m| *m.id.as_bytes()).collect();
    ids.sort_unstable();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ids.iter().flatten() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Watches installed views and runs singleton duties. Clonable.
#[derive(Clone, Debug)]
pub struct CoordinatorHandle {
    rx: watch::Receiver<Option<CoordinatorView>>,
}

impl CoordinatorHandle {
    /// The installed view, if any yet.
    pub fn current(&self) -> Option<CoordinatorView> {
        self.rx.borrow().clone()
    }

    /// True while this node is the coordinator of the installed view.
    pub fn is_coordinator(&self) -> bool {
        self.rx
            .borrow()
            .as_ref()
            .is_some_and(|v| v.local_is_coordinator)
    }

    /// A receiver that sees every installed view.
    pub fn changes(&self) -> watch::Receiver<Option<CoordinatorView>> {
        self.rx.clone()
    }

    /// Runs `duty` while this node is the coordinator: started when it becomes coordinator,
    /// its token cancelled when it stops being one (the duty should then return promptly; it
    /// is awaited before a later start). Returns when `stop` is cancelled or the channel is
    /// gone. Spawn it: `tokio::spawn(handle.run_singleton(stop, |token| job(token)))`.
    pub async fn run_singleton<F, Fut>(self, stop: CancellationToken, mut duty: F)
    where
        F: FnMut(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut rx = self.rx;
        loop {
            // Wait to become coordinator.
            tokio::select! {
                () = stop.cancelled() => return,
                r = rx.wait_for(|v| v.as_ref().is_some_and(|v| v.local_is_coordinator)) => {
                    if r.is_err() { return; }
                }
            }
            let token = stop.child_token();
            let task = tokio::spawn(duty(token.clone()));
            tokio::select! {
                () = stop.cancelled() => {}
                _ = rx.wait_for(|v| !v.as_ref().is_some_and(|v| v.local_is_coordinator)) => {}
            }
            token.cancel();
            let _ = task.await;
            if stop.is_cancelled() {
                return;
            }
        }
    }
}

/// The interceptor. See the module docs.
pub struct Coordinator {
    cfg: CoordinatorConfig,
    members: BTreeMap<MemberKey, Member>,
    pending: Option<Instant>,
    installed: u64,
    tx: watch::Sender<Option<CoordinatorView>>,
}

impl Coordinator {
    /// A coordinator with `cfg`, and the handle that watches it.
    pub fn new(cfg: CoordinatorConfig) -> (Self, CoordinatorHandle) {
        let (tx, rx) = watch::channel(None);
        (
            Self {
                cfg,
                members: BTreeMap::new(),
                pending: None,
                installed: 0,
                tx,
            },
            CoordinatorHandle { rx },
        )
    }

    fn install(&mut self, cx: &mut Cx<'_>) {
        let Some(local) = cx.local().cloned() else {
            return;
        };
        let mut members: Vec<Member> = self.members.values().cloned().collect();
        if !members.iter().any(|m| m.key() == local.key()) {
            members.push(local.clone());
        }
        members.sort_by_key(Member::seniority);
        let id = view_id(&members);
        let same = self.tx.borrow().as_ref().is_some_and(|v| v.view_id == id);
        if same {
            return;
        }
        self.installed += 1;
        let coordinator = members[0].clone();
        let view = CoordinatorView {
            view_id: id,
            local_is_coordinator: coordinator.key() == local.key(),
            coordinator,
            members,
            installed: self.installed,
        };
        tracing::info!(
            view_id = format_args!("{:016x}", view.view_id),
            coordinator = %view.coordinator.id.short(),
            members = view.members.len(),
            local_is_coordinator = view.local_is_coordinator,
            "view installed"
        );
        self.tx.send_replace(Some(view));
    }
}

impl Interceptor for Coordinator {
    fn name(&self) -> &'static str {
        "coordinator"
    }

    fn on_start(&mut self, now: Instant, _cx: &mut Cx<'_>) {
        self.pending = Some(now + self.cfg.settle);
    }

    fn on_member(&mut self, ev: MembershipEvent, cx: &mut Cx<'_>) {
        let changed = match &ev {
            MembershipEvent::MemberAdded(m) => self.members.insert(m.key(), m.clone()).is_none(),
            MembershipEvent::MemberDisappeared { member, .. } => {
                self.members.remove(&member.key()).is_some()
            }
            _ => false,
        };
        if changed {
            self.pending = Some(cx.now() + self.cfg.settle);
        }
        cx.emit_member(ev);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.pending
    }

    fn on_timeout(&mut self, _now: Instant, cx: &mut Cx<'_>) {
        self.pending = None;
        self.install(cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use cohort_membership::DisappearReason;

    #[test]
    fn the_oldest_is_coordinator_after_the_view_settles_and_views_agree() {
        let (c2, h2) = Coordinator::new(CoordinatorConfig::default());
        let (c3, h3) = Coordinator::new(CoordinatorConfig::default());
        let mut p2 = pipeline(vec![Box::new(c2)], 2);
        let mut p3 = pipeline(vec![Box::new(c3)], 3);
        let t0 = Instant::now();
        p2.start(t0);
        p3.start(t0);
        p2.member(t0, MembershipEvent::MemberAdded(member(3)));
        p2.member(t0, MembershipEvent::MemberAdded(member(1)));
        p3.member(t0, MembershipEvent::MemberAdded(member(1)));
        p3.member(t0, MembershipEvent::MemberAdded(member(2)));
        assert_eq!(drain(&mut p2).members.len(), 2, "events pass");
        assert!(h2.current().is_none(), "nothing before the view settles");
        let t1 = t0 + Duration::from_millis(2500);
        p2.handle_timeout(t1);
        p3.handle_timeout(t1);
        let (v2, v3) = (h2.current().unwrap(), h3.current().unwrap());
        assert_eq!(v2.view_id, v3.view_id);
        assert_eq!(v2.coordinator, member(1));
        assert!(!h2.is_coordinator());
        // The coordinator dies: member 2 (next oldest) takes over after settling.
        p2.member(
            t1,
            MembershipEvent::MemberDisappeared {
                member: member(1),
                reason: DisappearReason::Shutdown,
            },
        );
        p2.handle_timeout(t1 + Duration::from_millis(2500));
        assert!(h2.is_coordinator());
        assert_eq!(h2.current().unwrap().installed, 2);
        assert_ne!(h2.current().unwrap().view_id, v2.view_id);
    }

    #[tokio::test(start_paused = true)]
    async fn singletons_run_only_while_coordinator() {
        let (tx, rx) = watch::channel(None);
        let handle = CoordinatorHandle { rx };
        let view = |local: bool| {
            Some(CoordinatorView {
                view_id: 1,
                members: vec![member(1)],
                coordinator: member(1),
                local_is_coordinator: local,
                installed: 1,
            })
        };
        let runs = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = CancellationToken::new();
        let (r, g) = (runs.clone(), running.clone());
        let task = tokio::spawn(handle.run_singleton(stop.clone(), move |token| {
            let (r, g) = (r.clone(), g.clone());
            async move {
                r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                g.store(true, std::sync::atomic::Ordering::SeqCst);
                token.cancelled().await;
                g.store(false, std::sync::atomic::Ordering::SeqCst);
            }
        }));
        let settle = || tokio::time::sleep(Duration::from_millis(10));
        settle().await;
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 0);
        tx.send_replace(view(true));
        settle().await;
        assert!(running.load(std::sync::atomic::Ordering::SeqCst));
        tx.send_replace(view(false));
        settle().await;
        assert!(!running.load(std::sync::atomic::Ordering::SeqCst));
        tx.send_replace(view(true));
        settle().await;
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
        stop.cancel();
        task.await.unwrap();
        assert!(!running.load(std::sync::atomic::Ordering::SeqCst));
    }
}
