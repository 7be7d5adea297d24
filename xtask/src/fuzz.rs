//! `cargo xtask fuzz`: a short smoke run of each cargo-fuzz target.
//!
//! cargo-fuzz needs a compiler that accepts `-Z` flags. We use a nightly toolchain when one is
//! installed and otherwise the stable compiler with `RUSTC_BOOTSTRAP=1`. New inputs go to a
//! scratch directory under `target/`, so the committed corpus only changes on purpose.
//! Without cargo-fuzz the command says so and fails; the corpus itself is always replayed by
//! `cargo test` (`crates/cohort-wire/tests/it/corpus.rs`).

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

const TARGETS: [&str; 4] = ["frame_stream", "beacon", "map_message", "deploy_message"];

fn has_nightly() -> bool {
    Command::new("cargo")
        .args(["+nightly", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub(crate) fn run(seconds: u32) -> Result<()> {
    let have_fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_fuzz {
        bail!("cargo-fuzz is not installed (cargo install cargo-fuzz --locked)");
    }
    let nightly = has_nightly();
    for target in TARGETS {
        let scratch = Path::new("target/fuzz-scratch").join(target);
        std::fs::create_dir_all(&scratch)?;
        let corpus = Path::new("fuzz/corpus").join(target);
        let mut cmd = Command::new("cargo");
        if nightly {
            cmd.arg("+nightly");
        } else {
            cmd.env("RUSTC_BOOTSTRAP", "1");
        }
        cmd.args(["fuzz", "run", "--fuzz-dir", "fuzz", target])
            .arg(&scratch)
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-rss_limit_mb=2048")
            .arg("-print_final_stats=1");
        crate::run_cmd(&mut cmd)?;
    }
    eprintln!(
        "xtask fuzz: {} targets ran {seconds}s each without a crash",
        TARGETS.len()
    );
    Ok(())
}
