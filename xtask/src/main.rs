//! Cohort's project automation, run as `cargo xtask <command>`.
//!
//! - `ci`: everything CI checks: rustfmt, clippy with warnings denied, the whole test suite
//!   (the tidy tests of `cohort-test-support` included), and the docs with warnings denied.
//! - `fuzz [--seconds N]`: a short run of every cargo-fuzz target from its committed corpus.
//! - `sim [--seeds N | --seed S]`: the simulation suite over many seeds, or one seed replayed.
//! - `cluster up --nodes N [--config FILE] | status | down`: a local cluster of real processes.
//! - `scenario NAME | all`: multi-process scenarios with real faults.
//! - `bench [--mode M] [--size B] [--test T]`: throughput and latency between real processes,
//!   beside plain TCP; writes docs/BENCHMARKS.md.
//!
//! Tidy checks live in `crates/cohort-test-support/tests/tidy.rs`, so a plain `cargo test` runs them.

// A command-line tool: reporting on stderr is its job.
#![allow(clippy::print_stderr)]

use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

mod api;
mod bench;
mod cluster;
mod deploy;
mod fuzz;
mod harness;
mod netns;
mod scenario;
mod session;
mod upgrade;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  ci                  fmt check, clippy -D warnings, tests, doc build, API check (what CI runs)
  api [--bless]       each crate's public API against its snapshot in api/ (--bless: rewrite)
  fuzz [--seconds N]  run every fuzz target for N seconds (default 20) from its corpus
  sim [--seeds N]     run the simulation suite over seeds 1..=N (default 50)
  sim --seed S        replay one seed
  cluster up --nodes N [--config FILE]
                      start N `cohort` nodes on loopback (recorded under target/cohort-cluster)
  cluster status      what runs, with each node's view size
  cluster down        stop the recorded nodes (SIGTERM, by PID)
  scenario NAME|all   real-process fault scenarios: discovery, crash, pause, lead-failover,
                      graceful-leave, messaging, foreign-cluster, partition (needs root),
                      session-delta, session-backup (the counter app through SIGKILL),
                      deploy (files to every node, a receiver killed mid-transfer),
                      rolling-upgrade (the previous release's counter app replaced member by
                      member with the current build; then version_policy = \"same\")
  bench [--mode async|ack|syncack] [--size BYTES] [--test tput|latency|idle|map|session|deploy] [--quick]
                      throughput and latency between processes beside plain TCP; a full run
                      (no filter) rewrites docs/BENCHMARKS.md; `--test map|session`: the state layer
";

fn main() -> ExitCode {
    match run(&std::env::args().skip(1).collect::<Vec<_>>()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let root = project_root();
    std::env::set_current_dir(&root).with_context(|| format!("cd {}", root.display()))?;
    match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("api") => api::run(&args[1..]),
        Some("fuzz") => {
            let seconds = match args.get(1).map(String::as_str) {
                None => 20,
                Some("--seconds") => args
                    .get(2)
                    .context("--seconds needs a value")?
                    .parse()
                    .context("--seconds takes a whole number")?,
                Some(other) => bail!("unknown fuzz option `{other}`\n\n{USAGE}"),
            };
            fuzz::run(seconds)
        }
        Some("sim") => {
            let (var, value) = match (args.get(1).map(String::as_str), args.get(2)) {
                (None, _) => ("COHORT_SIM_SEEDS", "50".to_owned()),
                (Some("--seeds"), Some(n)) => ("COHORT_SIM_SEEDS", n.clone()),
                (Some("--seed"), Some(s)) => ("COHORT_SIM_SEED", s.clone()),
                _ => bail!("usage: cargo xtask sim [--seeds N | --seed S]"),
            };
            value
                .parse::<u64>()
                .with_context(|| format!("`{value}` is not a number"))?;
            run_cmd(
                cargo()
                    .args(["test", "--release", "-p", "cohort-sim", "--test", "it"])
                    .env(var, value),
            )
        }
        Some("cluster") => cluster::run(&args[1..]),
        Some("scenario") => scenario::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("-h" | "--help" | "help") | None => {
            eprint!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}

pub(crate) fn project_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the root")
        .to_path_buf()
}

/// Runs `cmd`, echoing it first, and fails if it fails.
pub(crate) fn run_cmd(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

pub(crate) fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn ci() -> Result<()> {
    run_cmd(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run_cmd(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))?;
    run_cmd(cargo().args(["test", "--workspace", "--all-features", "--locked"]))?;
    run_cmd(
        cargo()
            .args([
                "doc",
                "--workspace",
                "--all-features",
                "--no-deps",
                "--locked",
            ])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    api::run(&[])?;
    eprintln!("xtask ci: all checks passed");
    Ok(())
}
