//! The `cohort` binary end to end: real processes on loopback, stopped by PID.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::*;

fn config(me: u16, peer: u16) -> String {
    config_with(me, &[peer], 1000, "")
}

#[test]
fn two_nodes_see_each_other_report_status_and_leave_gracefully_on_sigterm() {
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let a = Proc::start(&config(pa, pb), "alpha");
    let ready_a = a.wait_for("ready", |v| v["event"] == "ready");
    let b = Proc::start(&config(pb, pa), "beta");
    let ready_b = b.wait_for("ready", |v| v["event"] == "ready");
    a.wait_for("member_added", |v| {
        v["event"] == "member_added" && v["member"]["name"] == "beta"
    });
    b.wait_for("member_added", |v| {
        v["event"] == "member_added" && v["member"]["name"] == "alpha"
    });

    // `cohort status --json` through the admin endpoint.
    let admin = ready_a["admin"].as_str().unwrap();
    let out = Command::new(BIN)
        .args(["status", "--admin", admin, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let members = status["members"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{status}");
    let me = members.iter().find(|m| m["local"] == true).unwrap();
    assert_eq!(me["id"], ready_a["id"]);
    assert_eq!(me["name"], "alpha");
    assert_eq!(me["lead"], true, "alpha started first");
    let other = members.iter().find(|m| m["local"] == false).unwrap();
    assert_eq!(other["addr"], ready_b["addr"]);
    assert!(other["connected"].is_boolean());
    // The table form.
    let out = Command::new(BIN)
        .args(["status", "--admin", admin])
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("LEAD") && table.contains("beta"), "{table}");

    // SIGTERM by PID: beta leaves gracefully, exits 0, alpha drops it at once.
    let mut b = b;
    let kill = Command::new("kill")
        .args(["-TERM", &b.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let left = a.wait_for("member_disappeared", |v| v["event"] == "member_disappeared");
    assert_eq!(left["reason"], "shutdown");
    assert_eq!(left["member"]["name"], "beta");
    let code = b.child.wait().unwrap();
    assert!(code.success(), "exit {code:?}");
}

#[test]
fn bad_configuration_is_an_error_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("cohort-node-test-{}-bad", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (text, key) in [
        ("[transport]\nprot = 4000\n", "prot"),
        ("[membership]\ndrop_time = \"soon\"\n", "drop_time"),
        ("[channel]\nservices = 99\n", "channel.services"),
        ("[admin]\nbind = \"10.1.2.3\"\n", "admin.bind"),
        (
            "[membership]\nstatic_members = [\"nohost\"]\nstatic_bind = \"127.0.0.1:1\"\n",
            "static_members[0]",
        ),
        (
            "[[interceptor]]\ntype = \"tcp_failure_detector\"\n[[interceptor]]\ntype = \"tcp_failure_detector\"\n",
            "interceptor[1] (tcp_failure_detector): a second failure detector",
        ),
        (
            "[[interceptor]]\ntype = \"encryption\"\nkeys = [{ id = 1, key = \"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\" }]\n[[interceptor]]\ntype = \"compression\"\n",
            "compression must be listed before (above) encryption",
        ),
        ("[[interceptor]]\ntype = \"order\"\nexpire = 5\n", "expire"),
        ("[[interceptor]]\ntype = \"warp_drive\"\n", "warp_drive"),
        // Values that used to panic the node or switch a protection off.
        (
            "[transport]\ninbound_queue = 4611686018427387904\n",
            "transport.inbound_queue",
        ),
        (
            "[channel]\ndelivery_queue = 4611686018427387904\n",
            "delivery_queue",
        ),
        (
            "[membership]\nmax_clock_skew = 9223372036854775807\n",
            "max_clock_skew",
        ),
        (
            "[transport]\nmax_inbound_bytes = 1024\n",
            "transport.max_inbound_bytes",
        ),
        // Errors inside the multicast table name their key.
        (
            "[membership.multicast]\nttl = \"x\"\n",
            "membership.multicast",
        ),
        ("[membership.multicast]\nttll = 1\n", "ttll"),
        (
            "[membership.multicast.recovery]\ncounter = 0\n",
            "recovery_counter",
        ),
        (
            "[[interceptor]]\ntype = \"throttle\"\nspec = \"msgs:1:0:explode\"\n",
            "interceptor[0] (throttle): spec: entry 0: action",
        ),
    ] {
        let path = dir.join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BIN)
            .args(["node", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{text}");
        assert_ne!(out.status.code(), Some(101), "{text}: a panic");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{text}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGKILL one of three nodes running ping + the TCP failure detector: both survivors report
/// it failed, with evidence, long before the 3 s drop time; the coordinator moves to the next
/// oldest.
#[test]
fn a_killed_node_is_reported_failed_by_every_peer_at_once() {
    let ports = [free_udp_port(), free_udp_port(), free_udp_port()];
    let extra = "[[interceptor]]\ntype = \"tcp_ping\"\n[[interceptor]]\ntype = \"tcp_failure_detector\"\n[[interceptor]]\ntype = \"coordinator\"\nsettle_ms = 300\n";
    let names = ["n0", "n1", "n2"];
    let mut procs = Vec::new();
    for (i, me) in ports.iter().enumerate() {
        let peers: Vec<u16> = ports.iter().copied().filter(|p| p != me).collect();
        let p = Proc::start(&config_with(*me, &peers, 3000, extra), names[i]);
        p.wait_for("ready", |v| v["event"] == "ready");
        procs.push(p);
    }
    for p in &procs {
        p.wait_for("a view of three", |v| {
            v["event"] == "coordinator_changed" && v["members"] == 3
        });
        // Only what follows the kill answers the waits below.
        p.forget_earlier_lines();
    }
    let mut victim = procs.remove(0);
    let killed = Instant::now();
    victim.child.kill().unwrap(); // SIGKILL, by PID
    let _ = victim.child.wait();
    for (p, name) in procs.iter().zip(&names[1..]) {
        let (at, ev) = p.wait_for_at("member_disappeared", |v| v["event"] == "member_disappeared");
        assert_eq!(ev["member"]["name"], "n0");
        assert_eq!(ev["reason"], "failed", "{ev}");
        let elapsed = at.duration_since(killed);
        #[allow(clippy::print_stderr)]
        {
            eprintln!(
                "{name} reported n0 failed after {elapsed:?}: {}",
                ev["evidence"]
            );
        }
        assert!(
            elapsed < Duration::from_millis(2500),
            "not by the detector: {elapsed:?}"
        );
    }
    procs[0].wait_for("n1 coordinator", |v| {
        v["event"] == "coordinator_changed"
            && v["local_is_coordinator"] == true
            && v["members"] == 2
    });
}

/// SIGSTOP a node: its kernel still accepts connections, so only beacon expiry and then the
/// read test (the process must ACK) find it: it is reported failed after about drop time +
/// read timeout. After SIGCONT it rejoins.
#[test]
fn a_stopped_node_is_failed_after_expiry_and_the_read_test_then_rejoins() {
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let extra = "[[interceptor]]\ntype = \"tcp_ping\"\n[[interceptor]]\ntype = \"tcp_failure_detector\"\nread_test_timeout_ms = 500\n";
    let a = Proc::start(&config_with(pa, &[pb], 1000, extra), "alpha");
    a.wait_for("ready", |v| v["event"] == "ready");
    let b = Proc::start(&config_with(pb, &[pa], 1000, extra), "beta");
    b.wait_for("ready", |v| v["event"] == "ready");
    a.wait_for("member_added", |v| {
        v["event"] == "member_added" && v["member"]["name"] == "beta"
    });
    let pid = b.child.id().to_string();
    let signal = |sig: &str| {
        assert!(
            Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    let stopped = Instant::now();
    signal("-STOP");
    let (at, ev) = a.wait_for_at("member_disappeared", |v| v["event"] == "member_disappeared");
    signal("-CONT");
    assert_eq!(ev["reason"], "failed", "{ev}");
    let evidence = ev["evidence"].as_str().unwrap();
    assert!(
        evidence.contains("no beacon") && evidence.contains("read test"),
        "{evidence}"
    );
    let elapsed = at.duration_since(stopped);
    #[allow(clippy::print_stderr)]
    {
        eprintln!("stopped node reported failed after {elapsed:?}: {evidence}");
    }
    assert!(
        elapsed >= Duration::from_millis(1000),
        "before the drop time: {elapsed:?}"
    );
    a.wait_for("member_added again", |v| {
        v["event"] == "member_added" && v["member"]["name"] == "beta"
    });
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

#[test]
fn sigterm_exits_with_messages_printed_and_admin_connections_capped() {
    if !std::path::Path::new("/proc/self/fd").exists() {
        return;
    }
    let me = free_udp_port();
    let mut a = Proc::start(
        &config_with(
            me,
            &[free_udp_port()],
            1000,
            "[node]\nprint_messages = true\n",
        ),
        "solo",
    );
    let ready = a.wait_for("ready", |v| v["event"] == "ready");
    let admin: std::net::SocketAddr = ready["admin"].as_str().unwrap().parse().unwrap();
    let pid = a.child.id();
    let before = open_fds(pid);
    // Idle admin connections: the node serves at most 64 at once and closes the rest.
    let idle: Vec<std::net::TcpStream> = (0..300)
        .filter_map(|_| std::net::TcpStream::connect(admin).ok())
        .collect();
    assert!(idle.len() > 64);
    // Well within the 5 s a connection gets to send its command: the excess is closed at once.
    let deadline = Instant::now() + Duration::from_secs(3);
    let bound = before + 64 + 4;
    while open_fds(pid) > bound {
        assert!(
            Instant::now() < deadline,
            "{} descriptors open (was {before})",
            open_fds(pid)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGTERM with admin connections open and message lines on: the node exits.
    let kill = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    a.wait_for("stopped", |v| v["event"] == "stopped");
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(code) = a.child.try_wait().unwrap() {
            break code;
        }
        assert!(
            Instant::now() < deadline,
            "still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(code.success(), "exit {code:?}");
    drop(idle);
}
