//! `cohort`: run a node, ask one for its status, or start a local cluster.

// A command-line tool: printing is its output.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use cohort_node::admin;
use cohort_node::config::NodeConfig;
use cohort_node::node::{self, Events};

/// With the `mimalloc` feature, the binary's allocator (docs/BENCHMARKS.md, "The allocator").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Run a Cohort node, ask a running one for its status, start a local cluster, or measure.
///
/// Exit codes: 0 success; 1 a runtime error (an invalid configuration, a port that cannot be
/// bound, a node that does not answer); 2 a usage error (unknown flag, bad value).
#[derive(Parser, Debug)]
#[command(name = "cohort", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run one node. One JSON event per line on stdout; logs on stderr (RUST_LOG). SIGTERM or
    /// Ctrl-C leaves gracefully.
    ///
    /// Defaults without a file: multicast 228.0.0.4:45564 on 127.0.0.1, a beacon every 500 ms,
    /// dropped after 3 s, the receiver on the first free port from 4000, the admin endpoint on
    /// the first free port from 127.0.0.1:4700. Flags override the file.
    Node(NodeArgs),
    /// List the members a running node sees (asks its admin endpoint's /api/status).
    Status(StatusArgs),
    /// Deploy a file to every member through a node's deployer (`POST /api/deploy/NAME`).
    Deploy(DeployArgs),
    /// Undeploy a file from every member (`DELETE /api/deploy/NAME`).
    Undeploy(UndeployArgs),
    /// Which files each member has, and whether they agree (`/api/deployments`).
    Deployments(StatusArgs),
    /// Start N local nodes, wait until they see each other, print the status, run, then stop
    /// them gracefully.
    Cluster(ClusterArgs),
    /// Measure throughput to a sink process (`--test tput`) or round trips to an echo process
    /// (`--test latency`) on loopback, one RESULT line per mode.
    ///
    /// Both processes run a one-thread runtime; COHORT_BENCH_THREADS=N gives them N.
    /// COHORT_BENCH_DELAYED_ACKS=0 turns `transport.delayed_acks` off in both.
    Bench(BenchArgs),
    /// The far end of `cohort bench` (started by it).
    #[command(hide = true)]
    BenchSink(SinkArgs),
}

#[derive(clap::Args, Debug)]
struct NodeArgs {
    /// The TOML configuration file (docs/CONFIGURATION.md).
    #[arg(long, value_name = "FILE")]
    config: Option<String>,
    /// The node's name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// The first receiver port tried.
    #[arg(long)]
    port: Option<u16>,
    /// Write a `message` event line for every message received.
    #[arg(long)]
    print_messages: bool,
    /// Test traffic: RATE numbered ASYNC and RATE USE_ACK messages per second to every member
    /// (`POST /api/traffic/stop` on the admin endpoint ends it).
    #[arg(long, value_name = "RATE", value_parser = clap::value_parser!(u32).range(0..=i64::from(cohort_node::traffic::MAX_RATE)))]
    traffic: Option<u32>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(clap::Args, Debug)]
struct StatusArgs {
    /// The node's admin endpoint.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:4700")]
    admin: SocketAddr,
    /// Print the JSON document (`/api/status`) instead of a table.
    #[arg(long)]
    json: bool,
    /// Bearer token, for an endpoint bound beyond loopback.
    #[arg(long, env = "COHORT_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(clap::Args, Debug)]
struct DeployArgs {
    /// The file.
    file: std::path::PathBuf,
    /// Its name in the deploy directories (default: the file's name).
    #[arg(long)]
    name: Option<String>,
    /// The node's admin endpoint.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:4700")]
    admin: SocketAddr,
    /// Bearer token, for an endpoint bound beyond loopback.
    #[arg(long, env = "COHORT_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(clap::Args, Debug)]
struct UndeployArgs {
    /// The file's name.
    name: String,
    /// The node's admin endpoint.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:4700")]
    admin: SocketAddr,
    /// Bearer token, for an endpoint bound beyond loopback.
    #[arg(long, env = "COHORT_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(clap::Args, Debug)]
struct ClusterArgs {
    /// How many nodes (1 to 32).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=32))]
    nodes: u16,
    /// Run this long, then stop (`30s`, `2m`; a bare number is seconds). Default: until Ctrl-C.
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_seconds)]
    run_for: Option<Duration>,
    /// A configuration file for every node.
    #[arg(long, value_name = "FILE")]
    config: Option<String>,
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = BenchTest::Tput)]
    test: BenchTest,
    /// One mode (tput: async, ack, syncack, async-batch, ack-batch, raw-tcp, raw-tcp-write;
    /// latency: rpc, raw-tcp).
    /// Default: all of the test's modes.
    #[arg(long)]
    mode: Option<String>,
    /// Message size (`1024`, `64KiB`).
    #[arg(long, default_value = "1024", value_parser = parse_size)]
    size: usize,
    /// Messages (default 300000 for tput, 20000 for latency).
    #[arg(long)]
    count: Option<u64>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum BenchTest {
    /// Throughput.
    Tput,
    /// Round trips.
    Latency,
}

#[derive(clap::Args, Debug)]
struct SinkArgs {
    #[arg(long)]
    count: Option<u64>,
    #[arg(long)]
    raw: bool,
    #[arg(long)]
    echo: bool,
}

/// `30s`, `2m`, `1h`; a bare number is seconds.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    cohort_wire::units::parse_duration(text)
}

fn parse_size(text: &str) -> Result<usize, String> {
    let n = cohort_wire::units::parse_size(text)?;
    usize::try_from(n).map_err(|_| format!("{n} bytes is too large"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Node(a) => run_node(a),
        Cmd::Status(a) => run_status(&a),
        Cmd::Deploy(a) => run_deploy(&a),
        Cmd::Undeploy(a) => run_undeploy(&a),
        Cmd::Deployments(a) => run_deployments(&a),
        Cmd::Cluster(a) => run_cluster(&a),
        Cmd::Bench(a) => run_bench(&a),
        Cmd::BenchSink(a) => run_bench_sink(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}`: the whole chain on one line, never a backtrace.
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
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

fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let mut config = match &args.config {
        Some(path) => NodeConfig::from_file(path)?,
        None => NodeConfig::defaults(),
    };
    if let Some(name) = args.name {
        config.name = Some(name);
    }
    if let Some(port) = args.port {
        config.transport.port = port;
    }
    if let Some(rate) = args.traffic {
        config.traffic_rate = rate;
    }
    if args.print_messages {
        config.print_messages = true;
    }
    let name = config
        .name
        .clone()
        .unwrap_or_else(|| cohort_net::Net::host_name(&cohort_net::TokioNet));
    // Every line the node logs carries its name (the `node` span of docs/OPERATIONS.md).
    let span = tracing::info_span!("node", node = %name);
    let _entered = span.enter();
    runtime_with(config.runtime_threads)?.block_on(async move {
        let (events, writer) = Events::start(std::io::stdout());
        // Handlers first: a SIGTERM right after the `ready` line must still be graceful.
        let shutdown = shutdown_signal()?;
        let node = node::start(config, &events).await?;
        shutdown.await;
        node.stop(&events).await;
        drop(events);
        let _ = writer.await;
        Ok(())
    })
}

/// Installs the SIGTERM and SIGINT handlers now; the future ends at the first signal.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

fn run_status(args: &StatusArgs) -> anyhow::Result<()> {
    let status = runtime()?.block_on(admin::get_json(
        args.admin,
        "/api/status",
        args.token.as_deref(),
    ))?;
    if args.json {
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

fn run_deploy(args: &DeployArgs) -> anyhow::Result<()> {
    let name = match &args.name {
        Some(n) => n.clone(),
        None => args
            .file
            .file_name()
            .and_then(|n| n.to_str())
            .context("the file has no name; give --name")?
            .to_owned(),
    };
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let answer = runtime()?.block_on(admin::request_with_body(
        args.admin,
        "POST",
        &format!("/api/deploy/{}", url_segment(&name)),
        args.token.as_deref(),
        bytes.into(),
    ))?;
    println!("{}", String::from_utf8_lossy(&answer).trim());
    Ok(())
}

fn run_undeploy(args: &UndeployArgs) -> anyhow::Result<()> {
    let answer = runtime()?.block_on(admin::request(
        args.admin,
        "DELETE",
        &format!("/api/deploy/{}", url_segment(&args.name)),
        args.token.as_deref(),
    ))?;
    println!("{}", String::from_utf8_lossy(&answer).trim());
    Ok(())
}

fn run_deployments(args: &StatusArgs) -> anyhow::Result<()> {
    let d = runtime()?.block_on(admin::get_json(
        args.admin,
        "/api/deployments",
        args.token.as_deref(),
    ))?;
    if args.json {
        println!("{d}");
        return Ok(());
    }
    println!("members agree: {}", d["agree"].as_bool().unwrap_or(false));
    for m in d["members"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let local = if m["local"] == true {
            " (this node)"
        } else {
            ""
        };
        println!("{}{local}", m["id"].as_str().unwrap_or("?"));
        for f in m["files"].as_array().map(Vec::as_slice).unwrap_or_default() {
            println!(
                "  {:<40} {:>12} bytes  sha256 {}",
                f["name"].as_str().unwrap_or("?"),
                f["size"],
                &f["sha256"].as_str().unwrap_or("?")
                    [..16.min(f["sha256"].as_str().unwrap_or("").len())]
            );
        }
    }
    for t in d["transfers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        println!(
            "receiving {}: {}/{} chunks",
            t["file"]["name"].as_str().unwrap_or("?"),
            t["chunks_done"],
            t["chunks"]
        );
    }
    Ok(())
}

/// A name as one URL path segment (percent-encoded beyond unreserved characters).
fn url_segment(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
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

fn run_cluster(args: &ClusterArgs) -> anyhow::Result<()> {
    let n = usize::from(args.nodes);
    let exe = std::env::current_exe()?;
    let mut nodes = Vec::new();
    for i in 1..=n {
        let name = format!("node{i}");
        let mut cmd = Command::new(&exe);
        cmd.args(["node", "--name", &name]);
        if let Some(c) = &args.config {
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
            let s = rt.block_on(admin::get_json(node.admin, "/api/status", None))?;
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
    let status = rt.block_on(admin::get_json(nodes[0].admin, "/api/status", None))?;
    println!(
        "# cluster of {n} is up; `cohort status --admin {}` shows:",
        nodes[0].admin
    );
    print!("{}", admin::table(&status));
    match args.run_for {
        Some(d) => std::thread::sleep(d),
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

fn run_bench(args: &BenchArgs) -> anyhow::Result<()> {
    use cohort_node::bench::{self, Api, Mode};
    let size = args.size;
    let rt = bench_runtime()?;
    match args.test {
        BenchTest::Tput => {
            let modes = match &args.mode {
                Some(m) => vec![Mode::parse(m)?],
                None => vec![
                    Mode::RawTcp,
                    Mode::RawTcpWrite,
                    Mode::Async,
                    Mode::Ack,
                    Mode::SyncAck,
                    Mode::AsyncBatch,
                    Mode::AckBatch,
                ],
            };
            let count = args.count.unwrap_or(300_000);
            for mode in modes {
                // As a task, like an application's sender (see the latency loop below).
                let run = rt.spawn(bench::run(mode, size, count));
                println!("{}", rt.block_on(run)??);
            }
        }
        BenchTest::Latency => {
            let apis = match args.mode.as_deref() {
                Some("rpc") => vec![Api::Rpc],
                Some("raw-tcp") => vec![Api::RawTcp],
                Some(other) => bail!("unknown latency mode {other:?} (rpc, raw-tcp)"),
                None => vec![Api::RawTcp, Api::Rpc],
            };
            let count = args.count.unwrap_or(20_000);
            for api in apis {
                // The loop runs as a task, as an application's caller does: a `block_on`
                // future woken by another task costs tokio an extra poll of its I/O driver
                // (an `epoll_wait` with no timeout) before it runs: twice per RPC, once per
                // awaited receipt.
                let run = rt.spawn(bench::latency(api, size, count));
                println!("{}", rt.block_on(run)??);
            }
        }
    }
    Ok(())
}

fn run_bench_sink(args: &SinkArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    if args.echo {
        return bench_runtime()?.block_on(cohort_node::bench::echo_sink(args.raw, &mut out));
    }
    let count = args.count.context("--count")?;
    bench_runtime()?.block_on(cohort_node::bench::sink(args.raw, count, &mut out))
}
