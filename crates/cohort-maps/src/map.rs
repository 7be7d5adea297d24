//! The typed maps: [`ReplicatedMap`] and [`LazyReplicatedMap`], one generic [`Map`] underneath.

use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;
use cohort_channel::ChannelHandle;
use cohort_wire::Member;
use tokio::sync::broadcast;

use crate::codec::{Codec, Postcard};
use crate::config::MapConfig;
use crate::core::{Change, CoreEvent, Kind, Origin};
use crate::driver::{Clock, MapStats, RawMap, WriteMode, system_clock};
use crate::error::MapError;

/// Which map a [`Map`] is.
pub trait Flavor: Send + Sync + 'static {
    /// The core's kind.
    const KIND: Kind;
}

/// Every member holds every entry ([`ReplicatedMap`]).
#[derive(Debug)]
pub enum All {}

/// Primary, backups and proxies ([`LazyReplicatedMap`]).
#[derive(Debug)]
pub enum Lazy {}

impl Flavor for All {
    const KIND: Kind = Kind::Replicated;
}

impl Flavor for Lazy {
    const KIND: Kind = Kind::Lazy;
}

/// A map every member of which holds every entry (Tribes' `ReplicatedMap`). Reads are local;
/// a write goes to every member. Concurrent writes to a key resolve the same way everywhere
/// (the highest [`crate::Version`]); digests repair what a member missed.
pub type ReplicatedMap<K, V, C = Postcard> = Map<K, V, C, All>;

/// A map whose entries live on a primary and `backup_count` backups, every other member
/// holding a proxy (Tribes' `LazyReplicatedMap`, the base of the backup session manager). A
/// read on a proxy fetches the value and moves the entry there.
pub type LazyReplicatedMap<K, V, C = Postcard> = Map<K, V, C, Lazy>;

/// A replicated map of keys `K` and values `V` through codec `C`; see [`ReplicatedMap`] and
/// [`LazyReplicatedMap`]. Clones share the map; [`Map::stop`] leaves it.
pub struct Map<K, V, C, F> {
    raw: Arc<RawMap>,
    codec: Arc<C>,
    _types: PhantomData<Types<K, V, F>>,
}

impl<K, V, C, F> Clone for Map<K, V, C, F> {
    fn clone(&self) -> Self {
        Self {
            raw: self.raw.clone(),
            codec: self.codec.clone(),
            _types: PhantomData,
        }
    }
}

/// The types a map handles, for `PhantomData` (a function type: `Map` is `Send + Sync`
/// whatever `K` and `V` are, as it holds none of them).
type Types<K, V, F> = fn(K, V, F) -> (K, V);

/// Starts a map: [`Map::builder`].
pub struct MapBuilder<K, V, C, F> {
    channel: ChannelHandle,
    name: String,
    config: MapConfig,
    codec: C,
    clock: Clock,
    _types: PhantomData<fn(K, V, F)>,
}

impl<K, V, C, F> MapBuilder<K, V, C, F>
where
    C: Codec<K> + Codec<V>,
    F: Flavor,
{
    /// With these settings (default: [`MapConfig::default`]).
    #[must_use]
    pub fn config(mut self, config: MapConfig) -> Self {
        self.config = config;
        self
    }

    /// With this codec (default: `C::default()`).
    #[must_use]
    pub fn codec(mut self, codec: C) -> Self {
        self.codec = codec;
        self
    }

    /// With this wall clock, in ms since the Unix epoch (default: the system clock); a
    /// simulation passes its virtual one.
    #[must_use]
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Joins the map on the channel and returns once this member holds the map's state: it
    /// says hello to every channel member (those running a map of this name answer and become
    /// its members), then pulls the whole map from one of them in chunks of at most
    /// `max_chunk_bytes` while live writes keep arriving. Fails with
    /// [`MapError::StateTransfer`] when that takes longer than `state_transfer_timeout`.
    pub async fn start(self) -> Result<Map<K, V, C, F>, MapError> {
        let raw =
            RawMap::start(&self.channel, &self.name, self.config, F::KIND, self.clock).await?;
        Ok(Map {
            raw: Arc::new(raw),
            codec: Arc::new(self.codec),
            _types: PhantomData,
        })
    }
}

/// A change to an entry, as [`MapEvents`] yields it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEvent<K, V> {
    /// The key.
    pub key: K,
    /// Added, updated or removed.
    pub change: Change,
    /// A call on this member, or a message from another.
    pub origin: Origin,
    /// The value, when this member holds it (always in a replicated map, except on removal).
    pub value: Option<V>,
}

/// A subscription to a map's changes. At most `event_buffer` wait; a subscriber that falls
/// further behind is told how many it missed.
pub struct MapEvents<K, V, C> {
    rx: broadcast::Receiver<CoreEvent>,
    codec: Arc<C>,
    _types: PhantomData<fn() -> (K, V)>,
}

/// Why [`MapEvents::recv`] returned no event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventsError {
    /// The subscriber fell behind: this many events were skipped.
    #[error("{0} map events missed")]
    Lagged(u64),
    /// The map stopped.
    #[error("the map stopped")]
    Closed,
}

impl<K, V, C: Codec<K> + Codec<V>> MapEvents<K, V, C> {
    /// The next change (events whose key or value does not decode are skipped).
    pub async fn recv(&mut self) -> Result<MapEvent<K, V>, EventsError> {
        loop {
            let e = self.rx.recv().await.map_err(|e| match e {
                broadcast::error::RecvError::Lagged(n) => EventsError::Lagged(n),
                broadcast::error::RecvError::Closed => EventsError::Closed,
            })?;
            let Ok(key) = self.codec.decode(&e.key) else {
                continue;
            };
            let value = match e.value.as_deref().map(|v| self.codec.decode(v)) {
                Some(Ok(v)) => Some(v),
                Some(Err(_)) => continue,
                None => None,
            };
            return Ok(MapEvent {
                key,
                change: e.change,
                origin: e.origin,
                value,
            });
        }
    }
}

impl<K, V, C, F> Map<K, V, C, F>
where
    C: Codec<K> + Codec<V> + Default,
    F: Flavor,
{
    /// A builder for the map named `name` (1 to 200 bytes) on `channel`. Maps of different
    /// names share a channel without seeing each other's traffic; a member that runs no map of
    /// this name is not a member of it.
    ///
    /// ```no_run
    /// # async fn demo(channel: cohort_channel::ChannelHandle) -> Result<(), cohort_maps::MapError> {
    /// use cohort_maps::{ReplicatedMap, WriteMode};
    /// let users: ReplicatedMap<String, u64> = ReplicatedMap::builder(&channel, "users").start().await?;
    /// users.put("ada".into(), 1815).await?;
    /// users.put_with("alan".into(), 1912, WriteMode::SyncAck).await?; // applied everywhere
    /// assert_eq!(users.get(&"ada".to_string()).await?, Some(1815));
    /// # Ok(()) }
    /// ```
    pub fn builder(channel: &ChannelHandle, name: impl Into<String>) -> MapBuilder<K, V, C, F> {
        MapBuilder {
            channel: channel.clone(),
            name: name.into(),
            config: MapConfig::default(),
            codec: C::default(),
            clock: system_clock(),
            _types: PhantomData,
        }
    }
}

impl<K, V, C, F> Map<K, V, C, F>
where
    C: Codec<K> + Codec<V>,
    F: Flavor,
{
    /// Writes `value` under `key` ([`WriteMode::Async`]: applied here, queued for the others).
    pub async fn put(&self, key: K, value: V) -> Result<(), MapError> {
        self.put_with(key, value, WriteMode::Async).await
    }

    /// Writes with a chosen mode. The write is applied here before it is sent; with
    /// [`WriteMode::SyncAck`] the call returns once every holder applied it, and fails with
    /// [`MapError::NotApplied`] naming those that did not (it stays applied where it was).
    pub async fn put_with(&self, key: K, value: V, mode: WriteMode) -> Result<(), MapError> {
        let k = Codec::<K>::encode(&*self.codec, &key)?;
        let v = Codec::<V>::encode(&*self.codec, &value)?;
        self.raw.put(k, v, mode).await
    }

    /// The value under `key`. In a lazy map, a member holding only a proxy fetches it from
    /// the entry's holders and becomes its primary; [`MapError::Unavailable`] when none
    /// answers. When every member answers and none holds the value (it was lost to more
    /// failures than `backup_count`), `None`, and the loss is counted in
    /// [`CoreStats::lost`](crate::CoreStats::lost).
    pub async fn get(&self, key: &K) -> Result<Option<V>, MapError> {
        let k = Codec::<K>::encode(&*self.codec, key)?;
        match self.raw.get(k).await? {
            Some(v) => Ok(Some(Codec::<V>::decode(&*self.codec, &v)?)),
            None => Ok(None),
        }
    }

    /// Removes `key` everywhere ([`WriteMode::Async`]); `false` when it was not there.
    pub async fn remove(&self, key: &K) -> Result<bool, MapError> {
        self.remove_with(key, WriteMode::Async).await
    }

    /// Removes with a chosen mode (every member learns of a removal, in either map).
    pub async fn remove_with(&self, key: &K, mode: WriteMode) -> Result<bool, MapError> {
        let k = Codec::<K>::encode(&*self.codec, key)?;
        self.raw.remove(k, mode).await
    }

    /// Writes (`Some` value) and removals (`None`) together: applied here all or none (past
    /// a limit the whole batch is refused), then sent as one message per set of destinations
    /// (one message in a replicated map), as `mode` asks.
    pub async fn write_batch(
        &self,
        ops: Vec<(K, Option<V>)>,
        mode: WriteMode,
    ) -> Result<(), MapError> {
        let mut raw = Vec::with_capacity(ops.len());
        for (k, v) in ops {
            let k = Codec::<K>::encode(&*self.codec, &k)?;
            let v = match v {
                Some(v) => Some(Codec::<V>::encode(&*self.codec, &v)?),
                None => None,
            };
            raw.push((k, v));
        }
        self.raw.write_batch(raw, mode).await
    }

    /// Entries held here whose encoded key starts with `prefix` (with [`crate::Raw`] keys: the
    /// key's own bytes), in key order.
    pub async fn entries_with_prefix(&self, prefix: &[u8]) -> Result<Vec<(K, V)>, MapError> {
        let page = self.raw.scan_prefix(Bytes::copy_from_slice(prefix)).await?;
        let mut out = Vec::with_capacity(page.len());
        for (k, v) in page {
            out.push((
                Codec::<K>::decode(&*self.codec, &k)?,
                Codec::<V>::decode(&*self.codec, &v)?,
            ));
        }
        Ok(out)
    }

    /// Live entries known here (a lazy map counts its proxies).
    pub async fn len(&self) -> Result<usize, MapError> {
        self.raw.len().await
    }

    /// True when [`Map::len`] is zero.
    pub async fn is_empty(&self) -> Result<bool, MapError> {
        Ok(self.len().await? == 0)
    }

    /// Every entry whose value this member holds, in encoded-key order, read in pages of
    /// 1,024 (a lazy map: the entries it is primary or backup of; [`Map::keys`] lists the
    /// proxies too).
    pub async fn entries(&self) -> Result<Vec<(K, V)>, MapError> {
        let mut out = Vec::new();
        let mut after: Option<Bytes> = None;
        loop {
            let page = self.raw.scan(after.clone(), 1024).await?;
            let done = page.len() < 1024;
            after = page.last().map(|(k, _)| k.clone());
            for (k, v) in page {
                out.push((
                    Codec::<K>::decode(&*self.codec, &k)?,
                    Codec::<V>::decode(&*self.codec, &v)?,
                ));
            }
            if done {
                return Ok(out);
            }
        }
    }

    /// Every live key known here, proxies included.
    pub async fn keys(&self) -> Result<Vec<K>, MapError> {
        self.raw
            .keys()
            .await?
            .iter()
            .map(|k| Codec::<K>::decode(&*self.codec, k).map_err(MapError::from))
            .collect()
    }

    /// Changes from now on, local and remote.
    pub fn events(&self) -> MapEvents<K, V, C> {
        MapEvents {
            rx: self.raw.subscribe(),
            codec: self.codec.clone(),
            _types: PhantomData,
        }
    }

    /// The other members running this map.
    pub async fn members(&self) -> Result<Vec<Member>, MapError> {
        self.raw.members().await
    }

    /// Counters.
    pub async fn stats(&self) -> Result<MapStats, MapError> {
        self.raw.stats().await
    }

    /// The map's name.
    pub fn name(&self) -> &str {
        self.raw.name()
    }

    /// Leaves the map: the others are told at once (a lazy map's survivors restore its
    /// copies). Later calls fail with [`MapError::Stopped`].
    pub async fn stop(&self) {
        self.raw.stop().await;
    }
}
