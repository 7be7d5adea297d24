//! The session managers: where sessions live and how a request's changes reach the others.
//!
//! - **Delta** (Tomcat's `DeltaManager`): every member holds every session, in a
//!   [`ReplicatedMap`] where each attribute is its own entry (key: the session id, a kind byte,
//!   the name). A request's changes (attributes set or removed, the access time) travel as one
//!   batch; concurrent changes to different attributes of one session on different members
//!   merge, and to one attribute resolve by version, the same everywhere.
//! - **Backup** (Tomcat's `BackupManager`): sessions live in a [`LazyReplicatedMap`], whole,
//!   on a primary and one backup; other members hold a proxy and fetch the session when a
//!   request for it lands on them (the session then moves there).
//!
//! Both: writes are SYNC_ACK by default (the response leaves once the change is on the other
//! holders), access times are batched (`access_flush_interval`), and expired sessions are
//! removed everywhere.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use cohort_channel::ChannelHandle;
use cohort_maps::{
    Change, Clock, LazyReplicatedMap, MapConfig, MapError, Origin, Raw, ReplicatedMap, WriteMode,
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::core::{self, AccessBatch};
use crate::model::{Changes, Meta, SessionData, SessionId};

/// Which manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManagerKind {
    /// Every member holds every session; changes travel as deltas.
    Delta,
    /// A primary and one backup hold each session; other members hold a proxy.
    Backup,
}

impl std::str::FromStr for ManagerKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "delta" => Ok(Self::Delta),
            "backup" => Ok(Self::Backup),
            other => Err(format!("`{other}`: the manager is `delta` or `backup`")),
        }
    }
}

/// A session manager's settings.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Sessions of different contexts (applications) on one channel are apart: the map is
    /// named `session/<context>`. Default `default`.
    pub context: String,
    /// Idle time after which a session expires (Tomcat's `maxInactiveInterval`). Default 30
    /// minutes.
    pub max_inactive: Duration,
    /// How changes travel. Default [`WriteMode::SyncAck`]: the response leaves once every
    /// other holder applied the change (seed 000's promise).
    pub write_mode: WriteMode,
    /// Access times (requests that read but changed nothing) are sent together this often.
    /// Default 1 s.
    pub access_flush_interval: Duration,
    /// Sessions whose access time waits; past it the batch leaves at once. Default 100,000.
    pub max_pending_access: usize,
    /// How often expired sessions are removed. Default 10 s.
    pub expiry_check_interval: Duration,
    /// Extra idle time before a session counts as expired, covering access times still in
    /// another member's batch and clock skew. Default 5 s.
    pub expiry_grace: Duration,
    /// Largest session (names and JSON values), in bytes; a change past it fails. Default 4
    /// MiB.
    pub max_session_bytes: usize,
    /// The map's settings (its `max_value_bytes` is raised to hold `max_session_bytes`).
    pub map: MapConfig,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            context: "default".into(),
            max_inactive: Duration::from_secs(30 * 60),
            write_mode: WriteMode::SyncAck,
            access_flush_interval: Duration::from_secs(1),
            max_pending_access: 100_000,
            expiry_check_interval: Duration::from_secs(10),
            expiry_grace: Duration::from_secs(5),
            max_session_bytes: 4 << 20,
            map: MapConfig::default(),
        }
    }
}

/// Why a session operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The change is applied here but not on every other holder (SYNC_ACK), or could not be
    /// applied at all (a limit); the map's error says which members and why.
    #[error("session replication: {0}")]
    Map(#[from] MapError),
    /// An attribute did not serialise or deserialise.
    #[error("session attribute `{name}`: {reason}")]
    Attribute {
        /// The attribute.
        name: String,
        /// Why.
        reason: String,
    },
    /// The session would exceed `max_session_bytes`.
    #[error("session of {size} bytes exceeds max_session_bytes ({max})")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A setting that cannot work.
    #[error("session config `{key}`: {reason}")]
    Config {
        /// The setting.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestroyReason {
    /// The application invalidated it.
    Invalidated,
    /// It idled past its interval.
    Expired,
    /// Another member removed it.
    Replicated,
}

/// What session listeners hear (Tomcat's session and attribute listeners).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// A session was created.
    Created {
        /// It.
        id: SessionId,
        /// Here, or on another member.
        origin: Origin,
    },
    /// A session ended.
    Destroyed {
        /// It.
        id: SessionId,
        /// Why.
        reason: DestroyReason,
    },
    /// An attribute was added, replaced or removed (the delta manager reports each; the backup
    /// manager reports those changed here).
    Attribute {
        /// The session.
        id: SessionId,
        /// The attribute.
        name: String,
        /// Added, updated or removed.
        change: Change,
        /// Here, or on another member.
        origin: Origin,
    },
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionStats {
    /// Sessions created here.
    pub created: u64,
    /// Changes replicated (requests that set or removed attributes).
    pub commits: u64,
    /// Changes whose replication failed (counted, reported to the caller).
    pub replication_failures: u64,
    /// Access-time batches sent.
    pub access_flushes: u64,
    /// Sessions removed by expiry here.
    pub expired: u64,
    /// Sessions invalidated here.
    pub invalidated: u64,
}

#[derive(Default)]
struct Counters {
    stats: Mutex<SessionStats>,
}

impl Counters {
    fn bump(&self, f: impl FnOnce(&mut SessionStats)) {
        f(&mut self.stats.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

type DeltaMap = ReplicatedMap<Bytes, Bytes, Raw>;
type BackupMap = LazyReplicatedMap<Bytes, Bytes, Raw>;

enum Store {
    Delta(DeltaMap),
    Backup(BackupMap),
}

/// A whole session as the backup manager stores it.
#[derive(Serialize, Deserialize)]
struct Stored {
    meta: Meta,
    attributes: BTreeMap<String, Bytes>,
}

struct Inner {
    kind: ManagerKind,
    store: Store,
    cfg: SessionConfig,
    channel: ChannelHandle,
    clock: Clock,
    access: Mutex<AccessBatch>,
    counters: Counters,
    events: broadcast::Sender<SessionEvent>,
    /// One lock per session in use here: a request (load to commit) and the access-time flush
    /// of that session never interleave.
    locks: Mutex<HashMap<SessionId, Weak<tokio::sync::Mutex<()>>>>,
}

/// Most per-session locks kept before the unused ones are swept.
const LOCK_SWEEP: usize = 4096;

/// A session manager on a channel: [`SessionManager::start`]. Clones share it.
#[derive(Clone)]
pub struct SessionManager {
    inner: Arc<Inner>,
}

impl SessionManager {
    /// Starts a manager of `kind` on `channel`: joins the session map and returns once this
    /// member holds the sessions (a state transfer; it fails after the map's
    /// `state_transfer_timeout`, Tomcat's `stateTransferTimeout`).
    pub async fn start(
        channel: &ChannelHandle,
        kind: ManagerKind,
        cfg: SessionConfig,
    ) -> Result<Self, SessionError> {
        Self::start_with_clock(channel, kind, cfg, cohort_maps::system_clock()).await
    }

    /// [`SessionManager::start`] with a clock (milliseconds since the Unix epoch).
    pub async fn start_with_clock(
        channel: &ChannelHandle,
        kind: ManagerKind,
        mut cfg: SessionConfig,
        clock: Clock,
    ) -> Result<Self, SessionError> {
        if cfg.context.is_empty() || cfg.context.len() > 128 {
            return Err(SessionError::Config {
                key: "context",
                reason: "1 to 128 bytes".into(),
            });
        }
        for (key, d) in [
            ("max_inactive", cfg.max_inactive),
            ("access_flush_interval", cfg.access_flush_interval),
            ("expiry_check_interval", cfg.expiry_check_interval),
        ] {
            if d.is_zero() {
                return Err(SessionError::Config {
                    key,
                    reason: "must be above zero".into(),
                });
            }
        }
        // A whole session is one value in the backup map; one attribute is one in the delta
        // map, its key holds the name.
        cfg.map.max_value_bytes = cfg.map.max_value_bytes.max(cfg.max_session_bytes + 1024);
        cfg.map.max_key_bytes = cfg.map.max_key_bytes.max(1024);
        cfg.map.max_bytes = cfg.map.max_bytes.max(cfg.map.max_value_bytes * 4);
        let name = format!("session/{}", cfg.context);
        let store = match kind {
            ManagerKind::Delta => Store::Delta(
                DeltaMap::builder(channel, name)
                    .config(cfg.map.clone())
                    .clock(clock.clone())
                    .start()
                    .await?,
            ),
            ManagerKind::Backup => Store::Backup(
                BackupMap::builder(channel, name)
                    .config(cfg.map.clone())
                    .clock(clock.clone())
                    .start()
                    .await?,
            ),
        };
        let (events, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            kind,
            store,
            access: Mutex::new(AccessBatch::new(cfg.max_pending_access)),
            cfg,
            channel: channel.clone(),
            clock,
            counters: Counters::default(),
            events,
            locks: Mutex::new(HashMap::new()),
        });
        tokio::spawn(background(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// Takes the lock of session `id` on this member: hold it from loading a session to
    /// committing its change (the layer does), so that two requests of one session here run
    /// one after the other and the access-time flush never writes between them.
    pub async fn lock(&self, id: SessionId) -> tokio::sync::OwnedMutexGuard<()> {
        lock_session(&self.inner, id).await
    }

    /// Which manager this is.
    pub fn kind(&self) -> ManagerKind {
        self.inner.kind
    }

    /// The settings.
    pub fn config(&self) -> &SessionConfig {
        &self.inner.cfg
    }

    /// Now, on the manager's clock.
    pub fn now_ms(&self) -> u64 {
        (self.inner.clock)()
    }

    /// Listens to sessions created and destroyed and attributes changed.
    pub fn events(&self) -> broadcast::Receiver<SessionEvent> {
        self.inner.events.subscribe()
    }

    /// Counters.
    pub fn stats(&self) -> SessionStats {
        *self
            .inner
            .counters
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The session `id`, if it exists and has not expired. The backup manager fetches it
    /// from its holders when only a proxy is here (and the session moves here).
    pub async fn load(&self, id: SessionId) -> Result<Option<SessionData>, SessionError> {
        let now = self.now_ms();
        let grace = ms(self.inner.cfg.expiry_grace);
        let data = match &self.inner.store {
            Store::Delta(map) => {
                let entries = map.entries_with_prefix(id.as_bytes()).await?;
                core::assemble(id, &entries)
            }
            Store::Backup(map) => match map.get(&Bytes::copy_from_slice(id.as_bytes())).await? {
                Some(v) => postcard::from_bytes::<Stored>(&v)
                    .ok()
                    .map(|s| SessionData {
                        id,
                        meta: s.meta,
                        attributes: s.attributes,
                    }),
                None => None,
            },
        };
        // A session with no attribute left is no session (a stray access time written after
        // an invalidation elsewhere must not bring back an empty one).
        Ok(data.filter(|d| !core::is_expired(&d.meta, now, grace) && !d.attributes.is_empty()))
    }

    /// Replicates what a request changed: `data` is the session after the change (its
    /// `meta` with this request's access time), `changes` the delta. Returns once the change
    /// is on the other holders (SYNC_ACK) or queued for them (ASYNC).
    pub async fn commit(
        &self,
        data: &SessionData,
        changes: &Changes,
        created: bool,
    ) -> Result<(), SessionError> {
        let size: usize = data.attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size > self.inner.cfg.max_session_bytes {
            return Err(SessionError::TooLarge {
                size,
                max: self.inner.cfg.max_session_bytes,
            });
        }
        let id = data.id;
        self.inner
            .access
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sent(id);
        let mode = self.inner.cfg.write_mode;
        let result = match &self.inner.store {
            Store::Delta(map) => {
                let mut ops = vec![(core::meta_key(id), Some(core::encode_meta(&data.meta)))];
                for (name, v) in &changes.set {
                    ops.push((core::attribute_key(id, name), Some(v.clone())));
                }
                for name in &changes.removed {
                    ops.push((core::attribute_key(id, name), None));
                }
                map.write_batch(ops, mode).await
            }
            Store::Backup(map) => {
                let stored = Stored {
                    meta: data.meta,
                    attributes: data.attributes.clone(),
                };
                let v = Bytes::from(postcard::to_stdvec(&stored).unwrap_or_default());
                map.put_with(Bytes::copy_from_slice(id.as_bytes()), v, mode)
                    .await
            }
        };
        self.inner.counters.bump(|s| {
            s.commits += 1;
            s.created += u64::from(created);
            s.replication_failures += u64::from(result.is_err());
        });
        if self.inner.kind == ManagerKind::Backup {
            // The delta manager hears these from its map.
            if created {
                let _ = self.inner.events.send(SessionEvent::Created {
                    id,
                    origin: Origin::Local,
                });
            }
            for (name, change) in changes
                .set
                .keys()
                .map(|n| (n, Change::Updated))
                .chain(changes.removed.iter().map(|n| (n, Change::Removed)))
            {
                let _ = self.inner.events.send(SessionEvent::Attribute {
                    id,
                    name: name.clone(),
                    change,
                    origin: Origin::Local,
                });
            }
        }
        result.map_err(SessionError::from)
    }

    /// Records that a request used session `id` without changing it: its access time leaves
    /// with the next batch.
    pub fn touch(&self, id: SessionId, meta: Meta) {
        let full = self
            .inner
            .access
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .touch(id, meta);
        if full {
            let inner = self.inner.clone();
            tokio::spawn(async move { flush_access(&inner).await });
        }
    }

    /// Ends session `id` everywhere.
    pub async fn invalidate(&self, id: SessionId) -> Result<(), SessionError> {
        remove(&self.inner, id, DestroyReason::Invalidated).await
    }

    /// Sends the waiting access times now (they also leave every `access_flush_interval`).
    pub async fn flush(&self) {
        flush_access(&self.inner).await;
    }

    /// Removes the sessions that expired (also done every `expiry_check_interval`); returns
    /// how many.
    pub async fn expire(&self) -> Result<usize, SessionError> {
        expire(&self.inner).await
    }

    /// Sessions whose values this member holds (every session for the delta manager).
    pub async fn len(&self) -> Result<usize, SessionError> {
        Ok(match &self.inner.store {
            Store::Delta(map) => map
                .keys()
                .await?
                .iter()
                .filter(|k| core::parse_meta_key(k).is_some())
                .count(),
            Store::Backup(map) => map.entries().await?.len(),
        })
    }

    /// True when [`SessionManager::len`] is zero.
    pub async fn is_empty(&self) -> Result<bool, SessionError> {
        Ok(self.len().await? == 0)
    }

    /// Sends waiting access times and leaves the session map (the other members take over
    /// its sessions at once).
    pub async fn stop(&self) {
        flush_access(&self.inner).await;
        match &self.inner.store {
            Store::Delta(m) => m.stop().await,
            Store::Backup(m) => m.stop().await,
        }
    }
}

async fn lock_session(inner: &Inner, id: SessionId) -> tokio::sync::OwnedMutexGuard<()> {
    let lock = {
        let mut locks = inner.locks.lock().unwrap_or_else(PoisonError::into_inner);
        if locks.len() >= LOCK_SWEEP {
            locks.retain(|_, w| w.strong_count() > 0);
        }
        match locks.get(&id).and_then(Weak::upgrade) {
            Some(l) => l,
            None => {
                let l = Arc::new(tokio::sync::Mutex::new(()));
                locks.insert(id, Arc::downgrade(&l));
                l
            }
        }
    };
    lock.lock_owned().await
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn remove(inner: &Inner, id: SessionId, reason: DestroyReason) -> Result<(), SessionError> {
    inner
        .access
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .sent(id);
    let mode = inner.cfg.write_mode;
    match &inner.store {
        Store::Delta(map) => {
            let keys: Vec<(Bytes, Option<Bytes>)> = map
                .entries_with_prefix(id.as_bytes())
                .await?
                .into_iter()
                .map(|(k, _)| (k, None))
                .collect();
            map.write_batch(keys, mode).await?;
        }
        Store::Backup(map) => {
            map.remove_with(&Bytes::copy_from_slice(id.as_bytes()), mode)
                .await?;
        }
    }
    inner.counters.bump(|s| match reason {
        DestroyReason::Expired => s.expired += 1,
        _ => s.invalidated += 1,
    });
    let _ = inner.events.send(SessionEvent::Destroyed { id, reason });
    Ok(())
}

async fn flush_access(inner: &Inner) {
    let batch = inner
        .access
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if batch.is_empty() {
        return;
    }
    inner.counters.bump(|s| s.access_flushes += 1);
    let result = match &inner.store {
        Store::Delta(map) => {
            let mut ops = Vec::with_capacity(batch.len());
            for (id, meta) in &batch {
                // Only sessions that still exist here (not removed since the access).
                let key = core::meta_key(*id);
                if map
                    .entries_with_prefix(&key)
                    .await
                    .is_ok_and(|e| !e.is_empty())
                {
                    ops.push((key, Some(core::encode_meta(meta))));
                }
            }
            map.write_batch(ops, WriteMode::Async).await
        }
        Store::Backup(map) => {
            let mut result = Ok(());
            for (id, meta) in batch {
                // Read and write back under the session's lock: a request's commit or an
                // invalidation never falls between them.
                let _serial = lock_session(inner, id).await;
                let key = Bytes::copy_from_slice(id.as_bytes());
                // Only where the session's value is here (its primary, normally).
                if let Some(Some(v)) = map
                    .entries_with_prefix(id.as_bytes())
                    .await
                    .ok()
                    .map(|e| e.into_iter().next().map(|(_, v)| v))
                {
                    if let Ok(mut s) = postcard::from_bytes::<Stored>(&v) {
                        s.meta.last_access_ms = s.meta.last_access_ms.max(meta.last_access_ms);
                        let v = Bytes::from(postcard::to_stdvec(&s).unwrap_or_default());
                        if let Err(e) = map.put_with(key, v, WriteMode::Async).await {
                            result = Err(e);
                        }
                    }
                }
            }
            result
        }
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "access times not replicated");
    }
}

async fn expire(inner: &Inner) -> Result<usize, SessionError> {
    let now = (inner.clock)();
    let grace = ms(inner.cfg.expiry_grace);
    let mut gone = Vec::new();
    match &inner.store {
        Store::Delta(map) => {
            // Every member holds every session: the lead removes them (the others treat them
            // as gone already when they load them).
            if inner.channel.view().is_some() && !inner.channel.is_lead() {
                return Ok(0);
            }
            for (k, v) in map.entries().await? {
                if let (Some(id), Ok(meta)) =
                    (core::parse_meta_key(&k), postcard::from_bytes::<Meta>(&v))
                {
                    if core::is_expired(&meta, now, grace) {
                        gone.push(id);
                    }
                }
            }
        }
        Store::Backup(map) => {
            for (k, v) in map.entries().await? {
                if let (Ok(id), Ok(s)) = (
                    <[u8; 16]>::try_from(&k[..]),
                    postcard::from_bytes::<Stored>(&v),
                ) {
                    if core::is_expired(&s.meta, now, grace) {
                        gone.push(SessionId::from_bytes(id));
                    }
                }
            }
        }
    }
    let n = gone.len();
    for id in gone {
        remove(inner, id, DestroyReason::Expired).await?;
    }
    Ok(n)
}

/// Flushes access times, removes expired sessions, and turns the delta map's changes into
/// session events, until the manager is dropped.
async fn background(weak: Weak<Inner>) {
    let Some(inner) = weak.upgrade() else {
        return;
    };
    let mut flush = tokio::time::interval(inner.cfg.access_flush_interval);
    let mut sweep = tokio::time::interval(inner.cfg.expiry_check_interval);
    let mut changes = match &inner.store {
        Store::Delta(map) => Some(map.events()),
        Store::Backup(_) => None,
    };
    drop(inner);
    loop {
        tokio::select! {
            _ = flush.tick() => {
                let Some(inner) = weak.upgrade() else { return };
                flush_access(&inner).await;
            }
            _ = sweep.tick() => {
                let Some(inner) = weak.upgrade() else { return };
                if let Err(e) = expire(&inner).await {
                    tracing::warn!(error = %e, "expired sessions not removed");
                }
            }
            e = async {
                match changes.as_mut() {
                    Some(rx) => rx.recv().await.ok(),
                    None => std::future::pending().await,
                }
            } => {
                let Some(inner) = weak.upgrade() else { return };
                if let Some(e) = e {
                    if let Some(ev) = translate(&e) {
                        let _ = inner.events.send(ev);
                    }
                }
            }
        }
    }
}

/// A delta map change as a session event.
fn translate(e: &cohort_maps::MapEvent<Bytes, Bytes>) -> Option<SessionEvent> {
    let (id, rest) = e.key.split_at_checked(16)?;
    let id = SessionId::from_bytes(id.try_into().ok()?);
    match rest.split_first()? {
        (0, []) => match e.change {
            Change::Added => Some(SessionEvent::Created {
                id,
                origin: e.origin,
            }),
            Change::Removed if e.origin == Origin::Remote => Some(SessionEvent::Destroyed {
                id,
                reason: DestroyReason::Replicated,
            }),
            _ => None,
        },
        (1, name) => Some(SessionEvent::Attribute {
            id,
            name: String::from_utf8_lossy(name).into_owned(),
            change: e.change,
            origin: e.origin,
        }),
        _ => None,
    }
}
