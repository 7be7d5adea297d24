//! Installing a record: the conflict rules (highest version wins, tombstones), the budget,
//! and the events a change produces.

use super::*;

impl MapCore {
    /// What every record from a peer must pass before it is applied or moves the clock: no
    /// version more than `max_clock_skew` ahead, sizes within the limits.
    pub(super) fn remote_refusal(cfg: &MapConfig, now_ms: u64, rec: &Record) -> Option<Refused> {
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
    pub(super) fn install(
        &mut self,
        now_ms: u64,
        rec: Record,
        origin: Origin,
    ) -> Result<bool, Refused> {
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

    pub(super) fn forget(&mut self, key: &Bytes, o: &Entry) {
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

    pub(super) fn emit(
        &mut self,
        key: Bytes,
        change: Option<Change>,
        origin: Origin,
        value: Option<Bytes>,
    ) {
        if let (true, Some(change)) = (self.events_on, change) {
            self.events.push_back(CoreEvent {
                key,
                change,
                origin,
                value,
            });
        }
    }

    pub(super) fn drop_oldest_tombstone(&mut self) {
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
}
