//! The sans-IO core of a map: every decision (versions, conflicts, placement of a lazy map's
//! copies, tombstones, digests, state-transfer chunks, repair) and no IO, no clock, no task.
//!
//! Inputs are `handle_*(now_ms, ...)` calls (wall-clock milliseconds, which the hybrid logical
//! clock needs); outputs are return values, [`MapCore::poll_transmit`] (messages the core wants
//! sent), [`MapCore::poll_event`] (changes for subscribers) and [`MapCore::poll_timeout`].
//! Randomness (which member to compare digests with) comes from a seed.
//!
//! Entries are keyed by their encoded key in a `BTreeMap`, so a state transfer can resume
//! after any key and a chunk costs only its own size.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;

use bytes::Bytes;
use cohort_wire::MemberId;

use crate::config::MapConfig;
use crate::msg::{BUCKETS, Msg, Record};
use crate::version::{Hlc, LOGICAL_BITS, Version};

mod install;
mod messages;
mod placement;
#[cfg(test)]
mod tests;

/// Which map this core runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Every member holds every entry.
    Replicated,
    /// An entry lives on a primary and `backup_count` backups; others hold a proxy.
    Lazy,
}

/// Where a change came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A call on this member.
    Local,
    /// A message from another member (a write, a repair or a state transfer).
    Remote,
}

/// What happened to an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A key with no live value got one.
    Added,
    /// A live value was replaced (or, in a lazy map, moved).
    Updated,
    /// A live value was removed.
    Removed,
}

/// One change, for subscribers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreEvent {
    /// The encoded key.
    pub key: Bytes,
    /// What happened.
    pub change: Change,
    /// Where it came from.
    pub origin: Origin,
    /// The value, when this member holds it.
    pub value: Option<Bytes>,
}

/// A message the core wants sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Destinations.
    pub to: Vec<MemberId>,
    /// The message.
    pub msg: Msg,
    /// Whether it is a request whose answer goes back to [`MapCore::handle_message`].
    pub request: bool,
}

/// A local write the caller must send: `record` (with its value) to `full`, and without its
/// value to `proxies`. Everything in it is already applied locally.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// The record, value included.
    pub record: Record,
    /// Members that hold the value (every member of a replicated map; a lazy map's backups).
    pub full: Vec<MemberId>,
    /// Members that hold only where the entry lives.
    pub proxies: Vec<MemberId>,
}

/// What a local read found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The value is here.
    Value(Bytes),
    /// No such key (or it was removed).
    Absent,
    /// Only a proxy is here: fetch from these members (primary first), then call
    /// [`MapCore::adopt`].
    Remote(Vec<MemberId>),
    /// A lazy map knows nothing of the key here: ask these members (every other one); absent
    /// when none holds it.
    Unknown(Vec<MemberId>),
}

/// Why a write was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// A count or size limit of the map.
    #[error("map full: {limit} ({max}) reached")]
    Full {
        /// The limit's name in [`MapConfig`].
        limit: &'static str,
        /// Its value.
        max: usize,
    },
    /// A key or value above its limit.
    #[error("{what} of {len} bytes exceeds {limit} ({max})")]
    TooLarge {
        /// `key` or `value`.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit's name.
        limit: &'static str,
        /// Its value.
        max: usize,
    },
    /// A version whose clock is too far ahead of ours.
    #[error("version from {ahead_ms} ms in the future (max_clock_skew)")]
    Future {
        /// How far ahead.
        ahead_ms: u64,
    },
}

/// Counters of one map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CoreStats {
    /// Live entries holding a value here.
    pub entries: usize,
    /// Entries known only as a proxy (lazy maps).
    pub proxies: usize,
    /// Tombstones kept.
    pub tombstones: usize,
    /// Bytes of keys and values held.
    pub bytes: usize,
    /// Map members other than this one.
    pub members: usize,
    /// State-transfer chunks served to joining members.
    pub chunks_served: u64,
    /// Entries that anti-entropy repaired here (a newer version came through a digest
    /// exchange).
    pub repairs: u64,
    /// Writes that lost to a concurrent newer version (arrived older than what was held).
    pub conflicts: u64,
    /// Remote records refused (limits, clock skew).
    pub rejected: u64,
    /// Tombstones forgotten early because `max_tombstones` was reached.
    pub tombstones_dropped: u64,
    /// Lazy entries whose every holder left, or that no member held when all were asked:
    /// their value is gone.
    pub lost: u64,
    /// Lazy entries this member promoted itself to primary of.
    pub promotions: u64,
    /// Digest exchanges started.
    pub digests_sent: u64,
}

#[derive(Clone, Debug)]
struct Entry {
    version: Version,
    placed: Version,
    removed: bool,
    primary: MemberId,
    backups: Vec<MemberId>,
    value: Option<Bytes>,
    hash: u64,
}

impl Entry {
    fn stamp(&self) -> (Version, Version) {
        (self.version, self.placed)
    }

    fn holds(&self, id: MemberId) -> bool {
        self.primary == id || self.backups.contains(&id)
    }

    fn live(&self) -> bool {
        !self.removed && self.value.is_some()
    }
}

/// The core of one map on one member.
pub struct MapCore {
    cfg: MapConfig,
    kind: Kind,
    local: MemberId,
    hlc: Hlc,
    entries: BTreeMap<Bytes, Entry>,
    /// Tombstones by age, for expiry and the drop-oldest policy.
    graves: BTreeSet<(u64, Bytes)>,
    digests: Vec<u64>,
    members: BTreeSet<MemberId>,
    stats: CoreStats,
    out: VecDeque<Transmit>,
    events: VecDeque<CoreEvent>,
    events_on: bool,
    /// Lazy entries this member should hold but has no value of (a newer placement came
    /// through a proxy); fetched on the next timeout.
    holes: BTreeSet<Bytes>,
    next_anti_entropy: u64,
    rng: u64,
    /// Entries and bytes the next calls may add, when the driver shares the limits with
    /// callers that claimed room before their writes reached the core (see the driver).
    budget: Option<(usize, usize)>,
}

/// Most holes fetched per timeout.
const HOLES_PER_TICK: usize = 64;

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn mix(mut x: u64) -> u64 {
    // splitmix64's finaliser.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn bucket_of(key: &[u8]) -> usize {
    usize::from((mix(fnv(key)) >> 56) as u8)
}

fn entry_hash(key: &[u8], version: Version, placed: Version, removed: bool) -> u64 {
    let v = mix(version.hlc ^ fnv(&version.node));
    let p = mix(placed.hlc ^ fnv(&placed.node).rotate_left(17));
    mix(fnv(key) ^ v ^ p.rotate_left(7) ^ u64::from(removed))
}

/// Rendezvous weight of `member` for `key`: the highest weights hold the copies.
fn weight(key_hash: u64, member: MemberId) -> u64 {
    mix(key_hash ^ fnv(member.as_bytes()))
}

fn ids(v: &[[u8; 16]]) -> Vec<MemberId> {
    v.iter().map(|b| MemberId::from_bytes(*b)).collect()
}

fn raw(v: &[MemberId]) -> Vec<[u8; 16]> {
    v.iter().map(|m| *m.as_bytes()).collect()
}

impl MapCore {
    /// A core for the member `local`. `seed` drives the choice of anti-entropy partners.
    pub fn new(cfg: MapConfig, kind: Kind, local: MemberId, seed: u64) -> Self {
        Self {
            cfg,
            kind,
            local,
            hlc: Hlc::default(),
            entries: BTreeMap::new(),
            graves: BTreeSet::new(),
            digests: vec![0; BUCKETS],
            members: BTreeSet::new(),
            stats: CoreStats::default(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            events_on: false,
            holes: BTreeSet::new(),
            next_anti_entropy: 0,
            rng: seed | 1,
            budget: None,
        }
    }

    /// Lets the calls that follow add at most `entries` live entries and `bytes` bytes (on
    /// top of `max_entries` and `max_bytes`); `None` lifts it. [`MapCore::budget`] tells what
    /// is left.
    pub fn set_budget(&mut self, budget: Option<(usize, usize)>) {
        self.budget = budget;
    }

    /// What is left of the budget.
    pub fn budget(&self) -> Option<(usize, usize)> {
        self.budget
    }

    /// Whether changes are queued for [`MapCore::poll_event`] (off while nobody listens).
    pub fn set_events(&mut self, on: bool) {
        self.events_on = on;
        if !on {
            self.events.clear();
        }
    }

    /// This member.
    pub fn local(&self) -> MemberId {
        self.local
    }

    /// The other members of the map.
    pub fn members(&self) -> impl Iterator<Item = MemberId> + '_ {
        self.members.iter().copied()
    }

    /// Counters.
    pub fn stats(&self) -> CoreStats {
        CoreStats {
            members: self.members.len(),
            ..self.stats
        }
    }

    /// The digest of every bucket.
    pub fn digests(&self) -> &[u64] {
        &self.digests
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: enough to spread partners; seeded for simulation.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    // ---- reads -------------------------------------------------------------------------

    /// Reads `key`. In a lazy map a backup that is read becomes the primary (the data follows
    /// its user), which this returns as a write to send.
    pub fn get(&mut self, now_ms: u64, key: &[u8]) -> (Lookup, Option<Write>) {
        let Some(e) = self.entries.get(key) else {
            if self.kind == Kind::Lazy && !self.members.is_empty() {
                // Not even a proxy here (this member joined late, or a proxy message was
                // lost): ask the others rather than report a held entry absent.
                return (
                    Lookup::Unknown(self.members.iter().copied().collect()),
                    None,
                );
            }
            return (Lookup::Absent, None);
        };
        if e.removed {
            return (Lookup::Absent, None);
        }
        match (&e.value, self.kind) {
            (Some(v), Kind::Replicated) => (Lookup::Value(v.clone()), None),
            (Some(v), Kind::Lazy) => {
                let v = v.clone();
                if e.primary == self.local {
                    return (Lookup::Value(v), None);
                }
                let write = self.promote(now_ms, key);
                (Lookup::Value(v), write)
            }
            (None, _) => {
                let mut from = vec![e.primary];
                from.extend(e.backups.iter().copied());
                from.retain(|m| *m != self.local);
                (Lookup::Remote(from), None)
            }
        }
    }

    /// Live entries (value held here), in key order, from after `after`, at most `limit`.
    pub fn scan(&self, after: Option<&[u8]>, limit: usize) -> Vec<(Bytes, Bytes)> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.entries
            .range::<[u8], _>((start, Bound::Unbounded))
            .filter(|(_, e)| !e.removed)
            .filter_map(|(k, e)| e.value.as_ref().map(|v| (k.clone(), v.clone())))
            .take(limit)
            .collect()
    }

    /// Live entries (value held here) whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Vec<(Bytes, Bytes)> {
        self.entries
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, e)| !e.removed)
            .filter_map(|(k, e)| e.value.as_ref().map(|v| (k.clone(), v.clone())))
            .collect()
    }

    /// Keys of every live entry known here, proxies included.
    pub fn len(&self) -> usize {
        self.stats.entries + self.stats.proxies
    }

    /// True when no live entry is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // ---- local writes ------------------------------------------------------------------

    /// Writes `value` under `key` here and returns what to send.
    pub fn put(&mut self, now_ms: u64, key: Bytes, value: Bytes) -> Result<Write, Refused> {
        self.check_sizes(&key, Some(&value))?;
        let hlc = self.hlc.tick(now_ms);
        let version = Version::new(hlc, self.local);
        // The members holding the value now stay its holders (as many as there is room
        // for): a write that moved the copy to other members would tell the old holders to
        // drop theirs, and a primary dying between that message and the one carrying the new
        // value to the new holders would leave no copy of either version.
        let keep = self.current_holders(&key);
        let backups = self.choose_backups(&key, self.local, &keep);
        let record = Record {
            key,
            version,
            placed: version,
            removed: false,
            primary: *self.local.as_bytes(),
            backups: raw(&backups),
            value: Some(value),
        };
        self.install(now_ms, record.clone(), Origin::Local)?;
        Ok(self.write_of(record))
    }

    /// Removes `key` here (a tombstone) and returns what to send: every member learns of a
    /// removal. `None` when there was nothing to remove.
    pub fn remove(&mut self, now_ms: u64, key: Bytes) -> Option<Write> {
        let e = self.entries.get(&key)?;
        if e.removed {
            return None;
        }
        let hlc = self.hlc.tick(now_ms);
        let version = Version::new(hlc, self.local);
        let record = Record {
            key,
            version,
            placed: version,
            removed: true,
            primary: *self.local.as_bytes(),
            backups: Vec::new(),
            value: None,
        };
        // A tombstone never breaks a limit (tombstones have their own, drop-oldest).
        let _ = self.install(now_ms, record.clone(), Origin::Local);
        Some(Write {
            record,
            full: self.members.iter().copied().collect(),
            proxies: Vec::new(),
        })
    }

    /// A proxy fetched `record` from a holder: this member takes the entry over as primary
    /// (as Tribes' lazy map does) and returns the value and what to send. When a newer
    /// version arrived here meanwhile, that one is returned instead.
    ///
    /// `None` when the entry moved here meanwhile (a newer placement names other holders):
    /// read again.
    pub fn adopt(&mut self, now_ms: u64, record: Record) -> Option<(Option<Bytes>, Option<Write>)> {
        if record.removed || record.value.is_none() {
            return Some((self.value_of(&record.key), None));
        }
        if let Some(e) = self.entries.get(&record.key) {
            if e.stamp() > (record.version, record.placed) {
                if !e.removed && e.value.is_none() {
                    return None;
                }
                return Some((self.value_of(&record.key), None));
            }
        }
        // A fetched record is a peer's word: the same checks as any remote record before it
        // moves this member's clock.
        if Self::remote_refusal(&self.cfg, now_ms, &record).is_some() {
            self.stats.rejected += 1;
            return Some((self.value_of(&record.key), None));
        }
        self.hlc.observe(record.placed.hlc.max(record.version.hlc));
        let holders: Vec<MemberId> = ids(&record.backups)
            .into_iter()
            .chain(std::iter::once(MemberId::from_bytes(record.primary)))
            .filter(|m| *m != self.local && self.members.contains(m))
            .collect();
        let backups = self.choose_backups(&record.key, self.local, &holders);
        let moved = Record {
            placed: Version::new(self.hlc.tick(now_ms), self.local),
            primary: *self.local.as_bytes(),
            backups: raw(&backups),
            ..record
        };
        let value = moved.value.clone();
        if self.install(now_ms, moved.clone(), Origin::Local).is_err() {
            // Full here: answer the read, leave the entry where it lives.
            return Some((value, None));
        }
        self.stats.promotions += 1;
        Some((value, Some(self.write_of(moved))))
    }

    fn value_of(&self, key: &[u8]) -> Option<Bytes> {
        self.entries
            .get(key)
            .filter(|e| !e.removed)
            .and_then(|e| e.value.clone())
    }

    fn write_of(&self, record: Record) -> Write {
        let primary = MemberId::from_bytes(record.primary);
        let holders: Vec<MemberId> = ids(&record.backups);
        let (full, proxies) = match self.kind {
            Kind::Replicated => (self.members.iter().copied().collect(), Vec::new()),
            Kind::Lazy => self
                .members
                .iter()
                .copied()
                .partition(|m| holders.contains(m) || *m == primary),
        };
        Write {
            record,
            full,
            proxies,
        }
    }

    fn check_sizes(&self, key: &[u8], value: Option<&Bytes>) -> Result<(), Refused> {
        if key.len() > self.cfg.max_key_bytes {
            return Err(Refused::TooLarge {
                what: "key",
                len: key.len(),
                limit: "max_key_bytes",
                max: self.cfg.max_key_bytes,
            });
        }
        if let Some(v) = value {
            if v.len() > self.cfg.max_value_bytes {
                return Err(Refused::TooLarge {
                    what: "value",
                    len: v.len(),
                    limit: "max_value_bytes",
                    max: self.cfg.max_value_bytes,
                });
            }
        }
        Ok(())
    }

    // ---- applying records --------------------------------------------------------------

    // ---- messages ----------------------------------------------------------------------

    // ---- membership --------------------------------------------------------------------

    fn queue_write(&mut self, w: Write) {
        if !w.full.is_empty() {
            self.out.push_back(Transmit {
                to: w.full,
                msg: Msg::Update {
                    sync: false,
                    records: vec![w.record.clone()],
                },
                request: false,
            });
        }
        if !w.proxies.is_empty() {
            self.out.push_back(Transmit {
                to: w.proxies,
                msg: Msg::Update {
                    sync: false,
                    records: vec![w.record.without_value()],
                },
                request: false,
            });
        }
    }

    // ---- time --------------------------------------------------------------------------

    /// When [`MapCore::handle_timeout`] should next run (wall-clock ms).
    pub fn poll_timeout(&self) -> u64 {
        self.next_anti_entropy
    }

    /// Runs periodic work due at `now_ms`: expires tombstones, asks holders for missing
    /// copies, and starts a digest exchange with one random member.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        let ttl = ms(self.cfg.tombstone_ttl);
        while let Some((hlc, key)) = self.graves.first().cloned() {
            if now_ms.saturating_sub(hlc >> LOGICAL_BITS) <= ttl {
                break;
            }
            if let Some(o) = self.entries.remove(&key) {
                self.forget(&key, &o);
            } else {
                self.graves.pop_first();
            }
        }
        if now_ms < self.next_anti_entropy {
            return;
        }
        let interval = ms(self.cfg.anti_entropy_interval);
        // Jitter of up to a quarter period, so members do not compare in lockstep.
        let jitter = self.next_random() % (interval / 4 + 1);
        self.next_anti_entropy = now_ms + interval - interval / 8 + jitter;
        let holes: Vec<Bytes> = self.holes.iter().take(HOLES_PER_TICK).cloned().collect();
        for key in holes {
            if let Some(e) = self.entries.get(&key) {
                let mut from = vec![e.primary];
                from.extend(e.backups.iter().copied());
                from.retain(|m| *m != self.local && self.members.contains(m));
                if !from.is_empty() {
                    self.out.push_back(Transmit {
                        to: from,
                        msg: Msg::Fetch { key },
                        request: true,
                    });
                }
            }
        }
        self.start_anti_entropy(None);
    }

    /// Starts a digest exchange now, with `with` or a random member.
    pub fn start_anti_entropy(&mut self, with: Option<MemberId>) {
        let partner = with.or_else(|| {
            let n = self.members.len() as u64;
            (n > 0).then(|| {
                let i = self.next_random() % n;
                *self
                    .members
                    .iter()
                    .nth(usize::try_from(i).unwrap_or(0))
                    .expect("in range")
            })
        });
        if let Some(p) = partner {
            self.stats.digests_sent += 1;
            self.out.push_back(Transmit {
                to: vec![p],
                msg: Msg::Digest {
                    buckets: self.digests.clone(),
                },
                request: true,
            });
        }
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// Regroups the queued one-way updates (a placement change touches many entries) into one
    /// message per destination and chunk, instead of one per entry and destination set.
    fn coalesce(&mut self) {
        let mut per: BTreeMap<MemberId, Vec<Record>> = BTreeMap::new();
        let mut rest = VecDeque::new();
        for t in self.out.drain(..) {
            match t.msg {
                Msg::Update {
                    sync: false,
                    records,
                } if !t.request => {
                    for to in t.to {
                        per.entry(to).or_default().extend(records.iter().cloned());
                    }
                }
                msg => rest.push_back(Transmit { msg, ..t }),
            }
        }
        for (to, records) in per {
            let mut batch = Vec::new();
            let mut size = 0;
            for r in records {
                size += r.weight();
                batch.push(r);
                if size >= self.cfg.max_chunk_bytes {
                    size = 0;
                    self.out.push_back(Transmit {
                        to: vec![to],
                        msg: Msg::Update {
                            sync: false,
                            records: std::mem::take(&mut batch),
                        },
                        request: false,
                    });
                }
            }
            if !batch.is_empty() {
                self.out.push_back(Transmit {
                    to: vec![to],
                    msg: Msg::Update {
                        sync: false,
                        records: batch,
                    },
                    request: false,
                });
            }
        }
        self.out.extend(rest);
    }

    /// The next change for subscribers.
    pub fn poll_event(&mut self) -> Option<CoreEvent> {
        self.events.pop_front()
    }

    /// Every entry as `(key, version, placed, removed, value)`, in key order (for tests and
    /// convergence checks).
    pub fn dump(&self) -> Vec<(Bytes, Version, bool, Option<Bytes>)> {
        self.entries
            .iter()
            .map(|(k, e)| (k.clone(), e.version, e.removed, e.value.clone()))
            .collect()
    }

    /// Where a lazy entry lives: `(primary, backups)`.
    pub fn placement(&self, key: &[u8]) -> Option<(MemberId, Vec<MemberId>)> {
        self.entries
            .get(key)
            .map(|e| (e.primary, e.backups.clone()))
    }
}
