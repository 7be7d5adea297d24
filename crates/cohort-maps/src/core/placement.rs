//! Placement: which members hold a key (rendezvous hashing), and what the core does as
//! members come and go (promote a backup, choose new ones, forget what was lost).

use super::*;

impl MapCore {
    /// The other members that hold the value of a live `key` by its placement (members
    /// that left are ignored by [`MapCore::choose_backups`]).
    pub(super) fn current_holders(&self, key: &[u8]) -> Vec<MemberId> {
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

    /// Makes this member the primary of a lazy entry it holds the value of.
    pub(super) fn promote(&mut self, now_ms: u64, key: &[u8]) -> Option<Write> {
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
    pub(super) fn placed_here(
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
    pub(super) fn choose_backups(
        &self,
        key: &[u8],
        primary: MemberId,
        keep: &[MemberId],
    ) -> Vec<MemberId> {
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
    pub(super) fn drop_lost(&mut self, key: &[u8]) {
        if let Some((k, o)) = self.entries.remove_entry(key) {
            self.forget(&k, &o);
            self.holes.remove(&k);
            self.stats.lost += 1;
            self.emit(k, Some(Change::Removed), Origin::Remote, None);
        }
    }

    /// A primary re-places an entry whose backups changed, and tells everyone.
    pub(super) fn replace(&mut self, now_ms: u64, key: &[u8]) {
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
}
