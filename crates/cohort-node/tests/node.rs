//! The `cohort` binary end to end: real processes on loopback, stopped by PID.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cohort");

/// A node process; killed by PID on drop (never by name).
struct Proc {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn start(config: &str, name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("cohort-node-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(BIN)
            .args(["node", "--config", path.to_str().unwrap(), "--name", name])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line).expect("every stdout line is JSON");
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits for an event line matching `pred`.
    fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if pred(&v) => return v,
                Ok(_) => {}
                Err(_) => panic!("no {what} line within 20 s"),
            }
        }
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(me: u16, peer: u16) -> String {
    format!(
        r#"
[membership]
cluster = "node-test-{pid}"
multicast = false
static_bind = "127.0.0.1:{me}"
static_members = ["127.0.0.1:{peer}"]
frequency = 100
drop_time = 1000

[transport]
port = 0

[admin]
port = 0
"#,
        pid = std::process::id()
    )
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
    ] {
        let path = dir.join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BIN)
            .args(["node", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{text}: {err}");
    }
}
