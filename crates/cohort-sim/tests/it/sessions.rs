//! Session managers (delta and backup) on the real stack under turmoil: sessions are used
//! on one member at a time, members crash one at a time and restart, and a crashed member's
//! sessions move to another. The load balancer is mostly sticky, but a member also takes a
//! live member's idle session now and then (a session moving between requests, as behind a
//! round-robin balancer: in a backup map every such move is a take-over on read). No increment
//! acknowledged with SYNC_ACK may be lost: every load sees at least the last acknowledged
//! count.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use cohort_session::{
    Changes, ManagerKind, Meta, SessionConfig, SessionData, SessionId, SessionManager,
};
use cohort_sim::run_seeded;
use rand::{Rng, SeedableRng};

use crate::maps::{name_seed, run_for, sim, sim_channel, sim_clock};

const HOSTS: [&str; 4] = ["s1", "s2", "s3", "s4"];

#[derive(Default)]
struct World {
    /// Session → (the host serving it, the last count acknowledged).
    sessions: BTreeMap<SessionId, (String, u64)>,
    /// Hosts down (their sessions go to another).
    down: Vec<String>,
    /// Sessions with a request in flight: they do not move until it ends (one request of a
    /// session at a time, as one client makes them).
    busy: std::collections::BTreeSet<SessionId>,
    quiet: bool,
    acked: u64,
    /// Loads that saw less than the acknowledged count.
    lost: Vec<String>,
    checked: Vec<String>,
    errors: Vec<String>,
}

fn lock(w: &Mutex<World>) -> MutexGuard<'_, World> {
    w.lock().unwrap_or_else(PoisonError::into_inner)
}

fn count_of(data: &SessionData) -> u64 {
    data.attributes
        .get("count")
        .and_then(|v| serde_json::from_slice(v).ok())
        .unwrap_or(0)
}

/// One request: load, check, increment, commit with SYNC_ACK.
async fn bump(m: &SessionManager, id: SessionId, acked: u64, host: &str) -> Result<u64, String> {
    let now = m.now_ms();
    let loaded = m.load(id).await.map_err(|e| e.to_string())?;
    let (meta, count) = match &loaded {
        Some(d) => (d.meta, count_of(d)),
        None if acked == 0 => (
            Meta {
                created_ms: now,
                last_access_ms: now,
                max_inactive_ms: 3_600_000,
            },
            0,
        ),
        None => return Err(format!("LOST {host}: session {id} gone (acked {acked})")),
    };
    if count < acked {
        return Err(format!(
            "LOST {host}: session {id} at {count}, acked {acked}"
        ));
    }
    let n = count + 1;
    let v = Bytes::from(n.to_string());
    let changes = Changes {
        set: [("count".to_string(), v.clone())].into(),
        ..Changes::default()
    };
    let data = SessionData {
        id,
        meta: Meta {
            last_access_ms: now,
            ..meta
        },
        attributes: [("count".to_string(), v)].into(),
    };
    m.commit(&data, &changes, loaded.is_none())
        .await
        .map_err(|e| e.to_string())?;
    Ok(n)
}

fn host(
    sim: &mut turmoil::Sim<'static>,
    name: &'static str,
    seed: u64,
    kind: ManagerKind,
    world: Arc<Mutex<World>>,
) {
    let incarnations = Arc::new(Mutex::new(0u64));
    sim.host(name, move || {
        let world = world.clone();
        let incarnations = incarnations.clone();
        async move {
            let inc = {
                let mut i = incarnations.lock().unwrap_or_else(PoisonError::into_inner);
                *i += 1;
                *i
            };
            lock(&world).down.retain(|h| h != name);
            let mut rng =
                rand::rngs::StdRng::seed_from_u64(seed ^ name_seed(name) ^ inc.rotate_left(32));
            let channel = sim_channel(name, &mut rng).await?;
            tokio::time::sleep(Duration::from_millis(800)).await;
            let cfg = SessionConfig {
                map: cohort_maps::MapConfig {
                    anti_entropy_interval: Duration::from_millis(500),
                    rpc_timeout: Duration::from_millis(1000),
                    state_transfer_timeout: Duration::from_secs(10),
                    ..cohort_maps::MapConfig::default()
                },
                ..SessionConfig::default()
            };
            let manager = loop {
                match SessionManager::start_with_clock(&channel, kind, cfg.clone(), sim_clock())
                    .await
                {
                    Ok(m) => break m,
                    Err(e) => {
                        lock(&world).errors.push(format!("{name}: {e}"));
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            };
            loop {
                let (quiet, mine) = {
                    let mut w = lock(&world);
                    let down = w.down.clone();
                    // Take over the sessions of members that are down (a request in flight
                    // there died with its member).
                    let mut freed = Vec::new();
                    for (id, (owner, _)) in w.sessions.iter_mut() {
                        if down.contains(owner) {
                            *owner = name.to_owned();
                            freed.push(*id);
                        }
                    }
                    for id in freed {
                        w.busy.remove(&id);
                    }
                    // Now and then, an idle session of another live member moves here.
                    if rng.gen_bool(0.2) {
                        let idle: Vec<SessionId> = w
                            .sessions
                            .iter()
                            .filter(|(id, (o, _))| o != name && !w.busy.contains(*id))
                            .map(|(id, _)| *id)
                            .collect();
                        if !idle.is_empty() {
                            let id = idle[rng.gen_range(0..idle.len())];
                            if let Some(e) = w.sessions.get_mut(&id) {
                                e.0 = name.to_owned();
                            }
                        }
                    }
                    let mine: Vec<(SessionId, u64)> = w
                        .sessions
                        .iter()
                        .filter(|(id, (o, _))| o == name && !w.busy.contains(*id))
                        .map(|(id, (_, a))| (*id, *a))
                        .collect();
                    (w.quiet, mine)
                };
                if quiet {
                    if !lock(&world).checked.iter().any(|h| h == name) {
                        let all: Vec<(SessionId, u64)> = lock(&world)
                            .sessions
                            .iter()
                            .map(|(id, (_, a))| (*id, *a))
                            .collect();
                        let mut bad = Vec::new();
                        for (id, acked) in all {
                            match manager.load(id).await {
                                Ok(Some(d)) if count_of(&d) >= acked => {}
                                // Never acknowledged: nothing promised.
                                Ok(None) if acked == 0 => {}
                                other => bad.push(format!(
                                    "{name}: {id} acked {acked}, loaded {:?}",
                                    other.map(|d| d.map(|d| count_of(&d)))
                                )),
                            }
                        }
                        let mut w = lock(&world);
                        w.lost.extend(bad);
                        w.checked.push(name.into());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                // A new session now and then; otherwise a request for one of mine.
                let target = if mine.is_empty() || rng.gen_bool(0.1) {
                    let mut b = [0u8; 16];
                    rng.fill(&mut b);
                    let id = SessionId::from_bytes(b);
                    lock(&world).sessions.insert(id, (name.to_owned(), 0));
                    (id, 0)
                } else {
                    mine[rng.gen_range(0..mine.len())]
                };
                lock(&world).busy.insert(target.0);
                let bumped = bump(&manager, target.0, target.1, name).await;
                lock(&world).busy.remove(&target.0);
                match bumped {
                    Ok(n) => {
                        let mut w = lock(&world);
                        w.acked += 1;
                        if let Some(e) = w.sessions.get_mut(&target.0) {
                            if e.0 == name {
                                e.1 = e.1.max(n);
                            }
                        }
                    }
                    Err(e) if e.starts_with("LOST") => lock(&world).lost.push(e),
                    Err(_) => {} // not acknowledged (a member down, too few copies): not promised
                }
                tokio::time::sleep(Duration::from_millis(rng.gen_range(20..80))).await;
            }
        }
    });
}

fn scenario(seed: u64, kind: ManagerKind) -> Result<(), String> {
    let mut sim = sim(seed);
    let world = Arc::new(Mutex::new(World::default()));
    for h in HOSTS {
        host(&mut sim, h, seed, kind, world.clone());
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut faults = Vec::new();
    run_for(&mut sim, Duration::from_secs(3), seed)?;
    for _ in 0..3 {
        let victim = HOSTS[rng.gen_range(0..HOSTS.len())];
        sim.crash(victim);
        lock(&world).down.push(victim.into());
        faults.push(format!("crash {victim}"));
        run_for(&mut sim, Duration::from_secs(4), seed)?;
        sim.bounce(victim);
        faults.push(format!("restart {victim}"));
        run_for(&mut sim, Duration::from_secs(3), seed)?;
    }
    lock(&world).quiet = true;
    let started = sim.elapsed();
    loop {
        {
            let w = lock(&world);
            if !w.lost.is_empty() {
                return Err(format!(
                    "{kind:?}: acknowledged increments lost after {faults:?} (seed {seed}): {:?}",
                    &w.lost[..w.lost.len().min(8)]
                ));
            }
            if w.checked.len() == HOSTS.len() {
                if w.acked < 100 {
                    return Err(format!(
                        "{kind:?}: only {} acknowledged increments (seed {seed}); {:?}",
                        w.acked, w.errors
                    ));
                }
                return Ok(());
            }
        }
        if sim.elapsed() - started > Duration::from_secs(60) {
            return Err(format!(
                "{kind:?}: final reads did not finish (seed {seed})"
            ));
        }
        sim.step()
            .map_err(|e| format!("simulation failed (seed {seed}): {e}"))?;
    }
}

#[test]
fn delta_sessions_lose_no_acknowledged_increment_through_crashes() {
    run_seeded(
        "delta_sessions_lose_no_acknowledged_increment_through_crashes",
        |s| scenario(s, ManagerKind::Delta),
    );
}

#[test]
fn backup_sessions_lose_no_acknowledged_increment_through_crashes() {
    run_seeded(
        "backup_sessions_lose_no_acknowledged_increment_through_crashes",
        |s| scenario(s, ManagerKind::Backup),
    );
}
