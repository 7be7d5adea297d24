//! The `deploy` scenario and `bench --test deploy`: real `cohort` nodes with `[deployer]`
//! enabled, files from 0 bytes to 100 MiB, a receiver killed half-way through a transfer and
//! restarted, a member away during a deploy and an undeploy, a name that would escape, and two
//! members deploying one name at once.

// A command-line tool: the RESULT lines are its output.
#![allow(clippy::print_stdout, clippy::cast_possible_truncation)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::harness::{self, NodeProc, Spawn};

const DEADLINE: Duration = Duration::from_secs(120);

/// One node's directories.
fn dirs(root: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let base = root.join(format!("{name}-files"));
    (base.join("watch"), base.join("live"), base.join("tmp"))
}

fn config(cluster: &str, port: u16, root: &Path, name: &str, watch: bool) -> String {
    let (w, l, t) = dirs(root, name);
    format!(
        "[membership]\ncluster = \"{cluster}\"\n\n[membership.multicast]\nport = {port}\n\n\
         [transport]\nport = 0\n\n[admin]\nport = 0\n\n[deployer]\nenabled = true\n\
         watch_enabled = {watch}\nwatch_dir = \"{}\"\ndeploy_dir = \"{}\"\ntemp_dir = \"{}\"\n\
         process_deploy_frequency = 300\nmin_free_space = 0\nmax_file_size = 209715200\n",
        w.display(),
        l.display(),
        t.display()
    )
}

fn pattern(size: usize, seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed) | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect()
}

struct Cluster {
    exe: PathBuf,
    root: PathBuf,
    name: String,
    port: u16,
    nodes: Vec<NodeProc>,
}

impl Cluster {
    fn start(&mut self, node: &str, watch: bool) -> Result<NodeProc> {
        NodeProc::start(&Spawn {
            exe: &self.exe,
            name: node,
            config: &config(&self.name, self.port, &self.root, node, watch),
            dir: &self.root,
            command: &["node"],
            args: &[],
            netns: None,
        })
    }

    fn live(&self, node: &str, file: &str) -> PathBuf {
        dirs(&self.root, node).1.join(file)
    }
}

/// Waits until `path` holds exactly `want`; checks on the way that the deploy directory never
/// shows a file of another size (a partial one).
fn wait_file(path: &Path, want: &[u8], deadline: Duration) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.len() == want.len() as u64 && std::fs::read(path)? == want {
                return Ok(start.elapsed());
            }
        }
        if start.elapsed() > deadline {
            bail!(
                "{} never held the expected {} bytes",
                path.display(),
                want.len()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_gone(path: &Path) -> Result<()> {
    let start = Instant::now();
    while path.exists() {
        ensure!(
            start.elapsed() < DEADLINE,
            "{} never removed",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn cli(exe: &Path, args: &[&str]) -> Result<std::process::Output> {
    Command::new(exe)
        .args(args)
        .output()
        .context("running cohort")
}

fn admin(n: &NodeProc) -> Result<String> {
    Ok(n.admin_addr()?.to_string())
}

fn setup(exe: PathBuf, dir: &Path, label: &str) -> Result<Cluster> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    Ok(Cluster {
        exe,
        root: dir.to_path_buf(),
        name: format!("{label}-{}", std::process::id()),
        port: harness::free_udp_port()?,
        nodes: Vec::new(),
    })
}

fn wait_views(c: &mut Cluster) -> Result<()> {
    let ids: Vec<String> = c.nodes.iter().map(|n| n.id().to_owned()).collect();
    for n in &mut c.nodes {
        for id in &ids {
            if id != n.id() {
                n.wait_added(0, id, Duration::from_secs(20))?;
            }
        }
    }
    Ok(())
}

/// The scenario; figures on success.
pub(crate) fn scenario(exe: &Path, dir: &Path) -> Result<String> {
    let mut c = setup(exe.to_path_buf(), dir, "deploy")?;
    for (n, watch) in [("a", true), ("b", false), ("c", false)] {
        let node = c.start(n, watch)?;
        c.nodes.push(node);
    }
    wait_views(&mut c)?;
    // Sizes through a's watch directory.
    let watch = dirs(&c.root, "a").0;
    let sizes = [0usize, 1, 10_240, 20_480, (1 << 20) + 1, 100 << 20];
    let started = Instant::now();
    for (i, size) in sizes.iter().enumerate() {
        let tmp = c.root.join(format!("staging-{size}"));
        std::fs::write(&tmp, pattern(*size, i as u8))?;
        std::fs::rename(&tmp, watch.join(format!("f{size}.bin")))?;
    }
    for (i, size) in sizes.iter().enumerate() {
        for n in ["b", "c"] {
            wait_file(
                &c.live(n, &format!("f{size}.bin")),
                &pattern(*size, i as u8),
                DEADLINE,
            )?;
        }
    }
    let sizes_secs = started.elapsed().as_secs_f64();
    // A receiver killed half-way through 100 MiB, then restarted: the right file in the end,
    // never a partial one.
    let big = pattern(100 << 20, 99);
    let tmp = c.root.join("staging-big");
    std::fs::write(&tmp, &big)?;
    let victim_tmp = dirs(&c.root, "c").2;
    std::fs::rename(&tmp, watch.join("big.bin"))?;
    let live_c = c.live("c", "big.bin");
    let t0 = Instant::now();
    // Wait until c has written part of it.
    loop {
        let partial = std::fs::read_dir(&victim_tmp)
            .ok()
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                e.file_name().to_string_lossy().ends_with(".part")
                    && e.metadata().is_ok_and(|m| m.len() > 0)
            });
        let done = std::fs::read_dir(&victim_tmp)
            .ok()
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                e.file_name().to_string_lossy().ends_with(".done")
                    && e.metadata().is_ok_and(|m| m.len() >= 16)
            });
        if partial && done {
            break;
        }
        ensure!(t0.elapsed() < DEADLINE, "c never started receiving big.bin");
        std::thread::sleep(Duration::from_millis(2));
    }
    harness::signal(c.nodes[2].pid, "KILL")?;
    let killed_complete = live_c.exists();
    ensure!(
        !live_c.exists() || std::fs::metadata(&live_c)?.len() == big.len() as u64,
        "a partial big.bin in c's deploy directory"
    );
    let c2 = c.start("c", false)?;
    c.nodes[2] = c2;
    wait_file(&live_c, &big, DEADLINE)?;
    // b away during a deploy and an undeploy.
    harness::signal(c.nodes[1].pid, "TERM")?;
    c.nodes[1].wait(0, "stopped", Duration::from_secs(20), |v| {
        v["event"] == "stopped"
    })?;
    let late = c.root.join("late.txt");
    std::fs::write(&late, b"deployed while b was away")?;
    let a_admin = admin(&c.nodes[0])?;
    let out = cli(
        exe,
        &[
            "deploy",
            late.to_str().context("path")?,
            "--admin",
            &a_admin,
        ],
    )?;
    ensure!(
        out.status.success(),
        "cohort deploy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(watch.join("f1.bin"))?;
    wait_gone(&c.live("c", "f1.bin"))?;
    let b2 = c.start("b", false)?;
    c.nodes[1] = b2;
    wait_file(
        &c.live("b", "late.txt"),
        b"deployed while b was away",
        DEADLINE,
    )?;
    wait_gone(&c.live("b", "f1.bin"))?;
    // A name that would leave the deploy directory is refused.
    let out = cli(
        exe,
        &[
            "deploy",
            late.to_str().context("path")?,
            "--name",
            "../escape",
            "--admin",
            &a_admin,
        ],
    )?;
    ensure!(!out.status.success(), "cohort deploy accepted ../escape");
    ensure!(
        !c.root.join("a-files/escape").exists(),
        "a file escaped the deploy directory"
    );
    // Two members deploy one name at once: every member ends with the same one.
    let (x, y) = (c.root.join("x.txt"), c.root.join("y.txt"));
    std::fs::write(&x, b"from a")?;
    std::fs::write(&y, b"from c!")?;
    let c_admin = admin(&c.nodes[2])?;
    let (ex, ey) = (exe.to_path_buf(), exe.to_path_buf());
    let (xs, ys) = (
        x.to_string_lossy().into_owned(),
        y.to_string_lossy().into_owned(),
    );
    let (aa, ca) = (a_admin.clone(), c_admin);
    let t1 = std::thread::spawn(move || {
        cli(&ex, &["deploy", &xs, "--name", "same.txt", "--admin", &aa])
    });
    let t2 = std::thread::spawn(move || {
        cli(&ey, &["deploy", &ys, "--name", "same.txt", "--admin", &ca])
    });
    for t in [t1, t2] {
        let out = t
            .join()
            .map_err(|_| anyhow::anyhow!("a thread panicked"))??;
        ensure!(
            out.status.success(),
            "concurrent deploy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let start = Instant::now();
    loop {
        let got: Vec<Option<Vec<u8>>> = ["a", "b", "c"]
            .iter()
            .map(|n| std::fs::read(c.live(n, "same.txt")).ok())
            .collect();
        if got[0].is_some() && got.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        ensure!(
            start.elapsed() < DEADLINE,
            "same.txt never converged: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Every member agrees.
    let d: Value =
        serde_json::from_slice(&cli(exe, &["deployments", "--json", "--admin", &a_admin])?.stdout)?;
    let start = Instant::now();
    let mut agree = d["agree"] == true;
    while !agree && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
        let d: Value = serde_json::from_slice(
            &cli(exe, &["deployments", "--json", "--admin", &a_admin])?.stdout,
        )?;
        agree = d["agree"] == true;
    }
    ensure!(agree, "members never agreed");
    for n in &mut c.nodes {
        let _ = harness::signal(n.pid, "TERM");
    }
    Ok(format!(
        "sizes=0/1/10240/20480/1048577/104857600 sizes_secs={sizes_secs:.1} receiver_killed_mid_transfer=recovered killed_with_complete_file={killed_complete} catch_up=ok traversal=refused concurrent=converged agree=true"
    ))
}

/// `cargo xtask bench --test deploy`: 100 MiB to two other members (release nodes) against
/// plain TCP in the same run.
pub(crate) fn bench(exe: &Path, quick: bool) -> Result<()> {
    let dir = harness::target_dir().join("cohort-bench-deploy");
    let mut c = setup(exe.to_path_buf(), &dir, "bench-deploy")?;
    for n in ["a", "b", "c"] {
        let node = c.start(n, false)?;
        c.nodes.push(node);
    }
    wait_views(&mut c)?;
    let size = if quick { 20 << 20 } else { 100 << 20 };
    let data = pattern(size, 7);
    let file = c.root.join("payload.bin");
    std::fs::write(&file, &data)?;
    let a_admin = admin(&c.nodes[0])?;
    let start = Instant::now();
    let out = cli(
        exe,
        &[
            "deploy",
            file.to_str().context("path")?,
            "--admin",
            &a_admin,
        ],
    )?;
    ensure!(
        out.status.success(),
        "cohort deploy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let uploaded = start.elapsed();
    for n in ["b", "c"] {
        wait_file(&c.live(n, "payload.bin"), &data, DEADLINE)?;
    }
    let took = start.elapsed();
    let mb = size as f64 / 1e6;
    println!(
        "RESULT impl=cohort test=deploy members=3 size={size} secs={:.3} upload_secs={:.3} mb_per_s={:.1} receivers=2",
        took.as_secs_f64(),
        uploaded.as_secs_f64(),
        mb / (took - uploaded).as_secs_f64().max(1e-6)
    );
    for n in &mut c.nodes {
        let _ = harness::signal(n.pid, "TERM");
    }
    Ok(())
}
