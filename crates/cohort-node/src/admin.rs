//! The admin endpoint: HTTP/1.1 on 127.0.0.1 from port 4700 up (auto-bind) unless configured
//! otherwise. Routes (docs/OPERATIONS.md has every field):
//!
//! - `GET /`: the status page (HTML, no external assets, refreshes itself every 2 s);
//! - `GET /api/status`: the same as JSON; `GET /api/stats`: the node's counters as JSON;
//! - `GET /metrics`: Prometheus text format;
//! - `GET /healthz` (the process serves) and `GET /readyz` (the node has started and is not
//!   stopping);
//! - `POST /api/traffic/stop`: ends `--traffic` test traffic and answers with its counts.
//!
//! Bound beyond loopback only with a bearer token (`[admin] token` or `COHORT_ADMIN_TOKEN`),
//! which every route but the health checks then requires. At most [`MAX_CONNECTIONS`]
//! connections are served at once (more are closed on accept), one request each; a request
//! head is at most [`MAX_REQUEST_HEAD`] bytes and must arrive within [`REQUEST_TIMEOUT`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use cohort_channel::{ChannelHandle, Mode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use serde_json::{Value, json};

use crate::config::AdminConfig;
use crate::metrics::Metrics;
use crate::traffic::Traffic;

/// Admin connections served at once; more are closed on accept (an operator's tools need a
/// handful; a flood must not take the node's file descriptors).
pub const MAX_CONNECTIONS: usize = 64;
/// Largest request head (request line and headers) read, in bytes.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// Largest request body read, in bytes (no route takes one).
pub const MAX_REQUEST_BODY: usize = 1024;
/// A request must arrive within this time.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response a client in this module reads.
const MAX_RESPONSE: usize = 16 << 20;

/// What the endpoint serves from.
pub struct AdminState {
    /// The node's channel.
    pub channel: ChannelHandle,
    /// Test traffic, when running.
    pub traffic: Option<Arc<Traffic>>,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// Set once the node is started, cleared when it begins to stop.
    pub ready: Arc<AtomicBool>,
    /// The bearer token every route but the health checks requires, if set.
    pub token: Option<String>,
    /// The farm deployer, when enabled.
    pub deployer: Option<cohort_deployer::DeployerHandle>,
}

/// The running endpoint: stopping it ends the accept loop and every connection, and with them
/// their handles on the channel.
pub struct AdminServer {
    /// The bound address.
    pub addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    /// Stops accepting, ends the connections being served, and waits for the loop to end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// The token the endpoint requires: `[admin] token`, else `COHORT_ADMIN_TOKEN`. Binding beyond
/// loopback without one is refused.
pub fn token(config: &AdminConfig) -> anyhow::Result<Option<String>> {
    let token = config
        .token
        .clone()
        .or_else(|| std::env::var("COHORT_ADMIN_TOKEN").ok())
        .filter(|t| !t.is_empty());
    if !config.bind.is_loopback() && token.is_none() {
        anyhow::bail!(
            "admin.bind: {} is not a loopback address; set admin.token or COHORT_ADMIN_TOKEN to expose the endpoint",
            config.bind
        );
    }
    Ok(token)
}

fn router(state: Arc<AdminState>) -> Router {
    // Uploads are bounded by the deployer's max_file_size (and held in memory while they are
    // written into the deploy directory).
    let upload = state.deployer.as_ref().map_or(MAX_REQUEST_BODY, |d| {
        usize::try_from(d.config().max_file_size).unwrap_or(usize::MAX)
    });
    let deploy = Router::new()
        .route("/api/deploy/{name}", post(deploy).delete(undeploy))
        .layer(DefaultBodyLimit::max(upload))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth));
    let guarded = Router::new()
        .route("/", get(page))
        .route("/api/status", get(api_status))
        .route("/api/stats", get(api_stats))
        .route("/api/traffic/stop", post(traffic_stop))
        .route("/api/deployments", get(deployments))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(guarded)
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BODY))
        .merge(deploy)
        .with_state(state)
}

/// Binds the endpoint and serves it on the current runtime.
pub async fn serve(config: &AdminConfig, state: AdminState) -> anyhow::Result<AdminServer> {
    let listener = cohort_net::bind_tcp_auto(
        &cohort_net::TokioNet,
        config.bind,
        config.port,
        config.auto_bind,
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "admin: cannot bind {}:{} (+{} ports): {e}",
            config.bind,
            config.port,
            config.auto_bind
        )
    })?;
    let addr = listener.local_addr()?;
    let app = router(Arc::new(state));
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                biased;
                _ = stopped.wait_for(|s| *s) => break,
                Some(_) = connections.join_next() => continue,
                a = listener.accept() => a,
            };
            let Ok((stream, from)) = accepted else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::debug!(peer = %from, max = MAX_CONNECTIONS, "admin: too many connections; closed");
                drop(stream);
                continue;
            };
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            connections.spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .max_buf_size(MAX_REQUEST_HEAD)
                    .keep_alive(false)
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(REQUEST_TIMEOUT)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                // `traffic stop` waits for outstanding receipts (bounded by its own timeout).
                let limit = REQUEST_TIMEOUT + crate::traffic::STOP_TIMEOUT;
                if let Ok(Err(e)) = tokio::time::timeout(limit, conn).await {
                    tracing::debug!(peer = %from, error = %e, "admin: connection error");
                }
                drop(slot);
            });
        }
        connections.shutdown().await;
    });
    Ok(AdminServer { addr, stop, task })
}

async fn auth(State(state): State<Arc<AdminState>>, request: Request, next: Next) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        next.run(request).await
    } else {
        let mut response =
            (StatusCode::UNAUTHORIZED, "a bearer token is required\n").into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        response
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn api_status(State(state): State<Arc<AdminState>>) -> Response {
    axum::Json(status(&state.channel)).into_response()
}

async fn api_stats(State(state): State<Arc<AdminState>>) -> Response {
    axum::Json(stats(&state.channel)).into_response()
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn traffic_stop(State(state): State<Arc<AdminState>>) -> Response {
    match &state.traffic {
        Some(t) => axum::Json(t.stop().await).into_response(),
        None => (
            StatusCode::CONFLICT,
            axum::Json(json!({"error": "this node runs no traffic (--traffic)"})),
        )
            .into_response(),
    }
}

fn no_deployer() -> Response {
    (
        StatusCode::CONFLICT,
        axum::Json(json!({"error": "this node runs no deployer ([deployer] enabled = true)"})),
    )
        .into_response()
}

fn file_json(f: &cohort_deployer::FileMeta) -> Value {
    json!({
        "name": f.name,
        "size": f.size,
        "sha256": cohort_deployer::fsio::hex(&f.sha256),
        "version": format!("{:016x}.{}", f.version.hlc, f.version.node().short()),
        "removed": f.removed,
    })
}

async fn deploy(
    State(state): State<Arc<AdminState>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    body: Bytes,
) -> Response {
    let Some(d) = &state.deployer else {
        return no_deployer();
    };
    match d.deploy(&name, body).await {
        Ok(f) => axum::Json(file_json(&f)).into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

async fn undeploy(
    State(state): State<Arc<AdminState>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    let Some(d) = &state.deployer else {
        return no_deployer();
    };
    match d.undeploy(&name).await {
        Ok(f) => axum::Json(file_json(&f)).into_response(),
        Err(e @ cohort_deployer::DeployError::NotDeployed(_)) => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": e.to_string()})),
        )
            .into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

/// `GET /api/deployments`: which files each member has, and whether they agree.
async fn deployments(State(state): State<Arc<AdminState>>) -> Response {
    let Some(d) = &state.deployer else {
        return no_deployer();
    };
    let Ok(s) = d.status().await else {
        return no_deployer();
    };
    let live = |files: &[cohort_deployer::FileMeta]| -> Vec<Value> {
        files.iter().filter(|f| !f.removed).map(file_json).collect()
    };
    let mut members = vec![
        json!({"id": state.channel.local().id.to_string(), "local": true, "files": live(&s.local)}),
    ];
    for (id, files) in &s.peers {
        members.push(json!({"id": id.to_string(), "local": false, "files": live(files)}));
    }
    let transfers: Vec<Value> = s
        .transfers
        .iter()
        .map(|(f, done)| json!({"file": file_json(f), "chunks_done": done, "chunks": f.chunks()}))
        .collect();
    axum::Json(json!({
        "agree": s.agree,
        "members": members,
        "transfers": transfers,
        "stats": {
            "received": s.stats.received,
            "corrupt_chunks": s.stats.corrupt_chunks,
            "corrupt_files": s.stats.corrupt_files,
            "refused": s.stats.refused,
            "chunk_retries": s.stats.chunk_retries,
        },
    }))
    .into_response()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `start_time_ms` as RFC 3339 (UTC, milliseconds).
pub fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The status document: the members this node sees, and its own counters.
pub fn status(channel: &ChannelHandle) -> Value {
    let local = channel.local();
    let now = now_ms();
    let row = |vm: &cohort_membership::ViewMember, connected: bool| {
        let (m, lead, is_local) = (&vm.member, vm.lead, vm.local);
        json!({
            "id": m.id.to_string(),
            "name": m.name,
            "host": m.host,
            "addr": SocketAddr::new(m.addr, m.port).to_string(),
            "ip": m.addr.to_string(),
            "port": m.port,
            "start_time_ms": m.start_time_ms,
            "start_time": rfc3339_ms(m.start_time_ms),
            "uptime_s": now.saturating_sub(m.start_time_ms) / 1000,
            "lead": lead,
            "local": is_local,
            "connected": connected,
            "discovered": vm.discovered.name(),
            "protocol": vm.protocol,
            "protocols": m.versions.to_string(),
            "app_version": m.app_version,
        })
    };
    let members: Vec<Value> = match channel.view() {
        Some(view) => view
            .members
            .iter()
            .map(|vm| {
                let connected = vm.local || channel.is_connected(&vm.member);
                row(vm, connected)
            })
            .collect(),
        None => vec![row(
            &cohort_membership::ViewMember {
                member: local.clone(),
                local: true,
                lead: true,
                discovered: cohort_membership::Discovery::Local,
                protocol: local.versions.max,
            },
            true,
        )],
    };
    json!({
        "node": local.name,
        "id": local.id.to_string(),
        "host": local.host,
        "cluster": local.cluster,
        "members": members,
        "counters": stats(channel),
    })
}

/// The node's counters.
pub fn stats(channel: &ChannelHandle) -> Value {
    let s = channel.stats();
    let t = &s.transport;
    let by_mode: serde_json::Map<String, Value> = Mode::ALL
        .iter()
        .zip(s.by_mode)
        .map(|(m, st)| {
            (
                m.label().to_owned(),
                json!({"sent": st.sent, "sent_bytes": st.sent_bytes,
                       "received": st.received, "received_bytes": st.received_bytes}),
            )
        })
        .collect();
    json!({
        "sent": s.sent, "received": s.received, "delivered": s.delivered,
        "listener_errors": s.listener_errors, "async_queued": s.async_queued,
        "async_queued_bytes": s.async_queued_bytes,
        "by_mode": by_mode,
        "transport": {
            "connections_in": t.connections_in, "connections_out": t.connections_out,
            "connections_accepted": t.connections_accepted, "connections_rejected": t.connections_rejected,
            "frames_sent": t.frames_sent, "frames_received": t.frames_received,
            "bytes_sent": t.bytes_sent, "bytes_received": t.bytes_received, "writes": t.writes,
            "acked": t.acked, "fail_acked": t.fail_acked, "send_failures": t.send_failures,
            "ack_timeouts": t.ack_timeouts, "frame_timeouts": t.frame_timeouts,
            "hello_timeouts": t.hello_timeouts, "inbound_bytes": t.inbound_bytes,
            "protocol_violations": t.protocol_violations, "malformed": t.malformed,
        },
        "membership": channel.membership_stats().map(|m| json!({
            "datagrams_received": m.datagrams_received, "beacons_accepted": m.beacons_accepted,
            "beacons_sent": m.beacons_sent, "malformed": m.malformed,
            "unauthenticated": m.unauthenticated, "foreign_cluster": m.foreign_cluster,
            "replayed": m.replayed, "stale": m.stale, "own_beacons": m.own_beacons,
            "table_full": m.table_full, "events_dropped": m.events_dropped,
            "socket_errors": m.socket_errors, "socket_reopens": m.socket_reopens,
        })),
    })
}

/// Escapes text for HTML (member names come from the network).
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `3d 4h`, `5m 2s`: an uptime for people.
pub fn uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

async fn page(State(state): State<Arc<AdminState>>) -> Html<String> {
    Html(render_page(&status(&state.channel)))
}

/// The status page for a status document.
pub fn render_page(status: &Value) -> String {
    use std::fmt::Write as _;
    let text = |v: &Value| esc(v.as_str().unwrap_or(""));
    let yes = |v: &Value| v.as_bool() == Some(true);
    let mut rows = String::new();
    for m in status["members"].as_array().into_iter().flatten() {
        let (lead, local, connected) = (yes(&m["lead"]), yes(&m["local"]), yes(&m["connected"]));
        let _ = writeln!(
            rows,
            "<tr class=\"member\" data-id=\"{id}\" data-lead=\"{lead}\" data-local=\"{local}\" data-connected=\"{connected}\">\
             <td>{host}</td><td>{name}</td><td>{ip}</td><td>{port}</td><td><code>{id}</code></td>\
             <td>{started}</td><td>{up}</td><td>{lead_mark}</td><td>{local_mark}</td><td>{conn}</td>\
             <td>{found}</td><td>{app} (protocol {proto})</td></tr>",
            found = text(&m["discovered"]),
            app = text(&m["app_version"]),
            proto = m["protocol"],
            id = text(&m["id"]),
            host = text(&m["host"]),
            name = text(&m["name"]),
            ip = text(&m["ip"]),
            port = m["port"],
            started = text(&m["start_time"]),
            up = uptime(m["uptime_s"].as_u64().unwrap_or(0)),
            lead_mark = if lead {
                "<b class=\"lead\">lead</b>"
            } else {
                ""
            },
            local_mark = if local {
                "<b class=\"local\">this node</b>"
            } else {
                ""
            },
            conn = if connected {
                "established"
            } else {
                "<span class=\"down\">none</span>"
            },
        );
    }
    let c = &status["counters"];
    let t = &c["transport"];
    let mut counters = String::new();
    for (label, v) in [
        ("messages sent", &c["sent"]),
        ("messages received", &c["received"]),
        ("delivered to listeners", &c["delivered"]),
        ("listener errors", &c["listener_errors"]),
        ("ASYNC queued", &c["async_queued"]),
        (
            "connections in / out",
            &json!(format!(
                "{} / {}",
                t["connections_in"], t["connections_out"]
            )),
        ),
        (
            "bytes sent / received",
            &json!(format!("{} / {}", t["bytes_sent"], t["bytes_received"])),
        ),
        ("send failures", &t["send_failures"]),
        ("ACK timeouts", &t["ack_timeouts"]),
        ("inbound memory (bytes)", &t["inbound_bytes"]),
    ] {
        let value = v.as_str().map_or_else(|| v.to_string(), esc);
        let _ = write!(counters, "<tr><th>{label}</th><td>{value}</td></tr>");
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"2\">\
         <title>cohort: {node}</title>\
         <style>body{{font:14px system-ui,sans-serif;margin:1.5em}}table{{border-collapse:collapse}}\
         td,th{{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}}\
         .lead{{color:#075}}.local{{color:#036}}.down{{color:#a00}}</style></head><body>\
         <h1>cohort node <span id=\"node\">{node}</span></h1>\
         <p>cluster <b>{cluster}</b>, host {host}, id <code>{id}</code>; {n} members; refreshed every 2 s</p>\
         <table id=\"members\"><thead><tr><th>host</th><th>name</th><th>IP</th><th>port</th><th>node id</th>\
         <th>started (UTC)</th><th>uptime</th><th>lead</th><th>local</th><th>connection</th><th>found by</th><th>version</th></tr></thead>\
         <tbody>\n{rows}</tbody></table>\
         <h2>this node</h2><table id=\"counters\">{counters}</table></body></html>\n",
        node = text(&status["node"]),
        cluster = text(&status["cluster"]),
        host = text(&status["host"]),
        id = text(&status["id"]),
        n = status["members"].as_array().map_or(0, Vec::len),
    )
}

/// Sends one request to a node's admin endpoint and returns the JSON answer; an answer other
/// than 2xx is an error carrying its status and body.
pub async fn request_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<Value> {
    let body = request(addr, method, path, token).await?;
    serde_json::from_slice(&body).map_err(|e| anyhow::anyhow!("{addr}{path}: not JSON: {e}"))
}

/// `GET path` as JSON.
pub async fn get_json(addr: SocketAddr, path: &str, token: Option<&str>) -> anyhow::Result<Value> {
    request_json(addr, "GET", path, token).await
}

/// Sends one request and returns the body of a 2xx answer.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<Bytes> {
    request_with_body(addr, method, path, token, Bytes::new()).await
}

/// [`request`] with a body.
pub async fn request_with_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Bytes,
) -> anyhow::Result<Bytes> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| anyhow::anyhow!("no node answers on {addr}: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        let driver = tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, addr.to_string());
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let response = sender.send_request(req.body(Full::new(body))?).await?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("{addr}{path}: {e}"))?
            .to_bytes();
        driver.abort();
        if !status.is_success() {
            anyhow::bail!(
                "{addr}{path}: {status}: {}",
                String::from_utf8_lossy(&body).trim()
            );
        }
        Ok(body)
    };
    tokio::time::timeout(REQUEST_TIMEOUT + crate::traffic::STOP_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("{addr} did not answer in time"))?
}

/// Renders a status document as a table for a terminal.
pub fn table(status: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<32}  {:<16}  {:<12}  {:<21}  {:<24}  {:<8}  {:<4}  {:<5}  {:<9}  {:<9}  {:<5}  VERSION",
        "ID",
        "HOST",
        "NAME",
        "ADDRESS",
        "STARTED (UTC)",
        "UPTIME",
        "LEAD",
        "LOCAL",
        "CONNECTED",
        "FOUND BY",
        "PROTO"
    );
    let yes = |v: &Value| {
        if v.as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        }
    };
    for m in status["members"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<32}  {:<16}  {:<12}  {:<21}  {:<24}  {:<8}  {:<4}  {:<5}  {:<9}  {:<9}  {:<5}  {}",
            m["id"].as_str().unwrap_or("?"),
            m["host"].as_str().filter(|h| !h.is_empty()).unwrap_or("?"),
            m["name"].as_str().unwrap_or("?"),
            m["addr"].as_str().unwrap_or("?"),
            m["start_time"].as_str().unwrap_or("?"),
            uptime(m["uptime_s"].as_u64().unwrap_or(0)),
            yes(&m["lead"]),
            yes(&m["local"]),
            yes(&m["connected"]),
            m["discovered"].as_str().unwrap_or("?"),
            m["protocol"].to_string(),
            m["app_version"]
                .as_str()
                .filter(|v| !v.is_empty())
                .unwrap_or("-"),
        );
    }
    out
}
