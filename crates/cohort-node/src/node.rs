//! Running one node: the channel, its event lines, and the admin endpoint.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use cohort_channel::{ChannelHandle, ChannelListener, ChannelMessage, GroupChannel, ListenerError};
use cohort_membership::{
    DisappearReason, LocalMemberConfig, MembershipEvent, MembershipListener, Refusal,
};
use cohort_net::TokioNet;
use cohort_wire::Member;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::admin;
use crate::config::NodeConfig;
use crate::metrics::{Metrics, NodeMetrics};
use crate::traffic::Traffic;

/// Where event lines go: one JSON object per line, written by one task.
#[derive(Clone)]
pub struct Events(mpsc::UnboundedSender<Value>);

impl Events {
    /// Starts the writer task over `out` (the binary passes stdout). Each line is flushed.
    pub fn start(mut out: impl Write + Send + 'static) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
        let task = tokio::task::spawn_blocking(move || {
            while let Some(v) = rx.blocking_recv() {
                if writeln!(out, "{v}").and_then(|()| out.flush()).is_err() {
                    return;
                }
            }
        });
        (Self(tx), task)
    }

    /// Emits one event, stamped with `time_us` (wall clock, microseconds since the Unix epoch)
    /// so that a harness on the same host can measure from its own clock.
    pub fn emit(&self, mut v: Value) {
        if let Value::Object(map) = &mut v {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
            map.insert("time_us".into(), json!(now));
        }
        let _ = self.0.send(v);
    }
}

/// A member as event lines and status show it.
pub fn member_json(m: &Member) -> Value {
    json!({
        "id": m.id.to_string(),
        "name": m.name,
        "addr": SocketAddr::new(m.addr, m.port).to_string(),
        "start_time_ms": m.start_time_ms,
        "app_version": m.app_version,
        "protocol": m.versions.to_string(),
    })
}

struct EventLines {
    events: Events,
    node: String,
    metrics: Arc<NodeMetrics>,
}

impl MembershipListener for EventLines {
    fn on_event(&self, event: &MembershipEvent) {
        match event {
            MembershipEvent::LeadChanged { .. } => {
                self.metrics.lead_changes.inc();
            }
            MembershipEvent::MemberDisappeared { reason, .. } => {
                self.metrics.member_lost(reason.name());
            }
            _ => {}
        }
        let v = match event {
            MembershipEvent::MemberAdded(m) => {
                json!({"event": "member_added", "node": self.node, "member": member_json(m)})
            }
            MembershipEvent::MemberUpdated(m) => {
                json!({"event": "member_updated", "node": self.node, "member": member_json(m)})
            }
            MembershipEvent::MemberDisappeared { member, reason } => {
                let mut v = json!({
                    "event": "member_disappeared",
                    "node": self.node,
                    "member": member_json(member),
                    "reason": reason.name(),
                });
                match reason {
                    DisappearReason::Expired { silent_for } => {
                        v["silent_for_ms"] = json!(silent_for.as_millis());
                    }
                    DisappearReason::Failed(evidence) => v["evidence"] = json!(evidence.detail),
                    _ => {}
                }
                v
            }
            MembershipEvent::LeadChanged {
                lead,
                local_is_lead,
            } => json!({
                "event": "lead_changed",
                "node": self.node,
                "lead": lead.as_ref().map(member_json),
                "local_is_lead": local_is_lead,
            }),
            MembershipEvent::MemberRefused { member, reason } => {
                let mut v = json!({
                    "event": "member_refused",
                    "node": self.node,
                    "member": member_json(member),
                    "reason": reason.name(),
                    "detail": reason.to_string(),
                });
                match reason {
                    Refusal::Protocol { local, remote } => {
                        v["local_protocol"] = json!(local.to_string());
                        v["remote_protocol"] = json!(remote.to_string());
                    }
                    Refusal::AppVersion { local, remote } => {
                        v["local_app_version"] = json!(local);
                        v["remote_app_version"] = json!(remote);
                    }
                    _ => {}
                }
                v
            }
            MembershipEvent::DnsResolved { addresses } => json!({
                "event": "dns_resolved",
                "node": self.node,
                "addresses": addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }),
            MembershipEvent::DnsFailed {
                reason,
                attempt,
                retry_in,
            } => json!({
                "event": "dns_failed",
                "node": self.node,
                "reason": reason,
                "attempt": attempt,
                "retry_in_ms": retry_in.as_millis(),
            }),
            _ => return,
        };
        self.events.emit(v);
    }
}

struct MessageLines {
    events: Events,
    node: String,
}

impl ChannelListener for MessageLines {
    fn message_received(&self, msg: &ChannelMessage) -> Result<(), ListenerError> {
        self.events.emit(json!({
            "event": "message",
            "node": self.node,
            "from": msg.from.to_string(),
            "msg_id": msg.msg_id,
            "options": msg.options.to_string(),
            "len": msg.payload.len(),
            "payload": String::from_utf8_lossy(&msg.payload[..msg.payload.len().min(256)]),
        }));
        Ok(())
    }
}

/// How long the command run after a deploy or undeploy may take.
pub const DEPLOY_COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Writes the deployer's events as JSON lines (`deployed`, `undeployed`, `deploy_failed`) and
/// runs the configured command after each deploy or undeploy, one at a time.
async fn deploy_lines(
    mut rx: tokio::sync::broadcast::Receiver<cohort_deployer::DeployEvent>,
    events: Events,
    node: String,
    dir: std::path::PathBuf,
    command: Vec<String>,
) {
    use cohort_deployer::{DeployEvent, Origin};
    let origin = |o: Origin| {
        if o == Origin::Local {
            "local"
        } else {
            "remote"
        }
    };
    loop {
        let e = match rx.recv().await {
            Ok(e) => e,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                events.emit(json!({"event": "deploy_events_missed", "node": node, "count": n}));
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let (kind, name) = match &e {
            DeployEvent::Deployed { file, origin: o } => {
                events.emit(json!({
                    "event": "deployed", "node": node, "file": file.name, "size": file.size,
                    "sha256": cohort_deployer::fsio::hex(&file.sha256), "origin": origin(*o),
                    "path": dir.join(&file.name).display().to_string(),
                }));
                ("deployed", file.name.clone())
            }
            DeployEvent::Undeployed { name, origin: o } => {
                events.emit(json!({"event": "undeployed", "node": node, "file": name, "origin": origin(*o)}));
                ("undeployed", name.clone())
            }
            DeployEvent::Failed { name, reason } => {
                events.emit(
                    json!({"event": "deploy_failed", "node": node, "file": name, "reason": reason}),
                );
                continue;
            }
            _ => continue,
        };
        let Some((program, args)) = command.split_first() else {
            continue;
        };
        let path = dir.join(&name);
        // Bounded: a command that hangs is killed after DEPLOY_COMMAND_TIMEOUT, so later events
        // are not held up.
        let child = tokio::process::Command::new(program)
            .args(args)
            .arg(&path)
            .env("COHORT_DEPLOY_EVENT", kind)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .status();
        let (ok, detail) = match tokio::time::timeout(DEPLOY_COMMAND_TIMEOUT, child).await {
            Ok(Ok(s)) => (s.success(), s.to_string()),
            Ok(Err(e)) => (false, e.to_string()),
            Err(_) => (false, format!("killed after {DEPLOY_COMMAND_TIMEOUT:?}")),
        };
        events.emit(json!({"event": "deploy_command", "node": node, "file": name, "after": kind, "ok": ok, "status": detail}));
    }
}

/// How long the multicast probe waits for its datagram to come back.
const MULTICAST_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// The membership sources the node runs with. When multicast is configured but does not work
/// on this host (the probe of [`cohort_net::multicast_probe`] fails) and static members or DNS
/// are configured too, multicast is left out and a `multicast_unavailable` line says why; with
/// no other source it stays on (it may still reach other hosts) and the line says so.
fn membership_sources(
    config: &NodeConfig,
    events: &Events,
    node: &str,
) -> cohort_channel::MembershipSetup {
    let mut setup = config.membership.clone();
    let Some(m) = &setup.multicast else {
        return setup;
    };
    if !config
        .services
        .intersects(cohort_wire::Services::MBR_RX | cohort_wire::Services::MBR_TX)
    {
        return setup;
    }
    let Err(reason) = cohort_net::multicast_probe(&m.socket_options(), MULTICAST_PROBE_TIMEOUT)
    else {
        return setup;
    };
    let others = setup
        .static_members
        .as_ref()
        .is_some_and(|(_, p)| !p.is_empty())
        || setup.dns.is_some();
    events.emit(json!({
        "event": "multicast_unavailable",
        "node": node,
        "group": format!("{}:{}", m.group, m.port),
        "interface": m.interface.to_string(),
        "reason": reason,
        "fallback": if others { "static and DNS discovery only" } else { "none configured: multicast kept" },
    }));
    if others {
        setup.multicast = None;
    }
    setup
}

/// A running node.
pub struct Node {
    /// The channel.
    pub channel: ChannelHandle,
    /// The admin endpoint's address, if enabled.
    pub admin: Option<SocketAddr>,
    admin_server: Option<admin::AdminServer>,
    /// The interceptors' stats and controls.
    pub interceptors: cohort_interceptors::StackHandles,
    /// The test traffic generator (`--traffic`), if running.
    pub traffic: Option<Arc<Traffic>>,
    /// The node's own counters (also on `/metrics`).
    pub metrics: Arc<NodeMetrics>,
    /// The farm deployer, when `[deployer] enabled`.
    pub deployer: Option<cohort_deployer::DeployerHandle>,
    ready: Arc<std::sync::atomic::AtomicBool>,
    ready_line: Value,
    jobs: tokio::task::JoinSet<()>,
}

/// Starts a node and emits `ready`.
pub async fn start(config: NodeConfig, events: &Events) -> anyhow::Result<Node> {
    let node = start_deferred(config, events).await?;
    node.announce(events, serde_json::Map::new());
    Ok(node)
}

/// Starts a node without emitting `ready`: an application on the node (an HTTP server)
/// announces it with [`Node::announce`] once it serves too.
pub async fn start_deferred(config: NodeConfig, events: &Events) -> anyhow::Result<Node> {
    let net = TokioNet;
    let node_name = config
        .name
        .clone()
        .unwrap_or_else(|| cohort_net::Net::host_name(&net));
    let node_metrics = Arc::new(NodeMetrics::default());
    let lines = Arc::new(EventLines {
        events: events.clone(),
        node: node_name.clone(),
        metrics: node_metrics.clone(),
    });
    let membership = membership_sources(&config, events, &node_name);
    let mut channel_config = config.channel.clone();
    let stack = cohort_interceptors::build_stack(
        &config.interceptors,
        &mut channel_config,
        &mut rand::thread_rng(),
    )?;
    let mut builder = GroupChannel::builder()
        .config(channel_config)
        .transport(config.transport.clone())
        .membership(membership.clone())
        .services(config.services)
        .local(LocalMemberConfig {
            name: Some(node_name.clone()),
            app_version: config.app_version.clone(),
            ..LocalMemberConfig::default()
        })
        .membership_listener(lines);
    if let Some(keys) = config.keys.clone() {
        builder = builder.keys(keys);
    }
    for i in stack.interceptors {
        builder = builder.interceptor(i);
    }
    if config.print_messages {
        builder = builder.listener(Arc::new(MessageLines {
            events: events.clone(),
            node: node_name.clone(),
        }));
    }
    let channel = builder.start_with(net, &mut rand::thread_rng()).await?;
    let traffic = (config.traffic_rate > 0).then(|| {
        Traffic::start(
            channel.clone(),
            config.traffic_rate,
            events.clone(),
            node_name.clone(),
        )
    });
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deployer = match &config.deployer {
        Some(setup) => {
            let d = cohort_deployer::DeployerHandle::start(&channel, setup.config.clone())
                .await
                .map_err(|e| anyhow::anyhow!("deployer: {e}"))?;
            tokio::spawn(deploy_lines(
                d.events(),
                events.clone(),
                node_name.clone(),
                setup.config.deploy_dir.clone(),
                setup.command.clone(),
            ));
            Some(d)
        }
        None => None,
    };
    let admin_server = if config.admin.enabled {
        let state = admin::AdminState {
            channel: channel.clone(),
            traffic: traffic.clone(),
            metrics: Arc::new(Metrics::new(channel.clone(), &node_metrics)),
            ready: ready.clone(),
            token: admin::token(&config.admin)?,
            deployer: deployer.clone(),
        };
        Some(admin::serve(&config.admin, state).await?)
    } else {
        None
    };
    let admin = admin_server.as_ref().map(|a| a.addr);
    let local = channel.local();
    let ready_line = json!({
        "event": "ready",
        "node": node_name,
        "id": local.id.to_string(),
        "addr": SocketAddr::new(local.addr, local.port).to_string(),
        "admin": admin.map(|a| a.to_string()),
        "cluster": local.cluster,
        "start_time_ms": local.start_time_ms,
        "services": config.services.bits(),
        "multicast": membership.multicast.as_ref().map(|m| format!("{}:{}", m.group, m.port)),
        "static_members": membership.static_members.as_ref().map_or(0, |(_, p)| p.len()),
        "dns": membership.dns.as_ref().map(|d| d.name.clone()),
        "app_version": config.app_version,
        "protocol": cohort_wire::VersionRange::CURRENT.to_string(),
        "version_policy": match membership.config.version_policy {
            cohort_membership::VersionPolicy::Same => "same",
            _ => "compatible",
        },
        "pid": std::process::id(),
    });
    let jobs = crate::jobs::start(
        config.jobs.clone(),
        crate::jobs::Runner {
            channel: channel.clone(),
            events: events.clone(),
            node: node_name.clone(),
            metrics: node_metrics.clone(),
            // A member that just started may not have heard of the lead yet.
            settle: config.membership.config.drop_time,
        },
    );
    if let Some(coordinator) = stack.handles.coordinator.clone() {
        let events = events.clone();
        let node = node_name.clone();
        let mut views = coordinator.changes();
        tokio::spawn(async move {
            while views.changed().await.is_ok() {
                let view = views.borrow_and_update().clone();
                if let Some(v) = view {
                    events.emit(json!({
                        "event": "coordinator_changed",
                        "node": node,
                        "view_id": format!("{:016x}", v.view_id),
                        "coordinator": v.coordinator.id.to_string(),
                        "local_is_coordinator": v.local_is_coordinator,
                        "members": v.members.len(),
                    }));
                }
            }
        });
    }
    Ok(Node {
        channel,
        admin,
        admin_server,
        interceptors: stack.handles,
        traffic,
        metrics: node_metrics,
        deployer,
        ready,
        ready_line,
        jobs,
    })
}

impl Node {
    /// Emits the `ready` line, with `extra` fields, and reports ready on `/readyz`.
    pub fn announce(&self, events: &Events, extra: serde_json::Map<String, Value>) {
        let mut line = self.ready_line.clone();
        if let Value::Object(o) = &mut line {
            o.extend(extra);
        }
        events.emit(line);
        self.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Leaves gracefully (a shutdown beacon: peers drop this member at once) and emits
    /// `stopped`.
    pub async fn stop(mut self, events: &Events) {
        self.ready
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.jobs.shutdown().await;
        // The endpoint's connections hold the channel (and, through its listeners, the event
        // writer): end them first.
        if let Some(admin) = self.admin_server {
            admin.stop().await;
        }
        if let Some(traffic) = &self.traffic {
            traffic.stop().await;
        }
        if let Some(d) = &self.deployer {
            d.stop().await;
        }
        self.channel.stop().await;
        events.emit(json!({"event": "stopped", "node": self.channel.local().name}));
    }
}
