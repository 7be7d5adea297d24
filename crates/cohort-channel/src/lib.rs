//! Cohort's group channel: a membership service, a transport and a stack of interceptors,
//! assembled by [`GroupChannel::builder`] and run by one task.
//!
//! - **Send options** keep Tribes' bits ([`SendOptions`]). [`ChannelHandle::send`] returns a
//!   [`SendReceipt`] that resolves as the options promise: when queued (ASYNCHRONOUS), written
//!   (no ACK), acknowledged on receipt (USE_ACK) or after the remote listeners ran
//!   (USE_ACK | SYNCHRONIZED_ACK, with FAIL_ACK when one failed), with a result per member.
//! - **ASYNCHRONOUS** keeps per-sender order (unlike Tribes) and is bounded in messages and
//!   bytes: a send waits for room (backpressure) instead of growing memory. Outcomes go to the
//!   [`ErrorHandler`].
//! - **Interceptors** ([`Interceptor`], [`Pipeline`]) are synchronous, see both directions,
//!   member events, timers and the heartbeat, and are skipped for messages whose options lack
//!   their mask.
//! - **Listeners**: [`ChannelListener`] with an accept filter; [`ClusterListener`] sees every
//!   message sent and received; membership listeners get events after the interceptors.
//! - **RPC**: [`RpcChannel`] with reply modes first / majority / all / none and a timeout.
//! - **Seams**: the transport and the membership service are behind [`ChannelTransport`] and
//!   [`ChannelMembership`]; services start and stop by Tribes' flags (3 = without membership).
//!   With the `tower` feature, `ChannelHandle::into_service` gives a `ChannelService`, a
//!   `tower_service::Service` for sends whose `poll_ready` reserves a place in the queue.
//!
//! ```
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use cohort_channel::{ChannelListener, ChannelMessage, GroupChannel, ListenerError};
//! use cohort_net::TokioNet;
//! use cohort_transport::TransportConfig;
//! use cohort_wire::{SendOptions, Services};
//!
//! struct Print;
//! impl ChannelListener for Print {
//!     fn message_received(&self, msg: &ChannelMessage) -> Result<(), ListenerError> {
//!         assert_eq!(&msg.payload[..], b"hello");
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! let mut rng = rand::thread_rng();
//! let transport = TransportConfig { port: 0, ..TransportConfig::default() };
//! // Services 3: receiver and sender only, no membership; destinations are given explicitly.
//! let no_membership = Services::SND_RX | Services::SND_TX;
//! let b = GroupChannel::builder()
//!     .transport(transport.clone())
//!     .services(no_membership)
//!     .listener(Arc::new(Print))
//!     .start_with(TokioNet, &mut rng)
//!     .await?;
//! let a = GroupChannel::builder()
//!     .transport(transport)
//!     .services(no_membership)
//!     .start_with(TokioNet, &mut rng)
//!     .await?;
//! let sync_ack = SendOptions::USE_ACK | SendOptions::SYNCHRONIZED_ACK;
//! let outcome = a.send(&[b.local().clone()], Bytes::from_static(b"hello"), sync_ack).await?.await;
//! assert!(outcome.is_ok(), "{outcome:?}");
//! a.stop().await;
//! b.stop().await;
//! # Ok(())
//! # }
//! ```

mod admission;
mod channel;
pub mod core;
mod listener;
mod receipt;
mod rpc;
mod seams;
#[cfg(feature = "tower")]
mod service;

pub use channel::{
    AsyncFullPolicy, ChannelBuilder, ChannelConfig, ChannelError, ChannelHandle, ChannelStats,
    CustomTransport, GroupChannel, MAX_BATCH, MembershipSetup, Mode, ModeStats, ViewEvent,
};
pub use core::{
    Acker, Cx, Inbound, Interceptor, Outbound, Output, Pipeline, PipelineStats, ProbeError,
    ProbeErrorKind, ProbeRequest, Suspicion, TagKind, Ticket, check_order, tags,
};
pub use listener::{ChannelListener, ChannelMessage, ClusterListener, ListenerError};
pub use receipt::{
    ErrorHandler, MemberResult, MemberResults, MemberResultsIntoIter, SendOutcome, SendReceipt,
};
pub use rpc::{
    AsyncRpcHandler, CallOptions, CallResult, MAX_ASYNC_REQUESTS, MAX_CALLS, ReplyMode, RpcChannel,
    RpcHandler, RpcResponse,
};
pub use seams::{BoxFuture, ChannelMembership, ChannelTransport};
#[cfg(feature = "tower")]
pub use service::{ChannelService, SendRequest};

pub use cohort_transport::{Delivered, SendError};
pub use cohort_wire::{SendOptions, Services};
