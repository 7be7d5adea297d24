//! The admin endpoint: a loopback TCP port answering one command per connection with JSON.
//!
//! Protocol: the client sends `status\n` (or `stats\n`, or `traffic stop\n` on a node running
//! test traffic); the node answers one JSON document and closes. Bound on 127.0.0.1 from port 4700 up (auto-bind) unless configured otherwise.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cohort_channel::ChannelHandle;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::config::AdminConfig;
use crate::node::member_json;
use crate::traffic::Traffic;

/// Longest command line accepted.
const MAX_COMMAND: u64 = 64;
/// Admin connections served at once; more are closed on accept (an operator's tool needs a
/// handful; a flood must not take the node's file descriptors).
pub const MAX_CONNECTIONS: usize = 64;
/// A client must send its command within this time.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Binds the endpoint and serves it on the current runtime.
pub async fn serve(
    config: &AdminConfig,
    channel: ChannelHandle,
    traffic: Option<Arc<Traffic>>,
) -> anyhow::Result<AdminServer> {
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
            let channel = channel.clone();
            let traffic = traffic.clone();
            connections.spawn(async move {
                // `traffic stop` waits for outstanding receipts (bounded by its own timeout).
                let limit = COMMAND_TIMEOUT + crate::traffic::STOP_TIMEOUT;
                let _ =
                    tokio::time::timeout(limit, answer(stream, &channel, traffic.as_deref())).await;
                drop(slot);
            });
        }
        connections.shutdown().await;
    });
    Ok(AdminServer { addr, stop, task })
}

async fn answer(
    stream: TcpStream,
    channel: &ChannelHandle,
    traffic: Option<&Traffic>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    tokio::time::timeout(
        COMMAND_TIMEOUT,
        BufReader::new(read.take(MAX_COMMAND)).read_line(&mut line),
    )
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let reply = match (line.trim(), traffic) {
        ("status", _) => status(channel),
        ("stats", _) => stats(channel),
        ("traffic stop", Some(t)) => t.stop().await,
        ("traffic stop", None) => json!({"error": "this node runs no traffic (--traffic)"}),
        (other, _) => {
            json!({"error": format!("unknown command {other:?}; try status, stats or traffic stop")})
        }
    };
    write.write_all(reply.to_string().as_bytes()).await?;
    write.write_all(b"\n").await?;
    write.shutdown().await
}

/// The status document: the members this node sees.
pub fn status(channel: &ChannelHandle) -> Value {
    let local = channel.local();
    let members: Vec<Value> = match channel.view() {
        Some(view) => view
            .members
            .iter()
            .map(|vm| {
                let mut v = member_json(&vm.member);
                v["lead"] = json!(vm.lead);
                v["local"] = json!(vm.local);
                v["connected"] = json!(vm.local || channel.is_connected(&vm.member));
                v
            })
            .collect(),
        None => {
            let mut v = member_json(local);
            v["lead"] = json!(true);
            v["local"] = json!(true);
            v["connected"] = json!(true);
            vec![v]
        }
    };
    json!({
        "node": local.name,
        "id": local.id.to_string(),
        "cluster": local.cluster,
        "members": members,
    })
}

fn stats(channel: &ChannelHandle) -> Value {
    let s = channel.stats();
    let t = &s.transport;
    json!({
        "sent": s.sent, "received": s.received, "delivered": s.delivered,
        "listener_errors": s.listener_errors, "async_queued": s.async_queued,
        "async_queued_bytes": s.async_queued_bytes,
        "transport": {
            "connections_in": t.connections_in, "connections_out": t.connections_out,
            "connections_accepted": t.connections_accepted, "connections_rejected": t.connections_rejected,
            "frames_sent": t.frames_sent, "frames_received": t.frames_received,
            "bytes_sent": t.bytes_sent, "bytes_received": t.bytes_received, "writes": t.writes,
            "acked": t.acked, "fail_acked": t.fail_acked, "send_failures": t.send_failures,
            "ack_timeouts": t.ack_timeouts, "frame_timeouts": t.frame_timeouts,
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

/// Asks a node's admin endpoint for `command` and returns the JSON answer.
pub async fn query(addr: SocketAddr, command: &str) -> anyhow::Result<Value> {
    let mut stream = tokio::time::timeout(COMMAND_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {addr} timed out"))?
        .map_err(|e| anyhow::anyhow!("no node answers on {addr}: {e}"))?;
    stream.write_all(format!("{command}\n").as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(
        COMMAND_TIMEOUT,
        (&mut stream).take(16 << 20).read_to_end(&mut out),
    )
    .await
    .map_err(|_| anyhow::anyhow!("{addr} did not answer in time"))??;
    Ok(serde_json::from_slice(&out)?)
}

/// Renders a status document as a table.
pub fn table(status: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<32}  {:<16}  {:<21}  {:<13}  {:<4}  {:<5}  CONNECTED",
        "ID", "HOST", "ADDRESS", "STARTED (ms)", "LEAD", "LOCAL"
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
            "{:<32}  {:<16}  {:<21}  {:<13}  {:<4}  {:<5}  {}",
            m["id"].as_str().unwrap_or("?"),
            m["name"].as_str().unwrap_or("?"),
            m["addr"].as_str().unwrap_or("?"),
            m["start_time_ms"],
            yes(&m["lead"]),
            yes(&m["local"]),
            yes(&m["connected"]),
        );
    }
    out
}
