use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use cohort_channel::{ChannelHandle, GroupChannel, MembershipSetup};
use cohort_membership::{MembershipConfig, StaticPeer};
use cohort_net::TokioNet;
use cohort_session::{ManagerKind, Session, SessionConfig, SessionLayer, SessionManager};
use cohort_transport::TransportConfig;
use cohort_wire::Services;
use http::Request;
use serde_json::{Value, json};

pub(crate) use cohort_test_support::{free_udp_port, wait_for};

/// `n` channels that see each other (static membership on loopback).
pub(crate) async fn cluster(n: usize) -> Vec<ChannelHandle> {
    let ports: Vec<u16> = (0..n).map(|_| free_udp_port()).collect();
    let mut out = Vec::new();
    for port in &ports {
        let setup = MembershipSetup {
            config: MembershipConfig {
                cluster: format!("sessions-{}", ports[0]),
                frequency: Duration::from_millis(100),
                drop_time: Duration::from_millis(1500),
                ..MembershipConfig::default()
            },
            multicast: None,
            static_members: Some((
                SocketAddr::from((Ipv4Addr::LOCALHOST, *port)),
                ports
                    .iter()
                    .filter(|p| *p != port)
                    .map(|p| format!("127.0.0.1:{p}").parse::<StaticPeer>().unwrap())
                    .collect(),
            )),
            dns: None,
        };
        out.push(
            GroupChannel::builder()
                .transport(TransportConfig {
                    port: 0,
                    ..TransportConfig::default()
                })
                .services(Services::DEFAULT)
                .membership(setup)
                .start_with(TokioNet, &mut rand::thread_rng())
                .await
                .unwrap(),
        );
    }
    wait_for(
        "every channel sees every other",
        Duration::from_secs(10),
        || out.iter().all(|c| c.members().len() == n - 1),
    )
    .await;
    out
}

async fn count(State(name): State<String>, session: Session) -> Json<Value> {
    let n: u64 = session.get("count").unwrap().unwrap_or(0) + 1;
    session.insert("count", &n).unwrap();
    Json(json!({"count": n, "node": name, "session": session.id().map(|id| id.to_string())}))
}

async fn bump_big(session: Session) -> Json<Value> {
    let n: u64 = session.get("count").unwrap().unwrap_or(0) + 1;
    session.insert("count", &n).unwrap();
    session.insert("blob", &"x".repeat(1 << 20)).unwrap();
    Json(json!({"count": n}))
}

async fn logout(session: Session) -> &'static str {
    session.invalidate();
    "bye"
}

async fn peek(session: Session) -> Json<Value> {
    Json(json!({"count": session.get::<u64>("count").unwrap(), "new": session.is_new()}))
}

/// One member running the counter app.
pub(crate) struct App {
    pub(crate) router: Router,
    pub(crate) manager: SessionManager,
}

pub(crate) async fn apps(
    channels: &[ChannelHandle],
    kind: ManagerKind,
    cfg: &SessionConfig,
) -> Vec<App> {
    let mut out = Vec::new();
    for (i, ch) in channels.iter().enumerate() {
        let manager = SessionManager::start(ch, kind, cfg.clone()).await.unwrap();
        let name = format!("n{i}");
        let router = Router::new()
            .route("/count", get(count))
            .route("/big", get(bump_big))
            .route("/logout", get(logout))
            .route("/peek", get(peek))
            .route("/static/app.js", get(|| async { "js" }))
            .with_state(name.clone())
            .layer(
                SessionLayer::new(manager.clone())
                    .route(name)
                    .filter(|req| req.uri().path().starts_with("/static/")),
            );
        out.push(App { router, manager });
    }
    out
}

/// The answer to one request: status, body, and the session cookie it set, if any.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Value,
    pub(crate) set_cookie: Option<String>,
}

pub(crate) async fn get_path(app: &Router, path: &str, cookie: Option<&str>) -> Answer {
    use tower_service::Service;
    let mut svc = app.clone();
    let mut req = Request::builder().uri(path);
    if let Some(c) = cookie {
        req = req.header("cookie", format!("{}={c}", cohort_session::COOKIE_NAME));
    }
    let req = req.body(Body::empty()).unwrap();
    std::future::poll_fn(|cx| <Router as Service<Request<Body>>>::poll_ready(&mut svc, cx))
        .await
        .unwrap();
    let res = svc.call(req).await.unwrap();
    let status = res.status().as_u16();
    let set_cookie = res
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .and_then(|kv| kv.split_once('='))
        .map(|(_, v)| v.to_owned());
    let bytes = axum::body::to_bytes(res.into_body(), 64 << 20)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Answer {
        status,
        body,
        set_cookie,
    }
}
