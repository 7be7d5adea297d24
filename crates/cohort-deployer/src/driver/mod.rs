//! The driver: one task owns the [`DeployCore`] and does the file work it asks for; an
//! [`RpcChannel`] (id `deploy`) carries the messages. Chunks are served straight from the
//! deploy directory on the channel's delivery thread.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cohort_channel::{
    CallOptions, ChannelHandle, ReplyMode, RpcChannel, RpcHandler, SendOptions, ViewEvent,
};
use cohort_membership::MembershipEvent;
use cohort_wire::{Member, MemberId};
use sha2::Digest;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::config::DeployerConfig;
use crate::core::{DeployCore, DeployEvent, DeployStats, Output};
use crate::fsio;
use crate::msg::{FileMeta, Msg};

mod files;

use files::{install_remote, load_manifest, stage_local};

/// The manifest this member keeps in its temp directory (what it has and has undeployed).
const MANIFEST: &str = ".cohort-manifest";

/// The names deployed from the watch directory, in the temp directory.
const WATCHED: &str = ".cohort-watched";

/// Why a deployer call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    /// A setting that cannot work.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A file name that could leave the deploy directory, or is not a plain name.
    #[error("file name `{name}` refused: {reason}")]
    Name {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// A file above `max_file_size`.
    #[error("{size} bytes exceeds max_file_size ({max})")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A file operation failed.
    #[error("{what}: {error}")]
    Io {
        /// What was done.
        what: String,
        /// The error.
        error: std::io::Error,
    },
    /// The name is not deployed.
    #[error("`{0}` is not deployed")]
    NotDeployed(String),
    /// The channel refused (stopped, ...).
    #[error("channel: {0}")]
    Channel(#[from] cohort_channel::ChannelError),
    /// The deployer stopped.
    #[error("the deployer is stopped")]
    Stopped,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DeployError {
    let what = what.into();
    move |error| DeployError::Io { what, error }
}

/// Which files each member has, and whether they agree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeployStatus {
    /// This member's files (undeployed ones included, `removed`).
    pub local: Vec<FileMeta>,
    /// What each other member said it has.
    pub peers: BTreeMap<MemberId, Vec<FileMeta>>,
    /// Transfers in progress: the file and its chunks verified so far.
    pub transfers: Vec<(FileMeta, u32)>,
    /// Every member that answered has the same live files (name, version, hash) as this one.
    pub agree: bool,
    /// Counters.
    pub stats: DeployStats,
}

/// A local file staged in the temp directory (name, path, size, SHA-256), or why not (name,
/// reason).
type Staged = Result<(String, PathBuf, u64, [u8; 32]), (String, String)>;

enum Cmd {
    Inbound(Member, Msg, Option<oneshot::Sender<Msg>>),
    ChunkAnswer(FileMeta, u32, MemberId, Option<(u32, Bytes)>),
    Installed(FileMeta, Result<(), String>),
    LocalDone(Staged, Option<oneshot::Sender<Result<FileMeta, String>>>),
    Deploy(String, Bytes, oneshot::Sender<Result<FileMeta, String>>),
    Undeploy(String, oneshot::Sender<Result<FileMeta, DeployError>>),
    Status(oneshot::Sender<DeployStatus>),
    Scan,
    Stop(oneshot::Sender<()>),
}

/// A running deployer: [`DeployerHandle::start`]. Clones share it.
#[derive(Clone)]
pub struct DeployerHandle {
    cmd: mpsc::Sender<Cmd>,
    events: broadcast::Sender<DeployEvent>,
    cfg: Arc<DeployerConfig>,
}

struct Handler {
    cmd: mpsc::WeakSender<Cmd>,
    files: watch::Receiver<Arc<BTreeMap<String, FileMeta>>>,
    deploy_dir: PathBuf,
}

impl RpcHandler for Handler {
    fn reply_request(&self, from: &Member, request: &Bytes) -> Option<Bytes> {
        let Ok(msg) = Msg::decode(request) else {
            tracing::debug!(member = %from.id, "malformed deployer message dropped");
            return None;
        };
        if let Msg::ChunkReq {
            name,
            version,
            index,
        } = &msg
        {
            return Some(self.serve(name, *version, *index).encode());
        }
        let cmd = self.cmd.upgrade()?;
        let ask = matches!(msg, Msg::Manifest { ask: true, .. });
        if !ask {
            let _ = cmd.blocking_send(Cmd::Inbound(from.clone(), msg, None));
            return None;
        }
        let (tx, rx) = oneshot::channel();
        cmd.blocking_send(Cmd::Inbound(from.clone(), msg, Some(tx)))
            .ok()?;
        rx.blocking_recv().ok().map(|m| m.encode())
    }
}

impl Handler {
    /// A chunk of the file as deployed here, if it is that version.
    fn serve(&self, name: &str, version: cohort_maps::Version, index: u32) -> Msg {
        let file = self.files.borrow().get(name).cloned();
        let Some(file) = file.filter(|f| f.version == version && !f.removed) else {
            return Msg::NoChunk {
                reason: "not this version here".into(),
            };
        };
        if index >= file.chunks() {
            return Msg::NoChunk {
                reason: "no such chunk".into(),
            };
        }
        let (start, len) = file.range(index);
        let mut data = vec![0u8; len];
        let read = fs::File::open(self.deploy_dir.join(name))
            .and_then(|f| f.read_exact_at(&mut data, start));
        match read {
            Ok(()) => Msg::Chunk {
                name: name.to_owned(),
                version,
                index,
                crc: crc32fast::hash(&data),
                data: Bytes::from(data),
            },
            Err(e) => Msg::NoChunk {
                reason: e.to_string(),
            },
        }
    }
}

/// A file of the watch directory as last scanned.
#[derive(Clone, Copy)]
struct Seen {
    size: u64,
    mtime: SystemTime,
    since: tokio::time::Instant,
    deployed: bool,
}

struct Owner {
    core: DeployCore,
    cfg: Arc<DeployerConfig>,
    rpc: RpcChannel,
    known: HashMap<MemberId, Member>,
    cmd: mpsc::WeakSender<Cmd>,
    events: broadcast::Sender<DeployEvent>,
    files: watch::Sender<Arc<BTreeMap<String, FileMeta>>>,
    /// Watch directory: name → (size, mtime, when they last changed, deployed at them).
    seen: HashMap<String, Seen>,
    /// The watched names as last saved.
    saved_watched: Option<Vec<u8>>,
    next_scan: tokio::time::Instant,
    _watcher: Option<notify::RecommendedWatcher>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl DeployerHandle {
    /// Starts a deployer on `channel`: creates the directories, reads the saved manifest
    /// (files whose size no longer matches are fetched again), and compares manifests with
    /// every member.
    pub async fn start(channel: &ChannelHandle, cfg: DeployerConfig) -> Result<Self, DeployError> {
        cfg.validate()?;
        for d in [&cfg.deploy_dir, &cfg.temp_dir] {
            fs::create_dir_all(d).map_err(io(format!("creating {}", d.display())))?;
        }
        if cfg.watch_enabled {
            fs::create_dir_all(&cfg.watch_dir)
                .map_err(io(format!("creating {}", cfg.watch_dir.display())))?;
        }
        let saved = load_manifest(&cfg);
        let local = channel.local().id;
        let seed = local
            .as_bytes()
            .iter()
            .fold(7u64, |h, b| h.rotate_left(8) ^ u64::from(*b));
        let core = DeployCore::new(cfg.clone(), local, saved, seed);
        let snapshot: BTreeMap<String, FileMeta> =
            core.files().map(|f| (f.name.clone(), f.clone())).collect();
        let (files_tx, files_rx) = watch::channel(Arc::new(snapshot));
        let (cmd, rx) = mpsc::channel(1024);
        let rpc = RpcChannel::new(
            channel,
            "deploy",
            Arc::new(Handler {
                cmd: cmd.downgrade(),
                files: files_rx,
                deploy_dir: cfg.deploy_dir.clone(),
            }),
            SendOptions::NONE,
        )?;
        let (events, _) = broadcast::channel(1024);
        let cfg = Arc::new(cfg);
        let watcher = if cfg.watch_enabled {
            let weak = cmd.downgrade();
            let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
                // Reads (the scan's own) are not changes.
                if ev.is_ok_and(|e| e.kind.is_access()) {
                    return;
                }
                if let Some(c) = weak.upgrade() {
                    let _ = c.try_send(Cmd::Scan);
                }
            })
            .map_err(|e| DeployError::Io {
                what: "watching the watch directory".into(),
                error: std::io::Error::other(e),
            })?;
            notify::Watcher::watch(&mut w, &cfg.watch_dir, notify::RecursiveMode::NonRecursive)
                .map_err(|e| DeployError::Io {
                    what: format!("watching {}", cfg.watch_dir.display()),
                    error: std::io::Error::other(e),
                })?;
            Some(w)
        } else {
            None
        };
        let mut owner = Owner {
            core,
            cfg: cfg.clone(),
            rpc,
            known: HashMap::new(),
            cmd: cmd.downgrade(),
            events: events.clone(),
            files: files_tx,
            seen: HashMap::new(),
            saved_watched: None,
            next_scan: tokio::time::Instant::now(),
            _watcher: watcher,
        };
        owner.restore_watched();
        for m in channel.members() {
            owner.known.insert(m.id, m.clone());
            owner.core.handle_member_up(m.id);
        }
        let view = channel.events();
        tokio::spawn(owner.run(rx, view));
        Ok(Self { cmd, events, cfg })
    }

    /// Deploys `bytes` as `name` to every member (as a file put into the watch directory
    /// would be).
    pub async fn deploy(&self, name: &str, bytes: Bytes) -> Result<FileMeta, DeployError> {
        fsio::check_name(name).map_err(|reason| DeployError::Name {
            name: name.into(),
            reason,
        })?;
        if bytes.len() as u64 > self.cfg.max_file_size {
            return Err(DeployError::TooLarge {
                size: bytes.len() as u64,
                max: self.cfg.max_file_size,
            });
        }
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Deploy(name.into(), bytes, tx)).await?;
        rx.await
            .map_err(|_| DeployError::Stopped)?
            .map_err(|e| DeployError::Io {
                what: format!("deploying {name}"),
                error: std::io::Error::other(e),
            })
    }

    /// Undeploys `name` everywhere.
    pub async fn undeploy(&self, name: &str) -> Result<FileMeta, DeployError> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Undeploy(name.into(), tx)).await?;
        rx.await.map_err(|_| DeployError::Stopped)?
    }

    /// Which files each member has, and whether they agree.
    pub async fn status(&self) -> Result<DeployStatus, DeployError> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Status(tx)).await?;
        rx.await.map_err(|_| DeployError::Stopped)
    }

    /// Deploys, undeploys and failures from now on.
    pub fn events(&self) -> broadcast::Receiver<DeployEvent> {
        self.events.subscribe()
    }

    /// The settings.
    pub fn config(&self) -> &DeployerConfig {
        &self.cfg
    }

    /// Stops the deployer (transfers in progress resume at the next start).
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(Cmd::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    async fn send(&self, cmd: Cmd) -> Result<(), DeployError> {
        self.cmd.send(cmd).await.map_err(|_| DeployError::Stopped)
    }
}

impl Owner {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>, mut view: broadcast::Receiver<ViewEvent>) {
        let mut stopping = None;
        loop {
            let due = self.core.poll_timeout();
            let now = now_ms();
            let core_wait = Duration::from_millis(due.saturating_sub(now).min(60_000));
            let scan_wait = self
                .next_scan
                .saturating_duration_since(tokio::time::Instant::now());
            tokio::select! {
                biased;
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Stop(reply)) => { stopping = Some(reply); break; }
                    Some(cmd) => self.handle(cmd),
                    None => break,
                },
                event = view.recv() => match event {
                    Ok(e) => self.on_view(&e),
                    Err(broadcast::error::RecvError::Closed) => view = broadcast::channel(1).1,
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                },
                () = tokio::time::sleep(core_wait) => self.core.handle_timeout(now_ms()),
                () = tokio::time::sleep(scan_wait) => {
                    self.next_scan = tokio::time::Instant::now() + self.cfg.process_deploy_frequency;
                    self.scan();
                }
            }
            self.perform();
        }
        if let Some(reply) = stopping {
            let _ = reply.send(());
        }
    }

    fn on_view(&mut self, e: &ViewEvent) {
        match &e.event {
            MembershipEvent::MemberAdded(m) => {
                self.known.insert(m.id, m.clone());
                self.core.handle_member_up(m.id);
            }
            MembershipEvent::MemberUpdated(m) => {
                self.known.insert(m.id, m.clone());
            }
            MembershipEvent::MemberDisappeared { member, .. } => {
                self.core.handle_member_down(member.id);
            }
            _ => {}
        }
    }

    fn handle(&mut self, cmd: Cmd) {
        let now = now_ms();
        match cmd {
            Cmd::Inbound(from, msg, reply) => {
                let id = from.id;
                self.known.insert(id, from);
                let answer = self.core.handle_message(now, id, msg);
                if let (Some(r), Some(a)) = (reply, answer) {
                    let _ = r.send(a);
                }
            }
            Cmd::ChunkAnswer(file, index, from, answer) => match answer {
                Some((crc, data)) => self.core.handle_chunk(from, &file, index, crc, data),
                None => self.core.handle_chunk_failed(&file, index),
            },
            Cmd::Installed(file, result) => {
                // Renamed here, in order with everything else the task does: an older version
                // never lands over a newer one.
                let (part, done) = fsio::part_paths(&self.cfg.temp_dir, &file);
                if !self.core.is_current(&file) {
                    let _ = fs::remove_file(part);
                    let _ = fs::remove_file(done);
                    return;
                }
                let result = result.and_then(|()| {
                    fs::rename(&part, self.cfg.deploy_dir.join(&file.name))
                        .map_err(|e| format!("renaming into the deploy directory: {e}"))
                });
                if result.is_ok() {
                    if let Ok(d) = fs::File::open(&self.cfg.deploy_dir) {
                        let _ = d.sync_all();
                    }
                    let _ = fs::remove_file(done);
                }
                self.core.handle_installed(&file, result);
            }
            Cmd::LocalDone(result, reply) => {
                let r = match result {
                    Ok((name, tmp, size, sha)) => {
                        match fs::rename(&tmp, self.cfg.deploy_dir.join(&name)) {
                            Ok(()) => Ok(self.core.handle_local(now, &name, size, sha)),
                            Err(e) => {
                                let _ = fs::remove_file(&tmp);
                                let reason = format!("renaming into the deploy directory: {e}");
                                let _ = self.events.send(DeployEvent::Failed {
                                    name,
                                    reason: reason.clone(),
                                });
                                Err(reason)
                            }
                        }
                    }
                    Err((name, reason)) => {
                        let _ = self.events.send(DeployEvent::Failed {
                            name,
                            reason: reason.clone(),
                        });
                        Err(reason)
                    }
                };
                if let Some(reply) = reply {
                    let _ = reply.send(r);
                }
            }
            Cmd::Deploy(name, bytes, reply) => {
                let (cfg, done) = (self.cfg.clone(), self.cmd.clone());
                tokio::task::spawn_blocking(move || {
                    let r = stage_local(&cfg, &name, Err(&bytes))
                        .map(|(tmp, size, sha)| (name.clone(), tmp, size, sha))
                        .map_err(|e| (name.clone(), e));
                    if let Some(c) = done.upgrade() {
                        let _ = c.blocking_send(Cmd::LocalDone(r, Some(reply)));
                    }
                });
            }
            Cmd::Undeploy(name, reply) => {
                let r = self
                    .core
                    .handle_local_removed(now, &name)
                    .ok_or(DeployError::NotDeployed(name));
                let _ = reply.send(r);
            }
            Cmd::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Cmd::Scan => {
                // Coalesced with the periodic scan: soon, not at once (a file being written
                // fires many events).
                let soon = tokio::time::Instant::now() + Duration::from_millis(200);
                self.next_scan = self.next_scan.min(soon);
            }
            Cmd::Stop(_) => {}
        }
    }

    fn status(&self) -> DeployStatus {
        let live = |files: &mut dyn Iterator<Item = &FileMeta>| -> BTreeMap<String, (cohort_maps::Version, [u8; 32])> {
            files.filter(|f| !f.removed).map(|f| (f.name.clone(), (f.version, f.sha256))).collect()
        };
        let mine = live(&mut self.core.files());
        let peers: BTreeMap<MemberId, Vec<FileMeta>> = self
            .core
            .peer_files()
            .iter()
            .map(|(id, files)| (*id, files.values().cloned().collect()))
            .collect();
        let agree = self
            .core
            .peer_files()
            .values()
            .all(|files| live(&mut files.values()) == mine);
        DeployStatus {
            local: self.core.files().cloned().collect(),
            peers,
            transfers: self.core.transfers(),
            agree,
            stats: self.core.stats(),
        }
    }

    /// Does what the core asked.
    fn perform(&mut self) {
        let mut changed = false;
        while let Some(out) = self.core.poll(now_ms()) {
            match out {
                Output::Send { to, msg } => self.send(to, msg),
                Output::Prepare(file) => self.prepare(&file),
                Output::Write { file, index, data } => {
                    let (part, done) = fsio::part_paths(&self.cfg.temp_dir, &file);
                    let (start, _) = file.range(index);
                    let r = fs::OpenOptions::new()
                        .write(true)
                        .open(&part)
                        .and_then(|f| f.write_all_at(&data, start))
                        .and_then(|()| fsio::append_done(&done, index));
                    match r {
                        Ok(()) => self.core.handle_written(&file, index),
                        Err(e) => self
                            .core
                            .handle_failed(&file, &format!("writing {}: {e}", part.display())),
                    }
                }
                Output::Install(file) => {
                    let (cfg, done) = (self.cfg.clone(), self.cmd.clone());
                    tokio::task::spawn_blocking(move || {
                        let r = install_remote(&cfg, &file);
                        if let Some(c) = done.upgrade() {
                            let _ = c.blocking_send(Cmd::Installed(file, r));
                        }
                    });
                }
                Output::Remove(name) => {
                    let path = self.cfg.deploy_dir.join(&name);
                    if let Err(e) = fs::remove_file(&path) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            tracing::warn!(file = %name, error = %e, "undeployed file not removed");
                        }
                    }
                    changed = true;
                }
                Output::Discard(file) => {
                    let (part, done) = fsio::part_paths(&self.cfg.temp_dir, &file);
                    let _ = fs::remove_file(part);
                    let _ = fs::remove_file(done);
                }
                Output::Event(e) => {
                    changed |= !matches!(e, DeployEvent::Failed { .. });
                    let _ = self.events.send(e);
                }
            }
        }
        if changed {
            let files: Vec<FileMeta> = self.core.files().cloned().collect();
            let snapshot = files.iter().map(|f| (f.name.clone(), f.clone())).collect();
            self.files.send_replace(Arc::new(snapshot));
            if let Ok(bytes) = postcard::to_stdvec(&files) {
                if let Err(e) = fsio::write_atomic(&self.cfg.temp_dir.join(MANIFEST), &bytes) {
                    tracing::warn!(error = %e, "manifest not saved");
                }
            }
        }
    }

    fn prepare(&mut self, file: &FileMeta) {
        let free = fs4::available_space(&self.cfg.temp_dir).unwrap_or(u64::MAX);
        // Space other transfers will still take (their partial files are sparse).
        let promised: u64 = self
            .core
            .transfers()
            .iter()
            .filter(|(f, _)| f.name != file.name)
            .map(|(f, done)| {
                f.size
                    .saturating_sub(u64::from(*done) * u64::from(f.chunk_size))
            })
            .sum();
        if free.saturating_sub(promised).saturating_sub(file.size) < self.cfg.min_free_space {
            let reason = format!(
                "{} bytes would leave less than min_free_space ({}) free",
                file.size, self.cfg.min_free_space
            );
            self.core.handle_failed(file, &reason);
            return;
        }
        let (part, done) = fsio::part_paths(&self.cfg.temp_dir, file);
        let opened = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&part)
            .and_then(|f| f.set_len(file.size));
        match opened {
            Ok(()) => {
                let resumed = fsio::load_done(&done, file.chunks());
                self.core.handle_prepared(file, &resumed);
            }
            Err(e) => self
                .core
                .handle_failed(file, &format!("creating {}: {e}", part.display())),
        }
    }

    fn send(&mut self, to: MemberId, msg: Msg) {
        let Some(member) = self.known.get(&to).cloned() else {
            if let Msg::ChunkReq {
                name,
                version,
                index,
            } = &msg
            {
                // The source is unknown here: fail the chunk so another is asked.
                if let Some((f, _)) = self
                    .core
                    .transfers()
                    .into_iter()
                    .find(|(f, _)| f.name == *name && f.version == *version)
                {
                    self.core.handle_chunk_failed(&f, *index);
                }
            }
            return;
        };
        let (rpc, done, timeout) = (self.rpc.clone(), self.cmd.clone(), self.cfg.request_timeout);
        let transfer = match &msg {
            Msg::ChunkReq { name, version, .. } => self
                .core
                .transfers()
                .into_iter()
                .map(|(f, _)| f)
                .find(|f| f.name == *name && f.version == *version),
            _ => None,
        };
        tokio::spawn(async move {
            let to_list = [member];
            match msg {
                Msg::ChunkReq { index, .. } => {
                    let Some(file) = transfer else { return };
                    let how = CallOptions::default()
                        .mode(ReplyMode::First)
                        .timeout(timeout);
                    let answer = rpc
                        .call(&to_list, msg.encode(), how)
                        .await
                        .ok()
                        .and_then(|r| {
                            r.replies
                                .into_iter()
                                .find_map(|rep| match Msg::decode(&rep.payload) {
                                    Ok(Msg::Chunk {
                                        crc,
                                        data,
                                        index: i,
                                        ..
                                    }) if i == index => Some((crc, data)),
                                    _ => None,
                                })
                        });
                    if let Some(c) = done.upgrade() {
                        let _ = c.send(Cmd::ChunkAnswer(file, index, to, answer)).await;
                    }
                }
                Msg::Manifest { ask: true, .. } => {
                    let how = CallOptions::default().mode(ReplyMode::All).timeout(timeout);
                    if let Ok(r) = rpc.call(&to_list, msg.encode(), how).await {
                        for rep in r.replies {
                            if let Ok(m) = Msg::decode(&rep.payload) {
                                if let Some(c) = done.upgrade() {
                                    let _ = c.send(Cmd::Inbound(to_list[0].clone(), m, None)).await;
                                }
                            }
                        }
                    }
                }
                other => {
                    let how = CallOptions::default()
                        .mode(ReplyMode::None)
                        .send_options(SendOptions::ASYNCHRONOUS);
                    let _ = rpc.call(&to_list, other.encode(), how).await;
                }
            }
        });
    }
}
