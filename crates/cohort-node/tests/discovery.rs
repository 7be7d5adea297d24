//! Discovery and versions end to end, with `cohort node` processes on loopback: DNS discovery
//! against a DNS server the test runs (records added and removed while the nodes run), the
//! version checks (`version_policy`, protocol ranges), and the fallback from a multicast
//! configuration that does not work on this host.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;

use bytes::BytesMut;
use cohort_test_support::dns::DnsServer;
use cohort_wire::{
    Beacon, BeaconCodec, BeaconCommand, CohortCodec, Member, MemberId, VersionRange, WireLimits,
};
use serde_json::Value;

mod common;

use common::*;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn cluster() -> String {
    format!("discovery-test-{}", std::process::id())
}

fn dns_config(me: u16, name: &str, server: SocketAddr) -> String {
    format!(
        r#"
[membership]
cluster = "{cluster}"
multicast = false
static_bind = "127.0.0.1:{me}"
frequency = 100
drop_time = 1000

[membership.dns]
name = "{name}"
record = "srv"
resolver = "{server}"
refresh = 300
min_refresh = 100
retry = 50

[transport]
port = 0

[admin]
port = 0
"#,
        cluster = cluster()
    )
}

fn status(admin: &str) -> Value {
    let out = Command::new(BIN)
        .args(["status", "--admin", admin, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn nodes_find_each_other_through_srv_records_that_change_while_they_run() {
    let server = DnsServer::start(1);
    let name = format!("_cohort._udp.n{}.test.internal", std::process::id());
    let (pa, pb, pc) = (free_udp_port(), free_udp_port(), free_udp_port());
    for host in ["a.test.internal", "b.test.internal", "c.test.internal"] {
        server.set_addrs(host, &[LOCAL]);
    }
    server.set_srv(&name, &[(pa, "a.test.internal"), (pb, "b.test.internal")]);
    let a = Proc::start(&dns_config(pa, &name, server.addr()), "alpha");
    let ready = a.wait_for("ready", |v| v["event"] == "ready");
    assert_eq!(ready["dns"], name.as_str());
    let b = Proc::start(&dns_config(pb, &name, server.addr()), "beta");
    a.wait_for("beta added", |v| {
        v["event"] == "member_added" && v["member"]["name"] == "beta"
    });
    b.wait_for("alpha added", |v| {
        v["event"] == "member_added" && v["member"]["name"] == "alpha"
    });

    // A record added while they run: gamma joins both.
    server.set_srv(
        &name,
        &[
            (pa, "a.test.internal"),
            (pb, "b.test.internal"),
            (pc, "c.test.internal"),
        ],
    );
    let c = Proc::start(&dns_config(pc, &name, server.addr()), "gamma");
    a.wait_for("gamma added", |v| {
        v["event"] == "member_added" && v["member"]["name"] == "gamma"
    });
    b.wait_for("gamma added", |v| {
        v["event"] == "member_added" && v["member"]["name"] == "gamma"
    });
    a.wait_for("dns_resolved with two peers", |v| {
        v["event"] == "dns_resolved" && v["addresses"].as_array().is_some_and(|a| a.len() == 2)
    });
    let admin = ready["admin"].as_str().unwrap();
    // Gamma may have been heard first from its own beacons ("unicast"); a beacon from the
    // address DNS listed makes it "dns".
    let all_dns = |s: &Value| {
        let members = s["members"].as_array().unwrap();
        members.len() == 3
            && members.iter().all(|m| {
                let want = if m["local"] == true { "local" } else { "dns" };
                m["discovered"] == want && m["protocol"] == 1
            })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut s = status(admin);
    while !all_dns(&s) {
        assert!(std::time::Instant::now() < deadline, "{s}");
        std::thread::sleep(std::time::Duration::from_millis(50));
        s = status(admin);
    }
    let out = Command::new(BIN)
        .args(["status", "--admin", admin])
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("FOUND BY") && table.contains("dns"),
        "{table}"
    );

    // Gamma's record removed: alpha resolves one peer again (not the first resolution's line).
    a.forget_earlier_lines();
    server.set_srv(&name, &[(pa, "a.test.internal"), (pb, "b.test.internal")]);
    let v = a.wait_for("dns_resolved with one peer", |v| {
        v["event"] == "dns_resolved" && v["addresses"].as_array().is_some_and(|a| a.len() == 1)
    });
    assert_eq!(v["addresses"][0], format!("127.0.0.1:{pb}"));
    drop(c);
}

#[test]
fn a_missing_name_at_boot_is_reported_and_retried_not_fatal() {
    let server = DnsServer::start(0);
    let name = format!("missing-{}.test.internal", std::process::id());
    let me = free_udp_port();
    let a = Proc::start(&dns_config(me, &name, server.addr()), "alpha");
    a.wait_for("ready", |v| v["event"] == "ready");
    let first = a.wait_for("dns_failed", |v| v["event"] == "dns_failed");
    assert_eq!(first["attempt"], 1);
    assert!(first["reason"].as_str().unwrap().contains(&name), "{first}");
    let second = a.wait_for("dns_failed again", |v| {
        v["event"] == "dns_failed" && v["attempt"] == 2
    });
    assert!(second["retry_in_ms"].as_u64() > first["retry_in_ms"].as_u64());
}

fn policy_config(me: u16, peers: &[u16], policy: &str, app: &str) -> String {
    let peers: Vec<String> = peers.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    format!(
        r#"
[node]
app_version = "{app}"

[membership]
cluster = "{cluster}"
multicast = false
static_bind = "127.0.0.1:{me}"
static_members = [{peers}]
frequency = 100
drop_time = 1000
version_policy = "{policy}"

[transport]
port = 0

[admin]
port = 0
"#,
        cluster = cluster(),
        peers = peers.join(", "),
    )
}

#[test]
fn version_policy_same_refuses_other_app_versions_on_both_sides() {
    let (pa, pb, pc) = (free_udp_port(), free_udp_port(), free_udp_port());
    let a = Proc::start(&policy_config(pa, &[pb, pc], "same", "2.0"), "alpha");
    let ready = a.wait_for("ready", |v| v["event"] == "ready");
    assert_eq!(ready["app_version"], "2.0");
    assert_eq!(ready["version_policy"], "same");
    // Beta runs 1.0 and accepts anyone, yet refuses alpha, which asks for the same version.
    let b = Proc::start(&policy_config(pb, &[pa], "compatible", "1.0"), "beta");
    let refused = a.wait_for("member_refused", |v| v["event"] == "member_refused");
    assert_eq!(refused["reason"], "app_version");
    assert_eq!(refused["local_app_version"], "2.0");
    assert_eq!(refused["remote_app_version"], "1.0");
    assert_eq!(refused["member"]["name"], "beta");
    let back = b.wait_for("member_refused", |v| v["event"] == "member_refused");
    assert_eq!(back["local_app_version"], "1.0");
    assert_eq!(back["remote_app_version"], "2.0");
    // Gamma runs 2.0: alpha takes it.
    let _c = Proc::start(&policy_config(pc, &[pa], "same", "2.0"), "gamma");
    a.wait_for("gamma added", |v| {
        v["event"] == "member_added" && v["member"]["name"] == "gamma"
    });
    let s = status(ready["admin"].as_str().unwrap());
    let names: Vec<&str> = s["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"beta"),
        "beta never joins alpha's view: {names:?}"
    );
}

#[test]
fn a_member_without_a_common_protocol_version_is_refused_naming_both_ranges() {
    let (pa, other) = (free_udp_port(), free_udp_port());
    let a = Proc::start(&policy_config(pa, &[other], "compatible", "1"), "alpha");
    a.wait_for("ready", |v| v["event"] == "ready");
    // A beacon from a future build that speaks only versions 7 to 9.
    let mut m = Member::new(MemberId::from_bytes([7; 16]), LOCAL, 4999);
    m.cluster = cluster();
    m.name = "future".into();
    m.versions = VersionRange { min: 7, max: 9 };
    let codec = CohortCodec::new(WireLimits::default(), None).unwrap();
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    for seq in 1..=5 {
        let mut out = BytesMut::new();
        let beacon = Beacon {
            member: m.clone(),
            command: BeaconCommand::Alive,
            seq,
            sent_at_ms: 0,
        };
        codec.encode_beacon(&beacon, &mut out).unwrap();
        socket.send_to(&out, (Ipv4Addr::LOCALHOST, pa)).unwrap();
    }
    let v = a.wait_for("member_refused", |v| v["event"] == "member_refused");
    assert_eq!(v["reason"], "protocol");
    assert_eq!(v["local_protocol"], "1..=1");
    assert_eq!(v["remote_protocol"], "7..=9");
    assert!(v["detail"].as_str().unwrap().contains("7..=9"), "{v}");
}

#[test]
fn multicast_that_does_not_work_here_falls_back_to_static_members_with_the_reason() {
    let (pa, pb) = (free_udp_port(), free_udp_port());
    // 192.0.2.1 (TEST-NET-1) is no interface of this host: joining the group there fails
    // before anything is sent.
    let config = |me: u16, peer: u16| {
        format!(
            r#"
[membership]
cluster = "{cluster}"
static_bind = "127.0.0.1:{me}"
static_members = ["127.0.0.1:{peer}"]
frequency = 100
drop_time = 1000

[membership.multicast]
interface = "192.0.2.1"

[transport]
port = 0

[admin]
port = 0
"#,
            cluster = cluster()
        )
    };
    let a = Proc::start(&config(pa, pb), "alpha");
    let v = a.wait_for("multicast_unavailable", |v| {
        v["event"] == "multicast_unavailable"
    });
    assert!(v["reason"].as_str().unwrap().contains("192.0.2.1"), "{v}");
    assert_eq!(v["fallback"], "static and DNS discovery only");
    let ready = a.wait_for("ready", |v| v["event"] == "ready");
    assert_eq!(ready["multicast"], Value::Null);
    let _b = Proc::start(&config(pb, pa), "beta");
    a.wait_for("beta added", |v| {
        v["event"] == "member_added" && v["member"]["name"] == "beta"
    });
}
