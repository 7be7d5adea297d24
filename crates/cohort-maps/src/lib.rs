//! Replicated maps on a Cohort channel: Tribes' tipis, made to converge and to keep what they
//! acknowledged.
//!
//! - [`ReplicatedMap`]: every member holds every entry. Reads are local; writes go to every
//!   member.
//! - [`LazyReplicatedMap`]: an entry lives on a primary and `backup_count` backups (placed
//!   by rendezvous hashing over the map's members); every other member holds a proxy (where
//!   it lives). A read on a proxy fetches the value and moves the entry there; when a holder
//!   leaves or fails, the survivors restore the copies.
//!
//! Both: every write carries a [`Version`] (a hybrid logical clock and the writer's id) that
//! orders concurrent writes the same way on every member; removals leave tombstones for
//! `tombstone_ttl`; members compare digests of 256 key buckets with one random member every
//! `anti_entropy_interval` and repair the difference; a starting member pulls the map in
//! bounded chunks while live writes continue. Writes are ASYNC by default, or USE_ACK, or
//! SYNC_ACK (returns once every holder applied it). docs/MAPS.md states what each map
//! promises and the test that checks each promise.
//!
//! Three channels in one process sharing a map (across processes it is the same code on each
//! node):
//!
//! ```
//! use cohort_maps::{ReplicatedMap, WriteMode};
//! # use std::time::Duration;
//! # use cohort_channel::{ChannelHandle, GroupChannel, MembershipSetup};
//! # use cohort_membership::{MembershipConfig, StaticPeer};
//! # use cohort_transport::TransportConfig;
//! # async fn node(cluster: &str, me: u16, peer: u16) -> ChannelHandle {
//! #     GroupChannel::builder()
//! #         .transport(TransportConfig { port: 0, ..TransportConfig::default() })
//! #         .membership(MembershipSetup {
//! #             config: MembershipConfig {
//! #                 cluster: cluster.into(),
//! #                 frequency: Duration::from_millis(100),
//! #                 ..MembershipConfig::default()
//! #             },
//! #             multicast: None,
//! #             static_members: Some((
//! #                 ([127, 0, 0, 1], me).into(),
//! #                 vec![format!("127.0.0.1:{peer}").parse::<StaticPeer>().unwrap()],
//! #             )),
//! #             dns: None,
//! #         })
//! #         .start()
//! #         .await
//! #         .unwrap()
//! # }
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), cohort_maps::MapError> {
//! # let port = || std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
//! # let (pa, pb) = (port(), port());
//! # let cluster = format!("doc-{pa}");
//! # let (a, b) = (node(&cluster, pa, pb).await, node(&cluster, pb, pa).await);
//! # while a.members().is_empty() || b.members().is_empty() {
//! #     tokio::time::sleep(Duration::from_millis(20)).await;
//! # }
//! // `a` and `b` are channels with membership that see each other.
//! let on_a: ReplicatedMap<String, u32> = ReplicatedMap::builder(&a, "counts").start().await?;
//! let on_b: ReplicatedMap<String, u32> = ReplicatedMap::builder(&b, "counts").start().await?;
//! on_a.put_with("x".into(), 1, WriteMode::SyncAck).await?; // applied on b when it returns
//! assert_eq!(on_b.get(&"x".to_string()).await?, Some(1));
//! # a.stop().await;
//! # b.stop().await;
//! # Ok(()) }
//! ```

pub mod codec;
pub mod config;
pub mod core;
mod driver;
mod error;
pub mod fuzz;
mod map;
pub mod msg;
mod version;

pub use codec::{Codec, Postcard, Raw};
pub use config::{ConfigError, MapConfig};
pub use core::{Change, CoreStats, Origin};
pub use driver::{Clock, MAX_NAME, MapStats, WriteMode, system_clock};
pub use error::{CodecError, MapError};
pub use map::{
    All, EventsError, Flavor, Lazy, LazyReplicatedMap, Map, MapBuilder, MapEvent, MapEvents,
    ReplicatedMap,
};
pub use version::{Hlc, Version};
