//! A small network of our own for the partition scenario: one namespace holding a bridge (the
//! "switch") and one namespace per node, each joined to the bridge by a veth pair, addresses
//! 10.213.0.x/24. Nothing leaves these namespaces. Needs root and `ip` (iproute2); everything
//! is deleted when the [`Lab`] is dropped.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Why the lab cannot be built here (the scenario is skipped with this message).
pub(crate) struct Unavailable(pub(crate) String);

/// The namespaces of one run.
pub(crate) struct Lab {
    switch: String,
    nodes: Vec<String>,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

impl Lab {
    /// Builds a switch and `n` node namespaces.
    pub(crate) fn create(n: usize) -> Result<Self, Unavailable> {
        if !is_root() {
            return Err(Unavailable(
                "needs root to create network namespaces; run `cargo xtask scenario partition` as root to include it".into(),
            ));
        }
        if Command::new("ip")
            .arg("-V")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            return Err(Unavailable(
                "needs `ip` (Debian package iproute2) to create network namespaces".into(),
            ));
        }
        let tag = std::process::id() % 100_000;
        let mut lab = Self {
            switch: format!("cohsw{tag}"),
            nodes: (0..n).map(|i| format!("cohn{tag}-{i}")).collect(),
        };
        lab.build()
            .map_err(|e| Unavailable(format!("cannot build the network namespaces: {e:#}")))?;
        // On failure `lab` is dropped above, deleting whatever was built.
        Ok(lab)
    }

    fn build(&mut self) -> Result<()> {
        let sw = self.switch.clone();
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        // Snooping off: the bridge floods multicast like a plain switch without a querier.
        ip(&[
            "-n",
            &sw,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for i in 0..self.nodes.len() {
            let ns = self.nodes[i].clone();
            let port = format!("p{i}");
            let addr = format!("{}/24", self.ip(i));
            ip(&["netns", "add", &ns])?;
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
        }
        Ok(())
    }

    /// Node `i`'s address.
    pub(crate) fn ip(&self, i: usize) -> String {
        format!("10.213.0.{}", i + 1)
    }

    /// Node `i`'s namespace.
    pub(crate) fn node_ns(&self, i: usize) -> &str {
        &self.nodes[i]
    }

    /// Takes node `i`'s port off the bridge: its link stays up, its frames go nowhere.
    pub(crate) fn cut(&self, i: usize) -> Result<()> {
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &format!("p{i}"),
            "nomaster",
        ])
    }

    /// Puts node `i`'s port back on the bridge.
    pub(crate) fn restore(&self, i: usize) -> Result<()> {
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &format!("p{i}"),
            "master",
            "br0",
        ])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes its interfaces (and the veth peers with them).
        for ns in self.nodes.iter().chain(std::iter::once(&self.switch)) {
            if !ns.is_empty() {
                let _ = ip(&["netns", "del", ns]);
            }
        }
    }
}
