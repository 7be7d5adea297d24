//! The HTTP admin endpoint of a node started in this process: the routes, their limits, the
//! bearer token, and `/metrics` read by a real Prometheus parser.

use std::net::SocketAddr;
use std::time::Duration;

use cohort_node::admin;
use cohort_node::config::NodeConfig;
use cohort_node::node::{self, Events};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start(extra: &str) -> (node::Node, Events, SocketAddr) {
    let m = cohort_test_support::private_multicast();
    let text = format!(
        "[membership]\ncluster = \"admin-{port}\"\n[membership.multicast]\ngroup = \"{group}\"\n\
         port = {port}\nttl = 0\n[transport]\nport = 0\n[admin]\nport = 0\n{extra}",
        group = m.group,
        port = m.port,
    );
    let config = NodeConfig::from_toml(&text).unwrap();
    let (events, _writer) = Events::start(std::io::sink());
    let node = node::start(config, &events).await.unwrap();
    let addr = node.admin.expect("admin endpoint");
    (node, events, addr)
}

/// A raw exchange: the status line and the body.
async fn raw(addr: SocketAddr, request: &[u8]) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

#[tokio::test]
async fn routes_answer_and_metrics_parse() {
    let (node, events, addr) = start("").await;
    let ok = |path: &'static str| async move {
        String::from_utf8(
            admin::request(addr, "GET", path, None)
                .await
                .unwrap()
                .to_vec(),
        )
        .unwrap()
    };
    assert_eq!(ok("/healthz").await, "ok\n");
    assert_eq!(ok("/readyz").await, "ready\n");

    let status = admin::get_json(addr, "/api/status", None).await.unwrap();
    let members = status["members"].as_array().unwrap();
    assert_eq!(members.len(), 1);
    let me = &members[0];
    for field in [
        "id",
        "name",
        "host",
        "addr",
        "ip",
        "port",
        "start_time_ms",
        "start_time",
        "uptime_s",
        "lead",
        "local",
        "connected",
    ] {
        assert!(!me[field].is_null(), "field {field} missing: {me}");
    }
    assert_eq!(
        (me["lead"].as_bool(), me["local"].as_bool()),
        (Some(true), Some(true))
    );
    assert!(me["start_time"].as_str().unwrap().ends_with('Z'));
    assert!(status["counters"]["transport"].is_object());

    // The page lists the member, with its host name escaped as text.
    let page = ok("/").await;
    assert!(page.contains("class=\"member\"") && page.contains("data-local=\"true\""));
    assert!(page.contains("http-equiv=\"refresh\""));

    // /metrics, read by a Prometheus parser.
    let text = ok("/metrics").await;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let find = |name: &str| {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .collect::<Vec<_>>()
    };
    let members = find("cohort_members");
    assert_eq!(members.len(), 1, "{text}");
    assert_eq!(members[0].value, prometheus_parse::Value::Gauge(1.0));
    assert_eq!(
        find("cohort_is_lead")[0].value,
        prometheus_parse::Value::Gauge(1.0)
    );
    let modes: Vec<_> = find("cohort_messages_sent_total")
        .iter()
        .filter_map(|s| s.labels.get("mode").map(str::to_owned))
        .collect();
    assert_eq!(modes, ["async", "sync_ack", "ack", "plain"], "{text}");
    let prometheus_parse::Value::Histogram(buckets) = &find("cohort_ack_latency_seconds")[0].value
    else {
        panic!("a histogram: {text}");
    };
    assert_eq!(buckets.len(), 15, "{text}");
    assert!(
        buckets.last().unwrap().less_than.is_infinite() && text.contains("le=\"+Inf\""),
        "the last bucket is +Inf: {text}"
    );
    assert!(!find("cohort_input_rejected_total").is_empty(), "{text}");
    assert!(!find("cohort_lead_changes_total").is_empty(), "{text}");

    // Limits and errors.
    let (line, _) = raw(addr, b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(line.contains(" 404"), "{line}");
    let (line, body) = raw(
        addr,
        b"POST /api/traffic/stop HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(
        line.contains(" 409") && body.contains("no traffic"),
        "{line} {body}"
    );
    let mut huge = b"GET /api/status HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 64 * 1024));
    huge.extend_from_slice(b"\r\n\r\n");
    let (line, _) = raw(addr, &huge).await;
    assert!(
        line.is_empty() || line.contains(" 431"),
        "an oversized head is refused: {line:?}"
    );
    let (line, _) = raw(
        addr,
        b"POST /api/status HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n",
    )
    .await;
    assert!(line.contains(" 405") || line.contains(" 413"), "{line}");

    node.stop(&events).await;
}

#[tokio::test]
async fn a_token_guards_every_route_but_the_health_checks() {
    let token = "a token of at least sixteen";
    let (node, events, addr) = start(&format!("token = \"{token}\"\n")).await;
    let err = admin::get_json(addr, "/api/status", None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("401"), "{err}");
    let err = admin::get_json(addr, "/api/status", Some("a wrong token of the same..")).await;
    assert!(err.unwrap_err().to_string().contains("401"));
    for path in ["/", "/metrics", "/api/stats"] {
        assert!(
            admin::request(addr, "GET", path, None).await.is_err(),
            "{path} unguarded"
        );
    }
    let status: Value = admin::get_json(addr, "/api/status", Some(token))
        .await
        .unwrap();
    assert_eq!(status["members"].as_array().unwrap().len(), 1);
    assert!(admin::request(addr, "GET", "/healthz", None).await.is_ok());
    assert!(admin::request(addr, "GET", "/readyz", None).await.is_ok());
    node.stop(&events).await;
}

#[test]
fn binding_beyond_loopback_needs_a_token() {
    let err = NodeConfig::from_toml("[admin]\nbind = \"0.0.0.0\"\n")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("admin.bind") && err.contains("token"), "{err}");
    assert!(
        NodeConfig::from_toml(
            "[admin]\nbind = \"0.0.0.0\"\ntoken = \"a token of at least sixteen\"\n"
        )
        .is_ok()
    );
    let err = NodeConfig::from_toml("[admin]\ntoken = \"short\"\n")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("admin.token"), "{err}");
}
