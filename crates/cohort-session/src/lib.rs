//! Web sessions that survive a node failure, for axum and tower apps: Tomcat's delta and
//! backup session managers on Cohort's replicated maps.
//!
//! - [`SessionManager`] keeps the sessions: [`ManagerKind::Delta`] on every member (changes
//!   travel as deltas of attributes), or [`ManagerKind::Backup`] on a primary and a backup
//!   with proxies elsewhere. Changes are SYNC_ACK by default: a response leaves once its change
//!   is on the other holders, so a member's crash loses nothing a client was answered about.
//! - [`SessionLayer`] (a tower layer) and [`Session`] (an axum extractor) load the session of
//!   the request's cookie, replicate what changed at the end of the response, batch access
//!   times, expire idle sessions everywhere, and keep a sticky load balancer's route suffix
//!   true after a failover.
//!
//! - With feature `tower-sessions`, [`CohortStore`] is a `tower_sessions::SessionStore`
//!   over either manager, for apps that already use tower-sessions.
//!
//! docs/SESSIONS.md states what each manager promises and the tests that check it. The
//! `counter` example is an axum app on the full stack (`cargo run -p cohort-session --example
//! counter -- --http 127.0.0.1:8080 --name a`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{Router, routing::get};
//! use cohort_channel::GroupChannel;
//! use cohort_session::{ManagerKind, Session, SessionConfig, SessionLayer, SessionManager};
//!
//! async fn visits(session: Session) -> String {
//!     let n: u64 = session.get("visits").ok().flatten().unwrap_or(0) + 1;
//!     session.insert("visits", &n).expect("a u64 serialises");
//!     format!("visit {n}")
//! }
//!
//! let channel = GroupChannel::builder().start().await?; // multicast membership on defaults
//! let manager = SessionManager::start(&channel, ManagerKind::Delta, SessionConfig::default()).await?;
//! let app: Router = Router::new().route("/", get(visits)).layer(SessionLayer::new(manager).route("a"));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

pub mod core;
mod layer;
mod manager;
mod model;
#[cfg(feature = "tower-sessions")]
mod store;

pub use layer::{COOKIE_NAME, Filter, Session, SessionLayer, SessionService};
pub use manager::{
    DestroyReason, ManagerKind, SessionConfig, SessionError, SessionEvent, SessionManager,
    SessionStats,
};
pub use model::{BadSessionId, Changes, Meta, SessionData, SessionId};
#[cfg(feature = "tower-sessions")]
pub use store::{CohortStore, MAX_REMEMBERED};
