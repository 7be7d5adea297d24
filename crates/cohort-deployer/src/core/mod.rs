//! The sans-IO core of a deployer: what each member has, what it lacks, which version of a
//! name wins, and which chunk to ask whom for. No IO, no clock: the driver does the file work
//! the core asks for ([`Output`]) and reports back (`handle_*`).
//!
//! The rule every member computes the same way: for each name, the highest [`Version`] (a
//! hybrid logical clock and the deploying member's id) wins, whether it is a file or an
//! undeploy (a tombstone).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use cohort_maps::{Hlc, Version};
use cohort_wire::MemberId;

use crate::config::DeployerConfig;
use crate::msg::{FileMeta, Msg};

#[cfg(test)]
mod tests;

/// Where a deploy or undeploy came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// This member (its watch directory, or a call).
    Local,
    /// Another member.
    Remote,
}

/// What happened, for event lines and post-deploy commands.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeployEvent {
    /// A file is in place in the deploy directory.
    Deployed {
        /// It.
        file: FileMeta,
        /// From here or elsewhere.
        origin: Origin,
    },
    /// A file was removed from the deploy directory.
    Undeployed {
        /// Its name.
        name: String,
        /// From here or elsewhere.
        origin: Origin,
    },
    /// A file was refused or its transfer failed (it is not deployed; a later version or the
    /// next manifest exchange tries again).
    Failed {
        /// Its name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// File work and messages the core asks of the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send `msg` to `to`; a request's answer comes back through the matching `handle_*`.
    Send {
        /// Destination.
        to: MemberId,
        /// The message.
        msg: Msg,
    },
    /// Get a transfer ready: check space, open its partial file, report the chunks already
    /// verified ([`DeployCore::handle_prepared`]) or why not ([`DeployCore::handle_failed`]).
    Prepare(FileMeta),
    /// Write a verified chunk into the partial file, then [`DeployCore::handle_written`].
    Write {
        /// The file.
        file: FileMeta,
        /// The chunk.
        index: u32,
        /// Its bytes.
        data: Bytes,
    },
    /// Check the whole file's SHA-256, fsync, rename into the deploy directory, then
    /// [`DeployCore::handle_installed`].
    Install(FileMeta),
    /// Delete the file from the deploy directory (an undeploy).
    Remove(String),
    /// Delete a transfer's partial file (superseded or failed for good).
    Discard(FileMeta),
    /// Something to report.
    Event(DeployEvent),
}

#[derive(Clone, Debug)]
struct Transfer {
    file: FileMeta,
    sources: Vec<MemberId>,
    prepared: bool,
    done: Vec<bool>,
    remaining: u32,
    /// Chunk → deadline.
    in_flight: BTreeMap<u32, u64>,
    next_source: usize,
    attempts: u32,
    /// Chunk requests failed since the last chunk written.
    failures: u32,
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeployStats {
    /// Files deployed here from other members.
    pub received: u64,
    /// Chunks that failed their checksum (asked for again).
    pub corrupt_chunks: u64,
    /// Whole files that failed their SHA-256 (transferred again).
    pub corrupt_files: u64,
    /// Files refused (limits, names, space).
    pub refused: u64,
    /// Chunk requests that timed out or were refused.
    pub chunk_retries: u64,
}

fn transfer_in<'a>(
    transfers: &'a mut BTreeMap<String, Transfer>,
    file: &FileMeta,
) -> Option<&'a mut Transfer> {
    transfers
        .get_mut(&file.name)
        .filter(|t| t.file.version == file.version)
}

/// The in-flight mark of a transfer waiting for its partial file (never a chunk index: files
/// with that many chunks are refused in `consider`).
const PREPARING: u32 = u32::MAX;

/// Chunk requests that may fail in a row before a transfer gives its slot up.
const MAX_CHUNK_FAILURES: u32 = 32;

/// Versions further ahead of this member's clock are refused.
const MAX_CLOCK_SKEW_MS: u64 = 60_000;

/// Whole-file attempts before a transfer waits for the next manifest exchange.
const MAX_ATTEMPTS: u32 = 3;

/// The core of one member's deployer.
pub struct DeployCore {
    cfg: DeployerConfig,
    local: MemberId,
    hlc: Hlc,
    files: BTreeMap<String, FileMeta>,
    transfers: BTreeMap<String, Transfer>,
    peers: BTreeSet<MemberId>,
    peer_files: BTreeMap<MemberId, BTreeMap<String, FileMeta>>,
    /// Versions refused here (too large, no space, failed too often): not tried again.
    refused: BTreeMap<String, Version>,
    out: VecDeque<Output>,
    stats: DeployStats,
    rng: u64,
    next_sync: u64,
}

impl DeployCore {
    /// A core for `local`, with the files it already has (its saved manifest).
    pub fn new(cfg: DeployerConfig, local: MemberId, files: Vec<FileMeta>, seed: u64) -> Self {
        let mut hlc = Hlc::default();
        for f in &files {
            hlc.observe(f.version.hlc);
        }
        Self {
            cfg,
            local,
            hlc,
            files: files.into_iter().map(|f| (f.name.clone(), f)).collect(),
            transfers: BTreeMap::new(),
            peers: BTreeSet::new(),
            peer_files: BTreeMap::new(),
            refused: BTreeMap::new(),
            out: VecDeque::new(),
            stats: DeployStats::default(),
            rng: seed | 1,
            next_sync: 0,
        }
    }

    /// The files here (deployed and undeployed), by name.
    pub fn files(&self) -> impl Iterator<Item = &FileMeta> {
        self.files.values()
    }

    /// The live file `name` here.
    pub fn file(&self, name: &str) -> Option<&FileMeta> {
        self.files.get(name).filter(|f| !f.removed)
    }

    /// What each other member said it has, at its last manifest or announce.
    pub fn peer_files(&self) -> &BTreeMap<MemberId, BTreeMap<String, FileMeta>> {
        &self.peer_files
    }

    /// Transfers in progress: (file, chunks verified).
    pub fn transfers(&self) -> Vec<(FileMeta, u32)> {
        self.transfers
            .values()
            .map(|t| (t.file.clone(), t.file.chunks() - t.remaining))
            .collect()
    }

    /// Counters.
    pub fn stats(&self) -> DeployStats {
        self.stats
    }

    fn announce(&mut self, file: &FileMeta) {
        for p in self.peers.clone() {
            self.out.push_back(Output::Send {
                to: p,
                msg: Msg::Announce { file: file.clone() },
            });
        }
    }

    fn manifest(&self, ask: bool) -> Msg {
        Msg::Manifest {
            files: self.files.values().cloned().collect(),
            ask,
        }
    }

    /// The driver put a file of `size` bytes and this hash into the deploy directory (from
    /// the watch directory or a call): a new version, announced to every member.
    pub fn handle_local(
        &mut self,
        now_ms: u64,
        name: &str,
        size: u64,
        sha256: [u8; 32],
    ) -> FileMeta {
        // A new deploy beats whatever version of the name is held.
        if let Some(old) = self.files.get(name) {
            self.hlc.observe(old.version.hlc);
        }
        let file = FileMeta {
            name: name.to_owned(),
            size,
            sha256,
            version: Version::new(self.hlc.tick(now_ms), self.local),
            removed: false,
            chunk_size: self.cfg.chunk_size,
        };
        self.supersede(name);
        self.files.insert(name.to_owned(), file.clone());
        self.announce(&file);
        self.out.push_back(Output::Event(DeployEvent::Deployed {
            file: file.clone(),
            origin: Origin::Local,
        }));
        file
    }

    /// Undeploys `name` everywhere; `None` when it is not deployed.
    pub fn handle_local_removed(&mut self, now_ms: u64, name: &str) -> Option<FileMeta> {
        let held = self.file(name)?.version.hlc;
        self.hlc.observe(held);
        let tomb = FileMeta {
            name: name.to_owned(),
            size: 0,
            sha256: [0; 32],
            version: Version::new(self.hlc.tick(now_ms), self.local),
            removed: true,
            chunk_size: self.cfg.chunk_size,
        };
        self.supersede(name);
        self.files.insert(name.to_owned(), tomb.clone());
        self.out.push_back(Output::Remove(name.to_owned()));
        self.out.push_back(Output::Event(DeployEvent::Undeployed {
            name: name.to_owned(),
            origin: Origin::Local,
        }));
        self.announce(&tomb);
        Some(tomb)
    }

    /// Drops a transfer of `name` (a newer version replaces it).
    fn supersede(&mut self, name: &str) {
        if let Some(t) = self.transfers.remove(name) {
            self.out.push_back(Output::Discard(t.file));
        }
    }

    /// `member` runs a deployer: compare manifests.
    pub fn handle_member_up(&mut self, member: MemberId) {
        if member == self.local || !self.peers.insert(member) {
            return;
        }
        let msg = self.manifest(true);
        self.out.push_back(Output::Send { to: member, msg });
    }

    /// `member` left: it is no source any more.
    pub fn handle_member_down(&mut self, member: MemberId) {
        self.peers.remove(&member);
        self.peer_files.remove(&member);
        for t in self.transfers.values_mut() {
            t.sources.retain(|s| *s != member);
        }
    }

    /// A message from `from`; the answer, for a manifest that asks for one.
    pub fn handle_message(&mut self, now_ms: u64, from: MemberId, msg: Msg) -> Option<Msg> {
        match msg {
            Msg::Manifest { files, ask } => {
                if from != self.local {
                    self.peers.insert(from);
                }
                let known: BTreeMap<String, FileMeta> = files
                    .iter()
                    .take(self.cfg.max_files)
                    .map(|f| (f.name.clone(), f.clone()))
                    .collect();
                self.peer_files.insert(from, known);
                for f in files.into_iter().take(self.cfg.max_files) {
                    self.consider(now_ms, from, f);
                }
                ask.then(|| self.manifest(false))
            }
            Msg::Announce { file } => {
                if let Some(m) = self.peer_files.get_mut(&from) {
                    if m.len() < self.cfg.max_files || m.contains_key(&file.name) {
                        m.insert(file.name.clone(), file.clone());
                    }
                }
                self.consider(now_ms, from, file);
                None
            }
            Msg::ChunkReq { .. } | Msg::Chunk { .. } | Msg::NoChunk { .. } => None,
        }
    }

    /// A file a peer has: fetch it, or remove ours, when its version wins.
    fn consider(&mut self, now_ms: u64, from: MemberId, file: FileMeta) {
        if self
            .files
            .get(&file.name)
            .is_some_and(|f| f.version >= file.version)
        {
            return;
        }
        if self
            .refused
            .get(&file.name)
            .is_some_and(|v| *v >= file.version)
        {
            return;
        }
        // A version from the far future (a wrong clock, or a forged one) would pin the name
        // for good: refused.
        if file.version.millis() > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
            self.stats.refused += 1;
            return;
        }
        self.hlc.observe(file.version.hlc);
        let known = self.files.contains_key(&file.name);
        if !known && self.files.len() >= self.cfg.max_files {
            if !file.removed {
                self.refuse(&file, format!("max_files ({}) reached", self.cfg.max_files));
            }
            return;
        }
        if file.removed {
            let had = self.file(&file.name).is_some();
            self.supersede(&file.name);
            self.files.insert(file.name.clone(), file.clone());
            self.announce(&file);
            // Removed even when not recorded here: a file renamed into place just before.
            self.out.push_back(Output::Remove(file.name.clone()));
            if had {
                self.out.push_back(Output::Event(DeployEvent::Undeployed {
                    name: file.name,
                    origin: Origin::Remote,
                }));
            }
            return;
        }
        if let Some(t) = self.transfers.get_mut(&file.name) {
            if t.file.version == file.version {
                if !t.sources.contains(&from) {
                    t.sources.push(from);
                }
                return;
            }
            if t.file.version > file.version {
                return;
            }
        }
        if file.size > self.cfg.max_file_size || file.chunks() == PREPARING {
            self.refuse(
                &file,
                format!(
                    "{} bytes exceeds max_file_size ({})",
                    file.size, self.cfg.max_file_size
                ),
            );
            return;
        }
        if self.transfers.len() >= self.cfg.max_files && !self.transfers.contains_key(&file.name) {
            return;
        }
        self.supersede(&file.name);
        let chunks = file.chunks();
        self.transfers.insert(
            file.name.clone(),
            Transfer {
                done: vec![false; chunks as usize],
                remaining: chunks,
                sources: vec![from],
                prepared: false,
                in_flight: BTreeMap::new(),
                next_source: 0,
                attempts: 0,
                failures: 0,
                file,
            },
        );
    }

    fn refuse(&mut self, file: &FileMeta, reason: String) {
        self.stats.refused += 1;
        if self.refused.len() < self.cfg.max_files || self.refused.contains_key(&file.name) {
            self.refused.insert(file.name.clone(), file.version);
        }
        self.out.push_back(Output::Event(DeployEvent::Failed {
            name: file.name.clone(),
            reason,
        }));
    }

    /// The transfer of `file` is ready; `done` lists the chunks already verified (a resume).
    pub fn handle_prepared(&mut self, file: &FileMeta, done: &[u32]) {
        let Some(t) = self.transfer_of(file) else {
            return;
        };
        t.prepared = true;
        t.in_flight.remove(&PREPARING);
        for i in done {
            if let Some(d) = t.done.get_mut(*i as usize) {
                if !*d {
                    *d = true;
                    t.remaining -= 1;
                }
            }
        }
        if t.remaining == 0 {
            let f = t.file.clone();
            self.out.push_back(Output::Install(f));
        }
    }

    fn transfer_of(&mut self, file: &FileMeta) -> Option<&mut Transfer> {
        transfer_in(&mut self.transfers, file)
    }

    /// Preparing or writing `file` failed (no space, a write error): the transfer is dropped
    /// and reported; the next manifest exchange tries again.
    pub fn handle_failed(&mut self, file: &FileMeta, reason: &str) {
        if self.transfer_of(file).is_some() {
            self.transfers.remove(&file.name);
            self.out.push_back(Output::Discard(file.clone()));
            self.out.push_back(Output::Event(DeployEvent::Failed {
                name: file.name.clone(),
                reason: format!("{reason}; tried again at the next manifest exchange"),
            }));
        }
    }

    /// Whether `file` is still the version this member is receiving (an install of it may
    /// go ahead).
    pub fn is_current(&self, file: &FileMeta) -> bool {
        self.transfers
            .get(&file.name)
            .is_some_and(|t| t.file.version == file.version)
    }

    /// A chunk arrived: checked against its CRC and length, then handed over for writing.
    pub fn handle_chunk(
        &mut self,
        from: MemberId,
        file: &FileMeta,
        index: u32,
        crc: u32,
        data: Bytes,
    ) {
        let Some(t) = transfer_in(&mut self.transfers, file) else {
            return;
        };
        if t.in_flight.remove(&index).is_none() || t.done.get(index as usize) != Some(&false) {
            return;
        }
        let (_, len) = t.file.range(index);
        if data.len() != len || crc32fast::hash(&data) != crc {
            // Corrupt on the way: asked for again, from the next source.
            self.stats.corrupt_chunks += 1;
            t.next_source += 1;
            tracing::warn!(file = %t.file.name, chunk = index, member = %from.short(), "chunk failed its checksum; asking again");
            return;
        }
        let f = t.file.clone();
        self.out.push_back(Output::Write {
            file: f,
            index,
            data,
        });
    }

    /// A chunk request failed (refused, timed out, or the source left).
    pub fn handle_chunk_failed(&mut self, file: &FileMeta, index: u32) {
        let Some(t) = transfer_in(&mut self.transfers, file) else {
            return;
        };
        if t.in_flight.remove(&index).is_some() {
            t.next_source += 1;
            t.failures += 1;
            self.stats.chunk_retries += 1;
        }
        if t.failures >= MAX_CHUNK_FAILURES {
            // Its sources do not serve it (gone, or another version now): the slot is given
            // up; a manifest that names a source tries again.
            let f = t.file.clone();
            self.transfers.remove(&f.name);
            self.out.push_back(Output::Discard(f.clone()));
            self.out.push_back(Output::Event(DeployEvent::Failed {
                name: f.name,
                reason: format!(
                    "{MAX_CHUNK_FAILURES} chunk requests failed in a row; tried again at the next manifest exchange"
                ),
            }));
        }
    }

    /// A chunk is on disk.
    pub fn handle_written(&mut self, file: &FileMeta, index: u32) {
        let Some(t) = self.transfer_of(file) else {
            return;
        };
        t.failures = 0;
        if let Some(d) = t.done.get_mut(index as usize) {
            if !*d {
                *d = true;
                t.remaining -= 1;
            }
        }
        if t.remaining == 0 {
            let f = t.file.clone();
            self.out.push_back(Output::Install(f));
        }
    }

    /// The whole file was checked and renamed into place (`Ok`), or failed its SHA-256.
    pub fn handle_installed(&mut self, file: &FileMeta, result: Result<(), String>) {
        let Some(t) = transfer_in(&mut self.transfers, file) else {
            return;
        };
        match result {
            Ok(()) => {
                let f = t.file.clone();
                self.transfers.remove(&f.name);
                self.stats.received += 1;
                self.files.insert(f.name.clone(), f.clone());
                // The others learn that this member has it (their view of who agrees).
                self.announce(&f);
                self.out.push_back(Output::Event(DeployEvent::Deployed {
                    file: f,
                    origin: Origin::Remote,
                }));
            }
            Err(reason) => {
                self.stats.corrupt_files += 1;
                t.attempts += 1;
                let f = t.file.clone();
                if t.attempts >= MAX_ATTEMPTS {
                    self.transfers.remove(&f.name);
                    self.out.push_back(Output::Discard(f.clone()));
                    self.refuse(&f, format!("{reason} ({MAX_ATTEMPTS} attempts)"));
                    return;
                }
                // Start over: every chunk again.
                t.done.iter_mut().for_each(|d| *d = false);
                t.remaining = f.chunks();
                t.prepared = false;
                t.in_flight.clear();
                self.out.push_back(Output::Discard(f.clone()));
                self.out.push_back(Output::Event(DeployEvent::Failed {
                    name: f.name,
                    reason: format!("{reason}; transferring again"),
                }));
            }
        }
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// When [`DeployCore::handle_timeout`] should run next (ms).
    pub fn poll_timeout(&self) -> u64 {
        let deadline = self
            .transfers
            .values()
            .flat_map(|t| t.in_flight.values())
            .min()
            .copied()
            .unwrap_or(u64::MAX);
        deadline.min(self.next_sync)
    }

    /// Chunk requests past their deadline are asked again; every few periods, manifests are
    /// compared with one random member.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        for t in self.transfers.values_mut() {
            let late: Vec<u32> = t
                .in_flight
                .iter()
                .filter(|(_, d)| **d <= now_ms)
                .map(|(i, _)| *i)
                .collect();
            for i in late {
                t.in_flight.remove(&i);
                t.next_source += 1;
                self.stats.chunk_retries += 1;
            }
        }
        if now_ms >= self.next_sync {
            let period =
                u64::try_from(self.cfg.process_deploy_frequency.as_millis()).unwrap_or(2000) * 5;
            self.next_sync = now_ms + period;
            let n = self.peers.len() as u64;
            if n > 0 {
                let i = usize::try_from(self.random() % n).unwrap_or(0);
                if let Some(p) = self.peers.iter().nth(i).copied() {
                    let msg = self.manifest(true);
                    self.out.push_back(Output::Send { to: p, msg });
                }
            }
        }
    }

    /// The next thing to do: transfers started (up to `max_concurrent_transfers`) and chunks
    /// asked for (up to `chunks_in_flight` each), then whatever was queued.
    pub fn poll(&mut self, now_ms: u64) -> Option<Output> {
        if self.out.is_empty() {
            self.schedule(now_ms);
        }
        self.out.pop_front()
    }

    fn schedule(&mut self, now_ms: u64) {
        let timeout = u64::try_from(self.cfg.request_timeout.as_millis()).unwrap_or(10_000);
        let mut active = 0;
        let names: Vec<String> = self.transfers.keys().cloned().collect();
        for name in names {
            if active >= self.cfg.max_concurrent_transfers {
                break;
            }
            let t = self.transfers.get_mut(&name).expect("listed");
            // A transfer nobody can serve holds no slot.
            if t.sources.is_empty() {
                continue;
            }
            if !t.prepared {
                active += 1;
                // Marked so that it is asked once.
                if let std::collections::btree_map::Entry::Vacant(e) = t.in_flight.entry(PREPARING)
                {
                    e.insert(u64::MAX);
                    self.out.push_back(Output::Prepare(t.file.clone()));
                }
                continue;
            }
            if t.remaining == 0 {
                continue;
            }
            active += 1;
            let wanted: Vec<u32> = (0..t.file.chunks())
                .filter(|i| !t.done[*i as usize] && !t.in_flight.contains_key(i))
                .take(self.cfg.chunks_in_flight.saturating_sub(t.in_flight.len()))
                .collect();
            for index in wanted {
                let to = t.sources[t.next_source % t.sources.len()];
                t.next_source += 1;
                t.in_flight.insert(index, now_ms + timeout);
                self.out.push_back(Output::Send {
                    to,
                    msg: Msg::ChunkReq {
                        name: t.file.name.clone(),
                        version: t.file.version,
                        index,
                    },
                });
            }
        }
    }
}
