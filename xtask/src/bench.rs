//! `cargo xtask bench`: placeholder until the next commit.
use anyhow::{Result, bail};

pub(crate) fn run(_args: &[String]) -> Result<()> {
    bail!("not yet")
}
