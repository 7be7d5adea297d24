//! Shared by the process tests of this crate: a node process killed by its PID on drop, and a
//! configuration on static members over loopback.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_cohort");

/// A node process; killed by PID on drop (never by name).
pub struct Proc {
    pub child: Child,
    pub lines: mpsc::Receiver<(Instant, Value)>,
    /// Lines read while waiting for another, oldest first: a later wait takes them, so events
    /// that may come in either order can be awaited one after the other. At most
    /// [`BACKLOG_LIMIT`], the oldest dropped past it.
    backlog: std::cell::RefCell<std::collections::VecDeque<(Instant, Value)>>,
    /// Its config and stderr log; removed on drop unless the test failed.
    dir: std::path::PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Proc {
    pub fn start(config: &str, name: &str) -> Self {
        // One directory per process started: tests run in parallel and reuse names.
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "cohort-node-test-{}-{n}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(BIN)
            .args(["node", "--config", path.to_str().unwrap(), "--name", name])
            .stdout(Stdio::piped())
            .env(
                "RUST_LOG",
                "info,cohort_interceptors=debug,cohort_channel=debug",
            )
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line).expect("every stdout line is JSON");
                if tx.send((Instant::now(), v)).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            lines,
            backlog: Default::default(),
            dir,
        }
    }

    /// Waits for an event line matching `pred`.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_at(what, pred).1
    }

    /// Waits for the oldest event line not yet taken that matches `pred` (from the backlog of
    /// lines other waits passed over, then from new lines); also returns when it was read.
    pub fn wait_for_at(&self, what: &str, pred: impl Fn(&Value) -> bool) -> (Instant, Value) {
        let mut backlog = self.backlog.borrow_mut();
        if let Some(i) = backlog.iter().position(|(_, v)| pred(v)) {
            return backlog.remove(i).expect("a position in the backlog");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, v)) if pred(&v) => return (at, v),
                Ok(line) => {
                    if backlog.len() == BACKLOG_LIMIT {
                        backlog.pop_front();
                    }
                    backlog.push_back(line);
                }
                Err(_) => panic!("no {what} line within 20 s"),
            }
        }
    }

    /// Every line not yet taken, oldest first (the backlog, then what has arrived since),
    /// without waiting.
    pub fn take_lines(&self) -> Vec<(Instant, Value)> {
        let mut lines: Vec<_> = self.backlog.borrow_mut().drain(..).collect();
        lines.extend(self.lines.try_iter());
        lines
    }

    /// Forgets every line read so far that no wait took: later waits see only lines read
    /// after this (a test that changes something and waits for its effect must not be
    /// answered by an older line). A line the node wrote but the reader thread has not passed
    /// on yet survives, so call it before the change, not after.
    pub fn forget_earlier_lines(&self) {
        let mut backlog = self.backlog.borrow_mut();
        backlog.clear();
        while self.lines.try_recv().is_ok() {}
    }
}

/// The most lines [`Proc`] keeps for later waits.
const BACKLOG_LIMIT: usize = 10_000;

pub use cohort_test_support::free_udp_port;

pub fn config_with(me: u16, peers: &[u16], drop_time: u64, extra: &str) -> String {
    let peers: Vec<String> = peers.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let peers = peers.join(", ");
    let pid = std::process::id();
    format!(
        r#"
[membership]
cluster = "node-test-{pid}"
multicast = false
static_bind = "127.0.0.1:{me}"
static_members = [{peers}]
frequency = 100
drop_time = {drop_time}

[transport]
port = 0

[admin]
port = 0

{extra}
"#
    )
}
