//! Cohort: cluster group communication in the style of Apache Tomcat's Tribes. Members find
//! each other (multicast beacons or a static list), talk over a channel whose send options are
//! Tribes' bit flags (ACK, synchronized ACK, ASYNC, ...), and every message passes a stack of
//! interceptors (failure detector, ordering, fragmentation, compression, encryption, ...).
//!
//! This crate is the one to depend on: it re-exports the `cohort-*` crates (each also usable
//! on its own) and gathers what a program needs in [`prelude`]. Features: `interceptors` and
//! `maps` (replicated maps) on by default; `session` (web sessions for axum and tower),
//! `deployer` (cluster-wide file deployment), `tower`, `serde`.
//!
//! A channel, a send that waits for its ACK in one await, and an RPC call, between two
//! channels in one process (across processes it is the same code on each side):
//!
//! ```
//! use std::sync::Arc;
//! use cohort::prelude::*;
//!
//! struct Echo;
//! impl RpcHandler for Echo {
//!     fn reply_request(&self, _from: &Member, request: &Bytes) -> Option<Bytes> {
//!         Some(request.clone())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ChannelError> {
//! // Receiver and sender only (no membership): destinations are given explicitly here.
//! let start = || {
//!     GroupChannel::builder()
//!         .transport(TransportConfig { port: 0, ..TransportConfig::default() })
//!         .services(Services::SND_RX | Services::SND_TX)
//!         .start()
//! };
//! let (a, b) = (start().await?, start().await?);
//! let _echo = RpcChannel::new(&b, "echo", Arc::new(Echo), SendOptions::NONE)?;
//! let to = [b.local().clone()];
//!
//! let outcome = a.send_wait(&to, "hello".into(), SendOptions::USE_ACK).await?;
//! assert!(outcome.is_ok());
//!
//! let rpc = RpcChannel::new(&a, "echo", Arc::new(Echo), SendOptions::NONE)?;
//! let answer = rpc.call(&to, "ping".into(), CallOptions::default()).await?;
//! assert_eq!(&answer.replies[0].payload[..], b"ping");
//! assert!(answer.failed.is_empty() && answer.no_reply.is_empty());
//! a.stop().await;
//! b.stop().await;
//! # Ok(())
//! # }
//! ```
//!
//! `examples/` has programs that run across processes (each compiled in CI): `chat` (membership
//! and one-await sends), `cache_invalidation` (a SYNCHRONIZED_ACK broadcast and an RPC lookup),
//! `secure_stack` (compression, encryption and the failure detector built from code, with
//! cluster keys). Run one in two terminals: `cargo run -p cohort --example chat -- alice`.
//!
//! A library channel starts with no interceptor unless given some, so no failure detector: a
//! member leaves by shutdown or after the drop time. The `cohort` node starts with
//! [`interceptors::default_stack`] (`tcp_ping`, `tcp_failure_detector`), which detects a
//! killed process within milliseconds; give the same stack to a library channel with
//! `interceptors::build_stack`.

pub use cohort_channel as channel;
#[cfg(feature = "deployer")]
pub use cohort_deployer as deployer;
#[cfg(feature = "interceptors")]
pub use cohort_interceptors as interceptors;
#[cfg(feature = "maps")]
pub use cohort_maps as maps;
pub use cohort_membership as membership;
pub use cohort_net as net;
#[cfg(feature = "session")]
pub use cohort_session as session;
pub use cohort_transport as transport;
pub use cohort_wire as wire;
/// The random-number traits of the public API (`start_with` takes an `RngCore` of this
/// version), so that a program need not match it.
pub use rand_core;

/// What most programs use, in one import.
pub mod prelude {
    pub use bytes::Bytes;
    pub use cohort_channel::{
        AsyncRpcHandler, BoxFuture, CallOptions, CallResult, ChannelConfig, ChannelError,
        ChannelHandle, ChannelListener, ChannelMessage, GroupChannel, ListenerError,
        MembershipSetup, ReplyMode, RpcChannel, RpcHandler, RpcResponse, SendOutcome, SendReceipt,
        ViewEvent,
    };
    #[cfg(feature = "deployer")]
    pub use cohort_deployer::{DeployerConfig, DeployerHandle};
    #[cfg(feature = "interceptors")]
    pub use cohort_interceptors::{InterceptorConfig, StackExt, build_stack, default_stack};
    #[cfg(feature = "maps")]
    pub use cohort_maps::{LazyReplicatedMap, MapConfig, MapError, ReplicatedMap, WriteMode};
    pub use cohort_membership::{
        Membership, MembershipConfig, MembershipEvent, MembershipHandle, MembershipListener,
        MulticastConfig, StaticPeer,
    };
    #[cfg(feature = "session")]
    pub use cohort_session::{ManagerKind, Session, SessionConfig, SessionLayer, SessionManager};
    pub use cohort_transport::TransportConfig;
    pub use cohort_wire::{ClusterKey, KeyRing, Member, MemberId, SendOptions, Services};
}
