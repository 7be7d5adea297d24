//! What other members send and ask: updates, digests and their repairs, fetches, state
//! chunks.

use super::*;

impl MapCore {
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

    pub(super) fn repair(&mut self, now_ms: u64, records: Vec<Record>) {
        for r in records {
            if let Ok(true) = self.install(now_ms, r, Origin::Remote) {
                self.stats.repairs += 1;
            }
        }
    }

    pub(super) fn record_of(&self, key: &[u8], e: &Entry, to: MemberId) -> Record {
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
    pub(super) fn records_in(&self, buckets: &[u16], to: MemberId) -> Vec<Record> {
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
}
