//! `cohort`: run a node, ask one for its status, or start a local cluster.

// A command-line tool: printing is its output.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cohort_node::admin;
use cohort_node::config::NodeConfig;
use cohort_node::node::{self, Events};

const USAGE: &str = "\
usage:
  cohort node [--config FILE] [--name NAME] [--port PORT] [--print-messages] [--traffic RATE]
      run one node (defaults: multicast 228.0.0.4:45564 on 127.0.0.1, beacon every
      500 ms, drop after 3000 ms, receiver on the first free port from 4000, admin
      endpoint on the first free port from 127.0.0.1:4700). One JSON event per line on
      stdout; logs on stderr (RUST_LOG). SIGTERM or Ctrl-C leaves gracefully.
      --traffic RATE sends RATE numbered ASYNC and RATE USE_ACK messages per second to
      every member (test traffic; `traffic stop` on the admin endpoint ends it).
  cohort status [--admin ADDR] [--json]
      list the members a running node sees (default ADDR 127.0.0.1:4700)
  cohort bench [--test tput|latency] [--mode MODE] [--size BYTES] [--count N]
      tput: throughput to a sink process on loopback, one RESULT line per mode: async,
      ack, syncack, raw-tcp (batched writes), raw-tcp-write (one write per message); all
      when no mode is given; default size 1024, count 300000.
      latency: round trips to an echo process, --mode rpc or raw-tcp (both when not
      given); default size 1024, count 20000.
      Both processes run a one-thread runtime; COHORT_BENCH_THREADS=N gives them N.
  cohort cluster [--nodes N] [--for SECONDS] [--config FILE]
      start N local nodes (default 3), wait until they see each other, print the
      status, run for SECONDS (default: until Ctrl-C), then stop them gracefully
";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        eprint!("{USAGE}");
        std::process::exit(2);
    };
    let rest = &args[1..];
    match cmd.as_str() {
        "node" => run_node(rest),
        "status" => run_status(rest),
        "cluster" => run_cluster(rest),
        "bench" => run_bench(rest),
        "bench-sink" => run_bench_sink(rest),
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            eprint!("unknown command {other:?}\n{USAGE}");
            std::process::exit(2);
        }
    }
}

/// Returns the value after `flag`, and whether the flag was present at all.
fn opt<'a>(args: &'a [String], flag: &str) -> anyhow::Result<Option<&'a str>> {
    match args.iter().position(|a| a == flag) {
        None => Ok(None),
        Some(i) => match args.get(i + 1) {
            Some(v) if !v.starts_with("--") => Ok(Some(v)),
            _ => bail!("{flag} needs a value"),
        },
    }
}

fn check_flags(args: &[String], with_value: &[&str], switches: &[&str]) -> anyhow::Result<()> {
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if with_value.contains(&a) {
            i += 2;
        } else if switches.contains(&a) {
            i += 1;
        } else {
            bail!("unknown argument {a:?}\n{USAGE}");
        }
    }
    Ok(())
}

/// A runtime for the short commands (status, cluster): two workers.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    runtime_with(2)
}

/// One thread: a current-thread runtime (no cross-thread wake-ups between the tasks of one
/// message's path); more: a multi-thread runtime with that many workers.
fn runtime_with(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        return Ok(tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?);
    }
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?)
}

/// The bench processes' runtime threads: `COHORT_BENCH_THREADS` (default 1), inherited by the
/// sink process.
fn bench_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let sink = std::env::args().nth(1).is_some_and(|a| a == "bench-sink");
    let var = if sink && std::env::var_os("COHORT_BENCH_SINK_THREADS").is_some() {
        "COHORT_BENCH_SINK_THREADS"
    } else {
        "COHORT_BENCH_THREADS"
    };
    let threads = match std::env::var(var) {
        Ok(v) => v.parse().context(var)?,
        Err(_) => 1,
    };
    runtime_with(threads)
}

fn run_node(args: &[String]) -> anyhow::Result<()> {
    check_flags(
        args,
        &["--config", "--name", "--port", "--traffic"],
        &["--print-messages"],
    )?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let mut config = match opt(args, "--config")? {
        Some(path) => NodeConfig::from_file(path)?,
        None => NodeConfig::defaults(),
    };
    if let Some(name) = opt(args, "--name")? {
        config.name = Some(name.into());
    }
    if let Some(port) = opt(args, "--port")? {
        config.transport.port = port.parse().context("--port")?;
    }
    if let Some(rate) = opt(args, "--traffic")? {
        let rate: u32 = rate.parse().context("--traffic")?;
        if rate > cohort_node::traffic::MAX_RATE {
            bail!(
                "--traffic: {rate} is above {}",
                cohort_node::traffic::MAX_RATE
            );
        }
        config.traffic_rate = rate;
    }
    if args.iter().any(|a| a == "--print-messages") {
        config.print_messages = true;
    }
    runtime_with(config.runtime_threads)?.block_on(async move {
        let (events, writer) = Events::start(std::io::stdout());
        let node = node::start(config, &events).await?;
        shutdown_signal().await?;
        node.stop(&events).await;
        drop(events);
        let _ = writer.await;
        Ok(())
    })
}

async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            r = tokio::signal::ctrl_c() => r?,
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}

fn run_status(args: &[String]) -> anyhow::Result<()> {
    check_flags(args, &["--admin"], &["--json"])?;
    let addr: SocketAddr = opt(args, "--admin")?
        .unwrap_or("127.0.0.1:4700")
        .parse()
        .context("--admin")?;
    let status = runtime()?.block_on(admin::query(addr, "status"))?;
    if args.iter().any(|a| a == "--json") {
        println!("{status}");
    } else {
        println!(
            "node {} in cluster {:?}",
            status["node"].as_str().unwrap_or("?"),
            status["cluster"].as_str().unwrap_or("?")
        );
        print!("{}", admin::table(&status));
    }
    Ok(())
}

/// A child node, stopped by PID when dropped.
struct ChildNode {
    child: Child,
    admin: SocketAddr,
}

impl ChildNode {
    fn terminate(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SIGTERM by PID (graceful leave), then wait; SIGKILL if it does not exit.
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        self.terminate();
    }
}

fn run_cluster(args: &[String]) -> anyhow::Result<()> {
    check_flags(args, &["--nodes", "--for", "--config"], &[])?;
    let n: usize = opt(args, "--nodes")?
        .unwrap_or("3")
        .parse()
        .context("--nodes")?;
    if !(1..=32).contains(&n) {
        bail!("--nodes must be between 1 and 32");
    }
    let run_for: Option<u64> = opt(args, "--for")?
        .map(str::parse)
        .transpose()
        .context("--for")?;
    let exe = std::env::current_exe()?;
    let mut nodes = Vec::new();
    for i in 1..=n {
        let name = format!("node{i}");
        let mut cmd = Command::new(&exe);
        cmd.args(["node", "--name", &name]);
        if let Some(c) = opt(args, "--config")? {
            cmd.args(["--config", c]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        // Wait for the ready line (the node prints it once serving).
        let admin = loop {
            let Some(line) = lines.next() else {
                bail!("{name} exited before it was ready");
            };
            let line = line?;
            println!("{line}");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["event"] == "ready" {
                break v["admin"]
                    .as_str()
                    .context("ready line without admin")?
                    .parse()?;
            }
        };
        // Keep echoing this node's events.
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                println!("{line}");
            }
        });
        nodes.push(ChildNode { child, admin });
        // Distinct start times make the lead the first node, as an operator expects.
        std::thread::sleep(Duration::from_millis(5));
    }
    let rt = runtime()?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut seen = Vec::new();
        for node in &nodes {
            let s = rt.block_on(admin::query(node.admin, "status"))?;
            seen.push(s["members"].as_array().map_or(0, Vec::len));
        }
        if seen.iter().all(|&k| k == n) {
            break;
        }
        if Instant::now() > deadline {
            bail!("nodes did not converge within 15 s (members seen: {seen:?})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = rt.block_on(admin::query(nodes[0].admin, "status"))?;
    println!(
        "# cluster of {n} is up; `cohort status --admin {}` shows:",
        nodes[0].admin
    );
    print!("{}", admin::table(&status));
    match run_for {
        Some(secs) => std::thread::sleep(Duration::from_secs(secs)),
        None => {
            println!("# Ctrl-C stops the cluster");
            rt.block_on(tokio::signal::ctrl_c())?;
        }
    }
    for node in nodes.iter_mut().rev() {
        node.terminate();
    }
    println!("# cluster stopped");
    Ok(())
}

fn run_bench(args: &[String]) -> anyhow::Result<()> {
    use cohort_node::bench::{self, Api, Mode};
    check_flags(args, &["--test", "--mode", "--size", "--count"], &[])?;
    let size: usize = opt(args, "--size")?
        .unwrap_or("1024")
        .parse()
        .context("--size")?;
    let rt = bench_runtime()?;
    match opt(args, "--test")?.unwrap_or("tput") {
        "tput" => {
            let modes = match opt(args, "--mode")? {
                Some(m) => vec![Mode::parse(m)?],
                None => vec![
                    Mode::RawTcp,
                    Mode::RawTcpWrite,
                    Mode::Async,
                    Mode::Ack,
                    Mode::SyncAck,
                ],
            };
            let count: u64 = opt(args, "--count")?
                .unwrap_or("300000")
                .parse()
                .context("--count")?;
            for mode in modes {
                println!("{}", rt.block_on(bench::run(mode, size, count))?);
            }
        }
        "latency" => {
            let apis = match opt(args, "--mode")? {
                Some("rpc") => vec![Api::Rpc],
                Some("raw-tcp") => vec![Api::RawTcp],
                Some(other) => bail!("unknown latency mode {other:?} (rpc, raw-tcp)"),
                None => vec![Api::RawTcp, Api::Rpc],
            };
            let count: u64 = opt(args, "--count")?
                .unwrap_or("20000")
                .parse()
                .context("--count")?;
            for api in apis {
                println!("{}", rt.block_on(bench::latency(api, size, count))?);
            }
        }
        other => bail!("unknown test {other:?} (tput, latency)"),
    }
    Ok(())
}

fn run_bench_sink(args: &[String]) -> anyhow::Result<()> {
    check_flags(args, &["--count"], &["--raw", "--echo"])?;
    let raw = args.iter().any(|a| a == "--raw");
    let mut out = std::io::stdout();
    if args.iter().any(|a| a == "--echo") {
        return bench_runtime()?.block_on(cohort_node::bench::echo_sink(raw, &mut out));
    }
    let count: u64 = opt(args, "--count")?.context("--count")?.parse()?;
    bench_runtime()?.block_on(cohort_node::bench::sink(raw, count, &mut out))
}
