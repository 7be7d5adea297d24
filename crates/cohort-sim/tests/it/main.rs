//! Simulation of the real membership driver over turmoil's multicast, in virtual time.
//! Every scenario runs on the seeds of `cohort_sim::seeds()`; a failure prints its seed and the
//! command that replays it.

mod channel;
mod maps;
mod sessions;

use std::time::Duration;

use cohort_membership::MembershipConfig;
use cohort_sim::{Cluster, NodeSpec, run_seeded};
use cohort_wire::{ClusterKey, KeyRing};

const ALL: [&str; 5] = ["n1", "n2", "n3", "n4", "n5"];
/// Drop time + one frequency, the bound within which a silent member must be gone.
const DROP_BOUND: Duration = Duration::from_millis(3000 + 500);

fn five(seed: u64) -> Result<Cluster, String> {
    let mut c = Cluster::new(seed);
    for name in ALL {
        c.add(NodeSpec::new(name));
        // Staggered starts give distinct start times: n1 is the oldest.
        c.run_for(Duration::from_millis(30))?;
    }
    c.run_until(Duration::from_secs(2), |c| c.all_see(&ALL))?;
    Ok(c)
}

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what()) }
}

#[test]
fn five_nodes_converge() {
    run_seeded("five_nodes_converge", |seed| {
        let mut c = Cluster::new(seed);
        for name in ALL {
            c.add(NodeSpec::new(name));
        }
        let took = c.run_until(Duration::from_secs(2), |c| c.all_see(&ALL))?;
        // Joins are answered at once: far less than a beacon period plus the link latency.
        check(took < Duration::from_millis(250), || {
            format!("convergence took {took:?} (seed {seed})")
        })
    });
}

#[test]
fn a_crashed_node_is_dropped_by_all_within_drop_time_plus_one_frequency() {
    run_seeded("a_crashed_node", |seed| {
        let mut c = five(seed)?;
        c.crash("n3");
        let rest = ["n1", "n2", "n4", "n5"];
        let took = c.run_until(DROP_BOUND + Duration::from_millis(50), |c| c.all_see(&rest))?;
        check(took >= Duration::from_millis(2400), || {
            format!("dropped after only {took:?}: expiry fired early (seed {seed})")
        })
    });
}

#[test]
fn a_partitioned_node_disappears_and_comes_back_after_repair() {
    run_seeded("a_partitioned_node", |seed| {
        let mut c = five(seed)?;
        let rest = ["n2", "n3", "n4", "n5"];
        c.partition(&["n1"], &rest);
        c.run_until(DROP_BOUND + Duration::from_millis(50), |c| {
            c.all_see(&rest) && c.seen_by("n1") == vec!["n1".to_owned()]
        })?;
        // Each side elects its own lead: the oldest it can see.
        check(c.lead_of("n3").as_deref() == Some("n2"), || {
            format!("majority side lead {:?} (seed {seed})", c.lead_of("n3"))
        })?;
        c.repair(&["n1"], &rest);
        c.run_until(Duration::from_secs(2), |c| c.all_see(&ALL))?;
        check(
            ALL.iter().all(|n| c.lead_of(n).as_deref() == Some("n1")),
            || {
                format!(
                    "lead after repair not n1 everywhere (seed {seed}):\n{}",
                    c.describe_views()
                )
            },
        )
    });
}

#[test]
fn a_graceful_leave_is_seen_at_once() {
    run_seeded("a_graceful_leave", |seed| {
        let mut c = five(seed)?;
        c.leave("n4");
        let took = c.run_until(Duration::from_millis(200), |c| {
            c.all_see(&["n1", "n2", "n3", "n5"])
        })?;
        check(took < Duration::from_millis(100), || {
            format!("leave took {took:?} (seed {seed})")
        })
    });
}

#[test]
fn the_lead_moves_to_the_next_oldest_when_it_dies_and_all_agree() {
    run_seeded("the_lead_moves", |seed| {
        let mut c = five(seed)?;
        for n in ALL {
            check(c.lead_of(n).as_deref() == Some("n1"), || {
                format!("{n} sees lead {:?} (seed {seed})", c.lead_of(n))
            })?;
        }
        c.crash("n1");
        let rest = ["n2", "n3", "n4", "n5"];
        c.run_until(DROP_BOUND + Duration::from_millis(50), |c| {
            rest.iter().all(|n| c.lead_of(n).as_deref() == Some("n2"))
        })?;
        // A restarted n1 is a new, younger member: the lead stays with n2.
        c.bounce("n1");
        c.run_until(Duration::from_secs(2), |c| c.all_see(&ALL))?;
        check(
            ALL.iter().all(|n| c.lead_of(n).as_deref() == Some("n2")),
            || {
                format!(
                    "lead moved back to a restarted node (seed {seed}):\n{}",
                    c.describe_views()
                )
            },
        )
    });
}

#[test]
fn nodes_of_another_cluster_or_with_a_wrong_key_never_appear() {
    run_seeded("nodes_of_another_cluster", |seed| {
        let key = |k: &[u8]| Some(KeyRing::new(vec![ClusterKey::new(k).unwrap()]).unwrap());
        let keyed = MembershipConfig {
            keys: key(b"the cluster key!"),
            ..MembershipConfig::default()
        };
        let mut c = Cluster::new(seed);
        for name in ["n1", "n2", "n3"] {
            c.add(NodeSpec {
                name: name.into(),
                config: keyed.clone(),
            });
        }
        c.add(NodeSpec {
            name: "wrong-key".into(),
            config: MembershipConfig {
                keys: key(b"not the key at all"),
                ..MembershipConfig::default()
            },
        });
        c.add(NodeSpec::new("no-key"));
        c.add(NodeSpec {
            name: "other-cluster".into(),
            config: MembershipConfig {
                cluster: "other".into(),
                ..keyed
            },
        });
        c.run_until(Duration::from_secs(1), |c| c.all_see(&["n1", "n2", "n3"]))?;
        c.run_for(Duration::from_secs(3))?;
        check(c.all_see(&["n1", "n2", "n3"]), || {
            format!(
                "an outsider appeared (seed {seed}):\n{}",
                c.describe_views()
            )
        })?;
        check(
            c.seen_by("wrong-key") == vec!["wrong-key".to_owned()],
            || format!("wrong-key sees {:?} (seed {seed})", c.seen_by("wrong-key")),
        )
    });
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let run = |seed| -> Result<Vec<String>, String> {
        let mut c = five(seed)?;
        c.crash("n2");
        c.run_for(Duration::from_secs(4))?;
        Ok(c.trace())
    };
    let seed = cohort_sim::seeds()[0];
    let (a, b) = (run(seed).unwrap(), run(seed).unwrap());
    assert!(!a.is_empty());
    assert_eq!(a, b, "two runs of seed {seed} diverged");
}
