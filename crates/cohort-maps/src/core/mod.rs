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

    /// The other members that hold the value of a live `key` by its placement (members
    /// that left are ignored by [`MapCore::choose_backups`]).
    fn current_holders(&self, key: &[u8]) -> Vec<MemberId> {
        self.entries
            .get(key)
            .filter(|e| !e.removed)
            .map(|e| {
                e.backups
                    .iter()
                    .copied()
                    .chain(std::iter::once(e.primary))
                    .filter(|m| *m != self.local)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn value_of(&self, key: &[u8]) -> Option<Bytes> {
        self.entries
            .get(key)
            .filter(|e| !e.removed)
            .and_then(|e| e.value.clone())
    }

    /// Makes this member the primary of a lazy entry it holds the value of.
    fn promote(&mut self, now_ms: u64, key: &[u8]) -> Option<Write> {
        let e = self.entries.get(key)?;
        if e.removed || e.value.is_none() || self.kind != Kind::Lazy {
            return None;
        }
        let (version, value) = (e.version, e.value.clone());
        let keep = self.current_holders(key);
        let backups = self.choose_backups(key, self.local, &keep);
        let record = self.placed_here(now_ms, key, version, &backups, value);
        self.stats.promotions += 1;
        let _ = self.install(now_ms, record.clone(), Origin::Local);
        Some(self.write_of(record))
    }

    /// `key` at `version` moved to this member as primary with `backups`: a new placement
    /// version, the value's version kept.
    fn placed_here(
        &mut self,
        now_ms: u64,
        key: &[u8],
        version: Version,
        backups: &[MemberId],
        value: Option<Bytes>,
    ) -> Record {
        Record {
            key: Bytes::copy_from_slice(key),
            version,
            placed: Version::new(self.hlc.tick(now_ms), self.local),
            removed: false,
            primary: *self.local.as_bytes(),
            backups: raw(backups),
            value,
        }
    }

    /// `backup_count` backups for `key` other than `primary`: those of `keep` that are still
    /// members first (in rendezvous order), then the highest rendezvous weights.
    fn choose_backups(&self, key: &[u8], primary: MemberId, keep: &[MemberId]) -> Vec<MemberId> {
        if self.kind != Kind::Lazy {
            return Vec::new();
        }
        let h = fnv(key);
        let mut candidates: Vec<MemberId> = self
            .members
            .iter()
            .chain(std::iter::once(&self.local))
            .copied()
            .filter(|m| *m != primary)
            .collect();
        candidates.sort_by_key(|m| (!keep.contains(m), std::cmp::Reverse(weight(h, *m))));
        candidates.truncate(self.cfg.backup_count);
        candidates
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

    /// What every record from a peer must pass before it is applied or moves the clock: no
    /// version more than `max_clock_skew` ahead, sizes within the limits.
    fn remote_refusal(cfg: &MapConfig, now_ms: u64, rec: &Record) -> Option<Refused> {
        let max_ahead = ms(cfg.max_clock_skew).saturating_mul(1 << LOGICAL_BITS);
        let limit = (now_ms << LOGICAL_BITS).saturating_add(max_ahead);
        for v in [rec.version, rec.placed] {
            if v.hlc > limit {
                return Some(Refused::Future {
                    ahead_ms: v.millis().saturating_sub(now_ms),
                });
            }
        }
        let (key, value) = (rec.key.len(), rec.value.as_ref().map_or(0, Bytes::len));
        if key > cfg.max_key_bytes {
            return Some(Refused::TooLarge {
                what: "key",
                len: key,
                limit: "max_key_bytes",
                max: cfg.max_key_bytes,
            });
        }
        (value > cfg.max_value_bytes).then_some(Refused::TooLarge {
            what: "value",
            len: value,
            limit: "max_value_bytes",
            max: cfg.max_value_bytes,
        })
    }

    /// Applies `record` if it is newer than what is held. `Ok(true)` when it changed
    /// something.
    fn install(&mut self, now_ms: u64, rec: Record, origin: Origin) -> Result<bool, Refused> {
        let old = self.entries.get(&rec.key);
        let old_stamp = old.map(Entry::stamp);
        let new_stamp = (rec.version, rec.placed);
        if let Some(old_stamp) = old_stamp {
            if old_stamp >= new_stamp {
                let old = old.expect("stamp of an entry");
                // The same version without the value where this member should hold it: fill.
                if old_stamp == new_stamp
                    && old.value.is_none()
                    && !old.removed
                    && old.holds(self.local)
                {
                    if let Some(v) = rec.value {
                        let len = v.len();
                        let full = self.stats.entries >= self.cfg.max_entries
                            || self.stats.bytes + len > self.cfg.max_bytes
                            || self.budget.is_some_and(|(e, b)| e == 0 || b < len);
                        if full {
                            self.stats.rejected += 1;
                            return Err(Refused::Full {
                                limit: "max_entries",
                                max: self.cfg.max_entries,
                            });
                        }
                        if let Some((e, b)) = &mut self.budget {
                            *e -= 1;
                            *b -= len;
                        }
                        let e = self.entries.get_mut(&rec.key).expect("checked");
                        self.stats.bytes += len;
                        self.stats.proxies -= 1;
                        self.stats.entries += 1;
                        e.value = Some(v);
                        self.holes.remove(&rec.key);
                        return Ok(true);
                    }
                }
                if rec.version < old_stamp.0 {
                    self.stats.conflicts += 1;
                }
                return Ok(false);
            }
        }
        if origin == Origin::Remote {
            if let Some(refused) = Self::remote_refusal(&self.cfg, now_ms, &rec) {
                self.stats.rejected += 1;
                return Err(refused);
            }
            self.hlc.observe(rec.placed.hlc.max(rec.version.hlc));
        }
        let primary = MemberId::from_bytes(rec.primary);
        let backups = ids(&rec.backups);
        let holds = primary == self.local || backups.contains(&self.local);
        let same_version = old.is_some_and(|o| o.version == rec.version && !o.removed);
        let value = if rec.removed {
            None
        } else {
            match self.kind {
                Kind::Replicated => rec.value.clone(),
                Kind::Lazy if holds => rec.value.clone().or_else(|| {
                    same_version
                        .then(|| old.and_then(|o| o.value.clone()))
                        .flatten()
                }),
                Kind::Lazy => None,
            }
        };
        // An expired removal: forget the key outright rather than keep the tombstone.
        let expired =
            rec.removed && now_ms.saturating_sub(rec.version.millis()) > ms(self.cfg.tombstone_ttl);
        let was_live = old.is_some_and(|o| !o.removed);
        let old_bytes = old.and_then(|o| o.value.as_ref()).map_or(0, Bytes::len);
        let new_bytes = value.as_ref().map_or(0, Bytes::len);
        let adds_entry = value.is_some() && !old.is_some_and(Entry::live);
        // Bytes held: key and value of a live entry, the key of a proxy, nothing for a
        // tombstone.
        let old_weight = old.map_or(0, |o| {
            if o.removed {
                0
            } else {
                rec.key.len() + old_bytes
            }
        });
        let new_weight = if rec.removed {
            0
        } else {
            rec.key.len() + new_bytes
        };
        let grows = new_weight.saturating_sub(old_weight);
        let over_entries = adds_entry
            && (self.stats.entries >= self.cfg.max_entries
                || self.budget.is_some_and(|(e, _)| e == 0));
        let over_bytes = grows > 0
            && (self.stats.bytes + grows > self.cfg.max_bytes
                || self.budget.is_some_and(|(_, b)| grows > b));
        if over_entries || over_bytes {
            if origin == Origin::Remote {
                self.stats.rejected += 1;
            }
            return Err(if over_entries {
                Refused::Full {
                    limit: "max_entries",
                    max: self.cfg.max_entries,
                }
            } else {
                Refused::Full {
                    limit: "max_bytes",
                    max: self.cfg.max_bytes,
                }
            });
        }
        if let Some((e, b)) = &mut self.budget {
            *e -= usize::from(adds_entry);
            *b -= grows;
        }
        if origin == Origin::Remote {
            if let Some(o) = old {
                if rec.version > o.version && o.version.node() == self.local && !o.removed {
                    // Our own write lost to a concurrent one.
                    self.stats.conflicts += 1;
                }
            }
        }
        // Take the old entry out of every count.
        if let Some(o) = self.entries.remove(&rec.key) {
            self.forget(&rec.key, &o);
        }
        self.holes.remove(&rec.key);
        let change = if rec.removed {
            was_live.then_some(Change::Removed)
        } else if was_live {
            Some(Change::Updated)
        } else {
            Some(Change::Added)
        };
        if expired {
            self.emit(rec.key, change, origin, None);
            return Ok(true);
        }
        let hash = entry_hash(&rec.key, rec.version, rec.placed, rec.removed);
        self.digests[bucket_of(&rec.key)] ^= hash;
        let entry = Entry {
            version: rec.version,
            placed: rec.placed,
            removed: rec.removed,
            primary,
            backups,
            value,
            hash,
        };
        if entry.removed {
            self.stats.tombstones += 1;
            self.graves.insert((entry.version.hlc, rec.key.clone()));
        } else if let Some(v) = &entry.value {
            self.stats.entries += 1;
            self.stats.bytes += v.len() + rec.key.len();
        } else {
            self.stats.proxies += 1;
            self.stats.bytes += rec.key.len();
            if holds {
                self.holes.insert(rec.key.clone());
            }
        }
        let value = entry.value.clone();
        self.entries.insert(rec.key.clone(), entry);
        self.emit(rec.key, change, origin, value);
        if self.stats.tombstones > self.cfg.max_tombstones {
            self.drop_oldest_tombstone();
        }
        Ok(true)
    }

    fn forget(&mut self, key: &Bytes, o: &Entry) {
        self.digests[bucket_of(key)] ^= o.hash;
        if o.removed {
            self.stats.tombstones -= 1;
            self.graves.remove(&(o.version.hlc, key.clone()));
        } else if let Some(v) = &o.value {
            self.stats.entries -= 1;
            self.stats.bytes -= v.len() + key.len();
        } else {
            self.stats.proxies -= 1;
            self.stats.bytes -= key.len();
        }
    }

    fn emit(&mut self, key: Bytes, change: Option<Change>, origin: Origin, value: Option<Bytes>) {
        if let (true, Some(change)) = (self.events_on, change) {
            self.events.push_back(CoreEvent {
                key,
                change,
                origin,
                value,
            });
        }
    }

    fn drop_oldest_tombstone(&mut self) {
        if let Some((_, key)) = self.graves.first().cloned() {
            if let Some(o) = self.entries.remove(&key) {
                self.forget(&key, &o);
            }
            self.stats.tombstones_dropped += 1;
        }
    }

    /// Applies records from another member (a write, a repair, a chunk). Returns the first
    /// refusal, if any; the other records are applied regardless.
    pub fn apply(&mut self, now_ms: u64, records: Vec<Record>) -> Option<Refused> {
        let mut first = None;
        for r in records {
            if let Err(e) = self.install(now_ms, r, Origin::Remote) {
                first.get_or_insert(e);
            }
        }
        first
    }

    // ---- messages ----------------------------------------------------------------------

    /// Handles a message from `from`; the answer, for a request.
    pub fn handle_message(&mut self, now_ms: u64, from: MemberId, msg: Msg) -> Option<Msg> {
        match msg {
            Msg::Hello => {
                self.handle_member_up(now_ms, from);
                Some(Msg::HelloAck)
            }
            Msg::HelloAck => {
                self.handle_member_up(now_ms, from);
                None
            }
            Msg::Bye => {
                self.handle_member_down(now_ms, from);
                None
            }
            Msg::Update { sync, records } => {
                let refused = self.apply(now_ms, records);
                sync.then(|| Msg::Applied {
                    error: refused.map(|e| e.to_string()),
                })
            }
            Msg::Applied { .. } => None,
            Msg::Fetch { key } => Some(Msg::Fetched {
                record: self.fetch_answer(&key),
            }),
            Msg::Fetched { record } => {
                // A hole being filled (adopting is the driver's, through `adopt`).
                if let Some(r) = record {
                    if self.holes.contains(&r.key) {
                        let _ = self.install(now_ms, r, Origin::Remote);
                    }
                }
                None
            }
            Msg::StateReq { after, max_bytes } => {
                self.stats.chunks_served += 1;
                let (records, next) = self.chunk(after.as_deref(), max_bytes as usize, from);
                Some(Msg::StateChunk { records, next })
            }
            Msg::StateChunk { records, .. } => {
                let _ = self.apply(now_ms, records);
                None
            }
            Msg::Digest { buckets } => {
                let want: Vec<u16> = (0..BUCKETS)
                    .filter(|b| buckets[*b] != self.digests[*b])
                    .filter_map(|b| u16::try_from(b).ok())
                    .collect();
                let records = self.records_in(&want, from);
                Some(Msg::DigestReply { records, want })
            }
            Msg::DigestReply { records, want } => {
                self.repair(now_ms, records);
                let mine = self.records_in(&want, from);
                if !mine.is_empty() {
                    self.out.push_back(Transmit {
                        to: vec![from],
                        // The other half of the exchange: counted as repairs there too.
                        msg: Msg::DigestReply {
                            records: mine,
                            want: Vec::new(),
                        },
                        request: false,
                    });
                }
                None
            }
        }
    }

    fn repair(&mut self, now_ms: u64, records: Vec<Record>) {
        for r in records {
            if let Ok(true) = self.install(now_ms, r, Origin::Remote) {
                self.stats.repairs += 1;
            }
        }
    }

    fn record_of(&self, key: &[u8], e: &Entry, to: MemberId) -> Record {
        let with_value = match self.kind {
            Kind::Replicated => true,
            Kind::Lazy => e.holds(to),
        };
        Record {
            key: Bytes::copy_from_slice(key),
            version: e.version,
            placed: e.placed,
            removed: e.removed,
            primary: *e.primary.as_bytes(),
            backups: raw(&e.backups),
            value: if with_value { e.value.clone() } else { None },
        }
    }

    /// A proxy's fetch answer for `key`, value included when held (a fetching member takes
    /// the entry over, so it must get the value).
    pub fn fetch_answer(&self, key: &[u8]) -> Option<Record> {
        let e = self.entries.get(key)?;
        let mut r = self.record_of(key, e, self.local);
        r.value = e.value.clone();
        Some(r)
    }

    /// Records of these buckets, for `to`, up to `max_chunk_bytes` (the rest is repaired in a
    /// later round).
    fn records_in(&self, buckets: &[u16], to: MemberId) -> Vec<Record> {
        if buckets.is_empty() {
            return Vec::new();
        }
        let mut wanted = [false; BUCKETS];
        for b in buckets {
            wanted[usize::from(*b)] = true;
        }
        let mut out = Vec::new();
        let mut size = 0;
        for (k, e) in &self.entries {
            if !wanted[bucket_of(k)] {
                continue;
            }
            let r = self.record_of(k, e, to);
            size += r.weight();
            out.push(r);
            if size >= self.cfg.max_chunk_bytes {
                break;
            }
        }
        out
    }

    /// The chunk of the state after `after`, for `to`: at least one record, at most about
    /// `max_bytes`, and the key to continue after.
    pub fn chunk(
        &self,
        after: Option<&[u8]>,
        max_bytes: usize,
        to: MemberId,
    ) -> (Vec<Record>, Option<Bytes>) {
        let max_bytes = max_bytes.clamp(1, self.cfg.max_chunk_bytes);
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut out = Vec::new();
        let mut size = 0;
        let mut range = self.entries.range::<[u8], _>((start, Bound::Unbounded));
        for (k, e) in range.by_ref() {
            let r = self.record_of(k, e, to);
            size += r.weight();
            out.push(r);
            if size >= max_bytes {
                break;
            }
        }
        let next = if range.next().is_some() {
            out.last().map(|r| r.key.clone())
        } else {
            None
        };
        (out, next)
    }

    // ---- membership --------------------------------------------------------------------

    /// `member` runs this map (it said hello, or answered ours).
    pub fn handle_member_up(&mut self, now_ms: u64, member: MemberId) {
        if member == self.local || !self.members.insert(member) {
            return;
        }
        // A new member, or one back from a partition: compare at once rather than wait for
        // the period (bounded: one chunk of records answers a digest).
        self.start_anti_entropy(Some(member));
        if self.kind == Kind::Lazy {
            // Entries primaried here that lack backups get them now.
            let short: Vec<Bytes> = self
                .entries
                .iter()
                .filter(|(_, e)| {
                    e.primary == self.local && e.live() && e.backups.len() < self.cfg.backup_count
                })
                .map(|(k, _)| k.clone())
                .collect();
            for key in short {
                self.replace(now_ms, &key);
            }
            self.coalesce();
        }
    }

    /// `member` left the map (stopped it, left the channel, or failed). A lazy map restores
    /// its copies: the first surviving backup of an entry whose primary left takes it over,
    /// and a primary whose backup left picks another.
    pub fn handle_member_down(&mut self, now_ms: u64, member: MemberId) {
        if !self.members.remove(&member) {
            return;
        }
        if self.kind != Kind::Lazy {
            return;
        }
        let affected: Vec<Bytes> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.removed && e.holds(member))
            .map(|(k, _)| k.clone())
            .collect();
        for key in affected {
            let e = &self.entries[&key];
            let alive = |m: &MemberId| *m == self.local || self.members.contains(m);
            if e.primary == self.local {
                self.replace(now_ms, &key);
            } else if !alive(&e.primary) {
                let first_backup = e.backups.iter().copied().find(alive);
                match first_backup {
                    Some(b) if b == self.local && e.value.is_some() => {
                        if let Some(w) = self.promote(now_ms, &key) {
                            self.queue_write(w);
                        }
                    }
                    Some(_) => {}
                    None => {
                        // Every holder is gone: the value is lost.
                        self.drop_lost(&key);
                    }
                }
            }
        }
        self.coalesce();
    }

    /// Every member was asked for `key` and none holds its value (nor a removal): the value
    /// is gone, though this member's proxy still names holders (they lost it, or never got
    /// it, in failures beyond `backup_count`). The proxy is dropped and counted as `lost`, so
    /// that reads answer "absent" rather than "unavailable" for ever. Nothing happens to an
    /// entry whose value is here, or to a removal. True when a proxy was dropped.
    pub fn forget_lost(&mut self, key: &[u8]) -> bool {
        let proxy = self
            .entries
            .get(key)
            .is_some_and(|e| !e.removed && e.value.is_none());
        if proxy {
            self.drop_lost(key);
        }
        proxy
    }

    /// Removes `key`'s entry as lost: out of every count, counted in `lost`, reported removed.
    fn drop_lost(&mut self, key: &[u8]) {
        if let Some((k, o)) = self.entries.remove_entry(key) {
            self.forget(&k, &o);
            self.holes.remove(&k);
            self.stats.lost += 1;
            self.emit(k, Some(Change::Removed), Origin::Remote, None);
        }
    }

    /// A primary re-places an entry whose backups changed, and tells everyone.
    fn replace(&mut self, now_ms: u64, key: &[u8]) {
        let Some(e) = self.entries.get(key) else {
            return;
        };
        let keep: Vec<MemberId> = e
            .backups
            .iter()
            .copied()
            .filter(|m| self.members.contains(m))
            .collect();
        let backups = self.choose_backups(key, self.local, &keep);
        if backups == e.backups {
            return;
        }
        let (version, value) = (e.version, e.value.clone());
        let record = self.placed_here(now_ms, key, version, &backups, value);
        let _ = self.install(now_ms, record.clone(), Origin::Local);
        let w = self.write_of(record);
        self.queue_write(w);
    }

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
