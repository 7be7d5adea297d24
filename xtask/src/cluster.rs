//! `cargo xtask cluster up --nodes N [--config FILE]`, `status`, `down`: a local cluster of real
//! `cohort` processes that outlives the command. What was started is recorded in
//! `target/cohort-cluster/cluster.json` (PIDs, addresses, admin endpoints, event and log
//! files); `down` stops those PIDs and nothing else.

// A command-line tool: its tables are its output.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::harness::{self, NodeProc, Spawn};

/// Largest cluster `up` starts.
pub(crate) const MAX_NODES: usize = 32;
/// How long `up` waits for every node to see every other.
pub(crate) const VIEW_TIMEOUT: Duration = Duration::from_secs(30);

fn dir() -> PathBuf {
    harness::target_dir().join("cohort-cluster")
}

fn state_path() -> PathBuf {
    dir().join("cluster.json")
}

fn read_state() -> Result<Option<Value>> {
    match std::fs::read(state_path()) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes).context("target/cohort-cluster/cluster.json")?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn live_nodes(state: &Value) -> Vec<(String, u32)> {
    let exe = PathBuf::from(state["exe"].as_str().unwrap_or_default());
    state["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| {
            let pid = u32::try_from(n["pid"].as_u64()?).ok()?;
            harness::runs(pid, &exe).then(|| (n["name"].as_str().unwrap_or("?").to_owned(), pid))
        })
        .collect()
}

/// Entry point: `args` follow `cluster`.
pub(crate) fn run(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("up") => {
            let mut nodes = 3usize;
            let mut config = None;
            let mut rest = args[1..].iter();
            while let Some(a) = rest.next() {
                match a.as_str() {
                    "--nodes" => {
                        nodes = rest
                            .next()
                            .context("--nodes needs a value")?
                            .parse()
                            .context("--nodes takes a number")?;
                    }
                    "--config" => config = Some(rest.next().context("--config needs a file")?),
                    other => bail!("unknown option `{other}` for cluster up"),
                }
            }
            if !(1..=MAX_NODES).contains(&nodes) {
                bail!("--nodes must be between 1 and {MAX_NODES}");
            }
            up(nodes, config.map(Path::new))
        }
        Some("status") => status(),
        Some("down") => down(),
        _ => bail!("usage: cargo xtask cluster up --nodes N [--config FILE] | status | down"),
    }
}

fn up(n: usize, config: Option<&Path>) -> Result<()> {
    if let Some(state) = read_state()? {
        if !live_nodes(&state).is_empty() {
            bail!(
                "a cluster is already up (see `cargo xtask cluster status`); `cargo xtask cluster down` stops it"
            );
        }
    }
    let config = match config {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => String::new(),
    };
    let exe = harness::build_cohort(false)?;
    let dir = dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut procs: Vec<NodeProc> = Vec::new();
    for i in 1..=n {
        let name = format!("node{i}");
        let p = NodeProc::start(&Spawn {
            exe: &exe,
            name: &name,
            config: &config,
            dir: &dir,
            args: &[],
            command: &["node"],
            netns: None,
        })?;
        eprintln!(
            "started {name}: pid {} addr {} admin {}",
            p.pid,
            p.ready["addr"].as_str().unwrap_or("?"),
            p.ready["admin"].as_str().unwrap_or("-")
        );
        procs.push(p);
        // Distinct start times (ms): the first node is the lead, as an operator expects.
        std::thread::sleep(Duration::from_millis(3));
    }
    // Record before waiting, so that `down` can stop them whatever happens next.
    let state = json!({
        "exe": exe.display().to_string(),
        "nodes": procs.iter().map(|p| json!({
            "name": p.name, "pid": p.pid, "id": p.id(),
            "addr": p.ready["addr"], "admin": p.ready["admin"],
            "events": p.events_path.display().to_string(),
            "log": p.log_path.display().to_string(),
        })).collect::<Vec<_>>(),
    });
    std::fs::write(state_path(), serde_json::to_vec_pretty(&state)?)?;
    let ids: Vec<String> = procs.iter().map(|p| p.id().to_owned()).collect();
    let started = Instant::now();
    for p in &mut procs {
        let others: Vec<&str> = ids
            .iter()
            .map(String::as_str)
            .filter(|id| *id != p.id())
            .collect();
        if let Err(e) = p.wait_view(&others, VIEW_TIMEOUT) {
            // Leave nothing behind on failure.
            drop(procs);
            let _ = std::fs::remove_file(state_path());
            return Err(e.context("the nodes did not see each other"));
        }
    }
    eprintln!(
        "all {n} nodes see each other ({:.0} ms after the last was ready)",
        started.elapsed().as_secs_f64() * 1000.0
    );
    for p in procs {
        p.detach();
    }
    print_state(&state)?;
    println!("stop with `cargo xtask cluster down`");
    Ok(())
}

fn print_state(state: &Value) -> Result<()> {
    let exe = PathBuf::from(state["exe"].as_str().unwrap_or_default());
    println!(
        "{:<8} {:>8}  {:<6} {:<21} {:<21} {:>7}  EVENTS",
        "NODE", "PID", "STATE", "ADDRESS", "ADMIN", "MEMBERS"
    );
    for n in state["nodes"].as_array().into_iter().flatten() {
        let pid = n["pid"].as_u64().unwrap_or(0);
        let alive = u32::try_from(pid).is_ok_and(|p| harness::runs(p, &exe));
        let members = if alive {
            n["admin"]
                .as_str()
                .and_then(|a| a.parse().ok())
                .and_then(|a| harness::admin(a, "status", Duration::from_secs(2)).ok())
                .and_then(|s| s["members"].as_array().map(Vec::len))
                .map_or_else(|| "?".to_owned(), |m| m.to_string())
        } else {
            "-".to_owned()
        };
        println!(
            "{:<8} {:>8}  {:<6} {:<21} {:<21} {:>7}  {}",
            n["name"].as_str().unwrap_or("?"),
            pid,
            if alive { "up" } else { "gone" },
            n["addr"].as_str().unwrap_or("?"),
            n["admin"].as_str().unwrap_or("-"),
            members,
            n["events"].as_str().unwrap_or("?"),
        );
    }
    Ok(())
}

fn status() -> Result<()> {
    let Some(state) = read_state()? else {
        println!("no cluster recorded (start one with `cargo xtask cluster up --nodes N`)");
        return Ok(());
    };
    print_state(&state)?;
    let total = state["nodes"].as_array().map_or(0, Vec::len);
    let live = live_nodes(&state).len();
    if live < total {
        bail!("{} of {total} nodes are not running", total - live);
    }
    Ok(())
}

fn down() -> Result<()> {
    let Some(state) = read_state()? else {
        eprintln!("no cluster recorded; nothing to stop");
        return Ok(());
    };
    let exe = PathBuf::from(state["exe"].as_str().unwrap_or_default());
    let nodes = live_nodes(&state);
    for (_, pid) in &nodes {
        let _ = harness::signal(*pid, "TERM");
    }
    let deadline = Instant::now() + harness::EXIT_TIMEOUT;
    let mut killed = 0;
    for (name, pid) in &nodes {
        while harness::runs(*pid, &exe) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if harness::runs(*pid, &exe) {
            eprintln!("{name} (pid {pid}) did not exit after SIGTERM; killing it");
            let _ = harness::signal(*pid, "KILL");
            killed += 1;
        }
    }
    std::fs::remove_file(state_path())?;
    eprintln!(
        "stopped {} node(s){}; their logs stay in {}",
        nodes.len(),
        if killed > 0 {
            format!(" ({killed} killed)")
        } else {
            String::new()
        },
        dir().display()
    );
    Ok(())
}
