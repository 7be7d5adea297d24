//! [`RawMap`]: the map's side that callers hold; each call is a command to the map's task.

use super::*;

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
