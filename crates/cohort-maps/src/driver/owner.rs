//! The map's task: it owns the [`MapCore`], takes commands and messages, and carries out
//! what the core asks (sends, background requests, events).

use super::*;

impl Owner {
    pub(super) async fn run(
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
