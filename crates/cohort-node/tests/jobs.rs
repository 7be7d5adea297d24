//! Lead-only jobs with real processes: three nodes run a job every 500 ms; only the lead runs
//! it; after the lead is killed (SIGKILL, by PID) the next lead takes over; no tick ever runs
//! on two members.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const EVERY_MS: u64 = 500;

/// Every event line the nodes wrote until `until`, with the index of the node that wrote it.
fn collect(procs: &[&Proc], until: Instant, out: &mut Vec<(usize, Instant, Value)>) {
    while Instant::now() < until {
        for (i, p) in procs.iter().enumerate() {
            out.extend(p.take_lines().into_iter().map(|(at, v)| (i, at, v)));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn jobs_run_on_the_lead_only_and_move_with_it() {
    let ports = [free_udp_port(), free_udp_port(), free_udp_port()];
    let extra = format!(
        "[[interceptor]]\ntype = \"tcp_ping\"\n[[interceptor]]\ntype = \"tcp_failure_detector\"\n\
         [[job]]\nname = \"tick\"\ncommand = \"echo ran; sleep 0.05\"\nevery = \"{EVERY_MS}ms\"\n"
    );
    let names = ["j0", "j1", "j2"];
    let mut procs = Vec::new();
    let mut admins = Vec::new();
    for (i, me) in ports.iter().enumerate() {
        let peers: Vec<u16> = ports.iter().copied().filter(|p| p != me).collect();
        let p = Proc::start(&config_with(*me, &peers, 1000, &extra), names[i]);
        let ready = p.wait_for("ready", |v| v["event"] == "ready");
        admins.push(ready["admin"].as_str().unwrap().to_owned());
        procs.push(p);
        // Distinct start times: j0 is the lead, then j1.
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut lines = Vec::new();
    // Settle (drop_time, 1 s), then about six ticks.
    collect(
        &procs.iter().collect::<Vec<_>>(),
        Instant::now() + Duration::from_millis(4000),
        &mut lines,
    );
    let new_lead_admin = admins[1].clone();
    let mut victim = procs.remove(0);
    let killed = Instant::now();
    victim.child.kill().unwrap(); // SIGKILL, by PID
    let _ = victim.child.wait();
    let mut after = Vec::new();
    collect(
        &procs.iter().collect::<Vec<_>>(),
        Instant::now() + Duration::from_millis(3000),
        &mut after,
    );

    let started = |l: &[(usize, Instant, Value)]| -> Vec<(usize, Instant, u64)> {
        l.iter()
            .filter(|(_, _, v)| v["event"] == "job_started")
            .map(|(i, at, v)| (*i, *at, v["tick"].as_u64().unwrap()))
            .collect()
    };
    let before_runs = started(&lines);
    // Indices after the kill are shifted: procs[0] is now j1.
    let after_runs: Vec<_> = started(&after)
        .into_iter()
        .map(|(i, at, t)| (i + 1, at, t))
        .collect();
    assert!(
        before_runs.len() >= 4,
        "ticks ran before the kill: {before_runs:?}"
    );
    assert!(
        before_runs.iter().all(|(i, ..)| *i == 0),
        "only the lead (j0) runs: {before_runs:?}"
    );
    let mut per_tick: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, _, tick) in before_runs.iter().chain(&after_runs) {
        *per_tick.entry(*tick).or_default() += 1;
    }
    assert!(
        per_tick.values().all(|n| *n == 1),
        "a tick ran on two members: {per_tick:?}"
    );
    assert!(
        after_runs.len() >= 3,
        "the new lead took over: {after_runs:?}"
    );
    assert!(
        after_runs.iter().all(|(i, ..)| *i == 1),
        "only the new lead (j1) runs: {after_runs:?}"
    );
    let takeover = after_runs[0].1.duration_since(killed);
    let last_before = before_runs.iter().map(|r| r.2).max().unwrap();
    let first_after = after_runs[0].2;
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "runs before the kill: {}, after: {}, runs per tick: 1; first run on the new lead \
             {:?} after the kill; ticks missed: {}",
            before_runs.len(),
            after_runs.len(),
            takeover,
            first_after - last_before - 1
        );
    }
    assert!(
        takeover < Duration::from_millis(2 * EVERY_MS + 500),
        "takeover took {takeover:?}"
    );
    let finished: Vec<&Value> = lines
        .iter()
        .chain(&after)
        .map(|(_, _, v)| v)
        .filter(|v| v["event"] == "job_finished")
        .collect();
    assert!(!finished.is_empty());
    for f in &finished {
        assert_eq!(f["exit_code"], 0, "{f}");
        assert_eq!(f["output"], "ran\n", "{f}");
    }
    // The new lead counts its runs on /metrics.
    let admin = new_lead_admin.parse().unwrap();
    let text = http_get(admin, "/metrics");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let runs = scrape
        .samples
        .iter()
        .find(|s| s.metric == "cohort_job_runs_total" && s.labels.get("job") == Some("tick"))
        .map(|s| s.value.clone());
    match runs {
        Some(prometheus_parse::Value::Counter(n) | prometheus_parse::Value::Untyped(n)) => {
            assert!(n >= 3.0, "{n} runs counted:\n{text}");
        }
        other => panic!("no job run counter ({other:?}):\n{text}"),
    }
}

/// A GET over a plain connection (the endpoint answers one request and closes).
fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}
