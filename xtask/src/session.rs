//! The session scenarios (`session-delta`, `session-backup`): three or four `counter` apps
//! (crates/cohort-session/examples/counter.rs) on the full stack, a cookie-keeping HTTP
//! client, SIGKILL, SIGTERM, a restart, and fifty clients through a kill.

// A command-line tool: the RESULT lines are its output.
#![allow(clippy::print_stdout)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::harness::{self, NodeProc, Spawn};

const COOKIE: &str = "COHORTSESSIONID";
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the `counter` example (debug, like the scenarios' `cohort`); its path.
pub(crate) fn build_counter() -> Result<PathBuf> {
    crate::run_cmd(crate::cargo().args([
        "build",
        "--locked",
        "-p",
        "cohort-session",
        "--example",
        "counter",
    ]))?;
    let exe = harness::target_dir().join("debug/examples/counter");
    ensure!(exe.exists(), "built, but {} is missing", exe.display());
    Ok(exe)
}

/// One answer of the counter app.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: Value,
    pub(crate) cookie: Option<String>,
}

/// `GET path` with the session cookie, over one HTTP/1.1 connection.
pub(crate) fn get(addr: SocketAddr, path: &str, cookie: Option<&str>) -> Result<Reply> {
    let mut s = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    s.set_read_timeout(Some(HTTP_TIMEOUT))?;
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: {COOKIE}={c}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{cookie}Connection: close\r\n\r\n"
    )?;
    let mut out = Vec::new();
    s.take(8 << 20).read_to_end(&mut out)?;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no HTTP response")?;
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    let cookie = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if !k.eq_ignore_ascii_case("set-cookie") {
            return None;
        }
        let kv = v.trim().split(';').next()?;
        let (name, value) = kv.split_once('=')?;
        (name == COOKIE).then(|| value.to_owned())
    });
    let body = serde_json::from_slice(&out[split + 4..]).unwrap_or(Value::Null);
    Ok(Reply {
        status,
        body,
        cookie,
    })
}

/// A client that keeps its cookie and checks that every answer counts one more than the last
/// (an answer of the same or a lower count is a lost increment).
#[derive(Default)]
pub(crate) struct Client {
    pub(crate) cookie: Option<String>,
    pub(crate) last: u64,
    pub(crate) lost: u64,
    pub(crate) failed: u64,
    /// Increments applied whose answer never came (a connection cut by a kill): the next
    /// answer jumps by more than one. Not lost: the work was kept.
    pub(crate) unanswered: u64,
}

impl Client {
    /// One `/count` on `addr`; the answered count, or `None` when the request failed.
    pub(crate) fn count(&mut self, addr: SocketAddr) -> Option<u64> {
        match get(addr, "/count", self.cookie.as_deref()) {
            Ok(r) if r.status == 200 => {
                let n = r.body["count"].as_u64()?;
                if let Some(c) = r.cookie {
                    self.cookie = Some(c);
                }
                if self.last > 0 && n <= self.last {
                    self.lost += self.last + 1 - n;
                } else if self.last > 0 {
                    self.unanswered += n - self.last - 1;
                }
                self.last = n;
                Some(n)
            }
            _ => {
                self.failed += 1;
                None
            }
        }
    }
}

/// One counter app.
pub(crate) struct App {
    pub(crate) node: NodeProc,
    pub(crate) http: SocketAddr,
}

pub(crate) fn start_app(
    exe: &Path,
    dir: &Path,
    name: &str,
    config: &str,
    manager: &str,
) -> Result<App> {
    // Port 0: the app reports where it listens in its ready line (a port picked here and
    // bound later can be taken meanwhile, by the app's own transport among others).
    let http = "127.0.0.1:0";
    let node = NodeProc::start(&Spawn {
        exe,
        name,
        config,
        dir,
        command: &[],
        args: &["--http", http, "--manager", manager],
        netns: None,
    })?;
    let http = node.ready["http"]
        .as_str()
        .context("ready line without http")?
        .parse()?;
    Ok(App { node, http })
}

/// Waits until every app sees `n` others.
pub(crate) fn wait_views(apps: &mut [App], n: usize) -> Result<()> {
    let ids: Vec<String> = apps.iter().map(|a| a.node.id().to_owned()).collect();
    for app in apps.iter_mut() {
        for id in &ids {
            if id != app.node.id() {
                app.node.wait_added(0, id, Duration::from_secs(20))?;
            }
        }
    }
    ensure!(ids.len() == n + 1, "{} apps", ids.len());
    Ok(())
}

/// The scenario: figures on success.
pub(crate) fn scenario(exe: &Path, dir: &Path, config: &str, manager: &str) -> Result<String> {
    let mut apps = Vec::new();
    for name in ["a", "b", "c"] {
        apps.push(start_app(exe, dir, name, config, manager)?);
    }
    wait_views(&mut apps, 2)?;
    // One client counts on `a`.
    let mut client = Client::default();
    for _ in 0..10 {
        client.count(apps[0].http).context("a request on a")?;
    }
    ensure!(
        client.last == 10 && client.lost == 0,
        "count {} on a",
        client.last
    );
    // SIGKILL `a`: the next request, on `b`, must count 11.
    let killed = Instant::now();
    harness::signal(apps[0].node.pid, "KILL")?;
    let mut takeover = None;
    while killed.elapsed() < Duration::from_secs(20) {
        if client.count(apps[1].http).is_some() {
            takeover = Some(killed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let takeover = takeover.context("b never served the session after a's SIGKILL")?;
    ensure!(
        client.last == 11 && client.lost == 0,
        "after a's SIGKILL, b answered {} (lost {})",
        client.last,
        client.lost
    );
    for _ in 0..5 {
        client.count(apps[1].http).context("on b")?;
    }
    // SIGTERM `b` (graceful); `c` carries on.
    harness::signal(apps[1].node.pid, "TERM")?;
    apps[1]
        .node
        .wait(0, "stopped", Duration::from_secs(20), |v| {
            v["event"] == "stopped"
        })?;
    client.count(apps[2].http).context("on c after b left")?;
    ensure!(
        client.last == 17 && client.lost == 0,
        "after b's SIGTERM, c answered {}",
        client.last
    );
    // A new member (a restart of `a`) receives the session by state transfer (delta) or as
    // a proxy it fetches (backup) and serves it.
    apps.push(start_app(exe, dir, "a2", config, manager)?);
    client
        .count(apps[3].http)
        .context("on the restarted member")?;
    ensure!(
        client.last == 18 && client.lost == 0,
        "the restarted member answered {}",
        client.last
    );
    // Ten requests of this session at once on one member run one after another
    // (docs/SESSIONS.md): each sees the one before.
    let cookie = client.cookie.clone().context("a cookie")?;
    let addr = apps[3].http;
    let parallel: Vec<_> = (0..10)
        .map(|_| {
            let cookie = cookie.clone();
            std::thread::spawn(move || {
                get(addr, "/count", Some(&cookie)).map(|r| r.body["count"].as_u64())
            })
        })
        .collect();
    let mut counts = Vec::new();
    for t in parallel {
        let n = t
            .join()
            .map_err(|_| anyhow::anyhow!("a client panicked"))??
            .context("no count")?;
        counts.push(n);
    }
    counts.sort_unstable();
    ensure!(
        counts == (19..=28).collect::<Vec<u64>>(),
        "parallel requests of one session answered {counts:?}"
    );
    client.last = 28;
    // Fifty clients over `c`, `a2` and a fresh `d`; `c` is killed half-way.
    apps.push(start_app(exe, dir, "d", config, manager)?);
    let live = [apps[2].http, apps[3].http, apps[4].http];
    let clients: Arc<Mutex<Vec<Client>>> = Arc::new(Mutex::new(Vec::new()));
    let rounds = 20;
    let mut threads = Vec::new();
    for i in 0..50usize {
        let clients = clients.clone();
        threads.push(std::thread::spawn(move || {
            let mut c = Client::default();
            for r in 0..rounds {
                // Round-robin, and on failure the next member (a load balancer's retry).
                // A load balancer's retry: the next member, a few passes, a short pause between
                // (a 503 during a failover is retried, not a loss).
                for k in 0..live.len() * 3 {
                    if c.count(live[(i + r + k) % live.len()]).is_some() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            clients
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(c);
        }));
    }
    std::thread::sleep(Duration::from_millis(300));
    harness::signal(apps[2].node.pid, "KILL")?;
    for t in threads {
        let _ = t.join();
    }
    let clients = clients
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let lost_sessions = clients.iter().filter(|c| c.lost > 0).count();
    let failed: u64 = clients.iter().map(|c| c.failed).sum();
    let unanswered: u64 = clients.iter().map(|c| c.unanswered).sum();
    let short = clients.iter().filter(|c| c.last < rounds as u64).count();
    for app in &mut apps[3..] {
        harness::signal(app.node.pid, "TERM")?;
        app.node.wait(0, "stopped", Duration::from_secs(20), |v| {
            v["event"] == "stopped"
        })?;
    }
    if lost_sessions > 0 {
        bail!("{lost_sessions} of 50 sessions lost an answered increment (SYNC_ACK promises none)");
    }
    ensure!(short == 0, "{short} clients did not reach {rounds}");
    Ok(format!(
        "manager={manager} takeover_ms={:.1} lost_increments=0 clients=50 sessions_with_loss={lost_sessions} failed_requests={failed} applied_unanswered={unanswered}",
        takeover.as_secs_f64() * 1e3
    ))
}

/// One keep-alive HTTP/1.1 connection (the benchmark's client).
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Result<Self> {
        let s = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
        s.set_read_timeout(Some(HTTP_TIMEOUT))?;
        s.set_nodelay(true)?;
        Ok(Self { s, buf: Vec::new() })
    }

    /// `GET path`; the status and the session cookie set, if any.
    fn get(&mut self, path: &str, cookie: Option<&str>) -> Result<(u16, Option<String>)> {
        let cookie = cookie.map_or(String::new(), |c| format!("Cookie: {COOKIE}={c}\r\n"));
        write!(self.s, "GET {path} HTTP/1.1\r\nHost: bench\r\n{cookie}\r\n")?;
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            let n = self.s.read(&mut chunk)?;
            ensure!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status")?;
        let mut len = 0usize;
        let mut set = None;
        for l in head.lines() {
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("set-cookie") {
                    set = v
                        .trim()
                        .split(';')
                        .next()
                        .and_then(|kv| kv.split_once('='))
                        .map(|(_, v)| v.to_owned());
                }
            }
        }
        let total = head_end + 4 + len;
        while self.buf.len() < total {
            let n = self.s.read(&mut chunk)?;
            ensure!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        self.buf.drain(..total);
        Ok((status, set))
    }
}

fn bench_config(cluster: &str, port: u16) -> String {
    format!(
        "[membership]\ncluster = \"{cluster}\"\n\n[membership.multicast]\nport = {port}\n\n\
         [transport]\nport = 0\n\n[admin]\nport = 0\n"
    )
}

/// Requests/s and latency of `/count` on `addr` from `clients` keep-alive clients, each with
/// its own session.
fn load(addr: SocketAddr, clients: usize, secs: f64) -> Result<(u64, f64, f64, f64)> {
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let mut threads = Vec::new();
    for _ in 0..clients {
        threads.push(std::thread::spawn(move || -> Result<Vec<f64>> {
            let mut conn = Conn::open(addr)?;
            let (_, cookie) = conn.get("/count", None)?;
            let cookie = cookie.context("no cookie")?;
            let mut us = Vec::new();
            while Instant::now() < stop {
                let t = Instant::now();
                let (status, _) = conn.get("/count", Some(&cookie))?;
                ensure!(status == 200, "status {status}");
                us.push(t.elapsed().as_secs_f64() * 1e6);
            }
            Ok(us)
        }));
    }
    let mut all = Vec::new();
    for t in threads {
        all.extend(
            t.join()
                .map_err(|_| anyhow::anyhow!("a client panicked"))??,
        );
    }
    all.sort_by(f64::total_cmp);
    ensure!(!all.is_empty(), "no request completed");
    let pct = |p: usize| all[(all.len() - 1) * p / 1000];
    Ok((
        all.len() as u64,
        all.len() as f64 / secs,
        pct(500),
        pct(990),
    ))
}

/// `cargo xtask bench --test session`: the counter app's requests/s and latency with
/// replication to two other members against a single member, the time from a member's
/// SIGKILL to a session's first answer elsewhere, and state transfer of sessions.
pub(crate) fn bench(quick: bool) -> Result<()> {
    crate::run_cmd(crate::cargo().args([
        "build",
        "--locked",
        "--release",
        "-p",
        "cohort-session",
        "--example",
        "counter",
    ]))?;
    let exe = harness::target_dir().join("release/examples/counter");
    let dir = harness::target_dir().join("cohort-bench-session");
    let _ = std::fs::remove_dir_all(&dir);
    let secs = if quick { 2.0 } else { 5.0 };
    let clients: usize = std::env::var("COHORT_BENCH_CLIENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    for (label, manager, members) in [
        ("single-member", "delta", 1usize),
        ("delta", "delta", 3),
        ("backup", "backup", 3),
    ] {
        let cluster = format!("bench-session-{label}-{}", std::process::id());
        let config = bench_config(&cluster, harness::free_udp_port()?);
        let mut apps = Vec::new();
        for i in 0..members {
            apps.push(start_app(
                &exe,
                &dir,
                &format!("{label}{i}"),
                &config,
                manager,
            )?);
        }
        wait_views(&mut apps, members - 1)?;
        let (n, rps, p50, p99) = load(apps[0].http, clients, secs)?;
        println!(
            "RESULT impl=cohort test=session manager={label} members={members} clients={clients} secs={secs} requests={n} req_per_s={rps:.0} p50_us={p50:.0} p99_us={p99:.0}"
        );
        if members == 3 {
            // Failover: a session made on the first member, which is killed; the time until
            // the second answers for it.
            let mut c = Client::default();
            c.count(apps[0].http).context("a first request")?;
            let killed = Instant::now();
            harness::signal(apps[0].node.pid, "KILL")?;
            let mut took = None;
            while killed.elapsed() < Duration::from_secs(20) {
                if c.count(apps[1].http).is_some() {
                    took = Some(killed.elapsed());
                    break;
                }
            }
            let took = took.context("no failover")?;
            ensure!(c.lost == 0 && c.last == 2, "the session lost its count");
            println!(
                "RESULT impl=cohort test=session op=failover manager={manager} members=3 takeover_ms={:.1}",
                took.as_secs_f64() * 1e3
            );
        }
        for app in &mut apps {
            let _ = harness::signal(app.node.pid, "TERM");
        }
    }
    let mut cmd = crate::cargo();
    cmd.args([
        "run",
        "--locked",
        "--release",
        "-q",
        "-p",
        "cohort-session",
        "--example",
        "session_bench",
    ]);
    if quick {
        cmd.args(["--", "--sessions", "2000"]);
    }
    crate::run_cmd(&mut cmd)
}
