//! Replicated maps on the real channel, membership and transport, under turmoil: random
//! writes from every member through partitions, crashes and restarts.
//!
//! - ReplicatedMap: after the faults heal and writes stop, every live member holds the same
//!   entries.
//! - LazyReplicatedMap (backup_count 1): no write acknowledged with SYNC_ACK is lost while
//!   members crash one at a time (each given time to restore copies before the next).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use cohort_channel::{GroupChannel, MembershipSetup};
use cohort_maps::{Flavor, Map, MapConfig, Postcard, WriteMode};
use cohort_membership::{LocalMemberConfig, MembershipConfig, MulticastConfig};
use cohort_sim::{SIM_EPOCH_MS, TurmoilNet, run_seeded};
use cohort_transport::TransportConfig;
use cohort_wire::Services;
use rand::{Rng, SeedableRng};

#[derive(Default)]
struct World {
    /// Host → (incarnation, the entries it holds).
    held: BTreeMap<String, (u64, BTreeMap<String, String>)>,
    /// Writes acknowledged with SYNC_ACK (lazy run): key → value.
    acked: BTreeMap<String, String>,
    /// Set when writers must stop.
    quiet: bool,
    /// Writes attempted, and how many failed (allowed during faults).
    writes: u64,
    failed_writes: u64,
    /// Hosts whose map did not start (after retries).
    start_errors: Vec<String>,
    /// Set by the final check on each host: acknowledged keys it could not read.
    unreadable: Vec<String>,
    reads_done: Vec<String>,
    /// Host → its map's members and counters, for failure messages.
    stats: BTreeMap<String, String>,
}

fn lock(w: &Mutex<World>) -> MutexGuard<'_, World> {
    w.lock().unwrap_or_else(PoisonError::into_inner)
}

const HOSTS: [&str; 4] = ["n1", "n2", "n3", "n4"];

fn map_config() -> MapConfig {
    MapConfig {
        anti_entropy_interval: Duration::from_millis(500),
        rpc_timeout: Duration::from_millis(1000),
        state_transfer_timeout: Duration::from_secs(10),
        ..MapConfig::default()
    }
}

pub(crate) fn sim_clock() -> cohort_maps::Clock {
    Arc::new(|| {
        SIM_EPOCH_MS
            + u64::try_from(turmoil::sim_elapsed().unwrap_or_default().as_millis()).unwrap_or(0)
    })
}

/// A channel with multicast membership on the simulated host `name` (the state layer's
/// simulations share it).
pub(crate) async fn sim_channel(
    name: &str,
    rng: &mut rand::rngs::StdRng,
) -> Result<cohort_channel::ChannelHandle, Box<dyn std::error::Error>> {
    let ip = turmoil::lookup(name);
    Ok(GroupChannel::builder()
        .transport(TransportConfig {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 4000,
            send_timeout: Duration::from_millis(1000),
            connect_timeout: Duration::from_millis(500),
            ..TransportConfig::default()
        })
        .local(LocalMemberConfig {
            name: Some(name.into()),
            data_addr: Some(SocketAddr::new(ip, 4000)),
            ..LocalMemberConfig::default()
        })
        .membership(MembershipSetup {
            config: MembershipConfig {
                cluster: "state-sim".into(),
                frequency: Duration::from_millis(200),
                drop_time: Duration::from_millis(1500),
                ..MembershipConfig::default()
            },
            // A data port of its own: turmoil lets one socket bind a port (no SO_REUSEADDR),
            // so the transport's multicast path cannot share the beacon port here.
            multicast: Some(MulticastConfig {
                data_port: Some(MulticastConfig::default().port + 1),
                ..MulticastConfig::default()
            }),
            static_members: None,
            dns: None,
        })
        .services(Services::DEFAULT)
        .start_with(TurmoilNet::new(name), rng)
        .await?)
}

pub(crate) fn name_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Adds a host that runs a channel and a map of flavour `F`, writing at random until told to
/// be quiet, publishing what it holds.
fn host<F: Flavor>(
    sim: &mut turmoil::Sim<'static>,
    name: &'static str,
    seed: u64,
    world: Arc<Mutex<World>>,
    lazy: bool,
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
            let mut rng =
                rand::rngs::StdRng::seed_from_u64(seed ^ name_seed(name) ^ inc.rotate_left(32));
            let channel = sim_channel(name, &mut rng).await?;
            // Let the view fill before joining the map.
            tokio::time::sleep(Duration::from_millis(800)).await;
            let mut map = None;
            for _ in 0..5 {
                match Map::<String, String, Postcard, F>::builder(&channel, "sim")
                    .config(map_config())
                    .clock(sim_clock())
                    .start()
                    .await
                {
                    Ok(m) => {
                        map = Some(m);
                        break;
                    }
                    Err(e) => {
                        lock(&world).start_errors.push(format!("{name}#{inc}: {e}"));
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            let Some(map) = map else {
                return Ok(());
            };
            let mut i = 0u64;
            loop {
                let quiet = lock(&world).quiet;
                if quiet {
                    if lazy && !lock(&world).reads_done.iter().any(|h| h == name) {
                        // Every acknowledged write must be readable from here.
                        let acked = lock(&world).acked.clone();
                        let mut bad = Vec::new();
                        for (k, v) in acked {
                            match map.get(&k).await {
                                Ok(Some(got)) if got == v => {}
                                other => bad.push(format!("{name}: {k} -> {other:?}")),
                            }
                        }
                        let mut w = lock(&world);
                        w.unreadable.extend(bad);
                        w.reads_done.push(name.into());
                    }
                } else {
                    i += 1;
                    let (key, value) = if lazy {
                        (format!("{name}-{inc}-{i}"), format!("v{i}"))
                    } else {
                        (
                            format!("k{}", rng.gen_range(0..20)),
                            format!("{name}-{inc}-{i}"),
                        )
                    };
                    let mode = if lazy || rng.gen_bool(0.3) {
                        WriteMode::SyncAck
                    } else {
                        WriteMode::Async
                    };
                    let result = if !lazy && rng.gen_bool(0.15) {
                        map.remove_with(&key, mode).await.map(|_| ())
                    } else {
                        map.put_with(key.clone(), value.clone(), mode).await
                    };
                    let mut w = lock(&world);
                    w.writes += 1;
                    match result {
                        Ok(()) if lazy => {
                            w.acked.insert(key, value);
                        }
                        Ok(()) => {}
                        Err(_) => w.failed_writes += 1,
                    }
                }
                if let (Ok(m), Ok(s)) = (map.members().await, map.stats().await) {
                    let names: Vec<String> = m.iter().map(|m| m.name.clone()).collect();
                    lock(&world).stats.insert(
                        name.into(),
                        format!(
                            "view {} map {names:?} {s:?} channel {:?}",
                            channel.members().len(),
                            channel.stats()
                        ),
                    );
                }
                if let Ok(entries) = map.entries().await {
                    lock(&world)
                        .held
                        .insert(name.into(), (inc, entries.into_iter().collect()));
                }
                let pause = rng.gen_range(20..120);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
    });
}

pub(crate) fn sim(seed: u64) -> turmoil::Sim<'static> {
    turmoil::Builder::new()
        .rng_seed(seed)
        .tick_duration(Duration::from_millis(1))
        .simulation_duration(Duration::from_secs(600))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(10))
        .build()
}

pub(crate) fn run_for(
    sim: &mut turmoil::Sim<'static>,
    d: Duration,
    seed: u64,
) -> Result<(), String> {
    let end = sim.elapsed() + d;
    while sim.elapsed() < end {
        sim.step()
            .map_err(|e| format!("simulation failed (seed {seed}): {e}"))?;
    }
    Ok(())
}

fn crash(sim: &mut turmoil::Sim<'static>, world: &Mutex<World>, host: &str) {
    sim.crash(host);
    lock(world).held.remove(host);
}

fn cut(sim: &mut turmoil::Sim<'static>, a: &[&str], b: &[&str], on: bool) {
    for x in a {
        for y in b {
            if on {
                sim.partition(*x, *y);
            } else {
                sim.repair(*x, *y);
            }
        }
    }
}

fn replicated(seed: u64) -> Result<(), String> {
    let mut sim = sim(seed);
    let world = Arc::new(Mutex::new(World::default()));
    for h in HOSTS {
        host::<cohort_maps::All>(&mut sim, h, seed, world.clone(), false);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut faults = Vec::new();
    run_for(&mut sim, Duration::from_secs(3), seed)?;
    // A split down the middle, longer than the drop time: both sides write the same keys.
    let split = if rng.gen_bool(0.5) { 1 } else { 2 };
    let (a, b) = HOSTS.split_at(split);
    cut(&mut sim, a, b, true);
    faults.push(format!("partition {a:?}|{b:?} 3s"));
    run_for(&mut sim, Duration::from_secs(3), seed)?;
    cut(&mut sim, a, b, false);
    run_for(&mut sim, Duration::from_secs(2), seed)?;
    // A crash, and a restart (a new member that must transfer the state).
    let victim = HOSTS[rng.gen_range(0..HOSTS.len())];
    crash(&mut sim, &world, victim);
    faults.push(format!("crash {victim}"));
    run_for(&mut sim, Duration::from_secs(2), seed)?;
    sim.bounce(victim);
    faults.push(format!("restart {victim}"));
    run_for(&mut sim, Duration::from_secs(3), seed)?;
    // A short cut of one member, shorter than the drop time (messages lost, no view change).
    let lone = HOSTS[rng.gen_range(0..HOSTS.len())];
    let others: Vec<&str> = HOSTS.iter().copied().filter(|h| *h != lone).collect();
    cut(&mut sim, &[lone], &others, true);
    faults.push(format!("cut {lone} 1s"));
    run_for(&mut sim, Duration::from_secs(1), seed)?;
    cut(&mut sim, &[lone], &others, false);
    run_for(&mut sim, Duration::from_secs(1), seed)?;
    lock(&world).quiet = true;
    // Quiescence: every live member holds the same entries.
    let started = sim.elapsed();
    loop {
        {
            let w = lock(&world);
            let maps: Vec<&BTreeMap<String, String>> = w.held.values().map(|(_, m)| m).collect();
            if maps.len() == HOSTS.len()
                && maps.windows(2).all(|p| p[0] == p[1])
                && !maps[0].is_empty()
            {
                if w.writes < 50 {
                    return Err(format!("only {} writes (seed {seed})", w.writes));
                }
                return Ok(());
            }
        }
        if sim.elapsed() - started > Duration::from_secs(30) {
            let w = lock(&world);
            let sizes: Vec<String> = w
                .held
                .iter()
                .map(|(h, (i, m))| format!("{h}#{i}: {} entries", m.len()))
                .collect();
            return Err(format!(
                "no convergence 30 s after the faults {faults:?} (seed {seed}): {sizes:?}; start errors {:?}; {:#?}",
                w.start_errors, w.stats
            ));
        }
        sim.step()
            .map_err(|e| format!("simulation failed (seed {seed}): {e}"))?;
    }
}

fn lazy(seed: u64) -> Result<(), String> {
    let mut sim = sim(seed);
    let world = Arc::new(Mutex::new(World::default()));
    for h in HOSTS {
        host::<cohort_maps::Lazy>(&mut sim, h, seed, world.clone(), true);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut faults = Vec::new();
    run_for(&mut sim, Duration::from_secs(3), seed)?;
    // Crash one member at a time (backup_count = 1), restarting it after the others had time
    // to see it gone and restore copies.
    for _ in 0..3 {
        let victim = HOSTS[rng.gen_range(0..HOSTS.len())];
        crash(&mut sim, &world, victim);
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
            if w.reads_done.len() == HOSTS.len() {
                if !w.unreadable.is_empty() {
                    let holders: Vec<String> = w
                        .unreadable
                        .iter()
                        .take(10)
                        .map(|line| {
                            let key = line.split(' ').nth(1).unwrap_or_default();
                            let on: Vec<&String> = w
                                .held
                                .iter()
                                .filter(|(_, (_, m))| m.contains_key(key))
                                .map(|(h, _)| h)
                                .collect();
                            format!("{line} (held by {on:?})")
                        })
                        .collect();
                    return Err(format!(
                        "acknowledged writes unreadable after {faults:?} (seed {seed}): {holders:?}; {:#?}",
                        w.stats
                    ));
                }
                if w.acked.len() < 50 {
                    return Err(format!(
                        "only {} acknowledged writes (seed {seed})",
                        w.acked.len()
                    ));
                }
                return Ok(());
            }
        }
        if sim.elapsed() - started > Duration::from_secs(60) {
            let w = lock(&world);
            return Err(format!(
                "reads did not finish (seed {seed}): done {:?}; start errors {:?}",
                w.reads_done, w.start_errors
            ));
        }
        sim.step()
            .map_err(|e| format!("simulation failed (seed {seed}): {e}"))?;
    }
}

#[test]
fn replicated_maps_converge_after_partitions_crashes_and_restarts() {
    run_seeded(
        "replicated_maps_converge_after_partitions_crashes_and_restarts",
        replicated,
    );
}

#[test]
fn lazy_maps_lose_no_sync_acknowledged_write_to_one_crash_at_a_time() {
    run_seeded(
        "lazy_maps_lose_no_sync_acknowledged_write_to_one_crash_at_a_time",
        lazy,
    );
}
