//! `cargo xtask scenario rolling-upgrade`: the `counter` session app of the previous release
//! point (the revision in `xtask/upgrade-base.txt`, built in its own git worktree) on three
//! members, clients counting through a load balancer, and each member replaced in turn by the
//! current build. Then a second run with `version_policy = "same"` shows the refusal of mixed
//! versions as event lines.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::harness;
use crate::session::{App, Client, start_app, wait_views};

/// Clients counting while members are replaced.
const CLIENTS: usize = 16;
/// A client's pause between two requests.
const CLIENT_PAUSE: Duration = Duration::from_millis(10);
/// Deadline for a member to be in sync, and for views and events.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The application version the current build announces in the scenario.
const NEW_VERSION: &str = "next";

/// The previous release point: the first word of `xtask/upgrade-base.txt`.
fn base_revision() -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("upgrade-base.txt");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .context("no revision in xtask/upgrade-base.txt")
}

fn git(repo: &Path) -> std::process::Command {
    let mut c = std::process::Command::new("git");
    c.arg("-C").arg(repo);
    c
}

/// Builds `cohort` and the `counter` example at `rev` in a worktree under the target
/// directory, copies both out, and rebuilds the current ones (the shared target directory
/// re-links them). Returns the old `counter`.
fn build_base(rev: &str) -> Result<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .to_owned();
    let root = harness::target_dir().join("cohort-upgrade");
    let src = root.join(format!("src-{rev}"));
    let bin = root.join(format!("bin-{rev}"));
    std::fs::create_dir_all(&root)?;
    let present = git(&repo)
        .args(["cat-file", "-e", &format!("{rev}^{{commit}}")])
        .status()?
        .success();
    ensure!(
        present,
        "the base revision {rev} is not in this clone (a shallow clone? `git fetch --unshallow`)"
    );
    if !src.join("Cargo.toml").exists() {
        let _ = std::fs::remove_dir_all(&src);
        let _ = git(&repo).args(["worktree", "prune"]).status();
        crate::run_cmd(
            git(&repo)
                .args(["worktree", "add", "--detach", "--force"])
                .arg(&src)
                .arg(rev),
        )?;
    }
    let counter = bin.join("counter");
    if !counter.exists() {
        crate::run_cmd(
            crate::cargo()
                .current_dir(&src)
                .env("CARGO_TARGET_DIR", harness::target_dir())
                .args([
                    "build",
                    "--locked",
                    "-p",
                    "cohort-node",
                    "--bin",
                    "cohort",
                    "-p",
                    "cohort-session",
                    "--example",
                    "counter",
                ]),
        )?;
        std::fs::create_dir_all(&bin)?;
        std::fs::copy(
            harness::target_dir().join("debug/cohort"),
            bin.join("cohort"),
        )?;
        std::fs::copy(
            harness::target_dir().join("debug/examples/counter"),
            &counter,
        )?;
    }
    Ok(counter)
}

/// Clients through a load balancer: each request goes to the next live member; a failed one
/// is retried on the others (a few passes, a short pause), as a load balancer retries an
/// idempotent-looking GET on connection errors and 503s. A request that fails on every member
/// is a client-visible failure.
struct Load {
    live: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(Client, u64)>>,
}

impl Load {
    fn start(live: Vec<SocketAddr>) -> Self {
        let live = Arc::new(Mutex::new(live));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..CLIENTS)
            .map(|i| {
                let (live, stop) = (live.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut c = Client::default();
                    let mut visible_failures = 0u64;
                    let mut r = i;
                    while !stop.load(Ordering::Relaxed) {
                        let members = live.lock().unwrap_or_else(PoisonError::into_inner).clone();
                        let mut ok = false;
                        for k in 0..members.len() * 3 {
                            if c.count(members[(r + k) % members.len()]).is_some() {
                                ok = true;
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        if !ok {
                            visible_failures += 1;
                        }
                        r += 1;
                        std::thread::sleep(CLIENT_PAUSE);
                    }
                    (c, visible_failures)
                })
            })
            .collect();
        Self {
            live,
            stop,
            threads,
        }
    }

    fn set_live(&self, live: Vec<SocketAddr>) {
        *self.live.lock().unwrap_or_else(PoisonError::into_inner) = live;
    }

    fn finish(self) -> Vec<(Client, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .filter_map(|t| t.join().ok())
            .collect()
    }
}

fn config(cluster: &str, mcast_port: u16, node: &str, membership: &str) -> String {
    format!(
        "{node}\n[membership]\ncluster = \"{cluster}\"\n{membership}\n\n[membership.multicast]\n\
         port = {mcast_port}\n\n[transport]\nport = 0\n\n[admin]\nport = 0\n"
    )
}

/// The lead changes each survivor reported after `marks`, as (survivor, new lead id).
fn lead_changes(apps: &mut [App], marks: &[usize]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (app, &from) in apps.iter_mut().zip(marks) {
        app.node.poll()?;
        for v in &app.node.events[from..] {
            if v["event"] == "lead_changed" {
                out.push((
                    app.node.name.clone(),
                    v["lead"]["id"].as_str().unwrap_or("?").to_owned(),
                ));
            }
        }
    }
    Ok(out)
}

/// The scenario; figures on success.
pub(crate) fn scenario(dir: &Path, cluster: &str) -> Result<String> {
    let rev = base_revision()?;
    let old_exe = build_base(&rev)?;
    // Re-link the current binaries in the shared target directory.
    let new_exe = crate::session::build_counter()?;
    harness::build_cohort(false)?;
    let mcast = harness::free_udp_port()?;
    let old_config = config(cluster, mcast, "", "");
    let new_config = config(
        cluster,
        mcast,
        &format!("[node]\napp_version = \"{NEW_VERSION}\"\n"),
        "",
    );

    // Three members of the previous release, oldest first.
    let mut apps: Vec<App> = Vec::new();
    for name in ["old1", "old2", "old3"] {
        apps.push(start_app(&old_exe, dir, name, &old_config, "delta")?);
        std::thread::sleep(Duration::from_millis(5));
    }
    wait_views(&mut apps, 2)?;
    let load = Load::start(apps.iter().map(|a| a.http).collect());
    std::thread::sleep(Duration::from_millis(500));

    let mut sync_ms = Vec::new();
    let mut handovers = 0;
    let mut negotiated: Vec<String> = Vec::new();
    for (step, new_name) in ["new1", "new2", "new3"].into_iter().enumerate() {
        // The new member: in sync once it serves (its session map is transferred before the
        // ready line) and sees every live member.
        let t = Instant::now();
        let app = start_app(&new_exe, dir, new_name, &new_config, "delta")?;
        apps.push(app);
        let ids: Vec<String> = apps.iter().map(|a| a.node.id().to_owned()).collect();
        let me = apps.len() - 1;
        for id in &ids[..me] {
            apps[me].node.wait_added(0, id, TIMEOUT)?;
        }
        sync_ms.push(t.elapsed().as_secs_f64() * 1e3);
        // What the new member speaks with each member (from its status).
        let status = apps[me].node.admin("status")?;
        for m in status["members"].as_array().into_iter().flatten() {
            if m["local"] != true {
                // Both builds speak 1..=1: every pair negotiates 1. Old members announce no
                // application version, new ones NEW_VERSION.
                let name = m["name"].as_str().unwrap_or("?");
                let want_app = if name.starts_with("new") {
                    NEW_VERSION
                } else {
                    ""
                };
                ensure!(
                    m["protocol"] == 1 && m["app_version"] == want_app,
                    "{new_name} reports {name} as {m}"
                );
                negotiated.push(format!(
                    "{}->{}:v{}({})",
                    new_name,
                    m["name"].as_str().unwrap_or("?"),
                    m["protocol"],
                    m["app_version"]
                        .as_str()
                        .filter(|v| !v.is_empty())
                        .unwrap_or("-")
                ));
            }
        }
        // The load balancer sends to the new member and drains the old one; then SIGTERM.
        let old = 0; // the oldest remaining member of the previous release: the lead
        ensure!(
            apps[old].node.name == format!("old{}", step + 1),
            "order: {}",
            apps[old].node.name
        );
        let expected_lead = apps[1].node.id().to_owned();
        let old_id = apps[old].node.id().to_owned();
        load.set_live(apps[1..].iter().map(|a| a.http).collect());
        std::thread::sleep(Duration::from_millis(200));
        let marks: Vec<usize> = apps[1..]
            .iter_mut()
            .map(|a| a.node.mark())
            .collect::<Result<_>>()?;
        harness::signal(apps[old].node.pid, "TERM")?;
        apps[old]
            .node
            .wait(0, "stopped", TIMEOUT, |v| v["event"] == "stopped")?;
        let mut gone = apps.remove(old);
        gone.node.wait_exit(TIMEOUT)?;
        for (a, &m) in apps.iter_mut().zip(&marks) {
            a.node.wait_gone(m, &old_id, TIMEOUT)?;
        }
        // Settle: a second hand-over would show within a beacon period or two.
        std::thread::sleep(Duration::from_millis(1500));
        let changes = lead_changes(&mut apps, &marks)?;
        ensure!(
            changes.len() == apps.len() && changes.iter().all(|(_, l)| *l == expected_lead),
            "restart {}: expected one hand-over to {expected_lead} on each of {} members, saw {changes:?}",
            step + 1,
            apps.len()
        );
        handovers += 1;
    }
    std::thread::sleep(Duration::from_millis(500));
    let clients = load.finish();
    ensure!(clients.len() == CLIENTS, "a client thread panicked");
    let requests: u64 = clients.iter().map(|(c, _)| c.last).sum();
    let lost: u64 = clients.iter().map(|(c, _)| c.lost).sum();
    let visible: u64 = clients.iter().map(|(_, v)| v).sum();
    let retried: u64 = clients.iter().map(|(c, _)| c.failed).sum();
    let unanswered: u64 = clients.iter().map(|(c, _)| c.unanswered).sum();
    for app in &mut apps {
        harness::signal(app.node.pid, "TERM")?;
        app.node
            .wait(0, "stopped", TIMEOUT, |v| v["event"] == "stopped")?;
    }
    ensure!(lost == 0, "{lost} answered increments lost");
    ensure!(
        visible == 0,
        "{visible} client requests failed on every member"
    );
    ensure!(requests > 0, "no request counted");
    negotiated.sort();
    negotiated.dedup();
    let sync: Vec<String> = sync_ms.iter().map(|ms| format!("{ms:.0}")).collect();

    let same = same_policy(dir, cluster, &old_exe, &new_exe)?;
    Ok(format!(
        "base={} clients={CLIENTS} increments={requests} lost_increments={lost} client_failures={visible} retried_attempts={retried} applied_unanswered={unanswered} sync_ms={} lead_handovers={handovers} negotiated={} {same}",
        &rev[..rev.len().min(12)],
        sync.join(","),
        negotiated.join(",")
    ))
}

/// Two members of the previous release and two of the current one under `version_policy =
/// "same"`: each current member refuses both old ones (reported as `member_refused` lines)
/// and takes the other current one.
fn same_policy(dir: &Path, cluster: &str, old_exe: &Path, new_exe: &Path) -> Result<String> {
    let cluster = format!("{cluster}-same");
    let mcast = harness::free_udp_port()?;
    let old_config = config(&cluster, mcast, "", "");
    let new_config = config(
        &cluster,
        mcast,
        &format!("[node]\napp_version = \"{NEW_VERSION}\"\n"),
        "version_policy = \"same\"",
    );
    let mut old = Vec::new();
    for name in ["same-old1", "same-old2"] {
        old.push(start_app(old_exe, dir, name, &old_config, "delta")?);
    }
    wait_views(&mut old, 1)?;
    let mut new = Vec::new();
    for name in ["same-new1", "same-new2"] {
        new.push(start_app(new_exe, dir, name, &new_config, "delta")?);
    }
    let old_ids: Vec<String> = old.iter().map(|a| a.node.id().to_owned()).collect();
    let mut refusals = 0;
    for n in &mut new {
        for id in &old_ids {
            let v = n.node.wait(0, "member_refused", TIMEOUT, |v| {
                v["event"] == "member_refused" && v["member"]["id"] == id.as_str()
            })?;
            ensure!(
                v["reason"] == "app_version"
                    && v["local_app_version"] == NEW_VERSION
                    && v["remote_app_version"] == "",
                "unexpected refusal {v}"
            );
            refusals += 1;
        }
    }
    let new_id = new[1].node.id().to_owned();
    new[0].node.wait_added(0, &new_id, TIMEOUT)?;
    // No old member ever enters a current member's view.
    for n in &mut new {
        n.node.poll()?;
        let added_old = n.node.events.iter().any(|v| {
            v["event"] == "member_added"
                && old_ids.iter().any(|id| v["member"]["id"] == id.as_str())
        });
        if added_old {
            bail!("{} let a member of another version in", n.node.name);
        }
    }
    let detail: Value = new[0]
        .node
        .events
        .iter()
        .find(|v| v["event"] == "member_refused")
        .map(|v| v["detail"].clone())
        .unwrap_or_default();
    for a in old.iter_mut().chain(new.iter_mut()) {
        harness::signal(a.node.pid, "TERM")?;
        a.node
            .wait(0, "stopped", TIMEOUT, |v| v["event"] == "stopped")?;
    }
    Ok(format!(
        "same_policy_refusals={refusals} same_policy_detail={detail}"
    ))
}
