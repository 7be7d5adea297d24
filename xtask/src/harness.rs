//! Real `cohort` processes for the cluster and scenario commands: building the binary once,
//! starting nodes with their event lines in a file, waiting on those lines with deadlines,
//! signals by PID, and the admin endpoint.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{cargo, run_cmd};

/// How long a node gets to print `ready`.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a node gets to exit after SIGTERM before it is killed.
pub(crate) const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Event lines kept per node in memory (a node under test traffic writes many).
pub(crate) const MAX_EVENTS: usize = 2_000_000;
/// Poll interval while waiting on a condition.
const POLL: Duration = Duration::from_millis(5);

/// The target directory (`CARGO_TARGET_DIR` or `target/` under the project root).
pub(crate) fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                crate::project_root().join(dir)
            }
        }
        None => crate::project_root().join("target"),
    }
}

/// Builds the `cohort` binary once and returns its path.
pub(crate) fn build_cohort(release: bool) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--locked", "-p", "cohort-node", "--bin", "cohort"]);
    if release {
        cmd.arg("--release");
    }
    run_cmd(&mut cmd)?;
    let exe = target_dir()
        .join(if release { "release" } else { "debug" })
        .join("cohort");
    if !exe.exists() {
        bail!("built, but {} is missing", exe.display());
    }
    Ok(exe)
}

/// Wall clock in microseconds since the Unix epoch (event lines carry `time_us` on the same
/// clock, so figures are measured between this process and the nodes).
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Milliseconds between two `time_us` stamps.
pub(crate) fn ms_between(from_us: u64, to_us: u64) -> f64 {
    (to_us.saturating_sub(from_us)) as f64 / 1000.0
}

/// Sends `signal` (`TERM`, `KILL`, `STOP`, `CONT`) to one PID.
pub(crate) fn signal(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed (process gone?)");
    }
    Ok(())
}

/// True while `pid` exists and runs `exe` (guards against a recycled PID).
pub(crate) fn runs(pid: u32, exe: &Path) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe)
}

/// A free UDP port on loopback, for a cluster's multicast port (bound and released; the
/// kernel hands out ephemeral ports in turn, so a reuse within one run is unlikely). Sockets
/// the harness's processes listen on are bound to port 0 and reported in their ready lines.
pub(crate) fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Asks a node's admin endpoint (HTTP) for `command` (`status`, `stats` or `traffic stop`);
/// returns its JSON answer. A plain HTTP/1.1 exchange: the endpoint answers one request per
/// connection with a `Content-Length` body and closes.
pub(crate) fn admin(addr: SocketAddr, command: &str, timeout: Duration) -> Result<Value> {
    let (method, path) = match command {
        "status" => ("GET", "/api/status"),
        "stats" => ("GET", "/api/stats"),
        "traffic stop" => ("POST", "/api/traffic/stop"),
        other => bail!("unknown admin command {other:?}"),
    };
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("admin endpoint {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = Vec::new();
    s.take(16 << 20).read_to_end(&mut out)?;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("{addr}{path}: no HTTP response"))?;
    let head = String::from_utf8_lossy(&out[..split]);
    let body = &out[split + 4..];
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "{addr}{path}: {}: {}",
            head.lines().next().unwrap_or(""),
            String::from_utf8_lossy(body)
        );
    }
    serde_json::from_slice(body).with_context(|| format!("answer of {addr} to {command:?}"))
}

/// How to start one node.
pub(crate) struct Spawn<'a> {
    /// The binary.
    pub(crate) exe: &'a Path,
    /// Node name (also the file names).
    pub(crate) name: &'a str,
    /// The TOML configuration written to `<dir>/<name>.toml`.
    pub(crate) config: &'a str,
    /// Where its files go.
    pub(crate) dir: &'a Path,
    /// The subcommand before the options (`["node"]` for `cohort`; none for an app).
    pub(crate) command: &'a [&'a str],
    /// Extra arguments after `--config` and `--name`.
    pub(crate) args: &'a [&'a str],
    /// Run inside this network namespace (`ip netns exec`).
    pub(crate) netns: Option<&'a str>,
}

/// One running `cohort node` whose event lines are read from its file.
pub(crate) struct NodeProc {
    /// Node name.
    pub(crate) name: String,
    /// PID of the `cohort` process.
    pub(crate) pid: u32,
    /// The event file (stdout).
    pub(crate) events_path: PathBuf,
    /// The log file (stderr).
    pub(crate) log_path: PathBuf,
    /// The `ready` line.
    pub(crate) ready: Value,
    /// Event lines read so far.
    pub(crate) events: Vec<Value>,
    child: Option<Child>,
    file: File,
    read_pos: u64,
    partial: Vec<u8>,
    exe: PathBuf,
}

impl NodeProc {
    /// Starts a node and waits for its `ready` line.
    pub(crate) fn start(s: &Spawn<'_>) -> Result<Self> {
        std::fs::create_dir_all(s.dir)?;
        let config_path = s.dir.join(format!("{}.toml", s.name));
        std::fs::write(&config_path, s.config)?;
        let events_path = s.dir.join(format!("{}.events", s.name));
        let log_path = s.dir.join(format!("{}.log", s.name));
        let out = File::create(&events_path)?;
        let err = File::create(&log_path)?;
        let mut cmd = match s.netns {
            Some(ns) => {
                // `ip netns exec` execs the command in place: the PID is the node's.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(s.exe);
                c
            }
            None => Command::new(s.exe),
        };
        cmd.args(s.command)
            .arg("--config")
            .arg(&config_path)
            .args(["--name", s.name])
            .args(s.args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group: a Ctrl-C on the harness does not reach it; the harness
            // stops it by PID.
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", s.exe.display()))?;
        let pid = child.id();
        let mut node = Self {
            name: s.name.to_owned(),
            pid,
            file: File::open(&events_path)?,
            events_path,
            log_path,
            ready: Value::Null,
            events: Vec::new(),
            child: Some(child),
            read_pos: 0,
            partial: Vec::new(),
            exe: s.exe.to_owned(),
        };
        node.ready = node.wait(0, "ready", READY_TIMEOUT, |v| v["event"] == "ready")?;
        Ok(node)
    }

    /// Leaves the process running when this value is dropped (`cluster up`).
    pub(crate) fn detach(mut self) {
        self.child = None;
    }

    /// The node's member id.
    pub(crate) fn id(&self) -> &str {
        self.ready["id"].as_str().unwrap_or("?")
    }

    /// The admin endpoint.
    pub(crate) fn admin_addr(&self) -> Result<SocketAddr> {
        self.ready["admin"]
            .as_str()
            .context("node runs without admin endpoint")?
            .parse()
            .context("admin address")
    }

    /// Asks the admin endpoint.
    pub(crate) fn admin(&self, command: &str) -> Result<Value> {
        admin(self.admin_addr()?, command, Duration::from_secs(40))
    }

    /// Reads the event lines written since the last call.
    pub(crate) fn poll(&mut self) -> Result<()> {
        self.file.seek(SeekFrom::Start(self.read_pos))?;
        let mut buf = Vec::new();
        let n = self.file.read_to_end(&mut buf)?;
        self.read_pos += n as u64;
        self.partial.extend_from_slice(&buf);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            if self.events.len() >= MAX_EVENTS {
                bail!("{}: more than {MAX_EVENTS} event lines", self.name);
            }
            match serde_json::from_slice::<Value>(&line) {
                Ok(v) => self.events.push(v),
                Err(_) => bail!(
                    "{}: an event line is not JSON: {}",
                    self.name,
                    String::from_utf8_lossy(&line).trim_end()
                ),
            }
        }
        Ok(())
    }

    /// The number of events read: a mark for [`NodeProc::wait`].
    pub(crate) fn mark(&mut self) -> Result<usize> {
        self.poll()?;
        Ok(self.events.len())
    }

    /// Waits until an event at index `from` or later satisfies `pred`; returns it. Fails at the
    /// deadline, or when the process exits first.
    pub(crate) fn wait(
        &mut self,
        from: usize,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut checked = from;
        loop {
            // Exit first, then read: every line written before the exit is seen.
            let exited = self.exit_status()?;
            self.poll()?;
            if let Some(v) = self.events[checked.min(self.events.len())..]
                .iter()
                .find(|v| pred(v))
            {
                return Ok(v.clone());
            }
            checked = checked.max(self.events.len());
            if let Some(status) = exited {
                bail!(
                    "{}: exited ({status}) before {what}\n{}",
                    self.name,
                    self.tail()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: no {what} within {:.1} s\n{}",
                    self.name,
                    timeout.as_secs_f64(),
                    self.tail()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits for the `member_disappeared` of `id` after `from`.
    pub(crate) fn wait_gone(&mut self, from: usize, id: &str, timeout: Duration) -> Result<Value> {
        self.wait(from, &format!("member_disappeared of {id}"), timeout, |v| {
            v["event"] == "member_disappeared" && v["member"]["id"] == id
        })
    }

    /// Waits for the `member_added` of `id` after `from`.
    pub(crate) fn wait_added(&mut self, from: usize, id: &str, timeout: Duration) -> Result<Value> {
        self.wait(from, &format!("member_added of {id}"), timeout, |v| {
            v["event"] == "member_added" && v["member"]["id"] == id
        })
    }

    /// The members this node sees now according to its event lines (added, not since gone).
    pub(crate) fn members(&mut self) -> Result<Vec<String>> {
        self.poll()?;
        let mut members: Vec<String> = Vec::new();
        for v in &self.events {
            let id = v["member"]["id"].as_str().unwrap_or_default().to_owned();
            match v["event"].as_str() {
                Some("member_added") if !members.contains(&id) => members.push(id),
                Some("member_disappeared") => members.retain(|m| *m != id),
                _ => {}
            }
        }
        Ok(members)
    }

    /// Waits until this node's view (from its event lines) is exactly `ids` (in any order);
    /// returns the `time_us` of the newest `member_added` line then.
    pub(crate) fn wait_view(&mut self, ids: &[&str], timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut seen = self.members()?;
            seen.sort();
            let mut want: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
            want.sort();
            if seen == want {
                // When the view became complete: the newest of the adds that made it.
                let done = self
                    .events
                    .iter()
                    .filter(|v| v["event"] == "member_added")
                    .filter_map(|v| v["time_us"].as_u64())
                    .max()
                    .unwrap_or_else(now_us);
                return Ok(done);
            }
            if let Some(status) = self.exit_status()? {
                bail!(
                    "{}: exited ({status}) while waiting for its view",
                    self.name
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: view is {seen:?}, not {want:?}, after {:.1} s\n{}",
                    self.name,
                    timeout.as_secs_f64(),
                    self.tail()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// The exit status, if the process has ended.
    pub(crate) fn exit_status(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match &mut self.child {
            Some(c) => Ok(c.try_wait()?),
            None => Ok((!runs(self.pid, &self.exe)).then(Default::default)),
        }
    }

    /// Sends a signal to this node's PID.
    pub(crate) fn signal(&self, sig: &str) -> Result<()> {
        signal(self.pid, sig)
    }

    /// Waits for the process to exit; returns its status.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status()? {
                self.poll()?;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: still running {:.1} s after the signal",
                    self.name,
                    timeout.as_secs_f64()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGKILL (also ends a stopped process) and reap.
    pub(crate) fn kill(&mut self) {
        if matches!(self.exit_status(), Ok(None)) {
            let _ = signal(self.pid, "KILL");
        }
        if let Some(c) = &mut self.child {
            let _ = c.wait();
        }
        let _ = self.poll();
    }

    /// The last event lines and log lines, for failure messages.
    pub(crate) fn tail(&self) -> String {
        let events: Vec<String> = self
            .events
            .iter()
            .rev()
            .take(8)
            .rev()
            .map(Value::to_string)
            .collect();
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let log: Vec<&str> = log.lines().rev().take(8).collect();
        let log: Vec<&str> = log.into_iter().rev().collect();
        format!(
            "  last events of {}:\n    {}\n  last log lines ({}):\n    {}",
            self.name,
            events.join("\n    "),
            self.log_path.display(),
            log.join("\n    ")
        )
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        // Only our own child, by PID; a stopped process is killed too.
        if self.child.is_some() {
            self.kill();
        }
    }
}
