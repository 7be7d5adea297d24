//! The driver: one task owns a map's [`MapCore`]; the map's [`RpcChannel`] moves its messages.
//!
//! - Commands come in over a bounded queue (`inbound_queue`): calls of the map handle, and
//!   messages from other members, which the RPC handler pushes from the channel's delivery
//!   thread (it waits for room: backpressure to the senders).
//! - The task never waits on the network: a local write returns its records to the caller,
//!   which sends them itself (so SYNC_ACK writes pipeline, one per caller), and the core's own
//!   requests (digests, hole fills, placement changes) run as tasks, at most
//!   `max_background_requests` at once (past it they are skipped and counted; the next period
//!   repeats them).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cohort_channel::{
    CallOptions, ChannelHandle, ReplyMode, RpcChannel, RpcHandler, SendOptions, ViewEvent,
};
use cohort_membership::MembershipEvent;
use cohort_wire::{Member, MemberId};
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot};

use crate::config::MapConfig;
use crate::core::{CoreEvent, CoreStats, Kind, Lookup, MapCore, Refused, Write};
use crate::error::MapError;
use crate::msg::{Msg, Record};

/// A clock reading wall-clock milliseconds since the Unix epoch (the hybrid logical clock's
/// physical part). Simulations pass their virtual clock.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    })
}

/// How a write reaches the other members.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WriteMode {
    /// Returns once the write is applied here and queued for the others (ASYNCHRONOUS).
    #[default]
    Async,
    /// Returns once every holder's transport acknowledged receipt (USE_ACK).
    Ack,
    /// Returns once every holder applied it (a replicated map: every member; a lazy map: the
    /// backups). SYNC_ACK writes from concurrent callers are in flight together.
    SyncAck,
}

/// A map's counters: the core's, and the driver's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MapStats {
    /// Entries, bytes, conflicts, repairs...
    pub core: CoreStats,
    /// State transfers this member completed (at start).
    pub transfers: u64,
    /// Entries received by those transfers.
    pub transferred_entries: u64,
    /// Messages from other members that did not decode (counted and dropped).
    pub malformed: u64,
    /// Background requests skipped because `max_background_requests` were in flight.
    pub background_skipped: u64,
}

/// A write, resolved to member records, for the caller to send.
pub(crate) struct Outgoing {
    record: Record,
    full: Vec<Member>,
    proxies: Vec<Member>,
}

pub(crate) struct Answer {
    lookup: Lookup,
    from: Vec<Member>,
    write: Option<Outgoing>,
}

type Reply<T> = oneshot::Sender<T>;

pub(crate) enum Cmd {
    Put(Bytes, Bytes, Reply<Result<Outgoing, Refused>>),
    /// An ASYNC put whose room (one entry, key and value bytes) the caller already claimed:
    /// the task applies it and sends it with the other writes of the same burst.
    PutAsync(Bytes, Bytes),
    Remove(Bytes, Reply<Option<Outgoing>>),
    Get(Bytes, Reply<Answer>),
    Adopt(Record, Reply<Option<(Option<Bytes>, Option<Outgoing>)>>),
    Scan(Option<Bytes>, usize, Reply<Vec<(Bytes, Bytes)>>),
    ScanPrefix(Bytes, Reply<Vec<(Bytes, Bytes)>>),
    /// Writes (`Some`) and removals (`None`), applied all or none.
    Batch(
        Vec<(Bytes, Option<Bytes>)>,
        Reply<Result<Vec<Outgoing>, Refused>>,
    ),
    Keys(Reply<Vec<Bytes>>),
    Len(Reply<usize>),
    Stats(Reply<CoreStats>),
    Members(Reply<Vec<Member>>),
    Inbound(Box<Member>, Msg, Option<Reply<Msg>>),
    /// Answers to the core's own requests, or to the handle's hello.
    Answers(Vec<(MemberId, Msg)>),
    Known(Vec<Member>),
    /// SYNC_ACK records for these members (all of them holders): sent with the group's next
    /// message; the answer is who did not apply them.
    GroupCommit(Vec<Member>, Vec<Record>, Reply<Missing>),
    /// The group's message was answered: the next may leave.
    GroupDone(Vec<MemberId>),
    Gone(Vec<MemberId>),
    /// Every member was asked and none holds the key's value: drop the proxy (`lost`).
    Lost(Bytes),
    AntiEntropy(MemberId),
    Stop(Reply<()>),
}

#[derive(Default)]
struct Counters {
    transfers: AtomicU64,
    transferred: AtomicU64,
    malformed: AtomicU64,
    skipped: AtomicU64,
}

/// Room left under `max_entries` and `max_bytes`, shared by the callers and the task: an
/// ASYNC put claims its entry and bytes here before it is queued (so it cannot be refused
/// once it returned), and the task takes what each of its own core calls may add, then gives
/// back what was not used. It never goes below zero for long: a claim that would is undone
/// and the put takes the exact path through the task.
struct Room {
    entries: AtomicI64,
    bytes: AtomicI64,
}

fn as_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Room {
    fn claim(&self, entries: i64, bytes: i64) -> bool {
        if self.entries.fetch_sub(entries, Ordering::AcqRel) < entries {
            self.entries.fetch_add(entries, Ordering::AcqRel);
            return false;
        }
        if self.bytes.fetch_sub(bytes, Ordering::AcqRel) < bytes {
            self.bytes.fetch_add(bytes, Ordering::AcqRel);
            self.entries.fetch_add(entries, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Takes up to `want` of `of`; returns what it took.
    fn take(of: &AtomicI64, want: i64) -> i64 {
        let mut taken = 0;
        let _ = of.fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
            taken = r.clamp(0, want.max(0));
            Some(r - taken)
        });
        taken
    }
}

/// The untyped map: encoded keys and values.
pub(crate) struct RawMap {
    /// Calls of the handles (the task stops reading it while its sends are backed up).
    cmd: mpsc::Sender<Cmd>,
    /// Messages from other members and answers to the task's requests (always read). Kept
    /// here so that the queue lives as long as a handle does.
    _inbound: mpsc::Sender<Cmd>,
    room: Arc<Room>,
    kind: Kind,
    rpc: RpcChannel,
    channel: ChannelHandle,
    cfg: MapConfig,
    events: broadcast::Sender<CoreEvent>,
    counters: Arc<Counters>,
    name: String,
}

/// The members that did not take a write, and why: failed sends, and for SYNC_ACK refusals
/// and silence.
fn missing_of(
    result: &cohort_channel::CallResult,
    sync: bool,
    timeout: Duration,
) -> Vec<(MemberId, String)> {
    let mut missing = result.failed.clone();
    if sync {
        for r in &result.replies {
            match Msg::decode(&r.payload) {
                Ok(Msg::Applied { error: None }) => {}
                Ok(Msg::Applied { error: Some(e) }) => missing.push((r.from, e)),
                _ => missing.push((r.from, "an unexpected answer".into())),
            }
        }
        missing.extend(
            result
                .no_reply
                .iter()
                .map(|m| (*m, format!("no answer within {timeout:?}"))),
        );
    }
    missing
}

/// Members that did not take a write, and why.
type Missing = Vec<(MemberId, String)>;

/// SYNC_ACK writes to one set of members, grouped: while one message is in flight to them,
/// the writes that follow wait and leave together in the next (group commit: one message per
/// round trip instead of one per write).
#[derive(Default)]
struct Group {
    members: Vec<Member>,
    /// Records waiting, with the number each waiter added.
    pending: Vec<Record>,
    waiters: Vec<(usize, Reply<Missing>)>,
    in_flight: bool,
}

/// Commands taken per wake-up after the first (their ASYNC writes leave in one message).
const BURST: usize = 256;

/// What a message may add to the map: one entry per record, and its bytes.
fn need_of(msg: &Msg) -> (i64, i64) {
    let records: &[Record] = match msg {
        Msg::Update { records, .. }
        | Msg::StateChunk { records, .. }
        | Msg::DigestReply { records, .. } => records,
        Msg::Fetched { record: Some(r) } => std::slice::from_ref(r),
        _ => &[],
    };
    (
        as_i64(records.len()),
        as_i64(records.iter().map(Record::weight).sum()),
    )
}

/// Reads of a lazy entry that keeps moving before one gives up.
const MAX_READ_ROUNDS: usize = 6;

/// Longest map name, in bytes.
pub const MAX_NAME: usize = 200;

struct Handler {
    /// Weak: the map's handles own the queue; when the last is dropped the task ends.
    cmd: mpsc::WeakSender<Cmd>,
    counters: Arc<Counters>,
    name: String,
}

impl RpcHandler for Handler {
    fn reply_request(&self, from: &Member, request: &Bytes) -> Option<Bytes> {
        let msg = match Msg::decode(request) {
            Ok(m) => m,
            Err(e) => {
                let n = self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                if (n + 1).is_power_of_two() {
                    tracing::warn!(map = %self.name, member = %from.id, error = %e, count = n + 1, "malformed map message dropped");
                }
                return None;
            }
        };
        let wants_answer = matches!(
            msg,
            Msg::Hello
                | Msg::Update { sync: true, .. }
                | Msg::Fetch { .. }
                | Msg::StateReq { .. }
                | Msg::Digest { .. }
        );
        let cmd = self.cmd.upgrade()?;
        // The delivery thread waits for room: backpressure to the senders.
        if !wants_answer {
            let _ = cmd.blocking_send(Cmd::Inbound(Box::new(from.clone()), msg, None));
            return None;
        }
        let (tx, rx) = oneshot::channel();
        cmd.blocking_send(Cmd::Inbound(Box::new(from.clone()), msg, Some(tx)))
            .ok()?;
        rx.blocking_recv().ok().map(|m| m.encode())
    }
}

struct Owner {
    core: MapCore,
    known: HashMap<MemberId, Member>,
    channel: ChannelHandle,
    rpc: RpcChannel,
    cfg: MapConfig,
    clock: Clock,
    /// For answers of background requests: the inbound queue.
    cmd: mpsc::WeakSender<Cmd>,
    room: Arc<Room>,
    /// SYNC_ACK writes, grouped by their destinations.
    groups: HashMap<Vec<MemberId>, Group>,
    /// ASYNC writes of the current burst, by destination set and whether they carry values.
    batch: HashMap<(Vec<MemberId>, bool), Vec<Record>>,
    batch_bytes: usize,
    events: broadcast::Sender<CoreEvent>,
    background: Arc<Semaphore>,
    /// The core's messages waiting for a request slot (`max_background_requests` in flight).
    /// Records (placement changes, repairs) wait here, never dropped; a digest is skipped
    /// when this many already wait. Bounded by what the core holds.
    pending: std::collections::VecDeque<(Vec<Member>, Msg, bool)>,
    counters: Arc<Counters>,
}

impl RawMap {
    pub(crate) async fn start(
        channel: &ChannelHandle,
        name: &str,
        cfg: MapConfig,
        kind: Kind,
        clock: Clock,
    ) -> Result<Self, MapError> {
        cfg.validate()?;
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(MapError::Config(crate::config::ConfigError {
                key: "name",
                reason: format!("{} bytes; a map name is 1 to {MAX_NAME} bytes", name.len()),
            }));
        }
        let (cmd, rx) = mpsc::channel(cfg.inbound_queue);
        let (inbound, inbound_rx) = mpsc::channel(cfg.inbound_queue);
        let counters = Arc::new(Counters::default());
        let room = Arc::new(Room {
            entries: AtomicI64::new(as_i64(cfg.max_entries)),
            bytes: AtomicI64::new(as_i64(cfg.max_bytes)),
        });
        let rpc = RpcChannel::new(
            channel,
            format!("map/{name}"),
            Arc::new(Handler {
                cmd: inbound.downgrade(),
                counters: counters.clone(),
                name: name.into(),
            }),
            SendOptions::NONE,
        )?;
        let local = channel.local().clone();
        let seed = local
            .id
            .as_bytes()
            .iter()
            .fold(0u64, |h, b| h.rotate_left(8) ^ u64::from(*b));
        let (events, _) = broadcast::channel(cfg.event_buffer);
        let owner = Owner {
            core: MapCore::new(cfg.clone(), kind, local.id, seed),
            known: HashMap::new(),
            channel: channel.clone(),
            rpc: rpc.clone(),
            cfg: cfg.clone(),
            clock,
            cmd: inbound.downgrade(),
            room: room.clone(),
            batch: HashMap::new(),
            groups: HashMap::new(),
            batch_bytes: 0,
            events: events.clone(),
            background: Arc::new(Semaphore::new(cfg.max_background_requests)),
            pending: std::collections::VecDeque::new(),
            counters: counters.clone(),
        };
        let view = channel.events();
        tokio::spawn(owner.run(rx, inbound_rx, view));
        let map = Self {
            cmd,
            _inbound: inbound,
            room,
            kind,
            rpc,
            channel: channel.clone(),
            cfg,
            events,
            counters,
            name: name.into(),
        };
        map.join().await?;
        Ok(map)
    }

    /// Says hello to every channel member, then pulls the whole map from one that answered.
    async fn join(&self) -> Result<(), MapError> {
        let started = tokio::time::Instant::now();
        let deadline = started + self.cfg.state_transfer_timeout;
        let mut members = self.channel.members();
        // A member just started may not have heard a beacon yet: wait a little for a first
        // member before concluding that it is alone (and has no state to fetch).
        let wait_until = started + self.cfg.join_wait;
        while members.is_empty()
            && self.channel.view().is_some()
            && tokio::time::Instant::now() < wait_until
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
            members = self.channel.members();
        }
        if members.is_empty() {
            return Ok(());
        }
        self.send(Cmd::Known(members.clone())).await?;
        let hello = self
            .rpc
            .call(
                &members,
                Msg::Hello.encode(),
                CallOptions::default()
                    .mode(ReplyMode::All)
                    .timeout(self.cfg.rpc_timeout),
            )
            .await?;
        let acks: Vec<(MemberId, Msg)> = hello
            .replies
            .iter()
            .filter_map(|r| Msg::decode(&r.payload).ok().map(|m| (r.from, m)))
            .collect();
        self.send(Cmd::Answers(acks)).await?;
        let mut suppliers = self.request(Cmd::Members).await?;
        if suppliers.is_empty() {
            return Ok(());
        }
        // The oldest member first: the most likely to hold everything.
        suppliers.sort_by_key(Member::seniority);
        let mut after: Option<Bytes> = None;
        let mut entries = 0u64;
        let mut failures = Vec::new();
        let mut i = 0;
        loop {
            let supplier = &suppliers[i % suppliers.len()];
            if tokio::time::Instant::now() >= deadline {
                return Err(MapError::StateTransfer {
                    map: self.name.clone(),
                    reason: format!(
                        "not complete within {:?} ({entries} entries received; {})",
                        self.cfg.state_transfer_timeout,
                        failures.join("; ")
                    ),
                });
            }
            let req = Msg::StateReq {
                after: after.clone(),
                max_bytes: u32::try_from(self.cfg.max_chunk_bytes).unwrap_or(u32::MAX),
            };
            let timeout = self
                .cfg
                .rpc_timeout
                .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            let answer = self
                .rpc
                .call(
                    std::slice::from_ref(supplier),
                    req.encode(),
                    CallOptions::default()
                        .mode(ReplyMode::First)
                        .timeout(timeout),
                )
                .await?;
            let chunk = answer
                .replies
                .first()
                .and_then(|r| Msg::decode(&r.payload).ok());
            let Some(Msg::StateChunk { records, next }) = chunk else {
                failures.push(format!("{} gave no chunk", supplier.id.short()));
                failures.truncate(8);
                i += 1;
                continue;
            };
            entries += records.len() as u64;
            // Applied before the next chunk is asked for: one chunk in memory at a time.
            let (tx, rx) = oneshot::channel();
            self.send(Cmd::Inbound(
                Box::new(supplier.clone()),
                Msg::StateChunk {
                    records,
                    next: None,
                },
                Some(tx),
            ))
            .await?;
            let _ = rx.await;
            match next {
                Some(k) => after = Some(k),
                None => break,
            }
        }
        let supplier = suppliers[i % suppliers.len()].id;
        self.send(Cmd::AntiEntropy(supplier)).await?;
        self.counters.transfers.fetch_add(1, Ordering::Relaxed);
        self.counters
            .transferred
            .fetch_add(entries, Ordering::Relaxed);
        tracing::debug!(map = %self.name, entries, elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX), "state transfer complete");
        Ok(())
    }

    async fn send(&self, cmd: Cmd) -> Result<(), MapError> {
        self.cmd.send(cmd).await.map_err(|_| MapError::Stopped)
    }

    async fn request<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, MapError> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx)).await?;
        rx.await.map_err(|_| MapError::Stopped)
    }

    pub(crate) async fn put(
        &self,
        key: Bytes,
        value: Bytes,
        mode: WriteMode,
    ) -> Result<(), MapError> {
        if mode == WriteMode::Async {
            let too_large = |what, len: usize, limit, max: usize| {
                (len > max).then_some(Refused::TooLarge {
                    what,
                    len,
                    limit,
                    max,
                })
            };
            if let Some(e) = too_large("key", key.len(), "max_key_bytes", self.cfg.max_key_bytes)
                .or_else(|| {
                    too_large(
                        "value",
                        value.len(),
                        "max_value_bytes",
                        self.cfg.max_value_bytes,
                    )
                })
            {
                return Err(e.into());
            }
            // Room in the queue first, then the claim, with no await between: a caller that
            // gives up while waiting for the queue holds no claim.
            let slot = self.cmd.reserve().await.map_err(|_| MapError::Stopped)?;
            if self.room.claim(1, as_i64(key.len() + value.len())) {
                slot.send(Cmd::PutAsync(key, value));
                return Ok(());
            }
            drop(slot);
            // Near a limit: the exact path, where the task decides.
        }
        let out = self.request(|tx| Cmd::Put(key, value, tx)).await??;
        self.replicate(out, mode).await
    }

    pub(crate) async fn remove(&self, key: Bytes, mode: WriteMode) -> Result<bool, MapError> {
        match self.request(|tx| Cmd::Remove(key, tx)).await? {
            Some(out) => self.replicate(out, mode).await.map(|()| true),
            None => Ok(false),
        }
    }

    pub(crate) async fn get(&self, key: Bytes) -> Result<Option<Bytes>, MapError> {
        // A lazy entry can move while it is fetched (another member read it): read again,
        // a few times, from where it went.
        let mut named: Vec<Member> = Vec::new();
        for round in 0..MAX_READ_ROUNDS {
            if round > 0 {
                // Let a move in flight land.
                tokio::time::sleep(Duration::from_millis(5 << round)).await;
            }
            let answer = self.request(|tx| Cmd::Get(key.clone(), tx)).await?;
            if let Some(w) = answer.write {
                self.replicate(w, WriteMode::Async).await?;
            }
            let fetched = match answer.lookup {
                Lookup::Value(v) => return Ok(Some(v)),
                Lookup::Absent => return Ok(None),
                Lookup::Remote(_) => {
                    named.clone_from(&answer.from);
                    self.fetch(key.clone(), answer.from, false).await?
                }
                Lookup::Unknown(_) => self.fetch(key.clone(), answer.from, true).await?,
            };
            if let Some(value) = fetched {
                return Ok(value);
            }
        }
        // Last, every member: when all of them answer and none has the value (nor a removal),
        // no live member holds it, though this member's placement names holders. The value
        // was lost (more failures than `backup_count`, or a holder that never got it before
        // its primary died): the read answers "absent", counted as `lost`, rather than
        // "unavailable" on every read for ever.
        // Asked: the map's members, and the holders the placement names that are in the
        // channel's view (a live holder whose map this member has not met yet; a holder
        // that is gone cannot answer and holds nothing).
        let mut ask = self.request(Cmd::Members).await?;
        let view = self.channel.members();
        for m in named {
            if view.iter().any(|v| v.id == m.id) && !ask.iter().any(|a| a.id == m.id) {
                ask.push(m);
            }
        }
        if !ask.is_empty() && self.gone_everywhere(&key, &ask).await? {
            // The key is not logged: it may be a session id.
            tracing::warn!(map = %self.name, key_len = key.len(), "no member holds an entry's value any more: read as absent, counted as lost");
            self.send(Cmd::Lost(key)).await?;
            return Ok(None);
        }
        Err(MapError::Unavailable {
            map: self.name.clone(),
            reason: format!(
                "no holder gave the value in {MAX_READ_ROUNDS} rounds (it kept moving, or its \
                 holders did not answer within rpc_timeout)"
            ),
        })
    }

    /// Asks `members` for their record of `key`, waiting for all within `rpc_timeout`.
    async fn ask_fetch(
        &self,
        key: &Bytes,
        members: &[Member],
    ) -> Result<cohort_channel::CallResult, MapError> {
        Ok(self
            .rpc
            .call(
                members,
                Msg::Fetch { key: key.clone() }.encode(),
                CallOptions::default()
                    .mode(ReplyMode::All)
                    .timeout(self.cfg.rpc_timeout),
            )
            .await?)
    }

    /// True when every one of `members` answered a fetch of `key` and none holds its value
    /// or a removal of it.
    async fn gone_everywhere(&self, key: &Bytes, members: &[Member]) -> Result<bool, MapError> {
        let answer = self.ask_fetch(key, members).await?;
        // Every member asked answered, or said it runs no such map; no send failed and no
        // answer is missing (a reply counted twice must not hide a silent member).
        if !answer.failed.is_empty() || !answer.no_reply.is_empty() {
            return Ok(false);
        }
        let answered: std::collections::HashSet<MemberId> = answer
            .replies
            .iter()
            .map(|r| r.from)
            .chain(answer.no_channel.iter().copied())
            .collect();
        if !members.iter().all(|m| answered.contains(&m.id)) {
            return Ok(false);
        }
        let mut held = false;
        for r in &answer.replies {
            match Msg::decode(&r.payload) {
                Ok(Msg::Fetched { record: Some(rec) }) => {
                    held |= rec.value.is_some() || rec.removed;
                }
                Ok(Msg::Fetched { record: None }) => {}
                // An answer that says nothing: not evidence of absence.
                _ => return Ok(false),
            }
        }
        Ok(!held)
    }

    /// A proxy's read: ask the holders (all at once; the newest copy wins), then take the
    /// entry over. `None` when no answer settled it (the entry moved, a holder did not
    /// answer): what the answers said of its placement is applied here, and the caller reads
    /// again.
    async fn fetch(
        &self,
        key: Bytes,
        from: Vec<Member>,
        miss: bool,
    ) -> Result<Option<Option<Bytes>>, MapError> {
        if from.is_empty() {
            return Ok(None);
        }
        let answer = self.ask_fetch(&key, &from).await?;
        let mut records: Vec<(MemberId, Record)> = Vec::new();
        for r in &answer.replies {
            if let Ok(Msg::Fetched { record: Some(rec) }) = Msg::decode(&r.payload) {
                records.push((r.from, rec));
            }
        }
        // The newest copy any holder has.
        let best = records
            .iter()
            .map(|(_, r)| r)
            .filter(|r| r.value.is_some() || r.removed)
            .max_by_key(|r| (r.version, r.placed))
            .cloned();
        if let Some(record) = best {
            let Some((value, write)) = self.request(|tx| Cmd::Adopt(record, tx)).await? else {
                return Ok(None);
            };
            if let Some(w) = write {
                self.replicate(w, WriteMode::Async).await?;
            }
            return Ok(Some(value));
        }
        if records.is_empty() && miss && answer.replies.len() == from.len() {
            // Every member answered that it knows nothing of the key.
            return Ok(Some(None));
        }
        // Nobody asked holds it (any more): learn where they say it lives, and read again.
        let placements = records
            .into_iter()
            .map(|(from, r)| {
                (
                    from,
                    Msg::Update {
                        sync: false,
                        records: vec![r],
                    },
                )
            })
            .collect();
        self.send(Cmd::Answers(placements)).await?;
        Ok(None)
    }

    /// Sends a local write as `mode` asks.
    async fn replicate(&self, out: Outgoing, mode: WriteMode) -> Result<(), MapError> {
        self.replicate_all(vec![out], mode).await
    }

    /// Sends local writes as `mode` asks: one message per set of destinations, so a batch
    /// travels as one message in a replicated map.
    async fn replicate_all(&self, outs: Vec<Outgoing>, mode: WriteMode) -> Result<(), MapError> {
        let sync = mode == WriteMode::SyncAck;
        // A lazy write asked to be durable that has fewer holders than `backup_count` + 1
        // (too few members run the map) says so, after the holders there are applied it.
        let short = outs
            .iter()
            .filter(|o| sync && self.kind == Kind::Lazy && !o.record.removed)
            .map(|o| o.record.backups.len())
            .filter(|n| *n < self.cfg.backup_count)
            .min();
        type Groups = HashMap<Vec<MemberId>, (Vec<Member>, Vec<Record>)>;
        let (mut full, mut proxies): (Groups, Groups) = (HashMap::new(), HashMap::new());
        for o in outs {
            if !o.proxies.is_empty() {
                let key = o.proxies.iter().map(|m| m.id).collect();
                let g = proxies
                    .entry(key)
                    .or_insert_with(|| (o.proxies.clone(), Vec::new()));
                g.1.push(o.record.without_value());
            }
            if !o.full.is_empty() {
                let key = o.full.iter().map(|m| m.id).collect();
                let g = full
                    .entry(key)
                    .or_insert_with(|| (o.full.clone(), Vec::new()));
                g.1.push(o.record);
            }
        }
        // The holders first, the proxies after (for a SYNC_ACK write, once the holders
        // applied it): a proxy message can tell a member that held the value to drop it, so
        // it must not get ahead of the copies the holders are to keep.
        let mut missing = Vec::new();
        for (to, records) in full.into_values() {
            if sync {
                let got = self.request(|tx| Cmd::GroupCommit(to, records, tx)).await?;
                missing.extend(got);
            } else {
                missing.extend(self.send_full(&to, records, mode).await?);
            }
        }
        // A holder that did not apply the write: the proxies (among them a former holder,
        // told to drop its copy) are not told now; they learn the placement from the digest
        // exchange, by which time the copies are restored or the writer has retried.
        if missing.is_empty() {
            for (to, records) in proxies.into_values() {
                let body = Msg::Update {
                    sync: false,
                    records,
                }
                .encode();
                self.one_way(&to, body).await?;
            }
        }
        if !missing.is_empty() {
            return Err(MapError::NotApplied {
                map: self.name.clone(),
                members: missing,
            });
        }
        match short {
            Some(backups) => Err(MapError::TooFewCopies {
                map: self.name.clone(),
                copies: backups + 1,
                wanted: self.cfg.backup_count + 1,
            }),
            None => Ok(()),
        }
    }

    /// Sends records to the members that hold their values, ASYNC or USE_ACK (SYNC_ACK
    /// writes are group-committed by the task); the members that did not take them, and why.
    async fn send_full(
        &self,
        to: &[Member],
        records: Vec<Record>,
        mode: WriteMode,
    ) -> Result<Vec<(MemberId, String)>, MapError> {
        let body = Msg::Update {
            sync: false,
            records,
        }
        .encode();
        if mode == WriteMode::Async {
            self.one_way(to, body).await?;
            return Ok(Vec::new());
        }
        let how = CallOptions::default()
            .timeout(self.cfg.rpc_timeout)
            .mode(ReplyMode::None)
            .send_options(SendOptions::USE_ACK);
        let result = self.rpc.call(to, body, how).await?;
        let missing = missing_of(&result, false, self.cfg.rpc_timeout);
        if !result.no_channel.is_empty() {
            // They stopped the map: no longer members.
            self.send(Cmd::Gone(result.no_channel)).await?;
        }
        Ok(missing)
    }

    /// Applies writes (`Some` value) and removals (`None`) here, all or none (a batch past a
    /// limit is refused whole), and sends them together as `mode` asks.
    pub(crate) async fn write_batch(
        &self,
        ops: Vec<(Bytes, Option<Bytes>)>,
        mode: WriteMode,
    ) -> Result<(), MapError> {
        if ops.is_empty() {
            return Ok(());
        }
        let outs = self.request(|tx| Cmd::Batch(ops, tx)).await??;
        self.replicate_all(outs, mode).await
    }

    /// Entries held here whose key starts with `prefix`, in key order.
    pub(crate) async fn scan_prefix(&self, prefix: Bytes) -> Result<Vec<(Bytes, Bytes)>, MapError> {
        self.request(|tx| Cmd::ScanPrefix(prefix, tx)).await
    }

    async fn one_way(&self, to: &[Member], body: Bytes) -> Result<(), MapError> {
        self.rpc
            .call(
                to,
                body,
                CallOptions::default()
                    .mode(ReplyMode::None)
                    .send_options(SendOptions::ASYNCHRONOUS),
            )
            .await?;
        Ok(())
    }

    pub(crate) async fn scan(
        &self,
        after: Option<Bytes>,
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>, MapError> {
        self.request(|tx| Cmd::Scan(after, limit, tx)).await
    }

    pub(crate) async fn keys(&self) -> Result<Vec<Bytes>, MapError> {
        self.request(Cmd::Keys).await
    }

    pub(crate) async fn len(&self) -> Result<usize, MapError> {
        self.request(Cmd::Len).await
    }

    pub(crate) async fn members(&self) -> Result<Vec<Member>, MapError> {
        self.request(Cmd::Members).await
    }

    pub(crate) async fn stats(&self) -> Result<MapStats, MapError> {
        let core = self.request(Cmd::Stats).await?;
        let c = &self.counters;
        Ok(MapStats {
            core,
            transfers: c.transfers.load(Ordering::Relaxed),
            transferred_entries: c.transferred.load(Ordering::Relaxed),
            malformed: c.malformed.load(Ordering::Relaxed),
            background_skipped: c.skipped.load(Ordering::Relaxed),
        })
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<CoreEvent> {
        self.events.subscribe()
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) async fn stop(&self) {
        let _ = self.request(Cmd::Stop).await;
    }
}

impl Owner {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Cmd>,
        mut inbound: mpsc::Receiver<Cmd>,
        mut view: broadcast::Receiver<ViewEvent>,
    ) {
        let mut stopping = None;
        loop {
            let now = (self.clock)();
            let due = self.core.poll_timeout();
            let wait = Duration::from_millis(due.saturating_sub(now));
            // Local calls wait while the task's own sends are backed up (backpressure to the
            // writers); messages from other members are always taken.
            let backed_up = self.pending.len() >= self.cfg.max_background_requests;
            tokio::select! {
                biased;
                Some(cmd) = inbound.recv() => {
                    self.handle(cmd);
                    for _ in 0..BURST {
                        match inbound.try_recv() {
                            Ok(cmd) => self.handle(cmd),
                            Err(_) => break,
                        }
                    }
                }
                cmd = rx.recv(), if !backed_up => match cmd {
                    Some(Cmd::Stop(reply)) => {
                        stopping = Some(reply);
                        break;
                    }
                    Some(cmd) => {
                        self.handle(cmd);
                        // Take the rest of the burst, so its ASYNC writes leave together.
                        for _ in 0..BURST {
                            match rx.try_recv() {
                                Ok(Cmd::Stop(reply)) => {
                                    stopping = Some(reply);
                                    break;
                                }
                                Ok(cmd) => self.handle(cmd),
                                Err(_) => break,
                            }
                        }
                        if stopping.is_some() {
                            break;
                        }
                    }
                    None => break,
                },
                event = view.recv() => match event {
                    Ok(e) => self.on_view(&e),
                    Err(broadcast::error::RecvError::Lagged(_)) => self.resync_view(),
                    Err(broadcast::error::RecvError::Closed) => {
                        // The channel stopped; keep serving local calls.
                        view = broadcast::channel(1).1;
                    }
                },
                permit = self.background.clone().acquire_owned(), if !self.pending.is_empty() => {
                    if let (Ok(permit), Some((to, msg, request))) = (permit, self.pending.pop_front()) {
                        self.spawn_request(permit, to, msg, request);
                    }
                }
                () = tokio::time::sleep(wait) => {
                    let now = (self.clock)();
                    if self.channel.view().is_some() {
                        self.resync_view();
                    }
                    self.budgeted((0, 0), (0, 0), |core| core.handle_timeout(now));
                }
            }
            self.flush();
        }
        // Leaving: what was accepted before the stop still goes out. Calls queued behind the
        // stop are handled, then every waiting message is sent (waiting for request slots).
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                Cmd::Stop(reply) => {
                    let _ = reply.send(());
                }
                cmd => self.handle(cmd),
            }
        }
        self.flush();
        while let Some((to, msg, request)) = self.pending.pop_front() {
            let Ok(permit) = self.background.clone().acquire_owned().await else {
                break;
            };
            self.spawn_request(permit, to, msg, request);
        }
        // Leaving: tell the others at once rather than let them wait for the view.
        let members: Vec<Member> = self
            .core
            .members()
            .filter_map(|m| self.known.get(&m).cloned())
            .collect();
        if !members.is_empty() {
            let _ = self
                .rpc
                .call(
                    &members,
                    Msg::Bye.encode(),
                    CallOptions::default()
                        .mode(ReplyMode::None)
                        .send_options(SendOptions::ASYNCHRONOUS),
                )
                .await;
        }
        if let Some(reply) = stopping {
            let _ = reply.send(());
        }
    }

    /// Adds an ASYNC write to the burst's messages; a burst past `max_chunk_bytes` leaves at
    /// once.
    fn batch_write(&mut self, w: Write) {
        let mut full = w.full;
        full.sort();
        let mut proxies = w.proxies;
        proxies.sort();
        self.batch_bytes += w.record.weight();
        if !proxies.is_empty() {
            self.batch
                .entry((proxies, false))
                .or_default()
                .push(w.record.without_value());
        }
        if !full.is_empty() {
            self.batch.entry((full, true)).or_default().push(w.record);
        }
        if self.batch_bytes >= self.cfg.max_chunk_bytes {
            self.flush();
        }
    }

    /// A batch: the room for every write is taken first, so none is refused half-way.
    fn batch(
        &mut self,
        now: u64,
        ops: Vec<(Bytes, Option<Bytes>)>,
    ) -> Result<Vec<Outgoing>, Refused> {
        let cfg = &self.cfg;
        for (k, v) in &ops {
            let too_large = |what, len: usize, limit, max: usize| {
                (len > max).then_some(Refused::TooLarge {
                    what,
                    len,
                    limit,
                    max,
                })
            };
            if let Some(e) =
                too_large("key", k.len(), "max_key_bytes", cfg.max_key_bytes).or_else(|| {
                    v.as_ref().and_then(|v| {
                        too_large("value", v.len(), "max_value_bytes", cfg.max_value_bytes)
                    })
                })
            {
                return Err(e);
            }
        }
        let puts = ops.iter().filter(|(_, v)| v.is_some()).count();
        let bytes: usize = ops
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len))
            .sum();
        let need = (as_i64(puts), as_i64(bytes));
        let claimed = (
            Room::take(&self.room.entries, need.0),
            Room::take(&self.room.bytes, need.1),
        );
        if claimed != need {
            self.room.entries.fetch_add(claimed.0, Ordering::AcqRel);
            self.room.bytes.fetch_add(claimed.1, Ordering::AcqRel);
            return Err(Refused::Full {
                limit: if claimed.0 < need.0 {
                    "max_entries"
                } else {
                    "max_bytes"
                },
                max: if claimed.0 < need.0 {
                    cfg.max_entries
                } else {
                    cfg.max_bytes
                },
            });
        }
        let writes = self.budgeted(claimed, (0, 0), |core| {
            let mut writes = Vec::new();
            for (k, v) in ops {
                match v {
                    Some(v) => writes.push(core.put(now, k, v)?),
                    None => writes.extend(core.remove(now, k)),
                }
            }
            Ok(writes)
        })?;
        Ok(writes.into_iter().map(|w| self.outgoing(w)).collect())
    }

    fn outgoing(&self, w: Write) -> Outgoing {
        let resolve = |ids: &[MemberId]| -> Vec<Member> {
            ids.iter()
                .filter_map(|m| self.known.get(m).cloned())
                .collect()
        };
        Outgoing {
            full: resolve(&w.full),
            proxies: resolve(&w.proxies),
            record: w.record,
        }
    }

    /// Runs `f` on the core with a budget: `claimed` (room a caller already took) and up to
    /// `take` more from the shared room; gives back what the call did not add.
    fn budgeted<T>(
        &mut self,
        claimed: (i64, i64),
        take: (i64, i64),
        f: impl FnOnce(&mut MapCore) -> T,
    ) -> T {
        let extra = (
            Room::take(&self.room.entries, take.0),
            Room::take(&self.room.bytes, take.1),
        );
        let budget = (claimed.0 + extra.0, claimed.1 + extra.1);
        let before = self.core.stats();
        self.core.set_budget(Some((
            usize::try_from(budget.0).unwrap_or(0),
            usize::try_from(budget.1).unwrap_or(0),
        )));
        let out = f(&mut self.core);
        self.core.set_budget(None);
        let after = self.core.stats();
        let added = (
            as_i64(after.entries) - as_i64(before.entries),
            as_i64(after.bytes) - as_i64(before.bytes),
        );
        self.room
            .entries
            .fetch_add(budget.0 - added.0, Ordering::AcqRel);
        self.room
            .bytes
            .fetch_add(budget.1 - added.1, Ordering::AcqRel);
        out
    }

    fn handle(&mut self, cmd: Cmd) {
        let now = (self.clock)();
        self.core.set_events(self.events.receiver_count() > 0);
        match cmd {
            Cmd::PutAsync(k, v) => {
                let claimed = (1, as_i64(k.len() + v.len()));
                match self.budgeted(claimed, (0, 0), |core| core.put(now, k, v)) {
                    Ok(w) => self.batch_write(w),
                    // Cannot happen: the room was claimed and the sizes checked. Counted if
                    // it ever does.
                    Err(e) => {
                        self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %e, "a claimed ASYNC put was refused");
                    }
                }
            }
            Cmd::Put(k, v, reply) => {
                let need = (1, as_i64(k.len() + v.len()));
                let r = self
                    .budgeted((0, 0), need, |core| core.put(now, k, v))
                    .map(|w| self.outgoing(w));
                let _ = reply.send(r);
            }
            Cmd::Remove(k, reply) => {
                let r = self
                    .budgeted((0, 0), (0, 0), |core| core.remove(now, k))
                    .map(|w| self.outgoing(w));
                let _ = reply.send(r);
            }
            Cmd::Get(k, reply) => {
                let (lookup, write) = self.budgeted((0, 0), (0, 0), |core| core.get(now, &k));
                let from = match &lookup {
                    Lookup::Remote(ids) | Lookup::Unknown(ids) => ids
                        .iter()
                        .filter_map(|m| self.known.get(m).cloned())
                        .collect(),
                    _ => Vec::new(),
                };
                let write = write.map(|w| self.outgoing(w));
                let _ = reply.send(Answer {
                    lookup,
                    from,
                    write,
                });
            }
            Cmd::Adopt(record, reply) => {
                let need = (1, as_i64(record.weight()));
                let r = self
                    .budgeted((0, 0), need, |core| core.adopt(now, record))
                    .map(|(v, w)| (v, w.map(|w| self.outgoing(w))));
                let _ = reply.send(r);
            }
            Cmd::ScanPrefix(prefix, reply) => {
                let _ = reply.send(self.core.scan_prefix(&prefix));
            }
            Cmd::Batch(ops, reply) => {
                let r = self.batch(now, ops);
                let _ = reply.send(r);
            }
            Cmd::Scan(after, limit, reply) => {
                let _ = reply.send(self.core.scan(after.as_deref(), limit));
            }
            Cmd::Keys(reply) => {
                let keys = self
                    .core
                    .dump()
                    .into_iter()
                    .filter(|(_, _, removed, _)| !removed)
                    .map(|(k, ..)| k)
                    .collect();
                let _ = reply.send(keys);
            }
            Cmd::Len(reply) => {
                let _ = reply.send(self.core.len());
            }
            Cmd::Stats(reply) => {
                let _ = reply.send(self.core.stats());
            }
            Cmd::Members(reply) => {
                let members = self
                    .core
                    .members()
                    .filter_map(|m| self.known.get(&m).cloned())
                    .collect();
                let _ = reply.send(members);
            }
            Cmd::Inbound(from, msg, reply) => {
                let id = from.id;
                self.known.insert(id, *from);
                let need = need_of(&msg);
                let answer = self.budgeted((0, 0), need, |core| core.handle_message(now, id, msg));
                if let (Some(reply), Some(answer)) = (reply, answer) {
                    let _ = reply.send(answer);
                }
            }
            Cmd::Answers(answers) => {
                for (from, msg) in answers {
                    let need = need_of(&msg);
                    let _ = self.budgeted((0, 0), need, |core| core.handle_message(now, from, msg));
                }
            }
            Cmd::GroupCommit(members, records, reply) => {
                let mut key: Vec<MemberId> = members.iter().map(|m| m.id).collect();
                key.sort();
                let g = self.groups.entry(key).or_default();
                g.members = members;
                g.waiters.push((records.len(), reply));
                g.pending.extend(records);
            }
            Cmd::GroupDone(key) => {
                if let Some(g) = self.groups.get_mut(&key) {
                    g.in_flight = false;
                    if g.pending.is_empty() {
                        self.groups.remove(&key);
                    }
                }
            }
            Cmd::Known(members) => {
                for m in members {
                    self.known.insert(m.id, m);
                }
            }
            Cmd::Gone(ids) => {
                for id in ids {
                    self.budgeted((0, 0), (0, 0), |core| core.handle_member_down(now, id));
                }
            }
            Cmd::Lost(key) => {
                // Through the budget, as every change: the proxy's bytes go back to the room.
                self.budgeted((0, 0), (0, 0), |core| {
                    core.forget_lost(&key);
                });
            }
            Cmd::AntiEntropy(with) => self.core.start_anti_entropy(Some(with)),
            Cmd::Stop(_) => {}
        }
    }

    fn on_view(&mut self, e: &ViewEvent) {
        let now = (self.clock)();
        match &e.event {
            MembershipEvent::MemberAdded(m) | MembershipEvent::MemberUpdated(m) => {
                self.known.insert(m.id, m.clone());
                if matches!(e.event, MembershipEvent::MemberAdded(_)) {
                    // It may run this map: ask (its own hello may have raced ours).
                    self.background(vec![m.clone()], Msg::Hello, true);
                }
            }
            MembershipEvent::MemberDisappeared { member, .. } => {
                let id = member.id;
                self.budgeted((0, 0), (0, 0), |core| core.handle_member_down(now, id));
            }
            _ => {}
        }
    }

    /// Map members the channel no longer sees are gone (a missed or lagged view event); member
    /// records neither the map nor the channel knows are forgotten (bounded by the view).
    fn resync_view(&mut self) {
        let now = (self.clock)();
        let view: Vec<MemberId> = self.channel.members().iter().map(|m| m.id).collect();
        let gone: Vec<MemberId> = self.core.members().filter(|m| !view.contains(m)).collect();
        for id in gone {
            self.budgeted((0, 0), (0, 0), |core| core.handle_member_down(now, id));
        }
        let members: std::collections::BTreeSet<MemberId> = self.core.members().collect();
        self.known
            .retain(|id, _| view.contains(id) || members.contains(id));
        // Channel members not (yet) in the map: ask again, in case a hello or its answer was
        // lost (those without the map answer "no RPC channel").
        let strangers: Vec<Member> = self
            .channel
            .members()
            .into_iter()
            .filter(|m| !members.contains(&m.id))
            .collect();
        if !strangers.is_empty() {
            for m in &strangers {
                self.known.insert(m.id, m.clone());
            }
            self.background(strangers, Msg::Hello, true);
        }
    }

    /// Sends what the core queued, and hands changes to subscribers.
    fn flush(&mut self) {
        self.dispatch_groups();
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        for ((ids, _), records) in batch {
            let to: Vec<Member> = ids
                .iter()
                .filter_map(|m| self.known.get(m).cloned())
                .collect();
            if !to.is_empty() {
                self.background(
                    to,
                    Msg::Update {
                        sync: false,
                        records,
                    },
                    false,
                );
            }
        }
        while let Some(t) = self.core.poll_transmit() {
            let to: Vec<Member> =
                t.to.iter()
                    .filter_map(|m| self.known.get(m).cloned())
                    .collect();
            if !to.is_empty() {
                self.background(to, t.msg, t.request);
            }
        }
        while let Some(e) = self.core.poll_event() {
            let _ = self.events.send(e);
        }
    }

    /// Sends each idle group's waiting records as one SYNC_ACK message (up to about
    /// `max_chunk_bytes`, whole waiters at a time), and answers its waiters when it returns.
    fn dispatch_groups(&mut self) {
        let Some(done) = self.cmd.upgrade() else {
            return;
        };
        for (key, g) in &mut self.groups {
            if g.in_flight || g.waiters.is_empty() {
                continue;
            }
            let mut take = 0;
            let mut records = 0;
            let mut size = 0;
            for (n, _) in &g.waiters {
                if take > 0 && size >= self.cfg.max_chunk_bytes {
                    break;
                }
                size += g.pending[records..records + n]
                    .iter()
                    .map(Record::weight)
                    .sum::<usize>();
                records += n;
                take += 1;
            }
            let waiters: Vec<_> = g.waiters.drain(..take).map(|(_, w)| w).collect();
            let batch: Vec<Record> = g.pending.drain(..records).collect();
            g.in_flight = true;
            let (rpc, to, key, timeout, done) = (
                self.rpc.clone(),
                g.members.clone(),
                key.clone(),
                self.cfg.rpc_timeout,
                done.clone(),
            );
            tokio::spawn(async move {
                let body = Msg::Update {
                    sync: true,
                    records: batch,
                }
                .encode();
                let how = CallOptions::default().mode(ReplyMode::All).timeout(timeout);
                let missing = match rpc.call(&to, body, how).await {
                    Ok(result) => {
                        if !result.no_channel.is_empty() {
                            let _ = done.send(Cmd::Gone(result.no_channel.clone())).await;
                        }
                        missing_of(&result, true, timeout)
                    }
                    Err(e) => to
                        .iter()
                        .map(|m| (m.id, format!("not sent: {e}")))
                        .collect(),
                };
                for w in waiters {
                    let _ = w.send(missing.clone());
                }
                let _ = done.send(Cmd::GroupDone(key)).await;
            });
        }
    }

    /// Sends `msg` from a task of its own when a request slot is free, else queues it; a
    /// request's answers come back as commands.
    fn background(&mut self, to: Vec<Member>, msg: Msg, request: bool) {
        // Anti-entropy repeats every period: its messages (a digest, the repair half of an
        // exchange, which a peer can ask for unprompted) give way under pressure; records of
        // writes and placement changes never do.
        let droppable = matches!(
            msg,
            Msg::Digest { .. } | Msg::DigestReply { .. } | Msg::Hello | Msg::Fetch { .. }
        );
        if !self.pending.is_empty() {
            if droppable && self.pending.len() >= self.cfg.max_background_requests {
                self.counters.skipped.fetch_add(1, Ordering::Relaxed);
            } else {
                self.pending.push_back((to, msg, request));
            }
            return;
        }
        match self.background.clone().try_acquire_owned() {
            Ok(permit) => self.spawn_request(permit, to, msg, request),
            Err(_) => self.pending.push_back((to, msg, request)),
        }
    }

    fn spawn_request(
        &self,
        permit: tokio::sync::OwnedSemaphorePermit,
        to: Vec<Member>,
        msg: Msg,
        request: bool,
    ) {
        let rpc = self.rpc.clone();
        let Some(cmd) = self.cmd.upgrade() else {
            return;
        };
        let timeout = self.cfg.rpc_timeout;
        tokio::spawn(async move {
            let how = if request {
                CallOptions::default().mode(ReplyMode::All).timeout(timeout)
            } else {
                CallOptions::default()
                    .mode(ReplyMode::None)
                    .send_options(SendOptions::ASYNCHRONOUS)
            };
            if let Ok(result) = rpc.call(&to, msg.encode(), how).await {
                let answers: Vec<(MemberId, Msg)> = result
                    .replies
                    .iter()
                    .filter_map(|r| Msg::decode(&r.payload).ok().map(|m| (r.from, m)))
                    .collect();
                if !answers.is_empty() {
                    let _ = cmd.send(Cmd::Answers(answers)).await;
                }
            }
            drop(permit);
        });
    }
}
