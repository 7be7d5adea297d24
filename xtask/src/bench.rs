//! `cargo xtask bench [--mode async|ack|syncack] [--size BYTES] [--test tput|latency|idle]
//! [--rounds N] [--quick]`: throughput and latency between real `cohort` processes (release
//! build), with plain TCP measured in the same run, printing `RESULT` lines (their fields are
//! described in docs/BENCHMARKS.md). Every measurement is taken `--rounds` times (3 in a full
//! run, 1 otherwise), the rounds interleaved so that the machine's drift touches every mode
//! alike, and the table keeps each one's median round. A run without
//! filters rewrites the results part of docs/BENCHMARKS.md (between its `results:begin` and
//! `results:end` markers; the analysis around them is kept).

// A command-line tool: the RESULT lines are its output.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::harness::{self, NodeProc, Spawn};

const SIZES: &[usize] = &[64, 1024, 65536];
const MODES: &[&str] = &["async", "ack", "syncack", "async-batch", "ack-batch"];
const RAW_MODES: &[&str] = &["raw-tcp", "raw-tcp-write"];
const BEGIN: &str = "<!-- results:begin (written by `cargo xtask bench`) -->";
const END: &str = "<!-- results:end -->";
/// How long the idle node runs before its resident size is read.
const IDLE_FOR: Duration = Duration::from_secs(3);

/// Messages per throughput run: enough for a second or more at the expected rates.
fn count(size: usize, quick: bool) -> u64 {
    let n = match size {
        0..=4096 => 300_000,
        4097..=16384 => 100_000,
        _ => 20_000,
    };
    if quick { n / 10 } else { n }
}

/// One parsed RESULT line.
#[derive(Clone, Debug)]
struct Line {
    raw: String,
    fields: BTreeMap<String, String>,
}

impl Line {
    fn parse(raw: &str) -> Option<Self> {
        let rest = raw.strip_prefix("RESULT ")?;
        let fields = rest
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Some(Self {
            raw: raw.to_owned(),
            fields,
        })
    }

    fn get(&self, k: &str) -> &str {
        self.fields.get(k).map_or("", String::as_str)
    }

    fn num(&self, k: &str) -> f64 {
        self.get(k).parse().unwrap_or(0.0)
    }
}

fn cohort_bench(exe: &std::path::Path, args: &[String]) -> Result<Vec<Line>> {
    let out = Command::new(exe)
        .arg("bench")
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cohort bench")?;
    if !out.status.success() {
        bail!("cohort bench {} failed: {}", args.join(" "), out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Line> = text.lines().filter_map(Line::parse).collect();
    for l in &lines {
        println!("{}", l.raw);
    }
    Ok(lines)
}

/// Entry point: `args` follow `bench`.
pub(crate) fn run(args: &[String]) -> Result<()> {
    let (mut mode, mut size, mut test, mut quick) = (None, None, None, false);
    let mut rounds = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--mode" => mode = Some(it.next().context("--mode needs a value")?.clone()),
            "--size" => {
                size = Some(
                    it.next()
                        .context("--size needs a value")?
                        .parse::<usize>()
                        .context("--size takes a number of bytes")?,
                );
            }
            "--test" => test = Some(it.next().context("--test needs a value")?.clone()),
            "--quick" => quick = true,
            "--rounds" => {
                let n: usize = it
                    .next()
                    .context("--rounds needs a value")?
                    .parse()
                    .context("--rounds takes a number")?;
                ensure!(
                    (1..=MAX_ROUNDS).contains(&n),
                    "--rounds is 1 to {MAX_ROUNDS}"
                );
                rounds = Some(n);
            }
            other => bail!("unknown bench option `{other}`"),
        }
    }
    if let Some(m) = &mode {
        ensure!(
            MODES.contains(&m.as_str()),
            "--mode is one of {}",
            MODES.join(", ")
        );
    }
    if let Some(t) = &test {
        ensure!(
            ["tput", "latency", "idle", "map", "session", "deploy"].contains(&t.as_str()),
            "--test is tput, latency, idle, map, session or deploy"
        );
    }
    if test.as_deref() == Some("map") {
        return map_bench(quick);
    }
    if test.as_deref() == Some("session") {
        return crate::session::bench(quick);
    }
    if test.as_deref() == Some("deploy") {
        let exe = harness::build_cohort(true)?;
        let n = if quick { "100" } else { "400" };
        cohort_bench(
            &exe,
            &[
                "--test".into(),
                "tput".into(),
                "--mode".into(),
                "raw-tcp".into(),
                "--size".into(),
                (1 << 20).to_string(),
                "--count".into(),
                n.into(),
            ],
        )?;
        return crate::deploy::bench(&exe, quick);
    }
    if size.is_some_and(|s| s < 8) {
        bail!("--size must be at least 8 (the sequence number)");
    }
    let full = mode.is_none() && size.is_none() && test.is_none() && !quick;
    let exe = harness::build_cohort(true)?;
    let wants = |t: &str| test.as_deref().is_none_or(|x| x == t);
    let sizes: Vec<usize> = size.map_or_else(|| SIZES.to_vec(), |s| vec![s]);
    let rounds = rounds.unwrap_or(if full { FULL_ROUNDS } else { 1 });
    let mut lines = Vec::new();
    let started = Instant::now();
    for round in 1..=rounds {
        if rounds > 1 {
            eprintln!("bench: round {round} of {rounds}");
        }
        lines.extend(one_round(
            &exe,
            mode.as_deref(),
            size,
            &sizes,
            quick,
            &wants,
        )?);
    }
    let mut lines = medians(lines);
    if wants("idle") && mode.is_none() {
        let rss = idle_rss(&exe)?;
        let line = format!(
            "RESULT impl=cohort test=idle nodes=2 secs={} rss_kb={rss}",
            IDLE_FOR.as_secs()
        );
        println!("{line}");
        lines.extend(Line::parse(&line));
    }
    eprintln!("bench: {:.0} s", started.elapsed().as_secs_f64());
    if full {
        write_doc(&lines, rounds)?;
        eprintln!("bench: docs/BENCHMARKS.md updated");
    } else {
        eprintln!("bench: filtered run; docs/BENCHMARKS.md is only rewritten by a full run");
    }
    Ok(())
}

/// Rounds of a full run (each measurement's median goes in the table).
const FULL_ROUNDS: usize = 3;
/// Most rounds `--rounds` takes.
const MAX_ROUNDS: usize = 20;

/// One round: every throughput mode at every size, then the round trips.
fn one_round(
    exe: &std::path::Path,
    mode: Option<&str>,
    size: Option<usize>,
    sizes: &[usize],
    quick: bool,
    wants: &dyn Fn(&str) -> bool,
) -> Result<Vec<Line>> {
    let mut lines = Vec::new();
    if wants("tput") {
        for &s in sizes {
            let n = count(s, quick).to_string();
            let modes: Vec<&str> = match mode {
                Some(m) => vec![m],
                None => MODES.to_vec(),
            };
            for m in RAW_MODES.iter().chain(&modes) {
                lines.extend(cohort_bench(
                    exe,
                    &[
                        "--test".into(),
                        "tput".into(),
                        "--mode".into(),
                        (*m).into(),
                        "--size".into(),
                        s.to_string(),
                        "--count".into(),
                        n.clone(),
                    ],
                )?);
            }
        }
    }
    if wants("latency") && mode.is_none() {
        let s = size.unwrap_or(1024).to_string();
        let n = if quick { "2000" } else { "20000" };
        lines.extend(cohort_bench(
            exe,
            &[
                "--test".into(),
                "latency".into(),
                "--size".into(),
                s,
                "--count".into(),
                n.into(),
            ],
        )?);
    }
    Ok(lines)
}

/// Of every measurement taken several times (same impl, test, mode or api, size), the
/// median round: by msgs/s for throughput, by p50 for round trips.
fn medians(lines: Vec<Line>) -> Vec<Line> {
    let mut groups: BTreeMap<(String, String, String, String), Vec<Line>> = BTreeMap::new();
    let mut order = Vec::new();
    for l in lines {
        let key = (
            l.get("impl").to_owned(),
            l.get("test").to_owned(),
            format!("{}{}", l.get("mode"), l.get("api")),
            l.get("size").to_owned(),
        );
        if !groups.contains_key(&key) {
            order.push(key.clone());
        }
        groups.entry(key).or_default().push(l);
    }
    order
        .into_iter()
        .filter_map(|key| {
            let mut g = groups.remove(&key)?;
            let by = if key.1 == "latency" {
                "p50_us"
            } else {
                "msgs_per_s"
            };
            g.sort_by(|a, b| a.num(by).total_cmp(&b.num(by)));
            let mid = g.len() / 2;
            Some(g.swap_remove(mid))
        })
        .collect()
}

/// `--test map`: the maps' benchmark program (in-process channels on loopback sockets), with
/// plain TCP at the same value sizes measured in the same run.
fn map_bench(quick: bool) -> Result<()> {
    let exe = harness::build_cohort(true)?;
    for size in [100usize, 10 * 1024] {
        let n = if quick { 20_000 } else { 200_000 }.to_string();
        cohort_bench(
            &exe,
            &[
                "--test".into(),
                "tput".into(),
                "--mode".into(),
                "raw-tcp".into(),
                "--size".into(),
                size.to_string(),
                "--count".into(),
                n,
            ],
        )?;
    }
    let mut cmd = crate::cargo();
    cmd.args([
        "run",
        "--locked",
        "--release",
        "-q",
        "-p",
        "cohort-maps",
        "--example",
        "map_bench",
        "--",
    ]);
    if quick {
        cmd.arg("--quick");
    }
    crate::run_cmd(&mut cmd)
}

/// Resident size (KiB) of a node that has been a member of a two-node cluster, doing nothing
/// else, for [`IDLE_FOR`].
fn idle_rss(exe: &std::path::Path) -> Result<u64> {
    let dir = harness::target_dir().join("cohort-bench-idle");
    let _ = std::fs::remove_dir_all(&dir);
    let config = format!(
        "[membership]\ncluster = \"bench-idle-{}\"\n\n[membership.multicast]\nport = {}\n\n\
         [transport]\nport = 0\n\n[admin]\nport = 0\n",
        std::process::id(),
        harness::free_udp_port()?
    );
    let spawn = |name: &str| {
        NodeProc::start(&Spawn {
            exe,
            name,
            config: &config,
            dir: &dir,
            args: &[],
            command: &["node"],
            netns: None,
        })
    };
    let mut a = spawn("idle-a")?;
    let mut b = spawn("idle-b")?;
    a.wait_view(&[b.id()], Duration::from_secs(20))?;
    b.wait_view(&[a.id()], Duration::from_secs(20))?;
    std::thread::sleep(IDLE_FOR);
    let status = std::fs::read_to_string(format!("/proc/{}/status", a.pid))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS in /proc/PID/status")
}

fn find<'a>(lines: &'a [Line], pairs: &[(&str, &str)]) -> Option<&'a Line> {
    lines
        .iter()
        .find(|l| pairs.iter().all(|(k, v)| l.get(k) == *v))
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |k| k.trim().to_owned());
    let rustc = Command::new("rustc").arg("--version").output().map_or_else(
        |_| "rustc ?".into(),
        |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
    );
    format!("{cpus} CPUs ({model}), Linux {kernel}, {rustc}, release build, loopback")
}

fn results_markdown(lines: &[Line], rounds: usize) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Measured on: {}. Each figure is the median of {rounds} interleaved rounds.\n",
        machine()
    );
    let _ = writeln!(
        md,
        "### Throughput (one sender process, one sink process)\n"
    );
    let _ = writeln!(
        md,
        "| size | impl / mode | msgs/s | MB/s | vs batched TCP (msgs/s) | vs one-write TCP | sender CPU µs/msg | sink CPU µs/msg | reordered | bad |"
    );
    let _ = writeln!(md, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &size in SIZES {
        let s = size.to_string();
        let batched =
            find(lines, &[("mode", "batched"), ("size", &s)]).map(|l| l.num("msgs_per_s"));
        let write = find(lines, &[("mode", "write"), ("size", &s)]).map(|l| l.num("msgs_per_s"));
        for mode in [
            "batched",
            "write",
            "async",
            "ack",
            "syncack",
            "async-batch",
            "ack-batch",
        ] {
            let Some(l) = find(lines, &[("test", "tput"), ("mode", mode), ("size", &s)]) else {
                continue;
            };
            let rate = l.num("msgs_per_s");
            let ratio = |base: Option<f64>| {
                base.filter(|b| *b > 0.0)
                    .map_or_else(|| "-".to_owned(), |b| format!("{:.2}", rate / b))
            };
            // CPU per message: what a message costs each process, which moves less than
            // throughput on a shared machine (absent from lines of older builds).
            let cpu = |k: &str| match l.get(k) {
                "" => "-".to_owned(),
                v => v.to_owned(),
            };
            let _ = writeln!(
                md,
                "| {size} | {} {mode} | {:.0} | {:.1} | {} | {} | {} | {} | {} | {} |",
                l.get("impl"),
                rate,
                l.num("mb_per_s"),
                ratio(batched),
                ratio(write),
                cpu("cpu_us_per_msg"),
                cpu("sink_cpu_us_per_msg"),
                l.get("reordered"),
                l.get("bad"),
            );
        }
    }
    let _ = writeln!(md, "\n### Round-trip latency\n");
    let _ = writeln!(
        md,
        "| impl / api | size | count | p50 µs | p99 µs | max µs | p50 vs TCP | p99 vs TCP |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let raw = find(lines, &[("test", "latency"), ("api", "pingpong")]);
    for api in ["pingpong", "rpc"] {
        if let Some(l) = find(lines, &[("test", "latency"), ("api", api)]) {
            let ratio =
                |k: &str| raw.map_or_else(|| "-".into(), |r| format!("{:.2}", l.num(k) / r.num(k)));
            let _ = writeln!(
                md,
                "| {} {api} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} |",
                l.get("impl"),
                l.get("size"),
                l.get("count"),
                l.num("p50_us"),
                l.num("p99_us"),
                l.num("max_us"),
                ratio("p50_us"),
                ratio("p99_us"),
            );
        }
    }
    if let Some(l) = find(lines, &[("test", "idle")]) {
        let _ = writeln!(
            md,
            "\n### Idle node\n\nResident size of a node in a two-node cluster after {} s: **{:.1} MB** ({} KiB).",
            l.get("secs"),
            l.num("rss_kb") / 1024.0,
            l.get("rss_kb")
        );
    }
    let _ = writeln!(md, "\n### Targets (issue 6)\n");
    let _ = writeln!(md, "| target | measured | met |");
    let _ = writeln!(md, "|---|---|---|");
    let tput = |mode: &str, size: &str, k: &str| {
        find(lines, &[("test", "tput"), ("mode", mode), ("size", size)]).map(|l| l.num(k))
    };
    let mut target = |name: &str, measured: Option<(f64, f64)>, unit: &str| {
        let (value, goal) = measured.unwrap_or((0.0, f64::INFINITY));
        let _ = writeln!(
            md,
            "| {name} | {value:.2}{unit} | {} |",
            if value >= goal { "yes" } else { "**no**" }
        );
    };
    target(
        "ASYNC 1 KiB ≥ 0.5 × batched TCP msgs/s",
        tput("async", "1024", "msgs_per_s")
            .zip(tput("batched", "1024", "msgs_per_s"))
            .map(|(a, b)| (a / b, 0.5)),
        " ×",
    );
    for mode in ["ack", "syncack"] {
        target(
            &format!("{mode} 1 KiB ≥ 200,000 msgs/s"),
            tput(mode, "1024", "msgs_per_s").map(|v| (v / 1000.0, 200.0)),
            "k msgs/s",
        );
    }
    let lat =
        |api: &str, k: &str| find(lines, &[("test", "latency"), ("api", api)]).map(|l| l.num(k));
    // "At most" targets: the ratio to plain TCP must stay below the factor.
    for (k, factor) in [("p50_us", 1.5), ("p99_us", 2.0)] {
        let ratio = lat("rpc", k).zip(lat("pingpong", k)).map(|(c, r)| c / r);
        let _ = writeln!(
            md,
            "| RPC {k} ≤ {factor} × TCP ping-pong | {} | {} |",
            ratio.map_or_else(|| "-".into(), |r| format!("{r:.2} ×")),
            if ratio.is_some_and(|r| r <= factor) {
                "yes"
            } else {
                "**no**"
            }
        );
    }
    let big = tput("async", "65536", "mb_per_s")
        .zip(tput("batched", "65536", "mb_per_s"))
        .map(|(a, b)| a / b);
    let _ = writeln!(
        md,
        "| ASYNC 64 KiB ≥ 0.8 × TCP bytes/s | {} | {} |",
        big.map_or_else(|| "-".into(), |r| format!("{r:.2} ×")),
        if big.is_some_and(|r| r >= 0.8) {
            "yes"
        } else {
            "**no**"
        }
    );
    let rss = find(lines, &[("test", "idle")]).map(|l| l.num("rss_kb") / 1024.0);
    let _ = writeln!(
        md,
        "| idle node < 10 MB resident | {} | {} |",
        rss.map_or_else(|| "-".into(), |r| format!("{r:.1} MB")),
        if rss.is_some_and(|r| r < 10.0) {
            "yes"
        } else {
            "**no**"
        }
    );
    let _ = writeln!(md, "\n<details><summary>RESULT lines</summary>\n\n```");
    for l in lines {
        let _ = writeln!(md, "{}", l.raw);
    }
    let _ = writeln!(md, "```\n</details>");
    md
}

fn write_doc(lines: &[Line], rounds: usize) -> Result<()> {
    let path = crate::project_root().join("docs/BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let results = results_markdown(lines, rounds);
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if b < e => format!("{}{BEGIN}\n{results}{}", &old[..b], &old[e..]),
        _ => format!("# Benchmarks\n\n{BEGIN}\n{results}{END}\n"),
    };
    std::fs::write(&path, new)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Line, medians};

    #[test]
    fn each_measurement_keeps_its_median_round_in_first_seen_order() {
        let raw = [
            "RESULT impl=raw-tcp test=tput mode=batched size=64 msgs_per_s=300",
            "RESULT impl=cohort test=tput mode=async size=64 msgs_per_s=10",
            "RESULT impl=raw-tcp test=tput mode=batched size=64 msgs_per_s=100",
            "RESULT impl=cohort test=tput mode=async size=64 msgs_per_s=30",
            "RESULT impl=raw-tcp test=tput mode=batched size=64 msgs_per_s=200",
            "RESULT impl=cohort test=tput mode=async size=64 msgs_per_s=20",
            "RESULT impl=cohort test=latency api=rpc size=1024 p50_us=9 p99_us=1",
            "RESULT impl=cohort test=latency api=rpc size=1024 p50_us=5 p99_us=2",
            "RESULT impl=cohort test=latency api=rpc size=1024 p50_us=7 p99_us=3",
        ];
        let lines = medians(raw.iter().filter_map(|l| Line::parse(l)).collect());
        let picked: Vec<(String, f64)> = lines
            .iter()
            .map(|l| {
                let by = if l.get("test") == "latency" {
                    "p50_us"
                } else {
                    "msgs_per_s"
                };
                (l.get("impl").to_owned(), l.num(by))
            })
            .collect();
        assert_eq!(
            picked,
            [
                ("raw-tcp".to_owned(), 200.0),
                ("cohort".to_owned(), 20.0),
                ("cohort".to_owned(), 7.0)
            ]
        );
        // The median round's line is kept whole (its p99 with its p50).
        assert_eq!(lines[2].num("p99_us"), 3.0);
    }
}
