//! `counter`: an axum app on the full Cohort stack whose sessions survive a node failure.
//!
//! ```text
//! cargo run --release -p cohort-session --example counter -- \
//!     --http 127.0.0.1:8081 --name a [--config node.toml] [--manager delta|backup]
//! ```
//!
//! `GET /count` increments an integer in the session and answers
//! `{"count":N,"node":"NAME","session":"ID"}`; a new client gets a cookie and count 1.
//! `--config` takes the `cohort node` TOML (membership, transport, interceptors, keys). The
//! node's JSON event lines go to stdout (`ready` once HTTP is served, with `"http"`); SIGTERM
//! or Ctrl-C leaves gracefully.

// A program: its event lines are its output.
#![allow(clippy::print_stderr)]

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use cohort_node::config::NodeConfig;
use cohort_node::node::{self, Events};
use cohort_session::{ManagerKind, Session, SessionConfig, SessionLayer, SessionManager};
use serde_json::{Value, json};

/// A session counter on a Cohort node.
#[derive(Parser, Debug)]
#[command(name = "counter", version, about)]
struct Args {
    /// Where the HTTP server listens.
    #[arg(long, value_name = "ADDR")]
    http: SocketAddr,
    /// The node's name (also the session cookie's route).
    #[arg(long)]
    name: String,
    /// The node's TOML configuration (as `cohort node --config`).
    #[arg(long, value_name = "FILE")]
    config: Option<String>,
    /// Which session manager.
    #[arg(long, default_value = "delta")]
    manager: ManagerKind,
}

async fn count(State(name): State<String>, session: Session) -> Json<Value> {
    let n: u64 = session.get("count").ok().flatten().unwrap_or(0) + 1;
    if let Err(e) = session.insert("count", &n) {
        return Json(json!({"error": e.to_string()}));
    }
    let id = session.id().map(|id| id.to_string());
    Json(json!({"count": n, "node": name, "session": id}))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => NodeConfig::from_file(path)?,
        None => NodeConfig::defaults(),
    };
    config.name = Some(args.name.clone());
    let (events, writer) = Events::start(std::io::stdout());
    // Handlers first: a SIGTERM right after the `ready` line must still be graceful.
    let shutdown = shutdown()?;
    let node = node::start_deferred(config, &events).await?;
    let manager = SessionManager::start(&node.channel, args.manager, SessionConfig::default())
        .await
        .context("starting the session manager")?;
    let app = Router::new()
        .route("/count", get(count))
        .with_state(args.name.clone())
        .layer(SessionLayer::new(manager.clone()).route(args.name.clone()));
    let listener = tokio::net::TcpListener::bind(args.http)
        .await
        .with_context(|| format!("binding {}", args.http))?;
    let mut extra = serde_json::Map::new();
    extra.insert("http".into(), json!(listener.local_addr()?.to_string()));
    extra.insert(
        "manager".into(),
        json!(format!("{:?}", args.manager).to_lowercase()),
    );
    node.announce(&events, extra);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    manager.stop().await;
    node.stop(&events).await;
    drop(events);
    let _ = writer.await;
    Ok(())
}

/// Installs the SIGTERM and SIGINT handlers now; the future ends at the first signal.
fn shutdown() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("counter: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("counter: {e:#}");
            ExitCode::FAILURE
        }
    }
}
