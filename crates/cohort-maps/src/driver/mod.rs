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

mod handle;
mod owner;

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
