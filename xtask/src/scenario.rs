//! `cargo xtask scenario NAME | all`: real `cohort` processes on loopback (or in network
//! namespaces), real faults (SIGKILL, SIGSTOP/SIGCONT, SIGTERM, restarts, a cut link). Each
//! scenario asserts what must hold and prints one line:
//! `SCENARIO <name> PASS <figures>` (or `FAIL <why>`, or `SKIP <why>`).
//!
//! Every scenario runs its own cluster name on its own multicast port, so scenarios, tests and
//! a `cluster up` on the same host do not meet. Files go to `target/cohort-scenarios/<name>/`.

// A command-line tool: the summary lines are its output.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::harness::{self, NodeProc, Spawn, ms_between, now_us};
use crate::netns;

/// Every scenario, in the order `all` runs them.
pub(crate) const ALL: &[&str] = &[
    "discovery",
    "crash",
    "pause",
    "lead-failover",
    "graceful-leave",
    "messaging",
    "foreign-cluster",
    "partition",
    "session-delta",
    "session-backup",
    "deploy",
    "rolling-upgrade",
];

/// Membership defaults the scenarios run with (the node's defaults).
const DROP_TIME: Duration = Duration::from_millis(3000);
/// The failure detector's default read-test timeout (expiry probes wait for it).
const READ_TEST: Duration = Duration::from_millis(5000);
/// Deadline for views to converge.
const VIEW_TIMEOUT: Duration = Duration::from_secs(20);
/// Deadline for a failure to be noticed: drop time, read test, and slack.
const DETECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A session scenario: counter apps on this scenario's cluster (crate::session).
fn session(ctx: &Ctx, manager: &str) -> Result<Outcome> {
    let exe = crate::session::build_counter()?;
    let config = ctx.config("", "");
    crate::session::scenario(&exe, &ctx.dir, &config, manager).map(Outcome::Pass)
}

/// What a scenario reports: a pass with figures, or a skip with the reason.
enum Outcome {
    Pass(String),
    Skip(String),
}

/// Entry point: `args` follow `scenario`.
pub(crate) fn run(args: &[String]) -> Result<()> {
    let names: Vec<&str> = match args.first().map(String::as_str) {
        Some("all") => ALL.to_vec(),
        Some(name) if ALL.contains(&name) => vec![name],
        _ => bail!(
            "usage: cargo xtask scenario NAME|all\n  scenarios: {}",
            ALL.join(", ")
        ),
    };
    let exe = harness::build_cohort(false)?;
    let mut failed = Vec::new();
    for name in names {
        let started = Instant::now();
        let dir = harness::target_dir().join("cohort-scenarios").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let mut ctx = Ctx::new(exe.clone(), dir, name)?;
        eprintln!("== scenario {name}");
        let result = match name {
            "discovery" => discovery(&mut ctx),
            "crash" => crash(&mut ctx),
            "pause" => pause(&mut ctx),
            "lead-failover" => lead_failover(&mut ctx),
            "graceful-leave" => graceful_leave(&mut ctx),
            "messaging" => messaging(&mut ctx),
            "foreign-cluster" => foreign_cluster(&mut ctx),
            "partition" => partition(&mut ctx),
            "session-delta" => session(&ctx, "delta"),
            "session-backup" => session(&ctx, "backup"),
            "deploy" => crate::deploy::scenario(&ctx.exe, &ctx.dir).map(Outcome::Pass),
            "rolling-upgrade" => {
                crate::upgrade::scenario(&ctx.dir, &ctx.cluster).map(Outcome::Pass)
            }
            _ => unreachable!("checked above"),
        };
        let secs = started.elapsed().as_secs_f64();
        match result {
            Ok(Outcome::Pass(figures)) => {
                println!("SCENARIO {name} PASS {figures} secs={secs:.1}");
            }
            Ok(Outcome::Skip(why)) => println!("SCENARIO {name} SKIP {why}"),
            Err(e) => {
                println!("SCENARIO {name} FAIL {e:#}");
                println!("  (files: {})", ctx.dir.display());
                failed.push(name);
            }
        }
    }
    if !failed.is_empty() {
        bail!("scenarios failed: {}", failed.join(", "));
    }
    Ok(())
}

/// One scenario's environment: binary, directory, cluster name and multicast port.
struct Ctx {
    exe: PathBuf,
    dir: PathBuf,
    cluster: String,
    mcast_port: u16,
}

impl Ctx {
    fn new(exe: PathBuf, dir: PathBuf, name: &str) -> Result<Self> {
        Ok(Self {
            exe,
            dir,
            cluster: format!("scenario-{name}-{}", std::process::id()),
            mcast_port: harness::free_udp_port()?,
        })
    }

    /// A node configuration on the node's defaults, in this scenario's cluster. `top` goes
    /// before the first table (e.g. `interceptor = []`), `extra` after the others.
    fn config(&self, top: &str, extra: &str) -> String {
        format!(
            "{top}\n[membership]\ncluster = \"{}\"\n\n[membership.multicast]\nport = {}\n\n\
             [transport]\nport = 0\n\n[admin]\nport = 0\n\n{extra}\n",
            self.cluster, self.mcast_port
        )
    }

    fn start(&self, name: &str, config: &str, args: &[&str]) -> Result<NodeProc> {
        NodeProc::start(&Spawn {
            exe: &self.exe,
            name,
            config,
            dir: &self.dir,
            args,
            command: &["node"],
            netns: None,
        })
    }

    /// Starts `n` nodes one after another (distinct start times, so age order is name order).
    fn start_many(&self, n: usize, config: &str, args: &[&str]) -> Result<Vec<NodeProc>> {
        let mut nodes = Vec::new();
        for i in 1..=n {
            nodes.push(self.start(&format!("n{i}"), config, args)?);
            // Start times are in ms: keep them apart so that age order is start order.
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(nodes)
    }
}

/// The ids of `nodes`.
fn ids(nodes: &[NodeProc]) -> Vec<String> {
    nodes.iter().map(|n| n.id().to_owned()).collect()
}

/// Waits until every node's view is every other node; returns when each view completed.
fn wait_full_view(nodes: &mut [NodeProc]) -> Result<Vec<u64>> {
    let all = ids(nodes);
    let mut done = Vec::new();
    for n in nodes.iter_mut() {
        let me = n.id().to_owned();
        let others: Vec<&str> = all
            .iter()
            .map(String::as_str)
            .filter(|id| *id != me)
            .collect();
        done.push(n.wait_view(&others, VIEW_TIMEOUT)?);
    }
    Ok(done)
}

fn join_ms(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.1}"))
        .collect::<Vec<_>>()
        .join("/")
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

/// Five nodes find each other by multicast; every node sees the other four, in its events and
/// in `status`.
fn discovery(ctx: &mut Ctx) -> Result<Outcome> {
    let first = now_us();
    let config = ctx.config("", "");
    let mut nodes = ctx.start_many(5, &config, &[])?;
    let last_ready = nodes
        .iter()
        .filter_map(|n| n.ready["time_us"].as_u64())
        .max()
        .context("ready lines carry time_us")?;
    let done = wait_full_view(&mut nodes)?;
    let complete = done.iter().copied().max().unwrap_or(last_ready);
    for n in &nodes {
        let status = n.admin("status")?;
        let seen = status["members"].as_array().map_or(0, Vec::len);
        ensure!(seen == 5, "{}: status lists {seen} members, not 5", n.name);
    }
    Ok(Outcome::Pass(format!(
        "nodes=5 full_view_after_last_ready_ms={:.1} full_view_from_first_start_ms={:.1}",
        ms_between(last_ready, complete),
        ms_between(first, complete)
    )))
}

/// SIGKILL one of five: every survivor reports it, with the failure detector (by evidence)
/// and without it (by the drop time).
fn crash(ctx: &mut Ctx) -> Result<Outcome> {
    let mut figures = Vec::new();
    let base = ctx.cluster.clone();
    for (label, top, reason) in [
        ("with_detector", "", "failed"),
        ("without_detector", "interceptor = []", "expired"),
    ] {
        ctx.cluster = format!("{base}-{label}");
        let config = ctx.config(top, "");
        let mut nodes = ctx.start_many(5, &config, &[])?;
        for n in &mut nodes {
            n.name = format!("{label}-{}", n.name);
        }
        wait_full_view(&mut nodes)?;
        let mut victim = nodes.pop().context("five nodes")?;
        let marks: Vec<usize> = nodes
            .iter_mut()
            .map(NodeProc::mark)
            .collect::<Result<_>>()?;
        let killed = now_us();
        victim.signal("KILL")?;
        let mut detect = Vec::new();
        for (n, mark) in nodes.iter_mut().zip(marks) {
            let ev = n.wait_gone(mark, victim.id(), DETECT_TIMEOUT)?;
            ensure!(
                ev["reason"] == reason,
                "{}: dropped the killed node as {}, expected {reason}: {ev}",
                n.name,
                ev["reason"]
            );
            detect.push(ms_between(killed, ev["time_us"].as_u64().unwrap_or(0)));
        }
        if label == "without_detector" {
            // Without evidence only silence counts: never before the drop time.
            ensure!(
                detect
                    .iter()
                    .all(|&ms| ms + 50.0 >= DROP_TIME.as_secs_f64() * 1000.0 - 1000.0),
                "dropped sooner than silence allows: {detect:?}"
            );
        }
        victim.kill();
        figures.push(format!(
            "{label}_ms={} {label}_max_ms={:.1}",
            join_ms(&detect),
            max(&detect)
        ));
    }
    Ok(Outcome::Pass(figures.join(" ")))
}

/// SIGSTOP one of three past the drop time: the others drop it; SIGCONT: it rejoins and the
/// views converge.
fn pause(ctx: &mut Ctx) -> Result<Outcome> {
    let config = ctx.config("", "");
    let mut nodes = ctx.start_many(3, &config, &[])?;
    wait_full_view(&mut nodes)?;
    let victim_id = nodes[2].id().to_owned();
    let marks: Vec<usize> = nodes
        .iter_mut()
        .map(NodeProc::mark)
        .collect::<Result<_>>()?;
    let stopped = now_us();
    nodes[2].signal("STOP")?;
    let mut dropped = Vec::new();
    let mut reasons = Vec::new();
    for (n, mark) in nodes[..2].iter_mut().zip(&marks) {
        let ev = n.wait_gone(*mark, &victim_id, DETECT_TIMEOUT + READ_TEST)?;
        dropped.push(ms_between(stopped, ev["time_us"].as_u64().unwrap_or(0)));
        reasons.push(ev["reason"].as_str().unwrap_or("?").to_owned());
    }
    ensure!(
        dropped
            .iter()
            .all(|&ms| ms >= DROP_TIME.as_secs_f64() * 1000.0 - 1000.0),
        "a paused node was dropped before it could have gone silent: {dropped:?} ms"
    );
    let marks: Vec<usize> = nodes
        .iter_mut()
        .map(NodeProc::mark)
        .collect::<Result<_>>()?;
    let resumed = now_us();
    nodes[2].signal("CONT")?;
    let mut rejoined = Vec::new();
    for (n, mark) in nodes[..2].iter_mut().zip(&marks) {
        let ev = n.wait_added(*mark, &victim_id, VIEW_TIMEOUT)?;
        rejoined.push(ms_between(resumed, ev["time_us"].as_u64().unwrap_or(0)));
    }
    wait_full_view(&mut nodes)?;
    Ok(Outcome::Pass(format!(
        "paused_for_ms={:.0} dropped_after_ms={} reason={} rejoined_after_cont_ms={}",
        ms_between(stopped, resumed),
        join_ms(&dropped),
        reasons.join("/"),
        join_ms(&rejoined)
    )))
}

/// The lead a node's event lines name last.
fn current_lead(n: &mut NodeProc) -> Result<Option<String>> {
    n.poll()?;
    Ok(n.events
        .iter()
        .rev()
        .find(|v| v["event"] == "lead_changed")
        .and_then(|v| v["lead"]["id"].as_str().map(str::to_owned)))
}

fn wait_lead(n: &mut NodeProc, lead: &str) -> Result<()> {
    let deadline = Instant::now() + VIEW_TIMEOUT;
    loop {
        let now = current_lead(n)?;
        if now.as_deref() == Some(lead) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{}: lead is {now:?}, expected {lead}\n{}",
            n.name,
            n.tail()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Exactly one member is lead in every node's `status`, and it is `lead`.
fn check_one_lead(nodes: &[NodeProc], lead: &str) -> Result<()> {
    for n in nodes {
        let status = n.admin("status")?;
        let leads: Vec<&str> = status["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["lead"] == true)
            .filter_map(|m| m["id"].as_str())
            .collect();
        ensure!(
            leads == [lead],
            "{}: status names {leads:?} as lead, expected exactly {lead}",
            n.name
        );
    }
    Ok(())
}

/// Kill the lead (the oldest): the next oldest becomes lead on every node, exactly one.
fn lead_failover(ctx: &mut Ctx) -> Result<Outcome> {
    let config = ctx.config("", "");
    let mut nodes = ctx.start_many(5, &config, &[])?;
    wait_full_view(&mut nodes)?;
    let mut by_age: Vec<(u64, String)> = nodes
        .iter()
        .map(|n| {
            (
                n.ready["start_time_ms"].as_u64().unwrap_or(0),
                n.id().to_owned(),
            )
        })
        .collect();
    by_age.sort();
    let (oldest, next) = (by_age[0].1.clone(), by_age[1].1.clone());
    ensure!(
        oldest == nodes[0].id(),
        "the first node started is not the oldest"
    );
    for n in &mut nodes {
        wait_lead(n, &oldest)?;
    }
    check_one_lead(&nodes, &oldest)?;
    let mut lead = nodes.remove(0);
    let marks: Vec<usize> = nodes
        .iter_mut()
        .map(NodeProc::mark)
        .collect::<Result<_>>()?;
    let killed = now_us();
    lead.signal("KILL")?;
    let mut failover = Vec::new();
    for (n, mark) in nodes.iter_mut().zip(marks) {
        let ev = n.wait(mark, "lead_changed", DETECT_TIMEOUT, |v| {
            v["event"] == "lead_changed" && v["lead"]["id"].as_str().is_some()
        })?;
        ensure!(
            ev["lead"]["id"] == next.as_str(),
            "{}: new lead {} is not the next oldest {next}",
            n.name,
            ev["lead"]["id"]
        );
        failover.push(ms_between(killed, ev["time_us"].as_u64().unwrap_or(0)));
    }
    wait_full_view(&mut nodes)?;
    for n in &mut nodes {
        wait_lead(n, &next)?;
    }
    check_one_lead(&nodes, &next)?;
    lead.kill();
    Ok(Outcome::Pass(format!(
        "failover_ms={} failover_max_ms={:.1} leads_after=1",
        join_ms(&failover),
        max(&failover)
    )))
}

/// SIGTERM one of four: it exits 0, and the others drop it at once (a shutdown beacon), not
/// after the drop time.
fn graceful_leave(ctx: &mut Ctx) -> Result<Outcome> {
    let config = ctx.config("", "");
    let mut nodes = ctx.start_many(4, &config, &[])?;
    wait_full_view(&mut nodes)?;
    let mut leaver = nodes.pop().context("four nodes")?;
    let marks: Vec<usize> = nodes
        .iter_mut()
        .map(NodeProc::mark)
        .collect::<Result<_>>()?;
    let termed = now_us();
    leaver.signal("TERM")?;
    let mut gone = Vec::new();
    for (n, mark) in nodes.iter_mut().zip(marks) {
        let ev = n.wait_gone(mark, leaver.id(), DETECT_TIMEOUT)?;
        ensure!(
            ev["reason"] == "shutdown",
            "{}: dropped the leaver as {}, not shutdown: {ev}",
            n.name,
            ev["reason"]
        );
        gone.push(ms_between(termed, ev["time_us"].as_u64().unwrap_or(0)));
    }
    // The reason above already says "by the notice"; the bound says "well before expiry",
    // with room for a loaded runner.
    let limit = DROP_TIME.as_secs_f64() * 1000.0 * 2.0 / 3.0;
    ensure!(
        max(&gone) < limit,
        "the leaver was dropped after {gone:?} ms: not at once (limit {limit} ms)"
    );
    let status = leaver.wait_exit(harness::EXIT_TIMEOUT)?;
    ensure!(status.success(), "the leaver exited with {status}");
    ensure!(
        leaver.events.iter().any(|v| v["event"] == "stopped"),
        "the leaver wrote no stopped line"
    );
    Ok(Outcome::Pass(format!(
        "dropped_after_ms={} max_ms={:.1} exit=0",
        join_ms(&gone),
        max(&gone)
    )))
}

/// Traffic seen by one receiving process: per (sender, mode), the sequence numbers in arrival
/// order.
fn received(n: &NodeProc) -> HashMap<(String, String), Vec<u64>> {
    let mut out: HashMap<(String, String), Vec<u64>> = HashMap::new();
    for v in n.events.iter().filter(|v| v["event"] == "message") {
        let mut words = v["payload"].as_str().unwrap_or_default().split(' ');
        if words.next() != Some("traffic") {
            continue;
        }
        let (Some(mode), Some(seq)) = (words.next(), words.next().and_then(|s| s.parse().ok()))
        else {
            continue;
        };
        out.entry((
            v["from"].as_str().unwrap_or("?").to_owned(),
            mode.to_owned(),
        ))
        .or_default()
        .push(seq);
    }
    out
}

/// Steady ASYNC and USE_ACK traffic among three nodes while one is killed and restarted: no
/// duplicates, each sender's order kept per mode, every acknowledged message delivered.
fn messaging(ctx: &mut Ctx) -> Result<Outcome> {
    const RATE: &str = "200";
    let run = Duration::from_secs(2);
    let config = ctx.config("", "");
    let args = ["--traffic", RATE, "--print-messages"];
    let mut nodes = ctx.start_many(3, &config, &args)?;
    wait_full_view(&mut nodes)?;
    std::thread::sleep(run);
    // Kill n3 and wait until the others dropped it.
    let mut dead = nodes.pop().context("three nodes")?;
    let marks: Vec<usize> = nodes
        .iter_mut()
        .map(NodeProc::mark)
        .collect::<Result<_>>()?;
    dead.signal("KILL")?;
    dead.kill();
    for (n, mark) in nodes.iter_mut().zip(marks) {
        n.wait_gone(mark, dead.id(), DETECT_TIMEOUT)?;
    }
    std::thread::sleep(run / 2);
    nodes.push(ctx.start("n3-restarted", &config, &args)?);
    wait_full_view(&mut nodes)?;
    std::thread::sleep(run);
    // Stop sending everywhere; each answer comes once its receipts are settled.
    let mut sent = Vec::new();
    for n in &nodes {
        let counts = n.admin("traffic stop")?;
        ensure!(counts.get("error").is_none(), "{}: {counts}", n.name);
        sent.push(counts);
    }
    // Every receiver's checks: order and duplicates at once, deliveries within a deadline.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (acked, delivered, async_msgs) = loop {
        for n in &mut nodes {
            n.poll()?;
        }
        let mut by_receiver: HashMap<String, HashMap<(String, String), Vec<u64>>> = HashMap::new();
        for n in nodes.iter().chain(std::iter::once(&dead)) {
            let got = received(n);
            for ((from, mode), seqs) in &got {
                if let Some(w) = seqs.windows(2).find(|w| w[1] <= w[0]) {
                    bail!(
                        "{} got {mode} messages of {from} out of order or twice: {} then {}",
                        n.name,
                        w[0],
                        w[1]
                    );
                }
            }
            by_receiver.insert(n.id().to_owned(), got);
        }
        // Every acknowledged message reached a receiver that lived on (the killed process
        // acknowledged on receipt and may have died before its listener ran: USE_ACK promises
        // receipt, not processing).
        let mut missing = Vec::new();
        let mut acked = 0;
        for sender in &nodes {
            for v in sender
                .events
                .iter()
                .filter(|v| v["event"] == "traffic_acked")
            {
                let seq = v["seq"].as_u64().unwrap_or(u64::MAX);
                for to in v["to"].as_array().into_iter().flatten() {
                    let to = to.as_str().unwrap_or_default();
                    if to == dead.id() {
                        continue;
                    }
                    acked += 1;
                    let got = by_receiver
                        .get(to)
                        .and_then(|r| r.get(&(sender.id().to_owned(), "ack".to_owned())));
                    if got.is_none_or(|s| s.binary_search(&seq).is_err()) {
                        missing.push(format!("{} ack {seq} -> {to}", sender.name));
                    }
                }
            }
        }
        let (mut delivered, mut async_msgs) = (0, 0);
        for n in &nodes {
            for ((_, mode), seqs) in &by_receiver[n.id()] {
                if mode == "ack" {
                    delivered += seqs.len();
                } else {
                    async_msgs += seqs.len();
                }
            }
        }
        if missing.is_empty() {
            break (acked, delivered, async_msgs);
        }
        ensure!(
            Instant::now() < deadline,
            "{} acknowledged messages never delivered, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // The traffic flowed between every pair of processes that lived on.
    for n in &nodes {
        let got = received(n);
        for s in nodes.iter().filter(|s| s.id() != n.id()) {
            for mode in ["async", "ack"] {
                let k = got
                    .get(&(s.id().to_owned(), mode.to_owned()))
                    .map_or(0, Vec::len);
                ensure!(
                    k >= 100,
                    "{} got only {k} {mode} messages from {}",
                    n.name,
                    s.name
                );
            }
        }
    }
    Ok(Outcome::Pass(format!(
        "acked_checked={acked} ack_delivered={delivered} async_delivered={async_msgs} \
         duplicates=0 reordered=0 lost_acked=0 senders={}",
        sent.len()
    )))
}

/// Nodes of another cluster, and nodes with a wrong key, on the same multicast group: they
/// never join, and the cluster never notices them (but counts their beacons).
fn foreign_cluster(ctx: &mut Ctx) -> Result<Outcome> {
    let window = DROP_TIME + Duration::from_secs(1);
    let key = "[node]\nkeys = [\"scenario key of the real cluster\"]\n";
    let config = ctx.config("", key);
    let mut nodes = ctx.start_many(3, &config, &[])?;
    wait_full_view(&mut nodes)?;
    let marks: Vec<usize> = nodes
        .iter_mut()
        .map(NodeProc::mark)
        .collect::<Result<_>>()?;
    let real = ctx.cluster.clone();
    ctx.cluster = format!("{real}-other");
    let other_name = ctx.config("", key);
    ctx.cluster = real;
    let wrong_key = ctx.config("", "[node]\nkeys = [\"a key nobody else has\"]\n");
    let mut foreign = vec![
        ctx.start("other-cluster", &other_name, &[])?,
        ctx.start("wrong-key", &wrong_key, &[])?,
    ];
    std::thread::sleep(window);
    for (n, mark) in nodes.iter_mut().zip(&marks) {
        n.poll()?;
        if let Some(ev) = n.events[*mark..].iter().find(|v| {
            matches!(
                v["event"].as_str(),
                Some("member_added" | "member_disappeared" | "lead_changed")
            )
        }) {
            bail!("{} was disturbed: {ev}", n.name);
        }
        let status = n.admin("status")?;
        ensure!(
            status["members"].as_array().map_or(0, Vec::len) == 3,
            "{}: view changed: {status}",
            n.name
        );
    }
    for f in &mut foreign {
        f.poll()?;
        if let Some(ev) = f.events.iter().find(|v| v["event"] == "member_added") {
            bail!("{} joined somebody: {ev}", f.name);
        }
    }
    // Their beacons did arrive, and were refused for the right reason.
    let (mut foreign_cluster, mut unauthenticated) = (0, 0);
    for n in &nodes {
        let m = &n.admin("stats")?["membership"];
        foreign_cluster += m["foreign_cluster"].as_u64().unwrap_or(0);
        unauthenticated += m["unauthenticated"].as_u64().unwrap_or(0);
    }
    ensure!(
        foreign_cluster > 0 && unauthenticated > 0,
        "the foreign beacons never arrived (foreign_cluster {foreign_cluster}, unauthenticated {unauthenticated}): the scenario proves nothing"
    );
    Ok(Outcome::Pass(format!(
        "window_ms={} foreign_cluster_beacons_refused={foreign_cluster} \
         unauthenticated_beacons_refused={unauthenticated} view_changes=0",
        window.as_millis()
    )))
}

/// Three nodes in network namespaces on one bridge, found by multicast; one node's port is
/// taken off the bridge (both sides see the split), then put back (the views converge).
fn partition(ctx: &mut Ctx) -> Result<Outcome> {
    let net = match netns::Lab::create(3) {
        Ok(net) => net,
        Err(netns::Unavailable(why)) => return Ok(Outcome::Skip(why)),
    };
    let mut nodes = Vec::new();
    for i in 0..3 {
        let ip = net.ip(i);
        let config = format!(
            "[membership]\ncluster = \"{}\"\n\n[membership.multicast]\nport = {}\ninterface = \"{ip}\"\n\n\
             [transport]\nbind = \"{ip}\"\nport = 0\n\n[admin]\nenabled = false\n",
            ctx.cluster, ctx.mcast_port
        );
        nodes.push(NodeProc::start(&Spawn {
            exe: &ctx.exe,
            name: &format!("n{}", i + 1),
            config: &config,
            dir: &ctx.dir,
            args: &[],
            command: &["node"],
            netns: Some(net.node_ns(i)),
        })?);
    }
    let converged = wait_full_view(&mut nodes)?;
    let first = nodes
        .iter()
        .filter_map(|n| n.ready["time_us"].as_u64())
        .min()
        .unwrap_or(0);
    let discovery_ms = ms_between(first, converged.iter().copied().max().unwrap_or(first));
    let all = ids(&nodes);
    let marks: Vec<usize> = nodes
        .iter_mut()
        .map(NodeProc::mark)
        .collect::<Result<_>>()?;
    let cut = now_us();
    net.cut(2)?;
    let mut split = Vec::new();
    for (i, (n, mark)) in nodes.iter_mut().zip(&marks).enumerate() {
        let gone: Vec<&String> = if i == 2 {
            all[..2].iter().collect()
        } else {
            vec![&all[2]]
        };
        for id in gone {
            let ev = n.wait_gone(*mark, id, DETECT_TIMEOUT + READ_TEST)?;
            split.push(ms_between(cut, ev["time_us"].as_u64().unwrap_or(0)));
        }
    }
    let restored = now_us();
    net.restore(2)?;
    let converged = wait_full_view(&mut nodes)?;
    let heal_ms = ms_between(
        restored,
        converged.iter().copied().max().unwrap_or(restored),
    );
    drop(nodes);
    drop(net);
    Ok(Outcome::Pass(format!(
        "nodes=3 multicast_discovery_ms={discovery_ms:.1} split_seen_ms={} \
         healed_ms={heal_ms:.1}",
        join_ms(&split)
    )))
}
